"""The ViT family: the invariants of the ResNet tests, on tiny ViTs.

Skip == delete, exact and pure surgery (layers and MLP width), one compile
for every skip mask, the scorer and the shared-prefix fanout against
separate forwards, FLOPs and parameters against hand counts, XLA's count,
dropout, the layer's parameter tree (the encoder family's layer with a
fused `qkv`), and input checks. Float32 throughout.
"""

import functools
import math

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import cka64
from tolerances import (
  assert_f32_close,
  cka_atol,
  f32_atol,
  magnitude,
  network_terms,
)

from lpjax import flops, models, scoring, surgery
from lpjax.models import vit

# Tiny networks (each distinct shape costs a compile): 8x8x1 images in 2x2
# patches = 16 patch tokens (+1 class token), width 16, 2 heads, MLP 32.
IMAGE = (8, 8, 1)
DEPTH = 4
BATCH = 24  # enough examples for CKA of 16 features
# Parameters of one encoder layer with D = 16, M = 32, counted by hand:
# ln1 (2·16) + qkv (16·48 + 48) + out (16·16 + 16) + ln2 (2·16)
# + fc1 (16·32 + 32) + fc2 (32·16 + 16) = 32 + 816 + 272 + 32 + 544 + 528.
LAYER_PARAMS = 2224


def _arch(pool, dropout=0.0):
  return vit.vit(
    image_shape=IMAGE,
    patch=2,
    width=16,
    depth=DEPTH,
    heads=2,
    mlp=32,
    pool=pool,
    dropout=dropout,
    num_classes=5,
    min_blocks_per_stage=1,
  )


