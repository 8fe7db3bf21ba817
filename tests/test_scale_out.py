"""Scale-out on 8 CPU devices in one process (issue 16): sharded training equals one device.

The MLP and the char-LM transformer block of ``tests/_scale_models.py`` train for a few Adam
steps with ``nnx.jit`` in four layouts, and every run is compared with the same training on one
device (same seed, same data):

- ``data``: mesh ``(data=8)``, the batch split over ``data``, the parameters replicated;
- ``fsdp``: mesh ``(data=8)``, the batch and the parameters (and so the Adam moments) split over
  ``data`` (logical ``embed -> data``);
- ``tensor``: mesh ``(data=2, model=4)``, Megatron column/row split over ``model`` (logical
  ``mlp, heads -> model``), the batch replicated; also with mesh axis names written straight
  into ``nnx.with_partitioning`` (``tensor-names``);
- ``data+tensor``: the same mesh, the batch split over ``data`` as well.

Then: BatchNorm statistics synchronised over the data axis, dropout keys per shard, sharded
initialisation that never materialises the whole model on a device, and a checkpoint of a
sharded model restored onto 4 devices with other axis names and onto one device.

Tolerances: sharding changes the order of the float32 reductions, nothing else, so losses are
compared with ``rtol=1e-5, atol=1e-6`` and parameters (after a few steps of Adam, lr 1e-2) with
``rtol=1e-5, atol=1e-5``, Adam's moments with ``rtol=1e-4, atol=1e-7``; the measured
differences are ~2e-6 for the losses, ~6e-8 for the parameters.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import nnx
from tests._scale_models import (
    BLOCK_NAMES,
    MLP,
    as_numpy,
    batches,
    block_loss,
    flat_values,
    make_block,
    mlp_loss,
    new_optimizer,
    train,
    train_step,
)

STEPS = 3
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-6}
PARAM_TOL = {"rtol": 1e-5, "atol": 1e-5}

MLP_NAMES: dict[tuple[str, ...], tuple[str | None, ...]] = {
    ("up", "kernel"): ("embed", "mlp"),
    ("up", "bias"): ("mlp",),
    ("down", "kernel"): ("mlp", "embed"),
    ("down", "bias"): ("embed",),
}


def devices(n: int = 8) -> np.ndarray:
    assert jax.device_count() >= 8, "the tests expect 8 CPU devices (see conftest.py)"
    return np.array(jax.devices()[:n])


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh, the logical axis rules that place the parameters on it, and the batch's spec."""

    name: str
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    rules: tuple[tuple[str, str | None], ...]
    batch: P
    # per-device shape of the MLP's up kernel (16, 32) and the block's query kernel (16, 4, 4)
    up_shard: tuple[int, ...]
    query_shard: tuple[int, ...]

    def mesh(self) -> Mesh:
        # jax.sharding.Mesh has Auto axes (jax.make_mesh would default to Explicit ones).
        return Mesh(devices().reshape(self.shape), self.axes)

    def spec(self, names: tuple[str | None, ...]) -> P:
        """The spec `names` should resolve to, by a plain lookup (not through nnx)."""
        rules = dict(self.rules)
        return P(*(None if n is None else rules.get(n, n) for n in names))


REPLICATED = (("embed", None), ("mlp", None), ("heads", None))
FSDP = (("embed", "data"), ("mlp", None), ("heads", None))
MEGATRON = (("embed", None), ("mlp", "model"), ("heads", "model"))
LAYOUTS = {
    "data": Layout("data", (8,), ("data",), REPLICATED, P("data"), (16, 32), (16, 4, 4)),
    "fsdp": Layout("fsdp", (8,), ("data",), FSDP, P("data"), (2, 32), (2, 4, 4)),
    "tensor": Layout("tensor", (2, 4), ("data", "model"), MEGATRON, P(), (16, 8), (16, 1, 4)),
    "data+tensor": Layout(
        "data+tensor", (2, 4), ("data", "model"), MEGATRON, P("data"), (16, 8), (16, 1, 4)
    ),
}


@dataclasses.dataclass
class Kind:
    """What is trained: the model, its loss, its parameters' logical names."""

    name: str
    build: Callable[[], nnx.Module]
    loss: Callable[..., jax.Array]
    names: dict[tuple[str, ...], tuple[str | None, ...]]
    shard_path: tuple[str, ...]  # a parameter whose per-device shape the layout fixes


