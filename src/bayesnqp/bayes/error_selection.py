"""Error-structure options that must earn their place by leave-one-city-out LOO (``options.errors_by_loo``).

Why. A variance component the data do not need still widens the interval of the slope. With a true
random-slope sd of 0, the posterior of that sd stays off zero (ten years per city cannot pin it there)
and the 94% interval of the mean slope covered 97.5% of 200 simulated panels with AR(1) errors and city
scales; without the random slope it is 1.03 posterior sd per RMSE instead of 1.14. Likewise a city-scale
sd whose truth is 0 sits in a funnel at 0 (on iid panels, with the random slope dropped but the scales
kept, 6% of fits diverged; with both dropped, none). So an option listed in
``errors_by_loo`` is fitted with and without, and kept only where leave-one-city-out PSIS-LOO prefers it
by more than ``LOO_MARGIN`` nats: below that the two models predict alike (Sivula et al. 2022) and the
simpler one is reported. Options are tried in the order listed, each against the structure kept so far.

Both fits are structured models with the city effects integrated out, so their pointwise entries summed
per city are each city's density of its within-city contrasts: the same currency, like for like. Where a
fit has city error scales, each city's scale innovation is integrated out of its term too (it is the one
parameter only that city informs), which keeps the importance sampling of leave-one-city-out stable.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr
from pymc.model.transform.conditioning import remove_value_transforms

from ..names import CITY, OBS
from .errors import (CITY_SCALE_SD, CITY_SCALE_Z, ERROR_OPTIONS, city_sums, scale_integrated_city_logp,
                     scale_quadrature)
from .spec import ModelSpec

# Sivula, Magnusson, Matamoros and Vehtari (2022): below about 4 nats two models predict alike.
LOO_MARGIN = 4.0


def _as_list(value: Any) -> Any:
    """A spec option given as one string or as a list: as a list (anything else is returned as is)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def options_by_loo(spec: ModelSpec) -> list[str]:
    """The ``options.errors_by_loo`` of a spec, checked against its ``options.errors``: each entry one of
    the spec's error options, and at least one error option left that is not tried (the reduced model
    must still be a structured model, whose LOO terms are per city)."""
    listed = _as_list(spec.options.get("errors_by_loo"))
    errors = list(_as_list(spec.options.get("errors")))
    if not isinstance(listed, (list, tuple)) or not all(isinstance(v, str) for v in listed) \
            or len(set(listed)) < len(listed):
        raise ValueError(f"{spec.id}: options.errors_by_loo must be a list of distinct entries drawn from "
                         f"{ERROR_OPTIONS}")
    missing = sorted(set(listed) - set(errors))
    if missing:
        raise ValueError(f"{spec.id}: options.errors_by_loo lists {missing}, which options.errors does not have")
    if listed and not set(errors) - set(listed):
        raise ValueError(f"{spec.id}: options.errors_by_loo must leave at least one entry of options.errors "
                         "untried (the iid model's LOO terms are not per city)")
    return list(listed)


# city_loo per fit (by the id of its InferenceData, which is unhashable; an entry goes when the fit does):
# the study asks for the kept column (4) fit's LOO twice (choosing its error options, then comparing it
# with the iid rebuild), and with city scales each costs a quadrature over every draw
_CITY_LOO: dict[int, tuple[dict[str, float], np.ndarray]] = {}


def city_loo(model: Any, idata: az.InferenceData) -> tuple[dict[str, float], np.ndarray]:
    """Leave-one-city-out PSIS-LOO of a structured panel model: elpd, se, p_loo and the share of Pareto k
    above 0.7, and the per-city elpd terms. Each city's term is its density of its within-city contrasts
    (the per-row entries summed per city), with its own error-scale innovation integrated out where the
    model has city scales (``scale_integrated_city_loglik``). Computed once per fit."""
    key = id(idata)
    if key not in _CITY_LOO:
        _CITY_LOO[key] = loo_of(idata.posterior, _city_terms(model, idata))
        weakref.finalize(idata, _CITY_LOO.pop, key, None)
    stats, terms = _CITY_LOO[key]
    return dict(stats), terms  # a copy: callers add fields to the numbers


def _city_terms(model: Any, idata: az.InferenceData) -> np.ndarray:
    """(chain, draw, city) log-densities behind ``city_loo``."""
    if CITY_SCALE_Z in model.named_vars:
        return scale_integrated_city_loglik(model, idata)
    if "log_likelihood" not in idata.groups():
        # computed here, only for the fits whose LOO reads it (a fit with city scales never does)
        with model:
            pm.compute_log_likelihood(idata, progressbar=False)
    city_idx = np.asarray(model["city_idx"].get_value())
    observed = model.observed_RVs[0].name
    return city_sums(idata.log_likelihood[observed].transpose("chain", "draw", OBS).values, city_idx,
                     int(city_idx.max()) + 1)


