"""`bench score`: score predictions made elsewhere (nnU-Net, another codebase) as bench scores its runs.

The folder holds one file per scored test case, in the layout `bench predict` writes
(``SegDataset.prediction_name``: Synapse ``<case>.nii.gz``, nnU-Net ``<case><file_ending>``, ISIC/polyp
``<case>.png`` 0/255 masks; ISIC's also as its challenge names them, ``<case>_segmentation.png``, Synapse's as
the TransUNet lineage's test script (utils.py ``test_single_volume``) names them, ``<case>_pred.nii.gz``:
``SegDataset.prediction_names``; Synapse's each also as ``.nii``); ``NOT_PREDICTIONS`` beside them (nnUNetv2_predict's
json, npz and pkl files; text logs) and the data's own ``SegDataset.not_predictions`` (that script's ``<case>_img``
and ``<case>_gt`` files) are passed over, and bench predict's ``prediction.json`` says which run they came from: its
protocol, policy, data and split (fold), which are checked against those scored. A case's labels written beside
its prediction (``SegDataset.labels_beside``: that script's ``<case>_gt.nii.gz``) are compared with its ground
truth, voxel for voxel: the same is said, other labels (against which the script's numbers were computed) refused.
Each file is scored against the ground truth evaluation reads (``bench.evaluate.ground_truth``), with the
case's spacing, under the policy, by the same ``bench.evaluate.Scoring`` that scores a run: the numbers
are those a run's record would hold for these label maps. The protocol gives the evaluation settings
only: the test cases scored (``eval.max_cases``), the grid of binary masks (``img_size``) and the
default policy. nnU-Net-format data's ``fold=ALL_FOLDS`` view scores a cross-validation's folder of every
case (``cv_niftis_raw``), each against its own fold's split, pooled as nnU-Net's summary pools them, with
each fold's DSC beside (``Scores.per_fold``). Binary masks written at each image's own size (``bench
predict --native-size``) are brought to the scored grid as the ground truth is (``scored_mask``) and said
to be. A volume's header is checked where the data has one to compare with (nnU-Net's: its orientation and
origin, ``SegDataset.check_prediction_header``); a header spacing other than the case's is said, the case's
scored (``_spacing_note``). Nothing is written into a results folder: a score is no run (no training, params or cost).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.data.base import SegDataset, hidden
from bench.data.nnunet import ALL_FOLDS, NnUNetDataset, trained_on_every_case
from bench.errors import BenchError, counted, few
from bench.evaluate import Scoring, ground_truth, scored_ids, scored_mask, scoring_policy
from bench.fileio import file_sha256
from bench.metrics import PENALTY, Policy, get_policy, policy_misfit
from bench.predict import MANIFEST
from bench.protocol import Protocol
from bench.records import is_split, miss_counts, split_fold, split_name

__all__ = ["Scores", "score_predictions"]


@dataclass
class Scores:
    """What ``score_predictions`` found: ``metrics`` (``bench.metrics.aggregate``'s numbers), ``per_class``
    and ``per_case`` (one row per case and class, as a run record's ``per_case``), the HD95 unit, what was
    scored (``scored``: dataset, data, protocol, policy, predictions and their sha256, cases) and notes;
    ``per_fold``, where every cross-validation fold's cases were scored together (``ALL_FOLDS``): each
    fold's number of cases and DSC, its cases aggregated alone; ``missing``: the test cases without a
    prediction file, scored as empty predictions (``allow_missing``)."""

    metrics: dict[str, Any]
    per_class: pd.DataFrame
    per_case: pd.DataFrame
    hd95_unit: str | None
    scored: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # test cases without a file, scored empty (allow_missing)
    said: int = 0  # the first notes, said through score_predictions' ``say`` before any case was scored


def score_predictions(pred_dir: Path | str, dataset: SegDataset, protocol: Protocol,
                      policy: str | None = None, say: Callable[[str], None] | None = None,
                      allow_missing: bool = False) -> Scores:
    """Score the label maps in ``pred_dir``, one per test case ``protocol`` scores on ``dataset``, under
    ``policy`` (default: as ``bench run`` picks it). BenchError naming the folder or file for a folder
    that is not there or empty, files of no scored case (whose they are, where the reader knows: an nnU-Net
    fold's, imagesTs'), cases without a file, a map on another grid or with ids that are no class of the data,
    for bench predict's predictions of another dataset (its manifest's ``dataset_name``) and for a folder whose
    model's files name other classes (``SegDataset.prediction_folder_notes``; a note where they name the
    same classes otherwise), and for a case's labels written beside its prediction (``SegDataset.labels_beside``:
    TransUNet's test script's ``<case>_gt.nii.gz``) that are not its ground truth, voxel for voxel (each before its
    prediction is read; from the first that differs on, only the other cases' labels, so one error counts them all;
    said where they are); its run's fold, where not the one scored, is
    named in a case error. A dataset of every fold's cases (nnU-Net's ``ALL_FOLDS``) scores them pooled, one
    aggregate over all, and each fold's DSC (``Scores.per_fold``). On nnU-Net data a folder of nnU-Net's own
    fold "all" of a model of this data (or of one nothing names), which trained on every case, is refused
    whatever the split (``trained_on_every_case``); one of another dataset, by its name alone, is scored, said.
    ``say``: called at once with the notes that hold before any file is read (``capped_note``), so a command
    says them before any error about the cases; they lead ``Scores.notes`` too (``Scores.said`` counts them).
    ``allow_missing``: a test case without a file is scored as an all-background prediction on the grid scored (each
    structure of its case missed, as the policy scores a miss), said in a note and in ``Scores.missing``; a folder
    without any case's file, or (``ALL_FOLDS``) without any of a fold's, is still refused (the wrong folder)."""
    pred_dir = Path(pred_dir).expanduser()
    protocol.check_dataset(dataset.name)
    ids = scored_ids(dataset, protocol)
    early = [capped] if (capped := capped_note(dataset, protocol, ids)) else []  # eval.max_cases: each fold's first
    if say:
        for note in early:
            say(note)
    notes = list(early)
    # every case bench scores on nnU-Net data is a labelsTr case, which nnU-Net's fold "all" trained on: whatever
    # the split, a score of its predictions (those of a folder trimmed to the test cases too) is a training score
    fold_all, fold_all_note = (trained_on_every_case(pred_dir, dataset) if isinstance(dataset, NnUNetDataset)
                               else ("", ""))
    if fold_all:
        why = (f"no cross-validation score exists for them; --fold {ALL_FOLDS} scores a cross-validation's "
               "predictions, each case by the fold that did not train on it (the fold_K/validation folders of folds "
               "0-4, copied into one)" if dataset.fold == ALL_FOLDS else
               "no score of it is a test score; a cross-validation fold's own folder (fold_K/validation) is scored "
               "with --fold K")
        raise BenchError(f"--predictions {pred_dir}: a folder {fold_all}: {why}")
    made_by = _manifest(pred_dir)
    notes += _data_notes(made_by, dataset, pred_dir)  # another dataset's predictions: refused before any is read
    if fold_all_note:
        notes.append(fold_all_note)
    if pred_dir.is_dir():  # nnUNetv2_predict's copy of the model's dataset.json: a model of other labels refused
        notes += dataset.prediction_folder_notes(pred_dir)
    if policy is None and made_by.get("policy") and made_by.get("protocol") == protocol.name:
        policy = made_by["policy"]  # a bench predict folder: its run's own numbers, as the README promises
        if policy != scoring_policy(None, protocol, dataset):
            notes.append(f"policy {policy}: the one bench predict's run {made_by.get('run_id', '?')} was scored under")
    policy = scoring_policy(policy, protocol, dataset)
    if made_by.get("policy") not in (None, policy):
        notes.append(f"bench predict's run {made_by.get('run_id', '?')} was scored under {made_by['policy']}; "
                     f"these numbers are under {policy}")
    misfit = policy_misfit(policy, 1 if dataset.binary else dataset.num_classes - 1,
                           f"{dataset.dataset_name!r} data at {dataset.root}")
    if misfit:
        raise BenchError(misfit)
    if get_policy(policy).use_spacing:  # HD95 in mm: every test case needs its spacing (as bench run checks)
        dataset.check_spacing()
    fold, other_protocol = _fold_mismatch(made_by, dataset), _protocol_hint(made_by, protocol)
    hint = other_protocol + (f"; {fold}" if fold else "")
    files = _case_files(pred_dir, dataset, ids, protocol, hint, allow_missing)
    missing = [case_id for case_id in ids if case_id not in files]
    scoring = Scoring.of(dataset, protocol, policy)
    scored, resized, greyed, respaced, same_labels, other_labels = [], [], [], [], [], []
    for case_id in ids:
        labels = next((name for name in dataset.labels_beside(case_id) if (pred_dir / name).is_file()), None)
        if other_labels and not labels:  # refused below: only the other cases' labels are still compared
            continue
        case = dataset.load_test(case_id)
        gt = ground_truth(case, protocol, dataset.binary)
        # before the prediction is read: other labels explain a prediction of another shape
        if labels and (differ := _their_labels_differ(pred_dir / labels, gt, dataset)):
            other_labels.append((labels, *differ))
        elif labels:
            same_labels.append(labels)
        if other_labels:  # the remaining cases' labels compared before the one error, so it counts them all
            continue
        if case_id not in files:  # --allow-missing: all background on the grid scored, scored as a file would be
            scored.append(scoring.case(case, np.zeros_like(gt), gt))
            continue
        path = pred_dir / files[case_id]
        pred, spacing = dataset.read_prediction(path, greyed)
        if spacing is not None and case.spacing is not None and not np.allclose(spacing, case.spacing, rtol=1e-4,
                                                                                  atol=0):
            respaced.append((files[case_id], spacing, case.spacing))  # beyond the header's float32 rounding
        if pred.shape != gt.shape and dataset.binary and pred.shape == case.label.shape:  # --native-size's
            pred = scored_mask(pred.astype(np.float32), protocol).astype(np.uint8)
            resized.append(case_id)
        if pred.shape != gt.shape:
            raise BenchError(f"{path}: {_shape_problem(pred.shape, gt.shape, case, dataset, path)}{hint}")
        scored.append(scoring.case(case, pred, gt))
    if other_labels:
        raise BenchError(_other_labels_error(pred_dir, other_labels, len(other_labels) + len(same_labels), dataset))
    result = scoring.result(scored)
    per_case = pd.DataFrame(result.per_case)
    # what the table's columns are comes first (after what was said before scoring), as a board's caption says it
    if authors := _authors_metrics_note(policy, result.metrics, dataset.dataset_name):
        notes.insert(len(early), authors)
    if missing:
        notes.append(_missing_note(missing, ids, dataset))
    if other_protocol:  # no error above (the same cases and grid): still not the run's own evaluation, said
        notes.append(other_protocol.removeprefix("; ") + " for the run's own evaluation")
    pooled = getattr(dataset, "fold", None) == ALL_FOLDS
    if fold and pooled:  # one fold's folder with the others' files added: more cases than its run scored
        notes.append(f"{MANIFEST} is bench predict's of run {made_by.get('run_id', '?')}, of "
                     f"{_split_words(made_by['split'])} alone; the {len(ids)} cases scored here are all folds' "
                     "validation cases, so these are not that run's numbers")
    elif fold:  # else a case error above: the same test cases, so the numbers hold; the output names the fold scored
        notes.append(f"{fold} to have the output name its fold; both hold the same test cases ({len(ids)}), so "
                     "these are the run's numbers")
    suffixed = [case_id for case_id in files if dataset.mask_suffix and files[case_id].startswith(
        f"{case_id}{dataset.mask_suffix}")]
    if suffixed:
        notes.append(f"{len(suffixed)} of {len(files)} files are named as {dataset.mask_suffix_by}, with "
                     f"{dataset.mask_suffix!r} after the case id ({files[suffixed[0]]}): each scored as its case's")
    if greyed:
        notes.append(f"{len(greyed)} of {len(files)} masks were PNGs stored in colour whose channels are equal (first: "
                     f"{greyed[0].relative_to(pred_dir).as_posix()}): read as that grey")
    if same_labels:
        notes.append(f"their labels are ours: the labels written beside the predictions of {len(same_labels)} of "
                     f"{len(ids)} test cases (first: {same_labels[0]}) are the ground truth scored here, voxel for "
                     "voxel: same test data")
    if respaced:
        notes.append(_spacing_note(respaced, len(files), get_policy(policy)))
    missed = _miss_note(get_policy(policy), per_case, result.hd95_unit)
    if missed:
        notes.append(missed)
    notes += _empty_notes(get_policy(policy), per_case)
    if resized:
        notes.append(f"{len(resized)} of {len(files)} masks were at their image's own size and were resized to the "
                     f"scored {protocol.img_size}x{protocol.img_size} grid as the ground truth is (bilinear, then "
                     f">= 0.5); a run scores masks predicted at that size")
    return Scores(
        metrics=result.metrics,
        per_class=pd.DataFrame(result.per_class),
        per_case=per_case,
        hd95_unit=result.hd95_unit,
        scored={
            "dataset": dataset.dataset_name, "data_root": str(Path(dataset.root).resolve()),
            "split": dataset.split_rule, "fold": getattr(dataset, "fold", None),
            **({"n_folds": len(dataset.fold_cases)} if pooled else {}),
            **({"max_cases_per_fold": protocol.eval.max_cases} if capped else {}), "protocol": protocol.name,
            "protocol_version": protocol.version, "protocol_hash": protocol.hash,
            "off_protocol": protocol.off_protocol, "policy": policy,
            "predictions": str(pred_dir.resolve()), "predictions_sha256": _folder_sha256(pred_dir, files),
            # whose predictions were scored: no run's where other folds' files joined its folder (a note names it)
            "run_id": None if fold and pooled else made_by.get("run_id"), "n_cases": len(ids), "resized": resized,
        },
        notes=notes,
        per_fold=_per_fold(dataset, scoring, ids, scored) if pooled else [],
        missing=missing,
        said=len(early) if say else 0,
    )


def _per_fold(dataset: SegDataset, scoring: Scoring, ids: list[str], scored: list) -> list[dict[str, Any]]:
    """Each cross-validation fold's cases among ``ids`` (``scored``, in that order) aggregated alone: the
    fold, its number of cases and DSC (the per-fold numbers beside the pooled one nnU-Net's summary gives).
    Every fold has some: the reader refuses an empty val list, and eval.max_cases keeps each fold's first."""
    out = []
    for k, val in enumerate(dataset.fold_cases):
        own = set(val)
        cases = [case for case_id, case in zip(ids, scored) if case_id in own]
        out.append({"fold": k, "n_cases": len(cases), "dice": scoring.result(cases).metrics["dice"]})
    return out


# files that are no label map, beside them: bench predict's prediction.json; nnUNetv2_predict's dataset.json,
# plans.json, predict_from_raw_data_args.json and, with --save_probabilities, a <case>.npz and <case>.pkl each;
# text logs (TransUNet's test.py logs to test_log/<name>.txt, often kept beside its predictions; one without an
# ending too: _log)
NOT_PREDICTIONS = (".json", ".npz", ".pkl", ".txt", ".log")


def _case_files(pred_dir: Path, dataset: SegDataset, ids: list[str], protocol: Protocol,
                hint: str = "", allow_missing: bool = False) -> dict[str, str]:
    """{case id: its file below ``pred_dir``}, named by one of ``SegDataset.prediction_names``; BenchError for a
    folder not there or holding no file, files that are no scored case's (hidden files and ``NOT_PREDICTIONS``
    aside), a case with two files, or cases without one (``hint``: ``score_predictions``'s, added to those).
    ``allow_missing``: cases without one are left out of the dict, but not every case of a fold (``ALL_FOLDS``)."""
    if not pred_dir.is_dir():
        raise BenchError(f"--predictions {pred_dir}: {'a file, not a folder' if pred_dir.exists() else 'not found'}; "
                         "expected the folder holding one label map per test case")
    names = {case_id: dataset.prediction_names(case_id) for case_id in ids}
    expected = {name: case_id for case_id, its in names.items() for name in its}
    found = {p.relative_to(pred_dir).as_posix() for p in pred_dir.rglob("*")
             if p.is_file() and not any(hidden(Path(part)) for part in p.relative_to(pred_dir).parts)}
    passed_over = NOT_PREDICTIONS + dataset.not_predictions
    found = {name for name in found if name in expected or not (name.endswith(passed_over) or _log(pred_dir / name))}
    # an example of the names expected: a case's without a file, named as the folder's files are
    form = _folder_form(names, found)
    example = next((its[form] for its in names.values() if not found & set(its)), names[ids[0]][form] if ids else "")
    if not found:
        raise BenchError(f"{pred_dir}: no prediction files; expected one per test case, named as {example}"
                         f"{_probabilities_only(pred_dir)}" + (
                             "; --allow-missing scores a case without its file as empty, not a folder without any: "
                             "the wrong folder?" if allow_missing else ""))
    extra = sorted(found - set(expected))
    if extra:
        tested = {name for case_id in dataset.test_ids() for name in dataset.prediction_names(case_id)}
        unscored = [name for name in extra if name in tested]
        held = sorted({expected[name] for name in found if name in expected})
        pooled = getattr(dataset, "fold", None) == ALL_FOLDS
        why = (f"; protocol {protocol.name!r} scores {_capped_said(protocol.eval.max_cases, pooled)} only "
               "(eval.max_cases)" if unscored else _name_hint(extra, expected, found, pred_dir) or
               dataset.unscored_hint(extra, held) or
               (f"; expected files named as the test cases, e.g. {example}" if len(held) < len(ids) else
                "; the test cases' files are here too: leave the others out"))
        raise BenchError(f"{pred_dir}: {few(extra)}: no test case scored here{why}; scored here: "
                         f"{split_said(dataset, len(ids))}{hint}")
    files = {case_id: [name for name in its if name in found] for case_id, its in names.items()}
    twice = [case_id for case_id, its in files.items() if len(its) > 1]
    if twice:
        raise BenchError(f"{pred_dir}: {' and '.join(files[twice[0]])} both name test case {twice[0]!r} "
                         f"({len(twice)} of {len(ids)} cases have two files); keep one of each")
    missing = [case_id for case_id, its in files.items() if not its]
    # another run's split or protocol, one fold's files alone, or a whole fold's left out explain the missing: scored
    # as misses, they would score the wrong cases, so --allow-missing is no remedy there, and not offered
    why = hint or _one_fold_hint(dataset, files)
    absent = f"{pred_dir}: no prediction of test case(s) {few(missing)} ({len(missing)} of {len(ids)}; expected " \
             f"{names[missing[0]][form]})" if missing else ""
    if why and missing:
        raise BenchError(absent + why)
    if unpredicted := _unpredicted_folds(dataset, files):  # each fold is its own model's output: one left out
        folds, cases = zip(*unpredicted)
        lost = [case_id for its in cases for case_id in its]
        raise BenchError(f"{pred_dir}: no prediction of any test case of fold(s) {', '.join(map(str, folds))} "
                         f"({few(lost)}; {len(lost)} of {len(ids)}): their fold_K/validation files left out? "
                         "(--allow-missing scores a case without its file as empty, not a whole fold's)")
    if missing and not allow_missing:
        raise BenchError(absent + "; --allow-missing scores them as empty predictions")
    return {case_id: its[0] for case_id, its in files.items() if its}


def _unpredicted_folds(dataset: SegDataset, files: dict[str, list[str]]) -> list[tuple[int, list[str]]]:
    """Where every fold's cases are scored (``ALL_FOLDS``), each fold none of whose scored cases (``files``' keys)
    has a file, with those cases; [] otherwise."""
    if getattr(dataset, "fold", None) != ALL_FOLDS:
        return []
    folds = [(k, [case_id for case_id in val if case_id in files]) for k, val in enumerate(dataset.fold_cases)]
    return [(k, its) for k, its in folds if its and not any(files[case_id] for case_id in its)]


def _missing_note(missing: list[str], ids: list[str], dataset: SegDataset) -> str:
    """The test cases without a file (of the ``ids`` scored), scored as empty predictions, in one note: each
    one's fold where every fold's are scored (``ALL_FOLDS``)."""
    named = missing
    if getattr(dataset, "fold", None) == ALL_FOLDS:
        fold_of = {case_id: k for k, val in enumerate(dataset.fold_cases) for case_id in val}
        named = [f"{case_id} of fold {fold_of[case_id]}" for case_id in missing]
    return (f"{len(missing)} of {counted(len(ids), 'test case')} had no prediction ({few(named)}): scored as empty "
            "predictions (--allow-missing)")


def capped_note(dataset: SegDataset, protocol: Protocol, ids: list[str]) -> str:
    """Where every fold's validation cases are scored (``ALL_FOLDS``) and ``protocol``'s ``eval.max_cases`` scores
    fewer (each fold's first ones, as each fold's run), the note that says so, beside the split's (which counts
    them all); "" otherwise. ``ids``: the cases scored (``scored_ids``)."""
    n, total = len(ids), len(dataset.test_ids())
    if getattr(dataset, "fold", None) != ALL_FOLDS or n >= total:
        return ""
    return (f"protocol {protocol.name!r} scores {_capped_said(protocol.eval.max_cases, True)} (eval.max_cases), as "
            f"each fold's run does: {n} of the split's {total} cases")


def _log(path: Path) -> bool:
    """Whether ``path`` is text without an ending (a log named test_log): no label map, which has an ending and
    starts with bytes below 0x20 that text has none of (NIfTI, gzip, PNG)."""
    if Path(path.name).suffix:
        return False
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:  # unreadable: refused as a file of no case, by name
        return False
    return bool(head) and all(b >= 0x20 or b in b"\t\n\r" for b in head)


def _folder_form(names: dict[str, tuple[str, ...]], found: set[str]) -> int:
    """Which of ``SegDataset.prediction_names``' forms (their index) the files ``found`` name their cases by:
    the first found's (Synapse's test script's ``<case>_pred.nii.gz``, say); 0, the data's own, where none."""
    return next((its.index(name) for its in names.values() for name in its if name in found), 0)


def _capped_said(cap: int, pooled: bool) -> str:
    """The test cases a protocol's ``eval.max_cases`` (``cap`` > 0) scores, in words (``scored_ids``' rule);
    ``pooled``: every fold's validation cases (``ALL_FOLDS``)."""
    return f"each fold's first {counted(cap, 'validation case')}" if pooled else f"the first {cap} test cases"


def _one_fold_hint(dataset: SegDataset, files: dict[str, list[str]]) -> str:
    """Where every fold's cases are scored and the files found are one fold's validation cases only (its
    ``validation/`` folder), the words that say so; "" otherwise."""
    held = {case_id for case_id, its in files.items() if its}
    if getattr(dataset, "fold", None) != ALL_FOLDS or not held:
        return ""
    fold = next((k for k, val in enumerate(dataset.fold_cases) if held <= set(val)), None)
    return "" if fold is None else (f"; the files here are fold {fold}'s validation cases only: pass --fold {fold}, or "
                                    "add the other folds' predictions")


JPEG_ENDINGS = (".jpg", ".jpeg")


DATA_SPLIT = "the data's test split"  # a layout's own (its folders or lists): the reader has no rule to say


def split_said(dataset: SegDataset, n_scored: int) -> str:
    """The ``n_scored`` test cases scored, in words, with their split: the reader's rule (an nnU-Net fold's,
    every fold's validation cases, or bench's own drawn split), else the data's own test split."""
    fold = getattr(dataset, "fold", None)
    if fold == ALL_FOLDS:  # the rule names the folds: "of every fold of the 5 folds" said them twice
        total = len(dataset.test_ids())
        return f"{f'{n_scored} of ' if n_scored < total else ''}the {total} validation case(s) of {dataset.split_rule}"
    rule = (DATA_SPLIT if dataset.split_rule is None else dataset.split_rule if fold is None else
            f"fold {fold} of {dataset.split_rule}")
    return f"the {n_scored} test case(s) of {rule}"


def _probabilities_only(pred_dir: Path) -> str:
    """Where a folder holds nnUNetv2_predict's .npz/.pkl files and no label map, the words that say so; ""
    otherwise."""
    passed = [p.name for p in pred_dir.iterdir() if p.name.endswith((".npz", ".pkl")) and not hidden(p)]
    if not passed:
        return ""
    return (f"; its {len(passed)} .npz/.pkl files (e.g. {sorted(passed)[0]}) were passed over as probabilities and "
            "their pickled properties: nnUNetv2_predict writes each case's label map beside them")


def _name_hint(extra: list[str], expected: dict[str, str], found: set[str], pred_dir: Path) -> str:
    """Why files that are the test cases' name otherwise are not taken: a JPEG, another ending (.nii for
    nnU-Net data's .nii.gz: to gzip, not rename), one folder down (an nnU-Net ``fold_K`` beside its checkpoint and
    logs, the label maps in ``validation/``), or a second set one folder down (``postprocessed/``); "" where none."""
    def stem(name: str) -> str:
        return name.split("/")[-1].split(".")[0]

    jpeg = next((name for name in extra if name.lower().endswith(JPEG_ENDINGS)), None)
    if jpeg:  # renamed, it would be refused for its grey levels: say the remedy now
        return (f"; {jpeg} is a JPEG, whose lossy compression leaves edges that are neither background nor "
                f"foreground; save the masks as PNG, named as the test cases (e.g. {next(iter(expected))})")
    stems = {stem(name): name for name in reversed(list(expected))}  # each stem's first name: the data's own
    if all("/" not in name for name in extra) and (alike := [n for n in extra if stem(n) in stems]):
        theirs, ours = alike[0][len(stem(alike[0])):], stems[stem(alike[0])][len(stem(alike[0])):]
        # a plain .nii renamed .nii.gz is no gzip file (nor the reverse): compressed, not renamed
        fix = ("gzip them" if ours == f"{theirs}.gz" else "gunzip them" if theirs == f"{ours}.gz" else
               "name the files with the data's ending")
        return f"; {alike[0]} stands for {stems[stem(alike[0])]}: {fix} ({ours})"
    # nothing scored at the top, and one subfolder holds files of the predictions' ending
    ending = next(iter(expected))[len(stem(next(iter(expected)))):]
    below = {name.split("/")[0] for name in extra if name.count("/") == 1 and name.endswith(ending)}
    if len(below) == 1 and not found & set(expected) and all("/" not in name for name in expected):
        return f"; they are one folder down: --predictions {pred_dir / below.pop()}"
    # the cases here and again one folder down: nnU-Net's crossval_results_folds_* and its postprocessed/
    sub = below.pop() if len(below) == 1 else None
    if sub and found & set(expected) and all(name.startswith(f"{sub}/") and name[len(sub) + 1:] in expected
                                             for name in extra):
        return (f"; {sub}/ holds other predictions of the cases (nnU-Net's postprocessed ones beside the raw): "
                f"score one folder at a time, --predictions {pred_dir / sub} or this one without it")
    return ""


def _folder_sha256(pred_dir: Path, files: dict[str, str]) -> str:
    """One sha256 over the scored files: each one's name and content digest, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files.values()):
        digest.update(f"{name}\0{file_sha256(pred_dir / name)}\n".encode())
    return digest.hexdigest()


def _manifest(pred_dir: Path) -> dict[str, str]:
    """What ``bench predict``'s manifest says of the folder: its ``run_id``, ``protocol``, ``policy``, ``dataset``,
    ``dataset_name``, ``data_root`` and ``split``, those that are strings; {} where there is none (or it is no
    bench predict's)."""
    try:
        data = json.loads((pred_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no manifest, or not bench predict's: nothing to say
        return {}
    return {k: data[k] for k in ("run_id", "protocol", "policy", "dataset", "dataset_name", "data_root", "split")
            if isinstance(data, dict) and isinstance(data.get(k), str)}


# a volume stored reversed, (x, y, z) = (D, H, W): the fix, said of predictions and of the labels beside them alike
_TRANSPOSED = "; a (D, H, W) array saved as it is: save np.transpose(volume, (2, 1, 0))"


def _shape_problem(shape: tuple[int, ...], expected: tuple[int, ...], case, dataset: SegDataset, path: Path) -> str:
    """Why a prediction of ``shape`` is not on its case's grid ``expected``, in the file's own terms: a NIfTI
    volume stores (x, y, z) = (W, H, D), the reverse of the (D, H, W) arrays, and a (z, y, x) array saved as
    it is reads back reversed."""
    scored = f"test case {case.case_id!r} is scored on"
    if len(expected) == 3 and path.name.lower().endswith((".nii", ".nii.gz")):
        stored, wanted = shape[::-1], expected[::-1]
        return f"stored shape {stored}, where {scored} (x, y, z) = (W, H, D) = {wanted}" + (
            _TRANSPOSED if stored == expected else "")
    native = f" (or its image's own size {case.label.shape})" if dataset.binary else ""
    return f"shape {shape}, where {scored} {expected}{native}"


def _spacing_note(respaced: list[tuple[str, tuple, tuple]], n: int, policy: Policy) -> str:
    """The volumes (of ``n``) whose header gives another spacing than their case's, in one line: ``respaced``
    holds (file, header spacing, case spacing), both (z, y, x), said as the header stores them, (x, y, z). Not
    refused: of their case's shape, their voxels lie on its grid, and a tool may write zooms of its own
    (TransUNet's test script (1, 1, z)); the case's spacing is the one scored."""
    name, theirs, ours = respaced[0]

    def said(spacing: tuple) -> str:
        return f"({', '.join(f'{float(s):g}' for s in spacing[::-1])})"

    hd95 = ("the case's spacing is the one HD95 (mm) uses" if policy.use_spacing else
            f"{policy.name}'s HD95 is in voxels, so no number takes a spacing")
    return (f"{len(respaced)} of {n} volumes' headers give another voxel spacing than their case's (first: {name}, "
            f"{said(theirs)} mm (x, y, z), the case's {said(ours)} mm): scored voxel for voxel on the case's grid, "
            f"as their shape is its; {hd95}")


def _their_labels_differ(path: Path, gt: np.ndarray, dataset: SegDataset) -> tuple[str, list] | None:
    """Where the labels another tool wrote beside its prediction of a case (``path``, ``SegDataset.labels_beside``;
    read once) are not its ground truth ``gt``, voxel for voxel, why in words (another volume's shape, or how many
    voxels and which classes differ) and the (our id, their id) pairs where they are the same structures under
    other ids (``_relabelled``; [] otherwise); None where they are the same."""
    from bench.data.nnunet import read_nifti

    theirs, _ = read_nifti(path, label=True)
    if theirs.shape == gt.shape and np.array_equal(theirs, gt):
        return None
    if theirs.shape != gt.shape:
        return f"stored shape {theirs.shape[::-1]}, where its case's is (x, y, z) = {gt.shape[::-1]}" + (
            _TRANSPOSED if theirs.shape == gt.shape[::-1] else ": another volume's"), []
    differ = theirs != gt
    ids = np.union1d(np.unique(theirs[differ]), np.unique(gt[differ]))
    return (f"{int(differ.sum()):,} of {gt.size:,} voxels differ, in classes "
            f"{', '.join(_class_said(int(i), dataset) for i in ids if i)}"), _relabelled(theirs, gt)


def _other_labels_error(pred_dir: Path, differ: list[tuple[str, str, list]], n: int, dataset: SegDataset) -> str:
    """The one error for the labels written beside the predictions that are not the ground truth (``differ``:
    each such file's name, why and ``_relabelled`` pairs, of ``n`` compared): the first file and why, how many
    differ, named, and the remedy. The tool's numbers were computed against other labels, so these would not be
    its numbers. Where one class order explains every file (the same structures under other ids, one mapping),
    its predictions use it too, so their ids would score as our other organs: the remedy is to remap them (the
    ids given), not to score them as they are; files that disagree are named, two of them."""
    first, why, _ = differ[0]
    anyway = ("score the predictions with the data they were made on (its --data-root), or move the label files out "
              "of the folder to score them against these labels anyway")
    pairs, clash = _one_order(differ, dataset)
    if clash:
        why += f"; {clash}: no one class order explains them"
    elif pairs:
        moved = [(o, t) for o, t in pairs if o != t]
        why += (f"; the same structures under other ids{' in these files' if len(differ) > 1 else ''}, ours "
                f"{', '.join(f'{_class_said(o, dataset)} as {t}' for o, t in moved)}: another class order")
        lookup = np.arange(max(t for _, t in pairs) + 1)
        lookup[[t for _, t in pairs]] = [o for o, _ in pairs]
        anyway = ("their predictions are in that order too, so their ids would score as our other organs: remap "
                  f"the predictions (and these label files) to our ids, theirs to ours "
                  f"{', '.join(f'{t}->{o}' for o, t in moved)} (pred = np.array({lookup.tolist()})[pred]), or "
                  "score them with the data they were made on (its --data-root)")
    if len(differ) > 1:
        why += f"; {len(differ)} of the {n} cases' labels differ: {few([name for name, _, _ in differ])}"
    elif n > 1:
        why += f"; the only one of the {n} cases' labels that differs"
    return (f"{pred_dir / first}: labels written beside the predictions that are not the ground truth scored here, at "
            f"{dataset.root} ({why}); the numbers their tool gave were computed against them: {anyway}")


def _one_order(differ: list[tuple[str, str, list]], dataset: SegDataset) -> tuple[list[tuple[int, int]], str]:
    """The (our id, their id) pairs of the one class order that explains every file in ``differ`` (each file's
    name, why and ``_relabelled`` pairs), sorted, and ""; else [] and, where some file is in another class order,
    the words naming two files that disagree: one in another order and one of other voxels (other labels or another
    shape), or two whose orders give one id of ours two of theirs (or one of theirs two of ours)."""
    if not any(pairs for _, _, pairs in differ):
        return [], ""
    if unordered := next((name for name, _, pairs in differ if not pairs), None):
        ordered = next(name for name, _, pairs in differ if pairs)
        return [], f"{ordered} holds our structures under other ids, {unordered} other voxels"
    ours: dict[int, tuple[int, str]] = {}  # our id: (their id, the first file that pairs them)
    theirs: dict[int, tuple[int, str]] = {}  # and the reverse
    for name, _, pairs in differ:
        for o, t in pairs:
            (t0, by), (o0, by_t) = ours.setdefault(o, (t, name)), theirs.setdefault(t, (o, name))
            if (t0, o0) != (t, o):
                before, (o1, t1) = (by, (o, t0)) if t0 != t else (by_t, (o0, t))
                return [], (f"{before} holds ours {_class_said(o1, dataset)} as {t1}, {name} ours "
                            f"{_class_said(o, dataset)} as {t}")
    return sorted((o, t) for o, (t, _) in ours.items()), ""


def _class_said(class_id: int, dataset: SegDataset) -> str:
    """A class id in words: its name where the data has that class."""
    return (f"{class_id} ({dataset.class_names[class_id - 1]})" if 0 < class_id < dataset.num_classes else
            f"{class_id} (no class of the data)")


def _relabelled(theirs: np.ndarray, gt: np.ndarray) -> list[tuple[int, int]]:
    """Where ``theirs`` holds ``gt``'s structures, each under one other id (another class order), each
    (our id, their id) pair found; [] otherwise."""
    if theirs.min() < 0:
        return []
    base = int(theirs.max()) + 1
    ours, their = np.divmod(np.unique(gt * base + theirs), base)  # each (ours, theirs) pair of ids found, once
    if len(set(ours.tolist())) != len(ours) or len(set(their.tolist())) != len(their):
        return []
    return [(int(o), int(t)) for o, t in zip(ours, their)]


def _protocol_hint(made_by: dict[str, str], protocol: Protocol) -> str:
    """Where bench predict's run was scored under another protocol than ``protocol``, the words that say so
    (its cases and grid differ: the likely cause of a shape or case error); "" otherwise."""
    theirs = made_by.get("protocol")
    if theirs is None or theirs == protocol.name:
        return ""
    return (f"; these are bench predict's predictions of run {made_by.get('run_id', '?')}, protocol {theirs!r} "
            f"(scored here under {protocol.name!r}): pass --protocol {theirs}")


def _data_notes(made_by: dict[str, str], dataset: SegDataset, pred_dir: Path) -> list[str]:
    """Where bench predict's run read other data than ``dataset``: BenchError for another dataset (its numbers
    against this ground truth would mean nothing); a note for the same dataset read at another folder (a copy,
    or another version of it); [] otherwise."""
    run = made_by.get("run_id", "?")
    # an older run's record may lack dataset_name (nnunet's "nnunet:<name>"): its reader's name then
    theirs, ours = ((made_by["dataset_name"], dataset.dataset_name) if "dataset_name" in made_by else
                    (made_by.get("dataset"), dataset.name))
    if theirs is not None and theirs != ours:
        where = f" at {made_by['data_root']}" if "data_root" in made_by else ""
        raise BenchError(f"{pred_dir}: bench predict's predictions of run {run}, of {theirs!r} data{where}; scored "
                         f"here against {ours!r} data at {dataset.root}: give the data they are of (--dataset "
                         f"{made_by.get('dataset', theirs)} and its --data-root)")
    root = str(Path(dataset.root).resolve())
    if made_by.get("data_root") not in (None, root):
        return [f"bench predict's run {run} read its {ours} data at {made_by['data_root']}; the ground truth here "
                f"is that at {root}"]
    return []


def _fold_mismatch(made_by: dict[str, str], dataset: SegDataset) -> str:
    """Where bench predict's run was of another split (a cross-validation fold, or the data's test split)
    than the one scored, the words that name the mismatch and the --fold that matches; "" otherwise."""
    fold = getattr(dataset, "fold", None)
    theirs, ours = made_by.get("split"), fold if fold == ALL_FOLDS else split_name(fold)
    if theirs == ours or not is_split(theirs):  # None, or no record's split: nothing to match
        return ""
    fix = "pass no --fold" if split_fold(theirs) is None else f"pass --fold {split_fold(theirs)}"
    return (f"fold mismatch: bench predict's run {made_by.get('run_id', '?')} is of {_split_words(theirs)}, scored "
            f"here as {_split_words(ours)}: {fix}")


def _split_words(split: str) -> str:
    """A record's ``split`` (or ``ALL_FOLDS``) in words."""
    if split == ALL_FOLDS:
        return "all folds' validation cases"
    return "the data's test split" if split_fold(split) is None else f"fold {split_fold(split)}"


def _authors_metrics_note(policy: str, metrics: dict[str, float], dataset: str) -> str:
    """Under legacy-synapse, the authors' scoring, which computes DSC and HD95 alone (TransUNet's
    calculate_metric_percase): that the Markdown table's other ``metrics`` are bench's, as a board's caption
    says of them (``class_metrics_said``); "" under any other ``policy``."""
    from bench.report.board_text import class_metrics_said
    from bench.report.boards import METRICS

    extra = [METRICS[m][0] for m in ("iou", "acc", "spe", "sen") if m in metrics]
    if policy != "legacy-synapse" or not extra:
        return ""
    return (f"{policy} is the authors' scoring (TransUNet's calculate_metric_percase), which computes DSC and "
            f"HD95 alone: {', '.join(extra)} are bench's, under the same rules (an empty mask's IoU as its DSC): "
            f"{class_metrics_said(extra, dataset)}")


def _miss_note(policy: Policy, per_case: pd.DataFrame, unit: str | None) -> str:
    """How ``policy`` scored the structures predicted nowhere in a case, counted as the boards count them, where
    its HD95 for them is no measured distance: 0, the best value (legacy-synapse, the papers' rule), or the
    penalty (strict); "" where none was missed or the policy computes no HD95."""
    if "empty" not in per_case or policy.hd_definition is None:
        return ""
    counts = miss_counts(per_case["empty"])
    if not counts["n_missed"]:
        return ""
    missed = f"{counts['n_missed']} of {counts['n_present']} (case, class) pairs with the structure were missed here"
    if policy.misses_score_zero:
        return (f"{policy.name} scores a structure predicted nowhere in a case DSC 0 and HD95 0, the best HD95 "
                f"(the papers' rule): {missed}, and the HD95 gains from each")
    if policy.ref_only.hd95 != PENALTY:
        return ""
    penalties = per_case.loc[per_case["empty"] == "ref_only", "hd95"]
    low, high = penalties.min(), penalties.max()
    value = f"{low:.2f}" if np.isclose(low, high) else f"{low:.2f} to {high:.2f}"
    return (f"{policy.name} scores a structure predicted nowhere in a case DSC 0 and HD95 the penalty, the "
            f"diagonal of the case's extent ({value} {unit} here), the worst HD95: {missed}, each adding its "
            "penalty to its class's mean HD95")


def _empty_notes(policy: Policy, per_case: pd.DataFrame) -> list[str]:
    """How ``policy`` scored the (case, class) pairs empty in both masks and the false positives on structures
    absent from their case, a line for each kind found: numbers no reader would guess (legacy-synapse's (0, 0)
    for both empty, the authors' rule; strict's n/a, left out of the means). [] for a pooled policy."""
    if "empty" not in per_case or policy.pooled:
        return []
    notes = []
    for empty, what in (("both", "empty in both prediction and ground truth"),
                        ("pred_only", "false positives, predicted where the structure is absent from the case")):
        if n := int((per_case["empty"] == empty).sum()):
            notes.append(f"{n} of {len(per_case)} (case, class) pairs were {what}: {policy.name} scores each "
                         f"{_outcome_said(policy, empty)}")
    return notes


def _outcome_said(policy: Policy, empty: str) -> str:
    """``policy``'s numbers for an ``empty`` pair ("both", "pred_only"), in words."""
    dice, hd95 = policy.outcome(empty)
    said = "DSC n/a, left out of the means (DSC n/a counts them)" if dice != dice else f"DSC {dice:g}"
    if policy.hd_definition is not None:
        said += (" and HD95 the penalty, the diagonal of the case's extent" if hd95 == PENALTY else
                 " and HD95 n/a" if hd95 != hd95 else f" and HD95 {hd95:g}")
    if empty == "both" and policy.misses_score_zero and dice == 0:  # TransUNet's calculate_metric_percase
        said += ", as a miss (the authors' rule: an empty prediction scores (0, 0) whatever the ground truth holds)"
    return said


SCORE_FORMATS = ("md", "csv", "json")


def render(scores: Scores, fmt: str) -> str:
    """``scores`` as ``bench score --format`` writes them: ``md`` (what was scored, the aggregate numbers
    and one row per class, as a board shows a run), ``csv`` (the per-case × per-class rows of a run
    record's ``per_case``, with the HD95 unit; a case without a file (``Scores.missing``) has its rows, scored empty)
    or ``json`` (everything; NaN as null, as in records)."""
    from bench.records import CASE_COLUMNS

    if fmt == "csv":
        cols = [c for c in CASE_COLUMNS if c in scores.per_case]
        return scores.per_case[cols].assign(hd95_unit=scores.hd95_unit).to_csv(index=False, lineterminator="\n")
    if fmt == "json":
        from bench.records import json_text

        data = {"scored": scores.scored, "metrics": scores.metrics, "hd95_unit": scores.hd95_unit,
                **({"per_fold": scores.per_fold} if scores.per_fold else {}),
                "per_class": scores.per_class.to_dict("records"), "per_case": scores.per_case.to_dict("records"),
                "missing": scores.missing, "notes": scores.notes}
        return json_text(data)
    if fmt != "md":
        raise BenchError(f"unknown score format {fmt!r}; expected one of: {', '.join(SCORE_FORMATS)}")
    return _render_md(scores)


def _render_md(scores: Scores) -> str:
    from bench.report.boards import METRICS, class_display
    from bench.report.tables import md_table

    s = scores.scored
    shown = [m for m in METRICS if m in scores.metrics and not (m == "hd95" and scores.hd95_unit is None)]

    def head(m: str) -> str:
        unit = "%" if METRICS[m][1] else scores.hd95_unit if m == "hd95" else ""
        return f"{METRICS[m][0]} {METRICS[m][2]}" + (f" ({unit})" if unit else "")

    def cell(value: float, m: str) -> str:
        return "n/a" if value != value else f"{value * (100.0 if METRICS[m][1] else 1.0):.2f}"

    overall = pd.DataFrame([{head(m): cell(scores.metrics[m], m) for m in shown}])
    n_na = scores.metrics.get("n_nan_dice", 0)
    if n_na == n_na and n_na > 0:  # as boards show it (strict): the entries without a Dice, of all
        overall["DSC n/a"] = f"{int(n_na)}/{int(n_na) + int(scores.metrics['n_valid_dice'])}"
    classes = pd.DataFrame([{"Class": class_display(r["name"], s["dataset"]), **{head(m): cell(r[m], m) for m in shown},
                             "Cases": str(r["n"])} for r in scores.per_class.to_dict("records")])
    run = f" (bench predict of run {s['run_id']})" if s["run_id"] else ""
    pooled = s["fold"] == ALL_FOLDS
    fold = f" fold {s['fold']}" if s["fold"] is not None and not pooled else ""
    every = "" if not pooled else (
        f"{_capped_said(s['max_cases_per_fold'], True)}, of "
        if s.get("max_cases_per_fold") else f"all {s['n_folds']} folds' validation cases, each case once, of ")
    split = f" · split: {every}{s['split'] or DATA_SPLIT}"
    title = (f"{s['predictions']}{run}: {s['n_cases']} cases of {s['dataset']}{fold} ({s['data_root']}){split} · "
             f"protocol {s['protocol']} v{s['protocol_version']} ({s['protocol_hash']}"
             f"{', off-protocol' if s['off_protocol'] else ''}) · policy {s['policy']}")
    parts = [title, md_table(overall), md_table(classes), *(f"note: {n}" for n in scores.notes)]
    return "\n\n".join(parts) + "\n"
