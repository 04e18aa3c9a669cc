"""The ``--reference`` section: paired tests against one model and rank stability, per board."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import stats
from bench.errors import BenchError, did_you_mean
from bench.report.board_text import _caption
from bench.report.boards import CI_METRICS, METRICS
from bench.report.costs import _num
from bench.report.labels import BoardKey
from bench.report.tables import latex_table, md_table


@dataclass
class Section:
    """One board's significance section: its caption title, the note above (``rank_note`` within it), the
    paired tests (None where there are none) and the rank table, with ``after``: what follows the rank table."""

    key: BoardKey
    title: str
    note: str
    tests: pd.DataFrame | None
    ranks: pd.DataFrame
    rank_note: str
    after: str = ""


def significance_md(boards: dict[BoardKey, pd.DataFrame], groups: dict[BoardKey, pd.DataFrame],
                    reference: str) -> str:
    """Per board: paired tests of every model against ``reference`` (Holm-adjusted; ``stats.paired_tests``)
    and the rank table with its bootstrap stability, as Markdown sections. ``groups``: the case rows per board."""
    return "\n".join(f"## Significance · {s.title}\n\n{s.note}\n\n"
                     + "".join(md_table(t) + "\n\n" for t in (s.tests,) if t is not None)
                     + md_table(s.ranks) + s.after + "\n" for s in significance_sections(boards, groups, reference))


def significance_latex(boards: dict[BoardKey, pd.DataFrame], groups: dict[BoardKey, pd.DataFrame],
                       reference: str, labels: collections.Counter) -> str:
    """The same as booktabs tables: the paired tests captioned with their note, the ranks with theirs."""
    parts = []
    for s in significance_sections(boards, groups, reference):
        board = f"{s.key.dataset} {s.key.protocol} {s.key.policy}"
        rank_note = s.note  # without tests, the section's note is the ranks' own
        if s.tests is not None:  # the rank note goes with the rank table, the rest with the tests
            spec = "".join("l" if c in ("Model", "Metric") else "r" for c in s.tests.columns)
            tests_note = " ".join(s.note.replace(s.rank_note, "").split())
            parts.append(latex_table(f"Paired tests · {s.title}", tests_note, f"significance {board}", s.tests, spec,
                                      labels))
            rank_note = s.rank_note
        spec = "l" + "r" * (len(s.ranks.columns) - 1)
        parts.append(latex_table(f"Rank stability · {s.title}", " ".join((rank_note + s.after).split()),
                                  f"ranks {board}", s.ranks, spec, labels))
    return "\n\n".join(parts)


# Under this many seeds per model the paired tests' caption says they speak of these trained runs: with
# 2 seeds a model's training spread rests on one degree of freedom, with 1 on none, so a difference over
# cases cannot be told from the luck of a training draw.
FEW_SEEDS = 3


def rank_note(board: pd.DataFrame) -> str:
    """The rank table's note: how ranks and their stability are drawn, and of which rows a retrained seed
    (runs trained here) or other weights (weights only evaluated: no training seed here) can rank otherwise."""
    given = _given(board)
    other = ("for these trained runs: a retrained seed" if not given.any() else
             "for these weights, each a given file evaluated once: other weights of these models" if given.all() else
             "for these runs and weights: a retrained seed of the models trained here, or other weights of those "
             "only evaluated,")
    return ("Ranks by the board's DSC (its policy's aggregate) over the cases every model has; stability "
            f"from {stats.N_BOOT_RANKS} bootstrap resamples of those cases (any in which a model's DSC is undefined "
            f"left out), {other} can rank otherwise. "
            "Tied models share the better rank, so P(rank 1) can add up to more than 1.")


def _given(board: pd.DataFrame) -> pd.Series:
    """The board's rows of weights only evaluated (``bench run --weights``): trained elsewhere, no seed here."""
    return board["evaluated"].astype(bool) if "evaluated" in board else pd.Series(False, index=board.index)


def _draws_note(board: pd.DataFrame) -> str:
    """What p does not count, said of each kind of row: the trained runs' training draws under ``FEW_SEEDS``
    seeds; the given weights' training (one file each, trained elsewhere) always."""
    given, note = _given(board), ""
    seeds = int(board["n_seeds"][~given].min()) if (~given).any() else FEW_SEEDS
    if seeds < FEW_SEEDS:
        which = "For these trained runs" if not given.any() else "For the runs trained here"
        note += (f" {which}: with {seeds} seed{'s' * (seeds != 1)} per model (the fewest here), p counts the test "
                 "cases as the sample, not the training draws: a retrained seed can compare otherwise.")
    if given.any():
        which = "For these weights" if given.all() else "For the weights only evaluated"
        note += (f" {which}: one given file per model, trained elsewhere, so p compares these files on these "
                 "cases, not the models' training: other weights can compare otherwise.")
    return note


