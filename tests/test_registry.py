"""The model-family registry and what every result carries, without sampling: each builder has a family
and the same option and prior tables, each bundled spec names its oracle and what it rebuilds, a study
that lacks a family's data gets the reason, the fit hash moves with the seed and the sampler, and the
frequentist panel results keep their fitted values."""

from __future__ import annotations

import json
from types import SimpleNamespace

import arviz as az
import numpy as np
import pytest

from bayesnqp import api, simulate
from bayesnqp.bayes import registry
from bayesnqp.bayes.panel import panel_kind
from bayesnqp.bayes.result import assemble
from bayesnqp.bayes.sampling import SamplerSettings
from bayesnqp.bayes.spec import BUILDER_OPTIONS, BUILDER_PRIORS, bundled_spec_ids, load_bundled, load_spec


def test_every_builder_has_one_family_and_one_set_of_options_and_priors():
    assert set(registry.FAMILIES) == set(BUILDER_OPTIONS) == set(BUILDER_PRIORS)
    assert {load_bundled(i).builder for i in bundled_spec_ids()} <= set(registry.FAMILIES)
    with pytest.raises(ValueError, match="no model family 'glm'"):
        registry.family("glm")


def test_bundled_specs_name_their_oracles_and_what_they_rebuild():
    oracle = {i: registry.oracle_id(load_bundled(i), splitter="marketization", indicator="inno_rd_staff")
              for i in bundled_spec_ids()}
    assert oracle["bayes_table3_col4"] == oracle["bayes_table3_col4_iid"] == oracle["bayes_re"] == "table3_col4"
    assert oracle["bayes_groups"] == "hetero_marketization" and oracle["bayes_mediation"] == "table4_inno_rd_staff"
    assert oracle["bayes_iv"] == "iv_2sls_trend" and oracle["bayes_slx"] == "slx_ols"
    # without an oracle of its own, a spec is held against least squares on its own terms
    assert registry.oracle_id(load_bundled("bayes_likelihoods")) == "likelihoods_ls"
    kinds = {i: panel_kind(load_bundled(i)) for i in bundled_spec_ids() if load_bundled(i).builder == "panel"}
    assert kinds["bayes_table3_col1"] == kinds["bayes_table3_col2"] == "pooled"
    assert kinds["bayes_table3_col3"] == "city" and kinds["bayes_table3_col4_iid"] == "twoway"
    assert kinds["bayes_table3_col4"] == "honest" and kinds["bayes_re"] == "random"
    student = load_bundled("bayes_table3_col4_iid").replace(likelihood="student_t")
    assert panel_kind(student) == "other"  # least squares is not what a Student-t model rebuilds


def test_a_study_without_a_familys_data_is_told_why():
    bare = SimpleNamespace(roles=SimpleNamespace(instrument=None, mechanisms={}, splitters=()), weights=None,
                           provinces=None)
    reasons = {i: registry.unavailable(bare, load_bundled(i)) for i in  # type: ignore[arg-type]
               ("bayes_iv", "bayes_mediation", "bayes_car", "bayes_sdm", "bayes_groups",
                "bayes_province_slopes", "bayes_table3_col4")}
    assert "no distance column" in reasons["bayes_iv"] and "no mechanism" in reasons["bayes_mediation"]
    assert "no spatial weights" in reasons["bayes_car"] and "no spatial weights" in reasons["bayes_sdm"]
    assert "no splitter" in reasons["bayes_groups"] and "provinces" in reasons["bayes_province_slopes"]
    assert reasons["bayes_table3_col4"] is None


def _fake_idata(settings: SamplerSettings) -> az.InferenceData:
    rng = np.random.default_rng(0)
    idata = az.from_dict(posterior={"beta": rng.normal(size=(2, 50, 1)), "sigma": rng.gamma(2.0, size=(2, 50))},
                         coords={"coef": ["agglomeration"]}, dims={"beta": ["coef"]})
    idata.attrs["sampler_settings"] = json.dumps({"draws": settings.draws, "seed": settings.seed,
                                                  "sampler": settings.sampler})
    return idata


def test_the_fit_hash_moves_with_the_seed_and_the_sampler_and_the_spec():
    spec = load_bundled("bayes_table3_col2")
    base = SamplerSettings(draws=50, seed=1)
    hashes = {assemble(s, _fake_idata(b), ["beta", "sigma"]).idata.attrs["fit_hash"]
              for s, b in [(spec, base), (spec, base.replace(seed=2)), (spec, base.replace(sampler="pymc")),
                           (spec.replace(priors={"beta": {"dist": "normal", "sigma": 2.0}}), base)]}
    assert len(hashes) == 4
    again = assemble(spec, _fake_idata(base), ["beta", "sigma"])
    assert again.idata.attrs["fit_hash"] in hashes and again.idata.attrs["spec_hash"] == spec.spec_hash
    assert again.summary_block()["fit_hash"] == again.idata.attrs["fit_hash"]
    with pytest.raises(ValueError, match="no fitted values"):
        again.fitted()


