"""Table 3 rebuilt: columns (1)-(4), column (4) twice (the structured errors of ``bayes_table3_col4``
and the iid rebuild ``bayes_table3_col4_iid``), and the leave-one-city-out comparison of those two error
structures on one currency (each city's density of its within-city contrasts)."""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm

from ..names import COEF, YEAR
from ..results import AnalysisResult
from .error_selection import city_loo, loo_of, paired_difference
from .errors import city_sums
from .panel import fit_panel
from .result import BayesResult
from .sampling import SamplerSettings
from .spec import load_spec


# The Table 3 analyses in the order the report shows them: columns (1)-(4), then column (4)'s iid rebuild.
TABLE3_IDS = ("bayes_table3_col1", "bayes_table3_col2", "bayes_table3_col3", "bayes_table3_col4",
              "bayes_table3_col4_iid")


def fit_table3(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings,
               oracles: dict[str, AnalysisResult] | None, *, columns: tuple[int, ...] = (1, 2, 3, 4)
               ) -> list[BayesResult]:
    """Table 3 columns (1)-(4) (column (4) twice: the honest error structure and the iid rebuild), with
    the two column (4) models compared by leave-one-city-out LOO."""
    oracles = oracles or {}
    ids = [i for i in TABLE3_IDS if i.removeprefix("bayes_table3_col")[:1] in {str(c) for c in columns}]
    specs = [load_spec(i) for i in ids]
    results = [fit_panel(frame, controls, settings, spec, oracles.get(spec.oracle)) for spec in specs]
    attach_error_structure_loo(results)
    return results


def attach_error_structure_loo(results: list[BayesResult]) -> None:
    """Where both column (4) models are among ``results``, put their leave-one-city-out comparison into
    the honest model's ``extra["error_structure_loo"]``."""
    by_id = {r.id: r for r in results}
    honest, iid = by_id.get("bayes_table3_col4"), by_id.get("bayes_table3_col4_iid")
    if honest is None or iid is None:
        return
    try:
        comparison = compare_error_structures((honest.model, honest.idata), (iid.model, iid.idata))
    except Exception as exc:  # noqa: BLE001 - a failed comparison must not discard the sampled fits
        comparison = {"error": f"{type(exc).__name__}: {exc}"}
    honest.extra["error_structure_loo"] = comparison


def within_city_loglik_iid(model: pm.Model, idata: az.InferenceData) -> np.ndarray:
    """(chain, draw, city) log-density of each city's within-city contrasts under an iid-error marginal
    model (column (4) iid): -1/2 [(T_i - 1) log(2 pi s^2) + log T_i + SS_i / s^2], SS_i the within-city sum
    of squares of y - (X beta + year effects), s = sigma. The same currency as the structured models'
    pointwise terms (bayes/errors.py), so leave-one-city-out LOO compares them like for like."""
    post = idata.posterior
    y_centre, y_scale = float(model["y_centre"].get_value()), float(model["y_scale"].get_value())
    X = np.asarray(model["X"].get_value())
    city_idx = np.asarray(model["city_idx"].get_value())
    mean = np.einsum("nk,cdk->cdn", X, post["beta_std"].transpose("chain", "draw", COEF).values)
    if "year_effect_std" in post:
        tau = post["year_effect_std"].transpose("chain", "draw", YEAR).values
        mean = mean + tau[..., np.asarray(model["year_idx"].get_value())]
    resid = np.asarray(model["y"].get_value()) - (y_centre + y_scale * mean)
    n_city = int(city_idx.max()) + 1
    counts = np.bincount(city_idx, minlength=n_city).astype(float)
    sums, squares = city_sums(resid, city_idx, n_city), city_sums(resid ** 2, city_idx, n_city)
    ss_within = squares - sums ** 2 / counts
    s2 = (y_scale * post["sigma_std"].values[..., None]) ** 2
    return -0.5 * ((counts - 1) * np.log(2 * np.pi * s2) + np.log(counts) + ss_within / s2)


def compare_error_structures(honest: tuple[pm.Model, az.InferenceData], iid: tuple[pm.Model, az.InferenceData]
                             ) -> dict[str, Any]:
    """Leave-one-city-out PSIS-LOO of the structured column (4) against the iid one, both on each city's
    density of its within-city contrasts (the structured model's from ``error_selection.city_loo``, with
    each city's scale innovation integrated out where it has city scales; the iid model's from
    ``within_city_loglik_iid``). Returns per model elpd, se, p_loo, the share of Pareto k
    above 0.7 and the elpd difference to the better one."""
    model, idata = honest
    out: dict[str, Any] = {}
    pointwise: dict[str, np.ndarray] = {}
    out["bayes_table3_col4"], pointwise["bayes_table3_col4"] = city_loo(model, idata)
    out["bayes_table3_col4_iid"], pointwise["bayes_table3_col4_iid"] = loo_of(iid[1].posterior,
                                                                              within_city_loglik_iid(*iid))
    best = max(out, key=lambda m: out[m]["elpd_loo"])
    for name in list(out):
        out[name]["elpd_diff"], out[name]["dse"] = paired_difference(pointwise[name], pointwise[best])
    out["unit"] = ("leave-one-city-out, density of each city's within-city contrasts (the iid model's draws "
                   "come from its random-effects likelihood, so its importance weights are approximate)")
    out["best"] = best
    return out
