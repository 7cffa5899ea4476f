"""One panel spec under several likelihoods (``options.likelihoods``; ``models/bayes_likelihoods.toml``:
Normal, Student-t and LogNormal): posterior predictive checks and PSIS-LOO, every pointwise term a
density of the outcome in its own units so LOO compares them on one scale.

The one place where ``bayes`` uses ``checks``: ``checks.compare`` and ``checks.ppc`` import nothing from
``bayes`` (tests/test_layers.py lists the exception).
"""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm

from .panel import fit_spec
from .result import BayesResult, assemble
from .sampling import SamplerSettings
from .spec import ModelSpec, load_spec


def fit_likelihoods(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings,
                    spec: ModelSpec | None = None) -> BayesResult:
    """One panel spec under each of its ``options.likelihoods`` (default ``models/bayes_likelihoods.toml``:
    Normal, Student-t and LogNormal): posterior predictive checks and LOO."""
    from ..checks import compare, ppc

    spec = spec or load_spec("bayes_likelihoods")
    likelihoods = list(spec.options.get("likelihoods", ["normal", "student_t", "lognormal"]))
    fits: dict[str, az.InferenceData] = {}
    pdata = None
    for lik in likelihoods:
        model, idata, pdata = fit_spec(frame, spec, controls, settings, likelihood=lik, log_likelihood=True)
        with model:
            pm.sample_posterior_predictive(idata, extend_inferencedata=True, random_seed=settings.seed,
                                           progressbar=False)
        idata.attrs.update(spec.attrs())
        idata.attrs["likelihood"] = lik
        fits[lik] = idata
    assert pdata is not None
    table = compare.compare_loo(fits, var_name="nqp")
    pareto = {lik: compare.pareto_k_counts(fits[lik], "nqp") for lik in likelihoods}
    figures: dict[str, Any] = {}
    ppc_numbers: dict[str, Any] = {}
    year_of_obs = np.asarray(pdata.years)[pdata.year_idx]
    city_of_obs = np.asarray(pdata.cities)[pdata.city_idx]
    for lik, idata in fits.items():
        stats = ppc.test_statistics(idata, "nqp")
        ppc_numbers[lik] = stats
        figures[f"ppc_density_{lik}"] = ppc.density_overlay(idata, "nqp", title=f"PPC density ({lik})")
        figures[f"ppc_stats_{lik}"] = ppc.statistics_figure(idata, "nqp", title=f"PPC statistics ({lik})")
        figures[f"ppc_year_means_{lik}"] = ppc.group_means_figure(idata, "nqp", year_of_obs, label="year",
                                                                 title=f"PPC per-year means ({lik})")
        resid = ppc.residuals_by_group(idata, "nqp", city_of_obs)
        ppc_numbers[lik]["max_abs_city_residual"] = float(resid["mean_residual"].abs().max())
        figures[f"ppc_city_residuals_{lik}"] = ppc.residuals_figure(resid, title=f"Mean residual by city ({lik})")

    # The reported posterior: the coefficients of every likelihood side by side in one InferenceData.
    combined = az.InferenceData(posterior=_stack_likelihoods(fits, ["beta", "sigma", "sigma_city"]),
                                sample_stats=_stack_stats(fits))
    combined.attrs["sampler_settings"] = fits[likelihoods[0]].attrs.get("sampler_settings", "")
    var_names = [str(v) for v in combined.posterior.data_vars]
    best = str(table.index[0])
    notes = (f"LOO prefers the {best} likelihood (elpd_loo {table.loc[best, 'elpd_loo']:.1f}).",
             "LogNormal coefficients are semi-elasticities (d log nqp / d x), not comparable in size with "
             "the Normal and Student-t slopes; all log-likelihoods are densities of nqp itself, so LOO "
             "compares them on one scale.")
    return assemble(spec, combined, var_names, notes=notes,
                    extra={"compare": _json_table(table), "pareto_k": pareto, "ppc": ppc_numbers,
                           "likelihoods": likelihoods},
                    tables={"loo_compare": table}, figures=figures,
                    no_fitted_reason="it holds one fit per likelihood; fit a panel spec with the likelihood "
                                     "you want for its fitted values")


def _stack_likelihoods(fits: dict[str, az.InferenceData], names: list[str]):
    """Posterior variables renamed by likelihood ('beta_normal' ...), so one summary shows all."""
    import xarray as xr

    parts = {}
    for lik, idata in fits.items():
        for n in names:
            if n in idata.posterior:
                parts[f"{n}_{lik}"] = idata.posterior[n]
    return xr.Dataset(parts)


def _stack_stats(fits: dict[str, az.InferenceData]):
    """Divergences summed over the likelihoods' fits (each fit has the same chains and draws)."""
    stats = [f.sample_stats["diverging"] for f in fits.values() if "diverging" in f.sample_stats]
    out = stats[0].astype(int)
    for s in stats[1:]:
        out = out + s.astype(int).values
    return out.to_dataset(name="diverging")


def _json_table(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    out = {}
    for idx, row in table.iterrows():
        out[str(idx)] = {k: (v if isinstance(v, (str, bool)) else float(v)) for k, v in row.items()
                         if not isinstance(v, (np.ndarray, list))}
    return out
