"""Arch, models and surgery: the invariants of DESIGN §3 on tiny networks."""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_f32_close, f32_atol, network_terms

from lpjax import arch as arch_lib
from lpjax import models, surgery
from lpjax.models import resnet, vit

# Tiny networks: few blocks, narrow, small images (each shape = one compile).
CIFAR = resnet.resnet_cifar(blocks_per_stage=(4, 3, 3), width=4, num_classes=5)
BOTTLENECK = resnet.resnet_imagenet(
  blocks_per_stage=(3, 3), width=4, num_classes=5
)
CIFAR_IMAGE = (8, 8, 3)
BOTTLENECK_IMAGE = (32, 32, 3)


def _random_variables(arch, image_shape, seed):
  """Init, then make BN statistics non-trivial so eval mode is exercised."""
  variables = models.init_variables(arch, seed, image_shape)
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = path[-1].key
    if name == 'var':
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
    if name in ('mean', 'scale', 'bias'):
      base = 1.0 if name == 'scale' else 0.0
      return jnp.asarray(base + 0.3 * rng.normal(size=leaf.shape), leaf.dtype)
    return leaf

  return {
    'params': jax.tree.map_with_path(perturb, variables['params']),
    'batch_stats': jax.tree.map_with_path(perturb, variables['batch_stats']),
  }


def _random_skip_sets(arch, rng, count):
  """Random removable sets that respect the per-stage floor."""
  out = []
  for _ in range(count):
    chosen = []
    for stage in arch.stages:
      cands = [b.name for b in stage.blocks if b.index > 0]
      room = len(stage.blocks) - arch.min_blocks_per_stage
      k = rng.integers(0, min(room, len(cands)) + 1)
      chosen += list(rng.choice(cands, size=k, replace=False))
    out.append(sorted(chosen))
  return out


def _size(tree):
  return sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree))


@pytest.fixture(
  scope='module',
  params=[(CIFAR, CIFAR_IMAGE), (BOTTLENECK, BOTTLENECK_IMAGE)],
  ids=['basic', 'bottleneck'],
)
def net(request):
  arch, image_shape = request.param
  variables = _random_variables(arch, image_shape, seed=0)
  x = jax.random.normal(jax.random.key(1), (6, *image_shape))
  return arch, image_shape, variables, x


def test_candidates_follow_the_papers_rule():
  a = resnet.resnet_cifar(56)
  assert len(a.candidates) == 24  # 8 per stage
  assert 'stage1_block00' not in a.candidates
  assert 'stage2_block00' not in a.candidates
  assert a.max_removable() == 21  # ALGORITHMS §1.2: ResNet56 -> 21 blocks
  assert resnet.resnet_cifar(110).max_removable() == 48
  assert resnet.resnet_imagenet(50).max_removable() == 8
  smallest = a.without([c for c in a.candidates if not c.endswith('01')])
  assert smallest.blocks_per_stage == (2, 2, 2)
  assert smallest.removable() == ()


def test_arch_json_round_trip():
  a = CIFAR.without(['stage1_block02']).with_widths('stage2_block01', [3])
  b = arch_lib.Arch.from_json(a.to_json())
  assert a == b and hash(a) == hash(b)


def test_get_arch_names():
  assert models.get_arch('resnet110').blocks_per_stage == (18, 18, 18)
  assert models.get_arch('resnet50').family == 'resnet_imagenet'
  with pytest.raises(KeyError, match='resnet56'):
    models.get_arch('vgg16')


