"""nnx.Checkpointer on a real orbax directory (tmp_path), and the flax pattern on raw orbax."""

from __future__ import annotations

import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import nnx
from nnx.checkpointing import CheckpointError, CheckpointMismatchError


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, width: int = 4, dtype=jnp.float32):
        self.layers = [nnx.Linear(width, width, param_dtype=dtype, rngs=rngs) for _ in range(2)]
        self.count = nnx.BatchStat(jnp.array(0, jnp.int32))
        self.rngs = rngs

    def __call__(self, x):
        self.count.value += 1
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def _np(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def pure(model):
    return jax.tree.map(_np, nnx.state(model).to_pure_dict())


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_round_trip_in_place_with_optimizer_and_metadata(tmp_path):
    model = Net(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2))
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 4)))))(model)
    opt.update(model, grads)
    saved_model, saved_opt = pure(model), pure(opt)
    with nnx.Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(3, model=model, optimizer=opt, metadata={"epoch": 3, "note": "x"})
    fresh = Net(nnx.Rngs(7))
    fresh_opt = nnx.Optimizer(fresh, optax.adam(1e-2))
    with nnx.Checkpointer(tmp_path / "ck") as ckpt:
        result = ckpt.restore(model=fresh, optimizer=fresh_opt)
    assert result["step"] == 3 and result["metadata"] == {"epoch": 3, "note": "x"}
    assert result["model"] is fresh
    assert_same(pure(fresh), saved_model)
    assert_same(pure(fresh_opt), saved_opt)
    assert int(fresh_opt.step.value) == 1
    # The typed RNG key came back as a key, and the stream continues where it was.
    assert jax.dtypes.issubdtype(fresh.rngs.default.key.value.dtype, jax.dtypes.prng_key)


def test_restore_into_abstract_model_allocates_only_the_checkpoint(tmp_path):
    model = Net(nnx.Rngs(0))
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=model)
        abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(123)))
        assert isinstance(abstract.layers[0].kernel.value, jax.ShapeDtypeStruct)
        ckpt.restore(model=abstract)
    assert isinstance(abstract.layers[0].kernel.value, jax.Array)
    assert_same(pure(abstract), pure(model))
    np.testing.assert_allclose(abstract(jnp.ones((1, 4))), Net(nnx.Rngs(0))(jnp.ones((1, 4))))


def test_partial_restore_of_the_model_only(tmp_path):
    model = Net(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.1))
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=model, optimizer=opt)
        target = Net(nnx.Rngs(5))
        ckpt.restore(model=target)
    assert_same(pure(target), pure(model))


def test_latest_step_max_to_keep_and_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = Net(nnx.Rngs(0))
    with nnx.Checkpointer("relative/dir", max_to_keep=2) as ckpt:
        assert os.path.isabs(ckpt.directory)
        for step in (1, 2, 3):
            model.count.value = jnp.array(step, jnp.int32)
            ckpt.save(step, model=model)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
        target = Net(nnx.Rngs(0))
        ckpt.restore(model=target)
        assert int(target.count.value) == 3
        ckpt.restore(2, model=target)
        assert int(target.count.value) == 2


def test_async_save_is_not_lost_when_the_block_exits(tmp_path):
    model = Net(nnx.Rngs(0))
    with nnx.Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(5, model=model)
    assert (tmp_path / "5").is_dir()
    assert not any(
        p.name.endswith("orbax-checkpoint-tmp") for p in pathlib.Path(tmp_path).iterdir()
    )


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        (
            lambda: Net(nnx.Rngs(0), width=5),
            r"model\.layers\.0\.kernel: saved float32\[4, 4\], expected float32\[5, 5\]",
        ),
        (
            lambda: Net(nnx.Rngs(0), dtype=jnp.bfloat16),
            r"model\.layers\.0\.kernel: saved float32\[4, 4\], expected bfloat16\[4, 4\]",
        ),
    ],
    ids=["shape", "dtype"],
)
def test_mismatch_lists_paths_and_leaves_target_untouched(tmp_path, target, pattern):
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=Net(nnx.Rngs(0)))
        model = target()
        before = pure(model)
        with pytest.raises(CheckpointMismatchError, match=f"(?s){pattern}.*Fix:"):
            ckpt.restore(model=model)
    assert_same(pure(model), before)


def test_structure_mismatch_lists_missing_and_extra(tmp_path):
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=Net(nnx.Rngs(0)))
        model = Net(nnx.Rngs(0))
        model.layers.append(nnx.Linear(4, 4, rngs=nnx.Rngs(1)))
        with pytest.raises(
            CheckpointMismatchError,
            match=r"model\.layers\.2\.kernel: expected float32\[4, 4\], missing",
        ):
            ckpt.restore(model=model)


def test_clear_errors_for_no_checkpoint_unknown_step_and_unknown_name(tmp_path):
    with nnx.Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(CheckpointError, match="No checkpoint in"):
            ckpt.restore(model=Net(nnx.Rngs(0)))
        ckpt.save(1, model=Net(nnx.Rngs(0)))
        with pytest.raises(CheckpointError, match=r"No step 9 .*available: \[1\]"):
            ckpt.restore(9, model=Net(nnx.Rngs(0)))
        with pytest.raises(CheckpointError, match=r"has no 'optimizer'; it has \['model'\]"):
            ckpt.restore(optimizer=Net(nnx.Rngs(0)))


def test_plain_pytrees_are_returned(tmp_path):
    tree = {"a": np.arange(3.0), "b": [np.ones(2, np.int32)]}
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, data=tree)
        out = ckpt.restore(data=tree)["data"]
    np.testing.assert_array_equal(out["a"], tree["a"])


def test_flax_pattern_with_raw_orbax_and_eval_shape(tmp_path):
    model = Net(nnx.Rngs(0))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(model))
    checkpointer.wait_until_finished()
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Net(nnx.Rngs(1))))
    restored = checkpointer.restore(tmp_path / "state", abstract_state)
    rebuilt = nnx.merge(graphdef, restored)
    assert_same(pure(rebuilt), pure(model))
    checkpointer.close()


def test_no_pickle_or_eval_anywhere_in_the_package():
    package = pathlib.Path(nnx.__file__).parent
    pattern = re.compile(
        r"^\s*(import|from)\s+(pickle|cloudpickle|dill|marshal|shelve)\b"
        r"|\b(pickle|cloudpickle|dill|marshal)\.loads?\("
        r"|(?<![\w./])(?<!def )(eval|exec)\(",
        re.MULTILINE,
    )
    offenders = [
        f"{path.relative_to(package)}: {m.group(0).strip()}"
        for path in package.rglob("*.py")
        for m in pattern.finditer(path.read_text())
    ]
    assert not offenders, offenders
