"""The text and sensor transformer families, on tiny models.

`encoder` (tokens, post-LN, BERT-like; series, pre-LN, the HAR model) and
`decoder` (LLaMA-like): skip == delete, surgery gives the smaller model's
exact tree, the shared-prefix fanout equals separate forwards of the
surgered models, the causal mask, the padding mask, an MLP shrink, and
FLOPs against hand counts. The GGUF row order against a float64 RoPE oracle.
What the families own: the decoder's next-token NLL and LoRA targets (and
healing's refusal of a family without them), the encoder's sentence
embeddings.
Float32 throughout, tolerances from `tests/tolerances.py`.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import cka64
from scipy.special import erf
from tolerances import (
  assert_f32_close,
  cka_atol,
  f32_atol,
  magnitude,
  network_terms,
)

from lpjax import flops, healing, models, scoring, surgery
from lpjax.interop import gguf_llama
from lpjax.models import decoder, encoder, next_token

DEPTH = 3
BATCH = 6
T = 7
VOCAB = 40

ARCHS = {
  'tokens': lambda **kw: encoder.encoder(
    input='tokens',
    width=16,
    depth=DEPTH,
    heads=2,
    mlp=24,
    norm='post',
    eps=1e-12,
    vocab=VOCAB,
    max_len=12,
    seq_len=T,
    head=False,
    **kw,
  ),
  'series': lambda: encoder.encoder(
    input='series',
    series_shape=(T, 3),
    width=16,
    depth=DEPTH,
    heads=4,
    mlp=24,
    norm='pre',
    num_classes=4,
  ),
  'decoder': lambda: decoder.decoder(
    vocab=VOCAB, width=16, depth=DEPTH, heads=4, kv_heads=2, mlp=24, seq_len=T
  ),
}


def _random_variables(arch, seed):
  """Random variables on the exact tree: kernels N(0, 1/fan_in); norm scales
  1 + N(0, 0.3²) and biases N(0, 0.3²) (so an ignored one would show);
  embeddings N(0, 1)."""
  rng = np.random.default_rng(seed)
  shape = _shape(arch)

  def draw(path, leaf):
    name = path[-1].key
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    if name == 'kernel':
      return jnp.asarray(noise / np.sqrt(math.prod(leaf.shape[:-1])))
    if name == 'scale':
      return jnp.asarray(1.0 + 0.3 * noise)
    if name == 'bias':
      return jnp.asarray(0.3 * noise)
    return jnp.asarray(noise)  # embeddings

  return jax.tree.map_with_path(draw, models.variable_shapes(arch, shape))


@functools.cache
def _net(kind):
  arch = ARCHS[kind]()
  variables = _random_variables(arch, 0)
  rng = np.random.default_rng(1)
  if kind == 'series':
    x = rng.normal(size=(BATCH, T, 3)).astype(np.float32)
  else:
    x = rng.integers(1, VOCAB, size=(BATCH, T)).astype(np.int32)
  if kind == 'tokens':  # ragged sentences, padded with id 0
    for row, n in zip(x, (7, 5, 3, 7, 2, 6)):
      row[n:] = 0
  return arch, variables, jnp.asarray(x)


@pytest.fixture(params=sorted(ARCHS))
def net(request):
  return _net(request.param)


def _tol(arch):
  return network_terms(models.variable_shapes(arch, _shape(arch))['params'])


def _shape(arch):
  return tuple(models.default_input_shape(arch))


def _close(arch, got, want):
  assert_f32_close(got, want, *_tol(arch))


def _differ(arch, a, b):
  terms, depth = _tol(arch)
  a, b = np.asarray(a), np.asarray(b)
  assert np.abs(a - b).max() > 10 * f32_atol(terms, magnitude(b), depth)


def test_skip_equals_delete(net):
  arch, variables, x = net
  model = models.build_model(arch)
  fwd = jax.jit(lambda v, x, s: model.apply(v, x, skip=s))
  full = fwd(variables, x, jnp.zeros(DEPTH, bool))
  for removed in (
    ['layer00'],
    ['layer01'],
    ['layer02'],
    ['layer00', 'layer02'],
  ):
    small_arch, small_vars = surgery.remove_blocks(arch, variables, removed)
    got = models.build_model(small_arch).apply(small_vars, x)
    want = fwd(variables, x, jnp.asarray(arch.skip_mask(removed)))
    _close(arch, got, want)
    _differ(arch, want, full)


def test_surgery_gives_the_smaller_models_exact_tree(net):
  arch, variables, _ = net
  before = jax.tree.map(np.array, variables)
  small_arch, small_vars = surgery.remove_blocks(arch, variables, ['layer01'])
  chex.assert_trees_all_equal(before, jax.tree.map(np.array, variables))
  want = models.variable_shapes(small_arch, _shape(arch))
  assert jax.tree.structure(small_vars) == jax.tree.structure(want)
  chex.assert_trees_all_equal_shapes_and_dtypes(small_vars, want)
  chex.assert_trees_all_equal(
    small_vars['params']['layer02'], variables['params']['layer02']
  )
  per_layer = sum(
    math.prod(leaf.shape)
    for leaf in jax.tree.leaves(variables['params']['layer01'])
  )
  assert flops.cost(arch).params - flops.cost(small_arch).params == per_layer


def test_fanout_equals_separate_forwards_of_surgered_models(net):
  arch, variables, x = net
  names = [
    'pooled',
    'logits',
    'layer01',
    *models.get_family(arch.family).representations,
  ]
  got = jax.jit(
    lambda v, x: models.representations(
      models.build_model(arch), v, x, names, fanout=True
    )
  )(variables, x)
  assert got['pooled'].shape == (1 + DEPTH, BATCH, 16)
  for i, removed in enumerate([None, *arch.candidates]):
    small_arch, small_vars = surgery.remove_blocks(
      arch, variables, [removed] if removed else []
    )
    layer = 'layer00' if removed == 'layer01' else 'layer01'
    want = models.representations(
      models.build_model(small_arch),
      small_vars,
      x,
      [n if n != 'layer01' else layer for n in names],
    )
    for n in names:
      _close(arch, got[n][i], want[layer if n == 'layer01' else n])
    if removed:
      _differ(arch, got['pooled'][i], got['pooled'][0])


def test_decoder_is_causal():
  """Changing token p changes no logit before p, and some at or after it."""
  arch, variables, x = _net('decoder')
  model = models.build_model(arch)
  fwd = jax.jit(lambda v, x: model.apply(v, x))
  base = np.asarray(fwd(variables, x))
  for p in (1, 4, T - 1):
    y = np.array(x)
    y[:, p] = (y[:, p] + 7) % VOCAB
    out = np.asarray(fwd(variables, jnp.asarray(y)))
    # Earlier positions see identical inputs through identical arithmetic:
    # masked keys get weight exp(min - max) = 0 exactly.
    np.testing.assert_array_equal(out[:, :p], base[:, :p])
    _differ(arch, out[:, p:], base[:, p:])


def test_encoder_ignores_padding():
  """More padding changes no real token's features and not the pooling;
  without the mask (pads read as tokens) the features change."""
  arch, variables, x = _net('tokens')
  names = ['pooled', 'layer02']
  short = models.representations(models.build_model(arch), variables, x, names)
  wide = jnp.concatenate([x, jnp.zeros((BATCH, 4), jnp.int32)], axis=1)
  longer = models.representations(
    models.build_model(arch), variables, wide, names
  )
  _close(arch, longer['pooled'], short['pooled'])
  valid = np.asarray(x) != 0
  _close(
    arch,
    np.asarray(longer['layer02'])[:, :T][valid],
    np.asarray(short['layer02'])[valid],
  )
  # The same weights with no padding id: the zeros are attended and pooled.
  unmasked = ARCHS['tokens'](pad_id=-1)
  seen = models.representations(
    models.build_model(unmasked), variables, x, names
  )
  _differ(arch, seen['pooled'], short['pooled'])


def test_mlp_shrink_equals_zeroed_units(net):
  """Keeping some MLP units == zeroing the others' outgoing weights."""
  arch, variables, x = net
  keep = (0, 3, 4, 11, 20)
  small_arch, small_vars = surgery.apply(
    arch,
    variables,
    surgery.Edit(shrink=(surgery.Shrink('layer01', 0, keep),)),
  )
  assert small_arch.block('layer01').widths == (len(keep),)
  down = 'down' if arch.family == 'decoder' else 'fc2'
  zeroed = jax.tree.map(lambda a: a, variables)
  w = np.array(zeroed['params']['layer01'][down]['kernel'])
  w[[i for i in range(24) if i not in keep]] = 0.0
  zeroed['params'] = dict(zeroed['params'])
  zeroed['params']['layer01'] = dict(zeroed['params']['layer01'])
  zeroed['params']['layer01'][down] = dict(
    zeroed['params']['layer01'][down], kernel=jnp.asarray(w)
  )
  got = models.build_model(small_arch).apply(small_vars, x)
  want = models.build_model(arch).apply(zeroed, x)
  _close(arch, got, want)
  _differ(arch, want, models.build_model(arch).apply(variables, x))


