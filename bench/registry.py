"""One registry of models: register, create, list, load weights.

Model files register their paper configuration with ``@register_model(...)`` on a thin constructor
``def name(*, num_classes, in_chans=3, img_size=224, **overrides)``. Built-in models live in
``baselines`` and ``ssm_models``; a third-party package registers by importing this decorator, or
by declaring an entry point in the group ``ssm_unet_bench.models`` (loaded on first use). The built-in
models' facts (family, configurations, source; no code) are ``bench.model_facts``, which the
commands that only read records (``bench report``, ``bench check``) ask without importing torch.

Weights never unpickle code: ``load_weights`` reads safetensors, ``.npz`` (no pickle) or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import json
import numbers
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from bench.errors import BenchError, closest, few, unknown_name
from bench.names import matched_names, name_list, nothing_named
from bench.fileio import absent
from bench.model_facts import FAMILIES
from bench.modeling import SegmentationModel, size_error

_BUILTIN_PACKAGES = ("baselines", "ssm_models")
ENTRY_POINT_GROUP = "ssm_unet_bench.models"


class BuildError(BenchError):
    """A model its constructor cannot build with the values given (a --set key it lacks, a value it
    refuses): a grid of several models says that --set went to each."""


class ChannelsError(BenchError):
    """A model whose stem cannot read the data's channel count: a grid names every such model at once."""

    def __init__(self, message: str, model: str, takes: int):
        super().__init__(message)
        self.model, self.takes = model, takes
        self.data: tuple[int, Path] | None = None  # the data's channels and folder, as bench.run.plan_grid met them


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about a model; attached to built models as ``model.bench_entry``."""

    name: str
    family: str
    constructor: Callable[..., nn.Module]
    paper_config: Mapping[str, Any]
    tiny: Mapping[str, Any] = field(default_factory=dict)  # overrides for tests and CPU smoke runs
    source: str = ""  # authors' repository and commit
    paper: str = ""
    description: str = ""
    # authors' state_dict -> ours (renames only); None when the layouts are identical
    convert_official: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    # pretrained backbone loaders by source name: fn(model, state_dict) -> report dict
    pretrained: Mapping[str, Callable[[nn.Module, dict], dict]] = field(default_factory=dict)
    # (source, file name): the file the authors' training starts from, loaded by `bench run`
    # under protocols with ``pretrained = true``; None: the authors train from scratch
    init: tuple[str, str] | None = None
    # constructor keys the factory may choose itself for the input (its model's ``resolved_config``, which
    # records keep in model_config): labels of records from before ``set_keys`` take them for no one's change
    chooses: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelEntry] = {}
_MODEL_NAME = re.compile(r"\w[\w.+-]*")
# entry points of the group, by name: the models each registered, or why it failed to load (bench doctor)
PLUGIN_MODELS: dict[str, list[str]] = {}
PLUGIN_ERRORS: dict[str, str] = {}
_loaded_builtins = False


def register_model(
    *,
    family: str,
    paper_config: Mapping[str, Any],
    tiny: Mapping[str, Any] | None = None,
    source: str = "",
    paper: str = "",
    description: str = "",
    convert_official: Callable | None = None,
    pretrained: Mapping[str, Callable] | None = None,
    init: tuple[str, str] | None = None,
    name: str | None = None,
    chooses: tuple[str, ...] = (),
) -> Callable:
    """Decorator: register ``fn`` under its function name (or ``name``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if init is not None and init[0] not in (pretrained or {}):
        raise ValueError(f"init source {init[0]!r} is not one of the pretrained loaders {sorted(pretrained or {})}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__module__.split(".")[0] not in _BUILTIN_PACKAGES:
            # a script's model registered first must meet the built-in names, not take one; the built-ins
            # themselves do not load the rest (``import baselines`` would load plugins half-imported)
            _load_builtins()
        key = name or fn.__name__
        if not isinstance(key, str) or not _MODEL_NAME.fullmatch(key) or len(key) > 64 or key == "all":
            # it names runs, records and files; "all" is every model to --models
            raise ValueError(f"model name {key!r}: expected up to 64 letters, digits, '_', '.', '+', '-', not 'all' "
                             "(e.g. 'mynet')")
        held = _REGISTRY.get(key)
        if held is not None and _origin(held.constructor) != _origin(fn):
            # a plugin must not silently replace a model (a board would show its numbers under that name)
            raise ValueError(f"model name {key!r} is taken by {_origin(held.constructor)}; "
                             f"register {_origin(fn)} under another name (register_model(name=...))")
        _REGISTRY[key] = ModelEntry(
            name=key,
            family=family,
            constructor=fn,
            paper_config=dict(paper_config),
            tiny=dict(tiny or {}),
            source=source,
            paper=paper,
            description=description or ((fn.__doc__ or "").strip().splitlines() or [""])[0],
            convert_official=convert_official,
            pretrained=dict(pretrained or {}),
            init=tuple(init) if init else None,
            chooses=tuple(chooses),
        )
        return fn

    return deco


def _origin(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for pkg in _BUILTIN_PACKAGES:
        importlib.import_module(pkg)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        before = set(_REGISTRY)
        try:
            ep.load()
            PLUGIN_MODELS[ep.name] = sorted(set(_REGISTRY) - before)
        except Exception as exc:  # one broken plugin must not take every command (and the other models) down
            for half in set(_REGISTRY) - before:  # registered by a module that then failed: not to be trusted
                del _REGISTRY[half]
            first = (str(exc).splitlines() or [""])[0]
            PLUGIN_ERRORS[ep.name] = f"{ep.value}: {type(exc).__name__}: {first}"
            warnings.warn(f"model plugin {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP}) "
                          f"failed to load, its models are missing: {type(exc).__name__}: {first}", stacklevel=2)


def list_models(family: str | None = None) -> list[str]:
    """Registered model names (built-ins and plugins), sorted; of one family ("ssm", "cnn",
    "transformer", in any case) if given."""
    _load_builtins()
    if family is not None:
        if family.lower() not in FAMILIES:
            raise unknown_name("family", family, list(FAMILIES), plural="families")
        family = family.lower()
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def get_entry(name: str) -> ModelEntry:
    """A model's registry entry (family, paper and tiny configurations, source, weight loaders), by its
    name in any case or Unicode form (``"UNET"``, as ``--models`` takes it; ``entry.name`` spells it as
    registered); BenchError with "did you mean" for an unknown name."""
    _load_builtins()
    if isinstance(name, str):  # two registered names alike but for case: only the exact one is either
        name = matched_names([name], _REGISTRY)[0]
    if name not in _REGISTRY:
        exc = unknown_name("model", name, list_models())
        if PLUGIN_ERRORS:
            failed = "; ".join(f"{k} ({v})" for k, v in PLUGIN_ERRORS.items())
            exc = BenchError(f"{exc}; model plugins that failed to load: {failed}")
        else:  # a model of one's own that is not installed, or whose module registers nothing
            exc = BenchError(f"{exc}. A model of your own: its module registers it with @register_model and is "
                             "an entry point of the group ssm_unet_bench.models of an installed package (bench "
                             "doctor lists the plugins found)")
        raise exc
    return _REGISTRY[name]


def is_builtin(name: str) -> bool:
    """Whether ``name`` is one of this project's models (not a plugin's)."""
    return get_entry(name).constructor.__module__.split(".")[0] in _BUILTIN_PACKAGES


def first_forward_error(model: nn.Module, shape: tuple[int, ...], exc: Exception) -> BenchError | None:
    """A model's first forward failing as one line: a plugin's (a layer sized for another input, most
    often), with the line of its code that failed and what sets the size it is given; a built-in
    model's built with keys set otherwise than its paper and tiny configurations (``--set
    dims=[15, 32, 64, 128]``), naming them. None for other built-in runs (their failure is bench's
    bug: its traceback), for bench's own errors, which already say what is wrong, and out of memory."""
    entry: ModelEntry | None = getattr(model, "bench_entry", None)
    from bench.cost import out_of_memory

    # out of memory is no bug of the model's code: its own message says what to do
    if entry is None or isinstance(exc, BenchError) or (isinstance(exc, RuntimeError) and out_of_memory(exc)):
        return None
    said = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if is_builtin(entry.name):
        config = getattr(model, "bench_config", {})
        keys = set(changed_keys(entry.name, config, tiny=True)) & set(entry.paper_config)  # not num_classes etc.
        changed = {k: v for k, v in config.items() if k in keys}
        if not changed:
            return None
        return BenchError(f"{entry.name} failed at its first forward, built with "
                          f"{', '.join(f'{k}={_as_set(v)}' for k, v in changed.items())}: {said}; a value its "
                          "architecture cannot take (BENCH_DEBUG=1 shows the traceback)")
    source = getattr(sys.modules.get(type(model).__module__), "__file__", None)  # none for a notebook's class
    home = Path(source).parent if source else None
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if home and Path(f.filename).parent == home]
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    size = "x".join(map(str, shape[2:]))
    return BenchError(f"{entry.name} failed at its first forward, on a batch of shape {tuple(shape)}: "
                      f"{said}{where}. Its factory was given "
                      f"img_size {getattr(model, 'bench_config', {}).get('img_size', size)} (--img-size or the "
                      "protocol's): a model that takes one input size only builds itself for the img_size it is given "
                      "(BENCH_DEBUG=1 shows the traceback)")


def model_code(name: str) -> str | None:
    """A digest of a plugin model's source: the ``.py`` files of the package its constructor comes
    from (or its one module). Run records keep it, so a run of code edited since is named as such
    rather than taken for the new code's (a run is identified by name and configuration). None for
    the built-in models, whose code the record's code_digest names, and for code without files."""
    module = sys.modules.get(get_entry(name).constructor.__module__)
    top = sys.modules.get(module.__name__.split(".")[0]) if module is not None else None
    if top is None or top.__name__ in _BUILTIN_PACKAGES:
        return None
    roots = [Path(p) for p in getattr(top, "__path__", [])]
    files = sorted(f for r in roots for f in r.rglob("*.py")) if roots else [Path(getattr(top, "__file__", "") or "")]
    digest = hashlib.sha256()
    for f in files:
        try:
            digest.update(f.name.encode() + f.read_bytes())
        except OSError:  # an interactive session's __main__, a file gone since: nothing to name
            return None
    return digest.hexdigest()[:16]


def code_changed(rec: Mapping[str, Any]) -> bool:
    """Whether the plugin model of a finished run record has other source code now than it trained with."""
    return bool(rec.get("model_code")) and rec["model_code"] != model_code(rec["model"])


def resolve_models(spec: str | Iterable[str]) -> list[str]:
    """``"all"`` or a comma list (or a list) -> validated model names, in the given order, each once."""
    names = name_list(spec)
    if names is None:
        return list_models()
    if not names:
        raise nothing_named("--models", spec, "unet,vmunet")
    return list(dict.fromkeys(get_entry(n).name for n in names))  # `--models UNET,unet`: one model, once


def model_filter(spec: str | Iterable[str]) -> list[str] | None:
    """``--models`` of a command on finished runs: None for ``"all"`` (every run, whatever model),
    else the validated names (``resolve_models``)."""
    return None if name_list(spec) is None else resolve_models(spec)


def model_overrides(name: str, overrides: Mapping[str, Any] | None = None, *, tiny: bool = False) -> dict[str, Any]:
    """The constructor arguments that change ``name``'s paper configuration: its tiny configuration
    when ``tiny`` (what ``--tiny`` builds), then ``overrides`` (``--set``'s) over it."""
    entry = get_entry(name)
    small = dict(entry.tiny) if tiny else {}
    if tiny and not small:  # a plugin registered without one: say so, rather than build the full model unasked
        where = "its ModelFacts' tiny in bench/model_facts.py" if is_builtin(name) else "register_model(tiny=...)"
        warnings.warn(f"{name}: has no tiny configuration ({where}); --tiny builds its paper configuration",
                      stacklevel=2)
    overrides = dict(overrides or {})
    _refuse_fixed_keys(overrides)
    return {**small, **overrides}


def _refuse_fixed_keys(overrides: Mapping[str, Any]) -> None:
    if fixed := [k for k in ("num_classes", "in_chans", "img_size") if k in overrides]:
        raise BenchError(f"--set {', '.join(fixed)}: not a --set key; the data gives a run its classes and channels "
                         "(bench profile: --num-classes, --in-chans) and --img-size its input size")


def identity_overrides(name: str, overrides: Mapping[str, Any], *, tiny: bool = False) -> dict[str, Any]:
    """``overrides`` (``model_overrides``'s) less the keys at the paper's value that ``tiny`` does not
    set otherwise: what identifies a run's model. ``--set d_state=16`` (VM-UNet's own) builds the paper
    model, so it is the run without it, not a second run under another id. The constructor still sees
    the key: ``deep_supervision=True`` on 9 classes is refused, not read as the paper's choice."""
    entry = get_entry(name)
    small = entry.tiny if tiny else {}
    return {k: v for k, v in overrides.items() if k in small or k not in entry.paper_config
            or _as_set(v) != _as_set(entry.paper_config[k])}


def check_set_kinds(name: str, overrides: Mapping[str, Any]) -> None:
    """BenchError for a --set number where the paper value is true/false, or true/false for a number: 0
    builds the model false builds, yet would be another run id and label (and true for a number is 1),
    and the constructor takes either without a word. Asked by bench run and profile of --set, not by
    create_model, which rebuilds older records' configurations as they were kept."""
    _refuse_fixed_keys(overrides)  # create_model's own arguments: a TypeError there
    paper = get_entry(name).paper_config
    if flags := [f"{k} takes {'a ' * (_kind(paper[k]) != 'true/false')}{_kind(paper[k])}, e.g. "
                 f"{_as_set(paper[k])}; got {_as_set(v)}"
                 for k, v in overrides.items() if k in paper and paper[k] is not None
                 and (isinstance(paper[k], bool) != isinstance(v, bool))]:
        raise BenchError(f"{name}: --set {'; '.join(flags)}")


def changed_keys(name: str, overrides: Mapping[str, Any], *, tiny: bool = False) -> list[str]:
    """The keys of ``overrides`` (``model_overrides``') that make a run another configuration than the
    paper's (or, with ``tiny``, the tiny one's): what its label names even where it is alone. Records
    and profiles keep them, since their ``model_config`` also holds values a constructor chose itself
    (Swin-Unet's window for a small input), which are no one's change."""
    small = get_entry(name).tiny if tiny else {}
    return sorted(k for k, v in identity_overrides(name, overrides, tiny=tiny).items()
                  if not (k in small and _as_set(v) == _as_set(small[k])))


def _as_set(value: Any) -> str:
    """A configuration value as records write it (tuples as lists), to compare two."""
    return json.dumps(value, sort_keys=True, default=str)


def create_model(name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 224, tiny: bool = False,
                 **overrides: Any) -> nn.Module:
    """Build a registered model with its paper configuration, changed by ``overrides`` (its tiny
    configuration first when ``tiny``, as ``--tiny`` builds it).

    ``None`` overrides are dropped, so unset CLI options fall back to the paper values.

    >>> model = create_model("unet", num_classes=9, in_chans=1, img_size=224)
    >>> small = create_model("vmunet", num_classes=9, img_size=64, tiny=True)
    """
    entry = get_entry(name)
    name = entry.name  # as registered, in its messages too ("VMUNet" asked)
    overrides = model_overrides(name, {k: v for k, v in overrides.items() if v is not None}, tiny=tiny)
    sizes = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}
    for arg, value in sizes.items():
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = sizes[arg] = int(value)  # labels.max() + 1 in a notebook: a NumPy integer
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            what = " (inputs are img_size x img_size, square)" if arg == "img_size" else ""
            raise BenchError(f"{name}: {arg} must be a positive whole number{what}; got {value!r}")
    try:
        model = entry.constructor(**sizes, **overrides)
    except Exception as exc:
        # other errors of a configuration's own (depths=[1, 1, 1]: an IndexError; d_state=-1: a RuntimeError)
        # are the values' too; without overrides they are bench's bug, or the plugin's: the traceback
        if isinstance(exc, BenchError) or not (isinstance(exc, (TypeError, ValueError)) or overrides):
            raise
        build = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}
        said = str(exc)
        # a plugin's constructor without the registry's keywords: every command builds models with them
        contract = [a for a in build if isinstance(exc, TypeError) and f"'{a}'" in said]
        if contract:
            raise BenchError(f"{name}: its constructor does not take {', '.join(contract)} ({said}); a registered "
                             "constructor takes num_classes, in_chans and img_size as keywords (it may ignore "
                             "those it does not use)") from exc
        # a misspelt --set key: the keys the constructor refused, the nearest of its configuration's offered
        refused = [k for k in overrides if isinstance(exc, TypeError) and f"keyword argument '{k}'" in said]
        if refused:
            close = [repr(m) for k in refused if (m := closest(k, entry.paper_config))]
            raise BuildError(f"{name}: no --set key {', '.join(map(repr, refused))}"
                             + (f" (did you mean {', '.join(close)}?)" if close else "")
                             + f"; its configuration's keys: {', '.join(entry.paper_config) or 'none'}") from exc
        # a value the constructor refuses (ValueError, e.g. spatial_dims=4, an img_size it cannot take):
        # the constructor's own words say which
        given = ", ".join(f"{k}={v!r}" for k, v in {**build, **overrides}.items())  # width='abc' is a string
        # widths="8,16,32,64": the constructor's own words ("not all arguments converted") say nothing of it
        paper = {k: list(v) if isinstance(v, tuple) else v for k, v in entry.paper_config.items()}  # as --set writes it
        typed = [f"{k} takes a {_kind(paper[k])}, e.g. {paper[k]!r}"
                 for k, v in overrides.items() if k in paper and _kind(v) != _kind(paper[k])]
        raise BuildError(f"{name}: cannot build with {given} ({said})"
                         + (f"; {'; '.join(typed)}" if typed else "")) from exc
    if not isinstance(model, SegmentationModel):  # a plugin's plain module: nothing checks its inputs or outputs
        warnings.warn(f"{name}: {type(model).__name__} is not a bench.modeling.SegmentationModel, so its inputs and "
                      "outputs go unchecked (an output of another size fails inside the loss, with a traceback): "
                      "subclass it and give forward_logits", stacklevel=2)
    elif missing := [a for a in ("num_classes", "in_chans") if not hasattr(model, a)]:
        # else the first forward fails with an AttributeError, after the data was prepared
        raise BenchError(f"{name}: {type(model).__name__} does not set self.{' or self.'.join(missing)}; "
                         "SegmentationModel's forward checks inputs and logits against them: set them in __init__")
    _check_img_size(name, model, img_size)
    built = getattr(model, "in_chans", in_chans)  # the authors' 3-channel stems take 3 whatever was asked
    if in_chans not in (built, 1):
        raise ChannelsError(f"{name}: its stem takes {built}-channel images (a 1-channel image is repeated, as its "
                            f"authors do); got in_chans={in_chans}: this model cannot read this data's channels",
                            name, built)
    model.bench_entry = entry
    # a constructor that adapts a value to the input (e.g. a window size) reports it in resolved_config
    model.bench_config = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size, **overrides,
                          **getattr(model, "resolved_config", {})}
    return model


