"""`bench rescore`: score finished runs under another metric policy without training again.

A run's evaluated weights stay in its run directory (``checkpoints/final.pt``, ``best.pt`` when
the protocol selected the lowest-train-loss epoch, ``lr_min.pt`` the lowest-lr one), and the
record says how the model was built and the data read. Rescoring rebuilds the model from the
record, loads those weights, evaluates the same test split under ``policy`` and writes a new
record ``<run_id>.<policy>``: the original's training fields (``train``, ``init``, ``protocol``, ``seed``...) with the new policy's metrics and
``rescored_from``. So one trained model appears on a ``legacy-synapse`` board and a ``strict``
board, with the same weights behind both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from bench import env, records
from bench.data import data_identity, open_dataset, synthetic_identity
from bench.data.base import SegDataset
from bench.data.synth import MARKER, WRITTEN, remake_text
from bench.errors import BenchError
from bench.evaluate import evaluate, scored_ids
from bench.fileio import file_sha256
from bench.metrics import POLICIES, get_policy, policy_fields, policy_misfit
from bench.protocol import Protocol, load_protocol, protocol_from_record
from bench.records import rescore_id, rescored_name  # beside the folder's other names: records has no torch
from bench.registry import code_changed, create_model, get_entry, strict_load
from bench.rng import deterministic_kernels
from bench.train import CHECKPOINT_DIR, SELECTED_CHECKPOINTS, load_checkpoint

__all__ = ["weights_path", "scored_weights", "earlier_rescores", "record_protocol", "run_model",
           "rescore_record", "plan_rescore", "rescored_twin", "twin_state", "DataRoots"]


def unscored_records(results_dir: Path) -> frozenset[str]:
    """The names of the folder's records that no rescore wrote (``rescored_name``)."""
    return frozenset(p.name for p in records.records_dir(results_dir).glob("*.json") if not rescored_name(p.name))


def weights_path(results_dir: Path, rec: dict[str, Any]) -> Path:
    """The checkpoint the run's record was evaluated with; BenchError where its ``train.selected`` names
    none this version knows (a newer bench's record)."""
    selected = str(rec["train"].get("selected") or "final").split("@")[0]
    if selected not in SELECTED_CHECKPOINTS:
        raise BenchError(f"run {rec['run_id']}: train.selected {selected!r} names no checkpoint this bench knows "
                         f"({', '.join(SELECTED_CHECKPOINTS)}); a newer bench wrote the record?")
    return records.run_dir(results_dir, rec["run_id"]) / CHECKPOINT_DIR / SELECTED_CHECKPOINTS[selected]


def scored_weights(results_dir: Path, rec: dict[str, Any]) -> dict[str, str]:
    """The checkpoint ``rec``'s run is evaluated from (``weights_path``) as records keep it, {file, sha256}:
    what tells a rescore of an earlier training of the run from one of its weights now (``earlier_rescores``)."""
    path = weights_path(results_dir, rec)
    return {"file": path.name, "sha256": file_sha256(path)}


def earlier_rescores(results_dir: Path, rec: dict[str, Any],
                     policies: Iterable[str] = POLICIES) -> list[dict[str, Any]]:
    """The records `bench rescore` wrote of ``rec``'s run under ``policies`` that scored other weights than
    ``rec`` names (``records.stale_rescores``, read from disk for one run): of an earlier training, the run
    trained again since."""
    found = []
    for policy in policies:
        if records.record_path(results_dir, rid := rescore_id(rec["run_id"], policy)).is_file():
            with contextlib.suppress(BenchError):  # damaged: bench report names it
                found.append(records.read_record(results_dir, rid))
    return records.stale_rescores([rec, *found])


def check_weights_kept(todo: list[dict[str, Any]], results_dir: Path, verb: str) -> None:
    """BenchError, before anything is done, where not one of several runs has its weights (records copied
    without the run folders): one line instead of a FAILED line per run."""
    if len(todo) > 1 and not any(weights_path(results_dir, rec).is_file() for rec in todo):
        first = weights_path(results_dir, todo[0])
        raise BenchError(f"none of the {len(todo)} runs has its weights under {records.runs_dir(results_dir)} "
                         f"(e.g. {first.relative_to(records.runs_dir(results_dir))}), which they are {verb} from: were "
                         "the records copied without the runs/ folder bench run wrote beside them?")