KINDS = {
    "mlp": Kind(
        name="mlp",
        build=lambda: MLP(nnx.Rngs(0), embed="embed", mlp="mlp"),
        loss=mlp_loss,
        names=MLP_NAMES,
        shard_path=("up", "kernel"),
    ),
    "block": Kind(
        name="block",
        build=lambda: make_block(nnx.Rngs(0)),
        loss=block_loss,
        names=BLOCK_NAMES,
        shard_path=("attn", "query", "kernel"),
    ),
}


# -- the single-device reference -------------------------------------------------------------


@dataclasses.dataclass
class Run:
    losses: list[float]
    params: dict[tuple, np.ndarray]
    opt: dict[tuple, np.ndarray]


_REFERENCES: dict[str, Run] = {}


def reference(kind: Kind) -> Run:
    """The training on one device (cached per kind): no mesh, so annotations are not used."""
    if kind.name not in _REFERENCES:
        model = kind.build()
        optimizer = new_optimizer(model)
        losses = train(kind.loss, model, optimizer, batches(kind.name, STEPS))
        for path, value in flat_values(model).items():
            assert isinstance(value.sharding, SingleDeviceSharding), path
        _REFERENCES[kind.name] = Run(
            losses, as_numpy(flat_values(model)), as_numpy(flat_values(optimizer))
        )
    return _REFERENCES[kind.name]


# -- the sharded runs ------------------------------------------------------------------------


@dataclasses.dataclass
class Sharded:
    kind: Kind
    layout: Layout
    mesh: Mesh
    model: nnx.Module
    optimizer: nnx.Optimizer
    compiled: Any  # jax.stages.Compiled of the training step
    losses: list[float]

    def expected(self, path: tuple) -> NamedSharding:
        """The sharding a model or optimizer leaf should have, from the hand-written names."""
        if path[0] == "opt_state" and path[2] in ("mu", "nu"):
            path = path[3:]  # Adam's moments: sharded like their parameter
        elif path[0] in ("opt_state", "step"):
            return NamedSharding(self.mesh, P())  # counters: replicated
        return NamedSharding(self.mesh, self.layout.spec(self.kind.names[path]))


def build_sharded(kind: Kind, layout: Layout, mesh_names: bool = False) -> tuple:
    """The model and optimizer placed on `layout`'s mesh, the way a user would do it."""
    mesh = layout.mesh()
    if mesh_names:
        # Megatron with mesh axis names straight in with_partitioning: no rules involved.
        with jax.set_mesh(mesh):
            model = MLP(nnx.Rngs(0), embed=None, mlp="model")
            return mesh, model, new_optimizer(model)
    with nnx.logical_axis_rules(layout.rules):
        if kind.name == "mlp":
            # Annotated Variables are placed as they are created when a mesh is set.
            with jax.set_mesh(mesh):
                model = kind.build()
        else:
            # An existing (unplaced) model: its annotations give the shardings to move it to.
            model = kind.build()
            shardings = nnx.get_named_sharding(nnx.state(model), mesh)
            nnx.update(model, jax.device_put(nnx.state(model), shardings))
        # Under the mesh, Adam's moments are placed from the annotations they copy from their
        # parameters, and optax's scalar count is replicated instead of landing on device 0.
        with jax.set_mesh(mesh):
            optimizer = new_optimizer(model)
    return mesh, model, optimizer


_SHARDED: dict[tuple[str, str], Sharded] = {}

# The block compiles slowly (~5 s a layout on 2 cores): its data-only and tensor-only layouts,
# which data+tensor combines, run in the slow pass.
SLOW_CASES = {("block", "data"), ("block", "tensor")}
CASES = [
    pytest.param(case, id="-".join(case), marks=[pytest.mark.slow] if case in SLOW_CASES else [])
    for case in [
        ("mlp", "data"),
        ("mlp", "fsdp"),
        ("mlp", "tensor"),
        ("mlp", "tensor-names"),
        ("mlp", "data+tensor"),
        ("block", "data"),
        ("block", "fsdp"),
        ("block", "tensor"),
        ("block", "data+tensor"),
    ]
]
FSDP_CASES = [c for c in CASES if c.values[0][1] == "fsdp"]


