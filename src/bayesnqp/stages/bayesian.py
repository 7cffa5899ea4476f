"""Stage 3: the Bayesian rebuilds, each rendered the same way: posterior table, agreement with its
oracle, diagnostics flags, figures and extra tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..bayes.result import BayesResult
from ..bayes.spec import ModelSpec, load_spec
from ..checks import flags as fl
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
            if ratio < fl.SD_RATIO_LOW:
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
    for record in check_flags(result):
        ctx.flag(record, section)
    if HEADLINE.match(result.id):
        prior_sensitivity(ctx, section, result)
    if "likelihoods" in result.extra:  # one spec fitted under several likelihoods
        sentence = likelihood_choice(result)
        if sentence:
            report.text(section, sentence)
            ctx.summary["analyses"][result.id]["likelihood_choice"] = sentence
    for name, frame in result.tables.items():
        if isinstance(frame, pd.DataFrame):
            report.table(section, f"{result.id}_{name}", frame, f"{result.id}: {name.replace('_', ' ')}")
    for name, fig in result.figures.items():
        report.figure(section, f"{result.id}_{name}", fig, f"{result.id}: {name.replace('_', ' ')}")


# Headline models: their key term's posterior sd is judged against the oracle's clustered SE.
HEADLINE = re.compile(r"^bayes_(table3_col[1-4](_iid)?|iv|mediation|groups_.+)$")
HEADLINE_TERMS = ("agglomeration", "agglomeration[low]", "agglomeration[high]", "difference")

SD_LOW_REASON = {
    "panel": ("The model treats city-years as independent once the city and year effects are in; the clustered "
              "SE and the city-level bootstrap allow any correlation within a city, so the posterior interval is "
              "too narrow wherever residuals are serially correlated."),
    "structured": ("The model weights cities and years by its modelled error covariance (AR(1), city error "
                   "scales, random slopes), like feasible GLS, so its interval is for a reweighted slope, "
                   "not for the least-squares estimate the clustered SE describes; a narrow interval beside a "
                   "large |z| means the weighting changes the answer (slopes or error scales vary with how "
                   "much the treatment moves within cities, or the treatment is measured with error)."),
    "iv": ("The joint model's errors are independent across city-years; the 2SLS SE is clustered by city."),
    "mediation": ("The latent-mediator likelihood treats the within-transformed city-years as independent; the "
                  "Table 4 SEs are clustered by city."),
}
SD_HIGH_REASON = {
    "panel": ("The posterior is wider than the clustered SE: partial pooling, common control slopes and year "
              "effects, or weak information about this term widen it."),
    "structured": ("The posterior is wider than the clustered SE: the random city slopes add the spread of "
                   "the slopes across cities to the uncertainty of their mean."),
    "iv": ("The joint Normal model is the likelihood counterpart of LIML, whose uncertainty exceeds 2SLS's when "
           "the instrument is not strong."),
    "mediation": ("The indicator effect a_k x loading carries the uncertainty of the loading as well as of a_k."),
}


def _family(result: BayesResult) -> str:
    rid = result.id
    if rid in ("bayes_iv", "bayes_mediation"):
        return rid.removeprefix("bayes_")
    return "structured" if "phi" in result.idata.posterior or "city_scale_sd" in result.idata.posterior else "panel"


def check_flags(result: BayesResult) -> list[fl.Flag]:
    """Every flag a fitted model raises beyond convergence (added by ``ctx.add_bayes``): interval width
    against the design-based SE for headline models, posterior predictive p-values and Pareto k."""
    out: list[fl.Flag] = []
    rid = result.id
    table = result.agreement
    if table is not None and HEADLINE.match(rid):
        family = _family(result)
        terms = None if family == "mediation" else [t for t in table.index if str(t) in HEADLINE_TERMS]
        out += fl.sd_ratio_flags(rid, table, terms, reason_low=SD_LOW_REASON[family],
                                 reason_high=SD_HIGH_REASON[family])
    extra = result.extra or {}
    ppc = extra.get("ppc")
    if isinstance(ppc, dict):  # per likelihood: {statistic: {"p_value": ...}}
        for lik, stats in ppc.items():
            if isinstance(stats, dict):
                out += fl.ppc_statistics_flags(rid, stats, what=f"{lik} likelihood")
    if isinstance(extra.get("ppc_p_values"), dict):
        out += fl.nested_ppc_flags(rid, extra["ppc_p_values"], what="latent-mediator model")
    pareto = extra.get("pareto_k")
    if isinstance(pareto, dict):
        for lik, counts in pareto.items():
            if isinstance(counts, dict):
                out += fl.pareto_counts_flags(rid, counts, what=f"{lik} likelihood")
    return out


def likelihood_choice(result: BayesResult) -> str:
    """Which likelihood fits better, and whether the headline uses it (it uses the Normal; this says why)."""
    extra = result.extra or {}
    compare = extra.get("compare") or {}
    ppc = extra.get("ppc") or {}
    if not compare:
        return ""
    best = next(iter(compare))
    normal_bad = [k for k, v in (ppc.get("normal") or {}).items()
                  if isinstance(v, dict) and fl.ppc_outside(float(v.get("p_value", np.nan)))]
    if best == "normal":
        return ("LOO prefers the Normal likelihood, the one the headline Table 3 (4) model uses"
                + (f", although it fails its PPC on {', '.join(normal_bad)}." if normal_bad else "."))
    diff = compare.get("normal", {}).get("elpd_diff")
    dse = compare.get("normal", {}).get("dse")
    by = (f" over the Normal by {diff:.1f} elpd (se of the difference {dse:.1f})"
          if diff is not None and dse is not None else "")

    def slope(lik: str) -> str:
        label = f"beta_{lik}[agglomeration]"
        if label not in result.summary.index:
            return ""
        row = result.summary.loc[label]
        return f"{row['mean']:.4f} (sd {row['sd']:.4f})"

    fails = (f"The Normal likelihood fails its posterior predictive check ({', '.join(normal_bad)}) and "
             if normal_bad else "")
    sentence = (f"{fails}LOO prefers the {best} likelihood{by}. The Table 3 (4) models "
                "(bayes_table3_col4 and its iid rebuild bayes_table3_col4_iid) nevertheless keep the Normal "
                "likelihood: the iid rebuild's job is to reproduce the two-way fixed-effects estimate, a least-squares estimator that a weak-prior Normal model "
                "reproduces; its uncertainty is judged against the clustered SE and the city-level bootstrap "
                "rather than taken from the Normal model's own sd, which the failed checks make too optimistic.")
    if slope("normal") and slope(best):
        sentence += (f" The agglomeration slope under the Normal likelihood is {slope('normal')}, under the "
                     f"{best} likelihood {slope(best)}" + ("; LogNormal slopes are semi-elasticities, not "
                                                          "comparable in size." if best == "lognormal" else "."))
    return sentence


# Standard-Normal innovations of non-centred hierarchical effects: structural, not a prior choice.
NONCENTRED_INNOVATIONS = ("city_z", "group_z", "city_scale_z")


def prior_sensitivity(ctx: RunContext, section, result: BayesResult) -> None:
    """Power-scaling sensitivity of a headline model's reported quantities: a table, a summary.json entry,
    flags where the prior drives a posterior, and, for the mediation model, a sentence on the loadings."""
    from ..checks.sensitivity import power_scaling, unavailable

    def run() -> None:
        var_names = sorted({str(i).split("[", 1)[0] for i in result.summary.index})
        if result.model is None:
            s = unavailable("the result does not carry the model that produced its draws")
        else:
            s = power_scaling(result.model, result.idata, var_names,
                              likelihood_potentials=result.likelihood_potentials,
                              exclude_priors=NONCENTRED_INNOVATIONS)
        ctx.summary["analyses"][result.id]["prior_sensitivity"] = s.block()
        if not s.available:
            ctx.report.text(section, f"{result.id}: prior sensitivity not available: {s.reason}.")
            return
        ctx.report.table(section, f"{result.id}_prior_sensitivity", s.table,
                         f"{result.id}: power-scaling sensitivity (prior and likelihood; "
                         f"{fl.PSENS_THRESHOLD} or more is sensitive)",
                         note=f"Priors scaled: {', '.join(s.scaled_priors)}; likelihood terms: "
                              f"{', '.join(s.likelihood_terms)}; hierarchical priors are not scaled.")
        for record in fl.prior_sensitivity_flags(result.id, s.table):
            ctx.flag(record, section)
        if result.id == "bayes_mediation":
            loads = s.table.loc[[i for i in s.table.index if str(i).startswith("loading[")]]
            if not loads.empty:
                driven = [str(i) for i, r in loads.iterrows() if r["diagnosis"] != "-"]
                text = ("Each mechanism has two indicators, so its second loading is identified only through the "
                        "paths (a_k and b_k). Power-scaling: ")
                text += (f"{', '.join(driven)} depend on the prior ({'; '.join(loads.loc[driven, 'diagnosis'])}); "
                         "read the indirect effects built on them with that in mind." if driven else
                         "no loading is prior-driven (prior sensitivity below "
                         f"{fl.PSENS_THRESHOLD} for all {len(loads)}), so the data identify them.")
                ctx.report.text(section, text)

    ctx.guarded(f"{result.id}_prior_sensitivity", run, section)


def fit_analysis(ctx: RunContext, section, spec: ModelSpec) -> list[BayesResult]:
    """One spec through its family's driver (``bayes.registry``): skipped with the reason where the study
    cannot run it, guarded like every analysis; the results are not rendered yet."""
    from ..bayes import registry

    if not ctx.wants(spec.id):
        return []
    reason = registry.unavailable(ctx.study, spec)
    if reason:
        ctx.skip(spec.id, reason, section)
        return []
    request = registry.FitRequest(ctx.study, spec, ctx.settings, ctx.oracles)
    return ctx.guarded(spec.id, lambda: registry.fit(request), section) or []


def fit_and_render(ctx: RunContext, section, spec_ids: list[str]) -> list[BayesResult]:
    results = [r for i in spec_ids for r in fit_analysis(ctx, section, load_spec(i))]
    for result in results:
        render_bayes(ctx, section, result)
    return results


def stage_bayes_panel(ctx: RunContext) -> None:
    from ..bayes.table3 import TABLE3_IDS, attach_error_structure_loo

    report = ctx.report
    sec = report.section("bayes_table3", "Table 3 rebuilt: Bayesian hierarchical models")
    report.text(sec, "Weakly informative priors on the standardised scale (regressors and outcome standardised "
                     "inside each model; coefficients reported on the original scale). Column (4) comes twice: "
                     "bayes_table3_col4 models AR(1) errors within cities, city error scales and random city "
                     "slopes (city effects as fixed effects, integrated out; the random slopes and then the city "
                     "scales are kept only where leave-one-city-out LOO prefers them by more than 4 nats), so "
                     "its interval reflects that error structure; bayes_table3_col4_iid keeps iid errors with the "
                     "city effects in correlated-random-effects (Mundlak) form, so its posterior reproduces the "
                     "two-way within estimator; bayes_re drops the Mundlak terms to show what they change.")
    table3 = [r for i in TABLE3_IDS for r in fit_analysis(ctx, sec, load_spec(i))]
    attach_error_structure_loo(table3)  # the two column (4) models compared, before either is rendered
    for result in table3:
        render_bayes(ctx, sec, result)
    fit_and_render(ctx, sec, ["bayes_re"])
    sec = report.section("bayes_likelihoods", "Which likelihood fits: posterior predictive checks and LOO")
    fit_and_render(ctx, sec, ["bayes_likelihoods"])


def stage_user_models(ctx: RunContext) -> None:
    """New analyses from the user's model folder (``--models``), of any family, each through its family's
    driver. A panel spec that names no oracle is held against least squares with the same terms and
    fixed effects (oracle id: the spec id without ``bayes_``, plus ``_ls``)."""
    from ..bayes.registry import oracle_id
    from ..frequentist.panel import fit_panel

    study, report = ctx.study, ctx.report
    sec = report.section("user_models", "Your models (from the model folder)")
    report.text(sec, "Each model below comes from a spec in the model folder given to this run, fitted by its "
                     "family's driver. A spec's 'oracle' names the frequentist result it is held against; a panel "
                     "spec that names none is compared with least squares on the same terms, with city fixed "
                     "effects where the spec has city effects and year fixed effects where it has year effects "
                     "(city-clustered SEs).")
    for spec in ctx.user_specs:
        if spec.builder == "panel" and not spec.oracle:
            def least_squares(spec=spec) -> bool:
                terms = spec.expand_terms(list(study.roles.controls))
                ctx.add_oracle(fit_panel(study.frame, spec.outcome, terms, se="cluster",
                                         city_fe=spec.effects.get("city", "none") != "none",
                                         year_fe=spec.effects.get("year", "none") != "none",
                                         id=oracle_id(spec), title=f"{spec.title} (least squares)",
                                         key_term=terms[0]))
                return True
            if not ctx.guarded(spec.id, least_squares, sec):  # not selected, or it failed (recorded)
                continue
        for result in fit_analysis(ctx, sec, spec):
            render_bayes(ctx, sec, result)


def stage_bayes_groups(ctx: RunContext) -> None:
    sec = ctx.report.section("bayes_groups", "Group-specific effects: partially pooled slopes")
    fit_and_render(ctx, sec, ["bayes_groups", "bayes_province_slopes"])


def stage_bayes_iv(ctx: RunContext) -> None:
    sec = ctx.report.section("bayes_iv", "Bayesian instrumental variables")
    fit_and_render(ctx, sec, ["bayes_iv"])


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
    figure = agreement_figure(tables, {k: v.meant_to_match for k, v in ctx.bayes.items()},
                              key_term=ctx.study.roles.treatment, key_label=ctx.report.labels.treatment)
    ctx.report.figure(sec, "agreement", figure, "z-scores of every shared coefficient, one row per model")



def stage_bayes_mediation(ctx: RunContext) -> None:
    sec = ctx.report.section("bayes_mediation", "Mechanisms as latent mediators (Bayesian)")
    if ctx.study.roles.mechanisms:
        ctx.report.text(sec, "What the panel identifies and what it assumes: the agglomeration -> mechanism "
                             "links (a_k) are identified by the two-way panel like the baseline; the mechanism -> "
                             "outcome links (b_k), and so the indirect effects a_k b_k, rest on the assumption that "
                             "nothing unobserved drives both a mechanism and NQP (Jiang Ting 2022). The "
                             "sensitivity analysis below shows how far that assumption carries them.")
    fit_and_render(ctx, sec, ["bayes_mediation"])
