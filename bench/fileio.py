"""File helpers with no heavy imports: writes that are whole or absent (temp file or folder, then an
atomic rename), the sweep of what killed writers left, disk problems named in one line, and the digests of
files bench identifies things by."""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from bench.errors import BenchError, exception_chain

# what run ids, run folders and protocol names are made of: a file name anywhere, never a path
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def human_time(when: float | None = None, seconds: bool = False) -> str:
    """``when`` (a POSIX time; None: now) as messages show it, "2026-12-06 11:41 UTC": UTC, named, so a
    cluster's log and a laptop's read alike, to the minute (``seconds``: to the second, as run logs)."""
    import datetime as dt

    moment = dt.datetime.fromtimestamp(time.time() if when is None else when, dt.timezone.utc)
    return moment.strftime(f"%Y-%m-%d %H:%M{':%S' if seconds else ''} UTC")


def is_plain_name(name: str) -> bool:
    """Whether ``name``, read from a data file (a list of case ids), is one file name that stays in the
    folder it is joined to: not empty, ``.`` or ``..``, and no separator, drive or NUL on any system
    (``folder / "/abs/x"`` or ``"../x"`` would name a file elsewhere)."""
    return (name not in ("", ".", "..") and "\0" not in name and PurePosixPath(name).name == name
            and PureWindowsPath(name).name == name)


