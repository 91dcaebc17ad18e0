"""Pure pytree surgery: delete blocks or filters from `(arch, variables)`.

Both functions return a new `(Arch, variables)` pair and leave their inputs
untouched. Because block submodules are named from stable ids, deleting a
block is deleting its keys in every collection; nothing is renamed, so the
result is exactly the tree `init` of the smaller model would produce.

Optimizer state is never surgered: re-create it with `tx.init(params)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib

Variables = Mapping[str, Mapping[str, Any]]


def remove_blocks(
  arch: arch_lib.Arch,
  variables: Variables,
  block_ids: Iterable[str],
  *,
  enforce_floor: bool = True,
) -> tuple[arch_lib.Arch, dict[str, dict[str, Any]]]:
  """Deletes whole residual blocks.

  Args:
    arch: the network.
    variables: its `{'params': ..., 'batch_stats': ...}` (any collections).
    block_ids: names of candidate blocks to delete, e.g. `'stage2_block07'`.
    enforce_floor: refuse to leave a stage below `arch.min_blocks_per_stage`.

  Returns:
    `(smaller_arch, smaller_variables)`.

  Raises:
    ValueError: for unknown blocks, non-candidates or a floor violation (from
      `Arch.without`), or variables that lack a block the arch has.
  """
  block_ids = list(block_ids)
  new_arch = arch.without(block_ids, enforce_floor=enforce_floor)
  drop = set(block_ids)
  params = variables.get('params', {})
  missing = [b for b in drop if b not in params]
  if missing:
    raise ValueError(
      f'variables have no parameters for blocks {sorted(missing)}; they do '
      'not belong to this arch.'
    )
  new_vars = {
    col: {k: v for k, v in tree.items() if k not in drop}
    for col, tree in variables.items()
  }
  return new_arch, new_vars


def remove_filters(
  arch: arch_lib.Arch,
  variables: Variables,
  block_id: str,
  keep: Sequence[int],
  *,
  conv: int = 1,
) -> tuple[arch_lib.Arch, dict[str, dict[str, Any]]]:
  """Keeps only some output filters of one inner convolution of a block.

  For inner conv `k` (`conv1` of a basic block; `conv1` or `conv2` of a
  bottleneck) this slices `conv{k}`'s kernel and bias along its output
  channels, `bn{k}`'s scale, bias, mean and var, and `conv{k+1}`'s kernel
  along its input channels. The block's output width is unchanged.

  Args:
    arch: the network.
    variables: its variables.
    block_id: the block, e.g. `'stage1_block03'` (any block, downsampling
      ones included).
    keep: indices of the filters to keep, in `[0, width)`; kept in ascending
      order.
    conv: which inner conv, 1-based (`len(block.widths)` of them).

  Returns:
    `(arch_with_new_widths, variables)`.

  Raises:
    ValueError: for an empty, duplicated or out-of-range `keep`, or a bad
      `conv`. KeyError: for an unknown block.
  """
  block = arch.block(block_id)
  if not 1 <= conv <= len(block.widths):
    raise ValueError(
      f'{block_id} has inner convs 1..{len(block.widths)}; got conv={conv}.'
    )
  width = block.widths[conv - 1]
  keep_arr = np.asarray(list(keep), dtype=np.int64).reshape(-1)
  if keep_arr.size == 0:
    raise ValueError(
      f'keep is empty: {block_id} conv{conv} must keep at least one of its '
      f'{width} filters (remove the whole block with remove_blocks).'
    )
  if len(np.unique(keep_arr)) != keep_arr.size:
    raise ValueError(f'keep has duplicate filter indices: {keep_arr.tolist()}.')
  if keep_arr.min() < 0 or keep_arr.max() >= width:
    raise ValueError(
      f'keep indices must lie in [0, {width}) for {block_id} conv{conv}; '
      f'got {keep_arr.tolist()}.'
    )
  idx = jnp.asarray(np.sort(keep_arr))
  widths = list(block.widths)
  widths[conv - 1] = int(idx.size)
  new_arch = arch.with_widths(block_id, widths)

  conv_out, bn, conv_in = f'conv{conv}', f'bn{conv}', f'conv{conv + 1}'
  new_vars = {}
  for col, tree in variables.items():
    tree = dict(tree)
    if block_id in tree:
      sub = dict(tree[block_id])
      if conv_out in sub:
        sub[conv_out] = {
          name: leaf[..., idx] for name, leaf in sub[conv_out].items()
        }
      if bn in sub:
        sub[bn] = {name: leaf[idx] for name, leaf in sub[bn].items()}
      if conv_in in sub:
        sub[conv_in] = dict(sub[conv_in])
        sub[conv_in]['kernel'] = sub[conv_in]['kernel'][:, :, idx, :]
      tree[block_id] = sub
    new_vars[col] = tree
  if block_id not in new_vars.get('params', {}):
    raise ValueError(f'variables have no parameters for block {block_id}.')
  return new_arch, new_vars


def l1_filter_order(
  variables: Variables, block_id: str, *, conv: int = 1
) -> np.ndarray:
  """Filters of `conv{conv}` in `block_id`, ascending by kernel l1 norm."""
  kernel = np.asarray(variables['params'][block_id][f'conv{conv}']['kernel'])
  norms = np.abs(kernel).sum(axis=(0, 1, 2))
  return np.argsort(norms, kind='stable')