def test_macs_match_hand_counts():
  # Decoder, T = 7, D = 16, 4 query heads of 4 features, 2 key/value heads
  # (8 features each of K and V), MLP 24, vocabulary 40, 3 layers:
  #   Wq 7·16·16 = 1792, Wk + Wv 2·7·16·8 = 1792, Wo 1792,
  #   QKᵀ 7·7·16 = 784, AV 784, SwiGLU 3·7·16·24 = 8064  -> 15008 per layer
  #   logits 7·16·40 = 4480.
  assert flops.cost(ARCHS['decoder']()).macs == 3 * 15008 + 4480
  # Series encoder, T = 7, 3 channels, D = 16, MLP 24, 4 classes:
  #   projection 7·3·16 = 336; per layer QKV 3·7·256 = 5376, QKᵀ 784,
  #   AV 784, out 1792, MLP 2·7·16·24 = 5376 -> 14112; head 16·4 = 64.
  assert flops.cost(ARCHS['series']()).macs == 336 + 3 * 14112 + 64
  # Token encoder, no head: 3 layers at T = 7 (seq_len) and at T = 12.
  assert flops.cost(ARCHS['tokens']()).macs == 3 * 14112
  per_layer_12 = 4 * 12 * 256 + 2 * 144 * 16 + 2 * 12 * 16 * 24
  assert flops.cost(ARCHS['tokens'](), (12,)).macs == 3 * per_layer_12


