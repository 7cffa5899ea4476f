"""Location quotient of digital-industry employment (eq. 3 of the paper), with per-year totals:

    LQ_jt = (E_dig,jt / E_jt) / (sum_j E_dig,jt / sum_j E_jt)

so that the employment-weighted mean LQ of every year is exactly 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..names import AGGLOMERATION, YEAR


def location_quotient(digital: pd.Series, total: pd.Series, year_level: str = YEAR) -> pd.Series:
    """LQ for a panel indexed by (city, year); totals are taken within each year over the cities given."""
    if not digital.index.equals(total.index):
        raise ValueError("digital and total employment must share one (city, year) index")
    d = digital.astype(float)
    e = total.astype(float)
    if (e <= 0).any():
        raise ValueError("total employment must be positive")
    years = d.index.get_level_values(year_level)
    share_national = d.groupby(years).transform("sum") / e.groupby(years).transform("sum")
    lq = (d / e) / share_national
    return pd.Series(np.asarray(lq), index=digital.index, name=AGGLOMERATION)
