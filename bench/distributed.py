"""Several processes, one run: a launcher, DistributedDataParallel, and the few collectives we need.

``bench run --nproc N`` (or ``torchrun --nproc_per_node N -m bench run ...``) runs the same grid in
N processes; bench's own launcher has them meet through a file, not a network server. The rules, so that N processes train what one process would:

- The protocol's ``batch_size`` is the *global* batch. Every rank takes its contiguous share of
  each global batch of the same ``(seed, epoch)`` shuffle, or draws (``bench.train.EpochBatches``).
- Losses are the global batch's: mean terms are weighted by each rank's share of the batch (DDP
  averages gradients over ranks), and the batch-summed multi-class Dice sums its statistics over
  ranks with an autograd all-reduce (``sum_across_ranks``).
- The weights start equal (seeded identically, and DDP broadcasts rank 0's); dropout and
  drop-path then draw from a per-rank stream. BatchNorm becomes SyncBatchNorm on CUDA; on CPU
  (gloo) torch has no SyncBatchNorm, so BN statistics are per rank there.
- Rank 0 alone writes (checkpoints, records, tensorboard, progress) and evaluates; the other ranks
  wait at a barrier. Checkpoints carry every rank's RNG state, so a killed run resumes exactly.

What stays different from one process: float summation order, hence results equal to rounding
(float64: ~1e-12 on losses), except with stochastic layers or BatchNorm on CPU.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as dist

from bench import env
from bench.errors import BenchError, HeldError
from bench.fileio import portable_write_text

# How long ranks wait at a barrier for rank 0 (evaluation of a large test set runs on rank 0 alone).
TIMEOUT_ENV = "BENCH_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's rank and the number of processes (``World()`` when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    """Whether this is one of several processes of a run (started by `bench run --nproc` or torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# Set by `bench run --nproc`'s launcher for its processes: a folder where each leaves its error line.
# The launcher has said the plan's warnings, and says the interruption and the error once; the
# processes keep quiet (each would print the same line, or be stopped before it printed).
ERRORS_ENV = "BENCH_PROCESS_ERRORS"
STORE_ENV = "BENCH_DIST_STORE"  # set by the launcher: the file its processes meet through
LAUNCH_ARGV_ENV = "BENCH_LAUNCH_ARGV"  # set by the launcher: its command line (JSON), as typed, for the records


def launched_by_bench() -> bool:
    return launched_by_torchrun() and bool(os.environ.get(ERRORS_ENV))


def rank_from_env() -> int:
    """This process's rank as torchrun set it (before the process group is joined); 0 outside it."""
    try:
        return int(os.environ.get("RANK") or 0) if launched_by_torchrun() else 0
    except ValueError:
        return 0


LOST_PEER_EXIT = 3  # a process whose collective failed because another is gone: not the cause


def note_error(line: str) -> bool:
    """Keep a process's error line for the launcher (True) where `bench run --nproc` started it;
    False: print it."""
    if not launched_by_bench():
        return False
    try:
        with open(os.path.join(os.environ[ERRORS_ENV], f"{rank_from_env()}.txt"), "w", encoding="utf-8") as f:
            f.write(line)
        return True
    except OSError:
        return False


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process's connection closed (it was
    killed or crashed): its traceback would only hide the other's message. An error of this process's
    own (a CUDA error NCCL reports) is not one."""
    text = str(exc)
    return launched_by_torchrun() and isinstance(exc, RuntimeError) and any(
        s in text for s in ("Connection reset by peer", "Connection closed by peer"))


def init(device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, nccl on CUDA): through the launcher's file (STORE_ENV), else
    torchrun's rendezvous (its environment variables); returns this rank's device.

    A no-op returning ``device`` outside torchrun or once joined."""
    if not launched_by_torchrun() or world().distributed:
        return device
    _check_no_gpu_index(device, int(os.environ.get("WORLD_SIZE", "1")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:  # one process given cuda:N keeps it
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    seconds = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        timeout = dt.timedelta(seconds=float(seconds))
    except (ValueError, OverflowError):
        timeout = None
    if timeout is None or timeout.total_seconds() <= 0:
        raise BenchError(f"{TIMEOUT_ENV}={seconds!r}: expected seconds (a positive number), how long processes "
                         "wait for each other")
    # NCCL told its device: barriers need not guess it from the rank (torch warns that it does)
    meet = {}
    if path := os.environ.get(STORE_ENV):  # the store itself: a file:// address of a path with a space
        # is not decoded by torch on POSIX, and every rank waited 5 minutes for a file that never came
        store = dist.FileStore(path, int(os.environ["WORLD_SIZE"]))
        store.set_timeout(timeout)
        meet = {"store": store, "rank": rank_from_env(), "world_size": int(os.environ["WORLD_SIZE"])}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout, **meet,
                            **({"device_id": device} if device.type == "cuda" else {}))
    return device


def shutdown() -> None:
    if world().distributed:
        dist.destroy_process_group()


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def sum_values(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a few floats (no autograd), e.g. loss bookkeeping."""
    if not world().distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(sum) with its gradient: every rank's input feeds every rank's sum, so each rank's
    gradient is the sum of all ranks' upstream gradients, another all_reduce(sum). Our own, since
    torch's functional all_reduce has had an autograd formula only in recent releases (before,
    backward through it warned and gave no gradient)."""

    @staticmethod
    def forward(ctx, t):
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, differentiable: each rank's gradient is the sum of all ranks' upstream ones,
    which DDP's averaging turns back into the gradient of the global quantity."""
    return _SumAcrossRanks.apply(t) if world().distributed else t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    w = world()
    if not w.distributed:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to train: ``model`` itself in one process, DDP around it (sharing its
    parameters, so ``model`` is trained in place) in several."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # static_graph: some authors' layouts hold parameters their forward never uses (kept so their
    # checkpoints load strictly); a static graph lets DDP learn that once instead of every step
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index], static_graph=True)
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})
    if norms and world().main:
        import warnings

        warnings.warn(f"{type(model).__name__} has {', '.join(norms)}: on CPU each of the {world().size} processes "
                      "normalises over its own share of the batch (torch has no SyncBatchNorm there), so this run "
                      "trains otherwise than one process would, under the same run id", stacklevel=2)
    return DistributedDataParallel(model, static_graph=True)


