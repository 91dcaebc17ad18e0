"""Models built from an `Arch`, and named representations.

`build_model(arch)` returns the linen module for `arch.family`. The
representations pruning criteria compare are named:

* `'pooled'`: globally pooled features before the classifier `[batch, width]`
  (the papers' choice);
* `'logits'`: the classifier output `[batch, num_classes]`;
* a block name such as `'stage2_block07'`: that block's output
  `[batch, height, width, channels]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpjax import arch as arch_lib
from lpjax.models import resnet

# Family -> module class. Adding a family = one module + one line here.
MODELS: dict[str, Callable[[arch_lib.Arch], nn.Module]] = {
  'resnet_cifar': resnet.ResNet,
  'resnet_imagenet': resnet.ResNet,
}


def build_model(arch: arch_lib.Arch) -> nn.Module:
  """The linen module for `arch`; `KeyError` listing families if unknown."""
  try:
    return MODELS[arch.family](arch)
  except KeyError:
    raise KeyError(
      f'No model for family {arch.family!r}; known: {sorted(MODELS)}.'
    ) from None


def representation_names(arch: arch_lib.Arch) -> tuple[str, ...]:
  """Every representation name `representations` accepts for `arch`."""
  return ('pooled', 'logits', *(b.name for b in arch.blocks))


def representations(
  model: nn.Module,
  variables: Any,
  x: jax.Array,
  names: Sequence[str] = ('pooled',),
  *,
  skip: jax.Array | None = None,
  fanout: bool = False,
) -> dict[str, jax.Array]:
  """Named representations of `x` in eval mode, from one forward pass.

  Args:
    model: a module from `build_model`.
    variables: its `{'params', 'batch_stats'}`.
    x: images `[batch, height, width, channels]`.
    names: which representations; see the module docstring.
    skip: optional skip mask, as for the model. A skipped block's output is
      its input.
    fanout: evaluate the unpruned model and every single-candidate removal
      in one shared-prefix pass (see `ResNet`); every representation then
      gets a leading axis `[1 + K, batch, ...]`: index 0 is the unpruned
      model, index 1 + i the model without `arch.candidates[i]`.

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
  wanted = set(names)

  def capture(mdl: nn.Module, method: str) -> bool:
    return (
      method == '__call__'
      and isinstance(mdl, resnet.BLOCK_TYPES)
      and mdl.name in wanted
    )

  logits, state = model.apply(
    variables,
    x,
    train=False,
    skip=skip,
    fanout=fanout,
    capture_intermediates=capture,
    mutable=['intermediates'],
  )
  inter = state['intermediates']
  out = {}
  for n in names:
    if n == 'logits':
      out[n] = logits
    elif n == 'pooled':
      out[n] = inter['pooled'][0]
    else:
      out[n] = inter[n]['__call__'][0]
    if fanout:
      out[n] = _unstack_streams(model.arch, n, out[n], x.shape[0])
  return out


def _unstack_streams(arch, name, rep, batch):
  """`[S * batch, ...]` fanout rows -> `[1 + K, batch, ...]`.

  A block's output holds the streams of the candidates up to and including
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
  arch: arch_lib.Arch, rng: jax.Array | int, image_shape: Sequence[int]
) -> dict[str, Any]:
  """Fresh `{'params', 'batch_stats'}` for `arch` on `[H, W, C]` images.

  Args:
    arch: the network.
    rng: a PRNG key, or an int seed. An int seed draws from the `'rbg'` PRNG,
      whose initialiser compiles about 3x faster on CPU than threefry's
      (measured: 3.8 s vs 12 s for a 9-block ResNet).
    image_shape: `[height, width, channels]`.
  """
  if isinstance(rng, int):
    rng = jax.random.key(rng, impl='rbg')
  model = build_model(arch)
  x = jax.numpy.zeros((1, *image_shape), jax.numpy.float32)
  # Jitted: eager init dispatches every op separately (seconds for ResNet-56).
  return dict(jax.jit(lambda r: model.init(r, x, train=False))(rng))


def variable_shapes(
  arch: arch_lib.Arch, image_shape: Sequence[int]
) -> dict[str, Any]:
  """`jax.eval_shape` of `init`: the exact tree a model of `arch` expects."""
  model = build_model(arch)
  x = jax.ShapeDtypeStruct((1, *image_shape), jax.numpy.float32)
  return jax.eval_shape(
    lambda x: dict(model.init(jax.random.key(0), x, train=False)), x
  )
