"""``render`` (the boards' text) and ``write_report`` (``bench report``: boards, sections, plots, the file)."""

from __future__ import annotations

import collections
import re
import shlex
import warnings
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from bench.errors import BenchError, few
from bench.records import finished, load_both, no_runs, select_runs
from bench.names import matched_names, name_list
from bench.fileio import atomic_write_text
from bench.report.board_text import _check_columns, _check_format, _render, _shows, paper_layout, render_cases
from bench.report.boards import _boards
from bench.report.costs import render_cost_latex, render_cost_md
from bench.report.formats import ReportFormat
from bench.report.published import PUBLISHED_NOTE, missing_published_md, published_note, published_tables
from bench.report.significance import _check_reference, significance_latex, significance_md
from bench.report.tables import latex_table, md_table, warn_outside_latin1


def render(df_runs: pd.DataFrame, fmt: str | ReportFormat = "md", df_cases: pd.DataFrame | None = None,
           profiles: pd.DataFrame | None = None, columns: str | Iterable[str] | None = None) -> str:
    """All leaderboards of ``df_runs`` (from ``records.load``) as Markdown, LaTeX or CSV text.

    ``md``: a ``##`` heading per board naming dataset, protocol (name, version, hash) and metric
    policy, a line with seeds/cases, then a table of "81.23 ± 0.45" strings. ``latex``: one
    booktabs ``table`` per board, same content. ``csv``: the numeric boards stacked into one tidy
    table (mean and std columns, metrics as stored in [0, 1]) with the board key columns first.
    With ``df_cases`` (``records.load(dir, level="case")``) the boards gain their bootstrap CIs and
    polyp/isic_all runs a board per test set; with ``profiles`` (``profiles.load_profiles``), GMACs of
    runs whose records count none, and in LaTeX the cost tables after the boards: then this is
    ``bench report``'s text (``write_report`` adds the sections after the boards: paired tests,
    published numbers, cost tables, and in Markdown the plots).
    ``columns``: the Markdown/LaTeX tables' ``COLUMN_GROUPS`` and presets, e.g. "paper" or ["metrics", "cost"]
    (``parse_columns``); None: all.
    """
    fmt = ReportFormat(fmt.value if isinstance(fmt, ReportFormat) else _check_format(fmt))
    columns = _check_columns(columns, fmt)
    if fmt == ReportFormat.methods:
        raise BenchError("format 'methods' is written from the full records: call render_methods(results_dir) "
                         "(bench report --format methods)")
    if fmt == ReportFormat.cases:
        if df_cases is None:
            raise BenchError("format 'cases' needs the records' case rows: pass df_cases (bench report --format cases)")
        return render_cases(df_cases[df_cases["run_id"].isin(finished(df_runs)["run_id"])], finished(df_runs))
    boards, groups, _ = _boards(df_runs, df_cases, profiles)
    return _with_cost_latex(_render(boards, fmt, columns, groups), fmt, profiles, columns)


def _with_cost_latex(text: str, fmt: ReportFormat, profiles: pd.DataFrame | None,
                     columns: tuple[str, ...] | None) -> str:
    """LaTeX boards followed by the cost tables of ``profiles`` (a paper's cost table), unless
    ``columns`` leaves the cost out."""
    if fmt != ReportFormat.latex or profiles is None or profiles.empty or not _shows(columns, "cost"):
        return text
    cost = render_cost_latex(profiles, paper=paper_layout(columns))
    return text.rstrip("\n") + "\n\n" + cost + "\n" if cost else text


def _latex_sections(text: str, boards: dict, groups: dict, reference: str | None, pub: pd.DataFrame | None,
                    source: str, bundled: pd.DataFrame | None = None, note: str = PUBLISHED_NOTE) -> str:
    """The LaTeX boards followed by the paired tests and ranks (``reference``) and the published-vs-ours
    tables (``pub``; ``bundled``, ``note``: ``_published``'s), as the Markdown report has them; boards
    without a published table in a comment."""
    labels: collections.Counter = collections.Counter()
    parts = [text.rstrip("\n")]
    if reference:
        parts.append(significance_latex(boards, groups, reference, labels))
    if pub is not None:
        for title, table in published_tables(boards, pub, groups, bundled).items():
            spec = "".join("r" if c in ("Published", "Ours", "Ours − published") else "l" for c in table.columns)
            board = re.sub(r"\s*\([^)]*\)", "", title.split(" — ")[0].split(" · ", 1)[-1])  # no hashes, "(ours)"
            parts.append(latex_table(title, note, f"published {board}", table, spec, labels))
        missing = missing_published_md(boards, pub, source)
        if missing:  # a Markdown section's words, as a comment: no table to caption
            parts.append("% " + " ".join(missing.replace("## ", "").split()))
    return "\n\n".join(p for p in parts if p) + "\n"