def check_nproc(nproc: int, device: torch.device, batch_size: int) -> None:
    if nproc < 1:
        raise BenchError(f"--nproc must be >= 1; got {nproc}")
    _check_no_gpu_index(device, nproc)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise BenchError(f"--nproc {nproc}: one GPU per process, and this machine has {torch.cuda.device_count()}")
    check_batch(batch_size, nproc)
    cores = env.usable_cores()
    if device.type == "cpu" and nproc > cores:
        import warnings

        warnings.warn(f"--nproc {nproc}: more processes than the {cores} CPU core(s) this process may use; they "
                      "take turns, so the run is slower than with fewer", stacklevel=2)


def _check_no_gpu_index(device: torch.device, nproc: int) -> None:
    if device.type == "cuda" and device.index is not None and nproc != 1:
        raise BenchError(f"--device {device} with {nproc} processes: each process takes the GPU of its local rank, "
                         "cuda:0 onwards; give --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES")


def check_batch(batch_size: int, nproc: int) -> None:
    """Every process needs items of every batch: with more processes than items, some would train on
    a placeholder every step (loss weight 0, yet in SyncBatchNorm's statistics on CUDA)."""
    if nproc > batch_size:
        raise BenchError(f"--nproc {nproc}: the batch of {batch_size} cannot be shared by {nproc} processes (each "
                         f"needs at least one item); use --nproc {batch_size} or fewer, or a larger --batch-size")


LAUNCHER_ENV = "BENCH_LAUNCHER_PID"  # the launcher's process id: its processes stop when it dies


def stop_with_launcher() -> None:
    """Where `bench run --nproc` started this process (Linux): have the kernel send it SIGTERM, which
    stops it as Ctrl-C does (checkpoint kept, claim released), when the launcher dies. A launcher
    killed outright (kill -9, the OOM killer) has no chance to stop its processes, which trained on
    unseen, holding the run's claim against the next `bench run --resume`."""
    if not launched_by_bench() or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        set_it = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if set_it == 0 and launcher_gone():  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def launcher_gone(wait_s: float = 0.0) -> bool:
    """Whether the `bench run --nproc` launcher of this process has died (never outside one), waiting
    up to ``wait_s`` for it: the signal comes as its first thread exits, before the process is gone."""
    try:
        launcher = int(os.environ[LAUNCHER_ENV])
    except (KeyError, ValueError):
        return False
    deadline = time.monotonic() + wait_s
    while True:
        if _FIRST_PARENT == launcher:  # its child is given to another parent once it is gone
            gone = os.getppid() != launcher
        else:  # started through a wrapper (torchrun's PYTHON_EXEC): whether it still runs
            try:
                stat = Path(f"/proc/{launcher}/stat").read_text(encoding="utf-8", errors="replace")  # name: any bytes
                gone = stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
            except (OSError, IndexError):
                gone = True
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(0.05)


