"""The report's output formats (``bench report --format``).

Apart from the rest of ``bench.report`` so that ``bench.cli`` names them without importing pandas."""

from __future__ import annotations

from enum import Enum


class ReportFormat(str, Enum):
    """``bench report --format``: Markdown, LaTeX, the boards as one CSV, or the case rows as CSV."""

    md = "md"
    latex = "latex"
    csv = "csv"
    cases = "cases"  # CSV of every run × case × class row (write_report only: it needs the case rows)
