"""Protocols: declarative, versioned training + evaluation recipes, loaded into a typed object.

A protocol is a TOML file in ``bench/protocols/`` (or any path). Its content hash (sha256 over the
canonical JSON of the parsed file) goes into every run record, so two runs compare only if they
ran the same recipe. Overriding a field (``--epochs`` on the command line) returns a new protocol
whose ``overrides`` are non-empty: the record is then marked off-protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, closest, did_you_mean, unknown_name
from bench.fileio import SAFE_NAME, absent, read_text

PROTOCOL_DIR = Path(__file__).parent / "protocols"

# the metadata of fields loading computes: a protocol file may not give them
_COMPUTED = {"computed": True}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    optimizer: str  # "sgd" | "adamw" | "adam"
    lr: float
    weight_decay: float
    # Swin-Unet's train.py: a batch size other than this that is a multiple of 6 scales the base lr
    # by batch / this (so --batch-size 12 halves it); 0: never (TransUNet, VM-UNet)
    lr_scale_batch: int = 0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "poly"  # "poly" (per iteration) | "poly_epoch" (nnU-Net) | "cosine" (per epoch) | "constant"
    poly_power: float = 0.9
    cosine_t_max: int = 50
    cosine_eta_min: float = 0.0
    # loss weights: multi-class uses ce + dice (softmax Dice over all classes incl. background,
    # TransUNet/VM-UNet style); binary (1 output channel) uses bce + dice (sigmoid).
    loss_ce: float = 0.5
    loss_dice: float = 0.5
    loss_bce: float = 1.0
    # the multi-class Dice term (bench.losses): "transunet" (all classes, squared denominators,
    # 1 - Dice) | "nnunet" (nnU-Net's batch soft Dice over the foreground classes, -Dice)
    dice_loss: str = "transunet"
    augment: str = "none"  # named pipeline in bench.transforms
    max_iterations: int = 0  # >0 caps the total number of optimizer steps (smoke runs)
    # >0: an epoch is this many global batches drawn with replacement (nnU-Net: 250), not one
    # pass over the shuffled training items
    iterations_per_epoch: int = 0
    # patch protocols: the share of each batch whose patch is centred on a foreground voxel
    # (nnU-Net's oversample_foreground_percent: the items at positions >= round(batch·(1 − this)),
    # so one of 2, four of 12)
    oversample_foreground: float = 0.33
    amp: bool = False  # autocast allowed (CUDA only)
    grad_clip: float = 0.0
    checkpoint_every: int = 0  # epochs between interval checkpoints (0: final only)
    # evaluated weights: "final" (TransUNet) | "best_train_loss" (VM-UNet Synapse) | "lr_min" (the
    # last epoch at the schedule's lowest lr, bench.train.lr_min_epoch; chosen without data)
    select: str = "final"
    num_workers: int = 0


@dataclass(frozen=True)
class EvalConfig:
    # Volumes are evaluated slice by slice: each slice zoomed to img_size with image_order, the
    # predicted label map zoomed back with label_order, scored per volume at native resolution.
    # 2-D images (ISIC, polyp) are resized to img_size (bilinear, mask too) and scored there, as
    # VM-UNet's engine.py does.
    image_order: int = 3
    label_order: int = 0
    threshold: float = 0.5  # binary tasks: sigmoid >= threshold
    # >0: also the normalised surface distance at this tolerance, in the HD95 unit (mm under
    # strict with a spacing); per-case policies only. 0: not computed. A table [eval.nsd_tolerance]
    # gives each foreground class its own (MONAI's class_thresholds, U-Mamba's organ tolerances),
    # kept as sorted (name, tolerance) pairs so the config stays hashable; bench.evaluate matches
    # the names to the dataset's classes
    nsd_tolerance: float | tuple[tuple[str, float], ...] = 0.0
    max_cases: int = 0  # >0 evaluates only the first N test cases (smoke runs)
    # patch protocols: sliding-window tiles overlap by 1 − tile_step of the patch, and each
    # tile's logits are weighted by a Gaussian (nnU-Net's predictor: tile_step_size 0.5)
    tile_step: float = 0.5
    # patch protocols: nnU-Net's test-time mirroring, each tile also predicted flipped along
    # every combination of the patch's axes and the 8 (2-D: 4) logits averaged (nnU-Net's default;
    # LightM-UNet predicts with --disable_tta)
    mirror: bool = False
    # the model predicts under float16 autocast on CUDA (nnU-Net's predictor; LightM-UNet: "inference
    # uses autocast"); elsewhere in the protocol's dtype, as nnU-Net predicts on a CPU
    autocast: bool = False


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    description: str
    normalize: str  # "none" | "minmax255" (VM-UNet ISIC) | "zscore" | "ct_window" | "ct_foreground" (bench.transforms)
    metric_policy: str  # "" = the dataset's default policy
    seed: int
    train: TrainConfig
    eval: EvalConfig
    # the side of the square 2-D model input (images and slices are zoomed to it); 0 in patch protocols
    img_size: int = 0
    # patch protocols, nnU-Net's way: the patch the model trains on, cut from whole cases preprocessed
    # as target_spacing says, and the tile of the sliding window that predicts them. (D, H, W): 3-D
    # (3d_fullres); (H, W): nnU-Net's 2d configuration (2-D patches from a case's slices, each slice
    # of a test case predicted by the sliding window); empty: whole images zoomed to img_size
    patch_size: tuple[int, ...] = ()
    # patch protocols: the spacing in mm cases are resampled to for training and prediction (scores
    # stay on each case's own grid): "nnunet" (nnU-Net's 3d_fullres rule over the training cases,
    # bench.data.resample; its in-plane part in 2-D), numbers ((z, y, x); 2-D: (y, x), each case
    # keeping its slice spacing, as nnU-Net's 2d configuration), or "native" (no resampling)
    target_spacing: str | tuple[float, ...] = "native"
    # Parameters and activations. float64 is for CI's drift grid: float32 rounding differs between
    # CPUs (MKL/oneDNN pick kernels per CPU), and a short training run amplifies it into metric
    # differences of several DSC points; in float64 the same run agrees across CPUs.
    dtype: str = "float32"
    # Start each model from the pretrained file its authors start from (registry ``init``), as
    # the published numbers did; models without one train from scratch either way.
    pretrained: bool = False
    source: str = ""
    datasets: tuple[str, ...] = ()  # datasets the protocol was written for; empty = any
    # the test split must come from the data's own split file (nnU-Net format: splits_final.json),
    # e.g. where our fallback split would put frames of one patient on both sides (ACDC)
    requires_split_file: bool = False
    variant_of: str = ""
    overrides: dict[str, Any] = field(default_factory=dict, metadata=_COMPUTED)
    hash: str = field(default="", metadata=_COMPUTED)
    # the file's own value of every field an override changed: an override back to it is none
    file_values: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, metadata=_COMPUTED)

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return {"float32": torch.float32, "float64": torch.float64}[self.dtype]

    @property
    def spatial_dims(self) -> int:
        """The model's: 3 for 3-D patches, else 2."""
        return len(self.patch_size) or 2

    @property
    def patches(self) -> bool:
        """nnU-Net's data path: patches from preprocessed whole cases, sliding-window prediction."""
        return bool(self.patch_size)

    @property
    def input_size(self) -> tuple[int, ...]:
        """The spatial size of one model input: the square image, or the patch."""
        return self.patch_size or (self.img_size, self.img_size)

    @property
    def model_size(self) -> int:
        """The ``img_size`` models are built with: the square side, or a patch's largest side."""
        return max(self.input_size)

    @property
    def off_protocol(self) -> bool:
        return bool(self.overrides)

    def check_dataset(self, dataset: str) -> None:
        """BenchError where the protocol is written for other datasets than ``dataset`` (a registry name)."""
        if self.datasets and dataset not in {d.strip().lower() for d in self.datasets}:  # names in any case
            raise BenchError(f"protocol {self.name!r} is written for {', '.join(self.datasets)}, not {dataset!r}")

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "hash": self.hash,
            "off_protocol": self.off_protocol,
            "overrides": dict(self.overrides),
            # every setting as the run used it, defaults and overrides included: the recipe stays
            # readable in the record where its file is edited or lost
            "recipe": json.loads(json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                             if not f.metadata.get("computed")}, default=_plain)),
        }

    def with_overrides(self, **changes: Any) -> "Protocol":
        """Return a copy with ``train``/``eval``/top-level fields changed, marked off-protocol.

        Keys are field names, e.g. ``epochs=2`` or ``img_size=64``; ``None`` values are ignored.
        """
        changes = {k: _python(v) for k, v in changes.items() if v is not None}
        if not changes:
            return self
        if "patch_size" in changes:  # another patch, never another kind of protocol
            if isinstance(changes["patch_size"], (str, bytes)) or not hasattr(changes["patch_size"], "__len__"):
                raise BenchError(f"override patch_size (--patch-size): expected a list of sides, e.g. "
                                 f"{list(self.patch_size) or [64, 128, 128]}; got {changes['patch_size']!r}")
            n = len(self.patch_size)
            if not n:
                raise BenchError(f"override patch_size (--patch-size): protocol {self.name!r} zooms whole images "
                                 "to img_size (--img-size); patches belong to patch protocols")
            if len(changes["patch_size"]) != n:
                raise BenchError(f"override patch_size (--patch-size): protocol {self.name!r} trains {n}-D patches "
                                 f"{list(self.patch_size)}; give {n} sides, got {list(changes['patch_size'])}")
        parts: dict[str, dict[str, Any]] = {"train": {}, "eval": {}, "": {}}
        for key, value in changes.items():
            parts[_section(key)][key] = value
        top, train, ev = parts[""], parts["train"], parts["eval"]
        changed = _checked(dataclasses.replace(
            self,
            train=dataclasses.replace(self.train, **train),
            eval=dataclasses.replace(self.eval, **ev),
            overrides={**self.overrides, **changes},
            **top,
        ), "override")
        # an option that repeats the file's own value (checked, so 0.01 == 1e-2, [8, 8] == (8, 8))
        # changes nothing: the run stays on-protocol and counts as done with runs without it
        file_values = {**{key: _field(self, key) for key in changes}, **self.file_values}
        same = {key for key in changes if _field(changed, key) == file_values[key]}
        return dataclasses.replace(changed, file_values=file_values,
                                   overrides={k: v for k, v in changed.overrides.items() if k not in same})


