"""Stage 2: the frequentist oracles, each as a paper-style table and an ``analyses.<id>`` block."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from .. import frequentist as fq
from ..frequentist import bootstrap as bb
from ..frequentist.panel import SeType
from .. import names
from ..report.tables import paper_table
from ..results import AnalysisResult
from .context import RunContext


def _diagnostics_table(results: list[AnalysisResult]) -> pd.DataFrame:
    """Scalar entries of ``extra`` (first-stage F, KP, CD, ...) side by side, one column per result."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        for k, v in r.extra.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                rows.setdefault(k, {})[r.id] = v
            elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) or x is None
                                                                      for x in v):
                rows.setdefault(k, {})[r.id] = f"[{_num(v[0])}, {_num(v[1])}]"
    return pd.DataFrame(rows).T


def _num(x: Any) -> str:
    from ..report.numbers import fmt_number

    return "-inf/inf" if x is None else fmt_number(int(x) if float(x).is_integer() else x, "real", 4)


def _oracle_table(ctx: RunContext, sec, analysis_id: str, run, *, title: str, caption: str,
                  labels=None, terms=None) -> list[AnalysisResult]:
    """Run a family of oracles, record each, and show them as one paper-style table."""
    res = ctx.guarded(analysis_id, run, sec) or []
    res = _with_bootstrap(ctx, analysis_id, res, sec)
    for x in res:
        ctx.add_oracle(x)
    if res:
        column_labels = labels(res) if callable(labels) else (labels or [x.id for x in res])
        ctx.report.table(sec, analysis_id, paper_table(res, title=title, column_labels=column_labels, terms=terms),
                         caption)
    return res


def _with_bootstrap(ctx: RunContext, analysis_id: str, results: list[AnalysisResult], sec) -> list[AnalysisResult]:
    """The oracles with ``extra["bootstrap"]`` (city-level Bayesian bootstrap) where their kind is covered.
    One Dirichlet draw over all cities, seeded by the run, serves every oracle. A failure is recorded
    under ``<family>_bootstrap`` and leaves the oracles as they were."""
    if not any(bb.covers(x.id) for x in results):
        return results
    if ctx.bootstrap_weights is None:
        cities = sorted(ctx.study.frame.index.get_level_values(0).astype(str).unique())
        ctx.bootstrap_weights = bb.dirichlet_weights(cities, bb.DEFAULT_REPLICATIONS, ctx.settings.seed)
    weights = ctx.bootstrap_weights

    def run() -> list[AnalysisResult]:
        out = []
        for x in results:
            block = bb.companion(x, ctx.study.frame, weights, seed=ctx.settings.seed,
                                 instrument=ctx.study.roles.instrument)
            out.append(dataclasses.replace(x, extra={**x.extra, "bootstrap": block}) if block else x)
        return out

    return ctx.guarded(f"{analysis_id}_bootstrap", run, sec) or results


def _skip_reason(ctx: RunContext, analysis_id: str, default: str) -> str:
    """The data check's reason when it gave one (one family, one reason), else the stage's."""
    return next((x.reason for x in ctx.study.skipped if x.id == analysis_id), default)


def stage_frequentist(ctx: RunContext) -> None:
    """The oracles, one report section each: Table 3, IV and sensitivity, robustness, mechanisms,
    median splits, and the city-level Bayesian bootstrap of every fixed-effects oracle."""
    _table3_section(ctx)
    _iv_section(ctx)
    _robustness_section(ctx)
    _mechanisms_section(ctx)
    _heterogeneity_section(ctx)
    _bootstrap_section(ctx)


def _regression_inputs(ctx: RunContext) -> tuple[pd.DataFrame, str, str, list[str], SeType]:
    """What every oracle regression takes: the panel, outcome, treatment, controls and SE type."""
    study, r = ctx.study, ctx.study.roles
    return study.frame, r.outcome, r.treatment, list(r.controls), study.config.se


