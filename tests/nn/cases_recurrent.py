"""Registry cases for the recurrent layers, LoRA and PReLU."""

from __future__ import annotations

import jax

import nnx
from tests.nn.registry import Case


def _cell_inputs(cell_cls, hidden=4, batch=(3,), features=5):
    def inputs(key):
        k1, k2 = jax.random.split(key)
        x = jax.random.normal(k1, (*batch, features))
        carry = cell_cls(features, hidden, rngs=nnx.Rngs(0)).initialize_carry(x.shape)
        carry = jax.tree.map(lambda c: c + 0.1 * jax.random.normal(k2, c.shape), carry)
        return carry, x

    return inputs


def _cell_case(cls, **kw):
    return Case(
        name=cls.__name__ + ("-" + "-".join(kw) if kw else ""),
        cls=cls,
        build=lambda rngs, dtype: cls(5, 4, dtype=dtype, rngs=rngs, **kw),
        lazy_build=lambda rngs, dtype: cls(None, 4, dtype=dtype, rngs=rngs, **kw),
        inputs=_cell_inputs(cls),
        call=lambda m, carry, x: m(carry, x),
        tol=1e-5,
    )


def _seq(key, shape=(2, 6, 5)):
    return (jax.random.normal(key, shape),)


CASES = [
    _cell_case(nnx.LSTMCell),
    _cell_case(nnx.OptimizedLSTMCell),
    _cell_case(nnx.GRUCell),
    _cell_case(nnx.SimpleCell),
    Case(
        name="RNNCellBase-SimpleCell-residual",
        cls=nnx.RNNCellBase,
        build=lambda rngs, dtype: nnx.SimpleCell(5, 5, residual=True, dtype=dtype, rngs=rngs),
        inputs=_cell_inputs(nnx.SimpleCell, hidden=5),
        call=lambda m, carry, x: m(carry, x),
    ),
    Case(
        name="RNN-LSTM",
        cls=nnx.RNN,
        build=lambda rngs, dtype: nnx.RNN(nnx.LSTMCell(5, 4, dtype=dtype, rngs=rngs)),
        lazy_build=lambda rngs, dtype: nnx.RNN(nnx.LSTMCell(None, 4, dtype=dtype, rngs=rngs)),
        inputs=_seq,
        tol=1e-4,
    ),
    Case(
        name="RNN-GRU-reverse-carry",
        cls=nnx.RNN,
        build=lambda rngs, dtype: nnx.RNN(
            nnx.GRUCell(5, 3, dtype=dtype, rngs=rngs), reverse=True, return_carry=True
        ),
        inputs=_seq,
        tol=1e-4,
    ),
    Case(
        name="Bidirectional",
        cls=nnx.Bidirectional,
        build=lambda rngs, dtype: nnx.Bidirectional(
            nnx.RNN(nnx.OptimizedLSTMCell(5, 3, dtype=dtype, rngs=rngs)),
            nnx.RNN(nnx.GRUCell(5, 2, dtype=dtype, rngs=rngs)),
        ),
        inputs=_seq,
        tol=1e-4,
    ),
    Case(
        name="LoRA",
        cls=nnx.LoRA,
        build=lambda rngs, dtype: nnx.LoRA(
            5, 2, 3, dtype=dtype, b_initializer=nnx.initializers.ones, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: nnx.LoRA(
            None, 2, 3, dtype=dtype, b_initializer=nnx.initializers.ones, rngs=rngs
        ),
        inputs=lambda key: (jax.random.normal(key, (4, 5)),),
        tol=1e-4,
    ),
    Case(
        name="LoRA-base",
        cls=nnx.LoRA,
        build=lambda rngs, dtype: nnx.LoRA(
            5, 2, 3, base_module=nnx.Linear(5, 3, dtype=dtype, rngs=rngs), dtype=dtype, rngs=rngs
        ),
        inputs=lambda key: (jax.random.normal(key, (4, 5)),),
    ),
    Case(
        name="LoRALinear",
        cls=nnx.LoRALinear,
        build=lambda rngs, dtype: nnx.LoRALinear(
            5, 3, lora_rank=2, dtype=dtype, b_initializer=nnx.initializers.ones, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: nnx.LoRALinear(
            None, 3, lora_rank=2, dtype=dtype, b_initializer=nnx.initializers.ones, rngs=rngs
        ),
        inputs=lambda key: (jax.random.normal(key, (4, 5)),),
        tol=1e-4,
    ),
    Case(
        name="PReLU",
        cls=nnx.PReLU,
        build=lambda rngs, dtype: nnx.PReLU(0.2, dtype=dtype),
        inputs=lambda key: (jax.random.normal(key, (4, 5)),),
    ),
]
