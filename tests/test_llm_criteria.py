"""LLM depth-pruning criteria on a tiny decoder, against float64 oracles.

Block influence (ShortGPT) and per-layer angular distance against NumPy on
the captured hidden states; Gromov et al.'s block angular distance against
NumPy on the last token; SLEB's scores and first choice against an explicit
loop of per-layer perplexities of the surgered models; tail removal.
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from test_transformers import VOCAB, T, _net
from tolerances import f32_atol

from lpjax import methods, models, surgery
from lpjax.methods import block_influence, llm
from lpjax.methods.context import Context
from lpjax.models import next_token

N = 12  # calibration windows


def _ctx(**kw):
  arch, variables, _ = _net('decoder')
  ids = (
    np.random.default_rng(5).integers(0, VOCAB, size=(N, T)).astype(np.int32)
  )
  return Context(
    arch=arch,
    variables=variables,
    inputs=ids,
    labels=np.zeros(N, np.int32),
    data_batch_size=4,
    **kw,
  )


def _states(ctx):
  names = ('stem', *(b.name for b in ctx.arch.blocks))
  reps = models.representations(
    models.build_model(ctx.arch), ctx.variables, jnp.asarray(ctx.inputs), names
  )
  return names, {n: np.asarray(reps[n], np.float64) for n in names}


def _cos64(a, b):
  return np.sum(a * b, -1) / (
    np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  )


def _angle_atol(cos):
  """A cosine of float32 vectors of width 16 is off by f32_atol(16); the
  angle by that times |d arccos / d cos| = 1 / sqrt(1 − cos²), over π."""
  slope = 1.0 / np.sqrt(1.0 - np.max(np.abs(cos)) ** 2)
  # Two float32 forwards (different programs) feed the two cosines.
  return 2 * f32_atol(16 * 3 * 24, 1.0, 3 * 9) * slope / np.pi


def test_block_influence_and_angular_equal_float64_oracles():
  ctx = _ctx()
  names, h = _states(ctx)
  bi = block_influence.scores(ctx)
  ang = methods.baselines.angular_scores(ctx)
  for prev, unit in itertools.pairwise(names):
    cos = _cos64(h[prev], h[unit])
    atol = _angle_atol(cos)
    assert abs(bi[unit] - np.mean(1 - cos)) <= atol * np.pi, unit
    assert abs(ang[unit] - np.mean(np.arccos(cos) / np.pi)) <= atol, unit
  # The layers differ by far more than the tolerance: the test can fail.
  assert np.ptp(list(bi.values())) > 100 * atol


@pytest.mark.parametrize('n', [1, 2])
def test_angular_block_equals_the_last_token_oracle(n):
  ctx = _ctx(hparams={'n': n})
  names, h = _states(ctx)
  got = llm.block_distances(ctx, n)
  assert list(got) == [
    tuple(names[s + 1 : s + n + 1]) for s in range(len(names) - n)
  ]
  want = {}
  for s in range(len(names) - n):
    cos = _cos64(h[names[s]][:, -1], h[names[s + n]][:, -1])
    want[tuple(names[s + 1 : s + n + 1])] = np.mean(np.arccos(cos) / np.pi)
    assert abs(
      got[tuple(names[s + 1 : s + n + 1])]
      - want[tuple(names[s + 1 : s + n + 1])]
    ) <= _angle_atol(cos)
  decision = methods.get_method('angular_block')(ctx)
  best = min(want, key=want.get)
  assert decision.edit.remove == best
  assert len(set(want.values())) == len(want)


def test_sleb_scores_equal_a_loop_of_per_layer_perplexities():
  ctx = _ctx()
  got = llm.sleb_scores(ctx)
  want = {}
  for unit in ctx.arch.candidates:
    small_arch, small_vars = surgery.remove_blocks(
      ctx.arch, ctx.variables, [unit]
    )
    ppl = next_token.perplexity(
      models.build_model(small_arch), small_vars, ctx.inputs, batch=N
    )
    want[unit] = np.log(ppl)
  # log-softmax over 40 tokens and a mean over N (T - 1) predictions, of
  # logits from two float32 programs through 3 layers.
  atol = f32_atol(VOCAB * N * (T - 1), max(want.values()), 3 * 9)
  for unit in ctx.arch.candidates:
    assert abs(got[unit] - want[unit]) <= atol, unit
  first = methods.get_method('sleb')(ctx).edit.remove
  assert first == (min(want, key=want.get),)
  assert np.ptp(list(want.values())) > 100 * atol


def test_tail_removes_the_deepest_but_the_last():
  ctx = _ctx()
  assert methods.get_method('tail')(ctx).edit.remove == ('layer01',)
  arch, variables = surgery.remove_blocks(ctx.arch, ctx.variables, ['layer01'])
  ctx2 = Context(
    arch=arch, variables=variables, inputs=ctx.inputs, labels=ctx.labels
  )
  assert methods.get_method('tail')(ctx2).edit.remove == ('layer00',)


def test_llm_criteria_refuse_other_families_and_bad_hparams():
  _, variables, x = _net('series')
  arch = _net('series')[0]
  ctx = Context(
    arch=arch, variables=variables, inputs=np.asarray(x), labels=np.zeros(6)
  )
  with pytest.raises(ValueError, match='needs a decoder'):
    methods.get_method('sleb')(ctx)
  with pytest.raises(ValueError, match='valid'):
    methods.get_method('angular_block').complete({'m': 2})
  with pytest.raises(ValueError, match='n must be'):
    methods.get_method('angular_block').complete({'n': 0})
  with pytest.raises(ValueError, match='floor'):
    methods.get_method('angular_block')(_ctx(hparams={'n': 3}))
