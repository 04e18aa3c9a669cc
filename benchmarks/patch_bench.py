"""3-D training items (lightm_unet_3d): decoding and preprocessing the whole NIfTI volume for every
patch vs the memory-mapped .npy cache of preprocessed volumes bench run keeps under <results>/cache,
side by side, in one run.

A synthetic nnU-Net dataset of ``--cases`` CT-like volumes (.nii.gz) is written to a temporary
folder. Items are drawn case after case, so the reader's two-volume memory cache misses as random
draws over a real dataset would. All cases share one spacing and have no zero background, so
preprocessing is the non-zero crop's search and the normalisation (resampling would widen the gap). Each side times ``--repeats`` items (load, preprocessing or
its cached result, region, nnU-Net's 3-D augmentation) after its set-up (``ct_foreground``'s
statistics pass) and one warm-up item per volume (which on the cache side writes the .npy files),
both timed separately. Both
sides must return identical tensors, else the script exits 1.

    OMP_NUM_THREADS=1 python benchmarks/patch_bench.py --out benchmarks/patch_bench.md   # 160x256², 128³
    OMP_NUM_THREADS=1 python benchmarks/patch_bench.py --small                              # 48x96², 32³
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import env
from bench.data import open_dataset, synthesize
from bench.data.torch_dataset import TrainDataset
from bench.protocol import load_protocol
from bench.transforms import nnunet_initial_patch


def _time_items(data: TrainDataset, keys: list[tuple[int, int]]) -> tuple[list[float], list[tuple]]:
    times, items = [], []
    for key in keys:
        t0 = time.perf_counter()
        items.append(data[key])
        times.append(time.perf_counter() - t0)
    return times, items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--depth", type=int, default=160)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--small", action="store_true", help="48x96x96 volumes, 32³ patches")
    ap.add_argument("--out", type=Path, help="write the table here (markdown)")
    args = ap.parse_args(argv)
    if args.small:
        args.depth, args.size, args.patch = 48, 96, 32
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize("nnunet", Path(tmp) / "data", dims=3, n_cases=args.cases, depth=args.depth,
                          size=args.size)
        proto = load_protocol("lightm_unet_3d").with_overrides(patch_size=[args.patch] * 3)
        plain = open_dataset("nnunet", root)
        mapped = open_dataset("nnunet", root)
        mapped.volume_cache = Path(tmp) / "cache"
        n = len(plain.train_volume_ids())
        warm = [(i, i) for i in range(n)]
        keys = [(i % n, n + i) for i in range(args.repeats)]  # case after case: the 2-entry cache misses
        sides = {}
        for name, ds in (("decode per item", plain), ("memory-mapped .npy", mapped)):
            t0 = time.perf_counter()
            data = TrainDataset(ds, proto, seed=0)  # ct_foreground's statistics pass
            setup = time.perf_counter() - t0
            warm_times, _ = _time_items(data, warm)
            times, items = _time_items(data, keys)
            sides[name] = (statistics.median(times), setup + sum(warm_times), items)
    (a, warm_a, items_a), (b, warm_b, items_b) = sides.values()
    n = len(warm)
    same = all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(items_a, items_b))
    lines = [
        "# 3-D training items: whole-volume decoding and preprocessing vs the memory-mapped cache",
        "",
        f"Run on {datetime.date.today()}, {env.cpu_model()}, one thread, one run "
        "(`make bench-patches`).",
        "",
        f"{args.cases} synthetic CT volumes {args.depth}x{args.size}x{args.size} (.nii.gz), lightm_unet_3d with "
        f"{args.patch}³ patches (cut from a {'x'.join(map(str, nnunet_initial_patch((args.patch,) * 3)))} region), "
        f"{args.repeats} items drawn case after case; item = load, preprocessing (CT normalisation; one spacing, so "
        "no resampling; the crop keeps the whole volume) or its cached result, region, nnU-Net's 3-D augmentation.",
        "",
        "| source | median s / item |",
        "|---|---|",
        f"| decode and preprocess the .nii.gz per item | {a:.3f} |",
        f"| memory-mapped .npy (bench run's cache) | {b:.3f} |",
        "",
        f"speed-up {a / b:.1f}x; identical items: {same}. Setting up (the statistics pass over the {n} training "
        f"volumes) and one item per volume (which on the cache side writes the .npy files) took {warm_a:.2f} s "
        f"decoding and {warm_b:.2f} s with the cache (once per dataset and results folder).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
