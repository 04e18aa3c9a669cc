"""User-facing errors, and the chain an exception arose in."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Sequence


class BenchError(Exception):
    """A user-facing error: one clear message naming the file or argument and what was expected."""

    exit_code = 2  # the command line's, for every user error


class HeldError(BenchError):
    """Work skipped because other processes hold it (bench.claim), none of it failed: not done here, yet
    nothing to fix; EX_TEMPFAIL ("try again later"), which a job script can tell from a user error."""

    exit_code = 75


class DataError(BenchError):
    """A BenchError in the data's files themselves (label ids outside the classes): fixing them changes the
    data's content id and so the run ids, which --resume cannot continue."""


def debugging() -> bool:
    """Whether BENCH_DEBUG asks for tracebacks (0, false, no, off and empty do not: CI templates set 0)."""
    return os.environ.get("BENCH_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def unknown_name(kind: str, name: object, known: Sequence[str], *, plural: str | None = None,
                 cutoff: float = 0.5) -> BenchError:
    """"unknown <kind> 'x'; did you mean 'y'? Known <kind>s: ..." for a name outside ``known``."""
    close = difflib.get_close_matches(str(name).lower(), list(known), n=1, cutoff=cutoff)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return BenchError(f"unknown {kind} {name!r}{hint} Known {plural or kind + 's'}: {', '.join(known)}")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then the exception it was raised from or while handling, and so on (each once: a
    chain can loop). A writer's or a compiler's own error often carries the one that matters."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def few(items: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``items`` and how many more: an error of a thousand ids stays one readable line."""
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def one_line(exc: BaseException) -> str:
    """An error's message as the command line says it. torch re-raises an error from a DataLoader
    worker as the same type, with the worker's whole traceback as its message: the user's message is
    its last line (``bench.errors.DataError: ...``, for any of bench's errors)."""
    text = str(exc)
    if isinstance(exc, BenchError) and (caught := re.match(r"Caught (\w+) in DataLoader worker", text)):
        text = text.rstrip().rsplit(f"{caught[1]}: ", 1)[-1]
    return re.sub(r"\s*\n\s*", " ", text.strip())  # another library's words inside ours (pandas') may hold lines
