"""Every nnx transform behaves like running its body eagerly, on random object graphs.

Each property builds the same random graph recipe (``tests/strategies.py``: shared
sub-modules, tied Variables, cycles, containers, raw arrays, Rngs) twice, runs a random body
(``tests/transforms/bodies.py``: reads, in-place adds, new attributes, returned new and
existing objects, RNG draws) eagerly on one copy and through the transform on the other, and
compares, with the independent traversal ``walk``:

* the outputs, numerically (exact bytes: the bodies only add small binary fractions);
* the caller's graph after the call, and every graph object returned: structure, values,
  metadata, sharing, cycles -- a returned input object must be the caller's very object (a
  reference into the input graph), a new object a new one;
* which of the caller's objects are still where they were: objects passed in and mutated are
  updated in place, not replaced.

That is the rule every nnx transform documents: objects returned are returned (a returned
input object is the caller's very object, a new object is new); objects passed in and mutated
are updated in place; both at once works.

Transforms, and what they are compared with:

* ``nnx.jit(f)(m)`` and ``nnx.remat(f)(m)`` vs ``f(m)`` (structure may change inside);
* ``nnx.cond(pred, f, g, m)`` vs ``f(m)`` or ``g(m)``;
* ``nnx.fori_loop(0, n, body, m)`` vs ``for i in range(n): m = body(i, m)``;
* ``nnx.scan(body, length=n)`` with the module as the carry vs calling ``body`` n times,
  feeding each step's returned carry into the next, the per-step outputs stacked;
* ``nnx.vmap(f, in_axes=0, out_axes=0, axis_size=1)(m1)`` over a batch of one (every leaf of
  ``m1`` has a leading axis of 1; ``axis_size`` because a graph may hold no arrays at all) vs
  ``f(m)`` on the unbatched copy, the leading axis stripped from everything that comes out.

A body that changes the structure of a cond operand or a loop carry (the eager run shows it)
must raise ``nnx.errors.TraceContextError`` and leave the caller's objects exactly as they
were. Loop bodies return the carry as the module they received, a new module holding the same
attributes, or a deep copy.

Each property runs 100 examples by default and 3,000 in its ``slow`` variant
(``pytest -m slow``). Compiling is the cost (every new structure traces and compiles, and an
eager ``cond``/``fori_loop``/``scan`` call compiles every time): about 7-40 ms of CPU per
example, some 15 CPU-seconds for the default run, so graphs are small (``max_nodes=6``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import nnx
from nnx.errors import TraceContextError
from tests.strategies import GraphRecipe, Node, build_graph, graph_recipes, walk
from tests.transforms.bodies import loop_ops, make_carry, mirror_ops, ops_lists, run_ops

DEFAULT_EXAMPLES = 100
SLOW_EXAMPLES = 3000
EXAMPLES = [
    pytest.param(DEFAULT_EXAMPLES, id="default"),
    pytest.param(SLOW_EXAMPLES, id="slow", marks=pytest.mark.slow),
]

# The graph argument: a module (the root of the recipe), small so compiles stay cheap.
RECIPES = graph_recipes(max_nodes=6, roots=("module",))

# Bodies of functions whose structure may change inside (jit, remat, vmap).
FREE_OPS = ops_lists(
    (
        "read",
        "read",
        "add",
        "add",
        "new_attr",
        "replace",
        "link",
        "delete",
        "ret_new_var",
        "ret_obj",
        "ret_self",
        "ret_new_module",
        "dup",
        "rng",
    )
)
# cond branches: the same, but any structure change must raise.
COND_OPS = ops_lists(
    (
        "read",
        "read",
        "add",
        "add",
        "new_attr",
        "structure",
        "ret_new_var",
        "ret_obj",
        "ret_self",
        "ret_new_module",
        "dup",
        "rng",
    )
)
# Loop bodies: the per-step output (scan) holds arrays only; the carry is returned at the end.
FORI_OPS = loop_ops(("add", "add", "add_i", "add_i", "rng", "new_attr", "structure"))
# A scan's per-step outputs hold arrays only, so its bodies never return a new attribute.
SCAN_OPS = loop_ops(("read", "read", "add", "add", "rng", "new_attr_kept", "structure_kept"))

# Transformed functions, per (transform, body), so jax's caches hit when a body and a
# structure repeat (hypothesis replays and varies examples). Bounded: each holds executables.
# (Eager cond/fori_loop/scan calls trace and compile on every call whatever we keep.)
_TRANSFORMED: dict[tuple, Callable] = {}
_MEMO_SIZE = 256


def _memo(key: tuple, make: Callable[[], Callable]) -> Callable:
    fn = _TRANSFORMED.get(key)
    if fn is None:
        if len(_TRANSFORMED) >= _MEMO_SIZE:
            del _TRANSFORMED[next(iter(_TRANSFORMED))]
        fn = _TRANSFORMED[key] = make()
    return fn


def _run(n: int, check: Callable[..., None], *strategies: st.SearchStrategy) -> None:
    """Runs `check` as a hypothesis test with `n` examples."""
    settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(*strategies)(check))()


# -- comparing outcomes ---------------------------------------------------------------------
def _strip_desc(desc: tuple) -> tuple:
    """An ``array_desc`` with the leading axis (of size 1) removed from its shape."""
    if desc[0] == "key":
        shape = desc[2]
        assert shape[:1] == (1,), f"expected a leading axis of 1, got {shape}"
        return (*desc[:2], shape[1:], *desc[3:])
    if desc[0] == "value":
        return desc
    shape = desc[1]
    assert shape[:1] == (1,), f"expected a leading axis of 1, got {shape}"
    return (desc[0], shape[1:], *desc[2:])


def _strip_entry(entry: tuple) -> tuple:
    path, d = entry
    if d[0] == "var":
        return (path, (*d[:3], _strip_desc(d[3])))
    if d[0] == "array":
        return (path, ("array", *_strip_desc(d[1:])))
    return entry


def _no_bytes(desc: tuple) -> tuple:
    if desc[0] == "key":
        return desc[:3]
    if desc[0] == "value":
        return desc
    return desc[:2]


def _skeleton(root: Any) -> list:
    """``walk`` entries without the values: structure, types, shapes, dtypes, metadata."""
    out = []
    for path, d in walk(root).entries:
        if d[0] == "var":
            d = (*d[:3], _no_bytes(d[3]))
        elif d[0] == "array":
            d = ("array", *_no_bytes(d[1:]))
        out.append((path, d))
    return out


def _outcome(pre: list, root: Any, out: Any, strip: bool = False) -> tuple[list, list]:
    """(walk entries of (root, out), where each of the caller's objects `pre` is now)."""
    info = walk((root, out))
    index = {id(o): j for j, o in enumerate(info.objects)}
    where = [index.get(id(o)) for o in pre]
    entries = [_strip_entry(e) for e in info.entries] if strip else info.entries
    return entries, where


def _first_difference(a: list, b: list) -> str:
    """The first differing walk entry (an array is described by dtype, shape, bytes, and
    whether it is a jax.Array)."""
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"entry {k}: eager {x!r}\n   transformed {y!r}"
    return f"lengths differ: eager {len(a)}, transformed {len(b)}"


def _assert_same(eager: tuple[list, list], transformed: tuple[list, list]) -> None:
    e_entries, e_where = eager
    t_entries, t_where = transformed
    assert t_entries == e_entries, _first_difference(e_entries, t_entries)
    assert t_where == e_where, (
        "the caller's objects (walk order) ended up at different places (None: no longer "
        f"reachable from the input or the output): eager {e_where}, transformed {t_where}"
    )


class _Copy:
    """A fresh build of the recipe, and what it looked like before the call."""

    def __init__(self, recipe: GraphRecipe, batched: bool = False):
        self.root = build_graph(_batched(recipe) if batched else recipe)
        if batched:
            for v in walk(self.root).of_type(nnx.RngKey, nnx.RngCount):
                v.value = v.value[None]
        info = walk(self.root)
        self.pre = info.objects
        self.entries = info.entries

    def assert_untouched(self) -> None:
        """The caller's objects are exactly as they were: the same objects, values, edges."""
        info = walk(self.root)
        assert info.entries == self.entries, _first_difference(self.entries, info.entries)
        assert len(info.objects) == len(self.pre)
        assert all(a is b for a, b in zip(info.objects, self.pre, strict=True))


# -- batched recipes (vmap) -----------------------------------------------------------------
def _batched_spec(spec: tuple) -> tuple:
    if spec[0] == "array":
        return ("array", (1, *spec[1]), spec[2])
    if spec[0] == "tuple":
        return ("tuple", tuple(_batched_spec(s) for s in spec[1]))
    return spec


def _batched(recipe: GraphRecipe) -> GraphRecipe:
    """The recipe with a leading axis of 1 on every array (same values, same metadata)."""
    containers = []
    for kind, plain, items in recipe.containers:
        if kind == "list":
            items = tuple(_batched_spec(s) for s in items)
        else:
            items = tuple((k, _batched_spec(s)) for k, s in items)
        containers.append((kind, plain, items))
    return GraphRecipe(
        root=recipe.root,
        modules=tuple(
            (cls, tuple((name, _batched_spec(s)) for name, s in attrs))
            for cls, attrs in recipe.modules
        ),
        variables=tuple((t, (1, *shape), seed, meta) for t, shape, seed, meta in recipe.variables),
        containers=tuple(containers),
        rngs=recipe.rngs,
    )


# -- the checks -----------------------------------------------------------------------------
def _check_plain(transform: str, recipe: GraphRecipe, ops: tuple) -> None:
    """``transform(f)(m)`` vs ``f(m)`` for jit, remat and vmap."""
    note(f"ops={ops!r}")
    eager = _Copy(recipe)
    out_e = run_ops(ops, eager.root)
    body = functools.partial(run_ops, ops)
    if transform == "jit":
        fn = _memo(("jit", ops), lambda: nnx.jit(body))
    elif transform == "remat":
        fn = _memo(("remat", ops), lambda: nnx.remat(body))
    else:
        fn = _memo(("vmap", ops), lambda: nnx.vmap(body, in_axes=0, out_axes=0, axis_size=1))
    batched = transform == "vmap"
    moved = _Copy(recipe, batched=batched)
    out_t = fn(moved.root)
    _assert_same(
        _outcome(eager.pre, eager.root, out_e),
        _outcome(moved.pre, moved.root, out_t, strip=batched),
    )


def _check_cond(recipe: GraphRecipe, ops: tuple, pred_kind: int) -> None:
    pred = (True, False, jnp.array(True), jnp.array(False))[pred_kind]
    other = mirror_ops(ops)
    taken = ops if bool(pred) else other
    note(f"pred={pred!r} true_ops={ops!r} false_ops={other!r}")
    eager = _Copy(recipe)
    before = _skeleton(eager.root)
    out_e = run_ops(taken, eager.root)
    changed = _skeleton(eager.root) != before
    f = functools.partial(run_ops, ops)
    g = functools.partial(run_ops, other)
    moved = _Copy(recipe)
    if changed:
        with pytest.raises(TraceContextError):
            nnx.cond(pred, f, g, moved.root)
        moved.assert_untouched()
        return
    out_t = nnx.cond(pred, f, g, moved.root)
    _assert_same(_outcome(eager.pre, eager.root, out_e), _outcome(moved.pre, moved.root, out_t))


def _loop_step(ops: tuple, ret: str) -> Callable:
    def step(i: Any, m: nnx.Module) -> nnx.Module:
        run_ops(ops, m, i)
        return make_carry(ret, m)

    return step


def _scan_step(ops: tuple, ret: str) -> Callable:
    def step(m: nnx.Module) -> tuple[nnx.Module, tuple]:
        ys = run_ops(ops, m)
        return make_carry(ret, m), ys

    return step


def _variables(carry: Any) -> dict[int, tuple[nnx.Variable, Any]]:
    """The Variables reachable from `carry`, by id, with their current values."""
    return {
        id(v): (v, v.get_value()) for _, v in nnx.iter_graph(carry) if isinstance(v, nnx.Variable)
    }


def _eager_loop(recipe: GraphRecipe, n: int, step: Callable) -> tuple[_Copy, Any, list, bool]:
    """Runs `step` n times eagerly; returns (the copy, the last carry, the per-step outputs,
    whether the loop must be refused: a step returned a carry of another structure, or
    changed Variables it received and handed on other objects in their place -- in a traced
    loop that change could only apply to the first step). With n == 0 one step is run on a
    scratch copy to tell (a traced body runs even when the loop does not)."""
    eager = _Copy(recipe)
    skeleton = _skeleton(eager.root)
    probe = eager if n else _Copy(recipe)
    carry, outputs, changed = probe.root, [], False
    for i in range(max(n, 1)):
        before = _variables(carry)
        carry, y = step(i, carry)
        outputs.append(y)
        kept = _variables(carry)
        dropped = any(k not in kept and v.get_value() is not old for k, (v, old) in before.items())
        changed = changed or dropped or _skeleton(carry) != skeleton
    if not n:
        carry, outputs = eager.root, []
    return eager, carry, outputs, changed


def _check_fori(recipe: GraphRecipe, body: tuple, n: int) -> None:
    ops, ret = body
    note(f"n={n} ops={ops!r} returns={ret!r}")
    step = _loop_step(ops, ret)
    eager, carry_e, _, changed = _eager_loop(recipe, n, lambda i, m: (step(i, m), None))
    moved = _Copy(recipe)
    if n == 0:  # the body never runs: the caller's objects come back untouched
        assert nnx.fori_loop(0, n, step, moved.root) is moved.root
        moved.assert_untouched()
        return
    if changed:
        with pytest.raises(TraceContextError):
            nnx.fori_loop(0, n, step, moved.root)
        moved.assert_untouched()
        return
    carry_t = nnx.fori_loop(0, n, step, moved.root)
    _assert_same(_outcome(eager.pre, eager.root, carry_e), _outcome(moved.pre, moved.root, carry_t))


def _check_scan(recipe: GraphRecipe, body: tuple, n: int) -> None:
    ops, ret = body
    note(f"n={n} ops={ops!r} returns={ret!r}")
    step = _scan_step(ops, ret)
    eager, carry_e, ys, changed = _eager_loop(recipe, n, lambda i, m: step(m))
    scanned = nnx.scan(step, length=n, in_axes=nnx.Carry, out_axes=(nnx.Carry, 0))
    moved = _Copy(recipe)
    if changed:
        with pytest.raises(TraceContextError):
            scanned(moved.root)
        moved.assert_untouched()
        return
    ys_e = tuple(jnp.stack([y[j] for y in ys]) for j in range(len(ys[0])))
    carry_t, ys_t = scanned(moved.root)
    _assert_same(
        _outcome(eager.pre, eager.root, (carry_e, ys_e)),
        _outcome(moved.pre, moved.root, (carry_t, ys_t)),
    )


def _check_jit(recipe: GraphRecipe, ops: tuple) -> None:
    _check_plain("jit", recipe, ops)


def _check_remat(recipe: GraphRecipe, ops: tuple) -> None:
    _check_plain("remat", recipe, ops)


def _check_vmap(recipe: GraphRecipe, ops: tuple) -> None:
    _check_plain("vmap", recipe, ops)


# -- the properties -------------------------------------------------------------------------
@pytest.mark.parametrize("n", EXAMPLES)
def test_jit_is_eager(n: int) -> None:
    _run(n, _check_jit, RECIPES, FREE_OPS)


@pytest.mark.parametrize("n", EXAMPLES)
def test_remat_is_eager(n: int) -> None:
    _run(n, _check_remat, RECIPES, FREE_OPS)


@pytest.mark.parametrize("n", EXAMPLES)
def test_vmap_over_a_batch_of_one_is_eager(n: int) -> None:
    _run(n, _check_vmap, RECIPES, FREE_OPS)


@pytest.mark.parametrize("n", EXAMPLES)
def test_cond_is_the_eager_branch(n: int) -> None:
    _run(n, _check_cond, RECIPES, COND_OPS, st.integers(0, 3))


@pytest.mark.parametrize("n", EXAMPLES)
def test_fori_loop_is_a_python_loop(n: int) -> None:
    _run(n, _check_fori, RECIPES, FORI_OPS, st.integers(0, 3))


@pytest.mark.parametrize("n", EXAMPLES)
def test_scan_is_a_python_loop(n: int) -> None:
    _run(n, _check_scan, RECIPES, SCAN_OPS, st.sampled_from((1, 1, 2, 3)))


def test_comparisons_see_differences() -> None:
    """The comparison helpers are not blind: values, shapes and identity all show."""
    a = nnx.Param(jnp.zeros((1, 2), jnp.float32))
    b = nnx.Param(jnp.ones((1, 2), jnp.float32))
    assert _outcome([], a, (), strip=True)[0] != _outcome([], b, (), strip=True)[0]
    assert _outcome([], a, (), strip=True)[0][1][1][3][1] == (2,)
    assert _skeleton(a) == _skeleton(b)
    assert _skeleton(a) != _skeleton(nnx.Param(jnp.zeros((2,), jnp.float32)))
    # The same input object returned vs an equal new one.
    assert _outcome([a], a, (a,)) != _outcome([a], a, (nnx.Param(a.value),))
    # An object of the caller's replaced by an equal one.
    m = Node()
    m.w = a
    pre = walk(m).objects
    before = _outcome(pre, m, ())
    m.w = nnx.Param(a.value)
    assert _outcome(pre, m, ()) != before
    with pytest.raises(AssertionError):
        _strip_desc(("float32", (2,), b"", True))