_FIRST_PARENT = os.getppid()  # this process's parent when it started


def orphaned() -> bool:
    """After this process was stopped: whether its launcher died (then the launch's temp folder,
    which the launcher could not remove, is removed here)."""
    if not launched_by_bench():
        return False
    if threading.current_thread() is threading.main_thread():  # stopping anyway: the launcher's SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # must not cut the wait short with a traceback
    if not launcher_gone(wait_s=1.0):
        return False
    shutil.rmtree(Path(os.environ[ERRORS_ENV]).parent, ignore_errors=True)
    return True


WARNED_FILE = "warned.json"  # in the ERRORS_ENV folder: the warnings the launcher said already


def warned_by_launcher() -> list[str]:
    """The warnings `bench run --nproc`'s launcher said before starting this process (rank 0 meets
    some again when it builds the models); [] outside it."""
    if not launched_by_bench():
        return []
    try:
        with open(os.path.join(os.environ[ERRORS_ENV], WARNED_FILE), encoding="utf-8") as f:
            return [str(t) for t in json.load(f)]
    except (OSError, ValueError):
        return []


STOP_GRACE_S = 30.0  # how long a stopped process may take (a checkpoint to keep, a claim to release)


@dataclass(frozen=True)
class Failure:
    """How a process of a launch ended otherwise than with 0: its exit code (negative: the signal that
    killed it, as subprocess says) and the order the launcher saw it in (0 first; several seen at once
    in the order of their ranks)."""
    exitcode: int
    seen: int

    def signal_name(self) -> str:
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return f"signal {-self.exitcode}"


def launch(nproc: int, args: list[str], warned: Iterable[str] = ()) -> int:
    """Run ``python -P -m bench <args>`` in ``nproc`` processes, which meet through a file in a private
    temp folder (nothing listens on the network: torchrun's rendezvous is a server on every interface
    that unpickles what it is sent), and wait for them; the exit code. As torchrun's agent does, the
    first process to fail has the others stopped (SIGTERM). A process that stopped on a user error
    printed its one line and exits 2 (75: runs held by other processes), so does this; a process that
    crashed otherwise is named in one line (exit 1); SIGTERM / Ctrl-C: the processes are stopped, exit 130 ("interrupted" is the
    caller's). ``warned``: the warnings said already, which the processes then keep to themselves."""
    root = Path(tempfile.mkdtemp(prefix="bench-nproc-"))  # the user's alone (0700)
    errors = root / "errors"
    errors.mkdir()
    portable_write_text(errors / WARNED_FILE, json.dumps(sorted(warned)))
    env = {**os.environ, ERRORS_ENV: str(errors), LAUNCHER_ENV: str(os.getpid()), STORE_ENV: str(root / "store"),
           LAUNCH_ARGV_ENV: json.dumps(sys.argv), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    env.setdefault("OMP_NUM_THREADS", "1")  # --threads still applies per process
    if loopback := _loopback_interface():  # gloo's and NCCL's own sockets: this machine only
        env.setdefault("GLOO_SOCKET_IFNAME", loopback)
        env.setdefault("NCCL_SOCKET_IFNAME", loopback)
    if home := _imported_from_dropped_path():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (home, env.get("PYTHONPATH"))))
    stop: list[int] = []  # the signal the launcher was sent
    names = [n for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if hasattr(signal, n)]  # Windows lacks two
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {getattr(signal, n): signal.getsignal(getattr(signal, n)) for n in names}
        for number in handlers:
            signal.signal(number, lambda signum, frame: stop.append(signum))
    procs: list = []
    try:
        # -P: the current folder is not imported from (a numpy.py where the user stands would run)
        for r in range(nproc):  # one by one: those started are stopped if a later one cannot start
            # a session of its own: a terminal's Ctrl-C reaches the launcher alone, which stops them with
            # one SIGTERM (a SIGINT to each, then the launcher's SIGTERM, cut their cleanup short)
            procs.append(subprocess.Popen([sys.executable, "-P", "-m", "bench", *args], start_new_session=True,
                                          env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}))
        failures = _wait(procs, stop)
        if stop:
            if stop[0] in (signal.SIGINT, signal.SIGTERM):
                return 130  # as one process: the caller says "interrupted" once
            print(f"aborted ({signal.Signals(stop[0]).name})", file=sys.stderr)
            return 128 + stop[0]
        return _failed(failures, nproc, errors) if failures else 0
    finally:
        _stop(procs)
        for number, handler in handlers.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        shutil.rmtree(root, ignore_errors=True)


