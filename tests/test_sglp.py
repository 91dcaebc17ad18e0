"""SGLP: Fisher segmentation against brute force, removal allocation,
GradNorm against jax.grad by hand, the one-call CKA matrix against pairwise
float64 CKA, the method on a ResNet and a ViT, and its report figure."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from oracles import cka64
from tolerances import cka_atol, f32_atol, network_terms

from lpjax import methods, models, report, surgery, train
from lpjax.methods import sglp
from lpjax.models import resnet, vit

# --- Fisher optimal segmentation ---------------------------------------------


def _sse(a, starts):
  """Total within-segment SSE, computed directly (two-pass, float64)."""
  bounds = [*starts, len(a)]
  return sum(
    float(np.sum((a[p:q] - np.mean(a[p:q])) ** 2))
    for p, q in itertools.pairwise(bounds)
  )


def _brute(a, k):
  """Every segmentation's SSE: {starts: sse}."""
  return {
    (0, *cuts): _sse(a, (0, *cuts))
    for cuts in itertools.combinations(range(1, len(a)), k - 1)
  }


_seq = st.lists(
  st.floats(-10, 10, allow_nan=False, width=64), min_size=1, max_size=12
)


@settings(max_examples=150, deadline=None)
@given(values=_seq, k=st.integers(1, 5), shift=st.floats(-1e3, 1e3))
def test_fisher_dp_equals_brute_force_and_ignores_offsets(values, k, shift):
  a = np.array(values)
  assume(k <= a.size)
  all_sse = _brute(a, k)
  best = min(all_sse.values())
  starts, cost = sglp.fisher_segmentation(a, k)
  # Sums of squares of values up to 10 over 12 terms: float64 rounding of
  # prefix sums is ~1e-16 * 12 * 100 * 12; 1e-9 absolute is far above it.
  tol = 1e-9 * (1 + float(np.sum(a * a)))
  assert len(starts) == k and starts[0] == 0
  assert list(starts) == sorted(set(starts))
  assert cost == pytest.approx(best, abs=tol)
  assert all_sse[tuple(starts)] == pytest.approx(best, abs=tol)
  # A constant offset leaves the boundaries where they are, unless the two
  # best segmentations are tied within rounding (the offset's own rounding
  # of ~1e-13 could then pick either).
  ranked = sorted(all_sse.values())
  assume(len(ranked) == 1 or ranked[1] - ranked[0] > 1e3 * tol)
  shifted, _ = sglp.fisher_segmentation(a + shift, k)
  assert shifted == starts


def test_fisher_dp_finds_obvious_steps_and_rejects_bad_k():
  a = [0.0, 0.1, 0.0, 5.0, 5.1, 5.0, 9.0, 9.2]
  assert sglp.fisher_segmentation(a, 3)[0] == [0, 3, 6]
  assert sglp.fisher_segmentation(a, 1) == (
    [0],
    pytest.approx(_sse(np.array(a), [0])),
  )
  # Three flat steps: K = 3 leaves 0.053 of K = 1's 111 (0.05 %).
  assert sglp.choose_num_segments(a, 0.001) == 3
  assert sglp.choose_num_segments([1.0] * 5, 0.1) == 1
  with pytest.raises(ValueError, match='num_segments'):
    sglp.fisher_segmentation(a, 9)
  with pytest.raises(ValueError, match='finite'):
    sglp.fisher_segmentation([0.0, np.nan], 1)


@settings(max_examples=60, deadline=None)
@given(values=_seq, frac=st.floats(0.0, 1.0))
def test_choose_num_segments_is_the_smallest_k_under_the_fraction(values, frac):
  a = np.array(values)
  total = min(_brute(a, 1).values())
  sse = {k: min(_brute(a, k).values()) for k in range(1, a.size + 1)}
  tol = 1e-9 * (1 + float(np.sum(a * a)))
  # Only where no K sits on the threshold within rounding.
  assume(all(abs(s - frac * total) > tol for s in sse.values()))
  want = min(k for k, s in sse.items() if s <= frac * total)
  assert sglp.choose_num_segments(a, frac) == want


# --- Removal allocation --------------------------------------------------------


def test_allocation_is_proportional_capped_and_complete():
  # 12 units, R = 4: shares 1, 1.67, 1.33 -> 1 + 2 + 1.
  assert sglp.allocate_removals([3, 5, 4], [2, 4, 3], 4) == [1, 2, 1]
  # R = 1 goes to the longest segment; equal remainders to the earlier.
  assert sglp.allocate_removals([3, 3, 2], [2, 2, 1], 1) == [1, 0, 0]
  # A full segment passes its share on.
  assert sglp.allocate_removals([6, 2], [1, 1], 2) == [1, 1]
  # More than the capacity: everything the capacity allows.
  assert sglp.allocate_removals([3, 3], [2, 1], 9) == [2, 1]
  assert sglp.allocate_removals([3, 3], [2, 2], 0) == [0, 0]