def test_skip_equals_delete(net):
  """apply(arch - S, remove_blocks(v, S), x) == apply(arch, v, x, skip=S)."""
  arch, _, variables, x = net
  full = models.build_model(arch)
  apply_skip = jax.jit(lambda v, x, s: full.apply(v, x, train=False, skip=s))
  rng = np.random.default_rng(0)
  sets = [*_random_skip_sets(arch, rng, 4), []]
  assert any(sets), 'the random sets should remove something'
  for s in sets:
    small_arch, small_vars = surgery.remove_blocks(arch, variables, s)
    want = apply_skip(variables, x, jnp.asarray(arch.skip_mask(s)))
    got = models.build_model(small_arch).apply(small_vars, x, train=False)
    atol = assert_f32_close(got, want, *network_terms(variables['params']))
    # Skipping must matter: otherwise this test could not fail.
    if s:
      unskipped = apply_skip(variables, x, jnp.zeros(len(arch.candidates)))
      assert np.abs(unskipped - want).max() > 100 * atol


def _assert_float32_close(got, want, params):
  """Equal up to float32 summation order (batch size changes conv kernels):
  the suite's rule (`tests/tolerances.py`) over the network's fan-in and
  depth."""
  return assert_f32_close(got, want, *network_terms(params))


def test_fanout_equals_one_forward_per_removal(net):
  """Shared-prefix fanout == the unpruned forward + one per deleted block."""
  arch, _, variables, x = net
  names = models.representation_names(arch)
  got = jax.jit(
    lambda v, x: models.representations(
      models.build_model(arch), v, x, names, fanout=True
    )
  )(variables, x)
  k = len(arch.candidates)
  for i, removed in enumerate([None, *arch.candidates]):
    if removed is None:
      small_arch, small_vars = arch, variables
    else:
      small_arch, small_vars = surgery.remove_blocks(arch, variables, [removed])
    small = models.build_model(small_arch)
    kept = models.representation_names(small_arch)
    want = models.representations(small, small_vars, x, kept)
    for name in names:
      assert got[name].shape[:2] == (1 + k, len(x))
      if name == removed:
        # A deleted block's output is its input: the previous block's output.
        prev = names[names.index(name) - 1]
        _assert_float32_close(got[name][i], want[prev], variables['params'])
      else:
        _assert_float32_close(got[name][i], want[name], variables['params'])
  # The removals differ from the unpruned model (so the test can fail).
  atol = f32_atol(*network_terms(variables['params']))  # scale 1
  assert np.abs(got['logits'][0] - got['logits'][1]).max() > 100 * atol


def test_skip_mask_and_fanout_agree_on_block_outputs(net):
  """A skipped block's captured output is its input, as in fanout."""
  arch, _, variables, x = net
  model = models.build_model(arch)
  names = models.representation_names(arch)
  fan = models.representations(model, variables, x, names, fanout=True)
  for i, cand in enumerate(arch.candidates[:2]):
    mask = jnp.asarray(arch.skip_mask([cand]))
    masked = models.representations(model, variables, x, names, skip=mask)
    for name in names:
      _assert_float32_close(masked[name], fan[name][1 + i], variables['params'])


def test_fanout_is_eval_only(net):
  arch, _, variables, x = net
  model = models.build_model(arch)
  with pytest.raises(ValueError, match='train=True'):
    model.apply(variables, x, train=True, fanout=True, mutable=['batch_stats'])
  with pytest.raises(ValueError, match='skip mask'):
    model.apply(
      variables, x, skip=jnp.zeros(len(arch.candidates), bool), fanout=True
    )


def test_surgery_is_pure_and_exact(net):
  arch, image_shape, variables, _ = net
  before = jax.tree.map(np.array, variables)
  s = _random_skip_sets(arch, np.random.default_rng(1), 1)[0] or [
    arch.removable()[0]
  ]
  small_arch, small_vars = surgery.remove_blocks(arch, variables, s)
  # Input unchanged.
  chex.assert_trees_all_equal(before, jax.tree.map(np.array, variables))
  # Exactly the tree of the smaller model's init.
  expected = models.variable_shapes(small_arch, image_shape)
  chex.assert_trees_all_equal_shapes_and_dtypes(small_vars, expected)
  # Parameters drop by exactly the removed blocks' parameters.
  removed = sum(_size(variables[col][b]) for col in variables for b in s)
  assert _size(variables) - _size(small_vars) == removed > 0


