"""The first screen of the report and the finishing touches that need the whole run.

``finish_report(ctx, bayes_ran=...)`` runs after every stage: it merges the report's own flags into
``summary["flagged"]``, puts the Bayesian paper-style tables beside the frequentist ones, drops skip
lines the user never asked for, records the labels in summary.json, and builds the overview: a one-line
verdict, the headline effect (frequentist estimate (SE) | posterior mean [94% HDI] | z | sd ratio), a
convergence roll-up over all fits, one box listing every flag with a link to where it comes from, and a
forest plot of the key effect across all models.

Flags are records ``{"id", "kind", "message"}`` (kind: convergence, ppc, pareto_k, sd_ratio,
prior_sensitivity, admissibility, failed); plain strings of older runs are read as convergence flags.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

import numpy as np

from .. import names
from ..conventions import FLAG_KINDS
from ..names import PAPER_RHO
from .labels import Labels
from .numbers import shorten

_KIND_TITLES = {"convergence": "convergence", "ppc": "posterior predictive check", "pareto_k": "Pareto k (LOO)",
                "sd_ratio": "posterior sd vs SE", "prior_sensitivity": "prior sensitivity",
                "admissibility": "admissibility", "failed": "failed analysis"}

# Headline pairs: (frequentist id, Bayesian id, paper-design label, generic label).
HEADLINE = (("table3_col4", "bayes_table3_col4", "Two-way FE, Table 3 (4)", "Two-way fixed effects"),
            ("table3_col4", "bayes_table3_col4_iid", "Table 3 (4), iid-error rebuild", "Two-way FE, iid-error rebuild"),
            ("iv_2sls_trend", "bayes_iv", "IV (distance x trend)", "Instrumental variables"),
            ("sdm_ml", "bayes_sdm", "Spatial Durbin (direct coefficient)", "Spatial Durbin model"))


# -- flags -------------------------------------------------------------------------------------------
def normalize_flag(item: Any) -> dict[str, str]:
    """A flag record from a record or an 'id: message' string."""
    if isinstance(item, dict):
        kind = str(item.get("kind", "convergence"))
        return {"id": str(item.get("id", "")), "kind": kind if kind in FLAG_KINDS else "convergence",
                "message": str(item.get("message", ""))}
    text = str(item)
    aid, _, msg = text.partition(": ")
    if not msg or " " in aid:
        aid, msg = "", text
    return {"id": aid, "kind": "failed" if "failed" in text else "convergence", "message": msg or text}


def append_flag(summary: dict[str, Any], record: dict[str, str]) -> None:
    """Add one flag record to ``summary["flagged"]`` (once)."""
    rec = normalize_flag(record)
    flagged = summary.setdefault("flagged", [])
    if not any(normalize_flag(f) == rec for f in flagged):
        flagged.append(rec)


def admissibility_flag(weights: Any, rho: float = PAPER_RHO, source: str = "sdm_ml") -> dict[str, str] | None:
    """A flag when the paper's rho lies outside the admissible interval (1/lambda_min, 1) of this W."""
    lo, hi = weights.rho_bounds
    if lo < rho < hi:
        return None
    return {"id": source, "kind": "admissibility",
            "message": f"The paper's rho = {rho} lies outside the admissible interval ({lo:.3f}, {hi:.0f}) of "
                       "this weights matrix, so its spatial model is not a stationary process and its "
                       "coefficients cannot be read as effects."}


def all_flags(summary: dict[str, Any]) -> list[dict[str, str]]:
    flags = [normalize_flag(f) for f in summary.get("flagged", [])]
    seen = {(f["id"], f["kind"]) for f in flags if f["kind"] == "failed"}
    for aid, message in (summary.get("failed") or {}).items():
        if (aid, "failed") not in seen:
            flags.append({"id": aid, "kind": "failed", "message": f"{aid} failed: {message}"})
    return flags


# -- numbers -----------------------------------------------------------------------------------------
def _num(x: Any, digits: int | None = None) -> str:
    """Three significant digits by default; with ``digits`` fixed decimals (z, ratios: 0.002 stays 0.002)."""
    if x is None or not np.isfinite(x):
        return "n/a"
    x = float(x)
    if digits is None:
        digits = max(2, min(6, 2 - math.floor(math.log10(abs(x))))) if x != 0 else 2
        out = f"{x:.{digits}f}"
        return f"{x:.2e}" if x != 0 and float(out) == 0 else out
    out = f"{x:.{digits}f}"
    if x != 0 and float(out) == 0 and digits > 0:
        out = f"{x:.{min(4, digits + 2)}f}"
    return out[1:] if out.startswith("-") and float(out) == 0 else out