def significance_sections(boards: dict[BoardKey, pd.DataFrame], groups: dict[BoardKey, pd.DataFrame],
                          reference: str) -> list[Section]:
    """The sections of ``significance_md`` and ``significance_latex``, one per board with case rows."""
    parts = []
    for key, cases in groups.items():
        if key not in boards:
            continue
        labels = sorted(set(cases["model_label"]))
        ref = stats.reference_label(cases, reference)  # "unet" for "unet (tiny)"
        tests = stats.paired_tests(cases, ref, metrics=CI_METRICS, policy=key.policy)
        ranks = stats.rank_stability(cases, "dice", key.policy)
        title = _caption(key, boards[key])[0]
        rank_table = pd.DataFrame({
            "Model": ranks["model"], "DSC (%)": [f"{100 * v:.2f}" for v in ranks["mean"]],
            "Rank": ranks["rank"], "P(rank 1)": [_num(p, ".2f") for p in ranks["p_rank_1"]],
            "95% rank interval": ["" if math.isnan(a) else f"{a:.0f}–{b:.0f}"
                                  for a, b in zip(ranks["rank_lo"], ranks["rank_hi"])],
        })
        ranked = rank_note(boards[key])
        unranked = sorted(set(labels) - set(ranks["model"]))
        # their DSC is NaN on the shared cases (strict: a class valid in none of them)
        after = f"\n\nNot ranked (DSC nan over the cases every model has): {', '.join(unranked)}." if unranked else ""
        if tests.empty:
            if ref in labels:
                why = (f"{ref!r} is the only model on this board" if len(labels) == 1
                       else f"{ref!r} shares no scored test case with another model")
            elif configs := [m for m in labels if m.startswith(f"{reference} (")]:  # "unet (encoder=resnet34)": per config
                why = (f"{reference!r} runs here in several configurations ({', '.join(configs)}); pass one as "
                       "--reference")
            else:
                why = f"{reference!r} has no runs on this board"
            parts.append(Section(key, title, f"No paired comparison: {why}. {ranked}", None, rank_table, ranked, after))
            continue
        pooled = tests["test"].str.startswith("permutation").any()
        shown = pd.DataFrame({
            "Model": tests["model"], "Metric": [METRICS[m][0] for m in tests["metric"]],
            "Cases": tests["n_cases"],
            ("Diff of board values (model − ref)" if pooled else "Mean per-case diff (model − ref)"):
                [_num(d * (100 if METRICS[m][1] else 1), "+.2f") for d, m in zip(tests["mean_diff"], tests["metric"])],
            **({} if pooled else {"Effect size (r)": [_num(r, "+.2f") for r in tests["effect_size"]]}),
            ("p (permutation)" if pooled else "p (Wilcoxon)"): [
                _num(p, ".3g") + (" (seed-averaged)" if test.endswith("(seed-averaged)") else "")
                for p, test in zip(tests["p"], tests["test"])],
            "p (Holm)": [_num(p, ".3g") for p in tests["p_holm"]],
        })
        if pooled:
            note = (f"Reference: {ref}. The board's number is pooled over all test pixels, not a mean over cases, so "
                    "the test is a paired permutation test of the board's difference: each shared case's confusion "
                    "counts swapped or not between the two models' runs (paired in seed and fold order), every "
                    f"pattern up to 2^12 (else {stats.N_PERM} drawn), the pooled numbers recomputed per run and "
                    "averaged over runs; two-sided p, adjusted with Holm over the board's tests (a per-case test can "
                    "contradict a pooled gap)."
                    + (" \"seed-averaged\": the models' runs do not pair up (other seeds or folds), so the p tests "
                       "another number, the pooled metric of each case's counts averaged over the model's runs, which "
                       "can differ from the board values' difference, even in sign."
                       if (tests["test"] == "permutation (seed-averaged)").any() else "") + f" {ranked}")
        else:
            note = (f"Reference: {ref}. Two-sided Wilcoxon signed-rank over the shared test cases (each case "
                    "averaged over its classes and the seeds; where some classes are NaN in a case, this mean "
                    "per-case difference can differ from the difference of board values, which averages each "
                    "class over cases first); effect size: matched-pairs rank-biserial correlation, > 0 means the "
                    f"model beats the reference; p adjusted with Holm over the board's tests. {ranked}")
            if (tests["test"] == "undefined").any():
                note += (" nan: the board's number of the model or the reference is nan (a class valid in no "
                         "shared case), so there is nothing to test.")
        tested = tests["n_cases"][tests["p"].notna() & (tests["n_cases"] > 0)]
        fewest = int(tested.min()) if len(tested) else 0
        if fewest and 2 / 2**fewest > 0.05:  # an exact sign-flip test's smallest two-sided p: every case one way
            note += (f" Caution: with {fewest} shared test cases the smallest p these tests can give is "
                     f"2/2^{fewest} = {2 / 2**fewest:.3g}, so no difference can reach p < 0.05 here.")
        note += _draws_note(boards[key])
        if key.policy == "legacy-synapse":  # what to do about it: bench report's warning (write._warn_boards)
            note += (" Caution: under legacy-synapse a missed organ scores HD95 0 (the papers' rule), so a model "
                     "that finds nothing looks best on HD95.")
        parts.append(Section(key, title, note, shown, rank_table, ranked, after))
    return parts


def _check_reference(reference: str, groups: dict[BoardKey, pd.DataFrame], results_dir: Path) -> None:
    """BenchError when ``reference`` names no model (nor a board row such as "unet (widths=...)") of
    any board: a typo would print 'no runs on this board' under every board."""
    rows = [g[["model", "model_label"]] for g in groups.values()]
    names = sorted(set(pd.concat(rows).stack())) if rows else []
    if reference in names:
        return
    raise BenchError(f"--reference {reference!r}: no runs of that model in {results_dir} (models there: "
                     f"{', '.join(names) or 'none'}){did_you_mean(reference, names)}")
