"""bench.report is a package whose __init__ loads its submodules on first use: the CLI starts without
pandas, and every name callers import from bench.report is the object it names, not a submodule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bench.report as report


def test_importing_the_cli_loads_no_pandas():
    code = "import sys, bench.cli; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         encoding="utf-8").stdout
    assert out.strip() == "False"


def test_help_and_a_usage_error_load_no_torch():
    """The console entry point imported bench.distributed (torch, 1-2 s) before parsing anything."""
    code = ("import sys; from bench.cli.console import main; sys.argv = ['bench'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    for args, code_expected in ((["--help"], 0), (["run", "--modls", "x"], 2)):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                             encoding="utf-8").stdout
        assert out.splitlines()[-1] == f"{code_expected} False", out


def test_every_reexported_name_is_its_submodules_object():
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(report.__path__)}
    assert not submodules & set(report._SUBMODULE)  # importing such a submodule would replace the name with it
    for name, module in report._SUBMODULE.items():
        value = getattr(report, name)
        home = sys.modules[module if "." in module else f"bench.report.{module}"]
        assert value is getattr(home, name), name
        assert type(value).__name__ != "module", name
    assert set(report.__all__) <= set(report._SUBMODULE) <= set(dir(report))


def test_boards_name_synapse_organs_without_the_data_readers():
    """Organ names are defined once (bench.organs), shared by the Synapse reader and the boards; the
    boards read them without loading torch or the readers (h5py)."""
    code = ("import sys; from bench.report.boards import class_display\n"
            "print(class_display('kidney_l', 'synapse'), [m for m in ('torch', 'h5py', 'bench.data') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         encoding="utf-8").stdout
    assert out.strip() == "Kidney(L) []"


# `bench ARGS` for each ARGS of the JSON list argv[2] in one process, each one's exit code and a rule after its output;
# argv[1] "blocked": any import of torch raises (a record reader that needs it fails, or falls back otherwise)
_COMMANDS = """
import json, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] == 'torch':
            raise ImportError(f'import {name}: by a command that only reads records')
if sys.argv[1] == 'blocked':
    sys.meta_path.insert(0, NoTorch())
from bench.cli.console import main
for args in json.loads(sys.argv[2]):
    sys.argv = ['bench', *args]
    try:
        main()
    except SystemExit as exc:
        print('exit', exc.code, flush=True)
    print('--------', *args, flush=True)
print('torch loaded:', 'torch' in sys.modules)
"""


def _reading_results(tmp_path):
    """Records of two boards as `bench run` writes them (recipes: --format methods), a rescore, a tiny run and a
    `bench profile` record: every section of a report has something to say."""
    from bench import cost, profiles
    from bench.protocol import load_protocol
    from bench.records import write_record
    from tests.fixtures import make_record

    def record(model, dataset, seed, **kw):
        rec = make_record(model, dataset, seed, **kw)
        rec["protocol"]["recipe"] = load_protocol(rec["protocol"]["name"]).to_record()["recipe"]
        return rec

    results = tmp_path / "results"
    for model in ("unet", "vmunet"):
        for seed in (0, 1):
            write_record(record(model, "synapse", seed, dice=0.7 + 0.05 * seed + 0.02 * (model == "vmunet")), results)
    write_record(record("unet", "synapse", 0, model_config={"widths": [8, 16, 32, 64]}), results)  # "unet (tiny)"
    source = record("unet", "isic17", 0)
    write_record(source, results)
    write_record({**record("unet", "isic17", 0), "run_id": f"{source['run_id']}.strict", "policy": "strict",
                  "rescored_from": source["run_id"]}, results)
    profiles.write_profile(cost.profile_model("unet", img_size=32, tiny=True, timing=False), results)
    return results


def test_report_and_check_import_no_torch_and_say_the_same_without_it(tmp_path):
    """`bench report` (every format, the plots) and `bench check` read JSON records and write tables: they
    imported torch (1.5 s of a 4 s report) through bench.cost and the model registry. Run with torch blocked,
    they write what they write with it."""
    import json

    results = _reading_results(tmp_path)
    said, files = {}, {}
    for mode in ("free", "blocked"):
        out = tmp_path / mode
        out.mkdir()
        commands = [["report", "--results", results, "--out", out / "report.md", "--published", "--reference", "unet"],
                    ["report", "--results", results, "--out", out / "paper.md", "--plot-format", "svg",
                     "--plot-style", "paper", "--columns", "paper"],
                    ["report", "--results", results, "--format", "csv"],
                    ["report", "--results", results, "--format", "latex", "--published", "--reference", "unet"],
                    ["report", "--results", results, "--format", "cases", "--models", "vmunet"],
                    ["report", "--results", results, "--format", "methods"],
                    ["report", "--results", results, "--format", "methods", "--out", out / "methods.tex"],
                    ["check", "--results", results, "--baseline", out / "baseline.csv", "--update"],
                    ["check", "--results", results, "--baseline", out / "baseline.csv"],
                    ["report", "--results", results, "--models", "swin_unet"]]  # an error: no runs of it
        proc = subprocess.run([sys.executable, "-c", _COMMANDS, mode, json.dumps(commands, default=str)],
                              capture_output=True, text=True, encoding="utf-8")
        assert proc.returncode == 0, proc.stderr
        said[mode] = proc.stdout.replace(str(out), "OUT"), proc.stderr.replace(str(out), "OUT")
        # the plots by name (their files carry random ids), the text files whole
        files[mode] = {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8")
                       if p.suffix in (".md", ".tex", ".csv") else "" for p in sorted(out.rglob("*")) if p.is_file()}
    (stdout, stderr), (_, blocked_stderr) = said["free"], said["blocked"]
    assert stdout.endswith("torch loaded: False\n"), stdout[-2000:]
    assert "by a command that only reads records" not in blocked_stderr
    assert said["blocked"] == said["free"]
    assert files["blocked"] == files["free"]
    # what the comparison covers: every command ran to its end, plots drawn, the error said
    assert stdout.count("exit 0") == 9 and "exit 2" in stdout and "swin_unet: no runs of it" in stderr
    assert {Path(name).suffix for name in files["free"]} == {".md", ".png", ".svg", ".tex", ".csv"}
    assert "unet (tiny)" in files["free"]["report.md"] and "## Cost" in files["free"]["report.md"]
    assert "Scores under strict come from evaluating again the weights trained in the legacy-isic runs" in stdout
