"""What an Optimizer's state is, and what ``update`` accepts.

* ``nnx.state(optimizer)`` is the step and the optax state only (flax 0.12): saving or
  restoring an optimizer never touches the model; ``update(grads)`` still works in eager
  code through a reference held outside the graph, and raises a teaching error where the
  optimizer was rebuilt without it (inside an nnx transform, after merge/clone/copy).
* ``nnx.ModelAndOptimizer`` holds the model in its state and trains like an Optimizer.
* ``update`` takes the forms flax takes (a State, a pure dict, module-shaped gradients) and
  rejects the rest with a pinned NNXError, changing nothing (step included).
"""

from __future__ import annotations

import copy

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


X = jax.random.normal(jax.random.key(1), (8, 3))
Y = jax.random.normal(jax.random.key(2), (8, 2))


def loss_fn(model):
    return jnp.mean((model(X) - Y) ** 2)


def pure(node):
    return jax.tree.map(np.asarray, nnx.state(node).to_pure_dict())


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def trained(steps=2):
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    for _ in range(steps):
        optimizer.update(model, nnx.grad(loss_fn)(model))
    return model, optimizer


# -- the state is the step and the optax state ------------------------------------------------
def test_state_is_step_and_opt_state_only():
    _, optimizer = trained()
    assert set(nnx.state(optimizer)) == {"step", "opt_state"}
    assert not nnx.state(optimizer, nnx.Param).flat_state()
    assert not any(isinstance(node, nnx.Module) for _, node in nnx.iter_graph(optimizer))
    # nor in the GraphDef: optimizers over two different models have the same one
    other = nnx.Optimizer(MLP(nnx.Rngs(9)), optimizer.tx)
    assert nnx.graphdef(other) == nnx.graphdef(optimizer)


def test_sgd_over_a_large_linear_holds_only_the_step():
    model = nnx.Linear(1000, 1000, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    leaves = jax.tree.leaves(nnx.state(optimizer))
    assert sum(np.size(leaf) for leaf in leaves) == 1
    assert list(nnx.state(optimizer)) == ["step"]


def test_update_of_optimizer_state_leaves_the_model_alone():
    model, optimizer = trained(1)
    saved = nnx.state(optimizer)
    optimizer.update(model, nnx.grad(loss_fn)(model))
    model_now = pure(model)
    nnx.update(optimizer, saved)
    assert_same(pure(model), model_now)
    assert int(optimizer.step.value) == 1
    optimizer.update(nnx.grad(loss_fn)(model))  # the held model survives an in-place update
    assert int(optimizer.step.value) == 2
    assert not np.array_equal(pure(model)["l1"]["kernel"], model_now["l1"]["kernel"])


def test_optimizer_only_checkpoint_restores_without_touching_the_model(tmp_path):
    _, optimizer = trained()
    with nnx.Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(2, optimizer=optimizer)
    fresh_model = MLP(nnx.Rngs(5))
    fresh = nnx.Optimizer(fresh_model, optax.adam(1e-2))
    fresh_before = pure(fresh_model)
    with nnx.Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.restore(optimizer=fresh)["step"] == 2
    assert_same(pure(fresh_model), fresh_before)
    assert_same(pure(fresh), pure(optimizer))
    assert int(fresh.step.value) == 2
    # restored in place, it still trains the model it was built with
    fresh.update(nnx.grad(loss_fn)(fresh_model))
    assert int(fresh.step.value) == 3
    assert not np.array_equal(pure(fresh_model)["l2"]["bias"], fresh_before["l2"]["bias"])


# -- update(grads): eager, and where the optimizer was rebuilt --------------------------------
def test_update_grads_eagerly_equals_update_model_grads():
    a, b = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    opt_a, opt_b = nnx.Optimizer(a, optax.adam(1e-2)), nnx.Optimizer(b, optax.adam(1e-2))
    for _ in range(2):
        opt_a.update(nnx.grad(loss_fn)(a))
        opt_b.update(b, nnx.grad(loss_fn)(b))
    assert_same(pure(a), pure(b))
    assert_same(pure(opt_a), pure(opt_b))


def test_update_model_grads_inside_nnx_jit():
    model, optimizer = trained(0)
    reference, ref_opt = trained(0)

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(model, nnx.grad(loss_fn)(model))

    for _ in range(2):
        step(model, optimizer)
        ref_opt.update(reference, nnx.grad(loss_fn)(reference))
    assert_close(pure(model), pure(reference))
    assert int(optimizer.step.value) == 2


def test_update_grads_inside_nnx_jit_raises_and_changes_nothing():
    model, optimizer = trained(1)
    before, opt_before = pure(model), pure(optimizer)

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(nnx.grad(loss_fn)(model))  # the rebuilt optimizer holds no model

    with pytest.raises(
        nnx.NNXError,
        match=r"(?s)Optimizer\.update\(grads\): this Optimizer holds no model to update\..*"
        r"inside an nnx transform.*optimizer\.update\(model, grads\).*nnx\.ModelAndOptimizer",
    ):
        step(model, optimizer)
    assert_same(pure(model), before)
    assert_same(pure(optimizer), opt_before)


@pytest.mark.parametrize("tx", [optax.sgd(0.1), optax.adam(1e-2)], ids=["sgd", "adam"])
def test_update_grads_of_a_closed_over_optimizer_never_writes_the_outer_model(tx):
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx)  # its held model is the caller's, outside the trace
    before, opt_before = pure(model), pure(optimizer)

    @nnx.jit
    def step(model):
        optimizer.update(nnx.grad(loss_fn)(model))

    with pytest.raises(nnx.TraceContextError, match=r"was assigned a traced value"):
        step(model)
    assert_same(pure(model), before)
    assert_same(pure(optimizer), opt_before)