def test_remove_blocks_errors():
  v = models.variable_shapes(CIFAR, CIFAR_IMAGE)
  with pytest.raises(ValueError, match='no such unit'):
    surgery.remove_blocks(CIFAR, v, ['stage9_block01'])
  with pytest.raises(ValueError, match='not candidates'):
    surgery.remove_blocks(CIFAR, v, ['stage2_block00'])
  with pytest.raises(ValueError, match='below the floor'):
    surgery.remove_blocks(CIFAR, v, ['stage2_block01', 'stage2_block02'])


def test_filter_surgery_equals_zeroed_channels(net):
  """Pruned model == original with those channels' BN output zeroed."""
  arch, image_shape, variables, x = net
  block = arch.blocks[-1].name
  for conv in range(1, len(arch.block(block).widths) + 1):
    width = arch.block(block).widths[conv - 1]
    keep = [0, 2, width - 1]
    small_arch, small_vars = surgery.remove_filters(
      arch, variables, block, keep, conv=conv
    )
    chex.assert_trees_all_equal_shapes_and_dtypes(
      small_vars, models.variable_shapes(small_arch, image_shape)
    )
    assert small_arch.block(block).widths[conv - 1] == 3
    # Zero the BN affine output of the dropped channels in the original.
    drop = np.setdiff1d(np.arange(width), keep)
    zeroed = jax.tree.map(lambda a: a, variables)
    bn = dict(zeroed['params'][block][f'bn{conv}'])
    bn['scale'] = bn['scale'].at[drop].set(0.0)
    bn['bias'] = bn['bias'].at[drop].set(0.0)
    zeroed['params'] = dict(zeroed['params'])
    zeroed['params'][block] = dict(zeroed['params'][block], **{f'bn{conv}': bn})
    want = models.build_model(arch).apply(zeroed, x, train=False)
    got = models.build_model(small_arch).apply(small_vars, x, train=False)
    atol = assert_f32_close(got, want, *network_terms(variables['params']))
    orig = models.build_model(arch).apply(variables, x, train=False)
    assert np.abs(orig - want).max() > 100 * atol


def test_remove_filters_errors():
  v = models.variable_shapes(CIFAR, CIFAR_IMAGE)
  with pytest.raises(ValueError, match='empty'):
    surgery.remove_filters(CIFAR, v, 'stage1_block01', [])
  with pytest.raises(ValueError, match='duplicate'):
    surgery.remove_filters(CIFAR, v, 'stage1_block01', [1, 1])
  with pytest.raises(ValueError, match=r'\[0, 4\)'):
    surgery.remove_filters(CIFAR, v, 'stage1_block01', [4])
  with pytest.raises(ValueError, match='conv=2'):
    surgery.remove_filters(CIFAR, v, 'stage1_block01', [0], conv=2)
  with pytest.raises(KeyError, match='stage1_block09'):
    surgery.remove_filters(CIFAR, v, 'stage1_block09', [0])


def test_one_compile_serves_every_skip_set():
  arch, variables = CIFAR, _random_variables(CIFAR, CIFAR_IMAGE, 2)
  model = models.build_model(arch)
  x = jnp.ones((2, *CIFAR_IMAGE))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(v, x, skip):
    return model.apply(v, x, train=False, skip=skip)

  outs = [
    forward(variables, x, jnp.asarray(arch.skip_mask(s)))
    for s in (['stage1_block01'], ['stage3_block02'], [])
  ]
  assert not np.allclose(outs[0], outs[1])


