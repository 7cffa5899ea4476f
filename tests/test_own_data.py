"""The study on a researcher's own regions: renamed columns, string ids, an edge-list weights file."""

from __future__ import annotations

import json
from html import unescape

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from bayesnqp.cli import app
from conftest import raw_panel

runner = CliRunner()


def own_panel(n: int = 20, years=range(2010, 2018), seed: int = 11) -> pd.DataFrame:
    """A ring of regions whose outcome responds to the treatment, with a negative spillover."""
    rng = np.random.default_rng(seed)
    ids = [f"county-{i:02d}" for i in range(n)]
    frame = raw_panel(n_cities=n, years=years, seed=seed, city_ids=ids)
    frame["lq"] = rng.lognormal(0, 0.4, len(frame))
    lq = frame.pivot(index="year", columns="city", values="lq")[ids].to_numpy()
    spill = (np.roll(lq, 1, axis=1) + np.roll(lq, -1, axis=1)) / 2
    y = 0.05 + 0.02 * lq - 0.01 * spill + rng.normal(0, 0.005, lq.shape)
    frame["score"] = pd.DataFrame(y, index=sorted(set(years)), columns=ids).stack().reindex(
        pd.MultiIndex.from_frame(frame[["year", "city"]])).to_numpy()
    return frame.rename(columns={"city": "region", "year": "yr", "develop": "income"})


def test_own_regions_with_edge_list_weights(tmp_path):
    frame = own_panel()
    data = tmp_path / "counties.parquet"
    frame.to_parquet(data, index=False)
    edges = tmp_path / "ring.csv"
    edges.write_text("from,to\n" + "\n".join(f"county-{i:02d},county-{(i + 1) % 20:02d}" for i in range(20)) + "\n")
    cfg = tmp_path / "study.toml"
    cfg.write_text('[columns]\ncity = "region"\nyear = "yr"\noutcome = "score"\ntreatment = "lq"\n'
                   'controls = ["income", "finance"]\nsplitters = ["marketization"]\ninstrument = "dist_hangzhou"\n'
                   '[spatial]\nweights = "ring.csv"\n[analysis]\nse = "hetero"\n')
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "--data", str(data), "--config", str(cfg), "--out", str(out), "--no-bayes"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["data"]["synthetic"] is False and s["data"]["n_cities"] == 20
    assert s["failed"] == {}
    a = s["analyses"]
    assert a["table3_col4"]["se_type"] == "hetero"
    assert abs(a["table3_col4"]["estimate"] - 0.02) < 0.005
    assert a["sdm_ml"]["terms"]["W_agglomeration"]["estimate"] < 0
    assert "hetero_marketization" in a and "moran_agglomeration" in a
    html = unescape((out / "index.html").read_text())
    assert "SYNTHETIC DEMO DATA" not in html
    assert "ring.csv" in html and "the ready column 'score'" in html
