"""bayesnqp: the digital-agglomeration / new-quality-productive-forces city-panel study, rebuilt.

Stages (one module each): ``data`` (read, validate, geography) -> ``measures`` (entropy index,
location quotient) -> ``frequentist`` (the oracles) -> ``bayes`` (hierarchical models) ->
``checks`` (convergence, agreement, PPC) -> ``report``. ``study.compute`` chains them.

The Python API (``api.py``), re-exported here and imported on first use so that ``import bayesnqp``
stays fast and leaves the plotting backend alone::

    import bayesnqp as bn
    res = bn.run(bn.load_study(), draws=200, chains=2, only=["bayes_table3_col4"])
    bn.etable([res.oracle("table3_col4"), res["bayes_table3_col4"]])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("load_study", "run", "fit", "fit_grid", "etable", "StudyResults", "TIDY_COLUMNS")
__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from .api import TIDY_COLUMNS, StudyResults, etable, fit, fit_grid, load_study, run


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'bayesnqp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
