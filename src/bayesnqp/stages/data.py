"""Stage 1: the data, the two measures and the Table 2 replica."""

from __future__ import annotations

from ..data.describe import table2_comparison
from .context import RunContext


def stage_data(ctx: RunContext) -> None:
    study = ctx.study
    r = study.roles
    sec = ctx.report.section("data", "Data and measures")
    lines = [f"Source: {study.source}. {len(study.cities)} cities x {len(study.years)} years "
             f"({study.years[0]}-{study.years[-1]}), {len(study.frame)} city-years."]
    if study.synthetic:
        lines.append("These are SYNTHETIC DEMO DATA: the numbers are generated (on the real geography of the "
                     "280 cities) to resemble the paper's Table 2; they are not statistics of any city.")
    outcome = (f"the entropy-weight index over {len(r.indicators)} raw indicators (pooled min-max "
               "normalisation, shift 1e-4)" if r.indicators else f"the ready column '{r.outcome_source}'")
    treatment = ("the location quotient of digital employment (eq. 3, per-year totals)" if r.employment
                 else f"the ready column '{r.treatment_source}'")
    lines.append(f"Outcome: {outcome}. Treatment: {treatment}. Controls: {', '.join(r.controls) or 'none'}.")
    if study.weights is not None:
        w = study.weights
        lo, hi = w.rho_bounds
        lines.append(f"Spatial weights: {study.weights_source}; {w.n} regions, {len(w.edges)} edges, "
                     f"{w.n_components} connected component(s), islands: {', '.join(f'{study.city_names.get(c, c)} ({c})' for c in w.islands) or 'none'}. "
                     f"Row-standardised W (an island keeps a zero row: no spillover in or out); admissible "
                     f"rho in ({lo:.4f}, {hi:.0f}).")
    ctx.report.text(sec, "\n\n".join(lines))
    for item in study.skipped:
        ctx.skip(item.id, item.reason, sec)
    t2 = table2_comparison(study.frame, r.outcome, r.treatment, r.controls)
    ctx.report.table(sec, "table2_descriptives", t2,
                     "Table 2 - descriptive statistics, this panel beside the paper",
                     note="paper_* columns: the paper's Table 2 (N = 2,800). skew: sample skewness of this panel.")
    ctx.summary["descriptives"] = {str(k): row.to_dict() for k, row in t2.iterrows()}
    if study.index_weights is not None:
        ctx.report.table(sec, "index_weights", study.index_weights,
                         "Entropy weights of the NQP indicators (they sum to 1)")
        ctx.summary["index_weights"] = study.index_weights["weight"].to_dict()
