"""Bad input: every loader and command rejects it with one BenchError naming the file or argument
and the problem, and leaves nothing half-written behind. One test (or parameter) per row of
docs/bad_input.md; each breaks one thing in a small valid synthetic dataset."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bench import records
from bench.cli import main
from bench.data import open_dataset
from bench.data.synth import synthesize
from bench.data.verify import verify_dataset
from bench.errors import BenchError
from bench.protocol import PROTOCOL_DIR, load_protocol
from bench.registry import create_model, get_entry
from tests.fixtures import run_bench_here

SYN = dict(n_train=1, n_test=1, depth=4, size=48)
ISIC = dict(n_train=2, n_val=1, min_size=24, max_size=30)
POLYP = dict(n_train=2, n_test=1, min_size=24, max_size=30)
NN3 = dict(n_cases=3, depth=4, size=16)
NN2 = dict(dims=2, n_cases=3, size=16)
# tiny models, 2 steps; the smoke protocol loads in the main process (FAST adds it)
QUICK = ["--tiny", "--max-iterations", "2", "--threads", "1", "--no-progress"]
FAST = ["--protocol", "smoke", "--img-size", "32", *QUICK]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    return {
        "synapse": synthesize("synapse", base / "synapse", **SYN),
        "isic": synthesize("isic", base / "isic", **ISIC),
        "polyp": synthesize("polyp", base / "polyp", **POLYP),
        "nnunet": synthesize("nnunet", base / "nnunet", **NN3),
        "nnunet2d": synthesize("nnunet", base / "nnunet2d", **NN2),
    }


@pytest.fixture
def data(clean, tmp_path):
    """A fresh, writable copy of one clean dataset: ``data("isic")``."""
    return lambda key: Path(shutil.copytree(clean[key], tmp_path / key))


def _bench(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the console entry point as a user would (``bench.cli.main``: BenchError -> one red
    line, exit 2); return (exit code, stderr)."""
    proc = run_bench_here(monkeypatch, capsys, *args, check=False)
    return proc.returncode, proc.stderr


def _fails(monkeypatch, capsys, *args, names, phrase) -> str:
    """The command exits 2 with one error line naming ``names`` and saying ``phrase``."""
    code, err = _bench(monkeypatch, capsys, *args)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    assert str(names) in err and phrase in err, err
    return err


def _raises(fn, *, names, phrase) -> BenchError:
    with pytest.raises(BenchError) as info:
        fn()
    msg = str(info.value)
    assert str(names) in msg, msg
    assert phrase in msg, msg
    return info.value


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot create files in: chmod 0o500 — or, where that does not stop
    us (root ignores permission bits), a folder under a regular file, which nobody can create."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        (ro / "probe").touch()
    except PermissionError:
        yield ro
    else:
        (ro / "probe").unlink()
        blocker = tmp_path / "a_file"
        blocker.write_text("not a folder", encoding="utf-8")
        yield blocker / "results"
    finally:
        ro.chmod(0o700)


# --- missing directories ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["synapse", "isic17", "isic18", "polyp", "nnunet"])
def test_missing_root(tmp_path, name):
    _raises(lambda: open_dataset(name, tmp_path / "nowhere"), names=tmp_path / "nowhere", phrase="not found")


def test_bench_debug_adds_the_traceback_and_keeps_the_exit_code(monkeypatch, capsys, tmp_path):
    """BENCH_DEBUG=1 re-raised the error: exit 1 instead of 2, so a script's check of the code changed with it."""
    code, err = _bench(monkeypatch, capsys, "report", "--results", tmp_path / "nowhere")
    monkeypatch.setenv("BENCH_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["bench", "report", "--results", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as info:
        main()
    debug = capsys.readouterr().err
    assert (code, info.value.code) == (2, 2)
    assert debug.startswith("Traceback (most recent call last):") and "bench.errors.BenchError: results directory " \
        "not found" in debug and debug.endswith(err), debug
    for off in ("0", "false", "No", ""):  # an odd-environment journey: CI templates set BENCH_DEBUG=0
        monkeypatch.setenv("BENCH_DEBUG", off)
        with pytest.raises(SystemExit):
            main()
        assert capsys.readouterr().err == err, off


def test_profile_refuses_a_set_value_of_another_kind(monkeypatch, capsys, tmp_path):
    _fails(monkeypatch, capsys, "profile", "--models", "vmunet_v2", "--tiny", "--set", "deep_supervision=0",
           "--no-timing", "--results", tmp_path, names="deep_supervision", phrase="takes true/false, e.g. true; got 0")
    assert not list((tmp_path / "profiles").glob("*.json"))
    # create_model's own arguments: a TypeError's traceback ("got multiple values for keyword argument")
    for key in ("num_classes=3", "img_size=32", "in_chans=1"):
        _fails(monkeypatch, capsys, "profile", "--models", "unet", "--tiny", "--set", key, "--no-timing", "--results",
               tmp_path, names=key.split("=")[0], phrase="not a --set key; the data gives a run its classes")


def test_folders_through_links_and_the_home_folder(monkeypatch, capsys, tmp_path):
    """An odd-environment journey: `bench data synth --out LINK` to a folder on a larger disk wrote the
    whole dataset, then failed ("appeared while writing"); a link to nothing said "File exists";
    `--out=~/syn` (the shell leaves ~ after =) wrote into a folder named ~, as every command's `--results=~/r`
    would where bench did not expand it."""
    monkeypatch.chdir(tmp_path)
    big = tmp_path / "big" / "isic"
    big.mkdir(parents=True)
    (tmp_path / "isic").symlink_to(big)
    code, err = _bench(monkeypatch, capsys, "data", "synth", "--like", "isic17", "--out", tmp_path / "isic")
    assert code == 0, err
    assert (big / "train" / "images").is_dir() and (tmp_path / "isic").is_symlink()
    (tmp_path / "scratch").symlink_to(tmp_path / "unmounted")
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--dataset", "isic17", "--synthetic", "--results",
           tmp_path / "scratch", *FAST, names=tmp_path / "scratch",
           phrase=f"a link to {tmp_path / 'unmounted'}, which does not exist (a disk not mounted?); choose another "
                  "--results")
    (tmp_path / "o").symlink_to(tmp_path / "unmounted-too")  # --out too: nothing written at the target
    _fails(monkeypatch, capsys, "data", "synth", "--like", "isic17", "--out", tmp_path / "o", names=tmp_path / "o",
           phrase="which does not exist (a disk not mounted?); choose another --out")
    assert not (tmp_path / "unmounted-too").exists()
    # a level down (profile writes to <results>/profiles; report reads <results>/records): "File exists", "not found"
    _fails(monkeypatch, capsys, "profile", "--models", "unet", "--tiny", "--no-timing", "--results", tmp_path / "scratch",
           names=tmp_path / "scratch", phrase="which does not exist (a disk not mounted?); choose another --results")
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "scratch", names=tmp_path / "scratch",
           phrase="(pass --results DIR); " f"{tmp_path / 'scratch'}: a link to {tmp_path / 'unmounted'}, which does not exist")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a loop is not a disk not mounted
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "loop", names=tmp_path / "loop",
           phrase="which leads back to itself (a loop of links)")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, err = _bench(monkeypatch, capsys, "data", "synth", "--like", "isic17", "--out=~/syn")
    assert code == 0, err
    assert (tmp_path / "home" / "syn" / "train").is_dir() and not (tmp_path / "~").exists()
    code, err = _bench(monkeypatch, capsys, "profile", "--models", "unet", "--tiny", "--no-timing", "--img-size", "32",
                       "--results=~/r")  # profile does not expand ~ itself: bench does, for every command
    assert code == 0, err
    assert (tmp_path / "home" / "r" / "profiles").is_dir() and not (tmp_path / "~").exists()


