"""``nnx.metrics``: update/compute/reset, agreement with numpy over the concatenated data
across uneven batches (hypothesis picks the splits), masks, ``nnx.jit`` write-back, and
teaching errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnx

Accuracy, Average, Welford = nnx.metrics.Accuracy, nnx.metrics.Average, nnx.metrics.Welford

# Batch sizes of 1..6 elements (and the occasional empty batch for Welford), 1..5 batches.
batch_sizes = st.lists(st.integers(1, 6), min_size=1, max_size=5)


def batches_of(sizes, seed=0, scale=3.0, offset=10.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * scale + offset).astype(np.float32) for n in sizes]


@settings(max_examples=20)
@given(batch_sizes, st.integers(0, 2**16))
def test_average_matches_numpy_over_uneven_batches(sizes, seed):
    data = batches_of(sizes, seed)
    avg = Average()
    for batch in data:
        avg.update(values=jnp.asarray(batch))
    np.testing.assert_allclose(avg.compute(), np.concatenate(data).mean(), rtol=1e-5)
    assert int(avg.count.value) == sum(sizes)


@settings(max_examples=20)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=5), st.integers(0, 2**16))
def test_welford_matches_numpy_over_uneven_batches(sizes, seed):
    data = batches_of(sizes, seed)
    all_values = np.concatenate(data).astype(np.float64)
    wf = Welford()
    for batch in data:
        wf.update(values=jnp.asarray(batch))
    stats = wf.compute()
    if all_values.size == 0:
        assert int(wf.count.value) == 0
        return
    np.testing.assert_allclose(stats.mean, all_values.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.standard_deviation, all_values.std(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(
        stats.standard_error_of_mean,
        all_values.std() / np.sqrt(all_values.size),
        rtol=1e-3,
        atol=1e-5,
    )


def test_welford_is_stable_far_from_zero():
    """A naive sum-of-squares variance loses everything at an offset of 1e4 in float32."""
    data = batches_of([50, 7, 31], seed=3, scale=1.0, offset=1e4)
    wf = Welford()
    for batch in data:
        wf.update(values=jnp.asarray(batch))
    expected = np.concatenate(data).astype(np.float64).std()
    np.testing.assert_allclose(wf.compute().standard_deviation, expected, rtol=2e-2)


@settings(max_examples=15)
@given(batch_sizes, st.integers(0, 2**16))
def test_accuracy_matches_numpy_over_uneven_batches(sizes, seed):
    rng = np.random.default_rng(seed)
    logits = [rng.standard_normal((n, 4)).astype(np.float32) for n in sizes]
    labels = [rng.integers(0, 4, n).astype(np.int32) for n in sizes]
    acc = Accuracy()
    for lg, lb in zip(logits, labels, strict=True):
        acc.update(logits=jnp.asarray(lg), labels=jnp.asarray(lb))
    expected = (np.concatenate(logits).argmax(-1) == np.concatenate(labels)).mean()
    np.testing.assert_allclose(acc.compute(), expected, rtol=1e-6)


def test_accuracy_on_class_ids_and_binary_scores():
    ids = Accuracy()
    ids.update(logits=jnp.array([1, 2, 3, 0]), labels=jnp.array([1, 2, 0, 0]))
    assert float(ids.compute()) == 0.75
    binary = Accuracy(threshold=0.5)
    # >= threshold is positive (0.5 counts), labels > 0 are positives
    binary.update(logits=jnp.array([0.5, 0.2, 0.9, 0.1]), labels=jnp.array([1, 0, 0, 1]))
    assert float(binary.compute()) == 0.5


def test_masks_ignore_entries():
    avg = Average()
    avg.update(values=jnp.array([1.0, 2.0, 100.0]), mask=jnp.array([True, True, False]))
    avg.update(values=jnp.array([[3.0, 50.0]]), mask=jnp.array([True, False]))  # broadcast
    assert float(avg.compute()) == 2.0
    assert int(avg.count.value) == 3
    acc = Accuracy()
    logits = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    acc.update(logits=logits, labels=jnp.array([1, 1, 0]), mask=jnp.array([1, 0, 1]))
    assert float(acc.compute()) == 1.0


def test_welford_mask_matches_numpy_on_the_kept_values():
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    masks = [rng.random((3, 4)) > 0.4 for _ in range(3)]
    masks[1][:] = False  # an all-masked batch changes nothing
    wf = Welford()
    for values, mask in zip(batches, masks, strict=True):
        wf.update(values=jnp.asarray(values), mask=jnp.asarray(mask))
    kept = np.concatenate([v[m] for v, m in zip(batches, masks, strict=True)]).astype(np.float64)
    stats = wf.compute()
    assert int(wf.count.value) == kept.size
    np.testing.assert_allclose(stats.mean, kept.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.standard_deviation, kept.std(), rtol=1e-4)
    empty = Welford()
    empty.update(values=jnp.ones(3), mask=jnp.zeros(3, bool))
    assert int(empty.count.value) == 0 and float(empty.mean.value) == 0.0


def test_reset_and_python_scalars():
    avg = Average("loss")
    avg.update(loss=3.0)
    avg.update(loss=jnp.array(5.0))
    assert float(avg.compute()) == 4.0
    avg.reset()
    assert int(avg.count.value) == 0 and float(avg.total.value) == 0.0
    assert np.isnan(avg.compute())
    avg.update(loss=1.0)
    assert float(avg.compute()) == 1.0


def test_multimetric_update_compute_reset():
    metrics = nnx.MultiMetric(accuracy=Accuracy(), loss=Average("loss"), spread=Welford("loss"))
    metrics.update(
        logits=jnp.array([[0.0, 1.0], [1.0, 0.0]]), labels=jnp.array([1, 1]), loss=jnp.array(3.0)
    )
    metrics.update(logits=jnp.array([[0.0, 1.0]]), labels=jnp.array([1]), loss=jnp.array(1.0))
    out = metrics.compute()
    assert set(out) == {"accuracy", "loss", "spread"}
    np.testing.assert_allclose(out["accuracy"], 2 / 3, rtol=1e-6)
    assert float(out["loss"]) == 2.0
    np.testing.assert_allclose(out["spread"].standard_deviation, 1.0, rtol=1e-6)
    metrics.reset()
    assert all(int(m.count.value) == 0 for m in (metrics.accuracy, metrics.loss, metrics.spread))
    assert isinstance(metrics, nnx.Metric)


def test_update_inside_jit_writes_back_without_retracing():
    metrics = nnx.MultiMetric(accuracy=Accuracy(), loss=Average("loss"))
    traces = []

    @nnx.jit
    def eval_step(metrics, logits, labels):
        traces.append(1)
        loss = jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, labels[:, None], axis=-1)[:, 0])  # fmt: skip
        metrics.update(logits=logits, labels=labels, loss=loss)

    rng = np.random.default_rng(0)
    eager = nnx.MultiMetric(accuracy=Accuracy(), loss=Average("loss"))
    for _ in range(3):
        logits = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
        labels = jnp.asarray(rng.integers(0, 3, 5), jnp.int32)
        eval_step(metrics, logits, labels)
        eval_step.fun(eager, logits, labels)
    assert len(traces) == 1 + 3  # one trace, three eager calls through .fun
    assert int(metrics.accuracy.count.value) == 15
    out, expected = metrics.compute(), eager.compute()
    for k in out:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-6)


def test_metric_state_checkpoints_like_a_model():
    avg = Average()
    avg.update(values=jnp.array([1.0, 2.0]))
    saved = nnx.state(avg)
    assert {type(v) for _, v in saved.flat_state()} == {nnx.metrics.MetricState}
    avg.update(values=jnp.array([10.0]))
    nnx.update(avg, saved)
    assert float(avg.compute()) == 1.5
    graphdef, state = avg.split()
    assert float(nnx.merge(graphdef, state).compute()) == 1.5


def test_missing_keyword_and_bad_shapes_teach():
    with pytest.raises(nnx.NNXError, match=r"expects the keyword 'loss'.*Fix: pass loss="):
        Average("loss").update(values=jnp.ones(2))
    with pytest.raises(nnx.NNXError, match=r"logits of shape \(3, 2\) .* labels of shape \(4,\)"):
        Accuracy().update(logits=jnp.ones((3, 2)), labels=jnp.ones(4, jnp.int32))
    with pytest.raises(nnx.NNXError, match=r"threshold=0\.5"):
        Accuracy().update(logits=jnp.ones(3), labels=jnp.ones(3, jnp.int32))  # scores, no threshold
    with pytest.raises(nnx.NNXError, match=r"mask of shape \(2,\) does not broadcast"):
        Average().update(values=jnp.ones(3), mask=jnp.ones(2, bool))
    with pytest.raises(nnx.NNXError, match=r"\['update'\] would hide"):
        nnx.MultiMetric(update=Average())
