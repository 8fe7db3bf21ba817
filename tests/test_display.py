"""One display engine: ``repr``, IPython and ``nnx.display`` all render through treescope.

Golden texts pin what a reader sees for a model, a State, a GraphDef and an Optimizer; the
other tests cover shared layers and cycles (drawn once, then referenced), the HTML form,
abstract and traced models, large models, and that ``repr`` never raises.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
import treescope

import nnx

display_module = importlib.import_module("nnx.display")  # `nnx.display` is the function


class MLP(nnx.Module):
    def __init__(self, din: int, dmid: int, dout: int, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(din, dmid, rngs=rngs)
        self.bn = nnx.BatchNorm(dmid, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.linear2 = nnx.Linear(dmid, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(self.dropout(nnx.relu(self.bn(self.linear1(x)))))


@pytest.fixture(scope="module")
def model() -> MLP:
    return MLP(2, 4, 1, rngs=nnx.Rngs(0))


# -- golden texts --------------------------------------------------------------------------
MODEL_TEXT = """\
MLP(
  bn=BatchNorm(
    num_features=4,
    use_bias=True,
    use_fast_variance=True,
    use_running_average=False,
    use_scale=True,
    bias=Param(value=Array(shape=(4,), dtype=float32)),
    mean=BatchStat(value=Array(shape=(4,), dtype=float32)),
    scale=Param(value=Array(shape=(4,), dtype=float32)),
    var=BatchStat(value=Array(shape=(4,), dtype=float32)),
  ),
  dropout=Dropout(
    deterministic=False,
    rate=0.1,
    rngs=RngStream(
      tag='default',
      count=RngCount(value=Array(0, dtype=uint32), tag='default'),
      key=RngKey(value=Array(shape=(), dtype=key<fry>), tag='default'),
    ),
  ),
  linear1=Linear(
    in_features=2,
    out_features=4,
    use_bias=True,
    bias=Param(value=Array(shape=(4,), dtype=float32)),
    kernel=Param(value=Array(shape=(2, 4), dtype=float32)),
  ),
  linear2=Linear(
    in_features=4,
    out_features=1,
    use_bias=True,
    bias=Param(value=Array(shape=(1,), dtype=float32)),
    kernel=Param(value=Array(shape=(4, 1), dtype=float32)),
  ),
)"""

STATE_TEXT = """\
State({
  'layers': State({
    0: State({
      'w': Param(value=Array(shape=(2, 2), dtype=float32), sharding=('data', None)),
    }),
  }),
  'count': BatchStat(value=Array(3, dtype=int32)),
})"""

BATCH_STATS_TEXT = """\
State({
  'bn': State({
    'mean': BatchStat(value=Array(shape=(4,), dtype=float32)),
    'var': BatchStat(value=Array(shape=(4,), dtype=float32)),
  }),
})"""

GRAPHDEF_TEXT = """\
GraphDef(
  MLP(
    bn=BatchNorm(
      num_features=4,
      use_bias=True,
      use_fast_variance=True,
      use_running_average=False,
      use_scale=True,
      bias=Param,
      mean=BatchStat,
      scale=Param,
      var=BatchStat,
    ),
    dropout=Dropout(
      deterministic=False,
      rate=0.1,
      rngs=RngStream(tag='default', count=RngCount, key=RngKey),
    ),
    linear1=Linear(in_features=2, out_features=4, use_bias=True, bias=Param, kernel=Param),
    linear2=Linear(in_features=4, out_features=1, use_bias=True, bias=Param, kernel=Param),
  ),
)"""

OPTIMIZER_TEXT = """\
Optimizer(
  opt_state=(
    ScaleByAdamState(
      count=OptArray(value=Array(0, dtype=int32)),
      mu=Dict({
        'bias': OptArray(value=Array(shape=(1,), dtype=float32)),
        'kernel': OptArray(value=Array(shape=(4, 1), dtype=float32)),
      }),
      nu=Dict({
        'bias': OptArray(value=Array(shape=(1,), dtype=float32)),
        'kernel': OptArray(value=Array(shape=(4, 1), dtype=float32)),
      }),
    ),
    EmptyState(),
  ),
  step=OptState(value=Array(0, dtype=uint32)),
)"""


def test_model_text(model):
    assert repr(model) == MODEL_TEXT
    assert str(model) == MODEL_TEXT


def test_model_text_is_treescope_text_with_arrays_summarised(model):
    # the rich rendering of the same engine: same structure, arrays drawn by treescope
    rich = treescope.render_to_text(model)
    assert rich.startswith("MLP(\n  bn=BatchNorm(")
    assert "jax.Array float32(2, 4)" in rich  # treescope's own array summary, with stats


def test_state_text(model):
    state = nnx.State(
        {
            "layers": {0: {"w": nnx.Param(jnp.ones((2, 2)), sharding=("data", None))}},
            "count": nnx.BatchStat(jnp.array(3)),
        }
    )
    assert repr(state) == STATE_TEXT
    assert repr(nnx.state(model, nnx.BatchStat)) == BATCH_STATS_TEXT


def test_graphdef_text(model):
    assert repr(nnx.graphdef(model)) == GRAPHDEF_TEXT


def test_optimizer_text(model):
    assert repr(nnx.Optimizer(model.linear2, optax.adam(1e-3))) == OPTIMIZER_TEXT


def test_model_and_optimizer_shows_the_model():
    text = repr(nnx.ModelAndOptimizer(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1)))
    assert text.startswith("ModelAndOptimizer(\n  model=Linear(\n    in_features=2,")
    assert "step=OptState(value=Array(0, dtype=uint32))" in text
    assert "tx=" not in text and "wrt=" not in text  # closures; the default filter


def test_variable_rngs_metrics_and_containers():
    assert repr(nnx.Param(jnp.ones((2, 3)), sharding=("data", None))) == (
        "Param(value=Array(shape=(2, 3), dtype=float32), sharding=('data', None))"
    )
    assert repr(nnx.BatchStat(jnp.array(2.5))) == "BatchStat(value=Array(2.5, dtype=float32))"
    assert repr(nnx.Rngs(params=0)) == (
        "Rngs(\n"
        "  params=RngStream(\n"
        "    tag='params',\n"
        "    count=RngCount(value=Array(0, dtype=uint32), tag='params'),\n"
        "    key=RngKey(value=Array(shape=(), dtype=key<fry>), tag='params'),\n"
        "  ),\n"
        ")"
    )
    assert repr(nnx.metrics.Average("loss")) == (
        "Average(\n"
        "  argname='loss',\n"
        "  count=MetricState(value=Array(0, dtype=int32)),\n"
        "  total=MetricState(value=Array(0.0, dtype=float32)),\n"
        ")"
    )
    assert repr(nnx.List([1, jnp.zeros(2)])) == "List([1, Array(shape=(2,), dtype=float32)])"
    assert repr(nnx.Dict(a=1)) == "Dict({'a': 1})"
    assert repr(nnx.Module()) == "Module()"


# -- what is hidden ------------------------------------------------------------------------
def test_constructor_noise_is_hidden_and_changed_configuration_shows():
    text = repr(nnx.Linear(2, 3, param_dtype=jnp.bfloat16, use_bias=False, rngs=nnx.Rngs(0)))
    assert text == (
        "Linear(\n"
        "  in_features=2,\n"
        "  out_features=3,\n"
        "  param_dtype=bfloat16,\n"
        "  use_bias=False,\n"
        "  kernel=Param(value=Array(shape=(2, 3), dtype=bfloat16)),\n"
        ")"
    )
    for noise in ("_meta", "kernel_init", "bias_init", "dot_general", "promote_dtype", "None"):
        assert noise not in text


def test_a_class_hides_more_names_with_nnx_repr_hide():
    class Block(nnx.Module):
        _nnx_repr_hide = ("cache_name",)

        def __init__(self, width: int = 4):
            self.width = width
            self.cache_name = "kv"
            self.act = jax.nn.relu  # a plain callable: hidden
            self.depth = 3

    assert repr(Block()) == "Block(depth=3)"  # width=4 is the default
    assert repr(Block(8)) == "Block(depth=3, width=8)"

    class Wrapped(Block):  # passes its arguments on: the base's defaults still count
        def __init__(self, **kwargs):
            super().__init__(**kwargs)

    assert repr(Wrapped()) == "Wrapped(depth=3)"


# -- shared references and cycles -----------------------------------------------------------
class Tied(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.encoder = nnx.Linear(2, 2, rngs=rngs)
        self.decoder = self.encoder  # a shared layer
        self.tied = self.encoder.kernel  # a shared Variable
        self.child = nnx.Module()
        self.child.parent = self  # a cycle


TIED_TEXT = """\
Tied(
  child=Module(parent=<same Tied as root>),
  decoder=Linear(
    in_features=2,
    out_features=2,
    use_bias=True,
    bias=Param(value=Array(shape=(2,), dtype=float32)),
    kernel=Param(value=Array(shape=(2, 2), dtype=float32)),
  ),
  encoder=<same Linear as .decoder>,
  tied=<same Param as .decoder.kernel>,
)"""


def test_shared_layers_and_cycles_show_as_references():
    tied = Tied(nnx.Rngs(0))
    assert repr(tied) == TIED_TEXT
    rich = treescope.render_to_text(tied)
    assert rich.count("Linear(") == 1
    assert "<same Tied as root>" in rich and "<same Linear as .decoder>" in rich
    assert "Repeated python obj" not in rich and "cyclic reference" not in rich
    assert "0x" not in rich  # no memory addresses
    assert repr(nnx.graphdef(tied)) == (
        "GraphDef(\n"
        "  Tied(\n"
        "    child=Module(parent=<same Tied as root>),\n"
        "    decoder=Linear(in_features=2, out_features=2, use_bias=True, bias=Param, "
        "kernel=Param),\n"
        "    encoder=<same Linear as .decoder>,\n"
        "    tied=<same Param as .decoder.kernel>,\n"
        "  ),\n"
        ")"
    )
    shared = nnx.List([tied.encoder, tied.encoder])
    assert repr(shared).endswith("  <same Linear as [0]>,\n])")
    # a repr inside another rendering starts its own table of drawn objects
    assert repr(tied.encoder).startswith("Linear(")


# -- HTML, IPython and nnx.display -----------------------------------------------------------
def test_html_names_the_layers_and_shapes(model):
    html = treescope.render_to_html(model, compressed=False)
    for name in ("linear1", "linear2", "BatchNorm", "Dropout", "kernel", "float32(2, 4)"):
        assert name in html


def test_ipython_pretty_print_is_the_repr(model):
    pretty = pytest.importorskip("IPython.lib.pretty")
    assert pretty.pretty(model) == MODEL_TEXT
    assert pretty.pretty(nnx.List([1])) == "List([1])"


def test_display_outside_a_notebook_prints_the_text(model, capsys):
    nnx.display(model, nnx.graphdef(model))
    assert capsys.readouterr().out == MODEL_TEXT + "\n" + GRAPHDEF_TEXT + "\n"
    nnx.display({"w": jnp.ones((2, 3))})  # any object; arrays summarised
    assert capsys.readouterr().out == "{'w': Array(shape=(2, 3), dtype=float32)}\n"


def test_display_in_a_notebook_shows_treescope_html(model, monkeypatch):
    pages = []

    def fake_display(obj, **kwargs):  # what IPython would receive
        pages.append(treescope.render_to_html(obj, compressed=False))

    monkeypatch.setattr(display_module, "_in_notebook", lambda: True)
    monkeypatch.setattr(treescope, "display", fake_display)
    tied = Tied(nnx.Rngs(0))
    nnx.display(model, [tied, tied.encoder])
    assert len(pages) == 2
    assert "linear1" in pages[0] and "float32(2, 4)" in pages[0]
    # the layer shared between the two list items is drawn once, then referenced
    assert "same Linear as [0].decoder" in pages[1]


def test_import_does_not_load_treescope():
    code = "import sys, nnx; assert 'treescope' not in sys.modules, 'treescope imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- big, abstract and traced models ---------------------------------------------------------
def test_repr_of_a_100_layer_model_is_bounded():
    # Its speed is not asserted here (machines are shared and noisy: a 1 s bound failed in CI
    # at 1.7 s under load); the output stays linear in the layers.
    class Deep(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.layers = [nnx.Linear(8, 8, rngs=rngs) for _ in range(100)]

    text = repr(Deep(nnx.Rngs(0)))
    assert text.count("Linear(") == 100 and len(text) < 250 * 100


def test_repr_of_an_abstract_model():
    abstract = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    text = repr(abstract)
    assert "kernel=Param(value=ShapeDtypeStruct(shape=(2, 3), dtype=float32))" in text
    assert "ShapeDtypeStruct" in treescope.render_to_text(abstract)


def test_repr_inside_jit_shows_tracers():
    texts = []

    @nnx.jit
    def step(m, x):
        texts.append(repr(m))
        texts.append(repr(nnx.state(m)))
        texts.append(treescope.render_to_text(m))
        return m(x)

    step(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnp.ones((1, 2)))
    assert "kernel=Param(value=Tracer(shape=(2, 3), dtype=float32))" in texts[0]
    assert "'kernel': Param(value=Tracer(shape=(2, 3), dtype=float32))" in texts[1]
    assert "Tracer" in texts[2]


# -- repr never raises ------------------------------------------------------------------------
class Grumpy:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_repr_falls_back_to_plain_text_when_treescope_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("treescope is broken")

    monkeypatch.setattr(treescope, "render_to_text", broken)
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    assert repr(m) == (
        "Linear(\n"
        "  in_features=2,\n"
        "  out_features=3,\n"
        "  use_bias=True,\n"
        "  bias=Param(value=Array(shape=(3,), dtype=float32)),\n"
        "  kernel=Param(value=Array(shape=(2, 3), dtype=float32)),\n"
        ")"
    )
    assert repr(nnx.graphdef(nnx.Param(1))) == "GraphDef(Param)"


def test_repr_never_raises():
    m = nnx.Module()
    m.odd = nnx.static(Grumpy())
    assert repr(m) == "Module(odd=<Grumpy object>)"
    leaked = []

    @nnx.jit
    def leak(x):
        leaked.append(nnx.Param(x))
        return x

    leak(jnp.ones(2))
    assert repr(leaked[0]) == "Param(value=<leaked Param value>)"
    assert "leaked Param value" in treescope.render_to_text(leaked[0])
