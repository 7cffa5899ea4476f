"""Stage 3: the Bayesian rebuilds, each rendered the same way: posterior table, agreement with its
oracle, diagnostics flags, figures and extra tables."""

from __future__ import annotations

import pandas as pd

from ..bayes.result import BayesResult
from ..checks.agreement import MATCH_TOLERANCE_Z
from ..checks.diagnostics import CI_PROB
from ..report.figures import agreement_figure
from .context import RunContext


def render_bayes(ctx: RunContext, section, result: BayesResult) -> None:
    """Save the fit and put everything it carries into the report."""
    ctx.add_bayes(result)
    report = ctx.report
    d = result.diagnostics
    report.text(section, f"{result.title} ({result.id}). Diagnostics: max r_hat {d.max_r_hat:.3f}, min bulk ESS "
                         f"{d.min_ess_bulk:.0f}, min tail ESS {d.min_ess_tail:.0f}, {d.divergences} divergences, "
                         f"min BFMI {d.min_bfmi:.2f} ({d.n_chains} chains x {d.n_draws} draws).")
    if not d.ok:
        report.flag(section, f"{result.id} flagged: {'; '.join(d.flags)}")
    report.table(section, f"{result.id}_posterior", result.summary,
                 f"{result.id}: posterior mean, sd, {int(CI_PROB * 100)}% HDI, r_hat, ESS")
    if result.agreement is not None:
        table = result.agreement
        note = result.agreement_note
        if result.meant_to_match:
            worst = float(table["z"].abs().max())
            verdict = "within" if worst <= MATCH_TOLERANCE_Z else "OUTSIDE"
            note = f"Meant to match: max |z| = {worst:.3f}, {verdict} the {MATCH_TOLERANCE_Z} tolerance. " + note
            ratio = float(table["sd_ratio"].median())
            if ratio < 0.67:
                note += (f" The posterior sd is a median {ratio:.2f} of the oracle's standard error: the model "
                         "treats city-years as independent once the city and year effects are in, while the "
                         "oracle's errors allow correlation within cities; the point estimates agree, the "
                         "intervals here are too narrow wherever residuals are serially correlated.")
            if worst > MATCH_TOLERANCE_Z:
                report.flag(section, f"{result.id}: posterior disagrees with {table.attrs.get('oracle')} "
                                     f"(max |z| = {worst:.3f})")
        report.table(section, f"{result.id}_agreement", table,
                     f"{result.id} against its frequentist oracle {table.attrs.get('oracle', '')}", note=note)
    for note in result.notes:
        report.text(section, note)
    for name, frame in result.tables.items():
        if isinstance(frame, pd.DataFrame):
            report.table(section, f"{result.id}_{name}", frame, f"{result.id}: {name.replace('_', ' ')}")
    for name, fig in result.figures.items():
        report.figure(section, f"{result.id}_{name}", fig, f"{result.id}: {name.replace('_', ' ')}")


def stage_bayes_panel(ctx: RunContext) -> None:
    from ..bayes import panel as bp

    study, report = ctx.study, ctx.report
    r, f, s = study.roles, study.frame, ctx.settings
    controls = list(r.controls)
    frame = f
    sec = report.section("bayes_table3", "Table 3 rebuilt: Bayesian hierarchical models")
    report.text(sec, "Weakly informative priors on the standardised scale (regressors and outcome standardised "
                     "inside each model; coefficients reported on the original scale). Column (4) puts the city "
                     "effects in correlated-random-effects (Mundlak) form so its posterior reproduces the two-way "
                     "within estimator; bayes_re drops the Mundlak terms to show what they change.")
    res = ctx.guarded("bayes_table3", lambda: bp.fit_table3(frame, controls, s, ctx.oracles), sec)
    for x in res or []:
        render_bayes(ctx, sec, x)
    x = ctx.guarded("bayes_re", lambda: bp.fit_random_effects(frame, controls, s, ctx.oracles.get("table3_col4")),
                    sec)
    if x:
        render_bayes(ctx, sec, x)
    sec = report.section("bayes_likelihoods", "Which likelihood fits: posterior predictive checks and LOO")
    x = ctx.guarded("bayes_likelihoods", lambda: bp.fit_likelihoods(frame, controls, s), sec)
    if x:
        render_bayes(ctx, sec, x)


