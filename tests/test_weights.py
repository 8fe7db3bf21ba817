"""Weight surgery: loading weights by name from another model (nnx.copy_weights), a safetensors
file (nnx.load_safetensors) and an orbax checkpoint (Checkpointer.restore(strict=False)), with
renaming, strict/partial matching, the LoadReport, and errors that change nothing.

The three loaders share one matching; a property test checks they give the same model and the
same report for generated models, subsets and renames.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnx
from nnx import CheckpointError, CheckpointMismatchError


def values(node) -> dict[str, np.ndarray]:
    return {
        ".".join(map(str, p)): np.asarray(
            jax.random.key_data(v.value)
            if jax.dtypes.issubdtype(v.value.dtype, jax.dtypes.prng_key)
            else v.value
        )
        for p, v in nnx.to_flat_state(nnx.state(node))
    }


def assert_unchanged(node, before: dict[str, np.ndarray]) -> None:
    after = values(node)
    assert after.keys() == before.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


class Encoder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, width: int = 8):
        self.layers = nnx.List(
            [nnx.Linear(4, width, rngs=rngs), nnx.Linear(width, width, rngs=rngs)]
        )
        self.norm = nnx.BatchNorm(width, rngs=rngs)


class Classifier(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, width: int = 8, classes: int = 3):
        self.backbone = Encoder(rngs, width)
        self.head = nnx.Linear(width, classes, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)


# -- copy_weights ---------------------------------------------------------------------------
def test_backbone_into_a_classifier_by_prefix():
    encoder = Encoder(nnx.Rngs(0))
    encoder.norm.mean.value = jnp.arange(8.0)
    clf = Classifier(nnx.Rngs(1))
    head_before = np.asarray(clf.head.kernel.value)
    report = nnx.copy_weights(encoder, clf, rename={"^": "backbone."}, strict=False)
    enc = values(encoder)
    got = values(clf)
    for name in enc:
        np.testing.assert_array_equal(got["backbone." + name], enc[name])
    np.testing.assert_array_equal(clf.head.kernel.value, head_before)
    assert report.loaded == {"backbone." + n: n for n in sorted(enc)}
    assert report.skipped == {}
    # untouched: the head, and the Dropout's RNG state (never loaded by default)
    assert "head.kernel" in report.untouched and "drop.rngs.key" in report.untouched
    assert not set(report.loaded) & set(report.untouched)
    assert repr(report) == f"LoadReport(loaded={len(enc)}, skipped=0, untouched=4)"
    text = str(report)
    assert "backbone.layers.0.kernel <- layers.0.kernel" in text and "untouched 4" in text


def test_strict_needs_both_sides_to_match_and_lists_everything():
    encoder = Encoder(nnx.Rngs(0))
    clf = Classifier(nnx.Rngs(1))
    before = values(clf)
    with pytest.raises(CheckpointMismatchError) as info:
        nnx.copy_weights(encoder, clf, rename={"^": "backbone."})
    message = str(info.value)
    assert "nothing was loaded" in message and "2 differences" in message
    assert "head.kernel: missing from the source (the model has float32[8, 3])" in message
    assert "head.bias: missing from the source" in message
    assert "Fix: one of" in message and "strict=False" in message
    assert_unchanged(clf, before)


def test_shape_mismatch_is_an_error_even_when_not_strict_unless_filtered_or_dropped():
    small = Classifier(nnx.Rngs(0), classes=3)
    big = Classifier(nnx.Rngs(1), classes=5)
    before = values(big)
    with pytest.raises(CheckpointMismatchError) as info:
        nnx.copy_weights(small, big, strict=False)
    message = str(info.value)
    assert "head.kernel: source float32[8, 3], model float32[8, 5]" in message
    assert "head.bias: source float32[3], model float32[5]" in message
    assert_unchanged(big, before)
    # left out on the model's side with a filter...
    report = nnx.copy_weights(small, big, nnx.Not(nnx.PathContains("head")), strict=False)
    assert "head.kernel" in report.untouched
    assert all(not n.startswith("head") for n in report.loaded)
    np.testing.assert_array_equal(big.head.kernel.value, before["head.kernel"])
    # ...or dropped on the source's side by rename; then strict=True needs the model's head too
    fresh = Classifier(nnx.Rngs(2), classes=5)
    report = nnx.copy_weights(small, fresh, rename={r"^head\.": None}, strict=False)
    assert report.skipped == {"head.bias": "dropped by rename", "head.kernel": "dropped by rename"}


def test_rename_by_function_and_dropping_by_none():
    a = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    b = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(1)), nnx.Linear(2, 3, rngs=nnx.Rngs(1)))

    def swap(name: str) -> str | None:
        index, rest = re.match(r"layers\.(\d)\.(.*)", name).groups()
        return f"layers.{1 - int(index)}.{rest}"

    report = nnx.copy_weights(a, b, rename=swap)
    np.testing.assert_array_equal(b.layers[0].kernel.value, a.layers[1].kernel.value)
    np.testing.assert_array_equal(b.layers[1].bias.value, a.layers[0].bias.value)
    assert report.loaded["layers.0.kernel"] == "layers.1.kernel"
    report = nnx.copy_weights(
        a, b, rename=lambda n: None if n.endswith("bias") else swap(n), strict=False
    )
    assert sorted(report.skipped) == ["layers.0.bias", "layers.1.bias"]


def test_group_references_and_first_matching_pattern_wins():
    a = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    b = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(1)), nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
    report = nnx.copy_weights(
        a,
        b,
        rename={
            r"^layers\.0\.(kernel)$": r"layers.1.\1",
            r"^layers\.1\.kernel$": None,
            r"^layers\.0\.": None,
        },
        strict=False,
    )
    assert report.loaded == {"layers.1.kernel": "layers.0.kernel", "layers.1.bias": "layers.1.bias"}
    np.testing.assert_array_equal(b.layers[1].kernel.value, a.layers[0].kernel.value)
    assert "layers.0.bias" in report.skipped


def test_two_names_renamed_onto_one_is_an_error():
    a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    b = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
    before = values(b)
    with pytest.raises(
        CheckpointMismatchError, match=r"bias: two source names load into it, bias and kernel"
    ):
        nnx.copy_weights(a, b, rename={"kernel": "bias"}, strict=False)
    assert_unchanged(b, before)


@pytest.mark.parametrize(
    ("rename", "match"),
    [
        ({"(": "x"}, r"the rename pattern '\(' is not a regular expression"),
        ({"a": 3}, r"replacement for 'a' is 3"),
        (lambda name: 3, r"rename\('bias'\) returned 3 \(int\)"),
        ({"(bias)": r"\2"}, r"cannot rewrite 'bias'.*groups the pattern has"),
        (["a"], r"rename must be a dict"),
    ],
)
def test_bad_rename_is_a_clear_error_and_changes_nothing(rename, match):
    a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    b = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
    before = values(b)
    with pytest.raises(CheckpointError, match=match):
        nnx.copy_weights(a, b, rename=rename, strict=False)
    assert_unchanged(b, before)


def test_no_name_in_common_is_an_error_not_a_silent_no_op():
    a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    b = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
    with pytest.raises(CheckpointError, match=r"no name in common.*prefix may differ"):
        nnx.copy_weights(a, b, strict=False)


def test_from_a_flat_dict_of_numpy_arrays_like_a_converted_state_dict():
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    torch_like = {"0.weight": np.ones((3, 2), np.float32), "0.bias": np.full(3, 2.0, np.float32)}
    converted = {k: (v.T if k.endswith("weight") else v) for k, v in torch_like.items()}
    report = nnx.copy_weights(
        converted,
        model,
        rename={r"^(\d+)\.weight$": r"layers.\1.kernel", r"^(\d+)\.": r"layers.\1."},
    )
    assert report.loaded == {"layers.0.bias": "0.bias", "layers.0.kernel": "0.weight"}
    np.testing.assert_array_equal(model.layers[0].kernel.value, np.ones((2, 3)))
    assert isinstance(model.layers[0].kernel.value, jax.Array)


def test_copies_are_new_buffers_so_donating_one_model_keeps_the_other():
    a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    b = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
    nnx.copy_weights(a, b)
    expected = np.asarray(a.kernel.value)
    donating = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
    nnx.update(b, donating(nnx.state(b)))
    assert not a.kernel.value.is_deleted()
    np.testing.assert_array_equal(a.kernel.value, expected)


def test_into_an_abstract_model_and_with_shardings():
    mesh = jax.make_mesh((8,), ("model",))
    source = nnx.Linear(4, 16, rngs=nnx.Rngs(0))
    abstract = nnx.eval_shape(lambda: nnx.Linear(4, 16, rngs=nnx.Rngs(1)))
    nnx.copy_weights(source, abstract)
    assert isinstance(abstract.kernel.value, jax.Array)
    np.testing.assert_array_equal(abstract.kernel.value, source.kernel.value)
    sharded = nnx.Linear(4, 16, rngs=nnx.Rngs(2))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model"))
    sharded.kernel.value = jax.device_put(sharded.kernel.value, spec)
    nnx.copy_weights(source, sharded)
    assert sharded.kernel.value.sharding == spec
    np.testing.assert_array_equal(sharded.kernel.value, source.kernel.value)


def test_abstract_source_is_an_error():
    abstract = nnx.eval_shape(lambda: nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointError, match=r"abstract \(ShapeDtypeStruct\).*initialise"):
        nnx.copy_weights(abstract, nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_rng_state_only_when_asked_and_key_kinds_must_agree():
    a = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    b = nnx.Dropout(0.5, rngs=nnx.Rngs(1))
    report = nnx.copy_weights(a, b, nnx.RngState)
    assert sorted(report.loaded) == ["rngs.count", "rngs.key"]
    np.testing.assert_array_equal(
        jax.random.key_data(b.rngs.key.value), jax.random.key_data(a.rngs.key.value)
    )
    c = nnx.Dropout(0.5, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    with pytest.raises(CheckpointMismatchError, match=r"rngs\.key: source PRNG keys of threefry"):
        nnx.copy_weights(a, c, nnx.RngState)


# -- load_safetensors -----------------------------------------------------------------------
def test_safetensors_rename_and_report(tmp_path):
    path = tmp_path / "enc.safetensors"
    encoder = Encoder(nnx.Rngs(0))
    nnx.save_safetensors(path, encoder, metadata={"source": "pretrain"})
    clf = Classifier(nnx.Rngs(1))
    report = nnx.load_safetensors(path, clf, rename={"^": "backbone."}, strict=False)
    assert report.metadata == {"source": "pretrain"}
    assert set(report.loaded) == {"backbone." + n for n in values(encoder)}
    np.testing.assert_array_equal(
        clf.backbone.layers[1].kernel.value, encoder.layers[1].kernel.value
    )
    before = values(clf)
    with pytest.raises(CheckpointMismatchError, match=r"head\.kernel: missing from the file"):
        nnx.load_safetensors(path, clf, rename={"^": "backbone."})
    assert_unchanged(clf, before)


# -- Checkpointer.restore(strict=False) ------------------------------------------------------
def test_inference_load_from_a_training_checkpoint_and_surgery(tmp_path):
    model = Classifier(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(3, model=model, optimizer=opt, metadata={"epoch": 3})
        # the backbone into a model with another head
        other = Classifier(nnx.Rngs(1), classes=7)
        head = np.asarray(other.head.kernel.value)
        out = ckpt.restore(model=other, strict=False, rename={r"^head\.": None})
        assert out["step"] == 3 and out["metadata"] == {"epoch": 3} and out["model"] is other
        report = out["reports"]["model"]
        assert report.skipped == {
            "head.bias": "dropped by rename",
            "head.kernel": "dropped by rename",
        }
        assert "head.kernel" in report.untouched and report.metadata == {"epoch": 3}
        np.testing.assert_array_equal(other.head.kernel.value, head)
        np.testing.assert_array_equal(
            other.backbone.layers[0].kernel.value, model.backbone.layers[0].kernel.value
        )
        # the encoder alone, from the classifier's checkpoint
        enc = nnx.eval_shape(lambda: Encoder(nnx.Rngs(5)))
        out = ckpt.restore(model=enc, rename={r"^backbone\.": "", r"^(head|drop)\.": None})
        assert isinstance(enc.layers[0].kernel.value, jax.Array)
        np.testing.assert_array_equal(enc.norm.var.value, model.backbone.norm.var.value)


def test_checkpoint_mismatch_changes_nothing_and_bad_targets_are_refused(tmp_path):
    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, model=Classifier(nnx.Rngs(0)))
        wider = Classifier(nnx.Rngs(1), width=16)
        before = values(wider)
        with pytest.raises(CheckpointMismatchError) as info:
            ckpt.restore(model=wider, strict=False)
        message = str(info.value)
        assert "model.head.kernel: checkpoint float32[8, 3], target float32[16, 3]" in message
        assert "nothing was loaded" in message
        assert_unchanged(wider, before)
        with pytest.raises(CheckpointError, match=r"graph objects.*'model' is a dict"):
            ckpt.restore(model={"a": np.ones(2)}, strict=False)
        with pytest.raises(CheckpointError, match=r"no 'other'"):
            ckpt.restore(other=wider, strict=False)


def test_one_submodule_of_a_checkpoint_into_a_standalone_layer(tmp_path):
    model = Classifier(nnx.Rngs(0))
    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, model=model)
    small = nnx.Linear(8, 3, rngs=nnx.Rngs(1))
    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        out = ckpt.restore(model=small, rename={r"^head\.": "", r"^(backbone|drop)\.": None})
    assert out["reports"]["model"].loaded == {"bias": "head.bias", "kernel": "head.kernel"}
    np.testing.assert_array_equal(small.kernel.value, model.head.kernel.value)


# -- the three loaders agree ----------------------------------------------------------------
@st.composite
def surgeries(draw):
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**16))
    keep = draw(st.lists(st.booleans(), min_size=len(widths), max_size=len(widths)))
    keep[draw(st.integers(0, len(widths) - 1))] = True  # something to load
    prefix = draw(st.sampled_from(["", "pre.", "a.b."]))
    return widths, seed, keep, prefix


def _stack(widths, seed, keep=None):
    rngs = nnx.Rngs(seed)
    layers = [
        nnx.Linear(2, w, rngs=rngs) if keep is None or k else nnx.Linear(2, w + 1, rngs=rngs)
        for w, k in zip(widths, keep or [True] * len(widths), strict=True)
    ]
    return nnx.Sequential(*layers)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(surgeries())
def test_copy_safetensors_and_checkpoint_load_the_same(tmp_path_factory, case):
    widths, seed, keep, prefix = case
    source = _stack(widths, seed)
    expected_source = values(source)
    folder = tmp_path_factory.mktemp("agree")
    # The source's names under a prefix (as another framework might name them), in a flat dict
    # and a safetensors file; the checkpoint keeps the source's own names. Layers whose width
    # differs in the target are dropped by name, which the rename rules do first.
    flat = {prefix + n: v for n, v in expected_source.items()}
    nnx.save_safetensors(folder / "w.safetensors", flat)
    drops = [i for i, k in enumerate(keep) if not k]
    prefixed = {rf"^{re.escape(prefix)}layers\.{i}\.": None for i in drops}
    prefixed[rf"^{re.escape(prefix)}"] = ""
    plain = {rf"^layers\.{i}\.": None for i in drops} or None
    results = []
    for loader in ("copy", "safetensors", "checkpoint"):
        target = _stack(widths, seed + 1, keep)
        before = values(target)
        if loader == "copy":
            report = nnx.copy_weights(flat, target, rename=prefixed, strict=False)
        elif loader == "safetensors":
            report = nnx.load_safetensors(
                folder / "w.safetensors", target, rename=prefixed, strict=False
            )
        else:
            with nnx.Checkpointer(folder / "ckpt") as ckpt:
                if ckpt.latest_step() is None:
                    ckpt.save(1, model=source)
                out = ckpt.restore(model=target, rename=plain, strict=False)
            report = out["reports"]["model"]
        got = values(target)
        for name in got:
            layer = int(name.split(".")[1])
            want = before[name] if layer in drops else expected_source[name]
            np.testing.assert_array_equal(got[name], want, err_msg=f"{loader}: {name}")
        results.append((sorted(report.loaded), report.untouched))
    assert results[0] == results[1] == results[2]
    assert len(results[0][0]) == 2 * (len(widths) - len(drops))


# -- found in review: failures that must change nothing --------------------------------------
class TupleKeyed(nnx.Module):
    """A dict key no dotted name can hold (left out by a Param filter)."""

    def __init__(self, seed: int):
        self.w = nnx.Param(jnp.full(2, float(seed)))
        self.d = nnx.Dict({(1, 2): nnx.BatchStat(jnp.ones(2))})


def test_a_leaf_without_a_name_left_out_by_the_filter_does_not_break_the_report():
    a, b = TupleKeyed(1), TupleKeyed(2)
    report = nnx.copy_weights(a, b, nnx.Param)
    assert report.loaded == {"w": "w"}
    np.testing.assert_array_equal(b.w.value, a.w.value)


def test_abstract_model_with_rng_keys_restores_them_by_name(tmp_path):
    model = Classifier(nnx.Rngs(0))
    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, model=model)
        abstract = nnx.eval_shape(lambda: Classifier(nnx.Rngs(5)))
        report = ckpt.restore(model=abstract, strict=False)["reports"]["model"]
    assert "drop.rngs.key" in report.loaded
    key = abstract.drop.rngs.key.value
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.key_data(key), jax.random.key_data(model.drop.rngs.key.value)
    )


@pytest.mark.parametrize("strict", [True, False])
def test_a_restore_of_several_objects_changes_all_or_none(tmp_path, strict):
    first = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, a=first, b=TupleKeyed(0))
        target = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
        before = values(target)
        # 'a' is written first; 'b' cannot take its saved dict key back, so 'a' is rolled back
        with pytest.raises(nnx.errors.UpdateError):
            ckpt.restore(a=target, b=TupleKeyed(1), strict=strict)
        assert_unchanged(target, before)


def test_by_name_restore_checks_the_metadata_checksum(tmp_path):
    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, model=nnx.Linear(2, 2, rngs=nnx.Rngs(0)), metadata={"epoch": 3})
    (tmp_path / "run" / "1" / "nnx_metadata" / "metadata").write_text('{"epoch": 4}')
    target = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
    before = values(target)
    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        with pytest.raises(nnx.CheckpointCorruptError, match=r"nnx_metadata"):
            ckpt.restore(model=target, strict=False)
        assert_unchanged(target, before)
        out = ckpt.restore(model=target, strict=False, verify=False)
    assert out["metadata"] == {"epoch": 4}


def test_dotted_dict_keys_that_collide_are_refused_at_save(tmp_path):
    class Dotted(nnx.Module):
        def __init__(self):
            self.d = nnx.Dict({"b.c": nnx.Param(jnp.ones(1)), "b": {"c": nnx.Param(jnp.ones(2))}})

    with nnx.Checkpointer(tmp_path / "run") as ckpt:
        with pytest.raises(
            CheckpointError, match=r"both have the name 'd\.b\.c'.*nothing was saved"
        ):
            ckpt.save(1, model=Dotted())
        assert ckpt.all_steps() == []
