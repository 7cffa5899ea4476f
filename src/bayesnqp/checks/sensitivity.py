"""Prior and likelihood sensitivity by power-scaling (Kallioinen, Paananen, Buerkner & Vehtari 2023).

The prior (or the likelihood) is raised to a power alpha near 1; importance weights (alpha - 1) x its
log density per draw, Pareto-smoothed, give the power-scaled posterior without refitting, and the
sensitivity of each quantity is the derivative of the cumulative Jensen-Shannon distance between the
scaled and the original posterior (``arviz.psens``). Rule (ArviZ and priorsense): prior sensitivity
at or above 0.05 means the prior is informative for that quantity; with likelihood sensitivity below
0.05 the posterior is prior-driven (strong prior or weak likelihood), with both above it there is
prior-data conflict (``checks.flags.sensitivity_diagnosis``).

What is scaled, and why it is valid here:

* the prior: the joint log density of the top-level priors, each evaluated at the posterior draws on
  the constrained scale without the Jacobian (power-scaling acts on the prior density of the
  parameters, not on the sampler's unconstrained space). Hierarchical priors (a parameter whose
  distribution depends on another parameter: city effects, partially pooled group slopes) are left out,
  as priorsense does by default: they are part of the model's structure, and scaling them measures
  pooling, not the influence of a choice of prior scale;
* the likelihood: the TOTAL log-likelihood per draw, the sum over observed variables plus the
  potentials named as likelihood terms. Only the total enters the weights, so a likelihood written as
  a joint density (the city effects integrated out and spread over rows, the latent mediators integrated
  out into one potential, the IV model's degrees-of-freedom correction) is scaled exactly; its entries
  need not be pointwise densities. Potentials not named as likelihood terms are scaled with the prior.

The model must be the one that produced the draws (same variables, same shapes); ``power_scaling``
refuses otherwise rather than scaling the wrong density.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from .flags import PSENS_THRESHOLD, sensitivity_diagnosis

DELTA = 0.01


@dataclass(frozen=True)
class Sensitivity:
    """``table``: one row per scalar quantity (labels as in the posterior summary, 'beta[agglomeration]'),
    columns prior, likelihood (power-scaling sensitivities) and diagnosis ('-', 'prior-driven',
    'prior-data conflict'). ``available`` False with a ``reason`` where it could not be computed."""

    available: bool
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    scaled_priors: tuple[str, ...] = ()
    likelihood_terms: tuple[str, ...] = ()
    reason: str = ""
    draws: int = 0

    def block(self) -> dict[str, Any]:
        """The ``prior_sensitivity`` entry of the model's summary.json block."""
        if not self.available:
            return {"available": False, "reason": self.reason}
        return {"available": True, "method": "power-scaling (Kallioinen et al. 2023), arviz.psens",
                "threshold": PSENS_THRESHOLD, "scaled_priors": list(self.scaled_priors),
                "likelihood_terms": list(self.likelihood_terms), "draws": self.draws,
                "quantities": {str(q): {"prior": float(r["prior"]), "likelihood": float(r["likelihood"]),
                                        "diagnosis": str(r["diagnosis"])} for q, r in self.table.iterrows()},
                "flagged": [str(q) for q in self.table.index[self.table["diagnosis"] != "-"]]}


def unavailable(reason: str) -> Sensitivity:
    return Sensitivity(available=False, reason=reason)


def hierarchical_priors(model: pm.Model) -> list[str]:
    """Free variables whose prior depends on another free variable."""
    try:
        from pytensor.graph.traversal import ancestors
    except ImportError:  # pytensor < 2.31
        from pytensor.graph.basic import ancestors

    free = set(model.free_RVs)
    out = []
    for rv in model.free_RVs:
        parents = set(ancestors(rv.owner.inputs)) - {rv}
        if parents & free:
            out.append(rv.name)
    return out