def test_bare_commands_print_their_help_alone_and_version_says_the_package(monkeypatch, capsys, tmp_path):
    """A CLI audit: `bench` and `bench data` alone printed an empty "error:" line after the help; no
    --version; an unknown policy was refused after --synthetic wrote data, an unknown model after
    `bench profile` made its profiles folder."""
    from importlib.metadata import version

    for args in ([], ["data"]):
        monkeypatch.setattr(sys, "argv", ["bench", *args])
        with pytest.raises(SystemExit) as stop:
            main()
        said = capsys.readouterr()
        assert stop.value.code == 2 and "Usage: bench" in said.out and said.err == "", said.err
    monkeypatch.setattr(sys, "argv", ["bench", "--version"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 0 and capsys.readouterr().out.startswith(f"ssm-unet-bench {version('ssm-unet-bench')};")
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--synthetic", "--dataset", "synapse", "--policy",
           "strictt", "--results", tmp_path, names="strictt", phrase="unknown metric policy")
    _fails(monkeypatch, capsys, "profile", "--models", "unett", "--results", tmp_path, names="unett",
           phrase="unknown model")
    assert list(tmp_path.iterdir()) == []


def test_a_terminal_of_another_encoding_gets_the_output_with_what_it_cannot_show_replaced(tmp_path):
    """An odd-environment journey: under a latin-1 (or cp1252) terminal or redirected file, `bench models`
    and `bench report` crashed on their first … or ↑ with a UnicodeEncodeError traceback."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "BENCH_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "bench", "models"], capture_output=True,
                          env={**env, "PYTHONIOENCODING": "latin-1"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode("latin-1")
    assert "vmunet_v2" in text and "?" in text and "\u2026" not in text


def test_output_streams_that_cannot_show_a_character_do_not_crash_the_command(tmp_path, monkeypatch):
    """A board's ↑ and an error's path under PYTHONIOENCODING=ascii (click writes UTF-8 there), and under strict
    latin-1 streams in this process: stdout shows ↑ as ?, stderr a path's 肝 as \\u809d (it crashed the error
    line with a UnicodeEncodeError traceback)."""
    import io
    import os
    import subprocess

    from tests.fixtures import make_record

    records.write_record(make_record("unet"), tmp_path / "res")
    env = {k: v for k, v in os.environ.items() if k != "BENCH_DEBUG"}
    for args, code, said in ((["report", "--results", tmp_path / "res"], 0, "DSC ↑ (%)"),
                             (["report", "--results", tmp_path / "肝"], 2, f"not found: {tmp_path / '肝'}")):
        proc = subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True,
                              env={**env, "PYTHONIOENCODING": "ascii"})
        assert proc.returncode == code and b"Traceback" not in proc.stderr, proc.stderr
        assert said.encode() in proc.stdout + proc.stderr
    for folder, code, stream, said in ((tmp_path / "res", 0, "stdout", "DSC ? (%)"),
                                       (tmp_path / "肝", 2, "stderr", "\\u809d (pass --results DIR)")):
        monkeypatch.setattr(sys, stream, io.TextIOWrapper(io.BytesIO(), encoding="latin-1"))  # errors="strict"
        monkeypatch.setattr(sys, "argv", ["bench", "report", "--results", str(folder)])
        with pytest.raises(SystemExit) as stop:
            main()
        getattr(sys, stream).flush()
        shown = getattr(sys, stream).buffer.getvalue().decode("latin-1")
        assert stop.value.code == code and said in shown, shown
        monkeypatch.undo()
    # a handler other than strict is the user's choice (PYTHONIOENCODING=latin-1:xmlcharrefreplace), kept
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="latin-1", errors="xmlcharrefreplace"))
    monkeypatch.setattr(sys, "argv", ["bench", "report", "--results", str(tmp_path / "res")])
    with pytest.raises(SystemExit) as stop:
        main()
    sys.stdout.flush()
    shown = sys.stdout.buffer.getvalue().decode("latin-1")
    assert stop.value.code == 0 and "DSC &#8593; (%)" in shown, shown


def test_results_from_a_utf8_machine_report_the_same_under_a_locale_of_another_encoding(tmp_path):
    """Results written on a UTF-8 machine, reported where the locale's encoding is ASCII (LC_ALL=C without
    Python's UTF-8 mode: latin-1 and cp1252 act alike for these bytes): a profile row holding "Xeon®" as
    UTF-8 (another tool's writer, or a hand edit) was "unreadable" there, read in the locale's encoding, and
    the report written with --out is the UTF-8 file a UTF-8 machine writes, its ± and ↑ included."""
    import os
    import subprocess

    from bench.report import write_report
    from tests.fixtures import make_record

    results = tmp_path / "res"
    records.write_record(make_record("unet"), results)
    (results / "profiles").mkdir()
    row = {"model": "unet", "family": "cnn", "input_shape": "1x3x224x224", "macs": 5.2e9, "paper_macs": 3.16e9,
           "model_config": {"num_classes": 9, "in_chans": 3, "img_size": 224}, "params": 27_430_000,
           "paper_params": 22_000_000, "flops": 10.4e9, "scan_macs": 0.0, "paper_macs_missing_pct": 39.2,
           "fvcore_macs": 5.25e9, "fingerprint": "Intel® Xeon® x2", "precision": "fp32", "channels_last": False,
           "compiled": False, "scan_backend": "ref", "latency_ms_median": 100.0, "latency_ms_p90": 110.0, "fps": 10.0,
           "peak_mem_mb": 300.0, "train_peak_mem_mb": 900.0, "peak_mem_kind": "cpu_tensors"}
    (results / "profiles" / "unet-1.json").write_text(json.dumps(row, ensure_ascii=False), encoding="utf-8")
    expected = write_report(results)
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_DEBUG", "PYTHONUTF8", "PYTHONIOENCODING")}
    env.update(LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0")  # no coercion to C.UTF-8
    python = [sys.executable, "-X", "utf8=0"]
    said = subprocess.run([*python, "-c", "import locale; print(locale.getpreferredencoding(False))"],
                          capture_output=True, text=True, encoding="utf-8", env=env, check=True).stdout.strip()
    if said.lower().replace("-", "") in ("utf8", "cp65001"):
        pytest.skip(f"LC_ALL=C gives the locale encoding {said} here")
    proc = subprocess.run([*python, "-m", "bench", "report", "--results", results, "--out", tmp_path / "report.md"],
                          capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Xeon®" in expected and (tmp_path / "report.md").read_text(encoding="utf-8").startswith(expected)  # plots


@pytest.mark.parametrize(
    "key, name, remove, named, phrase",
    [
        ("synapse", "synapse", ["train_npz", "test_vol_h5"], "", "no train_npz/ or test_vol_h5/"),
        ("isic", "isic17", ["val/masks"], "val/masks", "missing"),
        ("polyp", "polyp", ["TrainDataset/masks"], "TrainDataset/masks", "missing"),
        ("polyp", "polyp", ["TestDataset/Kvasir/masks"], "TestDataset/Kvasir/masks", "folder missing"),
        ("nnunet", "nnunet", ["imagesTr"], "imagesTr", "folder missing"),
        ("nnunet", "nnunet", ["dataset.json"], "dataset.json", "not found"),
    ],
)
def test_missing_folder_in_the_layout(data, key, name, remove, named, phrase):
    root = data(key)
    for rel in remove:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    _raises(lambda: open_dataset(name, root), names=root / named, phrase=phrase)


def test_missing_results_dir_for_report(monkeypatch, capsys, tmp_path):
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "none", names=tmp_path / "none",
           phrase="results directory not found")


def test_listed_file_missing(data):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    path = root / "train_npz" / f"{ds.train_ids()[0]}.npz"
    path.unlink()
    # the command that checks the rest names this dataset's folder, not a placeholder
    _raises(lambda: ds.load_train(ds.train_ids()[0]), names=path,
            phrase=f"listed but missing (check with `bench data verify --dataset synapse --data-root {root}`)")


def test_missing_nnunet_channel_file(data):
    root = data("nnunet")
    ds = open_dataset("nnunet", root)
    case = ds.test_ids()[0]
    path = root / "imagesTr" / f"{case}_0000.nii.gz"
    path.unlink()
    _raises(lambda: ds.load_test(case), names=path, phrase="missing (channel 0 of case")


# --- truncated or corrupt files --------------------------------------------------------------


def test_truncated_npz(data):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    item = ds.train_ids()[0]
    path = _truncate(root / "train_npz" / f"{item}.npz")
    _raises(lambda: ds.load_train(item), names=path, phrase="truncated or corrupt")


def test_npz_without_label_array(data):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    item = ds.train_ids()[0]
    path = root / "train_npz" / f"{item}.npz"
    np.savez(path, image=np.zeros((8, 8), np.float32))
    _raises(lambda: ds.load_train(item), names=path, phrase="no array 'label'")


def test_truncated_h5(data):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    case = ds.test_ids()[0]
    path = _truncate(root / "test_vol_h5" / f"{case}.npy.h5")
    _raises(lambda: ds.load_test(case), names=path, phrase="truncated or corrupt")


def test_h5_without_label_dataset(data):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    case = ds.test_ids()[0]
    path = root / "test_vol_h5" / f"{case}.npy.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.zeros((2, 8, 8), np.float32))
    _raises(lambda: ds.load_test(case), names=path, phrase="no dataset 'label'")


def test_unreadable_list_file(data):
    """A list in another encoding is named as such, not as damaged; UTF-16 with its byte-order mark
    (what some Windows editors save) reads; a pickled npz is named as such."""
    root = data("synapse")
    path = root / "lists" / "lists_Synapse" / "train.txt"
    ids = open_dataset("synapse", root).train_ids()
    path.write_text("\n".join(ids) + "\n", encoding="utf-16")
    assert open_dataset("synapse", root).train_ids() == ids
    path.write_bytes(b"\xc3\x28 not text")
    _raises(lambda: open_dataset("synapse", root), names=path, phrase="not UTF-8 text")
    path.write_text("\n".join(ids) + "\n", encoding="utf-8")
    slice_path = root / "train_npz" / f"{ids[0]}.npz"
    np.savez(slice_path, image=np.array([{"a": 1}], dtype=object), label=np.zeros((4, 4)))
    _raises(lambda: open_dataset("synapse", root).load_train(ids[0]), names=slice_path,
            phrase="it holds Python objects (an object array), which bench does not unpickle")


@pytest.mark.parametrize(
    "key, name, rel",
    [
        ("isic", "isic17", "train/images/ISIC_0000000.png"),
        ("isic", "isic17", "train/masks/ISIC_0000000_segmentation.png"),
        ("polyp", "polyp", "TrainDataset/images/1.png"),
    ],
)
def test_truncated_png(data, key, name, rel):
    root = data(key)
    ds = open_dataset(name, root)
    path = _truncate(root / rel)
    _raises(lambda: ds.load_train(ds.train_ids()[0]), names=path, phrase="truncated or corrupt")


def test_truncated_jpeg_test_image(data):
    root = data("polyp")
    ds = open_dataset("polyp", root)
    path = root / "TestDataset" / "Kvasir" / "images" / "1.jpg"
    path.write_bytes(b"\xff\xd8\xff not a jpeg")
    _raises(lambda: ds.load_test("Kvasir/1"), names=path, phrase="truncated or corrupt")


def test_truncated_nifti_label_fails_when_listing_slices(data):
    root = data("nnunet")
    ds = open_dataset("nnunet", root)
    case = ds.train_ids()[0].split(":")[0]
    path = _truncate(root / "labelsTr" / f"{case}.nii.gz")
    fresh = open_dataset("nnunet", root)  # the slice ids come from the label headers
    _raises(fresh.train_ids, names=path, phrase="truncated or corrupt")


def test_corrupt_nifti_image(data):
    root = data("nnunet")
    ds = open_dataset("nnunet", root)
    case = ds.test_ids()[0]
    path = root / "imagesTr" / f"{case}_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:-40])  # the gzip stream ends early: the header still reads
    _raises(lambda: ds.load_test(case), names=path, phrase="truncated or corrupt")


def test_truncated_nnunet_png(data):
    root = data("nnunet2d")
    ds = open_dataset("nnunet", root)
    case = ds.test_ids()[0]
    path = _truncate(root / "labelsTr" / f"{case}.png")
    _raises(lambda: ds.load_test(case), names=path, phrase="truncated or corrupt")


def test_corrupt_dataset_json(data):
    root = data("nnunet")
    (root / "dataset.json").write_text("{not json", encoding="utf-8")
    _raises(lambda: open_dataset("nnunet", root), names=root / "dataset.json", phrase="not readable JSON")


def test_corrupt_splits_final(data):
    root = data("nnunet2d")
    (root / "splits_final.json").write_text("[{", encoding="utf-8")
    _raises(lambda: open_dataset("nnunet", root, fold=1), names=root / "splits_final.json",
            phrase="not readable JSON")
    (root / "splits_final.json").write_text('[{"training": []}]', encoding="utf-8")
    _raises(lambda: open_dataset("nnunet", root, fold=1), names=root / "splits_final.json",
            phrase='expected a non-empty list of {"train"')


def test_nnunet_json_files_saved_by_windows_editors_read(data):
    """dataset.json and splits_final.json with a byte-order mark (UTF-8 or UTF-16) read like the
    Synapse lists do; bytes of another encoding are named as such, not as a damaged file."""
    root = data("nnunet2d")
    ds = open_dataset("nnunet", root)
    folds = [{"train": ds.train_ids()[:3], "val": ds.test_ids()}]
    meta = (root / "dataset.json").read_text(encoding="utf-8")
    (root / "dataset.json").write_text(meta, encoding="utf-16")
    (root / "splits_final.json").write_text(json.dumps(folds), encoding="utf-8-sig")
    again = open_dataset("nnunet", root)
    assert (again.num_classes, again.test_ids()) == (ds.num_classes, ds.test_ids())
    assert verify_dataset("nnunet", root) == []
    (root / "splits_final.json").write_bytes(json.dumps(folds).encode() + b"\xe9")
    _raises(lambda: open_dataset("nnunet", root), names=root / "splits_final.json", phrase="not UTF-8 text")


def test_a_file_bench_may_not_read_is_not_called_damaged(data, monkeypatch):
    root = data("nnunet2d")
    path = root / "dataset.json"
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: (_ for _ in ()).throw(PermissionError(13, "denied"))
                        if p == path else real(p))
    _raises(lambda: open_dataset("nnunet", root), names=path, phrase="cannot read it as JSON: permission denied")


# --- images and masks of different sizes -----------------------------------------------------


def test_npz_image_and_label_shapes_differ(data):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    item = ds.train_ids()[0]
    path = root / "train_npz" / f"{item}.npz"
    np.savez(path, image=np.zeros((8, 8), np.float32), label=np.zeros((8, 6), np.float32))
    _raises(lambda: ds.load_train(item), names=path, phrase="image shape (8, 8) and label shape (8, 6)")


def test_h5_image_and_label_shapes_differ(data):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    case = ds.test_ids()[0]
    path = root / "test_vol_h5" / f"{case}.npy.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.zeros((2, 8, 8), np.float32))
        f.create_dataset("label", data=np.zeros((3, 8, 8), np.uint8))
    _raises(lambda: ds.load_test(case), names=path, phrase="expected one 3-D shape for both")


@pytest.mark.parametrize("key, name", [("isic", "isic17"), ("polyp", "polyp")])
def test_mask_size_differs_from_image(data, key, name):
    root = data(key)
    ds = open_dataset(name, root)
    item = ds.train_ids()[0]
    masks = root / ("train" if key == "isic" else "TrainDataset") / "masks"
    mask = sorted(masks.iterdir())[0]
    Image.open(mask).resize((10, 12)).save(mask)
    _raises(lambda: ds.load_train(item), names=mask, phrase="mask size 10x12 differs from image")
    # bench run finds it (a test mask's too) before anything trains, from the headers
    test_masks = root / ("val" if key == "isic" else "TestDataset/Kvasir") / "masks"
    Image.open(sorted(test_masks.iterdir())[0]).resize((11, 13)).save(sorted(test_masks.iterdir())[0])
    _raises(lambda: open_dataset(name, root).check_geometry(), names=mask,
            phrase="mask size 10x12 differs from image")
    with pytest.raises(BenchError, match=r"\(and 1 more\); `bench data verify` lists them"):
        open_dataset(name, root).check_geometry()


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])  # the EXIF Orientations with a quarter turn (5, 7 mirrored)
def test_a_mask_that_fits_the_exif_turned_image_says_so(data, orientation):
    """A phone photo tagged "rotate 90°" with its mask drawn on the turned view: the sizes differ
    because pixels are read as stored (as the authors' loaders read them); the error says so."""
    root = data("isic")
    image = sorted((root / "train" / "images").iterdir())[0]
    mask = sorted((root / "train" / "masks").iterdir())[0]
    pixels = Image.open(image).convert("RGB").resize((50, 40))  # stored 50 wide, 40 high
    exif = pixels.getexif()
    exif[0x0112] = orientation  # 6: rotate 90° clockwise to view
    pixels.save(image, exif=exif)
    Image.open(mask).resize((40, 50)).save(mask)  # drawn on the turned view: 40 wide, 50 high
    _raises(lambda: open_dataset("isic17", root).check_geometry(), names=mask,
            phrase="mask size 40x50 differs from image")
    _raises(lambda: open_dataset("isic17", root).check_geometry(), names=mask,
            phrase="; the image has an EXIF rotation, and pixels are read as stored: a mask drawn on the image as "
                   "a viewer turns it fits the turned image")
    pixels.save(image)  # no rotation tag: no such hint
    with pytest.raises(BenchError) as info:
        open_dataset("isic17", root).check_geometry()
    assert "EXIF" not in str(info.value)


@pytest.mark.parametrize("key", ["nnunet", "nnunet2d"])
def test_nnunet_image_and_label_sizes_differ(data, key):
    root = data(key)
    ds = open_dataset("nnunet", root)
    case = ds.test_ids()[0]
    if key == "nnunet":
        path = root / "imagesTr" / f"{case}_0000.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 3), np.float32), np.eye(4)), str(path))
    else:
        path = root / "imagesTr" / f"{case}_0000.png"
        Image.fromarray(np.zeros((7, 9), np.uint8)).save(path)
    _raises(lambda: ds.load_test(case), names=path, phrase="differs from label")


# --- label ids outside the protocol's classes ------------------------------------------------


@pytest.mark.parametrize("value, phrase", [(9, "label values [9] outside 0..8"), (-1, "label values [-1] outside 0..8"),
                                           (1.5, "non-integer values")])
def test_npz_label_outside_synapse_classes(data, value, phrase):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    item = ds.train_ids()[0]
    path = root / "train_npz" / f"{item}.npz"
    label = np.zeros((8, 8), np.float32)  # the real files store ids as float32
    label[2, 3] = value
    np.savez(path, image=np.zeros((8, 8), np.float32), label=label)
    _raises(lambda: ds.load_train(item), names=path, phrase=phrase)


def test_h5_label_outside_synapse_classes(data):
    root = data("synapse")
    ds = open_dataset("synapse", root)
    case = ds.test_ids()[0]
    path = root / "test_vol_h5" / f"{case}.npy.h5"
    with h5py.File(path, "r+") as f:
        label = f["label"][:]
        label[0, 0, 0] = 12
        del f["label"]
        f.create_dataset("label", data=label)
    _raises(lambda: ds.load_test(case), names=path, phrase="label values [12] outside 0..8")


@pytest.mark.parametrize("key", ["nnunet", "nnunet2d"])
def test_nnunet_label_not_declared(data, key):
    root = data(key)
    ds = open_dataset("nnunet", root)
    case = ds.test_ids()[0]
    if key == "nnunet":
        path = root / "labelsTr" / f"{case}.nii.gz"
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj).copy()
        arr[0, 0, 0] = 5
        nib.save(nib.Nifti1Image(arr, img.affine), str(path))
    else:
        path = root / "labelsTr" / f"{case}.png"
        arr = np.asarray(Image.open(path)).copy()
        arr[0, 0] = 3
        Image.fromarray(arr).save(path)
    _raises(lambda: ds.load_test(case), names=path, phrase="outside 0..2")
    if key == "nnunet2d":  # the usual PNG mask, 0/255: its likely cause said, by the reader and by verify
        Image.fromarray(np.where(arr > 0, 255, 0).astype(np.uint8)).save(path)
        hint = "[255] outside 0..2; a 0/255 mask? store the foreground as 1 (mask // 255)"
        _raises(lambda: ds.load_test(case), names=path, phrase=hint)
        assert "a 0/255 mask? store the foreground as 1" in verify_dataset("nnunet", root)[0].message
        arr[0, :3] = 0, 1, 2  # classes drawn as grey levels 0/128/255
        Image.fromarray(np.array([0, 128, 255], np.uint8)[np.clip(arr, 0, 2)]).save(path)
        _raises(lambda: ds.load_test(case), names=path, phrase="[128, 255] outside 0..2; grey levels standing for "
                                                               "classes? store each as its class id")
        ids = np.clip(arr, 0, 2).astype(np.uint8)
        ids[-1] = 255  # a border of Pascal VOC's "void" beside class ids: not a 0/255 mask to divide by 255
        Image.fromarray(ids).save(path)
        _raises(lambda: ds.load_test(case), names=path, phrase="[255] outside 0..2; 255 beside class ids: an "
                                                               "unlabelled border (Pascal VOC's void)?")


@pytest.mark.parametrize("key, name, rel", [("isic", "isic17", "train/masks/ISIC_0000000_segmentation.png"),
                                            ("polyp", "polyp", "TrainDataset/masks/1.png")])
def test_binary_mask_stored_as_class_ids(data, key, name, rel):
    # /255 puts any 8-bit mask in [0, 1]; what goes wrong is a 0/1 mask, all background after /255
    root = data(key)
    ds = open_dataset(name, root)
    path = root / rel
    ids = (np.asarray(Image.open(path)) > 127).astype(np.uint8)
    Image.fromarray(ids).save(path)
    _raises(lambda: ds.load_train(ds.train_ids()[0]), names=path, phrase="expected a 0/255 mask")
    assert any(p.path == str(path) and "0/255" in p.message for p in verify_dataset(name, root))


@pytest.mark.parametrize("scale, phrase", [(1000.0, "expected CT clipped to [-125, 275] HU and scaled to [0, 1]"),
                                           (255.0, "expected CT clipped to [-125, 275] HU and scaled to [0, 1]"),
                                           (np.nan, "image contains NaN/inf")])
def test_synapse_image_that_is_not_scaled_ct(data, scale, phrase):
    # raw HU (or 0..255) passes no model's check: under normalize = "none" it would train as it is; 8-bit grey
    # values start at 0, in range, so only the top of the range catches them
    root = data("synapse")
    ds = open_dataset("synapse", root)
    item, case = ds.train_ids()[0], ds.test_ids()[0]
    npz = root / "train_npz" / f"{item}.npz"
    with np.load(npz) as f:
        image, label = f["image"], f["label"]
    np.savez(npz, image=(image / max(float(image.max()), 1e-6)) * scale, label=label)
    h5 = root / "test_vol_h5" / f"{case}.npy.h5"
    with h5py.File(h5, "r+") as f:
        image = f["image"][:]
        f["image"][...] = image / max(float(image.max()), 1e-6) * scale
    _raises(lambda: ds.load_train(item), names=npz, phrase=phrase)
    _raises(lambda: ds.load_test(case), names=h5, phrase=phrase)
    problems = {p.path: p.message for p in verify_dataset("synapse", root) if p.level == "error"}
    assert phrase in problems[str(npz)] and phrase in problems[str(h5)]


@pytest.mark.parametrize("spacing", [[np.nan, 1.0, 1.0], [0.8, 0.8], [3.0, 0.0, 0.8]])
def test_synapse_h5_spacing_attribute_that_is_no_spacing(data, spacing):
    # it would reach strict HD95 after training, without the file's name
    root = data("synapse")
    ds = open_dataset("synapse", root)
    case = ds.test_ids()[0]
    h5 = root / "test_vol_h5" / f"{case}.npy.h5"
    with h5py.File(h5, "r+") as f:
        f.attrs["spacing"] = spacing
    _raises(lambda: ds.load_test(case), names=h5, phrase="expected 3 finite numbers > 0 (mm per D, H, W)")
    assert [p.path for p in verify_dataset("synapse", root) if p.level == "error"] == [str(h5)]


def test_nnunet_float_label_that_is_no_label_map(data):
    # NIfTI labels may store ids as floats; 0.5 used to round to 0 (half to even) and train as background
    root = data("nnunet")
    ds = open_dataset("nnunet", root)
    case = ds.test_ids()[0]
    path = root / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[0, 0, 0] = 0.5
    nib.save(nib.Nifti1Image(arr, img.affine), str(path))
    _raises(lambda: ds.load_test(case), names=path, phrase="label holds non-integer values")
    assert str(path) in [p.path for p in verify_dataset("nnunet", root) if p.level == "error"]
    arr[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), str(path))
    _raises(lambda: ds.load_test(case), names=path, phrase="label contains NaN/inf")


