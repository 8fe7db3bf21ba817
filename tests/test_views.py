"""nnx.view, nnx.view_info, nnx.with_attributes and nnx.capture, against flax.nnx on the same
programs where flax is installed; a property: a view never changes its original and shares its
Variables."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnx


def _block_cls(lib):
    class Block(lib.Module):
        def __init__(self, rngs):
            self.linear = lib.Linear(2, 3, rngs=rngs)
            self.dropout = lib.Dropout(0.5)
            self.batch_norm = lib.BatchNorm(3, rngs=rngs)

        def __call__(self, x):
            return self.dropout(self.batch_norm(self.linear(x)))

    return Block


def _modes(block):
    return block.dropout.deterministic, block.batch_norm.use_running_average


def _libs():
    flax_nnx = pytest.importorskip("flax.nnx")
    return [nnx, flax_nnx]


# -- view ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs", [dict(deterministic=True, use_running_average=True), dict(deterministic=True)]
)
@pytest.mark.parametrize("only", ["all", "dropout"])
def test_view_same_modes_as_flax(kwargs, only):
    results = []
    for lib in _libs():
        block = _block_cls(lib)(lib.Rngs(0))
        extra = {"only": lib.Dropout} if only == "dropout" else {}
        try:
            new = lib.view(block, **extra, **kwargs)
        except ValueError:
            results.append("ValueError")
            continue
        results.append((
            _modes(new),
            _modes(block),
            new is block,
            new.linear is block.linear,
            new.linear.kernel is block.linear.kernel,
        ))
    assert results[0] == results[1]


def test_view_shares_variables_so_training_the_view_trains_the_original():
    block = _block_cls(nnx)(nnx.Rngs(0))
    train_view = nnx.view(block, deterministic=True)
    train_view.linear.kernel.value = jnp.zeros((2, 3))
    np.testing.assert_array_equal(block.linear.kernel.value, 0.0)
    ev = nnx.view(block, deterministic=True, use_running_average=True)
    x = jnp.ones((4, 2))
    np.testing.assert_array_equal(ev(x), ev(x))  # deterministic: no dropout draws
    assert _modes(block) == (False, False)


def test_view_calls_set_view_with_the_keywords_it_takes_like_flax():
    results = []
    for lib in _libs():
        calls = []

        class Named(lib.Module):
            def __init__(self):
                self.mode = "a"

            def set_view(self, mode: str | None = None, calls=calls):
                """Sets the mode.

                Args:
                  mode: the new mode.
                """
                calls.append(("named", mode))
                if mode is not None:
                    self.mode = mode

        class Catchall(lib.Module):
            def __init__(self):
                self.inner = Named()

            def set_view(self, calls=calls, **kwargs):
                calls.append(("catchall", tuple(sorted(kwargs))))

        new = lib.view(Catchall(), mode="b", other=1)
        results.append((new.inner.mode, calls))
    assert results[0] == results[1]


def test_view_unknown_keyword_raises_and_leaves_the_model_unchanged():
    block = _block_cls(nnx)(nnx.Rngs(0))
    with pytest.raises(nnx.errors.AttributeNotFoundError, match=r"(?s)no selected module takes "
                       r"\['foo'\].*model is unchanged.*Fix: check the spelling") as info:
        nnx.view(block, deterministic=True, foo=1)
    assert isinstance(info.value, ValueError)  # flax raises ValueError
    assert "Dropout: deterministic" in str(info.value)
    assert _modes(block) == (False, False)
    assert nnx.view(block, foo=1, raise_if_not_found=False).dropout.deterministic is False


def test_view_graph_false_refuses_shared_references():
    shared = nnx.Dropout(0.5)
    pair = nnx.List([shared, shared])
    with pytest.raises(nnx.errors.ArgumentError, match=r"nnx.view\(graph=False\) found shared"):
        nnx.view(pair, graph=False, deterministic=True)
    new = nnx.view(pair, deterministic=True)
    assert new[0] is new[1] and new[0] is not shared and new[0].deterministic


def test_view_on_attention_decode():
    mha = nnx.MultiHeadAttention(2, 4, rngs=nnx.Rngs(0), decode=False)
    dec = nnx.view(mha, decode=True, batch_size=1, max_length=3)
    assert dec.decode and not mha.decode
    assert dec.cached_key is not None and mha.cached_key is None


# -- view_info -----------------------------------------------------------------------------
def test_view_info_matches_flax_for_a_documented_set_view():
    outputs = []
    for lib in _libs():

        class Custom(lib.Module):
            def __init__(self):
                self.flag = False

            def set_view(self, flag: bool | None = None, size: int = 3):
                """Sets the view.

                Args:
                  flag: if True, turns the flag on
                    for every call.
                  size: a size.
                """

        class Undocumented(lib.Module):
            def set_view(self, k: int = 1):
                pass

        class Root(lib.Module):
            def __init__(self):
                self.c = Custom()
                self.u = Undocumented()

        outputs.append(lib.view_info(Root()))
    assert outputs[0] == outputs[1]
    assert "Custom:\n  flag: bool | None = None\n    if True, turns" in outputs[0]


def test_view_info_lists_mode_attributes_of_modules_without_set_view():
    info = nnx.view_info(_block_cls(nnx)(nnx.Rngs(0)))
    assert "BatchNorm:\n  use_running_average:" in info
    assert "Dropout:\n  deterministic:" in info
    assert nnx.view_info(nnx.Linear(1, 1, rngs=nnx.Rngs(0))) == ""


# -- with_attributes -------------------------------------------------------------------------
def test_with_attributes_same_as_flax():
    results = []
    for lib in _libs():
        block = _block_cls(lib)(lib.Rngs(0))
        new = lib.with_attributes(block, deterministic=True, use_running_average=True)
        only = lib.with_attributes(block, only=lib.Dropout, deterministic=True)
        results.append((_modes(new), _modes(only), _modes(block),
                        new.linear.kernel is block.linear.kernel))
    assert results[0] == results[1]


def test_with_attributes_missing_attribute_raises():
    block = _block_cls(nnx)(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"no selected module has the attribute\(s\) \['nope'\]"):
        nnx.with_attributes(block, deterministic=True, nope=1)
    assert _modes(block) == (False, False)


# -- property ----------------------------------------------------------------------------------
def _build(spec, rngs):
    class Node(nnx.Module):
        pass

    root = Node()
    layers = []
    for kind, share in spec:
        if share and layers:
            layers.append(layers[-1])
        elif kind == 0:
            layers.append(nnx.Dropout(0.5))
        elif kind == 1:
            layers.append(nnx.BatchNorm(2, rngs=rngs))
        else:
            layers.append(nnx.Linear(2, 2, rngs=rngs))
    root.layers = layers
    root.tied = nnx.Param(jnp.ones(1))
    root.alias = root.tied
    return root


def _snapshot(model):
    graphdef, state = nnx.split(model)
    plain = bool | int | float | str | type(None)
    statics = [
        (path, {k: v for k, v in m.__dict__.items() if isinstance(v, plain)})
        for path, m in nnx.iter_modules(model)
    ]
    return graphdef, jax.tree.map(np.asarray, state.to_pure_dict()), statics


@settings(max_examples=25, deadline=None)
@given(
    spec=st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=5),
    kwargs=st.dictionaries(
        st.sampled_from(["deterministic", "use_running_average"]), st.booleans()
    ),
)
def test_property_view_never_changes_the_original_and_shares_its_variables(spec, kwargs):
    model = _build(spec, nnx.Rngs(0))
    before = _snapshot(model)
    new = nnx.view(model, raise_if_not_found=False, **kwargs)
    after = _snapshot(model)
    assert before[0] == after[0] and before[2] == after[2]
    jax.tree.map(np.testing.assert_array_equal, before[1], after[1])
    old_vars = [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)]
    new_vars = [v for _, v in nnx.iter_graph(new) if isinstance(v, nnx.Variable)]
    assert [id(v) for v in old_vars] == [id(v) for v in new_vars]
    assert new.alias is new.tied
    for (_, m_old), (_, m_new) in zip(nnx.iter_modules(model), nnx.iter_modules(new),
                                      strict=True):
        assert m_old is not m_new
        for name, value in kwargs.items():
            if name in m_new.__dict__:
                assert getattr(m_new, name) is value


# -- capture ----------------------------------------------------------------------------------
def _sowing_cls(lib):
    class Inner(lib.Module):
        def __init__(self, rngs):
            self.w = lib.Param(jnp.arange(2.0))

        def __call__(self, x):
            y = x * self.w
            self.sow(lib.Intermediate, "y", y)
            return y

    class Outer(lib.Module):
        def __init__(self, rngs):
            self.inner = Inner(rngs)

        def feat(self, x):
            return x * 2

        def __call__(self, x):
            self.sow(lib.Intermediate, "x", x)
            self.sow(lib.Intermediate, "x", x + 1)
            return self.inner(self.feat(x))

    return Outer


def _pure(state):
    return jax.tree.map(np.asarray, nnx.State(state).to_pure_dict()) if state is not None else None


def _flax_pure(state):
    return jax.tree.map(np.asarray, state.to_pure_dict())


def test_capture_same_states_as_flax_and_model_unchanged():
    results = []
    for lib in _libs():
        pure = _pure if lib is nnx else _flax_pure
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            m = _sowing_cls(lib)(lib.Rngs(0))
            x = jnp.ones(2)
            keys_before = sorted(k for k in vars(m) if not k.startswith("_"))
            y, st1 = lib.capture(m, lib.Intermediate)(x)
            only = lib.capture(m)(x)
            _, a, b = lib.capture(m, lib.Intermediate, lib.Perturbation)(x)
            deco = lib.capture(lib.Intermediate)(lambda mod, x: mod(x))
            _, st2 = deco(m, x)
            _, st3 = lib.capture(m, lib.Intermediate, method_outputs=lib.Intermediate)(x)
            keys_after = sorted(k for k in vars(m) if not k.startswith("_"))
        results.append(dict(
            y=np.asarray(y), st1=pure(st1), only=np.asarray(only), a=pure(a), b=pure(b),
            st2=pure(st2), st3=pure(st3), unchanged=keys_before == keys_after,
            inner_unchanged=sorted(k for k in vars(m.inner) if not k.startswith("_")),
        ))
    ours, theirs = results
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert ours["unchanged"] and ours["inner_unchanged"] == ["w"]
    assert set(ours["st3"]) == {"__call__", "feat", "inner", "x"}


def test_capture_perturbation_gradients_same_as_flax():
    grads = []
    for lib in _libs():

        class Model(lib.Module):
            def __call__(self, x):
                return 3 * self.perturb("g", x) ** 2

        model = Model()
        _, per = lib.capture(model, lib.Perturbation)(jnp.ones(2))

        def loss(model, per, x, lib=lib):
            y, sown = lib.capture(model, lib.Intermediate, init=per)(x)
            return y.sum(), sown

        g, _ = lib.grad(loss, argnums=lib.DiffState(1, lib.Perturbation), has_aux=True)(
            model, per, jnp.ones(2)
        )
        grads.append(np.asarray(g["g"].value))
        assert not hasattr(model, "g")
    np.testing.assert_array_equal(grads[0], grads[1])
    np.testing.assert_array_equal(grads[0], [6.0, 6.0])


def test_capture_keeps_values_sown_before_and_restores_after_an_error():
    m = _sowing_cls(nnx)(nnx.Rngs(0))
    m(jnp.ones(2))
    old = m.x
    _, st = nnx.capture(m, nnx.Intermediate)(jnp.zeros(2))
    assert m.x is old and len(st["x"].value) == 2
    np.testing.assert_array_equal(st["x"].value[0], 0.0)

    class Failing(nnx.Module):
        def __call__(self, x):
            self.sow(nnx.Intermediate, "h", x)
            raise RuntimeError("boom")

    f = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        nnx.capture(f, nnx.Intermediate, method_outputs=nnx.Intermediate)(1.0)
    assert not hasattr(f, "h") and not hasattr(Failing.__call__, "_nnx_capturing")


def test_capture_errors():
    m = _sowing_cls(nnx)(nnx.Rngs(0))
    with pytest.raises(nnx.errors.ArgumentError, match="var_types must be Variable types"):
        nnx.capture(m, "intermediates")
    with pytest.raises(nnx.errors.ArgumentError, match="without arguments"):
        nnx.capture(lambda: 1, nnx.Intermediate)()
    with pytest.raises(nnx.errors.ArgumentError, match=r"init=\.\.\.\) takes a State"):
        nnx.capture(m, nnx.Intermediate, init=[1])(jnp.ones(2))