def _published(published: Path | bool) -> tuple[pd.DataFrame, str, pd.DataFrame | None, str]:
    """``--published``'s table, its name, and where it is another file than the bundled table
    (``--published-file``) the bundled table to mark its numbers against; the tables' caption note
    (naming that file, its path as given and sha256)."""
    from bench.published import DEFAULT_NAME, DEFAULT_PATH, load_published

    if published is True or Path(published).resolve() == DEFAULT_PATH.resolve():  # the bundled table
        return load_published(), DEFAULT_NAME, None, PUBLISHED_NOTE
    pub = load_published(Path(published))
    return pub, str(published), load_published(), published_note(f"{published} (sha256 {pub.attrs['sha256'][:12]})")


def _warn_repeated(boards: dict) -> None:
    """Said where it is seen, not only in a caption: a seed counted twice in a mean ± std (records of one
    training naming its data otherwise, as older records of a moved folder do, or runs on other data of
    one name), with the records to choose from."""
    repeated = [ids for board in boards.values() for ids in board.attrs.get("repeated_runs", [])]
    if repeated:
        named = few([" and ".join(f"records/{r}.json" for r in ids[:3]) for ids in repeated], 3, sep="; ")
        warnings.warn(f"{len(repeated)} board row(s) count a seed more than once in their mean ({named}): records of one seed naming their data otherwise "
                      "(older records in a moved folder name it by its path) or runs on other data of one name; "
                      "delete the record that should not count and its folder runs/<run id>/ (else the run is named as one "
                      "without a record)", stacklevel=3)


def _warn_boards(boards: dict, results_dir: Path) -> None:
    """What to do about a board, said where it is seen rather than in its caption (a paper's text): misses
    scored HD95 0 (the board of the same runs under a policy with a penalty, where there is one: each run
    with misses rescored there, not only its model; else the command that scores them so), and plugin code
    changed since its runs trained."""
    from bench.report.board_text import _missed_at_hd95_zero, _misses_score_zero

    for key, board in boards.items():
        if missed := _missed_at_hd95_zero(key, board):
            run_ids = board.attrs.get("run_ids", {})
            missing = {r for label in board.loc[board["n_missed"] > 0, "model"] for r in run_ids.get(label, [])}
            # these very runs there: each rescored (bench rescore's records name their run), not only their models
            beside = [k.policy for k, b in boards.items() if k[:2] == key[:2] and not _misses_score_zero(k.policy)
                      and missing and missing <= set(b.attrs.get("rescored_from", {}).values())]
            fix = (f"the {beside[0]} board of these runs scores them with a penalty" if beside else
                   f"`bench rescore --policy strict --results {shlex.quote(str(results_dir))}` scores them with a "
                   "penalty")
            warnings.warn(f"{key.dataset} · {key.protocol}: {key.policy} scores the structures predicted nowhere HD95 "
                          f"0, the best value ({missed}); {fix}", stacklevel=3)
        if plugin := board.attrs.get("plugin_code"):
            warnings.warn(f"{key.dataset} · {key.protocol}: plugin code changed since these runs trained "
                          f"({'; '.join(f'{m}: {n}' for m, n in plugin.items())}; records' model_code): their numbers "
                          "are the old code's; train them into another --results folder for the code as it is",
                          stacklevel=3)


def _methods(results_dir: Path, models: str | Iterable[str] | None, datasets: str | Iterable[str] | None,
             policies: str | Iterable[str] | None, reference: str | None, **refused: object) -> str:
    """``--format methods``: prose of what ran, which the boards' options do not shape (one error names them);
    ``reference`` chooses the paired tests its statistics name; without finished runs, the error saying so
    (as the boards)."""
    from bench.report.methods import render_methods

    given = [f"--{name}" for name, value in refused.items() if value]
    if given:
        raise BenchError(f"{' and '.join(given)} shape{'s' * (len(given) == 1)} the leaderboards; --format methods "
                         "writes the Methods paragraphs only: leave them out")
    return render_methods(results_dir, models, datasets, policies, empty_ok=False, reference=reference)


