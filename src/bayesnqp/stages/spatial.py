"""Stage: spatial analyses (Moran's I, LM tests, ML spatial Durbin with effects), when weights exist."""

from __future__ import annotations


import pandas as pd

from ..checks.flags import Flag, pareto_k_flags, ppc_flags
from ..frequentist import spatial as fsp
from ..names import PAPER_RHO
from ..report.tables import paper_table
from .context import RunContext


def rho_sentence(weights, paper: bool = True) -> str:
    """The admissible interval of rho; the paper's rho is held against it only for the paper's design."""
    lo, hi = weights.rho_bounds
    if not paper:
        return f"With this row-standardised W, rho is admissible in (1/lambda_min, 1) = ({lo:.4f}, {hi:.0f})."
    where = "inside" if lo < PAPER_RHO < hi else "outside"
    return (f"With this row-standardised W, rho is admissible in (1/lambda_min, 1) = ({lo:.4f}, {hi:.0f}). "
            f"The paper's rho = {PAPER_RHO} lies {where} that interval"
            + (": (I - rho W) is then not invertible along a path from 0, the model is not a stationary "
               "spatial process, and its coefficients cannot be read as effects." if where == "outside" else "."))


def stage_spatial_frequentist(ctx: RunContext) -> None:
    study, report = ctx.study, ctx.report
    sec = report.section("spatial", "Spatial analysis (frequentist)")
    if study.weights is None:
        ctx.skip("sdm_ml", _spatial_reason(ctx), sec)
        return
    r, f, w = study.roles, study.frame, study.weights
    controls = list(r.controls)
    paper = report.labels.paper
    report.text(sec, rho_sentence(w, paper))
    moran = ctx.guarded("moran_agglomeration",
                        lambda: fsp.moran_by_year(f, r.treatment, w, seed=ctx.settings.seed), sec)
    if moran:
        ctx.add_oracle(moran)
        table = moran.coefs.rename(columns={"estimate": "moran_I", "statistic": "z", "p_value": "p_permutation"})
        report.table(sec, "moran_agglomeration", table[["moran_I", "z", "p_permutation"]],
                     f"Global Moran's I of {r.treatment} by year (999 permutations)")
    lm = ctx.guarded("lm_spatial_tests", lambda: fsp.lm_tests(f, r.outcome, [r.treatment, *controls], w), sec)
    if lm:
        ctx.add_oracle(lm)
        report.table(sec, "lm_spatial_tests", lm.coefs[["statistic", "p_value"]],
                     "LM tests for spatial lag and error on the two-way FE residuals (and robust versions)")
    res = ctx.guarded("sdm_ml", lambda: fsp.sdm_ml(f, r.outcome, r.treatment, controls, w, seed=ctx.settings.seed),
                      sec)
    if res:
        for x in res:
            ctx.add_oracle(x)
        report.table(sec, "sdm_ml", paper_table(res, title="Spatial models, two-way FE, maximum likelihood",
                                                column_labels=[x.id.split("_")[0].upper() for x in res]),
                     ("Table 5 rebuilt: " if paper else "") + "SDM beside SAR, SEM and SLX (maximum likelihood)")
        sdm = res[0]
        if "effects" in sdm.tables:
            report.table(sec, "sdm_ml_effects", sdm.tables["effects"],
                         "SDM direct, indirect and total effects (LeSage-Pace; SEs by simulation from the "
                         "estimates' asymptotic distribution)")
        for note in dict.fromkeys(n for x in res for n in x.notes):
            if note.startswith("FLAG:"):  # a warning, shown as one (and listed in the overview's flag box)
                report.flag(sec, note.removeprefix("FLAG:").strip())
            else:
                report.text(sec, note)
        if paper:
            report.text(sec, "Paper, Table 5: agglomeration 0.0099*** (0.0009), W x agglomeration -0.0594* (0.0327), "
                         f"rho {PAPER_RHO}*** (0.2662); no direct/indirect effects reported.")


def _spatial_reason(ctx: RunContext) -> str:
    """The data check's reason (one reason for the whole spatial family)."""
    return next((x.reason for x in ctx.study.skipped if x.id == "spatial"),
                "spatial analyses skipped: no spatial weights for these regions")


def _maps_available(weights) -> bool:
    """Maps need polygons: only for regions among the bundled 280 cities."""
    from ..data.geography import load_boundaries

    return set(weights.ids) <= set(load_boundaries())


def moran_ppc_flags(table: pd.DataFrame) -> list[Flag]:
    """PPC flags from the residual Moran's I table (one record per model, listing the extreme years)."""
    out: list[Flag] = []
    for rid, rows in table.reset_index().groupby("id", sort=False):
        p_values = {f"residual Moran's I {int(r['year'])}": r["ppp"] for _, r in rows.iterrows()}
        out += ppc_flags(str(rid), p_values, what=f"{rows['model'].iloc[0]} model")
    return out


SPATIAL_LABELS = {"bayes_car": "car", "bayes_car_leroux": "leroux", "bayes_sdm": "sdm", "bayes_sar": "sar",
                  "bayes_sem": "sem", "bayes_slx": "slx"}
