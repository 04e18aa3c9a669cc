"""User-facing errors, and the chain an exception arose in."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator, Sequence


class BenchError(Exception):
    """A user-facing error: one clear message naming the file or argument and what was expected."""

    exit_code = 2  # the command line's, for every user error
    prefix = "error"  # the word its one line begins with


class HeldError(BenchError):
    """Work skipped because other processes hold it (bench.claim), none of it failed: not done here, yet
    nothing to fix; EX_TEMPFAIL ("try again later"), which a job script can tell from a user error."""

    exit_code = 75
    prefix = "held"  # "error:" said something failed


class DataError(BenchError):
    """A BenchError in the data's files themselves (label ids outside the classes): fixing them changes the
    data's content id and so the run ids, which --resume cannot continue."""


def debugging() -> bool:
    """Whether BENCH_DEBUG asks for tracebacks (0, false, no, off and empty do not: CI templates set 0)."""
    return os.environ.get("BENCH_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def closest(name: object, choices: Iterable[str]) -> str | None:
    """The choice nearest to a misspelt ``name``, any case, or None: difflib's at its default cutoff
    (a lower one offers 'poly_power' for 'colour'), else the longest choice ``name`` spells out
    (eval for [evaluation])."""
    lowered = {c.lower(): c for c in reversed(list(choices))}  # the first of choices alike but for case
    typed = str(name).lower()
    close = difflib.get_close_matches(typed, list(lowered), n=1, cutoff=0.6) or sorted(
        (c for c in lowered if len(c) >= 3 and typed.startswith(c)), key=len, reverse=True)
    return lowered[close[0]] if close else None


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the choice nearest to ``name``; "" where none is near."""
    close = closest(name, choices)
    return f" (did you mean {close!r}?)" if close is not None else ""


def unknown_name(kind: str, name: object, known: Sequence[str], *, plural: str | None = None) -> BenchError:
    """"unknown <kind> 'x' (did you mean 'y'?). Known <kind>s: ..." for a name outside ``known``."""
    return BenchError(f"unknown {kind} {name!r}{did_you_mean(name, known)}. Known {plural or kind + 's'}: "
                      f"{', '.join(known)}")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then the exception it was raised from or while handling, and so on (each once: a
    chain can loop). A writer's or a compiler's own error often carries the one that matters."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def counted(n: int, word: str) -> str:
    """``n`` and ``word``, plural unless one: "1 case", "3 cases"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def few(items: Sequence[str], n: int = 5, *, sep: str = ", ") -> str:
    """The first ``n`` of ``items`` and how many more: an error of a thousand ids stays one readable line.
    ``sep``: "; " where the items hold commas of their own (whole problems, not ids)."""
    return sep.join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def one_line(exc: BaseException) -> str:
    """An error's message as the command line says it. torch re-raises an error from a DataLoader
    worker as the same type, with the worker's whole traceback as its message: the user's message is
    its last line (``bench.errors.DataError: ...``, for any of bench's errors)."""
    text = str(exc)
    if isinstance(exc, BenchError) and (caught := re.match(r"Caught (\w+) in DataLoader worker", text)):
        text = text.rstrip().rsplit(f"{caught[1]}: ", 1)[-1]
    return re.sub(r"\s*\n\s*", " ", text.strip())  # another library's words inside ours (pandas') may hold lines
