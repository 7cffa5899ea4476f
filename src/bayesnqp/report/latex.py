"""LaTeX tables that drop into a paper: booktabs rules, a threeparttable note, a caption and a label.

Every table file under ``tables/`` is a complete ``table`` float (or a ``longtable`` for long tables);
``tables/tables.tex`` is a standalone document that ``\\input``s all of them and compiles with pdflatex.
The packages a paper needs are listed in :data:`PREAMBLE` (written, with comments, at the top of
tables.tex). Chinese names are written in pinyin (from the bundled geography) so that pdflatex can
typeset them; any other non-ASCII character is dropped with a note, never passed through to break the
build.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PREAMBLE = r"""% Packages the tables need (add them to your paper's preamble):
%   booktabs        \toprule, \midrule, \bottomrule
%   threeparttable  the note under each table (tablenotes), as wide as the table
%   graphicx        \resizebox for tables wider than the text (their note is a paragraph below)
%   longtable       tables longer than a page
%   array           wrapped columns of long, wide tables
%   pdflscape       long tables wider than the text are set on a landscape page
% Chinese names are written in pinyin, so pdflatex suffices (no xeCJK needed).
\usepackage{booktabs}
\usepackage{threeparttable}
\usepackage{graphicx}
\usepackage{longtable}
\usepackage{array}
\usepackage{pdflscape}
"""

# A table wider than this many columns (index included) is scaled to the text width.
WIDE_COLUMNS = 6
# Longer than this many rows: a longtable (breaks across pages) instead of a float.
LONG_ROWS = 45

_SPECIALS = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
             "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
             "<": r"$<$", ">": r"$>$", "|": r"$|$"}
_UNICODE = {"≤": r"$\leq$", "≥": r"$\geq$", "±": r"$\pm$", "×": r"$\times$", "−": "-", "–": "--", "—": "---",
            "ρ": r"$\rho$", "β": r"$\beta$", "σ": r"$\sigma$", "λ": r"$\lambda$", "γ": r"$\gamma$",
            "α": r"$\alpha$", "r̂": r"$\hat{r}$", "’": "'", "‘": "`", "“": "``", "”": "''", "…": r"\ldots{}",
            "°": r"$^\circ$", "·": r"$\cdot$", "→": r"$\rightarrow$", "²": r"$^2$"}


def _pinyin_map() -> dict[str, str]:
    """Chinese city and province names -> pinyin, from the bundled geography."""
    try:
        from ..data.geography import load_geography

        geo = load_geography().cities
    except Exception:  # noqa: BLE001 - no geography: nothing to map
        return {}
    out: dict[str, str] = {}
    for zh, py in zip(geo.get("province", []), geo.get("province_pinyin", [])):
        out[str(zh)] = str(py)
    for zh, py in zip(geo.get("name_zh", []), geo.get("pinyin", [])):
        out[str(zh)] = str(py)
    return out


_PINYIN: dict[str, str] | None = None


def to_ascii(text: str) -> str:
    """Chinese names to pinyin; accents stripped; any other non-ASCII character removed."""
    global _PINYIN
    if text.isascii():
        return text
    if _PINYIN is None:
        _PINYIN = _pinyin_map()
    for zh in sorted((k for k in _PINYIN if k in text), key=len, reverse=True):
        text = text.replace(zh, _PINYIN[zh])
    for k, v in _UNICODE.items():
        text = text.replace(k, "\x00" + v + "\x01")  # protected from escaping below
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if c.isascii())


def escape(text: object) -> str:
    """Text-mode LaTeX for one cell, caption or note: specials escaped, '<' as $<$, stars as superscripts."""
    s = to_ascii(str(text))
    parts = re.split(r"(\x00[^\x01]*\x01)", s)
    out = []
    for part in parts:
        if part.startswith("\x00"):
            out.append(part[1:-1])
            continue
        out.append("".join(_SPECIALS.get(ch, ch) for ch in part))
    s = "".join(out)
    # significance stars after a number: 0.0100*** -> 0.0100$^{***}$
    return re.sub(r"(?<=[0-9)\]])(\*+)", r"$^{\1}$", s)


def strip_table_number(caption: str) -> str:
    """'Table 3 - baseline' -> "Baseline (the paper's Table 3)": LaTeX numbers the tables itself, so a caption
    never starts with another number ('Table 1: Table 3')."""
    m = re.match(r"^\s*Table\s+(\d+[A-Za-z]?)( rebuilt)?\s*[-:–—]\s*(.*)$", caption, re.S)
    if not m:
        return caption.strip()
    rest = m.group(3).strip()
    return f"{rest[:1].upper() + rest[1:]} (the paper's Table {m.group(1)})"


@dataclass(frozen=True)
class LatexTable:
    """A formatted table (all cells strings) with what a paper needs around it."""

    stem: str
    caption: str
    cells: pd.DataFrame
    note: str = ""
    index_label: str = ""
    show_index: bool = True

    @property
    def label(self) -> str:
        return "tab:" + re.sub(r"[^a-z0-9]+", "-", self.stem.lower()).strip("-")

    def render(self) -> str:
        cells = self.cells
        cols = [str(c) for c in cells.columns]
        ncols = len(cols) + (1 if self.show_index else 0)
        align = ("l" if self.show_index else "") + "c" * len(cols)
        head = ([escape(self.index_label)] if self.show_index else []) + [escape(c) for c in cols]
        body = []
        for label, row in cells.iterrows():
            vals = ([escape(label)] if self.show_index else []) + [escape(v) for v in row.tolist()]
            body.append(" & ".join(vals) + r" \\")
        caption = escape(strip_table_number(self.caption))
        note = escape(self.note) if self.note else ""
        wide = ncols > WIDE_COLUMNS or _longest(cells, self.show_index) * ncols > 110
        if len(cells) > LONG_ROWS:
            # a long and wide table turns the page (pdflscape) and wraps its cells in equal columns: a
            # longtable cannot be scaled like a float
            if wide:
                # equal shares of the page less the column gaps (2 x 3pt each); long ids may break after
                # an underscore, or they run past their column
                width = rf"\dimexpr(\linewidth-{6 * ncols}pt)/{ncols}\relax"
                align = (r">{\raggedright\arraybackslash}" + f"p{{{width}}}") * ncols
                body = [line.replace(r"\_", r"\_\allowbreak{}") for line in body]
            lines = [r"\begin{landscape}" if wide else "", r"{\scriptsize",
                     r"\setlength{\tabcolsep}{3pt}" if wide else "", rf"\begin{{longtable}}{{{align}}}",
                     rf"\caption{{{caption}}}\label{{{self.label}}} \\", r"\toprule", " & ".join(head) + r" \\",
                     r"\midrule", r"\endfirsthead", r"\toprule", " & ".join(head) + r" \\", r"\midrule",
                     r"\endhead", *body, r"\bottomrule"]
            if note:
                lines.append(rf"\multicolumn{{{ncols}}}{{p{{0.9\linewidth}}}}{{\footnotesize Note: {note}}} \\")
            lines += [r"\end{longtable}", "}", r"\end{landscape}" if wide else ""]
            return "\n".join(x for x in lines if x) + "\n"
        tabular = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule",
                   *body, r"\bottomrule", r"\end{tabular}"]
        if wide:
            # scaled to the text width rather than running off the page; threeparttable cannot sit around a
            # \resizebox (it redefines tabular), so the note is a text-wide paragraph below
            lines = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{self.label}}}",
                     # shrink to the text width, never enlarge a table that fits
                     r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", *tabular, "}"]
            if note:
                lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize Note: " + note
                          + r"\end{minipage}"]
            return "\n".join([*lines, r"\end{table}"]) + "\n"
        lines = [r"\begin{table}[htbp]", r"\centering", r"\footnotesize", r"\begin{threeparttable}",
                 rf"\caption{{{caption}}}", rf"\label{{{self.label}}}", *tabular]
        if note:
            lines += [r"\begin{tablenotes}[flushleft]", r"\footnotesize", rf"\item Note: {note}",
                      r"\end{tablenotes}"]
        lines += [r"\end{threeparttable}", r"\end{table}"]
        return "\n".join(lines) + "\n"


def _longest(cells: pd.DataFrame, with_index: bool) -> int:
    lengths = [len(str(c)) for c in cells.columns]
    if len(cells):
        lengths += [int(cells[c].astype(str).str.len().max()) for c in cells.columns]
    if with_index and len(cells):
        lengths.append(max(len(str(i)) for i in cells.index))
    return max(lengths) if lengths else 0


def write_master(folder: Path, stems: Sequence[str], *, title: str, banner: str = "") -> Path:
    """tables/tables.tex: the documented preamble and one \\input per table, in report order."""
    lines = [r"% All tables of this report. Compile with: pdflatex tables.tex (run inside tables/).",
             r"% Each <name>.tex is a complete table float with caption, label and note: \input it in a paper.",
             r"\documentclass[11pt]{article}", r"\usepackage[margin=2.2cm]{geometry}", PREAMBLE.strip(),
             r"\begin{document}", rf"\section*{{{escape(title)}}}"]
    if banner:
        lines.append(rf"\noindent\textbf{{{escape(banner)}}}\par")
    for i, stem in enumerate(stems, 1):
        lines.append(rf"\input{{{stem}}}")
        if i % 8 == 0:  # flush floats: LaTeX holds at most 18 unplaced floats
            lines.append(r"\clearpage")
    lines.append(r"\end{document}")
    path = folder / "tables.tex"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = ["LatexTable", "PREAMBLE", "escape", "strip_table_number", "to_ascii", "write_master"]
