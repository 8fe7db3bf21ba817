"""``nnx.Optimizer``: parity with plain optax over a param pytree, both ``update`` spellings,
inside and outside ``nnx.jit``, ``wrt`` filters, optax combinators (multi_transform,
inject_hyperparams schedules, MultiSteps), checkpoint round trips and teaching errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(3, 4, rngs=rngs)
        self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


class Adapter(nnx.Param):
    """A Param subtype, like a LoRA adapter, trained on its own."""


class Adapted(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.base = nnx.Linear(3, 2, rngs=rngs)
        self.delta = Adapter(jnp.zeros((3, 2)))

    def __call__(self, x):
        return self.base(x) + x @ self.delta.value


X = jax.random.normal(jax.random.key(1), (8, 3))
Y = jax.random.normal(jax.random.key(2), (8, 2))


def loss_fn(model, x=X, y=Y):
    return jnp.mean((model(x) - y) ** 2)


def pure_loss(p, x=X, y=Y):
    """The MLP's loss written from scratch over a plain dict: the independent reference."""
    h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"][None, :])
    out = h @ p["l2"]["kernel"] + p["l2"]["bias"][None, :]
    return jnp.mean((out - y) ** 2)


pure_grad = jax.jit(jax.grad(pure_loss))


def params_of(model, *filters):
    return jax.tree.map(np.asarray, nnx.state(model, *(filters or (nnx.Param,))).to_pure_dict())


def assert_trees_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def optax_reference(tx, params, steps):
    """Plain optax on a dict of arrays, with gradients of the from-scratch loss."""
    state = tx.init(params)
    history = []
    for _ in range(steps):
        updates, state = tx.update(pure_grad(params), state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


@nnx.jit
def jit_step(model, optimizer):
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)


def eager_step(model, optimizer):
    optimizer.update(model, nnx.grad(loss_fn)(model))


def legacy_step(model, optimizer):
    optimizer.update(nnx.grad(loss_fn)(model))  # the older spelling: the model it was built on


@pytest.mark.parametrize(
    "make_tx",
    [lambda: optax.adam(1e-2), lambda: optax.sgd(0.1, momentum=0.9)],
    ids=["adam", "sgd_momentum"],
)
@pytest.mark.parametrize(
    "step", [jit_step, eager_step, legacy_step], ids=["jit", "eager", "legacy"]
)
def test_matches_plain_optax_over_several_steps(make_tx, step):
    model = MLP(nnx.Rngs(0))
    reference = optax_reference(make_tx(), params_of(model), steps=4)
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
    for k, expected in enumerate(reference):
        step(model, optimizer)
        assert_trees_close(params_of(model), expected, rtol=1e-5, atol=1e-6)
        assert int(optimizer.step.value) == k + 1
    assert optimizer.step.value.dtype == jnp.uint32


def test_default_wrt_is_param_and_update_returns_the_updates():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.5))
    before = params_of(model)
    grads = nnx.grad(loss_fn)(model)
    updates = optimizer.update(model, grads)
    expected = jax.tree.map(lambda g: -0.5 * np.asarray(g), grads.to_pure_dict())
    assert_trees_close(jax.tree.map(np.asarray, nnx.State(updates).to_pure_dict()), expected)
    after = params_of(model)
    assert_trees_close(after, jax.tree.map(np.add, before, expected), rtol=1e-6)


def test_opt_state_is_held_as_opt_state_variables():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))
    opt_leaves = jax.tree.leaves(optimizer.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    assert opt_leaves and all(isinstance(v, nnx.OptArray) for v in opt_leaves)
    assert isinstance(optimizer.step, nnx.OptState)
    # adam's two moments mirror the four parameters, plus its count; plus the step counter.
    assert len(nnx.state(optimizer, nnx.OptState).flat_state()) == 2 * 4 + 1 + 1
    mu = optimizer.opt_state[0].mu
    assert mu["l1"]["kernel"].value.shape == (3, 4)


def test_custom_variable_type_trains_only_those():
    model = Adapted(nnx.Rngs(0))
    base_before = params_of(model.base)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=Adapter)
    assert [p for p, _ in nnx.state(optimizer.opt_state).flat_state()] == []  # sgd: stateless

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, Adapter))(model)
        optimizer.update(model, grads)

    for _ in range(3):
        step(model, optimizer)
    assert_trees_close(params_of(model.base), base_before)
    assert float(jnp.abs(model.delta.value).sum()) > 0
    assert int(optimizer.step.value) == 3


