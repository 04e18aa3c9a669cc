"""Which process trains a run now: a claim file, so that two processes given the same grid (a shard
started twice, two people, a requeued job whose first copy still runs) never train one run at once.

``runs/<run_id>/.claim`` is created exclusively by the process that trains the run and names it
(``<pid>@<host>~``, the tag of ``bench.records.writer_tag``, and when it started); a thread
refreshes its time stamp while the run goes on, and the process removes it when the run ends, well
or not. Another process finding it skips the run, unless the claim is dead: its process is gone
(same host), or its time stamp is older than ``STALE_S`` (another host on a shared disk). Without
claims the second process trained the whole run again and replaced the first's weights behind a
record that had scored others.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path

from bench import records

CLAIM = ".claim"
REFRESH_S = 60.0  # how often a live claim's time stamp is renewed
STALE_S = 600.0  # a claim of another host not renewed for this long was left by a killed process


class Claim:
    """A held claim: ``release()`` (or leaving the ``with`` block) stops its refresh and removes it."""

    def __init__(self, path: Path):
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name=f"claim {path.parent.name}", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                os.utime(self.path)
            except OSError:  # removed under us (a user cleaning up): nothing to keep alive
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_run(results_dir: Path, run_id: str) -> Claim | str:
    """This process's claim on run ``run_id``, or who holds it ("pid 123 on node7 since 2026-12-05
    03:00 UTC") where a live process does. A dead claim is taken over."""
    path = Path(results_dir) / "runs" / run_id / CLAIM
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a dead claim removed, then created afresh; another taker may win the race
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _live_holder(path)
            if holder is not None:
                return holder
            _remove_dead(path)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"writer": records.writer_tag(), "pid": os.getpid(),
                       "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, fh)
        return Claim(path)
    return _live_holder(path) or "another process (its claim keeps changing hands)"


def _live_holder(path: Path) -> str | None:
    """Who holds the claim at ``path`` where that process still runs, else None (it is dead)."""
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        held = json.loads(text)
    except ValueError:  # being written this instant (empty), or damaged: its age decides
        held = {}
    tag = str(held.get("writer", ""))
    pid, _, host = tag.rstrip("~").partition("@")
    if host and records.dead_writer(tag):
        return None
    if age > STALE_S:
        return None
    since = str(held.get("started", "?")).replace("T", " ").replace("+00:00", " UTC")
    return f"pid {pid} on {host} since {since}" if host else f"another process (claim {path})"


def _remove_dead(path: Path) -> None:
    """Remove a dead claim; a rename first, so that two takers do not both remove a fresh one."""
    aside = path.with_name(f"{CLAIM}.{records.writer_tag()}dead")
    try:
        os.replace(path, aside)
        aside.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
