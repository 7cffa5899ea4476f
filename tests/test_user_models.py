"""A folder of the user's own model specs (--models / run(models=...)): a spec named after a bundled
analysis replaces it, a new panel-family spec runs as a new analysis with its own least-squares oracle, a
new spec of another family runs against the oracle it names, and a folder with any problem is refused
before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import bayesnqp as bn
from bayesnqp.cli import app
from bayesnqp.errors import InputError
from bayesnqp.paths import bundled

MY_POOLED = '''
id = "bayes_my_pooled"
title = "My pooled model: the treatment alone"
builder = "panel"
outcome = "nqp"
terms = ["agglomeration"]
likelihood = "normal"
[effects]
city = "none"
year = "none"
[priors]
beta = { dist = "normal", sigma = 2.0 }
[sampler]
target_accept = 0.85
'''


def _wider_col2() -> str:
    text = (bundled("models") / "bayes_table3_col2.toml").read_text()
    assert 'beta = { dist = "normal", sigma = 1.0 }' in text
    return text.replace('beta = { dist = "normal", sigma = 1.0 }', 'beta = { dist = "normal", sigma = 7.0 }')


@pytest.mark.recovery
def test_a_user_folder_replaces_a_bundled_spec_and_adds_a_new_analysis(raw_csv, tmp_path):
    folder = tmp_path / "my_models"
    folder.mkdir()
    (folder / "bayes_table3_col2.toml").write_text(_wider_col2())
    (folder / "bayes_my_pooled.toml").write_text(MY_POOLED)
    # a new IV analysis: the bundled IV with a tighter coefficient prior, under its own id
    my_iv = (bundled("models") / "bayes_iv.toml").read_text().replace('id = "bayes_iv"', 'id = "bayes_my_iv"')
    (folder / "bayes_my_iv.toml").write_text(my_iv.replace('beta = { dist = "normal", sigma = 1.0 }',
                                                           'beta = { dist = "normal", sigma = 0.5 }'))
    study = bn.load_study(raw_csv())
    with bn.run(study, draws=300, chains=2, only=["bayes_table3_col2", "bayes_my_pooled", "bayes_my_iv"],
                models=folder, progress=False) as res:
        col2, mine = res["bayes_table3_col2"], res["bayes_my_pooled"]
        # the new IV spec ran through the IV family against the oracle it names, with its own prior
        my_iv_fit = res["bayes_my_iv"]
        assert my_iv_fit.agreement is not None and my_iv_fit.agreement.attrs["oracle"] == "iv_2sls_trend"
        assert json.loads(my_iv_fit.idata.attrs["spec"])["priors"]["beta"]["sigma"] == 0.5
        assert "bayes_iv" not in res.ids  # only what was selected ran
        # fitted values of the panel model: one row per city-year, the posterior mean near the data
        fitted = mine.fitted()
        assert len(fitted) == len(study.frame) and (fitted["ci_low"] <= fitted["fitted"]).all()
        assert np.corrcoef(fitted["fitted"], fitted["observed"])[0, 1] > 0.3
        with pytest.raises(ValueError, match="within-transformed"):
            my_iv_fit.fitted()
        assert mine.idata.attrs["fit_hash"] != col2.idata.attrs["fit_hash"]
        # the replaced spec is the one that ran (its priors are in the fit) ...
        assert json.loads(col2.idata.attrs["spec"])["priors"]["beta"]["sigma"] == 7.0
        # ... and the new analysis ran with its oracle (least squares, same terms, no effects)
        oracle = res.oracle("my_pooled_ls")
        assert list(oracle.coefs.index[:1]) == ["agglomeration"]
        assert mine.meant_to_match and mine.agreement is not None
        assert abs(float(mine.agreement.loc["agglomeration", "z"])) < 0.25
        assert json.loads(mine.idata.attrs["sampler_settings"])["target_accept"] == 0.85  # its [sampler]
        assert res.summary["settings"]["models_folder"] == str(folder)
        assert np.isfinite(mine.tidy().loc["agglomeration", "Estimate"])


def test_a_folder_with_problems_is_refused_before_anything_is_written(raw_csv, tmp_path):
    folder = tmp_path / "my_models"
    folder.mkdir()
    (folder / "bayes_sar.toml").write_text((bundled("models") / "bayes_sar.toml").read_text()
                                           .replace('likelihood_form', 'likelihood_fomr'))
    (folder / "bayes_my_sdm.toml").write_text(MY_POOLED.replace("bayes_my_pooled", "bayes_my_sdm")
                                              .replace('builder = "panel"', 'builder = "sdm"'))
    (folder / "bayes_iv.toml").write_text((bundled("models") / "bayes_iv.toml").read_text()
                                          .replace('builder = "iv"', 'builder = "panel"'))
    (folder / "bayes_slx.toml").write_text((bundled("models") / "bayes_slx.toml").read_text()
                                           .replace('model = "slx"', 'model = "sdm"'))
    (folder / "bayes_my_car.toml").write_text(MY_POOLED.replace("bayes_my_pooled", "bayes_my_car")
                                              .replace('city = "none"', 'city = "bym2"'))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--data", str(raw_csv()), "--models", str(folder), "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "unknown option 'likelihood_fomr'" in text and "bayes_sar.toml" in text
    assert "a new spatial Durbin-family analysis must say which member it is" in text
    assert "'bayes_iv' is a 'iv' analysis" in text
    assert "options.model must be 'slx' in bayes_slx" in text
    assert "the panel family's city effects are" in text and "bayes_my_car.toml" in text
    assert not out.exists()
    with pytest.raises(InputError, match="model folder not found"):
        bn.run(bn.load_study(raw_csv()), models=tmp_path / "missing", progress=False)
