"""The Student-t likelihood with a normalising term PyTensor can cache on disk.

Why. The gradient of ``pm.StudentT``'s log-density in nu holds the digamma function, which PyTensor's
numba backend calls from scipy's Cython build through a function pointer, and a function that calls a
function pointer cannot be cached: the Student-t model was the one model of the study compiled from
scratch (about 18 s) in every process, warm caches or not. Here the log-gamma terms use a
log-gamma Op whose gradient calls a digamma with a numba implementation of its own (recurrence, then the
asymptotic series; within 1e-14 of scipy's), so the whole log-density and gradient are cached like every
other model's. The density is pm.StudentT's (a
test holds the two and their gradients to 1e-12); posterior predictive draws are mu + sigma t_nu.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.link.numba.dispatch import basic as numba_basic
from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key
from pytensor.link.numba.dispatch.scalar import scalar_op_cache_key
from pytensor.scalar.basic import upgrade_to_float
from pytensor.scalar.math import GammaLn, Psi
from pytensor.tensor.elemwise import Elemwise

from .nutpie_disk_cache import source_salt


@numba.njit(cache=True)
def digamma(x: float) -> float:
    """The digamma function for x > 0: recurrence up to x >= 10, then the asymptotic series through
    x^-14 (the next term is below 1e-16 there)."""
    # no recurrence to run at the edges: nan and x < 0 (outside the domain), 0 (nu underflowed), inf
    if np.isnan(x) or x < 0.0:
        return np.nan
    if x == 0.0:
        return -np.inf
    if x == np.inf:
        return np.inf
    result = 0.0
    while x < 10.0:
        result -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    series = f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f * (1.0 / 132 - f * (
        691.0 / 32760 - f * (1.0 / 12)))))))
    return result + math.log(x) - 0.5 / x - series


class CachedPsi(Psi):
    """PyTensor's digamma (same Python and C code), with the numba implementation above."""


class CachedGammaLn(GammaLn):
    """PyTensor's log-gamma (its numba code already uses ``math.lgamma``), differentiated through
    ``CachedPsi``."""

    def L_op(self, inputs, outputs, grads):
        (x,), (gz,) = inputs, grads
        return [gz * _cached_psi_scalar(x)]


_KERNEL_VERSION = source_salt(__file__)  # an edited digamma is compiled again
_cached_psi_scalar = CachedPsi(upgrade_to_float, name="cached_psi")
cached_gammaln = Elemwise(CachedGammaLn(upgrade_to_float, name="cached_gammaln"))


@register_funcify_and_cache_key(CachedPsi)
def _numba_cached_psi(op, node, **kwargs):
    @numba_basic.numba_njit
    def cached_psi(x):
        return digamma(x)

    return cached_psi, scalar_op_cache_key(op, cache_version=_KERNEL_VERSION)


def student_t_logp(value: Any, mu: Any, sigma: Any, nu: Any) -> Any:
    """Elementwise Student-t log-density, pm.StudentT's formula with the cacheable log-gamma."""
    z = (value - mu) / sigma
    return (cached_gammaln(0.5 * (nu + 1.0)) - cached_gammaln(0.5 * nu) - 0.5 * pt.log(nu * np.pi)
            - pt.log(sigma) - 0.5 * (nu + 1.0) * pt.log1p(z * z / nu))


def student_t_random(mu: Any, sigma: Any, nu: Any, rng: np.random.Generator | None = None,
                     size: Any = None) -> np.ndarray:
    """Draws of mu + sigma t_nu (posterior predictive checks)."""
    rng = rng if rng is not None else np.random.default_rng()
    mu, sigma, nu = np.asarray(mu), np.asarray(sigma), np.asarray(nu)
    if size is None:  # one draw per element of the broadcast parameters, not one shared by all
        size = np.broadcast_shapes(mu.shape, sigma.shape, nu.shape)
    return mu + sigma * rng.standard_t(nu, size=size)


def StudentT(name: str, *, mu: Any, sigma: Any, nu: Any, **kwargs: Any) -> Any:
    """``pm.StudentT(name, nu, mu, sigma, ...)`` with a log-density PyTensor caches on disk."""
    return pm.CustomDist(name, mu, sigma, nu, logp=student_t_logp, random=student_t_random, **kwargs)