def test_bad_inputs_raise():
  arch, variables, x = _net('decoder')
  with pytest.raises(ValueError, match='token ids'):
    models.build_model(arch).apply(variables, x[..., None])
  with pytest.raises(ValueError, match='kv_heads'):
    decoder.decoder(vocab=10, width=16, heads=4, kv_heads=3, depth=1, mlp=4)
  with pytest.raises(ValueError, match='even head size'):
    decoder.decoder(vocab=10, width=12, heads=4, kv_heads=1, depth=1, mlp=4)
  arch, variables, x = _net('series')
  with pytest.raises(ValueError, match='series'):
    models.build_model(arch).apply(variables, x[:, :5])
  arch, variables, x = _net('tokens')
  with pytest.raises(ValueError, match='T <= 12'):
    models.build_model(arch).apply(variables, jnp.zeros((1, 13), jnp.int32))


# --- GGUF row order vs a float64 RoPE oracle ----------------------------------


def _rope_halves(x, theta):
  """HF RoPE in float64: feature i pairs with i + dh/2. x: [t, h, dh]."""
  t, _, dh = x.shape
  inv = theta ** (-np.arange(0, dh, 2) / dh)
  a = np.arange(t)[:, None, None] * inv
  x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
  return np.concatenate(
    [x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], -1
  )


def _rope_adjacent(x, theta):
  """llama.cpp's RoPE in float64: feature 2i pairs with 2i + 1."""
  t, _, dh = x.shape
  inv = theta ** (-np.arange(0, dh, 2) / dh)
  a = np.arange(t)[:, None, None] * inv
  x1, x2 = x[..., 0::2], x[..., 1::2]
  out = np.empty_like(x)
  out[..., 0::2] = x1 * np.cos(a) - x2 * np.sin(a)
  out[..., 1::2] = x2 * np.cos(a) + x1 * np.sin(a)
  return out


