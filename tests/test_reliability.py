"""The README's reliability promises, tested: mixed city ids are refused with suggestions; identical runs
give byte-identical summary.json; killed and interrupted runs leave no half-written output; a run writes
only where the README says."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bayesnqp.cli import EXIT_INPUT, app
from bayesnqp.config import StudyConfig
from bayesnqp.data.geography import load_geography
from bayesnqp.data.intake import closest_adcode, load_study
from bayesnqp.errors import InputError
from conftest import raw_panel

runner = CliRunner()


# ---- mixed city ids ---------------------------------------------------------------------------------

def _bundled_ids(n: int) -> list[str]:
    # Every 20th city, so the panel is a spread-out subset of the 280 (contiguity need not be connected).
    return list(load_geography().cities.index[::20][:n])


def _typo_panel():
    """12 bundled cities, one adcode mistyped by one digit (city ends in '00'; the typo in '90')."""
    ids = _bundled_ids(12)
    frame = raw_panel(city_ids=ids)
    frame = frame.drop(columns=["city_name"])
    intended = ids[4]
    frame.loc[frame.city == intended, "city"] = intended[:4] + "9" + intended[5:]
    return frame, intended


def test_the_demo_with_one_adcode_replaced_is_refused(tmp_path):
    """The reported case: 279 of 280 ids match; the one city the panel lacks is the suggestion."""
    from bayesnqp.data.intake import demo_path
    import pandas as pd

    frame = pd.read_csv(demo_path(), dtype={"city": str}).drop(columns=["city_name"])
    frame.loc[frame.city == "330200", "city"] = "999999"
    path = tmp_path / "typo.csv"
    frame.to_csv(path, index=False)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == EXIT_INPUT, res.output
    text = " ".join(res.output.split())
    assert "1 of 280 city ids are not in the bundled geography of the 280 cities while the other 279 are" in text
    assert "city 999999: city id not in the bundled geography; closest bundled city: 330200 宁波市 (Ningbo)" in text


def test_one_mistyped_adcode_is_refused_with_the_intended_city_suggested(raw_csv, tmp_path):
    frame, intended = _typo_panel()
    path = raw_csv(frame)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == EXIT_INPUT, res.output
    text = " ".join(res.output.split())
    name = load_geography().cities.loc[intended, "name_zh"]
    assert "1 of 12 city ids are not in the bundled geography of the 280 cities" in text
    typo = intended[:4] + "9" + intended[5:]
    assert f"city {typo}: city id not in the bundled geography; closest bundled city: {intended} {name}" in text
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "--no-bayes", "--data", str(path), "--out", str(out)])
    assert res.exit_code == EXIT_INPUT and not out.exists()


def test_mixed_ids_pass_when_the_config_says_the_panel_is_not_the_paper_geography(raw_csv, tmp_path):
    frame, _ = _typo_panel()
    path = raw_csv(frame)
    cfg = tmp_path / "off.toml"
    cfg.write_text('[spatial]\nenabled = "false"\n')
    assert runner.invoke(app, ["validate", str(path), "--config", str(cfg)]).exit_code == 0
    ids = sorted(frame.city.unique())
    edges = tmp_path / "edges.csv"
    edges.write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in zip(ids, ids[1:])) + "\n")
    cfg.write_text(f'[spatial]\nweights = "{edges}"\n')
    res = runner.invoke(app, ["validate", str(path), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "spatial weights: " + str(edges) in " ".join(res.output.split())


def test_ids_that_are_all_foreign_are_a_different_study_not_a_typo(raw_csv):
    study = load_study(raw_csv(), StudyConfig())  # ids R01..R12: none is an adcode
    assert study.weights is None
    assert any(s.id == "spatial" and "not the bundled 280" in s.reason for s in study.skipped)


def test_every_unknown_id_is_listed_and_the_name_column_guides_the_suggestion(raw_csv):
    ids = _bundled_ids(12)
    frame = raw_panel(city_ids=ids)
    geo = load_geography().cities
    # Two typos; the second row still carries its true city name, which wins over the digits.
    frame.loc[frame.city == ids[0], "city"] = "11000"
    frame.loc[frame.city == ids[1], "city_name"] = geo.loc[ids[1], "name_zh"]
    frame.loc[frame.city == ids[1], "city"] = "000001"
    with pytest.raises(InputError) as info:
        load_study(raw_csv(frame), StudyConfig())
    by_city = {p.city: p.message for p in info.value.problems if p.city}
    assert set(by_city) == {"11000", "000001"}
    assert f"closest bundled city: {ids[1]} " in by_city["000001"]
    assert f"closest bundled city: {ids[0]} " in by_city["11000"]


def test_closest_adcode_prefers_few_edits_then_the_nearest_number():
    geo = load_geography().cities
    assert closest_adcode("330101", geo, list(geo.index)) == "330100"
    assert closest_adcode("330100", geo, list(geo.index)) == "330100"
    # One edit away from several codes: the numerically nearest of them.
    assert closest_adcode("330150", geo, ["330100", "330200", "110000"]) == "330100"
