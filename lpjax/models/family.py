"""`Family`: everything lpjax needs to know about one kind of model.

A family is one module under `lpjax/models/` that builds `Arch` values and
the linen module for them, plus one `Family` value registered in
`lpjax.models.FAMILIES`. The rest of lpjax (scoring, surgery, FLOPs,
training, methods, the pipeline) talks to a model only through this record,
so adding a family touches nothing outside `lpjax/models/` (see the README's
"Add a model family").

Every family's module follows one contract:

* `module(x, *, train=False, skip=None, fanout=False) -> logits` (plus
  `filter_mask=None` where the family has `prunable_filters`), with
  `skip` a traced boolean `[len(arch.candidates)]` mask (a skipped unit
  returns its input, exactly as if deleted) and, where `fanout` is
  supported, the shared-prefix evaluation of every single-unit removal
  (stream-major rows, see `lpjax.models.resnet.ResNet`);
* unit submodules are named by their stable ids, so `capture_intermediates`
  finds each unit's output under its name;
* a unit's call takes the keyword arguments `unit_route` gives it and ends
  with `unit_output` (its input where skipped, the passthrough stream
  appended under `fanout`);
* it sows `stem` (the input to the first unit) and `pooled` (the features
  before the classifier) into the `intermediates` collection;
* dropout, if any, draws from the `'dropout'` RNG stream when `train=True`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpjax import arch as arch_lib

# A leaf to slice when a unit's inner width shrinks: (path inside the unit's
# subtree, in any collection; '*' matches every key at that level), axis.
SliceRule = tuple[tuple[str, ...], int]


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family.

  Attributes:
    name: registry name, stored in `Arch.family`.
    module: `arch -> nn.Module` following the contract above.
    input_dtype: dtype of the model's inputs (`'float32'` images or series,
      `'int32'` tokens), or `arch -> dtype` where it depends on the options;
      calibration data are cast to it (`lpjax.models.input_dtype`).
    default_input_shape: `arch -> per-example input shape` used when none
      is given (FLOPs, docs).
    fanout: whether `module(..., fanout=True)` is supported.
    width_slices: `(arch, unit, k) -> rules`: the leaves filter surgery
      slices when inner width `k` (0-based) of `unit` shrinks; empty when
      that width may not shrink.
    prunable_filters: optional `arch -> ((unit, k, width), ...)`: the inner
      widths whose filters a filter criterion scores and the filter child
      of `everything` shrinks, in the order of the module's `filter_mask`
      argument (`None`: the family has no filter pruning).
    num_filters: optional `arch -> int`: every convolution's output
      channels, the unit filter budgets are counted in.
    from_config: `(config, num_classes, input_shape) -> Arch`, the unpruned
      network an experiment config asks for.
    check: `arch -> None`, raising `ValueError` on an `Arch` this family
      cannot build (called by `build_model`).
    macs: optional closed form `(arch, input_shape) -> multiply-accumulates
      per example`; `None` counts the module's `nn.Conv` / `nn.Dense` calls
      (`lpjax.flops`).
    batchnorm: whether the module has `batch_stats`.
    representations: names of further features the module sows into
      `intermediates` beside `stem` and `pooled` (e.g. the decoder's
      `last`: the last token's hidden state).
    lora_targets: optional `arch -> ((name, ..., 'kernel'), ...)`: the
      paths in `params` of the 2-D `[in, out]` Dense kernels LoRA healing
      adapts (`lpjax.healing`; e.g. the decoder's MLP `gate`, `up` and
      `down` of every layer), in a fixed order that seeds the adapters
      (`None`: the family has no LoRA healing).
  """

  name: str
  module: Callable[[arch_lib.Arch], nn.Module]
  input_dtype: str | Callable[[arch_lib.Arch], str]
  default_input_shape: Callable[[arch_lib.Arch], tuple[int, ...]]
  fanout: bool
  width_slices: Callable[
    [arch_lib.Arch, arch_lib.Block, int], Sequence[SliceRule]
  ]
  from_config: Callable[[Any, int, Sequence[int]], arch_lib.Arch]
  check: Callable[[arch_lib.Arch], None] = lambda arch: None
  macs: Callable[[arch_lib.Arch, tuple[int, ...]], int] | None = None
  batchnorm: bool = True
  prunable_filters: (
    Callable[[arch_lib.Arch], tuple[tuple[str, int, int], ...]] | None
  ) = None
  num_filters: Callable[[arch_lib.Arch], int] | None = None
  representations: tuple[str, ...] = ()
  lora_targets: Callable[[arch_lib.Arch], Sequence[tuple[str, ...]]] | None = (
    None
  )


def unit_route(
  arch: arch_lib.Arch,
  block: arch_lib.Block,
  *,
  train: bool,
  skip: jax.Array | None,
  fanout: bool,
  batch: int,
) -> dict[str, Any]:
  """The keyword arguments every family passes to unit `block`'s call.

  `train`; where the unit is a candidate, its entry of the `skip` mask and,
  with `fanout`, `passthrough=batch` (the unpruned stream comes first, so a
  unit appends its input's first `batch` rows as the stream that skips it).
  """
  route: dict[str, Any] = {'train': train}
  if block.candidate:
    if skip is not None:
      route['skip'] = skip[arch.candidates.index(block.name)]
    if fanout:
      route['passthrough'] = batch
  return route


def unit_output(
  x: jax.Array,
  y: jax.Array,
  *,
  skip: jax.Array | None = None,
  passthrough: int = 0,
) -> jax.Array:
  """What a unit called with `unit_route`'s arguments returns.

  Args:
    x: the unit's input `[rows, ...]`.
    y: the unit's output, computed from `x`.
    skip: optional traced boolean scalar; true returns `x` unchanged,
      exactly as if the unit were deleted.
    passthrough: static; if positive, the first `passthrough` rows of `x`
      (the unpruned stream's input) are appended after the output: the
      stream without this unit in a `fanout` pass.
  """
  if skip is not None:
    y = jnp.where(skip, x, y)
  if passthrough:
    y = jnp.concatenate([y, x[:passthrough]])
  return y


def check_call(
  arch: arch_lib.Arch, *, train: bool, skip: jax.Array | None, fanout: bool
) -> None:
  """The checks every family's `__call__` makes of `skip` and `fanout`.

  Raises:
    ValueError: a skip mask of the wrong shape, or `fanout` combined with
      training or a mask.
  """
  cands = arch.candidates
  if skip is not None and jnp.shape(skip) != (len(cands),):
    raise ValueError(
      f'skip must have shape ({len(cands)},) = one entry per candidate unit '
      f'{list(cands)}; got shape {jnp.shape(skip)}.'
    )
  if fanout and (train or skip is not None):
    raise ValueError(
      'fanout evaluates every single-unit removal of the eval-mode model; '
      'it cannot be combined with train=True (batch statistics or dropout '
      'would mix the streams) or with a skip mask.'
    )