def test_unknown_ids_are_refused_before_anything_runs():
    assert api.unknown_analyses(["bayes_table3_col4", "bayes_groups_marketization", "table3_col9"]) == []
    bad = api.unknown_analyses(["bayes_table3_col9", "bayes_sdmm"])
    assert len(bad) == 2 and "'bayes_table3_col9'" in bad[0] and "bayes_table3_col4" in bad[0]
    with pytest.raises(ValueError, match="no such analysis: 'bayes_nope'"):
        api.fit_grid(None, ["bayes_nope"], scheduler="serial", progress=False)


def test_a_frequentist_panel_result_keeps_its_fitted_values():
    from bayesnqp.frequentist.panel import table3

    frame, _ = simulate.simulate_panel(20, 5, seed=1, controls=("develop",))
    col4 = table3(frame, controls=["develop"])[3]
    fitted = col4.fitted()
    assert len(fitted) == len(frame) and list(fitted.index.names) == ["city", "year"]
    resid = fitted["observed"] - fitted["fitted"]
    # two-way fixed effects: residuals sum to zero within every city and every year
    assert np.abs(resid.groupby(level="city").sum()).max() < 1e-8
    assert np.abs(resid.groupby(level="year").sum()).max() < 1e-8
    assert np.allclose(fitted["observed"].to_numpy(), frame["nqp"].to_numpy())
    with pytest.raises(ValueError, match="no fitted values"):
        col4.__class__(id="x", title="x", coefs=col4.coefs, n_obs=1, se_type="iid").fitted()


def test_a_user_spec_of_another_family_is_accepted_and_a_bad_one_refused(tmp_path):
    from bayesnqp.bayes.spec import read_user_models
    from bayesnqp.errors import InputError
    from bayesnqp.paths import bundled

    text = (bundled("models") / "bayes_sar.toml").read_text(encoding="utf-8")
    (tmp_path / "bayes_my_sar.toml").write_text(text.replace('id = "bayes_sar"', 'id = "bayes_my_sar"'))
    specs = read_user_models(tmp_path)
    assert [s.id for s in specs] == ["bayes_my_sar"] and specs[0].options["model"] == "sar"
    (tmp_path / "bayes_my_sdm.toml").write_text(text.replace('id = "bayes_sar"', 'id = "bayes_my_sdm"')
                                                 .replace('model = "sar"\n', ""))
    with pytest.raises(InputError, match="must say which member it is"):
        read_user_models(tmp_path)


def test_a_replaced_bundled_spec_keeps_what_says_which_analysis_it_is(tmp_path):
    from bayesnqp.bayes.spec import read_user_models, user_models
    from bayesnqp.errors import InputError
    from bayesnqp.paths import bundled

    def without(spec_id: str, *dropped: str) -> str:
        lines = (bundled("models") / f"{spec_id}.toml").read_text(encoding="utf-8").splitlines()
        return "\n".join(line for line in lines if not line.startswith(dropped)) + "\n"

    # an older copy without an oracle line keeps the bundled oracle
    (tmp_path / "bayes_table3_col4_iid.toml").write_text(without("bayes_table3_col4_iid", "oracle ="))
    assert [s.oracle for s in read_user_models(tmp_path)] == ["table3_col4"]
    with user_models(tmp_path):
        assert load_spec("bayes_table3_col4_iid").oracle == "table3_col4"
    # ... but one that drops what makes it the group-slope analysis is refused, not run as another model
    (tmp_path / "bayes_groups.toml").write_text(without("bayes_groups", "oracle =", "slope_groups ="))
    with pytest.raises(InputError, match="options.slope_groups must stay 'median_split' in bayes_groups"):
        read_user_models(tmp_path)
    (tmp_path / "bayes_groups.toml").unlink()
    # an oracle's placeholders must be ones the family fills
    my_iv = without("bayes_iv").replace('id = "bayes_iv"', 'id = "bayes_my_iv"') \
        .replace('oracle = "iv_2sls_trend"', 'oracle = "iv_{splitter}"')
    (tmp_path / "bayes_my_iv.toml").write_text(my_iv)
    with pytest.raises(InputError, match=r"oracle 'iv_\{splitter\}': only no placeholder"):
        read_user_models(tmp_path)


def test_a_pickled_result_travels_without_its_model():
    import pickle

    spec = load_bundled("bayes_table3_col2")
    result = assemble(spec, _fake_idata(SamplerSettings(draws=50)), ["beta", "sigma"], model=object(),
                      fitted_values=lambda: None)
    back = pickle.loads(pickle.dumps(result))
    assert back.model is None and back.fitted_values is None and back.id == result.id
    assert back.summary.equals(result.summary) and back.idata.attrs["fit_hash"] == result.idata.attrs["fit_hash"]
    with pytest.raises(ValueError, match="separated from its model"):
        back.fitted()
    with pytest.raises(ValueError, match="separated from its model"):
        result.without_model().fitted()
