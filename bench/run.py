"""`bench run`: a grid of (model × seed) runs on one dataset under one protocol (re-running one from its
record: bench.rerun).

Each run trains with bench.train, evaluates with bench.evaluate and writes one record with
bench.records. Run directories are keyed by everything that defines the run, so ``resume=True``
finds a killed run's checkpoint and finished runs are skipped.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench import distributed, env, fileio, records, runlog
from bench.data import (check_folds, data_identity, get_reader, open_dataset, synthetic_folder, synthetic_identity,
                        synthetic_made, synthetic_root)
from bench.data.intensity import intensity_stats
from bench.data.preprocess import (cache_training_volumes, patch_fit_note, preprocess_processes, slicing_note,
                                   target_spacing, volume_prep)
from bench.errors import BenchError, DataError, HeldError, few, one_line
from bench.fileio import file_sha256
from bench.cost import run_counts
from bench.evaluate import evaluate, resolve_nsd_tolerance, scoring_policy
from bench.metrics import POLICIES, get_policy, policy_fields, policy_misfit
from bench.names import int_list
from bench.protocol import Protocol, check_seed, protocol_from_record, same_evaluation
from bench.registry import (ChannelsError, changed_keys, check_buildable, check_set_kinds, create_model, get_entry,
                            identity_overrides)
from bench.registry import list_models, load_weights, model_code, model_overrides as model_overrides_of
from bench.rng import caller_rng_kept, seed_everything
from bench.train import (CHECKPOINT_DIR, FINAL, LAST, TrainResult, checkpoints_when, items_digest, save_checkpoint,
                         train_model)


@dataclass(frozen=True)
class RunSpec:
    """One planned run (``plan_grid``): everything that defines it, which its ``key`` (the run id) hashes."""

    model: str
    dataset: str
    protocol: Protocol
    seed: int
    data_root: Path
    synthetic: bool
    policy: str
    model_overrides: tuple[tuple[str, Any], ...] = ()
    fold: int | None = None  # cross-validation fold (nnunet data); None: the dataset's test split
    # pretrained (source, path, sha256: the record keeps it whole; the run id hashes its first 16 digits, as
    # records before kept no more); None: from scratch
    init: tuple[str, str, str] | None = None
    split_sha: str | None = None  # a fold's test cases (sha256[:16] of the sorted ids): its split by content
    # what the data is, fixed when planned (bench.data.data_identity): synthetic data by how it was made
    # while its files are as made (a moved results folder holds the same data), other data by its files
    # (SegDataset.content_id), or by its absolute path for a run begun before that (plan_grid keeps its
    # id); "" = the path
    data_id: str = ""
    # what the reader says of the data it opened (which split file or rule made the split): shown, not identity
    notes: tuple[str, ...] = field(default=(), compare=False)
    # built from the model's tiny configuration (--tiny; model_overrides holds its keys): the boards' "(tiny)"
    tiny: bool = field(default=False, compare=False)
    # weights evaluated as given, without training (--weights: the authors' checkpoint or one's own):
    # (path, sha256, full: the record keeps it; the run id hashes its first 16 digits, as it always has);
    # None: the run trains
    weights: tuple[str, str] | None = None
    # data-loader processes (--workers; None: the protocol's num_workers): a batch is the same whatever
    # the count, so it is no part of the run's identity
    workers: int | None = field(default=None, compare=False)

    @property
    def split(self) -> str:
        return records.split_name(self.fold)

    @property
    def key(self) -> str:
        """Deterministic id: the same spec always maps to the same run directory and record."""
        data = self.data_id or str(self.data_root.expanduser().resolve())
        model = identity_overrides(self.model, dict(self.model_overrides), tiny=self.tiny)
        ident = [self.model, self.dataset, self.protocol.hash, self.protocol.overrides, self.seed, data,
                 self.policy, [kv for kv in self.model_overrides if kv[0] in model]]
        if self.fold is not None:  # appended only here, so test-split ids stay as they were
            # the fold's cases, not only its number: a changed splits_final.json or fold scheme is another run
            ident.append([self.fold, self.split_sha])
        if self.init is not None:  # the file's content, not its path, defines the run
            ident.append(["init", self.init[0], self.init[2][:16]])
        if self.weights is not None:
            ident.append(["weights", self.weights[1][:16]])
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return records.make_run_id(self.dataset, self.protocol.name, self.model, self.seed, self.fold, digest)


CACHE_DIR = "cache"  # under the results folder: derived data, safe to delete


def _progress_bar(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    # on stderr, beside the other progress lines: `bench run > out` at a terminal still shows it
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),  # "0/?" before a total
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=True,
                   console=Console(stderr=True))
    # in a log file or a pipe a live bar shows nothing and leaves a blank line behind each run
    return bar if bar.console.is_terminal else nullcontext(None)


HEARTBEAT_S = 300.0  # where no live bar shows, a plain progress line at most this often
# how often a step that reports no progress of its own (one 3-D test case: minutes of sliding windows) is
# looked at: no progress for this long, the heartbeat says the last line again with the time gone by
TICK_S = 30.0


class _Heartbeat:
    """Where no live bar shows (output to a log file, or --no-progress): a plain line on stderr at most
    every ``HEARTBEAT_S`` seconds, so a batch job's log shows that a run of hours is alive, how far it
    is and, from the pace of the phase's steps so far, how long it has left; a run shorter than that
    prints none. Within ``ticking``, a step longer than that (a large volume's prediction) beats too."""

    def __init__(self, label: str):
        self.label, self.start = label, time.monotonic()
        self.last = self.start
        self.phase: tuple[str, float, int] | None = None  # (name, when, done): where the phase's pace counts from
        self.latest: tuple[str, int, int, str] | None = None  # the last progress told, and when
        self.updated = self.start
        self.lock = threading.Lock()  # the ticking thread beats too

    def __call__(self, phase: str, done: int, total: int, text: str, *, news: bool = True) -> None:
        with self.lock:
            self._beat(phase, done, total, text, news)

    def _beat(self, phase: str, done: int, total: int, text: str, news: bool) -> None:
        now = time.monotonic()
        if news:
            self.latest, self.updated = (phase, done, total, text), now
        if self.phase is None or self.phase[0] != phase:  # evaluating has a pace of its own
            self.phase = (phase, now, done)
        if now - self.last >= HEARTBEAT_S:
            self.last = now
            _, since, before = self.phase
            left = (f" · about {(now - since) / (done - before) * (total - done) / 60:.0f} min left"
                    if before < done < total else "")
            runlog.say(f"  {self.label}: {phase}, {text} · {(now - self.start) / 60:.0f} min{left}")

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """Beats from a thread of its own while no progress came for ``TICK_S`` seconds: the last line
        again, its minutes gone by, rather than silence through a test case of ten minutes."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(TICK_S):
                if self.latest is not None and time.monotonic() - self.updated >= TICK_S:
                    self(*self.latest, news=False)

        thread = threading.Thread(target=tick, name="bench-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _preprocess_volumes(dataset, protocol: Protocol, bar, main: bool) -> None:
    """Every training volume preprocessed into the cache before training starts (rank 0; the others
    wait), as nnU-Net preprocesses before it trains: loader workers then only map files, where several
    would otherwise preprocess one case at once during the first epoch."""
    if main:
        prep = volume_prep(dataset, protocol)
        n = len(dataset.train_volume_ids())
        processes = preprocess_processes(n, len(protocol.patch_size))
        task = bar.add_task("preprocess", total=n, info="") if bar else None
        for i, case in enumerate(cache_training_volumes(dataset, prep, processes)):
            if bar is not None:
                bar.update(task, completed=i + 1, info=case)
        if bar is not None:
            bar.remove_task(task)
        # the cached grids (memory maps: headers read) against the patch, before it trains on padding
        note = patch_fit_note(protocol.patch_size, [dataset.load_train_volume(c, prep).label.shape
                                                    for c in dataset.train_volume_ids()])
        if note:
            warnings.warn(note, stacklevel=2)
    distributed.barrier()


class _TensorBoard:
    """TensorBoard scalars under ``run_dir/tb`` that never stop a run: a log that cannot be written (a
    full disk: its writer thread fails, then every call) warns once and logs no more. The run's own
    writes then report the disk in one line."""

    def __init__(self, run_dir: Path):
        self._dir, self._writer, self._opened = run_dir / records.TB_DIR, None, False

    def _open(self) -> None:
        # at the first scalar: the earlier attempt's event files a run training afresh deletes were listed
        # before (bench.train), so this attempt's file is not among them
        self._opened = True
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a declared dependency; tolerate its absence in odd installs
            return
        self._call(lambda: setattr(self, "_writer", SummaryWriter(log_dir=str(self._dir), flush_secs=TB_FLUSH_S)))

    def _call(self, do) -> None:
        try:
            do()
        except Exception as exc:  # noqa: BLE001 (an OSError, or the writer thread's failure surfacing)
            warnings.warn(f"{self._dir}: TensorBoard log stopped ({type(exc).__name__}: {exc}); the run goes on",
                          stacklevel=3)
            self._writer = None

    def add_scalar(self, *args, **kwargs) -> None:
        if not self._opened:
            self._open()
        if self._writer is not None:
            self._call(lambda: self._writer.add_scalar(*args, **kwargs))

    def close(self) -> None:
        if self._writer is not None:
            self._call(self._writer.close)
            self._writer = None


# how often TensorBoard's writer thread wakes to flush, and so the longest a close can wait: a SIGTERM or Ctrl-C
# raised inside add_scalar's queue notify can leave the thread's wake-up lost, and close() then waits for its
# next flush (the default, 120 s, outlasts Slurm's 30 s grace before SIGKILL, which left the run's claim behind)
TB_FLUSH_S = 5


def _tensorboard(run_dir: Path) -> _TensorBoard:
    return _TensorBoard(run_dir)


def run_one(spec: RunSpec, *, results_dir: Path, device: torch.device | str, resume: bool = False,
            show_progress: bool = False) -> dict[str, Any] | None:
    """Train and evaluate one model; write and return its record.

    Under --nproc (or torchrun) every rank trains its share; rank 0 alone evaluates, writes the record and
    returns it (the others return None once it is written). A rank that fails leaves without the
    closing barrier: the others may wait in another collective (a gradient all-reduce), which that
    barrier would never meet, so the run would hang until the process-group timeout; exiting lets
    the launcher stop them. A finished run (its record there) is refused before anything trains: training
    it again would replace the weights its record was scored from (``bench run`` skips it), and so is one whose record
    is kept under another name only (``records.renamed_record``)."""
    device = env.resolve_device(device)  # "cpu" as run_grid takes it
    results_dir = Path(results_dir).expanduser()
    done = records.record_path(results_dir, spec.key)
    finished, renamed = distributed.gather_objects(  # rank 0's view
        (done.is_file(), records.renamed_record(results_dir, spec.key)) if distributed.world().main else None)[0]
    if renamed:  # kept under another name only: as bench run refuses it
        raise BenchError(renamed)
    if finished:
        raise BenchError(f"{spec.key}: finished already ({done}); training it again would replace the weights that "
                         f"record was scored from: to train it again, delete {done} and {records.run_dir(results_dir, spec.key)} "
                         "(or choose another results folder)")
    record = _run_one(spec, results_dir=results_dir, device=device, resume=resume,
                      show_progress=show_progress and distributed.world().main)
    distributed.barrier()
    return record


def _run_one(spec: RunSpec, *, results_dir: Path, device: torch.device, resume: bool,
             show_progress: bool) -> dict[str, Any] | None:
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    commit = env.git_commit()  # the code that runs, read once per process: not a git pull made since
    code = records.code_version(commit, env.source_digest())
    dataset = open_dataset(spec.dataset, spec.data_root, spec.fold)
    protocol = spec.protocol
    if protocol.patches:  # preprocessed training cases, memory-mapped: a patch reads its region only
        dataset.volume_cache = results_dir / CACHE_DIR
    # training items (slices or images; patch protocols: whole cases), as train.TrainDataset takes them
    train_ids = dataset.train_volume_ids() if protocol.patches else dataset.train_ids()
    entry = get_entry(spec.model)
    seed_everything(spec.seed)  # the initial weights are part of the run: seed before building
    build = build_args(spec.model, protocol, dataset, dict(spec.model_overrides))
    model = create_model(spec.model, **build)
    init = None
    if spec.init is not None:  # before training; a resumed run's checkpoint then replaces it
        source, path, sha = spec.init
        report = load_weights(model, path, source=source)
        init = {"source": source, "file": Path(path).name, "sha256": sha,
                **{k: (len(v) if isinstance(v, list) else v) for k, v in report.items() if k not in ("source", "path")}}
    run_dir = records.run_dir(results_dir, spec.key)
    main = distributed.world().main
    # nothing of an earlier attempt here: failing before its first step, this one leaves no folder behind
    # (a --set value the model's forward refuses), which reports would count as a run begun
    first = main and not (run_dir / CHECKPOINT_DIR).exists() and not (run_dir / records.TB_DIR).exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = _tensorboard(run_dir) if main else None
    stepped = False
    try:
        with _progress_bar(show_progress) as bar, ExitStack() as alive:
            if protocol.patches and spec.weights is None:  # training patches only: evaluation reads the cases
                _preprocess_volumes(dataset, protocol, bar, main)
            task = bar.add_task(f"{spec.model} s{spec.seed} train", total=None, info="") if bar else None
            beat = _Heartbeat(spec.key) if bar is None and main else None
            if beat is not None:
                alive.enter_context(beat.ticking())

            def on_step(step: int, total: int, loss: float) -> None:
                nonlocal stepped
                stepped = True
                if bar is not None:
                    bar.update(task, completed=step, total=total, info=f"loss {loss:.4f}")
                elif beat is not None:
                    beat("training", step, total, f"step {step} of {total} · loss {loss:.4f}")

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            trained_by = None  # --weights: the run that wrote them, where one of bench's did
            if spec.weights is not None:
                result, trained_by = _given_weights(model, spec.weights[0], run_dir, main, train_ids, spec.data_id,
                                                    dataset.content_id(labels=False))
            else:
                result = train_model(model, dataset, protocol, seed=spec.seed, run_dir=run_dir, device=device,
                                     resume=resume, writer=writer, progress=on_step, code=code,
                                     workers=spec.workers, data_id=spec.data_id)
            # the GPU memory training needed (per GPU under torchrun): what decides whether a model
            # fits a user's card; unknown after a resume, which measured only the rest
            train_peak = (torch.cuda.max_memory_allocated(device) / 2**20
                          if device.type == "cuda" and result.resumed_from is None and spec.weights is None else None)
            runlog.phase = "evaluating"  # an interrupt from here on says so
            if not main:
                return None
            if bar is not None:  # a task of its own: an update keeps training's total and clock
                bar.remove_task(task)
                task = bar.add_task(f"{spec.model} s{spec.seed} eval", total=None, info="")

            def on_case(i: int, n: int) -> None:
                if bar is not None:
                    bar.update(task, completed=i, total=n)
                elif beat is not None:
                    beat("evaluating", i, n, f"{i} of {n} test cases scored")

            if beat is not None:  # what the ticking says until the first case is scored (not training's last step)
                beat.latest, beat.updated = ("evaluating", 0, 0, "no test case scored yet"), time.monotonic()
            scores = evaluate(model, dataset, protocol, spec.policy, device=device, progress=on_case)
        if writer is not None:
            for name, value in scores.metrics.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"eval/{name}", value, result.iterations)
    except BaseException:
        if writer is not None:
            writer.close()
            writer = None
        if first and not stepped:
            _drop_empty_run(run_dir)
        raise
    finally:  # a failed run keeps what it logged so far, flushed
        if writer is not None:
            writer.close()
    from bench.scan_info import note_scan_use, scan_backend_for

    n_params = sum(p.numel() for p in model.parameters())
    counts = run_counts(spec.model, build, protocol.input_size)
    note_scan_use(model, counts["scan_macs"], spec.model)
    record = {
        "schema": records.SCHEMA_VERSION,
        "run_id": spec.key,
        "status": "finished",
        "model": spec.model,
        "family": entry.family,
        "model_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.bench_config.items()},
        "model_code": model_code(spec.model),  # a plugin's source digest (built-ins: code_digest names theirs)
        "tiny": spec.tiny,  # --tiny: the model's tiny configuration, some of its keys perhaps set otherwise
        "set_keys": changed_keys(spec.model, dict(spec.model_overrides), tiny=spec.tiny),  # --set's changes
        "dataset": spec.dataset,
        "dataset_name": dataset.dataset_name,
        "data_root": str(spec.data_root.resolve()),  # rescore and predict may start elsewhere
        "data_id": spec.data_id,  # the data's identity: rescore and predict check it is still that data
        # training items (slices or images; patch protocols: whole cases): whether the split is the paper's
        "n_train": None if spec.weights else len(train_ids),
        "synthetic": spec.synthetic,
        # how synthetic data was made (bench data synth's settings, the files it wrote): what remakes it
        "synthetic_made": synthetic_made(spec.data_root) if spec.synthetic else None,
        "split": spec.split,
        "split_rule": dataset.split_rule,  # how the split was made where the data fixes none (Methods)
        "data_notes": list(spec.notes),  # what the reader said of the data when the run was planned
        "protocol": protocol.to_record(),
        "init": init,  # the pretrained file the weights started from (counts of what it filled), or null
        # weights evaluated as given (--weights), not trained here; null: the run trained them
        "weights": {"file": Path(spec.weights[0]).name, "sha256": spec.weights[1], "trained_by": trained_by}
        if spec.weights else None,
        # normalize = "ct_foreground": the training foreground's statistics the images were scaled with
        "intensity_stats": intensity_stats(dataset, protocol),
        # patch protocols: the spacing in mm cases were resampled to for training and prediction ((z, y, x);
        # 2-D patches: (y, x), in-plane), or null
        "target_spacing": target_spacing(dataset, protocol),
        # patch protocols, zscore: whether cases were z-scored inside their non-zero region (nnU-Net's use_mask_for_norm)
        "mask_norm": dataset.mask_norm if protocol.patches and protocol.normalize == "zscore" else None,
        "policy": spec.policy,
        "policy_conventions": policy_fields(spec.policy),  # the rules behind the name, as they were
        "hd95_unit": scores.hd95_unit,
        "seed": spec.seed,
        "git_commit": commit,
        "code_digest": env.source_digest(),  # the sources' identity, where git names none or "-dirty"
        "packages": env.package_versions(),
        "device": env.fingerprint(device),
        "launch": env.launch(),  # host, Slurm job, command line of the process that finished the run
        "scan_backend": scan_backend_for(model),
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "train": result.to_record(),
        "metrics": scores.metrics,
        "per_class": scores.per_class,
        "per_case": scores.per_case,
        "cost": {
            "params": n_params,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            **counts,
            "fps": None,  # timings: `bench profile`, on a machine chosen for it
            "peak_mem_mb": train_peak, "peak_mem_kind": "cuda_train" if train_peak is not None else None,
        },
    }
    from bench.rescore import scored_weights

    record["scored_weights"] = scored_weights(results_dir, record)  # the checkpoint evaluated, as its rescores name it
    records.write_record(record, results_dir)
    return record


def run_grid(specs: list[RunSpec], *, results_dir: Path | str, device: torch.device | str, resume: bool = False,
             show_progress: bool = False, say: Callable[[str], None] = functools.partial(print, flush=True),
             say_error: Callable[[str], None] = functools.partial(print, file=sys.stderr)) -> None:
    """Run a planned grid (``plan_grid``) in order: finished runs, runs rescored into their policy and
    runs another process holds are skipped, each said in one line (``say``); the others are claimed,
    trained, evaluated and recorded (``run_one``), each begun with a line "[i/n] <run id>: training" and
    its lines kept in its ``run.log`` (bench.runlog). One run failing does not cost the rest: it is one
    line (``say_error``) and the grid goes on; a closing line counts what became of the runs, then a
    BenchError names those that failed or were held by other processes. Under torchrun every rank calls
    it with rank 0's plan; the first failure ends it on every rank, since all must take the same path;
    the process group is shut down after.
    ``device``: a torch.device or "auto", "cpu", "cuda". Each run seeds every RNG; the caller's RNG
    states and cuDNN flags are back afterwards. ``show_progress``: a live bar where stderr is a terminal
    (a notebook's is not: each run says a progress line every 5 minutes there). ``say`` flushes, as the
    run's own lines on stderr do, so the two streams keep their order."""
    device = env.resolve_device(device)
    with caller_rng_kept(cuda=device.type == "cuda"):
        _run_specs(specs, Path(results_dir).expanduser(), device, resume, show_progress, say, say_error)


def _run_specs(specs: list[RunSpec], results_dir: Path, device: torch.device, resume: bool, show_progress: bool,
               say: Callable[[str], None], say_error: Callable[[str], None]) -> None:
    from bench.claim import claim_run
    from bench.registry import code_changed
    from bench.rescore import claim_twins, earlier_rescores

    main = distributed.world().main
    say = say if main else (lambda *a, **k: None)
    failed, held, by_data, skipped, n_done = [], [], [], 0, 0
    read: dict[str, list[dict]] = {}  # the records evaluated_elsewhere read, by dataset: once per command
    # a run's record kept under another name only (a backup): refused before anything trains, as readers refuse it
    if renamed := distributed.gather_objects(next(filter(None, (records.renamed_record(results_dir, s.key)
                                                               for s in specs)), None) if main else None)[0]:
        raise BenchError(renamed)
    for i, spec in enumerate(specs, 1):
        # rank 0 claims the run (bench.claim: no other process trains it meanwhile) and its view of the
        # finished records decides for every rank (a record appearing meanwhile, or a network file
        # system's cache, would otherwise send ranks down different branches)
        claim, twins, done, rescored, stale = None, [], False, None, None
        try:
            if main and not (done := records.record_path(results_dir, spec.key).is_file()):
                claim = claim_run(results_dir, spec.key)
                if not isinstance(claim, str):
                    twins = claim_twins(spec, results_dir)  # no bench rescore writes this training meanwhile
                    if isinstance(twins, str):  # being rescored into this policy now: held by that process
                        claim.release()
                        claim, twins = twins, []
                    else:  # under the claims: finished (or rescored) by another process before them
                        done, rescored, stale = done_state(spec, results_dir)
            done, rescored, holder, again = distributed.gather_objects(
                (done, rescored, claim if isinstance(claim, str) else None, stale is not None) if main else None)[0]
            if done:
                old = False
                with suppress(BenchError):  # a damaged or newer record: finished all the same, its note unsaid
                    old = main and code_changed(records.read_record(results_dir, spec.key))
                say(f"  {spec.key}: finished earlier, skipped" + (
                    f"; {spec.model}'s code changed since it trained, so its numbers are the old code's: to train "
                    f"the new code, choose another --results (or delete records/{spec.key}.json and runs/{spec.key}/)"
                    if old else ""))
                skipped += 1
                continue
            if rescored:
                say(f"  {spec.key}: the same training was rescored under {spec.policy} ({rescored}), skipped")
                skipped += 1
                continue
            if holder:
                say(f"  {spec.key}: being run by {holder}, skipped")
                held.append(spec)
                continue
            if again:  # its training's rescore into this policy is of an earlier training: scored again, not trained
                error = _rescore_twin(spec, stale, results_dir, device, say) if main else None
                if error := distributed.gather_objects(error if main else None)[0]:
                    if _fails_command(spec, specs, failed):
                        _say_summary(say, results_dir, n_done, skipped, len(held), failed + [spec.key])
                        raise BenchError(error)
                    note_failure(spec.key, BenchError(error), failed, say_error)
                else:
                    n_done += 1
                continue
            if main and (board := evaluated_elsewhere(spec, results_dir, read)):
                say(f"  note: {spec.key}: {board}")
            when = checkpoints_when(spec.protocol.train.checkpoint_every)
            with runlog.kept(records.run_dir(results_dir, spec.key), when) if main else nullcontext():
                # the grid's position, for a batch job's log (the bar shows the rest)
                runlog.say(f"[{i}/{len(specs)}] {spec.key}: "
                           + ("evaluating the given weights" if spec.weights else "training"), say)
                runlog.append(f"{spec.key}: {runlog.SETTINGS}{_settings(spec)}")  # what no run id's hash says
                try:
                    rec = run_one(spec, results_dir=results_dir, device=device, resume=resume,
                                  show_progress=show_progress)
                except Exception as exc:
                    # one run failing (a diverging loss, out of memory) does not cost the rest of the grid
                    if _fails_command(spec, specs, failed):
                        runlog.append(f"FAILED: {failure_text(exc)}")  # the command's error line says it
                        _say_summary(say, results_dir, n_done, skipped, len(held), failed + [spec.key])
                        raise
                    note_failure(spec.key, exc, failed, say_error)
                    if isinstance(exc, DataError):
                        by_data.append(spec.key)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                if rec is None:  # not rank 0
                    continue
                n_done += 1
                runlog.say(f"  {spec.key}: {records.scores_text(rec)} · {rec['wall_time_s']:.0f}s", say)
                if stale := earlier_rescores(results_dir, rec):  # its record was deleted, and it trained again
                    runlog.say(f"  note: {spec.key}: {records.stale_text(results_dir, stale)}", say)
        finally:
            for c in twins:
                c.release()
            if claim is not None and not isinstance(claim, str):
                claim.release()
    busy = len(held)
    if held:  # finished (or rescored into its policy) by those processes meanwhile: not left undone
        held = distributed.gather_objects([s.key for s in held if not any(done_state(s, results_dir)[:2])]
                                          if main else None)[0]
    distributed.shutdown()  # every rank is through the grid (distributed.init began it)
    _say_summary(say, results_dir, n_done, skipped + busy - len(held), len(held), failed)
    if failed:
        others = ", the others finished" if len(failed) < len(specs) else ""
        # fixed data is other data: its runs have new ids, which no checkpoint of these belongs to
        again = ("after fixing the data, the same command trains them afresh (under new run ids: --resume cannot "
                 "continue them)" if len(by_data) == len(failed) else
                 "after fixing the cause, the same command runs them again (finished runs are skipped; "
                 "--resume continues a failed one from its last checkpoint)")
        raise BenchError(f"{len(failed)} of {len(specs)} run(s) failed ({few(failed)}){others}; the lines above "
                         f"say why, as does {records.runs_dir(results_dir)}/<run id>/{runlog.RUN_LOG} of a run that "
                         f"began training; {again}" + (
                             f"; {len(held)} more were being run by other processes" if held else ""))
    if held:  # not done here: a job requeued on another node before a killed one's claim went stale ends unfinished
        # the ids after a colon: few's "(and 3 more)" inside parentheses of the line's own was two deep
        raise HeldError(f"{len(held)} of {len(specs)} run(s) were being run by other processes and were skipped: "
                        f"{few(held)}; the same command later finds them finished, or takes over those "
                        "whose process died (with --resume, from their last checkpoint)")


def evaluated_elsewhere(spec: RunSpec, results_dir: Path, read: dict[str, list[dict]] | None = None) -> str | None:
    """For weights evaluated as given (--weights): where ``results_dir`` holds a record of the same file
    (its sha256's first 16 digits: older records keep no more), model, data and policy under another
    protocol that scores as ``spec``'s does (``same_evaluation``: synapse_vmunet as synapse), what to say,
    since this run scores them a second time for a board of their own; else None. ``read``: the records
    read so far, by dataset, which a caller keeps across its specs to read them once per command (a
    record this command writes is of its own protocol, which this passes over anyway)."""
    if spec.weights is None:
        return None
    read = {} if read is None else read
    if spec.dataset not in read:
        read[spec.dataset] = records.dataset_records(results_dir, spec.dataset)
    for rec in read[spec.dataset]:
        weights, meta = rec.get("weights"), rec.get("protocol")
        if not (isinstance(weights, dict) and isinstance(meta, dict)
                and str(weights.get("sha256", ""))[:16] == spec.weights[1][:16] and rec.get("model") == spec.model
                and rec.get("data_id") == spec.data_id and rec.get("policy") == spec.policy
                and meta.get("name") != spec.protocol.name):
            continue
        other = protocol_from_record(meta)
        if other is not None and same_evaluation(other, spec.protocol):
            return (f"these weights were already evaluated under protocol {meta['name']} (run {rec['run_id']}), which "
                    f"scores as {spec.protocol.name} does; that board holds them, and this run puts them on "
                    f"{spec.protocol.name}'s board too (the same numbers: one --protocol for every model's weights "
                    "puts them on one board)")
    return None


def done_state(spec: RunSpec, results_dir: Path) -> tuple[bool, str | None, dict[str, Any] | None]:
    """Whether run ``spec`` is done (its record is there: bench run skips it; ``run_state``'s "finished" is a
    run trained without a record); where not, by its training's rescores into its policy
    (bench.rescore.twin_state): the id of one, which counts as done, else the record of the run whose rescore
    scored an earlier training of it, which bench run scores again (None where neither)."""
    from bench.rescore import twin_state

    if records.record_path(results_dir, spec.key).is_file():
        return True, None, None
    return False, *twin_state(spec, results_dir)


def _rescore_twin(spec: RunSpec, source: dict[str, Any], results_dir: Path, device: torch.device,
                  say: Callable[[str], None]) -> str | None:
    """Run ``source``'s weights (``spec``'s training under another policy, trained again since its rescore into
    ``spec.policy``) scored into that rescore again, as `bench rescore` does (bench.rescore.rescore_record), under
    the claims bench run holds; said in two lines. Why it failed, in one line; None where it did not."""
    from bench.rescore import rescore_record

    twin = records.rescore_id(source["run_id"], spec.policy)
    say(f"  {spec.key}: the same training was rescored under {spec.policy} ({twin}), from an earlier training of "
        f"run {source['run_id']}, trained again since: scoring its weights now")
    try:
        new = rescore_record(source, spec.policy, results_dir, device, replace=True)
    except BenchError as exc:
        return str(exc)
    say(f"  {twin}: {records.scores_text(new)}; scored again: its run was trained again since its rescore")
    return None


def run_state(spec: RunSpec, results_dir: Path) -> tuple[str, str]:
    """What became of run ``spec`` in ``results_dir``, as bench run would find it, without touching
    anything (``--dry-run``): ("done" | "running" | "finished" | "partial" | "missing", what says so);
    "finished": trained (its final.pt there), without a record: deleted, or its evaluation cut short.
    BenchError where its record is kept under another name only (``records.renamed_record``), as bench run says."""
    from bench.claim import held_by

    if records.record_path(results_dir, spec.key).is_file():
        return "done", ""
    if renamed := records.renamed_record(results_dir, spec.key):  # as bench run says it, before training anything
        raise BenchError(renamed)
    if holder := held_by(results_dir, spec.key):  # bench run claims it before reading its rescores (_run_specs)
        return "running", f"by {holder}"
    _, rescored, source = done_state(spec, results_dir)
    if rescored:
        return "done", f"rescored into its policy ({rescored})"
    if source is not None:  # what bench run does: score it again, no training
        twin = records.rescore_id(source["run_id"], spec.policy)
        return "finished", (f"rescored into its policy ({twin}) from an earlier training of run {source['run_id']}: "
                            "bench run scores its weights now")
    ckpt = records.run_dir(results_dir, spec.key) / CHECKPOINT_DIR
    if (ckpt / FINAL).is_file():  # what bench run does with it (train_model: a resume from the last epoch trains none)
        again = ("bench run evaluates the given weights again" if spec.weights else
                 "--resume evaluates its trained weights again without training; without --resume, bench run "
                 "trains it afresh" if (ckpt / LAST).is_file() else "bench run trains it afresh (no last.pt to resume)")
        return "finished", f"record missing: {again}"
    if (ckpt / LAST).is_file():
        return "partial", "a checkpoint, no record: --resume continues it"
    if (ended := runlog.last_outcome(ckpt.parent)) and ended[0] != "finished":  # stopped before a checkpoint, as reports say
        how = ended[1] if ended[0] == "interrupted" else f"failed ({ended[1]})"  # "interrupted while training X"
        return "missing", f"{how}, before its first checkpoint: bench run trains it afresh"
    return "missing", ""


def check_results_folder(results_dir: Path, dry_run: bool = False) -> None:
    """Every folder of ``results_dir`` a run writes into, writable (``fileio.ensure_writable_dir``): a file or
    a read-only folder in place of records/ failed each run after its training. records/ and runs/ are
    tried where they are (else made later in the results folder tried first: a refused grid makes none).
    ``dry_run``: nothing is written, but a file in a folder's place is named as bench run names it."""
    check = fileio.check_folder if dry_run else fileio.ensure_writable_dir
    check(results_dir)
    for folder in (records.records_dir(results_dir), records.runs_dir(results_dir)):
        if folder.is_symlink() or folder.exists():
            check(folder)


@contextmanager
def dry_run_data(dataset: str, results_dir: Path) -> Iterator[Path | None]:
    """``--dry-run --synthetic``: None where the results folder holds the synthetic data (plan_grid
    finds it there), else the same data written to a temporary folder removed afterwards, to plan
    from as ``--data-root`` (runs are identified by how synthetic data was made, not where it lies:
    the same run ids), since a dry run writes nothing into the results folder."""
    results_dir = Path(results_dir).expanduser()
    check_results_folder(results_dir, dry_run=True)  # a file there: named before the caller's note
    if synthetic_identity(synthetic_folder(dataset, records.synthetic_dir(results_dir))) is not None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-dry-run-") as tmp:
        yield synthetic_root(dataset, tmp)


def _say_summary(say: Callable[[str], None], results_dir: Path, n_done: int, skipped: int, held: int,
                 failed: list[str]) -> None:
    """The grid's closing line: what became of its runs, where their records are, what to run next."""
    counts = [f"{n_done} finished"] + ([f"{skipped} skipped (done already)"] if skipped else [])
    counts += [f"{held} skipped (being run by other processes)"] if held else []
    counts += [f"{len(failed)} failed"] if failed else []
    where = (f"; records in {records.records_dir(results_dir)}; next: bench report --results {results_dir}"
             if n_done or skipped else "")  # none written: no folder to name
    say(f"bench run: {', '.join(counts)}{where}")


def _drop_empty_run(run_dir: Path) -> None:
    """A first attempt's folder that holds nothing to resume or read: its TensorBoard file without a
    scalar, its run.log (the failure is said on stderr), an empty checkpoint folder, the folder itself
    (its claim, where one is held, removes it)."""
    shutil.rmtree(run_dir / records.TB_DIR, ignore_errors=True)
    runlog.drop(run_dir)
    for folder in (run_dir / CHECKPOINT_DIR, run_dir):
        with suppress(OSError):  # not empty: a checkpoint (max_iterations 0 trains none, yet saves one)
            folder.rmdir()


def _fails_command(spec: RunSpec, specs: list[RunSpec], failed: list[str]) -> bool:
    """Whether ``spec`` failing fails the command itself rather than being noted (``note_failure``): under
    torchrun, as every rank must take the same path, and as the grid's last run where none failed before
    (a single run's failure is its own one line, not a count of one)."""
    return distributed.world().distributed or (not failed and spec is specs[-1])


def note_failure(key: str, exc: Exception, failed: list[str], say_error: Callable[[str], None]) -> None:
    """One run of several that failed, said in one line (a bug rather than bad input: its traceback
    first) and kept in ``failed`` for the command's closing error."""
    failed.append(key)
    if not isinstance(exc, BenchError):
        say_error(traceback.format_exc().rstrip())
    runlog.say(f"  {key}: FAILED: {failure_text(exc)}", say_error)


def _settings(spec: RunSpec) -> str:
    """The run as boards show it: its row label as ``label_runs`` makes it ("unet (tiny)", "unet (weights
    mine.pth@abababab)") and protocol changes ("off-protocol: lr=1e+12"), kept in its log
    (``runlog.settings``) for a report to name a run that wrote no record."""
    import pandas as pd

    from bench.report.labels import overrides_text, run_labels

    overrides = dict(spec.model_overrides)
    label = run_labels(pd.DataFrame([{
        "model": spec.model, "model_config": json.dumps(overrides), "tiny": spec.tiny,
        "set_keys": ",".join(changed_keys(spec.model, overrides, tiny=spec.tiny)),
        "init": records.file_tag(Path(spec.init[1]).name, spec.init[2]) if spec.init else None,
        "weights": records.file_tag(Path(spec.weights[0]).name, spec.weights[1]) if spec.weights else None}]))[0]
    off = overrides_text(json.dumps(spec.protocol.overrides))
    return label + (f" · off-protocol: {off}" if off else "")


def failure_text(exc: BaseException) -> str:
    return one_line(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"


def _given_weights(model, path: str, run_dir: Path, main: bool, train_ids: list[str], data_id: str | None,
                   but_labels: str | None = None) -> tuple[TrainResult, dict[str, Any] | None]:
    """A run of weights trained elsewhere: ``path`` loaded strictly into ``model`` and kept as the run's
    final checkpoint (so that rescore and predict find them as any run's), nothing trained; and where
    they came from, where a run of bench wrote them (its checkpoints say: ``trained_by``), with whether
    they trained on this data (``data_id``; unknown in files written before it was kept) and on the
    items this run's split trains on (``train_ids``): else some of its test cases may have been among
    them, which the run says. Other data of the same items is said as what differs: its test labels alone,
    where the rest is the same (``but_labels``: ``content_id(labels=False)``, which checkpoints keep), else
    unknown files."""
    trained_by = load_weights(model, path).get("trained_by")
    if trained_by is not None:
        same_data = trained_by.get("data_id") in (None, data_id)
        names = trained_by.get("items") == items_digest(train_ids)  # the split's training items by name
        # other data of those items: the same but for its label files (scored_files; older files: unknown)
        but_labels = None if "data_id_but_labels" not in trained_by or but_labels is None else \
            trained_by["data_id_but_labels"] == but_labels
        trained_by = {**trained_by, "same_data": same_data, "same_items": same_data and names,
                      "same_item_names": names, "same_but_labels": but_labels}
        whose = f"{path}: weights of run {trained_by.get('run_id')} (protocol {trained_by.get('protocol')}), trained on"
        ids = f"data id {trained_by.get('data_id')}, not this run's {data_id}"
        if not same_data and names and main:  # not this split's test cases: no leak, other data
            # scored_files: nnU-Net's every label file, Synapse's test volumes: which of them changed is not known
            warnings.warn(f"{whose} this split's training items, in data that differs from this run's only in its "
                          f"label files (Synapse: its test volumes) ({ids}): labels edited since, training or test "
                          "ones, so its scores need not match the weights' run's" if but_labels else
                          f"{whose} items named as this split's "
                          f"training items, in other data ({ids}; which files differ, training or test, is unknown)",
                          stacklevel=2)
        elif not same_data and main:
            warnings.warn(f"{whose} other data ({ids}): where "
                          "this data's test cases were among its, its scores are of cases the weights trained on",
                          stacklevel=2)
        elif not trained_by["same_items"] and main:
            warnings.warn(f"{whose} other items than this split's training set ({trained_by.get('n_items')} "
                          f"items, not these {len(train_ids)}): where this split's test cases were among them, its "
                          "scores are of cases the weights trained on", stacklevel=2)
    if main:
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        save_checkpoint({"model": model.state_dict(), "epoch": -1, "trained_by": trained_by},
                        run_dir / CHECKPOINT_DIR / FINAL)
    return TrainResult(epochs=0, iterations=0, final_loss=None, time_s=0.0, selected="final"), trained_by


def build_args(model: str, protocol: Protocol, dataset, overrides: dict[str, Any]) -> dict[str, Any]:
    """``create_model``'s arguments for ``model`` under ``protocol`` on ``dataset``: 3-D protocols
    build the volumetric variant (``spatial_dims=3``) of models that have one, and refuse the rest."""
    args = dict(num_classes=dataset.num_classes, in_chans=dataset.in_chans, img_size=protocol.model_size,
                **overrides)
    dims = overrides.get("spatial_dims", protocol.spatial_dims)
    if protocol.spatial_dims == 3:
        refuse_2d_models([model], protocol)
        args["spatial_dims"] = 3
    if dims != protocol.spatial_dims:
        raise BenchError(f"{model}: --set spatial_dims={dims} does not fit protocol {protocol.name!r}, which is "
                         f"{protocol.spatial_dims}-D; 3-D protocols give patch_size and build 3-D variants themselves")
    return args


def refuse_2d_models(models: list[str], protocol: Protocol, evaluated: bool = False) -> None:
    """BenchError naming every one of ``models`` without a volumetric variant, under a 3-D protocol;
    ``evaluated``: weights given to evaluate (--weights), which that protocol scores, not trains."""
    flat = [m for m in models if "spatial_dims" not in get_entry(m).paper_config]
    if protocol.spatial_dims == 3 and flat:
        three_d = [m for m in list_models() if "spatial_dims" in get_entry(m).paper_config]
        does = (f"evaluates a 3-D model over 3-D patches (patch_size {list(protocol.patch_size)}), which 2-D "
                "weights do not fit; a 2-D protocol evaluates them (lightm_unet_2d on nnU-Net data)" if evaluated else
                f"trains 3-D patches (patch_size {list(protocol.patch_size)})")
        raise BenchError(f"{', '.join(flat)} {'is a 2-D model' if len(flat) == 1 else 'are 2-D models'}; protocol "
                         f"{protocol.name!r} {does}. Models with a 3-D variant: {', '.join(three_d)}")


def _check_patch(model: str, build: dict[str, Any], protocol: Protocol) -> None:
    """Every side of a patch must suit the model's downsampling (create_model checks img_size only), and
    a model built for square inputs needs a square patch."""
    built = get_entry(model).constructor(**build)  # unchecked: create_model tests img_size
    patch = protocol.patch_size
    if getattr(built, "square_input", False) and len(set(patch)) > 1:
        raise BenchError(f"{model}: takes square inputs only; patch_size {list(patch)} is not square")
    d = getattr(built, "size_divisor", 1)
    bad = [s for s in patch if s % d]
    if bad:
        fixed = [-(-s // d) * d for s in patch]
        raise BenchError(f"{model}: patch_size {list(patch)} has sides that are not multiples of {d}, "
                         f"which it needs (it downsamples {d}x); use e.g. {fixed}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; BenchError otherwise."""
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit()) or not 1 <= int(k) <= int(n):
        # a Slurm array numbered from 0 (--array=0-3) gives K 0: the way round it, in the shell's words
        zero = " (shards count from 1; a 0-based array: --shard $((SLURM_ARRAY_TASK_ID+1))/N)" \
            if sep and k.strip() == "0" else ""
        raise BenchError(f"--shard must be K/N with 1 <= K <= N (e.g. 2/4); got {text!r}{zero}")
    return int(k), int(n)


def select_shard(specs: list[RunSpec], shard: str | None) -> list[RunSpec]:
    """Shard K of N of a grid: runs sorted by their deterministic key, every N-th from K-1.
    Shards given the same grid arguments are disjoint, cover the grid and differ in size by at
    most one, whatever the machine or the order in which they start."""
    if not shard:
        return specs
    k, n = parse_shard(shard)
    number = shard_numbers(specs, n)
    return [s for s in sorted(specs, key=lambda s: s.key) if number[s.key] == k]


def shard_numbers(specs: list[RunSpec], n: int) -> dict[str, int]:
    """The shard (1..N) each run of the grid falls in, by run id."""
    return {s.key: i % n + 1 for i, s in enumerate(sorted(specs, key=lambda s: s.key))}


def resolve_inits(models: list[str], protocol: Protocol,
                  pretrained_dir: Path | None) -> dict[str, tuple[str, str, str]]:
    """The pretrained file each model starts from under ``protocol`` (registry ``init``, found in
    ``pretrained_dir``), as (source, path, sha256); BenchError listing every missing file."""
    if not protocol.pretrained:
        return {}
    wanted = {m: get_entry(m).init for m in models if get_entry(m).init is not None}
    missing = [f"{m}: {file}" for m, (_, file) in wanted.items()
               if pretrained_dir is None or not (Path(pretrained_dir) / file).is_file()]
    if missing:
        where = "pass --pretrained-dir DIR holding them" if pretrained_dir is None else f"not found in {pretrained_dir}"
        raise BenchError(f"protocol {protocol.name!r} starts these models from their authors' pretrained files "
                         f"({'; '.join(missing)}): {where}, or --no-pretrained to train from scratch "
                         "(the runs are then marked off-protocol)")
    return {m: (source, str(Path(pretrained_dir) / file), file_sha256(Path(pretrained_dir) / file))
            for m, (source, file) in wanted.items()}


def channels_error(refused: list[ChannelsError], models: list[str]) -> BenchError:
    """One error for the models of a grid whose stems cannot read its data (``plan_grid``'s refusals, each
    with the data's channels and folder), naming those that can; a grid of one model: its own words."""
    if len(models) == 1:
        return refused[0]
    n, data_root = refused[0].data
    able = [m for m in models if m not in {e.model for e in refused}]
    stems = ", ".join(f"{e.model} ({e.takes})" for e in refused)
    return BenchError(f"{data_root}: {n}-channel images, which {len(refused)} of the {len(models)} models cannot read "
                      f"(their stems take the channels in brackets; a 1-channel image is repeated): {stems}; "
                      + (f"--models {','.join(able)} take {n} channels" if able else
                         f"none of those asked takes {n} channels (`bench models` lists the others)"))


def _check_init(model: str, init: tuple[str, str, str], build: dict[str, Any]) -> None:
    """Load the pretrained file into a model built like the run's: a file that does not fit the
    configuration (``--tiny``, ``--set``) fails the grid now, not after the models before it."""
    source, path, _ = init
    built = create_model(model, **build)  # its own errors (a --set key it lacks, the data's channels) as they are
    try:
        report = load_weights(built, path, source=source)
    except (BenchError, RuntimeError) as exc:
        raise BenchError(f"{model}: {Path(path).name} does not load into this configuration ({exc}); "
                         "--no-pretrained trains it from scratch") from None
    if report.get("trained_model"):  # e.g. a trained Swin-Unet under the ImageNet file's name
        raise BenchError(f"{model}: {path} holds a trained {model}, not the pretrained file its authors start "
                         "from; a run from it is not the protocol's recipe (load_weights fine-tunes from it in Python)")


def check_workers(workers: int | None) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise BenchError(f"--workers: expected a whole number >= 0 (0: batches are loaded in the training "
                         f"process); got {workers!r}")


def grid_notes(specs: list[RunSpec]) -> list[str]:
    """The readers' notes of a grid's runs, once each, as bench run says them: the folds' split notes
    (the nnU-Net reader's "split: fold 3 of <rule>", one per fold) as one naming every fold run
    ("split: folds 0-4 of <rule>"). Each run's record keeps its own fold's note."""
    said: dict[tuple[str, str | None], set[int]] = {}  # (before, after "fold k of ") or (note, None) -> folds
    for spec in specs:
        for note in spec.notes:
            before, mark, after = note.partition(f"fold {spec.fold} of ")
            key = (before, after) if spec.fold is not None and mark else (note, None)
            said.setdefault(key, set()).update([] if key[1] is None else [spec.fold])
    return [before if after is None else
            f"{before}fold{'s' * (len(folds) > 1)} {records.folds_text(list(folds))} of {after}"
            for (before, after), folds in said.items()]


def seed_list(seeds: Any, option: str = "seeds", example: str = "[0, 1, 2]") -> list[int]:
    """``seeds`` (a comma list, one number or a list) as a grid runs them: each once (a seed given twice would
    train and count one run twice), each a seed (else a traceback once the run has begun); BenchError
    naming ``option``, as the caller spells it (``bench run``: --seeds)."""
    return [check_seed(s, option) for s in dict.fromkeys(int_list(seeds, option, example))]


@caller_rng_kept()  # it builds every model to check it: the caller's RNG stays where it was
def plan_grid(*, models: str | list[str], dataset: str, protocol: Protocol | str, seeds: int | list[int] | None,
              data_root: Path | str | None, synthetic: bool, results_dir: Path | str, policy: str | None = None,
              model_overrides: dict[str, Any] | None = None, folds: list[int] | str | None = None,
              pretrained_dir: Path | None = None, tiny: bool = False,
              weights: Path | None = None, workers: int | None = None, dry_run: bool = False) -> list[RunSpec]:
    """Resolve data, policy, pretrained files and names once; one RunSpec per (model, seed[, fold]).

    ``folds``: cross-validation folds to run ("all" or a list), for data without a fixed test split.
    ``pretrained_dir``: where the authors' pretrained files are, for protocols with ``pretrained``.
    ``tiny``: each model's tiny configuration, ``model_overrides`` over it (as ``--tiny``; recorded, for labels).
    ``weights``: a weights file to evaluate instead of training (one model, one seed, one split),
    loaded strictly: an authors' checkpoint (``load_weights``) or a run's own.
    ``workers``: data-loader processes, the protocol's ``num_workers`` for None (no part of a run's identity).
    ``dry_run``: writes nothing (``bench run --dry-run``): the results folder is not tried (a file in its place
    is named), and synthetic data not yet written is a BenchError (the caller may plan from a temporary
    copy: ``dry_run_data``).
    As the command line gives them: ``models`` "all" or a comma list, ``protocol`` a name or a file."""
    from bench.protocol import load_protocol
    from bench.registry import resolve_models
    from bench.rescore import earlier_data_ids

    models = resolve_models(models)
    check_workers(workers)
    protocol = load_protocol(protocol) if isinstance(protocol, (str, Path)) else protocol
    seeds = seed_list(seeds) if seeds is not None else [protocol.seed]
    results_dir = Path(results_dir).expanduser()  # as data_root and the synthetic data's folder
    if synthetic and data_root is not None:
        raise BenchError("give either --data-root or --synthetic, not both")
    if weights is not None:
        weights = Path(weights).expanduser()
        if len(models) != 1 or len(seeds) != 1 or folds is not None:
            # another seed or fold would score the same weights again, as if trained again (a fake mean over
            # seeds, or folds whose test cases the weights may have trained on)
            raise BenchError(f"--weights {weights}: evaluates one model's weights once, on the dataset's test split: "
                             "give one model and one seed, no folds")
        if not weights.is_file():
            raise fileio.absent(weights, f"--weights {weights}: {'a folder' if weights.is_dir() else 'not found'}; "
                                "expected a weights file (.pth, .pt, .safetensors, .npz)")
    check_results_folder(results_dir, dry_run)  # before synthetic data is written or anything trains
    # what needs no data, before --synthetic writes any
    # an unknown name: "did you mean", before anything else is said about it; "Synapse" is synapse,
    # which records and run ids hold (else one run trains twice and counts twice on a board)
    dataset = get_reader(dataset).name
    if folds is not None:
        check_folds(dataset)
    protocol.check_dataset(dataset)
    if policy is not None:
        get_policy(policy)  # an unknown name: its "did you mean"
    inits = {} if weights is not None else resolve_inits(models, protocol, pretrained_dir)  # given: nothing starts
    if synthetic:
        kept = records.synthetic_dir(results_dir)
        data_root = synthetic_folder(dataset, kept) if dry_run else synthetic_root(dataset, kept)
        if dry_run and synthetic_identity(data_root) is None:
            raise BenchError(f"--dry-run: the synthetic data is not written yet ({data_root}), and a dry run writes "
                             "none: no run of this grid has begun in this results folder")
    if data_root is None:
        raise BenchError(f"--data-root is required for dataset {dataset!r} (or use --synthetic)")
    data_root = Path(data_root).expanduser()  # "--data-root=~/data": the shell leaves ~ alone after =
    made = synthetic_identity(data_root)
    synthetic = synthetic or made is not None  # `bench data synth`'s output given as --data-root
    # validates the layout (and, with folds, that the dataset has them) before any training starts
    ds = open_dataset(dataset, data_root, fold=None if folds is None else 0)
    ds.check_splits()
    if protocol.requires_split_file and not ds.has_split_file:
        raise BenchError(
            f"protocol {protocol.name!r} needs the split as {Path(data_root) / 'splits_final.json'} (fold 0: "
            f'"train" and "val" case ids): a split drawn here would put cases of one subject on both sides'
        )
    nnunet_style = [f"{k} = \"nnunet\"" for k in ("dice_loss", "augment") if getattr(protocol.train, k) == "nnunet"]
    if ds.binary and nnunet_style:
        raise BenchError(f"protocol {protocol.name!r} trains with train.{' and train.'.join(nnunet_style)}, which "
                         f"{'need' if len(nnunet_style) > 1 else 'needs'} integer class labels (nnU-Net-format data); "
                         f"{dataset!r} is a binary dataset")
    # bench's synthetic channels are named for show (CT, X-ray): a built-in recipe on them is no mismatch
    for hint in (None if synthetic else ds.normalize_hint(protocol.normalize), ds.check_geometry()):
        if hint:
            warnings.warn(hint, stacklevel=2)
    chosen = scoring_policy(policy, protocol, ds)
    misfit = policy_misfit(chosen, 1 if ds.binary else ds.num_classes - 1, f"{dataset!r} data at {data_root}")
    if misfit:
        raise BenchError(misfit)
    resolve_nsd_tolerance(protocol, ds, chosen)  # a per-class table must name exactly the dataset's classes
    if POLICIES[chosen].use_spacing:  # HD95 in mm: every test case needs its spacing
        ds.check_spacing()
    if protocol.normalize == "ct_foreground":
        ds.train_cases()  # BenchError naming the data where the reader has no whole training cases
    if protocol.patches:
        ds.train_volume_ids()  # patch protocols need whole training cases: BenchError naming the data otherwise
        if protocol.spatial_dims == 3 and not ds.volumes:
            does = "evaluates 3-D volumes" if weights is not None else "trains 3-D patches"
            raise BenchError(f"{data_root}: protocol {protocol.name!r} {does}, and this data holds 2-D "
                             "images; a 2-D protocol suits it (lightm_unet_2d: 2-D patches)")
        if ds.binary:
            raise BenchError(f"protocol {protocol.name!r} (patches) needs integer class labels; {dataset!r} is binary")
        # spacings in the headers, before anything trains; 2-D cases have none, which "nnunet" accepts
        resampled = isinstance(protocol.target_spacing, tuple) or (protocol.target_spacing == "nnunet" and ds.volumes)
        slices = protocol.spatial_dims == 2 and ds.volumes
        geometry = list(ds.train_geometry()) if resampled or slices else []
        note = slicing_note(ds.root, [spacing for _, spacing in geometry]) if slices else None
        if note:
            warnings.warn(note, stacklevel=2)
    refuse_2d_models(models, protocol, weights is not None)  # all of them at once (build_args names one)
    over = {m: model_overrides_of(m, model_overrides, tiny=tiny) for m in models}
    refused: list[ChannelsError] = []
    for m in models:  # img_size, --set overrides and pretrained files, for every model before one trains
        check_set_kinds(m, model_overrides or {})
        build = build_args(m, protocol, ds, over[m])
        if protocol.patches:  # before create_model's img_size check, whose advice names --img-size
            _check_patch(m, build, protocol)
        try:
            if weights is not None:  # a file that does not fit is named now, not after the data was prepared
                load_weights(create_model(m, **build), weights)
            elif m in inits:
                _check_init(m, inits[m], build)
            else:
                check_buildable(m, **build)
        except ChannelsError as exc:  # every model that cannot read the data, named at once
            exc.data = (ds.in_chans, data_root)
            refused.append(exc)
    if refused:
        raise channels_error(refused, models)
    fold_list: list[int | None] = [None]
    if folds is not None:
        n = ds.n_folds
        fold_list = list(range(n)) if folds == "all" else list(dict.fromkeys(folds))  # each once, as seeds
        bad = [f for f in fold_list if not 0 <= f < n]
        if bad:
            raise BenchError(f"--folds {bad[0]}: {data_root} has folds 0..{n - 1}")
    split = {f: ds if f is None else open_dataset(dataset, data_root, fold=f) for f in fold_list}
    for d in split.values():  # each fold's test cases, scored after its training
        d.check_labels()
    split_sha = {f: None if f is None else _ids_sha(d.test_ids()) for f, d in split.items()}
    data_id = data_identity(ds)
    given = None if weights is None else (str(weights.resolve()), file_sha256(weights))
    small = {m: tiny and bool(get_entry(m).tiny) for m in models}  # no tiny configuration: the paper's is built
    specs = [RunSpec(m, dataset, protocol, s, data_root, synthetic, chosen, tuple(sorted(over[m].items())), fold, inits.get(m),
                     split_sha[fold], data_id, tuple(split[fold].notes), small[m], given, workers)
             for m in models for s in seeds for fold in fold_list]
    earlier = ("", *earlier_data_ids(ds, chosen)) if data_id.startswith("files:") else ()
    # the old data itself, copied with its folder (data made again since is today's synthetic data, its own id)
    moved = () if made else _moved_results_roots(results_dir, dataset, data_root)
    return [_earlier_id(spec, results_dir, earlier, moved) for spec in specs]


def _moved_results_roots(results_dir: Path, dataset: str, data_root: Path) -> tuple[str, ...]:
    """The paths older records name this results folder's data by (``<results>/synthetic/<name>``,
    written before records named data by its identity) where the folder was moved since (a copy on a
    colleague's machine): the same data, so their runs are these runs. Only data kept inside the
    results folder moves with it; data elsewhere is told apart by its content."""
    here = data_root.expanduser().resolve()
    kept = records.synthetic_dir(results_dir)
    if here.parent != kept.resolve():
        return ()
    found = set()
    for rec in records.dataset_records(results_dir, dataset):
        old = rec.get("data_root")
        if isinstance(old, str) and not rec.get("data_id") and Path(old).name == here.name \
                and Path(old).parent.name == kept.name and Path(old) != here and not Path(old).exists():
            found.add(old)
    return tuple(sorted(found))


def _earlier_id(spec: RunSpec, results_dir: Path, earlier: tuple[str, ...], moved: tuple[str, ...] = ()) -> RunSpec:
    """A run begun when its data was identified otherwise (``earlier``: by its absolute path, before
    content_id; by content_id before it read the test labels; before a spacing table its policy does
    not read was added) keeps that id where its record or run
    folder is there: finished, it is skipped; interrupted, it resumes; its rescored twins are found.
    ``moved``: the paths a moved results folder's older records name its data by
    (``_moved_results_roots``): their finished runs are skipped (one resumed would record a path gone)."""
    from bench.rescore import rescored_twin

    for data_id in earlier:
        old = replace(spec, data_id=data_id)
        if (records.run_dir(results_dir, old.key).is_dir() or records.record_path(results_dir, old.key).is_file()
                or rescored_twin(old, results_dir)):
            return old
    for path in moved:
        old = replace(spec, data_id=path)  # the key of a run identified by that path
        if records.record_path(results_dir, old.key).is_file() or rescored_twin(old, results_dir):
            return old
    return spec


def _ids_sha(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
