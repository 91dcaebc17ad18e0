"""The consensus, kl and angular criteria against float64 oracles."""

import dataclasses

import jax
import numpy as np
import pytest
from oracles import cka64
from test_block_influence import NETS, _unit_io
from test_similarity import (
  ANGLE_ATOL,
  assert_near_an_optimum,
  gauss_atol,
  gaussian_optima,
  linear_oracle,
  permutation_oracle,
  wasserstein_oracle,
)
from tolerances import (
  cka_atol,
  f32_atol,
  gaussian_shape_atol,
  magnitude,
  network_terms,
)

from lpjax import methods, models, scoring, surgery
from lpjax.methods import consensus
from lpjax.models import resnet

N = 24  # calibration examples: 3 classes of 8


def _context(net='resnet', **kwargs):
  arch, shape = NETS[net]
  variables = models.init_variables(arch, 0, shape)
  x = np.asarray(jax.random.normal(jax.random.key(1), (N, *shape)), 'f4')
  kwargs.setdefault('labels', np.arange(N) % 3)
  return methods.Context(
    arch=arch,
    variables=variables,
    inputs=x,
    data_batch_size=12,  # two batches
    **kwargs,
  )


def _without(ctx, unit):
  """The model without `unit`, by surgery (not the skip mask)."""
  return surgery.apply(
    ctx.arch, ctx.variables, surgery.remove([unit]), enforce_floor=False
  )


def _forward(arch, variables, x, name):
  model = models.build_model(arch)
  out = models.representations(model, variables, x, [name])[name]
  return np.asarray(out, np.float64).reshape(len(x), -1)


# ---------------------------------------------------------------------------
# consensus
# ---------------------------------------------------------------------------


def _oracle_metric(name, x, y, labels):
  if name == 'cka':
    return 1.0 - cka64(x, y)
  if name.startswith('gaussian_stochastic_'):
    return gaussian_optima(x, y, labels, float(name[-1]))
  if name.startswith('linear_'):
    return linear_oracle(x, y, float(name[-1]))
  if name == 'permutation':
    return permutation_oracle(x, y)
  return wasserstein_oracle(x, y)


def _gaussian_tol(ref, cand, eps):
  """Tolerance of a Gaussian score against the float64 oracle's optima on
  the oracle's features: each feature is off by its relative error `eps`
  (two differently compiled float32 forwards) at the features' magnitude,
  plus one float32 rounding per entry (`gauss_atol`); see
  `tolerances.gaussian_shape_atol`."""
  width = max(ref.shape[1], cand.shape[1])
  errs = (eps * magnitude(ref), eps * magnitude(cand))
  return gaussian_shape_atol(width, *errs) + gauss_atol((ref, cand))


@pytest.mark.parametrize('net', sorted(NETS))
def test_metric_scores_equal_oracles_on_surgered_models(net):
  ctx = _context(net)
  got = consensus.metric_scores(ctx)
  assert list(got) == list(consensus.METRICS)
  ref = _forward(ctx.arch, ctx.variables, ctx.inputs, 'pooled')
  net = network_terms(ctx.variables['params'])
  eps = f32_atol(net[0], 1.0, net[1])
  for unit in ctx.arch.candidates:
    cand = _forward(*_without(ctx, unit), ctx.inputs, 'pooled')
    for name, scores in got.items():
      assert list(scores) == list(ctx.arch.candidates)
      want = _oracle_metric(name, ref, cand, ctx.labels)
      # Tolerances of tests/test_similarity.py, plus the relative float32
      # error `eps` of features from two differently compiled forwards
      # (the suite's rule, tests/tolerances.py): an angle between two
      # matrices moves by at most the relative change of each; CKA by
      # `cka_atol`; the Gaussian distances by `_gaussian_tol`.
      if name.startswith(('linear', 'permutation')):
        tol = dict(abs=ANGLE_ATOL + 2 * eps)
      elif name.startswith('gaussian'):
        # A local search: near the nearest float64 local optimum (the
        # oracle's, from the documented starts in both directions), not a
        # particular one.
        atol = _gaussian_tol(ref, cand, eps)
        assert_near_an_optimum(scores[unit], want, atol, (name, unit))
        continue
      elif name == 'cka':
        tol = dict(abs=cka_atol(*ref.shape, net))
      else:  # wasserstein: a mean of differences of data-scale values
        tol = dict(rel=f32_atol(ref.size) + 2 * eps)
      assert scores[unit] == pytest.approx(want, **tol), (name, unit)