# --- empty lists, folders and splits ---------------------------------------------------------


def test_empty_list_file(data):
    root = data("synapse")
    path = root / "lists" / "lists_Synapse" / "test_vol.txt"
    path.write_text("\n\n", encoding="utf-8")
    _raises(lambda: open_dataset("synapse", root), names=path, phrase="lists no ids")
    assert any(p.path == str(path) and "lists no ids" in p.message for p in verify_dataset("synapse", root))


def test_empty_folder_without_list(data):
    root = data("synapse")
    shutil.rmtree(root / "lists")
    for p in (root / "train_npz").iterdir():
        p.unlink()
    _raises(lambda: open_dataset("synapse", root), names=root / "train_npz", phrase="no '*.npz' files")


@pytest.mark.parametrize("key, name, rel", [("isic", "isic17", "train"), ("polyp", "polyp", "TrainDataset")])
def test_empty_image_folders(data, key, name, rel):
    root = data(key)
    for sub in ("images", "masks"):
        for p in (root / rel / sub).iterdir():
            p.unlink()
    _raises(lambda: open_dataset(name, root), names=root / rel / "images", phrase="no image files")


def test_nnunet_without_label_files(data):
    root = data("nnunet")
    for p in [*(root / "labelsTr").iterdir(), *(root / "imagesTr").iterdir()]:
        p.unlink()
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 0}), encoding="utf-8")
    _raises(lambda: open_dataset("nnunet", root), names=root / "labelsTr", phrase="needs at least 2 cases, got 0")


