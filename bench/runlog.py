"""A run's own log, ``runs/<id>/run.log``: the lines `bench run` says about the run (its start, resume
notes, heartbeats, warnings, its result or why it failed), each with its UTC time, appended as they are
said; a resumed run appends. A batch job's stderr is often gone when `bench report` asks why a run has
no record: this file still says."""

from __future__ import annotations

import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

RUN_LOG = "run.log"

_log: Path | None = None  # the log of the run this process trains now (rank 0 only)
# the run training when the command was interrupted, and when its protocol writes checkpoints
# (bench.train.checkpoints_when): the interrupt message names them (bench.cli.console)
current_run: str | None = None
checkpoints: str | None = None
phase = "training"  # or "evaluating": what the run was doing when interrupted


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # the stream of now (a test's capture, a redirection)


@contextmanager
def kept(run_dir: Path, when: str | None = None) -> Iterator[None]:
    """Inside the block, ``say`` and warnings also go to ``run_dir``'s log; ``when``: when the run's
    protocol writes checkpoints, for the interrupt message."""
    global _log, current_run, checkpoints, phase
    _log, current_run, checkpoints, phase = run_dir / RUN_LOG, run_dir.name, when, "training"
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        shown(message, category, filename, lineno, file, line)
        append(f"warning: {message}")

    warnings.showwarning = show
    try:
        yield
    except KeyboardInterrupt:
        append(f"interrupted while {phase} (Ctrl-C or SIGTERM)")
        raise
    else:
        current_run = checkpoints = None
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = shown
        _log = None


def say(text: str, out: Callable[[str], None] = _stderr) -> None:
    """``text`` said (``out``: stderr by default) and kept in the current run's log."""
    out(text)
    append(text)


def append(text: str) -> None:
    """``text`` kept in the current run's log only (where it is said elsewhere: the command's closing
    error line); nothing outside a run. A log that cannot be written never stops the run."""
    if _log is None:
        return
    from bench.fileio import human_time

    try:
        with open(_log, "a", encoding="utf-8") as fh:  # one write: O_APPEND keeps lines whole
            fh.write("".join(f"{human_time(seconds=True)}  {line.strip()}\n" for line in text.splitlines() or [""]))
    except OSError:
        pass


def last_outcome(run_dir: Path) -> tuple[str, str] | None:
    """How the run's last attempt ended, as its log says: ("finished", its result line), ("failed", the
    reason's first sentence) or ("interrupted", while what); None without a log, or where the last attempt
    said none of these (it goes on, or was killed outright: its checkpoints say more)."""
    run_id, outcome, said = run_dir.name, None, _said(run_dir)
    if said is None:
        return None
    for text in said:
        if re.match(rf"\[\d+/\d+\] {re.escape(run_id)}: ", text):  # bench run began an attempt
            outcome = None
        elif text.startswith((f"{run_id}: FAILED: ", "FAILED: ")):  # note_failure's, or the command's last run's
            reason = text.split("FAILED: ", 1)[1].split(". ", 1)[0]
            outcome = ("failed", reason if len(reason) <= 100 else reason[:99] + "…")
        elif text.startswith("interrupted while "):
            outcome = ("interrupted", text.split(" (", 1)[0])
        elif text.startswith(f"{run_id}: DSC "):  # its result line (records.scores_text), said after its record
            outcome = ("finished", text)
    return outcome


SETTINGS = "settings: "  # "<run id>: settings: <row label>[ · off-protocol: <overrides>]", as each attempt begins


def settings(run_dir: Path) -> str | None:
    """What the run was, as its log's last ``SETTINGS`` line says: its row label and protocol changes as
    boards show them (a run id's hash names none); None in a log without one (older runs)."""
    prefix = f"{run_dir.name}: {SETTINGS}"
    return next((text[len(prefix):] for text in reversed(_said(run_dir) or []) if text.startswith(prefix)), None)


def _said(run_dir: Path) -> list[str] | None:
    """The run log's lines without their time stamps; None without a readable log."""
    try:
        lines = (run_dir / RUN_LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return [line.split("  ", 1)[-1].strip() for line in lines]  # after append's time stamp


def drop(run_dir: Path) -> None:
    """The log of a run that leaves nothing behind (it failed before its first step): removed, and
    nothing more kept of it, so that its folder goes with its claim."""
    global _log
    if _log is not None and _log.parent == run_dir:
        _log.unlink(missing_ok=True)
        _log = None