def _check_plot_options(fmt: ReportFormat, out: Path | None, plot_format: str | None, plot_style: str | None,
                        plot_dpi: int | None = None) -> None:
    """Refused where no plots are drawn (as --columns is with --format csv): given there, they did nothing; so is
    --plot-dpi with vector plots, which hold no raster image for it to resample."""
    from bench.plots import check_dpi, check_plot_format

    if plot_format is not None:  # an unknown one (jpg) is not a vector format to refuse --plot-dpi with
        plot_format = check_plot_format(plot_format)
    if plot_dpi is not None:
        check_dpi(plot_dpi, "--plot-dpi")
    given = [o for o, v in (("--plot-format", plot_format), ("--plot-style", plot_style), ("--plot-dpi", plot_dpi))
             if v is not None]
    if given and (fmt != ReportFormat.md or out is None):
        got = f"--format {fmt.value}" if fmt != ReportFormat.md else "no --out"
        raise BenchError(f"{' and '.join(given)} shape{'s' * (len(given) == 1)} the plots, which only a Markdown report "
                         f"written to a file has (--format md --out report.md); got {got}")
    if plot_dpi is not None and (plot_format or "png") != "png":
        raise BenchError(f"--plot-dpi sets the PNG plots' resolution; --plot-format {plot_format} writes vector plots, "
                         "which have none: leave --plot-dpi out (or use --plot-format png)")


