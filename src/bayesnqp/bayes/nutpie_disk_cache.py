"""nutpie's numba model, with its C entry points cached on disk across processes.

nutpie (0.16) compiles a model in two steps: PyTensor turns the log-density and its gradient into a
numba function (cached on disk by PyTensor under ``base_compiledir/numba``), and nutpie then wraps that
function in two C callbacks (``numba.cfunc``) for its Rust sampler. The wrappers close over the model's
data arrays, so numba cannot cache them, and compiling them costs 6-10 s per model structure, every
process: most of a warm run's compile time (``benchmarks/results/study.json``).

This module builds the same two callbacks from generated source that holds no data, only the layout of
nutpie's ``user_data`` record (which points at the data), and caches them in PyTensor's numba cache
directory, keyed by PyTensor's own cache key of the wrapped function plus the wrapper's source. The
result is nutpie's own ``CompiledPyMCModel``, so sampling and ``with_data`` are nutpie's: a test checks
the log-density, gradient and expanded values against ``nutpie.compile_pymc_model``'s, also after a data
swap that changes the number of rows.

Where the wrapped function has no PyTensor cache key (an Op that cannot be cached), nutpie is not the
0.16 line this was written against, PyTensor's numba cache is turned off
(``PYTENSOR_FLAGS=numba__cache=False``), or anything in building the wrappers fails,
:func:`compile_numba_cached` returns ``None`` (with a warning for a failure) and the caller uses nutpie's
own compile.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def source_salt(module_file: str) -> int:
    """A cache-key salt that changes whenever a module's source does. numba does not check that a callee
    linked into a cached function is fresh, so the package's own numba kernels salt PyTensor's cache key
    with the hash of their module: an edited kernel is compiled again, not served stale from the cache."""
    return int(hashlib.sha256(Path(module_file).read_bytes()).hexdigest()[:15], 16)


def order_broadcast_checks() -> bool:
    """Make PyTensor's broadcast checks come out the same in every process, so a graph's cache key does.

    ``pytensor.tensor.extra_ops.broadcast_shape_iter`` (2.38) gathers the symbolic lengths of a dimension
    that two or more arrays share in a ``set`` of Variables, which hash by id, and builds its runtime check
    as ``all(eq(first, other) ...)`` in that set's order. So which length came first changed with the
    memory layout of the process: the same model gave a different graph, hence a different numba cache
    key, from one process to the next (the likelihood comparison's Normal model: 4 keys in 4 processes),
    and a warm run compiled it again. This replaces the set by an insertion-ordered one (each distinct
    length where it first appears); the checks compare the same lengths, so results do not change. The
    source is patched only where the line is found verbatim: an upstream version that changed it is left
    alone. Returns whether the ordered version is in place."""
    import inspect

    from pytensor.misc.ordered_set import OrderedSet
    from pytensor.tensor import extra_ops

    current = extra_ops.broadcast_shape_iter
    if getattr(current, "_ordered_broadcast_checks", False):
        return True
    try:
        lines, first_line = inspect.getsourcelines(current)
    except (OSError, TypeError):
        return False
    source = "\n" * (first_line - 1) + "".join(lines)  # tracebacks keep upstream's line numbers
    unordered = "nonconst_nb_shapes: set[int] = set()"
    if source.count(unordered) != 1:
        return False
    namespace = {**vars(extra_ops), "OrderedSet": OrderedSet}
    exec(compile(source.replace(unordered, "nonconst_nb_shapes = OrderedSet()"),  # noqa: S102 - upstream source
                 inspect.getsourcefile(current) or "<broadcast_shape_iter>", "exec"), namespace)
    ordered = namespace["broadcast_shape_iter"]
    ordered._ordered_broadcast_checks = True
    extra_ops.broadcast_shape_iter = ordered
    return True


# Bump when the generated wrappers change, so old cache entries are never picked up.
_WRAPPER_VERSION = "2"

# The data views are taken before the ``try``: numba splits a try block at every statement that can raise,
# and its liveness analysis of a try block holding a dozen array views took minutes.
_LOGP_TEMPLATE = '''
def {name}(dim, x_, out_, logp_, user_data_):
    if dim != {n_dim}:
        return -1
    x = numba.carray(x_, ({n_dim},))
    out = numba.carray(out_, ({n_dim},))
    logp = numba.carray(logp_, ())
    shared = numba.carray(user_data_, (), RECORD)["shared"]
{unpack}
    try:
        logp_val, grad = INNER(x{args})
        logp[()] = logp_val
        out[...] = grad
    except Exception:
        return 1
    if not np.all(np.isfinite(out)):
        return 3
    if not np.isfinite(logp_val):
        return 4
    return 0
'''

_EXPAND_TEMPLATE = '''
def {name}(dim, expanded, x_, out_, user_data_):
    if dim != {n_dim}:
        return -1
    if expanded != {n_expanded}:
        return -1
    x = numba.carray(x_, ({n_dim},))
    out = numba.carray(out_, ({n_expanded},))
    shared = numba.carray(user_data_, (), RECORD)["shared"]
{unpack}
    try:
        (values,) = INNER(x{args})
        out[...] = values
    except Exception:
        return -2
    return 0
'''


@functools.cache
def _as_readonly() -> Any:
    """A numba intrinsic that retypes an array as read-only (same data, same memory layout).

    nutpie hands the wrapped function its data as read-only arrays, so PyTensor's disk cache holds the
    function compiled for that signature; viewing the data as writable arrays would compile it again."""
    from numba.extending import intrinsic

    @intrinsic
    def as_readonly(typingctx, array):
        def codegen(context, builder, signature, args):
            return args[0]

        return array.copy(readonly=True)(array), codegen

    return as_readonly


def _unpack_lines(names: list[str], shared_data: dict[str, np.ndarray]) -> tuple[str, str, dict[str, Any]]:
    """Source lines that view each shared array through the pointer and shape nutpie's ``user_data``
    record holds (so ``with_data`` keeps working), the argument list, and the dtype globals they use."""
    lines, args, dtypes = [], "", {}
    for i, name in enumerate(names):
        value = shared_data[name]
        shape = ", ".join(f"int(shared['shape'][{name!r}][{k}])" for k in range(value.ndim))
        shape = f"({shape},)" if value.ndim == 1 else f"({shape})"
        dtypes[f"DTYPE_{i}"] = value.dtype
        lines.append(f"    a{i} = as_readonly(numba.carray(address_as_void_pointer(shared['data'][{name!r}][()]), "
                     f"{shape}, DTYPE_{i}))")
        args += f", a{i}"
    return "\n".join(lines), args, dtypes


def _cached_cfunc(template: str, kind: str, inner: Any, names: list[str], shared_data: dict[str, np.ndarray],
                  record: np.dtype, signature: Any, **sizes: int) -> Any | None:
    import numba
    from nutpie import __version__ as nutpie_version
    from nutpie.compile_pymc import address_as_void_pointer
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS, compile_numba_function_src

    py_func = getattr(inner, "py_func", None)
    inner_key = CACHED_SRC_FUNCTIONS.get(py_func) if py_func is not None else None
    if inner_key is None:  # PyTensor could not key this function: no safe disk key for its wrapper
        return None
    unpack, args, dtypes = _unpack_lines(names, shared_data)
    name = f"bayesnqp_nutpie_{kind}"
    source = template.format(name=name, unpack=unpack, args=args, **sizes)
    key = hashlib.sha256("\n".join([_WRAPPER_VERSION, numba.__version__, nutpie_version, inner_key, source, repr(record),
                                    repr(sorted((k, str(v)) for k, v in dtypes.items()))]).encode()).hexdigest()
    # numba rebuilds a cached function's environment by importing its module: name an importable one
    env = {"__name__": __name__, "numba": numba, "np": np, "INNER": inner, "RECORD": record,
           "address_as_void_pointer": address_as_void_pointer, "as_readonly": _as_readonly(), **dtypes}
    func = compile_numba_function_src(source, name, env, cache_key=f"bayesnqp_nutpie_{kind}_{key}")
    return numba.cfunc(signature, cache=True)(func)


def compile_numba_cached(model: Any) -> Any | None:
    """``nutpie.compile_pymc_model(model)`` (numba backend, nutpie's defaults) with disk-cached C entry
    points, or ``None`` where that cannot be done safely (see the module docstring)."""
    import nutpie
    from pytensor import config

    if not nutpie.__version__.startswith("0.16.") or not config.numba__cache:
        return None
    try:
        return _compile(model)
    except Exception as error:  # noqa: BLE001 - any failure here means: let nutpie compile it
        warnings.warn(f"nutpie's C entry points could not be cached on disk ({type(error).__name__}: {error}); "
                      "compiling them the usual way", RuntimeWarning, stacklevel=2)
        return None


def _compile(model: Any) -> Any | None:
    import numba
    import nutpie.compile_pymc as ncp
    from pymc.initial_point import make_initial_point_fn

    # the same initial point function as nutpie.compile_pymc_model's defaults
    initial_point_fn = ncp._wrap_with_lock(make_initial_point_fn(
        model=model, overrides=None, default_strategy="support_point", jitter_rvs=set(model.free_RVs),
        return_transformed=True))
    n_dim, n_expanded, logp_fn_pt, expand_fn_pt, flat_initial_point_fn, shape_info = ncp._make_functions(
        model, mode="NUMBA", compute_grad=True, join_expanded=True, pymc_initial_point_fn=initial_point_fn)

    shared_data: dict[str, np.ndarray] = {}
    shared_vars: dict[str, Any] = {}
    for var in [*logp_fn_pt.get_shared(), *expand_fn_pt.get_shared()]:
        if var.name in shared_vars and shared_vars[var.name] is not var:
            return None  # nutpie raises here; let it say why
        shared_data[var.name] = np.array(var.get_value(), order="C", copy=True)
        shared_vars[var.name] = var
    for value in shared_data.values():
        value.flags.writeable = False
    user_data = ncp.make_user_data(shared_vars, shared_data)
    # the generated source reads these fields of nutpie's record by name
    if user_data.dtype.names != ("shared",) or user_data.dtype["shared"].names != ("data", "size", "shape"):
        return None

    double_ptr = numba.types.CPointer(numba.types.double)
    logp_signature = numba.types.int64(numba.types.uint64, double_ptr, double_ptr, double_ptr,
                                       numba.types.voidptr)
    expand_signature = numba.types.int64(numba.types.uint64, numba.types.uint64, double_ptr, double_ptr,
                                         numba.types.voidptr)
    logp_cfunc = _cached_cfunc(_LOGP_TEMPLATE, "logp", logp_fn_pt.vm.jit_fn,
                               [v.name for v in logp_fn_pt.get_shared()], shared_data, user_data.dtype,
                               logp_signature, n_dim=n_dim)
    expand_cfunc = _cached_cfunc(_EXPAND_TEMPLATE, "expand", expand_fn_pt.vm.jit_fn,
                                 [v.name for v in expand_fn_pt.get_shared()], shared_data, user_data.dtype,
                                 expand_signature, n_dim=n_dim, n_expanded=n_expanded)
    if logp_cfunc is None or expand_cfunc is None:
        return None
    dims, coords = ncp._prepare_dims_and_coords(model, shape_info)
    return ncp.CompiledPyMCModel(
        _n_dim=n_dim, dims=dims, _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info)},
        compiled_logp_func=logp_cfunc, compiled_expand_func=expand_cfunc,
        initial_point_func=flat_initial_point_fn, shared_data=shared_data, user_data=user_data,
        n_expanded=n_expanded, shape_info=shape_info, logp_func=logp_fn_pt, expand_func=expand_fn_pt)