def test_nnunet_image_files_that_fit_no_case(data):
    """Cases are listed by their labels: an image without one, an undeclared channel or a name without
    the channel index was dropped unsaid by bench run (verify reported it); nnU-Net refuses them."""
    root = data("nnunet2d")
    case = open_dataset("nnunet", root).cases[0]
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "labelsTr" / f"{case}.png").unlink()
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": meta["numTraining"] - 1}), encoding="utf-8")
    image = root / "imagesTr" / f"{case}_0000.png"
    _raises(lambda: open_dataset("nnunet", root), names=image, phrase=f"no label file labelsTr/{case}.png")
    assert [str(p.path) for p in verify_dataset("nnunet", root)] == [str(image)]  # the same rule
    shutil.copy(image, root / "imagesTr" / f"{case}.png")
    _raises(lambda: open_dataset("nnunet", root), names=root / "imagesTr" / f"{case}.png",
            phrase="name does not end in _XXXX.png (4-digit channel index) (and 1 more); `bench data verify")

    root = data("nnunet")  # volumes, one channel declared
    other = open_dataset("nnunet", root).cases[1]
    stray = root / "imagesTr" / f"{other}_0001.nii.gz"
    shutil.copy(root / "imagesTr" / f"{other}_0000.nii.gz", stray)
    _raises(lambda: open_dataset("nnunet", root), names=stray,
            phrase="channel 1, but dataset.json declares 1 (channel_names)")
    stray.unlink()
    (root / "imagesTr" / f"{other}_0000.nii.gz").unlink()
    _raises(lambda: open_dataset("nnunet", root), names=root / "labelsTr" / f"{other}.nii.gz",
            phrase=f"no image {other}_0000.nii.gz in imagesTr")


def test_nnunet_split_with_empty_train_list(data):
    root = data("nnunet2d")
    cases = open_dataset("nnunet", root).cases
    (root / "splits_final.json").write_text(json.dumps([{"train": [], "val": cases}]), encoding="utf-8")
    _raises(lambda: open_dataset("nnunet", root), names=root / "splits_final.json",
            phrase="fold 0 has an empty 'train' list")


def test_a_case_on_both_sides_of_the_split_or_listed_twice(monkeypatch, capsys, data, tmp_path):
    # a test case's slices in train.txt: its score would be of data trained on; an id twice counts twice
    root = data("synapse")
    ds = open_dataset("synapse", root)
    case, lists = ds.test_ids()[0], root / "lists" / "lists_Synapse"
    shutil.copy(root / "train_npz" / f"{ds.train_ids()[0]}.npz", root / "train_npz" / f"{case}_slice000.npz")
    with (lists / "train.txt").open("a", encoding="utf-8") as fh:
        fh.write(f"{case}_slice000\n")
    both = f"{case} in both lists/lists_Synapse/train.txt and lists/lists_Synapse/test_vol.txt"
    _raises(open_dataset("synapse", root).check_splits, names=root, phrase=both)
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--data-root", root,
           "--results", tmp_path / "res", *FAST, names=root, phrase=both)
    assert not (tmp_path / "res" / "runs").exists()
    assert any(p.path == str(root) and both in p.message for p in verify_dataset("synapse", root))
    for name in ("train.txt", "test_vol.txt"):  # without lists, the folders' contents are the split
        (lists / name).rename(tmp_path / name)
    both = f"{case} in both train_npz/ (no train.txt) and test_vol_h5/ (no test_vol.txt)"
    _raises(open_dataset("synapse", root).check_splits, names=root, phrase=both)
    assert any(p.path == str(root) and both in p.message for p in verify_dataset("synapse", root))
    (root / "train_npz" / f"{case}_slice000.npz").unlink()
    (lists / "train.txt").write_text("\n".join(ds.train_ids()) + "\n", encoding="utf-8")
    (lists / "test_vol.txt").write_text(f"{case}\n{case}\n", encoding="utf-8")
    twice = f"lists/lists_Synapse/test_vol.txt lists {case} twice"
    _raises(open_dataset("synapse", root).check_splits, names=root, phrase=twice)
    assert any(p.path == str(root) and twice in p.message for p in verify_dataset("synapse", root))


def test_a_leaking_fold_in_splits_final_is_named_before_any_fold_trains(data):
    root = data("nnunet2d")
    cases = open_dataset("nnunet", root).cases
    folds = [{"train": cases[:-1], "val": cases[-1:]}, {"train": cases[:-1], "val": cases[-2:]},
             {"train": cases[1:], "val": cases[:1] * 2}]
    (root / "splits_final.json").write_text(json.dumps(folds), encoding="utf-8")
    path = root / "splits_final.json"
    _raises(lambda: open_dataset("nnunet", root), names=path,  # fold 0 is fine; fold 1 is read all the same
            phrase=f'fold 1: {cases[-2]} in both "train" and "val"')
    messages = [p.message for p in verify_dataset("nnunet", root) if p.path == str(path)]
    assert f'fold 1: {cases[-2]} in both "train" and "val"; a test case is never trained on' in messages, messages
    assert f'fold 2: "val" lists {cases[0]} twice' in messages, messages


def test_a_listed_file_missing_is_found_before_anything_trains(monkeypatch, capsys, data, tmp_path):
    root = data("synapse")
    case = open_dataset("synapse", root).test_ids()[0]
    h5 = root / "test_vol_h5" / f"{case}.npy.h5"
    h5.unlink()  # found by evaluation, after the whole training, until now
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--data-root", root,
           "--results", tmp_path / "res", *FAST, names=h5, phrase=": missing; check with `bench data verify --dataset synapse --data-root")
    assert not (tmp_path / "res" / "runs").exists()


def test_rgb_png_cases_need_no_later_channel_files_but_a_missing_image_is_named(data):
    # an RGB PNG supplies channels 0..2 from its _0000 file: the check of listed files must not ask for _0001
    root = data("nnunet2d")
    for path in (root / "imagesTr").glob("*_0000.png"):
        Image.open(path).convert("RGB").save(path)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "R", "1": "G", "2": "B"}}),
                                       encoding="utf-8")
    ds = open_dataset("nnunet", root)
    ds.check_splits()
    assert ds.load_train(ds.train_ids()[0]).image.shape[-1] == 3
    case = ds.test_ids()[0]
    (root / "imagesTr" / f"{case}_0000.png").unlink()  # found when the data opens, not when scoring
    _raises(lambda: open_dataset("nnunet", root), names=root / "labelsTr" / f"{case}.png",
            phrase=f"no image {case}_0000.png in imagesTr")


def test_jpeg_images_beside_png_labels_are_named(data):
    """JPEG images with PNG labels: the images were skipped unsaid and the error read "no image
    c_000_0000.png", as if they were missing."""
    root = data("nnunet2d")
    for path in (root / "imagesTr").glob("*_0000.png"):
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"))
        path.unlink()
    jpegs = sorted(p.name for p in (root / "imagesTr").iterdir())
    err = _raises(lambda: open_dataset("nnunet", root), names=root / "labelsTr",
                  phrase=f"in imagesTr ({len(jpegs)} labels lack their image); imagesTr holds {len(jpegs)} '*.jpg' "
                         f"files ({', '.join(jpegs[:5])}")
    assert str(err).endswith("images and labels share dataset.json's file_ending '.png': save the images as '.png'")


def test_run_on_a_dataset_without_training_split(monkeypatch, capsys, data, tmp_path):
    root = data("synapse")
    shutil.rmtree(root / "train_npz")
    (root / "lists" / "lists_Synapse" / "train.txt").unlink()
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--data-root", root,
           "--results", tmp_path / "res", *FAST, names=root, phrase="the training split is empty")
    assert not (tmp_path / "res" / "runs").exists()


@pytest.mark.parametrize("option, value, phrase", [("--models", ",", "--models ',' names nothing; give 'all' or a comma "
                                                                     "list, e.g. "),
                                                   ("--seeds", ",", "at least one integer"),
                                                   ("--folds", ",", "at least one integer")])
def test_empty_name_lists(monkeypatch, capsys, tmp_path, option, value, phrase):
    args = ["run", "--dataset", "synapse", "--synthetic", "--results", tmp_path, option, value]
    if option != "--models":
        args += ["--models", "unet"]
    _fails(monkeypatch, capsys, *args, names=option, phrase=phrase)


@pytest.mark.parametrize("option, example", [("--models", "unet,vmunet"), ("--dataset", "synapse,isic17"),
                                             ("--policy", "strict")])
def test_a_list_naming_nothing_is_refused_by_the_commands_on_finished_runs(monkeypatch, capsys, tmp_path, option,
                                                                           example):
    """`bench report --models ,` reported every model, where bench run refused it."""
    from tests.fixtures import make_record

    records.write_record(make_record("unet"), tmp_path)
    for command in ("report", "figure") if option == "--models" else ("report",):  # figure: one --dataset, --policy
        extra = ["--out", tmp_path / "f.png"] if command == "figure" else []
        _fails(monkeypatch, capsys, command, "--results", tmp_path, option, ",", *extra, names=option,
               phrase=f"{option} ',' names nothing; give 'all' or a comma list, e.g. {example}")



@pytest.mark.parametrize("option, value, phrase", [("--lr", "-1", "override lr (--lr): expected a learning rate, a finite number >= 0"),
                                                   ("--lr", "nan", "expected a learning rate, a finite number >= 0; got nan"),
                                                   ("--threads", "0", "--threads must be a whole number from 1 to")])
def test_numbers_out_of_range_are_one_line_before_anything_runs(monkeypatch, capsys, tmp_path, option, value, phrase):
    """torch raised these deep inside (the optimiser's ValueError, set_num_threads' RuntimeError)."""
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--results",
           tmp_path, option, value, names=option, phrase=phrase)
    assert not (tmp_path / "runs").exists()
    _raises(lambda: load_protocol("smoke").with_overrides(weight_decay=-1e-4), names="train.weight_decay",
            phrase="expected a number >= 0; got -0.0001")


