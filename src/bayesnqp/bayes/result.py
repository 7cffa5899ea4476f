"""The result of one Bayesian analysis: a labelled posterior plus what the report and summary.json need."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import arviz as az
import numpy as np
import pandas as pd

from ..conventions import CI_KIND, CI_PROB, Diagnostics, agreement, diagnose, posterior_summary
from ..results import TIDY_COLUMNS, AnalysisResult, json_safe

if TYPE_CHECKING:
    from .spec import ModelSpec

_COEF_LABEL = re.compile(r"^beta\[(.+)\]$")
WITHOUT_MODEL = "the result was separated from its model (another process, or without_model()); refit it"


@dataclass(frozen=True)
class SpatialFit:
    """What the spatial checks need to rebuild a spatial model's residuals and pointwise densities.

    ``kind``: "car" or one of the SDM family ("sdm", "sar", "sem", "slx"); ``terms``: the regressors in
    the order of the ``coef`` dim; ``outcome``: the outcome column. CAR models are sampled on the
    standardised scale: ``y_mean``, ``y_sd`` and the regressors' ``x_mean``, ``x_sd`` map them back."""

    kind: str
    terms: tuple[str, ...]
    outcome: str
    y_mean: float = 0.0
    y_sd: float = 1.0
    x_mean: tuple[float, ...] = ()
    x_sd: tuple[float, ...] = ()