def test_representations_named_and_checked():
  arch, variables = CIFAR, _random_variables(CIFAR, CIFAR_IMAGE, 3)
  model = models.build_model(arch)
  x = jax.random.normal(jax.random.key(0), (3, *CIFAR_IMAGE))
  reps = models.representations(
    model, variables, x, ['pooled', 'logits', 'stage2_block01']
  )
  assert reps['pooled'].shape == (3, 16)
  assert reps['stage2_block01'].shape == (3, 4, 4, 8)
  net = network_terms(variables['params'])
  assert_f32_close(reps['logits'], model.apply(variables, x, train=False), *net)
  # The pooled features are the head's input: one dense layer of 16 inputs.
  head = variables['params']['head']
  assert_f32_close(
    reps['pooled'] @ head['kernel'] + head['bias'], reps['logits'], terms=16
  )
  with pytest.raises(KeyError, match=r"\['stage4_block00', 'conv'\]"):
    models.representations(
      model, variables, x, ['pooled', 'stage4_block00', 'conv']
    )


def test_skip_mask_shape_checked():
  model = models.build_model(CIFAR)
  v = models.init_variables(CIFAR, 0, CIFAR_IMAGE)
  with pytest.raises(ValueError, match='one entry per candidate'):
    model.apply(v, jnp.ones((1, *CIFAR_IMAGE)), skip=jnp.zeros(3))


@pytest.mark.parametrize(
  'arch',
  [resnet.resnet_cifar(20), resnet.resnet_imagenet(50)],
  ids=['cifar', 'imagenet'],
)
def test_skip_mask_orders_candidates(arch):
  names = list(itertools.islice(arch.candidates, 0, None, 3))
  mask = arch.skip_mask(names)
  assert [c for c, m in zip(arch.candidates, mask) if m] == names
  with pytest.raises(ValueError, match='not candidate'):
    arch.skip_mask(['stage1_block00'])


def _random_filter_mask(arch, rng):
  """A 0/1 mask over `prunable_filters(arch)` dropping about a third of each
  width (at least one kept), and the `Edit` that removes the same filters."""
  masks, shrink = [], []
  for unit, k, w in models.prunable_filters(arch):
    keep = np.sort(rng.choice(w, size=max(1, w - w // 3), replace=False))
    m = np.zeros(w, np.float32)
    m[keep] = 1.0
    masks.append(m)
    if len(keep) < w:
      shrink.append(surgery.Shrink(unit, k, tuple(int(i) for i in keep)))
  return np.concatenate(masks), surgery.Edit(shrink=tuple(shrink))


def test_filter_mask_equals_filter_surgery(net):
  """Masking filters' activations == deleting them by surgery (one `Edit`
  shrinking every prunable width at once)."""
  arch, image_shape, variables, x = net
  mask, edit = _random_filter_mask(arch, np.random.default_rng(0))
  assert len(edit.shrink) == len(models.prunable_filters(arch))
  small_arch, small_vars = surgery.apply(arch, variables, edit)
  chex.assert_trees_all_equal_shapes_and_dtypes(
    small_vars, models.variable_shapes(small_arch, image_shape)
  )
  model = models.build_model(arch)
  want = models.build_model(small_arch).apply(small_vars, x, train=False)
  got = model.apply(variables, x, train=False, filter_mask=jnp.asarray(mask))
  atol = _assert_float32_close(got, want, variables['params'])
  orig = model.apply(variables, x, train=False)
  assert np.abs(orig - want).max() > 100 * atol
  with pytest.raises(ValueError, match='filter_mask must have shape'):
    model.apply(variables, x, filter_mask=jnp.ones(3))


def test_num_filters_counts_every_conv_output():
  """ResNet-56 has 2,128 filters (ALGORITHMS.md §5.1: the Everything
  authors' budget unit); deleting an identity block of width C frees 2C."""
  a = resnet.resnet_cifar(56)
  assert models.num_filters(a) == 2128
  for stage, width in ((1, 16), (2, 32), (3, 64)):
    smaller = a.without([f'stage{stage}_block03'])
    assert models.num_filters(a) - models.num_filters(smaller) == 2 * width
  assert sum(w for *_, w in models.prunable_filters(a)) == 9 * (16 + 32 + 64)
  with pytest.raises(ValueError, match='no filter pruning'):
    models.prunable_filters(
      vit.vit(image_shape=(8, 8, 1), patch=4, width=8, depth=2, heads=2, mlp=16)
    )