def log_densities(model: pm.Model, posterior: xr.Dataset, *, likelihood_potentials: Sequence[str] = (),
                  exclude_priors: Sequence[str] = ()) -> tuple[xr.DataArray, xr.DataArray]:
    """Joint log prior (top-level priors plus non-likelihood potentials) and total log-likelihood at each
    posterior draw, dims (chain, draw). Raises ValueError when the draws do not fit the model."""
    from pymc.model.transform.conditioning import remove_value_transforms

    names = [rv.name for rv in model.free_RVs]
    missing = [n for n in names if n not in posterior]
    if missing:
        raise ValueError(f"the posterior lacks the model's free variables {missing}")
    # the variables' own (constrained) shapes, one compiled function for all: a transform may change the
    # value's shape (zero-sum: n - 1)
    import pytensor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = pytensor.function([], [rv.shape for rv in model.free_RVs], on_unused_input="ignore")()
    for rv, shape in zip(model.free_RVs, shapes):
        want = tuple(int(x) for x in shape)
        got = posterior[rv.name].shape[2:]
        if tuple(got) != tuple(want):
            raise ValueError(f"{rv.name}: posterior shape {tuple(got)} differs from the model's {tuple(want)}")
    unknown = [p for p in likelihood_potentials if p not in {x.name for x in model.potentials}]
    if unknown:
        raise ValueError(f"no potentials {unknown} in the model")
    umodel = remove_value_transforms(model)
    prior_vars = [umodel[n] for n in names if n not in set(exclude_priors)]
    prior_vars += [p for p in umodel.potentials if p.name not in set(likelihood_potentials)]
    lik_vars = list(umodel.observed_RVs) + [umodel[p] for p in likelihood_potentials]
    if not lik_vars:
        raise ValueError("the model has no likelihood term")
    outs = [umodel.logp(vars=prior_vars, jacobian=False) if prior_vars else pm.math.constant(0.0),
            umodel.logp(vars=lik_vars, jacobian=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compilation chatter (BLAS, numba) is not a result
        fn = umodel.compile_fn(outs, inputs=umodel.value_vars, on_unused_input="ignore")
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    values = {n: np.asarray(posterior[n].transpose("chain", "draw", ...).values) for n in names}
    lp = np.empty((n_chain, n_draw))
    ll = np.empty((n_chain, n_draw))
    for c in range(n_chain):
        for d in range(n_draw):
            lp[c, d], ll[c, d] = fn({n: v[c, d] for n, v in values.items()})
    coords = {"chain": posterior["chain"].values, "draw": posterior["draw"].values}
    return (xr.DataArray(lp, dims=("chain", "draw"), coords=coords),
            xr.DataArray(ll, dims=("chain", "draw"), coords=coords))


def _labels(ds: xr.Dataset | xr.DataArray) -> dict[str, float]:
    if isinstance(ds, xr.DataArray):  # psens returns a DataArray when given one variable
        ds = ds.to_dataset(name=ds.name)
    out = {}
    for var in ds.data_vars:
        da = ds[var]
        if da.ndim == 0:
            out[str(var)] = float(da)
            continue
        for idx in np.ndindex(da.shape):
            label = ",".join(str(da[dim].values[i]) if dim in da.coords else str(i) for dim, i in zip(da.dims, idx))
            out[f"{var}[{label}]"] = float(da.values[idx])
    return out


def power_scaling(model: pm.Model, idata: az.InferenceData, var_names: Sequence[str], *,
                  likelihood_potentials: Sequence[str] = (), exclude_priors: Sequence[str] = (),
                  delta: float = DELTA) -> Sensitivity:
    """Prior and likelihood power-scaling sensitivity of ``var_names`` (posterior variables, reported
    quantities included) for a model fitted to ``idata``. See the module notes for what is scaled.
    ``exclude_priors``: further free variables whose prior is structural rather than a choice (the
    standard-Normal innovations of non-centred hierarchical effects, which are the hierarchical prior
    in another parameterisation)."""
    posterior = idata["posterior"]
    var_names = [v for v in var_names if v in posterior]
    if not var_names:
        return unavailable("none of the reported quantities is in the posterior")
    excluded = [*hierarchical_priors(model), *[n for n in exclude_priors if n in model.named_vars]]
    try:
        lp, ll = log_densities(model, posterior, likelihood_potentials=likelihood_potentials,
                               exclude_priors=excluded)
    except ValueError as exc:
        return unavailable(str(exc))
    if not (np.all(np.isfinite(lp)) and np.all(np.isfinite(ll))):
        return unavailable("the log prior or log-likelihood is not finite at every draw")
    data = az.InferenceData(posterior=posterior[var_names],
                            log_prior=xr.Dataset({"prior": lp}), log_likelihood=xr.Dataset({"likelihood": ll}))
    with warnings.catch_warnings():
        # a large Pareto k of the power-scaling weights is a property of the check, not a failure
        warnings.filterwarnings("ignore", message=".*[Ss]hape parameter of Pareto.*")
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        prior = _labels(az.psens(data, component="prior", var_names=var_names, delta=delta))
        lik = _labels(az.psens(data, component="likelihood", var_names=var_names, delta=delta))
    table = pd.DataFrame({"prior": pd.Series(prior), "likelihood": pd.Series(lik)})
    table.index.name = "quantity"
    table["diagnosis"] = [sensitivity_diagnosis(p, q) for p, q in zip(table["prior"], table["likelihood"])]
    scaled = tuple(rv.name for rv in model.free_RVs if rv.name not in set(excluded))
    scaled += tuple(p.name for p in model.potentials if p.name not in set(likelihood_potentials))
    lik_terms = tuple(rv.name for rv in model.observed_RVs) + tuple(likelihood_potentials)
    return Sensitivity(available=True, table=table, scaled_priors=scaled, likelihood_terms=lik_terms,
                       draws=int(posterior.sizes["chain"] * posterior.sizes["draw"]))
