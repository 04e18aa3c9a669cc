"""The ``--published`` section: the papers' numbers (``bench.published``) beside the boards', and
why a gap is not given where it is not."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from bench import metrics
from bench.data.isic import test_set_id
from bench.published import DEFAULT_NAME
from bench.records import config_dict
from bench.report.board_text import _caption, _one_hd95_unit
from bench.report.boards import METRICS, TEST_SET_DATASETS, class_display, per_run
from bench.report.labels import CV_LABEL, BoardKey, config_changes


PUBLISHED_METRICS = metrics.METRICS  # the papers' numbers compared: the standard metrics
PUBLISHED_NOTE = ("Ours − published is given only where the paper's number was trained under this board's protocol "
                  "(\"Their recipe\", the published table's column protocol) in its current version (for weights only evaluated "
                  "here, also under a protocol that evaluates as this board's does), run as written, "
                  "with the model as registered, on the paper's test split (Synapse's volumes by id; ISIC's and "
                  "PraNet's test and training sets by their counts alone, since their lists are unpublished: another "
                  "draw of the same counts passes, so check such data with bench data verify), and scored under the "
                  "paper's convention; "
                  "otherwise the cell says what differs (recipe, split, protocol version, model config or metric "
                  "policy), since the gap would mix the model with it.")



def published_note(origin: str | None = None) -> str:
    """A published table's caption note: ``PUBLISHED_NOTE``, and where the numbers come from another
    file than the bundled table (``--published-file``; ``origin``: its path as given and sha256) that
    file, so a table of invented numbers does not pass as the papers'."""
    if origin is None:
        return PUBLISHED_NOTE
    return (f"{PUBLISHED_NOTE} Published numbers: from {origin} (--published-file), not the bundled "
            f"{DEFAULT_NAME}; § marks a number the bundled table gives otherwise, or not at all.")


def _against_bundled(p: pd.Series, bundled: pd.DataFrame | None) -> str:
    """"" where ``bundled`` (the bundled table; None: ``p`` is from it) gives ``p``'s number for its source,
    model, dataset and metric; else the Note's "§" footnote saying what it gives."""
    if bundled is None:
        return ""
    same = bundled[(bundled["source"] == p["source"]) & (bundled["model"] == p["model"])
                   & (bundled["dataset"] == p["dataset"]) & (bundled["metric"] == p["metric"])]
    if same.empty:
        return "§ not in the bundled table"
    if any(math.isclose(v, p["value"], rel_tol=1e-9) and u == p["unit"] for v, u in zip(same["value"], same["unit"])):
        return ""
    theirs = ", ".join(f"{_paper_value(v)} {u}".strip() for v, u in zip(same["value"], same["unit"]))
    return f"§ differs from the bundled table's {theirs}"


# nnU-Net dataset names -> published ids: LightM-UNet's Dataset801_LiverCT / Dataset802_LungXray, MSD's liver
_NNUNET_ALIASES = {"liverct": "lits", "liver": "lits", "lungxray": "montgomery_shenzhen"}


# class names of the data -> the papers' per-class columns where they differ (nnU-Net's ACDC labels)
_CLASS_ALIASES = {"mlm": "myo", "lvc": "lv"}


def _class_column(row: pd.Series, metric: str, cls: str) -> str | None:
    """The board column of ``metric`` for the published class ``cls`` ("dice:aorta" -> "dice/aorta_mean";
    "dice:myo" -> "dice/MLM_mean" on nnU-Net's ACDC), or None."""
    for col in row.index:
        name = str(col).removeprefix(f"{metric}/").removesuffix("_mean")
        if col == f"{metric}/{name}_mean" and _CLASS_ALIASES.get(name.lower(), name.lower()) == cls:
            return col
    return None


def published_dataset(board_dataset: str) -> str:
    """The ``dataset`` id of ``results/published.csv`` for a board: "nnunet:Dataset027_ACDC" and
    "nnunet:ACDC" -> "acdc", "nnunet:Dataset801_LiverCT" -> "lits" (``_NNUNET_ALIASES``),
    "polyp:CVC-ClinicDB" -> "polyp:clinicdb", "isic_all:isic17" -> "isic17" (VM-UNet-V2 reports its
    merged-ISIC model under each year); other names as they are, without " (synthetic)"."""
    name = board_dataset.split(" (")[0]
    if name.startswith("nnunet:"):
        name = re.sub(r"^Dataset\d+_", "", name.removeprefix("nnunet:")).lower()
        name = _NNUNET_ALIASES.get(name, name)
    elif name.startswith("polyp:"):
        name = f"polyp:{test_set_id(name.removeprefix('polyp:'))}"
    elif name.startswith("isic_all:"):
        name = test_set_id(name.removeprefix("isic_all:"))
    return name


