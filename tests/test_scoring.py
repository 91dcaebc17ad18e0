"""The one-call candidate scorer and the criteria registry."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import cka64
from tolerances import assert_f32_close, cka_atol, f32_atol, network_terms

from lpjax import methods, models, scoring, surgery
from lpjax.models import resnet

ARCH = resnet.resnet_cifar(blocks_per_stage=(3, 3, 3), width=4)
IMAGE = (8, 8, 3)


@pytest.fixture(scope='module')
def trained_like():
  """Variables with non-trivial BN statistics, and calibration images."""
  v = models.init_variables(ARCH, 0, IMAGE)
  rng = np.random.default_rng(0)
  v = jax.tree.map_with_path(
    lambda p, a: (
      jnp.asarray(rng.uniform(0.5, 2, a.shape), a.dtype)
      if p[-1].key == 'var'
      else a + 0.2 * rng.normal(size=a.shape).astype(a.dtype)
      if p[-1].key in ('mean', 'scale', 'bias')
      else a
    ),
    v,
  )
  x = rng.normal(size=(60, *IMAGE)).astype(np.float32)
  return v, x


def test_scores_equal_a_loop_of_separate_forwards(trained_like):
  variables, x = trained_like
  model = models.build_model(ARCH)
  got = scoring.score_candidates(ARCH, variables, x, data_batch_size=20)
  ref = models.representations(model, variables, x, ['pooled'])['pooled']
  net = network_terms(variables['params'])
  assert list(got) == list(ARCH.candidates)
  for name in ARCH.candidates:
    small_arch, small_vars = surgery.remove_blocks(ARCH, variables, [name])
    small = models.build_model(small_arch)
    rep = models.representations(small, small_vars, x, ['pooled'])['pooled']
    want = 1 - cka64(ref, rep)
    assert abs(got[name] - want) <= cka_atol(*ref.shape, net), name
  assert len(set(np.round(list(got.values()), 6))) > 1


def test_shared_prefix_equals_masked_forwards(trained_like):
  variables, x = trained_like
  shared = scoring.score_candidates(ARCH, variables, x)
  for chunk in (3, 100):  # masked: in chunks, and all masks in one vmap
    masked = scoring.score_candidates(
      ARCH, variables, x, data_batch_size=7, candidate_chunk=chunk
    )
    np.testing.assert_allclose(
      list(shared.values()),
      list(masked.values()),
      rtol=0,
      atol=cka_atol(len(x), 16, network_terms(variables['params'])),
    )
  with pytest.raises(ValueError, match='candidate_chunk must be'):
    scoring.score_candidates(ARCH, variables, x, candidate_chunk=0)


def test_shared_prefix_halves_the_work():
  """XLA's FLOP count: the blocks before each candidate are run once.

  ARCH has 9 blocks, candidates at positions 2, 3, 5, 6, 8, 9 (1-based).
  Masked: vmap batches only what depends on the mask, so blocks 1 and 2 run
  once and blocks 3..9 for 7 masks: 51 block evaluations. Shared prefix: the
  unpruned stream runs 9, candidate p's stream the 9 - p after it: 30.
  (Stem and head add a little to both.)
  """
  v = jax.eval_shape(lambda: models.init_variables(ARCH, 0, IMAGE))
  xs = jax.ShapeDtypeStruct((1, 16, *IMAGE), jnp.float32)

  def flops(chunk):
    fn = scoring._compiled_representations(ARCH, 'pooled', chunk)
    return fn.lower(v, xs).compile().cost_analysis()['flops']

  ratio = flops(None) / flops(100)
  assert 30 / 51 - 0.05 < ratio < 30 / 51 + 0.05, ratio


def test_other_representations(trained_like):
  variables, x = trained_like
  reps = scoring.candidate_representations(
    ARCH, variables, x, representation='stage2_block01'
  )
  assert reps.shape == (1 + len(ARCH.candidates), 60, 4, 4, 8)
  # Skipping a later block leaves this block's output unchanged; skipping an
  # earlier one changes it.
  later = 1 + ARCH.candidates.index('stage3_block01')
  earlier = 1 + ARCH.candidates.index('stage1_block01')
  net = network_terms(variables['params'])
  atol = assert_f32_close(reps[later], reps[0], *net)
  assert np.abs(reps[earlier] - reps[0]).max() > 10 * atol
  with pytest.raises(KeyError, match='stage9_block00'):
    scoring.score_candidates(
      ARCH, variables, x, representation='stage9_block00'
    )


def test_no_retrace_across_iterations_of_the_same_shape(trained_like):
  variables, x = trained_like
  arch = ARCH.without(['stage1_block02'])
  _, v = surgery.remove_blocks(ARCH, variables, ['stage1_block02'])
  fn = scoring._compiled_scores(arch, 'pooled', None, scoring.cka_similarity)
  # The compiled function is cached per arch: another test in this worker
  # may have compiled it already, for another shape; count from here.
  before = fn._cache_size()
  scoring.score_candidates(arch, v, x, data_batch_size=30)
  first = fn._cache_size()
  assert first - before <= 1
  v2 = jax.tree.map(lambda a: a * 1.01, v)  # "after fine-tuning"
  s2 = scoring.score_candidates(arch, v2, x, data_batch_size=30)
  assert fn._cache_size() == first
  assert len(s2) == len(arch.candidates)


def test_constant_representation_raises(trained_like):
  variables, _ = trained_like
  x = np.zeros((20, *IMAGE), np.float32)  # every example identical
  with pytest.raises(FloatingPointError, match='not finite'):
    scoring.score_candidates(ARCH, variables, x)


def test_registry_lists_valid_names():
  assert {'cka', 'random', 'l1'} <= set(methods.METHODS)
  with pytest.raises(KeyError, match=r"valid criteria: \[.*'cka'.*'l1'"):
    methods.get_method('hrank')


def _ctx(variables, x, **kw):
  return methods.Context(
    arch=ARCH, variables=variables, inputs=x, labels=np.zeros(len(x)), **kw
  )


def _scores(name, ctx):
  decision = methods.get_method(name)(ctx)
  # The method removes the lowest-scoring removable unit.
  (removed,) = decision.edit.remove
  assert removed == min(ctx.arch.removable(), key=decision.scores.get)
  return decision.scores


def test_l1_criterion_matches_numpy(trained_like):
  variables, x = trained_like
  got = _scores('l1', _ctx(variables, x))
  for name in ARCH.candidates:
    block = variables['params'][name]
    block_terms = block['conv1']['kernel'].size
    want = sum(
      np.abs(np.asarray(block[c]['kernel'])).sum((0, 1, 2)).mean()
      for c in ('conv1', 'conv2')
    )
    # Sums of |w| (no cancellation): relative error by the rule.
    assert got[name] == pytest.approx(want, rel=f32_atol(2 * block_terms))


def test_random_criterion_reproducible(trained_like):
  variables, x = trained_like
  a = _scores('random', _ctx(variables, x, seed=1, iteration=2))
  assert a == _scores('random', _ctx(variables, x, seed=1, iteration=2))
  assert a != _scores('random', _ctx(variables, x, seed=1, iteration=3))


def test_cka_criterion_on_the_authors_resnet56(keras_dir):
  """One score per candidate block of the authors' baseline (24)."""
  from lpjax.interop import keras_h5

  arch, variables = keras_h5.load_keras_model(
    keras_dir / 'resnet56_baseline.json', keras_dir / 'resnet56_baseline.h5'
  )
  npz = keras_dir / 'reference_outputs.npz'
  x = np.load(npz, allow_pickle=False)['inputs'][:64]
  scores = _scores(
    'cka',
    methods.Context(arch, variables, x, np.zeros(64), data_batch_size=64),
  )
  assert len(scores) == 24 == len(arch.candidates)
  assert all(0.0 <= s <= 1.0 for s in scores.values())
  # A trained network: removing a single identity block keeps the pooled
  # features similar for most blocks (the premise of the method).
  assert np.median(list(scores.values())) < 0.2


