"""The synthetic demo panel: reproducible, well-formed, calibrated to the paper's Table 2 and baseline, and
with the signs the paper reports, checked against independent estimators (pyfixest, dense ML for the SDM)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyfixest as pf
import pytest
from scipy.optimize import minimize_scalar

from bayesnqp import demo
from bayesnqp.data.geography import load_geography
from bayesnqp.data.weights import SpatialWeights
from bayesnqp.names import (
    CONTROLS,
    DIGITAL_EMPLOYMENT,
    DIST_HANGZHOU,
    MECHANISM_INDICATORS,
    MECHANISMS,
    NQP_INDICATOR_NAMES,
    SPLITTERS,
    TOTAL_EMPLOYMENT,
)
from bayesnqp.paths import bundled

N_CITIES, N_YEARS = 280, 10
FML = "nqp ~ agglomeration + " + " + ".join(CONTROLS) + " | city + year"
COUNT_COLUMNS = ("emerging_industry_staff", "green_invention_patents", "green_utility_patents",
                 "factor_exchanges", "factor_pilots")
RATE_COLUMNS = ("ai_firm_share", "waste_treatment_rate", "internet_penetration")


@pytest.fixture(scope="module")
def data() -> demo.DemoData:
    return demo.generate_demo()


@pytest.fixture(scope="module")
def frame(data: demo.DemoData) -> pd.DataFrame:
    """Raw panel with the computed index and LQ, long format for pyfixest."""
    meas = demo.computed_measures(data.panel)
    return data.panel.set_index(["city", "year"]).sort_index().join(meas).reset_index()


def _fit(frame: pd.DataFrame, fml: str):
    return pf.feols(fml, data=frame, vcov={"CRV1": "city"})


def test_deterministic_for_a_seed(data: demo.DemoData) -> None:
    again = demo.generate_demo(seed=demo.DEFAULT_SEED)
    pd.testing.assert_frame_equal(data.panel, again.panel)
    assert json.dumps(data.truth, sort_keys=True) == json.dumps(again.truth, sort_keys=True)
    other = demo.generate_demo(seed=7)
    assert not np.allclose(other.panel["avg_wage"], data.panel["avg_wage"])


def test_balanced_and_columns(data: demo.DemoData) -> None:
    panel = data.panel
    assert panel.shape[0] == N_CITIES * N_YEARS
    years = panel.groupby("city")["year"].apply(tuple)
    assert all(y == tuple(range(2013, 2023)) for y in years)
    assert panel["city"].str.fullmatch(r"\d{6}").all()
    assert set(panel["city"]) == set(load_geography().cities.index)
    expected = (["city", "city_name", "province", "year", *NQP_INDICATOR_NAMES, DIGITAL_EMPLOYMENT,
                 TOTAL_EMPLOYMENT, *CONTROLS, *MECHANISM_INDICATORS, *SPLITTERS, DIST_HANGZHOU])
    assert list(panel.columns) == expected
    assert "nqp" not in panel.columns and "agglomeration" not in panel.columns


def test_values_are_valid(data: demo.DemoData) -> None:
    panel = data.panel
    numeric = panel.drop(columns=["city", "city_name", "province"])
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()
    assert (panel[TOTAL_EMPLOYMENT] > 0).all() and (panel[DIGITAL_EMPLOYMENT] > 0).all()
    assert (panel[DIGITAL_EMPLOYMENT] < panel[TOTAL_EMPLOYMENT]).all()
    for c in COUNT_COLUMNS:
        assert (panel[c] >= 0).all() and (panel[c] == np.round(panel[c])).all(), c
    for c in RATE_COLUMNS:
        assert panel[c].between(0, 100).all(), c
    for c in (*NQP_INDICATOR_NAMES, *CONTROLS, *SPLITTERS):
        if c not in COUNT_COLUMNS and c != "emission_trading":
            assert (panel[c] > 0).all(), c
    assert panel["avg_wage"].between(30_000, 250_000).all()
    dist = load_geography().cities["dist_hangzhou_km"]
    assert np.allclose(panel.groupby("city")[DIST_HANGZHOU].first().to_numpy(), dist.loc[sorted(dist.index)].to_numpy())


@pytest.mark.parametrize("column,target", [("nqp", demo.TABLE2["nqp"]), ("agglomeration", demo.TABLE2["agglomeration"])])
def test_table2_replica(frame: pd.DataFrame, column: str, target: tuple) -> None:
    x = frame[column]
    assert abs(x.mean() / target[0] - 1) < 0.20
    assert abs(x.std() / target[1] - 1) < 0.20
    assert x.skew() > 1.0  # heavy right tail
    assert x.max() > 5 * x.mean()


def test_controls_near_table2(frame: pd.DataFrame) -> None:
    for c in CONTROLS:
        mean, sd = demo.TABLE2[c][:2]
        assert abs(frame[c].mean() / mean - 1) < 0.25, c
        assert abs(frame[c].std() / sd - 1) < 0.50, c


def test_twfe_baseline_calibrated(frame: pd.DataFrame, data: demo.DemoData) -> None:
    fit = _fit(frame, FML)
    b, se, p = fit.coef()["agglomeration"], fit.se()["agglomeration"], fit.pvalue()["agglomeration"]
    assert 0.007 < b < 0.013
    assert p < 0.01
    # the numbers written to truth.json are this estimator's
    tw = data.truth["calibration"]["twfe"]
    assert tw["estimate"] == pytest.approx(b, rel=1e-8)
    assert tw["se"] == pytest.approx(se, rel=1e-6)


def test_within_estimator_matches_hand_computation() -> None:
    rng = np.random.default_rng(3)
    n, t = 30, 5
    x = rng.standard_normal((n, t, 2)) + rng.standard_normal((n, 1, 2))
    y = x @ np.array([1.0, -2.0]) + rng.standard_normal((n, 1)) + rng.standard_normal((1, t)) + rng.standard_normal((n, t))
    beta, se = demo.twfe(y, x)
    long = pd.DataFrame({"y": y.ravel(), "x1": x[..., 0].ravel(), "x2": x[..., 1].ravel(),
                         "city": np.repeat(np.arange(n), t), "year": np.tile(np.arange(t), n)})
    fit = pf.feols("y ~ x1 + x2 | city + year", data=long, vcov={"CRV1": "city"})
    np.testing.assert_allclose(beta, fit.coef().to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(se, fit.se().to_numpy(), rtol=1e-8)


@pytest.mark.parametrize("indicator", MECHANISM_INDICATORS)
def test_mechanisms_positive(frame: pd.DataFrame, indicator: str) -> None:
    fit = _fit(frame, f"{indicator} ~ agglomeration + " + " + ".join(CONTROLS) + " | city + year")
    assert fit.coef()["agglomeration"] > 0
    assert fit.tstat()["agglomeration"] > 2.58


@pytest.mark.parametrize("splitter", SPLITTERS)
def test_heterogeneity_larger_in_expected_group(frame: pd.DataFrame, splitter: str) -> None:
    level = frame.groupby("city")[splitter].transform("mean")
    high = level > level.median()
    b_high = _fit(frame[high], FML).coef()["agglomeration"]
    b_low = _fit(frame[~high], FML).coef()["agglomeration"]
    if splitter == "gov_dominance":  # market-dominated (low) cities expected larger
        b_high, b_low = b_low, b_high
    assert b_high > b_low


def test_instrument_relevant(frame: pd.DataFrame) -> None:
    f = frame.assign(dist_year=frame[DIST_HANGZHOU] / 1000 * (frame["year"] - 2017.5))
    fit = _fit(f, "agglomeration ~ dist_year + " + " + ".join(CONTROLS) + " | city + year")
    assert fit.coef()["dist_year"] < 0
    assert fit.tstat()["dist_year"] ** 2 > 10  # first-stage F with one instrument
    iv = _fit(f, "nqp ~ " + " + ".join(CONTROLS) + " | city + year | agglomeration ~ dist_year")
    assert iv.coef()["agglomeration"] > 0 and iv.tstat()["agglomeration"] > 1.96


def _sdm_ml(frame: pd.DataFrame, w: np.ndarray, eig: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Two-way FE SDM by concentrated ML on demeaned data (dense reference): rho, beta, se(beta)."""
    n, t = N_CITIES, N_YEARS

    def arr(c: str) -> np.ndarray:
        return frame[c].to_numpy().reshape(n, t)

    def dm(a: np.ndarray) -> np.ndarray:
        return a - a.mean(1, keepdims=True) - a.mean(0, keepdims=True) + a.mean()

    y = arr("nqp")
    xs = [arr("agglomeration")] + [arr(c) for c in CONTROLS]
    x = np.column_stack([dm(v).ravel() for v in xs] + [dm(w @ v).ravel() for v in xs])
    yd, wyd = dm(y).ravel(), dm(w @ y).ravel()

    def negll(r: float) -> float:
        e = yd - r * wyd
        res = e - x @ np.linalg.lstsq(x, e, rcond=None)[0]
        return n * t / 2 * np.log(res @ res) - t * np.sum(np.log(1 - r * eig))

    rho = minimize_scalar(negll, bounds=(1 / eig.min() + 1e-6, 0.999), method="bounded").x
    e = yd - rho * wyd
    beta = np.linalg.lstsq(x, e, rcond=None)[0]
    res = e - x @ beta
    cov = res @ res / (n * t - x.shape[1]) * np.linalg.inv(x.T @ x)
    return rho, beta, np.sqrt(np.diag(cov))