def _post_row(result: Any, term: str) -> Any:
    s = result.summary
    for label in (f"beta[{term}]", term):
        if label in s.index:
            return s.loc[label]
    hits = [i for i in s.index if str(i).endswith(f"[{term}]")]
    return s.loc[hits[0]] if len(hits) == 1 else None


def _freq(oracle: Any, term: str) -> dict[str, float] | None:
    if oracle is None or term not in oracle.coefs.index:
        return None
    r = oracle.coefs.loc[term]
    return {"est": float(r["estimate"]), "se": float(r["std_error"]), "lo": float(r["ci_low"]),
            "hi": float(r["ci_high"]), "p": float(r["p_value"])}


# -- the overview ------------------------------------------------------------------------------------
def _headline_rows(ctx: Any, labels: Labels) -> list[dict[str, Any]]:
    t = names.AGGLOMERATION
    rows = []
    for fid, bid, paper_label, generic in HEADLINE:
        oracle, bayes = ctx.oracles.get(fid), ctx.bayes.get(bid)
        f = _freq(oracle, t)
        if f is None and bayes is None:
            continue
        p = _post_row(bayes, t) if bayes is not None else None
        agree = bayes.agreement if bayes is not None else None
        z = float(agree.loc[t, "z"]) if agree is not None and t in agree.index else float("nan")
        ratio = (float(agree.loc[t, "sd_ratio"]) if agree is not None and t in agree.index
                 and "sd_ratio" in agree.columns else float("nan"))
        boot = (float(agree.loc[t, "bootstrap_sd"]) if agree is not None and t in agree.index
                and "bootstrap_sd" in agree.columns else float("nan"))
        rows.append({"label": paper_label if labels.paper else generic, "fid": fid, "bid": bid, "freq": f,
                     "post": p, "z": z, "sd_ratio": ratio, "bootstrap_sd": boot,
                     "meant": bool(bayes.meant_to_match) if bayes is not None else False})
    return rows


def _rollup(ctx: Any) -> dict[str, Any]:
    ds = [b.diagnostics for b in ctx.bayes.values()]
    if not ds:
        return {"n": 0}

    def ext(values, fn):
        v = [x for x in values if x is not None and np.isfinite(x)]
        return fn(v) if v else float("nan")

    return {"n": len(ds), "max_r_hat": ext([d.max_r_hat for d in ds], max),
            "min_ess_bulk": ext([d.min_ess_bulk for d in ds], min),
            "min_ess_tail": ext([d.min_ess_tail for d in ds], min),
            "divergences": int(sum(int(d.divergences) for d in ds)),
            "min_bfmi": ext([d.min_bfmi for d in ds], min), "flagged": sum(not d.ok for d in ds)}