@dataclass(frozen=True, eq=False)
class BayesResult:
    """``summary``: posterior_summary() rows of the reported quantities (mean, sd, ci_low, ci_high,
    r_hat, ess_bulk, ess_tail). ``agreement``: checks.agreement() table against the frequentist oracle,
    or None where there is none; ``agreement_note`` says whether the model is meant to match and, if not,
    why the numbers differ. ``tables``/``figures`` are extra outputs for the report (figures are
    matplotlib Figures keyed by file stem). ``spatial``: set by the spatial model families, read by the
    spatial checks (None for every other model)."""

    id: str
    title: str
    idata: az.InferenceData
    summary: pd.DataFrame
    diagnostics: Diagnostics
    agreement: pd.DataFrame | None = None
    meant_to_match: bool = False
    agreement_note: str = ""
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    spatial: SpatialFit | None = None
    # The PyMC model that produced the draws (for the prior-sensitivity check and the model comparisons
    # that need its data), and the names of its potentials that belong to the likelihood. Not saved.
    model: Any = field(default=None, repr=False)
    likelihood_potentials: tuple[str, ...] = ()
    fitted_values: Callable[[], pd.DataFrame] | None = field(default=None, repr=False)
    no_fitted_reason: str = "this model family does not define fitted values"

    def fitted(self) -> pd.DataFrame:
        """Fitted values, one row per observation (the model's mean at each posterior draw, averaged):
        columns ``fitted`` (posterior mean), ``ci_low`` / ``ci_high`` (HDI of the mean) and ``observed``.
        Raises ValueError for a model that has no per-observation mean (its reason in the message)."""
        if self.fitted_values is None:
            raise ValueError(f"{self.id}: no fitted values: {self.no_fitted_reason}")
        return self.fitted_values()

    def without_model(self) -> "BayesResult":
        """The result without its in-memory model (to send to another process or keep many results)."""
        from dataclasses import replace

        return replace(self, model=None, fitted_values=None, no_fitted_reason=WITHOUT_MODEL)

    def __getstate__(self) -> dict[str, Any]:
        # a pickled result (another process, a file) travels without its PyMC model and fitted-values closure
        return {**self.__dict__, "model": None, "fitted_values": None,
                "no_fitted_reason": WITHOUT_MODEL if self.fitted_values is not None else self.no_fitted_reason}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def tidy(self) -> pd.DataFrame:
        """One row per reported quantity (index ``Coefficient``), columns ``TIDY_COLUMNS``: posterior mean
        and sd as Estimate and Std. Error, the HDI as conf_low / conf_high, r_hat and bulk ESS. A
        regression coefficient ``beta[x]`` is named ``x``, as in the frequentist result it rebuilds."""
        s = self.summary
        terms = [(m.group(1) if (m := _COEF_LABEL.match(str(t))) else str(t)) for t in s.index]
        frame = pd.DataFrame({"Estimate": s["mean"].to_numpy(float), "Std. Error": s["sd"].to_numpy(float),
                              "t value": np.nan, "Pr(>|t|)": np.nan, "conf_low": s["ci_low"].to_numpy(float),
                              "conf_high": s["ci_high"].to_numpy(float),
                              "interval": f"{round(CI_PROB * 100)}% {CI_KIND.upper()}",
                              "r_hat": s["r_hat"].to_numpy(float), "ess_bulk": s["ess_bulk"].to_numpy(float)},
                             index=pd.Index(terms, name="Coefficient"))
        return frame[list(TIDY_COLUMNS)]

    def save(self, folder: Path) -> Path:
        """Write the InferenceData as netCDF under ``folder`` (fits/<id>.nc)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.id}.nc"
        self.idata.to_netcdf(str(path), engine="h5netcdf")
        return path

    def summary_block(self) -> dict[str, Any]:
        block: dict[str, Any] = {
            "title": self.title,
            "interval": {"kind": CI_KIND, "prob": CI_PROB},
            "posterior": {str(k): row.to_dict() for k, row in self.summary.iterrows()},
            "diagnostics": self.diagnostics.to_dict(),
            "spec_hash": self.idata.attrs.get("spec_hash"),
            "fit_hash": self.idata.attrs.get("fit_hash"),
        }
        if "sampler_settings" in self.idata.attrs:  # the draws, tune, chains and seed this fit used
            block["sampler_settings"] = json.loads(self.idata.attrs["sampler_settings"])
        if self.agreement is not None:
            block["agreement"] = {"oracle": self.agreement.attrs.get("oracle"),
                                  "meant_to_match": self.meant_to_match, "note": self.agreement_note,
                                  "terms": {str(k): r.to_dict() for k, r in self.agreement.iterrows()}}
        if self.notes:
            block["notes"] = list(self.notes)
        if self.extra:
            block["extra"] = self.extra
        return json_safe(block)


def fit_hash(spec_hash: str, sampler_settings: str) -> str:
    """What identifies a fit: the spec (priors, terms, options) and the sampler settings it ran with
    (draws, tune, chains, target_accept, seed and sampler)."""
    return hashlib.sha256(f"{spec_hash}|{sampler_settings}".encode()).hexdigest()[:16]


def assemble(spec: "ModelSpec", idata: az.InferenceData, reported: Sequence[str], *,
             diagnosed: Sequence[str] | None = None, summary: pd.DataFrame | None = None,
             oracle: AnalysisResult | None = None, terms: dict[str, str] | None = None,
             agreement_table: pd.DataFrame | None = None, meant_to_match: bool = False,
             agreement_note: str = "", result_id: str | None = None, title: str | None = None,
             **fields: Any) -> BayesResult:
    """The one place a sampled model becomes a ``BayesResult``: the spec and a hash of spec and sampler
    settings go into ``idata.attrs``; the ``reported`` quantities are summarised (or ``summary`` is taken
    as given) and ``diagnosed`` (default: the reported ones) diagnosed; the agreement table holds the
    summary against ``oracle`` on ``terms`` (oracle term -> posterior label), unless a family built its own
    (``agreement_table``). ``fields``: the remaining ``BayesResult`` fields (notes, extra, tables, ...)."""
    idata.attrs.update(spec.attrs())
    idata.attrs["fit_hash"] = fit_hash(spec.spec_hash, str(idata.attrs.get("sampler_settings", "")))
    summary = posterior_summary(idata, list(reported)) if summary is None else summary
    diagnostics = diagnose(idata, list(diagnosed if diagnosed is not None else reported))
    table = agreement_table
    if table is None and oracle is not None and terms:
        table = agreement(summary, oracle, terms)
    return BayesResult(id=result_id or spec.id, title=title or spec.title, idata=idata, summary=summary,
                       diagnostics=diagnostics, agreement=table, meant_to_match=meant_to_match,
                       agreement_note=agreement_note if table is not None else "", **fields)