def test_custom_variable_type_ignores_extra_gradients():
    model = Adapted(nnx.Rngs(0))
    base_before = params_of(model.base)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=Adapter)
    optimizer.update(model, nnx.grad(loss_fn)(model))  # gradients of every Param
    assert_trees_close(params_of(model.base), base_before)
    assert float(jnp.abs(model.delta.value).sum()) > 0


def test_path_filter_trains_only_matching_paths_with_moment_state_for_them_only():
    model = MLP(nnx.Rngs(0))
    l1_before = params_of(model.l1)
    wrt = nnx.All(nnx.Param, nnx.PathContains("l2"))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=wrt)
    assert set(optimizer.opt_state[0].mu) == {"l2"}

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(model, nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model))

    l2_before = params_of(model.l2)
    step(model, optimizer)
    assert_trees_close(params_of(model.l1), l1_before)
    assert not np.allclose(params_of(model.l2)["kernel"], l2_before["kernel"])


def by_layer(labels):
    """An optax label function: the label of each parameter from its first path key (works
    on nnx.State and on plain dicts alike)."""
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: labels[path[0].key], params
    )


def test_multi_transform_routes_groups_by_label():
    model = MLP(nnx.Rngs(0))
    before = params_of(model)
    label_fn = by_layer({"l1": "frozen", "l2": "train"})
    tx = optax.multi_transform({"train": optax.sgd(0.1), "frozen": optax.set_to_zero()}, label_fn)
    optimizer = nnx.Optimizer(model, tx)
    grads = nnx.grad(loss_fn)(model)
    jit_step(model, optimizer)  # through nnx.jit (stateless sub-states in a dict)
    after = params_of(model)
    assert_trees_close(after["l1"], before["l1"])
    expected_l2 = jax.tree.map(
        lambda p, g: p - 0.1 * np.asarray(g), before["l2"], grads.to_pure_dict()["l2"]
    )
    assert_trees_close(after["l2"], expected_l2, rtol=1e-6)
    eager_step(model, optimizer)
    assert_trees_close(params_of(model)["l1"], before["l1"])


def test_multi_transform_with_adam_matches_optax():
    model = MLP(nnx.Rngs(0))
    label_fn = by_layer({"l1": "l1", "l2": "l2"})
    make = lambda: optax.multi_transform({"l1": optax.adam(1e-2), "l2": optax.sgd(0.05)}, label_fn)
    reference = optax_reference(make(), params_of(model), steps=3)
    optimizer = nnx.Optimizer(model, make())
    for expected in reference:
        jit_step(model, optimizer)
        assert_trees_close(params_of(model), expected, rtol=1e-5, atol=1e-6)


def test_schedule_learning_rate_readable_from_state():
    schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
    model = MLP(nnx.Rngs(0))
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    reference = optax_reference(
        optax.inject_hyperparams(optax.sgd)(learning_rate=schedule), params_of(model), steps=3
    )
    optimizer = nnx.Optimizer(model, tx)
    lr = optimizer.opt_state.hyperparams["learning_rate"]
    assert isinstance(lr, nnx.OptArray)
    for k, expected in enumerate(reference):
        jit_step(model, optimizer)
        # the rate the k-th update used is schedule(k); the state shows the last one used
        np.testing.assert_allclose(
            optimizer.opt_state.hyperparams["learning_rate"].value, schedule(k), rtol=1e-6
        )
        assert_trees_close(params_of(model), expected, rtol=1e-5, atol=1e-6)


def test_injected_hyperparameter_can_be_set_through_its_variable():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    optimizer.opt_state.hyperparams["learning_rate"].value = jnp.asarray(0.0)
    before = params_of(model)
    jit_step(model, optimizer)
    assert_trees_close(params_of(model), before)


def test_multisteps_applies_the_mean_gradient_every_k_updates():
    k = 3
    xs = jnp.split(jax.random.normal(jax.random.key(3), (3 * k, 3)), k)
    ys = jnp.split(jax.random.normal(jax.random.key(4), (3 * k, 2)), k)
    model = MLP(nnx.Rngs(0))
    before = params_of(model)
    optimizer = nnx.Optimizer(model, optax.MultiSteps(optax.sgd(0.3), every_k_schedule=k))

    @nnx.jit
    def step(model, optimizer, x, y):
        optimizer.update(model, nnx.grad(loss_fn)(model, x, y))

    for i in range(k - 1):
        step(model, optimizer, xs[i], ys[i])
        assert_trees_close(params_of(model), before)  # only accumulating
    step(model, optimizer, xs[-1], ys[-1])
    mean_grad = jax.tree.map(
        lambda *g: sum(g) / k, *[pure_grad(before, x, y) for x, y in zip(xs, ys, strict=True)]
    )
    expected = jax.tree.map(lambda p, g: p - 0.3 * g, before, mean_grad)
    assert_trees_close(params_of(model), expected, rtol=1e-5, atol=1e-6)
    assert int(optimizer.step.value) == k