def test_a_learning_rate_whose_step_overflows_is_one_line(tmp_path, monkeypatch):
    """--lr 1e38 passed the range check, then a run could end in torch's traceback ("value cannot be converted
    to type float without overflow": Adam's lr / (1 - beta1) beyond float32), or in a NaN loss a step later."""
    from tests.fixtures import run_bench

    proc = run_bench("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--results", tmp_path, *QUICK,
                     "--img-size", "32", "--lr", "1e38", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] in (
        "error: the optimizer's step overflows float32 at learning rate 1e+38 (epoch 0, step 0; --lr or train.lr): "
        "lower the learning rate",
        "error: non-finite loss (nan) at epoch 0, step 1: training stopped. Lower the learning rate or check the data "
        "(no checkpoint written yet)"), proc.stderr
    # the overflow itself, wherever the optimiser meets it
    from bench.train import train_model

    def overflow(self, *args, **kwargs):
        raise RuntimeError("value cannot be converted to type float without overflow")

    monkeypatch.setattr(torch.optim.AdamW, "step", overflow)
    (data,) = (tmp_path / "synthetic").iterdir()  # what --synthetic wrote
    ds = open_dataset("synapse", data)
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=1, lr=1e38)
    model = create_model("unet", num_classes=ds.num_classes, in_chans=1, img_size=32, tiny=True)
    with pytest.raises(BenchError, match=r"^the optimizer's step overflows float32 at learning rate 1e\+38 \(epoch 0, "
                                         r"step 0; --lr or train.lr\): lower the learning rate$"):
        train_model(model, ds, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"))


# --- sizes: non-square inputs, sizes a model cannot take --------------------------------------


@pytest.mark.filterwarnings("ignore:swin_unet. window 7 does not tile")
@pytest.mark.parametrize("name, phrase", [("transunet", "built for 64x64"), ("swin_unet", "built for 64x64"),
                                          ("vmunet_v2", "needs square inputs")])
def test_non_square_input_to_a_square_model(name, phrase):
    model = create_model(name, num_classes=2, in_chans=1, img_size=64, **get_entry(name).tiny).eval()
    with torch.no_grad():
        _raises(lambda: model(torch.zeros(1, 1, 64, 96)), names="(64, 96)", phrase=phrase)


@pytest.mark.filterwarnings("ignore:swin_unet. window 7 does not tile")
@pytest.mark.parametrize("name, cls, why", [("transunet", "TransUNet", "learned position embeddings for a fixed grid"),
                                            ("swin_unet", "SwinUnet", "window attention on a fixed grid")])
def test_a_fixed_grid_model_names_its_one_size_before_any_divisor(name, cls, why):
    """A 65x65 input to a TransUNet built for 64 was told to pad to 80x80, which was then refused in turn:
    a fixed-grid model takes one size, said first."""
    model = create_model(name, num_classes=2, in_chans=1, img_size=64, **get_entry(name).tiny).eval()
    with torch.no_grad():
        for side in (65, 96):
            with pytest.raises(BenchError) as info:
                model(torch.zeros(1, 1, side, side))
            assert str(info.value) == f"{cls} was built for 64x64 inputs ({why}); got ({side}, {side})"


def test_a_fixed_grid_says_every_side_of_a_volume():
    """fixed_grid on a plugin's 3-D model: its one size in three sides."""
    from bench.modeling import SegmentationModel

    class Fixed3d(SegmentationModel):
        spatial_dims, fixed_grid, num_classes, in_chans, img_size = 3, "a fixed grid", 2, 1, 8

        def forward_logits(self, x):
            return x.repeat(1, 2, 1, 1, 1)

    with pytest.raises(BenchError, match=r"^Fixed3d was built for 8x8x8 inputs \(a fixed grid\); got \(8, 8, 4\)$"):
        Fixed3d()(torch.zeros(1, 1, 8, 8, 4))
    assert Fixed3d()(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


def test_an_input_of_another_dtype_is_named():
    # a float64 or uint8 array from numpy reached the first conv as torch's own dtype error
    model = create_model("unet", num_classes=2, in_chans=1, img_size=32, tiny=True).eval()
    for dtype, shown in ((torch.float64, "float64"), (torch.uint8, "uint8")):
        _raises(lambda: model(torch.zeros(1, 1, 32, 32, dtype=dtype)), names="UNet",
                phrase=f"expects a float32 input (its weights'); got {shown}: convert it with x.to(torch.float32)")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the input itself
        assert model(torch.zeros(1, 1, 32, 32)).dtype == torch.bfloat16
        _raises(lambda: model(torch.zeros(1, 1, 32, 32, dtype=torch.float64)), names="UNet",  # but not float64
                phrase="expects a float32 input (its weights'); got float64")


@pytest.mark.parametrize("name, size, phrase", [("vmunet", 48, "not a multiple of 32"),
                                                ("unet", 100, "not a multiple of 8"),
                                                ("transunet", 100, "not a multiple of 16, which its ViT grid of "
                                                                   "16-pixel patches needs; use 96 or 112"),
                                                ("swin_unet", 48, "not a multiple of 32, which its 4-pixel patches "
                                                                  "merged 3 times need; use 32 or 64")])
def test_img_size_a_model_cannot_take_fails_at_creation(name, size, phrase):
    _raises(lambda: create_model(name, num_classes=2, img_size=size, **get_entry(name).tiny), names=name,
            phrase=phrase)


@pytest.mark.parametrize("name", ["vmunet", "vmunet_v2", "transunet", "swin_unet"])
def test_a_three_channel_stem_refuses_other_channel_counts(name):
    # the record said in_chans 4 while the model took 3, and the first forward failed
    tiny = dict(get_entry(name).tiny)
    _raises(lambda: create_model(name, num_classes=2, in_chans=4, img_size=64, **tiny), names=name,
            phrase="its stem takes 3-channel images (a 1-channel image is repeated, as its authors do); got in_chans=4")
    for chans in (1, 3):
        assert create_model(name, num_classes=2, in_chans=chans, img_size=64, **tiny).bench_config["in_chans"] == chans
    unet = create_model("unet", num_classes=2, in_chans=4, img_size=64, **dict(get_entry("unet").tiny))
    assert unet.eval()(torch.randn(1, 4, 64, 64)).shape == (1, 2, 64, 64)  # a stem of the data's width


def test_non_square_img_size_in_a_protocol(tmp_path):
    text = (Path(__file__).parents[1] / "bench" / "protocols" / "smoke.toml").read_text(encoding="utf-8")
    path = tmp_path / "wide.toml"
    path.write_text(text.replace("img_size = 64", "img_size = [64, 48]"), encoding="utf-8")
    _raises(lambda: load_protocol(path), names=path, phrase="img_size: expected a whole number >= 1 (the side")


def test_bad_size_override(monkeypatch, capsys, tmp_path):
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--results",
           tmp_path, "--batch-size", "0", names="--batch-size", phrase="expected a whole number >= 1")


def test_run_with_img_size_a_model_cannot_take_trains_nothing(monkeypatch, capsys, tmp_path):
    # unet takes 48, vmunet does not: the grid fails before unet's run starts
    res = tmp_path / "res"
    _fails(monkeypatch, capsys, "run", "--models", "unet,vmunet", "--dataset", "synapse", "--synthetic",
           "--results", res, "--protocol", "smoke", "--img-size", "48", *QUICK, names="vmunet",
           phrase="img_size 48 is not a multiple of 32")
    assert not (res / "runs").exists() and not (res / "records").exists()


def test_profile_with_img_size_a_model_cannot_take(monkeypatch, capsys, tmp_path):
    _fails(monkeypatch, capsys, "profile", "--models", "vmunet", "--tiny", "--img-size", "100", "--no-timing",
           "--results", tmp_path, names="vmunet", phrase="img_size 100 is not a multiple of 32")
    assert not list((tmp_path / "profiles").glob("*.json"))


# --- unknown names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, names, phrase",
    [
        (["--models", "vm_unett"], "vm_unett", "unknown model"),
        (["--models", "unet", "--dataset", "synapsee"], "synapsee", "did you mean 'synapse'"),
        (["--models", "unet", "--protocol", "smok"], "smok", "did you mean 'smoke'"),
        (["--models", "unet", "--policy", "strictt"], "strictt", "unknown metric policy"),
        (["--models", "unet", "--set", "widthz=3"], "widthz",
         "unet: no --set key 'widthz' (did you mean 'widths'?); its configuration's keys: encoder, widths"),
        # a key it takes, with a value it refuses: no "did you mean encoder_weights -> encoder"
        (["--models", "unet", "--set", "encoder_weights=imagenet"], "encoder_weights",
         "encoder_weights='imagenet' (encoder_weights applies to smp encoders only: choose one with encoder "
         "(--set encoder=resnet34))"),
        (["--models", "unet,vmunet", "--protocol", "smoke", "--set", "d_state=8"], "d_state",
         "--set goes to every model of the command (unet, vmunet): run each model with its own keys in a command"),
        (["--models", "vmunet", "--protocol", "smoke", "--set", "num_classes=3"], "num_classes", "not a --set key; the data gives a run"),
        # 0 would build the model false builds under another run id and label
        (["--models", "vmunet_v2", "--dataset", "isic17", "--protocol", "smoke", "--set", "deep_supervision=0"], "deep_supervision",
         "takes true/false, e.g. true; got 0"),
        (["--models", "vmunet", "--protocol", "smoke", "--set", "d_state=true"], "d_state", "takes a number, e.g. 16; got true"),
    ],
)
def test_unknown_names(monkeypatch, capsys, tmp_path, args, names, phrase):
    _fails(monkeypatch, capsys, "run", "--synthetic", "--results", tmp_path, *args, "--tiny", names=names,
           phrase=phrase)


@pytest.mark.parametrize("args, names, phrase", [
    (["run", "--models", "unet", "--dataset", "synapse", "--device", "gpu:1"], "Invalid value for '--device'",
     "expected 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'gpu:1' (did you mean 'cuda:1'?) (bench run --help)"),
    (["report", "--format", "lattex"], "'--format': 'lattex'", "Did you mean 'latex'? (bench report --help)"),
    (["predict", "--device", "cuda1"], "'--device': expected", "got 'cuda1' (did you mean 'cuda:1'?) (bench predict --help)"),
    (["predict", "--device", "cpuu"], "'--device': expected", "got 'cpuu' (did you mean 'cpu'?) (bench predict --help)"),
    (["data", "synth", "--like", "isic19", "--out", "x"], "'--like': 'isic19'", "Did you mean 'isic18'?"),
    (["data", "convert", "--source", "btcv", "--raw", "x"], "Missing option '--out'", "(bench data convert --help)"),
    (["report", "--nope"], "No such option: --nope", "(bench report --help)"),
])
def test_option_values_outside_their_choices_are_one_line(monkeypatch, capsys, args, names, phrase):
    """Click's own usage errors (a value outside an option's choices, a missing or unknown option)
    print one line like ours, exit 2, with a "did you mean" among the choices (they drew a box)."""
    _fails(monkeypatch, capsys, *args, names=names, phrase=phrase)


