"""Board and row labels of runs: the board a run joins (``BoardKey``) and its row's model label.

The grouping rules are in ``bench.report``'s docstring; ``bench.drift`` labels its baselines with them too."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.records import config_dict, split_fold


class BoardKey(NamedTuple):
    dataset: str  # e.g. "synapse" or "synapse (synthetic)"
    protocol: str  # e.g. "synapse" or "synapse (off-protocol: epochs=2)"
    policy: str


CV_LABEL = " (cross-validation)"  # in the board_dataset of --folds runs


def overrides_text(overrides_json: str) -> str:
    """A protocol's overrides (their JSON) as labels and Methods say them: ``key=value, ...``, sorted."""
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(config_dict(overrides_json).items()))


def label_runs(df_runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``board_dataset``, ``board_protocol`` and ``model_label`` columns (rules: ``bench.report``'s docstring).

    Shared with ``bench.drift`` so a baseline and a report name groups identically.
    """
    df = df_runs.copy()
    # dataset_name, not dataset: runs on two nnU-Net-format datasets must not share a board
    name = df["dataset_name"] if "dataset_name" in df else df["dataset"]
    df["board_dataset"] = np.where(df["synthetic"].astype(bool), name + " (synthetic)", name)
    if "split" in df:  # a fold's test cases are other cases: its numbers never average with a fixed split's
        df["board_dataset"] = np.where(df["split"].astype(str).map(split_fold).notna(),
                                       df["board_dataset"] + CV_LABEL, df["board_dataset"])
    if "data_id" in df:  # other files under one dataset name (another copy, preprocessed otherwise): another board
        ids = df["data_id"].fillna("").astype(str)  # "": a run identified by its data's path, older records
        n_ids = ids.where(ids != "").groupby([df["board_dataset"], df["protocol"], df["policy"]]).transform("nunique")
        tag = " (data " + ids.str.split(":").str[-1].str[:8] + ")"
        df["board_dataset"] = np.where((n_ids > 1) & (ids != ""), df["board_dataset"] + tag, df["board_dataset"])
    hashes = df.groupby(["board_dataset", "protocol", "policy"])["protocol_hash"].transform("nunique")
    labels = []
    for (_, row), n_hash in zip(df.iterrows(), hashes):
        label = row["protocol"] if n_hash == 1 else f"{row['protocol']}@{row['protocol_hash'][:8]}"
        if row["off_protocol"]:
            label += f" (off-protocol: {overrides_text(row['protocol_overrides'])})"
        labels.append(label)
    df["board_protocol"] = labels
    df["model_label"] = run_labels(df, df[["board_dataset", "board_protocol", "policy"]])
    return df


def run_labels(df: pd.DataFrame, groups: pd.DataFrame | None = None) -> list[str]:
    """Row labels of runs (``records.load``'s columns: ``model``, ``model_config``, and where present
    ``tiny``, ``set_keys``, ``init``, ``weights``): ``model_labels``, the pretrained file a row's runs
    started from where its board (``groups``) holds runs of several, and the weights a row evaluated.
    ``groups`` None: runs alone, read beside runs of any board (a run's log, ``bench.run._settings``),
    so a pretrained file is named wherever one was given."""
    labels = pd.Series(model_labels(df["model"], df["model_config"], groups, df["tiny"] if "tiny" in df else None,
                                    df["set_keys"] if "set_keys" in df else None), index=df.index)
    if "init" in df:  # weights started from other pretrained files (or from none): other rows
        # among the runs that trained here: evaluated weights (below) started from nothing of this run's
        trained = df["weights"].isna() if "weights" in df else pd.Series(True, index=df.index)
        inits = df["init"].fillna("").astype(str).where(trained)
        if groups is None:
            several = inits.fillna("") != ""
        else:
            several = inits.groupby([*(groups[c] for c in groups), labels]).transform("nunique") > 1
        named = np.where(inits != "", " (init " + inits + ")", " (from scratch)")
        labels = pd.Series(np.where(trained & several, labels + named, labels), index=df.index)
    if "weights" in df:  # weights trained elsewhere and only evaluated here: never a row of the protocol's training
        labels = pd.Series([(f"{label[:-1]}, weights {w})" if label.endswith(")") else f"{label} (weights {w})")
                            if isinstance(w, str) and w else label for label, w in zip(labels, df["weights"])],
                           index=df.index)
    return labels.tolist()


def model_labels(models: pd.Series, configs: pd.Series, groups: pd.DataFrame | None = None,
                 tiny: pd.Series | None = None, set_keys: pd.Series | None = None) -> list[str]:
    """Row labels: the model's name, ``"(tiny)"`` added wherever the run used the model's tiny test
    configuration (``--tiny``; ``tiny``: the records' flag, else the config is compared with it), with
    the tiny keys it set otherwise (``"mymodel (tiny, width=12)"``: neither the tiny nor the paper
    model) and the keys ``--set`` changed (``set_keys``: comma lists, None for records before they were
    kept), whatever else shares the table; where one model still runs in several configurations
    within a group (a board), the config keys that differ between them, where a run set them
    otherwise than the paper: ``"unet (encoder=resnet34)"`` beside ``"unet"``, ``"unet (tiny,
    img_size=96)"``. ``configs``: JSON strings."""
    parsed = pd.Series([config_dict(c) for c in configs], index=models.index)
    flags = tiny if tiny is not None else pd.Series([None] * len(models), index=models.index)
    changes = set_keys if set_keys is not None else pd.Series([None] * len(models), index=models.index)

    def shown(p: dict, k: str) -> str:
        return f"{k}={json.dumps(p[k], ensure_ascii=False)}"

    own: dict[Any, list[str]] = {}  # by row: "tiny" and the tiny keys set otherwise
    for i, m, p, flag in zip(models.index, models.astype(str), parsed, flags):
        # --tiny (older records: no flag), or its configuration given by hand (--set): the same model either way
        small = (flag is not None and not pd.isna(flag) and bool(flag)) or _is_tiny(m, p)
        own[i] = ["tiny", *(shown(p, k) for k in _tiny_changes(m, p))] if small else []
        # --set's changes; a tiny row's tiny keys are said above (the tiny configuration given by hand is --set's too)
        tiny_keys = _tiny_config(m) if small else {}
        changed = changes[i].split(",") if isinstance(changes[i], str) else _set_before_kept(m, p)
        own[i] += [part for part in (shown(p, k) for k in changed if k in p and k not in tiny_keys)
                   if part not in own[i]]
    frame = pd.DataFrame({"model": models.astype(str), "own": [", ".join(own[i]) for i in models.index]},
                         index=models.index)
    labels = frame["model"] + frame["own"].map(lambda o: f" ({o})" if o else "")
    if groups is not None:
        frame = pd.concat([groups.add_prefix("group_"), frame], axis=1)
    for (*_, model, _own), idx in frame.groupby(list(frame.columns), sort=False, dropna=False).groups.items():
        mine = parsed[idx].tolist()
        names = sorted({k for p in mine for k in p})
        differing = [k for k in names if len({json.dumps(p.get(k), sort_keys=True) for p in mine}) > 1]
        if not differing:
            continue
        paper = _paper_config(model)
        for i, p in zip(idx, mine):
            # the keys a run set otherwise than its paper configuration: a run of that configuration keeps
            # its plain label, whatever other configurations share the board (a drift baseline keys rows by it)
            parts = own[i] + [part for part in (shown(p, k) for k in differing if k in p and not (
                k in paper and json.dumps(p[k]) == json.dumps(paper[k]))) if part not in own[i]]
            if parts:
                labels[i] = f"{model} ({', '.join(parts)})"
    return labels.tolist()


def _entry(model: str) -> Any:
    """The registry's entry of ``model`` (a built-in model's ``ModelFacts``); None for a record of a model no longer
    registered (a record names its model as registered: another model alike but for case is not its)."""
    from bench.model_facts import built_in_facts

    if (built_in := built_in_facts(model)) is not None:  # without importing the models (torch): bench report
        return built_in
    from bench.registry import get_entry  # a plugin's: loading the models (and torch) is the only way to them

    try:
        entry = get_entry(model)
    except BenchError:
        return None
    return entry if entry.name == model else None


def _tiny_config(model: str) -> dict:
    return dict(entry.tiny) if (entry := _entry(model)) else {}


def _paper_config(model: str) -> dict:
    return dict(entry.paper_config) if (entry := _entry(model)) else {}


# keys every build sets from the data and the protocol (bench.run.build_args), not the model's own configuration
BUILD_KEYS = frozenset({"num_classes", "in_chans", "img_size"})


def config_changes(model: str, config: dict, spatial_dims: int | None = None) -> list[str]:
    """The keys of ``config`` (a record's ``model_config``) that make it another configuration than
    the model's paper one: at other values, or that it lacks (a plugin not installed here: all), less
    ``BUILD_KEYS``. ``spatial_dims``: the protocol's, where known: its own variant is no change (a 3-D
    protocol builds lightm_unet's volumetric one, the paper configuration being 2-D)."""
    paper = _paper_config(model)
    if spatial_dims is not None and "spatial_dims" in paper:
        paper["spatial_dims"] = spatial_dims
    return [k for k in config if k not in BUILD_KEYS
            and (k not in paper or json.dumps(config[k], sort_keys=True) != json.dumps(paper[k], sort_keys=True))]


def _set_before_kept(model: str, config: dict) -> list[str]:
    """A record's --set keys where it predates ``set_keys``: its ``config_changes`` that its paper
    configuration holds, less those the constructor chooses itself, so that its label is that of a
    run of today with the same --set. Its spatial_dims is its protocol's (``bench.run.build_args``
    refuses another): no change."""
    entry = _entry(model)
    paper = _paper_config(model)
    return [k for k in config_changes(model, config, config.get("spatial_dims"))
            if k in paper and k not in (entry.chooses if entry else ())]


def _is_tiny(model: str, config: dict) -> bool:
    """Whether ``config`` holds the model's tiny test configuration (registry ``tiny``)."""
    tiny = _tiny_config(model)
    return bool(tiny) and all(json.dumps(config.get(k)) == json.dumps(v) for k, v in tiny.items())


def _tiny_changes(model: str, config: dict) -> list[str]:
    """The tiny configuration's keys that ``config`` sets otherwise (``--tiny --set width=12``)."""
    return [k for k, v in _tiny_config(model).items() if k in config and json.dumps(config[k]) != json.dumps(v)]


def label_cases(df_cases: pd.DataFrame) -> pd.DataFrame:
    """A case-level frame with the board and model labels of ``label_runs``, computed once per
    run (a run has many case rows) and joined back."""
    runs = df_cases.drop_duplicates("run_id")
    labels = label_runs(runs)[["run_id", "board_dataset", "board_protocol", "model_label"]]
    return df_cases.merge(labels, on="run_id", how="left")