def test_one_pass_of_representations_for_all_metrics(monkeypatch):
  calls = []
  original = scoring.candidate_representations

  def counting(*args, **kwargs):
    calls.append(kwargs.get('representation'))
    return original(*args, **kwargs)

  monkeypatch.setattr(scoring, 'candidate_representations', counting)
  decision = methods.get_method('consensus')(_context())
  assert calls == ['pooled']
  assert set(decision.diagnostics['metric_scores']) == set(consensus.METRICS)


def test_ranks_and_rank_sum_with_ties_by_hand():
  per_metric = {
    'm1': {'a': 1.0, 'b': 2.0, 'c': 2.0, 'd': 3.0},
    'm2': {'a': 5.0, 'b': 5.0, 'c': 5.0, 'd': 0.0},
    'm3': {'a': 0.5, 'b': 0.1, 'c': 0.9, 'd': 0.7},
  }
  # m1: a 1, b and c share 2 and 3 -> 2.5 each, d 4.
  # m2: d 1, a b c share 2, 3, 4 -> 3 each.
  # m3: b 1, a 2, d 3, c 4.
  assert consensus.ranks(per_metric['m1']) == {
    'a': 1.0,
    'b': 2.5,
    'c': 2.5,
    'd': 4.0,
  }
  assert consensus.ranks(per_metric['m2']) == {
    'a': 3.0,
    'b': 3.0,
    'c': 3.0,
    'd': 1.0,
  }
  assert consensus.rank_sum(per_metric) == {
    'a': 1 + 3 + 2,
    'b': 2.5 + 3 + 1,
    'c': 2.5 + 3 + 4,
    'd': 4 + 1 + 3,
  }
  weights = {'m1': 2.0, 'm2': 0.5, 'm3': 0.0}
  assert consensus.rank_sum(per_metric, weights) == {
    'a': 2 * 1 + 0.5 * 3,
    'b': 2 * 2.5 + 0.5 * 3,
    'c': 2 * 2.5 + 0.5 * 3,
    'd': 2 * 4 + 0.5 * 1,
  }


def test_equal_rank_sums_go_to_the_earliest_unit():
  arch = resnet.resnet_cifar(blocks_per_stage=(3, 3, 3), width=4)
  units = arch.candidates
  # Two metrics that reverse each other: every rank sum is len + 1.
  per_metric = {
    'up': {u: float(i) for i, u in enumerate(units)},
    'down': {u: float(-i) for i, u in enumerate(units)},
  }
  assert set(consensus.rank_sum(per_metric).values()) == {len(units) + 1.0}
  assert consensus.decide(arch, per_metric).edit.remove == (units[0],)


def test_constructed_scores_remove_the_stage3_winner(monkeypatch):
  # Three metrics, each with a different favourite that the other two rank
  # last; stage3_block01 is second in all three, so its rank sum (6) is the
  # lowest, though no metric ranks it first. The authors' ordering bug would
  # remove stage1_block01 (the first removable block) whatever the scores.
  arch = resnet.resnet_cifar(blocks_per_stage=(3, 3, 3), width=4)
  ctx = dataclasses.replace(
    _context(hparams={'metrics': 'm1,m2,m3'}),
    arch=arch,
    variables=models.init_variables(arch, 0, (8, 8, 3)),
  )
  units = list(ctx.arch.candidates)
  winner = 'stage3_block01'
  favourites = ['stage1_block02', 'stage2_block01', 'stage3_block02']
  others = [u for u in units if u != winner and u not in favourites]
  constructed = {}
  for m, fav in zip(('m1', 'm2', 'm3'), favourites, strict=True):
    last = [f for f in favourites if f != fav]
    order = [fav, winner, *others, *last]  # ascending
    constructed[m] = np.array([order.index(u) for u in units], float)

  for m, values in constructed.items():
    monkeypatch.setitem(
      consensus.METRICS,
      m,
      lambda ref, cands, labels, hp, v=values: np.asarray(v)[: len(cands)],
    )
  decision = methods.get_method('consensus')(ctx)
  assert decision.edit.remove == (winner,)
  assert decision.scores[winner] == 6.0
  assert min(decision.scores.values()) == 6.0
  assert list(decision.scores) == units  # keyed by unit id, network order
  for m in constructed:
    assert decision.diagnostics['metric_ranks'][m][winner] == 2.0


