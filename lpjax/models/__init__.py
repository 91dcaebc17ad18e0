"""Model families, and named representations of their models.

`FAMILIES` is the registry: one `Family` per kind of model (see
`lpjax.models.family` for what a family provides). `build_model(arch)`
returns the linen module for `arch.family`; `get_arch(name)` builds an
unpruned `Arch` by name. The representations pruning methods compare are
named, for every family:

* `'stem'`: the input to the first unit (after the stem convolution, or the
  token embeddings), `[batch, ...]`;
* `'pooled'`: the features before the classifier `[batch, width]` (the
  papers' choice);
* `'logits'`: the classifier output `[batch, num_classes]` (a language
  model's: `[batch, tokens, vocab]`);
* a family's own features (`Family.representations`), e.g. the decoder's
  `'last'`: the last token's final hidden state `[batch, width]`;
* a unit name such as `'stage2_block07'` or `'layer05'`: that unit's output
  (its input, if skipped), e.g. `[batch, height, width, channels]` or
  `[batch, tokens, width]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpjax import arch as arch_lib
from lpjax import sharding  # noqa: F401  (one CPU device per core, first)
from lpjax.models import decoder, encoder, resnet, vit
from lpjax.models.family import Family

# Registry name -> family. Adding a family = one module + one line here.
FAMILIES: dict[str, Family] = {
  f.name: f
  for f in (
    resnet.CIFAR,
    resnet.IMAGENET,
    vit.VIT,
    encoder.ENCODER,
    decoder.DECODER,
  )
}


def get_family(name: str) -> Family:
  """The family called `name`; `KeyError` listing the valid ones."""
  try:
    return FAMILIES[name]
  except KeyError:
    raise KeyError(
      f'Unknown model family {name!r}; known families: {sorted(FAMILIES)}.'
    ) from None


def build_model(arch: arch_lib.Arch) -> nn.Module:
  """The linen module for `arch`.

  Raises:
    KeyError: for an unknown family (listing the known ones).
    ValueError: for an `Arch` its family cannot build.
  """
  family = get_family(arch.family)
  family.check(arch)
  return family.module(arch)


def get_arch(name: str, **kwargs: Any) -> arch_lib.Arch:
  """An unpruned `Arch` by model name: `resnet56`, `resnet50`, `vit`.

  Keyword arguments go to the family's constructor
  (`lpjax.models.resnet.resnet_cifar`, `lpjax.models.vit.vit`).

  Raises:
    KeyError: for an unknown name, listing the valid ones.
  """
  if name == 'vit':
    return vit.vit(**kwargs)
  if name == 'encoder':
    return encoder.encoder(**kwargs)
  if name == 'decoder':
    return decoder.decoder(**kwargs)
  try:
    return resnet.get_arch(name, **kwargs)
  except KeyError:
    raise KeyError(
      f'Unknown model {name!r}; valid models: '
      f'{(*resnet.NAMES, "vit", "encoder", "decoder")}.'
    ) from None


def arch_from_config(
  config: Any, num_classes: int, input_shape: Sequence[int]
) -> arch_lib.Arch:
  """The unpruned `Arch` an experiment config asks for (`config.model`).

  `config.model` is `'vit'` (options in `config.vit`) or a ResNet name
  (options `width`, `blocks_per_stage`, `style`); `min_blocks_per_stage` is
  the floor for every family.

  Raises:
    KeyError: for an unknown model or style, listing the valid ones.
  """
  if config.model == 'vit':
    family = vit.VIT
  elif config.model == 'encoder':
    family = encoder.ENCODER
  else:
    get_arch(config.model)  # KeyError listing every valid model name.
    family = resnet.CIFAR
  return family.from_config(config, num_classes, tuple(input_shape))


def input_dtype(arch: arch_lib.Arch) -> str:
  """The dtype `arch`'s model takes its inputs in (`'float32'`, `'int32'`)."""
  dtype = get_family(arch.family).input_dtype
  return dtype if isinstance(dtype, str) else dtype(arch)


def default_input_shape(arch: arch_lib.Arch) -> tuple[int, ...]:
  """The family's default per-example input shape for `arch`."""
  return tuple(get_family(arch.family).default_input_shape(arch))


def representation_names(arch: arch_lib.Arch) -> tuple[str, ...]:
  """Every representation name `representations` accepts for `arch`."""
  extra = get_family(arch.family).representations
  return ('stem', 'pooled', 'logits', *extra, *(b.name for b in arch.blocks))


