"""Checkpoints on orbax: a one-call API that restores in place and explains mismatches.

:class:`Checkpointer` wraps ``orbax.checkpoint.CheckpointManager`` (orbax's own format, no
home-made one) and closes the traps orbax leaves open:

* relative directories are made absolute (orbax fails on them in a background thread);
* asynchronous saves are always waited for: leaving a ``with`` block, ``close()``, or
  interpreter exit never loses a save;
* a save cut short by a crash (kill -9, preemption) leaves only orbax's temporary folder,
  never a half-written step; a new Checkpointer deletes such folders before it returns
  (orbax does it in a background thread a restore does not wait for);
* orbax silently casts dtypes on restore and returns integer keys as strings: nnx compares
  the saved structure, shapes and dtypes with the target first, raises one error listing
  every difference, and leaves the target untouched;
* restore writes into the objects you pass (models, optimizers, metrics, Rngs), including
  abstract models from ``nnx.eval_shape`` (nothing is allocated for a random init).

Nothing on a load path uses pickle or eval: checkpoints are data, not code.

Example:
  >>> import tempfile
  >>> class M(nnx.Module):
  ...   def __init__(self):
  ...     self.w = nnx.Param(jnp.arange(3.0))
  >>> model = M()
  >>> with nnx.Checkpointer(tempfile.mkdtemp()) as ckpt:
  ...   ckpt.save(1, model=model, metadata={'note': 'first'})
  ...   model.w.value = model.w.value * 0
  ...   ckpt.restore(model=model)['metadata']
  True
  {'note': 'first'}
  >>> model.w.value.tolist()
  [0.0, 1.0, 2.0]
"""

from __future__ import annotations

import atexit
import os
import shutil
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from .errors import NNXError, short_list
from .graph import state as _state
from .graph import update as _update
from .state import State, _flat_pairs
from .transforms._lift import contains_graph
from .variables import Variable

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
]

_METADATA = "nnx_metadata"


class CheckpointError(NNXError, ValueError):
    """A checkpoint could not be saved or restored (missing step, not a checkpoint...)."""


class CheckpointMismatchError(CheckpointError):
    """The saved structure, shapes or dtypes differ from the restore target."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint's files are damaged: a checksum, a size or a metadata file is wrong."""


def _ocp() -> Any:
    import orbax.checkpoint as ocp

    return ocp


def _tree_of(node: Any) -> Any:
    """What is saved for `node`: the pure dict of a graph object's state, or the pytree."""
    if contains_graph(node) and not isinstance(node, State):
        node = _state(node)
    if isinstance(node, State):
        return _pure(node)
    return node


def _pure(state: Mapping) -> dict:
    out: dict = {}
    for path, leaf in _flat_pairs(state):
        d = out
        for k in path[:-1]:
            d = d.setdefault(str(k), {})
        d[str(path[-1])] = leaf._value if isinstance(leaf, Variable) else leaf
    return out


