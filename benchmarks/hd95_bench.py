"""HD95 speed: bench.metrics.hd95 vs medpy.metric.binary.hd95, side by side, in one run.

A deterministic label volume (default 100x512x512, a Synapse-sized CT grid) holds ``--organs``
ellipsoid organs; the prediction is the ground truth shifted by a few voxels, dilated or eroded,
plus one false-positive blob per organ somewhere in the volume (``--stray``: also one false-positive
voxel per organ in the volume's far corner from it, as a weak model leaves them, which makes the
organ's box the whole volume). Both libraries score the same
binary organ masks (TransUNet scores per organ on the whole volume, in voxel units); the values
must agree to 1e-6, otherwise the script exits 1. Run single-threaded:

    OMP_NUM_THREADS=1 python benchmarks/hd95_bench.py            # full size; medpy takes ~1 min
    OMP_NUM_THREADS=1 python benchmarks/hd95_bench.py --small    # 40x192x192, a few seconds
    OMP_NUM_THREADS=1 python benchmarks/hd95_bench.py --spacing 3,0.8,0.8 --repeats 3
    OMP_NUM_THREADS=1 python benchmarks/hd95_bench.py --stray

Timings exclude building the masks (``pred == organ``), which both sides would share.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from scipy import ndimage

GOAL = 20.0  # required speed-up over medpy at full size


def make_volumes(depth: int, size: int, organs: int, seed: int = 0,
                 stray: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, ground truth) uint8 label maps of shape (depth, size, size); organ ids 1..organs."""
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
        blob_c = rng.uniform([0, 0, 0], [depth, size, size])  # a false positive far from the organ
        blob = ((z - blob_c[0]) / 3) ** 2 + ((y - blob_c[1]) / 8) ** 2 + ((x - blob_c[2]) / 8) ** 2 <= 1
        pred[moved | blob] = organ
        if stray:  # the corner farthest from the organ's centre
            pred[tuple(0 if ci > n / 2 else n - 1 for ci, n in zip(c, gt.shape))] = organ
    return pred, gt


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(value, median seconds) of ``fn()`` over ``repeats`` calls."""
    times, value = [], float("nan")
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return value, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=100, help="slices (default 100)")
    ap.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    ap.add_argument("--organs", type=int, default=8, help="organ count (default 8)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per library and organ; median reported")
    ap.add_argument("--small", action="store_true", help="quick look: 40x192x192 (overrides --depth/--size)")
    ap.add_argument("--spacing", default=None, help="mm per axis 'z,y,x' passed to both (default: voxel units)")
    ap.add_argument("--stray", action="store_true", help="one false-positive voxel per organ in the far corner")
    args = ap.parse_args(argv)
    if args.small:
        args.depth, args.size = 40, 192
    spacing = tuple(float(s) for s in args.spacing.split(",")) if args.spacing else None

    from medpy.metric.binary import hd95 as medpy_hd95

    from bench.metrics import hd95

    pred, gt = make_volumes(args.depth, args.size, args.organs, stray=args.stray)
    print(f"volume {pred.shape}, {args.organs} organs{', a stray voxel each' if args.stray else ''}, "
          f"spacing {spacing or 'none (voxels)'}, "
          f"repeats {args.repeats}\n")
    print("| organ | medpy HD95 | ours HD95 | abs diff | medpy s | ours s |")
    print("|---|---|---|---|---|---|")
    total_m = total_o = worst = 0.0
    for organ in range(1, args.organs + 1):
        p, g = pred == organ, gt == organ
        vm, tm = _timed(lambda: medpy_hd95(p, g, voxelspacing=spacing), args.repeats)
        vo, to = _timed(lambda: hd95(p, g, spacing), args.repeats)
        diff = abs(vm - vo)
        total_m, total_o, worst = total_m + tm, total_o + to, max(worst, diff)
        print(f"| {organ} | {vm:.6f} | {vo:.6f} | {diff:.1e} | {tm:.2f} | {to:.3f} |")
    print(f"| total | | | max {worst:.1e} | {total_m:.2f} | {total_o:.3f} |")
    same = worst <= 1e-6
    speedup = total_m / total_o
    print(f"\nspeed-up: {speedup:.1f}x (goal >= {GOAL:.0f}x at full size); values identical to 1e-6: {same}")
    if not same:
        print("FAIL: bench.metrics.hd95 differs from medpy", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
