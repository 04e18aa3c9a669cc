"""`bench` command line: a table of contents. Commands parse options; library functions do the work.

- ``options``: the options several commands declare alike, their parsing, the setup of commands that run models.
- ``console``: the entry point ``main``: user errors and warnings one line each, SIGTERM as Ctrl-C.
- ``run_cmds``: ``run`` (train and evaluate a grid), ``rescore`` and ``predict`` (from finished runs' weights).
- ``rerun_cmd``: ``run --from-record`` (re-run records' runs as they ran, compared with the records).
- ``score_cmd``: ``score`` (predictions made elsewhere, scored as a run is).
- ``figure_cmd``: ``figure`` (the papers' visual comparison of test cases, from finished runs' weights).
- ``report_cmds``: ``report`` (leaderboards) and ``check`` (drift against a baseline).
- ``profile_cmd``: ``profile`` (params, FLOPs, latency, memory).
- ``info_cmds``: ``models`` and ``doctor``.
- ``clean_cmd``: ``clean`` (what nothing reads in a results folder).
- ``data_cmds``: the ``data`` group: ``synth``, ``convert``, ``verify``.

Only typer and light modules load here: commands import torch, pandas and the data readers when they run.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bench.cli.console import BenchGroup, _warned, main
from bench.cli.clean_cmd import clean
from bench.cli.data_cmds import VERIFY_SHOWN, data_convert, data_synth, data_verify
from bench.cli.figure_cmd import figure
from bench.cli.info_cmds import doctor, models
from bench.cli.profile_cmd import profile
from bench.cli.report_cmds import check, report
from bench.cli.run_cmds import default_protocol, predict, rescore, run
from bench.cli.score_cmd import score

# what other modules and tests import from here, besides the commands
__all__ = ["app", "data_app", "main", "default_protocol", "VERIFY_SHOWN", "_warned"]

app = typer.Typer(
    help="ssm-unet-bench: train and evaluate medical segmentation UNets under fixed protocols.\n\n"
    "Example: bench run --models all --dataset synapse --synthetic --protocol smoke",
    no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False, cls=BenchGroup,
)
data_app = typer.Typer(
    help="Synthesize, convert and verify datasets in their real on-disk formats.\n\n"
    "Example: bench data synth --like isic --out data/isic-synth",
    no_args_is_help=True,
)


def _version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("ssm-unet-bench")
        except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
            number = "(not installed)"
        typer.echo(f"ssm-unet-bench {number}; bench doctor names the exact code (git commit or sources' digest)")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="the version, then exit")] = False) -> None:
    pass


# every command, in the order `bench --help` lists them
app.command()(run)
app.command()(report)
app.command()(rescore)
app.command()(predict)
app.command()(score)
app.command()(figure)
app.command()(check)
app.command()(clean)
app.command()(profile)
app.command()(models)
app.command()(doctor)
app.add_typer(data_app, name="data")
data_app.command("synth")(data_synth)
data_app.command("convert")(data_convert)
data_app.command("verify")(data_verify)
