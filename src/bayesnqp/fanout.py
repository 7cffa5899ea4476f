"""Independent fits fanned out over processes or machines with Dask distributed.

    from bayesnqp.fanout import fan_out, task_seeds
    tasks = [{"process": "ar1", "seeds": [s]} for s in range(20)]
    rows = fan_out(replicate, tasks)                                   # LocalCluster, 2 workers
    rows = fan_out(replicate, tasks, scheduler="tcp://10.0.0.5:8786")  # a running Dask scheduler
    rows = fan_out(replicate, tasks, scheduler="serial")               # here, one after the other

The results are the serial results: every task carries its own seed (``task_seeds`` derives them from one
seed, independently of the number of workers), nothing is drawn from a worker's state, each task runs
with one BLAS thread (threaded reductions sum in a varying order), and results come back in task order
whatever order the tasks finished in. A worker keeps its in-process compile cache between tasks, so tasks
of one model structure compile once per worker.

The scheduler:

* ``"local"`` (default): a ``LocalCluster`` of ``workers`` processes with one thread each, started for the
  call and closed after it;
* ``"tcp://host:port"`` (any scheduler address): an existing Dask cluster; its workers need bayesnqp and
  the same library versions installed (the tasks are pickled by reference to this package);
* ``"serial"``: no Dask at all, in this process;
* a ``distributed.Client`` already connected (left open).

Dask is an optional dependency (``pip install "bayesnqp[dask]"``); it is imported only here, only when
a scheduler other than ``"serial"`` is used.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

LOCAL = "local"
SERIAL = "serial"
DEFAULT_WORKERS = 2

__all__ = ["DEFAULT_WORKERS", "LOCAL", "SERIAL", "describe_scheduler", "fan_out", "grid_tasks", "task_seeds"]


def task_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent seeds derived from ``seed`` (NumPy's SeedSequence spawning): task ``i`` always
    gets the same seed, however many workers run the tasks and in whatever order."""
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in np.random.SeedSequence(seed).spawn(n)]


def _run_task(fn: Callable[..., T], shared: Mapping[str, Any], task: Mapping[str, Any]) -> T:
    """One task, with one BLAS/OpenMP thread (so sums come out in the same order as a serial run)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return fn(**shared, **task)


def describe_scheduler(scheduler: Any = LOCAL, workers: int = DEFAULT_WORKERS) -> str:
    """A line for progress messages: where the tasks will run."""
    if scheduler == SERIAL:
        return "serially in this process"
    if scheduler in (None, LOCAL):
        return f"on a local Dask cluster of {workers} worker process{'es' if workers != 1 else ''}"
    address = scheduler if isinstance(scheduler, str) else getattr(getattr(scheduler, "scheduler", None), "address", "?")
    return f"on the Dask scheduler at {address}"


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("fanning out fits needs Dask distributed: pip install \"bayesnqp[dask]\" "
                          "(or use scheduler=\"serial\")") from exc
    return distributed


def _client(scheduler: Any, workers: int, stack: ExitStack):
    """A connected client for ``scheduler``; what this call started is closed by ``stack``."""
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        return scheduler
    import dask

    if scheduler in (None, LOCAL):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        # Non-daemonic workers: PyMC's own sampler starts one process per chain, which a daemonic process
        # may not do. No dashboard (its port may be taken; nothing here reads it). Errors only in the log:
        # a worker that takes over 4 s to exit at the end (numba, nutpie's threads) is killed with a
        # warning that means nothing to the user.
        stack.enter_context(dask.config.set({"distributed.worker.daemon": False}))
        cluster = stack.enter_context(distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR))
        return stack.enter_context(distributed.Client(cluster))
    if not isinstance(scheduler, str) or "://" not in scheduler:
        raise ValueError(f"scheduler must be {LOCAL!r}, {SERIAL!r}, a scheduler address such as "
                         f"'tcp://host:8786' or a distributed.Client, not {scheduler!r}")
    return stack.enter_context(distributed.Client(scheduler))


def fan_out(fn: Callable[..., T], tasks: Iterable[Mapping[str, Any]], *, scheduler: Any = LOCAL,
            workers: int = DEFAULT_WORKERS, shared: Mapping[str, Any] | None = None,
            progress: Callable[[str], None] | None = None,
            on_result: Callable[[int, T], None] | None = None) -> list[T]:
    """Run ``fn(**shared, **task)`` for every task and return the results in task order.

    ``fn`` must be importable by name on the workers (a module-level function of an installed module).
    ``tasks``: keyword arguments of each call, each with its own seed where ``fn`` draws anything.
    ``shared``: keyword arguments common to every call (the data); sent to each worker once.
    ``scheduler``: ``"local"`` (a LocalCluster of ``workers`` single-threaded processes), a scheduler
    address (``"tcp://host:8786"``), ``"serial"``, or a connected ``distributed.Client``.
    ``progress``: called with a line as each task finishes. ``on_result``: called with (task index,
    result) as each task finishes, in completion order (to save partial results of a long study).
    The first task that raises stops the call with its exception (as the serial loop would).
    """
    tasks = [dict(t) for t in tasks]
    shared = dict(shared or {})
    say = progress or (lambda message: None)
    got = on_result or (lambda i, result: None)
    n = len(tasks)
    if scheduler == SERIAL:
        results = []
        for i, task in enumerate(tasks):
            results.append(_run_task(fn, shared, task))
            got(i, results[-1])
            say(f"task {i + 1}/{n} done")
        return results
    if n == 0:
        return []
    with ExitStack() as stack:
        client = _client(scheduler, workers, stack)
        distributed = _import_distributed()
        # the data go to the workers once, not once per task
        shared_futures = {k: client.scatter(v, broadcast=True) for k, v in shared.items()}
        call = functools.partial(_run_task, fn)
        futures = [client.submit(_submit_target, call, shared_futures, task, pure=False) for task in tasks]
        index = {f.key: i for i, f in enumerate(futures)}
        done = 0
        for future in distributed.as_completed(futures):
            done += 1
            if future.status == "error":
                exc, tb = future.exception(), future.traceback()
                client.cancel([f for f in futures if f.key != future.key])
                raise exc.with_traceback(tb)
            if on_result is not None:
                got(index[future.key], future.result())
            say(f"task {index[future.key] + 1}/{n} done ({done}/{n})")
        return client.gather(futures)


def _submit_target(call: Callable[..., T], shared: Mapping[str, Any], task: Mapping[str, Any]) -> T:
    # Dask resolves futures nested in the arguments (the scattered ``shared`` values) before the call.
    return call(shared, task)


def grid_tasks(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """The product of named axes as task dicts, the first axis varying slowest (the serial loop order)."""
    import itertools

    names = [name for name, _ in axes]
    return [dict(zip(names, values)) for values in itertools.product(*(list(v) for _, v in axes))]
