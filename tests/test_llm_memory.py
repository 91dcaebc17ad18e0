"""The language-model paths never hold every position's logits.

On a tiny decoder whose logits `[windows, tokens, vocab]` (32 × 64 × 4096
float32: 33.5 MB) dwarf everything else (weights 0.3 MB, one layer's
attention scores 1 MB), the compiled held-out evaluation, healing's loss
and gradient, and SLEB/PPL's removal losses are compiled and their buffer
assignment read (`memory_analysis()`): their temporaries and outputs stay
below the size of the full logits tensor. The chunked next-token NLL,
argmax and the gradient of the loss are checked against the direct
float64 NumPy formulas on the model's final hidden states. The
`llm.compute_dtype` flag: refused when unknown, bfloat16 weights rounded
to nearest, losses still float32.

Per-layer rematerialisation (`Decoder(remat=True)`, healing's
`HealConfig.remat`): the same parameter tree, the same LoRA loss and
gradient up to float32 rounding, and a healing step whose compiled
temporaries no longer hold every layer's attention weights;
`llm.heal.remat` refused unless a bool.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import MARGIN, f32_atol, magnitude, network_terms

from lpjax import healing, models
from lpjax.methods import llm
from lpjax.models import decoder, next_token

WINDOWS, TOKENS, VOCAB, WIDTH = 32, 64, 4096, 16
FULL = WINDOWS * TOKENS * VOCAB * 4  # bytes of the float32 logits
CHUNK = 100  # positions per step in the evaluation (2048 = 20·100 + 48)


def _model():
  arch = decoder.decoder(
    vocab=VOCAB,
    width=WIDTH,
    depth=2,
    heads=2,
    kv_heads=1,
    mlp=16,
    tied=False,
    seq_len=TOKENS,
  )
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == 'kernel':  # N(0, 1/fan_in): logits of order one
      return jnp.asarray(noise / np.sqrt(leaf.shape[0]))
    if name == 'scale':
      return jnp.asarray(1.0 + 0.3 * noise)
    return jnp.asarray(noise)

  shapes = models.variable_shapes(arch, (TOKENS,))
  variables = jax.tree.map_with_path(draw, shapes)
  # TOKENS predictions per window: the model reads TOKENS + 1 ids.
  ids = rng.integers(0, VOCAB, (WINDOWS, TOKENS + 1)).astype(np.int32)
  return models.build_model(arch), variables, jnp.asarray(ids)


def _bytes(compiled) -> tuple[int, int]:
  m = compiled.memory_analysis()
  return m.temp_size_in_bytes, m.output_size_in_bytes


def _oracle(model, variables, ids):
  """The direct formulas in float64 on the model's final hidden states:
  logits `h K`, NLL `logsumexp(z) − z[target]`, `p = softmax(z)`."""
  h = model.apply(variables, ids[:, :-1], head=False)
  h = np.asarray(h, np.float64).reshape(-1, WIDTH)
  k = np.asarray(variables['params']['lm_head']['kernel'], np.float64)
  z = h @ k
  top = z.max(-1, keepdims=True)
  lse = top[:, 0] + np.log(np.exp(z - top).sum(-1))
  target = np.asarray(ids[:, 1:]).reshape(-1)
  nll = lse - z[np.arange(len(z)), target]
  p = np.exp(z - lse[:, None])
  return h, k, z, nll, p, target


def test_evaluation_holds_a_chunk_of_logits_and_equals_float64():
  model, variables, ids = _model()
  compiled = (
    next_token.evaluation_program(model, CHUNK).lower(variables, ids).compile()
  )
  temp, out = _bytes(compiled)
  assert temp + out < FULL, (temp, out, FULL)
  sums, preds = compiled(variables, ids)
  h, k, z, nll, _, _ = _oracle(model, variables, ids)
  # A logit sums WIDTH products of |h| |k|; the log-sum-exp VOCAB terms of
  # size |z|; a window's NLL TOKENS of them.
  ez = f32_atol(WIDTH, magnitude(np.abs(h) @ np.abs(k)))
  e_nll = 2 * ez + f32_atol(VOCAB, magnitude(z))
  want = nll.reshape(WINDOWS, TOKENS).sum(1)
  atol = TOKENS * e_nll + f32_atol(TOKENS, magnitude(want))
  np.testing.assert_allclose(np.asarray(sums), want, rtol=0, atol=atol)
  # The argmax: the chosen token's exact logit is within the float32 error
  # of the largest (near ties may go either way), and clear maxima win.
  preds = np.asarray(preds).reshape(-1)
  chosen = z[np.arange(len(z)), preds]
  assert np.all(chosen >= z.max(-1) - 2 * ez)
  runner_up = np.sort(z, -1)[:, -2]
  clear = z.max(-1) - runner_up > 2 * ez
  assert clear.mean() > 0.9
  np.testing.assert_array_equal(preds[clear], z.argmax(-1)[clear])
  # Agreement counts equal positions of the same predictions.
  ref = preds.reshape(WINDOWS, TOKENS).copy()
  ref[:3, :10] = (ref[:3, :10] + 1) % VOCAB
  got = next_token.evaluate(
    model, variables, np.asarray(ids), ref, batch=WINDOWS, chunk=CHUNK
  )
  assert got['agreement'] == 1 - 30 / ref.size
  np.testing.assert_array_equal(got['predictions'], preds.reshape(ref.shape))


def test_healing_loss_and_gradient_hold_a_chunk_of_logits():
  model, variables, ids = _model()
  fn = jax.jit(
    jax.value_and_grad(lambda p, x: healing.next_token_nll(model, p, x))
  )
  compiled = fn.lower(variables['params'], ids).compile()
  temp, out = _bytes(compiled)
  assert temp + out < FULL, (temp, out, FULL)
  value, grads = compiled(variables['params'], ids)
  h, k, z, nll, p, target = _oracle(model, variables, ids)
  n = len(nll)
  ez = f32_atol(WIDTH, magnitude(np.abs(h) @ np.abs(k)))
  e_nll = 2 * ez + f32_atol(VOCAB, magnitude(z))
  assert abs(float(value) - nll.mean()) <= e_nll + f32_atol(n, nll.max())
  # d mean NLL / d lm_head = hᵀ (p − onehot) / n. A float32 p is off by at
  # most its own size times the logits' error (2 ez, plus the normaliser's
  # rounding); the one-hot part is exact; the sum over n positions rounds
  # on the sum of the terms' magnitudes.
  g = p.copy()
  g[np.arange(n), target] -= 1.0
  want = h.T @ g / n
  dp = (2 * ez + f32_atol(VOCAB)) * (np.abs(h).T @ p) / n
  walk = MARGIN * np.sqrt(n) * np.finfo(np.float32).eps
  atol = dp + walk * (np.abs(h).T @ np.abs(g)) / n
  got = np.asarray(grads['lm_head']['kernel'], np.float64)
  assert np.all(np.abs(got - want) <= atol)


def test_removal_losses_hold_a_chunk_of_logits():
  model, variables, ids = _model()
  fn = jax.jit(lambda v, x: llm._removal_nll(model, v, x))
  temp, out = _bytes(fn.lower(variables, ids).compile())
  assert temp + out < FULL, (temp, out, FULL)


def test_compute_dtype_is_refused_before_work_and_casts_the_weights():
  from configs import smollm2_depth
  from lpjax import errors
  from lpjax.run import language_model

  c = smollm2_depth.get_config('smoke')
  assert c.llm.compute_dtype == 'float32'
  language_model.check_config(c)
  c.llm.compute_dtype = 'float16'
  with pytest.raises(errors.ConfigError, match=r'llm\.compute_dtype'):
    language_model.check_config(c)
  model, variables, ids = _model()
  low = language_model.cast(variables, 'bfloat16')
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(low)):
    assert b.dtype == jnp.bfloat16
    # NumPy's cast to bfloat16 rounds to nearest, as XLA's does.
    want = np.asarray(a).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(b), want)
  # A bfloat16 model still sums its losses in float32.
  sums, preds = next_token.evaluation_program(model, CHUNK)(low, ids)
  assert sums.dtype == jnp.float32 and preds.dtype == jnp.int32
  assert np.all(np.isfinite(np.asarray(sums)))


def _remat_arch(depth, tokens, heads=2, mlp=32):
  return decoder.decoder(
    vocab=64,
    width=16,
    depth=depth,
    heads=heads,
    kv_heads=1,
    mlp=mlp,
    tied=False,
    seq_len=tokens,
  )


def test_remat_keeps_the_parameters_and_the_lora_loss_and_gradient():
  arch = _remat_arch(depth=3, tokens=16)
  plain = models.build_model(arch)
  remat = plain.clone(remat=True)
  x = jnp.zeros((1, 16), jnp.int32)
  key = jax.random.PRNGKey(0)
  variables = plain.init(key, x)
  # Same names, shapes and initial values.
  assert jax.tree.structure(remat.init(key, x)) == jax.tree.structure(variables)
  for a, b in zip(
    jax.tree.leaves(variables), jax.tree.leaves(remat.init(key, x))
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  frozen = variables['params']
  rng = np.random.default_rng(1)
  lora = healing.init_lora(arch, frozen, 4, key)
  # Non-zero B, so that every adapter has a gradient.
  lora = jax.tree.map(
    lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), jnp.float32) * 0.1,
    lora,
  )
  ids = jnp.asarray(rng.integers(0, 64, (4, 17)), jnp.int32)

  def loss(model):
    return jax.jit(
      jax.value_and_grad(
        lambda t, w: healing.next_token_nll(
          model, healing.merge_lora(frozen, t, 2.0), w
        )
      )
    )

  v0, g0 = loss(plain)(lora, ids)
  v1, g1 = loss(remat)(lora, ids)
  # The same formulas in two programs: float32 rounding, by the suite's
  # rule over the network's chained kernels (`network_terms`); the loss
  # averages 64 positions' log-sum-exps over 64 tokens.
  terms, depth = network_terms(frozen)
  n = ids.shape[0] * (ids.shape[1] - 1)
  atol = f32_atol(terms * 64 * n, magnitude(v0), depth)
  assert abs(float(v1) - float(v0)) <= atol
  # A gradient sums every window's contribution: the summed terms'
  # magnitude is the sum of the per-window gradients' magnitudes.
  per_window = jax.jit(
    jax.vmap(
      lambda w: jax.grad(
        lambda t: healing.next_token_nll(
          plain, healing.merge_lora(frozen, t, 2.0), w[None]
        )
      )(lora)
    )
  )(ids)
  for a, b, w in zip(
    jax.tree.leaves(g0), jax.tree.leaves(g1), jax.tree.leaves(per_window)
  ):
    scale = magnitude(np.abs(np.asarray(w, np.float64)).sum(0))
    atol = f32_atol(terms * n, scale, depth)
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= atol
    assert np.max(np.abs(np.asarray(a))) > 10 * atol  # not all ~0


def test_remat_healing_step_drops_every_layers_attention_weights():
  # Attention weights [batch, heads, T, T] float32 (S bytes) dwarf each
  # layer's input [batch, T, width] (T / (heads width) = 1/4 of S here),
  # its weights (~2.5 k parameters) and the logits (vocabulary 64).
  depth, batch, tokens, heads = 6, 2, 128, 4
  s_bytes = batch * heads * tokens * tokens * 4
  arch = _remat_arch(depth, tokens, heads=heads, mlp=64)

  def temp(remat):
    cfg = healing.HealConfig(mode='lora', steps=10, rank=4, remat=remat)
    step, tx = healing._compiled_step(arch, cfg)
    shapes = models.variable_shapes(arch, (tokens,))['params']
    frozen = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), shapes
    )
    trainable = jax.eval_shape(
      lambda p: healing.init_lora(arch, p, 4, jax.random.PRNGKey(0)), frozen
    )
    ids = jax.ShapeDtypeStruct((batch, tokens + 1), jnp.int32)
    compiled = step.lower(
      trainable, jax.eval_shape(tx.init, trainable), frozen, ids
    ).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  off, on = temp(False), temp(True)
  # The plain backward keeps every layer's softmax output (its own and the
  # weighted sum's gradients need it); the rematerialised one holds at
  # most two layers' internals at once (the one recomputed, the one whose
  # gradient it receives), so it saves the weights of the others.
  assert off >= depth * s_bytes, (off, s_bytes)
  assert on <= off - (depth - 2) * s_bytes, (on, off, s_bytes)


def test_heal_remat_must_be_a_bool():
  from configs import smollm2_depth
  from lpjax import errors
  from lpjax.run import language_model

  c = smollm2_depth.get_config('smoke')
  assert c.llm.heal.remat is True
  assert language_model.heal_config(c, 'lora').remat is True
  c.llm.heal.remat = False
  language_model.check_config(c)
  assert language_model.heal_config(c, 'lora').remat is False
  c = smollm2_depth.get_config('smoke')
  c.llm.heal.unlock()
  del c.llm.heal['remat']
  c.llm.heal.remat = 'yes'
  with pytest.raises(errors.ConfigError, match=r'llm\.heal\.remat'):
    language_model.check_config(c)
  with pytest.raises(healing.HealingError, match='remat'):
    healing.HealConfig(remat=1).check()