def _leaf_spec(x: Any) -> tuple[tuple[int, ...], Any] | None:
    """(shape, dtype) as stored: typed PRNG keys are stored as their key data."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return None
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(shape), np.dtype(dtype)


def _key(keypath: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keypath)


def _flat(tree: Any) -> dict[tuple, Any]:
    return {_key(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _describe(spec: tuple | None) -> str:
    if spec is None:
        return "not an array"
    return f"{spec[1]}{list(spec[0])}"


def _compare(name: str, saved: Any, target: Any) -> list[str]:
    saved_flat = {p: _leaf_spec(v) for p, v in _flat(saved).items()}
    target_flat = {p: _leaf_spec(v) for p, v in _flat(target).items()}
    problems = []
    for p in sorted(set(saved_flat) | set(target_flat)):
        where = ".".join((name, *p))
        if p not in target_flat:
            problems.append(
                f"{where}: in the checkpoint ({_describe(saved_flat[p])}), not in the target"
            )
        elif p not in saved_flat:
            problems.append(
                f"{where}: expected {_describe(target_flat[p])}, missing from the checkpoint"
            )
        elif saved_flat[p] != target_flat[p] and target_flat[p] is not None:
            problems.append(
                f"{where}: saved {_describe(saved_flat[p])}, expected {_describe(target_flat[p])}"
            )
    return problems


def _saved_sharding(meta: Any) -> Any:
    sharding = getattr(meta, "sharding", None)
    if sharding is None or not hasattr(sharding, "to_jax_sharding"):
        return None
    try:
        return sharding.to_jax_sharding()
    except ValueError:  # saved on other devices: orbax decides (and explains)
        return None


def _restore_target(target: Any, saved: Any) -> Any:
    """What orbax restores into: the target's shapes, dtypes and shardings.

    Arrays go where the target's arrays are. A leaf without a sharding (an abstract model
    from a plain ``nnx.eval_shape``, a numpy array) gets the sharding it was saved with, as
    orbax would give it, taken from the metadata nnx has already read for its checks
    (orbax would read it from disk once more).
    """
    saved_flat = _flat(saved)

    def leaf(keypath: tuple, x: Any) -> Any:
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            return x
        sharding = getattr(x, "sharding", None)
        if sharding is None and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            sharding = _saved_sharding(saved_flat.get(_key(keypath)))
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(leaf, target)


def _remove_stale_tmp(directory: str) -> list[str]:
    """Deletes the temporary folders of interrupted saves in `directory`; returns their names.

    Only orbax's pattern (a folder whose name contains ``.orbax-checkpoint-tmp``, as
    orbax's own cleanup matches it) and only in the primary process, like orbax; call it
    only when no save into `directory` is in flight.
    """
    if jax.process_index() != 0 or not os.path.isdir(directory):
        return []
    suffix = _ocp().utils.TMP_DIR_SUFFIX
    removed = []
    for entry in os.scandir(directory):
        if suffix in entry.name and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return sorted(removed)


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _wait_for_all() -> None:
    for ckpt in list(_LIVE):
        ckpt.close()


class Checkpointer:
    """Saves and restores any mix of models, optimizers, metrics, Rngs and pytrees.

    Args:
      directory: where checkpoints go (relative paths are made absolute).
      max_to_keep: keep only the newest N steps (None keeps all).
      async_save: save in the background (the wait is handled for you).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = None,
        async_save: bool = True,
    ):
        ocp = _ocp()
        self.directory = os.path.abspath(os.fspath(directory))
        # Another Checkpointer of this process may still be writing here: its temporary
        # folder is not stale. Then clear what interrupted saves left (synchronously, so
        # the directory is clean when this returns; orbax's own cleanup stays on as well).
        for other in list(_LIVE):
            if other.directory == self.directory:
                other.wait()
        _remove_stale_tmp(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._closed = False
        _LIVE.add(self)

    # -- saving -------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        metadata: Mapping[str, Any] | None = None,
        force: bool = False,
        **nodes: Any,
    ) -> bool:
        """Saves `nodes` (keyword name -> object) as step `step`; returns whether it saved.

        `metadata` is a JSON-serialisable dict stored beside the arrays.
        """
        if not nodes:
            raise CheckpointError(
                "save needs at least one object, e.g. ckpt.save(step, model=model)."
            )
        ocp = _ocp()
        items = {name: ocp.args.StandardSave(_tree_of(node)) for name, node in nodes.items()}
        if metadata is not None:
            items[_METADATA] = ocp.args.JsonSave(dict(metadata))
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    # -- restoring ----------------------------------------------------------------------
    def restore(self, step: int | None = None, **nodes: Any) -> dict[str, Any]:
        """Restores the named objects from step `step` (default: the latest), in place.

        Graph objects (models, optimizers, metrics, Rngs) are updated in place; plain
        pytrees cannot be, and are returned. The result maps each name to its restored value,
        plus ``'metadata'`` (the saved metadata dict, or None) and ``'step'``.

        Raises:
          CheckpointError: no checkpoint, unknown step, or a name not in the checkpoint.
          CheckpointMismatchError: structure, shape or dtype differences (all listed); the
            targets are left untouched.
        """
        ocp = _ocp()
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(
                    f"No checkpoint in {self.directory} (it has no committed step). "
                    "Fix: check the directory, or save first."
                )
            step = max(steps)
        elif step not in steps:
            raise CheckpointError(
                f"No step {step} in {self.directory}; available: {sorted(steps)}."
            )
        try:
            saved_meta = self._manager.item_metadata(step)
        except Exception as err:  # orbax raises various types on unreadable folders
            raise CheckpointError(
                f"Step {step} in {self.directory} is not a readable checkpoint: {err}"
            ) from err
        saved_names = list(saved_meta.keys()) if saved_meta else []
        available = [k for k in saved_names if k != _METADATA]
        problems: list[str] = []
        targets: dict[str, Any] = {}
        for name, node in nodes.items():
            if name not in available:
                raise CheckpointError(
                    f"The checkpoint at step {step} has no {name!r}; it has {sorted(available)}. "
                    "Fix: restore with the names you saved with."
                )
            target = _tree_of(node)
            saved_tree = self._saved_tree(step, name, saved_meta[name])
            targets[name] = (target, saved_tree)
            problems += _compare(name, saved_tree, target)
        if problems:
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} does not fit the restore target; nothing was "
                f"restored. {len(problems)} differences:\n"
                + short_list(problems, limit=30)
                + "\nFix: build the target with the configuration the checkpoint was saved "
                "with, or restore only some objects (ckpt.restore(model=model))."
            )
        items = {
            name: ocp.args.StandardRestore(_restore_target(target, saved_tree))
            for name, (target, saved_tree) in targets.items()
        }
        if _METADATA in saved_names:
            items[_METADATA] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        result: dict[str, Any] = {"step": step, "metadata": None}
        if _METADATA in items:
            result["metadata"] = restored[_METADATA]
        for name, node in nodes.items():
            value = restored[name]
            if contains_graph(node) and not isinstance(node, State):
                _update(node, value)
                result[name] = node
            elif isinstance(node, State):
                node.replace_by_pure_dict(value)
                result[name] = node
            else:
                result[name] = value
        return result

    def _saved_tree(self, step: int, name: str, item: Any) -> Any:
        # A manager that did not write the step does not know its item handlers yet and
        # reports no metadata; read it from the item's own folder then.
        if item is None:
            path = os.path.join(self.directory, str(step), name)
            item = _ocp().StandardCheckpointer().metadata(path).item_metadata
        return getattr(item, "tree", item)

    # -- bookkeeping --------------------------------------------------------------------
    def latest_step(self) -> int | None:
        """The newest committed step (None if there is none)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All committed steps, oldest first."""
        return sorted(self._manager.all_steps())

    def metadata(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON metadata saved with `step` (default: latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return self.restore_metadata(step)

    def restore_metadata(self, step: int) -> dict[str, Any] | None:
        ocp = _ocp()
        meta = self._manager.item_metadata(step)
        if not meta or _METADATA not in list(meta.keys()):
            return None
        return self._manager.restore(
            step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()})
        )[_METADATA]

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources (idempotent)."""
        if not self._closed:
            self._closed = True
            self._manager.wait_until_finished()
            self._manager.close()
            _LIVE.discard(self)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({self.directory!r}, steps={self.all_steps()})"