def test_sdm_negative_spillover(frame: pd.DataFrame, data: demo.DemoData) -> None:
    g = load_geography()
    rho, beta, se = _sdm_ml(frame, g.weights.row_standardised.toarray(), g.weights.eigenvalues)
    k = 1 + len(CONTROLS)
    assert beta[0] > 0 and beta[0] / se[0] > 2.58
    assert beta[k] < 0 and beta[k] / se[k] < -2.58  # W x agglomeration
    assert rho < 0  # attenuated towards 0 by the index's measurement noise, but negative
    # the generating parameters themselves
    sdm = data.truth["sdm"]
    lo, hi = g.weights.rho_bounds
    assert lo < sdm["rho"] < 0 < sdm["b_mean"] and sdm["theta"] < 0
    assert all(v > 0 for v in sdm["b_k"].values())
    # the FE-weighted direct effect on the index scale is what the local slope estimates
    eff = data.truth["index_effects"]["fe_weighted_local_slope_plus_mediated_index"]
    assert abs(beta[0] - eff) < 3 * se[0]


def test_latent_process_recovers_generating_sdm(frame: pd.DataFrame, data: demo.DemoData) -> None:
    """ML on the latent y (not the index) recovers rho and theta: the generator does what truth.json says."""
    g = load_geography()
    latent = frame.assign(nqp=data.latent["y"].ravel())
    rho, beta, se = _sdm_ml(latent, g.weights.row_standardised.toarray(), g.weights.eigenvalues)
    k = 1 + len(CONTROLS)
    sdm = data.truth["sdm"]
    assert abs(rho - sdm["rho"]) < 0.05
    assert abs(beta[k] - sdm["theta"]) < 3 * se[k]
    # the own slope absorbs the omitted mediators: between b_min and b_max plus the mediated effect
    assert data.latent["slope"].min() < beta[0] < data.latent["slope"].max() + sdm["mediated_effect"]


