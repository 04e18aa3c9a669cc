"""Several processes, one run (bench.distributed): batch shares, the global loss's gradient under
DDP-style averaging, and a 2-process gloo `bench run --nproc 2` against a single-process run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.errors import BenchError
from bench.losses import segmentation_loss
from bench.train import EpochBatches, share_sizes


@pytest.mark.parametrize("n, batch, world, draws", [(10, 4, 1, 0), (10, 4, 2, 0), (10, 4, 3, 0), (7, 3, 2, 0),
                                                   (5, 8, 4, 0), (5, 4, 3, 6), (3, 2, 2, 5)])
def test_rank_shares_concatenate_to_the_global_batches(n, batch, world, draws):
    one = EpochBatches(n, batch, seed=5, draws=draws)
    ranks = [EpochBatches(n, batch, seed=5, rank=r, world=world, draws=draws) for r in range(world)]
    for s in [one, *ranks]:
        s.set_epoch(3)
    per_rank = [list(s) for s in ranks]
    for step, global_batch in enumerate(one):
        shares = [r.shares()[step] for r in ranks]
        assert all(b == len(global_batch) for _, b in shares)
        real = [per_rank[r][step] for r in range(world) if shares[r][0] > 0]
        assert sum(real, []) == global_batch  # contiguous, in order, nothing lost or repeated
        for r in range(world):  # a rank with no real item gets one placeholder (its weight is 0)
            assert len(per_rank[r][step]) == max(shares[r][0], 1)
    assert len(one) == len(ranks[0]) == (draws or -(-n // batch))
    assert share_sizes(7, 3) == [3, 2, 2] and share_sizes(2, 4) == [1, 1, 0, 0]


def test_more_processes_than_batch_items_are_refused(tmp_path):
    """Batch 2 over 4 processes: two ranks would train on a placeholder at every step (in SyncBatchNorm's
    statistics on CUDA), so bench run refuses it before its processes start, and so does a direct torchrun."""
    with pytest.raises(BenchError, match=r"--nproc 4: the batch of 2 cannot be shared by 4 processes .* "
                                         r"use --nproc 2 or fewer"):
        EpochBatches(10, 2, seed=0, rank=0, world=4)
    out = _bench("run", "--models", "unet", "--tiny", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                 "--batch-size", "2", "--nproc", "4", "--device", "cpu", "--results", str(tmp_path), "--no-progress")
    assert out.returncode == 2 and "error: --nproc 4: the batch of 2 cannot be shared" in out.stderr
    assert not (tmp_path / "synthetic").exists()  # refused before the synthetic data is written


def test_a_gpu_index_is_refused_where_each_process_takes_its_rank_gpu(monkeypatch):
    """--device cuda:1 with several processes: distributed.init gives each process the GPU of its local
    rank, so the index would be dropped unsaid; refused by the launcher's check and under torchrun."""
    from bench import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(BenchError, match=r"--device cuda:1 with 2 processes: .* CUDA_VISIBLE_DEVICES"):
        distributed.check_nproc(2, torch.device("cuda:1"), 8)
    distributed.check_nproc(1, torch.device("cuda:1"), 8)  # one process keeps the GPU it was given
    distributed.check_nproc(2, torch.device("cuda"), 8)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "launched_by_torchrun", lambda: True)
    with pytest.raises(BenchError, match=r"--device cuda:0 with 2 processes"):
        distributed.init(torch.device("cuda:0"))


