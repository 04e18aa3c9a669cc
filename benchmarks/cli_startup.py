"""Start-up cost of the commands that only read records: `bench report` and `bench check` on a tiny
results folder, and `import bench.cli`, each a fresh process, as CI, a notebook's shell cell or a laptop
runs them. Most of such a command's time is imports (torch alone about 1.5 s), not the records.

Writes 4 run records (2 models x 2 seeds, with the test suite's record factory) and a drift baseline of
them into a temporary folder, then prints the median wall time of ``--repeats`` runs of each command of
this checkout (the one holding this file) and whether the report's process loaded torch::

    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))  # tests.fixtures and this checkout's bench

# `bench ARGS` in this process, then whether it imported torch
_LOADED_TORCH = ("import sys; from bench.cli.console import main; sys.argv = ['bench', *sys.argv[1:]]\n"
                 "try:\n    main()\nfinally:\n    print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)")


def write_results(root: Path) -> Path:
    """4 finished runs in ``root`` and the drift baseline of them (``root/baseline.csv``)."""
    from bench.records import write_record
    from tests.fixtures import make_record

    for model in ("unet", "vmunet"):
        for seed in (0, 1):
            write_record(make_record(model, seed=seed, dice=0.7 + 0.05 * seed), root)
    baseline = root / "baseline.csv"
    _run(["-m", "bench", "check", "--update", "--results", root, "--baseline", baseline])
    return baseline


def _run(args: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, encoding="utf-8", env=env, check=True)


def median_s(args: list, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _run(args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = write_results(root)
        commands = {
            "import bench.cli": ["-c", "import bench.cli"],
            "bench report": ["-m", "bench", "report", "--results", root],
            "bench check": ["-m", "bench", "check", "--results", root, "--baseline", baseline],
        }
        print(f"checkout {CHECKOUT}, median of {args.repeats} fresh processes each:")
        for name, command in commands.items():
            print(f"  {name:<16} {median_s(command, args.repeats):.2f} s")
        said = _run(["-c", _LOADED_TORCH, "report", "--results", root]).stderr.strip().splitlines()[-1]
        print(f"  bench report: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