def test_extra_keyword_arguments_reach_the_transformation():
    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None, *, factor):
        assert not isinstance(factor, nnx.Variable)  # optax gets arrays, as flax does
        return jax.tree.map(lambda g: -factor * g, updates), state

    tx = optax.GradientTransformationExtraArgs(init, update)
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx)
    before = params_of(model)
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads, factor=nnx.Variable(jnp.asarray(2.0)))
    expected = jax.tree.map(lambda p, g: p - 2.0 * np.asarray(g), before, grads.to_pure_dict())
    assert_trees_close(params_of(model), expected, rtol=1e-6)


# -- checkpoints ------------------------------------------------------------------------------
def test_state_snapshots_restore_model_and_optimizer_with_update():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    jit_step(model, optimizer)
    saved_model, saved = nnx.state(model), nnx.state(optimizer)
    for _ in range(2):
        jit_step(model, optimizer)
    expected = params_of(model)
    nnx.update(model, saved_model)
    nnx.update(optimizer, saved)
    assert int(optimizer.step.value) == 1
    for _ in range(2):
        jit_step(model, optimizer)
    assert_trees_close(params_of(model), expected, rtol=1e-6)
    assert int(optimizer.step.value) == 3


def test_split_merge_round_trip_continues_identically():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    jit_step(model, optimizer)
    graphdef, state = nnx.split((model, optimizer))  # the optimizer's state lacks the model
    restored_model, restored = nnx.merge(graphdef, state)
    assert restored_model is not model
    jit_step(model, optimizer)
    jit_step(restored_model, restored)
    assert_trees_close(params_of(restored_model), params_of(model), rtol=1e-6)
    assert_trees_close(
        nnx.state(restored.opt_state).to_pure_dict(), nnx.state(optimizer.opt_state).to_pure_dict()
    )


def test_pure_dict_round_trip_of_optimizer_state():
    """What a checkpointer stores: plain nested dicts of arrays."""
    model = MLP(nnx.Rngs(0))
    label_fn = by_layer({"l1": "l1", "l2": "l2"})
    tx = optax.multi_transform({"l1": optax.adam(1e-2), "l2": optax.sgd(0.1)}, label_fn)
    optimizer = nnx.Optimizer(model, tx)
    jit_step(model, optimizer)
    pure = jax.tree.map(np.asarray, nnx.state(optimizer).to_pure_dict())
    pure_model = jax.tree.map(np.asarray, nnx.state(model).to_pure_dict())
    fresh_model = MLP(nnx.Rngs(5))
    fresh = nnx.Optimizer(fresh_model, tx)
    for target, saved in [(fresh, pure), (fresh_model, pure_model)]:
        state = nnx.state(target)
        state.replace_by_pure_dict(saved)
        nnx.update(target, state)
    jit_step(model, optimizer)
    jit_step(fresh_model, fresh)
    assert_trees_close(params_of(fresh_model), params_of(model), rtol=1e-6)
    assert int(fresh.step.value) == 2


# -- errors -----------------------------------------------------------------------------------
def test_missing_gradient_path_raises_and_changes_nothing():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    grads = nnx.grad(loss_fn)(model)
    del grads["l2"]["bias"]
    before, opt_before = params_of(model), nnx.state(optimizer, nnx.OptState).to_pure_dict()
    with pytest.raises(nnx.NNXError, match=r"no entry for 1 .*\n.*model\.l2\.bias"):
        optimizer.update(model, grads)
    assert_trees_close(params_of(model), before)
    assert_trees_close(nnx.state(optimizer, nnx.OptState).to_pure_dict(), opt_before)


def test_gradients_of_another_filter_name_the_fix():
    model = Adapted(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=Adapter)
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.PathContains("base")))(model)
    with pytest.raises(nnx.NNXError, match=r"model\.delta(.|\n)*DiffState"):
        optimizer.update(model, grads)


def test_gradient_shape_mismatch_raises_and_changes_nothing():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    grads = nnx.grad(loss_fn)(model)
    grads["l1"]["kernel"] = nnx.Param(jnp.zeros((4, 3)))
    before = params_of(model)
    with pytest.raises(
        nnx.NNXError, match=r"model\.l1\.kernel: gradient \(4, 3\), parameter \(3, 4\)"
    ):
        optimizer.update(model, grads)
    assert_trees_close(params_of(model), before)
    assert int(optimizer.step.value) == 0