def _wait(procs: list, stop: list[int]) -> dict[int, Failure]:
    """Wait for every process; the first failure (or a signal to the launcher) has the others stopped.
    The failures by rank, each with the order it was seen in."""
    failures: dict[int, Failure] = {}
    running = set(range(len(procs)))
    while running:
        for rank in sorted(running):
            if (code := procs[rank].poll()) is not None:
                running.discard(rank)
                if code != 0:
                    failures[rank] = Failure(code, len(failures))
        if (failures or stop) and running:
            _stop([procs[r] for r in running])
            for rank in sorted(running):
                code = procs[rank].wait()
                if code != 0:
                    failures[rank] = Failure(code, len(failures))
            break
        time.sleep(0.05)
    return failures


def _stop(procs: list) -> None:
    """SIGTERM to the processes still running (they stop as on Ctrl-C), SIGKILL to those that take
    longer than STOP_GRACE_S."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _loopback_interface() -> str | None:
    """This machine's loopback interface (lo on Linux, lo0 on macOS), for the processes' sockets."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


def _imported_from_dropped_path() -> str | None:
    """The folder this bench was imported from where ``-P`` would drop it (``python -m bench`` in a
    source checkout, not installed): the processes run the launcher's code, from there alone."""
    home = Path(__file__).resolve().parents[1]
    if sys.flags.safe_path or not sys.path or home != Path(sys.path[0] or os.getcwd()).resolve():
        return None
    return str(home)


def _kept_line(errors: Path, rank: int) -> str:
    """The error line process ``rank`` left (``note_error``), or ""."""
    kept = errors / f"{rank}.txt"
    return kept.read_text(encoding="utf-8").rstrip() if kept.is_file() else ""


_STOPPED = (130, -int(signal.SIGTERM), -int(signal.SIGINT))  # stopped by the agent, or interrupted


def _failed(failed: dict[int, Failure], nproc: int, errors: Path) -> int:
    """The exit code of a failed launch, its one line said. The cause is the first process to fail
    that is not a consequence: the launcher stops the others once one fails (SIGTERM, exit 130), and a
    process whose collective lost the failed one exits LOST_PEER_EXIT, perhaps in the same instant."""
    failures = sorted(failed.items(), key=lambda kv: kv[1].seen)
    causes = [(r, f) for r, f in failures if f.exitcode not in (*_STOPPED, LOST_PEER_EXIT)]
    if not causes:
        lost = [r for r, f in failures if f.exitcode == LOST_PEER_EXIT]
        if not lost:
            return 130  # interrupted: the caller says so, once
        detail = _kept_line(errors, lost[0]).removeprefix("error: ")
        print(f"error: process {lost[0]} of {nproc} stopped: {detail or 'another process of this run is gone'}, "
              "without a failure of its own seen here (bench run --resume continues from the last checkpoint)",
              file=sys.stderr)
        return 1
    rank, failure = causes[0]
    if failure.exitcode in (BenchError.exit_code, HeldError.exit_code):  # a user error (or runs held): the
        # first process's line where it met one too (the others met the same, as a rule), else the line of
        # the one that met it
        code = failure.exitcode
        for who in (0, rank) if failed.get(0) is not None and failed[0].exitcode == code else (rank,):
            if text := _kept_line(errors, who):
                print(text + (f" (process {who} of {nproc})" if who else ""), file=sys.stderr)
                return code
        return code  # its line is above (a process that could not leave it)
    if failure.exitcode > 0:  # a crash: its traceback is above
        print(f"error: process {rank} of {nproc} failed (exit code {failure.exitcode}); its output is above",
              file=sys.stderr)
    else:  # no output of its own: SIGKILL is what the kernel's out-of-memory killer sends
        hint = ": out of memory? (the system log says whether the OOM killer took it)" \
            if failure.signal_name() == "SIGKILL" else ""
        print(f"error: process {rank} of {nproc} was killed by {failure.signal_name()}{hint}; the others were "
              "stopped (bench run --resume continues from the last checkpoint)", file=sys.stderr)
    return 1
