"""Fault injection: `bench run` is SIGKILLed at seeded random points — inside a training step,
halfway through writing a checkpoint, inside evaluation — then `bench run --resume` finishes it.
The final record must equal an uninterrupted run's (CPU, one thread, float64), and a half-written
checkpoint must never be read."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import records
from bench.errors import BenchError

# Runs `bench run` in this process after arming one fault: FAULT=<phase>:<n> kills the process
# at the n-th (1-based) training loss, torch.save, or per-case scoring call.
DRIVER = r"""
import io, os, signal, sys
import torch
import bench.metrics, bench.train
from bench.cli import main

phase, n = os.environ["FAULT"].split(":")
n, calls = int(n), [0]

def due():
    calls[0] += 1
    return calls[0] == n

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def kill_at_nth_call(module, name):
    real = getattr(module, name)
    def wrapper(*a, **k):
        if due():
            die()
        return real(*a, **k)
    setattr(module, name, wrapper)

if phase == "train":
    kill_at_nth_call(bench.train, "segmentation_loss")
elif phase == "checkpoint":
    save = torch.save
    def half_save(obj, f, *a, **k):
        if not due():
            return save(obj, f, *a, **k)
        buf = io.BytesIO()
        save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # the bytes a kill mid-write leaves behind
        f.flush()
        os.fsync(f.fileno())
        die()
    torch.save = half_save
elif phase == "eval":
    kill_at_nth_call(bench.metrics, "score_case")
elif phase != "none":
    raise SystemExit(f"unknown FAULT phase {phase}")
sys.argv = ["bench", *sys.argv[1:]]
main()
"""

# 3 epochs of 3 steps (synthetic Synapse has 96 training slices and 3 test volumes), a
# checkpoint every epoch
RUN = ["run", "--models", "vmunet", "--tiny", "--dataset", "synapse", "--protocol", "drift",
       "--epochs", "3", "--max-iterations", "0", "--batch-size", "32", "--img-size", "32",
       "--threads", "1", "--no-progress", "--device", "cpu"]  # bit-identical resumes: a CPU claim
# git_commit and code_digest too (and train.commits): they change when the tree is edited while the
# reference and the resumed run are minutes apart, which says nothing about resuming; launch: its command line
VOLATILE = ("started_at", "finished_at", "wall_time_s", "git_commit", "code_digest", "launch")


def _run(tmp_path: Path, data: Path, results: Path, fault: str, *extra: str) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": fault}
    return subprocess.run([sys.executable, str(driver), *RUN, "--data-root", str(data), "--results", str(results),
                           *extra], capture_output=True, text=True, env=env, timeout=600, encoding="utf-8")


def _comparable(rec: dict) -> dict:
    rec = {k: v for k, v in rec.items() if k not in VOLATILE}
    rec["train"] = {k: v for k, v in rec["train"].items() if k not in ("time_s", "resumed_from", "resumes", "commits")}
    return rec


def _final_weights(results: Path) -> dict:
    (run,) = (results / "runs").iterdir()
    return torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"]


def _record(results: Path) -> dict:
    df = records.load(results)  # validates every record
    assert len(df) == 1
    (path,) = (results / "records").rglob("*.json")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run; its record is what every interrupted run must end with."""
    from bench.data import synthetic_root

    tmp = tmp_path_factory.mktemp("faults")
    data = synthetic_root("synapse", tmp / "synth")
    proc = _run(tmp, data, tmp / "reference", "none:0")
    assert proc.returncode == 0, proc.stderr
    return data, tmp / "reference"


def test_reference_run_has_the_expected_shape(reference):
    rec = _record(reference[1])
    assert rec["train"]["epochs"] == 3 and rec["train"]["iterations"] == 9 and rec["train"]["resumed_from"] is None
    assert len(rec["per_case"]) == 3 * 8  # 3 volumes × 8 organs