_GRAD_WORKER = r"""
import os, sys, torch, torch.distributed as dist
from bench.losses import segmentation_loss
rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
torch.manual_seed(0)
results = {}
CASES = ((4, 5, "transunet"), (1, 5, "transunet"), (4, 1, "transunet"), (4, 5, "nnunet"))
for channels, n, dice_loss in CASES:  # multi-class and binary; (4, 1): a placeholder rank
    weight = torch.randn(channels, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, channels, (n, 6, 6)) if channels > 1 else torch.rand(n, 1, 6, 6, dtype=torch.float64)
    sizes = [n // world + (r < n % world) for r in range(world)]
    lo = sum(sizes[:rank])
    mine = slice(lo, lo + sizes[rank]) if sizes[rank] else slice(0, 1)
    logits = torch.einsum("cd,ndhw->nchw", weight, x[mine])
    loss = segmentation_loss(logits, y[mine], ce=0.4, dice=0.6, bce=1.0, share=(sizes[rank], n), dice_loss=dice_loss)
    loss.backward()
    grad = weight.grad.clone()
    dist.all_reduce(grad)
    value = torch.tensor([loss.item()], dtype=torch.float64)
    dist.all_reduce(value)
    results[f"{channels}-{n}-{dice_loss}"] = {"grad": (grad / world).tolist(), "loss": value.item() / world}
if rank == 0:
    import json
    json.dump(results, open(out, "w"))
dist.destroy_process_group()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_epoch_of_draws_samples_with_replacement():
    s = EpochBatches(3, 4, seed=5, draws=6)  # nnU-Net: each batch drawn at random, repeats allowed
    s.set_epoch(2)
    batches = list(s)
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    pairs = sum(batches, [])
    assert [d for _, d in pairs] == list(range(24))  # every draw has its own position in the epoch
    counts = [sum(i == k for i, _ in pairs) for k in range(3)]
    assert sum(counts) == 24 and all(c > 0 for c in counts) and max(counts) > 8  # not passes over the items
    assert list(s) == batches  # (seed, epoch) fixes the draws
    s.set_epoch(3)
    assert list(s) != batches


def test_sharded_loss_has_the_global_batch_gradient(tmp_path):
    """DDP averages gradients over ranks; with share weighting and summed Dice statistics that
    average is the single-process gradient of the whole batch (float64: to rounding)."""
    script, out, port, world = tmp_path / "worker.py", tmp_path / "grads.json", _free_port(), 2
    script.write_text(_GRAD_WORKER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(world), str(port), str(out)], env=env,
                              stderr=subprocess.PIPE, text=True, encoding="utf-8") for r in range(world)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    got = json.loads(out.read_text(encoding="utf-8"))
    torch.manual_seed(0)
    for channels, n, dice_loss in ((4, 5, "transunet"), (1, 5, "transunet"), (4, 1, "transunet"), (4, 5, "nnunet")):
        weight = torch.randn(channels, 2, dtype=torch.float64, requires_grad=True)
        x = torch.randn(n, 2, 6, 6, dtype=torch.float64)
        y = torch.randint(0, channels, (n, 6, 6)) if channels > 1 else torch.rand(n, 1, 6, 6, dtype=torch.float64)
        loss = segmentation_loss(torch.einsum("cd,ndhw->nchw", weight, x), y, ce=0.4, dice=0.6, bce=1.0,
                                 dice_loss=dice_loss)
        loss.backward()
        ours = got[f"{channels}-{n}-{dice_loss}"]
        assert ours["loss"] == pytest.approx(loss.item(), rel=1e-12, abs=1e-14)
        torch.testing.assert_close(torch.tensor(ours["grad"], dtype=torch.float64), weight.grad, rtol=1e-10, atol=1e-13)


def _bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, encoding="utf-8",
                          env=env, timeout=600)


def _only_record(results: Path) -> dict:
    files = list((results / "records").rglob("*.json"))
    assert len(files) == 1, files  # rank 0 alone writes
    return json.loads(files[0].read_text(encoding="utf-8"))


def test_two_gloo_processes_match_one_process(tmp_path):
    """`bench run --nproc 2` (gloo) against one process with the same global batch.
    Batch 3 splits 2 + 1, so the share weighting is exercised; float64 and no drop-path, so the
    only difference left is summation order. Stated tolerance: losses 1e-9 relative, metrics 1e-6."""
    common = ["run", "--models", "vmunet", "--tiny", "--set", "drop_path_rate=0.0", "--dataset", "synapse",
              "--protocol", "drift", "--max-iterations", "5", "--batch-size", "3", "--img-size", "32",
              "--threads", "1", "--no-progress", "--device", "cpu"]  # gloo processes, on a GPU machine too
    one = _bench(*common, "--synthetic", "--results", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    synth = next((tmp_path / "one" / "synthetic").iterdir())
    two = _bench(*common, "--data-root", str(synth), "--results", str(tmp_path / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("DSC") == 1  # rank 0 alone reports
    a, b = _only_record(tmp_path / "one"), _only_record(tmp_path / "two")
    # the command line as typed, --nproc in it, not that of the process the launcher started
    assert b["launch"]["argv"][1:] == [*common, "--data-root", str(synth), "--results", str(tmp_path / "two"),
                                       "--nproc", "2"]
    assert a["train"]["world_size"] == 1 and b["train"]["world_size"] == 2
    assert a["set_keys"] == b["set_keys"] == ["drop_path_rate"]  # what --set changed, for the boards' labels
    assert a["train"]["iterations"] == b["train"]["iterations"] == 5
    assert b["train"]["epoch_losses"] == pytest.approx(a["train"]["epoch_losses"], rel=1e-9)
    for name, value in a["metrics"].items():
        if isinstance(value, float):
            assert b["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), name
    ckpt = torch.load(next((tmp_path / "two" / "runs").iterdir()) / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2


def test_resume_refuses_a_checkpoint_of_another_world_size(tmp_path):
    from bench.data import open_dataset, synthetic_root
    from bench.protocol import load_protocol
    from bench.registry import create_model, get_entry
    from bench.train import train_model

    ds = open_dataset("synapse", synthetic_root("synapse", tmp_path / "synth"))
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=2, batch_size=4, checkpoint_every=1)
    model = create_model("unet", num_classes=9, in_chans=1, img_size=32, **get_entry("unet").tiny)
    train_model(model, ds, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state.update(world_size=2, rng_ranks=[state["rng"], state["rng"]])
    torch.save(state, last)
    with pytest.raises(BenchError, match=r"last\.pt: written by 2 process\(es\); resume it with --nproc 2"):
        train_model(model, ds, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"), resume=True)


RANK_WATCH = r"""
import hashlib, os, time
import torch
import bench.records, bench.run, bench.train