@pytest.mark.parametrize(
    "rebuild",
    [
        lambda model, opt: nnx.merge(*nnx.split(opt)),
        lambda model, opt: nnx.clone(opt),
        lambda model, opt: copy.deepcopy(opt),
    ],
    ids=["merge", "clone", "deepcopy"],
)
def test_a_rebuilt_optimizer_does_not_train_a_hidden_model(rebuild):
    model, optimizer = trained(1)
    before = pure(model)
    rebuilt = rebuild(model, optimizer)
    grads = nnx.grad(loss_fn)(model)
    with pytest.raises(nnx.NNXError, match=r"holds no model to update"):
        rebuilt.update(grads)
    assert int(rebuilt.step.value) == 1
    rebuilt.update(model, grads)  # the model given explicitly: fine
    assert int(rebuilt.step.value) == 2
    assert not np.array_equal(pure(model)["l1"]["kernel"], before["l1"]["kernel"])


def test_optimizer_has_no_model_attribute_and_says_why():
    _, optimizer = trained(0)
    with pytest.raises(AttributeError, match=r"(?s)no attribute 'model'.*nnx\.ModelAndOptimizer"):
        optimizer.model  # noqa: B018
    assert not hasattr(optimizer, "anything_else")


# -- ModelAndOptimizer --------------------------------------------------------------------------
def test_model_and_optimizer_state_holds_the_model():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.ModelAndOptimizer(model, optax.adam(1e-2))
    assert isinstance(optimizer, nnx.Optimizer) and optimizer.model is model
    assert set(nnx.state(optimizer)) == {"model", "step", "opt_state"}
    assert_same(pure(optimizer)["model"], pure(model))
    saved = nnx.state(optimizer)
    optimizer.update(nnx.grad(loss_fn)(model))
    nnx.update(optimizer, saved)  # restoring it rolls the model back too
    assert_same(pure(optimizer), jax.tree.map(np.asarray, saved.to_pure_dict()))


def test_model_and_optimizer_trains_like_an_optimizer_eager_and_under_jit():
    model, optimizer = trained(0)
    both = nnx.ModelAndOptimizer(MLP(nnx.Rngs(0)), optax.adam(1e-2))
    both_jit = nnx.ModelAndOptimizer(MLP(nnx.Rngs(0)), optax.adam(1e-2))

    @nnx.jit
    def step(optimizer):
        optimizer.update(nnx.grad(loss_fn)(optimizer.model))

    for _ in range(3):
        optimizer.update(model, nnx.grad(loss_fn)(model))
        both.update(nnx.grad(loss_fn)(both.model))
        step(both_jit)
    assert_same(pure(both.model), pure(model))
    assert_close(pure(both_jit.model), pure(model))
    assert int(both.step.value) == int(both_jit.step.value) == 3


def test_model_and_optimizer_in_nnx_jit_beside_its_model_trains_the_callers_model():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.ModelAndOptimizer(model, optax.sgd(0.1))
    before = pure(model)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(loss_fn)(model)
        optimizer.update(grads)  # optimizer.model is the rebuilt `model`: shared
        optimizer.update(model, grads)  # the same call, spelled as for an Optimizer

    step(model, optimizer)
    assert optimizer.model is model and int(optimizer.step.value) == 2
    assert not np.array_equal(pure(model)["l1"]["kernel"], before["l1"]["kernel"])


def test_model_and_optimizer_works_with_helpers_written_for_an_optimizer():
    model, optimizer = trained(0)
    both = nnx.ModelAndOptimizer(MLP(nnx.Rngs(0)), optax.adam(1e-2))
    optimizer.update(model, nnx.grad(loss_fn)(model))
    applied = nnx.training.scaled_update(both, both.model, nnx.grad(loss_fn)(both.model))
    assert bool(applied)
    assert_same(pure(both.model), pure(model))
    assert_same(pure(both)["opt_state"], pure(optimizer)["opt_state"])