def _table3_section(ctx: RunContext) -> None:
    report, paper = ctx.report, ctx.report.labels.paper
    f, outcome, treatment, controls, se = _regression_inputs(ctx)

    sec = report.section("table3", "Baseline regressions (the paper's Table 3), frequentist" if paper
                         else "Baseline regressions, frequentist")
    if _oracle_table(ctx, sec, "table3", lambda: fq.table3(f, outcome, treatment, controls, se=se),
                     title="Table 3 - baseline regressions" if paper else "Baseline regressions",
                     labels=["(1)", "(2)", "(3)", "(4)"],
                     caption=("Table 3: " if paper else "Baseline: ")
                     + "pooled OLS; + controls; + city FE; + city and year FE"):
        _notes(ctx, sec, [ctx.oracles[k] for k in ("table3_col1", "table3_col2", "table3_col3", "table3_col4")
                          if k in ctx.oracles])
        if paper:
            report.text(sec, "Paper, column (4): agglomeration 0.0100*** (0.0010), R2 0.3664. The paper does not "
                             "say which standard errors it used; these are as the note under the table says.")


def _iv_section(ctx: RunContext) -> None:
    report, r, paper = ctx.report, ctx.study.roles, ctx.report.labels.paper
    f, outcome, treatment, controls, se = _regression_inputs(ctx)

    sec = report.section("iv", "Endogeneity: instrumental variables and sensitivity")
    if r.instrument:
        instrument = "distance to Hangzhou" if r.instrument == names.DIST_HANGZHOU else f"'{r.instrument}'"
        res = _oracle_table(ctx, sec, "iv_2sls",
                            lambda: fq.iv_2sls(f, outcome, treatment, controls, r.instrument, se=se),
                            title="2SLS with city and year FE",
                            caption=f"Second stage: {instrument} x year dummies (over-identified) and x "
                                    "linear trend (just-identified)")
        if res:
            for x in res:
                if "first_stage" in x.tables:
                    report.table(sec, f"{x.id}_first_stage", x.tables["first_stage"],
                                 f"First stage of {x.id}: {treatment} on the instruments (partialled FE, controls)")
            report.table(sec, "iv_diagnostics", _diagnostics_table(res),
                         "Instrument strength and identification diagnostics")
            _notes(ctx, sec, res)
    else:
        ctx.skip("iv_2sls", _skip_reason(ctx, "iv_2sls", "instrumental variables skipped: no instrument column"),
                 sec)
    if "table3_col4" in ctx.oracles:
        k = ctx.guarded("konfound", lambda: fq.konfound_result(ctx.oracles["table3_col4"]), sec)
        if k:
            ctx.add_oracle(k)
            table = pd.DataFrame({"value": {key: v for key, v in k.extra.items()
                                            if isinstance(v, (int, float)) and not isinstance(v, bool)}})
            report.table(sec, "konfound", table, "KonFound sensitivity of the two-way FE estimate (Frank 2000)",
                         note=" ".join(k.notes))
            sentence = str(k.extra.get("sentence", ""))
            if paper:
                sentence += (" Paper: 81.07% bias to invalidate; impact threshold 0.1681 (r = 0.410 with treatment "
                             "and outcome).")
            report.text(sec, sentence)


def _robustness_section(ctx: RunContext) -> None:
    report = ctx.report
    f, outcome, treatment, controls, se = _regression_inputs(ctx)

    sec = report.section("robustness", "Robustness of the two-way FE estimate")
    # dropping the four municipalities means something only where they are in the data
    has_municipalities = bool(set(names.MUNICIPALITY_ADCODES) & set(ctx.study.cities))

    def robustness():
        out = fq.robustness(f, outcome, treatment, controls, se=se)
        return [x for x in out if has_municipalities or x.id != "robustness_no_municipalities"]

    checks = ["winsorised 1%/99%"] + (["without the four municipalities"] if has_municipalities else []) + [
        f"lagged {treatment}", "Driscoll-Kraay SE"]
    res = _oracle_table(ctx, sec, "robustness", robustness, title="Robustness checks", terms=[treatment],
                        labels=lambda rs: [x.id.removeprefix("robustness_").replace("_", " ") for x in rs],
                        caption="; ".join(checks)[:1].upper() + "; ".join(checks)[1:])
    _notes(ctx, sec, res)


