"""The result of one Bayesian analysis: a labelled posterior plus what the report and summary.json need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import pandas as pd

from ..checks.diagnostics import CI_KIND, CI_PROB, Diagnostics
from ..results import json_safe


@dataclass(frozen=True, eq=False)
class BayesResult:
    """``summary``: posterior_summary() rows of the reported quantities (mean, sd, ci_low, ci_high,
    r_hat, ess_bulk, ess_tail). ``agreement``: checks.agreement() table against the frequentist oracle,
    or None where there is none; ``agreement_note`` says whether the model is meant to match and, if not,
    why the numbers differ. ``tables``/``figures`` are extra outputs for the report (figures are
    matplotlib Figures keyed by file stem)."""

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
        }
        if self.agreement is not None:
            block["agreement"] = {"oracle": self.agreement.attrs.get("oracle"),
                                  "meant_to_match": self.meant_to_match, "note": self.agreement_note,
                                  "terms": {str(k): r.to_dict() for k, r in self.agreement.iterrows()}}
        if self.notes:
            block["notes"] = list(self.notes)
        if self.extra:
            block["extra"] = self.extra
        return json_safe(block)