def test_gguf_row_order_gives_the_same_attention_scores():
  """llama.cpp's converter permutes q/k rows (`reshape(h, 2, dh/2, in)
  .swapaxes(1, 2)`); adjacent-pair RoPE on the permuted rows must give the
  same scores as halves RoPE on the rows `unpermute_rows` restores."""
  rng = np.random.default_rng(0)
  heads, dh, d, t = 3, 8, 12, 5
  w = rng.normal(size=(heads * dh, d))
  converted = (
    w.reshape(heads, 2, dh // 2, d).swapaxes(1, 2).reshape(heads * dh, d)
  )
  np.testing.assert_array_equal(gguf_llama.unpermute_rows(converted, heads), w)
  x = rng.normal(size=(t, d))
  ours = _rope_halves((x @ w.T).reshape(t, heads, dh), 1e4)
  theirs = _rope_adjacent((x @ converted.T).reshape(t, heads, dh), 1e4)
  np.testing.assert_allclose(
    np.einsum('qhd,khd->hqk', ours, ours),
    np.einsum('qhd,khd->hqk', theirs, theirs),
    rtol=1e-12,
    atol=1e-12,
  )
  # And lpjax's float32 RoPE is the halves oracle.
  q = rng.normal(size=(1, t, heads, dh)).astype(np.float32)
  got = decoder.rope(jnp.asarray(q), 1e4)
  assert_f32_close(got[0], _rope_halves(q[0].astype(np.float64), 1e4), 2)


# --- Float64 NumPy oracles of the whole forward -------------------------------


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _decoder_oracle(arch, params, ids):
  """LLaMA in float64, written from the published definitions."""
  o = arch.options_dict()
  d, h, g = o['width'], o['heads'], o['kv_heads']
  dh, t = d // h, ids.shape[1]

  def rms(x, w):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + o['eps']) * w

  x = params['tok_embed']['embedding'][ids]
  causal = np.tril(np.ones((t, t), bool))
  for b in arch.blocks:
    p = params[b.name]
    a = rms(x, p['attn_norm']['scale'])
    q = _rope_halves_batched((a @ p['q']['kernel']).reshape(-1, t, h, dh), o)
    k = _rope_halves_batched((a @ p['k']['kernel']).reshape(-1, t, g, dh), o)
    v = (a @ p['v']['kernel']).reshape(-1, t, g, dh)
    # Query head j reads key/value head j // (h / g) (HF's repeat_kv).
    k, v = k[:, :, np.arange(h) // (h // g)], v[:, :, np.arange(h) // (h // g)]
    s = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(dh)
    s = np.where(causal, s, -np.inf)
    att = np.einsum('bhqk,bkhd->bqhd', _softmax(s), v).reshape(-1, t, d)
    x = x + att @ p['o']['kernel']
    m = rms(x, p['mlp_norm']['scale'])
    gate = m @ p['gate']['kernel']
    x = (
      x
      + (gate / (1 + np.exp(-gate)) * (m @ p['up']['kernel']))
      @ p['down']['kernel']
    )
  x = rms(x, params['norm']['scale'])
  return x @ params['tok_embed']['embedding'].T


def _rope_halves_batched(x, o):
  return np.stack([_rope_halves(row, o['rope_theta']) for row in x])


def _bert_oracle(arch, params, ids):
  """Post-LN BERT with a padding mask and masked mean pooling, float64."""
  o = arch.options_dict()
  d, h = o['width'], o['heads']
  dh, t = d // h, ids.shape[1]
  valid = ids != o['pad_id']

  def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + o['eps']) * p['scale'] + p['bias']

  def dense(x, p):
    return x @ p['kernel'] + p['bias']

  x = (
    params['tok_embed']['embedding'][ids]
    + params['pos_embed'][:t]
    + params['type_embed'][0]
  )
  x = ln(x, params['embed_ln'])
  for b in arch.blocks:
    p = params[b.name]
    q, k, v = (
      dense(x, p[n]).reshape(-1, t, h, dh) for n in ('query', 'key', 'value')
    )
    s = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(dh)
    s = np.where(valid[:, None, None, :], s, -np.inf)
    att = np.einsum('bhqk,bkhd->bqhd', _softmax(s), v).reshape(-1, t, d)
    y = ln(x + dense(att, p['out']), p['ln1'])
    hid = dense(y, p['fc1'])
    gelu = 0.5 * hid * (1 + erf(hid / np.sqrt(2)))
    x = ln(y + dense(gelu, p['fc2']), p['ln2'])
  w = valid[..., None].astype(np.float64)
  return (x * w).sum(1) / w.sum(1)


@pytest.mark.parametrize('kind', ['decoder', 'tokens'])
def test_forward_equals_a_float64_oracle(kind):
  arch, variables, x = _net(kind)
  got = models.build_model(arch).apply(variables, x)
  oracle = _decoder_oracle if kind == 'decoder' else _bert_oracle
  want = oracle(arch, _np(variables['params']), np.asarray(x))
  _close(arch, got, want)
  assert np.abs(want).max() > 0.1  # not a degenerate comparison


