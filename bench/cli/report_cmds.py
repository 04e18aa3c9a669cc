"""`bench report` (leaderboards from the run records) and `bench check` (drift against a baseline)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.console import _echo_err
from bench.cli.options import DEFAULT_RESULTS, POLICY_NAMES, RunDatasets, dpi_option, out_format
from bench.errors import BenchError
from bench.names import name_list, nothing_named
from bench.report.formats import ReportFormat  # not bench.report: its boards import pandas


def report(
    results: Annotated[Path, typer.Option(help="results directory")] = DEFAULT_RESULTS,
    format: Annotated[Optional[ReportFormat], typer.Option(
        "--format", help="output format (default: from --out's suffix, .csv or .tex, else md); cases: every run x "
                         "case x class row as CSV, for statistics elsewhere; methods: a paper's Methods paragraphs "
                         "per board, from what the runs did (LaTeX with --out methods.tex)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="write to this file instead of stdout (Markdown: plots go "
                                                     "to <stem>_files/ beside it)")] = None,
    published: Annotated[bool, typer.Option(help="add the papers' numbers next to ours (the repository's "
                                                 "results/published.csv; --published-file for another)")] = False,
    published_file: Annotated[Optional[Path], typer.Option(help="another published-numbers CSV")] = None,
    reference: Annotated[Optional[str], typer.Option(help="paired tests of every model against this one")] = None,
    models: Annotated[str, typer.Option(help="'all' or a comma list: only these models' runs and profiles")] = "all",
    dataset: RunDatasets = None,
    policy: Annotated[Optional[str], typer.Option(help="a comma list: only runs scored under these metric policies "
                                                       "(bench rescore adds boards of another), of "
                                                       f"{', '.join(POLICY_NAMES)}")] = None,
    columns: Annotated[Optional[str], typer.Option(help="the tables' columns (md, latex), a comma list of: paper "
                                                        "(the papers' layout: their metrics, per-class DSC means, the best in bold), family, seeds, "
                                                        "params, time, cost, metrics, ci, classes, class-hd95; "
                                                        "default all")] = None,
    plot_format: Annotated[Optional[str], typer.Option(help="with a Markdown --out only: the plots as png (default), or "
                                                            "pdf/svg (vector, for a paper)")] = None,
    plot_style: Annotated[Optional[str], typer.Option(help="with a Markdown --out only: screen (default), or paper (a "
                                                           "journal's column: half the size, 7 pt text, 300 dpi PNGs, "
                                                           "no titles)")] = None,
    plot_dpi: Annotated[Optional[int], dpi_option("with a Markdown --out and PNG plots only: their resolution "
                                                  "(default: --plot-style's, 120 screen, 300 paper)",
                                                  "--plot-dpi")] = None,
) -> None:
    """Leaderboards (mean ± std over seeds, per organ) from the run records.

    Example: bench report --results results --format latex --columns paper --dataset synapse --out table.tex
    """
    from bench.report import parse_columns, write_report

    groups = parse_columns(columns)  # before anything is read
    from bench.plots import check_plot_format, check_plot_style

    if plot_format is not None:  # before anything is read, with or without --out
        check_plot_format(plot_format)
    if plot_style is not None:
        check_plot_style(plot_style)

    format = ReportFormat(out_format(format, out, _SUFFIX_FORMATS))
    text = write_report(results, format.value, out, published=published_file or published, reference=reference,
                        models=models, datasets=dataset, columns=groups, plot_format=plot_format, policies=policy,
                        plot_style=plot_style, plot_dpi=plot_dpi)
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))  # a CSV piped on ends in one newline, not an empty row
    else:
        typer.echo(f"wrote {out}")


# the formats a file name's suffix allows (--out table.csv wrote Markdown into it)
_SUFFIX_FORMATS = {".csv": ("csv", "cases"), ".tex": ("latex", "methods"), ".md": ("md", "methods")}


def check(
    baseline: Annotated[Path, typer.Option(help="committed baseline CSV, e.g. results/baseline/smoke.csv")],
    results: Annotated[Path, typer.Option(help="results directory with the current records")] = DEFAULT_RESULTS,
    update: Annotated[bool, typer.Option(help="(re)write the baseline from the current results instead")] = False,
    prune: Annotated[bool, typer.Option(help="with --update: drop baseline rows the current results have no value "
                                             "for (refused otherwise)")] = False,
    changes_only: Annotated[bool, typer.Option(help="list only the rows that are not ok (a long grid's CI log)")] = False,
    models: Annotated[str, typer.Option(help="'all' or a comma list: compare (with --update: rewrite) only these "
                                             "models' rows, the baseline's others kept as they are")] = "all",
) -> None:
    """Compare current results with a baseline; exit 1 when any metric drifts past its tolerance.

    Example: bench check --baseline results/baseline/smoke.csv --results /tmp/smoke
    """
    from bench import drift, records

    if prune and not update:
        raise BenchError("--prune goes with --update (it drops baseline rows while rewriting the file)")
    df = records.load(results, recheck=True, current=True)  # the numbers bench report shows: a hand-edited one restated
    if records.finished(df).empty:  # most likely not the folder meant: not drift
        raise BenchError(records.no_runs(results))
    picked = name_list(models)
    if picked is not None:  # a name without finished runs: one error naming those there
        if not picked:
            raise nothing_named("--models", models, "unet,vmunet")
        records.select_runs(records.finished(df), picked, None, results)
    if update:
        rows, dropped = drift.write_baseline(df, baseline, prune=prune, models=picked)
        used = len(df) if picked is None else int(df["model"].isin(picked).sum())
        typer.echo(f"wrote baseline {baseline} from {used} run(s): {rows} rows"
                   + (f" ({dropped} dropped by --prune)" if dropped else "")
                   + (f"; only the rows of {', '.join(picked)} rewritten, the others kept" if picked else ""))
        return
    result = drift.compare(baseline, df, picked)
    typer.echo(result.render(only_changes=changes_only))
    n = result.counts()
    update = f"bench check --update --baseline {shlex.quote(str(baseline))} --results {shlex.quote(str(results))}"
    if picked is not None:
        update += f" --models {shlex.quote(','.join(picked))}"
    if n["new"] and not result.failed:  # passing, yet nothing guards these rows (a model added to the grid)
        table = result.table
        row_models = table["model"].map(drift.label_model)
        added = set(row_models[table["status"] == "new"]) - set(row_models[table["status"] != "new"])
        if picked is None and added and (row_models[table["status"] == "new"].isin(added)).all():
            update += f" --models {shlex.quote(','.join(sorted(added)))}"  # their rows alone, the others' values kept
        _echo_err(f"{n['new']} row(s) are new: the baseline does not check them yet; `{update}` adds them "
                  "(hand-edited tolerances kept)")
    # nothing compared, nor back under another label: most likely another grid's folder
    if result.failed and not (n["ok"] or n["drift"] or result.relabelled() or result.moved()):
        _echo_err(f"none of the baseline's {n['missing']} rows has a value in {results}, which holds "
                  f"{n['new']} row(s) of other boards: is it the results folder of the grid the baseline was "
                  f"written from (its protocol, datasets and models)? Only if these runs are to replace the "
                  f"baseline whole, `{update} --prune` rewrites it")
        raise typer.Exit(code=1)
    if result.failed:
        what = [f"{n['drift']} value(s) drifted past their tolerance" if n["drift"] else "",
                f"{n['missing']} baseline row(s) have no value now" if n["missing"] else ""]
        # else --update refuses to drop the rows with no value now; rows back under a new label it renames
        update += " --prune" if n["missing"] > result.relabelled() else ""
        _echo_err(f"{' and '.join(w for w in what if w)}: see the rows marked above. If the change is meant, "
                  f"`{update}` rewrites the values (hand-edited tolerances kept); else widen a row's tolerance "
                  "(absolute, in its metric's unit) by hand")
        if result.moved():
            _echo_err(f"{result.moved()} of them are back under a tagged label ('name@hash', '(data …)', '(init …)'): "
                      "other runs in the results folder (another protocol version, other data or pretrained files) "
                      "change how boards label the grid's runs; check the drift grid in a folder of its own")
        if result.relabelled():
            _echo_err(f"{result.relabelled()} of them may be back under a new label: boards now call --tiny runs "
                      "'model (tiny)'; if so, bench check --update renames the baseline's rows, keeping hand-edited "
                      "tolerances")
        raise typer.Exit(code=1)
