"""The options several commands declare alike, the parsing of option text, and the setup of commands that run models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.errors import BenchError

DEFAULT_RESULTS = Path("results")

# options several commands declare alike
Models = Annotated[str, typer.Option(help="'all' or a comma list of registered models")]
ModelSets = Annotated[Optional[list[str]], typer.Option(
    "--set", help="a model constructor argument, key=value (a number, a word, [1, 2], true/false; once per key, "
                  "repeated for more); it goes to every model of the command (`bench models` lists their keys)")]
FinishedRuns = Annotated[Path, typer.Option(help="results directory with the finished runs")]
RunsProtocol = Annotated[Optional[Path], typer.Option(help="the runs' protocol .toml, for runs of a file that is "
                                                      "not built in whose records keep no recipe (older ones)")]
RunDatasets = Annotated[Optional[str], typer.Option(help="a comma list: only runs on these datasets (synapse, "
                                                          "isic17, ..., or a board's data name such as nnunet:ACDC)")]
MovedData = Annotated[Optional[list[Path]], typer.Option(
    "--data-root", help="where the runs' data is now, if it moved since bench run (a results folder from another "
                        "machine; repeatable, one per dataset): a run takes the folder holding the very data it was "
                        "scored on (its data id)")]
DataName = Annotated[str, typer.Option(help="synapse, isic17, isic18, polyp, isic_all or nnunet")]
DataRoot = Annotated[Optional[Path], typer.Option(help="dataset directory in its real on-disk format")]
Synthetic = Annotated[bool, typer.Option(help="use a built-in synthetic dataset in the same format")]
ProtocolName = Annotated[Optional[str], typer.Option(help="protocol name or .toml path "
                                                     "(default: the dataset's; nnunet has none)")]
ScoringThreads = Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's, all cores; the "
                                                            "run's own count repeats its CPU predictions bit for bit)")]


def _device_name(value: str) -> str:
    """--device: auto, cpu, cuda or cuda:N, any case (a machine with several GPUs picks one)."""
    from bench.env import device_name_problem  # bench.env imports torch: only once a device is given

    if problem := device_name_problem(value):
        raise ValueError(problem)  # click's "Invalid value for '--device': ..."
    return value.strip().lower()


def device_option(help: str):
    return typer.Option(parser=_device_name, metavar="DEVICE",
                        help=f"{help}: auto (CUDA where there is one), cpu, cuda or cuda:N")


# bench.metrics.POLICIES' names (a test keeps them equal), so --help lists them without importing scipy
POLICY_NAMES = ("legacy-synapse", "legacy-isic", "strict", "strict-monai")


def policy_option(help: str):
    """A --policy option whose help lists the metric policies; the name is checked where it is used (one error
    with the nearest name, as for models and protocols)."""
    return typer.Option(metavar="POLICY", help=f"{help}; one of {', '.join(POLICY_NAMES)}")


# bench.plots.DPI_RANGE (a test keeps them equal), so --help says it without importing pandas
DPI_RANGE = (50, 1200)


def dpi_option(help: str, name: str = "--dpi"):
    """A raster figure's resolution option (--dpi, report's --plot-dpi), said alike; the value is checked
    where it is used (``bench.plots.check_dpi``: one error naming the option and the range)."""
    lo, hi = DPI_RANGE
    return typer.Option(name, metavar="N", help=f"{help}, in dots per inch: a whole number from {lo} to {hi}")


def _compute_setup(threads: int | None) -> None:
    """For the commands that run models: BENCH_SCAN_BACKEND names a backend that runs here (or they
    would stop at the first scan with a traceback, after training for rescore; doctor reports it),
    and --threads, torch's CPU threads, where given."""
    from ssm_models.scan import forced_backend_problem

    problem = forced_backend_problem()
    if problem:
        raise BenchError(f"{problem} (or unset it: automatic)")
    if threads is None:
        return
    most = max(1024, os.cpu_count() or 1)  # torch takes a C int, and OpenMP would start them all
    if not 1 <= threads <= most:
        raise BenchError(f"--threads must be a whole number from 1 to {most} (torch's CPU threads); got {threads}")
    import torch

    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    # for this command only: one run in-process (a notebook, tests) leaves the caller's count as it was
    if (ctx := get_current_context(silent=True)) is not None:
        ctx.call_on_close(lambda: torch.set_num_threads(before))


def _parse_spacing(text: str | None) -> str | list[float] | None:
    """--target-spacing: a name ("native", "nnunet"; checked with the protocol) or z,y,x (2-D patches: y,x) in mm."""
    if text is None or not any(c.isdigit() for c in text):
        return text
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise BenchError(f"--target-spacing must be 'native', 'nnunet' or spacings in mm, one per patch axis, "
                         f"e.g. 1,0.8,0.8; got {text!r}") from None


def _parse_sets(items: list[str], option: str = "--set", what: str = "a model constructor argument") -> dict[str, object]:
    """``key=value`` options (``--set``; ``bench data synth --option``) to a dict, values read as Python or JSON."""
    import ast

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"{option} expects key=value ({what}); got {item!r}")
        if key in out:  # the last would win unsaid
            raise BenchError(f"{option} {key}: given twice ({key}={out[key]!r} and {item}); give each key once")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            try:  # labels and records write values as JSON: deep_supervision=false copied from a board is False
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value  # a word: encoder=resnet34
    return out


def out_format(given, out: Path | None, suffixes: dict[str, tuple[str, ...]], default: str = "md") -> str:
    """--format's value (an Enum's, or None), else the first that --out's suffix allows (``suffixes``:
    suffix -> formats; ``default`` for any other); a suffix allowing other formats is refused
    (--out table.csv would hold Markdown)."""
    given = getattr(given, "value", given)
    fits = suffixes.get(out.suffix.lower(), ()) if out is not None else ()
    if given is None:
        return fits[0] if fits else default
    if fits and given not in fits:
        raise BenchError(f"--out {out} with --format {given}: a {out.suffix} file holds {' or '.join(fits)}; give "
                         f"--out a name that fits {given} (or leave --format out: the suffix chooses)")
    return given
