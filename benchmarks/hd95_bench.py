"""HD95 speed: bench.metrics.hd95 vs medpy.metric.binary.hd95, side by side, in one run.

A deterministic 100×512×512 label volume with 8 ellipsoid organs; the prediction is the ground
truth shifted, eroded/dilated, with false-positive blobs. Both libraries score the same 8 binary
organ masks; values must agree to 1e-6 (exit 1 otherwise). Run single-threaded:

    OMP_NUM_THREADS=1 python benchmarks/hd95_bench.py            # full size (medpy ~1 min)
    OMP_NUM_THREADS=1 python benchmarks/hd95_bench.py --depth 40 --size 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from scipy import ndimage


def make_volumes(depth: int, size: int, organs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:depth, :size, :size]
    gt = np.zeros((depth, size, size), np.uint8)
    pred = np.zeros_like(gt)
    for organ in range(1, organs + 1):
        c = rng.uniform([0.3 * depth, 0.2 * size, 0.2 * size], [0.7 * depth, 0.8 * size, 0.8 * size])
        r = rng.uniform([0.1 * depth, 0.04 * size, 0.04 * size], [0.25 * depth, 0.12 * size, 0.12 * size])
        shift = rng.integers(-3, 4, size=3)
        body = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
        gt[body] = organ
        moved = np.roll(body, tuple(shift), axis=(0, 1, 2))
        moved = ndimage.binary_dilation(moved) if organ % 2 else ndimage.binary_erosion(moved)
        blob_c = rng.uniform([0, 0, 0], [depth, size, size])
        blob = ((z - blob_c[0]) / 3) ** 2 + ((y - blob_c[1]) / 8) ** 2 + ((x - blob_c[2]) / 8) ** 2 <= 1
        pred[moved | blob] = organ
    return pred, gt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--organs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per library (median reported)")
    args = ap.parse_args()

    from medpy.metric.binary import hd95 as medpy_hd95

    from bench.metrics import hd95

    pred, gt = make_volumes(args.depth, args.size, args.organs)
    print(f"volume {pred.shape}, {args.organs} organs, repeats {args.repeats}\n")
    print("| organ | medpy HD95 | ours HD95 | abs diff | medpy s | ours s |")
    print("|---|---|---|---|---|---|")
    total_m, total_o, worst = 0.0, 0.0, 0.0
    for organ in range(1, args.organs + 1):
        p, g = pred == organ, gt == organ
        tm, to = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            vm = medpy_hd95(p, g)
            tm.append(time.perf_counter() - t)
            t = time.perf_counter()
            vo = hd95(p, g)
            to.append(time.perf_counter() - t)
        m, o = statistics.median(tm), statistics.median(to)
        total_m, total_o, worst = total_m + m, total_o + o, max(worst, abs(vm - vo))
        print(f"| {organ} | {vm:.6f} | {vo:.6f} | {abs(vm - vo):.1e} | {m:.2f} | {o:.3f} |")
    print(f"| total | | | max {worst:.1e} | {total_m:.2f} | {total_o:.3f} |")
    print(f"\nspeed-up: {total_m / total_o:.1f}x (goal >= 20x); values identical to 1e-6: {worst <= 1e-6}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