def scale_integrated_city_loglik(model: Any, idata: az.InferenceData) -> np.ndarray:
    """(chain, draw, city) log-densities of a structured model with city error scales, each city's scale
    innovation z_c ~ N(0, 1) integrated out per draw (quadrature, ``errors.scale_quadrature``).

    Why. z_c is informed only by city c's own rows, so leaving the city out moves it far from its
    posterior: importance sampling over the joint draws then has Pareto k above 0.7 for most cities (63%
    on the demo) and the elpd is noisy. Integrating z_c out of the city's term first (Vehtari et al. 2016,
    integrated importance sampling) leaves only parameters every city informs."""
    plain = remove_value_transforms(model)
    observed = plain.observed_RVs[0]
    # the structured CustomDist's parameters (panel_model._outcome_likelihood): mean, phi, per-row scale,
    # omega, then its data g, city_idx, counts, prev, first, gap
    params = observed.owner.op.dist_params(observed.owner)
    if len(params) != 10 or CITY_SCALE_SD not in plain.named_vars:
        raise ValueError("scale-integrated LOO needs the structured panel likelihood with city error scales")
    evaluate = plain.compile_fn(inputs=plain.value_vars, outs=plain.replace_rvs_by_values(list(params[:4])),
                                on_unused_input="ignore", point_fn=False)
    g, city_idx, counts, prev, first, gap = (np.asarray(p.eval()) for p in params[4:])
    g, first, gap, counts = (np.asarray(v, dtype=float) for v in (g, first, gap, counts))
    city_idx, prev = city_idx.astype(np.int64), prev.astype(np.int64)
    value = np.asarray(plain.rvs_to_values[observed].eval(), dtype=float)
    post = idata.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    names = [v.name for v in plain.value_vars]
    stacked = {name: post[name].values.reshape((n_chain * n_draw,) + post[name].shape[2:]) for name in names}
    max_rows = float(counts.max())
    out = np.empty((n_chain * n_draw, len(counts)))
    for d in range(n_chain * n_draw):
        point = [np.zeros_like(stacked[name][d]) if name == CITY_SCALE_Z else stacked[name][d] for name in names]
        mean, phi, base_scale, omega = (np.asarray(v, dtype=float) for v in evaluate(*point))
        eta = float(stacked[CITY_SCALE_SD][d])
        nodes, log_w = scale_quadrature(eta, max_rows)
        out[d] = scale_integrated_city_logp(value, mean, np.array([phi.ravel()[0], omega.ravel()[0]]),
                                            base_scale, g, city_idx, counts, prev, first, gap, eta, nodes, log_w)
    return out.reshape(n_chain, n_draw, len(counts))


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """elpd(a) - elpd(b) from per-city terms over the same cities, and its se (as ``az.compare``)."""
    diff = np.asarray(a) - np.asarray(b)
    return float(diff.sum()), float(np.sqrt(len(diff)) * diff.std())


def loo_of(posterior: xr.Dataset, per_city: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """PSIS-LOO of (chain, draw, city) log-densities: elpd, se, p_loo, share of Pareto k above 0.7, and the
    per-city elpd terms."""
    data = az.InferenceData(posterior=posterior,
                            log_likelihood=xr.Dataset({"y": (("chain", "draw", CITY), per_city)}))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Pareto|shape parameter).*", category=UserWarning)
        loo = az.loo(data, pointwise=True)
    k = np.asarray(loo.pareto_k)
    return ({"elpd_loo": float(loo.elpd_loo), "se": float(loo.se), "p_loo": float(loo.p_loo),
             "share_k_above_0.7": float(np.mean(k > 0.7))}, np.asarray(loo.loo_i))


Fit = tuple[Any, az.InferenceData, Any]  # (model, idata, panel data)


def select_error_options(spec: ModelSpec, full: Fit, refit: Callable[[ModelSpec], Fit]
                         ) -> tuple[Fit, dict[str, Any]]:
    """Drop each option of ``options.errors_by_loo`` (in order) unless leave-one-city-out LOO prefers the
    fit with it by more than ``LOO_MARGIN`` nats. ``full`` is the fit of ``spec``; ``refit`` fits a spec
    with fewer error options. Returns the fit kept and, per option tried, the two elpds, their paired
    difference (with it minus without) and its se, and whether it was kept."""
    listed = options_by_loo(spec)
    current, current_errors = full, list(_as_list(spec.options["errors"]))
    current_loo = city_loo(full[0], full[1])
    record: dict[str, Any] = {}
    for option in listed:
        reduced_errors = [e for e in current_errors if e != option]
        reduced = refit(spec.replace(options={**spec.options, "errors": reduced_errors}))
        reduced_loo = city_loo(reduced[0], reduced[1])
        diff, dse = paired_difference(current_loo[1], reduced_loo[1])
        kept = diff > LOO_MARGIN
        record[option] = {"elpd_loo_with": current_loo[0]["elpd_loo"],
                          "elpd_loo_without": reduced_loo[0]["elpd_loo"], "elpd_diff": diff, "dse": dse,
                          "share_k_above_0.7_with": current_loo[0]["share_k_above_0.7"],
                          "share_k_above_0.7_without": reduced_loo[0]["share_k_above_0.7"], "kept": kept}
        if not kept:
            current, current_errors, current_loo = reduced, reduced_errors, reduced_loo
    # the fit says which error options it carries (its spec attributes are the spec's, which lists them all)
    current[1].attrs["errors_fitted"] = ",".join(current_errors)
    return current, record


def selection_note(record: dict[str, Any]) -> str:
    """One sentence per option tried, for the report."""
    label = {"ar1": "AR(1) errors", "city_scales": "city error scales", "random_slope": "random city slopes"}
    parts = []
    for option, r in record.items():
        verdict = "kept" if r["kept"] else "dropped (the reported fit is the model without them)"
        parts.append(f"{label.get(option, option)} {verdict}: leave-one-city-out elpd with them minus without "
                     f"= {r['elpd_diff']:.1f} (se {r['dse']:.1f}); an option is kept only when it improves the "
                     f"elpd by more than {LOO_MARGIN:.0f} nats.")
        high_k = max(r["share_k_above_0.7_with"], r["share_k_above_0.7_without"])
        if high_k > 0.01:
            parts.append(f"Pareto k is above 0.7 for {high_k:.0%} of cities in this comparison, so the "
                         "difference is approximate: trust it when it is far from the margin.")
    return " ".join(parts)