@settings(max_examples=200, deadline=None)
@given(
  lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
  data=st.data(),
)
def test_allocation_properties(lengths, data):
  capacity = [data.draw(st.integers(0, n - 1)) for n in lengths]
  total = data.draw(st.integers(0, sum(lengths)))
  quota = sglp.allocate_removals(lengths, capacity, total)
  assert sum(quota) == min(total, sum(capacity))
  assert all(0 <= q <= c for q, c in zip(quota, capacity))
  if all(c == n - 1 for c, n in zip(capacity, lengths)):
    # Uncapped by candidates: within one of the proportional share.
    for q, n in zip(quota, lengths):
      assert abs(q - total * n / sum(lengths)) < 1 + 1e-9 or q == n - 1


def test_selection_keeps_the_floor_and_a_unit_per_segment():
  arch = resnet.resnet_cifar(blocks_per_stage=(3, 3, 3), width=4)
  units = [b.name for b in arch.blocks]
  # stage1_block00 and the down-sampling stage2/3_block00 are not
  # candidates; the floor is 2 blocks per stage.
  segments = [units[:4], units[4:9]]
  importance = {u: float(i) for i, u in enumerate(reversed(units))}
  removed = sglp.select_removals(arch, segments, [2, 2], importance)
  # Segment 1: stage1_block02 (6) goes; stage1_block01 (7) would break the
  # floor. Segment 2: stage3_block02 (0) goes, stage3_block01 (1) would
  # break the floor, stage2_block02 (3) goes. Segment 1's unfilled quota
  # finds no unit the floor allows anywhere.
  assert removed == ['stage1_block02', 'stage2_block02', 'stage3_block02']
  assert set(removed) <= set(arch.candidates)
  small = arch.without(removed)  # raises if the floor is broken
  assert all(n >= 2 for n in small.blocks_per_stage)
  for seg in segments:
    assert any(u not in removed for u in seg)


# --- GradNorm ------------------------------------------------------------------


def _tiny_resnet():
  arch = resnet.resnet_cifar(blocks_per_stage=(2, 2, 2), width=4)
  variables = models.init_variables(arch, 0, (8, 8, 3))
  x = np.asarray(jax.random.normal(jax.random.key(1), (16, 8, 8, 3)))
  y = np.asarray(jax.random.randint(jax.random.key(2), (16,), 0, 10))
  return arch, variables, x, y


def _context(arch, variables, x, y, **kw):
  model = models.build_model(arch)
  loss = train.eval_loss_fn(model.apply, variables.get('batch_stats', {}))
  return methods.Context(arch, variables, x, y, loss_fn=loss, **kw)


def _hand_loss(arch, variables, x, y):
  model = models.build_model(arch)

  def loss(params):
    logits = model.apply({**variables, 'params': params}, x, train=False)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(logp[jnp.arange(len(y)), y])

  return loss


def test_gradnorm_equals_jax_grad_by_hand_and_dead_units_get_zero():
  arch, variables, x, y = _tiny_resnet()
  # stage1_block01 ends in relu(x + F(x)); a bias of -1e4 on its last
  # BatchNorm makes that relu zero everywhere: neither its parameters nor
  # stage1_block00's can change the loss. stage2_block00 then sees zeros;
  # a bias of 1 on its first BatchNorm keeps its output and the rest alive.
  params = jax.tree.map(lambda v: v, variables['params'])
  params['stage1_block01']['bn2']['bias'] = jnp.full((4,), -1e4)
  params['stage2_block00']['bn1']['bias'] = jnp.ones((8,))
  variables = {**variables, 'params': params}
  ctx = _context(arch, variables, x, y, data_batch_size=8)
  got = sglp.grad_norms(ctx)
  # By hand: the mean over the two batches of 8 of Σ_W ||∂L/∂W||₂.
  want = {}
  for b in arch.blocks:
    per_batch = []
    for s in (slice(0, 8), slice(8, 16)):
      g = jax.grad(_hand_loss(arch, variables, x[s], y[s]))(params)
      per_batch.append(
        sum(
          float(np.linalg.norm(np.asarray(t, np.float64).ravel()))
          for t in jax.tree.leaves(g[b.name])
        )
      )
    want[b.name] = np.mean(per_batch)
  assert got.keys() == want.keys()
  terms, depth = network_terms(variables['params'])
  rel = f32_atol(terms, 1.0, 2 * depth)
  dead = ['stage1_block00', 'stage1_block01']
  for u in got:
    if u in dead:
      assert got[u] == 0.0
    else:
      assert got[u] > 0
      # Same float32 program up to how cross-entropy is written: the suite's
      # rule over the forward and backward pass (twice the depth).
      assert got[u] == pytest.approx(want[u], rel=rel)