def record_protocol(rec: dict[str, Any], protocol_file: Path | None = None) -> Protocol:
    """The run's protocol: from the record's recipe (every setting as it ran) where it has one, else
    rebuilt from its name and overrides, from ``protocol_file`` for runs of the protocol that file
    names (a results folder may hold runs of several); BenchError when its content hash is not the
    run's (the file changed since, so evaluation could too)."""
    meta = rec["protocol"]
    kept = protocol_from_record(meta)
    if kept is not None:  # its file edited, lost, or of several versions in one folder: the recipe ran
        if protocol_file is not None:  # said once per command (the CLI shows each warning text once)
            warnings.warn(f"--protocol {protocol_file}: not used for runs whose records keep their recipe (every "
                          "setting as it ran); those settings are used", stacklevel=2)
        return kept
    given = load_protocol(protocol_file, earlier=True) if protocol_file else None  # read once here (it was up to three times)
    if given is not None and given.name == meta["name"]:
        base, where = given, f"the file {protocol_file}"
    else:
        try:
            base = load_protocol(meta["name"])
        except BenchError:
            named = f" (--protocol {protocol_file} is protocol {given.name!r})" if given is not None else ""
            raise BenchError(f"run {rec['run_id']}: its protocol {meta['name']!r} is not built in{named}; pass the "
                             "file it was run with as --protocol FILE") from None
        where = f"the built-in {meta['name']!r}"
    proto = base.with_overrides(**meta["overrides"])
    if proto.hash != meta["hash"]:
        commit = str(rec.get("git_commit") or "").removesuffix("-dirty")
        older = (f" (a built-in of an earlier bench: `git show {commit[:12]}:bench/protocols/{meta['name']}.toml > "
                 f"{meta['name']}_v{meta.get('version', 'old')}.toml` in a checkout writes the file the run's commit had)"
                 if base is not given and re.fullmatch(r"[0-9a-f]{7,40}", commit) else "")
        raise BenchError(f"run {rec['run_id']}: {where} now has hash {proto.hash}, the run used {meta['hash']}; "
                         f"pass the protocol file the run used with --protocol{older}")
    return proto


def run_model(rec: dict[str, Any], results_dir: Path, protocol_file: Path | None = None,
              what: str = "used", policy: str | None = None,
              data_roots: DataRoots | None = None) -> tuple[nn.Module, SegDataset, Protocol]:
    """The run's model holding the weights it was evaluated with, its test data and its protocol.

    BenchError when the weights are gone, the protocol changed (``record_protocol``) or the run's
    split now holds other cases than it scored (the data, or how its split is drawn, changed since,
    so cases it trained on could be ``what``: rescored, predicted). ``policy``: what the data is now
    scored under (default the run's): a spacing table added since counts as a change only for one that
    reads it (``data_ids``). ``data_roots``: where the data may be now (``run_data_root``); the
    dataset's ``root`` is the folder read."""
    if (registered := get_entry(rec["model"]).name) != rec["model"]:  # as the record spells it: "UNet" is no "unet"
        raise BenchError(f"run {rec['run_id']}: its model {rec['model']!r} is not installed here ({registered!r} is "
                         "another model, alike but for case); install the package that registers it")
    path = weights_path(results_dir, rec)
    if not path.is_file():
        raise BenchError(f"{path}: not found; run {rec['run_id']} can only be {what} from its run directory (its "
                         f"weights were deleted, or not copied with the records; `bench run` of its grid trains it "
                         f"again once records/{rec['run_id']}.json is removed)")
    protocol = record_protocol(rec, protocol_file)
    split = rec["split"]
    root = run_data_root(rec, results_dir, data_roots, policy or rec["policy"])
    dataset = open_dataset(rec["dataset"], root, records.split_fold(split))
    scored = sorted({row["case"] for row in rec["per_case"]})
    if sorted(scored_ids(dataset, protocol)) != scored:
        raise BenchError(f"run {rec['run_id']}: its {split} split of {root} now holds other cases than "
                         f"the {len(scored)} it was scored on, so cases the model trained on could be {what}")
    recorded = rec.get("data_id")  # absent in older records, empty for runs identified by their data's path
    roots, fold = data_roots or DataRoots(), records.split_fold(split)
    if recorded and recorded not in roots.ids(rec["dataset"], root, fold, policy or rec["policy"], dataset):
        now = roots.now(rec["dataset"], root, fold, policy or rec["policy"])
        raise BenchError(f"run {rec['run_id']}: the data at {root} changed since it was scored (files, sizes or "
                         f"content differ: data id {recorded} then, {other_data(rec, root, now)}), so it cannot be "
                         f"{what} on it")
    # the statistics its images were normalised with in training, not ones drawn from the data as it is now
    dataset.foreground_stats = rec.get("intensity_stats")
    dataset.target_spacing = rec.get("target_spacing")  # likewise how its volumes were preprocessed
    dataset.mask_norm = rec.get("mask_norm")
    model = create_model(rec["model"], **rec["model_config"]).to(protocol.torch_dtype)  # float64 runs stay exact
    if code_changed(rec):  # weights that still fit can meet other code: the numbers would be neither's
        warnings.warn(f"run {rec['run_id']}: {rec['model']}'s code changed since it trained; its weights are "
                      f"{what} with the code as it is now", stacklevel=2)
    try:
        state = load_checkpoint(path)["model"]
    except BenchError:  # a damaged file: deleting it would leave the run nothing to score
        raise BenchError(f"run {rec['run_id']}: {path}: unreadable (damaged or cut short), so its weights cannot be "
                         f"{what}; train the run again (remove records/{rec['run_id']}.json and runs/{rec['run_id']}/, "
                         "then bench run)") from None
    try:  # weights the model's code no longer fits (a plugin edited since): one line naming the keys
        strict_load(model, state, str(path))
    except BenchError as exc:
        raise BenchError(f"run {rec['run_id']}: {exc}; the model's code changed since the run was trained") from None
    deterministic_kernels()  # cuDNN's kernel choice fixed, as when the run was scored
    return model, dataset, protocol


