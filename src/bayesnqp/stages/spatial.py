"""Stage: spatial analyses (Moran's I, LM tests, ML spatial Durbin with effects), when weights exist."""

from __future__ import annotations

from ..frequentist import spatial as fsp
from ..report.tables import paper_table
from .context import RunContext

PAPER_RHO = -2.1086


def rho_sentence(weights) -> str:
    lo, hi = weights.rho_bounds
    where = "inside" if lo < PAPER_RHO < hi else "outside"
    return (f"With this row-standardised W, rho is admissible in (1/lambda_min, 1) = ({lo:.4f}, {hi:.0f}). "
            f"The paper's rho = {PAPER_RHO} lies {where} that interval"
            + (": (I - rho W) is then not invertible along a path from 0, the model is not a stationary "
               "spatial process, and its coefficients cannot be read as effects." if where == "outside" else "."))


def stage_spatial_frequentist(ctx: RunContext) -> None:
    study, report = ctx.study, ctx.report
    sec = report.section("spatial", "Spatial analysis (frequentist)")
    if study.weights is None:
        ctx.skip("sdm_ml", "spatial analyses skipped: no spatial weights for these regions", sec)
        return
    r, f, w = study.roles, study.frame, study.weights
    controls = list(r.controls)
    report.text(sec, rho_sentence(w))
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
                                                column_labels=[x.id for x in res]),
                     "Table 5 rebuilt: SDM beside SAR, SEM and SLX")
        sdm = res[0]
        if "effects" in sdm.tables:
            report.table(sec, "sdm_ml_effects", sdm.tables["effects"],
                         "SDM direct, indirect and total effects (LeSage-Pace; SEs by simulation from the "
                         "estimates' asymptotic distribution)")
        for note in sdm.notes:
            report.text(sec, note)
        report.text(sec, "Paper, Table 5: agglomeration 0.0099*** (0.0009), W x agglomeration -0.0594* (0.0327), "
                         f"rho {PAPER_RHO}*** (0.2662); no direct/indirect effects reported.")