def test_truth_records_mapping_and_parameters(data: demo.DemoData) -> None:
    t = data.truth
    assert t["seed"] == demo.DEFAULT_SEED and t["generator_version"] == demo.GENERATOR_VERSION
    m = t["index_mapping"]
    assert m["kappa"] > 0 and m["r2"] > 0.85
    idx = t["index_scale_truth"]
    assert idx["b_index"] == pytest.approx(t["sdm"]["b_mean"] * m["kappa"])
    assert idx["theta_index"] == pytest.approx(t["sdm"]["theta"] * m["kappa"])
    for k in MECHANISMS:
        assert t["mechanisms"][k]["a"] > 0
        assert set(t["mechanisms"][k]["indicators"]) == set(MECHANISMS[k])
    assert t["banner"] == "SYNTHETIC DEMO DATA"


def _lattice(rows: int, cols: int) -> SimpleNamespace:
    n = rows * cols
    ids = [f"{11 + i // 10:02d}{i % 10 + 1:02d}00" for i in range(n)]
    a = np.zeros((n, n))
    for i in range(n):
        if (i + 1) % cols:
            a[i, i + 1] = 1
        if i + cols < n:
            a[i, i + cols] = 1
    lon = 100 + (np.arange(n) % cols) * 1.0
    lat = 25 + (np.arange(n) // cols) * 1.0
    cities = pd.DataFrame({"name_zh": [f"c{i}" for i in range(n)], "province": "p", "lon": lon, "lat": lat,
                           "dist_hangzhou_km": np.hypot(lon - 120.2, lat - 30.2) * 100}, index=ids)
    return SimpleNamespace(cities=cities, weights=SpatialWeights.from_dense(ids, a))


def test_other_geography_works() -> None:
    geo = _lattice(6, 10)
    d = demo.generate_demo(seed=1, geography=geo)
    assert d.panel.shape[0] == 60 * N_YEARS
    assert np.isfinite(d.panel.drop(columns=["city", "city_name", "province"]).to_numpy(dtype=float)).all()


def test_write_demo_round_trip(tmp_path) -> None:
    path = tmp_path / "out" / "demo_panel.csv"
    demo.write_demo(path, seed=5, geography=_lattice(6, 10))
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo_panel.csv", "truth.json"]
    back = demo.read_demo(path)
    _assert_same(back, demo.generate_demo(seed=5, geography=_lattice(6, 10)).panel)
    assert json.loads((path.parent / "truth.json").read_text(encoding="utf-8"))["seed"] == 5


def _assert_same(csv_frame: pd.DataFrame, panel: pd.DataFrame) -> None:
    """A CSV read back equals a fresh panel: to 1e-9 relative after the same CSV round trip (nearly every
    cell), and every cell within the 8-significant-digit rounding of the fresh value (so a last-digit flip
    from a different BLAS cannot fail the test)."""
    fresh = pd.read_csv(io.StringIO(demo.csv_text(panel)), dtype={"city": str})
    assert list(csv_frame.columns) == list(fresh.columns)
    exact, total = 0, 0
    for c in fresh.columns:
        if fresh[c].dtype == object:
            assert (csv_frame[c].astype(str) == fresh[c].astype(str)).all(), c
            continue
        got = csv_frame[c].to_numpy(dtype=float)
        np.testing.assert_allclose(got, panel[c].to_numpy(dtype=float), rtol=1e-7, atol=0, err_msg=c)
        ref = fresh[c].to_numpy(dtype=float)
        exact += int(np.sum(np.abs(got - ref) <= 1e-9 * np.abs(ref)))
        total += got.size
    assert exact >= 0.999 * total


def _assert_close(a, b, path: str = "truth") -> None:
    """Recursive comparison of two JSON trees, floats to 1e-6 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-12), path
    else:
        assert a == b, path


def test_bundled_file_is_reproducible(data: demo.DemoData) -> None:
    folder = bundled("demo")
    committed = demo.read_demo(folder / "demo_panel.csv")
    _assert_same(committed, data.panel)
    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    _assert_close(json.loads(json.dumps(data.truth)), truth)
