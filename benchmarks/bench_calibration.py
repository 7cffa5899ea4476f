"""Calibration of the 94% intervals: how often they cover the truth, by simulation with known truth.

Four data-generating processes on 100 x 8 panels with city effects correlated with the treatment
(``bayesnqp.simulate.calibration_panel``): iid errors; AR(1) errors (phi 0.5) with log-normal city
scales; random city slopes; two groups with different slopes and treatment trends. Methods compared on
the same replications:

* ``bayes_iid``: column (4) with iid errors (``bayes_table3_col4_iid``; for groups, ``bayes_groups``
  with iid errors);
* ``bayes_honest``: the same with AR(1) errors, city error scales and random city slopes, city effects
  integrated out (``bayes_table3_col4`` through the study's driver, or for groups the bundled
  ``bayes_groups``, so the random slopes and then the city scales are kept only where leave-one-city-out
  LOO prefers them);
* ``bootstrap``: the city-level Bayesian bootstrap of the two-way FE estimate (94% HDI of its draws);
* ``crv1``: the two-way FE estimate with CRV1 standard errors by city and a t(G - 1) interval (pyfixest).

Quantities: the treatment slope, and for the groups process the two group slopes and their difference.
Reported per process, method and quantity: coverage (with its binomial Monte Carlo SE), mean interval
width, mean sd_ratio (posterior sd / CRV1 SE) and mean |z| against the FE estimate.

Compiled models are reused across replications (same structure, data swapped), and replications are
spread over worker processes (one sampling core each).

Run by hand (not in CI):  PYTHONPATH=src python benchmarks/bench_calibration.py [--reps 200] [--workers 2]
Writes benchmarks/results/calibration.json and benchmarks/results/calibration.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROB = 0.94
# 2 x 750 draws: the honest model's least-mixed parameter (the sd of the log city scales when the truth
# is 0) reaches bulk ESS ~300 at this length; the key slope's ESS is several times that
DRAWS, TUNE, CHAINS = 750, 500, 2
RESULTS = Path(__file__).parent / "results"


def _settings(seed: int):
    from bayesnqp.bayes.sampling import SamplerSettings

    return SamplerSettings(draws=DRAWS, tune=TUNE, chains=CHAINS, seed=seed, cores=1)


def _hdi(draws: np.ndarray) -> tuple[float, float]:
    from bayesnqp.checks.diagnostics import hdi_bounds

    lo, hi = hdi_bounds(np.asarray(draws).ravel(), PROB)
    return float(lo), float(hi)


def _interval(lo: float, hi: float, mean: float, sd: float, truth: float, fe: float, se: float) -> dict[str, float]:
    return {"covered": float(lo <= truth <= hi), "width": hi - lo, "sd_ratio": sd / se, "z": (mean - fe) / se}


def _fe(frame: pd.DataFrame, groups: np.ndarray | None) -> dict[str, tuple[float, float]]:
    """Two-way FE (interacted by group where given) with CRV1 by city: term -> (estimate, se), and the
    t(G - 1) critical value."""
    import pyfixest as pf

    d = frame.reset_index()
    if groups is None:
        fit = pf.feols("nqp ~ agglomeration + develop | city + year", data=d, vcov={"CRV1": "city"})
        return {"beta": (float(fit.coef()["agglomeration"]), float(fit.se()["agglomeration"]))}
    d["agg_low"], d["agg_high"] = d["agglomeration"] * ~groups, d["agglomeration"] * groups
    fit = pf.feols("nqp ~ agg_low + agg_high + develop | city + year", data=d, vcov={"CRV1": "city"})
    b, v = fit.coef(), np.asarray(fit._vcov)
    i, j = list(b.index).index("agg_low"), list(b.index).index("agg_high")
    return {"beta_low": (float(b.iloc[i]), float(np.sqrt(v[i, i]))),
            "beta_high": (float(b.iloc[j]), float(np.sqrt(v[j, j]))),
            "difference": (float(b.iloc[j] - b.iloc[i]), float(np.sqrt(v[i, i] + v[j, j] - 2 * v[i, j])))}


def _bootstrap_draws(frame: pd.DataFrame, groups: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    from bayesnqp.frequentist.bootstrap import bootstrap_draws, dirichlet_weights

    weights = dirichlet_weights(frame.index.get_level_values("city").unique(), seed=seed)
    if groups is None:
        draws = bootstrap_draws(frame, "nqp", ["agglomeration", "develop"], weights)
        return {"beta": draws["agglomeration"].to_numpy()}
    d = frame.copy()
    d["agg_low"], d["agg_high"] = d["agglomeration"] * ~groups, d["agglomeration"] * groups
    draws = bootstrap_draws(d, "nqp", ["agg_low", "agg_high", "develop"], weights)
    low, high = draws["agg_low"].to_numpy(), draws["agg_high"].to_numpy()
    return {"beta_low": low, "beta_high": high, "difference": high - low}


def _bayes_draws(frame: pd.DataFrame, process: str, honest: bool, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    from bayesnqp.bayes import groups as bg
    from bayesnqp.bayes import panel
    from bayesnqp.bayes.spec import load_spec

    if process == "groups":
        # honest: the bundled spec, as the study fits it (AR(1) errors; the random slopes and then the
        # city scales kept only where LOO prefers them); iid: the same without the error options
        spec = load_spec("bayes_groups")
        if not honest:
            spec = spec.replace(options={k: v for k, v in spec.options.items() if k not in ("errors", "errors_by_loo")}
                                | {"city_effects": "sampled"})
        (res,) = bg.fit_groups(frame, ("develop",), ["group_score"], _settings(seed), {}, spec=spec)
        post = res.idata.posterior
        out = {"beta_low": post["beta_group"].sel(group="low").values,
               "beta_high": post["beta_group"].sel(group="high").values, "difference": post["difference"].values}
    elif honest:
        # the study's own driver: it also fits the model without the random slopes, then without the city
        # scales, and keeps each only where leave-one-city-out LOO prefers it (options.errors_by_loo)
        res = panel.fit_panel(frame, ("develop",), _settings(seed), load_spec("bayes_table3_col4"), None)
        out = {"beta": res.idata.posterior["beta"].sel(coef="agglomeration").values}
    else:
        # sampled alone (fit_panel would add the iid spec's prior predictive check to every replication)
        spec = load_spec("bayes_table3_col4_iid")
        model, idata, _ = panel.fit_spec(frame, spec, ("develop",), _settings(seed))
        out = {"beta": idata.posterior["beta"].sel(coef="agglomeration").values}
        res = panel.finish(spec, model, idata, oracle=None, meant_to_match=False, agreement_note="")
    d = res.diagnostics
    import arviz as az

    stats = res.idata.sample_stats
    key_ess = min(float(az.ess(np.asarray(v).reshape(CHAINS, -1), method="bulk")) for v in out.values())
    return out, {"max_r_hat": d.max_r_hat, "min_ess_bulk": d.min_ess_bulk, "divergences": d.divergences,
                 "min_ess_bulk_key": key_ess, "step_size": float(stats["step_size"].mean()),
                 "mean_leapfrog_steps": float(stats["n_steps"].mean()) if "n_steps" in stats else float("nan"),
                 **options_kept(res, honest)}


def options_kept(res, honest: bool) -> dict[str, float]:
    """Which error options the fit carries: as selected by LOO, else none (the iid model)."""
    selected = res.extra.get("error_options_loo", {})
    # the worst share of cities with Pareto k above 0.7 in this fit's LOO comparisons (NaN: none made)
    high_k = [max(r["share_k_above_0.7_with"], r["share_k_above_0.7_without"]) for r in selected.values()]
    return {**{f"{option}_kept": float(selected[option]["kept"] if option in selected else honest)
               for option in ("random_slope", "city_scales")},
            "loo_share_k_above_0.7": max(high_k) if high_k else float("nan")}


def replicate(process: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Every method on the replications ``seeds`` of ``process`` (one worker, compiled models reused)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    warnings.filterwarnings("ignore")
    from bayesnqp.simulate import calibration_panel

    rows = []
    for seed in seeds:
        frame, truth = calibration_panel(process, seed)
        groups = None
        if process == "groups":
            groups = (frame["group_score"] > frame["group_score"].groupby(level="city").mean().median()) \
                .to_numpy()
        fe = _fe(frame, groups)
        draws = {"bootstrap": _bootstrap_draws(frame, groups, seed)}
        diagnostics = {}
        for method, honest in (("bayes_iid", False), ("bayes_honest", True)):
            t0 = time.perf_counter()
            draws[method], diagnostics[method] = _bayes_draws(frame, process, honest, seed)
            diagnostics[method]["seconds"] = time.perf_counter() - t0
        from scipy import stats

        n_city = frame.index.get_level_values("city").nunique()
        crit = stats.t.ppf(0.5 + PROB / 2, n_city - 1)
        for quantity, (est, se) in fe.items():
            row = {"process": process, "seed": seed, "quantity": quantity}
            row["crv1"] = _interval(est - crit * se, est + crit * se, est, se, truth[quantity], est, se)
            for method, d in draws.items():
                x = np.asarray(d[quantity]).ravel()
                row[method] = _interval(*_hdi(x), float(x.mean()), float(x.std()), truth[quantity], est, se)
            row["diagnostics"] = diagnostics
            rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    methods = ["bayes_iid", "bayes_honest", "bootstrap", "crv1"]
    out: dict[str, Any] = {}
    for (process, quantity), chunk in pd.DataFrame(rows).groupby(["process", "quantity"], sort=False):
        block = {}
        for m in methods:
            vals = pd.DataFrame(list(chunk[m]))
            cov = float(vals["covered"].mean())
            block[m] = {"coverage": cov, "coverage_mc_se": float(np.sqrt(cov * (1 - cov) / len(vals))),
                        "mean_width": float(vals["width"].mean()), "mean_sd_ratio": float(vals["sd_ratio"].mean()),
                        "mean_abs_z": float(vals["z"].abs().mean())}
        diag = pd.DataFrame([{**r["diagnostics"][m], "method": m} for r in chunk.to_dict("records")
                             for m in ("bayes_iid", "bayes_honest")])
        block["diagnostics"] = {m: {"max_r_hat": float(g["max_r_hat"].max()),
                                    "min_ess_bulk": float(g["min_ess_bulk"].min()),
                                    "median_min_ess_bulk": float(g["min_ess_bulk"].median()),
                                    "share_min_ess_below_300": float((g["min_ess_bulk"] < 300).mean()),
                                    "min_ess_bulk_key": float(g["min_ess_bulk_key"].min()),
                                    "mean_step_size": float(g["step_size"].mean()),
                                    "mean_leapfrog_steps": float(g["mean_leapfrog_steps"].mean()),
                                    "share_with_divergences": float((g["divergences"] > 0).mean()),
                                    "share_random_slope_kept": float(g["random_slope_kept"].mean()),
                                    "share_city_scales_kept": float(g["city_scales_kept"].mean()),
                                    # over the fits that compared options by LOO (NaN: none did)
                                    "mean_loo_share_k_above_0.7": float(g["loo_share_k_above_0.7"].mean()),
                                    "max_loo_share_k_above_0.7": float(g["loo_share_k_above_0.7"].max()),
                                    "mean_seconds": float(g["seconds"].mean())}
                                for m, g in diag.groupby("method")}
        out.setdefault(process, {})[quantity] = {"replications": int(len(chunk)), **block}
    return out


def figure(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, methods = [], ["bayes_iid", "bayes_honest", "bootstrap", "crv1"]
    values = {m: [] for m in methods}
    errors = {m: [] for m in methods}
    for process, quantities in summary.items():
        for quantity, block in quantities.items():
            labels.append(f"{process}\n{quantity}")
            for m in methods:
                values[m].append(block[m]["coverage"])
                errors[m].append(1.96 * block[m]["coverage_mc_se"])
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(labels))
    for k, m in enumerate(methods):
        ax.errorbar(x + (k - 1.5) * 0.18, values[m], yerr=errors[m], fmt="o", capsize=2, label=m)
    ax.axhspan(0.91, 0.97, color="0.9", zorder=0, label="target 91-97%")
    ax.axhline(PROB, color="k", lw=0.8)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel(f"coverage of the {int(PROB * 100)}% interval")
    ax.set_ylim(max(0.0, min(min(v) for v in values.values()) - 0.05), 1.0)
    ax.legend(fontsize=7, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--processes", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json")
    parser.add_argument("--label", default=time.strftime("%Y-%m-%d"),
                        help="names this run in the file (processes kept from it by a later partial run say so)")
    args = parser.parse_args()
    from bayesnqp.simulate import PROCESSES

    processes = args.processes or list(PROCESSES)
    t0 = time.perf_counter()
    # chunks of consecutive seeds, processes interleaved, so that an interrupted study still covers every
    # process; each worker keeps its compiled models between chunks (same structure, data swapped)
    size = 10
    chunks = [(p, list(range(start, min(start + size, args.reps))))
              for start in range(0, args.reps, size) for p in processes]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(replicate, p, seeds) for p, seeds in chunks]
        for future in as_completed(futures):
            rows.extend(future.result())
            write(rows, args, time.perf_counter() - t0, complete=len(rows) == sum(
                len(s) * (3 if p == "groups" else 1) for p, s in chunks))
    summary = summarise(rows)
    for process, quantities in summary.items():
        for quantity, block in quantities.items():
            print(process, quantity, {m: round(block[m]["coverage"], 3) for m in
                                      ("bayes_iid", "bayes_honest", "bootstrap", "crv1")})
    print(f"wall {time.perf_counter() - t0:.0f} s")


def write(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float, complete: bool) -> None:
    """The JSON (and figure) of the replications so far; ``complete`` says whether all have finished.
    Processes not rerun (``--processes``) keep their block from the previous file, and say so."""
    summary = summarise(rows)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    kept = {p: block for p, block in previous.get("summary", {}).items() if p not in summary}
    for process, block in kept.items():
        for quantity in block.values():
            quantity.setdefault("from_earlier_run", previous.get("run_label", "an earlier run"))
    summary = {**summary, **kept}
    result = {"what": __doc__.split("\n\n")[0], "prob": PROB, "panel": "100 cities x 8 years",
              "draws": DRAWS, "tune": TUNE, "chains": CHAINS, "replications_planned": args.reps,
              "complete": complete, "workers": args.workers, "wall_seconds": seconds,
              "processes_run": sorted({r["process"] for r in rows}), "run_label": args.label, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    figure(summary, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
