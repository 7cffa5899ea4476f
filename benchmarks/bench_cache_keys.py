"""What the ordered broadcast checks save a warm run: the demo's ``--quick`` run with and without them.

``nutpie_disk_cache.order_broadcast_checks`` (run when ``bayesnqp.bayes`` is imported) makes PyTensor build
the same graph, hence the same compile-cache key, in every process. This runs the command line in fresh
processes on one shared set of cache folders, in turn: ``ordered`` (the package as shipped) and
``upstream`` (the same process with PyTensor's own ``broadcast_shape_iter`` put back before any model is
built). One warm-up run of each fills the caches (the first is a cold run); then ``--pairs`` pairs are
timed. Each run records its wall time and the net number of files it added to the caches: an ``ordered``
run should add none, an ``upstream`` run adds whatever graph variants its process drew.

Run by hand (not in CI), on a machine with nothing else running:
    PYTHONPATH=src python benchmarks/bench_cache_keys.py [--pairs 2]
Writes benchmarks/results/cache_keys.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_study import cache_env, cache_files  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cache_keys.json"

# The child process: the package's CLI, with PyTensor's own broadcast_shape_iter put back for "upstream".
CHILD = """
import sys
variant = sys.argv.pop(1)
import pytensor.tensor.extra_ops as extra_ops
upstream = extra_ops.broadcast_shape_iter
import bayesnqp.bayes
if variant == "upstream":
    extra_ops.broadcast_shape_iter = upstream
ordered = getattr(extra_ops.broadcast_shape_iter, "_ordered_broadcast_checks", False)
assert ordered == (variant == "ordered"), variant
from bayesnqp.cli import main
sys.argv = ["bayesnqp", *sys.argv[1:]]
main()
"""


def one_run(variant: str, env: dict[str, str], caches: Path, out: Path) -> dict[str, Any]:
    before = cache_files(caches)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, variant, "run", "--quick", "--out", str(out)], env=env,
                          capture_output=True, text=True, check=False)
    record: dict[str, Any] = {"variant": variant, "exit_code": done.returncode,
                              "wall_seconds": round(time.perf_counter() - began, 1),
                              "cache_files_added": cache_files(caches) - before}
    if done.returncode != 0:
        record["stderr_tail"] = done.stderr[-2000:]
    print(f"  {variant}: {record['wall_seconds']} s, {record['cache_files_added']} files added "
          f"(exit {done.returncode})", file=sys.stderr, flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    opts = parser.parse_args()
    results: dict[str, Any] = {
        "what": __doc__.split("\n")[0],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": "bayesnqp run --quick (demo)",
        "warm_up": [], "pairs": []}
    with tempfile.TemporaryDirectory(prefix="bench_cache_keys_") as tmp:
        caches = Path(tmp) / "caches"
        env = {**cache_env(caches), "PYTHONHASHSEED": "0", "NUMBA_OPT": "1"}  # what the CLI sets for itself
        out = Path(tmp) / "out"
        for variant in ("ordered", "upstream"):
            results["warm_up"].append(one_run(variant, env, caches, out))
        for _ in range(opts.pairs):
            results["pairs"].append([one_run(v, env, caches, out) for v in ("ordered", "upstream")])
    walls = {v: [r["wall_seconds"] for pair in results["pairs"] for r in pair if r["variant"] == v]
             for v in ("ordered", "upstream")}
    results["median_wall_seconds"] = {v: statistics.median(w) for v, w in walls.items()}
    results["ratio_ordered_to_upstream"] = round(statistics.median(
        [a["wall_seconds"] / b["wall_seconds"] for a, b in results["pairs"]]), 3)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
