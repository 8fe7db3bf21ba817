"""The character-level transformer example on a mesh of the 8 CPU devices (see conftest.py):
``--mesh data=4,model=2`` (data + Megatron-style tensor parallel) and ``--mesh data=8`` (data
parallel) train to the single-device losses, the parameters and optimizer moments are split as
the annotations say, and a mesh that cannot run here is refused with a message saying why."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nnx
from nnx.examples import charlm

pytest.importorskip("tqdm")

# A short --tiny run: few steps and evaluation windows, a few sampled characters.
ARGV = ["--tiny", "--no-progress", "--steps", "4", "--eval-windows", "16", "--sample-len", "6"]
MESHES = ["data=4,model=2", "data=8"]
# Float32 sums are split differently over the devices: the losses agree to rounding.
RTOL, ATOL = 1e-5, 1e-5
# Parameters after two AdamW steps: an update of ~lr per entry whose direction is the gradient's
# sign, which rounding can flip only where the gradient is ~0 (and the update then tiny).
PARAM_ATOL = 1e-5

# The intended layout of every parameter (its leading axis is the layer axis of the scan) on a
# mesh with a 'model' axis; on a mesh without one, every parameter is replicated.
TENSOR_PARALLEL = {
    ("embed", "embedding"): P(),
    ("pos", "embedding"): P(),
    ("norm", "scale"): P(),
    ("blocks", "attn_norm", "scale"): P(),
    ("blocks", "mlp_norm", "scale"): P(),
    ("blocks", "attn", "query", "kernel"): P(None, None, "model", None),  # column: by head
    ("blocks", "attn", "key", "kernel"): P(None, None, "model", None),
    ("blocks", "attn", "value", "kernel"): P(None, None, "model", None),
    ("blocks", "attn", "out", "kernel"): P(None, "model", None, None),  # row: by head
    ("blocks", "up", "kernel"): P(None, None, "model"),  # column
    ("blocks", "up", "bias"): P(None, "model"),
    ("blocks", "down", "kernel"): P(None, "model", None),  # row
    ("blocks", "down", "bias"): P(),
}


def run(*extra: str) -> dict[str, Any]:
    return charlm.main([*ARGV, *extra])


@pytest.fixture(scope="module")
def single_device() -> dict[str, Any]:
    return run()


# data=8 is slow-marked: the parameter test below already compares its two training steps
# with one device's.
# Whole --tiny runs (about 30 s with the single-device run they are compared with): slow;
# the default run compares two training steps with one device (the next test).
@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data=4,model=2", "data=8"])
def test_mesh_run_matches_the_single_device_run(single_device, mesh, capsys):
    summary = run("--mesh", mesh)
    assert summary["mesh"] == charlm.parse_mesh(mesh)
    assert "mesh" not in single_device  # the single-device run is not on a mesh
    for key in ("initial_train_loss", "initial_val_loss", "final_train_loss", "final_val_loss"):
        assert summary[key] == pytest.approx(single_device[key], rel=RTOL, abs=ATOL), key
    # Training moved the losses by far more than the tolerance, so the steps themselves agree.
    assert single_device["final_train_loss"] < single_device["initial_train_loss"] - 0.1
    assert summary["sample"] == single_device["sample"]
    out = capsys.readouterr().out
    assert f"mesh: {mesh.replace(',', ' x ')} over 8 cpu devices" in out


def flat_params(model: charlm.CharTransformer) -> dict[tuple, jax.Array]:
    return {path: v.value for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def tiny_batch(vocab_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (charlm.TINY["batch_size"], charlm.TINY["seq_len"] + 1))
    return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def train_two_steps(args, mesh) -> tuple[charlm.CharTransformer, nnx.Optimizer]:
    vocab_size = 98  # that of the corpus, so the compiled steps of the runs above are reused
    with charlm.on_mesh(mesh):
        model, optimizer = charlm.build(args, vocab_size)
        for seed in range(2):
            inputs, targets = tiny_batch(vocab_size, seed)
            charlm.train_step(
                model, optimizer, charlm.put_batch(inputs, mesh), charlm.put_batch(targets, mesh)
            )
    return model, optimizer


@pytest.fixture(scope="module")
def single_device_params() -> dict[tuple, jax.Array]:
    """The parameters after the two steps of `train_two_steps` on one device."""
    reference, _ = train_two_steps(charlm.parse_args(ARGV), None)
    return flat_params(reference)


@pytest.mark.slow  # builds and trains charlm on each mesh and on one device: about 50 s
@pytest.mark.parametrize("spec", MESHES)
def test_parameters_and_optimizer_moments_are_split_as_annotated(spec, single_device_params):
    args = charlm.parse_args([*ARGV, "--mesh", spec])
    mesh = charlm.make_mesh(args.mesh)
    assert dict(mesh.shape) == args.mesh and mesh.devices.size == 8

    batch = charlm.put_batch(np.zeros((8, 32), np.int32), mesh)
    assert batch.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 2)
    assert batch.addressable_shards[0].data.shape == (8 // args.mesh["data"], 32)

    model, optimizer = train_two_steps(args, mesh)
    params = flat_params(model)
    assert params.keys() == TENSOR_PARALLEL.keys()
    moments = {
        (moment, *path): v.value
        for path, v in nnx.to_flat_state(nnx.state(optimizer.opt_state))
        for moment in ("mu", "nu")
        if moment in path
    }
    split = "model" in args.mesh
    for path, value in params.items():
        spec_ = TENSOR_PARALLEL[path] if split else P()
        expected = NamedSharding(mesh, spec_)
        assert value.sharding.is_equivalent_to(expected, value.ndim), (path, value.sharding)
        for moment in ("mu", "nu"):
            m = next(v for k, v in moments.items() if k[0] == moment and k[-len(path) :] == path)
            assert m.sharding.is_equivalent_to(expected, m.ndim), (moment, path, m.sharding)
    qkv = params[("blocks", "attn", "query", "kernel")]
    assert qkv.shape == (2, 32, 2, 16)  # layers, dim, heads, head_dim
    assert qkv.addressable_shards[0].data.shape == ((2, 32, 1, 16) if split else qkv.shape)
    assert params[("blocks", "up", "kernel")].addressable_shards[0].data.shape == (
        (2, 32, 64) if split else (2, 32, 128)
    )

    # The same two steps on one device give the same parameters.
    for path, value in single_device_params.items():
        assert len(value.sharding.device_set) == 1
        np.testing.assert_allclose(
            np.asarray(params[path]), np.asarray(value), rtol=0, atol=PARAM_ATOL, err_msg=str(path)
        )


def test_a_mesh_larger_than_the_devices_says_how_to_get_them(capsys):
    with pytest.raises(SystemExit):
        charlm.parse_args(["--tiny", "--mesh", "data=8,model=2"])
    err = capsys.readouterr().err
    assert "--mesh data=8,model=2 needs 16 devices, but JAX sees 8 (cpu)" in err
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=16" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mesh", "data=4,expert=2"], "'data=4,expert=2' is not a mesh"),
        (["--mesh", "data=4,data=2"], "is not a mesh"),
        (["--mesh", "data"], "is not a mesh"),
        (["--mesh", "data=0"], "size 0"),
        (["--mesh", "data=3"], "does not divide --batch-size 8"),
        (["--mesh", "model=4"], "does not divide --heads 2"),
    ],
)
def test_bad_meshes_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        charlm.parse_args(["--tiny", *argv])
    assert message in capsys.readouterr().err


def test_without_a_mesh_nothing_is_placed_and_the_annotations_resolve():
    model, _ = charlm.build(charlm.parse_args(ARGV), 98)
    params = flat_params(model)
    assert all(len(v.sharding.device_set) == 1 for v in params.values())
    # Unresolved, the annotations name logical axes (and the stacked layer axis).
    kernel = model.blocks.attn.query.kernel
    assert kernel.out_sharding == ("layers", "embed", "heads", "head_dim")
    with nnx.logical_axis_rules(charlm.axis_rules(("data", "model"))):
        specs = {
            path: v.value
            for path, v in nnx.to_flat_state(nnx.get_partition_spec(nnx.state(model, nnx.Param)))
        }
    for path, spec in specs.items():
        # Trailing Nones do not change a PartitionSpec's meaning.
        padded = (*TENSOR_PARALLEL[path], *(None,) * (len(spec) - len(TENSOR_PARALLEL[path])))
        assert tuple(spec) == padded, path
