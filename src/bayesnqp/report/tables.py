"""Paper-style regression tables: coefficients with stars, standard errors in parentheses below.

``paper_table(results, title=...)`` turns a list of :class:`~bayesnqp.results.AnalysisResult` (one per
column) into a :class:`PaperTable` of strings, writable as CSV, Markdown, LaTeX or a plain HTML table.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bayesnqp.results import AnalysisResult

SE_DESCRIPTIONS: dict[str, str] = {
    "cluster": "standard errors clustered by city",
    "iid": "classical (iid) standard errors",
    "hetero": "heteroskedasticity-robust (HC1) standard errors",
    "driscoll_kraay": "Driscoll-Kraay standard errors",
}

_FE_ROWS = (("city", "City FE"), ("year", "Year FE"))


def stars_for(p_value: float, stars: Sequence[float] = (0.1, 0.05, 0.01)) -> str:
    """One star per threshold the p-value falls strictly below (10% / 5% / 1% by default)."""
    if p_value is None or not np.isfinite(p_value):
        return ""
    return "*" * sum(p_value < s for s in stars)


def _fmt(x: float, digits: int) -> str:
    if x is None or not np.isfinite(x):
        return ""
    out = f"{x:.{digits}f}"
    # "-0.0000" reads as a sign error; print zero without it
    return out[1:] if out.startswith("-") and float(out) == 0 else out


@dataclass(frozen=True)
class PaperTable:
    """A formatted table (all cells strings) plus its title and note."""

    title: str
    frame: pd.DataFrame
    note: str

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        self.frame.to_csv(path, index_label="")
        return path

    def to_markdown(self) -> str:
        cols = list(self.frame.columns)
        lines = [f"**{self.title}**", "", "| | " + " | ".join(cols) + " |",
                 "|---|" + "---|" * len(cols)]
        for label, row in self.frame.iterrows():
            # stars are emphasis markers in Markdown: escape them
            cells = [v.replace("*", r"\*") for v in row.tolist()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", self.note.replace("*", r"\*")]
        return "\n".join(lines)

    def to_latex(self) -> str:
        def esc(s: str) -> str:
            s = s.replace("\\", r"\textbackslash{}")
            for ch in "&%_#${}":
                s = s.replace(ch, "\\" + ch)
            s = s.replace(r"\textbackslash\{\}", r"\textbackslash{}")
            # a run of stars becomes one superscript: 0.0100*** -> 0.0100$^{***}$
            return re.sub(r"(\*+)", r"$^{\1}$", s)

        cols = list(self.frame.columns)
        lines = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{esc(self.title)}}}",
                 r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\hline",
                 " & " + " & ".join(esc(c) for c in cols) + r" \\", r"\hline"]
        for label, row in self.frame.iterrows():
            lines.append(esc(str(label)) + " & " + " & ".join(esc(v) for v in row.tolist()) + r" \\")
        lines += [r"\hline", r"\end{tabular}",
                  r"\par\smallskip\footnotesize " + esc(self.note), r"\end{table}"]
        return "\n".join(lines)

    def to_html(self) -> str:
        cols = list(self.frame.columns)
        head = "<tr><th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
        body = []
        for label, row in self.frame.iterrows():
            body.append(f"<tr><th>{html.escape(str(label))}</th>"
                        + "".join(f"<td>{html.escape(v)}</td>" for v in row.tolist()) + "</tr>")
        return (f'<table class="paper">\n<caption>{html.escape(self.title)}</caption>\n<thead>{head}</thead>\n'
                f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n"
                f'<tfoot><tr><td colspan="{len(cols) + 1}">{html.escape(self.note)}</td></tr></tfoot>\n</table>')


def paper_table(results: Sequence[AnalysisResult], *, title: str, column_labels: Sequence[str] | None = None,
                terms: Sequence[str] | None = None, term_labels: dict[str, str] | None = None,
                stars: Sequence[float] = (0.1, 0.05, 0.01), digits: int = 4) -> PaperTable:
    """Build a paper-style table, one column per result.

    Rows: for each term the coefficient with stars, then its standard error in parentheses (row label
    empty); then N, R2, City FE and Year FE (Yes/No).  ``terms`` defaults to the union of the results'
    terms in order of appearance (the constant last).  Empty cells where a column lacks a term.
    """
    if not results:
        raise ValueError("paper_table needs at least one result")
    labels = list(column_labels) if column_labels is not None else [f"({i + 1})" for i in range(len(results))]
    if len(labels) != len(results):
        raise ValueError("column_labels must have one label per result")
    if len(set(labels)) != len(labels):
        raise ValueError("column labels must be unique")
    stars = tuple(sorted(stars, reverse=True))
    if terms is None:
        seen: list[str] = []
        for r in results:
            seen += [t for t in r.coefs.index if t not in seen]
        terms = [t for t in seen if t != "constant"] + (["constant"] if "constant" in seen else [])
    term_labels = term_labels or {}
    rows: list[tuple[str, list[str]]] = []
    for t in terms:
        est, se = [], []
        for r in results:
            if t in r.coefs.index:
                row = r.coefs.loc[t]
                est.append(_fmt(row["estimate"], digits) + stars_for(row["p_value"], stars))
                s = _fmt(row["std_error"], digits)
                se.append(f"({s})" if s else "")
            else:
                est.append("")
                se.append("")
        rows.append((term_labels.get(t, t), est))
        rows.append(("", se))
    rows.append(("N", [str(int(r.n_obs)) for r in results]))
    rows.append(("R2", [_fmt(r.r2, digits) if r.r2 is not None else "" for r in results]))
    for fe, lab in _FE_ROWS:
        rows.append((lab, ["Yes" if fe in r.fixed_effects else "No" for r in results]))
    # row labels repeat ("" under every coefficient), so keep them in a plain Index
    frame = pd.DataFrame([v for _, v in rows], index=pd.Index([k for k, _ in rows]), columns=labels, dtype=object)
    return PaperTable(title=title, frame=frame, note=_note(results, labels, stars))


def _note(results: Sequence[AnalysisResult], labels: Sequence[str], stars: Sequence[float]) -> str:
    kinds = [r.se_type for r in results]
    if len(set(kinds)) == 1:
        se_part = f"{SE_DESCRIPTIONS.get(kinds[0], kinds[0])} in parentheses"
    else:
        groups: dict[str, list[str]] = {}
        for lab, k in zip(labels, kinds):
            groups.setdefault(k, []).append(lab)
        se_part = "standard errors in parentheses: " + "; ".join(
            f"{SE_DESCRIPTIONS.get(k, k)} in {', '.join(labs)}" for k, labs in groups.items())
    legend = ", ".join(f"{'*' * (i + 1)} p < {s:g}" for i, s in enumerate(stars))
    r2_part = ("R2 is the within R2 for columns with fixed effects"
               if any(r.fixed_effects for r in results) else "")
    return "Note: " + "; ".join(x for x in (se_part, legend, r2_part) if x) + "."


__all__ = ["PaperTable", "paper_table", "stars_for"]
