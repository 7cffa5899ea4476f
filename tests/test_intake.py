"""Bad input: every class gets a message naming file, column, city and year; exit 2; nothing written;
the input file is never modified. Plus the good paths: formats, config mapping, skipped roles."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bayesnqp import names
from bayesnqp.cli import EXIT_INPUT, app
from bayesnqp.config import StudyConfig, load_config
from bayesnqp.data.intake import load_study
from bayesnqp.errors import InputError
from conftest import raw_panel

runner = CliRunner()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused(path, *expected: str, config=None, tmp_path=None):
    """`validate` and `run` both refuse with the expected fragments; run writes nothing; file unchanged."""
    before = digest(path)
    args = ["--config", str(config)] if config else []
    res = runner.invoke(app, ["validate", str(path), *args])
    assert res.exit_code == EXIT_INPUT, res.output
    text = " ".join(res.output.split())
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in:\n{res.output}"
    out = path.parent / "report_out"
    res = runner.invoke(app, ["run", "--data", str(path), "--out", str(out), *args])
    assert res.exit_code == EXIT_INPUT, res.output
    assert "nothing was written" in res.output
    assert not out.exists()
    assert not any(p.name.startswith(".report_out") for p in path.parent.iterdir())
    assert digest(path) == before


def test_duplicate_city_year(raw_csv):
    frame = raw_panel()
    frame = pd.concat([frame, frame.iloc[[3]]])
    path = raw_csv(frame)
    assert_refused(path, "panel.csv", "city R01", "year 2018", "duplicate (city, year) row")


def test_missing_year_unbalanced(raw_csv):
    frame = raw_panel()
    frame = frame[~((frame.city == "R05") & (frame.year == 2017))]
    assert_refused(raw_csv(frame), "panel.csv", "city R05", "year 2017", "missing year")


def test_non_numeric_cell(raw_csv):
    frame = raw_panel()
    frame["develop"] = frame["develop"].astype(object)
    frame.loc[(frame.city == "R02") & (frame.year == 2016), "develop"] = "n/a"
    assert_refused(raw_csv(frame), "column 'develop'", "city R02", "year 2016", "not a number")


def test_missing_and_infinite_cells(raw_csv):
    frame = raw_panel()
    frame.loc[(frame.city == "R03") & (frame.year == 2015), "finance"] = np.nan
    frame.loc[(frame.city == "R04") & (frame.year == 2019), "avg_wage"] = np.inf
    assert_refused(raw_csv(frame), "column 'finance', city R03, year 2015: cell is missing",
                   "column 'avg_wage', city R04, year 2019: cell is infinite")


def test_negative_count(raw_csv):
    frame = raw_panel()
    frame.loc[(frame.city == "R06") & (frame.year == 2018), "factor_pilots"] = -2
    assert_refused(raw_csv(frame), "column 'factor_pilots', city R06, year 2018", "negative value")


def test_zero_employment_denominator(raw_csv):
    frame = raw_panel()
    mask = (frame.city == "R07") & (frame.year == 2016)
    frame.loc[mask, names.TOTAL_EMPLOYMENT] = 0
    frame.loc[mask, names.DIGITAL_EMPLOYMENT] = 0
    assert_refused(raw_csv(frame), "column 'total_employment', city R07, year 2016", "zero total employment")


def test_constant_indicator(raw_csv):
    frame = raw_panel()
    frame["robot_density"] = 3.0
    assert_refused(raw_csv(frame), "column 'robot_density'", "constant")


def test_cities_missing_from_geography_when_spatial_asked(raw_csv, tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[spatial]\nenabled = "true"\n')
    assert_refused(raw_csv(), "city R01", "not in the bundled geography", config=cfg)


def test_unbalanced_panel_where_spatial_needs_balance(raw_csv, tmp_path):
    frame = raw_panel()
    frame = frame[~((frame.city == "R09") & (frame.year == 2019))]
    edges = tmp_path / "edges.csv"
    edges.write_text("a,b\n" + "\n".join(f"R{i:02d},R{i + 1:02d}" for i in range(1, 12)) + "\n")
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'[spatial]\nenabled = "true"\nweights = "{edges}"\n[analysis]\nallow_unbalanced = true\n')
    assert_refused(raw_csv(frame), "city R09", "year 2019", "unbalanced", config=cfg)


def test_config_names_missing_column(raw_csv, tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[columns]\ncontrols = ["develop", "gdp_growth"]\n')
    assert_refused(raw_csv(), "column 'gdp_growth'", "not found", config=cfg)


def test_config_unknown_key_and_bad_toml(raw_csv, tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[columns]\ncontrol = ["develop"]\n')
    assert_refused(raw_csv(), "study.toml", "unknown key 'control'", config=cfg)
    cfg.write_text('[columns\n')
    assert_refused(raw_csv(), "study.toml", "not valid TOML", config=cfg)


def test_unreadable_empty_and_unsupported_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_refused(empty, "empty.csv", "file is empty")
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    assert_refused(garbage, "broken.parquet", "cannot be read as parquet")
    header_only = tmp_path / "header.csv"
    header_only.write_text("city,year,nqp\n")
    assert_refused(header_only, "header.csv", "no data rows")
    odd = tmp_path / "panel.json"
    odd.write_text("{}")
    assert_refused(odd, "panel.json", "unsupported file type")
    res = runner.invoke(app, ["validate", str(tmp_path / "nope.csv")])
    assert res.exit_code == EXIT_INPUT and "file not found" in res.output


def test_every_problem_is_reported_at_once(raw_csv):
    frame = raw_panel()
    frame.loc[(frame.city == "R02") & (frame.year == 2016), "human"] = np.nan
    frame.loc[(frame.city == "R03") & (frame.year == 2017), names.TOTAL_EMPLOYMENT] = 0
    frame.loc[(frame.city == "R03") & (frame.year == 2017), names.DIGITAL_EMPLOYMENT] = 0
    with pytest.raises(InputError) as info:
        load_study(raw_csv(frame), StudyConfig())
    assert len(info.value.problems) == 2


@pytest.mark.parametrize("suffix", [".csv", ".dta", ".xlsx", ".parquet"])
def test_formats_give_the_same_panel(tmp_path, suffix):
    frame = raw_panel()
    path = tmp_path / f"panel{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".dta":
        frame.to_stata(path, write_index=False)
    elif suffix == ".xlsx":
        frame.to_excel(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    study = load_study(path, StudyConfig())
    assert study.frame.shape[0] == 60
    assert study.index_weights["weight"].sum() == pytest.approx(1.0)
    reference = load_study(_csv(tmp_path, frame), StudyConfig())
    np.testing.assert_allclose(study.frame[names.NQP], reference.frame[names.NQP], rtol=1e-9)


def _csv(tmp_path, frame):
    path = tmp_path / "reference.csv"
    frame.to_csv(path, index=False)
    return path


def test_config_maps_user_names_and_ready_columns(tmp_path):
    frame = raw_panel().rename(columns={"city": "region", "year": "yr", "develop": "gdp_pc"})
    frame["my_index"] = np.linspace(0.01, 0.5, len(frame))
    frame["my_lq"] = np.linspace(0.2, 2.0, len(frame))[::-1]
    path = tmp_path / "own.csv"
    frame.to_csv(path, index=False)
    cfg = tmp_path / "own.toml"
    cfg.write_text('[columns]\ncity = "region"\nyear = "yr"\noutcome = "my_index"\ntreatment = "my_lq"\n'
                   'controls = ["gdp_pc", "finance"]\nsplitters = ["marketization"]\n'
                   '[mechanisms]\ninno = ["inno_rd_staff", "inno_patents_pc"]\n')
    study = load_study(path, load_config(cfg))
    assert study.roles.outcome_source == "my_index" and study.roles.treatment_source == "my_lq"
    np.testing.assert_array_equal(study.frame["nqp"], study.frame["my_index"])
    np.testing.assert_array_equal(study.frame["agglomeration"], study.frame["my_lq"])
    assert study.roles.controls == ("gdp_pc", "finance")
    assert list(study.roles.mechanisms) == ["inno"]
    assert study.index_weights is None
    assert any(s.id == "spatial" for s in study.skipped)


def test_absent_default_roles_are_skipped_with_a_reason(tmp_path):
    frame = raw_panel().drop(columns=[*names.MECHANISMS["factor"], "marketization", names.DIST_HANGZHOU])
    path = tmp_path / "partial.csv"
    frame.to_csv(path, index=False)
    study = load_study(path, StudyConfig())
    reasons = {s.id: s.reason for s in study.skipped}
    assert "factor" not in study.roles.mechanisms
    assert "mechanism_factor" in reasons and "hetero_marketization" in reasons
    assert "iv_2sls" in reasons and "distance" in reasons["iv_2sls"]


def test_numeric_city_ids_become_adcode_text(tmp_path):
    frame = raw_panel(city_ids=[str(110000 + 100 * i) for i in range(12)])
    frame["city"] = frame["city"].astype(int)
    path = tmp_path / "numeric.dta"
    frame.to_stata(path, write_index=False)
    study = load_study(path, StudyConfig(spatial="false"))
    assert study.cities[0] == "110000"
