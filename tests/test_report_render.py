"""The report as a reader gets it: rendered by headless Chromium, and its LaTeX compiled by pdflatex.

One small run (module fixture): the bundled demo with the frequentist stages, plus a stage that records
two Bayesian fits built from drawn posteriors (real InferenceData through the same rendering path as a
sampled fit: posterior table, agreement, a flag, a 280-row per-city table, a figure). No sampling, so
the run takes seconds.

Chromium and pdflatex come from Debian packages (chromium, texlive-latex-*). Under CI (CI=true) a missing
tool fails these tests; elsewhere they skip with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest

import bayesnqp.study as study
from bayesnqp import names
from bayesnqp.bayes.result import BayesResult
from bayesnqp.checks.agreement import agreement
from bayesnqp.checks.diagnostics import diagnose, posterior_summary

# Page height bound, px at 1280 px width with every model block folded. This run measures ~9,500 px and
# the full demo report (20 fits, --quick) ~14,500 px, against ~136,000 px before the overview, the folded
# model blocks and the CSV-only per-city tables. 20,000 leaves room for longer notes but fails as soon as
# per-unit tables or unfolded dumps come back: one 280-row table alone is ~8,000 px.
MAX_PAGE_HEIGHT = 20_000


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{name} is not installed (CI installs it with apt-get; see .ci/run)")
        pytest.skip(f"{name} not installed; install it to run this check (apt-get install "
                    f"{'chromium' if name == 'chromium' else 'texlive-latex-base texlive-latex-recommended texlive-latex-extra'})")
    return path


def fake_fit(ctx, result_id: str, *, beta: float, sd: float, oracle_id: str, shift_chain: float = 0.0,
             seed: int = 0) -> BayesResult:
    """A posterior drawn around ``beta`` (2 chains x 500 draws) with a per-city effect, summarised and
    diagnosed exactly as a sampled fit is. ``shift_chain`` moves one chain to make r-hat flag it."""
    rng = np.random.default_rng(seed)
    cities = ctx.study.cities
    controls = list(ctx.study.roles.controls)
    coefs = [names.AGGLOMERATION, *controls]
    draws = rng.normal(0, 1, (2, 500, len(coefs))) * sd
    draws[..., 0] += beta
    draws[1, :, 0] += shift_chain
    effect = rng.normal(0, 1, (2, 500, len(cities))) * 0.01 + np.linspace(-0.02, 0.03, len(cities))
    idata = az.from_dict(posterior={"beta": draws, "city_effect": effect},
                         coords={"coef": coefs, "city": cities}, dims={"beta": ["coef"], "city_effect": ["city"]})
    summary = posterior_summary(idata, ["beta"])
    oracle = ctx.oracles[oracle_id]
    terms = {t: f"beta[{t}]" for t in coefs if t in oracle.coefs.index}
    per_city = posterior_summary(idata, ["city_effect"])
    per_city.index = cities
    per_city["ci_width"] = per_city["ci_high"] - per_city["ci_low"]
    same = per_city.copy()
    same["mean"] = beta  # a degenerate per-city output: one number in every row
    return BayesResult(id=result_id, title=f"Drawn posterior {result_id}", idata=idata, summary=summary,
                       diagnostics=diagnose(idata, ["beta"]), agreement=agreement(summary, oracle, terms),
                       meant_to_match=True, agreement_note="Drawn around the oracle's estimate.",
                       notes=("``beta`` is on the original scale (see options.mundlak).",),
                       tables={"city_effects": per_city, "direct_effect_same": same})


def fake_bayes_stage(ctx) -> None:
    from bayesnqp.stages.bayesian import render_bayes

    sec = ctx.report.section("bayes_table3", "Table 3 rebuilt: Bayesian hierarchical models")
    col4 = ctx.oracles["table3_col4"].coefs.loc[names.AGGLOMERATION]
    good = fake_fit(ctx, "bayes_table3_col4", beta=col4["estimate"], sd=col4["std_error"] * 0.3,
                    oracle_id="table3_col4")
    render_bayes(ctx, sec, good)
    bad = fake_fit(ctx, "bayes_table3_col3", beta=col4["estimate"], sd=col4["std_error"], oracle_id="table3_col3",
                   shift_chain=col4["std_error"] * 3, seed=1)
    render_bayes(ctx, sec, bad)
    # a long, wide table (a sensitivity grid, say): a landscape longtable in LaTeX, folded rows in the page
    grid = pd.DataFrame(np.random.default_rng(2).normal(size=(60, 9)) * 0.01,
                        columns=[f"scenario_statistic_{i}" for i in range(9)])
    grid.insert(0, "scenario", [f"rho = {r:.2f}, mechanism inno" for r in np.linspace(-0.6, 0.6, 60)])
    ctx.report.table(sec, "bayes_table3_col3_sensitivity_grid", grid, "bayes_table3_col3: sensitivity grid")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ctx.report.figure(sec, "bayes_table3_col3_line", fig, "bayes_table3_col3: a line")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render") / "report"
    from bayesnqp.stages.bayesian import stage_agreement

    stages = [s for s in study.STAGES if s[1] not in study.BAYES_STAGES] + [("drawn posteriors", fake_bayes_stage),
                                                                             ("agreement", stage_agreement)]
    original = study.STAGES
    study.STAGES = stages
    try:
        study.run_study(None, None, study.RunOptions(out=out, bayes=True, quick=True))
    finally:
        study.STAGES = original
    return out


_PROBE = r"""
<script>
window.addEventListener('load', function(){
 var main=document.querySelector('main'), ov=document.getElementById('overview');
 var res={height: document.documentElement.scrollHeight,
          overview_top: ov ? ov.getBoundingClientRect().top + window.scrollY : null,
          overview_bottom: ov ? ov.getBoundingClientRect().bottom + window.scrollY : null,
          verdict_top: (function(){var v=document.querySelector('.verdict');return v? v.getBoundingClientRect().top+window.scrollY:null;})(),
          flagbox_top: (function(){var v=document.getElementById('flags');return v? v.getBoundingClientRect().top+window.scrollY:null;})()};
 document.querySelectorAll('details').forEach(function(d){d.open=true;});
 var right=main.getBoundingClientRect().right, over=[];
 document.querySelectorAll('main table, main img, main figure, main .scroll').forEach(function(el){
   var r=el.getBoundingClientRect();
   if (r.right > right + 1) over.push((el.id||el.tagName)+' right '+Math.round(r.right)+' > '+Math.round(right));
   if (el.classList.contains('scroll') && el.scrollWidth > el.clientWidth + 1)
     over.push('scroll box hides '+(el.scrollWidth-el.clientWidth)+'px of '+(el.parentElement.id||'a table'));
 });
 res.overflow=over;
 var imgs=Array.from(document.querySelectorAll('img')), pending=imgs.length, broken=[];
 res.n_images=imgs.length;
 function done(){res.broken=broken; document.body.setAttribute('data-probe', JSON.stringify(res));}
 if(!pending) done();
 imgs.forEach(function(im){var t=new Image(); t.onload=function(){if(t.naturalWidth===0)broken.push(im.src); if(--pending===0)done();};
   t.onerror=function(){broken.push(im.src); if(--pending===0)done();}; t.src=im.src;});
});
</script>
"""


def _probe(chromium: str, page: Path) -> dict:
    probed = page.with_name("probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1280,1000", "--virtual-time-budget=20000",
             "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert m, f"the page did not finish the probe: {proc.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(m.group(1)))


def test_the_page_in_a_real_browser(report_dir):
    chromium = _tool("chromium")
    res = _probe(chromium, report_dir / "index.html")
    assert res["overview_top"] is not None and res["overview_top"] < 1000, res
    assert res["verdict_top"] < 1000 and res["flagbox_top"] < 1000, res
    assert res["overflow"] == [], res["overflow"]
    assert res["n_images"] >= 3 and res["broken"] == [], res
    assert res["height"] <= MAX_PAGE_HEIGHT, res["height"]


def test_the_overview_answers_the_four_questions(report_dir):
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    s = json.loads((report_dir / "summary.json").read_text(encoding="utf-8"))
    ov = page[page.index('<section id="overview">'):page.index("</section>", page.index('<section id="overview">'))]
    assert "has a positive effect" in ov                      # what is the effect
    assert "estimates agree" in ov or "disagree" in ov       # do the two answers agree
    assert "2 fits, max r&#770;" in ov and "1 fit(s) flagged" in ov  # can I trust the fits
    assert 'id="flags"' in ov                                 # what should I worry about
    flagged = [f if isinstance(f, dict) else {"id": f.split(":")[0]} for f in s["flagged"]]
    for f in flagged:  # every flag is listed, with a link to the block it comes from
        assert f'href="#{f["id"]}"' in ov or f["id"] in ov, f
    assert 'href="#bayes_table3_col3"' in ov and 'id="bayes_table3_col3"' in page
    assert any(f.get("kind") == "admissibility" for f in s["flagged"] if isinstance(f, dict))
    assert "fig-forest_key_effect" in ov and (report_dir / "figures" / "forest_key_effect.png").is_file()


def test_per_city_outputs_are_csv_and_plots_not_page_dumps(report_dir):
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    csv = pd.read_csv(report_dir / "tables" / "bayes_table3_col4_city_effects.csv", dtype={"city": str})
    assert len(csv) == 280 and "name" in csv.columns and csv["name"].str.len().min() > 0
    assert "bayes_table3_col4_city_effects_caterpillar.png" in page
    assert not (report_dir / "tables" / "bayes_table3_col4_city_effects.tex").exists()
    assert "the same value" in page  # the degenerate table is one sentence, not 280 rows
    assert page.count("<tr>") < 1500
    assert "options.mundlak" not in page and "``" not in page
    nav = page[page.index('<nav class="toc"'):page.index("</nav>")]
    anchors = re.findall(r'id="((?:tbl|fig)-[^"]+|bayes_[a-z0-9_]+)"', page)
    assert anchors and all(f'href="#{a}"' in nav for a in anchors), [a for a in anchors if f'href="#{a}"' not in nav]
    assert "Paper, column (4)" in page  # the demo is the paper's design


def test_bayesian_paper_table_beside_the_frequentist_one(report_dir):
    tex = (report_dir / "tables" / "bayes_table3_paper.tex").read_text(encoding="utf-8")
    assert r"\caption{" in tex and "max r-hat" in tex and "sd ratio" in tex
    csv = pd.read_csv(report_dir / "tables" / "bayes_table3_paper.csv", index_col=0, keep_default_na=False,
                      dtype=str)
    assert list(csv.columns) == ["(3)", "(4)"]
    assert csv.iloc[1, 0].startswith("[") and csv.iloc[1, 0].endswith("]")


def test_tables_tex_compiles(report_dir, tmp_path):
    pdflatex = _tool("pdflatex")
    work = tmp_path / "tables"
    shutil.copytree(report_dir / "tables", work)
    master = (work / "tables.tex").read_text(encoding="utf-8")
    stems = re.findall(r"\\input\{([^}]+)\}", master)
    assert set(stems) == {p.stem for p in work.glob("*.tex")} - {"tables"}  # every table is included
    for stem in stems:
        body = (work / f"{stem}.tex").read_text(encoding="utf-8")
        assert body.count(r"\caption{") == 1 and r"\label{tab:" in body and "Note: " in body, stem
        assert not re.search(r"\\caption\{Table \d", body), stem  # LaTeX numbers tables; no 'Table 1: Table 3'
    proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (work / "tables.log").read_text(encoding="latin-1")
    too_wide = [float(x) for x in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide", log)]
    assert all(x < 20 for x in too_wide), too_wide  # no table runs off the page
    assert (work / "tables.pdf").stat().st_size > 10_000
    assert "¡" not in proc.stdout


def test_spatial_maps_and_a_near_constant_effect(tmp_path, monkeypatch):
    """The spatial stage's report: an effect that varies gets a map centred at 0; a near-constant one a
    sentence instead of a one-colour map; text after the models stays outside their blocks."""
    import bayesnqp.bayes.sdm as bsp
    import bayesnqp.checks.spatial as csp
    from bayesnqp.bayes import registry
    from bayesnqp.stages.spatial import stage_spatial_bayes

    def stage(ctx):
        def fake_sdm(frame, controls, w, s, oracle, model="sdm", spec=None):
            r = fake_fit(ctx, f"bayes_{model}", beta=0.0114, sd=0.0005, oracle_id="sdm_ml")
            cities = ctx.study.cities
            flat = pd.DataFrame({"mean": 0.0114 + np.linspace(0, 1e-5, len(cities)), "ci_low": 0.010,
                                 "ci_high": 0.013}, index=cities)
            varied = flat.assign(mean=np.linspace(-0.01, 0.002, len(cities)))
            r.tables.clear()
            r.tables.update({f"{k}_effect_agglomeration": t.assign(ci_width=t.ci_high - t.ci_low)
                             for k, t in (("direct", flat), ("indirect", varied))})
            return r

        monkeypatch.setitem(registry.FAMILIES, "car", registry.Family("car", lambda request: [],
                                                                    lambda study, spec: None))
        monkeypatch.setattr(bsp, "fit_sdm", fake_sdm)
        monkeypatch.setattr(csp, "ppc_moran", lambda *a, **k: None)
        monkeypatch.setattr(csp, "spatial_compare", lambda *a, **k: None)
        stage_spatial_bayes(ctx)

    monkeypatch.setattr(study, "STAGES", [s for s in study.STAGES if s[1] not in study.BAYES_STAGES]
                        + [("spatial", stage)])
    out = study.run_study(None, None, study.RunOptions(out=tmp_path / "out", quick=True))
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "figures/map_sdm_indirect.png" in page and "figures/map_sdm_direct.png" not in page
    assert "The SDM direct effect of agglomeration is nearly the same in every city" in page
    spatial = page[page.index('<section id="bayes_spatial">'):]
    last_block = spatial.rindex("</details>")
    assert spatial.index("admissible in (1/lambda_min, 1)") > last_block  # the rho sentence is the section's
    tex = (out / "tables" / "bayes_spatial_paper.tex").read_text(encoding="utf-8")
    assert "SDM" in tex and "SLX" in tex and r"\caption{Spatial models, Bayesian" in tex