@pytest.mark.parametrize('representation', ['pooled', 'last'])
def test_decoder_scores_are_one_compiled_call_equal_to_surgered_forwards(
  representation,
):
  """All layers scored in one XLA computation, equal to CKA of the unpruned
  model against each surgered model, run separately (float64 CKA)."""
  arch, variables, _ = _net('decoder')
  x = np.random.default_rng(2).integers(0, VOCAB, size=(24, T)).astype(np.int32)
  fn = scoring._compiled_scores(
    arch, representation, None, scoring.cka_similarity
  )
  # The compiled function is cached per arch: another test in this worker
  # may have compiled it already, for another shape; count from here.
  before = fn._cache_size()
  got = scoring.score_candidates(
    arch, variables, x, representation=representation, data_batch_size=24
  )
  # One compiled computation for every layer.
  assert fn._cache_size() - before <= 1
  ref = models.representations(
    models.build_model(arch), variables, x, [representation]
  )[representation]
  for name in arch.candidates:
    small_arch, small_vars = surgery.remove_blocks(arch, variables, [name])
    rep = models.representations(
      models.build_model(small_arch), small_vars, x, [representation]
    )[representation]
    want = 1 - cka64(ref, rep)
    assert abs(got[name] - want) <= cka_atol(*ref.shape, _tol(arch)), name
  assert min(got.values()) > 1e-3  # the comparison can fail


# --- What each family owns: the NLL, sentence embeddings, LoRA targets --------


def test_next_token_nll_equals_a_float64_oracle():
  """Per position, float32 from bfloat16 or float32 logits; a last position
  beyond T − 1 (the model run on all of `ids`, as SLEB does) is ignored."""
  rng = np.random.default_rng(3)
  logits = (4 * rng.normal(size=(3, T, VOCAB))).astype(np.float32)
  ids = rng.integers(0, VOCAB, size=(3, T)).astype(np.int32)
  z = logits[:, :-1].astype(np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  want = -np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  got = next_token.next_token_nll(jnp.asarray(logits), jnp.asarray(ids))
  assert got.shape == (3, T - 1) and got.dtype == jnp.float32
  assert_f32_close(got, want, VOCAB, scale=magnitude(logits))
  np.testing.assert_array_equal(
    next_token.next_token_nll(jnp.asarray(logits[:, :-1]), jnp.asarray(ids)),
    got,
  )
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  np.testing.assert_array_equal(
    next_token.next_token_nll(bf16, jnp.asarray(ids)),
    next_token.next_token_nll(bf16.astype(jnp.float32), jnp.asarray(ids)),
  )


def test_sentence_embeddings_are_the_normalised_masked_mean():
  arch, variables, x = _net('tokens')
  model = models.build_model(arch)
  got = encoder.sentence_embeddings(model, variables, x)
  pooled = _bert_oracle(arch, _np(variables['params']), np.asarray(x))
  want = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
  _close(arch, got, want)
  np.testing.assert_allclose(
    np.linalg.norm(np.asarray(got, np.float64), axis=-1), 1.0, atol=1e-6
  )
  skip = jnp.asarray([False, True, False])
  pooled = model.apply(variables, x, skip=skip)
  np.testing.assert_array_equal(
    encoder.sentence_embeddings(model, variables, x, skip=skip),
    pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True),
  )


def test_lora_targets_are_the_family_s_and_others_are_refused():
  arch, variables, _ = _net('decoder')
  targets = models.get_family('decoder').lora_targets(arch)
  assert targets == tuple(
    (b.name, n, 'kernel') for b in arch.blocks for n in ('gate', 'up', 'down')
  )
  lora = healing.init_lora(arch, variables['params'], 2, jax.random.key(0))
  assert {(b, n) for b, kernels in lora.items() for n in kernels} == {
    t[:2] for t in targets
  }
  for layer, name, _ in targets:
    w = variables['params'][layer][name]['kernel']
    ab = lora[layer][name]
    assert ab['a'].shape == (w.shape[0], 2) and ab['b'].shape == (2, w.shape[1])
  # B = 0: the merged model is the model.
  merged = healing.merge_lora(variables['params'], lora, 8.0)
  jax.tree.map(np.testing.assert_array_equal, merged, variables['params'])
  for kind in ('tokens', 'series'):
    arch, variables, _ = _net(kind)
    assert models.get_family(arch.family).lora_targets is None
    cfg = healing.HealConfig(mode='lora', steps=1, batch_size=2)
    with pytest.raises(healing.HealingError, match=r"encoder family.*'full'"):
      healing.heal(arch, variables, np.ones((2, T), np.int32), cfg)