@pytest.fixture(params=CASES)
def sharded(request: pytest.FixtureRequest) -> Sharded:
    """The sharded training of one (model, layout) case, run once and shared by the tests."""
    kind_name, layout_name = request.param
    if request.param not in _SHARDED:
        kind = KINDS[kind_name]
        layout = LAYOUTS["tensor" if layout_name == "tensor-names" else layout_name]
        mesh, model, optimizer = build_sharded(kind, layout, layout_name == "tensor-names")
        data = batches(kind.name, STEPS)
        batch = NamedSharding(mesh, layout.batch)

        def place(a: np.ndarray) -> jax.Array:
            return jax.device_put(a, batch)

        x, y = data[0]
        # The step as compiled for these arguments (lowering writes nothing to them).
        compiled = train_step.lower(kind.loss, model, optimizer, place(x), place(y)).compile()
        losses = train(kind.loss, model, optimizer, data, place)
        _SHARDED[request.param] = Sharded(kind, layout, mesh, model, optimizer, compiled, losses)
    return _SHARDED[request.param]


def test_losses_and_parameters_equal_one_device(sharded: Sharded):
    ref = reference(sharded.kind)
    np.testing.assert_allclose(sharded.losses, ref.losses, **LOSS_TOL)
    params = as_numpy(flat_values(sharded.model))
    assert params.keys() == ref.params.keys()
    for path, value in params.items():
        np.testing.assert_allclose(value, ref.params[path], **PARAM_TOL, err_msg=str(path))
    # The Adam moments too (nu holds squared gradients, ~1e-4: compared relatively).
    opt = as_numpy(flat_values(sharded.optimizer))
    assert opt.keys() == ref.opt.keys()
    for path, value in opt.items():
        np.testing.assert_allclose(value, ref.opt[path], rtol=1e-4, atol=1e-7, err_msg=str(path))
    assert int(sharded.optimizer.step.value) == STEPS


def test_compiled_step_has_the_intended_shardings(sharded: Sharded):
    """Read from the compiled step: its inputs are (model leaves, optimizer leaves, x, y) and
    its outputs (loss, (new model leaves, new optimizer leaves)), leaves in
    ``nnx.to_flat_state`` order (see ``nnx.jit(...).trace``)."""
    model_paths = list(flat_values(sharded.model))
    opt_paths = list(flat_values(sharded.optimizer))
    (model_in, opt_in, x_in, y_in), kwargs = sharded.compiled.input_shardings
    loss_out, (model_out, opt_out) = sharded.compiled.output_shardings
    assert kwargs == {}
    assert len(model_in) == len(model_out) == len(model_paths)
    assert len(opt_in) == len(opt_out) == len(opt_paths)
    for paths, ins, outs in ((model_paths, model_in, model_out), (opt_paths, opt_in, opt_out)):
        for path, s_in, s_out in zip(paths, ins, outs, strict=True):
            want = sharded.expected(path)
            ndim = len(want.spec)
            assert s_in.is_equivalent_to(want, ndim), (path, s_in, want)
            assert s_out.is_equivalent_to(want, ndim), (path, s_out, want)
    batch = NamedSharding(sharded.mesh, sharded.layout.batch)
    for s in (x_in, y_in):
        assert s.is_equivalent_to(batch, 2), s
    assert loss_out.is_fully_replicated


def test_arrays_after_training_have_the_intended_shardings(sharded: Sharded):
    for tree in (sharded.model, sharded.optimizer):
        for path, value in flat_values(tree).items():
            want = sharded.expected(path)
            assert value.sharding.is_equivalent_to(want, value.ndim), (path, value.sharding)
    # Hand-written per-device shape of one parameter: the layout really splits it (or not).
    value = flat_values(sharded.model)[sharded.kind.shard_path]
    want = sharded.layout.up_shard if sharded.kind.name == "mlp" else sharded.layout.query_shard
    assert {s.data.shape for s in value.addressable_shards} == {want}
    assert len(value.addressable_shards) == 8


