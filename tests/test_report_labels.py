"""The user's own words: [labels] in the config, defaults from the column names, and a report on a
non-city panel that never speaks of cities, NQP or the paper."""

from __future__ import annotations

import html
import json
import re

import pytest
from typer.testing import CliRunner

from bayesnqp import names
from bayesnqp.cli import app
from bayesnqp.config import parse_config
from bayesnqp.errors import InputError
from bayesnqp.report.labels import Labels, plural
from test_own_data import own_panel

runner = CliRunner()

BASE = ('[columns]\ncity = "region"\nyear = "yr"\noutcome = "score"\ntreatment = "lq"\n'
        'controls = ["income", "finance"]\nsplitters = ["marketization"]\n'
        '[spatial]\nweights = "ring.csv"\n[analysis]\nse = "hetero"\n')


def test_labels_section_is_validated_strictly():
    cfg = parse_config({"labels": {"unit": "district", "outcome": "log sales", "treatment": "broadband share"}}, "x")
    assert cfg.labels == {"unit": "district", "outcome": "log sales", "treatment": "broadband share"}
    with pytest.raises(InputError) as err:
        parse_config({"labels": {"unti": "district"}}, "x")
    assert "unknown key 'unti' in [labels]" in str(err.value.problems[0])
    with pytest.raises(InputError):
        parse_config({"labels": {"unit": ""}}, "x")
    with pytest.raises(InputError):
        parse_config({"labels": {"outcome": 3}}, "x")


def test_words_replace_the_internal_roles():
    lab = Labels(unit="district", units="districts", outcome="log sales", treatment="broadband share", paper=False)
    assert lab.term("nqp") == "log sales" and lab.term("agglomeration") == "broadband share"
    assert lab.term("W_agglomeration") == "W x broadband share" and lab.term("develop") == "develop"
    assert lab.text("280 cities, 2800 city-years; City FE; agglomeration raises NQP") == \
        "280 districts, 2800 district-years; District FE; broadband share raises log sales"
    assert Labels().text("city FE and NQP") == "city FE and NQP"  # the paper's words stay
    assert [plural(w) for w in ("county", "person", "firm", "box")] == ["counties", "people", "firms", "boxes"]


def _visible(page: str) -> str:
    body = re.sub(r"<style>.*?</style>|<script>.*?</script>", "", page, flags=re.S)
    alts = " ".join(re.findall(r'alt="([^"]*)"', page))
    return html.unescape(re.sub(r"<[^>]+>", " ", body) + " " + alts)


@pytest.mark.parametrize("labels", ["", '[labels]\nunit = "district"\noutcome = "log sales"\n'
                                        'treatment = "broadband share"\n'])
def test_a_non_city_panel_reads_in_the_users_words(tmp_path, labels):
    frame = own_panel().drop(columns=list(names.MECHANISM_INDICATORS))  # mechanisms: neither given nor asked
    data = tmp_path / "people.parquet"
    frame.to_parquet(data, index=False)
    (tmp_path / "ring.csv").write_text(
        "from,to\n" + "\n".join(f"county-{i:02d},county-{(i + 1) % 20:02d}" for i in range(20)) + "\n")
    cfg = tmp_path / "study.toml"
    cfg.write_text(BASE + labels)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "--data", str(data), "--config", str(cfg), "--out", str(out), "--no-bayes"])
    assert res.exit_code == 0, res.output
    page = (out / "index.html").read_text(encoding="utf-8")
    text = _visible(page)
    for word in (r"\bcity\b", r"\bcities\b", r"\bcity-years\b", r"\bnqp\b", r"\bpaper\b", r"\bagglomeration\b"):
        hits = [text[max(0, m.start() - 60):m.end() + 40] for m in re.finditer(word, text, re.I)]
        assert not hits, (word, hits[:3])
    unit, outcome, treatment = ("district", "log sales", "broadband share") if labels else ("region", "score", "lq")
    assert f"{treatment} has a positive effect on {outcome}" in text.replace("Lq", "lq").lower() or \
        f"{treatment} has a positive effect on {outcome}".lower() in text.lower()
    assert f"{unit} FE" in text.replace(unit.capitalize(), unit)
    assert "Bayesian stage not run" in text  # the metadata and the overview say so under --no-bayes
    assert "nutpie" not in page
    assert "without the four municipalities" not in text and "no municipalities" not in text
    # the user never asked for mechanisms: no skip line, no empty section
    assert "Not run" not in text and 'id="mechanisms"' not in page and 'id="bayes_mediation"' not in page
    rows = (out / "tables" / "table3.csv").read_text(encoding="utf-8").splitlines()
    assert rows[1].startswith(f"{treatment},") and f"{unit.capitalize()} FE" in "".join(rows)
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert s["data"]["outcome"] == "nqp" and s["data"]["outcome_column"] == "score"  # roles beside columns
    assert s["data"]["columns"] == {"city": "region", "year": "yr", "nqp": "score", "agglomeration": "lq"}
    assert s["labels"]["unit"] == unit and s["labels"]["paper"] is False
    assert "robustness_no_municipalities" not in s["analyses"]
    assert not any(k.startswith("paper_") for row in s["descriptives"].values() for k in row)


def test_bayesian_blocks_speak_the_users_words_too(tmp_path, monkeypatch):
    import bayesnqp.study as study
    from test_report_render import fake_bayes_stage

    frame = own_panel()
    data = tmp_path / "people.parquet"
    frame.to_parquet(data, index=False)
    (tmp_path / "ring.csv").write_text(
        "from,to\n" + "\n".join(f"county-{i:02d},county-{(i + 1) % 20:02d}" for i in range(20)) + "\n")
    cfg = tmp_path / "study.toml"
    cfg.write_text(BASE + '[labels]\nunit = "district"\noutcome = "log sales"\ntreatment = "broadband share"\n')
    monkeypatch.setattr(study, "STAGES", [s for s in study.STAGES if s[1] not in study.BAYES_STAGES]
                        + [("drawn posteriors", fake_bayes_stage)])
    out = study.run_study(data, cfg, study.RunOptions(out=tmp_path / "out", quick=True))
    page = (out / "index.html").read_text(encoding="utf-8")
    text = _visible(page)
    for word in (r"\bcity\b", r"\bcities\b", r"\bnqp\b", r"\bpaper\b", r"\bagglomeration\b", r"Table 3"):
        hits = [text[max(0, m.start() - 60):m.end() + 40] for m in re.finditer(word, text, re.I)]
        assert not hits, (word, hits[:3])
    assert 'class="model"' in page and "District effects" in text  # the per-unit caterpillar, relabelled
