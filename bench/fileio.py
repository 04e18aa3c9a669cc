"""File helpers with no heavy imports: the digests of files bench identifies things by."""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

# files this large keep their digest on disk (by path, size and mtime): a dataset's test volumes
# (Synapse's are about 270 MB each) are read once, not at every command that plans or rescores
CACHED_FROM_BYTES = 16 << 20


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read once per process while its size and mtime stay (a grid
    plans per model: a weights file or a test volume is hashed once), and once for all while they
    stay for files of ``CACHED_FROM_BYTES`` or more."""
    st = path.stat()
    return _sha256_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    kept = _digest_file(path, size, mtime_ns) if size >= CACHED_FROM_BYTES else None
    if kept is not None and kept.is_file():
        text = kept.read_text().strip()
        if len(text) == 64:
            return text
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if kept is not None:
        _keep(kept, digest.hexdigest())
    return digest.hexdigest()


def _digest_file(path: str, size: int, mtime_ns: int) -> Path | None:
    """Where the digest of this version of ``path`` is kept; None without a writable cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    folder = Path(base) / "ssm-unet-bench" / "digests"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: hashed every time
        return None
    return folder / hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()


def _keep(target: Path, digest: str) -> None:
    """Write ``digest`` to ``target`` whole or not at all (two processes may hash the same file)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            fh.write(digest)
        os.replace(tmp, target)
    except OSError:  # a full disk: the digest is just not kept
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
