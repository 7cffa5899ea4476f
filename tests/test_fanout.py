"""Fan-out on Dask: a specification grid on a 2-worker LocalCluster gives the serial run's numbers exactly."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

from bayesnqp.fanout import SERIAL, fan_out, grid_tasks, task_seeds


def test_task_seeds_do_not_depend_on_the_number_of_tasks():
    assert task_seeds(7, 3) == task_seeds(7, 5)[:3]
    assert len(set(task_seeds(7, 50))) == 50
    assert task_seeds(7, 3) != task_seeds(8, 3)


def test_grid_order_is_the_serial_loop_order():
    tasks = grid_tasks([("a", ["x", "y"]), ("seed", [1, 2])])
    assert tasks == [{"a": "x", "seed": 1}, {"a": "x", "seed": 2}, {"a": "y", "seed": 1}, {"a": "y", "seed": 2}]


def test_serial_passes_shared_and_task_arguments():
    out = fan_out(np.full, [{"fill_value": v} for v in (1.0, 2.0)], scheduler=SERIAL, shared={"shape": 2})
    assert [o.tolist() for o in out] == [[1.0, 1.0], [2.0, 2.0]]


def test_bad_scheduler_is_refused():
    with pytest.raises(ValueError, match="scheduler"):
        fan_out(np.full, [{"fill_value": 1.0}], scheduler="somewhere", shared={"shape": 1})


@pytest.fixture(scope="module")
def client():
    """One 2-worker LocalCluster (processes, one thread each) for the module; the tests pass the client,
    which ``fan_out`` leaves open."""
    distributed = require("distributed", "the dask extra")
    import dask

    with dask.config.set({"distributed.worker.daemon": False}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def test_results_come_back_in_task_order_and_errors_propagate(client):
    seeds = task_seeds(3, 6)
    serial = [g.random(3) for g in fan_out(np.random.default_rng, [{"seed": s} for s in seeds], scheduler=SERIAL)]
    seen: dict[int, int] = {}

    def record(i: int, generator: np.random.Generator) -> None:
        seen[i] = generator.bit_generator.state["state"]["state"]

    remote = [g.random(3) for g in fan_out(np.random.default_rng, [{"seed": s} for s in seeds], scheduler=client,
                                           on_result=record)]
    assert all(np.array_equal(a, b) for a, b in zip(serial, remote))
    # every task reported once as it finished, under its own index
    assert seen == {i: np.random.default_rng(s).bit_generator.state["state"]["state"] for i, s in enumerate(seeds)}
    with pytest.raises(ValueError):
        fan_out(np.random.default_rng, [{"seed": 1}, {"seed": -1}], scheduler=client)


@pytest.mark.recovery
def test_specification_grid_on_a_local_cluster_matches_serial(client, raw_csv):
    """The wired-in use: ``fit_grid`` (analysis x control set x seed) serially here and on two worker
    processes; every posterior draw and every reported number must be identical, in grid order."""
    import bayesnqp as bn
    from bayesnqp.api import fit_grid

    study = bn.load_study(raw_csv())
    kwargs = dict(controls=[("develop",), ("finance",)], seeds=[1, 2], draws=100, tune=100, chains=2,
                  progress=False)
    serial = fit_grid(study, "bayes_table3_col2", scheduler=SERIAL, **kwargs)
    remote = fit_grid(study, "bayes_table3_col2", scheduler=client, **kwargs)
    assert list(serial) == list(remote) == [("bayes_table3_col2", c, s) for c in (("develop",), ("finance",))
                                            for s in (1, 2)]
    for key, a in serial.items():
        b = remote[key]
        post_a, post_b = a.idata.posterior, b.idata.posterior
        assert set(post_a.data_vars) == set(post_b.data_vars)
        for var in post_a.data_vars:
            assert np.array_equal(post_a[var].values, post_b[var].values), (key, var)
            assert post_a[var].coords.to_dataset().equals(post_b[var].coords.to_dataset())
        assert a.tidy().equals(b.tidy())
        # the control set of each grid point, not the first one compiled
        assert list(post_a["beta"].coords["coef"].values) == ["agglomeration", *key[1]]
    # different seeds, different draws
    first, second = (serial[("bayes_table3_col2", ("develop",), s)].idata.posterior["beta"].values for s in (1, 2))
    assert not np.array_equal(first, second)


def test_grid_command_refuses_unknown_controls_before_fitting(raw_csv):
    from typer.testing import CliRunner

    from bayesnqp.cli import app

    res = CliRunner().invoke(app, ["grid", "--data", str(raw_csv()), "--analysis", "bayes_table3_col2",
                                   "--controls", "develop,nonsense", "--scheduler", "serial"])
    assert res.exit_code == 2, res.output
    assert "nonsense" in res.output
    help_text = CliRunner().invoke(app, ["grid", "--help"]).output
    assert "--scheduler" in help_text and "--workers" in help_text