def write_report(results_dir: Path, fmt: str | ReportFormat = "md", out: Path | None = None,
                 published: Path | bool | None = None, reference: str | None = None,
                 models: str | Iterable[str] | None = None, datasets: str | Iterable[str] | None = None,
                 columns: str | Iterable[str] | None = None, plot_format: str | None = None,
                 policies: str | Iterable[str] | None = None, plot_style: str | None = None,
                 plot_dpi: int | None = None) -> str:
    """Render the report of ``results_dir``; if ``out`` is given, also write it there atomically (``fmt``
    "methods" to a ``.tex`` file: the Methods text as LaTeX, ``methods_latex``).

    Accuracy boards show each run's own GMAC count (records written before runs counted them:
    from ``bench profile`` records of the same model and configuration, ``join_cost``) and a
    bootstrap 95% CI over cases; Markdown and LaTeX reports end with, when asked, paired tests
    against ``reference`` (tests and ranks) and, with ``published`` (True: the repo's ``results/published.csv``, or
    a path), a published-vs-ours table per board, then the cost tables; with ``out``, the plots of
    ``bench.plots`` are written to ``<out stem>_files/`` beside it and linked. ``models`` /
    ``datasets`` / ``policies``: only their runs, a list or a comma list (and profiles of those models;
    ``select_runs``).
    ``columns``: the boards' ``COLUMN_GROUPS`` and presets (Markdown, LaTeX; None: all). ``plot_format`` and
    ``plot_style``: the plots' (``bench.plots.PLOT_FORMATS``, ``PLOT_STYLES``; None: png, screen), and
    ``plot_dpi`` the PNGs' (``bench.plots.DPI_RANGE``; None: the style's), given only with a Markdown ``out``,
    the one report with plots."""
    from bench.profiles import load_profiles
    from bench.fileio import check_out_file

    results_dir = Path(results_dir).expanduser()
    if out is not None:  # before anything is read, and the plots drawn beside it
        out = check_out_file(out, "report.md")
    fmt = ReportFormat(fmt.value if isinstance(fmt, ReportFormat) else _check_format(fmt))
    _check_plot_options(fmt, out, plot_format, plot_style, plot_dpi)
    if fmt == ReportFormat.methods:
        text = _methods(results_dir, models, datasets, policies, reference, columns=columns, published=published)
        if out is not None and out.suffix.lower() == ".tex":  # --out methods.tex: for a paper's LaTeX source
            from bench.report.methods import methods_latex

            text = methods_latex(text)
            warn_outside_latin1(text)
        if out is not None:
            atomic_write_text(Path(out), text)
        return text
    if (reference or published) and fmt not in (ReportFormat.md, ReportFormat.latex):
        asked = [o for o, v in (("--reference", reference), ("--published", published)) if v]
        raise BenchError(f"{' and '.join(asked)} add{'s' if len(asked) == 1 else ''} tables after the boards; use "
                         f"--format md or latex (got --format {fmt.value})")
    columns = _check_columns(columns, fmt)
    given = models, datasets  # as typed, for select_runs' errors (`--models ,`)
    models, datasets = name_list(models), name_list(datasets)
    # load first: it checks the folder
    df_runs, df_cases = load_both(results_dir, recheck=True, current=True)  # one read of each record
    profiles = load_profiles(results_dir)
    profiled = set(profiles["model"]) if profiles is not None and "model" in profiles else set()
    spelt = [*df_runs.get("model", []), *profiled]  # names as the runs and profiles spell them (`--models UNET`)
    if models:  # for the profiles and --reference too
        models = matched_names(models, spelt)
    if reference:  # its model, its configuration as typed ("unet (base_c=8)")
        head, sep, rest = reference.partition(" (")
        reference = matched_names([head], spelt)[0] + sep + rest
    df_runs = finished(select_runs(df_runs, *given, results_dir, profiled, policies))
    costs, filters = profiles is not None and not profiles.empty, (models, datasets, policies)
    if df_runs.empty and (fmt == ReportFormat.cases or not costs):
        # the command's error: a report saying there is nothing (`bench report > table.md`) would read as one
        raise BenchError(no_runs(results_dir, *filters))
    if not df_runs.empty:  # in the Methods paragraphs too (--format methods)
        from bench.report.methods import warn_unrecorded

        warn_unrecorded(results_dir, df_runs, models)
    if models and profiles is not None and "model" in profiles:
        profiles = profiles[profiles["model"].isin(models)]
    df_cases = df_cases[df_cases["run_id"].isin(df_runs["run_id"])] if not df_runs.empty else None  # as the boards
    if fmt == ReportFormat.cases:
        text = render_cases(df_cases, df_runs)
    else:
        boards, groups, (set_runs, set_cases) = _boards(df_runs, df_cases, profiles)
        _warn_repeated(boards)
        _warn_boards(boards, results_dir)
        text = _render(boards, fmt, columns, groups)
        if not boards and fmt == ReportFormat.md:  # the folder's `bench profile` records alone
            text = f"{results_dir}: no finished runs; the cost tables of its `bench profile` records only.\n"
        elif not boards and fmt == ReportFormat.csv:  # its header alone, which a script would read as no runs
            warnings.warn(f"{no_runs(results_dir, *filters)}: the boards' CSV holds its header only (its `bench "
                          "profile` records' cost tables: --format md or latex)", stacklevel=2)
        if reference and models and reference.split(" (")[0] not in models:
            raise BenchError(f"--reference {reference!r}: not among --models {','.join(models)}; add it there to "
                             "compare with it")
        if reference:
            _check_reference(reference, groups, results_dir)
        pub, source, bundled, note = _published(published) if published else (None, "", None, PUBLISHED_NOTE)
        if fmt == ReportFormat.latex:
            text = _latex_sections(text, boards, groups, reference, pub, source, bundled, note)
        if fmt == ReportFormat.md:
            extra = []
            if reference:
                extra.append(significance_md(boards, groups, reference))
            if pub is not None:
                for title, table in published_tables(boards, pub, groups, bundled).items():
                    extra.append(f"## {title}\n\n{note}\n\n{md_table(table)}\n")
                missing = missing_published_md(boards, pub, source)
                extra += [missing] if missing else []
            cost = render_cost_md(profiles) if _shows(columns, "cost") else ""
            extra += [cost] if cost else []
            if out is not None:  # the images go beside the Markdown file, linked relatively
                from bench.plots import write_plots

                images = Path(out).parent / f"{Path(out).stem}_files"
                paths = write_plots(results_dir, images, df_runs=df_runs, df_cases=df_cases, df_profiles=profiles,
                                    set_runs=set_runs, set_cases=set_cases, fmt=plot_format or "png",
                                    style=plot_style or "screen", dpi=plot_dpi)
                if paths:  # links percent-encoded: a '#' or '%' of the report's name broke them
                    extra.append("## Plots\n\n" + "\n\n".join(
                        f"![{p.stem}]({quote(f'{images.name}/{p.name}')})" for p in paths) + "\n")
            if extra:
                text = text.rstrip("\n") + "\n\n" + "\n".join(extra)
        text = _with_cost_latex(text, fmt, profiles, columns)
        if fmt == ReportFormat.latex:
            warn_outside_latin1(text)
    if out is not None:
        atomic_write_text(Path(out), text)
    return text
