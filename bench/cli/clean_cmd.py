"""`bench clean`: delete what nothing reads in a results folder (bench.clean)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench.cli.options import DEFAULT_RESULTS
from bench.errors import few


def clean(
    results: Annotated[Path, typer.Option(help="results directory")] = DEFAULT_RESULTS,
    dry_run: Annotated[bool, typer.Option(help="list what would be deleted and the space it takes; delete "
                                               "nothing")] = False,
) -> None:
    """Free the space finished runs no longer need: resume points, snapshots, killed processes' leftovers.

    Deleted: finished runs' resume points (last.pt) and per-epoch snapshots, and what killed processes
    left (temp files, claimed but empty run folders). Records, logs and the weights each run was scored from stay, so report, check, rescore, predict, figure
    and run --from-record work as before; a run whose record is deleted later trains again instead of
    being re-evaluated from its resume point.

    Example: bench clean --results results --dry-run
    """
    from bench.clean import clean as clean_folder
    from bench.fileio import absent
    from bench.records import records_dir, runs_dir

    results = results.expanduser()
    if not records_dir(results).is_dir() and not runs_dir(results).is_dir():
        raise absent(results, f"{results}: no results folder (no records/ or runs/ in it); pass --results DIR")
    found = clean_folder(results, dry_run)
    verb = "would delete" if dry_run else "deleted"
    n_resume = sum(len(files) for files in found.resume.values())
    lines = []
    if found.resume:
        lines.append(f"{n_resume} resume-only file(s) of {len(found.resume)} finished run(s) (last.pt, epoch_*.pt, "
                     f"best@*.pt; first: {few([str(p.relative_to(results)) for files in found.resume.values() for p in files], 2)})")
    if found.temps:
        lines.append(f"{len(found.temps)} temp file(s) of killed processes ({few([str(p.relative_to(results)) for p in found.temps], 2)})")
    if found.claimed:
        lines.append(f"{len(found.claimed)} run folder(s) holding only a killed process's claim "
                     f"({few([p.name for p in found.claimed], 2)})")
    if not lines:
        typer.echo(f"bench clean: nothing to delete in {results}")
    else:
        typer.echo(f"bench clean: {verb} in {results}, {found.size / 1e6:,.1f} MB:")
        for line in lines:
            typer.echo(f"  {line}")
    if found.held:
        typer.echo(f"note: {len(found.held)} finished run(s) held by a live process were left alone: {few(found.held, 3)}")
    if found.evaluated:
        typer.echo(f"note: {len(found.evaluated)} file(s) a bench run --weights record evaluated were kept (its "
                   f"--from-record needs them): {few([str(p.relative_to(results)) for p in found.evaluated], 3)}")
    if found.unread:
        typer.echo(f"note: {len(found.unread)} file(s) in records/ are no readable record, their runs left alone: "
                   f"{few(found.unread, 2, sep='; ')}")
    if found.kept:
        typer.echo(f"note: {len(found.kept)} file(s) could not be deleted: {few([str(p) for p in found.kept], 3)}")
