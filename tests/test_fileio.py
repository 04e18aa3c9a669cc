"""bench.fileio: file digests, kept on disk for large files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bench import fileio


def test_a_large_files_digest_is_kept_until_the_file_changes(tmp_path, monkeypatch):
    """Synapse's test volumes (GBs together) identify the data: hashed once, not at every command."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    big = tmp_path / "case0001.npy.h5"
    big.write_bytes(os.urandom(fileio.CACHED_FROM_BYTES))
    truth = hashlib.sha256(big.read_bytes()).hexdigest()
    fileio._sha256_of.cache_clear()
    assert fileio.file_sha256(big) == truth
    (kept,) = (tmp_path / "cache" / "ssm-unet-bench" / "digests").iterdir()
    assert kept.read_text(encoding="utf-8") == truth
    kept.write_text("f" * 64, encoding="utf-8")  # what a later process reads instead of the file
    fileio._sha256_of.cache_clear()
    assert fileio.file_sha256(big) == "f" * 64
    kept.write_text("abc", encoding="utf-8")  # damaged: no digest, so the file is hashed again
    fileio._sha256_of.cache_clear()
    assert fileio.file_sha256(big) == truth
    st = big.stat()
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # edited: another version of the file
    fileio._sha256_of.cache_clear()
    assert fileio.file_sha256(big) == truth
    small = tmp_path / "mask.png"
    small.write_bytes(b"x" * 100)
    assert fileio.file_sha256(small) == hashlib.sha256(b"x" * 100).hexdigest()
    assert len(list((tmp_path / "cache" / "ssm-unet-bench" / "digests").iterdir())) == 2  # small files: not kept


def test_a_failed_write_advises_by_its_cause(tmp_path, monkeypatch):
    """A read-only folder (a colleague's results shared read-only) was told to free space."""
    import errno

    import pytest

    from bench.errors import BenchError

    def failing(code, text):
        def write(tmp):
            raise OSError(code, text)
        return write

    with pytest.raises(BenchError, match=r"a\.txt: cannot write \(Read-only file system\); the folder is read-only "
                                         r"here: make it writable, or write elsewhere"):
        fileio.atomic_write(tmp_path / "a.txt", failing(errno.EROFS, "Read-only file system"))
    with pytest.raises(BenchError, match=r"cannot write \(No space left on device\); free space"):
        fileio.atomic_write(tmp_path / "a.txt", failing(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(fileio.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))  # the folder refuses even the temp file
    with pytest.raises(BenchError, match=r"cannot write \(Read-only file system\); the folder is read-only here"):
        fileio.atomic_write(tmp_path / "b.txt", lambda tmp: tmp.write_text("x", encoding="utf-8"))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_kept_digests_temp_file_is_named_as_every_temp_file(tmp_path, monkeypatch):
    """TEMP_MARK is in every temp name bench writes; the digest cache's was ".tmp-<random>"."""
    seen = []
    real = fileio.tempfile.mkstemp
    monkeypatch.setattr(fileio.tempfile, "mkstemp", lambda **kw: seen.append(kw["prefix"]) or real(**kw))
    fileio._keep(tmp_path / "abc", "f" * 64)
    assert seen[0].startswith(f".abc.{fileio.TEMP_MARK}") and (tmp_path / "abc").read_text(encoding="utf-8") == "f" * 64
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]


def test_an_atomic_write_syncs_through_a_writable_handle(tmp_path, monkeypatch):
    """Windows' fsync (FlushFileBuffers) fails on a read-only handle: every record and checkpoint failed there."""
    import fcntl
    import stat

    real_fsync = os.fsync

    def windows_fsync(fd):  # a folder's fsync is _fsync_dir's business (it gives up quietly on Windows)
        if stat.S_ISREG(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise PermissionError(13, "Access is denied")
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", windows_fsync)
    out = fileio.atomic_write_text(tmp_path / "record.json", "{}\n")
    assert out.read_bytes() == b"{}\n"
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~fileio._UMASK)  # not mkstemp's 0600


def test_text_is_written_with_newline_fixed():
    """Path.write_text without ``newline`` writes CRLF on Windows (and converted data got another id):
    bench's code writes text through fileio's helpers, or names the newline."""
    import ast
    from pathlib import Path

    repo = Path(fileio.__file__).parents[1]
    unfixed = [f"{path.relative_to(repo)}:{node.lineno}"
               for package in ("bench", "ssm_models", "baselines") for path in sorted((repo / package).rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "write_text" and not any(k.arg == "newline" for k in node.keywords)]
    assert not unfixed


def test_a_cache_folder_is_made_private_under_a_group_writable_umask(tmp_path, monkeypatch):
    """bench loads the compiled scan kernel from its cache: under a umask of 002 (common on shared
    machines) a folder made with the default mode would let the group put a kernel there."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    old = os.umask(0o002)
    try:
        made = fileio.cache_dir("x")
    finally:
        os.umask(old)
    assert made == tmp_path / "ssm-unet-bench" / "x" and made.is_dir()
    assert made.stat().st_mode & 0o022 == 0


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no owner and mode bits on Windows")
def test_a_kernel_folder_others_can_write_in_is_refused(tmp_path):
    """A BENCH_EXTENSIONS_DIR anyone can write in (mode 0777) would let them drop a compiled kernel that
    bench then loads: an error naming who can write, not a silent load."""
    folder = tmp_path / "ext"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with pytest.raises(OSError, match=r"ext can be written by group and others \(mode 777\)"):
        fileio.cache_dir("scan", preferred=folder)


def test_a_failed_folder_write_leaves_no_temp_folder(tmp_path):
    """A conversion failing on a bad source file must not leave its half-written temp folder (GBs) beside
    --out until a later write sweeps it: the folder goes with the error."""
    def write(tmp):
        (tmp / "a").write_text("x", encoding="utf-8")
        raise RuntimeError("bad source file")

    with pytest.raises(RuntimeError, match="bad source file"):
        fileio.atomic_write_dir(tmp_path / "out", write)
    assert list(tmp_path.iterdir()) == []


def test_another_users_running_process_is_no_dead_writer(monkeypatch):
    """os.kill(pid, 0) raises PermissionError for another user's running process: its temp file is a live
    writer's, kept, and no error escapes (a claim's holder is judged by the same call)."""
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert fileio.dead_writer(f".x.{fileio.TEMP_MARK}{fileio.writer_tag(4242)}ab.tmp") is False


def test_text_is_read_from_a_pipe_and_a_folder_is_named(tmp_path):
    """A review: refusing every file that is not a regular one broke --published-file <(...) (a pipe)."""
    import os
    import threading

    from bench.errors import BenchError

    r, w = os.pipe()
    text = "model,value\n" + "unet,0.5\n" * 20000  # more than a pipe holds at once

    def feed():
        with os.fdopen(w, "w", encoding="utf-8") as fh:
            fh.write(text)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert fileio.read_text(Path(f"/dev/fd/{r}"), "published numbers (CSV)") == text
    finally:
        feeder.join(10)
        os.close(r)
    with pytest.raises(BenchError, match=rf"{tmp_path}: cannot read it as a protocol: a folder; expected a file"):
        fileio.read_text(tmp_path, "a protocol")
