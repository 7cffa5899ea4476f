#!/usr/bin/env bash
# GPU check (issue 12): the column (4) iid model on a county-size simulated panel (2,850 regions x 10
# years by default), sampled by nutpie's JAX backend on the GPU and on the CPU, beside the default numba
# sampler on the CPU. Writes benchmarks/results/gpu_check.json. Without a GPU (no nvidia-smi, or a
# jaxlib without CUDA) it runs the CPU legs only, says so in the JSON and exits 0, so CI can run it.
#
#   bash benchmarks/gpu_check.sh                       # from the repository root, bayesnqp importable
#   CITIES=280 DRAWS=300 bash benchmarks/gpu_check.sh  # smaller
#
# Settings (environment): CITIES (2850), YEARS (10), DRAWS (1000), TUNE (1000), CHAINS (4), SEED
# (20240601), OUT (benchmarks/results/gpu_check.json), PYTHON (python3). Each leg runs in a fresh process
# so that its compile time is its own. On a GPU machine install a CUDA build of jaxlib first
# (pip install "jax[cuda12]"); the CPU wheels see no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results/gpu_check.json}"
export CITIES="${CITIES:-2850}" YEARS="${YEARS:-10}" DRAWS="${DRAWS:-1000}" TUNE="${TUNE:-1000}"
export CHAINS="${CHAINS:-4}" SEED="${SEED:-20240601}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

gpu_reason=""
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  gpu_reason="no GPU: nvidia-smi is missing or lists no device"
elif ! JAX_PLATFORMS=cuda "$PY" -c "import jax; assert jax.devices('gpu')" >/dev/null 2>&1; then
  gpu_reason="nvidia-smi lists a GPU but JAX sees none (install a CUDA build: pip install \"jax[cuda12]\")"
fi

# one leg: $1 = sampler (nutpie | nutpie-jax), $2 = JAX platform (cpu | cuda), $3 = output file
leg() {
  JAX_PLATFORMS="$2" "$PY" - "$1" "$2" "$3" <<'PYEOF'
import json
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")
sampler, platform, out = sys.argv[1:4]
t0 = time.perf_counter()
import numpy as np

from bayesnqp import simulate
from bayesnqp.bayes import panel, sampling
from bayesnqp.bayes.sampling import SamplerSettings
from bayesnqp.bayes.spec import load_spec

env = {k: int(os.environ[k]) for k in ("CITIES", "YEARS", "DRAWS", "TUNE", "CHAINS", "SEED")}
frame, truth = simulate.simulate_panel(env["CITIES"], env["YEARS"], seed=1)
spec = load_spec("bayes_table3_col4_iid")
controls = ("develop", "finance")
settings = SamplerSettings(draws=env["DRAWS"], tune=env["TUNE"], chains=env["CHAINS"], seed=env["SEED"],
                           sampler=sampler)
pdata = panel.panel_data(frame, spec.outcome, spec.expand_terms(controls))
model = panel.build_panel_model(pdata, spec, likelihood=spec.likelihood)
setup = time.perf_counter() - t0
# compile under the key fit_spec uses, so the fit below reuses it and times sampling alone
key = panel.cache_key(spec, pdata, spec.likelihood, ",".join(sorted(v.name for v in model.free_RVs)))
t1 = time.perf_counter()
sampling.compile_nutpie(model, key, backend="jax" if sampler == "nutpie-jax" else "numba")
compile_s = time.perf_counter() - t1
t2 = time.perf_counter()
_, idata, _ = panel.fit_spec(frame, spec, controls, settings)
sample_s = time.perf_counter() - t2
import arviz as az

summary = az.summary(idata, var_names=["beta", "sigma", "sigma_city"], round_to="none")
steps = int(np.asarray(idata.sample_stats["n_steps"]).sum()) if "n_steps" in idata.sample_stats else None
device = "cpu"
if sampler == "nutpie-jax":
    import jax

    device = str(jax.devices()[0])
result = {
    "sampler": sampler, "device": device, "rows": int(len(frame)),
    "setup_seconds": round(setup, 2), "compile_seconds": round(compile_s, 2),
    "sample_seconds": round(sample_s, 2),
    "leapfrog_steps_after_tuning": steps,
    # tuning steps are not recorded; counted here at the post-tuning rate per draw
    "ms_per_gradient_approx": round(1000 * sample_s / (steps * (env["DRAWS"] + env["TUNE"]) / env["DRAWS"]), 4)
    if steps else None,
    "min_ess_bulk": float(summary["ess_bulk"].min()), "max_r_hat": float(summary["r_hat"].max()),
    "divergences": int(np.asarray(idata.sample_stats["diverging"]).sum()),
    "beta_agglomeration": {"mean": float(summary.loc["beta[agglomeration]", "mean"]),
                           "sd": float(summary.loc["beta[agglomeration]", "sd"]),
                           "mcse_mean": float(summary.loc["beta[agglomeration]", "mcse_mean"]),
                           "truth": truth["beta"]["agglomeration"]},
}
json.dump(result, open(out, "w"), indent=2)
print(f"{sampler} on {device}: compile {compile_s:.1f} s, sample {sample_s:.1f} s", file=sys.stderr)
PYEOF
}

status=0
legs=("nutpie cpu" "nutpie-jax cpu")
[ -z "$gpu_reason" ] && legs+=("nutpie-jax cuda")
for spec in "${legs[@]}"; do
  set -- $spec
  if ! leg "$1" "$2" "$TMP/$1-$2.json"; then
    echo "leg $1 on $2 failed" >&2
    echo "{\"sampler\": \"$1\", \"platform\": \"$2\", \"failed\": true}" > "$TMP/$1-$2.json"
    status=1
  fi
done

GPU_REASON="$gpu_reason" "$PY" - "$TMP" "$OUT" <<'PYEOF'
import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
legs = {p.stem: json.loads(p.read_text()) for p in sorted(tmp.glob("*.json"))}
reason = os.environ["GPU_REASON"]
libs = {}
for name in ("nutpie", "pymc", "pytensor", "jax", "jaxlib", "numba"):
    try:
        libs[name] = version(name)
    except PackageNotFoundError:
        libs[name] = None
env = {k: int(os.environ[k]) for k in ("CITIES", "YEARS", "DRAWS", "TUNE", "CHAINS", "SEED")}
result = {
    "what": "column (4) iid model (bayes_table3_col4_iid, city effects integrated out) on a simulated "
            f"{env['CITIES']} x {env['YEARS']} panel: nutpie (numba) on the CPU, nutpie's JAX backend on the "
            "CPU and, where there is one, on the GPU; each leg in a fresh process",
    "gpu": not reason, "gpu_note": reason or "GPU leg ran",
    "settings": env, "cpu_count": os.cpu_count(), "platform": platform.platform(), "libraries": libs,
    "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "legs": legs,
}
cpu, gpu = legs.get("nutpie-jax-cpu", {}), legs.get("nutpie-jax-cuda", {})
if cpu.get("sample_seconds") and gpu.get("sample_seconds"):
    result["gpu_speedup_sampling"] = round(cpu["sample_seconds"] / gpu["sample_seconds"], 2)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(result, indent=2) + "\n")
print(f"wrote {out} ({'GPU and CPU' if not reason else 'CPU only: ' + reason})")
PYEOF
exit $status
