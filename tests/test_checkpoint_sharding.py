"""nnx.Checkpointer restores onto the target's sharding (8 CPU devices, see conftest.py).

The restore target decides where the arrays go: a concrete model restored in place keeps the
sharding of its current arrays, and an abstract model (``nnx.eval_shape``) whose leaves are
``jax.ShapeDtypeStruct`` with a ``sharding`` is materialised on that sharding. The sharding
the checkpoint was saved with does not matter (resharding on restore).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import nnx


class Net(nnx.Module):
    """Two sharded Linear layers (names in the `sharding_names` metadata) and a scalar."""

    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(
            8,
            16,
            kernel_metadata={"sharding_names": ("data", "model")},
            bias_metadata={"sharding_names": ("model",)},
            rngs=rngs,
        )
        self.down = nnx.Linear(
            16,
            8,
            kernel_metadata={"sharding_names": ("model", "data")},
            bias_metadata={"sharding_names": ("data",)},
            rngs=rngs,
        )
        self.count = nnx.BatchStat(jnp.array(0, jnp.int32))

    def __call__(self, x):
        return self.down(jnp.tanh(self.up(x)))


def mesh(shape=(2, 4)) -> Mesh:
    assert jax.device_count() >= 8, "the tests expect 8 CPU devices (see conftest.py)"
    return Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", "model"))


def variables(model) -> dict:
    return {path: v for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}


def sharding_of(variable: nnx.Variable, m: Mesh) -> NamedSharding:
    names = getattr(variable, "sharding_names", None)
    return NamedSharding(m, P(*names) if names else P())


def place(model, m: Mesh):
    """Puts every Variable of `model` on `m` as its `sharding_names` say (abstract or not)."""
    for v in variables(model).values():
        s = sharding_of(v, m)
        if isinstance(v.value, jax.ShapeDtypeStruct):
            v.value = jax.ShapeDtypeStruct(v.value.shape, v.value.dtype, sharding=s)
        else:
            v.value = jax.device_put(v.value, s)
    return model


def numpy_state(model) -> dict:
    return {path: np.asarray(v.value) for path, v in variables(model).items()}


def assert_restored(model, expected: dict, m: Mesh):
    for path, v in variables(model).items():
        assert isinstance(v.value, jax.Array), path
        assert v.value.sharding.is_equivalent_to(sharding_of(v, m), v.value.ndim), (
            path,
            v.value.sharding,
        )
        np.testing.assert_array_equal(np.asarray(v.value), expected[path], err_msg=str(path))


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of an unsharded model (single device), and its values."""
    model = Net(nnx.Rngs(0))
    model.count.value = jnp.array(7, jnp.int32)
    assert isinstance(model.up.kernel.value.sharding, SingleDeviceSharding)
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=model)
    return tmp_path, numpy_state(model)


def test_restore_in_place_keeps_the_target_sharding(saved):
    directory, expected = saved
    m = mesh()
    target = place(Net(nnx.Rngs(1)), m)
    assert len(target.up.kernel.value.sharding.device_set) == 8
    with nnx.Checkpointer(directory) as ckpt:
        ckpt.restore(model=target)
    assert_restored(target, expected, m)
    # The restored model runs sharded.
    y = jax.jit(lambda model, x: model(x))(target, jnp.ones((4, 8)))
    np.testing.assert_allclose(y, Net(nnx.Rngs(0))(jnp.ones((4, 8))), rtol=1e-5, atol=1e-6)


def test_restore_into_abstract_model_with_shardings(saved):
    directory, expected = saved
    m = mesh()
    abstract = place(nnx.eval_shape(lambda: Net(nnx.Rngs(1))), m)
    kernel = abstract.up.kernel.value
    assert isinstance(kernel, jax.ShapeDtypeStruct) and kernel.sharding.spec == P("data", "model")
    with nnx.Checkpointer(directory) as ckpt:
        ckpt.restore(model=abstract)
    assert_restored(abstract, expected, m)
    assert abstract.up.kernel.value.addressable_shards[0].data.shape == (4, 4)


def test_sharded_save_restores_onto_another_mesh(tmp_path):
    model = place(Net(nnx.Rngs(0)), mesh((2, 4)))
    expected = numpy_state(model)
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=model)
        other = mesh((4, 2))
        in_place = place(Net(nnx.Rngs(1)), other)
        abstract = place(nnx.eval_shape(lambda: Net(nnx.Rngs(1))), other)
        ckpt.restore(model=in_place)
        ckpt.restore(model=abstract)
    assert_restored(in_place, expected, other)
    assert_restored(abstract, expected, other)
    assert in_place.up.kernel.value.addressable_shards[0].data.shape == (2, 8)


def test_optimizer_state_restores_onto_the_target_sharding(tmp_path):
    model = place(Net(nnx.Rngs(0)), mesh((2, 4)))
    opt = nnx.Optimizer(model, optax.adam(1e-2))
    grads = nnx.grad(lambda model: jnp.sum(model(jnp.ones((2, 8))) ** 2))(model)
    opt.update(model, grads)
    expected = {path: np.asarray(leaf) for path, leaf in nnx.to_flat_state(nnx.state(opt))}
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, optimizer=opt)
        m = mesh((4, 2))
        target_model = place(Net(nnx.Rngs(1)), m)
        target = nnx.Optimizer(target_model, optax.adam(1e-2))
        before = {path: leaf.sharding for path, leaf in nnx.to_flat_state(nnx.state(target))}
        ckpt.restore(optimizer=target)
    restored = dict(nnx.to_flat_state(nnx.state(target)))
    assert restored.keys() == expected.keys()
    for path, leaf in restored.items():
        np.testing.assert_array_equal(np.asarray(leaf), expected[path], err_msg=str(path))
        assert leaf.sharding.is_equivalent_to(before[path], leaf.ndim), path
    mu = target.opt_state[0].mu["up"]["kernel"].value
    assert mu.sharding.is_equivalent_to(NamedSharding(m, P("data", "model")), 2)


def test_abstract_leaves_without_sharding_get_the_saved_sharding(tmp_path):
    # As orbax does: nnx fills it in from the metadata it read for its checks.
    m = mesh()
    model = place(Net(nnx.Rngs(0)), m)
    expected = numpy_state(model)
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=model)
    abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(1)))
    assert abstract.up.kernel.value.sharding is None
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.restore(model=abstract)
    assert_restored(abstract, expected, m)
