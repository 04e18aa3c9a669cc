"""`bench figure`: the papers' visual comparison of test cases, predicted from finished runs' weights."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.errors import BenchError
from bench.names import name_list
from bench.cli.options import DEFAULT_RESULTS, Device, FinishedRuns, Models, MovedData, ScoringThreads, _compute_setup


def figure(
    out: Annotated[Path, typer.Option(help="the figure file: .png (200 dpi) or .pdf (vector)")],
    results: FinishedRuns = DEFAULT_RESULTS,
    models: Models = "all",
    dataset: Annotated[Optional[str], typer.Option(help="only runs on this dataset (its reader's or data's name)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="each model's run of this seed (default: its lowest)")] = None,
    cases: Annotated[Optional[str], typer.Option(help="comma list of test case ids, one row each, in this order")] = None,
    n_cases: Annotated[int, typer.Option(help="without --cases: this many cases where the models differ most")] = 3,
    device: Annotated[Device, typer.Option(help="where to predict")] = Device.auto,
    threads: ScoringThreads = None,
    data_root: MovedData = None,
) -> None:
    """Draw test cases (rows) as Image | Ground truth | one column per model, predictions overlaid.

    One run per model of one board (dataset, protocol, policy), predicted from its weights on the grid
    it was scored on (ISIC/polyp: model resolution; volumes: the axial slice with the most
    ground-truth foreground); each panel shows the case's DSC.

    Example: bench figure --results results/demo --out results/demo/figure.png --models unet,vmunet
    """
    from bench.env import resolve_device
    from bench.figure import case_dsc, check_out, choose_cases, choose_runs, draw_figure, figure_panels
    from bench.fileio import ensure_writable_dir
    from bench.registry import resolve_models
    from bench.rescore import DataRoots, other_device_warning

    check_out(out)
    wanted = name_list(cases)
    if wanted == []:
        raise BenchError(f"--cases expects a comma list of test case ids; got {cases!r}")
    _compute_setup(threads)
    dev = resolve_device(device.value)
    runs = choose_runs(results, None if models == "all" else resolve_models(models), dataset, seed)
    ids = choose_cases([case_dsc(rec) for rec in runs], wanted, n_cases)
    ensure_writable_dir(out.parent, "--out")
    if note := other_device_warning(runs, dev, "shown"):
        warnings.warn(note, stacklevel=1)
    panels = figure_panels(runs, results, ids, dev, DataRoots(data_root or ()))
    draw_figure(panels, out)
    typer.echo(f"wrote {out} ({len(ids)} cases × {len(runs)} models; board {panels.board})")