def is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` (``folder / name``, as the callers join it) names ``folder`` or a file below it
    as written: both taken from the working directory, ``..`` lexically, links not followed, so a data
    folder linked onto another disk (or a git-annex/DVC checkout's files) stays inside."""
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))

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
        text = kept.read_text(encoding="utf-8").strip()
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
    try:
        folder = cache_dir("digests")
    except OSError:  # hashed every time
        return None
    return folder / hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()


def cache_dir(name: str, preferred: str | Path | None = None) -> Path:
    """A cache folder of bench's, made: ``preferred`` (BENCH_EXTENSIONS_DIR for the scan kernel), else
    ``<$XDG_CACHE_HOME or ~/.cache>/ssm-unet-bench/<name>``; where that cannot be made (a read-only home,
    as on some CI runners), ``<temp folder>/ssm-unet-bench-<uid>/<name>``. ``preferred`` and the temp
    folder's must be this user's own (``_check_private``): bench loads the compiled kernel it finds there.
    OSError where none can be had."""
    first = (Path(preferred).expanduser() if preferred else
             Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssm-unet-bench" / name)
    try:
        first.mkdir(mode=0o700, parents=True, exist_ok=True)  # a umask of 002 would let the group write in it
    except OSError:
        pass
    else:
        if preferred:
            _check_private(first, "BENCH_EXTENSIONS_DIR must name a folder of your own that only you can write in")
        return first
    own = Path(tempfile.gettempdir()) / f"ssm-unet-bench-{getattr(os, 'getuid', lambda: 0)()}"
    own.mkdir(mode=0o700, exist_ok=True)
    _check_private(own, f"{first} cannot be made, so this would be the cache: set XDG_CACHE_HOME (the scan kernel: "
                        "BENCH_EXTENSIONS_DIR) to a folder of your own (or remove this one, if it is yours)")
    (own / name).mkdir(exist_ok=True)
    return own / name


def _check_private(folder: Path, fix: str) -> None:
    """OSError "<folder> is a symbolic link / belongs to another user / can be written by others; <fix>": in
    a folder another user made, links to or can write in, they could hand this process their files (a
    compiled kernel, which it loads). The folder itself is looked at (lstat), never a link's target."""
    if not hasattr(os, "getuid"):  # Windows: no owner and mode bits to check this way
        return
    st = folder.lstat()
    writers = [who for who, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit]
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif st.st_uid != os.getuid():
        problem = "belongs to another user"
    elif writers:
        problem = f"can be written by {' and '.join(writers)} (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return
    raise OSError(f"{folder} {problem}; {fix}")


def _keep(target: Path, digest: str) -> None:
    """Write ``digest`` to ``target`` whole or not at all (two processes may hash the same file)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{TEMP_MARK}{writer_tag()}")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(digest)
        os.replace(tmp, target)
    except OSError:  # a full disk: the digest is just not kept
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


_UMASK = os.umask(0o022)  # read once (setting it is the only way), then restored
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = ".tmp", exclusive: bool = False,
                 what: str = "", retry: str = "") -> Path:
    """Have ``write(tmp)`` write a file that then replaces ``path`` atomically: readers see the old
    file, or the whole new one.

    Temp file in the same directory (same filesystem, so the rename is atomic), ending in
    ``suffix`` (writers that pick the format from the name, e.g. nibabel, need it), fsync, then
    ``os.replace``; on any failure the temp file is removed and the target is untouched; a temp
    file a killed process left is removed by a later write into the folder (``remove_orphans``). A folder
    that cannot be created or written in (no permission, a file in the way) is a BenchError naming
    ``path``; commands check theirs up front with ``ensure_writable_dir``. ``exclusive``: never
    replace a file at ``path`` (FileExistsError), even one another process puts there meanwhile.
    A write that fails for want of disk (``disk_problem``) is a BenchError too: "<path>: cannot write
    <what> (<why>)<retry>", ``retry`` by default asking to free space and run the command again.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{TEMP_MARK}{writer_tag()}", suffix=suffix)
        os.close(fd)
    except OSError as exc:
        raise BenchError(f"{path}: cannot write{what and ' ' + what} ({exc.strerror or exc})"
                         f"{retry or _advice(exc)}") from None
    try:
        write(Path(tmp))
        # Writable handle: Windows' fsync (FlushFileBuffers) refuses a read-only one. Opened before the
        # chmod, which may take the owner's write bit away (a umask of 0o2xx).
        with open(tmp, "r+b") as fh:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would stay with the file after the rename
            os.fsync(fh.fileno())
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        full = disk_problem(exc, path.parent)  # before the temp file goes: then the disk has room again
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise BenchError(f"{path}: cannot write{what and ' ' + what} ({full}){retry or _advice(exc)}") from exc
        interrupt = next((e for e in exception_chain(exc) if isinstance(e, KeyboardInterrupt)), exc)
        if interrupt is not exc:  # Ctrl-C (or SIGTERM) mid-write, hidden by the writer's cleanup error
            raise interrupt from None  # (torch.save's zip writer: "unexpected pos")
        raise
    _fsync_dir(path.parent)
    # what killed writers left here (a later write of any file in the folder, so also a run never written again)
    remove_orphans(path.parent, temp_glob(suffix=glob.escape(suffix)))
    return path


def atomic_write_dir(out: Path, write: Callable[[Path], None]) -> Path:
    """Have ``write(tmp)`` fill a temp folder beside ``out`` that is then renamed to ``out`` (which must
    not exist, or be empty): a crash never leaves half a dataset at ``out``. Returns ``out``."""
    out = Path(out)
    if out.is_symlink():  # a folder on a larger disk, linked here: the data goes there, written beside it
        check_dangling_link(out, "--out")
        out = Path(os.path.realpath(out))
    if out.exists() and not out.is_dir():
        raise BenchError(f"{out}: a file; give a folder to write the data into (a new or empty one)")
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"{out}: already exists and is not empty; delete it or choose another folder")
    ensure_writable_dir(out.parent, "--out")
    tmp = out.parent / f".{out.name}.{TEMP_MARK}{writer_tag()}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        try:
            os.replace(tmp, out)  # atomic on one file system; replaces an empty folder only
        except OSError as exc:
            raise BenchError(f"{out}: appeared while writing ({exc})") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    # what killed writers of this folder left, also under the name versions before TEMP_MARK gave
    name = glob.escape(out.name)
    remove_orphans(out.parent, temp_glob(name), f".{name}.{OLD_TEMP_DIR}*")
    return out


def _link_new(tmp: str, path: Path) -> None:
    """Give ``tmp``'s file the name ``path`` unless that exists; a hard link fails atomically where
    a name exists (``os.replace`` would overwrite it). Filesystems without hard links (some network
    and FUSE mounts) fall back to checking first, which leaves a window of microseconds."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


TEMP_MARK = "bench-"  # in every temp name: sweeping never touches files of other programs (a report's --out folder)
# temp names of versions before TEMP_MARK, swept only where those versions swept them (their leftovers
# go too): files ".<name>.<mkstemp's 8 characters><suffix>", synthetic data folders ".<name>.tmp-<pid>..."
OLD_TEMP_FILE = ".*.????????"
OLD_TEMP_DIR = "tmp-"
ORPHAN_AGE_S = 24 * 3600  # a temp file this old was left by a killed writer; a live one is minutes old
_WRITER = re.compile(r"(\d+)@([^~/]+)~")  # writer_tag() inside a temp name
_RETRY = "; free space (or fix the folder) and run the command again"
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _advice(exc: BaseException) -> str:
    """What to do about a failed write: free space, unless the folder is read-only (a mount, a copy
    shared read-only), where space is not the matter."""
    refused = (errno.EROFS, errno.EACCES, errno.EPERM)
    if any(isinstance(e, OSError) and e.errno in refused for e in exception_chain(exc)):
        return "; the folder is read-only here: make it writable, or write elsewhere, and run the command again"
    return _RETRY


def _where() -> str:
    """``<host>:<pid namespace>``: where a pid means this process table (containers sharing a host
    name, with host networking, have pid namespaces of their own)."""
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        ns = ""
    return f"{socket.gethostname()}:{ns}"


def writer_tag(pid: int | None = None) -> str:
    """``<pid>@<host>:<pid namespace>~`` of this process (or of ``pid`` here): which process writes a
    temp file (or holds a run's claim), so that one a dead process left here is removed at once
    (``remove_orphans``), not a day later."""
    return f"{os.getpid() if pid is None else pid}@{_where()}~"


def here(name: str) -> bool:
    """Whether the writer tag in ``name`` is of this host and pid namespace (its pid can be checked)."""
    found = _WRITER.search(name)
    return found is not None and found[2] == _where()


def dead_writer(name: str) -> bool:
    """Whether the temp ``name`` carries the tag of a process here that no longer runs."""
    if not here(name):
        return False  # untagged (older files), or another machine's (container's) on a shared disk: age decides
    found = _WRITER.search(name)
    try:
        os.kill(int(found[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's live process; a pid no system has
        return False
    return False


def temp_glob(name: str = "*", suffix: str = "") -> str:
    """The glob of the temp names bench writes ``name`` (a glob; any by default) under, ending in
    ``suffix`` (a glob): the one place that knows how temp names look."""
    return f".{name}.{TEMP_MARK}*{suffix}"


# every temp name bench writes, or ever wrote, in a folder that is bench's alone (a run's folder and its
# checkpoints/, records/, profiles/): its own, older versions' (".<name>.<8 characters>", ".last.pt.<pid>.tmp")
OWN_FOLDER_TEMPS = (temp_glob(), OLD_TEMP_FILE, ".*.tmp")


def orphans(folder: Path, *patterns: str) -> list[Path]:
    """What killed writers left in ``folder``: temp files or folders matching any of ``patterns``
    (globs) whose writer, a process of this host, is gone, or that are older than ``ORPHAN_AGE_S``
    (younger ones of other hosts may belong to a live writer)."""
    now, found = time.time(), []
    for stale in sorted({p for pattern in patterns for p in Path(folder).glob(pattern)}):
        try:
            if dead_writer(stale.name) or now - stale.lstat().st_mtime > ORPHAN_AGE_S:
                found.append(stale)
        except OSError:  # renamed or removed meanwhile
            pass
    return found


def remove_path(path: Path) -> bool:
    """Delete a file, link or folder (with what it holds); False where it could not be (renamed or
    removed meanwhile, another user's, a stale NFS handle): best effort, as for leftovers."""
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except OSError:
        return False
    return True


def remove_orphans(folder: Path, *patterns: str) -> None:
    """Remove what killed writers left in ``folder`` (``orphans``)."""
    for stale in orphans(folder, *patterns):
        remove_path(stale)


def disk_problem(exc: BaseException, folder: Path) -> str | None:
    """Why a write into ``folder`` failed where the disk is the cause, else None: an OSError of a full
    disk, a quota or a read-only mount anywhere in the exception's chain, or a write that failed
    while the disk has no room left (torch.save reports a full disk as RuntimeError "unexpected pos")."""
    for seen in exception_chain(exc):
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
            return seen.strerror or str(seen)
    # an error that says nothing of its cause (not FileExistsError and the like, which have their own)
    if isinstance(exc, RuntimeError) or (isinstance(exc, OSError) and exc.errno in (None, errno.EIO)):
        try:
            if shutil.disk_usage(folder).free < 1 << 20:
                return f"no space left on the disk of {folder}"
        except OSError:
            pass
    return None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Held while a file of ``folder`` is read, changed and written back (bench check --update's baseline):
    two processes doing it at once would each write the file they read, and one's change be lost. A
    flock on the folder itself (a file there is replaced by rename, and a lock file would be left in a
    checkout): processes of one machine wait for each other, said in a warning; on NFS a flock binds
    one client only, and where the system has none (Windows) there is no lock."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warnings.warn(f"{folder}: another process is rewriting a file here (bench check --update?); waiting for "
                          "it", stacklevel=3)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no flock on this file system
            pass
        yield
    finally:
        os.close(fd)  # the lock goes with it


def atomic_write_text(path: Path, text: str, exclusive: bool = False) -> Path:
    """``atomic_write`` of ``text`` (UTF-8, newline "\\n")."""
    return atomic_write(path, lambda tmp: portable_write_text(tmp, text), exclusive=exclusive)


def portable_write_text(path: Path, text: str) -> None:
    """``text`` as UTF-8 with "\\n" line ends on every OS (Windows' default, CRLF in the local code page,
    gave converted data another content id there). Not atomic: for files in a folder that
    ``atomic_write_dir`` renames whole, or that no one keeps; others go through ``atomic_write_text``."""
    Path(path).write_text(text, encoding="utf-8", newline="\n")


def ensure_writable_dir(directory: Path, option: str = "--results") -> Path:
    """Create ``directory`` if needed and prove that a file can be created in it.

    Commands call this before any work (training, profiling, plots), so a results folder that is
    read-only, under a file, or on a full disk fails at once, naming the folder and ``option``,
    instead of after hours of training. A probe file is written and removed: permission bits say
    nothing for root, or on read-only mounts and network shares.
    """
    directory = check_folder(directory, option)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-")
        try:  # some bytes, synced: creating an empty file succeeds on a full disk
            if os.write(fd, bytes(1 << 16)) < 1 << 16:  # a short write: no room for them
                raise OSError(errno.ENOSPC, "No space left on device")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise BenchError(f"{directory}: not writable ({exc.strerror or exc}); choose another {option}") from None
    return directory


def check_folder(directory: Path, option: str = "--results") -> Path:
    """``directory`` unless a file or a link to nothing stands where it would be: ``ensure_writable_dir``'s
    half that writes nothing (a dry run names them as the command would)."""
    directory = Path(directory)
    check_dangling_link(directory, option)
    if directory.exists() and not directory.is_dir():
        raise BenchError(f"{directory}: is a file, not a folder; choose another {option}")
    return directory


def check_out_file(out: Path, example: str, option: str = "--out") -> Path:
    """``out``, the file a command writes, checked before any work: no link to nothing on its way (it would be
    replaced, unsaid), no folder (``example``: a file name to suggest in it), a writable folder to hold it."""
    out = Path(out).expanduser()
    check_dangling_link(out, option)
    if out.is_dir():
        raise BenchError(f"{option} {out}: is a folder; give a file name, e.g. {out / example}")
    ensure_writable_dir(out.parent, option)
    return out


def check_dangling_link(path: Path, option: str) -> None:
    """A link to nothing (a disk not mounted) on ``path``'s way named as such: creating it failed with
    "File exists" (or, a level down, "not found"), and creating its target's folders would write onto the
    disk the link points away from."""
    if (said := _dangling(path)) is not None:
        raise BenchError(f"{said}; choose another {option}")


def absent(path: Path, message: str) -> BenchError:
    """The error ``message`` for an input ``path`` (a file or folder an option names) that is not there,
    with the link to nothing on its way named where there is one (the README promises it)."""
    said = _dangling(path)
    return BenchError(f"{message}; {said}" if said else message)


def _dangling(path: Path) -> str | None:
    for part in (Path(path), *Path(path).parents):
        if part.is_symlink() and not part.exists():
            try:
                part.stat()
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # pathlib says "does not exist" of a loop too
                    return f"{part}: a link to {os.readlink(part)}, which leads back to itself (a loop of links)"
            return f"{part}: a link to {os.readlink(part)}, which does not exist (a disk not mounted?)"
    return None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable after a power loss; not possible on every OS/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_denied(path: Path, what: str) -> BenchError:
    """A file bench may not read: not called damage, since it may be fine for its owner."""
    return BenchError(f"{path}: cannot read it as {what}: permission denied")


def read_text(path: Path, what: str) -> str:
    """A text file (lists, CSV, JSON, TOML) as Windows editors and Excel save it too: a byte-order mark
    (UTF-8 or UTF-16) is not part of its text. BenchError naming the file and ``what`` it was read as:
    another encoding is not called damage, nor a file bench may not read."""
    try:
        if Path(path).is_dir():  # not "Is a directory"; a pipe (<(...), /dev/stdin) is read as a file
            raise BenchError(f"{path}: cannot read it as {what}: a folder; expected a file")
        raw = Path(path).read_bytes()
        text = raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
        if "\x00" in text:  # no text format holds NUL: UTF-16 without its mark decodes as UTF-8 with NULs
            raise BenchError(f"{path}: cannot read it as {what}: not UTF-8 text (it holds NUL bytes: UTF-16 without a "
                             "byte-order mark?); save it as UTF-8")
        return text
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: cannot read it as {what}: not UTF-8 text ({type(exc).__name__}: {exc}); save it "
                         "as UTF-8") from exc
    except PermissionError as exc:
        raise read_denied(path, what) from exc
    except FileNotFoundError as exc:
        raise absent(path, f"{path}: cannot read it as {what}: not found") from exc
    except OSError as exc:
        raise BenchError(f"{path}: cannot read it as {what} ({type(exc).__name__}: {exc.strerror or exc})") from exc