def watch(module, name, said=lambda: "", wait=0.0):  # "<name> <rank> <what>" in RANK_LOG at each return
    real = getattr(module, name)
    def wrapper(*a, **k):
        time.sleep(wait)
        out = real(*a, **k)
        with open(os.environ["RANK_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{name} {os.environ['RANK']} {said()}\n")
        return out
    setattr(module, name, wrapper)

if os.environ.get("RANK_LOG"):
    for module, name in ((bench.train, "save_checkpoint"), (bench.run, "_tensorboard")):
        watch(module, name)
    watch(bench.run, "evaluate", wait=1.0)  # rank 0 evaluates a while: the others must wait for its record
    watch(bench.records, "write_record", time.time)
    watch(bench.run, "run_one", time.time)
    # the generator dropout and drop-path draw from, at each step
    watch(bench.train, "segmentation_loss",
          lambda: hashlib.sha256(torch.random.get_rng_state().numpy().tobytes()).hexdigest()[:12])
"""


def test_killed_two_process_run_resumes_to_the_uninterrupted_record(tmp_path):
    """Both ranks SIGKILLed inside epoch 1 (tests.test_faults' driver under torchrun), then
    `--nproc 2 --resume`: every rank restores its own RNG stream (drop-path stays on), so the
    record and weights equal an uninterrupted 2-process run's. In that run rank 0 alone evaluates, writes the
    record, checkpoints and TensorBoard log, the other rank returns once the record is there (a caller
    reading it then finds it), and each rank draws dropout from its own stream."""
    from bench.data import synthetic_root
    from tests.test_faults import DRIVER, RUN, _comparable, _final_weights, _record

    data = synthetic_root("synapse", tmp_path / "synth")
    driver, watched = tmp_path / "driver.py", tmp_path / "ranks.log"
    driver.write_text(RANK_WATCH + DRIVER, encoding="utf-8")

    def run(results: Path, fault: str, *extra: str, **env: str) -> subprocess.CompletedProcess:
        # torchrun leaves a torchelastic_* folder in TMPDIR for each run killed or failed: in tmp_path
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": fault, "TMPDIR": str(tmp_path), **env}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
               *RUN, "--data-root", str(data), "--results", str(results), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, encoding="utf-8")

    full = run(tmp_path / "full", "none:0", RANK_LOG=str(watched))
    assert full.returncode == 0, full.stderr
    calls = [line.split(" ", 2) for line in watched.read_text(encoding="utf-8").splitlines()]
    assert {(name, rank) for name, rank, _ in calls} == {
        ("save_checkpoint", "0"), ("_tensorboard", "0"), ("evaluate", "0"), ("write_record", "0"),
        ("run_one", "0"), ("run_one", "1"), ("segmentation_loss", "0"), ("segmentation_loss", "1")}
    said = {(name, rank): what for name, rank, what in reversed(calls)}  # each one's first
    assert float(said["run_one", "1"]) >= float(said["write_record", "0"])
    assert said["segmentation_loss", "0"] != said["segmentation_loss", "1"]
    killed = run(tmp_path / "killed", "train:5")  # step 5 of 9: epoch 1, after epoch 0's checkpoint
    assert killed.returncode != 0 and not list((tmp_path / "killed").glob("records/**/*.json"))
    resumed = run(tmp_path / "killed", "none:0", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    said = [line for line in resumed.stderr.splitlines() if ": resuming after epoch" in line]
    assert len(said) == 1 and said[0].endswith("resuming after epoch 1 of 3 (step 3 of 9) from "
                                                f"{tmp_path / 'killed' / 'runs'}/{said[0].split()[0][:-1]}/checkpoints/last.pt"), said
    got, want = _record(tmp_path / "killed"), _record(tmp_path / "full")
    assert got["train"]["resumed_from"] == 0 and got["train"]["world_size"] == 2
    assert _comparable(got) == _comparable(want)
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


FAILING_RANK = r"""
import os, sys
import bench.train
from bench.cli import main
from bench.errors import BenchError

real, calls = bench.train.segmentation_loss, [0]

def loss(*a, **k):  # rank 1 alone fails at its 3rd step, while rank 0 waits in DDP's gradient all-reduce
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 3:
        raise BenchError("injected failure on rank 1")
    return real(*a, **k)

bench.train.segmentation_loss = loss
sys.argv = ["bench", *sys.argv[1:]]
main()
"""


def test_a_rank_that_fails_mid_training_ends_the_run_with_its_error(tmp_path):
    """The failing rank exits at once with its one-line error, and torchrun stops the others: it used
    to enter a barrier first, a collective the other ranks (in the gradient all-reduce) never meet,
    so the run hung until the process-group timeout (4 h by default)."""
    from bench.data import synthetic_root
    from tests.test_faults import RUN

    data = synthetic_root("synapse", tmp_path / "synth")
    driver = tmp_path / "driver.py"
    driver.write_text(FAILING_RANK, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_DIST_TIMEOUT_S": "120", "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
           *RUN, "--data-root", str(data), "--results", str(tmp_path / "res")]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, encoding="utf-8")
    assert proc.returncode != 0 and "error: injected failure on rank 1" in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 90, "the run waited for the process-group timeout"
    assert not list((tmp_path / "res").glob("records/**/*.json"))


def test_a_timeout_that_is_not_a_number_is_named(monkeypatch):
    from bench import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, before the process group exists
    for bad in ("4h", "inf", "-5", "0"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(BenchError, match=rf"BENCH_DIST_TIMEOUT_S='{bad}': expected seconds \(a positive number\)"):
            distributed.init(torch.device("cpu"))


def _fake_processes(monkeypatch, ends=None, stopped=None, kept=None):
    """subprocess.Popen for distributed.launch: process r exits with ``ends[r]`` at once, or runs until
    stopped and then exits with ``stopped[r]`` (-15, SIGTERM's, by default), having left ``kept[r]`` as
    its error line (as cli.main does: distributed.note_error). The processes started: (argv, env)."""
    from bench import distributed

    started = []

    class Process:
        def __init__(self, argv, env, start_new_session=False):
            assert start_new_session  # a terminal's Ctrl-C reaches the launcher alone, which stops them once
            started.append((argv, env))
            self.rank = int(env["RANK"])
            self.code = (ends or {}).get(self.rank)
            if self.rank in (kept or {}):
                (Path(env[distributed.ERRORS_ENV]) / f"{self.rank}.txt").write_text(kept[self.rank], encoding="utf-8")

        def poll(self):
            return self.code

        def terminate(self):
            if self.code is None:
                self.code = (stopped or {}).get(self.rank, -15)

        kill = terminate

        def wait(self, timeout=None):
            assert self.code is not None, "waited for a process nobody stopped"
            return self.code

    monkeypatch.setattr(distributed.subprocess, "Popen", Process)
    return started


def test_a_record_under_nproc_keeps_the_command_line_typed(monkeypatch, tmp_path):
    """Records of `bench run --nproc 2` kept the command line of the process the launcher started, which
    has no --nproc: not how the run was launched."""
    from bench import distributed, env

    typed = ["/usr/bin/bench", "run", "--models", "unet", "--nproc", "2"]
    monkeypatch.setenv(distributed.LAUNCH_ARGV_ENV, json.dumps(typed))
    assert env.launch()["argv"] == sys.argv  # outside a launch, a variable inherited is not believed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(distributed.ERRORS_ENV, str(tmp_path))
    assert env.launch()["argv"] == typed


def test_launch_starts_each_process_with_its_rank_and_the_launchs_private_folder(monkeypatch):
    """torchrun's agent (in this process) and its processes met through a server on every network
    interface, which unpickles what it is sent: anyone reaching the machine ran code as the user. The
    processes now meet through a file in a private temp folder; they run `python -P -m bench <args>`
    (a numpy.py where the user stands is not imported), one OMP thread unless the user set another."""
    from bench import distributed

    handlers = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # so that monkeypatch restores the variable afterwards
    monkeypatch.delenv("OMP_NUM_THREADS")
    started = _fake_processes(monkeypatch, ends={0: 0, 1: 0})
    assert distributed.launch(2, ["run", "--x", "1"]) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert distributed.launch(2, ["run", "--x", "1"]) == 0
    assert [argv for argv, _ in started] == [[sys.executable, "-P", "-m", "bench", "run", "--x", "1"]] * 4
    assert [(env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["OMP_NUM_THREADS"]) for _, env in started] == [
        ("0", "0", "2", "1"), ("1", "1", "2", "1"), ("0", "0", "2", "3"), ("1", "1", "2", "3")]
    assert {env[distributed.LAUNCH_ARGV_ENV] for _, env in started} == {json.dumps(sys.argv)}  # for the records
    stores = [Path(env[distributed.STORE_ENV]) for _, env in started]
    assert stores[0] == stores[1] != stores[2] and stores[0].parent.name.startswith("bench-nproc-")
    assert not any(s.parent.exists() for s in stores)  # the launch's whole temp folder goes
    assert all(env[distributed.LAUNCHER_ENV] == str(os.getpid()) for _, env in started)
    if sys.platform.startswith("linux"):  # gloo's and NCCL's own sockets on the loopback interface
        assert {(env["GLOO_SOCKET_IFNAME"], env["NCCL_SOCKET_IFNAME"]) for _, env in started} == {("lo", "lo")}
        monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")  # the user's choice is kept
        started.clear()
        distributed.launch(2, ["run"])
        assert {env["NCCL_SOCKET_IFNAME"] for _, env in started} == {"ib0"}
    assert distributed.ERRORS_ENV not in os.environ and distributed.STORE_ENV not in os.environ
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # the caller's, back


def test_launch_runs_where_the_platform_lacks_sighup_and_sigquit(monkeypatch):
    """Windows has neither: asking for their handlers was an AttributeError before any process started."""
    from bench import distributed

    monkeypatch.delattr(signal, "SIGHUP")
    monkeypatch.delattr(signal, "SIGQUIT")
    started = _fake_processes(monkeypatch, ends={0: 0, 1: 0})
    assert distributed.launch(2, ["run"]) == 0
    assert len(started) == 2


def test_a_source_checkout_run_as_python_m_bench_keeps_its_own_folder_on_the_path(monkeypatch, tmp_path):
    """-P drops the current folder from the processes' path: where the launcher's bench came from
    there (a checkout, not installed), the processes are given that folder, and only it."""
    from bench import distributed

    home = str(Path(distributed.__file__).resolve().parents[1])
    monkeypatch.setattr(sys, "path", [home, *sys.path[1:]])
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    started = _fake_processes(monkeypatch, ends={0: 0, 1: 0})
    distributed.launch(2, ["run"])
    assert {env["PYTHONPATH"] for _, env in started} == {f"{home}{os.pathsep}/elsewhere"}
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path[1:]])  # installed: imported from elsewhere
    started.clear()
    distributed.launch(2, ["run"])
    assert {env["PYTHONPATH"] for _, env in started} == {"/elsewhere"}


LOST = "error: another process of this run is gone (Connection closed by peer)"


@pytest.mark.parametrize("first, then, kept, code, said", [
    ((1, -9), (0, -15), {}, 1, "error: process 1 of 2 was killed by SIGKILL: out of memory? (the system log says "
     "whether the OOM killer took it); the others were stopped (bench run --resume continues from the last "
     "checkpoint)\n"),  # a killed process prints nothing itself
    ((1, 1), (0, 2), {0: "error: x"}, 1, "error: process 1 of 2 failed (exit code 1); its output is above\n"),  # a bug
    ((0, 2), (1, -15), {0: "error: bad input", 1: "error: bad input"}, 2, "error: bad input\n"),  # said once
    ((1, 2), (0, -15), {1: "error: bad input"}, 2, "error: bad input (process 1 of 2)\n"),  # 0 stopped before it wrote
    # 0 lost its peer (a consequence, though first), and left its line as cli.main does: 1's is the cause
    ((0, 3), (1, 2), {0: LOST, 1: "error: bad input"}, 2, "error: bad input (process 1 of 2)\n"),
    ((0, 3), (1, -15), {0: LOST}, 1, "error: process 0 of 2 stopped: another process of this run is gone "
     "(Connection closed by peer), without a failure of its own seen here (bench run --resume continues from the "
     "last checkpoint)\n"),  # the lost peer failed unseen (not this launcher's process)
    ((0, 130), (1, -15), {}, 130, ""),  # interrupted: the caller says so
    # runs held by other processes (EX_TEMPFAIL): "try again later" stays so through the launcher
    ((0, 75), (1, 75), {0: "held: 1 of 1 run(s) were being run", 1: "held: 1 of 1 run(s) were being run"}, 75,
     "held: 1 of 1 run(s) were being run\n"),
])
def test_the_process_that_failed_first_decides(monkeypatch, capsys, first, then, kept, code, said):
    """The launcher stops the other processes (SIGTERM) once one fails; they count as failures too:
    the first one is the cause (the lowest rank named a process the launcher had stopped). Processes
    leave their error line to the launcher, which says it once (every process printed it, or one
    stopped before)."""
    from bench import distributed

    _fake_processes(monkeypatch, ends={first[0]: first[1]}, stopped={then[0]: then[1]}, kept=kept)
    assert distributed.launch(2, ["run"]) == code
    assert capsys.readouterr().err == said
    assert distributed.ERRORS_ENV not in os.environ


def test_processes_started_are_stopped_when_a_later_one_cannot_start(monkeypatch):
    """The launcher's cleanup stops what it started, whatever ends the launch (here rank 1's start)."""
    from bench import distributed

    _fake_processes(monkeypatch)
    real, made = distributed.subprocess.Popen, []

    def start(argv, env, **kw):
        if env["RANK"] == "1":
            raise OSError("Resource temporarily unavailable")
        made.append(real(argv, env, **kw))
        return made[-1]

    monkeypatch.setattr(distributed.subprocess, "Popen", start)
    with pytest.raises(OSError):
        distributed.launch(2, ["run"])
    assert [p.code for p in made] == [-15]  # rank 0, stopped


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_time(monkeypatch):
    """A process stuck in a collective (NCCL) does not act on SIGTERM: the launcher must not wait for
    ever."""
    from bench import distributed

    calls = []

    class Stuck:
        def __init__(self):
            self.code = None

        def poll(self):
            return self.code

        def terminate(self):
            calls.append("terminate")

        def kill(self):
            calls.append("kill")
            self.code = -9

        def wait(self, timeout=None):
            if self.code is None:
                raise subprocess.TimeoutExpired("bench", timeout)
            return self.code

    monkeypatch.setattr(distributed, "STOP_GRACE_S", 0.01)
    stuck = Stuck()
    distributed._stop([stuck])
    assert calls == ["terminate", "kill"] and stuck.code == -9


def test_the_processes_meet_through_the_launchs_file_with_the_timeout_given(monkeypatch):
    """`--nproc`'s processes build their FileStore (a file:// address of a path with a space was not
    decoded) and wait on it as long as BENCH_DIST_TIMEOUT_S says (its default: 4 hours)."""
    import datetime as dt

    from bench import distributed

    made, joined = [], {}

    class Store:
        def __init__(self, path, world_size):
            made.append((path, world_size))

        def set_timeout(self, timeout):
            made.append(timeout)

    monkeypatch.setattr(distributed.dist, "FileStore", Store)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: joined.update(kw, backend=backend))
    monkeypatch.setattr(distributed, "world", lambda: distributed.World())
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), (distributed.STORE_ENV, "/tmp/a b/store"),
                       (distributed.TIMEOUT_ENV, "7")):
        monkeypatch.setenv(key, value)
    distributed.init(torch.device("cpu"))
    assert made == [("/tmp/a b/store", 2), dt.timedelta(seconds=7)]
    assert isinstance(joined.pop("store"), Store)
    assert joined == {"backend": "gloo", "rank": 1, "world_size": 2, "timeout": dt.timedelta(seconds=7)}


def test_under_torchrun_any_runs_failure_fails_the_command(monkeypatch):
    """Every rank must take the same path: under torchrun a run's failure fails the command, whichever run of the
    grid it is; else only the last run's, where none failed before (one run's failure is its own line)."""
    from bench import distributed
    from bench.run import _fails_command

    specs = [object(), object()]  # only which run of the grid it is matters
    monkeypatch.setattr(distributed, "world", lambda: distributed.World())
    assert not _fails_command(specs[0], specs, [])
    assert _fails_command(specs[1], specs, []) and not _fails_command(specs[1], specs, ["unet"])
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=1, size=2))
    assert _fails_command(specs[0], specs, []) and _fails_command(specs[0], specs, ["unet"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher's liveness is read from /proc")
def test_a_process_waiting_for_news_of_its_launcher_ignores_the_launchers_sigterm(monkeypatch):
    """Stopping anyway, a process learns whether its launcher died (up to 1 s); the launcher's SIGTERM
    arriving meanwhile raised KeyboardInterrupt there: a traceback per process."""
    from bench import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(distributed.ERRORS_ENV, "/nonexistent/errors")
    before = signal.getsignal(signal.SIGTERM)

    def interrupted(signum, frame):  # console._interrupt raises KeyboardInterrupt, which would stop pytest
        raise RuntimeError("the wait was cut short")

    def alive(wait_s=0.0):
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher stopping its processes
        return False

    signal.signal(signal.SIGTERM, interrupted)
    try:
        monkeypatch.setattr(distributed, "launcher_gone", alive)
        assert distributed.orphaned() is False
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_signal_to_the_launcher_stops_every_process(monkeypatch, capsys):
    """SIGTERM (Slurm's) to `bench run --nproc`: its processes are stopped as on Ctrl-C, exit 130 as one
    process's; another signal is named."""
    from bench import distributed

    real = distributed._wait
    for number, code, said in ((signal.SIGTERM, 130, ""), (signal.SIGHUP, 129, "aborted (SIGHUP)\n")):
        started = _fake_processes(monkeypatch, stopped={0: 130, 1: 130})

        def signalled(procs, stop, number=number):
            os.kill(os.getpid(), number)  # the launcher's handler notes it; its loop then stops the processes
            return real(procs, stop)

        monkeypatch.setattr(distributed, "_wait", signalled)
        assert distributed.launch(2, ["run"]) == code
        assert capsys.readouterr().err == said and len(started) == 2


def test_warnings_under_nproc_are_said_once(tmp_path):
    """The launcher says the plan's warnings; rank 0 met them again building its model and said them
    a second time (swin_unet's window at 32²). The temp folder has a space in its path: the processes
    met through a file:// address of it, which torch does not decode on POSIX, and waited 5 minutes."""
    temp = tmp_path / "temp folder"
    temp.mkdir()
    got = _bench("run", "--models", "swin_unet", "--tiny", "--dataset", "synapse", "--synthetic", "--protocol",
                 "smoke", "--img-size", "32", "--max-iterations", "2", "--threads", "1", "--no-progress", "--device",
                 "cpu", "--results", str(tmp_path), "--nproc", "2", TMPDIR=str(temp), BENCH_DIST_TIMEOUT_S="60")
    assert got.returncode == 0, got.stderr
    said = [line for line in got.stderr.splitlines() if line.startswith("warning")]
    assert sum("window 7 does not tile a 32² input" in line for line in said) == 1, got.stderr
    assert len(said) == len(set(said)), got.stderr


def test_a_user_error_under_nproc_is_its_line_not_torchruns_traceback(tmp_path):
    """A process's BenchError (here a non-finite loss) printed its line, then torchrun's 40-line
    ChildFailedError traceback followed, exit 1; the README promises one line and exit 2."""
    got = _bench("run", "--models", "unet", "--tiny", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                 "--img-size", "32", "--max-iterations", "3", "--lr", "1e30", "--threads", "1", "--no-progress",
                 "--device", "cpu", "--results", str(tmp_path), "--nproc", "2")
    assert got.returncode == 2, got.stderr
    assert "warning: UNet has BatchNorm2d: on CPU each of the 2 processes normalises over its own share" in got.stderr
    errors = [line for line in got.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1 and errors[0].startswith("error: non-finite loss (nan)"), got.stderr  # once, not per process


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()  # after "(name)": state, ppid, ...
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _listening(pids: list[int]) -> set[str]:
    """The addresses the TCP sockets of ``pids`` listen on (Linux /proc)."""
    import ipaddress

    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                # /proc writes each 32-bit word of the address in the host's (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                address = ipaddress.ip_address(raw)
                out.add(str(address.ipv4_mapped or address) if address.version == 6 else str(address))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _training_launch(tmp_path: Path, **popen: Any) -> tuple[subprocess.Popen, list[int], Path]:
    """`bench run --nproc 2` training on for ever, once both processes train: the launcher, its
    processes and the folder holding the launch's temp folder."""
    args = ["run", "--models", "unet", "--tiny", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
            "--img-size", "32", "--max-iterations", "0", "--epochs", "100000", "--threads", "1", "--no-progress",
            "--device", "cpu", "--results", str(tmp_path), "--nproc", "2"]
    temp = tmp_path / "tmp"  # where the launch keeps its temp folder
    temp.mkdir()
    launcher = subprocess.Popen([sys.executable, "-m", "bench", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)}, **popen)
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob("runs/*/checkpoints/epoch_0000.pt")):  # both processes train
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2 and list(temp.glob("bench-nproc-*/errors"))
    except BaseException:
        launcher.kill()
        launcher.wait()
        raise
    return launcher, ranks, temp


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_processes_stop_when_the_launcher_is_killed(tmp_path):
    """kill -9 of `bench run --nproc` (or the OOM killer taking it) left its processes training on,
    unseen, holding the run's claim against the next `bench run --resume`."""
    launcher, ranks, temp = _training_launch(tmp_path)
    try:
        # torchrun's rendezvous listened on every interface (and unpickled what it was sent)
        assert _listening([launcher.pid, *ranks]) <= {"127.0.0.1", "::1"}
    finally:
        launcher.kill()
        launcher.wait()
    try:
        deadline = time.monotonic() + 60
        while any(_running(p) for p in ranks):
            assert time.monotonic() < deadline, "the processes outlived their launcher"
            time.sleep(0.2)
    finally:
        for pid in filter(_running, ranks):  # a failure leaves nothing training
            os.kill(pid, 9)
    assert not list(tmp_path.glob("runs/*/.claim"))  # released: a resume can take the run
    assert not list(temp.glob("bench-*"))  # the launch's temp folder, which the launcher could not remove
    said = launcher.stderr.read()
    assert "interrupted: the launcher is gone; the same command with --resume continues" in said, said


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc lists the processes")
def test_ctrl_c_in_a_terminal_stops_the_run_with_one_line(tmp_path):
    """A terminal's Ctrl-C signals the whole foreground process group: each process stopped on its
    SIGINT, and the launcher's SIGTERM then cut its cleanup short with an 18-line traceback per process."""
    launcher, ranks, _ = _training_launch(tmp_path, start_new_session=True)  # its own group, as in a terminal
    try:
        os.killpg(launcher.pid, signal.SIGINT)
        _, said = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 130
    assert [line for line in said.splitlines() if not line.startswith("warning: ")] == [
        "interrupted; the same command with --resume continues each unfinished run from its last checkpoint (each "
        "protocol's checkpoint_every sets when); without --resume, unfinished runs train afresh"], said
    assert not any(_running(p) for p in ranks) and not list(tmp_path.glob("runs/*/.claim"))


