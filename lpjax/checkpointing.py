"""Orbax checkpoints that carry their `Arch`, so a pruned model rebuilds alone.

A checkpoint step holds three items, saved together and atomically (orbax
writes to a temporary directory and renames it when complete):

* `state`: the train state pytree (step, params, batch_stats, opt_state);
* `arch`: the `Arch` as JSON;
* `meta`: a JSON dict of whatever the caller records (epoch, scores, ...).

Restoring is two-phase because the state's tree depends on the arch: read
`arch` and `meta` first (`restore_meta`), build the abstract state of that
arch, then `restore` the state into it. A run killed at any moment leaves
either the previous step or the new one, never a half-written checkpoint.
A save either waits until the step is on disk or (`wait=False`, e.g. the
epochs inside a training stage) writes it on a background thread while
training goes on (the state's arrays are immutable and the train step
donates none); every other call of the object, and `close`, waits for it
first. Ctrl-C during a save, or while a background write finishes, takes
effect once the step is complete. A temporary directory a killed run left
(`*.orbax-checkpoint-tmp*`) is removed before the directory's next save
(not on open: a reader, e.g. `python -m lpjax.evaluate` during a run, must
not touch a save in progress). No pickle anywhere.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sys
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from lpjax import arch as arch_lib
from lpjax import errors, models

# orbax writes a step (and each item of it) under this suffix, then renames.
TMP_MARKER = '.orbax-checkpoint-tmp'


def quiet_logging() -> None:
  """INFO logging for an entry point, without orbax's line per file
  operation (lpjax's own progress stays readable)."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(
    lambda record: '/orbax/' not in record.pathname
  )


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint exists but cannot be read."""


def remove_temporaries(directory: str | os.PathLike) -> list[str]:
  """Removes the unfinished saves (`*.orbax-checkpoint-tmp*`) of `directory`.

  Only process 0 removes (the directory is shared in a multi-host run).

  Returns:
    The paths removed.
  """
  directory = os.fspath(directory)
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return []
  removed = []
  for name in sorted(os.listdir(directory)):
    if TMP_MARKER in name:
      path = os.path.join(directory, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        try:
          os.remove(path)
        except FileNotFoundError:
          pass
      removed.append(path)
  return removed


def _orbax_threads() -> set[threading.Thread]:
  return {
    t for t in threading.enumerate() if type(t).__module__.startswith('orbax.')
  }


def _join_orbax_threads(before: set[threading.Thread]) -> None:
  """Waits for orbax's threads not in `before`, and those they start."""
  while alive := [t for t in _orbax_threads() - before if t.is_alive()]:
    for t in alive:
      threading.Thread.join(t)  # not orbax's join, which re-raises


