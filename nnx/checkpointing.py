"""Checkpoints on orbax: a one-call API that restores in place and explains mismatches.

:class:`Checkpointer` wraps ``orbax.checkpoint.CheckpointManager`` (orbax's own format, no
home-made one) and closes the traps orbax leaves open:

* relative directories are made absolute (orbax fails on them in a background thread);
* asynchronous saves are always waited for: leaving a ``with`` block, ``close()``, the end
  of the script and Ctrl-C never lose a committed-to save (a save is handed to orbax whole
  or not at all; the wait at exit runs before Python stops its thread pools);
* saving a step at or below the latest one raises instead of skipping silently
  (``overwrite=True`` replaces the newer steps);
* a save cut short by a crash (kill -9, preemption) leaves only orbax's temporary folder,
  never a half-written step; a new Checkpointer deletes such folders before it returns
  (orbax does it in a background thread a restore does not wait for);
* orbax silently casts dtypes on restore and returns integer keys as strings: nnx compares
  the saved structure, shapes and dtypes with the target first, raises one error listing
  every difference, and leaves the target untouched;
* every array is saved with a CRC-32 in an nnx index beside it, and checked on restore
  (``verify=False`` skips it): damaged files raise :class:`CheckpointCorruptError` naming
  the step, the file and the arrays, never wrong values or a raw orbax/TensorStore error;
* a normal save and restore log nothing;
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

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import jax

from . import _checkpoint_index as _index
from ._checkpoint_exit import at_exit, deferred_interrupt, report
from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    short_list,
)
from .graph import state as _state
from .graph import update as _update
from .state import State, flat_pairs
from .transforms._lift import contains_graph
from .variablelib import Variable
from .weights import NO_COMMON_FIX, Matched, Rename, match, mismatch_error, report_of

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
]

_METADATA = "nnx_metadata"
_RESERVED = (_METADATA, _index.NAME)
_STEP_FILE = "_CHECKPOINT_METADATA"


def _ocp() -> Any:
    import orbax.checkpoint as ocp

    return ocp


class _QuietOrbax(logging.Filter):
    """Drops orbax's log records below `level`: progress notes and warnings about its own
    bookkeeping, printed on every save and restore, and, while nnx reads a step and reports
    any failure itself, orbax's own error records of that failure."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or "orbax" not in record.pathname


_QUIET = _QuietOrbax(logging.ERROR)
_SILENT = _QuietOrbax(logging.CRITICAL + 1)


@contextmanager
def _quiet(reading: bool = False) -> Iterator[None]:
    logger = logging.getLogger("absl")
    quiet = _SILENT if reading else _QUIET
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _drop_closed_loop_noise(previous: Any) -> Any:
    """An ``sys.unraisablehook`` that drops one message and passes on everything else.

    When orbax fails to read a damaged step, reads still in flight complete into an event
    loop it has already closed; each prints ``RuntimeError: Event loop is closed`` (or a
    never-awaited orbax coroutine) as an "Exception ignored" traceback, after nnx has
    raised its own error. Those are dropped; nothing else is.
    """

    def hook(unraisable: Any) -> None:
        err = unraisable.exc_value
        closed_loop = isinstance(err, RuntimeError) and str(err) == "Event loop is closed"
        code = getattr(getattr(unraisable, "object", None), "cr_code", None)
        orbax_coroutine = "orbax" in getattr(code, "co_filename", "")
        if not (closed_loop or orbax_coroutine):
            previous(unraisable)

    hook.nnx_filter = True  # type: ignore[attr-defined]  # a mark on the function
    return hook


def _install_noise_filter() -> None:
    if not getattr(sys.unraisablehook, "nnx_filter", False):
        sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)


def _tree_of(node: Any) -> Any:
    """What is saved for `node`: the pure dict of a graph object's state, or the pytree."""
    if contains_graph(node) and not isinstance(node, State):
        node = _state(node)
    if isinstance(node, State):
        return _pure(node)
    return node