# Seeded random kill points: the n-th call in each phase. 9 training steps, drawn after epoch 0's
# checkpoint (a kill before it is a plain restart); 6 checkpoint saves (epoch_0000 + last after
# epochs 0 and 1, last + final after epoch 2); 3 scored volumes.
_draw = random.Random(20261202)
POINTS = [("train", _draw.randint(4, 9)), ("checkpoint", _draw.randint(1, 5)), ("eval", _draw.randint(1, 3)),
          ("checkpoint", 6)]  # and the last save: killed writing final.pt, after the final last.pt
# the epoch whose complete last.pt the resumed run starts after (None: it starts afresh)
RESUMES_AFTER = {"train": lambda n: (n - 1) // 3 - 1, "checkpoint": lambda n: [None, None, 0, 0, 1, 2][n - 1],
                 "eval": lambda n: 2}


@pytest.mark.parametrize("phase, n", POINTS, ids=[f"{p}-{n}" for p, n in POINTS])
def test_resume_after_sigkill_gives_the_uninterrupted_record(reference, tmp_path, phase, n):
    data, ref_results = reference
    results = tmp_path / "results"
    killed = _run(tmp_path, data, results, f"{phase}:{n}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not list(results.glob("records/**/*.json"))  # nothing claims the run finished
    ckpts = next((results / "runs").iterdir()) / "checkpoints"
    if phase == "checkpoint":
        (half,) = ckpts.glob(".*.tmp")  # the half-written file, under a name nothing reads
        with pytest.raises((RuntimeError, EOFError, pickle.UnpicklingError)):  # torch's type varies with the cut
            torch.load(half, weights_only=True)
    if (ckpts / "last.pt").exists():  # whatever last.pt is, it is complete
        torch.load(ckpts / "last.pt", weights_only=True)

    resumed = _run(tmp_path, data, results, "none:0", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    got = _record(results)
    assert got["train"]["resumed_from"] == RESUMES_AFTER[phase](n)
    assert got["train"]["resumes"] == ([] if got["train"]["resumed_from"] is None else [got["train"]["resumed_from"]])
    assert _comparable(got) == _comparable(_record(ref_results))
    # the half-written file was never read; its name says which process of this host wrote it, and that
    # one is gone, so the resumed run removed it (fileio.remove_orphans); it stayed for a day before
    assert not list(ckpts.glob(".*.tmp"))
    ref, ours = _final_weights(ref_results), _final_weights(results)  # the same weights, bit for bit
    assert ref.keys() == ours.keys() and all(torch.equal(ref[k], ours[k]) for k in ref)


def test_a_truncated_checkpoint_is_refused_not_loaded(reference, tmp_path):
    from bench.train import load_checkpoint

    (run,) = (reference[1] / "runs").iterdir()
    last = tmp_path / "last.pt"
    blob = (run / "checkpoints" / "last.pt").read_bytes()
    last.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(BenchError, match=r"last\.pt: unreadable checkpoint .*delete it to restart"):
        load_checkpoint(last)


def test_a_claim_of_another_host_holds_while_fresh_and_is_taken_over_when_stale(tmp_path):
    """On a shared disk a claim of another machine cannot be checked by pid: it holds while its
    process renews its time stamp, and is taken over once older than bench.claim.STALE_S."""
    import json
    import os
    import time
    from unittest import mock

    from bench.claim import CLAIM, STALE_S, Claim, claim_run

    path = tmp_path / "runs" / "r1" / CLAIM
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"writer": "4242@node7.cluster~", "started": "2026-12-05T03:00:00+00:00"}),
                    encoding="utf-8")
    renewed = 1796439900  # 2026-12-05 03:05 UTC
    os.utime(path, (renewed,) * 2)
    with mock.patch("time.time", return_value=renewed + 60):
        # a requeued job's user learns when it was last renewed, when it goes stale, and the way out sooner
        assert claim_run(tmp_path, "r1") == (
            f"pid 4242 on node7.cluster (claim {path}, last renewed 2026-12-05 03:05 UTC; taken over from "
            "2026-12-05 03:15 UTC unless renewed; sooner by deleting that file, once that process is known dead)")
    os.utime(path, (time.time() - STALE_S - 5,) * 2)
    taken = claim_run(tmp_path, "r1")
    assert isinstance(taken, Claim) and json.loads(path.read_text(encoding="utf-8"))["pid"] == os.getpid()
    assert claim_run(tmp_path, "r1").startswith(f"pid {os.getpid()} on ")  # ours now: a second taker waits
    taken.release()
    assert not path.parent.exists()  # nothing left, not a claim moved aside: the folder holding only it went too