def test_weights_select_a_single_metric():
  ctx = _context(hparams={'metrics': 'cka,wasserstein', 'weights': '0,1'})
  decision = methods.get_method('consensus')(ctx)
  w = decision.diagnostics['metric_scores']['wasserstein']
  removable = ctx.arch.removable()
  assert decision.edit.remove == (min(removable, key=w.get),)


def test_labels_missing_names_the_metric():
  ctx = _context(labels=None)
  with pytest.raises(ValueError, match="'gaussian_stochastic_0' needs class"):
    consensus.metric_scores(ctx)
  # Without the label-needing metrics it works.
  ok = _context(labels=None, hparams={'metrics': 'cka,linear_1'})
  assert set(consensus.metric_scores(ok)) == {'cka', 'linear_1'}


def test_class_with_one_example_is_refused():
  labels = np.arange(N) % 3
  labels[5] = 7
  with pytest.raises(ValueError, match=r'classes \[7\] have fewer than 2'):
    consensus.metric_scores(_context(labels=labels))


def test_non_finite_features_raise_the_scorers_error():
  ctx = _context()
  x = ctx.inputs.copy()
  x[3] = np.nan
  ctx = dataclasses.replace(ctx, inputs=x)
  with pytest.raises(FloatingPointError, match='not finite'):
    consensus.metric_scores(ctx)


@pytest.mark.parametrize(
  'hparams, error, match',
  [
    ({'metrics': 'cka,nope'}, KeyError, 'nope'),
    ({'metrics': ''}, ValueError, 'at least one'),
    ({'metrics': 'cka,cka'}, ValueError, 'repeat'),
    ({'metrics': 'cka,linear_0', 'weights': '1'}, ValueError, '1 weights'),
    ({'metrics': 'cka', 'weights': '-1'}, ValueError, '>= 0'),
    ({'metrics': 'cka', 'weights': 'x'}, ValueError, 'numbers'),
  ],
)
def test_bad_hparams(hparams, error, match):
  with pytest.raises(error, match=match):
    consensus.metrics_and_weights(hparams)


def test_float64_similarity_step_agrees():
  ctx = _context(hparams={'metrics': 'cka,linear_0,gaussian_stochastic_1'})
  f32 = consensus.metric_scores(ctx)
  ctx64 = dataclasses.replace(ctx, similarity_dtype='float64')
  f64 = consensus.metric_scores(ctx64)
  ref = _forward(ctx.arch, ctx.variables, ctx.inputs, 'pooled')
  net = network_terms(ctx.variables['params'])
  eps = f32_atol(net[0], 1.0, net[1])
  for unit in ctx.arch.candidates:
    cand = _forward(*_without(ctx, unit), ctx.inputs, 'pooled')
    optima = gaussian_optima(ref, cand, ctx.labels, 1.0)
    atol = _gaussian_tol(ref, cand, eps)
    for scores in (f32, f64):
      value = scores['gaussian_stochastic_1'][unit]
      assert_near_an_optimum(value, optima, atol, unit)
  # The same float32 features: float32 against float64 computation, the
  # metrics' own float32 tolerances (tests/test_similarity.py).
  tol = {'cka': cka_atol(*ref.shape), 'linear_0': ANGLE_ATOL}
  for name, atol in tol.items():
    for unit in f32[name]:
      assert f64[name][unit] == pytest.approx(f32[name][unit], abs=atol)