def test_an_unknown_scan_backend_variable_is_named_before_anything_runs(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("BENCH_SCAN_BACKEND", "torh")  # a traceback at the first scan, after training began
    _fails(monkeypatch, capsys, "run", "--models", "vmunet", "--dataset", "synapse", "--synthetic", "--results",
           tmp_path, *QUICK, names="BENCH_SCAN_BACKEND='torh'",
           phrase="is not a selective-scan backend (did you mean 'torch'?); choose one of cuda, cpu, torch, ref (or unset it")
    assert not (tmp_path / "runs").exists()


def test_a_scan_backend_forced_that_cannot_run_here_is_named_and_doctor_says_so(monkeypatch, capsys, tmp_path):
    # =cuda without a GPU: doctor called it fine, then the first scan raised a 300-line traceback
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("BENCH_SCAN_BACKEND", "cuda")
    said = "BENCH_SCAN_BACKEND='cuda' runs mamba-ssm's CUDA kernels, and this machine has no CUDA device"
    _fails(monkeypatch, capsys, "run", "--models", "vmunet", "--dataset", "synapse", "--synthetic", "--results",
           tmp_path, *QUICK, names="BENCH_SCAN_BACKEND='cuda'", phrase=said)
    assert not (tmp_path / "runs").exists()
    monkeypatch.setattr(sys, "argv", ["bench", "run", "--help"])  # help is no command that runs models
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0 and "Usage: bench run" in capsys.readouterr().out
    for value, phrase in (("cuda", said), ("torh", "BENCH_SCAN_BACKEND='torh' is not a selective-scan backend")):
        monkeypatch.setenv("BENCH_SCAN_BACKEND", value)  # the diagnostic tool diagnoses, then says it failed
        monkeypatch.setattr(sys, "argv", ["bench", "doctor"])
        with pytest.raises(SystemExit) as info:
            main()
        said_here = capsys.readouterr()
        assert info.value.code == 1 and f"scan backend {phrase}" in said_here.out and "plugins " in said_here.out
        assert said_here.err.startswith(f"doctor: 1 problem(s): {phrase}")


@pytest.mark.parametrize("option, phrase", [
    ("sise=3", "synthetic synapse data has no setting sise; its settings (and defaults): n_train=6, n_test=3, depth=16"),
    ("size=-3", "synthetic synapse data: size takes a whole number >= 1, e.g. 96; got -3"),
    ("spacing=[1, 2]", "spacing takes a list of 3 positive numbers, e.g. [2.5, 0.8, 0.8]; got [1, 2]"),
    ("n_test", "--option expects key=value (a generator setting); got 'n_test'"),
])
def test_a_synthetic_data_setting_it_cannot_take_is_one_line(monkeypatch, capsys, tmp_path, option, phrase):
    _fails(monkeypatch, capsys, "data", "synth", "--like", "synapse", "--out", tmp_path / "s", "--option", option,
           names=option.split("=")[0], phrase=phrase)
    assert not (tmp_path / "s").exists()


def test_a_negative_synthetic_data_seed_is_one_line(monkeypatch, capsys, tmp_path):
    _fails(monkeypatch, capsys, "data", "synth", "--like", "synapse", "--out", tmp_path / "s", "--seed", "-1",
           names="--seed", phrase="--seed: expected a whole number from 0 to 4294967295; got -1")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", [["rescore", "--policy", "strict"], ["predict", "--out", "OUT"]])
def test_rescore_and_predict_of_models_without_runs_are_one_line(monkeypatch, capsys, tmp_path, command):
    # it said "nothing to score: every finished run has a record under strict already" (or "0 run(s)"), exit 0
    from tests.fixtures import make_record

    records.write_record(make_record("unet"), tmp_path)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    _fails(monkeypatch, capsys, *args, "--results", tmp_path, "--models", "swin_unet",
           names="--models swin_unet", phrase=f"no runs of it in {tmp_path} (there: unet)")


@pytest.mark.parametrize("command", [["rescore", "--policy", "strict"], ["predict", "--out", "OUT"]])
def test_rescore_and_predict_take_threads_as_run_does(monkeypatch, capsys, tmp_path, command):
    # "No such option: --threads": a run's CPU predictions repeat bit for bit at its own thread count
    import torch

    from tests.fixtures import make_record

    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    _fails(monkeypatch, capsys, *args, "--results", tmp_path, "--threads", "0",
           names="--threads", phrase="a whole number from 1 to")
    records.write_record(make_record("unet"), tmp_path)
    before, set_to = torch.get_num_threads(), []
    monkeypatch.setattr(torch, "set_num_threads", lambda n, set_threads=torch.set_num_threads: set_to.append(n)
                        or set_threads(n))
    _fails(monkeypatch, capsys, *args, "--results", tmp_path, "--threads", "1", "--models", "swin_unet",
           names="--models swin_unet", phrase="no runs of it")
    assert set_to == [1, before]  # the command's own, then the caller's back


@pytest.mark.parametrize("command", [["rescore", "--policy", "strict"], ["predict", "--out", "OUT"]])
def test_rescore_and_predict_read_a_protocol_file_before_anything_else(monkeypatch, capsys, tmp_path, command):
    # it was read when the first run needing it came up, after "N run(s) to score" was printed
    from tests.fixtures import make_record

    records.write_record(make_record("unet"), tmp_path)
    bad = tmp_path / "mine.toml"
    bad.write_text("[train\n", encoding="utf-8")
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    monkeypatch.setattr(sys, "argv", ["bench", *args, "--results", str(tmp_path), "--protocol", str(bad)])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    assert info.value.code == 2 and err.startswith(f"error: {bad}: invalid TOML") and err.count("\n") == 1, err
    assert out == "" and not (tmp_path / "out").exists()


def test_unknown_protocol_file(tmp_path):
    _raises(lambda: load_protocol(tmp_path / "mine.toml"), names=tmp_path / "mine.toml", phrase="not found")


# --- a results folder that is not writable ---------------------------------------------------


def test_run_into_unwritable_results(monkeypatch, capsys, unwritable):
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--results",
           unwritable, *FAST, names=unwritable, phrase="not writable")


def test_results_is_a_file(monkeypatch, capsys, tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("x", encoding="utf-8")
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--results",
           path, *FAST, names=path, phrase="is a file, not a folder")


def test_results_is_a_file_in_a_dry_run_too(monkeypatch, capsys, tmp_path):
    """--dry-run --results FILE noted that the synthetic data was not written under FILE, then failed on
    "FILE/runs/<run id>/.claim: Not a directory"; it is bench run's own error, said first."""
    path = tmp_path / "results.txt"
    path.write_text("x", encoding="utf-8")
    args = ["run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--results", path, *FAST, "--dry-run"]
    _fails(monkeypatch, capsys, *args, names=path, phrase="is a file, not a folder; choose another --results")
    assert "note:" not in run_bench_here(monkeypatch, capsys, *args, check=False).stdout


@pytest.mark.parametrize("folder", ["records", "runs"])
def test_a_file_in_place_of_what_bench_run_writes_into_fails_before_training(monkeypatch, capsys, tmp_path, folder):
    """records/ a file (or read-only): every run of the grid trained, then failed to write its record, blaming
    the disk ("cannot write (File exists); free space"). As bench rescore does, the folders are tried first:
    one error, before synthetic data is written or anything trains (--dry-run names it too, writing nothing)."""
    (tmp_path / folder).write_text("x", encoding="utf-8")
    run = ["run", "--models", "unet", "--seeds", "0,1", "--dataset", "synapse", "--synthetic", "--results", tmp_path,
           *FAST]
    for dry in ([], ["--dry-run"]):
        _fails(monkeypatch, capsys, *run, *dry, names=tmp_path / folder,
               phrase=": is a file, not a folder; choose another --results")
    assert not (tmp_path / "synthetic").exists() and not list(tmp_path.rglob("*.pt"))


def test_profile_into_unwritable_results(monkeypatch, capsys, unwritable):
    _fails(monkeypatch, capsys, "profile", "--models", "unet", "--tiny", "--img-size", "32", "--no-timing",
           "--results", unwritable, names=unwritable, phrase="not writable")


def test_report_out_into_unwritable_folder(monkeypatch, capsys, tmp_path, unwritable):
    from tests.fixtures import make_record

    records.write_record(make_record(), tmp_path)
    _fails(monkeypatch, capsys, "report", "--results", tmp_path, "--out", unwritable / "report.md",
           names=unwritable, phrase="not writable")


def test_report_out_is_a_folder(monkeypatch, capsys, tmp_path):
    from tests.fixtures import make_record

    records.write_record(make_record(), tmp_path / "res")
    folder = tmp_path / "out"
    folder.mkdir()
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "res", "--out", folder, names=folder,
           phrase="is a folder")
    assert not (tmp_path / "out_files").exists()  # no plots beside a report that was never written


def test_synth_into_unwritable_folder(monkeypatch, capsys, unwritable):
    _fails(monkeypatch, capsys, "data", "synth", "--like", "isic", "--out", unwritable / "isic",
           names=unwritable, phrase="not writable")


def test_record_write_into_unwritable_folder(unwritable):
    from tests.fixtures import make_record

    _raises(lambda: records.write_record(make_record(), unwritable), names=unwritable, phrase="cannot write")


# --- writes nothing half ---------------------------------------------------------------------


def test_failed_run_leaves_no_record(monkeypatch, capsys, data, tmp_path):
    """Training finishes, evaluation meets a bad test label (values only reading the volume shows):
    no record, so the run is not counted as finished and `bench run` tries it again. A truncated
    test volume is refused before anything trains (its header does not read)."""
    import h5py

    root = data("synapse")
    (root / ".bench-synthetic.json").unlink()  # data of one's own: edited synthetic data is warned of (not here)
    case = open_dataset("synapse", root).test_ids()[0]
    path = root / "test_vol_h5" / f"{case}.npy.h5"
    with h5py.File(path, "r+") as f:
        label = f["label"][()]
        label[0, 0, 0] = 14
        f["label"][...] = label
    res = tmp_path / "res"
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--data-root", root,
           "--results", res, *FAST, names=path, phrase="label values [14] outside 0..8")
    assert list((res / "runs").iterdir())  # it did train
    assert records.load(res).empty and not list((res / "records").glob("*"))
    _truncate(path)
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--data-root", root,
           "--results", tmp_path / "early", *FAST, names=path, phrase="truncated or corrupt")
    assert not (tmp_path / "early" / "runs").exists()


def test_corrupt_file_read_in_a_loader_worker(data, tmp_path):
    # The papers' protocols load in DataLoader workers, which re-raise with a traceback as the
    # message. A real process: workers left behind by the failed loader end with it.
    import os
    import subprocess

    assert load_protocol("synapse").train.num_workers > 0
    root = data("synapse")
    (root / ".bench-synthetic.json").unlink()  # data of one's own: edited synthetic data is warned of (not here)
    for path in (root / "train_npz").iterdir():
        _truncate(path)
    args = ["run", "--models", "unet", "--dataset", "synapse", "--data-root", root, "--results", tmp_path / "res",
            "--protocol", "synapse", "--img-size", "32", *QUICK]
    env = {k: v for k, v in os.environ.items() if k != "BENCH_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, encoding="utf-8")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {root / 'train_npz'}") and proc.stderr.count("\n") == 1, proc.stderr
    assert "truncated or corrupt" in proc.stderr


def test_a_set_key_a_model_lacks_stays_that_error_under_a_pretrained_protocol(tmp_path):
    """The check that the authors' file loads wrapped the --set error as the file's ("does not load into this
    configuration"), so a grid of several models lost its "--set goes to every model" advice."""
    from bench.registry import BuildError
    from bench.run import _check_init

    with pytest.raises(BuildError, match=r"^vmunet: no --set key 'encoder'"):
        _check_init("vmunet", ("vmamba", str(tmp_path / "vmamba_small_e238_ema.pth"), "0" * 16),
                    {"num_classes": 2, "in_chans": 3, "img_size": 64, "encoder": "classic"})


