"""Group-specific agglomeration slopes on the column (4) structure: median-split groups (one model per
splitter) and province-varying slopes, both partially pooled.

Slopes: beta_g ~ Normal(group_mean, group_sd) on the within-city deviation of agglomeration (dims
``group`` / ``province``); the other regressors keep common slopes and the year effects are zero-sum of
fixed scale. The city effects are in Mundlak form, or, with column (4)'s error options (the bundled
median-split spec), flat-prior fixed effects integrated out beside AR(1) errors, with city error scales
and random city slopes where leave-one-city-out LOO keeps them (``panel.fit_selecting_errors``).

Parameterisation (``options.slopes = "auto"``, chosen from a least-squares pre-fit, see
panel_data.choose_slope_param): when the data pin each group slope down more tightly than group_sd's
approximate posterior says the groups spread, the group mean is integrated out while sampling (slopes ~
MVN(0, group_sd^2 I + s^2 J)) and drawn afterwards from its exact conditional, because the sampled mean
forms a ridge (non-centred) or a funnel (centred) with informative groups; measured on the demo this
lifted the minimum ESS of the province model from about 200 to about 4000. When group_sd's posterior
piles near zero (many look-alike groups), the non-centred form is used. Two halves that share one slope
still go to the marginal form when group_sd's prior keeps it off zero: at 2,850 regions the non-centred
form gave r_hat 1.10 and 322 divergences there. For the two median-split halves group_sd has a
Gamma(2, 10) prior (standardised scale) that keeps it off zero: two groups say almost nothing about a
between-group sd. Both choices live in the specs (models/bayes_groups.toml, models/bayes_province_slopes.toml). One compiled model serves every
splitter (same structure, data swapped).
"""

from __future__ import annotations

from typing import Any

import arviz as az
# Figures are built as matplotlib.figure.Figure objects: no pyplot state, no backend switch at import
# (a notebook keeps its own backend).
from matplotlib.figure import Figure
import numpy as np
import pandas as pd

from ..conventions import CI_PROB
from .. import names
from ..names import AGGLOMERATION, CITY
from ..panelops import median_split as median_split_values
from ..results import AnalysisResult
from .errors import IID_ONLY_NOTES
from .panel import draw_group_mean, finish, fit_selecting_errors
from .result import BayesResult
from .sampling import SamplerSettings
from .spec import ModelSpec, load_spec

GROUPS = ("low", "high")


def median_split(frame: pd.DataFrame, splitter: str) -> pd.Series:
    """City -> 'low' / 'high' by the median over cities of each city's mean of ``splitter``; a city at
    the median goes low (same rule as the frequentist median split)."""
    if splitter not in frame.columns:
        raise ValueError(f"panel lacks the splitter column {splitter!r}")
    means = frame[splitter].groupby(level=CITY).mean()
    if means.isna().any():
        raise ValueError(f"{splitter}: no value for cities {means.index[means.isna()].tolist()[:5]}")
    high, _ = median_split_values(means.to_numpy())
    labels = pd.Series(np.where(high, "high", "low"), index=means.index.astype(str), name=splitter)
    return labels.astype(pd.CategoricalDtype(list(GROUPS), ordered=True))


def reported(idata: az.InferenceData, candidates: list[str]) -> list[str]:
    """The candidates the posterior holds (the error options decide which scale parameters exist)."""
    return [v for v in candidates if v in idata.posterior]


GROUP_NOTE = ("Not meant to match exactly. The oracle fits the two-way FE model separately in each group (its "
              "controls and year effects differ by group); this model keeps common control slopes and year "
              "effects and partially pools the two agglomeration slopes toward their common mean. Both "
              "differences move the group slopes by amounts that depend on the data; z shows how far. With "
              "column (4)'s error structure the model also weights cities and years by their modelled error "
              "covariance (like feasible GLS), which moves the slopes further where slopes or error scales "
              "vary with how much agglomeration moves within a city.")


def fit_groups(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], splitters: list[str] | tuple[str, ...],
               settings: SamplerSettings, oracles: dict[str, AnalysisResult] | None,
               spec: ModelSpec | None = None) -> list[BayesResult]:
    """One model per splitter: low/high agglomeration slopes, their difference and P(high > low).
    ``spec``: the model spec (default ``models/bayes_groups.toml``)."""
    oracles = oracles or {}
    spec = spec or load_spec("bayes_groups")
    results = []
    for splitter in splitters:
        labels = median_split(frame, splitter)
        model, idata, pdata, selection, selection_notes = fit_selecting_errors(
            frame, spec, controls, settings, slope_groups=labels, group_dim=names.GROUP)
        draw_group_mean(idata, spec, pdata, seed=settings.seed, dim=names.GROUP)
        bg = idata.posterior["beta_group"]
        diff = bg.sel(group="high") - bg.sel(group="low")
        idata.posterior["difference"] = diff.drop_vars(names.GROUP, errors="ignore")
        p_high = float((diff > 0).mean())
        oracle = oracles.get(spec.oracle.format(splitter=splitter)) if spec.oracle else None
        terms = None
        if oracle is not None:
            terms = {f"{AGGLOMERATION}[{g}]": f"beta_group[{g}]" for g in GROUPS
                     if f"{AGGLOMERATION}[{g}]" in oracle.coefs.index}
            if "difference" in oracle.coefs.index:
                terms["difference"] = "difference"
            terms.update({t: f"beta[{t}]" for t in model.coords["coef"] if t in oracle.coefs.index})
        var_names = reported(idata, ["beta_group", "difference", "group_mean", "group_sd", "beta", "sigma",
                                     "sigma_city", "phi", "city_scale_sd", "slope_sd"])
        counts = labels.value_counts()
        extra: dict[str, Any] = {"splitter": splitter, "p_high_gt_low": p_high,
                                 "n_cities": {g: int(counts.get(g, 0)) for g in GROUPS}, **selection}
        results.append(finish(spec, model, idata, oracle=oracle, terms=terms, meant_to_match=False, pdata=pdata,
                              agreement_note=GROUP_NOTE, var_names=var_names, extra=extra,
                              result_id=f"{spec.id}_{splitter}",
                              title=f"{spec.title}: {splitter}",
                              notes=(f"P(high > low) = {p_high:.3f}", *selection_notes,
                                     *(() if spec.options.get("errors") else (IID_ONLY_NOTES["groups"],)))))
    return results


