"""The console entry point `main`: user errors and warnings one line each, SIGTERM as Ctrl-C."""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import traceback
import threading
import warnings
from typing import Any

import typer
from typer.core import TyperGroup

from bench.errors import BenchError, closest, debugging, one_line


def _echo_err(msg: str) -> None:
    typer.secho(msg, fg=typer.colors.RED, err=True)


_warned: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` on the command line: one line per warning, without the source line,
    and each text once (planning a grid and running it build the same model and meet the same warning).
    Another package's text over several lines (pandas' about pyarrow) is joined into that one line."""
    text = " ".join(str(message).split())
    if text not in _warned:
        _warned.add(text)
        # bench's own categories (records.StaleRescoresLeftOut) are plain warnings to a user
        kind = "" if category is UserWarning or category.__module__.startswith("bench.") else f" ({category.__name__})"
        typer.secho(f"warning{kind}: {text}", fg=typer.colors.YELLOW, err=True)


def main() -> None:
    """Console entry point: user errors print one line and exit 2 (runs other processes hold were
    skipped: a "held:" line, exit 75), warnings one line each (tracebacks and Python's own warning
    format with BENCH_DEBUG=1)."""
    global _interrupted
    _interrupted = False
    _unfailing_output()
    handles = threading.current_thread() is threading.main_thread()
    # SIGTERM (what Slurm and torchrun send first) as Ctrl-C: cleanup runs (temp files, the run's
    # claim) and the command says so, where the process died with neither
    previous = signal.signal(signal.SIGTERM, _interrupt) if handles else None
    # Ctrl-C: Python's own KeyboardInterrupt, noted (a caller's handler is left alone)
    keyboard = handles and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if keyboard:
        signal.signal(signal.SIGINT, _keyboard_interrupt)
    shown, unraisable = warnings.showwarning, sys.unraisablehook  # _main puts the one-line form in its place
    # what an interrupt cut short fails in its __del__ as it is freed (a ZipFile stopped in its __init__ while
    # numpy read a training slice: "Exception ignored in ... Traceback ... AttributeError", a crash's look
    # above the line that says what happened): unsaid
    sys.unraisablehook = lambda args: None if _interrupted and not debugging() else unraisable(args)
    try:
        _main()
    finally:
        warnings.showwarning, sys.unraisablehook = shown, unraisable  # called in-process: the caller's back
        if keyboard and signal.getsignal(signal.SIGINT) is _keyboard_interrupt:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        # called in-process (tests, a notebook): the caller's handler back, or processes it forks later
        # inherit ours (a multiprocessing pool's terminate() then hangs); kept once a SIGTERM came
        if handles and signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _unfailing_output() -> None:
    """stdout and stderr that cannot fail on a character their encoding lacks (a latin-1 or cp1252 terminal or
    file, PYTHONIOENCODING=ascii:strict, a path's undecodable bytes), where the command crashed with
    UnicodeEncodeError after its work was done. stdout shows a board's ↑ and ± as "?", one character for one,
    so its columns stay aligned; stderr, as Python's default has it, as \\u2191, so an error's path stays exact.
    A handler other than strict is the user's choice, kept. Files written with --out are UTF-8 regardless."""
    for stream, errors in ((sys.stdout, "replace"), (sys.stderr, "backslashreplace")):
        if getattr(stream, "errors", None) == "strict" and callable(getattr(stream, "reconfigure", None)):
            stream.reconfigure(errors=errors)


def _main() -> None:
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError

    if not debugging():
        warnings.showwarning = _show_warning
    from bench.cli import app  # the package, which imports this module, registers the commands on it

    sys.argv[1:] = map(_tilde_expanded, sys.argv[1:])
    try:
        _refuse_empty_values(sys.argv[1:])  # repeated values: BenchGroup, as click parses them
        code = app(standalone_mode=False, prog_name="bench")  # click's usage errors reach us: one line each
    except BenchError as exc:
        if debugging():  # the traceback, then the same line and exit code as without it
            traceback.print_exc()
        line = f"{exc.prefix}: {one_line(exc)}"  # "held:" for runs skipped (exit 75)
        if not _note_error(line):  # kept for `bench run --nproc`'s launcher, else said here
            _echo_err(line)
        sys.exit(exc.exit_code)
    except UsageError as exc:  # a value outside an option's choices, a missing or unknown option
        if debugging():
            traceback.print_exc()
        said = _usage_line(exc)
        line = f"error: {said}" if said else ""
        if line and not _note_error(line):
            _echo_err(line)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt) as exc:
        if isinstance(exc.__cause__, EOFError):  # click's Abort for an EOFError a command let out: a bug, no interrupt
            raise exc.__cause__ from None
        code = 130
    except Exception as exc:
        # what the system refused of a path an option named (a name too long, a folder made a file), and
        # sizes beyond the memory: one line, as bench's own errors; other errors are bugs (their traceback)
        if (line := _system_line(exc)) is not None:
            if debugging():
                traceback.print_exc()
            if not _note_error(line):
                _echo_err(line)
            sys.exit(2)
        # a collective failing because another process died: that one's line (or the launcher's) tells
        distributed = _launched()
        if distributed is None or not distributed.lost_peer(exc) or debugging():
            raise
        line = f"error: another process of this run is gone ({' '.join(str(exc).split())[:200]})"
        kept = _note_error(line)  # first: a live launcher stops this process soon, and said nothing yet
        if distributed.orphaned():  # the launcher was killed, and a peer's exit reached this one first
            _say_orphaned(distributed)
            sys.exit(130)
        if not kept:
            _echo_err(line)
        sys.exit(distributed.LOST_PEER_EXIT)
    distributed = _launched()
    if code == 130 and distributed is not None and distributed.launched_by_bench():
        if distributed.orphaned():
            _say_orphaned(distributed)
        sys.exit(code)  # the launcher says it, once
    if code == 130:  # Ctrl-C or SIGTERM (typer returns 130 for them)
        _echo_err(_interrupted_line())
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted_line() -> str:
    """What the same command does after an interrupt: `bench run` continues from the last checkpoint of
    the run it was training (its protocol's schedule named) where it has --resume, and says to add it
    where not; `bench rescore` keeps the runs it scored."""
    command = sys.argv[1:2]
    if command == ["rescore"]:
        return "interrupted; the same command scores the rest (the runs scored already are kept and skipped)"
    if command != ["run"]:
        return "interrupted; the same command does it again"
    runlog = sys.modules.get("bench.runlog")  # imported by a run that began
    run = runlog.current_run if runlog else None
    if run and any(a == "--weights" or a.startswith("--weights=") for a in sys.argv[2:]):
        return f"interrupted while evaluating {run}; the same command evaluates it again"
    train = sys.modules.get("bench.train")
    # nothing to continue from while it trains (evaluating, its last epoch's checkpoint is written)
    if run and train and runlog.phase == "training" and runlog.checkpoints == train.checkpoints_when(0):
        return (f"interrupted while training {run}; the same command trains it again from the start (its "
                "protocol writes no checkpoint before the end)")
    when = f"its protocol writes one {runlog.checkpoints}" if run else "each protocol's checkpoint_every sets when"
    what = f"{'it' if run else 'each unfinished run'} from its last checkpoint ({when})"
    resumes = [a for a in sys.argv[2:] if a in ("--resume", "--no-resume")][-1:] == ["--resume"]
    return (f"interrupted{f' while {runlog.phase} {run}' if run else ''}; the same command "
            + (f"continues {what}" if resumes else
               f"with --resume continues {what}; without --resume, unfinished runs train afresh"))


def _refuse_empty_values(args: list[str]) -> None:
    """BenchError for an option given an empty value (``--protocol "$P"`` with P unset): click takes it
    as the option left out, so --protocol '' trained the default recipe for hours and --shard '' ran the
    whole grid in every job of an array."""
    for i, arg in enumerate(args):
        option, eq, value = arg.partition("=")
        if option.startswith("--") and eq and not value.strip():
            raise BenchError(f"{option}: an empty value ({arg!r}); give one, or leave the option out")
        if not arg.strip() and i and args[i - 1].startswith("--"):
            raise BenchError(f"{args[i - 1]}: an empty value ({arg!r}; an unset shell variable?); give one, or leave "
                             "the option out")


class BenchGroup(TyperGroup):
    """The `bench` group typer builds: the command line refused where an option of one value is given twice,
    before click parses it (checked on the group typer built once, rather than on a second build)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        _refuse_repeated_values(self, args)
        return super().parse_args(ctx, args)


def _refuse_repeated_values(command, args: list[str]) -> None:
    """BenchError for an option of one value given twice in ``args``, the arguments of the click ``command`` (``bench
    report --results A --results B``): click keeps the last without a word, so a reviewer comparing two folders
    read one of them as both."""
    rest = list(args)
    while rest and not rest[0].startswith("-") and rest[0] in getattr(command, "commands", {}):  # bench data synth
        command = command.commands[rest.pop(0)]
    single = {opt: param for param in command.params if getattr(param, "opts", None) and not param.multiple
              and not getattr(param, "is_flag", False) and not getattr(param, "count", False) for opt in param.opts}
    given: dict[str, list[str]] = {}
    for i, arg in enumerate(rest):
        option, eq, value = arg.partition("=")
        if option in single:
            given.setdefault(single[option].name, []).append(
                f"{option} {value if eq else rest[i + 1] if i + 1 < len(rest) else ''}".strip())
    for uses in given.values():
        if len(uses) > 1:
            raise BenchError(f"{' and '.join(uses)}: the option takes one value, and the command would use the last "
                             "alone; give it once")


def _system_line(exc: BaseException) -> str | None:
    """The one line for an error of the system rather than of bench, or None (a bug: its traceback): a
    path the command line named (or one inside it) that the system refused, and memory run out."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror and _given(exc.filename):
        also = f" (and {exc.filename2})" if exc.filename2 is not None else ""
        return f"error: {exc.filename}{also}: {exc.strerror}"
    text = " ".join(str(exc).split())
    if (isinstance(exc, MemoryError) or isinstance(exc, OSError) and exc.errno == errno.ENOMEM
            or "can't allocate memory" in text or type(exc).__name__ == "OutOfMemoryError"):
        return f"error: out of memory ({text[:300] or type(exc).__name__}); choose smaller sizes"
    return None


def _given(filename) -> bool:
    """Whether ``filename`` is a path of the command line's options, or inside one (./results by default)."""
    path = os.path.abspath(os.fsdecode(filename))
    for arg in [*sys.argv[2:], "results"]:
        value = arg.partition("=")[2] if arg.startswith("--") else arg
        if value and not value.startswith("-"):
            given = os.path.abspath(os.path.expanduser(value))
            if path == given or path.startswith(given.rstrip(os.sep) + os.sep):
                return True
    return False


def _tilde_expanded(arg: str) -> str:
    """``--results=~/runs`` with ~ expanded: the shell does it in ``--results ~/runs``, not after = (bash
    only in assignments), and a folder named ~ appeared in the working directory."""
    option, eq, value = arg.partition("=")
    return f"{option}={os.path.expanduser(value)}" if option.startswith("--") and eq and value.startswith("~") else arg


def _say_orphaned(distributed: Any) -> None:
    """The launcher was killed, so none says what the user can do: rank 0 says it."""
    if distributed.rank_from_env() == 0:
        _echo_err("interrupted: the launcher is gone; the same command with --resume continues from the last "
                  "checkpoint")


def _note_error(line: str) -> bool:
    """Whether ``line`` was kept for `bench run --nproc`'s launcher (then not said here)."""
    distributed = _launched()
    return distributed is not None and distributed.note_error(line)


def _launched() -> Any:
    """bench.distributed where this process may be one of those torchrun started (its WORLD_SIZE; a
    Ctrl-C can reach one before `bench run` imported the module) or where it imported it; else None:
    --help, a usage error or another command need not import torch (1-2 s) to learn that they were not."""
    if "bench.distributed" in sys.modules or os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        from bench import distributed

        return distributed
    return None


_interrupted = False  # a Ctrl-C or SIGTERM came (main's unraisable hook)


def _interrupt(signum, frame) -> None:
    global _interrupted
    # once: the cleanup must not be cut short by another (a dying launcher signals once per thread)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _interrupted = True
    raise KeyboardInterrupt(f"signal {signum}")


def _keyboard_interrupt(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    signal.default_int_handler(signum, frame)


_SYNONYMS = {"gpu": "cuda"}  # what users type for a choice whose spelling is not close


def _usage_line(exc) -> str:
    """Click's message on one line, with a "did you mean" among an option's choices; the command's
    --help named."""
    text = " ".join(exc.format_message().split()).replace("Value error, ", "")
    if not text:  # `bench` or `bench data` alone: the help was printed, which says it all
        return ""
    given = re.search(r"'([^']*)' is not one of (.*)", text)  # the choices, as the message lists them
    if given:
        choices = re.findall(r"'([^']*)'", given.group(2))
        typed = given.group(1)
        close = [c for c in choices if c in (_SYNONYMS.get(typed.lower()), typed.lower())] or \
            [c for c in [closest(typed, choices)] if c]
        text += f" Did you mean {close[0]!r}?" if close else ""  # after click's sentence, a sentence
    command = " ".join(["bench", *(a for a in sys.argv[1:3] if not a.startswith("-"))][:3])  # before its options
    where = f"{exc.ctx.command_path} --help" if getattr(exc, "ctx", None) else f"{command} --help"
    return f"{text} ({where})"
