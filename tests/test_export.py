"""nnx.export / nnx.load_exported: StableHLO plus weights, run without the model's class."""

from __future__ import annotations

import importlib
import pathlib
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(3, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.drop(nnx.relu(self.bn(self.linear(x)))))

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        return {"hidden": self.linear(x), "sum": self.linear(x).sum(-1)}


def _trained_net() -> _Net:
    """A net whose BatchNorm statistics are not the defaults, then put in eval mode."""
    net = _Net(nnx.Rngs(0))
    net.train()
    net(jax.random.normal(jax.random.key(1), (16, 3)) * 3.0 + 1.0)
    net.eval()
    return net


def _x(batch: int, seed: int = 2) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, 3))


# `nnx.export` is the function; the module of the same name is reached by its full name.
export_module = importlib.import_module("nnx.export")


SUBPROCESS = """
import sys
import numpy as np
from nnx import load_exported

data = np.load(sys.argv[1])
for kind in ("mlp", "net"):
    fn = load_exported(sys.argv[2] + f"/{kind}.nnxexport")
    for batch in (1, 4, 9):
        x = data[f"{kind}_x{batch}"]
        got = np.asarray(fn(x))
        np.testing.assert_allclose(got, data[f"{kind}_y{batch}"], rtol=1e-5, atol=1e-6)
        print(kind, batch, got.shape)
leaked = [m for m in sys.modules if "test_export" in m or m.startswith("tests")]
assert not leaked, leaked
"""


@pytest.mark.slow  # a fresh Python process importing jax: about 10 s
def test_loaded_in_a_fresh_process_without_the_class_matches_the_live_model(
    tmp_path: pathlib.Path,
) -> None:
    mlp = nnx.Sequential(
        nnx.Linear(3, 16, rngs=nnx.Rngs(3)), nnx.gelu, nnx.Linear(16, 2, rngs=nnx.Rngs(4))
    )
    net = _trained_net()
    expected = {}
    for kind, model in (("mlp", mlp), ("net", net)):
        nnx.export(model, _x(2)).save(tmp_path / f"{kind}.nnxexport")
        for batch in (1, 4, 9):
            x = _x(batch, seed=batch)
            expected[f"{kind}_x{batch}"] = np.asarray(x)
            expected[f"{kind}_y{batch}"] = np.asarray(model(x))
    np.savez(tmp_path / "io.npz", **expected)
    script = tmp_path / "run.py"
    script.write_text(SUBPROCESS)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "io.npz"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:6] == [
        "mlp 1 (1, 2)",
        "mlp 4 (4, 2)",
        "mlp 9 (9, 2)",
        "net 1 (1, 2)",
        "net 4 (4, 2)",
        "net 9 (9, 2)",
    ]


