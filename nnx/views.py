"""Views of a model, and capturing what it sows.

:func:`view` and :func:`with_attributes` return a *new* object graph (new Modules and
containers) that shares the original's Variables, with some static attributes changed: an
evaluation view of a training model, a decoding view of an attention stack. Training the
view trains the original; switching the view's mode leaves the original's mode alone.

:func:`view` asks each Module through its ``set_view(...)`` method, which takes the view
arguments it understands as keywords (``MultiHeadAttention.set_view(decode=True, ...)``);
:func:`view_info` lists them. A Module without ``set_view`` still takes the two mode
attributes that ``Module.train()``/``Module.eval()`` switch, ``deterministic`` and
``use_running_average``, when it has them. :func:`with_attributes` sets any attribute the
selected Modules already have.

:func:`capture` runs a function and returns, next to its result, the values that Modules
sowed (``Module.sow``) or perturbed (``Module.perturb``) during it, and leaves the model as it
was.

Example:
  >>> class Block(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.linear = nnx.Linear(2, 3, rngs=rngs)
  ...     self.dropout = nnx.Dropout(0.5)
  >>> block = Block(nnx.Rngs(0))
  >>> ev = nnx.view(block, deterministic=True)
  >>> ev.dropout.deterministic, block.dropout.deterministic, ev.linear.kernel is block.linear.kernel
  (True, False, True)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

from ._graph_mode import check_tree_mode
from .errors import ArgumentError, AttributeNotFoundError, format_path
from .filters import Filter, to_predicate
from .graph import graphdef, iter_graph, merge, pop, variables
from .module import Module, iter_modules
from .pytreelib import is_array
from .state import State
from .variablelib import Intermediate, Perturbation, Variable

__all__ = ["capture", "view", "view_info", "with_attributes"]

A = TypeVar("A")
Path = tuple[Hashable, ...]

# What a Module without ``set_view`` takes from view(): the attributes train()/eval() switch.
_MODE_ATTRIBUTES = ("deterministic", "use_running_average")


def _new_structure(node: Any, fn_name: str, graph: bool | None) -> Any:
    """A copy of the graph with new Modules and containers over the same Variables."""
    check_tree_mode(graph, node, fn_name)
    return merge(graphdef(node), variables(node))


def _accepted(set_view: Callable[..., Any]) -> set[str] | None:
    """The keywords a ``set_view`` takes; None when it takes ``**kwargs`` (everything)."""
    params = inspect.signature(set_view).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def view(
    node: A,
    /,
    *,
    only: Filter = ...,
    raise_if_not_found: bool = True,
    graph: bool | None = None,
    **kwargs: Any,
) -> A:
    """A new graph sharing `node`'s Variables, with its Modules' views set by `kwargs`.

    Each selected Module that defines ``set_view`` is called with the keywords its signature
    takes (all of them if it takes ``**kwargs``); one without ``set_view`` takes
    ``deterministic`` / ``use_running_average`` if it has that attribute. Modules are
    visited children first. `node` itself is never changed.

    Args:
      node: the model (or any graph) to view.
      only: a filter selecting the Modules to change (by type, path...); all by default.
      raise_if_not_found: raise if some keyword was taken by no Module.
      graph: ``False`` refuses a graph with shared references (flax's tree mode).
      **kwargs: the view arguments, e.g. ``deterministic=True``, ``decode=True``.

    Returns:
      The new graph, of the same structure as `node`.

    Raises:
      AttributeNotFoundError: a keyword no selected Module takes (`node` is unchanged).

    Example:
      >>> class Block(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(2, 5, rngs=rngs)
      ...     self.dropout = nnx.Dropout(0.5)
      ...     self.batch_norm = nnx.BatchNorm(5, rngs=rngs)
      >>> block = Block(nnx.Rngs(0))
      >>> ev = nnx.view(block, deterministic=True, use_running_average=True)
      >>> ev.dropout.deterministic, ev.batch_norm.use_running_average
      (True, True)
      >>> block.dropout.deterministic, ev.batch_norm.scale is block.batch_norm.scale
      (False, True)
      >>> only_drop = nnx.view(block, only=nnx.Dropout, deterministic=True)
      >>> only_drop.dropout.deterministic, only_drop.batch_norm.use_running_average
      (True, False)
    """
    new = _new_structure(node, "view", graph)
    predicate = to_predicate(only)
    remaining = set(kwargs)
    for path, obj in list(iter_graph(new)):
        if isinstance(obj, Variable) or is_array(obj) or not predicate(path, obj):
            continue
        set_view = getattr(obj, "set_view", None)
        if callable(set_view):
            names = _accepted(set_view)
            if names is None:
                set_view(**kwargs)
                remaining.clear()
            else:
                set_view(**{k: v for k, v in kwargs.items() if k in names})
                remaining -= names
        elif isinstance(obj, Module):
            for name in _MODE_ATTRIBUTES:
                if name in kwargs and name in obj.__dict__:
                    setattr(obj, name, kwargs[name])
                    remaining.discard(name)
    if raise_if_not_found and remaining:
        raise AttributeNotFoundError(
            f"nnx.view({type(node).__name__}): no selected module takes "
            f"{sorted(remaining)}, so no view was made (the model is unchanged).\n"
            f"{_taken(new, predicate)}\n"
            "Fix: check the spelling (nnx.view_info(model) lists what each module takes), "
            "or pass raise_if_not_found=False."
        )
    return new


def _taken(node: Any, predicate: Callable[[Path, Any], bool]) -> str:
    """One line per Module class: the view arguments it takes."""
    lines = []
    for cls, names in _view_arguments(node, predicate).items():
        lines.append(f"  {cls.__qualname__}: {', '.join(names) or '(any keyword)'}")
    if not lines:
        return "The selected modules take no view arguments."
    return "View arguments taken:\n" + "\n".join(lines)


def _view_arguments(node: Any, predicate: Callable[[Path, Any], bool]) -> dict[type, list[str]]:
    found: dict[type, list[str]] = {}
    for path, obj in iter_graph(node):
        if isinstance(obj, Variable) or is_array(obj) or not predicate(path, obj):
            continue
        cls = type(obj)
        set_view = getattr(cls, "set_view", None)
        if callable(set_view):
            names = _accepted(obj.set_view)
            found[cls] = sorted(names) if names is not None else []
        elif isinstance(obj, Module):
            attrs = [n for n in _MODE_ATTRIBUTES if n in obj.__dict__]
            if attrs:
                found[cls] = sorted(set(found.get(cls, [])) | set(attrs))
    return dict(sorted(found.items(), key=lambda kv: kv[0].__qualname__))


def _arg_docs(doc: str | None) -> dict[str, str]:
    """``name -> description`` from the ``Args:`` section of a Google docstring."""
    out: dict[str, tuple[int, list[str]]] = {}  # name -> (indent, lines)
    if not doc or "Args:" not in doc:
        return {}
    section = doc.split("Args:", 1)[1]
    current = None
    for line in section.splitlines()[1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break  # the next section (Returns:, Raises:...)
        text = line.strip()
        head, sep, rest = text.partition(":")
        if sep and head.isidentifier() and (current is None or indent <= out[current][0]):
            current = head
            out[current] = (indent, [rest.strip()] if rest.strip() else [])
        elif current is not None:
            out[current][1].append(text)
    return {k: "\n".join("    " + t for t in lines) for k, (_, lines) in out.items()}


def view_info(node: Module, /, *, only: Filter = ..., graph: bool | None = None) -> str:
    """Describes the arguments :func:`view` takes for `node` and its sub-modules.

    One block per Module class (sorted by name): each ``set_view`` parameter with its
    annotation, default and the description from the ``Args:`` section of its docstring (the
    signature alone when it has no docstring), and for a Module without ``set_view`` the
    mode attributes it has.

    Args:
      node: the model to describe.
      only: a filter selecting the Modules to describe; all by default.
      graph: ``False`` refuses a graph with shared references (flax's tree mode).

    Returns:
      The description, ``''`` when no Module takes view arguments.

    Example:
      >>> class Block(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(2, 2, rngs=rngs)
      ...     self.dropout = nnx.Dropout(0.5)
      >>> print(nnx.view_info(Block(nnx.Rngs(0))))
      Dropout:
        deterministic: bool | None = False
          the module's attribute (Module.train()/eval() switch it)
    """
    check_tree_mode(graph, node, "view_info")
    predicate = to_predicate(only)
    lines: list[str] = []
    seen: dict[type, Any] = {}
    for path, obj in iter_graph(node):
        if isinstance(obj, Variable) or is_array(obj) or not predicate(path, obj):
            continue
        if type(obj) not in seen and (
            callable(getattr(type(obj), "set_view", None))
            or (isinstance(obj, Module) and any(n in obj.__dict__ for n in _MODE_ATTRIBUTES))
        ):
            seen[type(obj)] = obj
    for cls, obj in sorted(seen.items(), key=lambda kv: kv[0].__qualname__):
        lines.append(f"{cls.__qualname__}:")
        set_view = getattr(cls, "set_view", None)
        if not callable(set_view):
            for name in _MODE_ATTRIBUTES:
                if name in obj.__dict__:
                    annotation = _annotation_of(obj, name)
                    lines.append(f"  {name}: {annotation} = {obj.__dict__[name]!r}")
                    lines.append("    the module's attribute (Module.train()/eval() switch it)")
            continue
        signature = inspect.signature(set_view)
        doc = inspect.getdoc(set_view)
        if not doc:
            lines.append(f"  set_view{signature}")
            continue
        described = _arg_docs(doc)
        for name, param in list(signature.parameters.items())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            annotation = param.annotation
            text = annotation if isinstance(annotation, str) else inspect.formatannotation(
                annotation
            )
            head = f"  {name}: {text}" if annotation is not param.empty else f"  {name}"
            if param.default is not param.empty:
                head += f" = {param.default}"
            lines.append(head)
            if name in described:
                lines.append(described[name])
    return "\n".join(lines)


def _annotation_of(obj: Any, name: str) -> str:
    """The parameter annotation of `name` in the class's ``__init__``, else the value's type."""
    try:
        param = inspect.signature(type(obj).__init__).parameters.get(name)
    except (TypeError, ValueError):
        param = None
    if param is not None and param.annotation is not param.empty:
        a = param.annotation
        return a if isinstance(a, str) else inspect.formatannotation(a)
    return type(obj.__dict__[name]).__name__


def with_attributes(
    node: A,
    /,
    *,
    only: Filter = ...,
    raise_if_not_found: bool = True,
    graph: bool | None = None,
    **attributes: Any,
) -> A:
    """A new graph sharing `node`'s Variables, with `attributes` set on the selected Modules
    that have them (``hasattr``). Unlike ``Module.set_attributes``, `node` is not changed.

    Args:
      node: the model (or any graph) to copy.
      only: a filter selecting the Modules to change; all by default.
      raise_if_not_found: raise if some attribute was found on no selected Module.
      graph: ``False`` refuses a graph with shared references (flax's tree mode).
      **attributes: the attributes and their new values.

    Returns:
      The new graph.

    Raises:
      AttributeNotFoundError: an attribute no selected Module has (`node` is unchanged).

    Example:
      >>> class Block(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(2, 5, rngs=rngs)
      ...     self.dropout = nnx.Dropout(0.5)
      >>> block = Block(nnx.Rngs(0))
      >>> new = nnx.with_attributes(block, deterministic=True)
      >>> new.dropout.deterministic, block.dropout.deterministic
      (True, False)
      >>> new.linear.kernel is block.linear.kernel
      True
    """
    new = _new_structure(node, "with_attributes", graph)
    predicate = to_predicate(only)
    remaining = set(attributes)
    for path, module in list(iter_modules(new)):
        if not predicate(path, module):
            continue
        for name, value in attributes.items():
            if hasattr(module, name):
                setattr(module, name, value)
                remaining.discard(name)
    if remaining and raise_if_not_found:
        raise AttributeNotFoundError(
            f"nnx.with_attributes({type(node).__name__}): no selected module has the "
            f"attribute(s) {sorted(remaining)}, so no copy was made (the model is "
            "unchanged).\nFix: check the spelling (an attribute is only set where a module "
            "already has it), or pass raise_if_not_found=False."
        )
    return new


# -- capture ---------------------------------------------------------------------------------
_SOWN_TYPES = (Intermediate, Perturbation)


def capture(
    fn: Callable[..., Any] | type[Variable],
    *var_types: type[Variable],
    init: State | Mapping | None = None,
    method_outputs: type[Variable] | None = None,
) -> Callable[..., Any]:
    """Wraps `fn` to return, with its result, what Modules sowed or perturbed while it ran.

    `fn` is a Module (its ``__call__`` is run), a bound method of one, or a function whose
    first argument is the Module. The wrapper returns ``result`` when `var_types` is empty,
    ``(result, state)`` for one type and ``(result, state1, state2, ...)`` for several: each
    State holds, by module path, the Variables of exactly that type that ``Module.sow`` /
    ``Module.perturb`` created during the call. Values sown before the call are not
    included and stay where they are; values sown during it are removed from the model, so
    the model ends with the structure it started with.

    ``nnx.capture(nnx.Intermediate)`` (a Variable type first) returns a decorator.

    Args:
      fn: the Module, bound method or function to run.
      *var_types: the Variable types to return (``nnx.Intermediate``, ``nnx.Perturbation``...).
      init: a State (as returned by a capture) whose Variables are placed on the modules at
        their paths before the call: ``perturb`` then adds them to its value, which is how
        gradients with respect to intermediate values are taken.
      method_outputs: also sow, under the method's name, the output of every public method
        and ``__call__`` that the model's Module classes define themselves (the classes are
        restored afterwards; do not run other code on these classes concurrently).

    Returns:
      The wrapped function.

    Example:
      >>> class Model(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(2, 3, rngs=rngs)
      ...   def __call__(self, x):
      ...     h = self.linear(x)
      ...     self.sow(nnx.Intermediate, 'features', h)
      ...     return 2 * self.perturb('grad_of_h', h)
      >>> model = Model(nnx.Rngs(0))
      >>> y, sown = nnx.capture(model, nnx.Intermediate)(jnp.ones(2))
      >>> sown['features'].value[0].shape, hasattr(model, 'features')
      ((3,), False)
      >>> _, perturbations = nnx.capture(model, nnx.Perturbation)(jnp.ones(2))
      >>> def loss(model, perturbations, x):
      ...   y, sown = nnx.capture(model, nnx.Intermediate, init=perturbations)(x)
      ...   return y.sum(), sown
      >>> wrt = nnx.DiffState(1, nnx.Perturbation)
      >>> grads, _ = nnx.grad(loss, argnums=wrt, has_aux=True)(model, perturbations, jnp.ones(2))
      >>> grads['grad_of_h'].value
      Array([2., 2., 2.], dtype=float32)
    """
    if isinstance(fn, type) and issubclass(fn, Variable):
        types_ = (fn, *var_types)

        def decorator(actual: Callable[..., Any]) -> Callable[..., Any]:
            return capture(actual, *types_, init=init, method_outputs=method_outputs)

        return decorator
    for t in var_types:
        if not (isinstance(t, type) and issubclass(t, Variable)):
            raise ArgumentError(
                f"nnx.capture: var_types must be Variable types (nnx.Intermediate...), got "
                f"{t!r}.\nFix: pass the types after the function: nnx.capture(model, "
                "nnx.Intermediate)."
            )
    if not callable(fn):
        raise ArgumentError(
            f"nnx.capture expects a Module, a bound method or a function, got "
            f"{type(fn).__name__}.\nFix: nnx.capture(model, nnx.Intermediate)(x)."
        )
    bound = None
    if isinstance(fn, Module):
        bound = fn
    elif inspect.ismethod(fn) and isinstance(fn.__self__, Module):
        bound = fn.__self__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if bound is not None:
            module = bound
        elif args:
            module = args[0]
        else:
            raise ArgumentError(
                "nnx.capture: the wrapped function was called without arguments, so there is "
                "no module to capture from.\nFix: pass the module first: forward(model, x)."
            )
        return _run_captured(fn, module, args, kwargs, var_types, init, method_outputs)

    return wrapper


def _run_captured(
    fn: Callable[..., Any],
    module: Any,
    args: tuple,
    kwargs: dict,
    var_types: tuple[type[Variable], ...],
    init: Mapping | None,
    method_outputs: type[Variable] | None,
) -> Any:
    kinds = set(var_types) | ({method_outputs} if method_outputs else set())
    placed = _init_values(init)
    kinds |= {type(v) for vs in placed.values() for _, v in vs}
    # Values sown before the call are set aside, so sow starts afresh, and put back after.
    stash: list[tuple[Module, str, Any]] = []
    before: dict[int, set[str]] = {}
    patched: list[tuple[type, str, Any]] = []
    try:
        for path, m in list(iter_modules(module)):
            for name, value in list(m._nnx_items()):
                if (type(value) in kinds) or any(name == n for n, _ in placed.get(path, ())):
                    stash.append((m, name, value))
                    delattr(m, name)
            before[id(m)] = set(m.__dict__)
            for name, var in placed.get(path, ()):
                setattr(m, name, type(var)(var.value))
        if method_outputs is not None:
            patched = _patch_methods(module, method_outputs)
        result = fn(*args, **kwargs)
    except BaseException:
        _restore(patched)
        _drop_new(module, before, kinds)
        _unstash(stash)
        raise
    _restore(patched)
    states = _drop_new(module, before, kinds, var_types)
    _unstash(stash)
    if not var_types:
        return result
    if len(var_types) == 1:
        return result, states[0]
    return (result, *states)


def _init_values(init: Mapping | None) -> dict[Path, list[tuple[str, Variable]]]:
    """``module path -> [(name, Variable)]`` from a nested State."""
    out: dict[Path, list[tuple[str, Variable]]] = {}
    if init is None:
        return out
    if not isinstance(init, Mapping):
        raise ArgumentError(
            f"nnx.capture(init=...) takes a State returned by an earlier capture, got "
            f"{type(init).__name__}.\nFix: _, perturbations = nnx.capture(model, "
            "nnx.Perturbation)(x); then init=perturbations."
        )

    def walk(mapping: Mapping, path: Path) -> None:
        for key, value in mapping.items():
            if isinstance(value, Variable):
                out.setdefault(path, []).append((key, value))
            elif isinstance(value, Mapping):
                walk(value, (*path, key))
            else:
                raise ArgumentError(
                    f"nnx.capture(init=...): the value at {format_path((*path, key))} is a "
                    f"{type(value).__name__}, not a Variable.\nFix: pass the State a capture "
                    "returned (its leaves are Variables such as nnx.Perturbation)."
                )

    walk(init, ())
    return out


def _drop_new(
    module: Any,
    before: dict[int, set[str]],
    kinds: set[type],
    var_types: tuple[type[Variable], ...] = (),
) -> list[State]:
    """Removes the Variables sown during the call; returns those of each of `var_types`."""
    new: set[int] = set()
    for _, m in iter_modules(module):
        old = before.get(id(m), set())
        for name, value in m._nnx_items():
            if (
                name not in old
                and isinstance(value, Variable)
                and (type(value) in kinds or isinstance(value, _SOWN_TYPES))
            ):
                new.add(id(value))
    if not new:
        return [State({}) for _ in var_types]

    def of_type(t: type | None) -> Callable[[Path, Any], bool]:
        if t is None:
            return lambda path, v: id(v) in new and type(v) not in var_types
        return lambda path, v: id(v) in new and type(v) is t

    filters = [of_type(t) for t in var_types] + [of_type(None)]
    popped = pop(module, *filters)
    return list(popped[:-1]) if isinstance(popped, tuple) else []


def _unstash(stash: list[tuple[Module, str, Any]]) -> None:
    for m, name, value in stash:
        setattr(m, name, value)


def _patch_methods(module: Any, variable_type: type[Variable]) -> list[tuple[type, str, Any]]:
    patched: list[tuple[type, str, Any]] = []
    for cls in {type(m) for _, m in iter_modules(module)}:
        for name, method in list(vars(cls).items()):
            if not inspect.isfunction(method) or (name.startswith("_") and name != "__call__"):
                continue
            if getattr(method, "_nnx_capturing", False):
                continue
            setattr(cls, name, _sowing(method, name, variable_type))
            patched.append((cls, name, method))
    return patched


def _sowing(method: Callable[..., Any], name: str, variable_type: type[Variable]):
    @functools.wraps(method)
    def wrapper(self: Module, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        self.sow(variable_type, name, out)
        return out

    wrapper._nnx_capturing = True  # type: ignore[attr-defined]  # a mark on the function
    return wrapper


def _restore(patched: list[tuple[type, str, Any]]) -> None:
    for cls, name, method in patched:
        setattr(cls, name, method)