def representations(
  model: nn.Module,
  variables: Any,
  x: jax.Array,
  names: Sequence[str] = ('pooled',),
  *,
  skip: jax.Array | None = None,
  fanout: bool = False,
  filter_mask: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Named representations of `x` in eval mode, from one forward pass.

  Args:
    model: a module from `build_model`.
    variables: its `{'params', 'batch_stats'}`.
    x: inputs `[batch, ...]` (images, series or tokens).
    names: which representations; see the module docstring.
    skip: optional skip mask, as for the model. A skipped unit's output is
      its input.
    fanout: evaluate the unpruned model and every single-candidate removal
      in one shared-prefix pass (families with `fanout`, see
      `lpjax.models.resnet.ResNet`); every representation then
      gets a leading axis `[1 + K, batch, ...]`: index 0 is the unpruned
      model, index 1 + i the model without `arch.candidates[i]`.
    filter_mask: optional `[num prunable filters]` multiplier of the
      prunable filters' activations (`prunable_filters`); zero = removed.

  Returns:
    `{name: array}` for every requested name.

  Raises:
    KeyError: naming every requested representation the model does not have
      and listing the valid ones.
  """
  valid = representation_names(model.arch)
  missing = [n for n in names if n not in valid]
  if missing:
    raise KeyError(
      f'Representations {missing} do not exist in this model; valid names: '
      f'{list(valid)}.'
    )
  units = {b.name for b in model.arch.blocks}.intersection(names)
  sown = ('pooled', 'stem', *get_family(model.arch.family).representations)

  def capture(mdl: nn.Module, method: str) -> bool:
    # Unit ids are unique module names (`Arch` checks it), so the name
    # alone finds the unit.
    return method == '__call__' and mdl.name in units

  extra = {} if filter_mask is None else {'filter_mask': filter_mask}
  logits, state = model.apply(
    variables,
    x,
    train=False,
    skip=skip,
    fanout=fanout,
    capture_intermediates=capture,
    mutable=['intermediates'],
    **extra,
  )
  inter = state['intermediates']
  out = {}
  for n in names:
    if n == 'logits':
      out[n] = logits
    elif n in sown:
      out[n] = inter[n][0]
    else:
      out[n] = inter[n]['__call__'][0]
    if fanout:
      out[n] = _unstack_streams(model.arch, n, out[n], x.shape[0])
  return out


def prunable_filters(arch: arch_lib.Arch) -> tuple[tuple[str, int, int], ...]:
  """`(unit, k, width)` of every inner width filter pruning may shrink.

  Raises:
    ValueError: the family has no filter pruning.
  """
  fam = get_family(arch.family)
  if fam.prunable_filters is None:
    raise ValueError(
      f'The {arch.family} family has no filter pruning; families with it: '
      f'{sorted(n for n, f in FAMILIES.items() if f.prunable_filters)}.'
    )
  return tuple(fam.prunable_filters(arch))


def num_filters(arch: arch_lib.Arch) -> int:
  """Every convolution's output channels (the filter budget's unit)."""
  fam = get_family(arch.family)
  if fam.num_filters is None:
    raise ValueError(f'The {arch.family} family does not count filters.')
  return int(fam.num_filters(arch))


def inner_activations(
  model: nn.Module, variables: Any, x: jax.Array
) -> dict[tuple[str, int], jax.Array]:
  """Every prunable inner width's activation, eval mode, one forward.

  Returns:
    `{(unit, k): [batch, ..., width]}` in `prunable_filters` order: the
    output of inner width `k` of `unit` after its normalisation and
    non-linearity (what the next layer reads, and what a filter mask
    multiplies).
  """
  _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  inter = state['intermediates']
  return {
    (u, k): inter[u][f'inner{k}'][0] for u, k, _ in prunable_filters(model.arch)
  }


def _unstack_streams(arch, name, rep, batch):
  """`[S * batch, ...]` fanout rows -> `[1 + K, batch, ...]`.

  A unit's output holds the streams of the candidates up to and including
  it; removing a later candidate leaves it equal to the unpruned stream.
  """
  rep = rep.reshape(-1, batch, *rep.shape[1:])
  missing = 1 + len(arch.candidates) - rep.shape[0]
  if missing:
    rep = jnp.concatenate(
      [rep, jnp.broadcast_to(rep[:1], (missing, *rep.shape[1:]))]
    )
  return rep


def init_variables(
  arch: arch_lib.Arch,
  rng: jax.Array | int,
  input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
  """Fresh variables (`{'params'}`, plus `'batch_stats'` where used) for `arch`.

  Args:
    arch: the network.
    rng: a PRNG key, or an int seed. An int seed draws from the `'rbg'` PRNG,
      whose initialiser compiles about 3x faster on CPU than threefry's
      (measured: 3.8 s vs 12 s for a 9-block ResNet).
    input_shape: per-example input shape (`[height, width, channels]` for
      images); default: the family's.
  """
  if isinstance(rng, int):
    rng = jax.random.key(rng, impl='rbg')
  model = build_model(arch)
  x = _dummy_input(arch, input_shape)
  # Jitted: eager init dispatches every op separately (seconds for ResNet-56).
  return dict(jax.jit(lambda r: model.init(r, x, train=False))(rng))


def _dummy_input(arch, input_shape):
  shape = input_shape or default_input_shape(arch)
  return jnp.zeros((1, *shape), input_dtype(arch))


def variable_shapes(
  arch: arch_lib.Arch, input_shape: Sequence[int] | None = None
) -> dict[str, Any]:
  """`jax.eval_shape` of `init`: the exact tree a model of `arch` expects."""
  model = build_model(arch)
  x = _dummy_input(arch, input_shape)
  return jax.eval_shape(
    lambda: dict(model.init(jax.random.key(0), x, train=False))
  )
