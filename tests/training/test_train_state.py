"""``nnx.TrainState``: a pytree dataclass for plain ``jax.jit`` (static graphdef and tx),
parity with plain optax, subclasses with extra fields, and flax's signature."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx

X = jax.random.normal(jax.random.key(1), (6, 3))
Y = jax.random.normal(jax.random.key(2), (6, 2))


def make_state(tx=None, cls=nnx.TrainState, **extra):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    return cls.create(graphdef, params=params, tx=tx or optax.adam(1e-2), **extra)


def loss_fn(graphdef, params, x=X, y=Y):
    return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)


TRACES: list[int] = []


@jax.jit
def train_step(state):
    TRACES.append(1)
    grads = jax.grad(lambda p: loss_fn(state.graphdef, p))(state.params)
    return state.apply_gradients(grads=grads)


def test_leaves_are_params_opt_state_step_and_graphdef_tx_are_static():
    state = make_state()
    leaves = jax.tree.leaves(state)
    n_params = len(jax.tree.leaves(state.params))
    # params + adam's mu, nu and count + step
    assert len(leaves) == n_params * 3 + 1 + 1
    treedef = jax.tree.structure(state)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.graphdef is state.graphdef and rebuilt.tx is state.tx


def test_jitted_steps_match_plain_optax_without_retracing():
    tx = optax.adam(1e-2)
    state = make_state(tx)
    params = jax.tree.map(np.asarray, state.params.to_pure_dict())
    ref_state = tx.init(params)

    def pure_loss(p):
        return jnp.mean((X @ p["kernel"] + p["bias"][None, :] - Y) ** 2)

    TRACES.clear()
    for k in range(4):
        state = train_step(state)
        g = jax.grad(pure_loss)(params)
        updates, ref_state = tx.update(g, ref_state, params)
        params = optax.apply_updates(params, updates)
        got = state.params.to_pure_dict()
        for name in params:
            np.testing.assert_allclose(got[name], params[name], rtol=1e-5, atol=1e-6)
        assert int(state.step) == k + 1
    assert len(TRACES) == 1
    assert isinstance(state, nnx.TrainState)


def test_immutable_and_replace_returns_a_copy():
    state = make_state()
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.step = 3  # type: ignore[misc]
    other = state.replace(step=jnp.asarray(7))
    assert int(other.step) == 7 and int(state.step) == 0


def test_apply_calls_the_model_functionally():
    state = make_state()
    y, (graphdef, _) = state.apply("params")(X)
    np.testing.assert_allclose(y, nnx.merge(state.graphdef, state.params)(X), rtol=1e-6)
    y2, _ = state.apply(state.params)(X)
    np.testing.assert_allclose(y2, y)
    assert graphdef == state.graphdef


class CountingModel(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.calls = nnx.BatchStat(jnp.array(0))

    def __call__(self, x):
        self.calls.value += 1
        return self.linear(x)


class StateWithStats(nnx.TrainState):
    batch_stats: Any
    note: str = dataclasses.field(default="", metadata={"static": True})


def test_subclass_carries_extra_fields_through_jit():
    model = CountingModel(nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = StateWithStats.create(
        graphdef, params=params, tx=optax.sgd(0.1), batch_stats=stats, note="run-1"
    )
    assert len(jax.tree.leaves(state)) == 2 + 1 + 1  # params, batch_stats, step (sgd: no state)

    @jax.jit
    def step(state):
        def loss(params):
            y, (_, new_state) = state.apply(params, "batch_stats")(X)
            return jnp.mean((y - Y) ** 2), new_state

        grads, new_state = jax.grad(loss, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, batch_stats=new_state.filter(nnx.BatchStat))

    state = step(step(state))
    assert int(state.batch_stats["calls"].value) == 2
    assert int(state.step) == 2
    assert state.note == "run-1"
    assert isinstance(state, StateWithStats)


def test_unknown_extra_field_teaches_subclassing():
    with pytest.raises(nnx.NNXError, match=r"class MyState\(nnx.TrainState\):\n\s+batch_stats"):
        make_state(batch_stats={})


def test_signature_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    theirs = flax_nnx.TrainState
    for name in ("create", "apply_gradients"):
        ours_params = list(inspect.signature(getattr(nnx.TrainState, name)).parameters)
        their_params = list(inspect.signature(getattr(theirs, name)).parameters)
        assert ours_params == their_params, name
    ours_fields = {f.name for f in dataclasses.fields(nnx.TrainState)}
    assert ours_fields == {f.name for f in dataclasses.fields(theirs)}
