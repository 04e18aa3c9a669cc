"""``bench report --format methods``: a paper's Methods paragraphs, per board, from what the runs did.

Written from the full records (``records.load_with_records``), not from a protocol's description: the
recipe as it ran (``protocol.recipe``, overrides applied), the iterations that actually ran, the
metric policy's recorded conventions, the environment. Runs are grouped as the leaderboards group
them (``label_runs``); where the runs of one board differ in a setting, the text says so.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError, counted
from bench.names import name_list
from bench.protocol import builtin_difference, list_protocols, protocol_from_record
from bench.records import (finished, load_with_records, no_runs, runs_dir, select_runs, short_commit, split_fold,
                           unrecorded_runs)
from bench.runlog import RUN_LOG
from bench.report.board_text import _fmt_duration, and_list, board_title, code_detail, single_run
from bench.report.boards import _binary_task, _code_versions
from bench.report.tables import latex_escape, latex_header
from bench.report.labels import _tiny_changes, _tiny_config, config_changes, label_runs, overrides_text

_DICE_VARIANTS = {"transunet": "TransUNet's soft Dice over all classes, background included",
                  "nnunet": "nnU-Net's batch Dice over the foreground classes"}
_AUGMENT = {"transunet": "TransUNet's random rot90/flip or rotation", "vmunet_isic": "VM-UNet's ISIC flips and rotation",
            "nnunet": "nnU-Net's default augmentation"}
_SELECT = {"final": "the final ones", "best_train_loss": "those of the epoch with the lowest training loss",
           "lr_min": "those of the last epoch at the schedule's lowest learning rate"}
_SKIP_PACKAGES = {"ssm-unet-bench"}  # named as bench's version
_FAMILIES = {"ssm": "a state-space (Mamba-style) model", "cnn": "a convolutional network",
             "transformer": "a transformer-based network"}
# the selective scan's implementations (ssm_models.scan.BACKENDS), as a reader knows them
_SCANS = {"cuda": "the CUDA kernels of mamba-ssm", "cpu": "this project's C++ CPU kernel",
          "torch": "this project's implementation in PyTorch operations",
          "ref": "the step-by-step reference implementation (slow; for testing)"}


def render_methods(results_dir: Path, models: str | Iterable[str] | None = None,
                   datasets: str | Iterable[str] | None = None, policies: str | Iterable[str] | None = None, *,
                   empty_ok: bool = True, reference: str | None = None) -> str:
    """Markdown: per board (dataset × protocol × policy, as ``label_runs`` groups finished runs) a
    ``##`` heading and short paragraphs on the models, training, data and evaluation, the statistics the
    report's tables use (with ``reference``: `bench report --reference`'s paired tests and ranks too), and
    environment; then how the cost tables counted and timed (the folder's ``bench profile`` records).
    Without finished runs, the line saying so (``empty_ok``; else a BenchError, as `bench report` raises it)."""
    results_dir = Path(results_dir)
    # recheck: the numbers the boards show, and which records they restate (said per board)
    runs, read = load_with_records(results_dir, recheck=True, current=True)  # each file read once
    df = finished(select_runs(runs, models, datasets, results_dir, policies=policies))
    if df.empty:
        said = no_runs(results_dir, models, datasets, policies)
        if not empty_ok:
            raise BenchError(said)
        return f"{said}.\n"
    df = label_runs(df)
    if reference:  # a model (or board row) of these runs, as --reference of the other formats checks it
        from bench.report.significance import _check_reference

        _check_reference(reference, {"runs": df}, results_dir)
    parts = []
    for _, group in df.groupby(["board_dataset", "board_protocol", "policy"], sort=True):
        group = group.sort_values(["model_label", "seed", "run_id"])  # the same text whatever order files list in
        parts.append(_board(group, [read[run_id] for run_id in group["run_id"]], reference))
    cost = _cost(df, results_dir)
    if cost:
        parts.append(f"## Computational cost\n\n{cost}\n")
    missing = warn_unrecorded(results_dir, df, models)
    if missing:
        parts.append(f"## Runs without a record\n\n{missing}\n")
    return "\n".join(parts)


def methods_latex(text: str) -> str:
    """The Methods text (``render_methods``' Markdown) as LaTeX, escaped as the tables are: a board's ``##``
    heading a \\subsection*, a paragraph's bold lead ("**Models.**") a \\paragraph."""
    parts = [latex_header("bench report --format methods: the Methods paragraphs per board.", tables=False)]
    for block in text.strip("\n").split("\n\n"):
        if block.startswith("## "):
            parts.append(f"\\subsection*{{{latex_escape(block[3:])}}}")
        elif lead := re.match(r"\*\*(.+?)\*\* ?", block):
            parts.append(f"\\paragraph{{{latex_escape(lead.group(1))}}} {latex_escape(block[lead.end():])}")
        else:
            parts.append(latex_escape(block))
    return "\n\n".join(parts) + "\n"


def warn_unrecorded(results_dir: Path, df: pd.DataFrame, models: str | Iterable[str] | None) -> str:
    """The runs of the boards of ``df`` (finished runs, as selected) that began in ``results_dir`` and have
    no record (``records.unrecorded_runs``; of ``models`` only, where given), in one sentence, said as a
    warning too; "" where there are none. Each is named with its run id's last part: an off-protocol
    variant (`--lr 1e30`) of "unet seed 0" is not the unet seed 0 of the board. A deleted record or a
    diverged seed otherwise only shows as a board with fewer seeds."""
    given = name_list(models)
    if "model_label" not in df:  # `bench report`'s runs: named by their rows' labels, as the boards show them
        df = label_runs(df)
    runs = unrecorded_runs(results_dir, zip(df["dataset"], df["protocol"]),
                           None if given is None else {*given, *df["model"]})
    if not runs:
        return ""
    by_board: dict[str, list[str]] = {}
    for run in runs:
        by_board.setdefault(f"{run['dataset']}, protocol {run['protocol']}", []).append(_unrecorded(run, df))
    named = " — ".join((f"{board}: " if len(by_board) > 1 else "") + "; ".join(names)
                       for board, names in by_board.items())
    text = f"Runs without a record, which no board counts: {named}."
    folder = f"{runs_dir(results_dir)}/<run id>/"
    warnings.warn(f"{text} Their logs: {folder}{RUN_LOG}; once a run should not count, delete (or move out) its "
                  f"folder {folder} and it is no longer said", stacklevel=3)
    return text


def _unrecorded(run: dict, df: pd.DataFrame) -> str:
    """A run without a record in words: its row label and off-protocol changes where its log says them
    (``runlog.settings``), its id's last part and why it has no record, and the board's run of the same
    model and seed where there is one: the two are other runs (other settings, data or policy)."""
    label, _, off = (run.get("settings") or run["model"]).partition(" · ")
    text = f"{_run_name(run, label)}{', ' + off if off else ''}, run …{run['run_id'][-8:]} ({run['why']})"
    same = df[(df["dataset"] == run["dataset"]) & (df["protocol"] == run["protocol"]) & (df["model"] == run["model"])
              & (df["seed"] == run["seed"]) & (df["split"] == run["split"])
              & (df["run_id"].str.split(".").str[0] != run["run_id"])]  # not its own rescored copy
    if not same.empty:
        row = same.iloc[0]
        text += (f", another run than the board's {_run_name(run, row.get('model_label') or run['model'])} "
                 f"(run …{row['run_id'].split('.')[0][-8:]})")
    return text


def _board(group: pd.DataFrame, recs: list[dict], reference: str | None = None) -> str:
    first = recs[0]
    proto = first["protocol"]
    title = board_title(group["board_dataset"].iloc[0], proto["name"], proto["version"], proto["hash"],
                        overrides_text(json.dumps(proto["overrides"])), first["policy"])
    labels = list(group["model_label"])
    evaluation = " ".join(t for t in (_evaluation(recs, group), _restated(labels, recs, group)) if t)
    paragraphs = [_lead(first), _models(labels, recs), _training(labels, recs), evaluation,
                  _statistics(group, recs, reference), _environment(labels, recs, group), _reproducibility(recs)]
    return f"## {title}\n\n" + "\n\n".join(p for p in paragraphs if p) + "\n"


def _lead(rec: dict) -> str:
    """The heading's board key in a sentence: the protocol (name, version, the hash of its settings, what
    was changed) and the metric policy."""
    proto = rec["protocol"]
    changed = overrides_text(json.dumps(proto["overrides"]))
    builtin = proto["name"] in list_protocols()  # else a protocol file of the user's: not bench's to vouch for
    differs = builtin and builtin_difference(proto["name"], proto["version"], proto["hash"])
    return (f"Runs of {'bench' if builtin else 'the custom'} protocol {proto['name']}"
            + ("" if builtin else " (a protocol file, not one built into bench)")
            + f", version {proto['version']} (settings hash {proto['hash']})" + (f", {differs}" if differs else "")
            + (f", with these settings changed: {changed}" if changed else "")
            + f"; scores under the metric policy {rec['policy']}.")


# ------------------------------------------------------------------------------------------ wording


def num(value: Any) -> str:
    """A number as prose prints it: 0.001, 1e-5, 0.9, 300 (no "1e-05", no "300.0")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")


def _shown(value: Any) -> str:
    """A setting's value: lists as "[8, 16]", numbers plainly."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return num(value)


def _per_run(recs: list[dict], get: Callable[[dict], Any]) -> str:
    """One value where the runs agree; else each value with its runs' seeds, said to differ."""
    values: dict[str, list[str]] = {}
    for rec in recs:
        values.setdefault(str(get(rec)), []).append(_run_name(rec))
    if len(values) == 1:
        return next(iter(values))
    return "differing between runs: " + "; ".join(f"{v} ({', '.join(runs)})" for v, runs in values.items())


def _run_name(rec: dict, label: str | None = None) -> str:
    """A run in words: its row's label (else its model), seed and fold."""
    fold = split_fold(rec["split"])
    return f"{label or rec['model']} seed {rec['seed']}" + (f" fold {fold}" if fold is not None else "")


def _recipe(rec: dict) -> dict:
    """The settings the run ran with; BenchError for records written before records kept them."""
    recipe = rec["protocol"].get("recipe")
    if not isinstance(recipe, dict):
        raise BenchError(f"records/{rec['run_id']}.json: written before records kept their recipe (protocol.recipe); "
                         "--format methods states what ran and needs it")
    return recipe


# ------------------------------------------------------------------------------------------ models


def _by_label(labels: list[str], recs: list[dict]) -> dict[str, list[dict]]:
    """A board's records per row label, in the board's order."""
    by_label: dict[str, list[dict]] = {}
    for label, rec in zip(labels, recs):
        by_label.setdefault(label, []).append(rec)
    return by_label


def _models(labels: list[str], recs: list[dict]) -> str:
    by_label = _by_label(labels, recs)
    # one protocol per board (its key): its dimensions from the first record's recipe, not each row's
    protocol = protocol_from_record(recs[0]["protocol"])
    dims = protocol.spatial_dims if protocol is not None else None
    return "**Models.** " + " ".join(_model(label, runs, dims) for label, runs in by_label.items())


def _model(label: str, runs: list[dict], dims: int | None) -> str:
    rec = runs[0]
    parts = [_FAMILIES.get(rec["family"], f"family {rec['family']}")]
    changes = _config_changes(rec, dims)
    if rec.get("tiny"):  # the tiny configuration's own keys, and what --set gave beside or instead of them
        cfg, tiny = rec["model_config"], set(_tiny_config(rec["model"]))
        other = set(_tiny_changes(rec["model"], cfg)) | {key for key, _ in changes if key not in tiny}
        own = ", ".join(text for key, text in changes if key not in other)
        parts.append("the small test configuration, not the paper's" + (f" ({own})" if own else "")
                     + _set_otherwise(rec, [(k, f"{k}={_shown(cfg[k])}") for k in cfg if k in other]))
    elif changes:
        parts.append("the paper's configuration" + _set_otherwise(rec, changes))
    else:
        parts.append("the paper's configuration")
    params = sorted({r["cost"]["params"] for r in runs if r["cost"].get("params")})
    if params:
        parts.append("–".join(f"{p / 1e6:.2f}" for p in dict.fromkeys((params[0], params[-1]))) + " M parameters")
    parts.append(_start(runs))
    return f"{label}: {'; '.join(parts)}."


def _set_otherwise(rec: dict, changes: list[tuple[str, str]]) -> str:
    """Keys set otherwise than the configuration named: those the user set (records' ``set_keys``), and
    those the model chose itself for the input (Swin-Unet's window for a small image); records before
    ``set_keys`` were kept tell them apart by nothing."""
    if not changes:
        return ""
    if not isinstance(rec.get("set_keys"), list):
        return f", with {', '.join(text for _, text in changes)} set otherwise"
    given = [text for key, text in changes if key in rec["set_keys"]]
    chosen = [text for key, text in changes if key not in rec["set_keys"]]
    return "".join((f", with {', '.join(given)} set by the user" if given else "",
                    f", with {', '.join(chosen)} chosen by the model for the input size" if chosen else ""))


def _config_changes(rec: dict, dims: int | None) -> list[tuple[str, str]]:
    """The configuration keys that differ from the model's registered paper configuration
    (``labels.config_changes``, in its protocol's spatial ``dims``): (key, "key=value")."""
    cfg = rec["model_config"]
    return [(k, f"{k}={_shown(cfg[k])}") for k in config_changes(rec["model"], cfg, dims)]


def _start(runs: list[dict]) -> str:
    def start(rec: dict) -> str:
        if rec.get("weights"):
            w = rec["weights"]
            by = w.get("trained_by")  # a bench run's checkpoint names it; others (the authors') do not
            whence = (f", trained by run {by.get('run_id')}{_epoch_of(by)} under protocol {by.get('protocol')} on "
                      + ("this split's training items" if by.get("same_items") else
                         # named as this split's: no test case of it, in data edited in its test labels or other data
                         ("this split's training items, in data whose label files (Synapse: test volumes) differ from this run's"
                          if by.get("same_but_labels") else "items named as this split's training items, in other data")
                         if by.get("same_data") is False and by.get("same_item_names") else
                         "other data than this run's (its test cases may be among them)"
                         if by.get("same_data") is False else
                         "other items than this split's training set (its test cases may be among them)")
                      if by else "")
            return f"evaluated from given weights {w['file']} ({_sha256(w['sha256'])}){whence}, not trained here"
        if rec.get("init"):
            return f"initialised from {rec['init']['file']} (sha256 {rec['init']['sha256'][:8]})"
        return "trained from scratch"
    return _per_run(runs, start)


def _sha256(digest: str) -> str:
    """A weights file's sha256 as its record keeps it: records before the full hash was kept hold its
    first 16 hex digits, which must not read as the whole."""
    return f"sha256 {digest}" if len(digest) >= 64 else f"sha256 {digest}…, its first {len(digest)} hex digits"


def _epoch_of(by: dict) -> str:
    """Which of a run's weights were given, where not its final ones: those its protocol's select rule keeps
    (best.pt, lr_min.pt), an unfinished run's last.pt or a per-epoch checkpoint, with the epoch they are from
    (``trained_by``'s ``checkpoint``; files written before it was kept: the epoch alone); "" for its last
    epoch's, or a file older than ``trained_by`` kept epochs."""
    epoch, epochs, checkpoint = by.get("epoch"), by.get("epochs"), by.get("checkpoint")
    if epoch is None or epochs is None:
        return ""
    after = f"after epoch {epoch + 1} of {epochs}"
    if checkpoint in ("best_train_loss", "lr_min"):  # what the run itself selects, whichever epoch that was
        return f" (the weights it selects, {_SELECT[checkpoint]}: {after})"
    if epoch + 1 >= epochs:
        return ""
    if checkpoint == "last":
        return f" (its last checkpoint, {after}: an unfinished training's, not its final weights)"
    if checkpoint == "epoch":
        return f" (its per-epoch checkpoint {after}, not its final weights)"
    return f" (its weights {after}, not its last epoch's)"


# ------------------------------------------------------------------------------------------ training


def _training(labels: list[str], recs: list[dict]) -> str:
    trained = [r for r in recs if not r.get("weights")]
    trained_labels = [label for label, r in zip(labels, recs) if not r.get("weights")]
    if not trained:  # the input pipeline still shapes the scores: weights see the inputs this recipe makes
        recipe = _recipe(recs[0])
        return ("**Training.** None here: every run evaluated given weights. "
                + _input(recipe, recs[0], evaluated=True) + f" Precision {recipe['dtype']}.")
    recipe, train = _recipe(trained[0]), trained[0]["train"]
    t = recipe["train"]
    sentences = [
        f"Optimizer {_optimizer(t, train)}, {_schedule(t)}; batch size {t['batch_size']}.",
        _length(t, trained),
        f"Loss: {_loss(t, trained[0])}.",
        _input(recipe, trained[0]),
        _precision(recipe, trained),
        f"Weights evaluated: {_select(t, trained)}.",
        _seeds(trained_labels, trained) + ".",
        _n_train(trained),
    ]
    if len(trained) < len(recs):
        sentences.append(f"{counted(len(recs) - len(trained), 'run')} evaluated given weights instead of training.")
    return "**Training.** " + " ".join(s for s in sentences if s)


def _optimizer(t: dict, train: dict) -> str:
    lr = train.get("base_lr") or t["lr"]
    scaled = (f" (train.lr {num(t['lr'])} × batch {t['batch_size']}/{t['lr_scale_batch']})"
              if train.get("base_lr") and train["base_lr"] != t["lr"] else "")
    if t["optimizer"] == "sgd":
        return f"SGD (lr {num(lr)}{scaled}, momentum {num(t['momentum'])}, weight decay {num(t['weight_decay'])})"
    name = {"adamw": "AdamW", "adam": "Adam"}.get(t["optimizer"], t["optimizer"])
    betas = ", ".join(num(b) for b in t["betas"])
    return f"{name} (lr {num(lr)}{scaled}, betas ({betas}), eps {num(t['eps'])}, weight decay {num(t['weight_decay'])})"


def _schedule(t: dict) -> str:
    kind = t["scheduler"]
    if kind == "poly":
        return f"poly learning-rate decay per iteration (power {num(t['poly_power'])})"
    if kind == "poly_epoch":
        return f"poly learning-rate decay per epoch (power {num(t['poly_power'])})"
    if kind == "cosine":
        return (f"cosine annealing per epoch (T_max {t['cosine_t_max']} epochs, eta_min "
                f"{num(t['cosine_eta_min'])})")
    return "a constant learning rate" if kind == "constant" else f"learning-rate schedule {kind}"


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low} to {high} (runs differ)"


def _length(t: dict, trained: list[dict]) -> str:
    """The optimizer steps that ran (records' train block) in epochs of the data, and whether the
    recipe's max_iterations cut its epochs short (records since they kept ``steps_per_epoch``; older
    ones say only the cap)."""
    steps = [r["train"]["iterations"] for r in trained]
    sizes = {r["train"].get("steps_per_epoch") for r in trained}
    drawn = (f", epochs of {t['iterations_per_epoch']} batches drawn with replacement"
             if t["iterations_per_epoch"] else "")
    text = f"Trained for {_span(steps)} iteration{'s' * (max(steps) != 1)}"
    cap = t["max_iterations"]
    if len(sizes) == 1 and None not in sizes:
        per = sizes.pop()
        full = t["epochs"] * per

        def epochs_of(rec: dict) -> str:
            whole, rest = divmod(rec["train"]["iterations"], per)
            if not whole:
                return f"{rest} of the first epoch's {per} iterations"
            epochs = f"{whole} epoch{'s' * (whole != 1)} of {per} iterations"
            return f"{epochs} and {rest} iterations of the next" if rest else epochs

        text += f" ({_per_run(trained, epochs_of)}{drawn})"
        if cap and cap < full:
            text += (f"; the recipe caps training at {cap} iterations, before the end of its {t['epochs']} epochs "
                     f"({full} iterations)")
        elif cap:
            text += f"; the recipe's full {t['epochs']} epochs (its cap of {cap} iterations not reached)"
    else:  # records written before they kept the epoch's length, or runs of several (folds of other sizes)
        epochs = [r["train"]["epochs"] for r in trained]
        text += f" over {_span(epochs)} epoch{'s' * (max(epochs) != 1)} begun{drawn}"
        if cap:
            text += f" (capped at {cap} iterations)"
    return text + "."


def _binary(rec: dict) -> bool:
    """One output channel: sigmoid, BCE + Dice (bench.losses.segmentation_loss); from the model's
    configuration, else its data's reader (a plugin whose configuration names no num_classes)."""
    classes = rec["model_config"].get("num_classes")
    return classes == 1 if classes is not None else _binary_task(rec["dataset"])


def _loss(t: dict, rec: dict) -> str:
    if _binary(rec):
        terms = [(t["loss_bce"], "BCE"), (t["loss_dice"], "Dice (sigmoid)")]
    else:
        terms = [(t["loss_ce"], "CE"), (t["loss_dice"], f"Dice ({_DICE_VARIANTS.get(t['dice_loss'], t['dice_loss'])})")]
    return " + ".join(f"{num(w)} {name}" for w, name in terms if w)


def _input(recipe: dict, rec: dict, evaluated: bool = False) -> str:
    """How the recipe makes a model's inputs; ``evaluated``: for weights given, not trained here (no
    augmentation to say; the normalisation's statistics are this data's training cases', not the weights')."""
    aug = recipe["train"]["augment"]
    augment = "no augmentation" if aug == "none" else f"augmentation: {_AUGMENT.get(aug, aug)}"
    norm = (", intensities as stored (no normalisation)" if recipe["normalize"] == "none"
            else f", intensities normalised ({recipe['normalize']})")
    if evaluated and recipe["normalize"] == "ct_foreground":  # a checkpoint's own plans are not read
        norm += " with statistics of this dataset's training cases' foreground (a checkpoint's own plans are not read)"
    if recipe["patch_size"]:
        spacing = rec.get("target_spacing")
        where = (f", cases resampled to {' × '.join(num(s) for s in spacing)} mm" if spacing
                 else ", cases at their own spacing")
        text = f"Patches of {' × '.join(map(str, recipe['patch_size']))}{where}{norm}"
    else:
        text = f"Inputs resized to {recipe['img_size']} × {recipe['img_size']}{norm}"
    return f"At evaluation: {text[0].lower()}{text[1:]}." if evaluated else f"{text}; {augment}."


def _precision(recipe: dict, trained: list[dict]) -> str:
    t = recipe["train"]
    text = f"Precision {recipe['dtype']}"
    if t["amp"]:  # autocast applies on CUDA only
        text += "; float16 AMP " + _per_run(trained, lambda r: "on" if r["device"].get("device") == "cuda" else
                                            "off (CPU)")
    if t["grad_clip"] > 0:
        text += f"; gradient norm clipped at {num(t['grad_clip'])}"
    return text + "."


def _select(t: dict, trained: list[dict]) -> str:
    rule = _SELECT.get(t["select"], t["select"])
    if t["select"] == "final":
        return rule
    # "lr_min@249": the 0-based epoch the weights are from
    return rule + " (epoch " + _per_run(trained, lambda r: int(r["train"]["selected"].split("@")[1]) + 1
                                        if "@" in str(r["train"].get("selected")) else "?") + ")"


def _n_train(trained: list[dict]) -> str:
    n = _per_run(trained, lambda r: r.get("n_train"))
    return "" if n == "None" else f"Training set: {n} items."  # older records: not kept


def _seeds(labels: list[str], recs: list[dict]) -> str:
    """"Seeds 0, 1" where every model ran them; else each model's (a board row may lack a seed)."""
    def of(runs: list[dict]) -> str:
        seeds = sorted({r["seed"] for r in runs})
        folds = sorted({f for r in runs if (f := split_fold(r["split"])) is not None})
        return ", ".join(map(str, seeds)) + (f", folds {', '.join(map(str, folds))}" if folds else "")

    each = {label: of(runs) for label, runs in _by_label(labels, recs).items()}
    if len(set(each.values())) == 1:
        shown = next(iter(each.values()))
        return f"Seed{'s' * (',' in shown.split(', folds')[0])} {shown}"
    return "Seeds differing between models: " + "; ".join(f"{label} {s}" for label, s in each.items())


# ------------------------------------------------------------------------------------------ data, evaluation


def _evaluation(recs: list[dict], group: pd.DataFrame) -> str:
    rec, recipe = recs[0], _recipe(recs[0])
    synthetic = "synthetic data generated by bench" if rec["synthetic"] else "real data"
    data_id = _data_id(rec.get("data_id"))
    rule = rec.get("split_rule")  # how the split was made, where the data fixes none (older records: unsaid)
    folds = sorted({f for r in recs if (f := split_fold(r["split"])) is not None})
    if folds:
        split = f"cross-validation fold{'s' * (len(folds) > 1)} {', '.join(map(str, folds))}"
        split += f" of {rule}" if rule else ""
    else:
        split = rule or "the dataset's test split"
    if folds:  # uneven folds are k-fold's own (11 cases in 5 folds): said per fold, not as runs that differ
        per_fold = {split_fold(r["split"]): r["metrics"]["n_cases"] for r in recs}
        sizes = sorted(set(per_fold.values()))
        each = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"
        scored = (f"each fold's run scored on that fold's own validation cases ({each} per fold, "
                  f"{sum(per_fold.values())} over the folds run) and trained on its training cases, from {split}")
    else:
        n = _per_run(recs, lambda r: r["metrics"]["n_cases"])  # a number where the runs agree
        scored = f"{n} test case{'' if n == '1' else 's'} per run from {split}"
    text = [f"**Data and evaluation.** {rec.get('dataset_name') or rec['dataset']} ({synthetic}{data_id}); "
            f"{scored}."]
    text.append(_rescored(recs, group))
    units = {r.get("hd95_unit") for r in recs if r.get("hd95_unit")}
    unit = next(iter(units)) if len(units) == 1 else None  # runs of other units: each named below
    text.append(f"Metric policy {rec['policy']}: {_conventions(rec, unit)}.")
    if len(units) > 1:
        text.append(f"HD95 unit: {_per_run(recs, lambda r: r.get('hd95_unit'))}.")
    text.append(_eval_settings(recipe, rec, unit))
    return " ".join(t for t in text if t)


def _data_id(data_id: str | None) -> str:
    """A run's data identity (``RunSpec.data_id``) in words: what it was computed from."""
    if not data_id:
        return ""
    kind, _, digest = data_id.partition(":")
    return {"synthetic": f", identity {digest} from its generator's settings",
            "files": f", identity {digest} from its files' contents"}.get(kind, f", at {data_id}")


def _restated(labels: list[str], recs: list[dict], group: pd.DataFrame) -> str:
    """The runs whose stored numbers their own case rows do not give (``load(recheck=True)``'s ``restated``),
    shown by the boards as recomputed: a record edited by hand, or stored by a bench that aggregated otherwise."""
    said = group["restated"] if "restated" in group else [None] * len(recs)
    names = [_run_name(rec, label) for label, rec, text in zip(labels, recs, said) if isinstance(text, str)]
    if not names:
        return ""
    return (f"Restated from their case rows: {', '.join(names)} (stored numbers differ from those this version of "
            "bench recomputes: edited by hand, or stored by a version that aggregated otherwise).")


def _rescored(recs: list[dict], group: pd.DataFrame) -> str:
    sources = [r for r in recs if r.get("rescored_from")]
    if not sources:
        return ""
    # the policy each was first scored under, from the run rows (its run's record not read again); None: deleted since
    first = {run_id: p if isinstance(p, str) else "original"
             for run_id, p in zip(group["run_id"], group["rescored_from_policy"])}
    was = _per_run(sources, lambda rec: first[rec["run_id"]])
    which = "" if len(sources) == len(recs) else f" ({counted(len(sources), 'run')} of {len(recs)})"
    return (f"Scores under {recs[0]['policy']} come from evaluating again the weights trained in the {was} "
            f"runs{which}, without retraining.")


# where HD95 is in what unit (records' hd95_unit: evaluate.hd95_unit), and its penalty's extent
_HD95_UNITS = {
    "mm": ("in mm from each case's voxel spacing", "the diagonal of the volume in mm"),
    "voxels": ("in voxels (the volumes carry no spacing)", "the volume's diagonal in voxels"),
    "pixels": ("in pixels of the model's input (2-D images are scored at its resolution)",
               "the image's diagonal in pixels"),
    "mixed": ("in mm where a case's spacing is known and in voxels where not, so the mean adds both",
              "the volume's diagonal in the same unit"),
}


def _outcome(pair: list, penalty: str) -> str:
    dice, hd = (None if isinstance(v, float) and math.isnan(v) else v for v in pair)  # records: null; policy_fields: NaN
    dice = "NaN (left out of the means, counted)" if dice is None else num(dice)
    hd = {None: "NaN", "penalty": f"a penalty, {penalty}"}.get(hd, hd)
    return f"DSC {dice} and HD95 {num(hd)}"


def _conventions(rec: dict, unit: str | None) -> str:
    """The policy's conventions as recorded with the run (``metrics.policy_fields``), in words; HD95 in
    ``unit`` (the board's runs' ``hd95_unit``, where they agree; None: older records, said generally)."""
    from bench.metrics import policy_fields

    c = rec.get("policy_conventions") or policy_fields(rec["policy"])
    zero = "0" if c["zero_division"] == 0 else "NaN"
    if c["pooled"]:
        return ("one confusion matrix pooled over all test pixels (a micro average): DSC, IoU (the papers' mIoU, "
                f"foreground only), accuracy, specificity and sensitivity from it; a ratio with a zero denominator "
                f"counts as {zero}; no HD95")
    hd = {"pooled": "medpy's HD95 (95th percentile of both directions' surface distances pooled)",
          "max_directed": "MONAI's HD95 (the larger of the two directed 95th percentiles)"}.get(
        c["hd_definition"], "no HD95")
    if not c["use_spacing"]:
        where = f"in {unit or 'voxels'}, spacing ignored"
        extent = "the image's diagonal" if unit == "pixels" else "the volume's diagonal"
    elif unit in _HD95_UNITS:
        where, extent = _HD95_UNITS[unit]
    else:  # records before they named their unit
        where, extent = ("in mm from each case's spacing (voxels or pixels where it is unknown)",
                         "the diagonal of the image or volume")
    return (f"per case and class, averaged over cases per class, then over classes; {hd} {where}; a missed "
            f"structure (in the reference only) scores {_outcome(c['ref_only'], extent)}, a prediction of an absent "
            f"one {_outcome(c['pred_only'], extent)}, both masks empty {_outcome(c['both_empty'], extent)}; "
            f"accuracy, specificity and sensitivity with a zero denominator count as {zero}")


def _eval_settings(recipe: dict, rec: dict, unit: str | None = None) -> str:
    e, parts = recipe["eval"], []
    if _binary(rec):
        parts.append(f"foreground where the sigmoid ≥ {num(e['threshold'])}")
    elif not recipe["patch_size"]:  # TransUNet's: slice by slice at the model's size, back to the case's grid
        orders = {0: "nearest", 1: "linear", 3: "cubic"}
        parts.append(f"each slice resized to {recipe['img_size']} × {recipe['img_size']} "
                     f"({orders.get(e['image_order'], 'order ' + str(e['image_order']))}), the argmax over classes "
                     f"resized back to the slice's grid ({orders.get(e['label_order'], 'order ' + str(e['label_order']))})")
    if recipe["patch_size"]:
        overlap = num(1 - e["tile_step"])
        parts.append(f"sliding-window prediction (tiles overlapping by {overlap} of a patch, Gaussian-weighted), "
                     + ("with mirroring" if e["mirror"] else "no mirroring"))
        if e["autocast"]:
            parts.append("float16 autocast on CUDA")
    if e["max_cases"]:
        parts.append(f"only the first {counted(e['max_cases'], 'test case')}")
    tol = e["nsd_tolerance"]
    if tol:
        tols = ", ".join(f"{n} {num(v)}" for n, v in tol) if isinstance(tol, list) else num(tol)
        parts.append(f"NSD (normalised surface distance) at tolerance {tols} {unit or 'in the HD95 unit'}")
    return f"Evaluation: {'; '.join(parts)}." if parts else ""


# ------------------------------------------------------------------------------------------ statistics


def _statistics(group: pd.DataFrame, recs: list[dict], reference: str | None) -> str:
    """What the report's tables of this board compute: mean ± std over seeds, the bootstrap CIs
    (``stats.bootstrap_ci``, where case rows hold the metric), and with ``reference`` the paired tests,
    Holm's correction and the rank stability (``significance_sections``), their constants from ``stats``."""
    from bench import stats
    from bench.report.boards import CI_METRICS, METRICS
    from bench.report.labels import CV_LABEL

    cv = CV_LABEL in group["board_dataset"].iloc[0]
    runs = "runs (every seed and fold)" if cv else "seeds"
    single = single_run(group)  # as the boards: no ± std then
    text = ["**Statistical analysis.** " + ("Tables give each model's one run: no standard deviation." if single else
            f"Tables give each model's mean over its {runs} ± their sample standard deviation (n − 1).")]
    measured = [m for m in CI_METRICS if any(_value(case.get(m)) for r in recs for case in r.get("per_case", []))]
    if cv:  # as the board's caption: not nnU-Net's summary of all folds' cases pooled, given beside it
        text.append("Each fold is scored over its own validation cases and the folds' scores are averaged; the "
                    "standard deviation holds the split's variance too."
                    + (" The tables' captions also give the DSC pooled over all folds' validation cases (per seed), "
                       "as nnU-Net's cross-validation summary scores them." if "dice" in measured else ""))
    if measured:
        text.append(f"95% confidence intervals of {and_list([METRICS[m][0] for m in measured])}: percentile bootstrap "
                    f"over test cases ({stats.N_BOOT} resamples, seeded), each resample scored under the board's "
                    f"policy as the board is, then averaged over the model's {runs}; they show how much the test set "
                    "moves these models' numbers, not the spread between seeds.")
    if reference and measured:
        text.append(_paired(group, recs, reference, measured))
    return " ".join(text)


def _paired(group: pd.DataFrame, recs: list[dict], reference: str, measured: list[str]) -> str:
    from bench import metrics, stats
    from bench.report.boards import METRICS

    labels = sorted(set(group["model_label"]))
    ref = stats.reference_label(group, reference)
    ranks = (f"Models ranked by the board's DSC over the test cases every model has; the ranks' stability from "
             f"{stats.N_BOOT_RANKS} bootstrap resamples of those cases (the share in which a model ranks first, "
             "and its 95% rank interval).")
    if ref not in labels or len(labels) < 2:
        return ranks
    pooled = (recs[0].get("policy_conventions") or metrics.policy_fields(recs[0]["policy"]))["pooled"]
    if pooled:
        test = ("a two-sided paired permutation test of the difference of the board's numbers (pooled over all "
                "test pixels): each shared test case's confusion counts swapped or not between the two models' runs "
                f"(paired in seed and fold order), all 2^n swap patterns where they are at most {stats.N_PERM}, "
                f"else {stats.N_PERM} drawn")
    else:
        test = ("a two-sided Wilcoxon signed-rank test over the shared test cases (a case's value: the mean over "
                "its foreground classes, averaged over the model's runs), with the matched-pairs rank-biserial "
                "correlation as effect size")
    return (f"Each model was compared with {ref} on {and_list([METRICS[m][0] for m in measured])} by {test}; the "
            "p-values were adjusted with Holm's step-down method over all of the board's tests. " + ranks)


def _value(v: Any) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


# ------------------------------------------------------------------------------------------ cost


_PRECISIONS = {"fp32": "float32 (TF32 off)", "tf32": "float32 with TF32 tensor cores",
               "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}


def _cost(df: pd.DataFrame, results_dir: Path) -> str:
    """How the boards' GMACs were counted (where the runs' records count them) and the cost tables timed
    (the folder's ``bench profile`` records of these models): ``bench.cost``'s conventions."""
    from bench.profiles import load_profiles

    text = []
    runs_count = "macs" in df and df["macs"].notna().any()
    profiles = load_profiles(results_dir)
    if not profiles.empty:
        profiles = profiles[profiles["model"].isin(set(df["model"]))]
    if runs_count or (not profiles.empty and profiles["macs"].notna().any()):
        text.append("MACs (multiply-accumulates) were counted for one forward pass of one input at the protocol's "
                    "input size with PyTorch's FlopCounterMode (a multiply-add is 2 FLOPs; MACs = FLOPs / 2), the "
                    "selective scan included by the Mamba authors' estimate (9·B·L·D·N FLOPs, plus the D and gate "
                    "terms); element-wise operations are not counted. The thop count (thop 0.1.1: forward hooks on "
                    "leaf modules, so the scan, einsums and functional matrix products count zero), the convention "
                    "of published tables, is given beside it.")
    timed = profiles[profiles["latency_ms_median"].notna()] if not profiles.empty else profiles
    for (fp, precision, last, compiled), rows in timed.groupby(
            ["fingerprint", "precision", "channels_last", "compiled"], sort=True, dropna=False):
        cuda = (rows["device"] == "cuda").any()
        timed_n = _per_value(rows, "timed_iters")
        warm = _per_value(rows, "warmup_iters")
        precise = "float32" if precision == "fp32" and not cuda else _PRECISIONS.get(precision, str(precision))
        setup = ", ".join(p for p in (precise, "batch size 1",
                                      "channels-last memory layout" if last else "",
                                      "compiled with torch.compile" if compiled else "") if p)
        scan = {b for b in rows["scan_backend"].dropna()} if "scan_backend" in rows else set()
        device = rows["device_fingerprint"].iloc[0] if "device_fingerprint" in rows else None
        where = (f"{_device(device)}, torch {device.get('torch')}" if isinstance(device, dict) and device.get("torch")
                 else fp)  # older profiles: the short fingerprint only
        shown = sorted({m + (" (tiny)" if t is True else "") for m, t in
                        zip(rows["model"], rows["tiny"] if "tiny" in rows else [None] * len(rows))})
        text.append(f"Latency on {where} ({setup}): the median and 90th percentile of {timed_n} timed forward passes "
                    f"of random input, after {_warm_up(warm)}"
                    + (", synchronised on the GPU before and after each" if cuda else "")
                    + (f"; the selective scan run by {and_list([_SCANS.get(b, b) for b in sorted(scan)])}" if scan else "")
                    + f" ({', '.join(shown)}; input {', '.join(sorted(set(rows['input_shape'])))}).")
    return " ".join(text)


def _warm_up(warm: str) -> str:
    """The warm-up passes said: "1 warm-up pass", "20 warm-up passes", "1 or 20 …" where profiles differ."""
    if not warm:  # older profiles
        return "warm-up passes (their number not recorded)"
    return f"{warm} warm-up pass" + ("" if warm == "1" else "es")


def _per_value(rows: pd.DataFrame, column: str) -> str:
    """A profile column's values, "" where none recorded (older profiles)."""
    if column not in rows:
        return ""
    values = sorted({int(v) for v in rows[column].dropna()})
    return " or ".join(map(str, values))


# ------------------------------------------------------------------------------------------ environment


def _environment(labels: list[str], recs: list[dict], group: pd.DataFrame) -> str:
    versions = _code_versions(group)
    named = [short_commit(v) for v in versions["versions"]]
    release = _per_run(recs, lambda r: r.get("packages", {}).get("ssm-unet-bench") or "?")
    code = (f"bench {release} at commit {named[0]}" if len(named) == 1 else
            # the weights' code and the numbers' code, both
            f"bench {release}, {len(named)} versions of its code: trained under "
            f"{', '.join(map(short_commit, versions['trained']))}, scored under "
            f"{', '.join(map(short_commit, versions['scored']))}" if versions["rescored"] else
            f"bench {release}, {len(named)} versions of its code ({', '.join(named)})")
    text = [f"**Environment.** {code}; {_per_run(recs, _packages)}; Python "
            f"{_per_run(recs, lambda r: r['device'].get('python', '?'))}.{code_detail(versions)}",
            f"Device: {_per_run(recs, lambda r: _device(r['device']))}."]
    rescored = [r for r in recs if r.get("rescored_with")]
    if rescored:  # the numbers of this board came from there; the packages and device above trained them
        text.append("Evaluated again on " + _per_run(rescored, lambda r: _device(r["rescored_with"]["device"]))
                    + "; the packages and device above are the training's.")
    scan = {r.get("scan_backend") for r in recs} - {None}
    if scan:
        text.append("Selective scan (the state-space models' recurrence) run by " + _per_run(
            [r for r in recs if r.get("scan_backend")], lambda r: _SCANS.get(r["scan_backend"], r["scan_backend"]))
            + ".")
    text += [_resumes(labels, recs), _train_time(labels, recs)]
    return " ".join(t for t in text if t)


def _reproducibility(recs: list[dict]) -> str:
    """What repeating the board's training runs gives: bit-identical on a CPU under what the records keep
    (thread count, vector instruction set, MKL's reproducibility mode), not on a GPU; "" where every row
    is given weights (nothing trained here)."""
    trained = [r for r in recs if not r.get("weights")]
    if not trained:
        return ""
    gpu = [r for r in trained if str(r["device"].get("device", "")).startswith("cuda")]
    cpu = [r for r in trained if r not in gpu]
    said = []
    if cpu:
        isa = sorted({str(r["device"]["cpu_capability"]) for r in cpu if r["device"].get("cpu_capability")})
        mkl = sorted({str(r["device"]["mkl_cbwr"]) for r in cpu if r["device"].get("mkl_cbwr")})
        several = any((r["train"].get("world_size") or 1) > 1 for r in cpu)  # --nproc: the processes too
        same = ["code", "data", "seed", "thread count", *(["number of processes"] if several else []),
                *([f"vector instruction set ({', '.join(isa)})"] if isa else []),
                *([f"MKL reproducibility mode ({', '.join(mkl)})"] if mkl else [])]
        said.append(f"on a CPU, a run repeated with the same {and_list(same)} gives bit-identical weights and scores "
                    "(another thread count sums in another order, and training carries last-bit differences on)")
    if gpu:
        said.append("on a GPU, kernels that add with atomics can differ in the last bits between repeats, so a "
                    "repeated run is not bit-identical")
    return ("**Reproducibility.** Every run seeds its random generators from its seed (the data order from seed "
            "and epoch, each item's augmentation from seed, epoch and item); " + "; ".join(said) + ".")


def _packages(rec: dict) -> str:
    return ", ".join(f"{name} {v}" for name, v in rec.get("packages", {}).items() if v and name not in _SKIP_PACKAGES)


def _device(d: dict) -> str:
    """A device fingerprint (``env.fingerprint``, as records keep it) in words."""
    if str(d.get("device", "")).startswith("cuda"):
        cudnn = f", cuDNN {d['cudnn']}" if d.get("cudnn") else ""
        # what decides the last bits of a GPU's numbers, as the fingerprint kept it (older records lack it)
        flags = [f"TF32 {what} {'on' if d[key] else 'off'}" for what, key in
                 (("convolutions", "tf32_cudnn"), ("matmuls", "tf32_matmul")) if d.get(key) is not None]
        if d.get("cudnn_deterministic") is not None:
            flags.append("deterministic cuDNN kernels" if d["cudnn_deterministic"] and not d.get("cudnn_benchmark")
                         else "autotuned cuDNN kernels" if d.get("cudnn_benchmark") else "default cuDNN kernels")
        return f"{d.get('gpu') or 'GPU'} (CUDA {d.get('cuda')}{cudnn}{''.join(', ' + f for f in flags)})"
    threads = d.get("threads")
    return f"CPU {d.get('cpu') or '?'}" + (f", {counted(threads, 'thread')}" if threads else "")


def _resumes(labels: list[str], recs: list[dict]) -> str:
    """Runs whose training was killed and resumed, and where on several devices: not one uninterrupted
    run; runs trained by several processes. Named by their rows' labels (a model in two configurations)."""
    resumed, parallel = [], []
    for label, rec in zip(labels, recs):
        train = rec["train"]
        # every resume; records before they were kept name their last one only
        after = train.get("resumes") or ([train["resumed_from"]] if train.get("resumed_from") is not None else [])
        if after:
            where = (f", on {' then '.join(train['devices'])}" if len(train.get("devices") or []) > 1 else "")
            last = "" if "resumes" in train else " (the last resume)"
            *before, end = [str(e + 1) for e in after]
            epochs = f"epochs {', '.join(before)} and {end}" if before else f"epoch {end}"
            resumed.append(f"{_run_name(rec, label)} after {epochs}{last}{where}")
        if (train.get("world_size") or 1) > 1:
            parallel.append(f"{_run_name(rec, label)} on {train['world_size']} processes")
    return " ".join(f"{head}: {'; '.join(runs)}." for head, runs in (
        ("Resumed after an interruption", resumed), ("Trained in several processes", parallel)) if runs)


def _train_time(labels: list[str], recs: list[dict]) -> str:
    timed = {label: [r["train"]["time_s"] for r in runs
                     if not r.get("weights") and isinstance(r["train"].get("time_s"), (int, float))]
             for label, runs in _by_label(labels, recs).items()}
    timed = {label: ts for label, ts in timed.items() if ts}
    if not timed:
        return ""
    times = ", ".join(f"{label} {_fmt_duration(statistics.mean(ts))}" for label, ts in timed.items())
    return f"Training time per run (mean wall-clock of the training loop, resumes included): {times}."