def test_adam_moments_are_sharded_like_their_parameter(sharded: Sharded):
    params = flat_values(sharded.model)
    adam = sharded.optimizer.opt_state[0]
    for moment in ("mu", "nu"):
        moments = {path: v.value for path, v in nnx.to_flat_state(getattr(adam, moment))}
        assert moments.keys() == params.keys()
        for path, value in moments.items():
            param = params[path]
            assert value.sharding.is_equivalent_to(param.sharding, param.ndim), (moment, path)
            assert [s.data.shape for s in value.addressable_shards] == [
                s.data.shape for s in param.addressable_shards
            ], (moment, path)


@pytest.mark.parametrize("sharded", FSDP_CASES, indirect=True)
def test_fsdp_splits_every_parameter_with_an_embed_axis(sharded: Sharded):
    assert sharded.layout.name == "fsdp"
    for path, value in flat_values(sharded.model).items():
        names = sharded.kind.names[path]
        if "embed" in names:  # every parameter with an embed axis is split 8 ways
            assert value.addressable_shards[0].data.size * 8 == value.size, path
        else:  # only the MLP's hidden bias has none: replicated
            assert path == ("up", "bias") and value.sharding.is_fully_replicated, path


# -- BatchNorm and dropout across shards -----------------------------------------------------


def batchnorm_data() -> tuple[Mesh, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4)) * 3 + np.arange(4)  # shards see different statistics
    return Mesh(devices(), ("data",)), x.astype(np.float32)


def full_batch(x: np.ndarray) -> tuple[jax.Array, nnx.BatchNorm]:
    bn = nnx.BatchNorm(4, momentum=0.5, rngs=nnx.Rngs(0))
    return bn(jnp.asarray(x)), bn


def assert_same_batchnorm(y: Any, bn: nnx.BatchNorm, y_full: Any, full: nnx.BatchNorm) -> None:
    np.testing.assert_allclose(np.asarray(y).reshape(16, 4), y_full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean.value, full.mean.value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var.value, full.var.value, rtol=1e-5, atol=1e-6)
    assert not np.allclose(full.mean.value, 0.0)  # the statistics did move


def test_batchnorm_axis_name_under_shard_map_uses_full_batch_statistics():
    mesh, x = batchnorm_data()
    y_full, full = full_batch(x)
    bn = nnx.BatchNorm(4, momentum=0.5, axis_name="data", rngs=nnx.Rngs(0))
    # The BatchNorm state goes in replicated (P()); each shard normalises its 2 rows with the
    # statistics pmean-ed over 'data', so the state comes back replicated.
    # (Under nnx.jit: an eager shard_map runs op by op, seconds even for this.)
    normalise = nnx.jit(
        nnx.shard_map(
            lambda bn, x: bn(x), mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data")
        )
    )
    y = normalise(bn, jnp.asarray(x))
    assert_same_batchnorm(y, bn, y_full, full)
    assert bn.mean.value.sharding.is_fully_replicated
    # Without axis_name each shard has its own statistics: they cannot come back replicated.
    local = nnx.BatchNorm(4, momentum=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="replicat"):
        normalise(local, jnp.asarray(x))


def test_batchnorm_axis_name_under_vmap_uses_full_batch_statistics():
    _, x = batchnorm_data()
    y_full, full = full_batch(x)
    bn = nnx.BatchNorm(4, momentum=0.5, axis_name="data", rngs=nnx.Rngs(0))
    y = nnx.vmap(lambda bn, x: bn(x), in_axes=(None, 0), out_axes=0, axis_name="data")(
        bn, jnp.asarray(x).reshape(8, 2, 4)
    )
    assert_same_batchnorm(y, bn, y_full, full)


def test_batchnorm_under_jit_on_a_sharded_batch_needs_no_axis_name():
    # GSPMD: the mean over a batch split across devices is a global mean (the compiler adds
    # the all-reduce), so plain BatchNorm in a data-parallel nnx.jit step is already in sync.
    mesh, x = batchnorm_data()
    y_full, full = full_batch(x)
    bn = nnx.BatchNorm(4, momentum=0.5, rngs=nnx.Rngs(0))
    y = nnx.jit(lambda bn, x: bn(x))(bn, jax.device_put(x, NamedSharding(mesh, P("data"))))
    assert_same_batchnorm(y, bn, y_full, full)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 2)