def _mechanisms_section(ctx: RunContext) -> None:
    report, r, paper = ctx.report, ctx.study.roles, ctx.report.labels.paper
    f, _, treatment, controls, se = _regression_inputs(ctx)

    sec = report.section("mechanisms", "Mechanisms (the paper's Table 4), frequentist" if paper
                         else "Mechanisms, frequentist")
    indicators = [c for pair in r.mechanisms.values() for c in pair]
    if indicators:
        _oracle_table(ctx, sec, "table4", lambda: fq.mechanisms(f, treatment, indicators, controls, se=se),
                      title="Table 4 - mechanism regressions" if paper else "Mechanism regressions",
                      labels=indicators, terms=[treatment, "constant"],
                      caption=f"Each mechanism indicator on {treatment} + controls + city and year FE "
                              "(Jiang Ting 2022)")
    else:
        ctx.skip("table4", "mechanism regressions skipped: no mechanism indicators in the data", sec)


def _heterogeneity_section(ctx: RunContext) -> None:
    report, r = ctx.report, ctx.study.roles
    f, outcome, treatment, controls, se = _regression_inputs(ctx)

    sec = report.section("heterogeneity", "Heterogeneity: median splits, frequentist")
    if r.splitters:
        res = _oracle_table(ctx, sec, "heterogeneity",
                            lambda: fq.heterogeneity(f, outcome, treatment, controls, list(r.splitters), se=se),
                            title="Median splits", labels=list(r.splitters),
                            caption=f"Median splits: the {treatment} slope in the low and high groups and their "
                                    "difference (fully interacted model)")
        if res and res[0].notes:
            report.text(sec, " ".join(res[0].notes))
    else:
        ctx.skip("heterogeneity", "heterogeneity skipped: no splitter columns", sec)


def bootstrap_table(oracles: dict[str, AnalysisResult]) -> pd.DataFrame:
    """Every bootstrapped oracle term: estimate, its SE, the bootstrap mean, sd and 95% interval."""
    rows = []
    for oid, x in oracles.items():
        block = x.extra.get("bootstrap")
        if not isinstance(block, dict):
            continue
        for term, sd in block["sd"].items():
            if term not in x.coefs.index:
                continue
            se = float(x.coefs.loc[term, "std_error"])
            lo, hi = block["ci95"][term]
            # kept to seven narrow columns so the table fits the page (the SE kind is in the note)
            rows.append({"oracle": oid, "term": term, "estimate": float(x.coefs.loc[term, "estimate"]),
                         "SE": se, "bootstrap sd": sd, "sd / SE": sd / se if se > 0 else float("nan"),
                         "2.5%": lo, "97.5%": hi})
    return pd.DataFrame(rows).set_index(["oracle", "term"]) if rows else pd.DataFrame()


def _bootstrap_section(ctx: RunContext) -> None:
    table = bootstrap_table(ctx.oracles)
    if table.empty:
        return
    sec = ctx.report.section("bootstrap", "Design-based companion: city-level Bayesian bootstrap")
    ctx.report.text(sec, f"Each fixed-effects oracle re-solved under {bb.DEFAULT_REPLICATIONS} draws of "
                         "Dirichlet(1, ..., 1) weights over cities (Rubin 1981; Chamberlain & Imbens 2003): a "
                         "posterior that treats the cities as draws from a population and leaves any "
                         "correlation within a city unrestricted, like the city-clustered SE it sits beside. "
                         "The Bayesian models' agreement tables carry this sd as bootstrap_sd.")
    ctx.report.table(sec, "bootstrap", table, "Bootstrap sd beside each oracle's standard error")


def _notes(ctx: RunContext, sec, results: list[AnalysisResult]) -> None:
    """One note per distinct text: a note shared by several columns is printed once, naming them."""
    shared: dict[str, list[str]] = {}
    for x in results:
        for note in x.notes:
            shared.setdefault(note, []).append(x.id)
    for note, ids in shared.items():
        who = ids[0] if len(ids) == 1 else (f"all {len(ids)} columns" if len(ids) == len(results) else ", ".join(ids))
        text = note.strip()
        ctx.report.text(sec, f"{who}: {text[:1].upper() + text[1:]}" + ("" if text.endswith(".") else "."))