def test_float64_similarity_and_ranking_on_the_authors_resnet56(keras_dir):
  """float32 and float64 similarity steps rank the 24 blocks alike."""
  from lpjax.interop import keras_h5

  arch, variables = keras_h5.load_keras_model(
    keras_dir / 'resnet56_baseline.json', keras_dir / 'resnet56_baseline.h5'
  )
  x = np.load(keras_dir / 'reference_outputs.npz', allow_pickle=False)['inputs']
  kw = dict(data_batch_size=128)
  s32 = scoring.score_candidates(arch, variables, x, **kw)
  s64 = scoring.score_candidates(
    arch, variables, x, similarity_dtype='float64', **kw
  )
  # The float64 step equals a float64 NumPy CKA of the same (float32)
  # representations: only reduction order differs, ~1e-15 relative.
  reps = np.asarray(scoring.candidate_representations(arch, variables, x, **kw))
  for i, unit in enumerate(arch.candidates):
    assert s64[unit] == pytest.approx(
      1 - cka64(reps[0], reps[1 + i]), abs=1e-12
    )
  # float32 CKA of 256 x 64 features is within `cka_atol(256, 64)` = 1.5e-4
  # (the suite's rule; measured: 2.2e-7). Neighbouring scores differ by
  # 5e-4 and more (the ~1e-4 scale where rankings could flip), more than
  # twice that, so both precisions must give one ranking.
  tol = cka_atol(*reps.shape[1:])
  gaps = np.diff(sorted(s64.values()))
  assert gaps.min() > 2 * tol
  assert max(abs(s32[u] - s64[u]) for u in s64) <= tol
  assert sorted(s32, key=s32.get) == sorted(s64, key=s64.get)
  with pytest.raises(ValueError, match='valid'):
    scoring.score_candidates(arch, variables, x, similarity_dtype='float16')


def test_sharded_scoring_matches_single_device(tmp_path):
  """8 host devices: data-parallel scoring equals the 1-device result."""
  script = textwrap.dedent(
    """
      import json, sys
      import jax, numpy as np
      from lpjax import models, scoring, sharding
      from lpjax.models import resnet
      arch = resnet.resnet_cifar(blocks_per_stage=(3, 3, 3), width=4)
      v = models.init_variables(arch, 0, (8, 8, 3))
      x = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype('f4')
      mesh = sharding.make_mesh()
      sharded = scoring.score_candidates(arch, v, x, mesh=mesh)
      one = scoring.score_candidates(
          arch, v, x, mesh=sharding.make_mesh(jax.devices()[:1]))
      print(json.dumps([mesh.size, list(sharded.values()),
                        list(one.values())]))
      """
  )
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  out = subprocess.run(
    [sys.executable, '-c', script],
    env=env,
    capture_output=True,
    timeout=300,
    text=True,
    cwd=os.path.dirname(os.path.dirname(__file__)),
    check=True,
  )
  devices, sharded, one = json.loads(out.stdout.strip().splitlines()[-1])
  assert devices == 8
  shapes = models.variable_shapes(
    resnet.resnet_cifar(blocks_per_stage=(3, 3, 3), width=4), IMAGE
  )
  net = network_terms(shapes['params'])
  np.testing.assert_allclose(sharded, one, rtol=0, atol=cka_atol(64, 16, net))
