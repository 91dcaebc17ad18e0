"""Methods: the shared "lowest the floor allows" rule, hyperparameters, and
gradients through the context's loss (what SGLP's GradNorm builds on)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import f32_atol, network_terms

from lpjax import methods, models, surgery, train
from lpjax.models import resnet, vit


def test_floor_passes_over_to_the_next_lowest():
  arch = resnet.resnet_cifar(blocks_per_stage=(2, 3, 3), width=4)
  # stage1_block01 has the lowest score, but stage 1 is at the floor (2).
  scores = {
    'stage1_block01': 0.0,
    'stage2_block01': 0.3,
    'stage2_block02': 0.2,
    'stage3_block01': 0.2,
    'stage3_block02': 0.4,
  }
  decision = methods.lowest_allowed(arch, scores)
  # Ties (0.2) go to the unit earliest in network order.
  assert decision.edit == surgery.remove(['stage2_block02'])
  assert decision.scores == scores


def test_floor_reached_and_missing_scores_are_errors():
  arch = resnet.resnet_cifar(blocks_per_stage=(2, 2, 2), width=4)
  with pytest.raises(ValueError, match='nothing is removable'):
    methods.lowest_allowed(arch, {})
  arch = resnet.resnet_cifar(blocks_per_stage=(3, 2, 2), width=4)
  with pytest.raises(ValueError, match='miss removable units'):
    methods.lowest_allowed(arch, {'stage2_block01': 0.0})


def test_hyperparameters_reach_the_method():
  arch = resnet.resnet_cifar(blocks_per_stage=(3, 3, 3), width=4)
  variables = models.init_variables(arch, 0, (8, 8, 3))
  x = np.asarray(jax.random.normal(jax.random.key(0), (32, 8, 8, 3)))

  def cka_scores(**hparams):
    ctx = methods.Context(
      arch, variables, x, np.zeros(32), hparams=hparams, data_batch_size=32
    )
    return methods.get_method('cka')(ctx).scores

  biased, debiased = cka_scores(), cka_scores(debiased=True)
  assert biased.keys() == debiased.keys()
  # The unbiased HSIC estimator gives other values on 32 examples.
  assert max(abs(biased[u] - debiased[u]) for u in biased) > 1e-4


def _unit_grad_norms(grads, arch):
  """Σ over a unit's parameter tensors of ‖∂L/∂W‖₂ (GradNorm)."""
  return {
    b.name: sum(
      float(jnp.linalg.norm(g.ravel())) for g in jax.tree.leaves(grads[b.name])
    )
    for b in arch.blocks
  }


@pytest.mark.parametrize('net', ['resnet', 'vit'])
def test_unit_gradient_norms_through_the_context_loss(net):
  if net == 'resnet':
    arch = resnet.resnet_cifar(blocks_per_stage=(2, 2, 2), width=4)
    shape = (8, 8, 3)
  else:
    arch = vit.vit(
      image_shape=(8, 8, 1), patch=4, width=8, depth=2, heads=2, mlp=16
    )
    shape = (8, 8, 1)
  variables = models.init_variables(arch, 0, shape)
  model = models.build_model(arch)
  x = jax.random.normal(jax.random.key(1), (16, *shape))
  labels = jax.random.randint(jax.random.key(2), (16,), 0, arch.num_classes)
  ctx = methods.Context(
    arch=arch,
    variables=variables,
    inputs=np.asarray(x),
    labels=np.asarray(labels),
    loss_fn=train.eval_loss_fn(model.apply, variables.get('batch_stats', {})),
  )
  batch = {'image': ctx.inputs, 'label': ctx.labels}
  got = _unit_grad_norms(
    jax.grad(ctx.loss_fn)(variables['params'], batch), arch
  )

  def hand_loss(params):
    logits = model.apply({**variables, 'params': params}, x, train=False)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(logp[jnp.arange(16), labels])

  want = _unit_grad_norms(jax.grad(hand_loss)(variables['params']), arch)
  assert got.keys() == want.keys() == {b.name for b in arch.blocks}
  # The same float32 program up to how cross-entropy is written: the suite's
  # rule over the forward and the backward pass (twice the depth), relative.
  terms, depth = network_terms(variables['params'])
  rel = f32_atol(terms, 1.0, 2 * depth)
  for u in got:
    assert got[u] > 0
    assert got[u] == pytest.approx(want[u], rel=rel)


def _log_softmax64(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize('direction', ['forward', 'reverse'])
def test_kl_direction_equals_the_float64_formula(direction):
  """`kl` with `direction`: forward = KL(p || q) (CURL), reverse = KL(q || p)
  (the Everything authors' code), p the unpruned model's distribution, q
  the one without the unit; against log-softmax and KL in float64 of each
  surgered model's logits."""
  arch = resnet.resnet_cifar(blocks_per_stage=(3, 3, 3), width=4)
  variables = models.init_variables(arch, 0, (8, 8, 3))
  x = np.asarray(jax.random.normal(jax.random.key(3), (24, 8, 8, 3)))
  ctx = methods.Context(
    arch,
    variables,
    x,
    np.zeros(24, np.int32),
    hparams={'direction': direction},
    data_batch_size=24,
  )
  got = methods.get_method('kl')(ctx).scores

  def logits(a, v):
    return np.asarray(models.build_model(a).apply(v, x))

  full = logits(arch, variables)
  logp = _log_softmax64(full)
  want, other = {}, {}
  for unit in arch.candidates:
    logq = _log_softmax64(
      logits(*surgery.apply(arch, variables, surgery.remove([unit])))
    )
    a, b = (logp, logq) if direction == 'forward' else (logq, logp)
    want[unit] = float(np.mean(np.sum(np.exp(a) * (a - b), -1)))
    other[unit] = float(np.mean(np.sum(np.exp(b) * (b - a), -1)))
  # Logits off by tau in both programs move either KL by at most
  # 2 tau |p - q|_1 <= 2 tau sqrt(2 KL) (first order; Pinsker holds in both
  # directions), plus tau² and the float32 sum over the classes.
  terms, depth = network_terms(variables['params'])
  tau = f32_atol(terms, float(np.abs(full).max()), depth)

  def atol(value):
    return 2 * tau * np.sqrt(2 * value) + tau**2 + f32_atol(10)

  for unit, value in want.items():
    assert got[unit] == pytest.approx(value, abs=atol(value)), unit
  # The other direction is another number: the test tells them apart.
  assert any(abs(other[u] - want[u]) > 10 * atol(want[u]) for u in want)
