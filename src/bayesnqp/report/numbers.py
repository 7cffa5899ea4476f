"""Number formatting for every table of the report (HTML, Markdown, LaTeX share it).

Rules: integers print as integers (N, draws, divergences, and floats that are whole numbers in a count
column); effective sample sizes are rounded to whole draws; r-hat gets three decimals; p-values three
decimals or "< 0.001"; other numbers get enough decimals for three significant digits of the column's
typical size, and a value that would still print as zero switches to scientific notation, so no real
coefficient ever reads 0.0000.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

_COUNT = re.compile(r"^(n|n_.*|.*_n|N|obs|nobs|n_obs|draws|chains|tune|divergences|count|rank|df.*|rows|"
                    r"year|years|.*_count|permutations)$", re.I)
_ESS = re.compile(r"ess", re.I)
_RHAT = re.compile(r"r_?hat", re.I)
_P = re.compile(r"^(p|p_.*|.*_p|p-value|pvalue|.*p_value.*|p_permutation)$", re.I)


def column_kind(name: Any) -> str:
    """count | ess | rhat | p | real, from a column name."""
    s = str(name)
    if _RHAT.search(s):
        return "rhat"
    if _ESS.search(s):
        return "ess"
    if _P.match(s):
        return "p"
    if _COUNT.match(s):
        return "count"
    return "real"


def decimals_for(values: np.ndarray, significant: int = 3, cap: int = 6) -> int:
    """Decimals that show ``significant`` digits of the column's median nonzero magnitude."""
    mags = np.abs(values[np.isfinite(values) & (values != 0)])
    if mags.size == 0:
        return 2
    ref = float(np.median(mags))
    return int(min(cap, max(0, significant - 1 - math.floor(math.log10(ref)))))


def fmt_number(value: Any, kind: str = "real", decimals: int = 4) -> str:
    """One cell. Strings pass through; NaN and None are empty."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):d}"
    if not isinstance(value, (float, np.floating)):
        return str(value)
    x = float(value)
    if not math.isfinite(x):
        return "" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if kind == "count" or (kind == "ess"):
        return f"{round(x):d}"
    if kind == "rhat":
        return f"{x:.3f}"
    if kind == "p":
        return "< 0.001" if 0 <= x < 0.001 else f"{x:.3f}"
    if x.is_integer() and abs(x) >= 10 and decimals <= 2:
        return f"{int(x):d}"
    if abs(x) >= 1e6:
        return f"{x:.3g}" if abs(x) < 1e15 else f"{x:.2e}"
    out = f"{x:.{decimals}f}"
    if x != 0 and float(out) == 0:  # a real number would read as zero
        return f"{x:.2e}"
    return out[1:] if out.startswith("-") and float(out) == 0 else out


def format_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as a string, column by column (see the module rules)."""
    out = pd.DataFrame(index=frame.index, columns=frame.columns, dtype=object)
    for j, col in enumerate(frame.columns):
        series = frame.iloc[:, j]
        kind = column_kind(col)
        numeric = pd.to_numeric(series, errors="coerce") if series.dtype == object else series
        values = np.asarray(numeric, dtype=float) if _is_numeric(numeric) else np.array([])
        if kind == "real" and values.size and np.isfinite(values).any() and np.all(
                np.mod(values[np.isfinite(values)], 1) == 0) and series.dtype != object:
            kind = "count"  # whole numbers only (e.g. 4360.0): integers
        mags = np.abs(values[np.isfinite(values) & (values != 0)]) if values.size else values
        mixed = series.dtype == object or (mags.size > 1 and mags.max() / mags.min() > 1e3)
        if mixed:
            # a column of different quantities (a key-value table): each cell its own digits, and its kind
            # from its row label where the column says nothing (kp_rk_lm_p is a p-value)
            cells = []
            for label, v in zip(frame.index, series.tolist()):
                k = kind if kind != "real" else column_kind(label[-1] if isinstance(label, tuple) else label)
                num = np.array([v], dtype=float) if isinstance(v, (int, float, np.number)) else np.array([])
                cells.append(fmt_number(v, k, decimals_for(num) if num.size else 4))
            out.iloc[:, j] = cells
            continue
        dec = decimals_for(values) if values.size else 4
        out.iloc[:, j] = [fmt_number(v, kind, dec) for v in series.tolist()]
    return out


def _is_numeric(series: Any) -> bool:
    try:
        return pd.api.types.is_numeric_dtype(series)
    except TypeError:
        return False


__all__ = ["column_kind", "decimals_for", "fmt_number", "format_frame"]


def shorten(text: object, n: int) -> str:
    """One line of at most ``n`` characters (whitespace collapsed; an ellipsis where it was cut)."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= n else text[: n - 1].rstrip() + "\u2026"
