"""The one sampling entry of the package.

nutpie is the default (several times PyMC's ESS per second on these models); PyMC's own NUTS and
numpyro are options, and ``nutpie-jax`` is nutpie with the log-density and its gradient compiled by JAX
(``pip install "bayesnqp[jax]"``; it runs on a GPU when JAX sees one, i.e. with a CUDA build of jaxlib).
Compiled nutpie models are cached in-process by a structure key, so a model whose structure repeats (mechanisms, groups, the same spec on new data) is compiled once and its data swapped
with ``with_data``. Across processes, PyTensor's numba cache keeps the compiled log-density and
``nutpie_disk_cache`` keeps nutpie's C entry points, so a second process only loads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import arviz as az
import numpy as np
import pymc as pm

SamplerName = Literal["nutpie", "nutpie-jax", "pymc", "numpyro"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample. ``seed`` fixes every chain; ``quick`` runs use fewer draws, never fewer chains."""

    draws: int = 1000
    tune: int = 500  # as the calibration study ran (benchmarks/bench_calibration.py); nutpie adapts well within it
    chains: int = 4
    seed: int = 20240601
    sampler: SamplerName = "nutpie"
    target_accept: float = 0.8
    cores: int | None = None
    progress: bool = False
    # Fields the user set (command line, API or --quick): a model spec's [sampler] table may override
    # the others, never these (precedence: command line > spec > code default).
    pinned: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.draws < 1 or self.tune < 0 or self.chains < 1:
            raise ValueError("draws and chains must be positive, tune non-negative")
        if not 0.5 <= self.target_accept < 1:
            raise ValueError("target_accept must lie in [0.5, 1)")
        if unknown := set(self.pinned) - {"draws", "tune", "chains", "sampler", "target_accept"}:
            raise ValueError(f"cannot pin {sorted(unknown)}")

    def replace(self, **changes: Any) -> "SamplerSettings":
        return SamplerSettings(**{**asdict(self), **changes})


_COMPILED: dict[str, Any] = {}


def _data_values(model: pm.Model) -> dict[str, np.ndarray]:
    return {v.name: v.get_value() for v in model.data_vars}


def constants_fingerprint(model: pm.Model) -> str:
    """Hash of every constant baked into the log-density and the deterministics.

    A compiled model can be reused with new ``pm.Data`` values only; a builder that bakes data-derived
    numbers (means, scales, eigenvectors) in as constants would otherwise silently reuse stale ones.
    """
    from pytensor.graph.basic import Constant

    try:
        from pytensor.graph.traversal import ancestors
    except ImportError:  # pytensor < 2.31
        from pytensor.graph.basic import ancestors

    digest = hashlib.sha1()
    for var in ancestors([model.logp(), *model.deterministics]):
        if isinstance(var, Constant):
            data = np.asarray(var.data)
            digest.update(str((data.dtype, data.shape)).encode())
            digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()[:16]


