"""Edits as data, and pure surgery that applies them to `(arch, variables)`.

An `Edit` is one step of pruning: remove whole units, and/or shrink inner
widths of units (keep only some of their filters / MLP units). It is plain
data with a JSON form, so a run records every step's edit in `results.json`
and any intermediate model is the baseline plus a replay of the edits
(`replay`).

`apply` returns a new `(Arch, variables)` pair and leaves its inputs
untouched. Because unit submodules are named from stable ids, removing a
unit is deleting its keys in every collection; nothing is renamed, so the
result is exactly the tree `init` of the smaller model would produce.
Which leaves a width shrink slices is the family's knowledge
(`Family.width_slices`).

Optimizer state is never surgered: re-create it with `tx.init(params)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib
from lpjax import models

Variables = Mapping[str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Shrink:
  """Keep only some channels of one inner width of one unit.

  Attributes:
    unit: the unit's id, e.g. `'stage1_block03'`.
    width: which inner width, 0-based (`conv{width + 1}` of a ResNet block,
      the MLP of a transformer layer).
    keep: indices of the channels kept, ascending.
  """

  unit: str
  width: int
  keep: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Edit:
  """One step of surgery: remove units, then shrink widths.

  Attributes:
    remove: ids of the units deleted.
    shrink: width reductions of units that stay.
  """

  remove: tuple[str, ...] = ()
  shrink: tuple[Shrink, ...] = ()

  def to_dict(self) -> dict[str, Any]:
    return {
      'remove': list(self.remove),
      'shrink': [
        {'unit': s.unit, 'width': s.width, 'keep': list(s.keep)}
        for s in self.shrink
      ],
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Edit:
    return cls(
      remove=tuple(str(u) for u in d.get('remove', ())),
      shrink=tuple(
        Shrink(
          str(s['unit']), int(s['width']), tuple(int(i) for i in s['keep'])
        )
        for s in d.get('shrink', ())
      ),
    )

  @property
  def empty(self) -> bool:
    return not (self.remove or self.shrink)


def remove(units: Iterable[str]) -> Edit:
  """The edit that deletes `units`."""
  return Edit(remove=tuple(units))


def apply(
  arch: arch_lib.Arch,
  variables: Variables,
  edit: Edit,
  *,
  enforce_floor: bool = True,
) -> tuple[arch_lib.Arch, dict[str, dict[str, Any]]]:
  """Applies `edit` to `(arch, variables)`; pure.

  Args:
    arch: the network.
    variables: its variables (any collections).
    edit: what to remove and shrink.
    enforce_floor: refuse to leave a stage below `arch.min_blocks_per_stage`.

  Returns:
    `(smaller_arch, smaller_variables)`.

  Raises:
    ValueError: for unknown units, non-candidates, a floor violation, bad
      channel indices, a width the family does not shrink, or variables that
      do not belong to `arch`. KeyError: a shrink of an unknown unit.
  """
  out = {col: dict(tree) for col, tree in variables.items()}
  if edit.remove:
    arch, out = _remove_units(arch, out, edit.remove, enforce_floor)
  for s in edit.shrink:
    arch, out = _shrink(arch, out, s)
  return arch, out


def replay(
  arch: arch_lib.Arch, variables: Variables, edits: Sequence[Edit]
) -> tuple[arch_lib.Arch, dict[str, dict[str, Any]]]:
  """Applies `edits` in order: the model after the last of them."""
  out = variables
  for edit in edits:
    arch, out = apply(arch, out, edit)
  return arch, out


def _remove_units(arch, variables, units, enforce_floor):
  units = list(units)
  new_arch = arch.without(units, enforce_floor=enforce_floor)
  drop = set(units)
  missing = [u for u in drop if u not in variables.get('params', {})]
  if missing:
    raise ValueError(
      f'variables have no parameters for units {sorted(missing)}; they do '
      'not belong to this arch.'
    )
  new_vars = {
    col: {k: v for k, v in tree.items() if k not in drop}
    for col, tree in variables.items()
  }
  return new_arch, new_vars


def _shrink(arch, variables, s: Shrink):
  block = arch.block(s.unit)
  if not 0 <= s.width < len(block.widths):
    raise ValueError(
      f'{s.unit} has inner widths 0..{len(block.widths) - 1}; got '
      f'width={s.width}.'
    )
  rules = models.get_family(arch.family).width_slices(arch, block, s.width)
  if not rules:
    raise ValueError(f'The {arch.family} family cannot shrink {s.unit}.')
  size = block.widths[s.width]
  keep = np.asarray(list(s.keep), dtype=np.int64).reshape(-1)
  if keep.size == 0:
    raise ValueError(
      f'keep is empty: {s.unit} width {s.width} must keep at least one of '
      f'its {size} channels (remove the whole unit instead).'
    )
  if len(np.unique(keep)) != keep.size:
    raise ValueError(f'keep has duplicate channel indices: {keep.tolist()}.')
  if keep.min() < 0 or keep.max() >= size:
    raise ValueError(
      f'keep indices must lie in [0, {size}) for {s.unit} width {s.width}; '
      f'got {keep.tolist()}.'
    )
  if s.unit not in variables.get('params', {}):
    raise ValueError(f'variables have no parameters for unit {s.unit}.')
  idx = jnp.asarray(np.sort(keep))
  widths = list(block.widths)
  widths[s.width] = int(idx.size)
  new_vars = {}
  for col, tree in variables.items():
    tree = dict(tree)
    if s.unit in tree:
      sub = tree[s.unit]
      for path, axis in rules:
        sub = _slice_at(sub, path, axis, idx)
      tree[s.unit] = sub
    new_vars[col] = tree
  return arch.with_widths(s.unit, widths), new_vars


def _slice_at(tree, path, axis, idx):
  """`tree` with the leaves at `path` ('*' = every key) sliced on `axis`."""
  if not path:
    return jnp.take(tree, idx, axis=axis)
  if not isinstance(tree, Mapping):
    return tree
  head, rest = path[0], path[1:]
  keys = list(tree) if head == '*' else [head]
  out = dict(tree)
  for k in keys:
    if k in out:
      out[k] = _slice_at(out[k], rest, axis, idx)
  return out


# --- Shorthands ---------------------------------------------------------------


def remove_blocks(
  arch: arch_lib.Arch,
  variables: Variables,
  block_ids: Iterable[str],
  *,
  enforce_floor: bool = True,
) -> tuple[arch_lib.Arch, dict[str, dict[str, Any]]]:
  """Deletes whole units: `apply(arch, variables, remove(block_ids))`."""
  return apply(arch, variables, remove(block_ids), enforce_floor=enforce_floor)


def remove_filters(
  arch: arch_lib.Arch,
  variables: Variables,
  block_id: str,
  keep: Sequence[int],
  *,
  conv: int = 1,
) -> tuple[arch_lib.Arch, dict[str, dict[str, Any]]]:
  """Keeps only some output filters of inner convolution `conv` (1-based).

  For a ResNet block this slices `conv{k}`'s kernel and bias along its output
  channels, `bn{k}`'s scale, bias, mean and var, and `conv{k+1}`'s kernel
  along its input channels; the block's output width is unchanged. Same as
  `apply(arch, variables, Edit(shrink=(Shrink(block_id, conv - 1, keep),)))`.
  """
  n = len(arch.block(block_id).widths)
  if not 1 <= conv <= n:
    raise ValueError(f'{block_id} has inner convs 1..{n}; got conv={conv}.')
  edit = Edit(shrink=(Shrink(block_id, conv - 1, tuple(int(i) for i in keep)),))
  return apply(arch, variables, edit)