def other_device_warning(recs: list[dict[str, Any]], device: torch.device, what: str) -> str | None:
    """A warning where runs were scored on another kind of device than ``device``: float16 autocast
    (``eval.autocast``), TF32 convolutions and cuDNN's kernels apply on CUDA only, so the numbers can
    differ from the run's own; None where every run was scored on this kind."""
    kinds = sorted({(r.get("device") or {}).get("device") for r in recs} - {None, device.type})
    if not kinds:
        return None
    return (f"runs scored on {' and '.join(kinds)} are {what} on {device.type}: numbers can differ from the runs' own "
            f"(autocast, TF32 and cuDNN kernels apply on CUDA only); --device {kinds[0]} repeats their conditions")


class DataRoots:
    """Where runs' data may be now (``--data-root``, repeatable: a results folder copied to another
    machine, the data moved): a run takes the folder that holds the very data it was scored on, by
    its record's ``data_id``. Each folder's ids (``ids``) are read once per dataset kind, fold and
    policy, its runs' recorded folders too: one command's runs on one dataset hash it once."""

    def __init__(self, paths: list[Path | str] | tuple = ()):
        self.paths = [Path(p).expanduser() for p in paths]
        for path in self.paths:
            if not path.is_dir():
                raise BenchError(f"--data-root {path}: not a folder; give the folder the data was moved to")
        self._ids: dict[tuple, set[str]] = {}
        self._now: dict[tuple, str] = {}

    def ids(self, kind: str, path: Path, fold: int | None, policy: str,
            dataset: SegDataset | None = None) -> set[str]:
        """The ids a run's record may name the data at ``path`` by: its synthetic identity (as written), else
        ``data_ids`` (of ``dataset`` where the caller opened it)."""
        key = (kind, Path(path).resolve(), fold, policy)
        if key not in self._ids:
            dataset = dataset or open_dataset(kind, path, fold)
            now = self._now[key] = data_identity(dataset)  # other data's: its content_id, data_ids' first
            self._ids[key] = {now} if now.startswith("synthetic:") else {now, *earlier_data_ids(dataset, policy)}
        return self._ids[key]

    def now(self, kind: str, path: Path, fold: int | None, policy: str) -> str | None:
        """The id the data at ``path`` has today (``data_identity``), once ``ids`` read it; None where it did
        not open as ``kind`` data."""
        return self._now.get((kind, Path(path).resolve(), fold, policy))

    def find(self, rec: dict[str, Any], policy: str) -> Path | None:
        """The first folder holding ``rec``'s data; None where none does or the record names no data id."""
        recorded, fold = rec.get("data_id"), records.split_fold(rec["split"])
        for path in self.paths if recorded else ():
            try:
                if recorded in self.ids(rec["dataset"], path, fold, policy):
                    return path
            except BenchError:  # another dataset's folder, given for other runs
                self._ids[(rec["dataset"], path.resolve(), fold, policy)] = set()
        return None