def _pure(state: Mapping) -> dict:
    out: dict = {}
    for path, leaf in flat_pairs(state):
        d = out
        for k in path[:-1]:
            d = d.setdefault(str(k), {})
        d[str(path[-1])] = leaf._value if isinstance(leaf, Variable) else leaf
    return out


def _key(keypath: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keypath)


def _flat(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    return [(_key(kp), leaf) for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _saved_spec(meta: Any) -> _index.Spec | None:
    return _index.spec_of(meta, saved_scalar=type(meta).__name__ == "ScalarMetadata")


def _describe(spec: _index.Spec | None) -> str:
    return "not an array" if spec is None else spec.describe()


def _compare(name: str, saved: dict[tuple, Any], target: Any) -> list[str]:
    target_flat = {p: _index.spec_of(v) for p, v in _flat(target)}
    problems = []
    for p in sorted(set(saved) | set(target_flat)):
        where = ".".join((name, *p))
        if p not in target_flat:
            problems.append(
                f"{where}: in the checkpoint ({_describe(saved[p])}), not in the target"
            )
        elif p not in saved:
            problems.append(
                f"{where}: expected {_describe(target_flat[p])}, missing from the checkpoint"
            )
        elif saved[p] != target_flat[p]:
            problems.append(
                f"{where}: saved {_describe(saved[p])}, expected {_describe(target_flat[p])}"
            )
    return problems


def _saved_sharding(meta: Any) -> Any:
    sharding = getattr(meta, "sharding", None)
    if sharding is None or not hasattr(sharding, "to_jax_sharding"):
        return None
    try:
        return sharding.to_jax_sharding()
    except Exception:
        return None


def _restore_target(target: Any, saved_meta: dict[tuple, Any]) -> Any:
    """What orbax restores into: the target's shapes, dtypes and shardings.

    Arrays go where the target's arrays are. A leaf without a sharding (an abstract model
    from a plain ``nnx.eval_shape``, a numpy array) gets the sharding it was saved with, as
    orbax would give it, taken from the metadata nnx has already read for its checks.
    Python scalars stay Python scalars.
    """

    def leaf(keypath: tuple, x: Any) -> Any:
        if type(x) in _index.PY_SCALARS or not (hasattr(x, "shape") and hasattr(x, "dtype")):
            return x
        sharding = getattr(x, "sharding", None)
        if sharding is None and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            sharding = _saved_sharding(saved_meta.get(_key(keypath)))
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(leaf, target)


def _put(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


_BY_NAME_CLASH = (
    "restore(strict=False / rename=): in {what}, the paths {a} and {b} both have the name "
    "{name!r}, so loading by name cannot tell them apart. Fix: restore with strict=True (by "
    "structure)."
)
_SAVE_CLASH = (
    "Checkpointer.save: in {what}, the paths {a} and {b} both have the name {name!r}, and "
    "orbax stores each array under that name, so the step could not be read back; nothing "
    "was saved. Fix: use dict keys without dots."
)


def _dotted(paths: Any, what: str, clash: str) -> dict[str, tuple[str, ...]]:
    """Dotted name -> path, as orbax names arrays; two paths with one name (a dict key with a
    dot) raise CheckpointError with the message `clash` (formatted with what, a, b, name)."""
    out: dict[str, tuple[str, ...]] = {}
    for p in paths:
        name = ".".join(p)
        if name in out:
            raise CheckpointError(clash.format(what=what, a=out[name], b=p, name=name))
        out[name] = p
    return out


def _write_all(writes: Any) -> None:
    """Writes each (object, restored value): graph objects are updated, States replaced;
    plain pytrees are skipped (they are returned). If one write raises, the objects written
    before it get their previous values back, so a restore changes all objects or none.
    Ctrl-C waits until the writes are done."""
    done: list[tuple[Any, Any]] = []
    with deferred_interrupt():
        try:
            for node, value in writes:
                if isinstance(node, State):
                    before = node.to_pure_dict()
                    node.replace_by_pure_dict(value)
                elif contains_graph(node):
                    before = _state(node)
                    _update(node, value)
                else:
                    continue
                done.append((node, before))
        except BaseException:
            for node, before in reversed(done):
                if isinstance(node, State):
                    node.replace_by_pure_dict(before)
                else:
                    _update(node, before)
            raise


def _placed_like_saved(x: Any, meta: Any) -> Any:
    """A restore target leaf without a sharding (abstract model) goes where it was saved, or
    on the default device (typed PRNG keys, or nothing recorded): orbax needs a sharding to
    give back a jax array (a typed key) rather than numpy key data."""
    if not isinstance(x, jax.ShapeDtypeStruct) or x.sharding is not None:
        return x
    sharding = None
    if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        sharding = _saved_sharding(meta)  # of the key data, not the key, for keys
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _check_savable(name: str, flat: list[tuple[tuple[str, ...], Any]]) -> None:
    bad = [
        f"{'.'.join((name, *p))}: {type(v).__name__}" for p, v in flat if _index.spec_of(v) is None
    ]
    if bad:
        raise CheckpointError(
            "Checkpointer.save: these leaves are not arrays or Python numbers, which is all "
            "an orbax checkpoint stores:\n"
            + short_list(bad)
            + "\nFix: keep text and other settings in a static attribute (they belong to the "
            "model's configuration), or pass them as save(..., metadata={...})."
        )
    _dotted([p for p, _ in flat], repr(name), _SAVE_CLASH)  # one array would overwrite another


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


# Strong references: a Checkpointer dropped without close() (a local variable of a function
# that has returned) may still have a save in flight that the exit hook must commit.
_LIVE: set[Checkpointer] = set()


def _commit_all() -> None:
    """At interpreter exit: commit every pending save, in one line if anything goes wrong."""
    for ckpt in list(_LIVE):
        try:
            ckpt.close()
        except KeyboardInterrupt:
            report(
                f"interrupted while committing a checkpoint in {ckpt.directory}; the "
                "unfinished step is discarded, earlier steps are intact."
            )
            return
        except Exception as err:
            report(f"a checkpoint save in {ckpt.directory} failed: {err}")


def _steps_text(steps: list[int]) -> str:
    if len(steps) <= 8:
        return str(steps)
    return f"[{steps[0]}, {steps[1]}, ..., {steps[-2]}, {steps[-1]}] ({len(steps)} steps)"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."


class Checkpointer:
    """Saves and restores any mix of models, optimizers, metrics, Rngs and pytrees.

    Args:
      directory: where checkpoints go (relative paths are made absolute).
      max_to_keep: keep only the newest N steps (None keeps all).
      async_save: save in the background (the wait is handled for you).

    Threading: one Checkpointer per directory and process; its methods are not meant to be
    called from several threads at once.
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
        with _quiet(reading=True):
            try:
                self._manager = ocp.CheckpointManager(self.directory, options=options)
            except Exception as err:
                raise CheckpointCorruptError(
                    f"Cannot open the checkpoint directory {self.directory}: {_first_line(err)}"
                ) from err
        self._closed = False
        at_exit(_commit_all)
        _install_noise_filter()
        _LIVE.add(self)

    # -- saving -------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        metadata: Mapping[str, Any] | None = None,
        force: bool = False,
        overwrite: bool = False,
        **nodes: Any,
    ) -> bool:
        """Saves `nodes` (keyword name -> object) as step `step`; returns True.

        `metadata` is a JSON-serialisable dict stored beside the arrays. A step at or below
        the latest saved one raises :class:`CheckpointError` (a second run into the same
        directory would otherwise save nothing); ``overwrite=True`` first deletes the saved
        steps at and above `step`. The save is handed to orbax whole even if Ctrl-C is
        pressed meanwhile (the interrupt is raised right after).
        """
        if not nodes:
            raise CheckpointError(
                "save needs at least one object, e.g. ckpt.save(step, model=model)."
            )
        reserved = sorted(set(nodes) & set(_RESERVED))
        if reserved:
            raise CheckpointError(
                f"save: {reserved} are names nnx uses for its own items. Fix: choose "
                "another keyword, e.g. ckpt.save(step, model=model, extra=tree)."
            )
        ocp = _ocp()
        trees = {name: _tree_of(node) for name, node in nodes.items()}
        flat = {name: _flat(tree) for name, tree in trees.items()}
        for name, leaves in flat.items():
            _check_savable(name, leaves)
        empty = sorted(name for name, leaves in flat.items() if not leaves)
        if empty:  # orbax raises "Found empty item." and is left unable to save again
            raise CheckpointError(
                f"save: {empty} hold no arrays (no Variable, no array leaf); nothing was "
                "saved. Fix: save only objects with state, e.g. leave them out of save(...)."
            )
        if metadata is not None:
            try:
                metadata = json.loads(_index.canonical_json(dict(metadata)))
            except (TypeError, ValueError) as err:
                raise CheckpointError(
                    f"save: the metadata is not JSON-serialisable ({err}). Fix: keep to "
                    "dicts, lists, strings, numbers, booleans and None."
                ) from None
        self._make_room(int(step), overwrite)
        items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        items[_index.NAME] = ocp.args.JsonSave(_index.build(flat, metadata))
        if metadata is not None:
            items[_METADATA] = ocp.args.JsonSave(metadata)
        with _quiet(), deferred_interrupt():
            saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        if not saved:
            raise CheckpointError(
                f"orbax declined to save step {step} in {self.directory} (its save policy)."
            )
        return True

    def _make_room(self, step: int, overwrite: bool) -> None:
        steps = self.all_steps()
        later = [s for s in steps if s >= step]
        if not later:
            return
        if not overwrite:
            raise CheckpointError(
                f"Cannot save step {step} in {self.directory}: it already holds steps "
                f"{_steps_text(steps)} (latest {steps[-1]}), probably from an earlier "
                "run; nothing was saved.\nFix: 1) resume from it: ckpt.restore(model=...) "
                f"and continue at step {steps[-1] + 1}; 2) replace steps >= {step}: "
                "ckpt.save(step, ..., overwrite=True); 3) use a new directory."
            )
        self.wait()
        with _quiet():
            for s in later:
                self._manager.delete(s)
            self._manager.reload()

    # -- restoring ----------------------------------------------------------------------
    def restore(
        self,
        step: int | None = None,
        *,
        verify: bool = True,
        strict: bool = True,
        rename: Rename | None = None,
        **nodes: Any,
    ) -> dict[str, Any]:
        """Restores the named objects from step `step` (default: the latest), in place.

        Graph objects (models, optimizers, metrics, Rngs) are updated in place; plain
        pytrees cannot be, and are returned. The result maps each name to its restored value,
        plus ``'metadata'`` (the saved metadata dict, or None) and ``'step'``.

        ``strict=False`` or ``rename=`` load by name instead (weight surgery; graph objects
        only): the arrays are matched by dotted path (``blocks.0.attn.kernel``) with the
        rules of :mod:`nnx.weights`, only the matched arrays are read from disk, and the
        result also has ``'reports'``: name -> :class:`~nnx.weights.LoadReport` (loaded,
        skipped, untouched). Shapes and dtypes of the matched arrays must agree.

        Args:
          step: the step to restore (default: the latest committed one).
          verify: check every array against the checksum written at save (default). Costs
            one pass over the restored bytes (see ``benchmarks/checkpoint.py``).
          strict: with False, arrays on one side only are ignored: the saved arrays the
            target has are loaded, the rest of the target keeps its values.
          rename: saved name -> target name, as a dict of regular expressions to
            replacements (None drops the array) or a function of the name.
          **nodes: name -> object to restore into, with the names used at save.

        Raises:
          CheckpointError: no checkpoint, unknown step, or a name not in the checkpoint;
            loading by name into something that is not a graph object.
          CheckpointMismatchError: structure, shape or dtype differences (all listed).
          CheckpointCorruptError: a file of the step is damaged (step, file and arrays
            named).

        In every case of error the targets are left untouched.

        Example:
          >>> import tempfile
          >>> with nnx.Checkpointer(tempfile.mkdtemp()) as ckpt:
          ...   _ = ckpt.save(1, model=nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
          ...   wider = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(1)),
          ...                          nnx.Linear(3, 5, rngs=nnx.Rngs(1)))
          ...   out = ckpt.restore(model=wider, strict=False, rename={'^': 'layers.0.'})
          >>> out['reports']['model']
          LoadReport(loaded=2, skipped=0, untouched=2)
        """
        if not strict or rename is not None:
            return self._restore_by_name(step, verify, strict, rename, nodes)
        step, step_dir, names, index, saved = self._saved_items(step, nodes)
        problems: list[str] = []
        targets: dict[str, tuple[Any, dict]] = {}
        for name, node in nodes.items():
            meta, specs = saved[name]
            target = _tree_of(node)
            targets[name] = (target, meta)
            problems += _compare(name, specs, target)
        if problems:
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} does not fit the restore target; nothing was "
                f"restored. {len(problems)} differences:\n"
                + short_list(problems, limit=30)
                + "\nFix: build the target with the configuration the checkpoint was saved "
                "with, or restore only some objects (ckpt.restore(model=model))."
            )
        restored = {
            name: self._read_item(step, name, _restore_target(target, meta))
            for name, (target, meta) in targets.items()
        }
        saved_metadata = None
        if _METADATA in names:
            saved_metadata = self._read_item(step, _METADATA, None)
        if verify and index is not None:
            with self._damage(step):
                for name, value in restored.items():
                    index.check_values(name, _flat(value), os.path.join(step_dir, name))
                index.check_metadata(saved_metadata, os.path.join(step_dir, _METADATA))
        result: dict[str, Any] = {"step": step, "metadata": saved_metadata}
        _write_all([(node, restored[name]) for name, node in nodes.items()])
        for name, node in nodes.items():
            in_place = isinstance(node, State) or contains_graph(node)
            result[name] = node if in_place else restored[name]
        return result

    def _saved_items(
        self, step: int | None, nodes: Mapping[str, Any]
    ) -> tuple[int, str, list[str], _index.Index | None, dict[str, tuple[dict, dict]]]:
        """The step to restore, its folder, item names and index, and for each object asked
        for: orbax's metadata of its saved leaves and their specs (checked against the
        index)."""
        self.wait()
        step = self._pick_step(step)
        step_dir, names, index = self._open_step(step)
        available = sorted(n for n in names if n not in _RESERVED)
        for name in nodes:
            if name not in available:
                raise CheckpointError(
                    f"The checkpoint at step {step} has no {name!r}; it has {available}. "
                    "Fix: restore with the names you saved with."
                )
        saved = {}
        for name in nodes:
            with self._damage(step):
                meta = self._saved_tree(step_dir, name)
                specs = {p: _saved_spec(m) for p, m in meta.items()}
                if index is not None:
                    index.check_structure(name, specs, os.path.join(step_dir, name, "_METADATA"))
            saved[name] = (meta, specs)
        return step, step_dir, names, index, saved

    def _restore_by_name(
        self,
        step: int | None,
        verify: bool,
        strict: bool,
        rename: Rename | None,
        nodes: dict[str, Any],
    ) -> dict[str, Any]:
        """restore(strict=False / rename=): match saved arrays to targets by dotted name,
        read only the matched ones (orbax skips the rest), then write them in place."""
        for name, node in nodes.items():
            if not contains_graph(node) or isinstance(node, State):
                raise CheckpointError(
                    f"restore(strict=False / rename=) loads by name into graph objects "
                    f"(models, optimizers); {name!r} is a {type(node).__name__}. Fix: restore "
                    f"it in its own call with the default strict=True."
                )
        if "reports" in nodes:
            raise CheckpointError(
                "restore(strict=False / rename=) returns its reports under 'reports', the "
                "name of an object given. Fix: restore that object in a strict call."
            )
        step, step_dir, names, index, saved = self._saved_items(step, nodes)
        problems: list[str] = []
        plans: dict[str, tuple[Any, Matched, dict[str, tuple], dict[str, tuple], dict]] = {}
        for name, node in nodes.items():
            meta, specs = saved[name]
            target = _tree_of(node)
            target_flat = dict(_flat(target))
            saved_paths = _dotted(specs, f"step {step}'s {name!r}", _BY_NAME_CLASH)
            target_paths = _dotted(target_flat, f"the target {name!r}", _BY_NAME_CLASH)
            target_specs = {n: _index.spec_of(target_flat[p]) for n, p in target_paths.items()}
            matched = match(
                {n: specs[p] for n, p in saved_paths.items()},
                target_specs,
                rename=rename,
                strict=strict,
                where=f"restore(step={step}, {name}=...)",
                source_kind="checkpoint",
                describe_source=_describe,
                describe_target=_describe,
                target_kind="target",
            )
            problems += [f"{name}.{p}" for p in matched.problems]
            if not matched.pairs and saved_paths and target_paths:
                problems.append(
                    f"{name}: no array name in common (checkpoint: {sorted(saved_paths)[:3]}"
                    f"..., target: {sorted(target_paths)[:3]}...). Fix: {NO_COMMON_FIX}"
                )
            plans[name] = (target, matched, saved_paths, target_paths, meta)
        if problems:
            raise mismatch_error(
                f"The checkpoint at step {step}",
                "the restore targets",
                problems,
                [
                    "leave out what differs: rename={pattern: None} drops saved arrays;",
                    "map names that differ: rename={r'^encoder\\.': 'backbone.'};",
                    "build the target with the configuration the checkpoint was saved with.",
                ],
            )
        result: dict[str, Any] = {"step": step}
        updates: dict[str, dict] = {}
        for name, (target, matched, saved_paths, target_paths, meta) in plans.items():
            wanted = {saved_paths[old]: target_paths[new] for new, old in matched.pairs.items()}
            target_leaves = dict(_flat(_restore_target(target, {})))
            item: dict = {}
            for p, q in wanted.items():  # the target's placement, else where it was saved
                _put(item, p, _placed_like_saved(target_leaves[q], meta[p]))
            restored = dict(_flat(self._read_part(step, name, item))) if item else {}
            loaded = [(p, restored[p]) for p in wanted]
            if verify and index is not None:
                with self._damage(step):
                    index.check_values(name, loaded, os.path.join(step_dir, name))
            update: dict = {}
            for p, value in loaded:
                _put(update, wanted[p], value)
            updates[name] = update
        saved_metadata = None
        if _METADATA in names:
            saved_metadata = self._read_item(step, _METADATA, None)
            if verify and index is not None:
                with self._damage(step):
                    index.check_metadata(saved_metadata, os.path.join(step_dir, _METADATA))
        result["metadata"] = saved_metadata
        # reports before any write: nothing after the writes can fail
        reports = {name: report_of(nodes[name], plans[name][1], saved_metadata) for name in nodes}
        _write_all((nodes[name], update) for name, update in updates.items())
        result.update(nodes)
        result["reports"] = reports
        return result

    def _pick_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(
                    f"No checkpoint in {self.directory} (it has no committed step). "
                    "Fix: check the directory, or save first."
                )
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"No step {step} in {self.directory}; available: {steps}.")
        return step

    @contextmanager
    def _damage(self, step: int) -> Iterator[None]:
        """Turns :class:`_index.Damaged` into :class:`CheckpointCorruptError`."""
        try:
            yield
        except _index.Damaged as err:
            raise self._corrupt(step, err.file, err.reason, err.paths) from None

    def _corrupt(
        self, step: int, file: str, reason: str, paths: list[str] | tuple = ()
    ) -> CheckpointCorruptError:
        earlier = [s for s in self.all_steps() if s != step]
        arrays = f"\nArrays affected:\n{short_list(list(paths))}" if paths else ""
        fix = (
            f"restore another step, e.g. ckpt.restore({earlier[-1]}, ...) (saved: {earlier})"
            if earlier
            else "this directory holds no other step; save again from the source"
        )
        return CheckpointCorruptError(
            f"Step {step} in {self.directory} is damaged: {reason}.\nFile: {file}{arrays}\n"
            f"Nothing was restored. Fix: {fix}, or delete the damaged step folder."
        )

    def _open_step(self, step: int) -> tuple[str, list[str], _index.Index | None]:
        """The step's folder, its item names and its nnx index (None for steps written
        before nnx wrote one); damage raises :class:`CheckpointCorruptError`."""
        step_dir = os.path.join(self.directory, str(step))
        with self._damage(step):
            names = self._item_names(step_dir)
            index = _index.read(step_dir) if _index.NAME in names else None
        return step_dir, names, index

    def _item_names(self, step_dir: str) -> list[str]:
        """The items of a step, from orbax's step metadata, checked against its folders."""
        file = os.path.join(step_dir, _STEP_FILE)
        data = _index.read_json(file, "orbax's step metadata")
        handlers = data.get("item_handlers") if isinstance(data, dict) else None
        if not isinstance(handlers, dict) or not all(isinstance(k, str) for k in handlers):
            raise _index.Damaged(file, "orbax's step metadata has no list of items")
        names = sorted(handlers)
        folders = sorted(e.name for e in os.scandir(step_dir) if e.is_dir(follow_symlinks=False))
        if names != folders:
            raise _index.Damaged(
                file,
                f"orbax's step metadata lists the items {names}, the step folder holds {folders}",
            )
        return names

    def _saved_tree(self, step_dir: str, name: str) -> dict[tuple, Any]:
        """Orbax's metadata of each saved leaf of item `name`, by path."""
        from etils import epath

        folder = os.path.join(step_dir, name)
        try:
            with _quiet(reading=True):
                meta = _ocp().StandardCheckpointHandler().metadata(epath.Path(folder))
        except Exception as err:
            raise _index.Damaged(
                folder, f"orbax cannot read the metadata of {name!r} ({_first_line(err)})"
            ) from None
        tree = getattr(meta, "tree", meta)
        if tree is None:
            raise _index.Damaged(folder, f"orbax finds no arrays in {name!r} (damaged manifest)")
        return dict(_flat(tree))

    @contextmanager
    def _reading(self, step: int, name: str) -> Iterator[None]:
        """Reading item `name` of `step` through orbax: quiet, and a failure is damage, said
        so (the step, the item's folder and orbax's reason)."""
        try:
            with _quiet(reading=True):
                yield
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise self._corrupt(
                step,
                os.path.join(self.directory, str(step), name),
                f"orbax cannot read {name!r} ({type(err).__name__}: {_first_line(err)})",
            ) from None

    def _read_item(self, step: int, name: str, target: Any) -> Any:
        """Item `name` of `step` through orbax; a failure to read is damage, said so."""
        ocp = _ocp()
        args = ocp.args.JsonRestore() if name == _METADATA else ocp.args.StandardRestore(target)
        with self._reading(step, name):
            return self._manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]

    def _read_part(self, step: int, name: str, item: dict) -> Any:
        """The arrays of `item` (a sub-tree of item `name`'s saved tree) and nothing else:
        orbax's partial restore reads only the leaves asked for."""
        from etils import epath

        ocp = _ocp()
        folder = os.path.join(self.directory, str(step), name)
        args = ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        )
        with self._reading(step, name):
            return ocp.PyTreeCheckpointHandler().restore(epath.Path(folder), args=args)

    # -- bookkeeping --------------------------------------------------------------------
    def latest_step(self) -> int | None:
        """The newest committed step (None if there is none)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """All committed steps, oldest first."""
        return sorted(self._manager.all_steps())

    def metadata(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON metadata saved with `step` (default: latest; None if none was saved).

        Waits for a save still in flight, as :meth:`restore` does.
        """
        self.wait()
        if step is None and self.latest_step() is None:
            return None
        step = self._pick_step(step)
        step_dir, names, index = self._open_step(step)
        value = self._read_item(step, _METADATA, None) if _METADATA in names else None
        if index is not None:
            with self._damage(step):
                index.check_metadata(value, os.path.join(step_dir, _METADATA))
        return value

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        with _quiet():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources (idempotent)."""
        if not self._closed:
            self._closed = True
            _LIVE.discard(self)
            with _quiet():
                self._manager.wait_until_finished()
                self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({self.directory!r}, steps={self.all_steps()})"
