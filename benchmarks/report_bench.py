"""`bench report` at scale: time to build the Markdown report (boards with bootstrap CIs, paired tests,
rank stability) of a large results folder, without training anything.

Writes ``--runs`` synthetic run records (6 models, Synapse-like: 12 test cases x 8 organs, plausible
random per-case Dice and HD95) with the test suite's record factory into a temporary folder, then
times ``bench.report.write_report(..., reference="unet")`` and prints the median of ``--repeats``
and a digest of the text (two code versions that agree give one digest). Run single-threaded:

    OMP_NUM_THREADS=1 python benchmarks/report_bench.py --runs 420
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures, from a checkout

MODELS = {"unet": 0.76, "transunet": 0.78, "swin_unet": 0.79, "vmunet": 0.815, "vmunet_v2": 0.82, "lightm_unet": 0.80}


def write_records(root: Path, n_runs: int, seed: int = 0) -> None:
    from bench.records import write_record
    from tests.fixtures import make_record

    rng = np.random.default_rng(seed)
    for i in range(n_runs):
        model = list(MODELS)[i % len(MODELS)]
        rec = make_record(model, seed=i // len(MODELS), n_cases=12)
        for row in rec["per_case"]:
            mu = MODELS[model]
            row["dice"] = float(rng.beta(25 * mu, 25 * (1 - mu)))
            row["hd95"] = float(rng.gamma(2.0, 10.0))
        write_record(rec, root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=420)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from bench.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_records(root, args.runs)
        times, text = [], ""
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            text = write_report(root, "md", reference="unet")
            times.append(time.perf_counter() - t0)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    print(f"write_report md --reference unet, {args.runs} runs: median {statistics.median(times):.2f} s "
          f"over {args.repeats} ({', '.join(f'{t:.2f}' for t in times)}); text {len(text)} chars, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
