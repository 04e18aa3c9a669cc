"""Cost of a registered model: parameters, FLOPs, latency/throughput and peak memory.

Counting conventions (every column says its unit):

- ``flops``: floating-point operations of one forward, from ``torch.utils.flop_counter`` — a
  multiply-add is 2 FLOPs (mm = 2·m·n·k). The selective scan, invisible to every counter because
  no backend runs it through the dispatcher, is added through the marker op that
  ``ssm_models.scan`` emits while a counter listens, with the Mamba authors' estimate
  (``ssm_models.scan.selective_scan_flops``: 9·B·L·D·N, + B·D·L each for D and the z gate).
  Element-wise ops (activations, adds, norms' arithmetic) are not counted, as torch's counter does
  not; fvcore counts norms, up-sampling and pooling (0.4-2.7 % of the totals here), thop norms, nn.Upsample
  and nn.Softmax (ReLU as zero, GELU/SiLU/GroupNorm not at all).
- ``macs`` = ``flops`` / 2: the unit fvcore, thop and the papers' "GFLOPs" use.
- ``paper_macs``, ``paper_params``: thop 0.1.1's count, the convention of VM-UNet, VM-UNet-V2 and
  most tables in this field: forward hooks on called leaf ``nn.Module``s of the exact types it has a rule
  for, so the scan, the einsums, functional matmuls, bare ``nn.Parameter``s and a Conv2d subclass (TransUNet's
  StdConv2d) count zero. Shown beside ours so the gap is visible.
- fvcore (``fvcore_macs``): a cross-check of ``macs`` through a TorchScript trace, with handles
  for the scan's traced op (the cpu backend's custom op; the torch backend's autograd Function), as
  VMamba registers them.

A FLOP count refuses to finish if an op with real arithmetic ran with no formula
(``UncountedOpsError`` lists them): a silent zero is exactly the error this module exists to
avoid.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import numbers
import re
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench.errors import BenchError, exception_chain
from bench.rng import caller_rng_kept

__all__ = ["FlopCount", "UncountedOpsError", "count_params", "count_flops", "fvcore_macs", "paper_count",
           "measure_latency", "peak_memory_mb", "profile_model", "PRECISIONS"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


class UncountedOpsError(BenchError):
    """A model ran ops that no count knows (a custom kernel): a FLOP count without them would be low."""


def count_params(model: nn.Module) -> dict[str, int]:
    """``params`` = every parameter (``sum(p.numel())``), ``trainable_params`` = those with grad."""
    params = list(model.parameters())
    return {"params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in params if p.requires_grad)}


# ------------------------------------------------------------------------------------------- FLOPs

def _scan_formula(u_shape, A_shape, with_D, with_z, *args, out_shape=None, **kwargs) -> int:
    from ssm_models.scan import selective_scan_flops

    return selective_scan_flops(u_shape, A_shape, with_D, with_z)


def _sdpa_cpu_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # the CPU kernel of scaled_dot_product_attention (nn.MultiheadAttention's path): torch's counter
    # prices the CUDA kernels and this one as 0
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_formulas() -> dict[Any, Any]:
    from ssm_models.scan import SCAN_COST_OP

    return {SCAN_COST_OP: _scan_formula,
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_formula}


# Ops with arithmetic that scales like a contraction: if one of these runs without a formula, the
# count is wrong by a large factor (nn.Bilinear runs as aten._trilinear). Everything else (element-wise,
# norms, pooling, shape ops, interpolation) is uncounted by convention, as in every FLOP counter.
_CONTRACTION = re.compile(r"^(_?convolution|conv\d?d|conv_transpose\dd|mkldnn_.*conv.*|mm|bmm|addmm|baddbmm|"
                          r"addbmm|mv|addmv|dot|vdot|matmul|einsum|linear|_trilinear|tensordot|.*scaled_dot_product.*|"
                          r"_?fft_.*|.*_linear|.*attention.*|_transformer_.*|_addmm_activation)$")


@contextlib.contextmanager
def _counting(model: nn.Module):
    """What every count (ours, fvcore's, thop's) runs under, so ours and thop's depend on the architecture alone: the
    scan on the CPU backend (the compiled kernel, else the torch one, whose D and z fvcore's trace does not see),
    whose calls the counters see as one op (bench.cost's formula; fvcore's handle) whatever BENCH_SCAN_BACKEND
    says; and PyTorch's fused attention fast path off (nn.MultiheadAttention / nn.TransformerEncoderLayer in eval
    without grad run one fused op no counter has a formula for; the decomposed path is plain matmuls). A model
    whose class runs no scan (``uses_selective_scan``) gets the torch backend, which counts the same
    and needs no compiled kernel: a UNet's first run waited for the kernel's build."""
    from ssm_models.scan import available_backends, use_backend

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with use_backend(available_backends("cpu")[0] if getattr(model, "uses_selective_scan", False) else "torch"):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.packets: dict[str, Any] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops[name] += 1
        self.packets[name] = func.overloadpacket
        return func(*args, **(kwargs or {}))


@dataclass
class FlopCount:
    """``count_flops``'s result: one forward's FLOPs with the selective scan counted, by op."""

    flops: int  # FLOPs (2 per multiply-add), scan included
    scan_flops: int  # of which the selective scan
    by_op: dict[str, int] = field(default_factory=dict)  # FLOPs per aten op (+ "selective_scan")
    input_shape: tuple[int, ...] = ()

    @property
    def macs(self) -> float:
        return self.flops / 2


def count_flops(model: nn.Module, x: torch.Tensor) -> FlopCount:
    """FLOPs of ``model(x)`` in eval mode, scan included; raises if a contraction went uncounted."""
    custom = _custom_formulas()
    if x.device.type != "cpu" or any(p.device.type != "cpu" for p in model.parameters()):
        # on a CPU copy: mamba-ssm's fused CUDA path hides its conv and scan from every counter
        model, x = copy.deepcopy(model).cpu(), x.cpu()
    was_training = model.training
    model.eval()
    recorder, counter = _OpRecorder(), FlopCounterMode(display=False, custom_mapping=custom)
    try:
        # one forward: the recorder (innermost mode) sees each op first and passes it on to the counter
        with torch.no_grad(), _counting(model), counter, recorder:
            model(x)
    finally:
        model.train(was_training)
    registry = counter.flop_registry
    uncounted = sorted(f"{name} ×{n}" for name, n in recorder.ops.items()
                       if recorder.packets[name] not in registry
                       and _CONTRACTION.match(name.split(".")[-1]))
    if uncounted:
        raise UncountedOpsError(f"{type(model).__name__}: ops with arithmetic and no FLOP formula: "
                                f"{', '.join(uncounted)}; register one in bench.cost before reporting FLOPs")
    totals = counter.get_flop_counts().get("Global", {})
    scan_op = next(iter(custom))
    by_op = {("selective_scan" if op is scan_op else str(op)): int(n) for op, n in totals.items() if n}
    return FlopCount(flops=int(sum(totals.values())), scan_flops=int(totals.get(scan_op, 0)), by_op=by_op,
                     input_shape=tuple(x.shape))


# fvcore's by-operator name of the cpu backend's scan (ssm_models.scan's custom op, its namespace dropped)
FVCORE_SCAN_KEY = "selective_scan_cpu_fwd"


def _fvcore_scan_handle(inputs, outputs) -> float:
    """fvcore handle for the scan's traced calls: MACs = our FLOPs / 2 (fvcore's unit).

    The cpu backend's op node lists every argument in its schema's order, an absent D or z as a None
    constant. A ``_TorchScan`` Function's node lists its tensor inputs only; it takes 5 arguments and
    applies D and z outside, as ordinary element-wise ops (uncounted by fvcore)."""
    from ssm_models.scan import selective_scan_flops

    args = list(inputs)
    present = [a.type().kind() == "TensorType" for a in args]
    u, A = args[0].type().sizes(), args[2].type().sizes()
    with_D, with_z = (len(args) > 6 and present[5]), (len(args) > 6 and present[6])
    return selective_scan_flops(u, A, with_D, with_z) / 2


def fvcore_macs(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """fvcore's ``FlopCountAnalysis`` (MACs) by operator, with handles for the scan (``FVCORE_SCAN_KEY``)."""
    with warnings.catch_warnings():  # its import scripts functions with torch.jit, which warns of deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        from fvcore.nn import FlopCountAnalysis

    model = copy.deepcopy(model).cpu().eval()
    x = x.cpu()
    with torch.no_grad(), _counting(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(model, x)
        for op in (f"ssm_unet_bench::{FVCORE_SCAN_KEY}", "prim::PythonOp._TorchScan"):
            fca.set_op_handle(op, _fvcore_scan_handle)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_op = {k: float(v) for k, v in fca.by_operator().items()}
    return {"total": sum(by_op.values()), **by_op}


def paper_count(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """thop 0.1.1's (MACs, params), as ``thop.profile`` reports them (on a copy: thop adds buffers)."""
    with warnings.catch_warnings():  # thop 0.1.1 compares versions with distutils, which warns of deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        import thop

    model = copy.deepcopy(model).eval()
    # thop prints per-module notes: into a sink, so stdout stays a stream for code that flushes it;
    # its root-logger warnings (trilinear up-sampling "taken as a zero op": its convention) are muted
    muted = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with torch.no_grad(), _counting(model), contextlib.redirect_stdout(io.StringIO()):
            macs, params = thop.profile(model, inputs=(x,), verbose=False)
    finally:
        logging.disable(muted)
    return {"paper_macs": float(macs), "paper_params": float(params)}


# ------------------------------------------------------------------------------------------- speed

def check_precision(precision: str, device: torch.device) -> None:
    """BenchError unless ``precision`` is one of PRECISIONS and runs on ``device``."""
    if precision not in PRECISIONS:
        raise BenchError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise BenchError("--precision tf32 needs a CUDA device (TF32 is an Ampere+ tensor-core mode)")
    if precision == "fp16" and device.type != "cuda":
        raise BenchError("--precision fp16 needs a CUDA device (CPU autocast supports bf16)")


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device):
    """fp32 (TF32 off), tf32 (CUDA matmul/cuDNN TF32 on), bf16/fp16 (autocast)."""
    check_precision(precision, device)
    saved = None
    if device.type == "cuda":
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, x: torch.Tensor, *, warmup: int = 20, iters: int = 100,
                    precision: str = "fp32") -> dict[str, float]:
    """Per-forward wall time (ms): median and p90 over ``iters`` timed runs after ``warmup``,
    synchronised on CUDA before and after each run; ``fps`` = batch / median."""
    device = x.device
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            _sync(device)
            t0 = time.perf_counter()
            # entered per forward, as a caller does: autocast keeps its weight casts only until its
            # context ends, so one context around all forwards would time them without the casts
            with precision_context(precision, device):
                model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)]
    return {"latency_ms_median": median * 1e3, "latency_ms_p90": p90 * 1e3, "fps": x.shape[0] / median,
            "timed_iters": iters, "warmup_iters": warmup}  # both said in Methods


