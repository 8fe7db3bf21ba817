"""flax.nnx 0.12.8 names and keywords of Variables, Rngs, filters, training and a few layers:
signatures compared with flax, and the same programs run through both where flax is
installed (the comparisons skip without it)."""

from __future__ import annotations

import inspect
import typing
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding

import nnx
from nnx.errors import ArgumentError, NNXError


def _flax():
    return pytest.importorskip("flax.nnx")


def kd(key):
    return np.asarray(jax.random.key_data(key))


def _shape(fn):
    """(name, kind, default) of each parameter; callables' defaults compared by kind only."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        d = p.default
        if d is inspect.Parameter.empty:
            d = "<required>"
        elif d is None or type(d).__name__ == "Missing":
            d = "<none>"  # flax's Missing sentinel is our None
        elif callable(d):
            d = "<callable>"
        elif isinstance(d, typing.Mapping):
            d = dict(d)
        out.append((p.name, p.kind, d))
    return out


# -- signatures -------------------------------------------------------------------------------
VARIABLE_TYPES = [
    "Variable", "Param", "BatchStat", "Cache", "Intermediate", "Perturbation", "LoRAParam",
    "OptState", "OptArray", "OptVariable", "RngKey", "RngCount", "RngState",
]  # fmt: skip

SAME_SIGNATURE = [
    *[(name, "__init__") for name in VARIABLE_TYPES],
    ("VariableMetadata", "__init__"),
    ("with_metadata", None),
    ("var_defaults", None),
    ("with_vars", None),
    ("vars_as", None),
    ("Rngs", "__init__"),
    ("RngStream", "__init__"),
    ("with_rngs", None),
    ("split_rngs", None),
    ("fork_rngs", None),
    ("restore_rngs", None),
    ("register_variable_name", None),
    ("Not", "__init__"),
    ("Not", "__call__"),
    ("LoRA", "__call__"),
    ("LoRALinear", "__call__"),
    ("GRUCell", "__init__"),
    ("LSTMCell", "__init__"),
    ("OptimizedLSTMCell", "__init__"),
    ("MultiMetric", "update"),
    ("Metric", "__init__"),
]


@pytest.mark.parametrize("name, method", SAME_SIGNATURE, ids=lambda x: str(x))
def test_signature_matches_flax(name, method):
    flax_nnx = _flax()
    ours, theirs = getattr(nnx, name), getattr(flax_nnx, name)
    if method:
        ours, theirs = getattr(ours, method), getattr(theirs, method)
    assert _shape(ours) == _shape(theirs)


@pytest.mark.parametrize(
    "path",
    [
        "filterlib.PathIn.__init__",
        "rnglib.backup_keys",
        "metrics.Accuracy.__init__",
        "metrics.Welford.update",
        "metrics.Average.update",
    ],
)
def test_module_level_signature_matches_flax(path):
    flax_nnx = _flax()
    ours, theirs = nnx, flax_nnx
    for part in path.split("."):
        ours, theirs = getattr(ours, part), getattr(theirs, part)
    assert _shape(ours) == _shape(theirs)


def test_signatures_that_differ_on_purpose_keep_flax_names_and_kinds():
    flax_nnx = _flax()
    pairs = [
        (nnx.Optimizer.__init__, flax_nnx.Optimizer.__init__),  # wrt has a default here
        (nnx.EMA.__init__, flax_nnx.EMA.__init__),  # only=Param by default; wrt= alias added
        (nnx.reseed, flax_nnx.reseed),  # policy defaults to 'match_shape'
    ]
    for ours, theirs in pairs:
        mine = [(n, k) for n, k, _ in _shape(ours)]
        flax_names = [(n, k) for n, k, _ in _shape(theirs)]
        assert mine[: len(flax_names)] == flax_names


def test_sampler_methods_are_flaxs():
    flax_nnx = _flax()
    for cls in ("RngStream", "Rngs"):
        theirs = {n for n in dir(getattr(flax_nnx, cls)) if not n.startswith("_")}
        ours = {n for n in dir(getattr(nnx, cls)) if not n.startswith("_")}
        assert theirs <= ours, sorted(theirs - ours)


def test_A_is_a_typevar():
    assert isinstance(nnx.A, typing.TypeVar) and nnx.A is nnx.variablelib.A


# -- Variable keywords ------------------------------------------------------------------------
@pytest.mark.parametrize("cls", VARIABLE_TYPES)
def test_every_variable_type_takes_flax_keywords(cls):
    v = getattr(nnx, cls)(jnp.ones(2), hijax=False, ref=None, eager_sharding=None, note=1)
    assert v.get_metadata() == {"note": 1}


@pytest.mark.parametrize("flag", ["hijax", "ref"])
def test_array_refs_are_refused_with_the_reason(flag):
    with pytest.raises(ArgumentError, match=rf"(?s)nnx.Param got {flag}=True.*array refs.*Fix:"):
        nnx.Param(jnp.ones(2), **{flag: True})
    with pytest.raises(ArgumentError, match=rf"(?s)nnx.var_defaults got {flag}=True.*Fix:"):
        nnx.var_defaults(**{flag: True})
    with pytest.raises(ArgumentError, match=rf"(?s)nnx.with_vars got {flag}=True.*Fix:"):
        nnx.with_vars(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), **{flag: True})


def test_variable_metadata_flags_must_agree_with_arguments():
    value = nnx.VariableMetadata(jnp.ones(2), metadata={"eager_sharding": False, "a": 1})
    v = nnx.Param(value)
    assert v.get_metadata() == {"a": 1, "eager_sharding": False}
    with pytest.raises(ArgumentError, match=r"eager_sharding=True was passed.*says"):
        nnx.Param(value, eager_sharding=True)


def _mesh():
    return Mesh(np.array(jax.devices()[:2]), ("model",))


def test_eager_sharding_overrides_the_default_per_variable():
    mesh = _mesh()
    meta = dict(out_sharding=("model",), mesh=mesh)
    with nnx.use_eager_sharding(False):
        placed = nnx.Param(jnp.ones(4), eager_sharding=True, **meta)
        default = nnx.Param(jnp.ones(4), **meta)
    kept = nnx.Param(jnp.ones(4), eager_sharding=False, **meta)
    assert isinstance(placed.value.sharding, NamedSharding)
    assert placed.value.sharding.spec == jax.sharding.PartitionSpec("model")
    for v in (default, kept):
        assert not isinstance(v.value.sharding, NamedSharding)
    assert kept.eager_sharding is False and nnx.using_eager_sharding()


# -- hooks ------------------------------------------------------------------------------------
def _hooked_program(lib):
    log = []

    def on_create(v, x):
        log.append("create")
        return x * 2

    def on_set(v, x):
        log.append("set")
        return jnp.clip(x, -1, 1)

    def on_get(v, x):
        log.append("get")
        return x + 100

    def on_add(v, i, name):
        log.append(("add", i, name))

    def on_remove(v, i, name):
        log.append(("remove", i, name))

    init = lib.with_metadata(
        lambda key, shape, dtype: jnp.ones(shape, dtype),
        on_set_value=on_set,
        on_get_value=(on_get,),
        on_create_value=on_create,
        on_add_axis=on_add,
        on_remove_axis=[on_remove],
        note="n",
    )
    v = lib.Param(init(jax.random.key(0), (2,), jnp.float32))
    reads = [v.get_value().tolist(), v[...].tolist(), v.get_raw_value().tolist()]
    v.set_value(jnp.array([5.0, -5.0]))
    reads.append(v.get_raw_value().tolist())
    v[...] = jnp.array([0.5, 3.0])
    reads.append(v.get_raw_value().tolist())
    v.add_axis(0, "layers")
    v.remove_axis(1, None)
    return reads, log, v.note


def test_variable_hooks_run_as_in_flax():
    flax_nnx = _flax()
    ours = _hooked_program(nnx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flax warns that hooks are deprecated
        theirs = _hooked_program(flax_nnx)
    assert ours == theirs
    reads, log, note = ours
    assert reads[0] == [102.0, 102.0] and reads[2] == [2.0, 2.0] and note == "n"
    assert ("add", 0, "layers") in log and ("remove", 1, None) in log


def test_hooks_as_methods_of_a_variable_subclass():
    class Clipped(nnx.Param):
        __slots__ = ()

        def on_set_value(self, value):
            return jnp.clip(value, 0, 1)

    v = Clipped(jnp.zeros(2))
    v.value = jnp.array([-2.0, 2.0])
    assert v.value.tolist() == [0.0, 1.0]
    assert nnx.Param(jnp.zeros(1)).get_metadata() == {}


def test_variable_metadata_fields_and_the_two_field_form():
    flax_nnx = _flax()
    ours = [f.name for f in __import__("dataclasses").fields(nnx.VariableMetadata)]
    theirs = [f.name for f in __import__("dataclasses").fields(flax_nnx.VariableMetadata)]
    assert ours == theirs
    # nnx's earlier positional form VariableMetadata(raw, metadata) still works
    assert nnx.Param(nnx.VariableMetadata(jnp.ones(2), {"a": 1})).a == 1
    with pytest.raises(ArgumentError, match=r"on_get_value takes a function.*not callable"):
        nnx.VariableMetadata(jnp.ones(2), on_get_value=(1,))


def test_hooks_survive_split_merge_and_jit():
    init = nnx.with_metadata(nnx.initializers.ones, on_get_value=lambda v, x: 2 * x)
    model = nnx.Linear(2, 2, kernel_init=init, rngs=nnx.Rngs(0))
    clone = nnx.merge(*nnx.split(model))
    assert clone.kernel.value.tolist() == [[2.0, 2.0], [2.0, 2.0]]
    out = nnx.jit(lambda m: m.kernel.value.sum())(model)
    assert float(out) == 8.0


# -- var_defaults / with_vars -----------------------------------------------------------------
def test_var_defaults_and_with_vars_as_flax():
    flax_nnx = _flax()
    assert dict(nnx.var_defaults()) == dict(flax_nnx.var_defaults())
    with nnx.var_defaults(hijax=False, ref=False):
        assert nnx.var_defaults().ref is False

    @nnx.var_defaults(ref=False)
    def f(x):
        return x + 1

    assert f(1) == 2

    def shape_of(lib):
        model = lib.Linear(2, 2, rngs=lib.Rngs(0))
        view = lib.with_vars(model, ref=False)
        return view is model, view.kernel is model.kernel, type(view) is type(model)

    assert shape_of(nnx) == shape_of(flax_nnx) == (False, True, True)


def test_with_vars_refuses_immutable_and_vars_as_warns():
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ArgumentError, match=r"(?s)mutable=False.*no read-only.*Fix:"):
        nnx.with_vars(model, mutable=False)
    assert nnx.with_vars(model, mutable=True).bias is model.bias
    with pytest.warns(DeprecationWarning, match="with_vars"):
        assert nnx.vars_as([model])[0].kernel is model.kernel


# -- filters ----------------------------------------------------------------------------------
def test_path_in_selects_the_same_state_as_flax():
    flax_nnx = _flax()

    def paths(lib):
        first, second = lib.Linear(2, 3, rngs=lib.Rngs(0)), lib.Linear(3, 1, rngs=lib.Rngs(1))
        model = lib.Sequential(first, second)
        f = lib.filterlib.PathIn(("layers", 0, "kernel"), ("layers", 1, "bias"))
        return sorted(tuple(p) for p, _ in lib.to_flat_state(lib.state(model, f)))

    assert paths(nnx) == paths(flax_nnx) == [("layers", 0, "kernel"), ("layers", 1, "bias")]
    f = nnx.filterlib.PathIn(("a",), ("b", 0))
    assert f == nnx.filterlib.PathIn(("b", 0), ("a",)) and hash(f) == hash(
        nnx.filterlib.PathIn(("a",), ("b", 0))
    )
    with pytest.raises(ArgumentError, match="tuples of path parts"):
        nnx.filterlib.PathIn("a")


def test_not_takes_its_filter_positionally_only():
    with pytest.raises(TypeError):
        nnx.Not(collection_filter=nnx.Param)
    f = nnx.Not(nnx.Param)
    assert f.collection_filter is nnx.Param and f((), nnx.BatchStat(0)) is True


# -- Rngs -------------------------------------------------------------------------------------
def _draws(lib):
    rngs = lib.Rngs(default=0, dropout=1)
    out = [
        rngs.normal((3,)),
        rngs.uniform((2,), minval=-1.0),
        rngs.dropout.bernoulli(0.3, (4,)),
        rngs.params.randint((3,), 0, 10),
        rngs.categorical(jnp.zeros(5)),
        rngs.dropout.permutation(6),
        rngs.lecun_normal()((2, 3)),
        rngs.dropout.truncated_normal(-1.0, 1.0, (2,)),
    ]
    return [np.asarray(x) for x in out] + [int(rngs.default.count[...])]


def test_sampling_methods_draw_what_flax_draws_from_the_same_seed():
    flax_nnx = _flax()
    ours, theirs = _draws(nnx), _draws(flax_nnx)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_rngs_takes_a_mapping_and_default_by_keyword():
    a = nnx.Rngs({"params": 0}, dropout=1)
    assert sorted(a) == ["dropout", "params"]
    b = nnx.Rngs(default=3)
    np.testing.assert_array_equal(kd(b()), kd(jax.random.fold_in(jax.random.key(3), 0)))


def _with_rngs_program(lib, **kw):
    rngs = lib.Rngs(params=0, dropout=1, noise=2)
    new = lib.with_rngs(rngs, graph=False, **kw)
    return {
        name: (kd(new[name].key[...]), np.asarray(new[name].count[...]),
               np.asarray(rngs[name].count[...]), new[name] is rngs[name])
        for name in ("params", "dropout", "noise")
    }  # fmt: skip


@pytest.mark.parametrize(
    "rules",
    [
        lambda lib: dict(split=4),
        lambda lib: dict(split={"params": 4, ...: (2, 3)}),
        lambda lib: dict(split={"params": 2}, fork=lib.Not("params")),
        lambda lib: dict(broadcast=3),
        lambda lib: dict(split={...: 2}, broadcast={"params": 3}),
        lambda lib: dict(fork=["dropout", "noise"], only=lib.Not("noise")),
    ],
    ids=["split", "split-map", "split-fork", "broadcast", "catch-all", "only"],
)
def test_with_rngs_matches_flax(rules):
    flax_nnx = _flax()
    ours = _with_rngs_program(nnx, **rules(nnx))
    theirs = _with_rngs_program(flax_nnx, **rules(flax_nnx))
    for name in ours:
        for a, b in zip(ours[name], theirs[name], strict=True):
            np.testing.assert_array_equal(a, b)


def test_with_rngs_conflicts_and_decorator():
    rngs = nnx.Rngs(params=0)
    with pytest.raises(ArgumentError, match=r"(?s)stream 'params'.*several kinds.*split.*Fix:"):
        nnx.with_rngs(rngs, split={"params": 2}, broadcast={"params": 2})

    @nnx.with_rngs(split=5)
    def shape(r):
        return r.params.key.shape

    assert shape(rngs) == (5,) and rngs.params.key.shape == ()
    # graph mode (flax refuses graph=True with graph_updates=True): a module keeps sharing
    model = nnx.Dropout(0.5, rngs=nnx.Rngs(3))
    new = nnx.with_rngs(model, split=2)
    assert new is not model and new.rngs.key.shape == (2,) and model.rngs.key.shape == ()


def test_split_and_fork_rngs_without_graph_updates_return_copies_like_flax():
    flax_nnx = _flax()

    def run(lib):
        m = lib.Dropout(0.5, rngs=lib.Rngs(3))
        split = lib.split_rngs(m, splits=3, graph_updates=False)
        forked = lib.fork_rngs(m, split={...: 2}, graph_updates=False)
        return [split is m, kd(split.rngs.key[...]), np.asarray(split.rngs.count[...]),
                kd(forked.rngs.key[...]), kd(m.rngs.key[...]), forked is m]  # fmt: skip

    for a, b in zip(run(nnx), run(flax_nnx), strict=True):
        np.testing.assert_array_equal(a, b)


def test_split_rngs_squeeze_needs_one_split_and_graph_false_refuses_sharing():
    rngs = nnx.Rngs(0)
    with pytest.raises(ArgumentError, match=r"squeeze=True.*splits=1"):
        nnx.split_rngs(rngs, splits=2, squeeze=True)
    with pytest.raises(ArgumentError, match=r"split_rngs\(graph=False\) found shared"):
        nnx.split_rngs(nnx.List([rngs, rngs]), splits=2, graph=False)


def test_reseed_policies_as_flax():
    flax_nnx = _flax()

    def run(lib, policy):
        rngs = lib.Rngs(params=0).split(3)
        lib.reseed(rngs, params=9, policy=policy)
        return kd(rngs.params.key[...])

    np.testing.assert_array_equal(run(nnx, "match_shape"), run(flax_nnx, "match_shape"))
    with pytest.raises(ArgumentError, match=r"(?s)policy='scalars_only'.*shape \(3,\).*Fix:"):
        run(nnx, "scalars_only")
    with pytest.raises(ArgumentError, match="policy='bad'"):
        run(nnx, "bad")
    calls = []
    rngs = nnx.Rngs(params=0)
    nnx.reseed(rngs, params=1, policy=lambda path, key, shape: calls.append(path) or key)
    assert calls == [("params",)]


def test_backup_keys_and_restore():
    rngs = nnx.Rngs(0, params=1)
    saved = nnx.rnglib.backup_keys(rngs)
    before = {n: kd(rngs[n].key.value) for n in rngs}
    with nnx.split_rngs(rngs, splits=2):
        pass
    rngs.default.key.value = jax.random.key(7)
    nnx.restore_rngs(saved)
    for n in rngs:
        np.testing.assert_array_equal(kd(rngs[n].key.value), before[n])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), splits=st.integers(1, 4), draws=st.integers(0, 3))
def test_split_then_restore_round_trips(seed, splits, draws):
    rngs = nnx.Rngs(seed)
    for _ in range(draws):
        rngs()
    key, count = kd(rngs.default.key.value), int(rngs.default.count.value)
    backups = nnx.split_rngs(rngs, splits=splits)
    assert rngs.default.key.value.shape == (splits,)
    nnx.restore_rngs(backups)
    np.testing.assert_array_equal(kd(rngs.default.key.value), key)
    assert int(rngs.default.count.value) == count + 1


# -- training ---------------------------------------------------------------------------------
def _set_weights(model):
    model.kernel[...] = jnp.arange(4.0).reshape(2, 2)
    model.bias[...] = jnp.array([1.0, -1.0])


def test_ema_takes_flaxs_call_and_averages_the_same():
    flax_nnx = _flax()

    def run(lib):
        model = lib.Linear(2, 2, rngs=lib.Rngs(0))
        _set_weights(model)
        ema = lib.EMA(params=model, decay=0.75, only=lib.Param, graph=None)
        model.kernel[...] = model.kernel[...] + 4.0
        ema.update(updates=model)
        return np.asarray(ema.params["kernel"][...]), ema.filter

    (ours, f1), (theirs, f2) = run(nnx), run(flax_nnx)
    np.testing.assert_allclose(ours, theirs)
    assert f1 is nnx.Param and f2 is flax_nnx.Param


def test_optimizer_and_ema_graph_false_refuse_shared_layers():
    shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    pair = nnx.List([shared, shared])
    with pytest.raises(ArgumentError, match=r"Optimizer\(graph=False\) found shared"):
        nnx.Optimizer(pair, optax.sgd(0.1), wrt=nnx.Param, graph=False)
    with pytest.raises(ArgumentError, match=r"EMA\(graph=False\) found shared"):
        nnx.EMA(pair, 0.9, graph=False)
    opt = nnx.Optimizer(pair, optax.sgd(0.1), graph=True)
    assert int(opt.step.value) == 0


def _metrics_program(lib):
    metrics = lib.MultiMetric(
        accuracy=lib.metrics.Accuracy(),
        loss=lib.metrics.Average("loss"),
        spread=lib.metrics.Welford("loss"),
    )
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = jnp.array([1, 1, 1])
    loss = jnp.array([0.5, 1.5, 2.0])
    metrics.update(logits=logits, labels=labels, loss=loss,
                   mask={"accuracy": jnp.array([True, True, False])})  # fmt: skip
    metrics.update(logits=logits, labels=labels, loss=loss)
    out = metrics.compute()
    return [float(out["accuracy"]), float(out["loss"]), float(out["spread"].mean)]


def test_metrics_keywords_and_per_metric_masks_as_flax():
    flax_nnx = _flax()
    np.testing.assert_allclose(_metrics_program(nnx), _metrics_program(flax_nnx), rtol=1e-6)


def test_accuracy_threshold_and_average_arguments():
    acc = nnx.metrics.Accuracy(0.5)
    acc.update(logits=jnp.array([0.2, 0.7]), labels=jnp.array([0, 1]))
    assert float(acc.compute()) == 1.0
    with pytest.raises(ArgumentError, match=r"Accuracy\(threshold='x'\).*must be a number"):
        nnx.metrics.Accuracy("x")
    assert nnx.metrics.Accuracy(None, "values").argname == "values"


# -- layers -----------------------------------------------------------------------------------
class _Scaled(nnx.Module):
    def __init__(self):
        self.lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))

    def __call__(self, x, *, scale=1.0):
        return self.lin(x) * scale


def test_lora_passes_keywords_to_its_base_module():
    base = _Scaled()
    lora = nnx.LoRA(3, 2, 2, base_module=base, rngs=nnx.Rngs(1))
    x = jnp.ones((4, 3))
    np.testing.assert_allclose(lora(x, scale=2.0), 2.0 * base(x) + lora(x) - base(x), rtol=1e-6)
    with pytest.raises(ArgumentError, match=r"(?s)keyword arguments \['scale'\].*no base_module"):
        nnx.LoRA(3, 2, 2, rngs=nnx.Rngs(1))(x, scale=2.0)


def test_lora_linear_out_sharding():
    layer = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
    mesh = _mesh()
    sharding = NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model"))
    y = jax.jit(lambda x: layer(x, out_sharding=sharding))(jnp.ones((2, 3)))
    np.testing.assert_allclose(y, layer(jnp.ones((2, 3))), rtol=1e-6)
    assert y.sharding.spec == jax.sharding.PartitionSpec(None, "model")


@pytest.mark.parametrize("cls", ["GRUCell", "LSTMCell", "OptimizedLSTMCell"])
def test_cells_take_flaxs_keywords_explicitly(cls):
    cell = getattr(nnx, cls)(
        2, 3, gate_fn=jax.nn.hard_sigmoid, bias_init=nnx.initializers.ones,
        param_dtype=jnp.float16 if cls == "LSTMCell" else jnp.float32, keep_rngs=False,
        rngs=nnx.Rngs(0),
        bias_metadata={"note": "b"},
    )  # fmt: skip
    assert cell.gate_fn is jax.nn.hard_sigmoid
    biases = [v for p, v in nnx.iter_graph(cell) if isinstance(v, nnx.Param) and p[-1] == "bias"]
    assert biases and all(b.note == "b" and b.dtype == cell.param_dtype for b in biases)
    with pytest.raises(TypeError):
        getattr(nnx, cls)(2, 3, rngs=nnx.Rngs(0), no_such_option=1)


def test_lstm_recurrent_default_is_orthogonal_in_float32_then_cast():
    key = jax.random.key(0)
    w = nnx.nn.recurrent.modified_orthogonal(key, (4, 4), jnp.bfloat16)
    ref = nnx.initializers.orthogonal()(key, (4, 4), jnp.float32).astype(jnp.bfloat16)
    assert w.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(w, np.float32), np.asarray(ref, np.float32))
    flax_nnx = _flax()
    theirs = flax_nnx.nn.recurrent.modified_orthogonal(key, (4, 4), jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(w, np.float32), np.asarray(theirs, np.float32))


def test_errors_are_nnx_errors():
    with pytest.raises(NNXError):
        nnx.Param(1.0, ref=True)
