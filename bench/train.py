"""The one training loop: any registered model, any protocol, any dataset reader.

Reproducibility: every random choice comes from the seed — the epoch's shuffle order from
``(seed, epoch)``, each item's augmentation from ``(seed, epoch, index)`` (see TrainDataset) and
dropout/drop-path from torch's RNG, whose state is checkpointed. Checkpoints are written at epoch
ends, atomically, so a killed run resumes from the last one to the same final weights (CPU, fixed
thread count). On CUDA, cuDNN runs deterministic kernels without autotuning, as TransUNet and
VM-UNet set it; ops outside cuDNN that use atomics (e.g. some backward passes) can still vary.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from bench import distributed, env, fileio, records, runlog
from bench.data.base import SegDataset
from bench.data.torch_dataset import TrainDataset
from bench.errors import BenchError, few
from bench.losses import segmentation_loss
from bench.protocol import Protocol
from bench.records import CHECKPOINT_DIR, FINAL, LAST  # the run folder's layout, which reports read without torch
from bench.registry import first_forward_error, torch_load
from bench.rng import seed_everything

LR_MIN = "lr_min.pt"  # select = "lr_min": the weights at the end of lr_min_epoch
BEST = "best.pt"
# the best weights a checkpoint names (its "best" epoch): best.pt may hold a later epoch's, written by
# a killed process after its last checkpoint, so a resume restores best.pt from this one
BEST_AT = "best@{:04d}.pt"
SELECTED_CHECKPOINTS = {"final": FINAL, "best_train_loss": BEST, "lr_min": LR_MIN}  # protocol select -> file


@dataclass
class TrainResult:
    epochs: int
    iterations: int
    final_loss: float | None  # None: evaluated only (bench run --weights), nothing trained
    time_s: float
    selected: str  # which weights the model now holds: "final" | "best_train_loss@<epoch>" | "lr_min@<epoch>"
    epoch_losses: list[float] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)  # every epoch it resumed after, in order
    devices: list[str] = field(default_factory=list)  # short fingerprints it trained on, in order
    commits: list[str] = field(default_factory=list)  # code versions it trained under, in order (records.code_version)
    world_size: int = 1  # processes that trained it (bench.distributed)
    cudnn_deterministic: bool | None = None  # deterministic cuDNN kernels, no autotuning; None: CPU
    base_lr: float | None = None  # the schedule's starting lr (train.lr after a batch-size rule)
    steps_per_epoch: int | None = None  # optimizer steps an epoch has (the Methods text: was max_iterations a cut?)
    loader_workers: int | None = None  # data-loader processes it ran with (--workers or the protocol's, capped)

    @property
    def resumed_from(self) -> int | None:
        """The epoch its last resume continued after; None where it was never resumed."""
        return self.resumes[-1] if self.resumes else None

    def to_record(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "iterations": self.iterations,
            "final_loss": self.final_loss,
            "time_s": round(self.time_s, 3),
            "selected": self.selected,
            "epoch_losses": self.epoch_losses,
            "resumed_from": self.resumed_from,
            "resumes": self.resumes,
            "devices": self.devices,
            "commits": self.commits,
            "world_size": self.world_size,
            "cudnn_deterministic": self.cudnn_deterministic,
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "loader_workers": self.loader_workers,
        }


def _resumed_commits(last: Path, state: dict[str, Any], code: str, digest: str) -> list[str]:
    """The code versions a resumed training ran under, this one last; a warning where its sources
    differ from the checkpoint's (an upgrade or an edit between a kill and its resume: the record
    names only the last). Checkpoints written before digests were kept compare by version."""
    older, outside = "unknown (a checkpoint written before commits were kept)", "unknown (outside a git checkout)"
    commits = (list(state["commits"]) or [outside]) if "commits" in state else [older]
    was_digest = state.get("code_digest")
    if (was_digest == digest) if was_digest else (commits[-1] == code):  # a README edited: the same code
        return commits
    if code == commits[-1]:  # one clean commit, other sources (a file git does not track): the digests tell
        commits[-1], code = f"{code} sources {was_digest}", f"{code} sources {digest}"
    said = {older: "an older version of bench", outside: "code outside a git checkout"}
    was, where = (said.get(c) or (f"{records.short_commit(c)} (outside a git checkout)" if c.startswith("sources ")
                                  else f"commit {records.short_commit(c)}") for c in (commits[-1], code))
    warnings.warn(f"{last}: written by {was}, resumed at {where}: the rest of the training runs other code "
                  "(the record's train.commits lists each); run it without --resume to train it under one",
                  stacklevel=3)
    return [*commits, code]


def share_sizes(batch: int, world: int) -> list[int]:
    """How a global batch of ``batch`` items splits over ``world`` ranks: as evenly as possible,
    the first ranks taking one more."""
    base, extra = divmod(batch, world)
    return [base + (r < extra) for r in range(world)]


class EpochBatches(torch.utils.data.Sampler[list]):
    """The global batches of epoch e, drawn by a generator seeded by (seed, epoch): the order
    never depends on what ran before, so a resumed run sees the same batches. Under several
    processes rank r yields its contiguous share of each global batch (a placeholder item where a
    final batch is smaller than the world; ``shares`` says how many items each step really has).

    ``draws`` = 0: one pass over a shuffle of the n items, item indices out. ``draws`` > 0
    (nnU-Net's fixed-length epoch): that many full batches of items drawn with replacement, as
    ``(index, draw)`` pairs, ``draw`` the item's position in the epoch, so an item drawn twice is
    augmented twice differently (TrainDataset keys its generator on the pair)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, draws: int = 0):
        distributed.check_batch(batch_size, world)
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0
        self.rank, self.world, self.draws = rank, world, draws

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batch_sizes(self) -> list[int]:
        if self.draws:
            return [self.batch_size] * self.draws
        return [min(self.batch_size, self.n - i) for i in range(0, self.n, self.batch_size)]

    def shares(self) -> list[tuple[int, int]]:
        """(items of this rank, items of the global batch) for every step of an epoch."""
        return [(share_sizes(b, self.world)[self.rank], b) for b in self._batch_sizes()]

    def __iter__(self) -> Iterator[list]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.draws:
            picks = torch.randint(self.n, (self.draws * self.batch_size,), generator=g).tolist()
            order: list = list(zip(picks, range(len(picks))))
        else:
            order = torch.randperm(self.n, generator=g).tolist()
        for i in range(0, len(order), self.batch_size):
            batch = order[i:i + self.batch_size]
            sizes = share_sizes(len(batch), self.world)
            start = sum(sizes[:self.rank])
            yield batch[start:start + sizes[self.rank]] or batch[:1]

    def __len__(self) -> int:
        return len(self._batch_sizes())


