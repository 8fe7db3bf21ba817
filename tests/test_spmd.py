"""Sharding annotations (nnx.spmd) on 8 CPU devices (see conftest.py).

with_partitioning / with_metadata, get_partition_spec / get_named_sharding (checked against
flax.nnx where it is installed), placement of new Variables when a mesh is known, abstract
models that keep their shardings, vmap's PARTITION_NAME, logical axis rules, the errors, and
the sharded-init pattern end to end: abstract model -> shardings -> sharded model ->
checkpoint restore.
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
from nnx.errors import ArgumentError, ShardingError


def make_mesh(shape=(2, 4)) -> Mesh:
    assert jax.device_count() >= 8, "the tests expect 8 CPU devices (see conftest.py)"
    return Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", "model"))


@pytest.fixture
def mesh() -> Mesh:
    return make_mesh()


def partitioned(names, init=None, **kwargs):
    return nnx.with_partitioning(init or nnx.initializers.lecun_normal(), names, **kwargs)


class Net(nnx.Module):
    """Two annotated Linear layers, one unannotated bias, and a counter."""

    def __init__(self, rngs: nnx.Rngs, mesh: Mesh | None = None):
        self.up = nnx.Linear(
            8,
            16,
            kernel_init=partitioned(("data", "model"), mesh=mesh),
            bias_init=partitioned(("model",), nnx.initializers.zeros, mesh=mesh),
            rngs=rngs,
        )
        self.down = nnx.Linear(
            16, 8, kernel_init=partitioned(("model", "data"), mesh=mesh), rngs=rngs
        )
        self.count = nnx.BatchStat(jnp.array(0, jnp.int32))

    def __call__(self, x):
        return self.down(jnp.tanh(self.up(x)))


EXPECTED_SPECS = {
    ("up", "kernel"): P("data", "model"),
    ("up", "bias"): P("model"),
    ("down", "kernel"): P("model", "data"),
    ("down", "bias"): P(),
    ("count",): P(),
}


def flat(state) -> dict:
    return {
        path: v.value if isinstance(v, nnx.Variable) else v for path, v in nnx.to_flat_state(state)
    }


def shard_shape(array) -> tuple:
    return array.addressable_shards[0].data.shape


def assert_sharded_like_expected(model, m: Mesh):
    for path, value in flat(nnx.state(model)).items():
        expected = NamedSharding(m, EXPECTED_SPECS[path])
        assert value.sharding.is_equivalent_to(expected, value.ndim), (path, value.sharding)


# -- annotations ---------------------------------------------------------------------------------


def test_with_partitioning_sets_out_sharding_and_mesh_metadata(mesh):
    layer = nnx.Linear(8, 16, kernel_init=partitioned(("data", "model")), rngs=nnx.Rngs(0))
    assert layer.kernel.get_metadata() == {"out_sharding": ("data", "model"), "mesh": None}
    assert layer.kernel.out_sharding == ("data", "model")
    assert layer.bias.get_metadata() == {}
    # Same values as the unwrapped initializer.
    plain = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(layer.kernel.value, plain.kernel.value)
    with_mesh = nnx.Linear(
        8, 16, kernel_init=partitioned(("data", None), mesh=mesh), rngs=nnx.Rngs(0)
    )
    assert with_mesh.kernel.mesh is mesh


def test_metadata_and_partition_specs_match_flax(mesh):
    fnnx = pytest.importorskip("flax.nnx")

    class FlaxNet(fnnx.Module):
        def __init__(self, rngs):
            init = fnnx.initializers.lecun_normal()
            self.up = fnnx.Linear(
                8,
                16,
                kernel_init=fnnx.with_partitioning(init, ("data", "model"), mesh=mesh),
                bias_init=fnnx.with_partitioning(fnnx.initializers.zeros, ("model",), mesh=mesh),
                rngs=rngs,
            )
            self.down = fnnx.Linear(
                16,
                8,
                kernel_init=fnnx.with_partitioning(init, ("model", "data"), mesh=mesh),
                rngs=rngs,
            )
            self.count = fnnx.BatchStat(jnp.array(0, jnp.int32))

    theirs = FlaxNet(fnnx.Rngs(0))
    ours = Net(nnx.Rngs(0), mesh=mesh)
    flax_vars = {p: v for p, v in fnnx.to_flat_state(fnnx.state(theirs))}
    our_vars = dict(nnx.to_flat_state(nnx.state(ours)))
    assert flax_vars.keys() == our_vars.keys()
    for path, v in our_vars.items():
        theirs_meta = flax_vars[path].get_metadata()
        for key in ("out_sharding", "mesh"):
            assert v.get_metadata().get(key) == theirs_meta.get(key), (path, key)
        np.testing.assert_array_equal(v.value, flax_vars[path].get_value(), err_msg=str(path))
    flax_specs = {
        p: v.get_value() for p, v in fnnx.to_flat_state(fnnx.get_partition_spec(fnnx.state(theirs)))
    }
    assert flat(nnx.get_partition_spec(nnx.state(ours))) == flax_specs
    flax_named = fnnx.get_named_sharding(fnnx.state(theirs), mesh)
    flax_named = {p: v.get_value() for p, v in fnnx.to_flat_state(flax_named)}
    assert flat(nnx.get_named_sharding(nnx.state(ours), mesh)) == flax_named
    # Both placed the annotated Variables on the mesh when they were created.
    for path, v in our_vars.items():
        assert v.value.sharding.is_equivalent_to(flax_vars[path].get_value().sharding, v.value.ndim)


def test_get_partition_spec_keeps_types_and_metadata():
    specs = nnx.get_partition_spec(nnx.state(Net(nnx.Rngs(0))))
    assert isinstance(specs, nnx.State)
    assert flat(specs) == EXPECTED_SPECS
    assert type(specs["count"]) is nnx.BatchStat
    assert specs["up"]["kernel"].out_sharding == ("data", "model")
    # Plain arrays and non-arrays in a pytree, and a single Variable.
    assert nnx.get_partition_spec({"a": jnp.ones(3), "b": None, "c": 1.0}) == {
        "a": P(),
        "b": None,
        "c": None,
    }
    assert nnx.get_partition_spec(nnx.Param(jnp.ones((2, 2)), out_sharding=(None, "x"))).value == P(
        None, "x"
    )


def test_get_partition_spec_of_a_module_is_a_module():
    specs = nnx.get_partition_spec(Net(nnx.Rngs(0)))
    assert isinstance(specs, Net)
    assert specs.up.kernel.value == P("data", "model")


def test_get_named_sharding_on_a_data_model_mesh(mesh):
    shardings = nnx.get_named_sharding(nnx.state(Net(nnx.Rngs(0))), mesh)
    got = flat(shardings)
    assert got == {path: NamedSharding(mesh, spec) for path, spec in EXPECTED_SPECS.items()}
    assert shardings["up"]["kernel"].get_metadata()["out_sharding"] == ("data", "model")


def test_older_metadata_keys_are_read_too(mesh):
    v = nnx.Param(jnp.ones((8, 4)), sharding_names=("data", "model"))
    w = nnx.Param(jnp.ones((8, 4)), sharding=(None, "model"))
    assert nnx.get_partition_spec(v).value == P("data", "model")
    assert nnx.get_partition_spec(w).value == P(None, "model")
    with jax.set_mesh(mesh):
        placed = nnx.Param(jnp.ones((8, 4)), sharding_names=("data", "model"))
    assert shard_shape(placed.value) == (4, 1)
    assert placed.get_metadata() == {"sharding_names": ("data", "model")}


def test_with_metadata_and_variable_metadata():
    init = nnx.with_metadata(nnx.initializers.ones, note="tied", out_sharding=(None, "model"))
    value = init(jax.random.key(0), (2, 3), jnp.float32)
    assert isinstance(value, nnx.VariableMetadata)
    assert value.metadata == {"note": "tied", "out_sharding": (None, "model")}
    # The initializer's metadata wins over the layer's kernel_metadata, as in flax.
    layer = nnx.Linear(
        2, 3, kernel_init=init, kernel_metadata={"note": "layer", "x": 1}, rngs=nnx.Rngs(0)
    )
    assert layer.kernel.get_metadata() == {"note": "tied", "x": 1, "out_sharding": (None, "model")}
    assert nnx.Param(nnx.VariableMetadata(jnp.ones(2), {"a": 1})).a == 1


@pytest.mark.parametrize(
    "make, path, spec",
    [
        (
            lambda init: nnx.LinearGeneral(
                (2, 4), 8, axis=(-2, -1), kernel_init=init, rngs=nnx.Rngs(0)
            ),
            "kernel",
            P("data", None, "model"),
        ),
        (
            lambda init: nnx.Einsum("ab,bcd->acd", (4, 2, 8), kernel_init=init, rngs=nnx.Rngs(0)),
            "kernel",
            P("data", None, "model"),
        ),
        (
            lambda init: nnx.Conv(2, 8, (3, 3), kernel_init=init, rngs=nnx.Rngs(0)),
            "kernel",
            P(None, None, "data", "model"),
        ),
        (
            lambda init: nnx.Embed(16, 8, embedding_init=init, rngs=nnx.Rngs(0)),
            "embedding",
            P("model", "data"),
        ),
    ],
    ids=["LinearGeneral", "Einsum", "Conv", "Embed"],
)
def test_layers_accept_partitioned_initializers(mesh, make, path, spec):
    init = partitioned(tuple(spec), nnx.initializers.normal(), mesh=mesh)
    layer = make(init)
    v = getattr(layer, path)
    assert nnx.get_partition_spec(v).value == spec
    assert v.value.sharding.is_equivalent_to(NamedSharding(mesh, spec), v.value.ndim)


# -- placement of new Variables --------------------------------------------------------------------


def test_new_variables_are_placed_under_set_mesh(mesh):
    with jax.set_mesh(mesh):
        model = Net(nnx.Rngs(0))
    assert_sharded_like_expected(model, mesh)
    assert shard_shape(model.up.kernel.value) == (4, 4)
    np.testing.assert_array_equal(model.up.kernel.value, Net(nnx.Rngs(0)).up.kernel.value)


def test_new_variables_are_placed_on_their_mesh_metadata(mesh):
    model = Net(nnx.Rngs(0), mesh=mesh)
    assert shard_shape(model.up.kernel.value) == (4, 4)
    assert shard_shape(model.down.kernel.value) == (4, 4)
    # Unannotated Variables are not touched without a mesh context.
    assert isinstance(model.down.bias.value.sharding, SingleDeviceSharding)


def test_without_a_mesh_the_annotation_is_only_recorded():
    # A deliberate difference: flax.nnx raises here; nnx keeps the annotation for later.
    model = Net(nnx.Rngs(0))
    assert isinstance(model.up.kernel.value.sharding, SingleDeviceSharding)
    assert model.up.kernel.out_sharding == ("data", "model")


def test_use_eager_sharding_false_only_annotates(mesh):
    with jax.set_mesh(mesh), nnx.use_eager_sharding(False):
        assert not nnx.using_eager_sharding()
        model = Net(nnx.Rngs(0))
    assert nnx.using_eager_sharding()
    assert model.up.kernel.value.sharding.is_fully_replicated  # not split
    with jax.set_mesh(mesh):
        v = nnx.Param(jnp.ones((8, 4)), out_sharding=("data", None), eager_sharding=False)
    assert v.value.sharding.is_fully_replicated

    @nnx.use_eager_sharding(False)
    def build():
        return Net(nnx.Rngs(0), mesh=mesh)

    assert nnx.using_eager_sharding()  # decorating does not change the setting
    assert isinstance(build().up.kernel.value.sharding, SingleDeviceSharding)


def test_variables_created_inside_jit_are_sharded(mesh):
    with jax.set_mesh(mesh):
        model = nnx.jit(lambda: Net(nnx.Rngs(0)))()
    assert_sharded_like_expected(model, mesh)


def test_explicit_axes_mesh(mesh):
    explicit = jax.make_mesh(
        (2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2
    )
    with jax.set_mesh(explicit):
        eager = Net(nnx.Rngs(0))
        jitted = nnx.jit(lambda: Net(nnx.Rngs(0)))()
        abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
    for model in (eager, jitted):
        assert model.up.kernel.value.sharding.spec == P("data", "model")
        assert shard_shape(model.up.kernel.value) == (4, 4)
    sharding = abstract.up.kernel.value.sharding
    assert isinstance(sharding.mesh, Mesh) and sharding.spec == P("data", "model")


def test_lazy_layers_are_placed_when_they_materialize(mesh):
    def lazy():
        return nnx.Linear(
            None, 16, kernel_init=partitioned(("data", "model"), mesh=mesh), rngs=nnx.Rngs(0)
        )

    called = lazy()
    called(jnp.ones((2, 8)))
    initialized = nnx.lazy_init(lazy(), jnp.ones((2, 8)))
    for layer in (called, initialized):
        assert isinstance(layer.kernel.value, jax.Array)
        assert shard_shape(layer.kernel.value) == (4, 4)


# -- abstract models ---------------------------------------------------------------------------


def test_eval_shape_keeps_shardings_under_set_mesh(mesh):
    with jax.set_mesh(mesh):
        abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
    for path, value in flat(nnx.state(abstract)).items():
        assert isinstance(value, jax.ShapeDtypeStruct), path
        # A concrete mesh, so the abstract model is a checkpoint-restore target as it is.
        assert value.sharding == NamedSharding(mesh, EXPECTED_SPECS[path]), path


def test_eval_shape_uses_the_mesh_metadata_without_a_context(mesh):
    abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(0), mesh=mesh))
    assert abstract.up.kernel.value.sharding == NamedSharding(mesh, P("data", "model"))
    assert abstract.down.bias.value.sharding is None  # no mesh known for it, as in flax


def test_eval_shape_without_a_mesh_leaves_shardings_unset():
    abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
    assert abstract.up.kernel.value.sharding is None
    assert abstract.up.kernel.out_sharding == ("data", "model")


def test_as_abstract_adds_shardings_to_annotated_variables(mesh):
    abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
    with jax.set_mesh(mesh):
        sharded = nnx.as_abstract(abstract)
    assert sharded.up.kernel.value.sharding == NamedSharding(mesh, P("data", "model"))
    assert sharded.down.bias.value.sharding is None  # unannotated: left alone, as in flax
    assert abstract.up.kernel.value.sharding is None  # a copy: the input is unchanged
    assert nnx.abstract_with_sharding is nnx.as_abstract
    with pytest.raises(
        ShardingError, match=r"Param at Net\.(up|down)\.kernel .* no mesh is known.*\nFix"
    ):
        nnx.as_abstract(abstract)


def test_get_abstract_model(mesh):
    graphdef, state = nnx.get_abstract_model(lambda: Net(nnx.Rngs(0)), mesh)
    for path, value in flat(state).items():
        assert isinstance(value, jax.ShapeDtypeStruct)
        assert value.sharding == NamedSharding(mesh, EXPECTED_SPECS[path]), path
    assert isinstance(nnx.merge(graphdef, state), Net)


# -- the sharded-init pattern, end to end ---------------------------------------------------------


def test_jit_with_out_shardings_shards_the_arrays(mesh):
    abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
    shardings = nnx.get_named_sharding(nnx.state(abstract), mesh)
    model = nnx.jit(lambda: Net(nnx.Rngs(0)), out_shardings=shardings)()
    assert_sharded_like_expected(model, mesh)
    kernel = model.up.kernel.value
    assert len(kernel.addressable_shards) == 8
    assert shard_shape(kernel) == (4, 4)  # (8, 16) over data=2, model=4
    assert shard_shape(model.down.kernel.value) == (4, 4)  # (16, 8) over model=4, data=2
    assert shard_shape(model.up.bias.value) == (4,)
    np.testing.assert_array_equal(kernel, Net(nnx.Rngs(0)).up.kernel.value)
    # The sharded model runs, and a State of shardings also works as in_shardings.
    x = jnp.ones((4, 8))
    y = nnx.jit(lambda m, x: m(x), in_shardings=(shardings, None))(model, x)
    np.testing.assert_allclose(y, Net(nnx.Rngs(0))(x), rtol=1e-5, atol=1e-6)


def test_device_put_of_the_state(mesh):
    model = Net(nnx.Rngs(0))
    shardings = nnx.get_named_sharding(nnx.state(model), mesh)
    nnx.update(model, jax.device_put(nnx.state(model), shardings))
    assert_sharded_like_expected(model, mesh)


def test_with_sharding_constraint_inside_jit(mesh):
    @nnx.jit
    def create():
        model = Net(nnx.Rngs(0))
        state = nnx.state(model)
        specs = nnx.get_named_sharding(state, mesh)
        nnx.update(model, jax.lax.with_sharding_constraint(state, specs))
        return model

    assert_sharded_like_expected(create(), mesh)


def test_restore_a_checkpoint_into_the_sharded_abstract_model(tmp_path, mesh):
    source = Net(nnx.Rngs(3))
    source.count.value = jnp.array(5, jnp.int32)
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=source)
    with jax.set_mesh(mesh):
        abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.restore(model=abstract)
    assert_sharded_like_expected(abstract, mesh)
    assert shard_shape(abstract.up.kernel.value) == (4, 4)
    for path, value in flat(nnx.state(abstract)).items():
        np.testing.assert_array_equal(value, flat(nnx.state(source))[path], err_msg=str(path))


# -- optimizer state ------------------------------------------------------------------------------


def test_optimizer_moments_take_the_params_annotations():
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), wrt=nnx.Param
    )
    specs = flat(nnx.get_partition_spec(nnx.state(optimizer.opt_state)))
    adam = {p[1:]: spec for p, spec in specs.items() if p[0] == 1}
    for moment in ("mu", "nu"):
        for path in [("up", "kernel"), ("up", "bias"), ("down", "kernel"), ("down", "bias")]:
            assert adam[(0, moment, *path)] == EXPECTED_SPECS[path], (moment, path)
    assert adam[(0, "count")] == P()
    kernel_mu = optimizer.opt_state[1][0].mu["up"]["kernel"]
    assert isinstance(kernel_mu, nnx.OptArray)
    assert kernel_mu.out_sharding == ("data", "model")


def test_sharded_model_and_optimizer_train_on_the_mesh(mesh):
    with jax.set_mesh(mesh):
        model = Net(nnx.Rngs(0), mesh=mesh)
        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    mu = optimizer.opt_state[0].mu
    assert mu["up"]["kernel"].value.sharding.is_equivalent_to(
        NamedSharding(mesh, P("data", "model")), 2
    )
    # The abstract optimizer gives the shardings to create or restore it with.
    with jax.set_mesh(mesh):
        abstract = nnx.eval_shape(
            lambda: nnx.Optimizer(Net(nnx.Rngs(0)), optax.adam(1e-2), wrt=nnx.Param)
        )
    named = flat(nnx.get_named_sharding(nnx.state(abstract.opt_state), mesh))
    assert named[(0, "nu", "down", "kernel")].spec == P("model", "data")

    @nnx.jit
    def step(model, optimizer, x):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    x = jax.device_put(jnp.ones((4, 8)), NamedSharding(mesh, P("data", None)))
    before = np.asarray(model.up.kernel.value)
    step(model, optimizer, x)
    step(model, optimizer, x)
    assert not np.allclose(before, model.up.kernel.value)
    # annotated params and their moments keep their sharding (unannotated ones, like
    # down.bias, are placed by the compiler, as with plain jax.jit)
    for path in [("up", "kernel"), ("up", "bias"), ("down", "kernel")]:
        spec = NamedSharding(mesh, EXPECTED_SPECS[path])
        param = flat(nnx.state(model))[path]
        moment = flat(nnx.state(optimizer.opt_state))[(0, "mu", *path)]
        assert param.sharding.is_equivalent_to(spec, param.ndim), path
        assert moment.sharding.is_equivalent_to(spec, moment.ndim), path
    assert int(optimizer.step.value) == 2


# -- vmap: PARTITION_NAME --------------------------------------------------------------------------


class Block(nnx.Module):
    def __init__(self, rngs, mesh=None):
        self.lin = nnx.Linear(
            8, 16, kernel_init=partitioned(("data", "model"), mesh=mesh), rngs=rngs
        )


def stacked(out_axes=0, mesh=None, n=2):
    rngs = nnx.Rngs(0)
    with nnx.split_rngs(rngs, splits=n):
        return nnx.vmap(
            lambda r: Block(r, mesh),
            out_axes=out_axes,
            transform_metadata={nnx.PARTITION_NAME: "layers"},
        )(rngs)


@pytest.mark.parametrize(
    "out_axes, names, spec",
    [
        (0, ("layers", "data", "model"), P(None, "data", "model")),
        (1, ("data", "layers", "model"), P("data", None, "model")),
    ],
)
def test_vmap_partition_name_adds_the_axis_name(mesh, out_axes, names, spec):
    blocks = stacked(out_axes, mesh=mesh)
    kernel = blocks.lin.kernel
    assert kernel.out_sharding == names
    assert kernel.get_metadata() == {"out_sharding": names, "mesh": mesh}
    assert "out_sharding" not in blocks.lin.bias.get_metadata()
    # Created inside vmap with a mesh known: the stacked value is sharded, not over 'layers'.
    assert kernel.value.sharding.is_equivalent_to(NamedSharding(mesh, spec), 3)
    assert nnx.get_partition_spec(kernel).value == P(*names)
    # 'layers' is no mesh axis: say so, or map it with logical axis rules.
    with pytest.raises(
        ShardingError, match=r"Param at state\.lin\.kernel .* mesh axis 'layers'.*\n.*Fix"
    ):
        nnx.get_named_sharding(nnx.state(blocks), mesh)
    with nnx.logical_axis_rules([("layers", None)]):
        assert nnx.get_named_sharding(nnx.state(blocks), mesh)["lin"]["kernel"].value.spec == spec


def test_vmap_partition_name_matches_flax(mesh):
    fnnx = pytest.importorskip("flax.nnx")

    class FlaxBlock(fnnx.Module):
        def __init__(self, rngs):
            init = fnnx.with_partitioning(
                fnnx.initializers.lecun_normal(), ("data", "model"), mesh=mesh
            )
            self.lin = fnnx.Linear(8, 16, kernel_init=init, rngs=rngs)

    theirs = fnnx.vmap(lambda r: FlaxBlock(r), transform_metadata={fnnx.PARTITION_NAME: "layers"})(
        fnnx.Rngs(0).split(2)
    )
    ours = stacked(0, mesh=mesh)
    assert ours.lin.kernel.out_sharding == theirs.lin.kernel.get_metadata()["out_sharding"]
    specs = fnnx.get_partition_spec(fnnx.state(theirs))
    assert (
        nnx.get_partition_spec(nnx.state(ours))["lin"]["kernel"].value
        == specs["lin"]["kernel"].get_value()
    )


def test_scan_partition_name_is_removed_inside_and_back_outside(mesh):
    """Scan over layers stacked by vmap: inside, a layer's annotation is that of one slice
    (usable for a sharding constraint); afterwards the stacked annotation is back, and a
    Variable created inside (on the scanned layer) is stacked with the name inserted."""
    blocks = stacked(0, mesh=mesh, n=3)
    seen = []

    @nnx.scan(
        in_axes=(0, nnx.Carry),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    def run(block, x):
        kernel = block.lin.kernel
        seen.append(kernel.out_sharding)
        spec = nnx.get_partition_spec(kernel).value
        w = jax.lax.with_sharding_constraint(kernel.value, NamedSharding(mesh, spec))
        return jnp.tanh(x @ w[:, :8])

    with jax.set_mesh(mesh):
        y = nnx.jit(run)(blocks, jnp.ones((4, 8)))
    assert seen == [("data", "model")]
    assert y.shape == (4, 8)
    assert blocks.lin.kernel.out_sharding == ("layers", "data", "model")

    @nnx.scan(
        in_axes=(0, nnx.Carry),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    def grow(block, x):
        block.scale = nnx.Param(jnp.ones((8,)), out_sharding=("model",))
        return x

    grow(blocks, jnp.ones((4, 8)))
    assert blocks.scale.value.shape == (3, 8)
    assert blocks.scale.out_sharding == ("layers", "model")
    assert blocks.lin.kernel.out_sharding == ("layers", "data", "model")


def test_scan_leaves_an_annotation_without_the_name_alone():
    """Layers stacked without transform_metadata keep their annotation through a scan that
    has one: nothing was removed on the way in, so nothing is inserted on the way out."""
    rngs = nnx.Rngs(0)
    with nnx.split_rngs(rngs, splits=2):
        blocks = nnx.vmap(lambda r: Block(r))(rngs)
    assert blocks.lin.kernel.out_sharding == ("data", "model")

    @nnx.scan(
        in_axes=(0, nnx.Carry),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    def run(block, x):
        block.lin.kernel.value = block.lin.kernel.value * 2.0
        return x

    run(blocks, jnp.ones((4, 8)))
    assert blocks.lin.kernel.out_sharding == ("data", "model")


def test_scan_without_transform_metadata_leaves_annotations_alone(mesh):
    blocks = stacked(0, mesh=mesh, n=2)
    seen = []

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def run(block, x):
        seen.append(block.lin.kernel.out_sharding)
        return x

    run(blocks, jnp.ones((4, 8)))
    assert seen == [("layers", "data", "model")]
    assert blocks.lin.kernel.out_sharding == ("layers", "data", "model")


def test_vmap_other_transform_metadata_entries_go_into_tuple_metadata():
    rngs = nnx.Rngs(0)

    def make(r):
        return nnx.Param(jax.random.normal(r(), (3,)), out_sharding=("x",), axes_doc=("features",))

    with nnx.split_rngs(rngs, splits=4):
        v = nnx.vmap(make, transform_metadata={nnx.PARTITION_NAME: "layers", "axes_doc": "stack"})(
            rngs
        )
    assert v.get_metadata() == {"out_sharding": ("layers", "x"), "axes_doc": ("stack", "features")}


# -- logical axis rules ----------------------------------------------------------------------------


def test_logical_axis_rules_map_names_onto_mesh_axes(mesh):
    v = nnx.Param(jnp.ones((8, 16)), out_sharding=("embed", "mlp"))
    rules = [("embed", "data"), ("mlp", "model")]
    with nnx.logical_axis_rules(rules):
        assert nnx.get_partition_spec(v).value == P("data", "model")
        with jax.set_mesh(mesh):
            placed = nnx.Param(jnp.ones((8, 16)), out_sharding=("embed", "mlp"))
    assert nnx.get_partition_spec(v).value == P("embed", "mlp")  # rules end with the block
    assert shard_shape(placed.value) == (4, 4)
    # A Variable's own sharding_rules, and names inside a tuple entry.
    w = nnx.Param(
        jnp.ones((8, 16)),
        out_sharding=(("batch", "seq"), None),
        sharding_rules=[("batch", "data"), ("seq", "model")],
    )
    assert nnx.get_partition_spec(w).value == P(("data", "model"), None)


def test_conflicting_rules_and_bad_rules_raise():
    w = nnx.Param(jnp.ones(4), out_sharding=("embed",), sharding_rules=[("embed", "model")])
    with (
        nnx.logical_axis_rules([("embed", "data")]),
        pytest.raises(ShardingError, match=r"'embed' maps to 'data'.*\nFix"),
    ):
        nnx.get_partition_spec(w)
    with pytest.raises(ArgumentError, match=r"pairs.*\nFix"), nnx.logical_axis_rules(["embed"]):
        pass


# -- errors ---------------------------------------------------------------------------------------


class Outer(nnx.Module):
    def __init__(self, init):
        self.blocks = [nnx.Linear(8, 16, kernel_init=init, rngs=nnx.Rngs(0))]


def test_wrong_rank_names_the_variable_path_and_the_fix(mesh):
    model = Outer(partitioned(("data", "model", None)))
    pattern = (
        r"Param at state\.blocks\[0\]\.kernel has shape \(8, 16\) \(rank 2\) but its sharding "
        r"annotation out_sharding=\('data', 'model', None\) has 3 entries.*\n"
        r"Fix: give one entry per axis.*with_partitioning\(init, \('data', 'model'\)\)"
    )
    with pytest.raises(ShardingError, match=pattern):
        nnx.get_partition_spec(nnx.state(model))
    with pytest.raises(ShardingError, match=pattern):
        nnx.get_named_sharding(nnx.state(model), mesh)
    with pytest.raises(ShardingError, match=r"Param at Outer\.blocks\[0\]\.kernel has shape"):
        nnx.get_partition_spec(model)
    assert issubclass(ShardingError, ValueError)


def test_wrong_rank_at_creation_names_the_creating_layer(mesh):
    init = partitioned(("data", "model", None), mesh=mesh)
    with pytest.raises(
        ShardingError, match=r"A new Param created by Linear has shape \(8, 16\).*\nFix"
    ):
        Outer(init)
    with jax.set_mesh(mesh), pytest.raises(ShardingError, match=r"A new Param created by Linear"):
        nnx.eval_shape(lambda: Outer(partitioned(("data", "model", None))))


def test_uneven_split_at_creation_says_which_axis(mesh):
    init = partitioned((None, "model"), mesh=mesh)
    with pytest.raises(
        ShardingError,
        match=r"A new Param created by Linear has shape \(8, 6\).*splits axis 1 \(size 6\) "
        r"over 4 devices \(mesh axes \('model',\)\).*\nFix: make axis 1 a multiple of 4",
    ):
        nnx.Linear(8, 6, kernel_init=init, rngs=nnx.Rngs(0))


def test_unknown_mesh_axis_names_the_path(mesh):
    model = Outer(partitioned(("data", "expert")))
    with pytest.raises(
        ShardingError,
        match=r"Param at state\.blocks\[0\]\.kernel is annotated "
        r"out_sharding=\('data', 'expert'\).*mesh axis 'expert', but the mesh has axes "
        r"\('data', 'model'\).*\nFix:.*logical_axis_rules",
    ):
        nnx.get_named_sharding(nnx.state(model), mesh)
