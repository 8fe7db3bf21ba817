"""Mixed precision: Policy parsing, apply_policy over whole models and per layer type, a
bfloat16-compute train step with float32 master weights, and dynamic loss scaling that skips
non-finite steps without touching the model or the optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx

Policy = nnx.Policy
scaled_update = nnx.training.scaled_update
F32, BF16, F16 = jnp.dtype("float32"), jnp.dtype("bfloat16"), jnp.dtype("float16")


class Head(nnx.Module):
    """A custom layer type with the usual dtype attributes and one Param."""

    def __init__(self, n: int, *, dtype=None, param_dtype=jnp.float32):
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.scale = nnx.Param(jnp.ones((n,), param_dtype))

    def __call__(self, x):
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * self.scale.value.astype(dtype)[None, :]


class Plain(nnx.Module):
    """A custom module without dtype attributes: only its Params are cast."""

    def __init__(self):
        self.offset = nnx.Param(jnp.zeros((2,)))
        self.count = nnx.BatchStat(jnp.zeros((), jnp.float32))
        self.steps = nnx.Variable(jnp.array(0))


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.l2 = nnx.Linear(8, 2, rngs=rngs)
        self.head = Head(2)
        self.plain = Plain()

    def __call__(self, x):
        h = jax.nn.relu(self.l1(x))
        self.sow(nnx.Intermediate, "hidden", h)
        n = self.norm(h)
        self.sow(nnx.Intermediate, "normed", n)
        return self.head(self.l2(n)) + self.plain.offset.value.astype(F32)[None, :]


X = jax.random.normal(jax.random.key(1), (16, 4))
Y = jax.random.normal(jax.random.key(2), (16, 2))


# -- Policy -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("params=float32,compute=bfloat16,output=float32", (F32, BF16, F32)),
        ("p=f32,c=f16,o=f32", (F32, F16, F32)),
        ("compute=bf16", (F32, BF16, None)),
        (" Params = float32 , Output = bf16 ", (F32, None, BF16)),
        ("bfloat16", (BF16, BF16, BF16)),
    ],
)
def test_policy_from_string(spec, expected):
    p = Policy.from_string(spec)
    assert (p.param_dtype, p.compute_dtype, p.output_dtype) == expected


def test_policy_from_string_errors_teach():
    with pytest.raises(nnx.NNXError, match=r"'weights=f32'.*roles are params, compute"):
        Policy.from_string("weights=f32")
    with pytest.raises(nnx.NNXError, match=r"'bf17' is not a dtype.*p=f32,c=bf16"):
        Policy.from_string("p=bf17")


def test_policy_casts_only_floating_leaves():
    p = Policy(F32, BF16, F16)
    tree = {"x": jnp.ones(2), "i": jnp.arange(2), "f": 1.5}
    out = p.cast_to_compute(tree)
    assert out["x"].dtype == BF16 and out["i"].dtype == jnp.int32 and out["f"].dtype == BF16
    assert p.cast_to_output(tree)["x"].dtype == F16
    assert Policy(compute_dtype=None).cast_to_compute(tree) is tree
    assert hash(p) == hash(Policy("float32", "bfloat16", "float16"))


# -- apply_policy -----------------------------------------------------------------------------
def test_apply_policy_sets_attributes_and_casts_params_per_layer_type():
    net = Net(nnx.Rngs(0))
    policy = Policy(param_dtype=BF16, compute_dtype=BF16)
    keep_f32 = Policy(param_dtype=F32, compute_dtype=F32)
    out = nnx.apply_policy(net, policy, overrides={nnx.LayerNorm: keep_f32, Head: keep_f32})
    assert out is net
    assert (net.l1.dtype, net.l1.param_dtype) == (BF16, BF16)
    assert net.l1.kernel.value.dtype == BF16 and net.l2.bias.value.dtype == BF16
    assert (net.norm.dtype, net.norm.param_dtype) == (F32, F32)
    assert net.norm.scale.value.dtype == F32
    assert net.head.dtype == F32 and net.head.scale.value.dtype == F32
    # a module without dtype attributes: Params cast, other Variables untouched
    assert net.plain.offset.value.dtype == BF16
    assert net.plain.count.value.dtype == F32 and net.plain.steps.value.dtype == jnp.int32
    assert "dtype" not in vars(net)  # no attribute invented


def test_overrides_pick_the_most_specific_class():
    class SpecialLinear(nnx.Linear):
        pass

    net = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), SpecialLinear(2, 2, rngs=nnx.Rngs(1)))
    nnx.apply_policy(
        net,
        Policy(compute_dtype=F16),
        overrides={
            nnx.Linear: Policy(compute_dtype=BF16),
            SpecialLinear: Policy(compute_dtype=F32),
        },
    )
    assert net.layers[0].dtype == BF16 and net.layers[1].dtype == F32


def test_none_leaves_a_role_alone():
    layer = nnx.Linear(2, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    nnx.apply_policy(layer, Policy(param_dtype=None, compute_dtype=None))
    assert layer.dtype == BF16 and layer.kernel.value.dtype == F32
    nnx.apply_policy(layer, Policy(param_dtype=F16))
    assert layer.dtype == BF16 and layer.kernel.value.dtype == F16 and layer.param_dtype == F16


def test_lazy_layers_create_params_in_the_policy_dtype():
    layer = nnx.Linear(None, 3, rngs=nnx.Rngs(0))
    nnx.apply_policy(layer, Policy(param_dtype=BF16, compute_dtype=BF16))
    layer(jnp.ones((1, 5)))
    assert layer.kernel.value.dtype == BF16


def test_apply_policy_errors_teach():
    net = Net(nnx.Rngs(0))
    with pytest.raises(nnx.NNXError, match=r"overrides maps layer classes to Policies"):
        nnx.apply_policy(net, Policy(), overrides={"Linear": Policy()})
    with pytest.raises(nnx.NNXError, match=r"expected a Policy, got 'bf16'"):
        nnx.apply_policy(net, "bf16")


def test_bfloat16_compute_with_float32_master_weights_trains():
    net = Net(nnx.Rngs(0))
    policy = Policy.from_string("params=float32,compute=bfloat16,output=float32")
    nnx.apply_policy(net, policy, overrides={nnx.LayerNorm: Policy(F32, F32, F32)})
    optimizer = nnx.Optimizer(net, optax.adam(3e-2))

    def loss_fn(model):
        return jnp.mean((policy.cast_to_output(model(X)) - Y) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        nnx.pop(model, nnx.Intermediate)
        return loss

    jaxpr = str(nnx.make_jaxpr(train_step)(net, optimizer))
    assert "bf16" in jaxpr and "dot_general" in jaxpr

    losses = [float(train_step(net, optimizer)) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0]
    assert all(v.value.dtype == F32 for _, v in nnx.state(net, nnx.Param).flat_state())
    opt_arrays = [v.value for _, v in nnx.state(optimizer.opt_state).flat_state()]
    assert all(a.dtype == F32 for a in opt_arrays if a.ndim)  # float32 moments too

    @nnx.jit
    def activations(model):
        y = model(X)
        return y, nnx.pop(model, nnx.Intermediate)

    y, inter = activations(net)
    assert inter["hidden"].value[0].dtype == BF16  # Linear computes in bf16
    assert inter["normed"].value[0].dtype == F32  # the LayerNorm override computes in f32
    assert y.dtype == F32 and policy.cast_to_output(y).dtype == F32


# -- dynamic loss scaling ---------------------------------------------------------------------
def test_scale_unscale_and_adjust_rules():
    ls = nnx.DynamicLossScale(8.0, growth_interval=3, factor=2.0, min_scale=2.0)
    assert ls.scale_loss(jnp.asarray(1.5, F16)).dtype == F32  # no float16 overflow here
    assert float(ls.scale_loss(jnp.asarray(1.5, F16))) == 12.0
    grads = {"a": jnp.array([8.0, 16.0], F16), "n": jnp.array([3])}
    unscaled = ls.unscale(grads)
    assert unscaled["a"].dtype == F16 and unscaled["a"].tolist() == [1.0, 2.0]
    assert unscaled["n"].tolist() == [3]
    history = []
    for finite in [True, True, True, True, False, False, False, True]:
        ls.adjust(jnp.asarray(finite))
        history.append((float(ls.scale.value), int(ls.good_steps.value)))
    assert history == [
        (8.0, 1), (8.0, 2), (16.0, 0), (16.0, 1),  # grows after 3 finite steps
        (8.0, 0), (4.0, 0), (2.0, 0),  # backs off, not below min_scale...
        (2.0, 1),
    ]  # fmt: skip
    ls.adjust(False)
    assert float(ls.scale.value) == 2.0


def test_loss_scale_state_is_variables_and_checkpoints():
    ls = nnx.DynamicLossScale(2.0**4)
    assert {type(v) for _, v in nnx.state(ls).flat_state()} == {nnx.training.LossScaleState}
    saved = nnx.state(ls)
    ls.adjust(False)
    nnx.update(ls, saved)
    assert float(ls.scale.value) == 16.0
    graphdef, state = nnx.split(ls)
    assert float(nnx.merge(graphdef, state).scale.value) == 16.0


def test_loss_scale_constructor_checks():
    with pytest.raises(nnx.NNXError, match=r"needs factor > 1"):
        nnx.DynamicLossScale(2.0, factor=1.0)
    with pytest.raises(nnx.NNXError, match=r"min_scale <= scale"):
        nnx.DynamicLossScale(2.0, min_scale=4.0)


def all_values(obj, *filters):
    return [np.array(v.value) for _, v in nnx.state(obj, *filters).flat_state()]


@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan, -jnp.inf])
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_non_finite_gradients_skip_the_step_and_back_off(bad, jit):
    model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    reference = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    ref_optimizer = nnx.Optimizer(reference, optax.adam(1e-2))
    loss_scale = nnx.DynamicLossScale(2.0**10, growth_interval=2)

    def step(model, optimizer, loss_scale, poison):
        loss_fn = lambda m: loss_scale.scale_loss(jnp.mean((m(X) - Y[:, :2]) ** 2))
        grads = nnx.grad(loss_fn)(model)
        grads["kernel"].value = grads["kernel"].value.at[0, 0].add(poison)
        return scaled_update(optimizer, model, grads, loss_scale)

    if jit:
        step = nnx.jit(step)
    ref_grads = lambda m: nnx.grad(lambda m: jnp.mean((m(X) - Y[:, :2]) ** 2))(m)

    assert bool(step(model, optimizer, loss_scale, 0.0))
    ref_optimizer.update(reference, ref_grads(reference))
    params, opt_values = all_values(model, nnx.Param), all_values(optimizer, nnx.OptState)

    applied = step(model, optimizer, loss_scale, bad)
    assert not bool(applied)
    for before, after in zip(params, all_values(model, nnx.Param), strict=True):
        np.testing.assert_array_equal(before, after)
        assert np.isfinite(after).all()
    for before, after in zip(opt_values, all_values(optimizer, nnx.OptState), strict=True):
        np.testing.assert_array_equal(before, after)
    assert int(optimizer.step.value) == 1
    assert float(loss_scale.scale.value) == 2.0**9 and int(loss_scale.good_steps.value) == 0

    # training resumes as if the bad step never happened; the scale grows after 2 good steps
    for _ in range(2):
        assert bool(step(model, optimizer, loss_scale, 0.0))
        ref_optimizer.update(reference, ref_grads(reference))
    for got, want in zip(
        all_values(model, nnx.Param), all_values(reference, nnx.Param), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert int(optimizer.step.value) == 3
    assert float(loss_scale.scale.value) == 2.0**10


def test_float16_training_with_dynamic_loss_scale():
    net = nnx.Sequential(nnx.Linear(4, 16, rngs=nnx.Rngs(0)), jax.nn.relu,
                         nnx.Linear(16, 2, rngs=nnx.Rngs(1)))  # fmt: skip
    policy = Policy(param_dtype=F32, compute_dtype=F16, output_dtype=F32)
    nnx.apply_policy(net, policy)
    optimizer = nnx.Optimizer(net, optax.adam(2e-2))
    loss_scale = nnx.DynamicLossScale(2.0**15, growth_interval=5)

    @nnx.jit
    def train_step(model, optimizer, loss_scale):
        def loss_fn(model):
            loss = jnp.mean((policy.cast_to_output(model(X)) - Y) ** 2)
            return loss_scale.scale_loss(loss), loss

        grads, loss = nnx.grad(loss_fn, has_aux=True)(model)
        return loss, scaled_update(optimizer, model, grads, loss_scale)

    losses, applied = zip(*[train_step(net, optimizer, loss_scale) for _ in range(20)], strict=True)
    assert float(losses[-1]) < 0.7 * float(losses[0])
    assert net.layers[0].kernel.value.dtype == F32
    assert int(optimizer.step.value) == sum(bool(a) for a in applied) > 10
    assert np.isfinite(float(loss_scale.scale.value))