# A protocol file's tables: "" is its top level. Each dataclass's fields are the keys the table takes.
_TABLES = {"": Protocol, "train": TrainConfig, "eval": EvalConfig}


def _plain(value: Any) -> Any:
    """The train and eval tables as JSON objects."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


@functools.cache
def _file_fields(table: str) -> dict[str, tuple[Any, bool]]:
    """The keys a protocol file may give in ``table``, each with its type and whether it is required
    (the field has no default); the top level's leave out the tables and what loading computes."""
    cls = _TABLES[table]
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls) if f.name not in _TABLES and not f.metadata.get("computed")}


_TOP_OVERRIDABLE = {"img_size", "patch_size", "target_spacing", "normalize", "metric_policy", "seed", "dtype",
                    "pretrained"}


def _section(key: str) -> str:
    """Where an overridable field lives: "train", "eval" or "" (top level); BenchError otherwise."""
    for table in ("train", "eval"):
        if key in _file_fields(table):
            return table
    if key in _TOP_OVERRIDABLE:
        return ""
    can = sorted({*_file_fields("train"), *_file_fields("eval"), *_TOP_OVERRIDABLE})
    raise BenchError(f"cannot override protocol field {key!r}{did_you_mean(key, can)}; these can be: {', '.join(can)}")


