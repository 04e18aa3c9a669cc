"""The README's "From Python" section runs as written: a notebook user builds, scores, trains,
tabulates and profiles through the functions the CLI uses."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_python_section_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("### From Python", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    monkeypatch.chdir(tmp_path)  # its results folder is relative
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert "'dice': 0.8333333333333334" in out  # 2·10/(12+12): a 12-wide square shifted by 2
    assert "| unet (tiny)" in out and "| vmunet (tiny)" in out and "DSC 95% CI" in out
    tests = namespace["stats"].paired_tests(namespace["one"], "unet", policy="legacy-synapse")
    assert list(tests["reference"].unique()) == ["unet (tiny)"] and set(tests["metric"]) == {"dice", "hd95"}
    assert len(list((tmp_path / "results" / "nb" / "records").glob("*.json"))) == 2
    assert not namespace["model"].training  # a copied forward gives one answer, not drop-path's draw