def amp_enabled(protocol: Protocol, device: torch.device) -> bool:
    """Whether training steps run under float16 autocast (with a gradient scaler): where the protocol allows it
    (``amp``; no built-in recipe does) and on CUDA only; a protocol without it trains in its dtype on every device."""
    return bool(protocol.train.amp and device.type == "cuda")


def build_optimizer(model: nn.Module, protocol: Protocol) -> torch.optim.Optimizer:
    t, lr = protocol.train, base_lr(protocol)
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    raise AssertionError(f"optimizer {t.optimizer!r} is in protocol.CHOICES but not implemented here")


def base_lr(protocol: Protocol) -> float:
    """The schedule's starting lr: ``train.lr``, scaled by Swin-Unet's rule where the protocol has
    it (``lr_scale_batch``: a batch size other than it and a multiple of 6 gives lr·batch/it)."""
    t = protocol.train
    if t.lr_scale_batch and t.batch_size != t.lr_scale_batch and t.batch_size % 6 == 0:
        return t.lr * t.batch_size / t.lr_scale_batch
    return t.lr


def lr_at(protocol: Protocol, step: int, epoch: int, max_iterations: int, epochs: int = 0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) in epoch ``epoch`` (0-based) of a run of
    ``max_iterations`` steps in ``epochs`` epochs (0: ``train.epochs``).

    poly: TransUNet sets lr after each step from the pre-increment counter, so steps 0 and 1 both
    use the base lr and step k uses base·(1 − (k−1)/max_it)^power.
    poly_epoch: nnU-Net's PolyLRScheduler, set at each epoch's start: base·(1 − epoch/epochs)^power.
    cosine: torch's CosineAnnealingLR stepped once per epoch (closed form, cycles past T_max).
    """
    t = protocol.train
    lr = base_lr(protocol)
    if t.scheduler == "poly":
        k = max(step - 1, 0)
        return lr * (1.0 - k / max_iterations) ** t.poly_power
    if t.scheduler == "poly_epoch":
        return lr * (1.0 - epoch / (epochs or t.epochs)) ** t.poly_power
    if t.scheduler == "cosine":
        return t.cosine_eta_min + (lr - t.cosine_eta_min) * (1 + math.cos(math.pi * epoch / t.cosine_t_max)) / 2
    if t.scheduler == "constant":
        return lr
    raise AssertionError(f"scheduler {t.scheduler!r} is in protocol.CHOICES but not implemented here")


def lr_min_epoch(protocol: Protocol, epochs: int, steps_per_epoch: int, total: int) -> int:
    """The last epoch whose final step runs at the schedule's lowest learning rate (``select =
    "lr_min"``): a checkpoint chosen by the schedule alone, with no look at any data. Under a
    cycling cosine (VM-UNet's T_max 50 over 300 epochs) the final epoch trains at the peak lr;
    this picks the end of the last descent (epoch 250) instead. Decaying schedules: the final epoch."""
    lrs = [lr_at(protocol, min((e + 1) * steps_per_epoch, total) - 1, e, total, epochs) for e in range(epochs)]
    low = min(lrs)
    return max(e for e, lr in enumerate(lrs) if math.isclose(lr, low, rel_tol=1e-9, abs_tol=1e-15))


def save_checkpoint(obj: Any, path: Path) -> None:
    """``torch.save`` through ``fileio.atomic_write``: a unique temp name (another host's process
    on shared storage may have this pid), removed on failure; a write failing for want of disk (full,
    over quota, a file size limit) is one BenchError. torch writes through a Python file here, so
    the disk's own error (ENOSPC, EDQUOT, EFBIG) reaches us, where its C++ writer says only
    "unexpected pos"."""
    _atomic_file(path, lambda tmp: _save(obj, tmp))


def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def _atomic_file(path: Path, write: Callable[[Path], None]) -> None:
    # a full disk, a folder gone read-only: one line (fileio.disk_problem)
    fileio.atomic_write(path, write, what="the checkpoint", retry="; free space and run it again with --resume")


def _rng_state() -> dict[str, Any]:
    # Only torch's generators drive randomness inside the loop (dropout, drop-path); numpy and
    # python RNGs are never used after seeding (augmentation has its own per-item generators).
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # this process's device only: a requeued job may see fewer GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):  # checkpoints written before: every visible device's state
        here = torch.cuda.current_device()
        cuda = cuda[here] if here < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def items_digest(ids: list[str]) -> str:
    """A short digest of the training items (their ids, in order): what checkpoints name as trained on."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def checkpoints_when(every: int) -> str:
    """When a protocol of ``checkpoint_every`` = ``every`` writes its resumable checkpoint."""
    return f"every {every} epochs" if every > 1 else "at every epoch's end" if every == 1 else "at the end only"


def _earlier_attempt_files(run_dir: Path) -> list[Path]:
    """What an earlier attempt of a run training afresh left that this one would not replace: its
    per-epoch checkpoints, the best weights its last.pt names, and its TensorBoard curves, which would
    read as this run's beside its own. Deleted at this attempt's first checkpoint, not before: until
    then a --resume continues that attempt, whose last.pt needs them (lr_min.pt too)."""
    found = [(run_dir / CHECKPOINT_DIR).glob(p) for p in ("epoch_*.pt", "best@*.pt", LR_MIN)]
    return [old for files in (*found, (run_dir / records.TB_DIR).glob("events.out.tfevents.*")) for old in files]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one of our checkpoints; tensors and plain containers only (weights_only=True)."""
    try:
        return torch_load(path)
    except BenchError:  # a torch too old to load it safely: the file is fine
        raise
    except Exception as exc:
        raise BenchError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc}); delete it to restart") from None


def _other_versions(run_dir: Path) -> str:
    """Where an unfinished run of the same model and seed under other settings (an edited protocol
    file: another hash, so another run id) left checkpoints: a resume found none here, which read as
    if nothing had run. Finished runs (their record written) are no such leftover."""
    stem = records.run_stem(run_dir.name)
    if stem is None:  # no run's folder (train_model called by hand): no other versions of it
        return ""
    results = run_dir.parent.parent
    others = sorted(d.name for d in run_dir.parent.glob(f"{stem}-*")
                    if d != run_dir and records.run_stem(d.name) == stem and (d / CHECKPOINT_DIR / LAST).is_file()
                    and not records.record_path(results, d.name).is_file())
    if not others:
        return ""
    holds, that = ("holds", "that run resumes") if len(others) == 1 else ("hold", "those runs resume")
    return (f"; {few(others, 2)} {holds} checkpoints of this model and seed "
            "under other settings (another version of the protocol file, overrides, policy, --set or data): "
            f"{that} only with those")


def _loader_worker_init(worker_id: int) -> None:
    """A data-loader worker leaves quietly on SIGTERM: Slurm's scancel and time limit signal the whole
    process group, and a worker killed by it made torch print 17 lines ("DataLoader worker (pid N) is
    killed by signal: Terminated") before bench's one "interrupted". Not ignored: multiprocessing's exit
    stops workers with SIGTERM, then waits for them (for ever, where torch had not shut them down)."""
    signal.signal(signal.SIGTERM, _leave_quietly)


def _leave_quietly(signum, frame) -> None:
    os._exit(0)  # torch reports a worker that exits otherwise than with 0; the training process stops on its own


def train_model(
    model: nn.Module,
    dataset: SegDataset,
    protocol: Protocol,
    *,
    seed: int,
    run_dir: Path,
    device: torch.device,
    resume: bool = False,
    writer: Any = None,
    progress: Callable[[int, int, float], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    code: str | None = None,
    workers: int | None = None,
    data_id: str | None = None,
) -> TrainResult:
    """Train ``model`` in place under ``protocol``; checkpoints go to ``run_dir/checkpoints``.

    ``progress(step, total_steps, loss)`` is called after every step; ``on_epoch_end(epoch)`` after
    each epoch's checkpoint (tests use it to kill a run mid-way). ``workers``: data-loader processes
    (None: the protocol's ``num_workers``), at most one per CPU core this process may use; batches do
    not depend on it. ``data_id``: the data's identity (bench run's), which its weights files name.
    """
    t = protocol.train
    w = distributed.world()
    if device.type == "cuda" and device.index is not None:  # --device cuda:1: the RNG states a checkpoint
        torch.cuda.set_device(device)  # keeps and restores are the current device's
    seed_everything(seed)
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if w.main:  # what a kill during a checkpoint write left behind (a dead writer's; another host's once a day old):
        # the folder is bench's alone, so every temp name, older versions' (".last.pt.<pid>.tmp") too
        fileio.remove_orphans(ckpt_dir, *fileio.OWN_FOLDER_TEMPS)
    data = TrainDataset(dataset, protocol, seed=seed)
    if len(data) == 0:
        raise BenchError(f"{dataset.root}: the training split is empty")
    sampler = EpochBatches(len(data), t.batch_size, seed, w.rank, w.size, draws=t.iterations_per_epoch)
    shares = sampler.shares() if w.distributed else None
    workers = min(t.num_workers if workers is None else workers, env.usable_cores())
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=sampler, num_workers=workers, worker_init_fn=_loader_worker_init,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        # each iterator draws its workers' base seed from this generator, not from torch's global RNG:
        # dropout and drop-path then see the same stream whatever the worker count, and a resumed run
        # (which starts its persistent workers again) the same as an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )
    steps_per_epoch = len(loader)
    total = t.epochs * steps_per_epoch
    if t.max_iterations > 0:
        total = min(total, t.max_iterations)
    epochs = math.ceil(total / steps_per_epoch)
    # what a checkpoint was trained on: a resume from one of other data would mix two trainings
    trains_on = {"items": items_digest(data.ids), "n_items": len(data), "steps_per_epoch": steps_per_epoch,
                 "total_steps": total}
    # what every weights file of the run (last.pt too) says of itself: given to `bench run --weights`, its
    # record names the run and protocol they came from, whether they trained on the items that run trains
    # on, after which of its epochs (an interrupted run's last.pt holds no finished training), and which of its
    # files they are (``checkpoint``): "final" (final.pt), "last" (last.pt), "epoch" (epoch_<n>.pt), or the
    # select rule whose weights they keep ("best_train_loss": best.pt and its best@<n>.pt copy, "lr_min": lr_min.pt)
    # ``data_id_but_labels``: the data but for the files its test labels are read from, which tells data edited
    # in its test labels alone from other data (``bench.run._given_weights``)
    trained_by = {"run_id": Path(run_dir).name, "protocol": protocol.name, "protocol_hash": protocol.hash,
                  "data_id": data_id, "data_id_but_labels": dataset.content_id(labels=False),
                  "items": trains_on["items"], "n_items": len(data), "epochs": epochs}

    def weights(state: dict[str, Any], epoch: int, checkpoint: str) -> dict[str, Any]:
        """A checkpoint's weights part, the one every file of the run has."""
        return {"model": state, "epoch": epoch, "trained_by": {**trained_by, "epoch": epoch, "checkpoint": checkpoint}}

    keep_epoch = lr_min_epoch(protocol, epochs, steps_per_epoch, total) if t.select == "lr_min" else None

    model.to(device=device, dtype=protocol.torch_dtype)
    trained = distributed.wrap(model, device)  # shares model's parameters: model is trained in place
    if w.distributed:  # equal initial weights, then dropout/drop-path differ per rank
        torch.manual_seed(seed * 1_000_003 + w.rank)
    optimizer = build_optimizer(model, protocol)
    use_amp = amp_enabled(protocol, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, step, epoch_losses, resumed_from, time_before = 0, 0, [], None, 0.0
    resumes: list[int] = []
    best: tuple[float, int] | None = None
    last = ckpt_dir / LAST
    here = records.short_fingerprint(env.fingerprint(device))
    devices = [here]  # where the training ran: a resume on another device (or thread count) is not bit-identical
    # the run's code version (read once, when it started): a resume under other code trains the rest otherwise
    digest = env.source_digest()  # what checkpoints compare: the sources, whatever git says of the tree
    code = code or records.code_version(env.git_commit(), digest)
    commits = [code]
    if not resume and w.main and last.is_file():  # days of training, replaced unsaid at the first epoch's end
        written = fileio.human_time(last.stat().st_mtime)
        warnings.warn(f"{last}: an earlier attempt's checkpoint (written {written}); training afresh replaces it "
                      "and, at its first checkpoint, deletes that attempt's per-epoch, best@ and lr_min checkpoints "
                      "and curves (--resume continues it)",
                      stacklevel=2)
    # rank 0's view for every rank: one rank resuming while another starts afresh would never meet again
    if resume and distributed.gather_objects(last.is_file() if w.main else None)[0]:
        state = load_checkpoint(last)
        written_by = state.get("world_size", 1)
        if written_by != w.size:
            raise BenchError(f"{last}: written by {written_by} process(es); resume it with --nproc {written_by} "
                             f"(this run has {w.size})")
        was = state.get("trains_on", trains_on)  # absent in checkpoints written before it was kept
        if was != trains_on:
            changed = ", ".join(f"{k} {was.get(k)} -> {v}" for k, v in trains_on.items() if was.get(k) != v)
            raise BenchError(f"{last}: written for other training data ({changed}): the data changed since "
                             "the run was killed; run it without --resume to train it afresh")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:  # the model's code changed its weights' layout since
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = (lines[1:] or lines or [type(exc).__name__])[0][:200]  # the first key that does not fit
            raise BenchError(f"{last}: its weights do not fit this model ({detail}); run it without --resume to "
                             "train it afresh") from None
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty from a run without AMP (begun on CPU): the scaler keeps its start
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng_ranks"][w.rank] if w.distributed else state["rng"])
        start_epoch, step, epoch_losses = state["epoch"] + 1, state["step"], list(state["epoch_losses"])
        best = tuple(state["best"]) if state.get("best") else None
        if best is not None and w.main and (ckpt_dir / BEST_AT.format(best[1])).is_file():
            _atomic_file(ckpt_dir / BEST, lambda tmp: shutil.copyfile(ckpt_dir / BEST_AT.format(best[1]), tmp))
        # absent in checkpoints written before it was kept: where their part ran is not known
        devices = list(state.get("devices") or ["unknown (a checkpoint written before devices were kept)"])
        if devices[-1] != here and "devices" in state:
            warnings.warn(f"{last}: written on {devices[-1]}, resumed on {here}: the rest of the training runs on "
                          "another device or thread count, so it is not bit-identical to an uninterrupted run"
                          + (" (and AMP follows the device)" if t.amp else ""), stacklevel=2)
        devices += [here] if devices[-1] != here else []
        commits = _resumed_commits(last, state, code, digest)
        resumed_from = state["epoch"]
        resumes = [*state.get("resumes", []), resumed_from]  # absent before they were kept: this one only
        time_before = state.get("time_s", math.nan)  # training time of the killed process(es)
        if w.main:  # else a resume and a fresh start read alike
            runlog.say(f"  {Path(run_dir).name}: resuming after epoch {resumed_from + 1} of {epochs} (step {step} of "
                       f"{total}) from {last}")
    elif resume and w.main:  # stopped before its first checkpoint, or never begun: a resume reads alike otherwise
        when = checkpoints_when(t.checkpoint_every)
        runlog.say(f"  {Path(run_dir).name}: no checkpoint to resume from (its protocol writes {last.name} {when}); "
                   f"training from the start{_other_versions(Path(run_dir))}")
    earlier = _earlier_attempt_files(Path(run_dir)) if resumed_from is None and w.main else []
    lr_min = None  # select = "lr_min": that epoch's weights, until they may be written
    if getattr(model, "uses_selective_scan", False):  # its kernel built (or loaded) outside the train time
        from ssm_models import scan

        if scan.default_backend(device, protocol.torch_dtype) == "cpu":  # BENCH_SCAN_BACKEND=torch builds none
            scan.available_backends(device)

    t0 = time.perf_counter()
    loss_value = float("nan")
    wrote_final = False
    stepped = False  # a plugin failing at its first forward is named in one line
    for epoch in range(start_epoch, epochs):
        model.train()
        sampler.set_epoch(epoch)
        data.set_epoch(epoch)
        step_losses = []
        for i, (image, label) in enumerate(loader):
            if step >= total:
                break
            share = shares[i] if shares else None
            lr = lr_at(protocol, step, epoch, total, epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            image = image.to(device, dtype=protocol.torch_dtype, non_blocking=True)
            label = label.to(device, non_blocking=True)
            try:
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = trained(image)
            except Exception as exc:
                failure = first_forward_error(model, tuple(image.shape), exc) if not stepped else None
                if failure is None:
                    raise
                raise failure from exc
            stepped = True
            loss = segmentation_loss(logits, label, ce=t.loss_ce, dice=t.loss_dice, bce=t.loss_bce, share=share,
                                     dice_loss=t.dice_loss)
            # the global batch's loss (every rank's term averages to it): same value on every rank
            loss_value = distributed.sum_values([loss.item()])[0] / w.size if share else loss.item()
            if not math.isfinite(loss_value):
                raise BenchError(
                    f"non-finite loss ({loss_value}) at epoch {epoch}, step {step}: training stopped. "
                    "Lower the learning rate or check the data"
                    + (f" (last good checkpoint: {last})" if last.is_file() else " (no checkpoint written yet)")
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            try:
                scaler.step(optimizer)
            except RuntimeError as exc:  # Adam's lr / (1 - beta1) beyond float32: torch's traceback said no more
                if "without overflow" not in str(exc):
                    raise
                raise BenchError(f"the optimizer's step overflows {protocol.dtype} at learning rate {lr:g} (epoch {epoch}, "
                                 f"step {step}; --lr or train.lr): lower the learning rate") from exc
            scaler.update()
            step_losses.append(loss_value)
            step += 1
            if writer is not None:
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", lr, step)
            if progress is not None:
                progress(step, total, loss_value)
        # the plain mean over the epoch's steps, as VM-UNet's engine_synapse.py returns it
        epoch_loss = sum(step_losses) / max(len(step_losses), 1)
        epoch_losses.append(epoch_loss)
        if writer is not None:
            writer.add_scalar("train/epoch_loss", epoch_loss, epoch)
        if t.select == "best_train_loss" and (best is None or epoch_loss < best[0]):
            best = (epoch_loss, epoch)
            if w.main:
                save_checkpoint(weights(model.state_dict(), epoch, "best_train_loss"), ckpt_dir / BEST)
        if epoch == keep_epoch and w.main:  # every rank loads it at the end: a shared run dir, as for best.pt
            lr_min = weights(model.state_dict(), epoch, "lr_min")
            if not earlier:  # else held until the earlier attempt's files go: a --resume of it reads its own
                save_checkpoint(lr_min, ckpt_dir / LR_MIN)
                lr_min = None
            else:  # a copy: training goes on in place
                lr_min["model"] = {k: v.detach().clone() for k, v in lr_min["model"].items()}
        final = epoch == epochs - 1
        if final or (t.checkpoint_every and (epoch + 1) % t.checkpoint_every == 0):
            rngs = distributed.gather_objects(_rng_state())  # every rank's, for an exact resume
            if w.main:
                state = {
                    **weights(model.state_dict(), epoch, "last"), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rngs[0], "step": step, "epoch_losses": epoch_losses,
                    "best": list(best) if best else None, "protocol_hash": protocol.hash, "world_size": w.size,
                    "trains_on": trains_on, "devices": devices, "commits": commits, "code_digest": digest,
                    "resumes": resumes,
                    "time_s": time_before + time.perf_counter() - t0,
                }
                if w.distributed:
                    state["rng_ranks"] = rngs
                if earlier:  # trained afresh: that attempt's last.pt first, so no resume finds it without its files
                    last.unlink(missing_ok=True)
                    for old in earlier:
                        old.unlink(missing_ok=True)
                    earlier = []
                if lr_min is not None:
                    save_checkpoint(lr_min, ckpt_dir / LR_MIN)
                    lr_min = None
                if not final:
                    save_checkpoint(weights(state["model"], epoch, "epoch"), ckpt_dir / f"epoch_{epoch:04d}.pt")
                kept = ckpt_dir / BEST_AT.format(best[1]) if best is not None else None
                if kept is not None and not kept.is_file():  # before last.pt names it
                    _atomic_file(kept, lambda tmp: shutil.copyfile(ckpt_dir / BEST, tmp))
                save_checkpoint(state, last)
                for old in ckpt_dir.glob(BEST_AT.replace("{:04d}", "*")):  # no checkpoint names them now
                    if old != kept:
                        old.unlink(missing_ok=True)
                if final:
                    save_checkpoint(weights(state["model"], epoch, "final"), ckpt_dir / FINAL)
                    wrote_final = True
            distributed.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    if w.main and not wrote_final:  # resumed from the last epoch's last.pt: killed before final.pt, or after
        # it (a final.pt of an earlier attempt, not bit-identical on a GPU, must not stay)
        save_checkpoint(weights(model.state_dict(), epochs - 1, "final"), ckpt_dir / FINAL)
    distributed.barrier()
    selected = "final"
    if t.select == "best_train_loss" and best is not None:
        kept = load_checkpoint(ckpt_dir / BEST)
        if kept.get("epoch", best[1]) != best[1]:  # a killed process wrote it after its last last.pt, and the
            # resumed epochs (not bit-identical on a GPU) never beat the best they restored
            raise BenchError(f"{ckpt_dir / BEST}: holds epoch {kept['epoch']}'s weights, not those of the best "
                             f"epoch {best[1]}; run it without --resume to train it afresh")
        model.load_state_dict(kept["model"])
        selected = f"best_train_loss@{best[1]}"
    elif keep_epoch is not None:
        model.load_state_dict(load_checkpoint(ckpt_dir / LR_MIN)["model"])
        selected = f"lr_min@{keep_epoch}"
    return TrainResult(
        epochs=epochs, iterations=step, final_loss=epoch_losses[-1] if epoch_losses else loss_value,
        time_s=time_before + time.perf_counter() - t0, selected=selected, epoch_losses=epoch_losses,
        resumes=resumes,
        devices=devices,
        commits=commits,
        world_size=w.size,
        cudnn_deterministic=(torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
                             if device.type == "cuda" else None),  # no cuDNN on CPU
        base_lr=base_lr(protocol),
        steps_per_epoch=steps_per_epoch,
        loader_workers=workers,
    )
