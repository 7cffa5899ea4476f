"""Frequentist oracles: the paper's panel regressions, IV with diagnostics and KonFound sensitivity."""

from bayesnqp.frequentist.iv import iv_2sls
from bayesnqp.frequentist.konfound import KonfoundResult, fe_covariate_count, konfound, konfound_result
from bayesnqp.frequentist.panel import heterogeneity, mechanisms, median_split, robustness, table3

__all__ = [
    "KonfoundResult",
    "fe_covariate_count",
    "heterogeneity",
    "iv_2sls",
    "konfound",
    "konfound_result",
    "mechanisms",
    "median_split",
    "robustness",
    "table3",
]