def test_eval_mode_batchnorm_and_dropout_match_and_the_model_is_unchanged() -> None:
    net = _trained_net()
    before = jax.tree.map(np.asarray, nnx.state(net, nnx.Param, nnx.BatchStat))
    loaded = nnx.load_exported(nnx.export(net, _x(4)).to_bytes())
    for batch in (1, 5, 32):
        x = _x(batch, seed=batch)
        np.testing.assert_allclose(loaded(x), net(x), rtol=1e-5, atol=1e-6)
    # The running statistics are the trained ones, not the defaults (the test can fail).
    assert not np.allclose(loaded.weights["bn.mean"], 0.0)
    after = jax.tree.map(np.asarray, nnx.state(net, nnx.Param, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_weights_are_inputs_and_named_by_state_path() -> None:
    net = _trained_net()
    exported = nnx.export(net, _x(2))
    assert set(exported.weights) >= {"linear.kernel", "bn.mean", "bn.var", "out.bias"}
    np.testing.assert_array_equal(exported.weights["linear.kernel"], net.linear.kernel.value)
    # The program takes the weights first, then the input with a symbolic batch.
    avals = exported.program.in_avals
    assert len(avals) == len(exported.weights) + 1
    assert str(avals[-1].shape[0]) == "batch"


def test_other_method_and_pytree_output() -> None:
    net = _trained_net()
    loaded = nnx.load_exported(nnx.export(net, _x(3), method="features").to_bytes())
    got = loaded(_x(6))
    want = net.features(_x(6))
    assert set(got) == {"hidden", "sum"}
    np.testing.assert_allclose(got["hidden"], want["hidden"], rtol=1e-6)
    np.testing.assert_allclose(got["sum"], want["sum"], rtol=1e-5)


def test_not_batch_polymorphic_keeps_the_example_shape() -> None:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    loaded = nnx.load_exported(nnx.export(model, _x(4), batch_polymorphic=False).to_bytes())
    np.testing.assert_allclose(loaded(_x(4)), model(_x(4)), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        loaded(_x(5))


def test_vjp_order_1_allows_grad_through_the_loaded_callable() -> None:
    net = _trained_net()
    loaded = nnx.load_exported(nnx.export(net, _x(2), vjp_order=1).to_bytes())
    x = _x(5)
    got = jax.grad(lambda x: (loaded(x) ** 2).sum())(x)
    want = jax.grad(lambda x: (net(x) ** 2).sum())(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(got).sum()) > 0


def test_grads_with_respect_to_the_weights_of_a_loaded_export_equal_nnx_grad() -> None:
    net = _trained_net()
    loaded = nnx.load_exported(nnx.export(net, _x(2), vjp_order=1).to_bytes())
    x = _x(6)

    def loss(model):
        return (model(x) ** 2).mean()

    floats = nnx.Any(nnx.Param, nnx.BatchStat)
    want = {
        ".".join(map(str, p)): np.asarray(v.value)
        for p, v in nnx.to_flat_state(nnx.grad(loss, argnums=nnx.DiffState(0, floats))(net))
    }
    # the float weights are differentiated; the Dropout's RNG key data rides along
    trainable = {n: w for n, w in loaded.weights.items() if jnp.issubdtype(w.dtype, jnp.floating)}
    rest = {n: w for n, w in loaded.weights.items() if n not in trainable}

    def exported_loss(w):
        return (loaded.apply({**w, **rest}, x) ** 2).mean()

    got = jax.grad(exported_loss)(trainable)
    assert sorted(got) == sorted(want) and rest
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert float(jnp.abs(got["linear.kernel"]).sum()) > 0
    # one gradient step on the exported weights lowers the loss
    stepped = {n: w - 0.1 * got[n] for n, w in trainable.items()}
    assert float(exported_loss(stepped)) < float(exported_loss(trainable))


def test_apply_checks_the_weights() -> None:
    loaded = nnx.load_exported(nnx.export(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), _x(2)).to_bytes())
    with pytest.raises(nnx.ExportError, match=r"(?s)missing bias\..*Fix:"):
        loaded.apply({"kernel": loaded.weights["kernel"]}, _x(2))
    with pytest.raises(nnx.ExportError, match=r"kernel: float32\[2, 3\], expected float32\[3, 2\]"):
        loaded.apply({**loaded.weights, "kernel": jnp.zeros((2, 3))}, _x(2))
    with pytest.raises(nnx.ExportError, match=r"unknown extra; kernel: a list, not an array"):
        loaded.apply({**loaded.weights, "kernel": [1.0], "extra": 1}, _x(2))
    np.testing.assert_allclose(loaded.apply(loaded.weights, _x(4)), loaded(_x(4)))


def test_vjp_order_0_refuses_grad() -> None:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    loaded = nnx.load_exported(nnx.export(model, _x(2)).to_bytes())
    with pytest.raises(Exception, match=r"(?i)no vjp"):
        jax.grad(lambda x: loaded(x).sum())(_x(2))


@pytest.fixture(scope="module")
def blob() -> bytes:
    return nnx.export(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), _x(2)).to_bytes()


def test_file_round_trip(tmp_path: pathlib.Path, blob: bytes) -> None:
    path = tmp_path / "m.nnxexport"
    nnx.load_exported(blob).save(path)
    assert path.read_bytes() == blob
    assert nnx.load_exported(str(path))(_x(3)).shape == (3, 2)


@pytest.mark.parametrize("where", ["prefix_digest", "header", "program", "last_byte"])
def test_a_flipped_byte_raises_export_error(blob: bytes, where: str) -> None:
    prefix = export_module._PREFIX.size
    _, _, _, hlen, _, _ = export_module._PREFIX.unpack_from(blob)
    index = {
        "prefix_digest": prefix - 1,
        "header": prefix + 3,
        "program": prefix + hlen + 100,
        "last_byte": len(blob) - 1,
    }[where]
    damaged = bytearray(blob)
    damaged[index] ^= 0x01
    with pytest.raises(nnx.ExportError, match="checksum"):
        nnx.load_exported(bytes(damaged))


def test_truncated_file_raises_export_error(tmp_path: pathlib.Path, blob: bytes) -> None:
    path = tmp_path / "cut.nnxexport"
    path.write_bytes(blob[:-10])
    with pytest.raises(nnx.ExportError, match="truncated") as info:
        nnx.load_exported(path)
    assert "cut.nnxexport" in str(info.value) and "Fix:" in str(info.value)
    with pytest.raises(nnx.ExportError, match="magic"):
        nnx.load_exported(blob[:20])


def test_wrong_magic_raises_export_error(blob: bytes) -> None:
    with pytest.raises(nnx.ExportError, match="magic"):
        nnx.load_exported(b"PK\x03\x04" + blob[4:])
    with pytest.raises(nnx.ExportError, match="magic"):
        nnx.load_exported(b"")


def test_wrong_version_raises_export_error(blob: bytes) -> None:
    newer = blob[:8] + struct.pack("<I", 99) + blob[12:]
    with pytest.raises(nnx.ExportError, match=r"version 99.*reads version 1"):
        nnx.load_exported(newer)


def test_export_errors_are_clear() -> None:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(nnx.ExportError, match="has no method 'predict'"):
        nnx.export(model, _x(2), method="predict")
    with pytest.raises(nnx.ExportError, match=r"arrays or jax\.ShapeDtypeStruct"):
        nnx.export(model, [[1.0, 2.0, 3.0]])
    pair = nnx.Sequential(lambda a, b: a + b)
    with pytest.raises(nnx.ExportError, match=r"leading dimensions \[2, 3\]"):
        nnx.export(pair, jnp.ones((2, 3)), jnp.ones((3, 3)))


def test_export_error_is_an_nnx_value_error() -> None:
    assert issubclass(nnx.ExportError, nnx.NNXError)
    assert issubclass(nnx.ExportError, ValueError)
