"""Every registered layer through ``nnx.scan`` over stacked layers, ``nnx.remat``, ``nnx.cond``
and ``nnx.eval_shape``: outputs, gradients and the state left behind (statistics, caches, RNG
counters) must match eager calls.

Besides the registry, whose calls are deterministic, two local cases draw random numbers (and
update batch statistics) in the call, so RNG counters are checked through every transform.

Layers are initialised from ``rbg`` keys: XLA's RngBitGenerator compiles several times faster
on CPU than threefry, and every check compares against an eager call built from the same keys.
Each layer is one test, and each transform a subtest of it: the checks of a layer share the
eager ops compiled for it, which under pytest-xdist would otherwise be compiled again on
whichever worker ran the layer's other checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from tests.nn.registry import CASES, Case, build_stacked

LAYERS = 3


def _x(*shape: int) -> Callable[[jax.Array], tuple]:
    return lambda key: (jax.random.normal(key, shape),)


# Calls that draw random numbers: the Dropout streams' counters advance.
_RANDOM = [
    Case(
        name="Dropout-random",
        cls=nnx.Dropout,
        build=lambda rngs, dtype: nnx.Dropout(0.5, rngs=rngs),
        inputs=_x(4, 5),
    ),
    Case(
        name="Sequential-Linear-BatchNorm-Dropout",
        cls=nnx.Sequential,
        build=lambda rngs, dtype: nnx.Sequential(
            nnx.Linear(5, 6, rngs=rngs),
            nnx.BatchNorm(6, rngs=rngs),
            nnx.Dropout(0.3, rngs=rngs),
        ),
        inputs=_x(8, 5),
    ),
]
ALL = CASES + _RANDOM


def _rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _build(case: Case, seed: int = 0) -> Any:
    return case.build(_rngs(seed), None)


def _inputs(case: Case, seed: int = 1) -> tuple:
    return case.inputs(jax.random.key(seed))


def _runner(case: Case) -> Callable[..., Any]:
    return lambda m, *a: case.run(m, *a)


def _loss(run: Callable[..., Any]) -> Callable[..., jax.Array]:
    def loss(m: Any, *a: Any) -> jax.Array:
        out = run(m, *a)
        return sum(jnp.sum(jnp.asarray(o, jnp.float32) ** 2) for o in jax.tree.leaves(out))

    return loss


def _np(x: Any) -> np.ndarray:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x, np.float32 if jnp.issubdtype(x.dtype, jnp.floating) else None)


def _close(got: Any, want: Any, tol: float) -> None:
    """Same tree structure, shapes and dtypes, and values within `tol`."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert (x.shape, x.dtype) == (y.shape, y.dtype), (x, y)
        np.testing.assert_allclose(_np(x), _np(y), atol=tol, rtol=tol)


def _state(obj: Any) -> dict[tuple, Any]:
    """{path: raw value} of every state leaf of `obj` (a graph object or a State)."""
    state = obj if isinstance(obj, nnx.State) else nnx.state(obj)
    return {p: v.value if isinstance(v, nnx.Variable) else v for p, v in state.flat_state()}


def _same_state(got: Any, want: Any, tol: float) -> None:
    got, want = _state(got), _state(want)
    assert list(got) == list(want)
    for path, value in want.items():
        try:
            _close(got[path], value, tol)
        except AssertionError as e:
            raise AssertionError(f"state {path} differs: {e}") from None


def _identical(a: Any, b: Any) -> bool:
    """Whether two graph objects hold bit-identical state."""
    sa, sb = _state(a), _state(b)
    return list(sa) == list(sb) and all(
        np.array_equal(_np(x), _np(y))
        for p in sa
        for x, y in zip(jax.tree.leaves(sa[p]), jax.tree.leaves(sb[p]), strict=True)
    )


def _slice(tree: Any, k: int) -> Any:
    """Entry `k` of every array in `tree`, sliced on the host (slicing with jax would compile
    one gather per shape)."""

    def one(a: jax.Array) -> jax.Array:
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(a))[k]
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        return jnp.asarray(np.asarray(a)[k])

    return jax.tree.map(one, tree)


# --------------------------------------------------------------------------- scan over layers


def check_scan(case: Case) -> None:
    """`LAYERS` copies built by ``nnx.vmap`` over the constructor, run by ``nnx.scan`` with
    in_axes=(0, None, ...): each step one layer on the same inputs. Outputs (stacked) and the
    state afterwards equal each layer slice called eagerly."""
    stacked = build_stacked(case, LAYERS, _rngs())
    graphdef, state = nnx.split(stacked)
    slices = [nnx.merge(graphdef, _slice(state, k)) for k in range(LAYERS)]
    for path, value in _state(state).items():
        assert value.shape[:1] == (LAYERS,), (path, value.shape)
    # Where the initial state depends on the key, the layers were initialised differently.
    if not _identical(_build(case, 0), _build(case, 1)):
        assert not _identical(slices[0], slices[1])
    x = _inputs(case)

    out = nnx.scan(_runner(case), in_axes=(0,) + (None,) * len(x), out_axes=0)(stacked, *x)

    eager = [case.run(layer, *x) for layer in slices]
    tol = case.tol * 10
    _close(out, jax.tree.map(lambda *o: jnp.stack(o), *eager), tol)
    after = nnx.state(stacked)
    for k, layer in enumerate(slices):
        _same_state(_slice(after, k), layer, tol)


