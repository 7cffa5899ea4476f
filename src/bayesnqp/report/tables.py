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
from typing import Any

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

    def to_latex(self, stem: str = "") -> str:
        """A booktabs/threeparttable float with caption, label and note (see report.latex)."""
        from .latex import LatexTable

        stem = stem or re.sub(r"[^a-z0-9]+", "_", self.title.lower()).strip("_") or "table"
        return LatexTable(stem=stem, caption=self.title, cells=self.frame, note=self.note.removeprefix("Note: "),
                          ).render()

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
        # enough decimals that no real number of this row prints as 0.0000: two significant digits of the
        # smallest estimate, one of the smallest standard error
        need = [digits]
        for col, sig in (("estimate", 1), ("std_error", 0)):
            mags = [abs(float(r.coefs.loc[t, col])) for r in results if t in r.coefs.index
                    and np.isfinite(r.coefs.loc[t, col]) and r.coefs.loc[t, col] != 0]
            if mags:
                need.append(int(sig - np.floor(np.log10(min(mags)))))
        row_digits = min(8, max(need))
        for r in results:
            if t in r.coefs.index:
                row = r.coefs.loc[t]
                est.append(_fmt(row["estimate"], row_digits) + stars_for(row["p_value"], stars))
                s = _fmt(row["std_error"], row_digits)
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


def _posterior_row(summary: pd.DataFrame, term: str) -> pd.Series | None:
    """The posterior summary row of a coefficient: 'beta[term]', the bare term, or '...[term]'."""
    for label in (f"beta[{term}]", term):
        if label in summary.index:
            return summary.loc[label]
    hits = [i for i in summary.index if str(i).endswith(f"[{term}]")]
    return summary.loc[hits[0]] if len(hits) == 1 else None


def bayes_paper_table(results: Sequence[Any], *, title: str, key_term: str,
                      column_labels: Sequence[str] | None = None, terms: Sequence[str] | None = None,
                      term_labels: dict[str, str] | None = None, digits: int = 4,
                      ci_percent: int = 94) -> PaperTable:
    """The Bayesian twin of :func:`paper_table`: same layout, one column per fit.

    Each coefficient row holds the posterior mean with its HDI in brackets beneath; then the largest
    r-hat and the smallest bulk ESS of the fit, and for ``key_term`` the agreement with the frequentist
    column (z and the ratio of posterior sd to the frequentist SE), where there is an oracle.
    ``results`` are BayesResult objects (``summary``, ``diagnostics``, ``agreement``).
    """
    if not results:
        raise ValueError("bayes_paper_table needs at least one result")
    labels = list(column_labels) if column_labels is not None else [f"({i + 1})" for i in range(len(results))]
    if len(labels) != len(results):
        raise ValueError("column_labels must have one label per result")
    term_labels = term_labels or {}
    if terms is None:
        terms = []
        for r in results:
            for t in (r.agreement.index if r.agreement is not None else []):
                if t not in terms:
                    terms.append(t)
    rows: list[tuple[str, list[str]]] = []
    for t in terms:
        found = [_posterior_row(r.summary, t) for r in results]
        # two significant digits of the smallest mean, but no more than two digits finer than the
        # interval's half-width needs (a mean of 7e-6 inside [-0.0013, 0.0013] is zero to that precision)
        means = [abs(float(x["mean"])) for x in found if x is not None and np.isfinite(x["mean"]) and x["mean"] != 0]
        halves = [abs(float(x["ci_high"] - x["ci_low"])) / 2 for x in found if x is not None
                  and np.isfinite(x["ci_high"] - x["ci_low"]) and x["ci_high"] != x["ci_low"]]
        d = digits
        if means:
            d = int(1 - np.floor(np.log10(min(means))))
            if halves:
                d = min(d, int(3 - np.floor(np.log10(min(halves)))))
        d = int(min(8, max(digits, d)))
        rows.append((term_labels.get(t, t), [_fmt(x["mean"], d) if x is not None else "" for x in found]))
        rows.append(("", [f"[{_fmt(x['ci_low'], d)}, {_fmt(x['ci_high'], d)}]" if x is not None else ""
                          for x in found]))

    def agree(r: Any, col: str) -> str:
        a = r.agreement
        if a is None or key_term not in a.index or col not in a.columns:
            return ""
        return _fmt(float(a.loc[key_term, col]), 2)

    key = term_labels.get(key_term, key_term)
    rows.append(("max r-hat", [_fmt(r.diagnostics.max_r_hat, 3) for r in results]))
    rows.append(("min ESS (bulk)", [f"{r.diagnostics.min_ess_bulk:.0f}" if np.isfinite(r.diagnostics.min_ess_bulk)
                                    else "" for r in results]))
    rows.append(("divergences", [str(int(r.diagnostics.divergences)) for r in results]))
    rows.append((f"z ({key})", [agree(r, "z") for r in results]))
    rows.append((f"sd ratio ({key})", [agree(r, "sd_ratio") for r in results]))
    frame = pd.DataFrame([v for _, v in rows], index=pd.Index([k for k, _ in rows]), columns=labels, dtype=object)
    note = (f"Note: posterior means with the {ci_percent}% highest-density interval in brackets beneath. "
            "max r-hat and min ESS are taken over every reported parameter of the fit. "
            f"z = (posterior mean - frequentist estimate) / frequentist SE for {key}; sd ratio = posterior sd / "
            "frequentist SE (below 1: the posterior is narrower than the frequentist interval).")
    return PaperTable(title=title, frame=frame, note=note)


__all__ = ["PaperTable", "bayes_paper_table", "paper_table", "stars_for"]