def overview_html(ctx: Any, *, bayes_ran: bool, forest_img: str) -> str:
    report = ctx.report
    labels: Labels = report.labels
    rows = _headline_rows(ctx, labels)
    roll = _rollup(ctx)
    flags = all_flags(ctx.summary)
    verdict, tone = _verdict(rows, roll, flags, labels, bayes_ran)
    if roll.get("flagged") and ctx.summary.get("settings", {}).get("quick"):
        verdict += " This was a --quick run (few draws): low ESS is expected; rerun without --quick before publishing."
    esc = html.escape

    head = ("<tr><th>model</th><th>frequentist estimate (SE)</th><th>posterior mean [94% HDI]</th>"
            "<th>z</th><th>sd ratio</th></tr>")
    body = []
    for r in rows:
        f, p = r["freq"], r["post"]
        fcell = f"{_num(f['est'])} ({_num(f['se'])})" if f else "n/a"
        pcell = f"{_num(p['mean'])} [{_num(p['ci_low'])}, {_num(p['ci_high'])}]" if p is not None else (
            "not run" if not bayes_ran else "n/a")
        link = report.anchor_for(r["bid"] if r["post"] is not None else r["fid"])
        body.append(f'<tr><th scope="row"><a href="#{link}">{esc(r["label"])}</a></th><td>{esc(fcell)}</td>'
                    f"<td>{esc(pcell)}</td><td>{_num(r['z'], 2)}</td><td>{_num(r['sd_ratio'], 2)}</td></tr>")
    table = (f'<table class="headline"><caption style="text-align:left;font-size:.85em;color:#555">Effect of '
             f"{esc(labels.treatment)} on {esc(labels.outcome)}. z = (posterior mean - estimate) / SE; sd ratio = "
             f"posterior sd / SE (clustered by {esc(labels.unit)} where the note says so).</caption>"
             f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table>") if rows else ""

    if roll["n"]:
        rollup = (f"<p class=\"rollup\"><strong>Convergence:</strong> {roll['n']} fits, max r&#770; "
                  f"{_num(roll['max_r_hat'], 3)}, min bulk ESS {_num(roll['min_ess_bulk'], 0)}, min tail ESS "
                  f"{_num(roll['min_ess_tail'], 0)}, {roll['divergences']} divergences, min BFMI "
                  f"{_num(roll['min_bfmi'], 2) if np.isfinite(roll['min_bfmi']) else 'not available'}; "
                  f"{roll['flagged']} fit(s) flagged (thresholds: r&#770; &gt; 1.01, ESS &lt; 400, any divergence, "
                  "BFMI &lt; 0.3).</p>")
    elif bayes_ran:
        rollup = '<p class="rollup"><strong>Convergence:</strong> no Bayesian model ran on these data.</p>'
    else:
        rollup = ('<p class="rollup"><strong>Bayesian stage not run</strong> (--no-bayes): this report holds the '
                  "frequentist results only.</p>")

    if flags:
        by_kind: dict[str, list[dict[str, str]]] = {}
        for fl in flags:
            by_kind.setdefault(fl["kind"], []).append(fl)
        groups = []
        for kind in FLAG_KINDS:
            items = []
            for fl in by_kind.get(kind, []):
                target = report.anchor_for(fl["id"]) if fl["id"] else "overview"
                src = f' <a href="#{target}">{esc(fl["id"])}</a>' if fl["id"] else ""
                items.append(f"<li>{esc(labels.text(fl['message']))}{src}</li>")
            if items:
                groups.append(f'<div class="kind">{esc(_KIND_TITLES[kind][:1].upper() + _KIND_TITLES[kind][1:])} '
                              f"flags ({len(items)})</div><ul>{''.join(items)}</ul>")
        box = (f'<div class="flagbox" id="flags"><strong>&#9888; {len(flags)} flag(s) to review</strong>'
               f"{''.join(groups)}</div>")
    else:
        box = ('<div class="flagbox none" id="flags"><strong>No flags:</strong> no convergence, predictive-check, '
               "Pareto-k, sd-ratio, prior-sensitivity or admissibility warning in this run.</div>")

    forest = (f'<figure id="fig-forest_key_effect">{forest_img}<figcaption>The effect of {esc(labels.treatment)} in '
              "every model: frequentist estimate with its 95% confidence interval (grey) beside the posterior mean "
              "with its 94% HDI (blue).</figcaption></figure>") if forest_img else ""
    return (f'<section id="overview"><h2>Overview</h2><p class="verdict {tone}">{esc(verdict)}</p>{table}{rollup}'
            f"{box}{forest}</section>")


def _verdict(rows: list[dict[str, Any]], roll: dict[str, Any], flags: list[dict[str, str]], labels: Labels,
             bayes_ran: bool) -> tuple[str, str]:
    parts = []
    main = rows[0] if rows else None
    if main and main["freq"]:
        f = main["freq"]
        sign = "positive" if f["est"] > 0 else "negative"
        sig = "significant at 1%" if f["p"] < 0.01 else "significant at 5%" if f["p"] < 0.05 else (
            "not significant at 5%")
        parts.append(f"{labels.treatment[:1].upper() + labels.treatment[1:]} has a {sign} effect on "
                     f"{labels.outcome} ({_num(f['est'])}, SE {_num(f['se'])}, {sig}).")
    tone = "good"
    matched = [r for r in rows if r["meant"] and np.isfinite(r["z"])]
    if not bayes_ran:
        parts.append("Bayesian stage not run.")
        tone = "warn"
    elif matched:
        worst = max(abs(r["z"]) for r in matched)
        from ..conventions import MATCH_TOLERANCE_Z

        if worst <= MATCH_TOLERANCE_Z:
            parts.append(f"Bayesian and frequentist estimates agree (max |z| {worst:.2f}).")
        else:
            parts.append(f"Bayesian and frequentist estimates disagree (max |z| {worst:.2f}).")
            tone = "bad"
    if bayes_ran:
        from ..conventions import SD_RATIO_LOW

        # models that are not meant to match (the error-structure headline) are judged too: how far the
        # weighting moves them and whether their interval is narrower than the design-based SE
        moved = [r for r in rows if not r["meant"] and np.isfinite(r["z"]) and abs(r["z"]) > 0.5]
        for r in moved:
            parts.append(f"{r['label']}: the Bayesian model sits {abs(r['z']):.1f} SE from the frequentist "
                         "estimate (see its note).")
        narrow = [r for r in rows if np.isfinite(r["sd_ratio"]) and r["sd_ratio"] < SD_RATIO_LOW]
        if narrow:
            parts.append(f"{narrow[0]['label']}: the posterior is narrower than the clustered SE (sd ratio "
                         f"{narrow[0]['sd_ratio']:.2f}): read its intervals with care.")
        if moved or narrow:
            tone = "warn" if tone == "good" else tone
    if roll["n"]:
        if roll["flagged"]:
            parts.append(f"{roll['flagged']} of {roll['n']} fits failed a convergence check.")
            tone = "bad"
        else:
            parts.append(f"All {roll['n']} fits converged.")
    other = [f for f in flags if f["kind"] != "convergence"]
    if other:
        parts.append(f"{len(other)} other warning(s) below.")
        tone = "warn" if tone == "good" else tone
    return " ".join(parts) or "No analysis produced an estimate.", tone


def forest_rows(ctx: Any, labels: Labels) -> list[dict[str, Any]]:
    """One row per model that estimates the key effect on the outcome; Bayesian fits beside their oracle."""
    t = names.AGGLOMERATION
    rows, used = [], set()
    for bid, b in ctx.bayes.items():
        p = _post_row(b, t)
        if p is None:
            continue
        oid = b.agreement.attrs.get("oracle") if b.agreement is not None else None
        f = _freq(ctx.oracles.get(oid), t) if oid else None
        if f is not None and b.meant_to_match:
            used.add(oid)
        rows.append({"label": labels.text(shorten(b.title, 48)), "mean": float(p["mean"]), "hdi_low": float(p["ci_low"]),
                     "hdi_high": float(p["ci_high"]),
                     **({"est": f["est"], "lo": f["lo"], "hi": f["hi"]} if f and b.meant_to_match else {})})
    for oid, o in ctx.oracles.items():
        if oid in used or oid.startswith(("table4_", "konfound", "moran", "lm_", "hetero_")):
            continue
        if getattr(o, "dep_var", names.NQP) not in (names.NQP, None, ""):
            continue
        f = _freq(o, t)
        if f is None or not np.isfinite(f["est"]):
            continue
        title = o.title or oid
        if not labels.paper:
            title = re.sub(r"^Table \d+ ", "Baseline ", title)
        rows.append({"label": labels.text(shorten(title, 48)), "est": f["est"], "lo": f["lo"], "hi": f["hi"]})
    return rows


# Which config keys ask for an analysis family: a skip line is shown only when the user asked for it
# (or the data are the paper's design, whose defaults are the paper's own requests).
_ASKED_BY = {"table4": ("mechanisms",), "bayes_mediation": ("mechanisms",), "mechanism_": ("mechanisms",),
             "heterogeneity": ("splitters",), "bayes_groups": ("splitters",), "hetero_": ("splitters",),
             "iv_2sls": ("instrument",), "bayes_iv": ("instrument",), "controls": ("controls",)}
_SPATIAL_IDS = ("spatial", "sdm_ml", "bayes_sdm")
# One reason per family, so a stage and the data check never contradict each other.
_FAMILY = {"bayes_iv": "iv_2sls", "bayes_sdm": "spatial", "sdm_ml": "spatial", "bayes_mediation": "table4",
           "bayes_groups": "heterogeneity"}


def _asked(aid: str, cfg: Any, paper: bool) -> bool:
    if paper:
        return True
    if aid in _SPATIAL_IDS:
        return bool(getattr(cfg, "weights_file", "")) or getattr(cfg, "spatial", "auto") in ("true", "false")
    if aid == "bayes_province_slopes":
        return False  # automatic for the bundled cities; never a request of the config
    for prefix, keys in _ASKED_BY.items():
        if aid == prefix or (prefix.endswith("_") and aid.startswith(prefix)):
            return any(k in cfg.explicit for k in keys)
    return True


def tidy_skips(ctx: Any) -> None:
    """Hide skip lines for analyses the user never asked for; give each family one consistent reason;
    drop sections left empty."""
    report, summary = ctx.report, ctx.summary
    cfg, paper = ctx.study.config, report.labels.paper
    skipped: dict[str, str] = summary.get("skipped", {})
    by_reason = {reason: aid for aid, reason in skipped.items()}
    canonical = {aid: skipped.get(_FAMILY.get(aid, aid), reason) for aid, reason in skipped.items()}
    for section in report.sections:
        keep = []
        for b in section.blocks:
            if b.kind == "skip":
                aid = by_reason.get(b.reason, "")
                if aid and not _asked(aid, cfg, paper):
                    continue
                if aid and canonical.get(aid, b.reason) != b.reason:
                    reason = canonical[aid]
                    b.html = f'<p class="skip">Not run: {html.escape(report.labels.text(reason))}</p>'
            keep.append(b)
        # the same line twice in a section (the data check and the stage) is shown once
        seen: set[str] = set()
        section.blocks = []
        for b in keep:
            if b.kind == "skip" and b.html in seen:
                continue
            seen.add(b.html)
            section.blocks.append(b)
        if section.blocks and all(b.kind == "skip" for b in section.blocks) and not paper:
            section.hidden = not any(_asked(by_reason.get(b.reason, ""), cfg, paper) for b in section.blocks)


def bayes_tables(ctx: Any) -> None:
    """Paper-style Bayesian tables beside their frequentist twins."""
    from .tables import bayes_paper_table

    report, labels = ctx.report, ctx.report.labels
    treatment = names.AGGLOMERATION
    specs = (("bayes_table3", [f"bayes_table3_col{i}" for i in range(1, 5)], ["(1)", "(2)", "(3)", "(4)"],
              "Baseline regressions, Bayesian" + (" (Table 3 rebuilt)" if labels.paper else "")),
             ("bayes_iv", ["bayes_iv"], ["IV"], "Instrumental variables, Bayesian"),
             ("bayes_spatial", ["bayes_sdm", "bayes_sar", "bayes_sem", "bayes_slx"], ["SDM", "SAR", "SEM", "SLX"],
              "Spatial models, Bayesian" + (" (Table 5 rebuilt)" if labels.paper else "")))
    for sid, ids, cols, title in specs:
        have = [(i, c) for i, c in zip(ids, cols) if i in ctx.bayes]
        section = next((s for s in report.sections if s.id == sid), None)
        if not have or section is None:
            continue
        results = [ctx.bayes[i] for i, _ in have]
        terms: list[str] = []
        for r in results:
            for t in (r.agreement.index if r.agreement is not None else []):
                if t not in terms and t != "constant":
                    terms.append(t)
        if treatment not in terms:
            terms.insert(0, treatment)
        table = bayes_paper_table(results, title=title, key_term=treatment, column_labels=[c for _, c in have],
                                  terms=terms, term_labels={t: labels.term(t) for t in terms})
        report.table(section, f"{sid}_paper", table, title, first=True)


def finish_report(ctx: Any, *, bayes_ran: bool) -> None:
    """Everything that needs the whole run; call after the last stage, before summary.json is written."""
    from .figures import forest_plot

    report, summary, study = ctx.report, ctx.summary, ctx.study
    labels: Labels = report.labels
    summary["labels"] = labels.to_dict()
    data = summary.setdefault("data", {})
    data["columns"] = {role: col for role, col in labels.columns.items()}  # the user's column per internal role
    data["outcome_column"] = labels.columns.get(names.NQP, "")
    data["treatment_column"] = labels.columns.get(names.AGGLOMERATION, "")
    data["paper_design"] = labels.paper
    if labels.paper and study.weights is not None:
        flag = admissibility_flag(study.weights)
        if flag:
            append_flag(summary, flag)
    if not bayes_ran:
        report.meta["sampler"] = "Bayesian stage not run (--no-bayes): frequentist results only"
    if bayes_ran:
        bayes_tables(ctx)
    tidy_skips(ctx)
    rows = forest_rows(ctx, labels)
    img = report.save_figure("forest_key_effect", forest_plot(rows, treatment=labels.treatment),
                             f"Effect of {labels.treatment} in every model") if rows else ""
    report.overview_html = overview_html(ctx, bayes_ran=bayes_ran, forest_img=img)


__all__ = ["FLAG_KINDS", "admissibility_flag", "all_flags", "append_flag", "finish_report", "forest_rows",
           "normalize_flag", "overview_html"]