def test_an_empty_claim_holds_only_while_its_process_may_still_be_writing_it(tmp_path):
    """A concurrency journey: a process killed between creating its claim and writing it left an empty
    file, which names no pid and so held the run for the 10 minutes of another host's claim."""
    import os
    import time

    from bench.claim import CLAIM, EMPTY_STALE_S, Claim, claim_run

    path = tmp_path / "runs" / "r1" / CLAIM
    path.parent.mkdir(parents=True)
    path.write_text("", encoding="utf-8")
    assert claim_run(tmp_path, "r1") == f"another process (claim {path})"  # being written this instant
    os.utime(path, (time.time() - EMPTY_STALE_S - 1,) * 2)
    taken = claim_run(tmp_path, "r1")
    assert isinstance(taken, Claim)
    taken.release()


def test_claims_of_this_host_go_by_the_pid_and_a_taken_over_claim_is_never_removed(tmp_path):
    """A suspended job's claim (old time stamp, live process) was taken over after 10 minutes; a
    second taker could move a fresh claim aside, and a released claim removed whatever file bore the
    name, another process's too."""
    import json
    import os
    import subprocess
    import sys
    import time

    from bench import claim as claims
    from bench.fileio import writer_tag

    path = tmp_path / "runs" / "r1" / claims.CLAIM
    path.parent.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(json.dumps({"writer": writer_tag(live.pid), "started": "2026-12-05T03:00:00+00:00",
                                    "proc_start": claims._proc_start(live.pid)}), encoding="utf-8")
        os.utime(path, (time.time() - 10 * claims.STALE_S,) * 2)  # not renewed for long: suspended, say
        assert claims.claim_run(tmp_path, "r1").startswith(f"pid {live.pid} on ")
    finally:
        live.kill()
        live.wait()
    taken = claims.claim_run(tmp_path, "r1")  # its process is gone now: taken over at once
    assert isinstance(taken, claims.Claim)
    # another process took the run over from us (say we were judged dead): our release leaves its claim
    os.unlink(path)
    path.write_text(json.dumps({"writer": writer_tag(1), "started": "2026-12-05T04:00:00+00:00"}), encoding="utf-8")
    taken.release()
    assert path.exists() and json.loads(path.read_text(encoding="utf-8"))["writer"] == writer_tag(1)
    # a claim judged dead, replaced by a live taker's before our rename: put back, not removed
    judged = path.read_text(encoding="utf-8")
    os.unlink(path)
    path.write_text(json.dumps({"writer": writer_tag(), "started": "2026-12-05T04:01:00+00:00"}), encoding="utf-8")
    assert claims._remove_dead(path, judged) is False and path.exists()
    assert [p.name for p in path.parent.iterdir()] == [claims.CLAIM]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a process's start time is read from /proc")
def test_a_claim_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    """A claimer killed long ago whose pid the system gave to another, live process: the claim names a start
    time that process never had, so it is dead and taken over, not obeyed until that process ends."""
    import json

    from bench import claim as claims
    from bench.fileio import writer_tag

    path = tmp_path / "runs" / "r1" / claims.CLAIM
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"writer": writer_tag(), "pid": os.getpid(), "proc_start": "1",
                                "started": "2026-12-05T03:00:00+00:00"}), encoding="utf-8")
    taken = claims.claim_run(tmp_path, "r1")
    assert isinstance(taken, claims.Claim), taken
    taken.release()


def _mtime_after(path: Path, wait_s: float, until) -> float:
    """path's mtime once until(mtime) holds, or after wait_s (a loaded machine runs the refresh late)."""
    import time

    end = time.monotonic() + wait_s
    while not until(mtime := path.stat().st_mtime) and time.monotonic() < end:
        time.sleep(0.05)
    return mtime


