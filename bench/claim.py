"""Which process trains a run now: a claim file, so that two processes given the same grid (a shard
started twice, two people, a requeued job whose first copy still runs) never train one run at once.

``runs/<run_id>/.claim`` is created exclusively by the process that trains the run and names it
(``bench.fileio.writer_tag``: pid, host and pid namespace, plus the process's start time and when
the run started); a thread renews its time stamp while the run goes on, and the process removes it
when the run ends, well or not. Another process finding it skips the run, unless the claim is dead:
its process is gone (this host and pid namespace: the pid decides, whatever the claim's age, so a
suspended job keeps its runs), or its time stamp is older than ``STALE_S`` (another host on a shared
disk). Without claims the second process trained the whole run again and replaced the first's
weights behind a record that had scored others.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from contextlib import suppress
from pathlib import Path

from bench import fileio, records

CLAIM = ".claim"
REFRESH_S = 60.0  # how often a live claim's time stamp is renewed
STALE_S = 600.0  # a claim of another host not renewed for this long was left by a killed process
EMPTY_STALE_S = 30.0  # an empty claim this old: its process died between creating and writing it (microseconds)


class Claim:
    """A held claim: ``release()`` (or leaving the ``with`` block) stops its refresh and removes it,
    if the file is still this claim's (never one another process made after taking it over)."""

    def __init__(self, path: Path, text: str):
        self.path, self._text = path, text
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name=f"claim {path.parent.name}", daemon=True)
        self._thread.start()

    def _ours(self) -> bool:  # the content, not the inode: a file made after ours was removed may reuse it
        try:
            return self.path.read_text(encoding="utf-8") == self._text
        except FileNotFoundError:
            return False

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                if not self._ours():  # removed (a user cleaning up) or taken over: nothing to keep alive
                    return
                os.utime(self.path)
            except OSError:  # a network file system's hiccup (ESTALE, EIO): try again next time
                continue

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._ours():
            self.path.unlink(missing_ok=True)
            with suppress(OSError):  # not empty: what the run wrote (one that failed before its first step wrote nothing)
                self.path.parent.rmdir()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_run(results_dir: Path, run_id: str) -> Claim | str:
    """This process's claim on run ``run_id``, or who holds it where a live process does ("pid 123 on
    node7 (claim …/.claim, last renewed 2026-12-05 03:00 UTC; taken over from 2026-12-05 03:10 UTC
    unless renewed; …)"). A dead claim is taken over."""
    return claim_folder(records.run_dir(results_dir, run_id))


def held_by(results_dir: Path, run_id: str) -> str | None:
    """Who holds run ``run_id`` where a live process does (``claim_run``'s words), else None; takes
    nothing (``bench run --dry-run``)."""
    return _holder(records.run_dir(results_dir, run_id) / CLAIM)[0]


def claim_folder(folder: Path) -> Claim | str:
    """``claim_run``'s, on what a process writes into ``folder`` (bench predict's --out of a run); made."""
    path = folder / CLAIM
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a dead claim removed, then created afresh; another taker may win the race
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileNotFoundError:  # a claim released just now took its empty folder along
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            holder, judged = _holder(path)
            if holder is not None:
                return holder
            if not _remove_dead(path, judged):
                return _holder(path)[0] or "another process (it took the run over just now)"
            continue
        text = json.dumps({"writer": fileio.writer_tag(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
                           "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
                           "folder": _folder_id(path.parent)})
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return Claim(path, text)
    return _holder(path)[0] or "another process (its claim keeps changing hands)"


def _proc_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), which a reused pid does not share."""
    try:
        # the process's name in parentheses is any bytes it chose; the fields after it are ASCII
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder(path: Path) -> tuple[str | None, str | None]:
    """Who holds the claim at ``path`` where that process still runs (else None: it is dead), and the
    content of the file judged."""
    try:
        stat = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    try:
        held = json.loads(text)
    except ValueError:  # being written this instant (empty), or damaged: its age decides
        held = {}
    tag = str(held.get("writer", ""))
    pid, _, host = tag.rstrip("~").partition("@")
    who = f"pid {pid} on {host.split(':')[0]} (claim {path}, last renewed {fileio.human_time(stat.st_mtime)}; "
    if host and fileio.here(tag):  # this host and pid namespace: the pid decides
        alive = not fileio.dead_writer(tag) and held.get("proc_start") in (None, _proc_start(int(pid)))
        # a copy of a results folder (cp -r) copies the claims of the runs training in the original
        copied = held.get("folder") not in (None, _folder_id(path.parent))
        return (who + "taken over once that process ends)" if alive and not copied else None), text
    if time.time() - stat.st_mtime > (STALE_S if text else EMPTY_STALE_S):
        return None, text
    # another host's process cannot be asked: a job killed outright (OOM, a node lost) holds the run until
    # the claim goes stale, which its user may cut short
    return (who + f"taken over from {fileio.human_time(stat.st_mtime + STALE_S)} unless renewed; sooner by "
            "deleting that file, once that process is known dead)" if host else f"another process (claim {path})"), text


def _folder_id(folder: Path) -> str:
    """The run folder's device and inode, which a copy does not share (a link or another path to it does)."""
    st = folder.stat()
    return f"{st.st_dev}:{st.st_ino}"


def _remove_dead(path: Path, judged: str | None) -> bool:
    """Remove the dead claim at ``path`` (the file that read ``judged``); False where the file there
    now is another (a live process took the run over meanwhile), which stays."""
    aside = path.with_name(f"{CLAIM}.{fileio.writer_tag()}dead")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return True
    if aside.read_text(encoding="utf-8") == judged:
        aside.unlink(missing_ok=True)
        return True
    try:  # a fresh claim moved aside: put it back (a hard link fails where yet another took the name)
        os.link(aside, path)
    except OSError:
        pass
    aside.unlink(missing_ok=True)
    return False


def remove_abandoned(folder: Path, dry_run: bool = False) -> bool:
    """Whether ``folder`` held nothing but the claim of a process that is gone (a run or rescore killed
    before it wrote anything, which ``Claim.release`` would have removed with its folder); then it is
    removed (``dry_run``: left), as a taker removes a dead claim, so a live process's new one stays."""
    path = folder / CLAIM
    try:
        if not path.is_file() or any(p.name != CLAIM for p in folder.iterdir()):
            return False
    except OSError:
        return False
    holder, judged = _holder(path)
    if holder is not None or judged is None:
        return False
    if dry_run:
        return True
    if not _remove_dead(path, judged):  # a live process claimed it meanwhile
        return False
    try:
        folder.rmdir()
    except OSError:  # not empty now: a process claimed it meanwhile and wrote
        return False
    return True

