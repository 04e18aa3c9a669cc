"""Datasets: one reader per real on-disk format, all producing ``Sample`` / ``Case`` (see base.py).

Registry names::

    synapse   TransUNet npz slices + h5 volumes + lists        9 classes, softmax, legacy-synapse
    isic17    VM-UNet ISIC 2017 folders (test = val/)           1 class, sigmoid, legacy-isic
    isic18    VM-UNet ISIC 2018 folders (test = val/)           1 class, sigmoid, legacy-isic
    polyp     PraNet TrainDataset / TestDataset/<set>           1 class, sigmoid, legacy-isic
    isic_all  VM-UNet-V2 merged ISIC: train / val/<set>         1 class, sigmoid, legacy-isic
    nnunet    nnU-Net v2 raw (dataset.json, imagesTr, labelsTr) len(labels) classes, softmax, strict

Example::

    ds = open_dataset("synapse", "data/Synapse")
    ds.num_classes, ds.binary, ds.in_chans   # 9, False, 1
    case = ds.load_test(ds.test_ids()[0])    # Case: image (D, H, W) float32, label int64

    root = synthetic_root("isic17", Path("~/.cache/bench").expanduser())   # learnable fake data
    ds = open_dataset("isic17", root)
"""

from __future__ import annotations

from pathlib import Path

from bench.data.base import Case, Sample, SegDataset, root_is_file
from bench.data.isic import Isic17Dataset, Isic18Dataset, IsicAllDataset
from bench.data.nnunet import NnUNetDataset
from bench.data.polyp import PolypDataset
from bench.data.synapse import SynapseDataset
from bench.data.synth import GENERATOR_VERSION, data_identity, synthesize, synthetic_identity, synthetic_made
from bench.errors import BenchError, unknown_name
from bench.fileio import OLD_TEMP_DIR, absent, remove_orphans, temp_glob

DATASETS: dict[str, type[SegDataset]] = {
    "synapse": SynapseDataset,
    "isic17": Isic17Dataset,
    "isic18": Isic18Dataset,
    "polyp": PolypDataset,
    "isic_all": IsicAllDataset,
    "nnunet": NnUNetDataset,
}


# Seeds of the cached synthetic datasets: isic17 and isic18 share a format, not their images.
# (isic_all is a kind of its own, so its images differ from both with seed 0.)
SYNTH_SEEDS = {"isic18": 1}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_reader(name: str) -> type[SegDataset]:
    """The reader class registered as ``name``; BenchError with a suggestion if unknown."""
    try:
        return DATASETS[name.strip().lower()]
    except AttributeError:
        raise BenchError(f"dataset name must be a string, got {name!r}") from None
    except (KeyError, TypeError):
        raise unknown_name("dataset", name, list_datasets()) from None


def check_folds(name: str) -> None:
    """BenchError where ``name`` has a fixed test split, so cross-validation folds do not apply."""
    if not hasattr(get_reader(name), "n_folds"):
        raise BenchError(f"dataset {name!r} has a fixed test split; cross-validation folds apply to nnunet-format data only")


def open_dataset(name: str, root: str | Path, fold: int | str | None = None) -> SegDataset:
    """Open the dataset ``name`` stored at ``root``; BenchError naming the path if it is not there.

    ``fold``: a cross-validation fold, for datasets without a fixed test split (nnunet); "all"
    (``nnunet.ALL_FOLDS``): every fold's validation cases as the test cases (bench score --fold all)."""
    reader = get_reader(name)
    if fold is not None:
        check_folds(name)
    root = Path(root).expanduser()
    if root.is_file():  # a download not yet unpacked, or a file of the dataset
        raise BenchError(f"--data-root {root}: {root_is_file(root)} (expected {reader.layout})")
    if not root.is_dir():
        raise absent(root, f"--data-root {root}: dataset root not found (expected {reader.layout}; "
                           f"`bench run --synthetic` or `bench data synth` makes a small fake one)")
    return reader(root) if fold is None else reader(root, fold=fold)


def synthetic_folder(name: str, cache_dir: str | Path) -> Path:
    """Where ``synthetic_root`` keeps the data shaped like ``name``, written or not (``bench run --dry-run``
    writes none)."""
    return Path(cache_dir).expanduser() / f"{name}-synth-v{GENERATOR_VERSION}"


def synthetic_root(name: str, cache_dir: str | Path) -> Path:
    """A synthetic dataset shaped like ``name`` under ``cache_dir``, generated once and reused.

    The folder is ``<cache_dir>/<name>-synth-v<GENERATOR_VERSION>``; it is written to a temporary
    folder beside it and renamed into place, so concurrent callers never see half of it.
    """
    reader = get_reader(name)
    target = synthetic_folder(name, cache_dir)
    if target.is_dir() and any(target.iterdir()):
        # left by writers killed there (by older versions too, under their names)
        remove_orphans(target.parent, temp_glob(), f".*.{OLD_TEMP_DIR}*")
        return target
    try:
        return synthesize(reader.kind, target, seed=SYNTH_SEEDS.get(reader.name, 0))
    except BenchError:
        if target.is_dir() and any(target.iterdir()):  # another process finished first
            return target
        raise


__all__ = [
    "DATASETS",
    "Case",
    "Sample",
    "SegDataset",
    "check_folds",
    "data_identity",
    "get_reader",
    "list_datasets",
    "open_dataset",
    "synthetic_folder",
    "synthetic_identity",
    "synthetic_made",
    "synthetic_root",
]
