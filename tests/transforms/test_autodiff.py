"""``nnx.grad`` / ``value_and_grad`` / ``vjp`` / ``jvp`` / ``custom_vjp`` / ``remat``: gradients
checked against ``jax.grad`` of the same math written over plain arrays, argnums in every form,
aux outputs, integer state, and write-back of state changed inside."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Counter(nnx.Variable):
    """A custom Variable type (for DiffState filters and integer state)."""


class Net(nnx.Module):
    """y = sum(tanh(x @ w + b) * scale) with a BatchStat and a call counter."""

    def __init__(self):
        self.w = nnx.Param(jnp.arange(6.0).reshape(3, 2) / 10.0)
        self.b = nnx.Param(jnp.array([0.5, -0.5]))
        self.scale = nnx.BatchStat(jnp.array([1.5, 2.0]))
        self.calls = Counter(jnp.array(0))

    def __call__(self, x):
        self.calls.value += 1
        h = jnp.tanh(x @ self.w.value + self.b.value[None, :])
        return jnp.sum(h * self.scale.value[None, :])


def net_math(w, b, scale, x):
    return jnp.sum(jnp.tanh(x @ w + b[None, :]) * scale[None, :])


X = jnp.arange(6.0).reshape(2, 3) / 5.0


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# -- grad -----------------------------------------------------------------------------------
def test_grad_default_is_params_of_arg0_as_state():
    m = Net()
    grads = nnx.grad(lambda m, x: m(x))(m, X)
    assert isinstance(grads, nnx.State)
    ref_w, ref_b = jax.grad(net_math, argnums=(0, 1))(m.w.value, m.b.value, m.scale.value, X)
    assert set(grads.keys()) == {"w", "b"}
    assert isinstance(grads["w"], nnx.Param)
    close(grads["w"].value, ref_w)
    close(grads["b"].value, ref_b)
    # Keyed exactly like nnx.state(model, nnx.Param).
    assert jax.tree.structure(grads) == jax.tree.structure(nnx.state(m, nnx.Param))


def test_grad_writes_back_state_changed_inside():
    m = Net()

    def loss(m, x):
        m.scale.value = m.scale.value * 2.0
        return m(x)

    grads = nnx.grad(loss)(m, X)
    assert int(m.calls.value) == 1
    close(m.scale.value, [3.0, 4.0])
    # The gradient saw the doubled scale.
    ref = jax.grad(net_math)(Net().w.value, Net().b.value, jnp.array([3.0, 4.0]), X)
    close(grads["w"].value, ref)
    nnx.grad(loss)(m, X)
    assert int(m.calls.value) == 2
    # Params are never changed by taking a gradient.
    close(m.w.value, Net().w.value)


def test_value_and_grad_value_matches():
    m = Net()
    loss, grads = nnx.value_and_grad(lambda m, x: m(x))(m, X)
    close(loss, net_math(m.w.value, m.b.value, m.scale.value, X))
    close(grads["b"].value, jax.grad(net_math, 1)(m.w.value, m.b.value, m.scale.value, X))


def test_grad_argnums_int_for_a_plain_array():
    m = Net()
    gx = nnx.grad(lambda m, x: m(x), argnums=1)(m, X)
    close(gx, jax.grad(net_math, 3)(m.w.value, m.b.value, m.scale.value, X))
    assert int(m.calls.value) == 1


def test_grad_argnums_tuple():
    m = Net()
    gm, gx = nnx.grad(lambda m, x: m(x), argnums=(0, 1))(m, X)
    ref_w, ref_x = jax.grad(net_math, (0, 3))(m.w.value, m.b.value, m.scale.value, X)
    close(gm["w"].value, ref_w)
    close(gx, ref_x)


def test_grad_two_modules():
    a, b = Net(), Net()
    b.w.value = b.w.value * 2.0
    ga, gb = nnx.grad(lambda a, b, x: a(x) * b(x), argnums=(0, 1))(a, b, X)
    fa = net_math(a.w.value, a.b.value, a.scale.value, X)
    fb = net_math(b.w.value, b.b.value, b.scale.value, X)
    dfa = jax.grad(net_math)(a.w.value, a.b.value, a.scale.value, X)
    dfb = jax.grad(net_math)(b.w.value, b.b.value, b.scale.value, X)
    close(ga["w"].value, dfa * fb)
    close(gb["w"].value, dfb * fa)


def test_grad_diffstate_batchstat():
    m = Net()
    grads = nnx.grad(lambda m, x: m(x), argnums=nnx.DiffState(0, nnx.BatchStat))(m, X)
    assert set(grads.keys()) == {"scale"}
    assert isinstance(grads["scale"], nnx.BatchStat)
    close(grads["scale"].value, jax.grad(net_math, 2)(m.w.value, m.b.value, m.scale.value, X))


def test_grad_diffstate_custom_variable_type():
    class Temperature(nnx.Variable):
        pass

    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array(2.0))
            self.t = Temperature(jnp.array(3.0))

    m = M()
    grads = nnx.grad(lambda m: m.w.value * m.t.value**2, argnums=nnx.DiffState(0, Temperature))(m)
    assert set(grads.keys()) == {"t"}
    assert isinstance(grads["t"], Temperature)
    close(grads["t"].value, 2 * 2.0 * 3.0)


def test_grad_diffstate_mixed_with_plain_argnum():
    m = Net()
    gs, gx = nnx.grad(
        lambda m, x: m(x), argnums=(nnx.DiffState(0, nnx.Any(nnx.Param, nnx.BatchStat)), 1)
    )(m, X)
    assert set(gs.keys()) == {"w", "b", "scale"}
    ref = jax.grad(net_math, (0, 1, 2, 3))(m.w.value, m.b.value, m.scale.value, X)
    close(gs["w"].value, ref[0])
    close(gs["b"].value, ref[1])
    close(gs["scale"].value, ref[2])
    close(gx, ref[3])


def test_grad_has_aux():
    m = Net()

    def loss(m, x):
        y = m(x)
        return y, {"y": y, "double": 2 * y}

    grads, aux = nnx.grad(loss, has_aux=True)(m, X)
    ref = net_math(Net().w.value, Net().b.value, Net().scale.value, X)
    close(aux["y"], ref)
    close(aux["double"], 2 * ref)
    assert "w" in grads
    (value, aux2), grads2 = nnx.value_and_grad(loss, has_aux=True)(m, X)
    close(value, ref)
    close(aux2["y"], ref)
    close(grads2["w"].value, grads["w"].value)
    assert int(m.calls.value) == 2


def test_grad_aux_can_return_the_module():
    m = Net()
    grads, aux = nnx.grad(lambda m, x: (m(x), m), has_aux=True)(m, X)
    assert aux is m
    assert int(m.calls.value) == 1
    assert "w" in grads


def test_grad_allow_int():
    m = Net()
    grads = nnx.grad(
        lambda m, x: m(x), argnums=nnx.DiffState(0, nnx.Any(nnx.Param, Counter)), allow_int=True
    )(m, X)
    assert set(grads.keys()) == {"w", "b", "calls"}
    assert grads["calls"].value.dtype == jax.dtypes.float0
    with pytest.raises(TypeError):
        nnx.grad(lambda m, x: m(x), argnums=nnx.DiffState(0, nnx.Any(nnx.Param, Counter)))(m, X)


def test_grad_plain_array_arguments_only():
    g = nnx.grad(lambda a, b: jnp.sum(a * b**2), argnums=(0, 1))(jnp.ones((3,)), jnp.arange(3.0))
    close(g[0], jnp.arange(3.0) ** 2)
    close(g[1], 2 * jnp.arange(3.0))


def test_grad_pytree_of_modules_keyed_like_state():
    a, b = Net(), Net()
    tree = {"nets": [a, b]}
    grads = nnx.grad(lambda t, x: sum(n(x) for n in t["nets"]))(tree, X)
    expected = nnx.state(tree, nnx.Param)
    assert jax.tree.structure(grads) == jax.tree.structure(expected)
    ref = jax.grad(net_math)(a.w.value, a.b.value, a.scale.value, X)
    close(grads["nets"][0]["w"].value, ref)
    close(grads["nets"][1]["w"].value, ref)
    assert int(a.calls.value) == 1 and int(b.calls.value) == 1


def test_grad_shared_param_gradients_accumulate():
    shared = nnx.Param(jnp.array(3.0))

    class Holder(nnx.Module):
        def __init__(self):
            self.p = shared

    a, b = Holder(), Holder()
    ga = nnx.grad(lambda a, b: a.p.value * b.p.value)(a, b)
    # a.p and b.p are the same Variable: d(p*p)/dp = 2p, all of it on arg 0's entry.
    close(ga["p"].value, 6.0)


def test_grad_of_a_variable_argument():
    v = nnx.Param(jnp.array(3.0))
    g = nnx.grad(lambda v: v.value**2)(v)
    assert isinstance(g, nnx.Param)  # the gradient of a Variable is a Variable (as in flax)
    close(g.value, 6.0)
    out, vjp_fn = nnx.vjp(lambda v, x: v.value * x, v, jnp.array(2.0))
    close(out, 6.0)
    gv, gx = vjp_fn(jnp.array(1.0))
    close(gv.value, 2.0)
    close(gx, 3.0)


def test_grad_rngs_inside_advance():
    class Noisy(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((3,)))
            self.rngs = nnx.Rngs(noise=0)

        def __call__(self):
            return jnp.sum(self.w.value * jax.random.normal(self.rngs.noise(), (3,)))

    m = Noisy()
    ref_rngs = nnx.Rngs(noise=0)
    for _ in range(2):
        g = nnx.grad(lambda m: m())(m)
        close(g["w"].value, jax.random.normal(ref_rngs.noise(), (3,)))
    assert int(m.rngs.noise.count.value) == 2


def test_grad_inside_jit_writes_back():
    m = Net()

    @nnx.jit
    def step(m, x):
        grads = nnx.grad(lambda m, x: m(x))(m, x)
        m.w.value = m.w.value - 0.1 * grads["w"].value
        return grads

    w0 = m.w.value
    grads = step(m, X)
    ref = jax.grad(net_math)(w0, m.b.value, m.scale.value, X)
    close(grads["w"].value, ref)
    close(m.w.value, w0 - 0.1 * ref)
    assert int(m.calls.value) == 1


# -- vjp / jvp -----------------------------------------------------------------------------
def test_vjp():
    m = Net()
    out, vjp_fn = nnx.vjp(lambda m, x: m(x), m, X)
    close(out, net_math(m.w.value, m.b.value, m.scale.value, X))
    gm, gx = vjp_fn(jnp.array(2.0))
    ref_w, ref_x = jax.grad(net_math, (0, 3))(m.w.value, m.b.value, m.scale.value, X)
    close(gm["w"].value, 2 * ref_w)
    close(gx, 2 * ref_x)
    assert int(m.calls.value) == 1


def test_vjp_has_aux():
    m = Net()
    out, vjp_fn, aux = nnx.vjp(lambda m, x: (m(x), x.sum()), m, X, has_aux=True)
    close(out, net_math(m.w.value, m.b.value, m.scale.value, X))
    close(aux, X.sum())
    gm, _ = vjp_fn(jnp.array(1.0))
    close(gm["b"].value, jax.grad(net_math, 1)(m.w.value, m.b.value, m.scale.value, X))


def test_jvp():
    m = Net()
    tangent = jax.tree.map(jnp.ones_like, nnx.state(m, nnx.Param))
    out, tout = nnx.jvp(lambda m, x: m(x), (m, X), (tangent, jnp.zeros_like(X)))
    ref_out, ref_t = jax.jvp(
        lambda w, b: net_math(w, b, m.scale.value, X),
        (m.w.value, m.b.value),
        (jnp.ones_like(m.w.value), jnp.ones_like(m.b.value)),
    )
    close(out, ref_out)
    close(tout, ref_t)


def test_jvp_writes_back_state_changed_inside():
    m = Net()
    tangent = jax.tree.map(jnp.zeros_like, nnx.state(m, nnx.Param))
    nnx.jvp(lambda m, x: m(x), (m, X), (tangent, jnp.ones_like(X)))
    assert int(m.calls.value) == 1
    assert not isinstance(m.calls.value, jax.core.Tracer)


def test_jvp_has_aux():
    m = Net()
    tangent = jax.tree.map(jnp.zeros_like, nnx.state(m, nnx.Param))
    out, tout, aux = nnx.jvp(
        lambda m, x: (m(x), {"n": m.calls.value}), (m, X), (tangent, jnp.ones_like(X)), has_aux=True
    )
    ref_out, ref_t = jax.jvp(
        lambda x: net_math(m.w.value, m.b.value, m.scale.value, x), (X,), (jnp.ones_like(X),)
    )
    close(out, ref_out)
    close(tout, ref_t)
    assert int(aux["n"]) == 1
    assert int(m.calls.value) == 1


# -- custom_vjp -----------------------------------------------------------------------------
def test_custom_vjp_rule_is_used():
    class Lin(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array(2.0))

    @nnx.custom_vjp
    def f(m, x):
        return m.w.value * x

    def fwd(m, x):
        return f(m, x), (m.w.value, x)

    def bwd(res, g):
        w, x = res
        # A deliberately "wrong" rule, so the test can tell it was used.
        return nnx.State({"w": nnx.Param(10.0 * g * x)}), 7.0 * g * w

    f.defvjp(fwd, bwd)
    m = Lin()
    close(f(m, jnp.array(3.0)), 6.0)
    gm, gx = nnx.grad(lambda m, x: f(m, x), argnums=(0, 1))(m, jnp.array(3.0))
    close(gm["w"].value, 30.0)
    close(gx, 14.0)
    # Through jit too.
    gm = nnx.jit(nnx.grad(lambda m, x: f(m, x)))(m, jnp.array(3.0))
    close(gm["w"].value, 30.0)


def test_custom_vjp_without_rule_raises():
    @nnx.custom_vjp
    def f(x):
        return x

    with pytest.raises(nnx.errors.TransformError, match="defvjp"):
        f(jnp.array(1.0))


def test_custom_vjp_state_change_is_rejected_and_nothing_is_lost():
    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array(2.0))
            self.calls = Counter(jnp.array(0))

    @nnx.custom_vjp
    def f(m, x):
        m.calls.value += 1
        return m.w.value * x

    f.defvjp(lambda m, x: (f(m, x), x), lambda res, g: (nnx.State({"w": nnx.Param(g)}), g))
    m = M()
    with pytest.raises(
        nnx.errors.TransformError, match=r"(?s)f assigned to 1 Variable.*calls.*Fix"
    ):
        f(m, jnp.array(3.0))
    assert int(m.calls.value) == 0
    with pytest.raises(nnx.errors.TransformError, match="read-only"):
        nnx.grad(lambda m, x: f(m, x))(m, jnp.array(3.0))
    assert int(m.calls.value) == 0 and float(m.w.value) == 2.0


def test_custom_vjp_structural_change_is_rejected():
    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array(2.0))

    @nnx.custom_vjp
    def f(m, x):
        m.extra = nnx.Param(x)
        return m.w.value * x

    f.defvjp(lambda m, x: (f(m, x), x), lambda res, g: (nnx.State({"w": nnx.Param(g)}), g))
    m = M()
    with pytest.raises(nnx.errors.TransformError, match="changed the structure"):
        f(m, jnp.array(3.0))
    assert not hasattr(m, "extra")


# -- remat ----------------------------------------------------------------------------------
def test_remat_gradient_and_state_write_back():
    m = Net()

    def loss(m, x):
        return nnx.remat(lambda m, x: m(x))(m, x)

    grads = nnx.grad(loss)(m, X)
    close(grads["w"].value, jax.grad(net_math)(m.w.value, m.b.value, m.scale.value, X))
    assert int(m.calls.value) == 1
    # The rematerialised call is really in the program.
    text = str(nnx.make_jaxpr(lambda m, x: nnx.grad(loss)(m, x)["w"].value)(Net(), X))
    assert "remat" in text or "checkpoint" in text


def test_remat_policy_and_prevent_cse_reach_jax():
    m = Net()
    policy = jax.checkpoint_policies.nothing_saveable

    def loss(m, x):
        return nnx.remat(lambda m, x: m(x), policy=policy, prevent_cse=False)(m, x)

    def default_loss(m, x):
        return nnx.remat(lambda m, x: m(x))(m, x)

    text = str(nnx.make_jaxpr(lambda m, x: nnx.grad(loss)(m, x)["w"].value)(m, X))
    assert "prevent_cse=False" in text
    assert "nothing_saveable" in text
    default = str(nnx.make_jaxpr(lambda m, x: nnx.grad(default_loss)(m, x)["w"].value)(m, X))
    assert "prevent_cse=True" in default
    assert "nothing_saveable" not in default
    assert int(m.calls.value) == 0  # make_jaxpr only traces
    grads = nnx.grad(loss)(m, X)
    close(grads["w"].value, jax.grad(net_math)(m.w.value, m.b.value, m.scale.value, X))
    assert int(m.calls.value) == 1


def test_remat_static_argnums():
    m = Net()

    @nnx.remat(static_argnums=(2,))
    def f(m, x, n_layers):
        y = x
        for _ in range(n_layers):  # Python loop: needs a concrete int
            y = jnp.tanh(y)
        return m(y)

    grads = nnx.grad(lambda m, x: f(m, x, 3))(m, X)
    y = jnp.tanh(jnp.tanh(jnp.tanh(X)))
    close(grads["w"].value, jax.grad(net_math)(m.w.value, m.b.value, m.scale.value, y))
    assert int(m.calls.value) == 1


def test_remat_as_method_style_decorator_on_module_call():
    class Block(nnx.Module):
        def __init__(self):
            self.inner = Net()

        @nnx.remat
        def __call__(self, x):
            return self.inner(x)

    b = Block()
    grads = nnx.grad(lambda b, x: b(x))(b, X)
    ref = jax.grad(net_math)(b.inner.w.value, b.inner.b.value, b.inner.scale.value, X)
    close(grads["inner"]["w"].value, ref)
    assert int(b.inner.calls.value) == 1


def test_grad_of_a_plain_pytree_of_variables_differentiates_all_of_them_as_flax_does():
    # A State or dict of Variables is a plain pytree (no graph node holds them): flax
    # differentiates every Variable in it, so its documented recipe of gradients with respect
    # to a State of Perturbations gives non-empty gradients. Variables inside a Module in the
    # same argument keep the Param default.
    flax_nnx = pytest.importorskip("flax.nnx")

    def run(lib):
        class M(lib.Module):
            def __init__(self):
                self.p = lib.Perturbation(jnp.ones(2))
                self.w = lib.Param(jnp.full(2, 2.0))

        st = lib.State({"a": lib.Perturbation(jnp.ones(2)), "b": lib.BatchStat(jnp.ones(2))})

        def loss(x, s, m):
            return (s["a"][...] * 3 + s["b"][...] * x + m[0].p[...] * m[0].w[...]).sum()

        g_state, g_list = lib.grad(loss, argnums=(1, 2))(2.0, st, [M()])
        return (
            {k: np.asarray(v[...]) for k, v in g_state.items()},
            {k: np.asarray(v[...]) for k, v in g_list[0].items()},
        )

    ours, theirs = run(nnx), run(flax_nnx)
    assert ours[0].keys() == theirs[0].keys() == {"a", "b"}
    assert ours[1].keys() == theirs[1].keys() == {"w"}
    for a, b in zip(ours, theirs, strict=True):
        for k in a:
            np.testing.assert_allclose(a[k], b[k])
