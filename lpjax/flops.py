"""FLOPs and parameters of an `Arch`, in the papers' convention, any family.

The pruning papers (Pons et al. 2024 and the group's later work) count
"FLOPs" as the multiply-accumulates of convolutions, `H_out * W_out * C_in *
C_out * k_h * k_w`, plus those of the dense layer, `in * out`; BatchNorm,
ReLU, additions, pooling and biases are ignored. Parameters follow Keras'
`count_params()`: every variable, BatchNorm moving mean and variance included.
In this convention every CIFAR identity block costs 4,718,592 MACs at 32x32
and ResNet-56 costs 125,747,840.

For families without a closed form (the ResNets), the MACs are read from the
model itself (intercepting every `nn.Conv` and `nn.Dense` call under
`jax.eval_shape`, each counted at every output position), so they cannot
drift from the model. A family may give a closed form instead
(`Family.macs`: the ViT's counts attention's T² terms, which no layer call
shows). `xla_flops` reports XLA's own count of the compiled forward pass for
comparison. It differs from `2 * macs` for two reasons, both measured in
`tests/test_flops.py`: XLA does not count the taps of a padded convolution
that fall on the zero padding (at 32x32 and below this is several percent of
a 3x3 conv's work), and it also counts the elementwise work (BatchNorm, ReLU,
additions, pooling: 2-4 % of the total for CIFAR ResNets). For ResNet-56,
`xla_flops / (2 * macs)` = 0.945 and `xla_flops / (2 * in-bounds MACs)` =
1.041.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpjax import arch as arch_lib
from lpjax import models
from lpjax.models import conv as conv_lib

# The convolution modules whose MACs are counted.
CONVS = (nn.Conv, conv_lib.Conv)


@dataclasses.dataclass(frozen=True)
class Cost:
  """What a network costs for one example.

  Attributes:
    macs: multiply-accumulates of convs and the dense layer (papers' FLOPs).
    params: every variable, BN statistics included (Keras `count_params`).
    trainable_params: the `params` collection only.
  """

  macs: int
  params: int
  trainable_params: int


def _input_shape(arch, input_shape):
  return tuple(input_shape or models.default_input_shape(arch))


@functools.lru_cache(maxsize=256)
def _cost(arch: arch_lib.Arch, input_shape: tuple[int, ...]) -> Cost:
  model = models.build_model(arch)
  family = models.get_family(arch.family)
  total = [0]

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mdl = context.module
    if context.method_name == '__call__' and isinstance(mdl, CONVS):
      kernel = mdl.variables['params']['kernel']
      # Per example: every output position does prod(kernel.shape) MACs.
      total[0] += math.prod(out.shape[1:-1]) * math.prod(kernel.shape)
    elif context.method_name == '__call__' and isinstance(mdl, nn.Dense):
      kernel = mdl.variables['params']['kernel']
      total[0] += math.prod(out.shape[1:-1]) * math.prod(kernel.shape)
    return out

  x = jnp.zeros((1, *input_shape), models.input_dtype(arch))

  def init():
    with nn.intercept_methods(count):
      return model.init(jax.random.key(0), x, train=False)

  shapes = jax.eval_shape(init)
  if family.macs is not None:
    total[0] = family.macs(arch, input_shape)

  def size(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

  return Cost(
    macs=int(total[0]),
    params=int(size(shapes)),
    trainable_params=int(size(shapes['params'])),
  )


def cost(arch: arch_lib.Arch, input_shape: Sequence[int] | None = None) -> Cost:
  """MACs and parameter counts of `arch` for one example.

  Args:
    arch: the network.
    input_shape: per-example input shape (`[height, width, channels]` for
      images); default: the family's (32x32x3 for CIFAR ResNets, 224x224x3
      for ImageNet ones, the ViT's own image shape).
  """
  return _cost(arch, _input_shape(arch, input_shape))


def reduction(
  arch: arch_lib.Arch,
  baseline: arch_lib.Arch,
  input_shape: Sequence[int] | None = None,
) -> dict[str, float]:
  """Percent FLOPs and parameter reduction of `arch` relative to `baseline`."""
  a = cost(arch, input_shape)
  b = cost(baseline, input_shape)
  return {
    'flops_reduction': 100.0 * (1.0 - a.macs / b.macs),
    'params_reduction': 100.0 * (1.0 - a.params / b.params),
  }


def xla_flops(
  arch: arch_lib.Arch,
  input_shape: Sequence[int] | None = None,
  *,
  batch: int = 1,
) -> float:
  """XLA's cost-analysis FLOPs of one eval forward, per example.

  Compiles the forward pass (seconds on CPU for deep models).
  """
  shape = _input_shape(arch, input_shape)
  model = models.build_model(arch)
  variables = models.variable_shapes(arch, shape)
  dtype = models.input_dtype(arch)
  x = jax.ShapeDtypeStruct((batch, *shape), dtype)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  analysis = fn.lower(variables, x).compile().cost_analysis()
  if isinstance(analysis, list):  # Older jax returned one dict per device.
    analysis = analysis[0]
  return float(analysis['flops']) / batch
