"""`bench figure`: the papers' visual comparison of test cases, predicted from finished runs' weights."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.errors import BenchError
from bench.names import name_list
from bench.cli.options import (DEFAULT_RESULTS, FinishedRuns, Models, MovedData, ScoringThreads,
                               _compute_setup, device_option, dpi_option, policy_option)


def figure(
    out: Annotated[Path, typer.Option(help="the figure file: .png (--dpi), .pdf or .svg (vector)")],
    results: FinishedRuns = DEFAULT_RESULTS,
    models: Models = "all",
    dataset: Annotated[Optional[str], typer.Option(help="the board's dataset where the runs form several (synapse, "
                                                        "isic17, ..., or a data name such as nnunet:ACDC)")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="only runs of this protocol, a name or its .toml (where "
                                                         "several share the data)")] = None,
    policy: Annotated[Optional[str], policy_option("the board of this metric policy, records of "
                                                        "bench rescore included (default: the runs' own)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="each model's run of this seed (default: its lowest)")] = None,
    cases: Annotated[Optional[str], typer.Option(help="comma list of test case ids, one row each, in this order")] = None,
    n_cases: Annotated[Optional[int], typer.Option(help="without --cases: this many cases where the models differ "
                                                        "most [default: 3]")] = None,
    device: Annotated[str, device_option("where to predict")] = "auto",
    threads: ScoringThreads = None,
    data_root: MovedData = None,
    dpi: Annotated[int, dpi_option("the .png's resolution (in a .pdf or .svg: the panels' images'; text and lines "
                                   "stay vector)")] = 200,
) -> None:
    """Draw test cases (rows) as Image | Ground truth | one column per model, predictions overlaid.

    One run per row of one board (dataset, protocol, policy), predicted from its weights on the grid
    it was scored on (ISIC/polyp: model resolution; volumes: the axial slice, counted from 0, with the
    most ground-truth foreground); each panel shows the case's DSC (%), the whole volume's for volumes.

    Example: bench figure --results results/demo --out results/demo/figure.png --models unet,vmunet
    """
    from bench.env import resolve_device
    from bench.figure import case_dsc, check_out, choose_cases, choose_runs, draw_figure, figure_panels
    from bench.fileio import ensure_writable_dir
    from bench.plots import check_dpi
    from bench.registry import model_filter
    from bench.rescore import DataRoots, other_device_warning

    check_out(out)
    check_dpi(dpi)
    wanted = name_list(cases)
    if wanted == []:
        raise BenchError(f"--cases expects a comma list of test case ids; got {cases!r}")
    if wanted and n_cases is not None:
        raise BenchError("--cases names the rows and --n-cases counts them: give one of the two")
    if protocol is not None and protocol.endswith(".toml"):  # as bench run takes it: its runs record the name
        from bench.protocol import load_protocol

        protocol = load_protocol(protocol).name
    _compute_setup(threads)
    dev = resolve_device(device)
    columns = choose_runs(results, model_filter(models), dataset, seed, protocol,
                          policy)
    asked = 3 if n_cases is None else n_cases
    ids = choose_cases([case_dsc(c.rec) for c in columns], wanted, asked)
    if not wanted and len(ids) < asked:
        warnings.warn(f"--n-cases {asked}: the runs share {len(ids)} scored test case(s); all are drawn", stacklevel=1)
    ensure_writable_dir(out.parent, "--out")
    if note := other_device_warning([c.weights_of for c in columns], dev, "shown"):
        warnings.warn(note, stacklevel=1)
    panels = figure_panels(columns, results, ids, dev, DataRoots(data_root or ()))
    draw_figure(panels, out, dpi)
    rows = f"{len(ids)} case{'s' * (len(ids) != 1)} × {len(columns)} model{'s' * (len(columns) != 1)}"
    typer.echo(f"wrote {out} ({rows}; board {panels.board})")
