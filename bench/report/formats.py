"""The report's output formats (``bench report --format``).

Apart from the rest of ``bench.report`` so that ``bench.cli`` names them without importing pandas."""

from __future__ import annotations

from enum import Enum


class ReportFormat(str, Enum):
    """``bench report --format``: Markdown, LaTeX, the boards as one CSV, the case rows as CSV, or a paper's
    Methods paragraphs."""

    md = "md"
    latex = "latex"
    csv = "csv"
    cases = "cases"  # CSV of every run × case × class row (write_report only: it needs the case rows)
    methods = "methods"  # Markdown prose of what ran, per board (write_report only: it reads the full records)