def _kind(value: Any) -> str:
    """What a configuration value is, as far as a misplaced type goes (1 and 1.0 are both numbers)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    return "list" if isinstance(value, (list, tuple)) else "string" if isinstance(value, str) else type(value).__name__


def _check_img_size(name: str, model: nn.Module, img_size: int) -> None:
    # At creation, not at the first forward: `bench run` then fails before its training starts.
    d = getattr(model, "size_divisor", 1)
    if img_size % d:
        raise size_error(name, img_size, d, f"{type(model).__name__} needs (it downsamples {d}x)")


def check_buildable(name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 224,
                    **overrides: Any) -> None:
    """Build the model once and drop it: the one sure check of ``img_size`` and ``--set`` overrides
    for every constructor. A grid calls it for each model before its first run trains."""
    create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **overrides)


# --------------------------------------------------------------------------------------------- weights

_THOP_BUFFERS = re.compile(r"(^|\.)(total_ops|total_params)$")
# what DataParallel/DDP (module.) and torch.compile (_orig_mod.) put before every key, nested in either order
_WRAPPERS = re.compile(r"^(?:module\.|_orig_mod\.)+")


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """The tensors of a ``model``/``state_dict``/``network_weights`` (nnU-Net v2)/``model_state_dict``
    (the VM-UNet authors' latest.pth) container, or the mapping itself."""
    for key in ("model", "state_dict", "model_state", "network_weights", "model_state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            return state_dict[key]
    return state_dict


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap the container (``_unwrap``), strip ``module.``/``_orig_mod.`` (any nesting), drop thop buffers."""
    out = {}
    for k, v in _unwrap(state_dict).items():
        if _THOP_BUFFERS.search(k):
            continue
        out[_WRAPPERS.sub("", k)] = v
    return out


def strict_load(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(sd)``, or one BenchError naming ``what`` (the file) and every missing,
    unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shaped = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shaped:
        def show(items: list[str]) -> str:
            return few(items, 12) or "none"

        # what the model was built for: a head, stem or position table of another size tells which differs
        cfg = getattr(model, "bench_config", None)
        built = (f"; the model was built with {', '.join(f'{k}={v}' for k, v in cfg.items())} (the data's classes "
                 "and channels, the protocol's input size, --set, --tiny): a file of another configuration does "
                 "not fit" if cfg else "")
        seen = misfit_diagnosis(model, sd, missing, unexpected)
        raise BenchError(
            f"{what} does not match {type(model).__name__}: "
            f"missing {len(missing)} [{show(missing)}]; unexpected {len(unexpected)} [{show(unexpected)}]; "
            f"mis-shaped {len(shaped)} [{show(shaped)}]{built}" + (f". What it looks like: {seen}" if seen else "")
        )
    broken = [k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # a diverged or corrupted save: it would score as a model that finds nothing, unsaid
        raise BenchError(f"{what}: {len(broken)} tensor(s) hold NaN or infinite values (first: {broken[0]})")
    model.load_state_dict(sd, strict=True)


IMAGENET_CLASSES = (1000, 21841, 21843)  # ImageNet-1k and -21k classifier heads: a pretrained encoder's file
# tensors whose size follows the input's: position embeddings, relative position tables, shifted-window masks
_SIZED_BY_INPUT = re.compile(r"pos(ition)?_?emb|relative_position|attn_mask")


def misfit_diagnosis(model: nn.Module, sd: Mapping[str, torch.Tensor], missing: list[str],
                     unexpected: list[str]) -> str:
    """What a file that does not load into ``model`` (``strict_load``) looks like, where a cheap test
    tells: an ImageNet classifier (a pretrained encoder, not a trained model), convolutions of the
    other dimensionality (the 2-D or 3-D variant), position tables of another input size, or another
    registered model's keys; "" where none does."""
    entry: ModelEntry | None = getattr(model, "bench_entry", None)
    name = entry.name if entry else type(model).__name__
    own = model.state_dict()
    heads = [k for k in unexpected if torch.is_tensor(sd[k]) and re.search(r"(^|\.)(head|classifier|fc)\.", k)
             and set(sd[k].shape) & set(IMAGENET_CLASSES)]
    if heads:
        start = (f"; the authors' training starts from it ({entry.init[1]}): give its folder to bench run as "
                 "--pretrained-dir DIR under a protocol with pretrained = true (in Python: load_weights(model, path, "
                 f"source={entry.init[0]!r}))" if entry and entry.init else "")
        return (f"an ImageNet classifier's weights ({heads[0]}: {tuple(sd[heads[0]].shape)}), a pretrained encoder "
                f"rather than a trained {name}; --weights takes a trained segmentation model{start}")
    flat = [k for k in own if k in sd and torch.is_tensor(sd[k]) and min(sd[k].ndim, own[k].ndim) >= 4
            and abs(sd[k].ndim - own[k].ndim) == 1]  # a convolution's kernel: (out, in, *space)
    if flat:
        dims = sd[flat[0]].ndim - 2
        from bench.protocol import list_protocols, load_protocol

        # the built-in protocols of that many dimensions that predict in patches (CI's drift grids aside)
        fits = [p for p in list_protocols() if not p.startswith("drift")
                and (proto := load_protocol(p)).patches and proto.spatial_dims == dims]
        return (f"{dims}-D convolutions ({flat[0]}: file {tuple(sd[flat[0]].shape)}) for this {own[flat[0]].ndim - 2}-D "
                f"model: weights of {name}'s {dims}-D variant, which a {dims}-D protocol builds"
                + (f" (--protocol {' or '.join(fits)})" if fits else ""))
    tables = [k for k in own if k in sd and torch.is_tensor(sd[k]) and sd[k].shape != own[k].shape
              and _SIZED_BY_INPUT.search(k)]
    if tables:
        trained = getattr(model, "img_size_of", lambda _: None)(sd)
        built = getattr(model, "bench_config", {}).get("img_size")
        size = (f"{trained}x{trained}, where this model was built for {built}x{built}: --img-size {trained} builds "
                "it so" if trained and trained != built else "another input size than this model was built for")
        return f"position tables or window masks of another input size ({tables[0]}): trained at {size}"
    if len(unexpected) > len(sd) / 2 and len(missing) > len(own) / 2:
        tops = {k.split(".")[0] for k in sd}
        alike = [m for m in list_models() if m != name and tops == _top_keys(m)] or [
            m for m in list_models() if m != name and tops <= _top_keys(m)]  # all its keys, else some of them
        if alike:
            return (f"{' or '.join(alike)}'s keys ({', '.join(sorted(tops)[:4])}{', …' * (len(tops) > 4)}): "
                    f"weights of another model; --models {alike[0]}")
    return ""


@functools.lru_cache(maxsize=None)
def _top_keys(name: str) -> frozenset[str]:
    """The first parts of a registered model's state_dict keys ("transformer", "decoder", …), from its
    tiny configuration (what names the keys, not their sizes); empty where it will not build so."""
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # the caller's RNG, its warnings
            warnings.simplefilter("ignore")
            built = create_model(name, num_classes=2, img_size=64, tiny=True)
    except Exception:  # noqa: BLE001 (a plugin that cannot build small: it is not named, nothing more)
        return frozenset()
    return frozenset(k.split(".")[0] for k in built.state_dict())


def load_official_state_dict(model: nn.Module, state_dict: Mapping[str, Any], what: str = "state_dict") -> nn.Module:
    """Load a state_dict in the authors' layout strictly (see shared/reference/<id>/manifest.tsv);
    ``what`` names it in the error (``load_weights``: the file)."""
    sd = clean_state_dict(state_dict)
    entry: ModelEntry | None = getattr(model, "bench_entry", None)
    if entry is not None and entry.convert_official is not None:
        sd = entry.convert_official(dict(sd))
    strict_load(model, sd, what)
    return model


# before 2.6, torch.load(weights_only=True) can be made to run code by a crafted file (CVE-2025-32434)
SAFE_LOAD_TORCH = (2, 6)


def old_torch_problem() -> str | None:
    """Why this torch must not unpickle a checkpoint (``SAFE_LOAD_TORCH``), or None; ``bench doctor`` says it too."""
    found = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    if found and tuple(map(int, found.groups())) >= SAFE_LOAD_TORCH:
        return None
    return (f"torch {torch.__version__} is older than 2.6, whose weights-only loading a crafted file can get past to "
            "run code (CVE-2025-32434); upgrade it: pip install 'torch>=2.6'")


def torch_load(path: Path, allowed: list | tuple = ()) -> Any:
    """A pickle-based torch checkpoint, tensors, plain containers and ``allowed`` globals only (weights_only);
    the one place bench unpickles. BenchError naming ``path`` under a torch whose weights-only loading is unsafe."""
    problem = old_torch_problem()
    if problem:
        raise BenchError(f"{path}: refused to load a pickle-based checkpoint: {problem}")
    with torch.serialization.safe_globals(list(allowed)):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_weights_file(path: str | Path) -> dict[str, Any]:
    """Read a weights file without ever unpickling code: safetensors, npz or weights-only torch."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise absent(path, f"weights file {'is a folder' if path.is_dir() else 'not found'}: {path}")
    if path.stat().st_size == 0:  # a copy that failed, a placeholder: torch would say "EOFError"
        raise BenchError(f"{path}: the weights file is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        with path.open("rb") as f:
            head = f.read(8)
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or its legacy pickle
            raise BenchError(f"{path}: not a checkpoint bench can read (it begins {head!r}); expected torch.save's "
                             "file (.pt, .pth: its zip, or a pickle of protocol 2 or later), .safetensors or .npz")
        raw = torch_load(path, _numpy_globals())
    except BenchError:
        raise
    except Exception as exc:  # pickle.UnpicklingError, zip errors, safetensors errors, …
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
            # torch's text is pages of advice with terminal colour codes: the object it met is what matters
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            held = f" (it holds {found[1]}; torch.save(model.state_dict(), path) writes tensors only)" if found else ""
            raise BenchError(
                f"{path}: refused to load — the file needs pickled Python objects beyond tensors "
                f"(weights_only=True), which could run code. Re-save it as a plain state_dict{held}."
            ) from None
        raise BenchError(f"{path}: cannot read weights ({type(exc).__name__}: {msg})") from None
    if not isinstance(raw, Mapping):  # a bare list or tensor: no names to load by
        raise BenchError(f"{path}: holds a {type(raw).__name__}, not a state_dict (a mapping of parameter names to "
                         "tensors, perhaps under 'model' or 'state_dict')")
    return raw


def _numpy_globals() -> list:
    """NumPy scalars and arrays, which weights-only loading refuses by default: the authors' checkpoints
    keep losses as np.float64 beside the weights (VM-UNet's latest.pth, nnU-Net's logging). Arrays of
    Python objects stay refused (their items need globals of their own). Their numpy 1.x names too."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    names = [obj for f in (multiarray.scalar, multiarray._reconstruct)
             for obj in (f, (f, f"numpy.core.multiarray.{f.__name__}"))]
    kinds = (np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)
    return names + [np.ndarray, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def load_weights(model: nn.Module, path: str | Path, source: str = "authors") -> dict[str, Any]:
    """The one entry point for weight files; returns a load report.

    ``source="authors"`` (default): an authors' checkpoint or one of our own (``{"model": sd, ...}``),
    loaded strictly. Other sources name a pretrained-backbone mapping registered by the model
    (e.g. ``"vmamba"`` for VM-UNet); their report says what was loaded and what was not.
    """
    if not isinstance(model, nn.Module) or not isinstance(path, (str, os.PathLike)):
        given = f"({type(model).__name__}, {type(path).__name__})"
        hint = "; a state_dict in memory loads with strict_load(model, state_dict)" if isinstance(path, Mapping) else ""
        raise BenchError(f"load_weights(model, path): expected a model and a file's path; got {given}{hint}")
    raw = read_weights_file(path)
    if source == "authors":
        load_official_state_dict(model, raw, str(path))
        # what the file held beyond the model's tensors: thop's counters, which the authors' scripts save
        skipped = sorted(k for k in _unwrap(raw) if _THOP_BUFFERS.search(k))
        # a checkpoint of bench's own says which run wrote it (train.py's trained_by); others: None
        trained_by = raw.get("trained_by") if isinstance(raw.get("trained_by"), Mapping) else None
        return {"source": source, "path": str(path), "loaded": len(model.state_dict()), "skipped": skipped,
                "trained_by": dict(trained_by) if trained_by else None}
    entry: ModelEntry | None = getattr(model, "bench_entry", None)
    loaders = dict(entry.pretrained) if entry else {}
    if source not in loaders:
        raise unknown_name("weights source", source, ["authors", *sorted(loaders)])
    report = loaders[source](model, raw)
    return {"source": source, "path": str(path), **report}
