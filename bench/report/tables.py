"""Generic Markdown (pipe) and LaTeX (booktabs) table writers for string tables."""

from __future__ import annotations

import collections
import re
import warnings

import pandas as pd

from bench.errors import few


def as_counts(table: pd.DataFrame, columns) -> None:
    """``table``'s count ``columns`` (those it has) as integers in place, empty where unknown: a CSV reads
    "49545216", not "49545216.0" (a float column's spelling), and pandas loads them as int64."""
    for col in columns:
        if col in table:
            table[col] = pd.to_numeric(table[col]).round().astype("Int64")


def _bold_cells(table: pd.DataFrame) -> set[tuple[int, int]]:
    """(row, column) positions of ``table.attrs["best"]`` (column name -> row positions): set in bold."""
    best = table.attrs.get("best", {})
    return {(i, table.columns.get_loc(head)) for head, rows in best.items() if head in table for i in rows}


def md_table(table: pd.DataFrame, colalign: list[str] | None = None) -> str:
    """A pipe table whose cells may hold ``|`` (a model config such as ``norm="a|b"``): escaped, so
    the columns stay where they are; the cells of ``table.attrs["best"]`` in bold."""
    bold = _bold_cells(table)
    esc = lambda v: v.replace("|", "\\|") if isinstance(v, str) else v  # noqa: E731
    table = table.rename(columns=esc).map(esc)
    if bold:
        table = table.copy()
        for i, j in bold:
            table.iat[i, j] = f"**{table.iat[i, j]}**"
    return table.to_markdown(index=False, disable_numparse=True, **({"colalign": colalign} if colalign else {}))


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "·": r"$\cdot$", "×": r"$\times$", "−": r"$-$",
    "–": "--", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "§": r"\S{}", "—": "---", "⁰": r"$^0$", "¹": r"$^1$", "²": r"$^2$", "³": r"$^3$", "⁴": r"$^4$", "⁵": r"$^5$",
    "⁶": r"$^6$", "⁷": r"$^7$", "⁸": r"$^8$", "⁹": r"$^9$", "`": "",  # a Markdown code mark
    "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}", '"': r"\texttt{\char34}",  # straight quote, any encoding
    "≥": r"$\geq$", "≤": r"$\leq$", "≠": r"$\neq$", "…": r"\ldots{}", "→": r"$\rightarrow$",
    "μ": r"$\mu$", "µ": r"$\mu$", "𝜇": r"$\mu$", "𝝁": r"$\mu$",  # Greek mu, the micro sign, math italic and bold
    ">=": r"$\geq$", "<=": r"$\leq$",  # pairs: pdflatex sets them as the characters one by one
}  # fmt: skip
_LATEX_TOKEN = re.compile(r">=|<=|.", re.S)


def latex_escape(text: str) -> str:
    """``text`` for LaTeX's text mode: its special characters and pairs escaped, the symbols pdflatex cannot
    take raw set as math, hyphens kept hyphens, a pair of straight quotes (a label's json.dumps of a string)
    as TeX's ``quotes'' (one after a letter or digit opens none: 12" is inches; a lone one stays the character)."""
    text, out, opened = str(text), [], False
    for m in _LATEX_TOKEN.finditer(text):
        token = m.group()
        opens = not text[m.start() - 1:m.start()].isalnum() and '"' in text[m.end():]
        if token == '"' and (opened or opens):
            out.append("''" if opened else "``")
            opened = not opened
        elif token == "-" and text.startswith("-", m.end()):  # "--" is an en dash ("--reference"), "---" an em dash
            out.append("-{}")
        else:
            out.append(_LATEX_ESCAPES.get(token, token))
    return "".join(out)


_NEGATIVE = re.compile(r"(?<![^\s\[(])-(?=\.?\d)")  # a hyphen opening a number: at the start, after a space or bracket


def _cell(value: object) -> str:
    """A table cell escaped, a number's minus sign a minus ("-0.12", "[-1.5, 2.0]"): a hyphen is shorter."""
    return _NEGATIVE.sub(r"$-$", latex_escape(value))


def latex_header(extra: str = "", tables: bool = True) -> str:
    """The comment opening a LaTeX output (``bench report``'s, ``bench profile``'s): the packages it needs
    (``tables``: booktabs tables; the Methods text has none)."""
    packages = ("\\usepackage{booktabs} and \\usepackage{graphicx} (tables wider than the line are shrunk to it), and "
                if tables else "")
    return (f"% Requires {packages}\\usepackage[T1]{{fontenc}} for accented Latin-1 names; names outside Latin-1 need "
            "xelatex or lualatex." + (f" {extra}" if extra else ""))


def warn_outside_latin1(tex: str) -> None:
    """Said once per output: characters the escaper has no LaTeX for, beyond Latin-1, which pdflatex stops at."""
    beyond = sorted({ch for ch in tex if ord(ch) > 255})
    if beyond:
        warnings.warn(f"the LaTeX holds characters outside Latin-1 ({few(beyond, 10)}) that pdflatex cannot set: "
                      "compile it with xelatex or lualatex", stacklevel=3)


def _align(column: str) -> str:
    return "left" if column in ("Model", "Family", "Init") else "right"


def latex_table(title: str, note: str, name: str, table: pd.DataFrame, spec: str,
                 labels: collections.Counter) -> str:
    """A booktabs table captioned ``title. note`` (the title alone in a list of tables); its label
    from ``name`` ("tab:synapse-smoke-legacy-synapse"), numbered where ``labels`` has seen it."""
    label = "tab:" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    labels[label] += 1
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption[{{{latex_escape(title)}}}]{{{latex_escape(title)}. {latex_escape(note)}}}",  # {}: a ] in it
        f"\\label{{{label}{'' if labels[label] == 1 else f'-{labels[label]}'}}}",
        # shrunk to the line where wider (Synapse's board has ~26 columns), never enlarged
        "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(c) for c in table.columns) + " \\\\",
        "\\midrule",
    ]
    bold = _bold_cells(table)
    cell = lambda i, j, v: f"\\textbf{{{_cell(v)}}}" if (i, j) in bold else _cell(v)  # noqa: E731
    lines += [" & ".join(cell(i, j, v) for j, v in enumerate(row)) + " \\\\"
              for i, row in enumerate(table.itertuples(index=False, name=None))]  # plain tuples: any column names
    lines += ["\\bottomrule", "\\end{tabular}", "}", "\\end{table}"]
    return "\n".join(lines)
