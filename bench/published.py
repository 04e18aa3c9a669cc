"""The papers' own numbers as tidy data: a reader for ``results/published.csv``.

One row per (source, model, dataset, metric) number quoted from a published table (TransUNet,
Swin-Unet, VM-UNet, VM-UNet-V2, LightM-UNet, and later papers' params/FLOPs), in the paper's unit,
with its computation convention where known and the protocol here that reproduces its recipe.
Reports show these next to measured numbers; nothing in the file is measured by the harness.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.fileio import read_text
from bench.protocol import list_protocols

# protocol: the recipe here that the paper's number was trained under (its authors' or the paper it
# was copied from), empty where none of ours is it; reports compare like with like only there
COLUMNS = ["source", "model", "dataset", "metric", "value", "unit", "convention", "protocol", "note"]
METRICS = frozenset({"dice", "hd95", "iou", "acc", "spe", "sen", "params", "flops", "fps"})
UNITS = frozenset({"%", "mm", "voxels", "M", "G", "img/s"})  # voxels: Synapse HD95, which the papers print as "mm"
# An installed wheel holds its copy of results/published.csv beside this file (setup.py); a checkout has
# none there and reads results/ (no link: Windows checks one out as a file holding its path)
_PACKAGED = Path(__file__).resolve().parent / "published.csv"
DEFAULT_PATH = _PACKAGED if _PACKAGED.is_file() else _PACKAGED.parents[1] / "results" / "published.csv"
# how messages name it: its place in a checkout, else (an installed wheel) the copy's path
DEFAULT_NAME = str(DEFAULT_PATH) if DEFAULT_PATH == _PACKAGED else "results/published.csv"


def _check_row(row: list[str], protocols: list[str]) -> str | None:
    """What is wrong with one data row, or None."""
    if len(row) != len(COLUMNS):
        return f"expected {len(COLUMNS)} fields, got {len(row)}"
    rec = dict(zip(COLUMNS, row))
    try:
        ok = math.isfinite(float(rec["value"]))
    except ValueError:
        ok = False
    if not ok:
        return f"value must be a finite number; got {rec['value']!r}"
    metric, sep, cls = rec["metric"].partition(":")
    if metric not in METRICS or (sep and not cls):
        return f"metric must be one of {', '.join(sorted(METRICS))} (or <metric>:<class>); got {rec['metric']!r}"
    if rec["unit"] not in UNITS:
        return f"unit must be one of {', '.join(sorted(UNITS))}; got {rec['unit']!r}"
    if rec["protocol"] and rec["protocol"] not in protocols:
        return f"protocol must be empty or one of {', '.join(protocols)}; got {rec['protocol']!r}"
    return None


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate the published-numbers CSV; ``value`` is float, every other column str."""
    path = Path(path) if path is not None else DEFAULT_PATH
    text = read_text(path, "published numbers (CSV)")  # a BOM: spreadsheets' "CSV UTF-8"
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header != COLUMNS:
            raise BenchError(f"{path}: header must be {','.join(COLUMNS)}; got {header}")
        rows, protocols = [], list_protocols()
        for n, row in enumerate(reader, start=1):
            if (problem := _check_row(row, protocols)) is not None:
                raise BenchError(f"{path}: row {n} (line {reader.line_num}): {problem}")
            rows.append(row)
    except csv.Error as e:
        raise BenchError(f"{path}: cannot read published numbers ({e})") from None
    df = pd.DataFrame(rows, columns=COLUMNS, dtype=str)
    df = df.assign(value=df["value"].astype(float))
    df.attrs["sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()  # of what was read: a pipe reads once
    return df