@pytest.mark.parametrize("rank, orphaned, said, code", [
    (0, True, "interrupted: the launcher is gone; the same command with --resume continues", 130),
    (1, True, "", 130),
    (0, False, "error: another process of this run is gone (Connection closed by peer [x]:1)", 3)])
def test_a_peer_lost_after_the_launcher_died_is_said_as_the_launcher_gone(monkeypatch, capsys, rank, orphaned,
                                                                          said, code):
    """Killing the launcher stops every rank; which one notices first is a race. Rank 0 learning it from
    a peer's closed connection still says what the user can do, not the peer's error."""
    import types

    import bench.cli
    from bench.cli import console

    def app(**kwargs):
        raise RuntimeError("Connection closed by peer [x]:1")

    calls = []  # the line kept for a live launcher before the orphan check, which waits up to 1 s
    fake = types.SimpleNamespace(lost_peer=lambda exc: True, orphaned=lambda: calls.append("orphaned") or orphaned,
                                 rank_from_env=lambda: rank, note_error=lambda line: calls.append("note") and False,
                                 LOST_PEER_EXIT=3, launched_by_bench=lambda: True)
    monkeypatch.setattr(bench.cli, "app", app)
    monkeypatch.setattr(console, "_launched", lambda: fake)
    monkeypatch.delenv("BENCH_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        console._main()
    assert stop.value.code == code
    err = capsys.readouterr().err
    assert (said in err) if said else err == "", err
    assert calls[:2] == ["note", "orphaned"]