# ---------------------------------------------------------------------------
# kl and angular
# ---------------------------------------------------------------------------


def _kl_oracle(ctx):
  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  logp = log_softmax(_forward(ctx.arch, ctx.variables, ctx.inputs, 'logits'))
  out = {}
  for unit in ctx.arch.candidates:
    logq = log_softmax(_forward(*_without(ctx, unit), ctx.inputs, 'logits'))
    out[unit] = float(np.mean(np.sum(np.exp(logp) * (logp - logq), -1)))
  return out


@pytest.mark.parametrize('net', sorted(NETS))
def test_kl_equals_float64_oracle_and_removes_the_lowest(net):
  ctx = _context(net, representation='pooled')  # kl always uses logits
  decision = methods.get_method('kl')(ctx)
  want = _kl_oracle(ctx)
  assert list(decision.scores) == list(ctx.arch.candidates)
  assert min(want.values()) > 1e-6
  # Logits off by tau (the suite's rule over the network, at the logits'
  # scale) in both forwards move KL(p || q) by at most 2 tau |q - p|_1 <=
  # 2 tau sqrt(2 KL) per example (first order; Pinsker), sqrt(2 mean KL)
  # on average (Jensen); tau² bounds the second order.
  terms, depth = network_terms(ctx.variables['params'])
  logits = _forward(ctx.arch, ctx.variables, ctx.inputs, 'logits')
  tau = f32_atol(terms, magnitude(logits), depth)
  for unit, value in want.items():
    atol = 2 * tau * np.sqrt(2 * value) + tau**2 + f32_atol(3)
    assert decision.scores[unit] == pytest.approx(value, abs=atol)
  assert decision.edit.remove == (min(ctx.arch.removable(), key=want.get),)


def _angular_oracle(ctx, eps):
  """Mean angle / π per unit, and its float32 error bound (`eps`: the
  features' relative error)."""
  io = _unit_io(ctx.arch, ctx.variables, ctx.inputs)
  out, bound = {}, {}
  for unit in ctx.arch.candidates:
    a, b = io[unit]
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1]).astype('f8')
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    angle = np.zeros(len(a))  # both zero: unchanged
    angle[(na > 0) != (nb > 0)] = np.pi / 2
    both = (na > 0) & (nb > 0)
    cos = (a[both] * b[both]).sum(1) / (na[both] * nb[both])
    angle[both] = np.arccos(np.clip(cos, -1, 1))
    out[unit] = float(np.mean(angle / np.pi))
    # Per position: the float32 cosine is off by c = f32_atol(d), which
    # arccos turns into at most min(c / sin θ, sqrt(2 c)) (the second near
    # θ = 0, where 1 - cos θ ≈ θ² / 2); the features themselves, from two
    # differently compiled forwards, each move θ by at most their relative
    # error `eps`.
    c = f32_atol(a.shape[1])
    sin = np.maximum(np.sin(angle), 1e-300)
    bound[unit] = float(
      np.mean(2 * eps + np.minimum(c / sin, np.sqrt(2 * c))) / np.pi
    )
  return out, bound


@pytest.mark.parametrize('net', sorted(NETS))
def test_angular_equals_float64_oracle_and_removes_the_lowest(net):
  ctx = _context(net)
  decision = methods.get_method('angular')(ctx)
  # The suite's float32 rule (tests/tolerances.py) over the network, then
  # per position as `_angular_oracle` states.
  terms, depth = network_terms(ctx.variables['params'])
  want, bound = _angular_oracle(ctx, f32_atol(terms, 1.0, depth))
  assert list(decision.scores) == list(ctx.arch.candidates)
  for unit, value in want.items():
    assert decision.scores[unit] == pytest.approx(value, abs=bound[unit])
  assert decision.edit.remove == (min(ctx.arch.removable(), key=want.get),)
