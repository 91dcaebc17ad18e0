"""Orbax checkpoints that carry their `Arch`, so a pruned model rebuilds alone.

A checkpoint step holds three items, saved together and atomically (orbax
writes to a temporary directory and renames it when complete):

* `state`: the train state pytree (step, params, batch_stats, opt_state);
* `arch`: the `Arch` as JSON;
* `meta`: a JSON dict of whatever the caller records (epoch, scores, ...).

Restoring is two-phase because the state's tree depends on the arch: read
`arch` and `meta` first (`restore_meta`), build the abstract state of that
arch, then `restore` the state into it. Saves are synchronous: a run killed
at any moment leaves either the previous step or the new one, never a
half-written checkpoint (a stale `*.orbax-checkpoint-tmp*` directory is
cleaned up when the directory is opened again). No pickle anywhere.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from lpjax import arch as arch_lib
from lpjax import errors, models


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint exists but cannot be read."""


class Checkpoints:
  """The checkpoints of one stage of a run, in one directory.

  Args:
    directory: where the steps live; made absolute (orbax requires it).
    max_to_keep: how many most recent steps to keep.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
      self.directory,
      item_names=('state', 'arch', 'meta'),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(
    self,
    step: int,
    *,
    state: Any,
    arch: arch_lib.Arch,
    meta: dict[str, Any] | None = None,
  ) -> None:
    """Saves one step and waits until it is on disk."""
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

  def _restore(self, step: int, **items: Any) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types; name the checkpoint.
      raise CheckpointError(
        f'Checkpoint step {step} in {self.directory} cannot be read '
        f'({type(e).__name__}: {e}). It is corrupt or was written by an '
        'incompatible version: delete that step directory to resume from '
        'an earlier one, or start in a fresh --workdir.'
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
    self._manager.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