def _field(protocol: Protocol, key: str) -> Any:
    """The value of an overridable field, wherever it lives (top level, train or eval)."""
    return getattr({"train": protocol.train, "eval": protocol.eval, "": protocol}[_section(key)], key)


# The names a protocol may use; the training loop and bench.transforms implement exactly these.
CHOICES = {
    ("train", "optimizer"): ("sgd", "adamw", "adam"),
    ("train", "scheduler"): ("poly", "poly_epoch", "cosine", "constant"),
    ("train", "select"): ("final", "best_train_loss", "lr_min"),
    ("train", "augment"): ("none", "transunet", "vmunet_isic", "nnunet"),
    ("train", "dice_loss"): ("transunet", "nnunet"),
    ("", "normalize"): ("none", "minmax255", "zscore", "ct_window", "ct_foreground"),
    ("", "dtype"): ("float32", "float64"),
}
PATCH_AUGMENTS = ("nnunet", "none")  # of CHOICES' augments, those bench.transforms cuts patches with

SEED_LIMIT = 2**32  # seeds below it: what numpy's and torch's generators all take


def check_seed(value: Any, what: str) -> int:
    """``value`` as a seed (a whole number 0 .. SEED_LIMIT - 1: NumPy's too), or BenchError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < SEED_LIMIT:
        raise BenchError(f"{what}: expected a whole number from 0 to {SEED_LIMIT - 1}; got {value!r}")
    return int(value)


# (section, field, smallest allowed value): sizes and counts, whole numbers (the seed: check_seed)
_WHOLE_NUMBERS = (("", "img_size", 1), ("train", "batch_size", 1), ("train", "epochs", 1),
                  ("train", "max_iterations", 0), ("train", "num_workers", 0), ("train", "lr_scale_batch", 0),
                  ("train", "iterations_per_epoch", 0), ("train", "cosine_t_max", 1), ("train", "checkpoint_every", 0),
                  ("eval", "max_cases", 0))


def _python(value: Any) -> Any:
    """NumPy (or torch) values as Python's, inside lists too (a notebook's np.int64(2), np.array([64, 64])):
    the checks and the run id's JSON take those."""
    if hasattr(value, "tolist") and hasattr(value, "ndim"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(_python(v) for v in value)
    return value


def _checked(protocol: Protocol, where: str) -> Protocol:
    """BenchError naming ``where`` (the file, or "override") and the field when a value is not of the
    field's type, or a size or count not a whole number in range; img_size is one side, since every
    model trains on square inputs. Returns the protocol with tuple fields tuples (a TOML, CLI or
    record JSON gives lists) and eval.nsd_tolerance in its stored form (``_nsd_tolerance``)."""
    protocol = dataclasses.replace(_tuples(protocol, ""), train=_tuples(protocol.train, "train"),
                                   eval=_tuples(protocol.eval, "eval"))
    for key, value, ok, expected in (
            ("train.oversample_foreground", protocol.train.oversample_foreground, lambda v: 0 <= v <= 1,
             "a share between 0 and 1"),
            ("eval.tile_step", protocol.eval.tile_step, lambda v: 0 < v <= 1, "a fraction of the patch, > 0 and <= 1"),
            ("train.lr", protocol.train.lr, lambda v: 0 <= v < math.inf, "a learning rate, a finite number >= 0"),
            ("train.weight_decay", protocol.train.weight_decay, lambda v: 0 <= v < math.inf, "a number >= 0")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
            if where == "override" and key == "train.lr":  # the CLI spells it --lr
                key = "lr (--lr)"
            raise BenchError(f"{where} {key}: expected {expected}; got {value!r}")
    for section, name, low in _WHOLE_NUMBERS:
        value = getattr(getattr(protocol, section) if section else protocol, name)
        if name == "img_size" and protocol.patch_size and value == 0:
            continue  # a patch protocol leaves it out (_check_input_size)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            key = f"{section}.{name}" if section else name
            if where == "override":  # the CLI spells overrides as options
                key = f"{name} (--{name.replace('_', '-')})"
            square = " (the side of the square model input)" if name == "img_size" else ""
            raise BenchError(f"{where} {key}: expected a whole number >= {low}{square}; got {value!r}")
    check_seed(protocol.seed, f"{where} seed")
    _check_input_size(protocol, where)
    protocol = _check_target_spacing(protocol, where)
    tol = _nsd_tolerance(protocol.eval.nsd_tolerance, f"{where} eval.nsd_tolerance")
    protocol = dataclasses.replace(protocol, eval=dataclasses.replace(protocol.eval, nsd_tolerance=tol))
    _check_types(protocol, where)  # the fields above have their own messages, so come first
    _check_ranges(protocol, where)
    if protocol.eval.mirror and not protocol.patch_size:
        raise BenchError(f"{where} eval.mirror: test-time mirroring belongs to the sliding window of patch "
                         "protocols; this protocol zooms whole images (no patch_size)")
    for (section, name), names in CHOICES.items():  # at load, not when a run reaches the field
        value = getattr(getattr(protocol, section) if section else protocol, name)
        if value not in names:
            key = f"{section}.{name}" if section else name
            raise BenchError(f"{where} {key}: unknown {value!r}{did_you_mean(value, names)}. Expected one of "
                             f"{', '.join(names)}")
    if protocol.patch_size and protocol.train.augment not in PATCH_AUGMENTS:  # else refused after preprocessing
        raise BenchError(f"{where} train.augment: {protocol.train.augment!r} works on whole images; a patch protocol "
                         f"(patch_size) takes {' or '.join(map(repr, PATCH_AUGMENTS))}")
    return protocol


def _check_ranges(protocol: Protocol, where: str) -> None:
    """Values of the right type that a run would take without a word and train or score nothing
    meaningful with (a threshold of 1.5, all loss weights 0, a growing poly lr), or end in a traceback
    (a spline order of 7)."""
    t, e = protocol.train, protocol.eval
    at_least_0, below_1 = (lambda v: 0 <= v < math.inf, "a number >= 0"), (lambda v: 0 <= v < 1, "a number >= 0 and < 1")
    for key, value, (ok, expected) in (
            ("train.momentum", t.momentum, below_1), ("train.betas[0]", t.betas[0], below_1),
            ("train.betas[1]", t.betas[1], below_1), ("train.eps", t.eps, (lambda v: 0 < v < math.inf, "a number > 0")),
            ("train.poly_power", t.poly_power, at_least_0), ("train.cosine_eta_min", t.cosine_eta_min, at_least_0),
            ("train.grad_clip", t.grad_clip, (lambda v: 0 <= v < math.inf, "a norm >= 0 (0: no clipping)")),
            ("train.loss_ce", t.loss_ce, at_least_0), ("train.loss_dice", t.loss_dice, at_least_0),
            ("train.loss_bce", t.loss_bce, at_least_0),
            ("eval.threshold", e.threshold, (lambda v: 0 < v < 1, "a probability > 0 and < 1 (binary tasks: "
                                                                  "sigmoid >= it is foreground)"))):
        if not ok(value):
            raise BenchError(f"{where} {key}: expected {expected}; got {value!r}")
    if not (t.loss_ce or t.loss_dice or t.loss_bce):
        raise BenchError(f"{where} train.loss_ce, loss_dice, loss_bce: all 0, so nothing would train; expected "
                         "weights >= 0, some > 0 (multi-class: ce + dice; binary: bce + dice)")
    for key in ("image_order", "label_order"):  # scipy's spline orders
        value = getattr(protocol.eval, key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
            raise BenchError(f"{where} eval.{key}: expected a spline order, a whole number 0..5 (0: nearest, 1: "
                             f"linear, 3: cubic); got {value!r}")


def _tuples(config: Any, table: str) -> Any:
    """``config`` with the lists in its tuple fields made tuples, so that the frozen config stays hashable."""
    lists = {name: tuple(getattr(config, name)) for name, (hint, _) in _file_fields(table).items()
             if typing.get_origin(hint) is tuple and isinstance(getattr(config, name), list)}
    return dataclasses.replace(config, **lists)


# what a value of each simple field type is called in an error: one, and a list of them
_TYPE_NAMES = {bool: ("true or false", "true/false values"), int: ("a whole number", "whole numbers"),
               float: ("a finite number", "finite numbers"), str: ("a string", "strings")}


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the field type ``hint``: a TOML boolean only for bool (a quoted "false"
    is a string, and true), a whole number also for float, a list also for a tuple."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        return any(_fits(value, a) for a in args)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if args[-1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(_fits, value, args))
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """How an error names the field type ``hint``: "true or false", "a list of 2 finite numbers"…"""
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        items = _TYPE_NAMES.get(args[0], ("", "values"))[1]
        return f"a list of {items}" if args[-1] is Ellipsis else f"a list of {len(args)} {items}"
    return _TYPE_NAMES[hint][0]


def _check_types(protocol: Protocol, where: str) -> None:
    """BenchError naming ``where``, the field, its type and the value given, for the first field of any
    table whose value is not of the field's type."""
    for table in _TABLES:
        config = getattr(protocol, table) if table else protocol
        for name, (hint, _) in _file_fields(table).items():
            value = getattr(config, name)
            if not _fits(value, hint):
                key = f"{table}.{name}" if table else name
                shown = list(value) if isinstance(value, tuple) else value  # as the file or option gave it
                raise BenchError(f"{where} {key}: expected {_type_name(hint)}; got {shown!r}")


def _check_input_size(protocol: Protocol, where: str) -> None:
    """A whole-image protocol names img_size (>= 1), a patch protocol patch_size (two or three sides
    >= 1) and not img_size."""
    patch = protocol.patch_size
    if isinstance(patch, tuple) and not patch:
        return
    if not isinstance(patch, tuple) or len(patch) not in (2, 3) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in patch):
        key = "patch_size (--patch-size)" if where == "override" else "patch_size"
        shown = list(patch) if isinstance(patch, tuple) else patch
        raise BenchError(f"{where} {key}: expected whole numbers >= 1, [D, H, W] (3-D patches) or [H, W] "
                         f"(nnU-Net's 2d configuration); got {shown!r}")
    if protocol.img_size or (where == "override" and "img_size" in protocol.overrides):
        if where == "override":
            raise BenchError(f"override img_size (--img-size): a patch protocol sizes its input with patch_size "
                             f"{list(patch)}; change that with --patch-size")
        raise BenchError(f"{where} img_size: a patch protocol sizes its input with patch_size {list(patch)}; "
                         "leave img_size out")


def _check_target_spacing(protocol: Protocol, where: str) -> Protocol:
    """target_spacing as stored ("native", "nnunet" or a tuple of mm > 0, one per patch axis); anything
    but "native" needs a patch protocol."""
    value = protocol.target_spacing
    key = "target_spacing (--target-spacing)" if where == "override" else "target_spacing"
    if value != "native" and not protocol.patch_size:
        raise BenchError(f"{where} {key}: resampling to a spacing belongs to patch protocols (patch_size); "
                         "this protocol zooms whole images to img_size")
    n = len(protocol.patch_size)  # a checked tuple (_check_input_size)
    axes = "[z, y, x]" if n == 3 else "[y, x] (in-plane; each case keeps its slice spacing)"
    if isinstance(value, (list, tuple)):
        if len(value) != n or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                      and math.isfinite(v) and v > 0 for v in value):
            raise BenchError(f"{where} {key}: expected {n} spacings in mm > 0, {axes}; got {list(value)!r}")
        value = tuple(float(v) for v in value)
    elif value not in ("native", "nnunet"):
        raise BenchError(f"{where} {key}: expected 'native', 'nnunet' (nnU-Net's target spacing rule) or "
                         f"{axes} in mm; got {value!r}")
    return dataclasses.replace(protocol, target_spacing=value)


def _nsd_tolerance(value: Any, key: str) -> float | tuple[tuple[str, float], ...]:
    """eval.nsd_tolerance as stored: a float (0 = off) or the table's sorted (name, tolerance)
    pairs; BenchError naming ``key`` (and the class) for anything else."""
    def finite(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    if isinstance(value, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in value):
        # the stored pairs: an override of another field checks them again, and a record's JSON
        # overrides (lists of lists) rebuild the protocol for bench rescore
        value = dict(value)
    if isinstance(value, dict):
        if not value:
            raise BenchError(f"{key}: empty table; give each foreground class a tolerance, or set 0 for no NSD")
        for name, tol in value.items():
            if not finite(tol) or tol <= 0:
                raise BenchError(f"{key}.{name}: expected the class's tolerance, a finite number > 0; got {tol!r}")
        return tuple(sorted((str(n), float(t)) for n, t in value.items()))
    if not finite(value) or value < 0:
        raise BenchError(f"{key}: expected a number >= 0 (0: no NSD) or a table of class name = tolerance; "
                         f"got {value!r}")
    return float(value)


def _content_hash(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _check_keys(data: dict[str, Any], path: Path) -> None:
    """One BenchError naming the file and, with the table it sits in, every unknown, misplaced or
    missing key or table (the likeliest slip: a top-level key appended at the end of a file)."""
    problems, named = [], set()  # keys and tables a problem names already: not to be called missing too
    first = next((k for k, v in data.items() if isinstance(v, dict)), "train")  # the first [table] header
    for table in _TABLES:
        given = data.get(table, {}) if table else data
        if not isinstance(given, dict):
            problems.append(f"{table}: expected a table [{table}]; got {given!r}")
            continue
        known = _file_fields(table)
        for key, value in given.items():
            if key in known or (not table and key in _TABLES):
                continue
            home = next((t for t in _TABLES if t != table and key in _file_fields(t)), None)
            if home is not None:
                named.add(key)
                if home:
                    owner, move = f"a key of [{home}]", f"under [{home}]"
                else:
                    owner, move = "a top-level key", f"above [{first}]"
                here = (f"under [{table}] here (TOML puts every key after a [table] header into that table)"
                        if table else "at the top level here")
                problems.append(f"{key} is {owner}; it sits {here}: move it {move}")
            elif not table and isinstance(value, dict):
                close = closest(key, [t for t in _TABLES if t])
                named.update([close] if close else [])
                problems.append(f"unknown table [{key}]" + (f" (did you mean [{close}]?)" if close else ""))
            else:
                close = closest(key, known)
                named.update([close] if close else [])
                problems.append(f"unknown key {key!r} {_place(table)}{did_you_mean(key, known)}")
    for table in _TABLES:
        given = data.get(table, {}) if table else data
        if not isinstance(given, dict):
            continue  # said above
        missing = [k for k, (_, required) in _file_fields(table).items()
                   if required and k not in given and k not in named]
        if not missing or table in named:
            continue
        if table and table not in data:
            problems.append(f"missing table [{table}] (its required keys: {', '.join(missing)})")
        else:
            problems.append(f"missing required key{'s' * (len(missing) > 1)} {_place(table)}: {', '.join(missing)}")
    if problems:
        raise BenchError(f"{path}: {'; '.join(problems)}")


def _place(table: str) -> str:
    return f"under [{table}]" if table else "at the top level"


def _build(data: dict[str, Any], path: Path) -> Protocol:
    _check_keys(data, path)
    raw = dict(data)
    train, ev = raw.pop("train"), raw.pop("eval", {})
    protocol = Protocol(train=TrainConfig(**train), eval=EvalConfig(**ev), hash=_content_hash(data), **raw)
    protocol = _checked(protocol, f"{path}:")
    _check_names(protocol, path)
    return protocol


def _check_names(protocol: Protocol, path: Path) -> None:
    """The names a file gives: a protocol name that can be part of a file name (run folders are named
    by it: "../x" wrote checkpoints outside --results), a metric policy and datasets that exist
    (else an error at the first run, naming neither the file nor the key)."""
    from bench.data import list_datasets
    from bench.metrics import POLICIES

    if not SAFE_NAME.fullmatch(protocol.name):
        raise BenchError(f"{path}: name {protocol.name!r}: expected letters, digits and . _ + - (run ids and "
                         "folders are named by it), starting with a letter or digit, e.g. my_recipe")
    if protocol.metric_policy and protocol.metric_policy not in POLICIES:
        problem = unknown_name("metric policy", protocol.metric_policy, list(POLICIES), plural="policies")
        raise BenchError(f"{path}: metric_policy: {problem}")
    unknown = [d for d in protocol.datasets if d.strip().lower() not in list_datasets()]  # any case, as bench run
    if unknown:
        raise BenchError(f"{path}: datasets: {unknown_name('dataset', unknown[0], list_datasets())}")


def protocol_from_record(meta: dict[str, Any]) -> Protocol | None:
    """The protocol a run record's ``protocol`` entry says the run used, from its ``recipe`` (every
    setting as it ran, overrides applied), whatever became of its file; None for records without one."""
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict):
        return None
    top = dict(recipe)
    try:
        train, ev = top.pop("train"), top.pop("eval")
        protocol = Protocol(train=TrainConfig(**train), eval=EvalConfig(**ev), hash=meta["hash"],
                            overrides=dict(meta["overrides"]), **top)
    except (KeyError, TypeError):  # settings another version of bench wrote: its file decides, as before
        return None
    return _checked(protocol, f"run record's protocol {meta['name']!r}:")


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))


