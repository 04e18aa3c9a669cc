"""The one build step pyproject.toml cannot say: the wheel's copy of the papers' numbers.

results/published.csv is the one real file (DESIGN.md keeps it with the committed results); an
installed bench has no results/ folder, so the wheel carries a copy as bench/published.csv. A link in
bench/ did this before, but Windows checks links out as a file holding the link's path.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # `pip install -e`: the checkout's bench reads results/
            return
        self.mkpath(str(Path(self.build_lib, "bench")))
        self.copy_file("results/published.csv", str(Path(self.build_lib, "bench", "published.csv")))


setup(cmdclass={"build_py": BuildPy})