# --------------------------------------------------------------------------------- remat


def check_remat(case: Case) -> None:
    """``nnx.remat`` equals the eager call, and ``nnx.grad`` through it equals the gradient
    without remat; the state each call leaves (statistics, RNG counters) matches the eager
    call's."""
    x = _inputs(case)
    tol = case.tol * 10
    run = _runner(case)
    ref = _build(case)
    eager = case.run(ref, *x)
    with_grads = bool(nnx.state(ref, nnx.Param).flat_state())

    # One jitted program for the three calls: one compilation instead of three.
    @nnx.jit
    def calls(m0: Any, m1: Any, m2: Any, *a: Any) -> tuple:
        out = nnx.remat(run)(m0, *a)
        if not with_grads:
            return out, None, None
        return out, nnx.grad(_loss(nnx.remat(run)))(m1, *a), nnx.grad(_loss(run))(m2, *a)

    models = [_build(case) for _ in range(3)]
    out, grads, ref_grads = calls(*models, *x)
    _close(out, eager, tol)
    _same_state(models[0], ref, tol)
    if with_grads:
        _same_state(grads, ref_grads, tol)
        assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))
        _same_state(models[1], ref, tol)
        _same_state(models[2], ref, tol)


# ---------------------------------------------------------------------------------- cond


def check_cond(case: Case) -> None:
    """The layer as true_fun of one ``nnx.cond`` and as false_fun of another, the other
    branch returning zeros of the output's shape. For either predicate, the cond that takes
    the layer's branch returns the eager output and leaves the eager call's state (statistics,
    RNG counters); the other returns zeros and leaves its model as it was. The predicate is
    traced (under ``nnx.jit``), so both predicates share one compilation."""
    x = _inputs(case)
    run = _runner(case)
    shapes = jax.eval_shape(lambda: case.run(_build(case), *x))
    zeros: Callable[..., Any] = lambda m, *a: jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), shapes
    )
    probe = _build(case)
    case.run(probe, *x)
    # A call that creates Variables (a decoding cache) cannot run in a cond branch, which
    # must keep the structure of its operands (documented in nnx.cond): create them first.
    creates = nnx.graphdef(probe) != nnx.graphdef(_build(case))
    if creates:
        with pytest.raises(nnx.errors.TraceContextError, match="structure"):
            nnx.cond(True, run, zeros, _build(case), *x)

    def build() -> Any:
        model = _build(case)
        if creates:
            case.run(model, *x)
        return model

    @nnx.jit
    def conds(pred: jax.Array, m_true: Any, m_false: Any, *a: Any) -> tuple:
        return nnx.cond(pred, run, zeros, m_true, *a), nnx.cond(pred, zeros, run, m_false, *a)

    tol = case.tol * 10
    for pred in (True, False):
        ref, m_true, m_false = build(), build(), build()
        eager = case.run(ref, *x)
        taken, other = (m_true, m_false) if pred else (m_false, m_true)
        before = nnx.clone(other)
        outs = conds(jnp.asarray(pred), m_true, m_false, *x)
        out_taken, out_other = outs if pred else outs[::-1]
        _close(out_taken, eager, tol)
        _same_state(taken, ref, tol)
        _close(out_other, jax.tree.map(jnp.zeros_like, eager), 0)
        _same_state(other, before, 0)


# ----------------------------------------------------------------------------- eval_shape


def _shapes(tree: Any) -> list[tuple[str, tuple, Any]]:
    return [(jax.tree_util.keystr(p), a.shape, a.dtype) for p, a in jax.tree.leaves_with_path(tree)]


def check_eval_shape(case: Case) -> None:
    """``nnx.eval_shape`` of the constructor gives the real build's state shapes and dtypes,
    and of the call, on that abstract model, the eager output's; the abstract model is left
    unchanged."""
    abstract = nnx.eval_shape(lambda: _build(case))
    real = _build(case)
    assert nnx.graphdef(abstract) == nnx.graphdef(real)
    for path, value in _state(abstract).items():
        assert isinstance(value, jax.ShapeDtypeStruct), (path, value)
    assert _shapes(_state(abstract)) == _shapes(_state(real))

    x = _inputs(case)
    before = _shapes(_state(abstract))
    out = nnx.eval_shape(_runner(case), abstract, *x)
    for o in jax.tree.leaves(out):
        assert isinstance(o, jax.ShapeDtypeStruct), o
    assert _shapes(out) == _shapes(case.run(real, *x))
    assert _shapes(_state(abstract)) == before
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in _state(abstract).values())


# --------------------------------------------------------------------------------- tests

CHECKS: dict[str, Callable[[Case], None]] = {
    "scan": check_scan,
    "remat": check_remat,
    "cond": check_cond,
    "eval_shape": check_eval_shape,
}


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_transforms_match_eager(case: Case, subtests: pytest.Subtests) -> None:
    """One test per layer, one subtest per transform (reported as ``SUBFAILED[scan]`` etc.):
    the checks of a layer share its eagerly compiled ops, on one xdist worker."""
    for name, check in CHECKS.items():
        with subtests.test(name):
            check(case)
