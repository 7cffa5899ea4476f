"""Model comparison by PSIS-LOO (arviz), with Pareto-k counts.

Every compared InferenceData must carry the pointwise log-likelihood of the SAME observed variable on
the SAME scale (e.g. the density of nqp, not of log nqp or of a standardised nqp); ``compare_loo``
checks that the observed data are identical before ranking.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd

from .flags import PARETO_K_MAX

# Pareto-k bands (Vehtari et al. 2017/2024): <= 0.7 reliable; 0.7-1 unreliable; > 1 bad.
K_GOOD = PARETO_K_MAX
K_BAD = 1.0


def loo(idata: az.InferenceData, var_name: str) -> az.ELPDData:
    """PSIS-LOO of one model (pointwise)."""
    if "log_likelihood" not in idata.groups() or var_name not in idata.log_likelihood:
        raise ValueError(f"InferenceData has no log_likelihood for {var_name!r}")
    with warnings.catch_warnings():
        # arviz warns when some Pareto k are high; the counts are reported instead.
        warnings.filterwarnings("ignore", message=".*Estimated shape parameter of Pareto.*")
        return az.loo(idata, var_name=var_name, pointwise=True)


def pareto_k_counts(idata: az.InferenceData, var_name: str) -> dict[str, float]:
    """How many observations fall in each Pareto-k band, and the largest k."""
    k = np.asarray(loo(idata, var_name).pareto_k).ravel()
    return {"good": int(np.sum(k <= K_GOOD)), "ok_or_unreliable": int(np.sum((k > K_GOOD) & (k <= K_BAD))),
            "bad": int(np.sum(k > K_BAD)), "max_k": float(np.max(k)), "n": int(k.size)}


def compare_loo(fits: dict[str, az.InferenceData], var_name: str) -> pd.DataFrame:
    """az.compare table (rank, elpd_loo, p_loo, elpd_diff, weight, se, dse, warning) by LOO."""
    observed = [np.asarray(f.observed_data[var_name]).ravel() for f in fits.values()]
    if any(o.shape != observed[0].shape or not np.allclose(o, observed[0]) for o in observed[1:]):
        raise ValueError("models compared by LOO must share the same observed data on the same scale")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Estimated shape parameter of Pareto.*")
        warnings.filterwarnings("ignore", message=".*scale is now set to log by default.*")
        return az.compare(fits, ic="loo", var_name=var_name)