def same_evaluation(x: Protocol, y: Protocol) -> bool:
    """Whether protocols ``x`` and ``y`` score a model alike (input, normalisation, precision, policy,
    the [eval] table): a recipe's training settings aside (``synapse``, ``synapse_swin`` and
    ``synapse_vmunet`` score alike; they differ in training alone)."""
    fields = ("img_size", "patch_size", "normalize", "target_spacing", "dtype", "metric_policy", "eval")
    return all(getattr(x, f) == getattr(y, f) for f in fields)


def builtin_difference(name: str, version: int, protocol_hash: str) -> str | None:
    """How a protocol of ``name``, ``version`` and content hash (a record's, a board's) stands to the built-in
    of that name as it is now: None where it is that built-in, or no built-in has the name; else "a
    modified copy (built-in: <hash>)" (the built-in's version, other content: a copied file run under the
    built-in's name) or "another version (built-in: v<n>, <hash>)" (an earlier, or later, built-in)."""
    if name not in list_protocols():
        return None
    builtin = load_protocol(name)
    if builtin.hash == protocol_hash:
        return None
    if builtin.version == version:
        return f"a modified copy (built-in: {builtin.hash})"
    return f"another version (built-in: v{builtin.version}, {builtin.hash})"


def load_protocol(name_or_path: str | Path, *, earlier: bool = False) -> Protocol:
    """Load a built-in protocol by name (``synapse``, ``isic17``, ``smoke``…) or a TOML file path.
    ``earlier``: the file of finished runs (rescore, predict), which may be an earlier version of a
    built-in under its name: not warned about as a copy to rename, as a file for new runs is."""
    path = Path(name_or_path)
    if path.suffix.lower() != ".toml":  # my.TOML is a file too
        if (PROTOCOL_DIR / f"{name_or_path}.toml").is_file():
            path = PROTOCOL_DIR / f"{name_or_path}.toml"
        elif path.is_file():  # it read as a built-in's name, unknown
            raise BenchError(f"--protocol {path}: a protocol file's name ends in .toml; rename it")
        else:
            raise unknown_name("protocol", str(name_or_path), list_protocols())
    if path.exists() and not path.is_file():  # a folder named x.toml, a FIFO
        raise BenchError(f"--protocol {path}: {'a folder' if path.is_dir() else 'not a regular file'}; expected a "
                         "protocol file (TOML)")
    if not path.is_file():
        raise absent(path, f"protocol file not found: {path}")
    try:
        data = tomllib.loads(read_text(path, "a protocol (TOML)"))  # Notepad's byte-order mark is no TOML
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: invalid TOML ({exc})") from exc
    protocol = _build(data, path)
    if not earlier and path.resolve().parent != PROTOCOL_DIR.resolve() and protocol.name in list_protocols():
        builtin = load_protocol(protocol.name)
        if builtin.hash != protocol.hash:  # a copy differing in comments at most is the built-in recipe
            warnings.warn(f"{path}: protocol name {protocol.name!r} is a built-in protocol's, but the content "
                          f"differs (hash {protocol.hash}, the built-in's {builtin.hash}): its runs would be "
                          f"labelled and grouped as the built-in {protocol.name!r} on boards, and bench rescore "
                          "would find the built-in's hash changed; give the copy its own name", stacklevel=2)
    return protocol