def test_model_and_optimizer_rejects_another_model_and_changes_nothing():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.ModelAndOptimizer(model, optax.adam(1e-2))
    other = MLP(nnx.Rngs(1))
    grads = nnx.grad(loss_fn)(other)
    before, opt_before = pure(optimizer), pure(other)
    with pytest.raises(nnx.NNXError, match=r"takes the gradients.*Got a model \(MLP\) that is not"):
        optimizer.update(other, grads)
    with pytest.raises(nnx.NNXError, match=r"the gradients are the model itself \(MLP\)"):
        optimizer.update(model)
    with pytest.raises(nnx.NNXError, match=r"Got 0 positional arguments"):
        optimizer.update()
    assert_same(pure(optimizer), before)
    assert_same(pure(other), opt_before)


# -- what update accepts ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "form",
    [
        lambda model: nnx.grad(loss_fn)(model).to_pure_dict(),
        lambda model: jax.grad(loss_fn)(model),  # module-shaped: a pytree-registered MLP
    ],
    ids=["pure_dict", "module_shaped"],
)
def test_gradient_forms_flax_accepts_give_the_same_update(form):
    model, optimizer = trained(0)
    reference, ref_opt = trained(0)
    for _ in range(2):
        optimizer.update(model, form(model))
        ref_opt.update(reference, nnx.grad(loss_fn)(reference))
    optimizer.update(form(model))  # and through the held model
    ref_opt.update(reference, nnx.grad(loss_fn)(reference))
    assert_close(pure(model), pure(reference))
    assert_close(pure(optimizer), pure(ref_opt))


BAD_ARGUMENTS = {
    "state_as_model": (
        lambda m, g: (nnx.state(m), g),
        r"the model argument is a State, a snapshot of the model's values \(e\.g\. "
        r"nnx\.state\(model\)\), not the model: updating it would leave the model's Variables "
        r"unchanged while the step advances\. Nothing was changed\.\n"
        r"Fix: pass the model itself: optimizer\.update\(model, grads\)",
    ),
    "swapped": (
        lambda m, g: (g, m),
        r"the arguments look swapped: the first \(State\) is not the model, the second "
        r"\(MLP\) is\. Nothing was changed\.\nFix: optimizer\.update\(model, grads\)",
    ),
    "swapped_module_grads": (
        lambda m, g: (jax.grad(loss_fn)(m), m),
        r"the arguments look swapped: the first \(MLP\) is not the model, the second "
        r"\(MLP\) is",
    ),
    "model_as_grads": (
        lambda m, g: (m, m),
        r"the gradients are the model itself \(MLP\)\. Nothing was changed\.\n"
        r"Fix: grads = nnx\.grad\(loss_fn\)\(model\); optimizer\.update\(model, grads\)",
    ),
    "model_only": (
        lambda m, g: (m,),
        r"got only the model \(MLP\), no gradients\. Nothing was changed\.",
    ),
    "pure_dict_as_model": (
        lambda m, g: (nnx.state(m).to_pure_dict(), g),
        r"the model argument \(dict\) holds no Variable that the update could change in "
        r"place \(a Module, or a Variable, is needed\)\. Nothing was changed\.",
    ),
    "grads_with_aux": (
        lambda m, g: (m, (g, 0.5)),
        r"the gradients must be a State \(what nnx\.grad returns\), a nested dict of arrays, "
        r"or a module .*; got tuple of 2 items\. Nothing was changed\.",
    ),
    "none_grads": (lambda m, g: (m, None), r"the gradients must be a State .*; got None\."),
    "module_inside_grads": (
        lambda m, g: (m, {"l1": m.l1, "l2": g["l2"]}),
        r"the gradients must hold arrays, but they hold:\n.*grads\.l1: Linear\n",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_raise_and_change_nothing(case):
    make_args, message = BAD_ARGUMENTS[case]
    model, optimizer = trained(1)
    args = make_args(model, nnx.grad(loss_fn)(model))
    before, opt_before = pure(model), pure(optimizer)
    with pytest.raises(nnx.NNXError, match=message):
        optimizer.update(*args)
    assert_same(pure(model), before)
    assert_same(pure(optimizer), opt_before)
    assert int(optimizer.step.value) == 1


def test_a_failing_transformation_changes_nothing():
    def init(params):
        return {"calls": jnp.zeros((), jnp.int32)}

    def update(updates, state, params=None):
        raise RuntimeError("tx.update failed")

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.GradientTransformation(init, update))
    before, opt_before = pure(model), pure(optimizer)
    with pytest.raises(RuntimeError, match=r"tx\.update failed"):
        optimizer.update(model, nnx.grad(loss_fn)(model))
    assert_same(pure(model), before)
    assert_same(pure(optimizer), opt_before)
    assert int(optimizer.step.value) == 0