def can_render(text: str) -> bool:
    """Whether matplotlib's default font has a glyph for every character of ``text`` (Chinese province
    names need a CJK font, which many machines lack)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    charmap = font.get_charmap()
    return all(ord(ch) in charmap for ch in text)


def display_labels(provinces: pd.Series, labels: pd.Series | dict[str, str] | None) -> dict[str, str]:
    """Province -> label for the plot: ``labels`` where given (e.g. pinyin), the name itself where the
    font can draw it, else the province's adcode (first two digits of its cities' adcodes + '0000')."""
    given = dict(labels) if labels is not None else {}
    out = {}
    for prov, cities in provinces.groupby(provinces).groups.items():
        prov = str(prov)
        if prov in given:
            out[prov] = str(given[prov])
        elif can_render(prov):
            out[prov] = prov
        else:
            out[prov] = f"{str(cities[0])[:2]}0000"
    return out


def fit_province_slopes(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], provinces: pd.Series,
                        settings: SamplerSettings, *, labels: pd.Series | dict[str, str] | None = None,
                        spec: ModelSpec | None = None) -> BayesResult:
    """Province-varying agglomeration slopes (partially pooled) with a forest plot. ``labels``:
    province -> name shown in the plot (e.g. pinyin) where the plot font lacks the original's glyphs.
    ``spec``: default ``models/bayes_province_slopes.toml``."""
    spec = spec or load_spec("bayes_province_slopes")
    cities = frame.index.get_level_values(CITY).astype(str).unique()
    names_ = pd.Series(provinces, copy=True)
    names_.index = names_.index.astype(str)
    missing = [c for c in cities if c not in names_.index or pd.isna(names_.get(c))]
    if missing:
        raise ValueError(f"no province for cities {missing[:5]}")
    labels_of_cities = names_.loc[list(cities)].astype(str)
    model, idata, pdata, selection, selection_notes = fit_selecting_errors(
        frame, spec, controls, settings, slope_groups=labels_of_cities, group_dim=names.PROVINCE)
    draw_group_mean(idata, spec, pdata, seed=settings.seed, dim=names.PROVINCE)
    var_names = reported(idata, ["beta_group", "group_mean", "group_sd", "beta", "sigma", "sigma_city", "phi",
                                 "city_scale_sd", "slope_sd"])
    counts = labels_of_cities.value_counts()
    fig = forest_plot(idata, "beta_group", names.PROVINCE, counts, display_labels(labels_of_cities, labels))
    bg = idata.posterior["beta_group"]
    p_pos = (bg > 0).mean(("chain", "draw")).to_series()
    extra = {"n_provinces": int(len(counts)), "cities_per_province": {str(k): int(v) for k, v in counts.items()},
             "p_positive": {str(k): float(v) for k, v in p_pos.items()}, **selection}
    notes = selection_notes if spec.options.get("errors") else (IID_ONLY_NOTES["province"],)
    return finish(spec, model, idata, oracle=None, meant_to_match=False, agreement_note="", pdata=pdata,
                  var_names=var_names, extra=extra, figures={"province_slopes": fig}, notes=notes)


def forest_plot(idata: az.InferenceData, var: str, dim: str, counts: pd.Series | None = None,
                display: dict[str, str] | None = None):
    """Posterior mean and CI_PROB HDI of each group's slope, sorted, with the common mean marked."""
    post = idata.posterior[var]
    mean = post.mean(("chain", "draw")).to_series()
    hdi = az.hdi(post, hdi_prob=CI_PROB)[var]
    lo = hdi.sel(hdi="lower").to_series()
    hi = hdi.sel(hdi="higher").to_series()
    order = mean.sort_values().index
    fig = Figure(figsize=(6, 0.22 * len(order) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(order))
    ax.hlines(y, lo[order], hi[order], color="C0", lw=1.5)
    ax.plot(mean[order], y, "o", color="C0", ms=4)
    if "group_mean" in idata.posterior:
        ax.axvline(float(idata.posterior["group_mean"].mean()), color="k", ls="--", lw=0.8,
                   label="common mean")
    ax.axvline(0, color="0.6", lw=0.8)
    display = display or {}
    names = [f"{display.get(str(g), g)} ({int(counts[g])})" if counts is not None and g in counts.index
             else str(display.get(str(g), g)) for g in order]
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel(f"agglomeration slope ({int(CI_PROB * 100)}% HDI)")
    ax.set_title(f"Agglomeration slope by {dim}")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
