"""bench.report is a package whose __init__ loads its submodules on first use: the CLI starts without
pandas, and every name callers import from bench.report is the object it names, not a submodule."""

from __future__ import annotations

import subprocess
import sys

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