def split_mismatch(board_dataset: str, cases: pd.DataFrame | None, n_train: list[int] | None = None) -> str | None:
    """Why a board's test cases (its case rows) or training items (its runs' ``n_train``) are not the
    paper's split, or None where they are: Synapse's test volumes by case id (TransUNet's 12) and its
    2,211 training slices; an ISIC year and a PraNet test set by image count (their lists are not
    published; another 7:3 draw has the counts too), their training sets likewise (VM-UNet-V2's
    merged ISIC: both years' together); ACDC, LiTS and Montgomery/Shenzhen never (their papers'
    splits are not published, so no run of ours tests the papers' cases). Runs recorded before
    ``n_train`` was kept are judged by their test cases alone."""
    from bench.data.synapse import TRANSUNET_TEST_CASES, TRANSUNET_TRAIN_SLICES
    from bench.data.verify import PRANET_TEST_SETS, PRANET_TRAIN_IMAGES, VMUNET_ISIC_SPLITS

    dataset = published_dataset(board_dataset)
    pranet = {test_set_id(k): n for k, n in PRANET_TEST_SETS.items()}
    if cases is None or cases.empty:
        return "test cases unknown (no per-case rows)"
    ids = set(cases["case"].astype(str))
    if dataset == "synapse":
        if ids != set(TRANSUNET_TEST_CASES):
            return f"other split ({len(ids)} test volumes, {len(ids & set(TRANSUNET_TEST_CASES))} of TransUNet's 12)"
        train, unit = TRANSUNET_TRAIN_SLICES, "training slices"
    elif dataset in VMUNET_ISIC_SPLITS or dataset.startswith("polyp:") and dataset.removeprefix("polyp:") in pranet:
        test = (VMUNET_ISIC_SPLITS[dataset][1] if dataset in VMUNET_ISIC_SPLITS
                else pranet[dataset.removeprefix("polyp:")])
        if len(ids) != test:
            return f"other split ({len(ids)} test images, the paper's {test})"
        train = (sum(tr for tr, _ in VMUNET_ISIC_SPLITS.values()) if board_dataset.startswith("isic_all:")
                 else VMUNET_ISIC_SPLITS[dataset][0] if dataset in VMUNET_ISIC_SPLITS else PRANET_TRAIN_IMAGES)
        unit = "training images"
    else:
        return "other split (the paper's test cases are not published)"
    other = sorted(set(n_train or []) - {train})
    return f"other split ({other[0]} {unit}, the paper's {train})" if other else None


def _paper_value(value: float) -> str:
    """A published number as papers print it, two decimals ("96.70", not "96.7"), more where it has them."""
    text = f"{value:.2f}"
    return text if float(text) == value else f"{value:g}"