def run_data_root(rec: dict[str, Any], results_dir: Path, data_roots: DataRoots | None = None,
                  policy: str | None = None) -> Path:
    """Where a run's data is now: a ``data_roots`` folder holding its data, else its recorded path;
    for synthetic data kept in a results folder that was moved since, the same folder under
    ``results_dir``. BenchError naming the run, and what to do, when it is gone."""
    if data_roots is not None and data_roots.paths:
        found = data_roots.find(rec, policy or rec["policy"])
        if found is not None:
            return found
    root = Path(rec["data_root"]).expanduser()  # records written before paths were resolved may hold ~
    moved = records.synthetic_dir(results_dir) / root.name
    if not root.is_dir() and rec.get("synthetic") and moved.is_dir():
        return moved
    if root.is_dir():
        return root
    relative = "" if root.is_absolute() else " (recorded relative to the folder bench run started in)"
    gone = f"run {rec['run_id']}: its data {root} is not there{relative}"
    if data_roots is not None and data_roots.paths:
        given = ", ".join(str(p) for p in data_roots.paths)
        if not rec.get("data_id"):
            raise BenchError(f"{gone}, and its record names no data id (an older bench), so --data-root {given} "
                             "cannot be checked to hold the data it was scored on")
        fold, policy = records.split_fold(rec["split"]), policy or rec["policy"]
        held = "; ".join(other_data(rec, path, data_roots.now(rec["dataset"], path, fold, policy))
                         for path in data_roots.paths)
        raise BenchError(f"{gone}, and --data-root {given} holds other data than it was scored on "
                         f"({rec['dataset']} data of id {rec['data_id']}; {held})")
    remake = remake_text(rec, root, results_dir)
    remake = f"; synthetic data: {remake}" if remake else ""
    raise BenchError(f"{gone}; if it moved, pass its folder now as --data-root DIR (checked to hold the data the run "
                     f"was scored on){remake}")


def other_data(rec: dict[str, Any], root: Path, now: str | None) -> str:
    """What the data at ``root`` is, for an error saying it is not the data of run ``rec``: its id ``now``
    (None: it does not open as the run's dataset), and where the run's synthetic data differs by its
    marker, that: a copy without ``MARKER`` (the same files, where the record keeps which), or an edit."""
    if now is None:
        return f"{root} does not open as {rec['dataset']} data"
    text = f"{root} has id {now}"
    if not (str(rec.get("data_id")).startswith("synthetic:") and now.startswith("files:")):
        return text
    if synthetic_identity(root) is not None:
        return f"{text}: its files were edited since they were generated"
    written = ((rec.get("synthetic_made") or {}).get(WRITTEN) or {}).get(rec["dataset"])
    if written == now:
        return (f"{text}: the files the run was scored on, without the marker {MARKER} that identifies them as "
                "synthetic data; copy it in from the folder they came from")
    return f"{text} and no marker {MARKER} (synthetic data holds one)"


def _twins(spec, results_dir: Path) -> Iterator[tuple[str, str]]:
    """(run id, rescore's id) of each run of ``spec``'s training under another policy that `bench rescore`
    scored into ``spec.policy``: the run planned the same under that policy, and its record there."""
    from dataclasses import replace

    for other in POLICIES:
        source = replace(spec, policy=other).key
        if other != spec.policy and records.record_path(results_dir, twin := rescore_id(source, spec.policy)).is_file():
            yield source, twin


def rescored_twin(spec, results_dir: Path) -> str | None:
    """The run id of a `bench rescore` record holding ``spec``'s training under ``spec.policy``:
    the run planned the same under another policy, rescored into this one; None if there is none."""
    return next((twin for _, twin in _twins(spec, results_dir)), None)


