"""User-facing errors, and the chain an exception arose in."""

from __future__ import annotations

from collections.abc import Iterator


class BenchError(Exception):
    """A user-facing error: one clear message naming the file or argument and what was expected."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then the exception it was raised from or while handling, and so on (each once: a
    chain can loop). A writer's or a compiler's own error often carries the one that matters."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