def test_a_held_claim_is_renewed_while_its_run_goes_on_and_not_once_taken_over(tmp_path, monkeypatch):
    """Another host takes over a claim older than STALE_S, so a run training longer keeps its claim's time
    stamp fresh; once another process took the claim over, this one must not keep that one's claim fresh
    (it would hold the run after the taker died)."""
    import json
    import time

    from bench import claim as claims

    monkeypatch.setattr(claims, "REFRESH_S", 0.05)
    held = claims.claim_folder(tmp_path / "run")
    try:
        os.utime(held.path, (time.time() - 3600,) * 2)
        assert time.time() - _mtime_after(held.path, 10, lambda m: time.time() - m < 60) < 60
        held.path.unlink()
        held.path.write_text(json.dumps({"writer": "1@another-host.example:1~"}), encoding="utf-8")
        old = time.time() - 3600
        os.utime(held.path, (old, old))
        time.sleep(0.5)  # ten refresh periods: time for a wrong renewal to show
        assert abs(held.path.stat().st_mtime - old) < 1
    finally:
        held.release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a process's start time is read from /proc")
def test_a_process_named_in_bytes_that_are_not_utf8_has_its_start_time_read(tmp_path):
    """A process's name (in /proc/<pid>/stat) is any bytes its program file's name has: one not UTF-8 raised
    UnicodeDecodeError where its claim was judged."""
    import shutil

    from bench import claim as claims

    program = os.path.join(os.fsencode(tmp_path), b"sl\xffep")
    shutil.copy("/bin/sleep", os.fsdecode(program))
    named = subprocess.Popen([program, "30"])
    try:
        ticks = Path(f"/proc/{named.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19].decode()
        assert claims._proc_start(named.pid) == ticks
    finally:
        named.kill()
        named.wait()


def test_a_claim_copied_with_its_results_folder_holds_the_original_only(tmp_path):
    """An odd-environment journey: `cp -r` of a folder whose run was training copied its claim, and
    `bench run --resume` on the copy skipped the run as "being run by pid …", that process training the
    original. The original's claim still holds, also through a link to its folder."""
    import shutil

    from bench.claim import Claim, claim_run

    held = claim_run(tmp_path / "a", "r1")
    try:
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        (tmp_path / "link").symlink_to(tmp_path / "a")
        assert claim_run(tmp_path / "link", "r1").startswith(f"pid {os.getpid()} on ")
        copy = claim_run(tmp_path / "b", "r1")
        assert isinstance(copy, Claim)
        copy.release()
    finally:
        held.release()


def test_a_claim_whose_folder_a_release_just_removed_is_made_again(tmp_path, monkeypatch):
    """A diff review: another process's release removes an empty run folder between this one's mkdir and
    its open; the FileNotFoundError ended the grid with a traceback."""
    from bench import claim as claims

    real = os.open

    def folder_gone_first(path, *a, **kw):
        monkeypatch.setattr(claims.os, "open", real)
        os.rmdir(os.path.dirname(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(claims.os, "open", folder_gone_first)
    taken = claims.claim_run(tmp_path, "r1")
    assert isinstance(taken, claims.Claim) and (tmp_path / "runs" / "r1" / claims.CLAIM).is_file()
    taken.release()


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    """Slurm (and torchrun) send SIGTERM before SIGKILL: the process died with no word, leaving its
    claim and a temp file. Now it stops as on Ctrl-C: cleanup, one line, exit 130; --resume goes on."""
    import time

    from bench.data import synthesize

    data = synthesize("synapse", tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "run", "--models", "unet", "--tiny", "--dataset", "synapse", "--data-root",
           str(data), "--protocol", "smoke", "--img-size", "32", "--epochs", "1000", "--max-iterations", "100000",
           "--threads", "1", "--no-progress", "--results", str(tmp_path / "res")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    deadline = time.monotonic() + 120
    # an epoch trained (its checkpoint written), far from the last: the TensorBoard file, which this waited
    # for, is there before the first step, and a run stopped before it leaves no folder (nor its log)
    while not list((tmp_path / "res").glob("runs/*/checkpoints/last.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # the run it was training named, and when its protocol (smoke: checkpoint_every 1) writes checkpoints
    assert re.search(r"interrupted while training synapse-smoke-unet-s0-\w+; the same command with --resume continues "
                     r"it from its last checkpoint \(its protocol writes one at every epoch.s end\); without --resume, "
                     r"unfinished runs train afresh", err), err
    (log,) = (tmp_path / "res").glob("runs/*/run.log")
    assert log.read_text(encoding="utf-8").splitlines()[-1].endswith(
        "UTC  interrupted while training (Ctrl-C or SIGTERM)")
    assert "Traceback" not in err
    leftovers = [p.name for p in (tmp_path / "res").rglob(".*") if p.name != ".bench-synthetic.json"]
    assert leftovers == []  # no claim, no temp file


def _stat(pid: int) -> list[str] | None:
    """Fields of Linux's /proc/<pid>/stat after the command's name (state, parent, ...); None: no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    except OSError:
        return None


def _state(pid: int) -> str | None:
    return (_stat(pid) or [None])[0]


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and (_stat(int(p.name)) or [None, None])[1] == str(pid)]


def test_an_interrupt_inside_add_scalar_delays_the_exit_by_one_flush_at_most(tmp_path, monkeypatch):
    """A SIGTERM (raised as KeyboardInterrupt) landing inside add_scalar's queue notify, between waking
    the writer thread and dropping its waiter, lost the next wake-up: close() then waited for the thread's
    next timed flush, 120 s by default, and under Slurm the job was killed before it said a word. Here the
    interrupt is raised at that very point (the waiter list's remove); close must end within one flush."""
    import collections
    import time

    from bench import run

    class RaisesOnce(collections.deque):
        raised = False

        def remove(self, waiter):
            if not RaisesOnce.raised:
                RaisesOnce.raised = True
                raise KeyboardInterrupt
            super().remove(waiter)

    assert run.TB_FLUSH_S <= 10  # well inside Slurm's 30 s between SIGTERM and SIGKILL
    monkeypatch.setattr(run, "TB_FLUSH_S", 1)  # the test waits one flush
    tb = run._TensorBoard(tmp_path)
    tb.add_scalar("loss", 1.0, 0)
    time.sleep(0.3)  # the writer thread has written the event and waits on its queue for the next
    queue = tb._writer._get_file_writer().event_writer._async_writer._byte_queue  # tensorboard's own queue
    queue.not_empty._waiters = RaisesOnce(queue.not_empty._waiters)
    with pytest.raises(KeyboardInterrupt):
        tb.add_scalar("loss", 2.0, 1)
    assert RaisesOnce.raised
    start = time.monotonic()
    tb.close()
    assert time.monotonic() - start < 10  # 120 s, the default flush, without the fix


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the loader's workers in Linux's /proc")
def test_sigterm_to_the_process_group_says_one_line_with_loader_workers(tmp_path):
    """Slurm's scancel and time limit signal the whole process group: the data loader's workers died
    of it, and torch printed 17 lines ("DataLoader worker (pid N) is killed by signal: Terminated")
    before bench's one. The workers leave quietly, and none is left behind."""
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "run", "--models", "unet", "--tiny", "--dataset", "synapse", "--synthetic",
           "--protocol", "smoke", "--img-size", "32", "--max-iterations", "0", "--epochs", "100000", "--threads", "1",
           "--workers", "2", "--no-progress", "--results", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, encoding="utf-8")  # a group of its own, as a batch job's
    deadline = time.monotonic() + 120
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:  # the loader's workers started
        time.sleep(0.2)
    time.sleep(2.0)  # their SIGTERM handler set (a worker killed in its first instants is torch's to report)
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    try:  # a few seconds; a lost TensorBoard wake-up stalled the exit for 120 s (test above)
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # a hung run is not left training behind the test
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, err
    assert err.startswith("interrupted while training ") and err.count("\n") == 1, err
    # none left behind: ignoring SIGTERM, a worker outlived a training process that waited for it at exit
    assert not [pid for pid in workers if _state(pid) not in (None, "Z")]
