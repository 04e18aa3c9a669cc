"""Realistic run records for tests (records, report, drift, and anyone else who needs one), and
``run_bench``, the CLI in a fresh process.

``make_record`` builds a schema-1 record whose aggregates are consistent with its per-class and
per-case rows, and each row with its own pixel counts: every case of a class gets the class's Dice, so
expected means are easy to compute by hand. ``case_row`` and ``recount`` build or edit a case row
keeping its numbers those of its counts.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from bench.metrics import COUNTS, count_scores, pooled_metrics
from bench.modeling import SegmentationModel
from bench.protocol import list_protocols, load_protocol
from bench.records import SCHEMA_VERSION

_RUN_NUMBERS = itertools.count()  # default run ids: unique within a process, shaped as RunSpec.key's
SYNAPSE_CLASSES = ["aorta", "gallbladder", "kidney_l", "kidney_r", "liver", "pancreas", "spleen", "stomach"]
FAMILIES = {"vmunet": "ssm", "vmunet_v2": "ssm", "lightm_unet": "ssm", "unet": "cnn", "transunet": "transformer", "swin_unet": "transformer"}


def protocol_hash(name: str) -> str:
    """A built-in protocol's hash as it is now (a board of other content under its name says "a modified
    copy"), else a made-up one."""
    return load_protocol(name).hash if name in list_protocols() else "ffffeeeeddddcccc"


def make_record(
    model: str = "vmunet",
    dataset: str = "synapse",
    seed: int = 0,
    *,
    dice: float = 0.8,
    class_dice: dict[str, float] | None = None,
    hd95: float = 20.0,
    protocol: str | None = None,
    overrides: dict[str, Any] | None = None,
    synthetic: bool = False,
    n_cases: int = 2,
    model_config: dict[str, Any] | None = None,
    params: int = 27_430_000,
    run_id: str | None = None,
    classes: list[str] | None = None,
    case_ids: list[str] | None = None,
) -> dict[str, Any]:
    """A finished run. Synapse: 8 organs, policy legacy-synapse; ISIC: one class, legacy-isic.

    ``dice`` sets every class's Dice unless ``class_dice`` gives per-class values (missing
    classes keep ``dice``); the aggregate is the mean over classes. ``hd95=nan`` gives NaN HD95.
    ``classes`` lists the foreground class names in class-id order (default: Synapse / ISIC);
    ``case_ids`` names the test cases (default: ``n_cases`` of them, "case0000", ...).
    """
    isic = dataset.startswith("isic")
    classes = classes or (["lesion"] if isic else SYNAPSE_CLASSES)
    protocol = protocol or ("isic17" if isic else "synapse")
    per_class_dice = {name: (class_dice or {}).get(name, dice) for name in classes}
    cases = list(case_ids) if case_ids else [f"case{i:04d}" for i in range(n_cases)]
    n_cases = len(cases)

    policy = "legacy-isic" if isic else "legacy-synapse"
    per_case, per_class = [], []
    for cid, name in enumerate(classes, start=1):
        d = per_class_dice[name]
        # legacy-isic pools these counts: their Dice is d (to 1e-6); elsewhere counts whose Dice is d exactly.
        # Every row's numbers are those its counts give, as a run writes them (the recheck compares)
        if isic:
            tp = round(d * 1_000_000)
            counts = {"tp": tp, "fp": 1_000_000 - tp, "fn": 1_000_000 - tp, "tn": 18_000_000}
        else:
            counts = dice_counts(d)
        rows = [case_row(case, cid, name, policy, counts, hd95=None if isic or math.isnan(hd95) else hd95)
                for case in cases]
        per_case += rows
        pooled = pooled_metrics(*counts.values()) if isic else {m: rows[0][m] for m in ("dice", "iou")}
        per_class.append({
            "class": cid, "name": name, "dice": pooled["dice"],
            "hd95": None if isic else hd95, "iou": pooled["iou"],
            "n": n_cases, "n_nan": n_cases if (not isic and math.isnan(hd95)) else 0,
        })  # fmt: skip

    # as bench.metrics.aggregate gives them from the rows (bench report recomputes and compares them)
    metrics: dict[str, Any] = {"dice": sum(pc["dice"] for pc in per_class) / len(classes),
                               "iou": sum(pc["iou"] for pc in per_class) / len(classes), "n_cases": n_cases}
    if isic:
        metrics.update({k: v for k, v in pooled.items() if k in ("acc", "spe", "sen")})
    else:
        metrics["hd95"] = hd95  # NaN is allowed in memory; written as null

    overrides = dict(overrides or {})
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id or f"{dataset}-{protocol}-{model}-s{seed}-{next(_RUN_NUMBERS):08x}",
        "status": "finished",
        "model": model,
        "family": FAMILIES.get(model, "cnn"),
        "model_config": dict(model_config or {}),
        "dataset": dataset,
        "data_root": f"/data/{dataset}",
        "synthetic": synthetic,
        "split": "test",
        "protocol": {
            "name": protocol,
            "version": 1,
            "hash": protocol_hash(protocol),
            "off_protocol": bool(overrides),
            "overrides": overrides,
        },
        "policy": policy,
        "seed": seed,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "packages": {"torch": "2.5.1", "numpy": "2.4.6", "bench": "0.1.0"},
        "device": {"device": "cpu", "cpu": "AMD EPYC 7763", "threads": 2, "gpu": None, "cuda": None, "torch": "2.5.1"},
        "scan_backend": "torch" if FAMILIES.get(model) == "ssm" else None,
        "started_at": "2026-01-01T10:00:00+00:00",
        "finished_at": "2026-01-01T11:00:00+00:00",
        "wall_time_s": 3600.0,
        "train": {"epochs": 150, "iterations": 13950, "final_loss": 0.123, "time_s": 3500.0},
        "metrics": metrics,
        "per_class": per_class,
        "per_case": per_case,
        "cost": {"params": params, "trainable_params": params, "macs": None, "flops": None, "fps": None, "peak_mem_mb": None},
    }