def masks_per_shard(y: jax.Array, shards: int = 8) -> list[bytes]:
    rows = np.asarray(y).reshape(shards, -1)
    return [row.tobytes() for row in rows]


def test_dropout_keys_per_shard():
    """What nnx does with dropout keys when the batch is split over devices.

    - Under ``nnx.jit`` with a sharded batch (GSPMD) the mask is drawn for the global shape
      from one key: identical to one device, and each shard gets its own slice of it.
    - Under ``nnx.shard_map`` the Dropout's RngStream (key and counter) is ordinary state
      passed in replicated (``P()``): every shard draws the *same* key, so every shard gets the
      same mask. nnx does not fold the shard index in by itself (neither does flax.nnx).
    - To give each shard its own mask, fold ``jax.lax.axis_index`` into the drawn key, or
      split the stream (``nnx.split_rngs``) and ``nnx.vmap`` over the splits.
    """
    mesh = Mesh(devices(), ("data",))
    ones = jnp.ones((16, 32))
    apply = nnx.jit(lambda d, x: d(x))
    single = apply(nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0)), ones)

    dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    y = apply(dropout, jax.device_put(ones, NamedSharding(mesh, P("data"))))
    np.testing.assert_array_equal(y, single)
    assert len(set(masks_per_shard(y))) == 8

    def shard_map(f: Callable) -> Callable:
        return nnx.jit(nnx.shard_map(f, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data")))

    dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    same = shard_map(lambda d, x: d(x))(dropout, ones)
    assert len(set(masks_per_shard(same))) == 1  # one key for all shards
    assert int(dropout.rngs.count.value) == 1  # drawn once, the stream stays replicated

    def per_shard(d: nnx.Dropout, x: jax.Array) -> jax.Array:
        return d(x, rngs=jax.random.fold_in(d.rngs(), jax.lax.axis_index("data")))

    dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    folded = shard_map(per_shard)(dropout, ones)
    assert len(set(masks_per_shard(folded))) == 8
    assert int(dropout.rngs.count.value) == 1

    dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))

    @nnx.jit
    @nnx.split_rngs(splits=8)
    def vmapped(d: nnx.Dropout, x: jax.Array) -> jax.Array:
        axes = nnx.StateAxes({nnx.RngState: 0, ...: None})
        return nnx.vmap(lambda d, x: d(x), in_axes=(axes, 0))(d, x)

    split = vmapped(dropout, ones.reshape(8, 2, 32))
    assert len(set(masks_per_shard(split))) == 8
    assert dropout.rngs.key.value.shape == ()  # split_rngs puts the single key back


# -- sharded initialisation ------------------------------------------------------------------


class Wide(nnx.Module):
    """4 Linear(512, 512), FSDP-annotated: 4.2 MB of parameters, 1/8 of it per device."""

    def __init__(self, rngs: nnx.Rngs):
        kernel = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("data", None))
        bias = nnx.with_partitioning(nnx.initializers.zeros, ("data",))
        self.layers = nnx.List(
            [nnx.Linear(512, 512, kernel_init=kernel, bias_init=bias, rngs=rngs) for _ in range(4)]
        )


def bytes_per_device() -> collections.Counter:
    """Bytes of all live arrays on each device (CPU devices report no memory_stats)."""
    gc.collect()
    out: collections.Counter = collections.Counter()
    for array in jax.live_arrays():
        for shard in array.addressable_shards:
            out[shard.device] += shard.data.nbytes
    return out


def test_sharded_init_never_materialises_the_whole_model():
    mesh = Mesh(devices(), ("data",))
    graphdef, abstract = nnx.get_abstract_model(lambda: Wide(nnx.Rngs(0)), mesh)
    total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(abstract))
    assert total == 4 * (512 * 512 + 512) * 4
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    create = nnx.jit(lambda: Wide(nnx.Rngs(0)), out_shardings=shardings)
    # Inside the compiled initialisation: each device's outputs are its 1/8, and its
    # temporaries (the random bits of its shard) stay far below the whole model.
    memory = create.lower().compile().memory_analysis()
    assert memory is not None
    assert memory.output_size_in_bytes <= total / 8 * 1.01
    assert memory.output_size_in_bytes + memory.temp_size_in_bytes < total / 2
    before = bytes_per_device()
    model = create()
    after = bytes_per_device()
    for device in jax.devices():
        grown = after[device] - before[device]
        assert total / 8 <= grown <= total / 8 * 1.1, (device, grown, total)
    for path, value in flat_values(model).items():
        want = abstract[path[0]][path[1]][path[2]].value.sharding
        assert value.sharding.is_equivalent_to(want, value.ndim), path
        assert {s.data.size * 8 for s in value.addressable_shards} == {value.size}, path
    # The same values as an unsharded initialisation.
    with nnx.use_eager_sharding(False):
        plain = flat_values(Wide(nnx.Rngs(0)))
    for path, value in flat_values(model).items():
        np.testing.assert_array_equal(value, plain[path], err_msg=str(path))
    assert isinstance(nnx.merge(graphdef, abstract), Wide)


