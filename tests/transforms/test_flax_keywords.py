"""flax.nnx 0.12.8's keywords on the transforms: signatures, ``graph=`` / ``graph_updates=``,
``reduce_axes``, ``nondiff_argnums``, ``jit_partial``, ``transform_metadata``."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnx
from nnx._graph_mode import set_graph_mode

NAMES = [
    "jit", "vmap", "pmap", "scan", "grad", "value_and_grad", "vjp", "jvp", "remat",
    "custom_vjp", "cond", "switch", "fori_loop", "while_loop", "eval_shape", "checkify",
    "make_jaxpr", "shard_map", "cached_partial", "jit_partial", "get_abstract_model",
    "transform_metadata",
]  # fmt: skip


def _default(value):
    """flax's Missing sentinel counts as None; empty mappings (FrozenDict / MappingProxy)
    as equal."""
    if type(value).__name__ == "Missing" or value is getattr(
        __import__("flax.typing", fromlist=["Missing"]), "Missing", object()
    ):
        return None
    if hasattr(value, "items") and not value:
        return "{}"
    if isinstance(value, tuple):
        return tuple(_default(v) for v in value)
    if getattr(value, "__name__", None) == "Carry" or type(value).__name__ == "_CarryType":
        return "Carry"  # each library's own scan-carry marker
    return value


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_flax(name):
    flax_nnx = pytest.importorskip("flax.nnx")
    ours = inspect.signature(getattr(nnx, name)).parameters
    theirs = inspect.signature(getattr(flax_nnx, name)).parameters
    assert list(ours) == list(theirs)
    for key in ours:
        assert ours[key].kind == theirs[key].kind, key
        assert _default(ours[key].default) == _default(theirs[key].default), key


class M(nnx.Module):
    def __init__(self, n=2):
        self.w = nnx.Param(jnp.ones(n))
        self.c = nnx.BatchStat(jnp.zeros(()))


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as err:
        return ("error", type(err).__name__)


def _programs(lib):
    """The same small programs on flax.nnx or nnx, each (label, thunk)."""

    class Mod(lib.Module):
        def __init__(self):
            self.w = lib.Param(jnp.ones(2))
            self.c = lib.BatchStat(jnp.zeros(()))

    def shared():
        lin = lib.Linear(2, 2, rngs=lib.Rngs(0))
        return lib.List([lin, lin])

    def bump(m):
        m.c[...] += 1
        return m.w[...].sum()

    progs = []
    for graph, updates in [(False, None), (True, False), (None, None)]:
        kw = dict(graph=graph, graph_updates=updates)
        tag = f"graph={graph},updates={updates}"
        progs += [
            (f"jit shared {tag}", lambda kw=kw: float(
                lib.jit(lambda p: p[0].kernel[...].sum(), **kw)(shared()))),
            (f"jit returns input Variable {tag}", lambda kw=kw: lib.jit(
                lambda m: m.w, **kw)(Mod()) is not None),
            (f"jit value update {tag}", lambda kw=kw: (lambda m: (
                lib.jit(bump, **kw)(m), float(m.c[...]))[1])(Mod())),
            (f"grad returns input Variable {tag}", lambda kw=kw: lib.grad(
                lambda m: (m.w[...].sum(), m.w), has_aux=True, **kw)(Mod()) is not None),
            (f"vmap shared {tag}", lambda kw=kw: lib.vmap(
                lambda p, x: x, in_axes=(None, 0), **kw)(shared(), jnp.ones(3)).shape),
            (f"remat value {tag}", lambda kw=kw: float(lib.remat(bump, **kw)(Mod()))),
            (f"cond returns input Variable {tag}", lambda kw=kw: lib.cond(
                True, lambda m: m.w, lambda m: m.w, Mod(), **kw) is not None),
        ]
    progs += [
        ("grad reduce_axes", lambda: lib.grad(
            lambda m: m.w[...].sum(), reduce_axes=("i",))(Mod())),
        ("value_and_grad reduce_axes", lambda: lib.value_and_grad(
            lambda m: m.w[...].sum(), reduce_axes=("i",))),
        ("cached_partial tree", lambda: lib.cached_partial(
            lib.jit(lambda m: 1), Mod(), graph=False)),
    ]
    return progs


def test_same_outcomes_as_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    ours, theirs = _programs(nnx), _programs(flax_nnx)
    for (label, mine), (_, ref) in zip(ours, theirs, strict=True):
        a, b = _outcome(mine), _outcome(ref)
        assert a[0] == b[0], (label, a, b)
        if a[0] == "ok":
            assert a[1] == b[1], (label, a, b)


def test_graph_false_message_names_paths_and_fix():
    lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(nnx.errors.ArgumentError, match=r"nnx\.jit\(graph=False\).*\n  "
                       r"args\[0\]\[0\] = args\[0\]\[1\]\nFix: "):
        nnx.jit(lambda p: 1, graph=False)(nnx.List([lin, lin]))


def test_graph_false_refuses_cycles():
    m = M()
    m.me = m
    with pytest.raises(nnx.errors.ArgumentError, match=r"args\[0\] = args\[0\]\.me"):
        nnx.vmap(lambda m: 1, in_axes=None, axis_size=2, graph=False)(m)


def test_default_follows_set_graph_mode_at_decoration():
    lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with set_graph_mode(False):
        f = nnx.jit(lambda p: p[0].kernel[...].sum())
    g = nnx.jit(lambda p: p[0].kernel[...].sum())
    pair = nnx.List([lin, lin])
    with pytest.raises(nnx.errors.ArgumentError):
        f(pair)
    with set_graph_mode(False):
        assert g(pair).shape == ()  # resolved when g was made: graph mode


@pytest.mark.parametrize(
    "change, word",
    [
        (lambda m: setattr(m, "extra", nnx.Param(jnp.zeros(1))), r"args\[0\]\.extra \(added; "
         r"args\[0\] is a M\)"),
        (lambda m: delattr(m, "c"), r"args\[0\]\.c \(removed"),
        (lambda m: setattr(m, "w", nnx.Param(jnp.zeros(2))), r"args\[0\]\.w \(replaced"),
    ],
)
def test_graph_updates_false_refuses_structure_change(change, word):
    m = M()
    before = nnx.state(m)

    def f(m):
        m.c[...] += 1
        change(m)

    for transform in (nnx.jit, nnx.remat):
        with pytest.raises(nnx.errors.TransformError, match=word + r".*\n.*Fix: drop "):
            transform(f, graph_updates=False)(m)
    assert not hasattr(m, "extra") and hasattr(m, "c")
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), nnx.state(m), before))


def test_graph_updates_false_refuses_returned_input_variable():
    with pytest.raises(nnx.errors.TransformError, match=r"returned Variables of its inputs"
                       r":\n  out\[1\]\n.*\nFix: "):
        nnx.jit(lambda m: (1, m.w), graph_updates=False)(M())


def test_graph_updates_false_keeps_value_updates_and_sharing():
    m = M()
    pair = nnx.List([m, m])  # sharing is fine in graph mode, as in flax

    def f(p):
        p[0].c[...] += 1

    nnx.jit(f, graph_updates=False)(pair)
    nnx.vmap(f, in_axes=None, axis_size=2, graph_updates=False)(pair)
    assert float(m.c[...]) == 2.0


def test_scan_graph_updates_false_allows_returning_carry():
    def body(m, x):
        m.c[...] += x
        return m, x

    m = M()
    out, _ = nnx.scan(body, graph_updates=False)(m, jnp.arange(3.0))
    assert out is m and float(m.c[...]) == 3.0


def test_reduce_axes_error():
    with pytest.raises(NotImplementedError, match=r"reduce_axes.*\nFix: "):
        nnx.grad(lambda m: 1.0, reduce_axes=("i",))
    with pytest.raises(nnx.errors.NNXError):
        nnx.vjp(lambda x: x, 1.0, reduce_axes=("i",))


def test_custom_vjp_nondiff_argnums_matches_jax():
    @jax.custom_vjp
    def ref(x, n):
        return x * n

    ref_rule = (lambda x, n: (x * n, x), lambda res, g: (g * 100.0, None))
    ref.defvjp(*ref_rule)

    @nnx.custom_vjp(nondiff_argnums=(1,))
    def f(x, n):
        return x * n

    f.defvjp(lambda x, n: (f(x, n), x), lambda n, res, g: (g * n * 10.0,))
    assert float(jax.grad(f)(2.0, 3.0)) == 30.0

    class Lin(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array(2.0))
            self.s = nnx.Param(jnp.array(5.0))

    @nnx.custom_vjp(nondiff_argnums=(nnx.DiffState(0, nnx.PathContains("w")),))
    def g(m, x):
        return m.w[...] * m.s[...] * x

    g.defvjp(lambda m, x: (g(m, x), x),
             lambda res, ct: (nnx.State({"w": nnx.Param(ct * res)}), ct))
    grads = nnx.grad(g, argnums=nnx.DiffState(0, nnx.PathContains("w")))(Lin(), 3.0)
    assert float(grads["w"][...]) == 3.0


def test_custom_vjp_int_nondiff_graph_argument_is_refused():
    @nnx.custom_vjp(nondiff_argnums=(0,))
    def f(m, x):
        return x

    f.defvjp(lambda m, x: (x, None), lambda m, res, g: (g,))
    with pytest.raises(nnx.errors.TransformError, match=r"argument 0 is a graph object[\s\S]*Fix:"):
        f(M(), 1.0)


def test_jit_partial_options_and_updates():
    m = M()

    def step(m, k, x):
        m.c[...] += k
        return x * m.w[...]

    fn = nnx.jit_partial(step, m, static_argnums=1)
    assert fn(2, jnp.ones(2)).tolist() == [1.0, 1.0]
    assert float(m.c[...]) == 2.0
    lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(nnx.errors.ArgumentError, match=r"nnx\.jit_partial\(graph=False\)"):
        nnx.jit_partial(lambda p: 1, nnx.List([lin, lin]), graph=False)


def test_make_jaxpr_static_argnums_as_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    ours = nnx.make_jaxpr(lambda x, n: x * n, static_argnums=1)(jnp.ones(2), 3.0)
    theirs = flax_nnx.make_jaxpr(lambda x, n: x * n, static_argnums=1, graph_updates=False)(
        jnp.ones(2), 3.0
    )
    assert len(ours.jaxpr.invars) == len(theirs.jaxpr.invars) == 1


def _metadata_run(lib):
    v = lib.Param(jnp.ones((3, 4)), out_sharding=("layers", None))
    seen = []

    @lib.transform_metadata(in_axes=0, out_axes=0, partition="layers")
    def f(v):
        seen.append(tuple(v.get_metadata()["out_sharding"]))
        v[...] = v[...] * 2
        return lib.Param(jnp.zeros(4), out_sharding=(None,))

    out = f(v)
    return (
        seen[0],
        tuple(v.get_metadata()["out_sharding"]),
        float(v[...].sum()),
        tuple(out.get_metadata()["out_sharding"]),
    )


def test_transform_metadata_as_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    mesh = jax.make_mesh((1,), ("layers",), devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        assert _metadata_run(nnx) == _metadata_run(flax_nnx)


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    scale=st.floats(-2, 2, allow_nan=False),
)
def test_jit_graph_false_equals_default_without_sharing(widths, scale):
    def build():
        return nnx.List([nnx.Linear(w, 2, rngs=nnx.Rngs(i)) for i, w in enumerate(widths)])

    def f(layers, s):
        total = 0.0
        for layer in layers:
            layer.bias[...] += s
            total = total + layer(jnp.ones((1, layer.in_features))).sum()
        return total

    a, b = build(), build()
    out_a = nnx.jit(f)(a, scale)
    out_b = nnx.jit(f, graph=False)(b, scale)
    assert float(out_a) == float(out_b)
    same = jax.tree.map(lambda x, y: bool((x == y).all()), nnx.state(a), nnx.state(b))
    assert all(jax.tree.leaves(same))
