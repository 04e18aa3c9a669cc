"""The records of `bench profile` (``<results>/profiles/<id>.json``): their columns, writing and reading.

Apart from ``bench.cost``, which measures and imports torch: reports and drift checks read these
records in CI and on laptops without torch (``bench report`` loads it nowhere).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.fileio import atomic_write_text

__all__ = ["PROFILE_DIR", "PROFILE_COLUMNS", "profile_id", "write_profile", "load_profiles"]

PROFILE_DIR = "profiles"
# `bench profile` columns, in order (the profile output's contract: model, params, input_shape,
# macs, paper_macs, flops, the fingerprint and, where timed, latency_ms_median and fps)
PROFILE_COLUMNS = ["model", "family", "params", "trainable_params", "paper_params", "input_shape", "macs",
                   "flops", "scan_macs", "paper_macs", "paper_macs_missing_pct", "fvcore_macs", "device",
                   "fingerprint", "scan_backend", "precision", "channels_last", "compiled", "batch_size",
                   "warmup_iters", "timed_iters", "latency_ms_median", "latency_ms_p90", "fps", "throughput_batch",
                   "throughput_fps", "peak_mem_mb", "train_peak_mem_mb", "peak_mem_kind", "git_commit", "code_digest"]


def profile_id(row: dict[str, Any]) -> str:
    """The file name of ``row``'s profile: one per model, input, configuration, device and way it ran."""
    key = json.dumps([row["model"], row["input_shape"], row["model_config"], row["device_fingerprint"],
                      row["precision"], row["channels_last"], row["compiled"], row["scan_backend"]],
                     sort_keys=True, default=str)
    return f"{row['model']}-{row['input_shape']}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def write_profile(row: dict[str, Any], results_dir: Path) -> Path:
    """``results_dir/profiles/<id>.json``, atomically; a re-profile of the same setup replaces it,
    except that a counts-only one (``--no-timing``) keeps the timings and memory already there."""
    path = Path(results_dir) / PROFILE_DIR / f"{profile_id(row)}.json"
    if "latency_ms_median" not in row and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if all(old.get(k) == row[k] for k in ("params", "macs")):  # timings of this very architecture
            row = {**{k: v for k, v in old.items() if k not in row}, **row}
    return atomic_write_text(path, json.dumps(row, indent=1, sort_keys=True, default=str) + "\n")


def load_profiles(results_dir: Path):
    """All profile rows under ``results_dir/profiles`` as a DataFrame (empty if none); ``model_config`` as
    ``records.load`` has it (``canonical_json``), so that runs and their cost join on ``model`` and ``model_config``."""
    import pandas as pd

    from bench.records import canonical_json

    rows = []
    for path in sorted((Path(results_dir) / PROFILE_DIR).glob("*.json")):
        try:
            rows.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise BenchError(f"{path}: unreadable profile record ({exc})") from None
    frame = pd.DataFrame(rows)
    if "model_config" in frame:  # absent in profiles written before configs were kept
        frame["model_config"] = [canonical_json(c) if isinstance(c, dict) else None for c in frame["model_config"]]
    return frame.reindex(columns=[*PROFILE_COLUMNS, *[c for c in frame.columns if c not in PROFILE_COLUMNS]])