# -- checkpoints onto another mesh -----------------------------------------------------------


def on_one_device(tree: Any, device: jax.Device) -> None:
    """Gives every abstract leaf of `tree` a SingleDeviceSharding on `device`, in place."""
    for _, v in nnx.iter_graph(tree):
        if isinstance(v, nnx.Variable) and isinstance(v.value, jax.ShapeDtypeStruct):
            sharding = SingleDeviceSharding(device)
            v.value = jax.ShapeDtypeStruct(v.value.shape, v.value.dtype, sharding=sharding)


def test_checkpoint_of_a_sharded_model_restores_onto_another_mesh_and_one_device(tmp_path):
    layout = LAYOUTS["data+tensor"]
    kind = KINDS["mlp"]
    mesh, model, optimizer = build_sharded(kind, layout)
    data = batches("mlp", 2)
    batch = NamedSharding(mesh, layout.batch)
    train(mlp_loss, model, optimizer, data, lambda a: jax.device_put(a, batch))
    saved = as_numpy(flat_values(model))
    saved_opt = as_numpy(flat_values(optimizer))
    assert model.up.kernel.value.sharding.spec == P(None, "model")
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=model, optimizer=optimizer)

    # Onto the last 4 devices, a 2x2 mesh with other axis names, FSDP and tensor split.
    four = Mesh(devices()[4:].reshape(2, 2), ("fsdp", "tp"))
    rules = (("embed", "fsdp"), ("mlp", "tp"))

    def build() -> tuple[MLP, nnx.Optimizer]:
        new = MLP(nnx.Rngs(1), embed="embed", mlp="mlp")
        return new, new_optimizer(new)

    with nnx.logical_axis_rules(rules), jax.set_mesh(four):
        target_model, target_opt = nnx.eval_shape(build)
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.restore(model=target_model, optimizer=target_opt)
    specs = {path: P(*(dict(rules).get(n) for n in names)) for path, names in MLP_NAMES.items()}
    restored = flat_values(target_model)
    for path, value in restored.items():
        np.testing.assert_array_equal(value, saved[path], err_msg=str(path))
        assert value.sharding.is_equivalent_to(NamedSharding(four, specs[path]), value.ndim)
        assert value.sharding.device_set == set(devices()[4:])
    for path, value in flat_values(target_opt).items():
        np.testing.assert_array_equal(value, saved_opt[path], err_msg=str(path))
        if path[2:3] in (("mu",), ("nu",)):
            want = NamedSharding(four, specs[path[3:]])
            assert value.sharding.is_equivalent_to(want, value.ndim), path
    assert restored[("up", "kernel")].addressable_shards[0].data.shape == (8, 16)

    # Onto one device: an abstract model whose leaves say SingleDeviceSharding.
    single = nnx.eval_shape(lambda: MLP(nnx.Rngs(1), embed="embed", mlp="mlp"))
    device = jax.devices()[3]
    on_one_device(single, device)
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.restore(model=single)
    for path, value in flat_values(single).items():
        np.testing.assert_array_equal(value, saved[path], err_msg=str(path))
        assert value.sharding == SingleDeviceSharding(device), path
    # The restored single-device model computes what the sharded one does.
    x = batches("mlp", 1, seed=5)[0][0]
    sharded_y = nnx.jit(lambda m, x: m(x))(model, jax.device_put(x, NamedSharding(mesh, P())))
    np.testing.assert_allclose(single(jax.device_put(x, device)), sharded_y, rtol=1e-5, atol=1e-6)
