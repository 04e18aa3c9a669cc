"""The `bench data` group: `synth`, `convert` and `verify` datasets in their real on-disk formats."""

from __future__ import annotations

import collections
import enum
import re
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.console import _echo_err
from bench.errors import BenchError

VERIFY_SHOWN = 30  # problems bench data verify lists before counting the rest


class SynthKind(str, enum.Enum):
    """synth.KINDS, each followed by the --dataset names that read it; written out, not built from them,
    since importing bench.data (torch) would slow every command's start (tests/test_cli.py checks they match)."""

    synapse = "synapse"
    isic = "isic"
    isic17 = "isic17"
    isic18 = "isic18"
    polyp = "polyp"
    nnunet = "nnunet"
    isic_all = "isic_all"


def data_synth(
    like: Annotated[SynthKind, typer.Option(help="which real on-disk format to write")],
    out: Annotated[Path, typer.Option(help="output directory (created)")],
    seed: Annotated[Optional[int], typer.Option(help="generator seed; same seed, same data (default: that of "
                                                      "`bench run --synthetic` for this dataset)")] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        help="a generator setting, key=value (repeated for more), e.g. size=512 depth=120 n_test=2 for volumes "
             "of a real CT's size, to time evaluation at scale; a wrong key lists the format's settings")] = None,
) -> None:
    """Write a small, deterministic, learnable dataset in a real on-disk format.

    Example: bench data synth --like synapse --out data/synapse-synth
    """
    from bench.cli.options import _parse_sets
    from bench.data import SYNTH_SEEDS, get_reader
    from bench.data.synth import KINDS, synthesize

    from bench.protocol import check_seed

    if seed is not None:
        check_seed(seed, "--seed")  # before anything is written
    kind = like.value if like.value in KINDS else get_reader(like.value).kind
    settings = _parse_sets(option or [], "--option", "a generator setting")
    path = synthesize(kind, out, seed=SYNTH_SEEDS.get(like.value, 0) if seed is None else seed, **settings)
    typer.echo(f"wrote synthetic {like.value} dataset to {path}")


class ConvertSource(str, enum.Enum):
    btcv = "btcv"
    msd = "msd"
    pairs = "pairs"


def data_convert(
    source: Annotated[ConvertSource, typer.Option(help="what --raw holds: btcv = BTCV's RawData/Training "
                                                      "(img/imgXXXX.nii.gz, label/labelXXXX.nii.gz); msd = a Medical "
                                                      "Segmentation Decathlon task folder (e.g. Task03_Liver); pairs = "
                                                      "2-D images and masks of your own: images/ and masks/, "
                                                      "or train/ and test/ (or val/) holding them")],
    raw: Annotated[Path, typer.Option(help="the downloaded data's folder")],
    out: Annotated[Path, typer.Option(help="output directory (created)")],
    name: Annotated[Optional[str], typer.Option(help="pairs: the dataset's name on boards (nnunet:NAME; default: "
                                                     "--raw's folder name)")] = None,
    label: Annotated[Optional[str], typer.Option(help="pairs: the masks' class: a name, e.g. lesion (binary "
                                                      "masks; default: foreground); several, disc,cup (masks of class "
                                                      "ids 1, 2, …; palette masks' indices); or each class's value, "
                                                      "disc=128,cup=255 (a grey value, palette index or #rrggbb "
                                                      "colour; background=V for more background values)")] = None,
) -> None:
    """Convert data as distributed into the layout a reader expects.

    btcv -> TransUNet's Synapse layout (HU window [-125, 275] scaled to [0, 1], TransUNet's 18/12
    split, spacing.csv); organ ids in the tables' column order, 1 aorta ... 8 stomach (the circulating
    files' order is undocumented; bench data verify infers a copy's from its organs' sizes);
    msd -> nnU-Net v2's raw layout (as nnUNetv2_convert_MSD_dataset: modalities split into _0000, ...);
    pairs -> that layout too, named --name, masks as the classes --label names (several masks of an image
    merged; train/ and test/ kept as splits_final.json).

    Example: bench data convert --source msd --raw Task03_Liver --out data/Dataset003_Liver
    """
    from bench.data.convert import btcv_to_synapse, msd_to_nnunet, pairs_to_nnunet

    if source is not ConvertSource.pairs and (given := [o for o, v in (("--name", name), ("--label", label)) if v]):
        raise BenchError(f"{' and '.join(given)}: for --source pairs (the {source.value} files name their dataset "
                         "and classes)")
    if source is ConvertSource.btcv:
        path, dataset = btcv_to_synapse(raw, out), "synapse"
    elif source is ConvertSource.msd:
        path, dataset = msd_to_nnunet(raw, out), "nnunet"
    else:
        path, dataset = pairs_to_nnunet(raw, out, name=name, label=label or "foreground"), "nnunet"
    typer.echo(f"wrote the {'Synapse' if dataset == 'synapse' else 'nnU-Net v2 raw'} layout to {path}; check it "
               f"with: bench data verify --dataset {dataset} --data-root {shlex.quote(str(path))}")


def data_verify(
    dataset: Annotated[str, typer.Option(help="synapse, isic17, isic18, polyp, isic_all or nnunet")],
    data_root: Annotated[Path, typer.Option(help="dataset directory")],
    all_: Annotated[bool, typer.Option("--all", help=f"list every problem (else the first {VERIFY_SHOWN}, "
                                                     "then a count of each kind)")] = False,
) -> None:
    """Check a dataset: files present and readable, shapes, dtypes, label range, list files.

    Notes on whether the split is the papers' (Synapse, ISIC, polyp, merged ISIC) and on Synapse's
    label order; for nnU-Net volumes, their voxel spacings and the 3d_fullres target spacing.

    Example: bench data verify --dataset synapse --data-root data/Synapse
    """
    from bench.data import get_reader
    from bench.data.verify import dataset_notes, verify_dataset

    dataset = get_reader(dataset).name  # any case, as bench run takes it
    problems = sorted(verify_dataset(dataset, data_root), key=lambda p: p.level != "error")  # errors first
    for p in problems if all_ else problems[:VERIFY_SHOWN]:
        _echo_err(f"{p.level}: {p.path}: {p.message}")
    if not all_ and len(problems) > VERIFY_SHOWN:  # 2,000 masks saved as 0/1 read as 2,000 lines
        kinds = collections.Counter(f"{p.level}: {re.sub(r'[0-9]+', 'N', p.message)[:80]}"
                                    for p in problems[VERIFY_SHOWN:])
        _echo_err(f"... and {len(problems) - VERIFY_SHOWN} more (--all lists them): "
                  + "; ".join(f"{n} × {kind}" for kind, n in kinds.most_common(5))
                  + ("; …" if len(kinds) > 5 else ""))
    errors = [p for p in problems if p.level == "error"]
    if errors:
        _echo_err(f"{len(errors)} error(s) in {data_root}")
        raise typer.Exit(code=1)
    for note in dataset_notes(dataset, data_root):  # the data loads; how it compares with papers
        typer.echo(f"note: {note}")
    typer.echo(f"{data_root}: OK ({dataset}" + (f", {len(problems)} warning(s))" if problems else ")"))