def _random_variables(arch, seed):
  """Random variables of `arch`'s exact tree, far from init's special values.

  Drawn in NumPy onto `models.variable_shapes` (no init to compile): kernels
  N(0, 1/fan_in) as at init, but LayerNorm scales 1 + N(0, 0.3²) and biases
  N(0, 0.3²) (init: 1 and 0), so a layer whose LayerNorm or bias were ignored
  would change the output, and O(1) class token and position embeddings
  (init: 0 and N(0, 0.02²)).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    if name == 'kernel':
      return jnp.asarray(noise / np.sqrt(math.prod(leaf.shape[:-1])))
    if name == 'scale':
      return jnp.asarray(1.0 + 0.3 * noise)
    if name == 'bias':
      return jnp.asarray(0.3 * noise)
    assert name in ('cls', 'pos'), name
    return jnp.asarray(0.5 * noise)

  return jax.tree.map_with_path(draw, models.variable_shapes(arch, IMAGE))


def _size(tree):
  return sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree))


# Two compilations of the same forward (jit vs op-by-op, different fusions,
# a batch of streams vs one) agree to the suite's float32 rule
# (`tests/tolerances.py`) over the network's fan-in and depth; the networks
# here are this one or smaller. "Differ" means by 10x more than that.
NET = network_terms(models.variable_shapes(_arch('cls'), IMAGE)['params'])


def _assert_float32_close(got, want):
  assert_f32_close(got, want, *NET)


def _assert_differ(a, b):
  """`a` and `b` differ by far more than the float32 tolerance."""
  a, b = np.asarray(a), np.asarray(b)
  assert np.abs(a - b).max() > 10 * f32_atol(NET[0], magnitude(b), NET[1])


@functools.cache
def _net(pool):
  """`(arch, variables, images)` for `pool`, shared by the tests.

  One batch serves every test, so the eager forwards of the many pruned
  models share their compiled ops.
  """
  arch = _arch(pool)
  variables = _random_variables(arch, seed=0)
  x = np.random.default_rng(1).normal(size=(BATCH, *IMAGE))
  return arch, variables, jnp.asarray(x, jnp.float32)


@pytest.fixture(params=vit.POOLS)
def net(request):
  return _net(request.param)


def _random_removable_sets(arch, rng, count):
  """Random non-empty layer sets that respect the floor, plus a largest one."""
  cands = list(arch.candidates)
  room = len(arch.blocks) - arch.min_blocks_per_stage
  sets = [sorted(rng.choice(cands, size=room, replace=False).tolist())]
  for _ in range(count):
    k = int(rng.integers(1, room + 1))
    sets.append(sorted(rng.choice(cands, size=k, replace=False).tolist()))
  return sets


# --- 1. Skip == delete --------------------------------------------------------


def test_skip_equals_delete(net):
  """apply(arch, v, x, skip=S) == apply(arch - S, surgery(v, S), x)."""
  arch, variables, x = net
  assert arch.max_removable() == DEPTH - 1  # floor of 1 layer
  full = models.build_model(arch)
  apply_skip = jax.jit(lambda v, x, s: full.apply(v, x, train=False, skip=s))
  unskipped = apply_skip(variables, x, jnp.zeros(DEPTH, bool))
  rng = np.random.default_rng(0)
  sets = [*_random_removable_sets(arch, rng, 4), []]
  for s in sets:
    assert DEPTH - len(s) >= arch.min_blocks_per_stage
    small_arch, small_vars = surgery.apply(arch, variables, surgery.remove(s))
    assert [b.name for b in small_arch.blocks] == [
      c for c in arch.candidates if c not in s
    ]
    want = apply_skip(variables, x, jnp.asarray(arch.skip_mask(s)))
    got = models.build_model(small_arch).apply(small_vars, x, train=False)
    assert got.shape == (BATCH, 5)
    _assert_float32_close(got, want)
    if s:  # Skipping must matter, or this test could not fail.
      _assert_differ(want, unskipped)
  # Removing every layer would go below the floor.
  with pytest.raises(ValueError, match='below the floor'):
    surgery.apply(arch, variables, surgery.remove(arch.candidates))


# --- 2. Surgery: the smaller model's exact tree, pure ------------------------


def test_surgery_is_pure_and_exact(net):
  arch, variables, _ = net
  before = jax.tree.map(np.array, variables)
  s = ['layer01', 'layer03']
  small_arch, small_vars = surgery.apply(arch, variables, surgery.remove(s))
  # The input is unchanged: same structure (the removed layers are still
  # there) and the same values.
  chex.assert_trees_all_equal(before, jax.tree.map(np.array, variables))
  assert set(s) <= set(variables['params'])
  # Exactly the tree of the smaller model's init: structure, shapes, dtypes.
  expected = models.variable_shapes(small_arch, IMAGE)
  assert jax.tree.structure(small_vars) == jax.tree.structure(expected)
  chex.assert_trees_all_equal_shapes_and_dtypes(small_vars, expected)
  assert not set(s) & set(small_vars['params'])
  # Parameters drop by exactly the removed layers' (counted by hand), and the
  # surviving leaves are the original arrays.
  assert _size(variables) - _size(small_vars) == len(s) * LAYER_PARAMS
  assert all(_size(variables['params'][name]) == LAYER_PARAMS for name in s)
  assert (
    flops.cost(arch).params - flops.cost(small_arch).params
    == len(s) * LAYER_PARAMS
  )
  chex.assert_trees_all_equal(
    small_vars['params']['layer02'], variables['params']['layer02']
  )


# --- 3. One compile for every mask; the scorer --------------------------------


def test_one_compile_serves_every_skip_mask(net):
  arch, variables, x = net
  model = models.build_model(arch)
  chex.clear_trace_counter()  # `forward` of the other pool's instance.

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(v, x, skip):
    return model.apply(v, x, train=False, skip=skip)

  outs = [
    forward(variables, x, jnp.asarray(arch.skip_mask(s)))
    for s in (['layer00'], ['layer02', 'layer03'], [], ['layer01'])
  ]
  for a in outs[:3]:
    _assert_differ(a, outs[3])


def test_scores_equal_separate_forwards_and_do_not_retrace():
  arch, variables, x = _net('cls')  # the scorer does not depend on pooling
  fn = scoring._compiled_scores(arch, 'pooled', None, scoring.cka_similarity)
  # The compiled function is cached per arch: another test in this worker
  # may have compiled it already, for another shape; count from here.
  before = fn._cache_size()
  got = scoring.score_candidates(arch, variables, x, data_batch_size=12)
  first = fn._cache_size()
  assert first - before <= 1
  assert list(got) == list(arch.candidates)
  # Oracle: the unpruned model and each surgered one, run separately; CKA in
  # float64 NumPy. Tolerance: `cka_atol` (the forwards' rounding through the
  # network, then the float32 CKA's).
  ref = models.representations(
    models.build_model(arch), variables, x, ['pooled']
  )['pooled']
  for name in arch.candidates:
    small_arch, small_vars = surgery.apply(
      arch, variables, surgery.remove([name])
    )
    rep = models.representations(
      models.build_model(small_arch), small_vars, x, ['pooled']
    )['pooled']
    want = 1 - cka64(ref, rep)
    assert abs(got[name] - want) <= cka_atol(*ref.shape, NET), name
  # The scores tell the layers apart, so the comparison above can fail.
  assert len(set(np.round(list(got.values()), 4))) == DEPTH
  assert min(got.values()) > 1e-3
  # New variables of the same arch ("after fine-tuning"): no retrace.
  other = scoring.score_candidates(
    arch, _random_variables(arch, seed=7), x, data_batch_size=12
  )
  assert fn._cache_size() == first
  assert not np.allclose(list(other.values()), list(got.values()), atol=1e-3)


# --- 4. Shared-prefix fanout --------------------------------------------------


def test_fanout_equals_one_forward_per_removal(net):
  """fanout=True == the unpruned forward + one per deleted layer."""
  arch, variables, x = net
  names = ('pooled', 'layer02', 'logits')
  got = jax.jit(
    lambda v, x: models.representations(
      models.build_model(arch), v, x, names, fanout=True
    )
  )(variables, x)
  k = len(arch.candidates)
  tokens = 17 if arch.option('pool') == 'cls' else 16
  assert got['pooled'].shape == (1 + k, BATCH, 16)
  assert got['layer02'].shape == (1 + k, BATCH, tokens, 16)
  for i, removed in enumerate([None, *arch.candidates]):
    edit = surgery.remove([removed] if removed else [])
    small_arch, small_vars = surgery.apply(arch, variables, edit)
    small = models.build_model(small_arch)
    # A deleted layer's output is its input: the previous layer's output.
    layer = 'layer01' if removed == 'layer02' else 'layer02'
    want = models.representations(
      small, small_vars, x, ['pooled', layer, 'logits']
    )
    _assert_float32_close(got['pooled'][i], want['pooled'])
    _assert_float32_close(got['layer02'][i], want[layer])
    _assert_float32_close(got['logits'][i], want['logits'])
  # Every removal changes the pooled features; removing layer03 leaves
  # layer02's output alone, removing layer00 does not.
  for i in range(1, 1 + k):
    _assert_differ(got['pooled'][i], got['pooled'][0])
  np.testing.assert_array_equal(got['layer02'][4], got['layer02'][0])
  _assert_differ(got['layer02'][1], got['layer02'][0])
  model = models.build_model(arch)
  with pytest.raises(ValueError, match='train=True'):
    model.apply(variables, x, train=True, fanout=True)


# --- 5. FLOPs and parameters: closed form vs hand counts ----------------------


KEEP_B = (0, 3, 10, 20, 47)


def _config_b():
  """The second FLOPs configuration, after a width edit.

  Pool 'mean', 12x9x2 images in 3x3 patches, width 24, 3 heads, MLP 48, 2
  layers, 7 classes; layer01's MLP shrunk to 5 units by `surgery.apply`.
  """
  arch = vit.vit(
    image_shape=(12, 9, 2),
    patch=3,
    width=24,
    depth=2,
    heads=3,
    mlp=48,
    pool='mean',
    num_classes=7,
  )
  edit = surgery.Edit(shrink=(surgery.Shrink('layer01', 0, KEEP_B),))
  out = {}

  def shrink(v):  # Surgery is plain jnp: it traces, no arrays needed.
    out['arch'], small = surgery.apply(arch, v, edit)
    return small

  shapes = jax.eval_shape(shrink, models.variable_shapes(arch))
  chex.assert_trees_all_equal_shapes_and_dtypes(
    shapes, models.variable_shapes(out['arch'])
  )
  return out['arch']


CONFIG_A = vit.vit(
  image_shape=(8, 8, 1),
  patch=2,
  width=16,
  depth=3,
  heads=2,
  mlp=32,
  pool='cls',
  num_classes=10,
)


def test_layers_keep_the_vit_parameter_tree():
  """The encoder family's layer, with the ViT's fused `qkv`: checkpoints
  of earlier ViTs (one `qkv` kernel per layer) still load."""
  shapes = models.variable_shapes(_arch('cls'), IMAGE)['params']['layer00']
  got = jax.tree.map(lambda leaf: tuple(leaf.shape), shapes)
  assert got == {
    'ln1': {'scale': (16,), 'bias': (16,)},
    'qkv': {'kernel': (16, 48), 'bias': (48,)},
    'out': {'kernel': (16, 16), 'bias': (16,)},
    'ln2': {'scale': (16,), 'bias': (16,)},
    'fc1': {'kernel': (16, 32), 'bias': (32,)},
    'fc2': {'kernel': (32, 16), 'bias': (16,)},
  }


def test_macs_and_params_match_hand_counts():
  # Config A: N = (8/2)·(8/2) = 16 patches, T = 17 tokens (cls), D = 16,
  # p = 2, C = 1, M = 32, 3 layers, 10 classes.
  embed = 16 * 2 * 2 * 1 * 16  # N·p²·C·D = 1024
  qkv = 3 * 17 * 16 * 16  # 3·T·D² = 13056
  scores = 17 * 17 * 16  # T²·D = 4624
  weighted = 17 * 17 * 16  # T²·D = 4624
  out = 17 * 16 * 16  # T·D² = 4352
  mlp = 2 * 17 * 16 * 32  # 2·T·D·M = 17408
  layer = qkv + scores + weighted + out + mlp  # 44064
  head = 16 * 10  # D·classes = 160
  assert flops.cost(CONFIG_A).macs == embed + 3 * layer + head == 133_376
  params = (
    (2 * 2 * 1 * 16 + 16)  # embed kernel + bias = 80
    + 16  # cls token
    + 17 * 16  # position embeddings, one per token = 272
    + 3 * LAYER_PARAMS  # D = 16, M = 32 as in LAYER_PARAMS: 6672
    + 2 * 16  # final LayerNorm
    + (16 * 10 + 10)  # head = 170
  )
  assert flops.cost(CONFIG_A).params == params == 7242

  # Config B: N = (12/3)·(9/3) = 12 patches, T = 12 tokens (mean pool, no
  # cls), D = 24, p = 3, C = 2, M = 48 (layer00) and 5 (layer01), 7 classes.
  b = _config_b()
  assert b.block('layer01').widths == (5,)
  embed = 12 * 3 * 3 * 2 * 24  # N·p²·C·D = 5184
  qkv = 3 * 12 * 24 * 24  # 3·T·D² = 20736
  scores = 12 * 12 * 24  # T²·D = 3456
  weighted = 12 * 12 * 24  # T²·D = 3456
  out = 12 * 24 * 24  # T·D² = 6912
  attention = qkv + scores + weighted + out  # 34560
  mlp0 = 2 * 12 * 24 * 48  # 2·T·D·M, M = 48: 27648
  mlp1 = 2 * 12 * 24 * 5  # 2·T·D·M, M = 5: 2880
  head = 24 * 7  # D·classes = 168
  macs = embed + (attention + mlp0) + (attention + mlp1) + head
  assert flops.cost(b).macs == macs == 105_000
  attention_params = (
    2 * 24  # ln1
    + (24 * 72 + 72)  # qkv = 1800
    + (24 * 24 + 24)  # out = 600
    + 2 * 24  # ln2
  )  # 2496

  def mlp_params(m):
    return (24 * m + m) + (m * 24 + 24)  # fc1 + fc2

  params = (
    (3 * 3 * 2 * 24 + 24)  # embed kernel + bias = 456
    + 12 * 24  # position embeddings (no cls token) = 288
    + attention_params
    + mlp_params(48)  # 2376
    + attention_params
    + mlp_params(5)  # 269
    + 2 * 24  # final LayerNorm
    + (24 * 7 + 7)  # head = 175
  )
  assert flops.cost(b).params == params == 8604
  # Every parameter is trainable (no BatchNorm statistics).
  assert flops.cost(b).trainable_params == params


# --- 6. XLA's count beside 2 · MACs -------------------------------------------


def _elementwise_flops(*, n, t, d, heads, mlps, classes, pool):
  """A rough count of the elementwise flops the MAC convention ignores.

  One flop per elementwise step, per example; transcendentals (exp, tanh,
  rsqrt) are not flops to XLA (it reports them apart). LayerNorm: sum, square,
  sum of squares, subtract mean, normalise, scale, shift ≈ 7 per element, + 1
  for the per-row statistics: 8. Softmax with the 1/sqrt(d_head) scaling:
  scale, max, subtract, sum, divide = 5 per logit. GELU (tanh form, flax's
  default): x·x, ·x, ·0.044715, +x, ·sqrt(2/π), +1, ·0.5, ·x = 8 per unit.
  Biases 1 per output, residual adds 1 per element.
  """
  total = n * d + t * d  # embedding bias, + position embeddings
  for m in mlps:
    total += 2 * 8 * t * d  # ln1, ln2
    total += 5 * heads * t * t  # softmax
    total += 8 * t * m  # GELU
    total += t * (3 * d + d + m + d)  # qkv, out, fc1, fc2 biases
    total += 2 * t * d  # residual adds
  total += 8 * t * d  # final LayerNorm
  total += (t * d + d) if pool == 'mean' else 0  # mean over tokens
  return total + classes  # head bias


def test_xla_flops_are_twice_the_macs_plus_elementwise_work():
  """xla_flops / (2 · macs) = 1 + elementwise surplus.

  XLA counts a multiply-add as 2 flops, so dots and the patch convolution
  give exactly 2 · macs (VALID, non-overlapping patches: no padding taps to
  skip, unlike the ResNets). On top it counts the elementwise work the MAC
  convention ignores: LayerNorm, softmax, GELU, biases, residual and
  position adds (`_elementwise_flops`). After fusion XLA may recompute cheap
  elementwise producers inside several consumers (measured: the qkv bias add
  is fused into each of the q, k and v slices, each counting all 3·T·D
  elements; residual adds are recomputed inside the final LayerNorm's
  reductions), so its count exceeds the one-op-per-step estimate E.
  Bounds: at least 3/4 of E (the rough per-element counts may overstate
  what XLA folds, e.g. constant multiplies), at most 1.5 E (every
  elementwise step recomputed at most once more on average, with room).
  Measured: 1.192 (A) and 1.146 (B), i.e. 1.14 E and 1.16 E.
  """
  a_elementwise = _elementwise_flops(
    n=16, t=17, d=16, heads=2, mlps=(32, 32, 32), classes=10, pool='cls'
  )
  b_elementwise = _elementwise_flops(
    n=12, t=12, d=24, heads=3, mlps=(48, 5), classes=7, pool='mean'
  )
  for arch, elementwise in (
    (CONFIG_A, a_elementwise),
    (_config_b(), b_elementwise),
  ):
    macs = flops.cost(arch).macs
    ratio = flops.xla_flops(arch) / (2 * macs)
    surplus = elementwise / (2 * macs)  # 0.168 (A), 0.126 (B)
    assert 1.0 + 0.75 * surplus <= ratio <= 1.0 + 1.5 * surplus, (
      ratio,
      surplus,
    )


# --- 7. MLP width surgery -----------------------------------------------------


def test_mlp_shrink_equals_zeroed_units(net):
  """Shrunk MLP == the original with the dropped fc1 units zeroed.

  fc1's kernel columns and bias entries set to 0 give GELU(0) = 0 on those
  units, so fc2 sees zeros there: the same as deleting them.
  """
  arch, variables, x = net
  before = jax.tree.map(np.array, variables)
  keep = (0, 5, 6, 17, 31)
  edit = surgery.Edit(shrink=(surgery.Shrink('layer01', 0, keep),))
  small_arch, small_vars = surgery.apply(arch, variables, edit)
  chex.assert_trees_all_equal(before, jax.tree.map(np.array, variables))
  assert small_arch.block('layer01').widths == (len(keep),)
  assert small_arch.block('layer02').widths == (32,)
  expected = models.variable_shapes(small_arch, IMAGE)
  assert jax.tree.structure(small_vars) == jax.tree.structure(expected)
  chex.assert_trees_all_equal_shapes_and_dtypes(small_vars, expected)
  # The kept units are the original ones (NumPy indexing as oracle).
  fc1 = before['params']['layer01']['fc1']
  fc2 = before['params']['layer01']['fc2']
  small = small_vars['params']['layer01']
  np.testing.assert_array_equal(small['fc1']['kernel'], fc1['kernel'][:, keep])
  np.testing.assert_array_equal(small['fc1']['bias'], fc1['bias'][list(keep)])
  np.testing.assert_array_equal(small['fc2']['kernel'], fc2['kernel'][keep, :])
  np.testing.assert_array_equal(small['fc2']['bias'], fc2['bias'])
  # The original network with the dropped units zeroed.
  drop = np.setdiff1d(np.arange(32), keep)
  zeroed = jax.tree.map(np.array, before)
  zeroed['params']['layer01']['fc1']['kernel'][:, drop] = 0.0
  zeroed['params']['layer01']['fc1']['bias'][drop] = 0.0
  model = models.build_model(arch)
  want = model.apply(zeroed, x, train=False)
  got = models.build_model(small_arch).apply(small_vars, x, train=False)
  _assert_float32_close(got, want)
  # The dropped units mattered, so the comparison can fail.
  _assert_differ(model.apply(variables, x, train=False), want)


# --- 8. Dropout ---------------------------------------------------------------


def test_dropout_only_in_training():
  arch, variables, x = _net('cls')  # dropout does not depend on pooling
  plain = models.build_model(arch)
  dropping = models.build_model(_arch(arch.option('pool'), dropout=0.3))
  names = [b.name for b in arch.blocks]

  def capture(mdl, method):
    return method == '__call__' and mdl.name in names

  train_fn = jax.jit(
    lambda v, x, key: dropping.apply(
      v,
      x,
      train=True,
      rngs={'dropout': key},
      capture_intermediates=capture,
      mutable=['intermediates'],
    )
  )

  def train(seed):
    # rbg: compiles faster on CPU than threefry (see init_variables).
    logits, state = train_fn(variables, x, jax.random.key(seed, impl='rbg'))
    return logits, state['intermediates']

  (logits0, inter), (logits1, _) = train(0), train(1)
  # Different dropout RNGs give different outputs; the same one repeats.
  _assert_differ(logits0, logits1)
  np.testing.assert_array_equal(logits0, train(0)[0])
  # Eval mode is deterministic and is the dropout-free model: the same ops
  # on the same inputs, so bit for bit.
  eval_out = dropping.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_out, dropping.apply(variables, x))
  np.testing.assert_array_equal(eval_out, plain.apply(variables, x))
  _assert_differ(logits0, eval_out)
  # Every dropout site is live in training: the embeddings differ from eval
  # mode's, and each layer's training output differs from its eval output
  # on the same (captured) input.
  eval_stem = models.representations(plain, variables, x, ['stem'])['stem']
  _assert_differ(inter['stem'][0], eval_stem)
  layer = vit.encoder_layer(heads=2, mlp=32, dropout=0.3)
  inputs = [inter['stem'][0], *(inter[n]['__call__'][0] for n in names[:-1])]
  for name, h in zip(names, inputs):
    evaluated = layer.apply(
      {'params': variables['params'][name]}, h, None, train=False
    )
    _assert_differ(inter[name]['__call__'][0], evaluated)
  # Training without a 'dropout' RNG cannot silently run deterministic.
  with pytest.raises(flax.errors.InvalidRngError, match='dropout'):
    dropping.apply(variables, x, train=True)


# --- 9. Bad inputs ------------------------------------------------------------


def test_bad_inputs_raise(net):
  arch, variables, _ = net
  model = models.build_model(arch)
  for shape in ((1, 8, 6, 1), (1, 8, 8, 3), (1, 16, 16, 1)):
    with pytest.raises(ValueError, match=r'\(8, 8, 1\)'):
      model.apply(variables, jnp.zeros(shape))
  with pytest.raises(ValueError, match='one entry per candidate unit'):
    model.apply(variables, jnp.zeros((1, *IMAGE)), skip=jnp.zeros(3, bool))
  with pytest.raises(ValueError, match='multiple of heads=3'):
    models.get_arch('vit', width=10, heads=3)
  for image, patch in (((9, 8, 1), 2), ((8, 10, 1), 4)):
    with pytest.raises(ValueError, match='multiples of the patch'):
      vit.vit(image_shape=image, patch=patch, width=16, heads=2)
  with pytest.raises(ValueError, match='Unknown ViT pool'):
    vit.vit(pool='max')
  with pytest.raises(ValueError, match='dropout'):
    vit.vit(dropout=1.0)