SPATIAL_IDS = tuple(SPATIAL_LABELS)


def stage_spatial_bayes(ctx: RunContext) -> None:
    from ..bayes.spec import load_spec
    from ..checks.spatial import ppc_moran, spatial_compare, two_way_fitted
    from ..report.maps import map_pair
    from .bayesian import fit_analysis, render_bayes

    study, report = ctx.study, ctx.report
    sec = report.section("bayes_spatial", "Spatial models rebuilt: CAR city effects and a Bayesian spatial Durbin model")
    if study.weights is None:
        ctx.skip("bayes_sdm", _spatial_reason(ctx), sec)
        return
    r, w, s = study.roles, study.weights, ctx.settings
    frame = study.frame
    controls = list(r.controls)
    maps = _maps_available(w)
    fitted = {res.id: res for i in SPATIAL_IDS for res in fit_analysis(ctx, sec, load_spec(i))}
    for result in fitted.values():
        render_bayes(ctx, sec, result)
        if result.id == "bayes_car" and maps and "city_effects" in result.tables:
            t = result.tables["city_effects"]
            report.figure(sec, "map_car_city_effects",
                          map_pair(t["mean"], t["ci_width"], "BYM2 city effects (outcome units)",
                                   "city effect", effect=True),
                          "Spatial city effects: posterior mean (left) and 94% interval width (right)")
    # the checks below label each model by its member of the family ("car", "leroux", "sdm", ...)
    fits = {SPATIAL_LABELS[rid]: r for rid, r in fitted.items()}
    report.end_group(sec)  # what follows belongs to the section, not to the last model
    sdm = fits.get("sdm")
    if sdm is not None:
        lo, hi = w.rho_bounds
        post = sdm.summary.loc["rho"] if "rho" in sdm.summary.index else None
        text = rho_sentence(w, report.labels.paper)
        if post is not None:
            text += (f" The posterior of rho: mean {post['mean']:.3f}, 94% interval [{post['ci_low']:.3f}, "
                     f"{post['ci_high']:.3f}], inside ({lo:.3f}, {hi:.0f}) by construction of the prior.")
        report.text(sec, text)
        if maps:
            for kind in ("direct", "indirect"):
                key = f"{kind}_effect_{r.treatment}" if f"{kind}_effect_{r.treatment}" in sdm.tables \
                    else f"{kind}_effect_agglomeration"
                if key in sdm.tables:
                    t = sdm.tables[key]
                    vals = t["mean"].astype(float)
                    level = float(vals.abs().max())
                    if level == 0 or float(vals.max() - vals.min()) <= 0.05 * level:
                        # one colour over the whole map says nothing a sentence cannot
                        report.text(sec, f"The SDM {kind} effect of {report.labels.treatment} is nearly the same "
                                         f"in every {report.labels.unit} ({vals.min():.4g} to {vals.max():.4g}), so "
                                         "no map is drawn; the values are in the per-unit CSV above.")
                        continue
                    lab = report.labels
                    report.figure(sec, f"map_sdm_{kind}",
                                  map_pair(t["mean"], t["ci_width"],
                                           f"SDM {kind} effect of {lab.treatment} by {lab.unit}",
                                           f"{kind} effect", effect=True),
                                  f"Each {lab.unit}'s {kind} effect of {lab.treatment} on {lab.outcome}: posterior "
                                  "mean and 94% interval width")
    if fits:
        checked = dict(fits)
        two_way = {}
        if "bayes_table3_col4" in ctx.bayes and study.balanced:
            checked = {"two-way (non-spatial)": ctx.bayes["bayes_table3_col4"], **fits}
            two_way["two-way (non-spatial)"] = two_way_fitted(frame, w, [r.treatment, *controls])
        ppc = ctx.guarded("ppc_moran", lambda: ppc_moran(checked, w, frame, seed=s.seed, fitted=two_way), sec)
        if ppc:
            report.table(sec, "ppc_moran", ppc["table"], "Residual Moran's I per year as a posterior predictive check")
            report.figure(sec, "ppc_moran", ppc["figure"], "Residual Moran's I: posterior vs replicated")
            ctx.add_block("ppc_moran", ppc.get("summary", {}))
            for record in moran_ppc_flags(ppc["table"]):
                ctx.flag(record, sec)
        cmp_ = ctx.guarded("bayes_spatial_compare", lambda: spatial_compare(fits, w, frame, seed=s.seed), sec)
        if cmp_:
            if cmp_["table"] is not None:
                report.table(sec, "bayes_spatial_compare", cmp_["table"], "Model comparison (PSIS-LOO)",
                             note=cmp_.get("method", ""))
            ctx.add_block("bayes_spatial_compare", {"loo": cmp_["loo"], "method": cmp_.get("method", ""),
                                                    "table": cmp_["table"]})
            for label, entry in cmp_["loo"].items():
                for record in pareto_k_flags(entry["id"], entry["share_k_above_0.7"],
                                             what=f"{label} model in the spatial LOO comparison"):
                    ctx.flag(record, sec)