def test_output_gradnorm_of_the_last_unit_by_hand():
  arch, variables, x, y = _tiny_resnet()
  ctx = _context(arch, variables, x, y, data_batch_size=16)
  got = sglp.grad_norms(ctx, 'output')
  model = models.build_model(arch)
  last = arch.blocks[-1].name
  a = models.representations(model, variables, x, (last,))[last]
  logits = np.asarray(model.apply(variables, x, train=False), np.float64)
  # logits = mean_hw(A) @ W + b; L = mean_i CE: dL/dA[i, h, w, c] =
  # ((softmax_i - onehot_i) @ W^T)[c] / (n * H * W).
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(16), y] -= 1
  w = np.asarray(variables['params']['head']['kernel'], np.float64)
  per_pos = p @ w.T / (16 * a.shape[1] * a.shape[2])
  want = np.sqrt(a.shape[1] * a.shape[2]) * np.linalg.norm(per_pos)
  terms, depth = network_terms(variables['params'])
  assert got[last] == pytest.approx(want, rel=f32_atol(terms, 1.0, 2 * depth))
  assert all(v > 0 for v in got.values())


def _uhsic_terms(k, m):
  """The three terms of the unbiased HSIC (Song et al. 2012), in float64."""
  n = k.shape[0]
  k, m = k.copy(), m.copy()
  np.fill_diagonal(k, 0)
  np.fill_diagonal(m, 0)
  one = np.ones(n)
  scale = n * (n - 3)
  return (
    np.trace(k @ m) / scale,
    (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2)) / scale,
    -2 / (n - 2) * (one @ k @ m @ one) / scale,
  )


# --- CKA matrix ------------------------------------------------------------------


@pytest.mark.parametrize('net', ['resnet', 'vit'])
def test_cka_matrix_is_pairwise_cka_in_one_call(net):
  if net == 'resnet':
    arch, variables, x, _ = _tiny_resnet()
  else:
    arch = vit.vit(
      image_shape=(8, 8, 1), patch=4, width=8, depth=3, heads=2, mlp=16
    )
    variables = models.init_variables(arch, 0, (8, 8, 1))
    x = np.asarray(jax.random.normal(jax.random.key(3), (16, 8, 8, 1)))
  labels = sglp.representation_labels(arch)
  reps = models.representations(models.build_model(arch), variables, x, labels)
  flat = [np.asarray(reps[n], np.float64).reshape(16, -1) for n in labels]
  want = np.array([[cka64(a, b) for b in flat] for a in flat])
  full = sglp.unit_cka_matrix(
    arch, variables, x, estimator='full', data_batch_size=8
  )
  assert full.shape == (len(labels),) * 2
  # The suite's float32 rule: the CKA's own rounding over 16 rows of up to
  # d features; against the separate forwards, the network's as well.
  d = max(f.shape[1] for f in flat)
  own = cka_atol(16, d)
  np.testing.assert_allclose(full, full.T, rtol=0, atol=own)
  np.testing.assert_allclose(np.diag(full), 1.0, rtol=0, atol=own)
  net = network_terms(variables['params'])
  np.testing.assert_allclose(full, want, rtol=0, atol=cka_atol(16, d, net))
  # Minibatch CKA (Nguyen et al. 2021): per-batch unbiased HSIC, summed.
  mini = sglp.unit_cka_matrix(arch, variables, x, data_batch_size=8)

  def uhsic(k, m):
    return sum(_uhsic_terms(k, m))

  grams = [[f[s] @ f[s].T for s in (slice(0, 8), slice(8, 16))] for f in flat]
  h = np.array(
    [[sum(uhsic(a, b) for a, b in zip(gi, gj)) for gj in grams] for gi in grams]
  )
  want_mini = h / np.sqrt(np.outer(np.diag(h), np.diag(h)))
  # Unbiased HSIC on 8 rows cancels large terms: the rule's error is of the
  # terms' magnitude, `cancel` times that of the result.
  cancel = max(
    sum(abs(t) for t in _uhsic_terms(a, b)) / abs(sum(_uhsic_terms(a, b)))
    for gi in grams
    for gj in grams
    for a, b in zip(gi, gj)
  )
  own = cancel * cka_atol(8, d)
  np.testing.assert_allclose(mini, mini.T, rtol=0, atol=own)
  np.testing.assert_allclose(np.diag(mini), 1.0, rtol=0, atol=own)
  atol = cancel * cka_atol(8, d, net)
  np.testing.assert_allclose(mini, want_mini, rtol=0, atol=atol)