def dice_counts(dice: float, tn: int = 900) -> dict[str, int]:
    """Pixel counts (tp, fp, fn, tn) of two non-empty masks whose Dice is ``dice`` (in [0, 1]) to the last bit:
    ``dice`` as the decimal fraction p/q its repr is, q at least 100, tp = p and fp = fn = q - p."""
    frac = Fraction(repr(float(dice)))
    scale = -(-100 // frac.denominator)  # q >= 100: a few pixels each way, as a small mask has
    tp, total = frac.numerator * scale, frac.denominator * scale
    if not 0 <= tp <= total or total == 0:
        raise ValueError(f"dice_counts: a Dice in [0, 1]; got {dice!r}")
    return {"tp": tp, "fp": total - tp, "fn": total - tp, "tn": tn}


def case_row(case: str, cls: int, name: str, policy: str, counts: dict[str, int] | None = None, *,
             dice: float | None = None, hd95: float | None = 20.0, **extra: Any) -> dict[str, Any]:
    """One per-case row of a record as ``bench.metrics.score_case`` writes it: the numbers its ``counts``
    (tp, fp, fn, tn) give under ``policy`` (``recount``), else those of counts giving ``dice``
    (``dice_counts``), so `bench report`'s recheck finds nothing to restate. ``hd95`` (which counts do not
    give) and ``extra`` keys are as given."""
    row = {"case": case, "class": cls, "name": name, "hd95": hd95, **extra}
    return recount(row, policy, **(counts if counts is not None else dice_counts(dice)))


def recount(row: dict[str, Any], policy: str, *, dice: float | None = None, **counts: int) -> dict[str, Any]:
    """``row`` (changed in place) with ``counts`` (any of tp, fp, fn, tn), or counts giving ``dice`` (its tn
    kept), and the numbers its counts then give under ``policy`` (``bench.metrics.count_scores``: dice, iou,
    acc, spe, sen, n_pred, n_ref, empty): a test that edits a case's counts or Dice keeps the row one a run
    could have written."""
    row.update(counts if dice is None else dice_counts(dice, tn=row.get("tn", 900)))
    row.update(count_scores(*(row[k] for k in COUNTS), policy=policy))
    return row


def restate(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` (changed in place) with the numbers it stores (``metrics``, ``per_class`` dice and hd95)
    recomputed from its ``per_case`` rows under its policy, as a run writes them: for a test that edits the
    rows or the policy (bench report would otherwise restate them, and warn)."""
    from bench.metrics import aggregate, aggregate_per_class

    rows = [{k: math.nan if v is None else v for k, v in row.items()} for row in rec["per_case"]]
    again = aggregate(rows, rec["policy"])
    rec["metrics"].update({k: again[k] for k in rec["metrics"] if k in again})
    per_class = {pc["class"]: pc for pc in aggregate_per_class(rows, rec["policy"])}
    for pc in rec["per_class"]:
        pc.update({m: per_class[pc["class"]][m] for m in ("dice", "hd95") if m in pc})
    return rec


def run_bench(*args, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in a fresh process with one OpenMP thread (and ``env`` added);
    ``check``: assert it exited 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    # bench writes UTF-8 whatever the locale (LC_ALL=C: ASCII would not decode its "·")
    proc = subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True, text=True,
                          encoding="utf-8", env=env)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_bench_here(monkeypatch, capsys, *args, check: bool = True) -> subprocess.CompletedProcess:
    """``bench ARGS`` through its console entry point in this process, as a user runs it (BenchError: one
    line, exit 2), without a new process's second of imports: for commands that load no model. Warnings
    said once per process are said again, as in a fresh one. ``check``: assert it exited 0."""
    import pytest

    from bench.cli import _warned, main

    monkeypatch.delenv("BENCH_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
    saved = set(_warned)
    _warned.clear()
    capsys.readouterr()  # what came before is not this command's
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        _warned.clear()
        _warned.update(saved)
    out, err = capsys.readouterr()
    proc = subprocess.CompletedProcess(["bench", *map(str, args)], info.value.code, out, err)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


class Scripted:
    """A numpy Generator's stand-in for augmentation tests: ``random()`` returns the given values, then
    0.99 (no further draw fires); ``uniform`` returns the given values in turn."""

    def __init__(self, randoms, uniforms=()):
        self.randoms, self.uniforms = list(randoms), list(uniforms)

    def random(self):
        return self.randoms.pop(0) if self.randoms else 0.99

    def uniform(self, lo, hi, size=None):
        return self.uniforms.pop(0)


def require_mamba_kernels() -> None:
    """For tests of the CUDA path, on a CUDA machine: there `make setup` installs mamba-ssm, so
    kernels that do not import are a failure, not a skip (a broken build would otherwise pass
    silently). ``BENCH_TEST_NO_MAMBA=1`` skips instead, on a GPU machine set up without them."""
    import pytest

    from ssm_models import scan

    problem = scan.mamba_kernels_problem()
    if problem is None:
        return
    if os.environ.get("BENCH_TEST_NO_MAMBA") == "1":
        pytest.skip(problem)
    pytest.fail(f"on this CUDA machine {problem}; `make setup` installs them here (BENCH_TEST_NO_MAMBA=1 skips "
                "these tests)")


def md_rows(text: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``text`` whose header starts with ``first_column``,
    as dicts of stripped cells (the table's padding aside)."""
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and cells(line)[0] == first_column)
    header, rows = cells(lines[start]), []
    for line in lines[start + 2:]:  # past the header's separator line
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, cells(line))))
    return rows


class OneConv(SegmentationModel):
    """A model of one's own at its smallest: one 1x1 convolution from the image to the logits."""

    def __init__(self, num_classes: int, in_chans: int):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.head = nn.Conv2d(in_chans, num_classes, 1)

    def forward_logits(self, x):
        return self.head(x)


def randomise_like_a_checkpoint(module: nn.Module, seed: int = 0) -> None:
    """Every parameter and BatchNorm statistic away from its init, as a trained checkpoint has them: at
    init a norm is (1, 0) and running statistics (0, 1), where a norm left out or moved cannot show, and an
    SSM's A_log rows are all log(1..N) and its D ones, where which channel or direction reads which row cannot.
    Running variances are small (0.01 to 0.06), so a BatchNorm eps other than 1e-5 shows too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.05 + 0.01)
