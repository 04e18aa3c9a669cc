"""bench.report is a package whose __init__ loads its submodules on first use: the CLI starts without
pandas, and every name callers import from bench.report is the object it names, not a submodule."""

from __future__ import annotations

import subprocess
import sys

import bench.report as report


def test_importing_the_cli_loads_no_pandas():
    code = "import sys, bench.cli; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


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