def test_an_error_of_any_bench_kind_from_a_loader_worker_is_its_own_line():
    """torch re-raises a worker's error as its type with the worker's traceback as its message: a label
    out of range (a DataError) printed 27 lines, where a plain BenchError printed one."""
    from torch._utils import ExceptionWrapper

    from bench.errors import DataError, one_line

    for kind in (BenchError, DataError):
        try:
            raise kind("case0005_slice000.npz: label values [20] outside 0..8")
        except kind:
            wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
        with pytest.raises(kind) as info:
            wrapped.reraise()
        assert str(info.value).count("\n") > 2  # the traceback, as torch gives it
        assert one_line(info.value) == "case0005_slice000.npz: label values [20] outside 0..8"
    # another library's words inside ours keep its lines (pandas': "...line 6, saw 5\n"): one line all the same
    assert one_line(BenchError("b.csv: not a readable baseline CSV (Error tokenizing data.\n  saw 5\n)")) == \
        "b.csv: not a readable baseline CSV (Error tokenizing data. saw 5 )"


def test_missing_pretrained_files_are_named_before_anything_runs(monkeypatch, capsys, tmp_path):
    # the synapse protocol starts vmunet and transunet from their authors' files: both named at once
    res = tmp_path / "res"
    err = _fails(monkeypatch, capsys, "run", "--models", "unet,vmunet,transunet", "--dataset", "synapse",
                 "--synthetic", "--results", res, names="vmunet: vmamba_small_e238_ema.pth",
                 phrase="pass --pretrained-dir DIR holding them, or --no-pretrained")
    assert "transunet: R50+ViT-B_16.npz" in err and not re.search(r"[(; ]unet:", err)  # U-Net has no file
    assert not any((res / d).exists() for d in ("runs", "records", "synthetic"))  # refused before data is written
    _fails(monkeypatch, capsys, "run", "--models", "swin_unet", "--dataset", "synapse", "--synthetic",
           "--results", res, "--pretrained-dir", tmp_path, names=f"not found in {tmp_path}",
           phrase="swin_unet: swin_tiny_patch4_window7_224.pth")


def test_nsd_tolerance_table_that_does_not_fit_the_dataset(monkeypatch, capsys, tmp_path):
    # organ-specific tolerances (U-Mamba style) written for other labels: named before anything trains
    path = tmp_path / "organs.toml"
    smoke = (Path(__file__).parents[1] / "bench" / "protocols" / "smoke.toml").read_text(encoding="utf-8")
    path.write_text(smoke.replace('name = "smoke"', 'name = "organs"')
                    + "\n[eval.nsd_tolerance]\nliver = 5.0\nspleen = 3.0\nlung = 2.0\n", encoding="utf-8")
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--results",
           tmp_path / "res", "--protocol", path, *QUICK, names="protocol 'organs' eval.nsd_tolerance on dataset 'synapse'",
           phrase="no tolerance for aorta, gallbladder, kidney_l, kidney_r, pancreas, stomach; 'lung' is not a class. "
                  "Classes: aorta, gallbladder, kidney_l, kidney_r, liver, pancreas, spleen, stomach")
    assert not (tmp_path / "res" / "runs").exists()


def test_a_misspelt_dataset_is_named_before_what_the_protocol_says_of_it(monkeypatch, capsys, tmp_path):
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "isic71", "--synthetic", "--results",
           tmp_path, "--protocol", "synapse", names="unknown dataset 'isic71'", phrase="did you mean 'isic1")


def test_protocol_written_for_another_dataset(monkeypatch, capsys, tmp_path):
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--dataset", "isic17", "--synthetic", "--results",
           tmp_path, "--protocol", "synapse", names="protocol 'synapse'", phrase="is written for synapse, not 'isic17'")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "synthetic").exists()  # refused before data is written


def test_a_run_failing_before_its_first_step_leaves_no_folder(monkeypatch, capsys, tmp_path):
    """From the session-25 notes: an ablation's --set value the forward refuses left runs/<id>/ holding an
    empty TensorBoard file, and every report after said that a run began there. A run failing after
    steps keeps its log and checkpoints: they say how it went, and --resume reads them."""
    from bench import run as run_module

    args = ["run", "--models", "vmunet", "--tiny", "--dataset", "synapse", "--synthetic", "--results", tmp_path, *FAST]
    code, err = _bench(monkeypatch, capsys, *args, "--set", "dims=[15, 32, 64, 128]")
    assert code == 2 and "failed at its first forward" in err, err
    assert list((tmp_path / "runs").iterdir()) == []

    def fails(*a, **kw):
        raise BenchError("evaluation failed")

    monkeypatch.setattr(run_module, "evaluate", fails)
    code, err = _bench(monkeypatch, capsys, *args)
    assert code == 2 and "evaluation failed" in err, err
    (run,) = (tmp_path / "runs").iterdir()
    assert list((run / "tb").glob("events.out.tfevents.*")) and list((run / "checkpoints").glob("*.pt"))
    assert not (run / ".claim").exists()
    kept = sorted(p.name for p in run.rglob("*"))

    def first_step_fails(*a, **kw):
        raise BenchError("failed at its first forward")

    monkeypatch.setattr(run_module, "train_model", first_step_fails)  # a later attempt keeps what earlier ones left
    code, err = _bench(monkeypatch, capsys, *args)
    assert code == 2 and "failed at its first forward" in err, err
    assert set(kept) <= {p.name for p in run.rglob("*")}


def test_a_failing_run_does_not_stop_the_grid(monkeypatch, capsys, tmp_path):
    """unet diverges (a non-finite loss): the grid stopped there, vmunet after it never ran, and a
    rerun met the same failure first, for good. Now the others run, the failure is named, the exit
    code says it, and the same command runs only what is missing."""
    from bench import run as run_module

    real = run_module.run_one

    def diverges(spec, **kw):
        if spec.model == "unet":
            raise BenchError("non-finite loss (nan) at epoch 0, step 1: training stopped")
        return real(spec, **kw)

    monkeypatch.setattr(run_module, "run_one", diverges)
    args = ["run", "--models", "unet,vmunet", "--dataset", "synapse", "--synthetic", "--results", tmp_path, *FAST]
    proc = run_bench_here(monkeypatch, capsys, *map(str, args), check=False)
    code, err = proc.returncode, proc.stderr
    assert code == 2
    assert re.search(r"synapse-smoke-unet-s0-\w+: FAILED: non-finite loss \(nan\)", err), err
    assert re.search(r"error: 1 of 2 run\(s\) failed \(synapse-smoke-unet-s0-\w+\), the others finished; the "
                     r"lines above say why, as does .*/runs/<run id>/run\.log of a run that began training", err), err
    assert [p.name.split("-")[2] for p in (tmp_path / "records").glob("*.json")] == ["vmunet"]
    # the grid's position, then its summary and the next command
    assert re.search(r"^\[1/2\] synapse-smoke-unet-s0-\w+: training$", proc.stdout, re.M), proc.stdout
    assert proc.stdout.splitlines()[-1] == (f"bench run: 1 finished, 1 failed; records "
                                            f"in {tmp_path / 'records'}; next: bench report --results {tmp_path}")
    # the failure's reason kept beside the run (stderr is gone by the time `bench report` asks), with the time
    (log,) = (tmp_path / "runs").glob("synapse-smoke-unet-s0-*/run.log")
    lines = log.read_text(encoding="utf-8").splitlines()
    assert [line.split("  ", 1)[1].split(":")[0] for line in lines] == [f"[1/2] {log.parent.name}", *[log.parent.name] * 2]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  ", lines[2]) and "FAILED: non-finite loss (nan)" in lines[2]
    # what the run was, as its board row would show it: a report names the run by it, having no record
    assert lines[1].endswith(f"{log.parent.name}: settings: unet (tiny) · off-protocol: img_size=32, max_iterations=2")
    (done,) = (tmp_path / "runs").glob("synapse-smoke-vmunet-s0-*/run.log")
    said = [line.split("  ", 1)[1] for line in done.read_text(encoding="utf-8").splitlines()]
    assert said[0] == f"[2/2] {done.parent.name}: training" and said[-1].startswith(f"{done.parent.name}: "), said

    def out_of_memory(spec, **kw):  # not a BenchError: a bug or the machine, so its traceback is shown
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run_module, "run_one", out_of_memory)
    code, err = _bench(monkeypatch, capsys, *args)
    assert code == 2 and "Traceback (most recent call last)" in err
    assert re.search(r"unet-s0-\w+: FAILED: RuntimeError: CUDA out of memory", err), err
    monkeypatch.setattr(run_module, "run_one", real)
    code, err = _bench(monkeypatch, capsys, *args)
    assert code == 0, err
    assert sorted(p.name.split("-")[2] for p in (tmp_path / "records").glob("*.json")) == ["unet", "vmunet"]


def test_a_grid_failing_on_its_data_does_not_offer_resume(monkeypatch, capsys, tmp_path):
    """Fixed data has another content id, so its runs have new ids: --resume, which the closing line
    suggested, continues none of them. Other failures keep the hint, also beside one on the data."""
    from bench import run as run_module
    from bench.errors import DataError

    args = ["run", "--models", "unet,vmunet", "--dataset", "synapse", "--synthetic", "--results", tmp_path, *FAST]
    data_said = ("after fixing the data, the same command trains them afresh (under new run ids: --resume cannot "
                 "continue them)")
    resume_said = "--resume continues a failed one from its last checkpoint"
    # errors by model; a model not named "finishes" (None: as on a rank other than 0)
    for errors, said in (({"unet": DataError}, data_said), ({"unet": BenchError}, resume_said),
                         ({"unet": DataError, "vmunet": BenchError}, resume_said)):
        def fails(spec, errors=errors, **kw):
            if spec.model in errors:
                raise errors[spec.model]("labelsTr/a.nii.gz: label values [7] outside 0..8")

        monkeypatch.setattr(run_module, "run_one", fails)
        code, err = _bench(monkeypatch, capsys, *args)
        assert code == 2 and said in err, err
        assert f"{len(errors)} of 2 run(s) failed" in err, err
        assert ("--resume continues" in err) == (said == resume_said), err


def _two_channel_pngs(folder: Path) -> Path:
    """2-D nnU-Net data whose cases have two grey channels (_0000 and _0001 PNGs)."""
    root = synthesize("nnunet", folder, dims=2, n_cases=5, size=32)
    for first in (root / "imagesTr").glob("*_0000.png"):
        shutil.copy(first, first.with_name(first.name.replace("_0000", "_0001")))
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "T1", "1": "T2"}}), encoding="utf-8")
    return root


def test_a_grid_names_every_model_that_cannot_read_the_datas_channels(tmp_path):
    """--models all on 2-channel data stopped at the first model refusing it, naming it alone."""
    from bench.run import plan_grid

    root = _two_channel_pngs(tmp_path / "two")
    plan = lambda models: plan_grid(models=models, dataset="nnunet", protocol=load_protocol("smoke"),  # noqa: E731
                                    seeds=[0], data_root=root, synthetic=False, results_dir=tmp_path / "r", tiny=True)
    with pytest.raises(BenchError) as info:
        plan("all")
    assert str(info.value) == (
        f"{root}: 2-channel images, which 4 of the 6 models cannot read (their stems take the channels in brackets; "
        "a 1-channel image is repeated): swin_unet (3), transunet (3), vmunet (3), vmunet_v2 (3); "
        "--models lightm_unet,unet take 2 channels")
    with pytest.raises(BenchError, match=r"none of those asked takes 2 channels \(`bench models` lists the others\)$"):
        plan("vmunet,transunet")
    with pytest.raises(BenchError, match=r"^vmunet: its stem takes 3-channel images"):  # one model: its own words
        plan("vmunet")
    # one refused of two asked is still a grid: the model that can read the data is named
    with pytest.raises(BenchError, match=rf"^{re.escape(str(root))}: 2-channel images, which 1 of the 2 models "
                                         r"cannot read .*: vmunet \(3\); --models unet take 2 channels$"):
        plan("unet,vmunet")


