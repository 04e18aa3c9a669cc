"""`bench score`: predictions made elsewhere scored as bench scores its runs (bench.score)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.console import _echo_err
from bench.cli.options import DEFAULT_RESULTS, DataName, DataRoot, ProtocolName, Synthetic, out_format, policy_option
from bench.errors import BenchError


class ScoreFormat(str, Enum):
    md = "md"
    csv = "csv"
    json = "json"


def fold_option(value: str | None) -> int | str | None:
    """--fold as given: a fold number, "all" (``ALL_FOLDS``) or None; BenchError naming --fold otherwise."""
    from bench.data.nnunet import ALL_FOLDS

    if value is None:
        return None
    if value.strip().casefold() == ALL_FOLDS:
        return ALL_FOLDS
    if value.strip().removeprefix("-").isdecimal():
        return int(value)
    raise BenchError(f"--fold {value!r}: expected a fold number (0, 1, ...) or {ALL_FOLDS!r} (every fold's validation "
                     "cases, pooled)")


def score(
    predictions: Annotated[Path, typer.Option(help="folder of label maps, one per test case, named and stored as "
                                                   "bench predict writes them")],
    dataset: DataName,
    data_root: DataRoot = None,
    synthetic: Synthetic = False,
    results: Annotated[Path, typer.Option(help="with --synthetic: the results folder bench run --synthetic wrote "
                                               "the data into")] = DEFAULT_RESULTS,
    fold: Annotated[Optional[str], typer.Option(help="nnunet data: score the test cases of this cross-validation "
                                                     "fold (as bench run --folds K), or 'all': every fold's "
                                                     "validation cases, each once, pooled (nnU-Net's cross-validation "
                                                     "summary). Whatever the fold, predictions in a folder of "
                                                     "nnU-Net's fold_all of a model of this data are refused: it "
                                                     "trained on every case")] = None,
    protocol: ProtocolName = None,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="score a test case without a prediction file as an empty (all-background) "
                                "prediction, each structure of it missed, said in a note (and the json's "
                                "'missing'), instead of refusing the folder; a folder without any is still "
                                "refused")] = False,
    policy: Annotated[Optional[str], policy_option("metric policy (default: the protocol's)")] = None,
    format: Annotated[Optional[ScoreFormat], typer.Option(
        "--format", help="md (a table), csv (case x class rows) or json (all); default: from --out's suffix, "
                         "else md")] = None,
    out: Annotated[Optional[Path], typer.Option(help="write to this file instead of stdout")] = None,
) -> None:
    """Score predictions made elsewhere (nnU-Net, your own code) under a metric policy, as bench scores a run.

    The same ground truth, spacing, metrics and aggregation as a run's evaluation; the protocol gives
    which test cases are scored, on which grid, and the default policy. Nothing is written to a results folder.

    Example: bench score --predictions preds/ --dataset synapse --data-root data/Synapse --policy strict
    """
    from bench.cli.run_cmds import default_protocol
    from bench.data import get_reader, open_dataset, synthetic_folder, synthetic_identity
    from bench.fileio import atomic_write_text, check_out_file
    from bench.protocol import load_protocol
    from bench.records import synthetic_dir
    from bench.score import render, score_predictions

    name = get_reader(dataset).name
    if synthetic == (data_root is not None):
        raise BenchError("give --data-root DIR (the data the predictions are of) or --synthetic, one of them")
    if synthetic:
        data_root = synthetic_folder(name, synthetic_dir(results))
        if synthetic_identity(data_root) is None:
            raise BenchError(f"--synthetic: no synthetic {name} data at {data_root}; bench run --synthetic --results "
                             f"{results} writes it (or give --data-root)")
    proto = load_protocol(default_protocol(name, protocol))
    fmt = out_format(format, out, {".csv": ("csv",), ".json": ("json",), ".md": ("md",)})
    if out is not None:  # before the cases are scored
        out = check_out_file(out, f"scores.{fmt}")
    data = open_dataset(name, data_root, fold_option(fold))
    # which split is scored, as bench run says it, and how much of it a capped protocol scores (said by
    # score_predictions at once, after the split's count of every case): before any error about the cases
    for note in data.notes:
        _echo_err(f"note: {note}")
    scores = score_predictions(predictions, data, proto, policy, say=lambda note: _echo_err(f"note: {note}"),
                               allow_missing=allow_missing)
    text = render(scores, fmt)
    if fmt != "md":  # the table says them; those said before scoring are not said twice
        for note in scores.notes[scores.said:]:
            _echo_err(f"note: {note}")
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        typer.echo(f"wrote {out}")