# --- The method ------------------------------------------------------------------


def test_one_shot_on_a_resnet_removes_per_segment_by_gradnorm():
  arch = resnet.resnet_cifar(blocks_per_stage=(4, 4, 4), width=4)
  variables = models.init_variables(arch, 0, (8, 8, 3))
  x = np.asarray(jax.random.normal(jax.random.key(1), (32, 8, 8, 3)))
  y = np.asarray(jax.random.randint(jax.random.key(2), (32,), 0, 10))
  hp = {'mode': 'one_shot', 'num_remove': 4, 'num_segments': 3}
  ctx = _context(arch, variables, x, y, hparams=hp, data_batch_size=16)
  d = methods.get_method('sglp')(ctx)
  diag = d.diagnostics
  json.dumps(diag)  # JSON-able as recorded in results.json
  removed = list(d.edit.remove)
  assert len(removed) == 4 and diag['removed'] == removed
  assert diag['num_segments'] == 3 and sum(diag['quota']) == 4
  assert [u for s in diag['segments'] for u in s] == [
    b.name for b in arch.blocks
  ]
  small, _ = surgery.apply(arch, variables, d.edit)  # floor kept
  assert len(small.blocks) == len(arch.blocks) - 4
  for seg, q in zip(diag['segments'], diag['quota']):
    gone = [u for u in seg if u in removed]
    assert len(gone) == q and len(gone) < len(seg)
    # Within a segment, the removed have the smallest GradNorms among its
    # candidates whose removal the floor allowed.
    kept = [u for u in seg if arch.is_candidate(u) and u not in removed]
    g = diag['grad_norms']
    if (
      gone
      and kept
      and all(n > 2 for n in arch.without(removed).blocks_per_stage)
    ):
      assert max(g[u] for u in gone) <= min(g[u] for u in kept)
  assert d.scores == {u: diag['grad_norms'][u] for u in arch.candidates}
  # Iterative: one unit per call. A zero SSE fraction asks for K = L
  # segments of one unit each; K is capped at L - 1 so one can give.
  hp = {'sse_fraction': 0.0}
  ctx = _context(arch, variables, x, y, hparams=hp, data_batch_size=16)
  d = methods.get_method('sglp')(ctx)
  assert len(d.edit.remove) == 1
  assert d.diagnostics['num_segments'] == len(arch.blocks) - 1


def test_iterative_on_a_vit():
  arch = vit.vit(
    image_shape=(8, 8, 1), patch=4, width=8, depth=4, heads=2, mlp=16
  )
  variables = models.init_variables(arch, 0, (8, 8, 1))
  x = np.asarray(jax.random.normal(jax.random.key(3), (16, 8, 8, 1)))
  y = np.asarray(jax.random.randint(jax.random.key(4), (16,), 0, 10))
  ctx = _context(arch, variables, x, y, data_batch_size=8)
  d = methods.get_method('sglp')(ctx)
  assert len(d.edit.remove) == 1
  seg = next(s for s in d.diagnostics['segments'] if d.edit.remove[0] in s)
  assert len(seg) > 1
  g = d.diagnostics['grad_norms']
  assert g[d.edit.remove[0]] == min(g[u] for u in seg)


def test_one_shot_needs_a_target():
  arch = resnet.resnet_cifar(blocks_per_stage=(2, 2, 2), width=4)
  record = methods.get_method('sglp')
  with pytest.raises(ValueError, match='one_shot'):
    record.complete({'mode': 'one_shot'})
  with pytest.raises(ValueError, match='mode'):
    record.complete({'mode': 'both'})
  hp = record.complete({'mode': 'one_shot', 'removal_ratio': 0.5})
  assert sglp.num_to_remove(arch, hp) == 3  # round(0.5 * 6 units)
  assert sglp.num_to_remove(arch, record.complete({})) == 1


# --- Report ------------------------------------------------------------------------


def test_report_draws_the_sglp_figure(tmp_path):
  labels = ['stem', 'u0', 'u1', 'u2']
  diag = {
    'cka_labels': labels,
    'cka_matrix': np.eye(4).tolist(),
    'segments': [['u0'], ['u1', 'u2']],
    'grad_norms': {'u0': 1.0, 'u1': 0.5, 'u2': 2.0},
    'removed': ['u1'],
  }
  path = report.plot_sglp(diag, tmp_path / 'sglp.png')
  assert path.stat().st_size > 1000
  with pytest.raises(ValueError, match='cka_matrix'):
    report.plot_sglp({}, tmp_path / 'x.png')
