"""Leaderboards from run records: mean ± std over seeds, one table per dataset × protocol × policy.

The boards are a function of ``bench.records.load(results_dir)`` (runs, and case rows for CIs and
per-test-set boards) and ``bench.profiles.load_profiles`` (cost tables); ``render`` returns their text,
``write_report`` (``bench report``) also reads the folder, adds the sections after the boards and writes
the file and its plots. The submodules:

- ``formats``: ``ReportFormat``, the output formats (importing it imports no pandas: ``bench.cli``).
- ``labels``: which board a run joins (``BoardKey``, ``label_runs``) and its row's model label.
- ``boards``: the numeric leaderboards, per-test-set boards and bootstrap CIs (``leaderboards``).
- ``tables``: generic Markdown and LaTeX table writers.
- ``board_text``: the boards as Markdown, LaTeX or CSV, their captions and ``--columns`` groups.
- ``costs``: the cost tables of ``bench profile`` records, and GMACs for boards whose records lack them.
- ``significance``: the ``--reference`` section (paired tests, rank stability).
- ``published``: the ``--published`` section (the papers' numbers beside ours).
- ``methods``: a paper's Methods paragraphs per board, from the full records (``render_methods``).
- ``write``: ``render`` and ``write_report``.

The names callers use (``_SUBMODULE`` below) import from ``bench.report`` itself, each loading its
submodule on first use: ``from bench.report.formats import ReportFormat`` loads no pandas.

Grouping rules (why: a number only compares with numbers produced the same way):

- a board holds runs with the same dataset, synthetic flag, kind of split, protocol (name +
  content hash), protocol overrides and metric policy. Cross-validation runs (``--folds``: each
  fold tests other cases) read ``"nnunet:ACDC (cross-validation)"``, apart from runs on one fixed
  test split. Off-protocol runs (protocol overrides given) never share
  a board with on-protocol runs: their protocol label reads ``"synapse (off-protocol: epochs=2)"``;
  synthetic data reads ``"synapse (synthetic)"``; two on-protocol hashes of one protocol name get
  ``"name@hash8"`` labels; runs on other data of one dataset (other files, or synthetic data made
  otherwise: the records' ``data_id``) get ``"synapse (data 1a2b3c4d)"`` boards of their own.
- a row is a model with one configuration and one pretrained file (``init``); a model run with
  several in one board gets one row each, labelled with the keys a run sets otherwise than the paper
  (a key written at its paper value is the paper model: its row).
- means and stds are over runs (seeds; under cross-validation seeds × folds) with
  ``skipna=False``: a run whose aggregate is NaN makes the mean NaN rather than quietly
  disappearing; std is the sample std (ddof=1), NaN for one run. Seeds that tested other folds
  (an unfinished grid) are named in the Folds cell: their folds weigh more in the mean.

Display: DSC, NSD, mIoU, Acc, Spe, Sen and per-class DSC ×100 with 2 decimals, as the papers print
them; HD95 with 2 decimals in the unit the records name (``hd95_unit``: voxels/pixels, or mm
under ``strict`` where the data has a spacing).
"""

from __future__ import annotations

import importlib

__all__ = ["BoardKey", "ReportFormat", "METRICS", "label_runs", "label_cases", "leaderboards", "render", "write_report",
           "render_methods"]

# name -> its module: the public names of the former bench/report.py and the private ones tests import.
# The submodules import pandas and bench.data: loading them when a name is first used keeps `import bench.cli` fast.
_SUBMODULE = {name: module for module, names in {
    "formats": ["ReportFormat"],
    "labels": ["BoardKey", "CV_LABEL", "BUILD_KEYS", "label_runs", "label_cases", "model_labels"],
    "boards": ["METRICS", "SYNAPSE_ORGANS", "CI_METRICS", "TEST_SET_DATASETS", "class_display", "leaderboards",
               "split_test_sets", "join_ci"],
    "tables": ["latex_escape"],
    "board_text": ["COLUMN_GROUPS", "COLUMN_PRESETS", "parse_columns", "render_cases"],
    "costs": ["COST_NOTE", "TIMING_NOTE", "scan_mark", "profile_labels", "cost_tables", "render_cost_md",
              "render_cost_latex", "cost_key", "same_input", "join_cost"],
    "significance": ["significance_md", "significance_latex", "significance_sections"],
    "published": ["PUBLISHED_METRICS", "PUBLISHED_NOTE", "published_dataset", "split_mismatch",
                  "published_tables", "missing_published_md", "_class_column"],
    "methods": ["render_methods"],
    "write": ["render", "write_report"],
    "bench.records": ["select_runs"],  # filters records.load's frame; bench report's --models/--dataset
}.items() for name in names}


def __getattr__(name: str):
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _SUBMODULE[name]
    value = getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULE))
