"""Lists as the command line gives them ("all" or a comma list: ``--models``, ``--seeds``) and as the
Python API may (a list, one value): one reading for both."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any

from bench.errors import BenchError


def name_list(names: str | Iterable[str] | None) -> list[str] | None:
    """Names as a comma list, "all" or a list (``["all"]`` too) -> a list without blanks, each once;
    None for all (None, "all"). Nothing named (",", []) is an empty list: callers decide what that means."""
    if names is None:
        return None
    picked = [str(n).strip() for n in (names.split(",") if isinstance(names, str) else names)]
    picked = list(dict.fromkeys(n for n in picked if n))
    return None if picked == ["all"] else picked


def nothing_named(option: str, given: Any, example: str) -> BenchError:
    """The error for a list option naming nothing (``--models ,``), which no command reads as "all"."""
    return BenchError(f"{option} {given!r} names nothing; give 'all' or a comma list, e.g. {example}")


def int_list(values: Any, option: str = "--seeds", example: str = "0,1,2") -> list[int]:
    """Whole numbers as a comma list ("0,1,2"), one number or a list -> a list, in order. BenchError
    naming ``option`` for anything else (a float, True, "a") or for none at all."""
    given = values
    if isinstance(values, str):
        values = values.split(",")
    elif not isinstance(values, Iterable) or getattr(values, "ndim", 1) == 0:  # 0, numpy's int64 or 0-d array
        values = [values]
    out = []
    for v in values:
        if isinstance(v, str):
            if not v.strip():
                continue
            v = v.strip()
            ok = v.removeprefix("-").isdecimal()
        else:
            ok = not isinstance(v, bool) and hasattr(v, "__index__")  # int, numpy ints; not 0.0 or True
        if not ok:
            raise BenchError(f"{option} must be a comma list of integers, e.g. {example}; got {given!r}")
        out.append(int(v))
    if not out:  # an empty grid would run nothing and say nothing
        raise BenchError(f"{option} must list at least one integer, e.g. {example}; got {given!r}")
    return out


def matched_names(names: list[str], have: Iterable[str]) -> list[str]:
    """``names`` as ``have`` spells them where one of it is alike but for case or Unicode form (`--models
    UNET`; a decomposed "ü" looks like a composed one); others as given."""
    alike: dict[str, list[str]] = {}
    for h in dict.fromkeys(have):
        alike.setdefault(_folded(h), []).append(h)
    return [alike[_folded(n)][0] if len(alike.get(_folded(n), [])) == 1 else n for n in names]


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()
