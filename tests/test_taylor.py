"""`taylor` (Kim et al. 2024) against a float64 hand computation.

The oracle: the model's variables cast to float64, the loss written by hand
(cross-entropy of the logits; next-token NLL of the windows), its gradient
by `jax.grad` in float64 on all calibration examples at once, and
Σ |w · g| per unit in NumPy. The method's float32 scores, computed from
batches of the calibration data, agree within the float32 rule over the
forward and backward pass.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tolerances import f32_atol, network_terms

from lpjax import methods, models, train
from lpjax.models import decoder, resnet


def _oracle(model, variables, loss64, units):
  """`{unit: Σ|w · ∂L/∂w|}` in float64, and `{unit: Σ|w|}`, max |g|."""
  with jax.enable_x64(True):
    v64 = jax.tree.map(
      lambda a: jnp.asarray(np.asarray(a, np.float64)), variables
    )
    grads = jax.grad(lambda p: loss64({**v64, 'params': p}))(v64['params'])
    params = jax.tree.map(np.asarray, v64['params'])
    grads = jax.tree.map(np.asarray, grads)
  want, weight = {}, {}
  for u in units:
    w, g = jax.tree.leaves(params[u]), jax.tree.leaves(grads[u])
    want[u] = float(sum(np.sum(np.abs(a * b)) for a, b in zip(w, g)))
    weight[u] = float(sum(np.sum(np.abs(a)) for a in w))
  top = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads))
  return want, weight, top


def _check(got, want, weight, top, params):
  # |Δ Σ|w g|| <= Σ|w| · max|Δg|; a float32 gradient is within the rule over
  # the forward and backward pass (twice the depth) of its largest entry.
  terms, depth = network_terms(params)
  atol_g = f32_atol(terms, top, 2 * depth)
  assert got.keys() == want.keys()
  for u in want:
    assert want[u] > 0
    assert abs(got[u] - want[u]) <= weight[u] * atol_g, (u, got[u], want[u])
  # The units differ by far more than the tolerance: the test can fail.
  assert np.ptp(list(want.values())) > 10 * max(weight.values()) * atol_g


def test_resnet_scores_equal_the_float64_hand_computation():
  arch = resnet.resnet_cifar(blocks_per_stage=(2, 2, 2), width=4)
  arch = dataclasses.replace(arch, min_blocks_per_stage=1)
  variables = models.init_variables(arch, 0, (8, 8, 3))
  model = models.build_model(arch)
  x = np.asarray(jax.random.normal(jax.random.key(1), (32, 8, 8, 3)))
  y = np.asarray(jax.random.randint(jax.random.key(2), (32,), 0, 10))
  ctx = methods.Context(
    arch=arch,
    variables=variables,
    inputs=x,
    labels=y,
    loss_fn=train.eval_loss_fn(model.apply, variables['batch_stats']),
    data_batch_size=8,  # four batches: the mean gradient is accumulated
  )
  decision = methods.get_method('taylor')(ctx)

  def loss64(v):
    logits = model.apply(v, jnp.asarray(x, jnp.float64), train=False)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(logp[jnp.arange(len(y)), y])

  want, weight, top = _oracle(model, variables, loss64, arch.candidates)
  _check(decision.scores, want, weight, top, variables['params'])
  # The removed unit is a lowest one up to the tolerance (a near tie may
  # fall either way on another CPU).
  (removed,) = decision.edit.remove
  lowest = min(want[u] for u in arch.removable())
  terms, depth = network_terms(variables['params'])
  tol = max(weight.values()) * f32_atol(terms, top, 2 * depth)
  assert removed in arch.removable() and want[removed] <= lowest + 2 * tol


def test_decoder_scores_equal_the_float64_hand_computation():
  arch = decoder.decoder(
    vocab=64, width=16, depth=4, heads=2, kv_heads=1, mlp=24, seq_len=12
  )
  arch = dataclasses.replace(arch, min_blocks_per_stage=1)
  variables = models.init_variables(arch, 0)
  model = models.build_model(arch)
  ids = np.random.default_rng(0).integers(0, 64, (8, 12)).astype(np.int32)

  def nll(params, batch):  # the language-model task's loss
    logits = model.apply({'params': params}, batch['image'][:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, batch['image'][:, 1:, None], -1)
    return -jnp.mean(picked)

  ctx = methods.Context(
    arch=arch,
    variables=variables,
    inputs=ids,
    labels=None,
    loss_fn=nll,
    data_batch_size=4,
  )
  decision = methods.get_method('taylor')(ctx)

  def loss64(v):
    logits = model.apply(v, jnp.asarray(ids[:, :-1]))
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, jnp.asarray(ids[:, 1:, None]), -1)
    return -jnp.mean(picked)

  want, weight, top = _oracle(model, variables, loss64, arch.candidates)
  _check(decision.scores, want, weight, top, variables['params'])