def twin_state(spec, results_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """What `bench run` does with ``spec`` by its training's rescores into ``spec.policy`` (``_twins``), each
    record read once: (the id of one that counts, None): skip ``spec``; (None, the record of a run whose rescore
    scored an earlier training of it, trained again since, its weights there): score them again (``rescore_record``,
    as `bench rescore` does) rather than train ``spec`` a second time; (None, None): train ``spec``, as where the
    weights to score again are gone (that rescore cannot be made current)."""
    stale = None
    for source, twin in _twins(spec, results_dir):
        if (rec := _trained_again(results_dir, source, spec.policy)) is None:
            return twin, None
        if stale is None and weights_path(results_dir, rec).is_file():
            stale = rec
    return None, stale


def _trained_again(results_dir: Path, run_id: str, policy: str) -> dict[str, Any] | None:
    """Run ``run_id``'s record where its rescore under ``policy`` scored an earlier training of it; None
    where it did not, or its record is gone or damaged (nothing tells: the rescore counts)."""
    try:
        rec = records.read_record(results_dir, run_id)
    except BenchError:
        return None
    return rec if earlier_rescores(results_dir, rec, [policy]) else None


def claim_twins(spec, results_dir: Path) -> list | str:
    """Claims (``bench.claim``) on the records `bench rescore` would write of ``spec``'s training under
    ``spec.policy`` (its runs finished under other policies, rescored), held while `bench run` trains
    it, as bench rescore claims each record it scores: one of the two does it, not both (the board
    would count the training twice). Who holds one instead, where a rescore is scoring it now."""
    from dataclasses import replace

    from bench.claim import claim_run

    held = []
    with contextlib.ExitStack() as taken:  # released unless all are had: the caller releases only what it gets
        for other in POLICIES:
            original = replace(spec, policy=other).key
            if other == spec.policy or not records.record_path(results_dir, original).is_file():
                continue
            claim = claim_run(results_dir, rescore_id(original, spec.policy))
            if isinstance(claim, str):
                return f"{claim} (scoring it under {spec.policy}: bench rescore)"
            held.append(taken.enter_context(claim))
        taken.pop_all()
    return held


def plan_rescore(results_dir: Path, policy: str, models: list[str] | None = None,
                 datasets: str | list[str] | None = None) -> list[dict[str, Any]]:
    """Finished original records (not rescored ones) of ``models`` on ``datasets`` whose policy differs from
    ``policy`` and that have no ``<run_id>.<policy>`` record yet, or one of an earlier training of the run
    (``records.stale_rescores``), in run-id order; BenchError for a folder without any record. Each record is
    read once (``load``), and those to score once more, whole."""
    get_policy(policy)
    with warnings.catch_warnings():  # load leaves a stale rescore out, which makes its run one to score again
        warnings.simplefilter("ignore", records.StaleRescoresLeftOut)
        df = records.load(results_dir, current=True)
    chosen = set(records.finished_runs(df, results_dir, models, datasets)["run_id"])
    done = set(df["run_id"])
    # a run trained under ``policy`` from the start is the same training: rescoring its twin would
    # put the same weights on the board twice
    # of the same data too, where both records say what it was (data_id; absent in older records)
    twin = ["model", "model_config", "dataset_name", "synthetic", "split", "protocol_hash", "protocol_overrides",
            "seed", "init"]
    data = df["data_id"].astype(object) if "data_id" in df else pd.Series(None, index=df.index, dtype=object)
    data = data.where(data.astype(bool) & data.notna(), None)  # "" (a path-identified run) says nothing either
    keys = df[twin].astype(str).apply(tuple, axis=1)
    under_policy = (df["policy"] == policy) & df["rescored_from"].isna()  # trained under it from the start
    trained: dict[tuple, set] = {}
    for key, data_id in zip(keys[under_policy], data[under_policy]):
        trained.setdefault(key, set()).add(data_id)
    roots = dict(zip(df["run_id"], df["data_root"])) if "data_root" in df else {}
    opened: dict[tuple[str, str], set[str]] = {}  # each data folder read once per plan
    has_twin = [key in trained and (d is None or None in trained[key] or d in trained[key]
                                    or _same_data(d, trained[key], roots.get(rid), df.loc[i, "dataset"], opened))
                for i, rid, key, d in zip(df.index, df["run_id"], keys, data)]
    todo = df[df["run_id"].isin(chosen) & (df["policy"] != policy) & ~pd.Series(has_twin, index=df.index)]
    recs = [records.read_record(results_dir, rid) for rid in sorted(todo["run_id"])
            if rescore_id(rid, policy) not in done]  # a stale one is not: load left it out
    # a pooled policy scores binary tasks only: other runs are left out, and said so
    misfit = {r["run_id"]: policy_misfit(policy, len(r["per_class"]), f"run {r['run_id']}") for r in recs}
    unfit = [m for m in misfit.values() if m]
    if unfit and len(unfit) == len(recs):
        raise BenchError(unfit[0])
    if unfit:
        warnings.warn(f"{len(unfit)} run(s) left out: {unfit[0]}", stacklevel=2)
    return [r for r in recs if not misfit[r["run_id"]]]


def _same_data(data_id: str, others: set, root: str | None, dataset: str,
               opened: dict[tuple[str, str], set[str]]) -> bool:
    """Whether ``data_id`` and one of ``others`` name the data at ``root`` as it is (``data_ids``):
    the same training's twins, not runs on other data. ``opened``: ids of the folders read so far."""
    if not (root and data_id.startswith("files:") and Path(root).is_dir()):
        return False
    if (dataset, root) not in opened:
        try:
            opened[dataset, root] = data_ids(open_dataset(dataset, Path(root)))
        except BenchError:  # data that no longer opens: nothing to say they are the same
            opened[dataset, root] = set()
    ids = opened[dataset, root]
    return data_id in ids and bool(ids & others)


def data_ids(dataset: SegDataset, policy: str | None = None) -> set[str]:
    """The ids a run's record may name this data by: content_id's of today and ``earlier_data_ids``."""
    return {dataset.content_id(), *earlier_data_ids(dataset, policy)}


def earlier_data_ids(dataset: SegDataset, policy: str | None = None) -> list[str]:
    """The other ids a run may name this data by, in the order bench run tries them: the one of runs
    begun before content_id read the test labels (scored=False), which they keep; for a run scored
    under ``policy`` without spacings (HD95 in voxels), also those without the spacing table, which
    changes none of its scores (bench predict's warning of 1 mm voxels advises adding one)."""
    ids = [dataset.content_id(scored=False)]
    if policy is not None and not get_policy(policy).use_spacing and dataset.spacing_files():
        ids += [dataset.content_id(spacing=False), dataset.content_id(scored=False, spacing=False)]
    return ids


def rescore_record(rec: dict[str, Any], policy: str, results_dir: Path, device: torch.device | str,
                   protocol_file: Path | None = None, data_roots: DataRoots | None = None,
                   replace: bool = False) -> dict[str, Any]:
    """Evaluate the run of ``rec`` under ``policy`` and write (and return) its new record;
    ``data_roots``: as ``run_data_root``; ``replace``: over a rescore of an earlier training
    (``earlier_rescores``)."""
    device = env.resolve_device(device)  # "cpu", "cuda:1" as the Python API's other calls take them
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    # into a policy scoring in mm, a spacing table added since the run is a change of its data (as bench run
    # trains such a run again): its rescored record would name data without the table its HD95 came from
    model, dataset, protocol = run_model(rec, results_dir, protocol_file, "rescored", policy, data_roots)
    weights = scored_weights(results_dir, rec)  # the file just loaded: a training again replaces it
    if get_policy(policy).use_spacing:  # HD95 in mm: every test case needs its spacing (as bench run checks)
        dataset.check_spacing()
    scores = evaluate(model, dataset, protocol, policy, device=device)
    new = {
        **rec,
        "run_id": rescore_id(rec["run_id"], policy),
        "policy": policy,
        "policy_conventions": policy_fields(policy),
        "hd95_unit": scores.hd95_unit,
        "metrics": scores.metrics,
        "per_class": scores.per_class,
        "per_case": scores.per_case,
        "rescored_from": rec["run_id"],
        "scored_weights": weights,
        "data_root": str(Path(dataset.root).resolve()),  # the folder scored now (data_id says it holds the same)
        "rescored_at": started.isoformat(),
        "rescore_time_s": round(time.perf_counter() - t0, 3),
        # where and with what the new scores were computed (device, git_commit, packages stay the run's)
        "rescored_with": {"device": env.fingerprint(device), "git_commit": env.git_commit(),
                          "code_digest": env.source_digest(), "packages": env.package_versions()},
    }
    records.write_record(new, results_dir, replace=replace)
    return new
