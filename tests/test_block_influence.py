"""The block_influence criterion (ShortGPT) against a float64 NumPy oracle."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from tolerances import f32_atol, network_terms

from lpjax import methods, models
from lpjax.models import resnet, vit

NETS = {
  'resnet': (
    resnet.resnet_cifar(blocks_per_stage=(3, 2, 2), width=4, num_classes=3),
    (8, 8, 3),
  ),
  'vit': (
    vit.vit(
      image_shape=(8, 8, 1),
      patch=4,
      width=8,
      depth=3,
      heads=2,
      mlp=16,
      num_classes=3,
    ),
    (8, 8, 1),
  ),
}


def _unit_io(arch, variables, x):
  """Every unit's actual input and output, recorded by intercepting calls."""
  units = {b.name for b in arch.blocks}
  seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mdl = context.module
    if context.method_name == '__call__' and mdl.name in units:
      seen[mdl.name] = (np.asarray(args[0], np.float64), np.asarray(out))
    return out

  with nn.intercept_methods(record):
    models.build_model(arch).apply(variables, x, train=False)
  return seen


def _oracle(arch, variables, x):
  io = _unit_io(arch, variables, x)
  out = {}
  for u in arch.candidates:
    a, b = io[u]
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]).astype('f8')
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.ones(len(a))  # both zero: unchanged
    cos[(na > 0) != (nb > 0)] = 0.0
    both = (na > 0) & (nb > 0)
    cos[both] = (a[both] * b[both]).sum(1) / (na[both] * nb[both])
    out[u] = 1.0 - cos.mean()
  return out


@pytest.mark.parametrize('net', sorted(NETS))
def test_equals_float64_oracle_and_removes_the_lowest(net):
  arch, shape = NETS[net]
  variables = models.init_variables(arch, 0, shape)
  x = np.asarray(jax.random.normal(jax.random.key(1), (24, *shape)), 'f4')
  ctx = methods.Context(
    arch=arch,
    variables=variables,
    inputs=x,
    labels=np.zeros(24, np.int32),
    data_batch_size=12,  # two batches: the mean over batches is exact
  )
  decision = methods.get_method('block_influence')(ctx)
  want = _oracle(arch, variables, x)
  assert list(decision.scores) == list(arch.candidates)
  # The suite's rule: a float32 cosine sums d <= 64 products (f32_atol(64)), of
  # vectors from two differently compiled forwards, each off by a relative
  # eps of the network (a cosine moves by at most that per vector: 2 eps).
  terms, depth = network_terms(variables['params'])
  atol = f32_atol(64) + 2 * f32_atol(terms, 1.0, depth)
  for u in arch.candidates:
    assert decision.scores[u] == pytest.approx(want[u], abs=atol)
  (removed,) = decision.edit.remove
  assert removed == min(arch.removable(), key=want.get)