class _HeldInterrupt:
  """Holds Ctrl-C (SIGINT) back until the block ends, then raises it.

  Only in the main thread, and only over Python's own handler (anything
  else installed is left alone). Every Ctrl-C is held: one raised inside
  orbax's save, between its threads and event loops, leaves them writing
  into a folder no one finishes (and their errors on stderr).
  """

  def __enter__(self) -> _HeldInterrupt:
    self.pressed = False
    self._previous = None
    if (
      threading.current_thread() is threading.main_thread()
      and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
      self._previous = signal.signal(signal.SIGINT, self._hold)
    return self

  def _hold(self, signum, frame) -> None:
    if not self.pressed:
      logging.warning('Ctrl-C: stopping once this checkpoint is written.')
    self.pressed = True

  def __exit__(self, exc_type, *_) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
    if self.pressed and exc_type is None:
      raise KeyboardInterrupt


def _reason(e: BaseException) -> str:
  """One short line for why orbax could not read: the first message of the
  exception chain with substance, without TensorStore's spec (~60 lines)."""
  x: BaseException | None = e
  while x is not None:
    text = str(x)
    if 'TensorStore details' not in text:  # orbax's wrapper: only the spec
      text = text.split(' [tensorstore_spec=')[0].strip()
      text = ' '.join(text.splitlines()[0].split()) if text else ''
      if text:
        if len(text) > 300:
          text = text[:300] + '...'
        return f'{type(x).__name__}: {text}'
    x = x.__cause__ or x.__context__
  return type(e).__name__


def _quiet_unfinished_reads() -> None:
  """Drops Python's "Exception ignored in ..." reports of the other array
  reads of a failed restore: orbax's read coroutines finalised at exit
  (they repeat the error `CheckpointError` reports, with TensorStore's
  whole spec), and TensorStore's callbacks into the event loop orbax has
  closed meanwhile ("Event loop is closed")."""
  previous = sys.unraisablehook
  if getattr(previous, '_lpjax_quiet', False):
    return

  def hook(unraisable):
    code = getattr(unraisable.object, 'cr_code', None)
    if code is not None and '/orbax/' in code.co_filename:
      return
    e = unraisable.exc_value
    if (
      unraisable.object is None
      and isinstance(e, RuntimeError)
      and str(e) == 'Event loop is closed'
    ):
      return
    previous(unraisable)

  hook._lpjax_quiet = True
  sys.unraisablehook = hook


class Checkpoints:
  """The checkpoints of one stage of a run, in one directory.

  Args:
    directory: where the steps live; made absolute (orbax requires it).
    max_to_keep: how many most recent steps to keep.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.fspath(directory))
    self._saved = False  # no save by this object yet
    self._writer: threading.Thread | None = None  # a save of wait=False
    self._failure: BaseException | None = None  # what the writer raised
    self._manager = ocp.CheckpointManager(
      self.directory,
      item_names=('state', 'arch', 'meta'),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
      ),
    )

  def latest_step(self) -> int | None:
    self.wait()
    return self._manager.latest_step()

  def save(
    self,
    step: int,
    *,
    state: Any,
    arch: arch_lib.Arch,
    meta: dict[str, Any] | None = None,
    wait: bool = True,
  ) -> None:
    """Saves one step; with `wait`, returns once it is on disk.

    With `wait=False` the step is written on a background thread (one at a
    time: a second save waits for the first) from a copy of `meta` and of
    `state`'s NumPy arrays, so the caller may change them meanwhile; an
    error of that write raises at the object's next call or `close`. A
    step is listed (`latest_step`) only once complete.

    The first save of this object removes unfinished saves a killed run
    left. Ctrl-C during the save is held back until the step is complete,
    then raised (`KeyboardInterrupt`): a re-run resumes from that step. A
    `KeyboardInterrupt` that still reaches the save (raised by a handler
    of the caller's) abandons the step: orbax's writer threads are let
    finish, its temporary directory removed, and the interrupt re-raised.
    The directory keeps only complete steps either way.
    """
    self.wait()
    if not self._saved:
      remove_temporaries(self.directory)
      self._saved = True
    if not wait:
      # The caller goes on: what it may still change is copied now (meta,
      # NumPy leaves; JAX arrays are immutable).
      state = jax.tree.map(
        lambda x: x.copy() if isinstance(x, np.ndarray) else x, state
      )
      self._writer = threading.Thread(
        target=self._write_in_background,
        args=(step, state, arch, copy.deepcopy(meta)),
        name='lpjax-checkpoint',
      )
      self._writer.start()
      return
    before = _orbax_threads()
    with _HeldInterrupt():
      try:
        self._write(step, state, arch, meta)
      except KeyboardInterrupt:
        _join_orbax_threads(before)  # they write into the temporary folder
        remove_temporaries(self.directory)
        raise

  def _write(self, step, state, arch, meta) -> None:
    """Writes one step and waits until it is on disk."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        arch=ocp.args.JsonSave(arch.to_dict()),
        meta=ocp.args.JsonSave(meta or {}),
      ),
      force=True,
    )
    self._manager.wait_until_finished()

  def _write_in_background(self, step, state, arch, meta) -> None:
    try:
      self._write(step, state, arch, meta)
    except BaseException as e:  # raised in the caller's thread by `wait`
      self._failure = e

  def wait(self) -> None:
    """Waits until a background save (`save(..., wait=False)`) is on disk,
    and raises what it raised; Ctrl-C meanwhile takes effect after it."""
    writer, self._writer = self._writer, None
    if writer is not None:
      with _HeldInterrupt():
        writer.join()
    failure, self._failure = self._failure, None
    if failure is not None:
      raise failure

  def _restore(self, step: int, **items: Any) -> Any:
    self.wait()
    _quiet_unfinished_reads()  # before: a failed read's echoes come soon
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types; name the checkpoint.
      path = os.path.join(self.directory, str(step))
      raise CheckpointError(
        f'Checkpoint step {step} in {self.directory} cannot be read '
        f'({_reason(e)}). It is damaged or was written by an incompatible '
        f'version: delete {path} to resume from the step before it, or the '
        f'folder {self.directory} to redo that stage, or start in a fresh '
        '--workdir.'
      ) from e

  def restore_meta(
    self, step: int | None = None
  ) -> tuple[arch_lib.Arch, dict[str, Any]]:
    """The `Arch` and meta dict of `step` (default: the latest).

    Raises:
      CheckpointError: naming the step, when an item is missing or damaged,
        the arch is not one a model family builds, or meta is not a dict.
    """
    step = self._step(step)
    out = self._restore(
      step, arch=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
    )
    try:
      arch = arch_lib.Arch.from_dict(out['arch'])
      models.get_family(arch.family).check(arch)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      raise CheckpointError(
        f'Checkpoint step {step} in {self.directory} has an invalid arch '
        f'({type(e).__name__}: {e}).'
      ) from e
    meta = out['meta']
    if not isinstance(meta, dict):
      raise CheckpointError(
        f'Checkpoint step {step} in {self.directory} has meta of type '
        f'{type(meta).__name__}; a JSON object was saved.'
      )
    return arch, dict(meta)

  def restore(self, abstract_state: Any = None, step: int | None = None) -> Any:
    """The state of `step` (default: the latest).

    Args:
      abstract_state: the tree to restore into (e.g. `jax.eval_shape` of a
        fresh state of the checkpoint's arch). Without it the tree comes back
        as saved, with optimizer-state tuples turned into lists.
      step: which step.
    """
    step = self._step(step)
    args = ocp.args.StandardRestore(abstract_state)
    return self._restore(step, state=args)['state']

  def _step(self, step):
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'No checkpoint in {self.directory}.')
    return step

  def close(self) -> None:
    """Finishes a background save, then releases orbax's resources."""
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