def test_bench_run_names_every_model_that_cannot_read_the_data_at_once(monkeypatch, capsys, tmp_path):
    """bench run plans model by model, so --models all on 2-channel data named swin_unet alone; dropping it
    gave transunet's error, and so on, four errors one after another. It is plan_grid's one error."""
    root = _two_channel_pngs(tmp_path / "two")
    run = ["run", "--dataset", "nnunet", "--data-root", root, "--protocol", "smoke", "--tiny", "--results", tmp_path / "r"]
    code, err = _bench(monkeypatch, capsys, *run, "--models", "all")  # after swin_unet's warning of its window
    assert code == 2 and err.splitlines()[-1] == (
        f"error: {root}: 2-channel images, which 4 of the 6 models cannot read (their stems take the channels in "
        "brackets; a 1-channel image is repeated): swin_unet (3), transunet (3), vmunet (3), vmunet_v2 (3); "
        "--models lightm_unet,unet take 2 channels"), err
    _fails(monkeypatch, capsys, *run, "--models", "vmunet", names="vmunet: its stem takes 3-channel images",
           phrase="this model cannot read this data's channels")  # one model: its own words


def test_a_grid_with_pretrained_files_names_the_datas_channels_not_the_file(tmp_path):
    """A model started from its authors' file is built to load it at planning: on data its stem cannot
    read, the file is not at fault, and the grid's one message names every such model."""
    from bench.run import plan_grid

    root = _two_channel_pngs(tmp_path / "two")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "vmamba_small_e238_ema.pth").write_bytes(b"never loaded: the stem refuses the data first")
    with pytest.raises(BenchError) as info:
        plan_grid(models="unet,vmunet", dataset="nnunet", seeds=[0], data_root=root, synthetic=False,
                  protocol=load_protocol("smoke").with_overrides(pretrained=True), results_dir=tmp_path / "r",
                  tiny=True, pretrained_dir=weights)
    said = str(info.value)
    assert said.startswith(f"{root}: 2-channel images, which 1 of the 2 models cannot read"), said
    assert said.endswith("--models unet take 2 channels") and "does not load" not in said, said


def test_a_cli_fuzz_finds_no_traceback_and_no_empty_value_taken_for_none(monkeypatch, capsys, tmp_path):
    """A CLI fuzz: `--protocol ""` (an unset shell variable) trained the dataset's default recipe for hours
    and `--shard ""` ran the whole grid in every job; negative or huge seeds and thread counts, names too
    long for the file system and sizes beyond the memory ended in tracebacks, some after training began;
    a baseline row of tolerance inf passed everything."""
    run = ["run", "--models", "unet", "--tiny", "--dataset", "isic17", "--synthetic", "--results", tmp_path / "r", *FAST]
    for option in ("--protocol", "--shard", "--seeds", "--results"):
        _fails(monkeypatch, capsys, *run, option, "", names=option, phrase="an empty value ('';")
    _fails(monkeypatch, capsys, *run, "--seeds=", names="--seeds", phrase="an empty value ('--seeds=')")
    for seed in ("-1", str(2**32), "99999999999999999999"):
        _fails(monkeypatch, capsys, *run, "--seeds", seed, names=seed, phrase="error: --seeds: expected a whole "
                                                                            "number from 0 to 4294967295")  # the option
    threadless = [a for i, a in enumerate(run) if "--threads" not in (a, run[i - 1])]  # an option is given once
    _fails(monkeypatch, capsys, *threadless, "--threads", "99999999999999999999", names="--threads", phrase="from 1 to ")
    proto = tmp_path / "big-seed.toml"
    proto.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8").replace("seed = 0", f"seed = {2**40}"),
                     encoding="utf-8")
    assert f"seed = {2**40}" in proto.read_text(encoding="utf-8")
    _fails(monkeypatch, capsys, *run[:-len(FAST)], "--protocol", proto, names=proto,
           phrase="seed: expected a whole number from 0 to 4294967295")
    assert not (tmp_path / "r" / "records").exists()  # all before anything ran
    long = tmp_path / ("a" * 300)
    _fails(monkeypatch, capsys, "report", "--results", long, names=long, phrase="File name too long")
    _fails(monkeypatch, capsys, "profile", "--models", "unet", "--tiny", "--no-timing", "--img-size", "1000000",
           "--results", tmp_path / "p", names="you tried to allocate", phrase="error: out of memory (")
    _fails(monkeypatch, capsys, "data", "synth", "--like", "isic", "--out", tmp_path / "s", "--option", "min_size=1",
           names="min_size", phrase="takes a whole number >= 2")
    _fails(monkeypatch, capsys, "run", "--models", names="bench run --help", phrase="requires an argument")
    from tests.fixtures import make_record

    records.write_record(make_record("unet"), tmp_path / "runs")
    baseline = tmp_path / "baseline.csv"
    for value, tol, said in (("0.5", "inf", "tolerance inf; every row needs a finite tolerance"),
                             ("inf", "0.01", "value inf; expected a finite number")):
        baseline.write_text("dataset,protocol,policy,model,metric,value,tolerance\n"
                            f"isic17,smoke,legacy-isic,unet,dice,{value},{tol}\n", encoding="utf-8")
        _fails(monkeypatch, capsys, "check", "--baseline", baseline, "--results", tmp_path / "runs", names="line 2",
               phrase=said)


def test_inputs_through_links_to_nothing_are_named_as_such(monkeypatch, capsys, tmp_path, clean):
    """The README promises a link to nothing is named as such: --baseline, --protocol, --published-file,
    --data-root and --weights said "not found" of one (--results and --out did name it), and `bench report
    --out LINK` replaced the link with the report."""
    gone = tmp_path / "unmounted"
    for name in ("D", "D.toml"):
        (tmp_path / name).symlink_to(gone)
    link = tmp_path / "D"
    said = f"{link}: a link to {gone}, which does not exist (a disk not mounted?)"
    from tests.fixtures import make_record

    records.write_record(make_record("unet"), tmp_path / "runs")
    _fails(monkeypatch, capsys, "check", "--baseline", link, "--results", tmp_path / "runs",
           names="baseline file not found", phrase=said)
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--dataset", "isic17", "--synthetic",
           "--protocol", tmp_path / "D.toml", names="protocol file not found", phrase="which does not exist")
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--dataset", "isic17", "--data-root", link,
           "--results", tmp_path / "r", names="dataset root not found", phrase=said)
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--dataset", "isic17", "--data-root", clean["isic"],
           "--weights", link, "--results", tmp_path / "r", names="--weights", phrase=said)
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "runs", "--published-file", link,
           names="published numbers", phrase=said)
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "runs", "--out", link, names=link,
           phrase="choose another --out")
    assert link.is_symlink()
    (tmp_path / "folder.csv").mkdir()
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "runs", "--published-file", tmp_path / "folder.csv",
           names="folder.csv", phrase="a folder; expected a file")
    (tmp_path / "folder.toml").mkdir()
    _fails(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--dataset", "isic17", "--synthetic",
           "--protocol", tmp_path / "folder.toml", names="folder.toml", phrase="a folder; expected a protocol file")


def test_only_system_errors_of_the_command_lines_paths_are_one_line(monkeypatch, tmp_path):
    """A review: every OSError naming a file became one line, a bug in bench's own paths included; an
    error of two paths named one; ENOMEM without a file kept its traceback."""
    import errno

    from bench.cli.console import _system_line

    monkeypatch.setattr(sys, "argv", ["bench", "report", "--results", str(tmp_path / "r"), f"--out={tmp_path / 'o.md'}"])
    inside = OSError(errno.ENAMETOOLONG, "File name too long", str(tmp_path / "r" / "records" / "x.json"))
    assert _system_line(inside) == f"error: {inside.filename}: File name too long"
    moved = OSError(errno.EXDEV, "Invalid cross-device link", str(tmp_path / "o.md.tmp"), None, str(tmp_path / "o.md"))
    assert _system_line(moved) is None  # the temp file is no path of the command line
    moved = OSError(errno.EXDEV, "Invalid cross-device link", str(tmp_path / "o.md"), None, "/elsewhere/o.md")
    assert _system_line(moved) == f"error: {tmp_path / 'o.md'} (and /elsewhere/o.md): Invalid cross-device link"
    assert _system_line(OSError(errno.EACCES, "Permission denied", "/usr/lib/bench-cache/x")) is None  # a bug's
    assert _system_line(OSError(errno.ENOMEM, "Cannot allocate memory")).startswith("error: out of memory (")
    assert _system_line(ValueError("x")) is None


def test_an_option_of_one_value_given_twice_is_refused(monkeypatch, capsys, tmp_path):
    """A reviewer's `bench report --results received --results rerun` reported the second folder alone (click
    keeps the last value without a word); options that take several (--set, rescore's --data-root) and flags
    given both ways (--resume --no-resume) stay as they were."""
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "a", f"--results={tmp_path / 'b'}",
           names=f"--results {tmp_path / 'a'} and --results {tmp_path / 'b'}", phrase="the option takes one value")
    _fails(monkeypatch, capsys, "data", "synth", "--like", "isic", "--out", tmp_path / "s", "--seed", "1", "--seed", "2",
           names="--seed 1 and --seed 2", phrase="give it once")
    err = _fails(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--synthetic", "--protocol", "smoke",
                 "--results", tmp_path / "r", "--resume", "--no-resume", "--set", "widths=[8, 16]", "--set",
                 "depth=2", "--threads", "1", "--threads", "1", names="--threads 1 and --threads 1", phrase="give it once")
    assert "--set" not in err and "--resume" not in err
    # a flag given twice means what it means once (a mutation audit: the check could have counted flags too)
    (tmp_path / "c" / "records").mkdir(parents=True)
    proc = run_bench_here(monkeypatch, capsys, "clean", "--results", tmp_path / "c", "--dry-run", "--dry-run")
    assert "nothing to delete" in proc.stdout


def test_the_repeated_option_check_takes_the_command_typer_builds(monkeypatch, capsys, tmp_path):
    """The check built typer's click command a second time at every start-up (about 20 ms of `bench report --help`);
    it now runs in the group typer builds, once, and a Python caller of the app (typer's CliRunner) is refused too."""
    import typer.main
    from typer.testing import CliRunner

    from bench.cli import app

    built = []
    get_command = typer.main.get_command
    monkeypatch.setattr(typer.main, "get_command", lambda typer_app: built.append(typer_app) or get_command(typer_app))
    assert "--results" in run_bench_here(monkeypatch, capsys, "report", "--help").stdout and len(built) == 1
    _fails(monkeypatch, capsys, "report", "--results", tmp_path / "a", "--results", tmp_path / "b",
           names=f"--results {tmp_path / 'a'} and --results {tmp_path / 'b'}", phrase="give it once")
    out = CliRunner().invoke(app, ["report", "--columns", "ci", "--columns", "cost"])
    assert isinstance(out.exception, BenchError) and "--columns ci and --columns cost" in str(out.exception)