def _needs(module: str, extra: str, sampler: str) -> None:
    """A clear message (not a bare ModuleNotFoundError from inside PyMC) when an optional sampler's
    library is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"--sampler {sampler} needs {module}: pip install \"bayesnqp[{extra}]\"")


def compile_nutpie(model: pm.Model, cache_key: str | None = None, *, backend: str = "numba"):
    """Compile (or fetch from the in-process cache and swap in this model's data and coordinates).

    ``backend``: ``"numba"`` (the default sampler) or ``"jax"`` (log-density and gradient in JAX)."""
    import nutpie

    if cache_key is not None:
        cache_key = f"{backend}:{cache_key}:{constants_fingerprint(model)}"
        if backend == "jax":
            # PyTensor's JAX linker bakes the pm.Data values into the jitted function (nutpie's JAX
            # model has no shared data to swap), so a JAX compilation is reused only for the same data;
            # it compiles in about a second.
            cache_key += ":" + _data_fingerprint(model)
    if cache_key is not None and cache_key in _COMPILED:
        compiled = _COMPILED[cache_key]
        data = _data_values(model)
        if backend == "jax":  # the same data (see the key): swap only what the JAX model holds as shared
            data = {k: v for k, v in data.items() if k in compiled._shared_data}
        return _with_coords(compiled.with_data(**data) if data else compiled, model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        if backend == "jax":
            compiled = nutpie.compile_pymc_model(model, backend="jax", gradient_backend="jax")
        else:
            from bayesnqp.bayes.nutpie_disk_cache import compile_numba_cached

            compiled = compile_numba_cached(model) or nutpie.compile_pymc_model(model)
    if cache_key is not None:
        _COMPILED[cache_key] = compiled
    return compiled


def _data_fingerprint(model: pm.Model) -> str:
    digest = hashlib.sha1()
    for name, value in sorted(_data_values(model).items()):
        data = np.asarray(value)
        digest.update(f"{name}{data.dtype}{data.shape}".encode())
        digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()[:16]


def _with_coords(compiled, model: pm.Model):
    """The cached compilation labelled with this model's coordinates: the structure key carries sizes,
    not labels, so without this a model with other term names or unit ids (same sizes) would come back
    labelled as the first one compiled."""
    import dataclasses

    import pandas as pd

    coords = dict(compiled.coords or {})
    for name, values in model.coords.items():
        if name in coords and values is not None and len(values) == len(coords[name]):
            coords[name] = pd.Index(values)
    return dataclasses.replace(compiled, _coords=coords)


def sample(model: pm.Model, settings: SamplerSettings, *, cache_key: str | None = None,
           log_likelihood: bool = False) -> az.InferenceData:
    """Draw from the posterior of ``model``; returns labelled InferenceData with ``observed_data``.

    ``cache_key``: structure identifier (e.g. the spec hash plus the data shapes) under which a nutpie
    compilation is reused. ``log_likelihood``: add the pointwise log-likelihood group (for LOO).
    """
    cores = settings.cores or min(settings.chains, os.cpu_count() or 1)
    if settings.sampler in ("nutpie", "nutpie-jax"):
        import nutpie

        backend = "jax" if settings.sampler == "nutpie-jax" else "numba"
        if backend == "jax":
            _needs("jax", "jax", settings.sampler)
        compiled = compile_nutpie(model, cache_key, backend=backend)
        idata = nutpie.sample(compiled, draws=settings.draws, tune=settings.tune, chains=settings.chains,
                              cores=cores, seed=settings.seed, progress_bar=settings.progress,
                              target_accept=settings.target_accept, save_warmup=False)
        # nutpie keeps unconstrained *_log__ / *_interval__ copies; drop them so summaries are clean.
        drop = [v for v in idata.posterior.data_vars if v.endswith("__")]
        if drop:
            idata.posterior = idata.posterior.drop_vars(drop)
    else:
        kwargs: dict[str, Any] = {}
        if settings.sampler == "numpyro":
            _needs("numpyro", "numpyro", settings.sampler)
            kwargs["nuts_sampler"] = "numpyro"
        with model:
            idata = pm.sample(draws=settings.draws, tune=settings.tune, chains=settings.chains, cores=cores,
                              random_seed=settings.seed, target_accept=settings.target_accept,
                              progressbar=settings.progress, compute_convergence_checks=False, **kwargs)
    _attach_observed(model, idata)
    # how this fit was drawn, after the spec's [sampler] table was applied (saved with the fit)
    idata.attrs["sampler_settings"] = json.dumps(
        {k: getattr(settings, k) for k in ("sampler", "draws", "tune", "chains", "seed", "target_accept")},
        sort_keys=True)
    if log_likelihood:
        with model:
            pm.compute_log_likelihood(idata, progressbar=False)
    return idata


def _attach_observed(model: pm.Model, idata: az.InferenceData) -> None:
    """nutpie output has no observed_data group; add it (with dims) so PPC and LOO work."""
    if "observed_data" in idata.groups() and len(idata.observed_data.data_vars):
        return
    obs = {}
    dims = {}
    for rv in model.observed_RVs:
        value = model.rvs_to_values[rv]
        data = value.eval()
        obs[rv.name] = np.asarray(data)
        dims[rv.name] = list(model.named_vars_to_dims.get(rv.name, ()))
    if obs:
        converted = az.from_dict(observed_data=obs, dims=dims, coords={k: np.asarray(v) for k, v in model.coords.items()})
        if "observed_data" in idata.groups():
            del idata.observed_data
        idata.add_groups(observed_data=converted.observed_data)
