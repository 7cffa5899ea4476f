"""Descriptive statistics: the replica of the paper's Table 2."""

from __future__ import annotations

import pandas as pd

from .. import names

# Table 2 of the paper (N = 2,800): mean, sd, min, max.
PAPER_TABLE2 = pd.DataFrame(
    [
        ("nqp", 0.0356, 0.0482, 0.0026, 0.5463),
        ("agglomeration", 0.7515, 0.5726, 0.0100, 6.6905),
        ("develop", 5.5973, 2.8370, 0.8407, 15.5916),
        ("unemployed", 0.0100, 0.0100, 0.0002, 0.2548),
        ("finance", 1.1320, 0.6550, 0.1833, 7.5000),
        ("human", 9.6812, 17.1086, 0.0078, 120.0000),
        ("traffic", 0.0478, 0.0327, 0.0029, 0.8262),
        ("support", 0.1902, 0.0418, 0.0466, 0.3567),
    ],
    columns=["variable", "mean", "sd", "min", "max"],
).set_index("variable")


def describe(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """N, mean, sd (n-1), min, max and skewness of each column."""
    sub = frame[columns]
    table = pd.DataFrame({"n": sub.count(), "mean": sub.mean(), "sd": sub.std(ddof=1), "min": sub.min(),
                          "max": sub.max(), "skew": sub.skew()})
    table.index.name = "variable"
    return table


def table2_comparison(frame: pd.DataFrame, outcome: str, treatment: str, controls: tuple[str, ...]) -> pd.DataFrame:
    """This panel's Table 2 beside the paper's, for the variables the paper reports."""
    cols = [outcome, treatment, *controls]
    ours = describe(frame, cols)
    rename = {outcome: names.NQP, treatment: names.AGGLOMERATION}
    ours.index = [rename.get(c, c) for c in ours.index]
    paper = PAPER_TABLE2.add_prefix("paper_")
    out = ours.join(paper, how="left")
    out.index.name = "variable"
    return out
