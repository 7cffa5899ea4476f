"""Stage 1: the data, the two measures and the descriptive table (beside the paper's Table 2 only when the
data are the paper's design)."""

from __future__ import annotations

from ..data.describe import table2_comparison
from ..report.labels import resolve_labels
from .context import RunContext


def _unit_names(study) -> dict[str, str]:
    """Display names per unit: pinyin for the bundled cities (plot fonts may lack CJK glyphs), else the
    data's own name column."""
    try:
        from ..data.geography import load_geography

        geo = load_geography().cities
        pinyin = dict(zip(geo.index.astype(str), geo["pinyin"].astype(str))) if "pinyin" in geo else {}
    except Exception:  # noqa: BLE001 - no geography: the data's names
        pinyin = {}
    out = {}
    for code, name in study.city_names.items():
        out[str(code)] = pinyin.get(str(code), str(name))
    return out


def stage_data(ctx: RunContext) -> None:
    study = ctx.study
    r = study.roles
    labels = resolve_labels(study)
    report = ctx.report
    report.labels = labels
    report.set_units(study.cities, _unit_names(study))
    report.meta.pop("cities x years", None)
    report.meta = {"data": report.meta.pop("data", study.source),
                   f"{labels.units} x years": f"{len(study.cities)} x {len(study.years)}", **report.meta}
    sec = report.section("data", "Data and measures")
    lines = [f"Source: {study.source}. {len(study.cities)} {labels.units} x {len(study.years)} years "
             f"({study.years[0]}-{study.years[-1]}), {len(study.frame)} {labels.unit_years}."]
    if study.synthetic:
        lines.append("These are SYNTHETIC DEMO DATA: the numbers are generated (on the real geography of the "
                     "280 cities) to resemble the paper's Table 2; they are not statistics of any city.")
    outcome = (f"the entropy-weight index over {len(r.indicators)} raw indicators (pooled min-max "
               "normalisation, shift 1e-4)" if r.indicators else f"the ready column '{r.outcome_source}'")
    treatment = ("the location quotient of digital employment (eq. 3, per-year totals)" if r.employment
                 else f"the ready column '{r.treatment_source}'")
    lines.append(f"Outcome ({labels.outcome}): {outcome}. Treatment ({labels.treatment}): {treatment}. "
                 f"Controls: {', '.join(r.controls) or 'none'}.")
    if study.weights is not None:
        w = study.weights
        lo, hi = w.rho_bounds
        islands = ", ".join(f"{report.unit_names.get(c, c)} ({c})" for c in w.islands) or "none"
        lines.append(f"Spatial weights: {study.weights_source}; {w.n} {labels.units}, {len(w.edges)} links, "
                     f"{w.n_components} connected component(s), islands (no neighbour): {islands}. The weights "
                     "are row-standardised; an island keeps a zero row, so it sends and receives no spillover. "
                     f"The spatial autoregressive coefficient rho is admissible in ({lo:.4f}, {hi:.0f}).")
    # display only: the words come from the user's labels, never from the internal role names
    report.text(sec, "\n\n".join(lines).replace("'nqp'", f"'{labels.outcome}'"))
    for item in study.skipped:
        # recorded here; shown (when the user asked for the analysis) in the section it concerns
        ctx.skip(item.id, item.reason, sec if item.id == "controls" else None)
    t2 = table2_comparison(study.frame, r.outcome, r.treatment, r.controls)
    if labels.paper:
        report.table(sec, "table2_descriptives", t2, "Descriptive statistics, this panel beside the paper's Table 2",
                     note="paper_* columns: the paper's Table 2 (N = 2,800). skew: sample skewness of this panel.")
    else:
        t2 = t2[[c for c in t2.columns if not str(c).startswith("paper_")]]
        report.table(sec, "descriptives", t2, "Descriptive statistics",
                     note="skew: sample skewness. n: observations.")
    ctx.summary["descriptives"] = {str(k): row.to_dict() for k, row in t2.iterrows()}
    if study.index_weights is not None:
        report.table(sec, "index_weights", study.index_weights,
                     f"Entropy weights of the {labels.outcome} indicators (they sum to 1)")
        ctx.summary["index_weights"] = study.index_weights["weight"].to_dict()
