"""Recurrent cells and RNN: parity with hand-written equations and with flax.nnx."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ConfigError, ShapeError

B, T, F, H = 2, 5, 3, 4


def _x(seed=0, shape=(B, T, F)):
    return jax.random.normal(jax.random.key(seed), shape)


def _k(m):
    return m.kernel.value


def _b(m):
    return m.bias.value[None]  # references take (batch, features) inputs


def ref_lstm(cell, carry, x):
    c, h = carry
    sig, tanh = jax.nn.sigmoid, jnp.tanh
    i = sig(x @ _k(cell.ii) + h @ _k(cell.hi) + _b(cell.hi))
    f = sig(x @ _k(cell.if_) + h @ _k(cell.hf) + _b(cell.hf))
    g = tanh(x @ _k(cell.ig) + h @ _k(cell.hg) + _b(cell.hg))
    o = sig(x @ _k(cell.io) + h @ _k(cell.ho) + _b(cell.ho))
    c2 = f * c + i * g
    h2 = o * tanh(c2)
    return (c2, h2), h2


def ref_gru(cell, h, x):
    wi, bi, wh = _k(cell.dense_i), _b(cell.dense_i), _k(cell.dense_h)
    xr, xz, xn = jnp.split(x @ wi + bi, 3, axis=-1)
    hr, hz, hn = jnp.split(h @ wh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h2 = (1 - z) * n + z * h
    return h2, h2


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


def test_lstm_cell_matches_equations():
    cell = nnx.LSTMCell(F, H, rngs=nnx.Rngs(0))
    carry = jax.tree.map(lambda c: c + 0.3, cell.initialize_carry((B, F)))
    x = _x(1, (B, F))
    _close(cell(carry, x), ref_lstm(cell, carry, x))


def test_optimized_lstm_matches_lstm_with_fused_params():
    cell = nnx.LSTMCell(F, H, rngs=nnx.Rngs(0))
    opt = nnx.OptimizedLSTMCell(F, H, rngs=nnx.Rngs(1))
    opt.dense_i.kernel.value = jnp.concatenate(
        [_k(cell.ii), _k(cell.if_), _k(cell.ig), _k(cell.io)], -1
    )
    opt.dense_h.kernel.value = jnp.concatenate(
        [_k(cell.hi), _k(cell.hf), _k(cell.hg), _k(cell.ho)], -1
    )
    opt.dense_h.bias.value = jnp.concatenate(
        [_b(cell.hi) + 0.1, _b(cell.hf) - 0.2, _b(cell.hg), _b(cell.ho) + 0.3], -1
    )[0]
    cell.hi.bias.value += 0.1
    cell.hf.bias.value -= 0.2
    cell.ho.bias.value += 0.3
    carry = jax.tree.map(lambda c: c - 0.2, cell.initialize_carry((B, F)))
    x = _x(2, (B, F))
    _close(opt(carry, x), ref_lstm(cell, carry, x))


def test_gru_cell_matches_equations():
    cell = nnx.GRUCell(F, H, bias_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
    h = jnp.full((B, H), 0.5)
    x = _x(3, (B, F))
    _close(cell(h, x), ref_gru(cell, h, x))


def test_simple_cell_residual():
    cell = nnx.SimpleCell(F, H, residual=True, rngs=nnx.Rngs(0))
    h = jnp.full((B, H), 0.5)
    x = _x(3, (B, F))
    want = jnp.tanh(x @ _k(cell.dense_i) + _b(cell.dense_i) + h @ _k(cell.dense_h)) + h
    _close(cell(h, x)[0], want)


def _unrolled(cell, ref, xs, carry):
    ys = []
    for t in range(xs.shape[1]):
        carry, y = ref(cell, carry, xs[:, t])
        ys.append(y)
    return carry, jnp.stack(ys, 1)


def test_rnn_matches_unrolled_and_time_major():
    cell = nnx.GRUCell(F, H, rngs=nnx.Rngs(0))
    rnn = nnx.RNN(cell, return_carry=True)
    xs = _x(4)
    carry, ys = nnx.jit(lambda m, x: m(x))(rnn, xs)
    want_c, want_y = _unrolled(cell, ref_gru, xs, jnp.zeros((B, H)))
    _close((carry, ys), (want_c, want_y))
    tm = nnx.jit(lambda m, x: m(x, time_major=True, return_carry=False))(
        rnn, jnp.swapaxes(xs, 0, 1)
    )
    _close(jnp.swapaxes(tm, 0, 1), want_y)


def test_rnn_seq_lengths_reverse_keep_order():
    cell = nnx.LSTMCell(F, H, rngs=nnx.Rngs(0))
    rnn = nnx.RNN(cell, return_carry=True)
    xs = _x(5)
    lengths = jnp.array([T, 2])
    init = cell.initialize_carry((B, F))
    run = nnx.jit(
        lambda m, x, L, rev, keep: m(x, seq_lengths=L, reverse=rev, keep_order=keep),
        static_argnums=(3, 4),
    )
    carry, ys = run(rnn, xs, lengths, False, False)
    for b, L in enumerate([T, 2]):
        cb = jax.tree.map(lambda c, b=b: c[b : b + 1], init)
        want_c, want_y = _unrolled(cell, ref_lstm, xs[b : b + 1, :L], cb)
        _close(jax.tree.map(lambda c, b=b: c[b : b + 1], carry), want_c)
        _close(ys[b : b + 1, :L], want_y)
    # reverse: each sequence read from its last valid step; keep_order restores time order.
    carry_r, ys_r = run(rnn, xs, lengths, True, False)
    carry_k, ys_k = run(rnn, xs, lengths, True, True)
    _close(carry_r, carry_k)
    for b, L in enumerate([T, 2]):
        cb = jax.tree.map(lambda c, b=b: c[b : b + 1], init)
        want_c, want_y = _unrolled(cell, ref_lstm, xs[b : b + 1, :L][:, ::-1], cb)
        _close(jax.tree.map(lambda c, b=b: c[b : b + 1], carry_r), want_c)
        _close(ys_r[b : b + 1, :L], want_y)
        _close(ys_k[b : b + 1, :L], want_y[:, ::-1])


def test_bidirectional_concat_and_carry():
    fwd = nnx.RNN(nnx.GRUCell(F, H, rngs=nnx.Rngs(0)))
    bwd = nnx.RNN(nnx.GRUCell(F, 2, rngs=nnx.Rngs(1)))
    bi = nnx.Bidirectional(fwd, bwd, return_carry=True)
    xs = _x(6)
    (_cf, cb), out = nnx.jit(lambda m, x: m(x))(bi, xs)
    assert out.shape == (B, T, H + 2)
    _close(out[..., :H], fwd(xs))
    _close(out[..., H:], bwd(xs, reverse=True, keep_order=True))
    _close(cb, bwd(xs, reverse=True, return_carry=True)[0])


def test_errors():
    with pytest.raises(ConfigError, match="hidden_features"):
        nnx.LSTMCell(3, -1, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="in_features"):
        nnx.GRUCell(0, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="cell"):
        nnx.RNN(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    rnn = nnx.RNN(nnx.SimpleCell(3, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(ShapeError, match="RNN"):
        rnn(jnp.ones(3))
    with pytest.raises(ShapeError, match=r"in_features=3"):
        rnn(jnp.ones((2, 4, 5)))


# -- flax.nnx as an oracle ------------------------------------------------------------------


def _copy_params(ours, theirs):
    flax = pytest.importorskip("flax.nnx")
    ours_flat = dict(nnx.state(ours, nnx.Param).flat_state())
    for path, var in flax.state(theirs, flax.Param).flat_state():
        var.value = ours_flat[tuple(path)].value


@pytest.mark.parametrize("name", ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"])
def test_cells_and_rnn_match_flax(name):
    flax = pytest.importorskip("flax.nnx")
    ours = nnx.RNN(getattr(nnx, name)(F, H, rngs=nnx.Rngs(0)), return_carry=True)
    theirs = flax.RNN(getattr(flax, name)(F, H, rngs=flax.Rngs(1)), return_carry=True)
    _copy_params(ours.cell, theirs.cell)
    xs = _x(7)
    lengths = jnp.array([T, 3])
    got = nnx.jit(lambda m, x, L: m(x, seq_lengths=L))(ours, xs, lengths)
    want = theirs(xs, seq_lengths=lengths)
    _close(got[0], want[0], 1e-5)
    for b, L in enumerate([T, 3]):
        _close(got[1][b, :L], want[1][b, :L], 1e-5)

    def loss_ours(m, x):
        return jnp.sum(m(x)[1] ** 2)

    def loss_theirs(m, x):
        return jnp.sum(m(x)[1] ** 2)

    g_ours = nnx.grad(loss_ours)(ours, xs)
    g_theirs = flax.grad(loss_theirs)(theirs, xs)
    ours_flat = dict(g_ours.flat_state())
    for path, g in g_theirs.flat_state():
        _close(ours_flat[("cell", *tuple(path)[1:])].value, g.value, 1e-4)


def test_flax_reverse_bidirectional_parity():
    flax = pytest.importorskip("flax.nnx")
    ours = nnx.Bidirectional(
        nnx.RNN(nnx.LSTMCell(F, H, rngs=nnx.Rngs(0))), nnx.RNN(nnx.GRUCell(F, 2, rngs=nnx.Rngs(1)))
    )
    theirs = flax.Bidirectional(
        flax.RNN(flax.LSTMCell(F, H, rngs=flax.Rngs(2))),
        flax.RNN(flax.GRUCell(F, 2, rngs=flax.Rngs(3))),
    )
    _copy_params(ours.forward_rnn.cell, theirs.forward_rnn.cell)
    _copy_params(ours.backward_rnn.cell, theirs.backward_rnn.cell)
    xs = _x(8)
    lengths = jnp.array([T, 2])
    got = ours(xs, seq_lengths=lengths)
    want = theirs(xs, seq_lengths=lengths)
    for b, L in enumerate([T, 2]):
        _close(got[b, :L], want[b, :L], 1e-5)