def stage_bayes_groups(ctx: RunContext) -> None:
    from ..bayes.groups import fit_groups, fit_province_slopes

    study, report = ctx.study, ctx.report
    r, f, s = study.roles, study.frame, ctx.settings
    controls = list(r.controls)
    sec = report.section("bayes_groups", "Group-specific effects: partially pooled slopes")
    if r.splitters:
        res = ctx.guarded("bayes_groups", lambda: fit_groups(f, controls, list(r.splitters), s, ctx.oracles), sec)
        for x in res or []:
            render_bayes(ctx, sec, x)
    else:
        ctx.skip("bayes_groups", "group-specific slopes skipped: no splitter columns", sec)
    if study.provinces is not None:
        from ..data.geography import load_geography

        geo = load_geography().cities  # plot fonts may lack CJK glyphs: label provinces in pinyin
        labels = dict(zip(geo["province"], geo["province_pinyin"]))
        x = ctx.guarded("bayes_province_slopes",
                        lambda: fit_province_slopes(f, controls, study.provinces, s, labels=labels), sec)
        if x:
            render_bayes(ctx, sec, x)
    else:
        ctx.skip("bayes_province_slopes", "province-varying slopes skipped: the regions are not the bundled "
                                          "280 cities, so their provinces are unknown", sec)


def stage_bayes_iv(ctx: RunContext) -> None:
    from ..bayes.iv import fit_iv

    study, report = ctx.study, ctx.report
    r = study.roles
    sec = report.section("bayes_iv", "Bayesian instrumental variables")
    if not r.instrument:
        ctx.skip("bayes_iv", "Bayesian IV skipped: no distance column", sec)
        return
    x = ctx.guarded("bayes_iv", lambda: fit_iv(study.frame, list(r.controls), r.instrument, ctx.settings,
                                                ctx.oracles.get("iv_2sls_trend")), sec)
    if x:
        render_bayes(ctx, sec, x)


def stage_agreement(ctx: RunContext) -> None:
    """One figure and one table of every posterior-vs-oracle z in the run."""
    tables = {k: v.agreement for k, v in ctx.bayes.items() if v.agreement is not None}
    sec = ctx.report.section("agreement", "Agreement: every posterior against its frequentist estimate")
    if not tables:
        ctx.report.skip(sec, "no Bayesian model with a frequentist oracle ran")
        return
    rows = []
    for mid, t in tables.items():
        for term, row in t.iterrows():
            rows.append({"model": mid, "oracle": t.attrs.get("oracle", ""), "term": term,
                         "meant_to_match": ctx.bayes[mid].meant_to_match, **row.to_dict()})
    table = pd.DataFrame(rows).set_index(["model", "term"])
    ctx.report.table(sec, "agreement_all", table, "Posterior mean and sd beside estimate and SE; "
                                                  "z = (posterior mean - estimate) / SE")
    ctx.report.figure(sec, "agreement", agreement_figure(tables, {k: v.meant_to_match for k, v in ctx.bayes.items()}),
                      "z-scores of every shared coefficient")



def stage_bayes_mediation(ctx: RunContext) -> None:
    from ..bayes.mediation import fit_mediation

    study = ctx.study
    r = study.roles
    sec = ctx.report.section("bayes_mediation", "Mechanisms as latent mediators (Bayesian)")
    if len(r.mechanisms) == 0:
        ctx.skip("bayes_mediation", "latent mediator model skipped: no mechanism indicators", sec)
        return
    ctx.report.text(sec, "What the panel identifies and what it assumes: the agglomeration -> mechanism links "
                         "(a_k) are identified by the two-way panel like the baseline; the mechanism -> outcome "
                         "links (b_k), and so the indirect effects a_k b_k, rest on the assumption that nothing "
                         "unobserved drives both a mechanism and NQP (Jiang Ting 2022). The sensitivity analysis "
                         "below shows how far that assumption carries them.")
    x = ctx.guarded("bayes_mediation", lambda: fit_mediation(study.frame, list(r.controls),
                                                              dict(r.mechanisms), ctx.settings, ctx.oracles), sec)
    if x:
        render_bayes(ctx, sec, x)
