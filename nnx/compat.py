"""flax's ``nnx.compat``: the graph API with ``graph=True`` (and ``graph_updates=True`` on the
transforms) as explicit defaults, whatever ``nnx.set_graph_mode`` says.

In nnx graph semantics are the only semantics and ``True`` is already the default, so these are
the same functions with the flags pinned; code written for flax's compat namespace runs as is.

Example:
  >>> with nnx.set_graph_mode(False):  # tree mode refuses shared layers ...
  ...     shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  ...     graphdef, state = nnx.compat.split(nnx.List([shared, shared]))  # ... compat does not
  >>> sorted(state.flat_state().paths)
  [(0, 'bias'), (0, 'kernel')]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import graph as _graph
from . import module as _module
from . import rngs as _rngs
from . import views as _views
from .graph_tools import recursive_map as _recursive_map
from .transforms import autodiff as _autodiff
from .transforms import control as _control
from .transforms import jit as _jit
from .transforms import parallel as _parallel
from .transforms import scan as _scan
from .transforms import tracing as _tracing
from .transforms import vmap as _vmap


def _pinned(fn: Callable[..., Any], updates: bool) -> Callable[..., Any]:
    pins = {"graph": True, "graph_updates": True} if updates else {"graph": True}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **{**pins, **kwargs})

    flags = ", ".join(f"{k}=True" for k in pins)
    wrapper.__doc__ = f"``nnx.{fn.__name__}`` with {flags}.\n\n{fn.__doc__ or ''}"
    return wrapper


# graph functions: graph=True
split = _pinned(_graph.split, False)
state = _pinned(_graph.state, False)
clone = _pinned(_graph.clone, False)
graphdef = _pinned(_graph.graphdef, False)
flatten = _pinned(_graph.flatten, False)
iter_graph = _pinned(_graph.iter_graph, False)
recursive_map = _pinned(_recursive_map, False)
view = _pinned(_views.view, False)
view_info = _pinned(_views.view_info, False)
iter_modules = _pinned(_module.iter_modules, False)
iter_children = _pinned(_graph.iter_children, False)
reseed = _pinned(_rngs.reseed, False)
backup_keys = _pinned(_rngs.backup_keys, False)
get_abstract_model = _pinned(_tracing.get_abstract_model, False)
# transforms and rng helpers: graph=True, graph_updates=True
cached_partial = _pinned(_jit.cached_partial, True)
split_rngs = _pinned(_rngs.split_rngs, True)
fork_rngs = _pinned(_rngs.fork_rngs, True)
jit = _pinned(_jit.jit, True)
shard_map = _pinned(_parallel.shard_map, True)
grad = _pinned(_autodiff.grad, True)
value_and_grad = _pinned(_autodiff.value_and_grad, True)
custom_vjp = _pinned(_autodiff.custom_vjp, True)
vjp = _pinned(_autodiff.vjp, True)
jvp = _pinned(_autodiff.jvp, True)
remat = _pinned(_autodiff.remat, True)
vmap = _pinned(_vmap.vmap, True)
scan = _pinned(_scan.scan, True)
pmap = _pinned(_parallel.pmap, True)
while_loop = _pinned(_control.while_loop, True)
fori_loop = _pinned(_control.fori_loop, True)
eval_shape = _pinned(_tracing.eval_shape, True)
cond = _pinned(_control.cond, True)
switch = _pinned(_control.switch, True)
checkify = _pinned(_tracing.checkify, True)