def out_of_memory(exc: RuntimeError) -> bool:
    """Memory ran out. Near the limit cuDNN and cuBLAS report a failed workspace allocation as a
    plain RuntimeError rather than ``torch.OutOfMemoryError``."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "unable to find an engine", "ALLOC_FAILED"))


INDEX_LIMIT = 2**31 - 1  # elements: past it, CUDA kernels indexed with 32-bit integers fail or go wrong


class _LargestTensor(TorchDispatchMode):
    """The element count of the largest tensor any op creates while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def largest_tensor_numel(model: nn.Module, x: torch.Tensor, *, precision: str = "fp32") -> int:
    """Elements of the largest tensor in one forward of ``x`` (activations, the scan's inputs)."""
    mode = _LargestTensor()
    with torch.inference_mode(), precision_context(precision, x.device), mode:
        model(x)
    return mode.numel


def find_batch_size(model: nn.Module, make_input, *, precision: str = "fp32", limit: int = 512,
                    numel_at_1: int | None = None) -> int:
    """The largest power-of-two batch (≤ ``limit``) whose forward runs without running out of
    memory, for "throughput at the batch that fits". The cap keeps the search short: each
    doubling is one more forward at twice the size. ``numel_at_1``: the largest tensor at batch 1
    (``largest_tensor_numel``); no batch takes a tensor past ``INDEX_LIMIT`` elements, where memory
    on a large GPU has not run out yet but CUDA kernels with 32-bit indexing refuse (channels-last
    nearest upsampling) or silently compute garbage (pytorch#141831; mamba-ssm's scan offsets)."""
    if numel_at_1:
        limit = min(limit, max(1, INDEX_LIMIT // numel_at_1))
    best, batch, first = 0, 1, ""
    while batch <= limit:
        try:
            x = make_input(batch)
            first = first or f" (input {tuple(x.shape)} on {x.device})"  # for the error where nothing fits
            with torch.inference_mode(), precision_context(precision, x.device):
                model(x)
        except RuntimeError as exc:
            if not out_of_memory(exc):
                raise
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        best, batch = batch, batch * 2
    if not best:
        raise BenchError(f"{type(model).__name__}: even batch 1{first} runs out of memory; profile it at a "
                         "smaller --img-size, or with --device cpu")
    return best


def _throughput(run, make_input, batch: int, warmup: int, iters: int, precision: str, *, halve: bool):
    """(batch, timings) of the throughput measurement; with ``halve`` (a found batch) the batch is
    halved while the timed forwards run out of memory (the search ran one forward, not several)."""
    while True:
        try:
            return batch, measure_latency(run, make_input(batch), warmup=max(2, warmup // 4),
                                          iters=max(5, iters // 10), precision=precision)
        except RuntimeError as exc:
            if not out_of_memory(exc):
                raise
            if not (halve and batch > 1):
                raise BenchError(f"--batch-size {batch}: the timed forwards run out of memory on "
                                 f"{make_input(1).device}; give a smaller batch, or auto") from exc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        batch //= 2


# ------------------------------------------------------------------------------------------ memory

@contextlib.contextmanager
def _quiet_fd2():
    """Silence file descriptor 2 (the profiler's C++ library prints start/stop lines there)."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w", encoding="utf-8") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(fn) -> int:
    """Peak of live tensor bytes that ``fn`` allocates on CPU, from torch's profiler: each op's
    own allocations and each free, replayed in time order. (The process RSS cannot show it: the
    C allocator keeps freed pages, so a warm process does not grow again.)"""
    with _quiet_fd2(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                              profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_memory_mb(model: nn.Module, x: torch.Tensor, *, train_step: bool = False) -> dict[str, Any]:
    """Peak memory in MiB (2**20 bytes; "mb" in the names) that one forward (or forward + backward with
    ``train_step``) allocates beyond what existed before (weights, inputs): activations, workspaces and,
    in training, grads.

    CUDA: ``torch.cuda.max_memory_allocated`` (``peak_mem_kind`` "cuda_tensors"); CPU: the peak
    of live tensor bytes from torch's profiler ("cpu_tensors"). Neither counts allocator caches.
    """
    device = x.device

    def step():
        with contextlib.nullcontext() if train_step else torch.no_grad():
            out = model(x)
            if train_step:
                out.float().sum().backward()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak, kind = torch.cuda.max_memory_allocated(device) - before, "cuda_tensors"
    else:
        peak, kind = _cpu_peak_bytes(step), "cpu_tensors"
    if train_step:
        model.zero_grad(set_to_none=True)
    return {"peak_mem_mb": peak / 2**20, "peak_mem_kind": kind}


# BatchNorm's refusal to train on one value per channel (torch.nn.functional.batch_norm's words)
_ONE_VALUE_PER_CHANNEL = re.compile(r"Expected more than 1 value per channel when training, got input size "
                                    r"torch\.Size\(\[[\d, ]*\]\)")


def _batch_norm_at_batch_1(exc: BaseException) -> str | None:
    """BatchNorm's refusal (a small input at batch 1) where ``exc`` is it, chains it or quotes it
    (torch.compile's errors do either); None for any other error."""
    for seen in exception_chain(exc):
        if found := _ONE_VALUE_PER_CHANNEL.search(str(seen)):
            return found.group()
    return None


# ----------------------------------------------------------------------------------------- profile

def _counts(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    flops, paper = count_flops(model, x), paper_count(model, x)
    return {"input_shape": "x".join(map(str, x.shape)), "macs": flops.macs, "flops": flops.flops,
            "scan_macs": flops.scan_flops / 2, "paper_macs": paper["paper_macs"],
            "paper_params": int(paper["paper_params"]), "flops_by_op": flops.by_op}


def run_counts(name: str, build: dict[str, Any], spatial: tuple[int, ...]) -> dict[str, Any]:
    """The counts a run record carries (``cost``): MACs/FLOPs with the scan and thop's MACs for one
    input of spatial size ``spatial`` (the square image or the 3-D patch), on a fresh CPU float32
    copy of the architecture built from ``create_model`` arguments ``build`` (counts do not depend
    on the weights, and this leaves the trained model and its device alone)."""
    from bench.registry import create_model

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, **build)
    counts = _counts(model, torch.zeros(1, build["in_chans"], *spatial))
    return {k: counts[k] for k in ("input_shape", "macs", "flops", "scan_macs", "paper_macs")}


# fvcore cross-checks our count on the ops both price (convolutions, matmuls, the scan): the built-in
# models agree within 2 % there. fvcore also prices normalisation, up-sampling and pooling, which
# our count (FlopCounterMode's) leaves out: in its column, not in the comparison.
FVCORE_AGREEMENT = 0.05
_FVCORE_ONLY = ("batch_norm", "group_norm", "layer_norm", "instance_norm", "upsample", "adaptive_avg_pool")
# the device-independent part of a profile row: what `counts=` carries from one precision to the next
COUNT_KEYS = ("params", "trainable_params", "input_shape", "macs", "flops", "scan_macs", "paper_macs",
              "paper_params", "flops_by_op", "paper_macs_missing_pct", "fvcore_macs")


def check_timing(iters: int, warmup: int, compile: bool = False) -> None:
    """BenchError unless ``iters`` timed forwards after ``warmup`` make a median (and, with ``compile``,
    the first forward, which compiles, is not one of them)."""
    if iters < 1 or warmup < 0:
        raise BenchError(f"--iters must be >= 1 and --warmup >= 0; got iters={iters}, warmup={warmup}")
    if compile and warmup < 1:  # the first call compiles: timed, it would be the p90
        raise BenchError("--warmup 0 with --compile: the first forward compiles the model; give --warmup >= 1")


def check_batch_size(batch_size: int | str | None, what: str = "batch_size") -> int | str:
    """``batch_size`` of a throughput measurement, as ``profile_model`` takes it: a whole number >= 2 (a digit
    string too, as the CLI gives it), ``"auto"``, or 0 / None for none; else a BenchError naming ``what``,
    before any model is built or timed."""
    if batch_size is None or (batch_size == 0 and not isinstance(batch_size, (bool, str))):
        return 0
    if batch_size == "auto":
        return "auto"
    number = int(batch_size) if isinstance(batch_size, str) and batch_size.isdecimal() else batch_size
    if isinstance(number, numbers.Integral) and not isinstance(number, bool) and number >= 2:
        return int(number)
    raise BenchError(f"{what}: expected a whole number >= 2 or 'auto' (batch 1 is always timed); got {batch_size!r}")


@caller_rng_kept()  # it seeds: a notebook's own RNG goes on where it was
def profile_model(name: str, *, img_size: int = 224, num_classes: int = 9, in_chans: int = 3,
                  device: torch.device | str = "cpu", precision: str = "fp32", batch_size: int | str = 0,
                  warmup: int = 20, iters: int = 100, channels_last: bool = False, compile: bool = False,
                  timing: bool = True, overrides: dict[str, Any] | None = None, tiny: bool = False,
                  counts: dict[str, Any] | None = None) -> dict[str, Any]:
    """One `bench profile` row: counts on CPU in float32 (device-independent), timings and
    memory on ``device``. ``batch_size`` > 1 adds a throughput measurement at that batch;
    ``"auto"`` at the largest power-of-two batch that fits (``find_batch_size``). ``tiny``: the
    model's tiny configuration, ``overrides`` over it (the row says so, as runs do). ``counts``: a
    row of the same model and input (``COUNT_KEYS``), reused instead of counting again.
    ``bench.profiles.write_profile`` keeps the row where ``bench report`` joins it to the boards."""
    from bench import env, records
    from bench.registry import changed_keys, check_set_kinds, create_model, get_entry
    from bench.scan_info import note_scan_use, scan_backend_for

    device = env.resolve_device(device)  # "cuda" without one: named; "CPU", None: refused by name
    check_precision(precision, device)
    batch_size = check_batch_size(batch_size)
    if timing:
        check_timing(iters, warmup, compile)
    entry = get_entry(name)
    name = entry.name  # as registered: the row's model ("VMUNet" asked)
    check_set_kinds(name, overrides or {})
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, tiny=tiny,
                         **(overrides or {}))
    spatial = (img_size,) * getattr(model, "spatial_dims", 2)  # a cube for 3-D variants (--set spatial_dims=3)
    layout = torch.channels_last if len(spatial) == 2 else torch.channels_last_3d
    x = torch.randn(1, in_chans, *spatial)
    if counts is None:
        fv = fvcore_macs(model, x)
        counts = {**count_params(model), **_counts(model, x), "fvcore_macs": fv["total"]}
        counts["paper_macs_missing_pct"] = 100 * (1 - counts["paper_macs"] / counts["macs"]) if counts["macs"] else 0.0
        shared = sum(v for k, v in fv.items() if k != "total" and not k.startswith(_FVCORE_ONLY))
        if abs(shared - counts["macs"]) > FVCORE_AGREEMENT * counts["macs"]:
            warnings.warn(f"{name}: our count ({counts['macs'] / 1e9:.4g} GMACs) and fvcore's on the same ops "
                          f"({shared / 1e9:.4g}; {fv['total'] / 1e9:.4g} with normalisation, up-sampling and "
                          f"pooling) differ by more than {FVCORE_AGREEMENT:.0%}: an op one of them counts and the "
                          "other does not", stacklevel=2)
    note_scan_use(model, counts["scan_macs"], name)
    row: dict[str, Any] = {"model": name, "family": entry.family, **{k: counts[k] for k in COUNT_KEYS}}
    row.update(
        model_config={k: (list(v) if isinstance(v, tuple) else v) for k, v in model.bench_config.items()},
        device=device.type, precision=precision, channels_last=channels_last, compiled=compile, tiny=tiny,
        set_keys=changed_keys(name, overrides or {}, tiny=tiny),  # what --set changed: the label names it
    )
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=layout)
    if compile:  # dynamo's caches from earlier models (shared classes) count against its recompile limit
        torch._dynamo.reset()
    run = torch.compile(model) if compile else model

    def inputs(batch: int) -> torch.Tensor:
        t = torch.randn(batch, in_chans, *spatial, device=device)
        return t.to(memory_format=layout) if channels_last else t

    if timing and scan_backend_for(model, ran=False) == "ref":  # BENCH_SCAN_BACKEND=ref
        timing = False  # counts only: the sequential oracle's speed would sit in a table as the model's
        warnings.warn(f"{name}: not timed: the 'ref' selective-scan backend is the tests' sequential oracle, "
                      "not a speed; unset BENCH_SCAN_BACKEND (or choose cpu, torch, cuda) to time it", stacklevel=2)
    if timing:
        row.update(measure_latency(run, inputs(1), warmup=warmup, iters=iters, precision=precision))
        row["batch_size"] = 1
        found = batch_size == "auto"
        if found:
            numel = largest_tensor_numel(model, inputs(1), precision=precision)
            batch_size = find_batch_size(run, inputs, precision=precision, numel_at_1=numel)
        if batch_size > 1:
            batch_size, big = _throughput(run, inputs, batch_size, warmup, iters, precision, halve=found)
            row["throughput_batch"], row["throughput_fps"] = batch_size, big["fps"]
        # with --compile a no-grad forward and a training step compile again (the timings ran under
        # inference_mode): the last of two rounds is kept, the compiled code's peaks, not the compiler's.
        # Each measurement in its own precision context: autocast caches its weight casts until the
        # context ends, and the training step would not count those made by the forward before it
        for _ in range(2 if compile else 1):
            with precision_context(precision, device):
                forward = peak_memory_mb(run, inputs(1))
            try:
                with precision_context(precision, device):
                    step = peak_memory_mb(run.train(), inputs(1), train_step=True)
            except Exception as exc:  # noqa: BLE001 - torch.compile wraps the ValueError in its own error
                said = _batch_norm_at_batch_1(exc)
                if said is None:
                    raise
                warnings.warn(f"{name}: no training-step memory at {'x'.join(map(str, spatial))} ({said}); a larger "
                              "--img-size measures it", stacklevel=2)
                step = {"peak_mem_mb": None}
            finally:
                run.eval()
        row.update(forward)
        row["train_peak_mem_mb"] = step["peak_mem_mb"]
    with precision_context(precision, device):  # the TF32 flags as the timed forwards had them
        fp = env.fingerprint(device)
    row["fingerprint"] = records.short_fingerprint(fp)
    row["device_fingerprint"] = fp
    # the backend that ran the timed forwards (untimed: the one that would run there, not the
    # counts' CPU one); a reference backend is marked in every table
    row["scan_backend"] = scan_backend_for(model, ran=timing)
    # the code and packages that counted and timed it, as run records name theirs
    row.update(git_commit=env.git_commit(), code_digest=env.source_digest(), packages=env.package_versions())
    return row
