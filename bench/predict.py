"""`bench predict`: write finished runs' predicted label maps, from their saved weights.

Each run's model is rebuilt from its record with the weights it was evaluated with
(``bench.rescore.run_model``), and its scored test cases are predicted exactly as they were scored
(``bench.evaluate.predict_cases``), so the files hold what the run's metrics were computed from.
One file per case goes under ``OUT/<run_id>/``, in the data's own format
(``SegDataset.write_prediction``):

- nnU-Net data: ``<case><file_ending>`` (NIfTI volumes with their label file's geometry, or PNG),
  the layout ``nnUNetv2_evaluate_folder`` and other tools read beside ``labelsTr``;
- Synapse: ``<case>.nii.gz``, (D, H, W) stored as (x, y, z) with the spacing where known;
- ISIC / polyp: ``<case>.png`` masks of 0/255 at the model resolution they are scored at, or with
  ``native_size`` (``--native-size``) at each image's own size (probabilities resized bilinearly,
  then thresholded), the form ISIC's challenge scorer takes (the polyp toolboxes, which sweep
  thresholds over grey probability maps, get one threshold to sweep).

Each file is written atomically and one already there is kept, so a killed ``bench predict``
resumes: ``prediction.json`` (run, weights' sha256, data, class ids and names, grid) is written
first, so a folder holding another run's or other weights' files is refused, and again at the end
with ``"complete": true`` and the file of each case; ``spacing_unknown`` lists the volumes written
with 1 mm voxels for want of a spacing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import env, fileio, records
from bench.claim import claim_folder
from bench.errors import BenchError
from bench.data.base import Case
from bench.data.intensity import intensity_stats
from bench.data.preprocess import volume_prep
from bench.evaluate import predict_cases, scored_ids
from bench.rescore import DataRoots, run_model, weights_path
from bench.fileio import file_sha256

MANIFEST = "prediction.json"

__all__ = ["MANIFEST", "plan_predict", "predict_run"]


def plan_predict(results_dir: Path, models: list[str] | None = None, run_ids: list[str] | None = None,
                 datasets: str | list[str] | None = None) -> list[dict[str, Any]]:
    """The finished original records of ``models`` on ``datasets`` (``records.select_runs``), or those
    of ``run_ids`` (a rescored record's id stands for its source run: the same weights), in run-id
    order; BenchError naming a requested run that is not there or not among ``models``."""
    df = records.load(results_dir)
    runs = records.finished_runs(df, results_dir, models, datasets)
    if run_ids:
        done = records.finished(df)
        source = dict(zip(done["run_id"], done["rescored_from"].fillna(done["run_id"])))
        wanted = {source.get(r, r) for r in run_ids}
        # a rescored record whose run's record was deleted: its weights are predicted as that run's
        gone = done[done["run_id"].isin(run_ids) & done["rescored_from"].notna()
                    & ~done["rescored_from"].isin(df["run_id"])]
        if not gone.empty:
            raise BenchError(f"--run {gone['run_id'].iloc[0]}: {records.source_missing(results_dir, gone.iloc[0])}")
        missing = sorted(wanted - set(runs["run_id"]))
        if missing:
            known = sorted(runs["run_id"])
            listed = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "") if known else "none"
            scope = "" if models is None else f" of --models {','.join(models)}"
            raise BenchError(f"--run {missing[0]}: no finished run{scope} of that id in {results_dir} "
                             f"(runs there: {listed})")
        runs = runs[runs["run_id"].isin(wanted)]
    return [records.read_record(results_dir, rid) for rid in sorted(runs["run_id"])]


def predict_run(rec: dict[str, Any], results_dir: Path, out_dir: Path, device: torch.device | str,
                protocol_file: Path | None = None, workers: int | None = None, native_size: bool = False,
                data_roots: DataRoots | None = None) -> tuple[Path, int]:
    """Write the run's test-case predictions under ``out_dir/<run_id>``; return that folder and how
    many files this call wrote (cases already written are kept). ``workers``: as
    ``bench.evaluate.predict_cases`` (on a GPU, threads load the next cases and write the predicted
    ones); the files do not depend on it. ``native_size``: ISIC/polyp masks at each image's size
    (``predict_case``'s ``native``) instead of the model resolution they were scored at. ``data_roots``:
    where the data may be now (``bench.rescore.run_data_root``)."""
    device = env.resolve_device(device)  # "cpu", "cuda:1" as the Python API's other calls take them
    model, dataset, protocol = run_model(rec, results_dir, protocol_file, "predicted", data_roots=data_roots)
    if native_size and not dataset.binary:
        warnings.warn(f"{rec['run_id']}: --native-size changes nothing here: {rec['dataset']} predictions are on "
                      "each case's own grid already", stacklevel=2)
    model.to(device=device, dtype=protocol.torch_dtype)
    folder = Path(out_dir) / rec["run_id"]
    ids = scored_ids(dataset, protocol)
    manifest = {
        "run_id": rec["run_id"], "model": rec["model"], "weights_sha256": file_sha256(weights_path(results_dir, rec)),
        "weights_file": rec.get("weights"),  # a --weights run: the file it scored (its checkpoint is a re-save)
        "dataset": rec["dataset"], "dataset_name": rec.get("dataset_name"), "data_root": str(Path(dataset.root).resolve()),
        "split": rec["split"], "protocol": rec["protocol"]["name"], "policy": rec["policy"],
        "classes": ({"0": "background", "255": dataset.class_names[0]} if dataset.binary else
                    {"0": "background", **{str(i): n for i, n in enumerate(dataset.class_names, start=1)}}),
        "grid": ("native" if not dataset.binary else "native (probabilities resized bilinearly, then thresholded)"
                 if native_size else f"model input {protocol.img_size}x{protocol.img_size}"),
        "complete": False,
    }
    # a volume without a known spacing is written with 1 mm voxels (Synapse h5 files without spacing.csv)
    unknown = dataset.spacing_unknown(ids)
    if unknown:
        manifest["spacing_unknown"] = unknown
    files = {case_id: dataset.prediction_name(case_id) for case_id in ids}
    # a second guard to the readers' own: a case id that is a path would be written outside the folder
    outside = [case_id for case_id, name in files.items() if not fileio.is_within(folder / name, folder)]
    if outside:
        raise BenchError(f"{dataset.root}: test case {outside[0]!r} would be written outside {folder} "
                         f"({folder / files[outside[0]]}); expected case ids that are plain file names")
    holder = claim_folder(folder)  # two predicts into one --out (--native-size or not) would mix sizes
    if isinstance(holder, str):
        raise BenchError(f"{folder}: being written by {holder}; wait for it, or choose another --out")
    with holder:
        _check_folder(folder, manifest)
        # written atomically, so a file there is whole; an empty one (emptied since, a full disk's copy) is not
        todo = [case_id for case_id in ids if not _written(folder / files[case_id])]

        def write(case: Case, pred: np.ndarray, gt: np.ndarray) -> None:
            name = files[case.case_id]
            fileio.atomic_write(folder / name, lambda tmp: dataset.write_prediction(case, pred, tmp),
                                 suffix=f".tmp{name[len(case.case_id):]}")  # writers read the format off it

        prep = volume_prep(dataset, protocol) if protocol.patches else None
        predict_cases(model, dataset, todo, protocol, write, device=device, stats=intensity_stats(dataset, protocol),
                      prep=prep, workers=workers, native=native_size)
        if unknown:  # documented, yet unseen where the files are overlaid on the CT in mm
            warnings.warn(f"{rec['run_id']}: {len(unknown)} of {len(ids)} predicted volumes have no known spacing "
                          f"(first: {unknown[0]}; all named in {MANIFEST}); written with 1 mm voxels, so they overlay the "
                          f"images by voxel, not in mm (Synapse: {dataset.root}/spacing.csv supplies the spacing)",
                          stacklevel=2)
        fileio.atomic_write_text(folder / MANIFEST, json.dumps({**manifest, "complete": True, "files": files},
                                                                indent=2) + "\n")
        return folder, len(todo)


def _written(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _check_folder(folder: Path, manifest: dict[str, Any]) -> None:
    """Make ``folder`` this run's: files kept from a killed predict must come from the same weights
    (BenchError otherwise, rather than a folder mixing two models); temp files it left are removed."""
    old = folder / MANIFEST
    if old.is_file():
        try:
            held = json.loads(old.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise BenchError(f"{old}: not readable JSON (cut short?); delete {folder} and predict again") from None
        sha = held.get("weights_sha256")
        if sha != manifest["weights_sha256"]:
            raise BenchError(f"{folder}: holds predictions of other weights (sha256 {str(sha)[:16]}, this run's "
                             f"{manifest['weights_sha256'][:16]}); delete it or choose another --out")
        if held.get("grid", manifest["grid"]) != manifest["grid"]:  # --native-size or not: files of one size
            raise BenchError(f"{folder}: holds predictions on another grid ({held['grid']}; asked: "
                             f"{manifest['grid']}); delete it or choose another --out")
    elif folder.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in folder.rglob("*")):
        raise BenchError(f"{folder}: holds files but no {MANIFEST}; delete it or choose another --out")
    for sub in [folder, *(d for d in folder.rglob("*") if d.is_dir())] if folder.is_dir() else ():
        # what a killed predict was writing (never a prediction; older versions' names too); a live one's,
        # writing beside us, stays
        fileio.remove_orphans(sub, fileio.temp_glob(suffix=".tmp*"), f"{fileio.OLD_TEMP_FILE}.tmp*")
    fileio.atomic_write_text(old, json.dumps(manifest, indent=2) + "\n")