def published_tables(boards: dict[BoardKey, pd.DataFrame], published: pd.DataFrame,
                     groups: dict[BoardKey, pd.DataFrame] | None = None,
                     bundled: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Per board, the papers' numbers for its dataset next to ours: one row per (model, metric,
    published source), with both metric conventions and the paper's recipe named. ours − published
    only where that recipe is the board's protocol as built in now, run as written (not
    off-protocol), with the model as registered, on the paper's test split (``split_mismatch``;
    ``groups``: the case rows per board), and scored under the paper's convention (the protocol's
    policy where the CSV does not name one of ours) — see ``why_not``; elsewhere the difference
    would mix the model with something else. ``bundled``: the bundled table where ``published`` is another
    (``--published-file``): a number it gives otherwise, or not at all, is marked "§" and its Note says so."""
    from bench.metrics import POLICIES
    from bench.protocol import builtin_difference, list_protocols, load_protocol, same_evaluation

    protocols: dict[str, Any] = {}
    builtin = set(list_protocols())

    def protocol(name: str):
        """The built-in protocol ``name``, loaded once per report."""
        if name not in protocols:
            protocols[name] = load_protocol(name)
        return protocols[name]

    def why_not(p: pd.Series, key: BoardKey, a: dict, row: pd.Series) -> str | None:
        """Every reason the gap is not given ("; "-joined), or None where it is."""
        same = bool(p["protocol"]) and p["protocol"] == a["protocol_name"]
        proto = protocol(p["protocol"]) if p["protocol"] in builtin else None  # the paper's recipe, where ours
        # nothing else compares with a recipe this board did not run; weights evaluated as given were trained
        # elsewhere, so there only the evaluation need be the paper's (synapse_vmunet scores as synapse does)
        other = not same and not (row.get("evaluated") and proto is not None and a["protocol_name"] in builtin
                                  and same_evaluation(proto, protocol(a["protocol_name"])))
        # and every other difference, not the first alone (overrides of another recipe than the paper's aside)
        reasons = ["other recipe"] if other else [f"off-protocol ({a['overrides']})"] if a["overrides"] else []
        folds, synthetic = CV_LABEL in key.dataset, "(synthetic)" in key.dataset
        if folds:  # the papers score one fixed test split
            reasons.append("other split (cross-validation)")
        if synthetic:
            reasons.append("synthetic data")
        if same and (differs := builtin_difference(a["protocol_name"], a["protocol_version"], a["protocol_hash"])):
            reasons.append("modified protocol copy" if differs.startswith("a modified copy") else "other protocol version")
        config = config_dict(row["model_config"])
        # the model as registered: its paper configuration (Swin-Unet records the window 7 it keeps at 224), in
        # the paper recipe's dimensions (a 3-D protocol builds the volumetric variant itself); keys at other
        # values, or that configuration lacks, are a variant
        extra = config_changes(row["model"].split(" (")[0], config,  # the label's model
                               proto.spatial_dims if proto is not None else None)
        if extra:  # --set, --tiny, an adapted window
            reasons.append("other model config")
        policy = p["convention"] if p["convention"] in POLICIES else proto.metric_policy if proto is not None else None
        if policy and policy != key.policy:
            reasons.append("other metric policy")
        # mm against voxels, or a board of both (older records name no unit: not judged)
        if p["metric"].split(":")[0] == "hd95" and a["hd95_units"] and a["hd95_units"] != [p["unit"]]:
            reasons.append("other unit")
        if not folds and not synthetic:  # else the split says nothing more
            # this row's runs: their test cases and training items
            cases = (groups or {}).get(key)
            if cases is not None and "model_label" in cases:
                cases = cases[cases["model_label"] == row["model"]]
            split = split_mismatch(key.dataset, cases, per_run(row, "n_train"))
            reasons += [split] if split else []
        return "; ".join(reasons) or None

    out: dict[str, pd.DataFrame] = {}
    for key, board in boards.items():
        dataset = published_dataset(key.dataset)
        rows = []
        for _, b in board.iterrows():
            model = b["model"].split(" (")[0]
            # per-class rows ("dice:aorta") beside the board's per-class columns ("dice/aorta")
            pub = published[(published["model"] == model) & (published["dataset"] == dataset)
                            & published["metric"].str.split(":").str[0].isin(PUBLISHED_METRICS)]
            for _, p in pub.iterrows():
                base, _, cls = p["metric"].partition(":")
                mean = b.get(_class_column(b, base, cls) if cls else f"{base}_mean", math.nan)
                scale = 100.0 if METRICS[base][1] else 1.0
                ours = mean * scale if isinstance(mean, float) and not math.isnan(mean) else math.nan
                blocked = why_not(p, key, board.attrs, b)
                diff = blocked or ("" if math.isnan(ours) else f"{ours - p['value']:+.2f}")
                label = METRICS[base][0] + (f" ({class_display(cls, key.dataset)})" if cls else "")  # as the board
                unit = "%" if METRICS[base][1] else _one_hd95_unit(board)
                mark = _against_bundled(p, bundled)
                note = "; ".join(n for n in (mark, p["note"]) if n)
                rows.append({"Model": b["model"], "Metric": label,  # the board's row label
                             "Published": f"{_paper_value(p['value'])} {p['unit']}{' §' * bool(mark)}".strip(),
                             "Source": p["source"],
                             "Their convention": p["convention"], "Their recipe": p["protocol"] or "not one of ours",
                             "Ours": "" if math.isnan(ours) else f"{ours:.2f} {unit}".strip(), "Ours − published": diff,
                             "Note": note})
        if rows:
            synth = " — synthetic data: the difference says nothing about the model" if "(synthetic)" in key.dataset else ""
            table = pd.DataFrame(_one_row_per_number(rows))
            out[f"Published vs ours · {_caption(key, board)[0]} (ours){synth}"] = \
                table if table["Note"].astype(bool).any() else table.drop(columns="Note")
    return out


def _one_row_per_number(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows that differ in their source alone as one, the sources joined: a paper that reprints another's
    table (VM-UNet-V2's Table 1 holds VM-UNet's ISIC numbers) adds its name, not a second row."""
    merged: dict[tuple, dict[str, str]] = {}
    for row in rows:
        key = tuple(v for k, v in row.items() if k != "Source")
        if key in merged:
            merged[key]["Source"] += f"; {row['Source']}"
        else:
            merged[key] = dict(row)
    return list(merged.values())


def missing_published_md(boards: dict[BoardKey, pd.DataFrame], published: pd.DataFrame, source: str) -> str:
    """The ``--published`` section's line for the boards without a published table, each saying why
    (rather than nothing at all); "" where every board has one. ``source``: the table's name. A pooled
    polyp / isic_all board is left out: it is compared through its per-test-set boards."""
    held, silent = {d for d in published["dataset"] if d}, []
    for key, board in boards.items():
        data = published_dataset(key.dataset)
        if key.dataset.split(" (")[0] in TEST_SET_DATASETS:
            continue
        row_models = sorted({m.split(" (")[0] for m in board["model"]})
        if data not in held:
            silent.append(f"{key.dataset} (data no paper in it reports on)")
        elif not (published["dataset"].eq(data) & published["model"].isin(row_models)).any():
            silent.append(f"{key.dataset} (none for {', '.join(row_models)})")
    if not silent:
        return ""
    return (f"## Published vs ours\n\nNo published numbers for {'; '.join(silent)}. {source} "
            f"holds data {', '.join(sorted(held))}; --published-file takes your own table of its columns.\n")
