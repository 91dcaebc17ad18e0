"""Tests for `lpjax.cka` against an independent float64 NumPy oracle.

The oracle below is written from the papers' formulas, not from the module:
HSIC with the explicit centering matrix `H = I - 11ᵀ/n` (Gretton et al.,
2005), the unbiased HSIC of Song et al. (2012, eq. 5) term by term, and the
RBF kernel with the median-distance bandwidth (Kornblith et al., 2019; the
median is taken over pairs of distinct rows, as `lpjax.cka.gram_rbf`
documents).
"""

import functools
import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from tolerances import assert_f32_close, cka_atol, f32_atol

from lpjax import cka

REPO_ROOT = Path(__file__).resolve().parents[1]
X64 = functools.partial(jax.enable_x64, True)
F64_TOL = 1e-6
EPS32 = float(np.finfo(np.float32).eps)
SCALE_EXPONENTS = (-30, -20, -10, 10, 20, 30)

# Module-level jitted entry points: compiles are shared between tests that
# use the same shapes (eager first calls cost ~3x a jit compile).
jit_linear = jax.jit(cka.linear_cka, static_argnames=('debiased', 'form'))
jit_rbf = jax.jit(cka.rbf_cka, static_argnames=('debiased', 'sigma_frac'))
jit_many = jax.jit(cka.linear_cka_one_to_many, static_argnames=('debiased',))

# ---------------------------------------------------------------------------
# Oracle (float64 NumPy, from the formulas).
# ---------------------------------------------------------------------------


def np_hsic_biased(k, l):  # noqa: E741
  n = k.shape[0]
  h = np.eye(n) - np.ones((n, n)) / n
  return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def np_hsic_unbiased(k, l):  # noqa: E741
  """Song et al. (2012), eq. 5."""
  n = k.shape[0]
  kt = k.copy()
  lt = l.copy()
  np.fill_diagonal(kt, 0.0)
  np.fill_diagonal(lt, 0.0)
  one = np.ones(n)
  term1 = np.trace(kt @ lt)
  term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
  term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
  return (term1 + term2 - term3) / (n * (n - 3))


def np_gram_linear(x):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return x @ x.T


def np_gram_rbf(x, sigma_frac=0.8):
  """RBF kernel, bandwidth from the median distance between distinct rows.

  NaN for a constant input (no distinct pair).
  """
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  d2 = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
  dist = np.sqrt(d2[np.triu_indices(len(x), 1)])
  if not np.any(dist > 0):
    return np.full_like(d2, np.nan)
  median = np.median(dist[dist > 0])
  return np.exp(-d2 / (2 * (sigma_frac * median) ** 2))


def np_cka(k, l, unbiased=False):  # noqa: E741
  h = np_hsic_unbiased if unbiased else np_hsic_biased
  return h(k, l) / np.sqrt(h(k, k) * h(l, l))


def np_center_columns(x):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return x - x.mean(axis=0)


def np_linear_cka(x, y, unbiased=False, center=True):
  """Linear CKA from Gram matrices; `center` translates the features first.

  Both estimators are invariant to translating the features (`H` removes
  it; the U-statistic only sees differences), which
  `test_oracle_translation_invariance` checks on the raw formulas. Centering
  first only keeps the float64 oracle accurate when a large offset makes
  `K`'s entries huge (1e4 x the signal for the ReLU + 100 data).
  """
  if center:
    x, y = np_center_columns(x), np_center_columns(y)
  return np_cka(np_gram_linear(x), np_gram_linear(y), unbiased)


def np_rbf_cka(x, y, unbiased=False, sigma_frac=0.8):
  return np_cka(
    np_gram_rbf(x, sigma_frac), np_gram_rbf(y, sigma_frac), unbiased
  )


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------

KINDS = ('gaussian', 'low_rank', 'student_t', 'relu_offset')


def make_pair(kind, n, dx, dy, seed=0):
  """Two correlated representations `[n, dx]`, `[n, dy]` (float64)."""
  rng = np.random.default_rng(seed)
  if kind == 'low_rank':
    z = rng.normal(size=(n, 3)) @ rng.normal(size=(3, dx))
  elif kind == 'student_t':
    z = rng.standard_t(df=3, size=(n, dx))
  else:
    z = rng.normal(size=(n, dx))
  w = rng.normal(size=(dx, dy)) / np.sqrt(dx)
  noise = rng.normal(size=(n, dy))
  if kind == 'student_t':
    noise = rng.standard_t(df=3, size=(n, dy))
  u = z @ w + 0.7 * noise
  if kind == 'relu_offset':  # ReLU features riding on a large common offset.
    return np.maximum(z, 0) + 100.0, np.maximum(u, 0) + 100.0
  return z, u


SHAPES = (
  (40, 7, 13),  # n > d: feature space.
  (30, 50, 80),  # n < d: Gram form.
  (400, 300, 800),  # Gram form in 2 x 2 symmetric blocks.
  (600, 520, 30),  # Feature space, 2 x 2 symmetric column blocks.
)

# ---------------------------------------------------------------------------
# 2. Agreement with the oracle.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('debiased', [False, True])
def test_linear_cka_matches_oracle(kind, shape, debiased):
  x, y = make_pair(kind, *shape)
  expected = np_linear_cka(x, y, debiased)
  with X64():
    got64 = float(jit_linear(x, y, debiased=debiased))
  x32, y32 = x.astype(np.float32), y.astype(np.float32)
  expected32 = np_linear_cka(x32, y32, debiased)
  got32 = jit_linear(x32, y32, debiased=debiased)
  assert got32.dtype == jnp.float32
  assert abs(got64 - expected) < F64_TOL
  assert abs(float(got32) - expected32) <= cka_atol(shape[0], max(shape[1:]))


@pytest.mark.parametrize('unbiased', [False, True])
def test_oracle_translation_invariance(unbiased):
  x, y = make_pair('gaussian', 30, 5, 40, seed=16)
  raw = np_linear_cka(x + 3.0, y - 2.0, unbiased, center=False)
  assert raw == pytest.approx(np_linear_cka(x, y, unbiased), abs=1e-12)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('debiased', [False, True])
def test_rbf_cka_matches_oracle(kind, debiased):
  x, y = make_pair(kind, 50, 6, 9, seed=1)
  expected = np_rbf_cka(x, y, debiased, sigma_frac=0.8)
  with X64():
    got64 = float(jit_rbf(x, y, debiased=debiased))
  x32, y32 = x.astype(np.float32), y.astype(np.float32)
  got32 = float(jit_rbf(x32, y32, debiased=debiased))
  assert abs(got64 - expected) < F64_TOL
  # RBF: each HSIC sums n² kernel products.
  assert abs(got32 - np_rbf_cka(x32, y32, debiased)) <= cka_atol(50, 50)


@pytest.mark.parametrize('unbiased', [False, True])
def test_hsic_center_gram_and_kernels_match_oracle(unbiased):
  x, y = make_pair('gaussian', 25, 4, 6, seed=2)

  @jax.jit
  def run(x, y):
    k, l = cka.gram_linear(x), cka.gram_linear(y)  # noqa: E741
    return dict(
      k=k,
      rbf=cka.gram_rbf(x, sigma_frac=0.5),
      hsic=cka.hsic(k, l, unbiased=unbiased),
      centered=cka.center_gram(k, unbiased=unbiased),
      centered_l=cka.center_gram(l, unbiased=unbiased),
    )

  with X64():
    got = jax.device_get(run(x, y))
  k, l = np_gram_linear(x), np_gram_linear(y)  # noqa: E741
  np.testing.assert_allclose(got['k'], k, rtol=1e-12)
  np.testing.assert_allclose(got['rbf'], np_gram_rbf(x, 0.5), rtol=1e-10)
  h = np_hsic_unbiased if unbiased else np_hsic_biased
  assert got['hsic'] == pytest.approx(h(k, l), rel=1e-10)
  if not unbiased:
    hm = np.eye(25) - 1 / 25
    np.testing.assert_allclose(got['centered'], hm @ k @ hm, atol=1e-10)
  else:  # <U(K), U(L)> / (n(n-3)) is Song's estimator.
    inner = np.sum(got['centered'] * got['centered_l'])
    assert inner / (25 * 22) == pytest.approx(h(k, l), rel=1e-10)


# ---------------------------------------------------------------------------
# 3. Invariants (hypothesis over shapes).
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames='debiased')
def _invariant_values(x, y, q, perm, shift, *, debiased):
  """CKA of `y` against transformed copies of `x`, and the other checks."""
  f = functools.partial(cka.linear_cka, debiased=debiased)
  variants = jnp.stack([x, x @ q, 3.7 * x, x[:, perm], x + shift])
  return dict(
    transformed=jax.vmap(lambda a: f(a, y))(variants),
    yx=f(y, x),
    xx=f(x, x),
    feature=f(x, y, form='feature'),
    gram=f(x, y, form='gram'),
  )


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  n=st.integers(4, 512),
  dx=st.integers(1, 300),
  dy=st.integers(1, 300),
  debiased=st.booleans(),
  seed=st.integers(0, 2**32 - 1),
)
def test_invariants_hold_over_random_shapes(n, dx, dy, debiased, seed):
  """Self = 1, symmetry, range, feature = Gram, and the invariances.

  Invariances: orthogonal transform, isotropic scaling, feature permutation
  and adding a constant to `x` (`y` is left as is; by symmetry that covers
  transforming either input). One jitted call per example (every check
  shares its compile, since each new shape is a new compile); float64.
  """
  rng = np.random.default_rng(seed)
  x, y = make_pair('gaussian', n, dx, dy, seed)
  q = np.linalg.qr(rng.normal(size=(dx, dx)))[0]
  perm = rng.permutation(dx)
  shift = rng.normal(size=dx) * 50.0
  with X64():
    v = _invariant_values(x, y, q, perm, shift, debiased=debiased)
    v = jax.device_get(v)
  t = v['transformed']
  np.testing.assert_allclose(t, t[0], atol=1e-9, err_msg='invariance')
  assert v['yx'] == pytest.approx(t[0], abs=1e-10)
  assert v['xx'] == pytest.approx(1.0, abs=1e-10)
  assert v['feature'] == pytest.approx(v['gram'], abs=1e-10)
  assert v['feature'] == pytest.approx(t[0], abs=1e-10)
  if not debiased:
    assert -1e-12 <= t[0] <= 1 + 1e-12


@pytest.mark.parametrize(
  'plan',
  [
    cka._Plan('feature', 'feature', 'feature'),
    cka._Plan('blocks', 'blocks', 'blocks'),
    cka._Plan('gram', 'feature', 'gram_x'),
    cka._Plan('feature', 'gram', 'gram_y'),
    cka._Plan('blocks', 'feature', 'feature'),
    cka._Plan('feature', 'blocks', 'feature'),
  ],
)
def test_every_computation_plan_agrees(monkeypatch, plan):
  """Each feature/Gram combination the cost model may pick is exact."""
  # Large enough for 2 x 2 blocks in both forms (n >= 400, d >= 512).
  x, y = make_pair('gaussian', 400, 520, 530, seed=3)
  monkeypatch.setattr(cka, '_plan', lambda *a, **k: plan)

  @jax.jit  # A fresh function: the patched plan is not in any jit cache.
  def run(x, y):
    return [
      (
        cka.linear_cka(x, y, debiased=debiased),
        cka.linear_cka_one_to_many(x, jnp.stack([y, 2 * y]), debiased=debiased),
      )
      for debiased in (False, True)
    ]

  with X64():
    got = jax.device_get(run(x, y))
  for debiased, (single, many) in zip((False, True), got):
    expected = np_linear_cka(x, y, debiased)
    assert single == pytest.approx(expected, abs=1e-10)
    np.testing.assert_allclose(many, expected, atol=1e-10)


def test_cost_model_picks_feature_space_when_n_is_large():
  assert cka._plan(10_000, 64, 64, 1, 'auto').x == 'feature'
  assert cka._plan(500, 4096, 4096, 1, 'auto').x == 'blocks'


# ---------------------------------------------------------------------------
# 4. Minibatch CKA and CKA matrices.
# ---------------------------------------------------------------------------


def _np_minibatch_cka(xs_batches, ys_batches):
  """Nguyen et al. (2021): Σ_b HSIC₁ / sqrt(Σ_b HSIC₁ · Σ_b HSIC₁)."""
  p, q = len(xs_batches), len(ys_batches)
  nb = xs_batches[0].shape[0]
  kx = [[np_gram_linear(a[b]) for b in range(nb)] for a in xs_batches]
  ly = [[np_gram_linear(a[b]) for b in range(nb)] for a in ys_batches]
  out = np.zeros((p, q))
  for i in range(p):
    for j in range(q):
      xy = sum(np_hsic_unbiased(kx[i][b], ly[j][b]) for b in range(nb))
      xx = sum(np_hsic_unbiased(kx[i][b], kx[i][b]) for b in range(nb))
      yy = sum(np_hsic_unbiased(ly[j][b], ly[j][b]) for b in range(nb))
      out[i, j] = xy / np.sqrt(xx * yy)
  return out


def _layers(n, widths, seed):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, 8))
  return [
    base @ rng.normal(size=(8, w)) + rng.normal(size=(n, w)) for w in widths
  ]


def test_minibatch_single_batch_equals_full_batch_debiased_cka():
  xs = _layers(64, (5, 40, 90), seed=4)
  ys = _layers(64, (7, 70), seed=5)

  @jax.jit
  def run(xs, ys):
    state = cka.minibatch_cka_init(3, 2, dtype=jnp.float64)
    got = cka.minibatch_cka_result(cka.minibatch_cka_update(state, xs, ys))
    full = [[cka.linear_cka(a, b, debiased=True) for b in ys] for a in xs]
    return got, jnp.array(full)

  with X64():
    got, full = jax.device_get(run(xs, ys))
  np.testing.assert_allclose(got, full, atol=1e-10)
  oracle = [[np_linear_cka(a, b, True) for b in ys] for a in xs]
  np.testing.assert_allclose(full, oracle, atol=F64_TOL)


@pytest.mark.parametrize('form', ['auto', 'feature', 'gram'])
def test_minibatch_under_jit_and_scan_equals_batchwise_oracle(form):
  """Several batches covering the data.

  The exact identity that holds is the ratio of SUMS of per-batch unbiased
  HSICs (cross-batch pairs are never formed), so that is the oracle; it is
  not the full-data debiased CKA, which the test also checks it differs from.
  """
  nb, b = 4, 24
  xs = [a.reshape(nb, b, -1) for a in _layers(nb * b, (3, 33), seed=6)]
  ys = [a.reshape(nb, b, -1) for a in _layers(nb * b, (5, 12, 60), seed=7)]
  expected = _np_minibatch_cka(xs, ys)

  @jax.jit
  def run(xs, ys):
    def step(state, batch):
      return cka.minibatch_cka_update(state, *batch, form=form), None

    init = cka.minibatch_cka_init(2, 3, dtype=jnp.float64)
    state, _ = jax.lax.scan(step, init, (xs, ys))
    return cka.minibatch_cka_result(state), state.num_batches

  with X64():
    got, count = run(xs, ys)
    full = cka.linear_cka(xs[1].reshape(nb * b, -1), ys[2].reshape(nb * b, -1))
  assert int(count) == nb
  np.testing.assert_allclose(got, expected, atol=F64_TOL)
  assert abs(float(full) - expected[1, 2]) > 1e-4


def test_minibatch_matrix_self_comparison():
  reps = [a.reshape(3, 20, -1) for a in _layers(60, (4, 30, 9), seed=8)]

  @jax.jit
  def both(reps):
    explicit = cka.minibatch_cka_init(3, dtype=jnp.float64)
    for i in range(3):
      batch = [r[i] for r in reps]
      explicit = cka.minibatch_cka_update(explicit, batch, batch)
    return cka.minibatch_cka_matrix(reps), cka.minibatch_cka_result(explicit)

  with X64():
    got, explicit = jax.device_get(both(reps))
  np.testing.assert_allclose(got, _np_minibatch_cka(reps, reps), atol=F64_TOL)
  np.testing.assert_allclose(got, explicit, atol=1e-12)


@pytest.mark.parametrize('debiased', [False, True])
def test_cka_matrix_equals_pairwise_calls(debiased):
  """5 representations of different widths, every form, vs pairwise calls."""
  reps = _layers(50, (1, 6, 20, 64, 130), seed=9)

  @jax.jit
  def run(reps):
    f = functools.partial(cka.cka_matrix, debiased=debiased)
    pairwise = [
      [jit_linear(a, b, debiased=debiased) for b in reps] for a in reps
    ]
    forms = {form: f(reps, form=form) for form in ('auto', 'feature', 'gram')}
    return forms, jnp.array(pairwise)

  with X64():
    forms, pairwise = jax.device_get(run(reps))
  oracle = [[np_linear_cka(a, b, debiased) for b in reps] for a in reps]
  np.testing.assert_allclose(pairwise, oracle, atol=F64_TOL)
  for form, got in forms.items():
    np.testing.assert_allclose(got, pairwise, atol=1e-10, err_msg=form)
    np.testing.assert_allclose(got, got.T, atol=1e-12, err_msg=form)


# ---------------------------------------------------------------------------
# 5. jit / no-jit variants and vmap.
# ---------------------------------------------------------------------------


class VariantsTest(chex.TestCase):
  """The same values with and without `jit`, against the oracle."""

  TOL = cka_atol(40, 50)  # 40 rows, up to 50 features or 40 Gram columns

  def setUp(self):
    super().setUp()
    self.x, self.y = make_pair('relu_offset', 40, 6, 50, seed=10)
    self.x = self.x.astype(np.float32)
    self.y = self.y.astype(np.float32)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(False, True)
  def test_linear_and_rbf(self, debiased):
    lin = self.variant(functools.partial(cka.linear_cka, debiased=debiased))
    rbf = self.variant(functools.partial(cka.rbf_cka, debiased=debiased))
    x, y = self.x, self.y
    self.assertAlmostEqual(
      float(lin(x, y)), np_linear_cka(x, y, debiased), delta=self.TOL
    )
    self.assertAlmostEqual(
      float(rbf(x, y)), np_rbf_cka(x, y, debiased), delta=self.TOL
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_to_many_and_matrix(self):
    cands = np.stack([self.y, self.y**2, np.sqrt(self.y)])
    many = self.variant(cka.linear_cka_one_to_many)(self.x[:, :5], cands)
    expected = [np_linear_cka(self.x[:, :5], c) for c in cands]
    np.testing.assert_allclose(many, expected, atol=self.TOL)
    mat = self.variant(cka.cka_matrix)([self.x, self.y])
    self.assertAlmostEqual(
      float(mat[0, 1]), np_linear_cka(self.x, self.y), delta=self.TOL
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_hsic_and_minibatch(self):
    # Kernels of raw features with a large offset lose float32 precision in
    # K itself (see `hsic`), so this uses offset-free features.
    x, y = make_pair('gaussian', 40, 6, 50, seed=10)
    k, l = np_gram_linear(x), np_gram_linear(y)  # noqa: E741
    got = self.variant(functools.partial(cka.hsic, unbiased=True))(k, l)
    self.assertAlmostEqual(
      float(got) / np_hsic_unbiased(k, l), 1.0, delta=self.TOL
    )

    def mb(xs, ys):
      state = cka.minibatch_cka_init(1, 1)
      return cka.minibatch_cka_result(cka.minibatch_cka_update(state, xs, ys))

    got = self.variant(mb)([self.x], [self.y])
    self.assertAlmostEqual(
      float(got[0, 0]), np_linear_cka(self.x, self.y, True), delta=self.TOL
    )


@pytest.mark.parametrize('debiased', [False, True])
def test_vmap_over_27_candidates_and_one_to_many_equal_the_loop(debiased):
  rng = np.random.default_rng(11)
  ref = rng.normal(size=(80, 16)).astype(np.float32)
  cands = (
    ref[None] @ rng.normal(size=(27, 16, 24))
    + rng.normal(size=(27, 80, 24)) * rng.uniform(0.1, 3, size=(27, 1, 1))
  ).astype(np.float32)
  f = functools.partial(cka.linear_cka, debiased=debiased)
  loop = np.array([float(f(ref, c)) for c in cands])
  oracle = np.array([np_linear_cka(ref, c, debiased) for c in cands])
  vmapped = jax.jit(jax.vmap(f, in_axes=(None, 0)))(ref, cands)
  many = jax.jit(
    functools.partial(cka.linear_cka_one_to_many, debiased=debiased)
  )(ref, cands)
  np.testing.assert_allclose(loop, oracle, atol=cka_atol(80, 24))
  # Two float32 evaluations in different orders: each is within `cka_atol`
  # of the oracle.
  np.testing.assert_allclose(vmapped, loop, atol=2 * cka_atol(80, 24))
  np.testing.assert_allclose(many, loop, atol=2 * cka_atol(80, 24))
  assert np.ptp(loop) > 0.1  # The candidates really differ.


@pytest.mark.parametrize(
  'setting, value',
  [('_CHUNK_BYTES', 1), ('_SEQUENTIAL_MACS', 0)],
  ids=['vmap_in_chunks_of_1', 'one_at_a_time'],
)
def test_one_to_many_loop_strategies(monkeypatch, setting, value):
  monkeypatch.setattr(cka, setting, value)
  rng = np.random.default_rng(12)
  ref = rng.normal(size=(30, 4)).astype(np.float32)
  cands = rng.normal(size=(5, 30, 3)).astype(np.float32)
  fresh = jax.jit(lambda r, c: cka.linear_cka_one_to_many(r, c))
  np.testing.assert_allclose(
    fresh(ref, cands),
    [np_linear_cka(ref, c) for c in cands],
    atol=cka_atol(30, 4),
  )


def test_vmap_of_every_function_equals_the_loop():
  rng = np.random.default_rng(13)
  xs = rng.normal(size=(3, 12, 5)).astype(np.float32)
  ys = rng.normal(size=(3, 12, 7)).astype(np.float32)
  fns = {
    'linear': cka.linear_cka,
    'rbf': cka.rbf_cka,
    'hsic': lambda a, b: cka.hsic(cka.gram_linear(a), cka.gram_rbf(b)),
    'center': lambda a, b: cka.center_gram(cka.gram_linear(a), unbiased=True),
    'matrix': lambda a, b: cka.cka_matrix([a, b]),
    'many': lambda a, b: cka.linear_cka_one_to_many(a, b[None]),
  }

  def every(a, b):
    return {name: fn(a, b) for name, fn in fns.items()}

  batched = jax.jit(jax.vmap(every))(xs, ys)
  loop = jax.jit(lambda xs, ys: [every(a, b) for a, b in zip(xs, ys)])(xs, ys)
  for name in fns:
    want = np.stack([r[name] for r in loop])
    # The suite's float32 rule: 12 rows of up to 7 features.
    assert_f32_close(batched[name], want, terms=12 * 7, err_msg=name)


def test_dtypes():
  x, y = make_pair('gaussian', 10, 3, 4)

  def dtype(a, b):
    return jax.eval_shape(cka.linear_cka, a, b).dtype

  assert dtype(x, y) == jnp.float32  # x64 off: float32.
  assert dtype(x.astype(np.int32), y) == jnp.float32
  assert dtype(jnp.asarray(x, jnp.bfloat16), y) == jnp.float32
  with X64():
    assert dtype(x, y) == jnp.float64
    assert dtype(x.astype(np.float32), y.astype(np.float32)) == jnp.float32


# ---------------------------------------------------------------------------
# 6. Numerics at scale.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('debiased', [False, True])
def test_float32_at_scale_with_large_offset(debiased):
  """n = 50,000, d = 64, mean 10, std 0.1, correlated (CKA far from 1).

  The oracle is the feature-space formula in float64 with two-pass centering
  (the n x n H-matrix form is infeasible at this n; the two are shown equal
  at small n by `test_linear_cka_matches_oracle`).
  """
  rng = np.random.default_rng(14)
  n, d = 50_000, 64
  z = rng.normal(size=(n, d))
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  x = (10.0 + 0.1 * z).astype(np.float32)
  y = (10.0 + 0.1 * (0.6 * z @ mix + 0.8 * rng.normal(size=(n, d)))).astype(
    np.float32
  )
  xc = x.astype(np.float64)
  yc = y.astype(np.float64)
  xc -= xc.mean(0)
  yc -= yc.mean(0)

  def h(a, b):
    t = np.sum((a.T @ b) ** 2)
    if not debiased:
      return t
    ka, kb = np.sum(a * a, 1), np.sum(b * b, 1)
    return t - n / (n - 2) * ka @ kb + ka.sum() * kb.sum() / ((n - 1) * (n - 2))

  expected = h(xc, yc) / np.sqrt(h(xc, xc) * h(yc, yc))
  assert 0.1 < expected < 0.9
  f = jax.jit(functools.partial(cka.linear_cka, debiased=debiased))
  got = f(x, y)
  assert got.dtype == jnp.float32
  # Centring entries of magnitude 10 to a spread of 0.1 leaves each off by
  # eps · 10, a relative error 100 eps of the signal: the suite's float32
  # rule with scale 100 (the rest averages over the n d entries). A one-pass
  # E[x²] − E[x]² centring would be off by ~(10 / 0.1)² eps = 1e-3.
  tol = f32_atol(1, scale=10.0 / 0.1)
  assert abs(float(got) - expected) <= tol
  many = jax.jit(cka.linear_cka_one_to_many)(x, y[None])
  if not debiased:
    assert abs(float(many[0]) - expected) <= tol


def _scale_bundle(x, y, nb):
  """Every public CKA function on `(x, y)`, both estimators and forms.

  `y` is the candidate of `linear_cka_one_to_many`; the minibatch functions
  (always unbiased) see `x` and `y` split into `nb` batches.
  """
  out = {}
  for deb in (False, True):
    for form in ('auto', 'feature', 'gram'):
      f = functools.partial(cka.linear_cka, debiased=deb, form=form)
      out[f'linear_{form}_{deb}'] = f(x, y)
    out[f'rbf_{deb}'] = cka.rbf_cka(x, y, debiased=deb)
    many = cka.linear_cka_one_to_many(x, y[None], debiased=deb)
    out[f'one_to_many_{deb}'] = many[0]
    out[f'matrix_{deb}'] = cka.cka_matrix([x, y], debiased=deb)[0, 1]
  xb, yb = x.reshape(nb, -1, x.shape[1]), y.reshape(nb, -1, y.shape[1])
  out['minibatch_matrix'] = cka.minibatch_cka_matrix([xb, yb])[0, 1]
  state = cka.minibatch_cka_init(1, 1)
  for i in range(nb):
    state = cka.minibatch_cka_update(state, [xb[i]], [yb[i]])
  out['minibatch_update'] = cka.minibatch_cka_result(state)[0, 0]
  return out


_jit_scale_bundle = jax.jit(_scale_bundle, static_argnums=2)


@pytest.mark.parametrize('side', ['x', 'y'])
@pytest.mark.parametrize('mode', ['jit', 'eager'])
def test_scaling_either_input_by_powers_of_ten_changes_nothing(side, mode):
  """x·10^k for k = ±10, ±20, ±30 gives the unit-scale CKA in float32.

  Every public CKA function, both estimators, the feature and Gram forms,
  against the float64 oracle of the unscaled float32 data (`cka_atol`).
  ReLU features on an offset of 100, so `x·1e30` is near 1e32: its second
  moments overflow float32 and `x·1e-30`'s underflow unless the functions
  rescale first. `validate` passes the scaled inputs too.
  """
  n, nb = 200, 4
  x, y = make_pair('relu_offset', n, 12, 20, seed=20)
  x, y = x.astype(np.float32), y.astype(np.float32)
  expected = {}
  for deb in (False, True):
    lin, rbf = np_linear_cka(x, y, deb), np_rbf_cka(x, y, deb)
    for form in ('auto', 'feature', 'gram'):
      expected[f'linear_{form}_{deb}'] = lin
    expected[f'rbf_{deb}'] = rbf
    expected[f'one_to_many_{deb}'] = expected[f'matrix_{deb}'] = lin
  mb = _np_minibatch_cka([x.reshape(nb, -1, 12)], [y.reshape(nb, -1, 20)])
  expected['minibatch_matrix'] = expected['minibatch_update'] = mb[0, 0]
  run = _jit_scale_bundle if mode == 'jit' else _scale_bundle
  # Eagerly (op by op, each dispatch slow) at the two extremes; jitted at
  # every exponent.
  exponents = SCALE_EXPONENTS if mode == 'jit' else (-30, 30)
  tol = cka_atol(n, 20)
  for k in (0, *exponents):
    s = np.float32(10.0**k)
    xs, ys = (x * s, y) if side == 'x' else (x, y * s)
    assert np.isfinite(xs).all() and np.isfinite(ys).all()
    got = jax.device_get(run(xs, ys, nb))
    for name, value in got.items():
      assert abs(value - expected[name]) <= tol, (k, name, value)
    for deb, kernel in itertools.product((False, True), ('linear', 'rbf')):
      cka.validate(xs, ys, debiased=deb, kernel=kernel)


TINY_EXPONENTS = tuple(range(-30, -38, -1))  # 1e-30 .. 1e-37


def _spread(a):
  """The module's spread: the largest max minus min of a feature."""
  return float(np.max(a.max(axis=0) - a.min(axis=0)))


@pytest.mark.parametrize('side', ['x', 'y'])
def test_tiny_scales_give_the_unit_scale_value_or_nan(side):
  """x·10^k for k = -30 .. -37: the unit-scale CKA or NaN, never between.

  Gaussian features (entries near 0), so from k = -35 on some scaled
  entries are subnormal, which XLA's CPU backend reads as zero in any
  float operation (the issue's example gave 0.085 for 0.487). Every
  public CKA function, both estimators and forms, against the float64
  oracle of the unscaled float32 data (`cka_atol`, as at unit scale: the
  scaled inputs round to multiples of 2^-149, below 2^-24 of their spread
  while that spread is a normal float). The documented behaviour is
  stronger than "or NaN": exact wherever the spread is at least the
  smallest normal float (all of these), NaN below it (k = -40).
  """
  n, nb = 200, 4
  x, y = make_pair('gaussian', n, 12, 20, seed=21)
  x, y = x.astype(np.float32), y.astype(np.float32)
  expected = {}
  for deb in (False, True):
    lin, rbf = np_linear_cka(x, y, deb), np_rbf_cka(x, y, deb)
    for form in ('auto', 'feature', 'gram'):
      expected[f'linear_{form}_{deb}'] = lin
    expected[f'rbf_{deb}'] = rbf
    expected[f'one_to_many_{deb}'] = expected[f'matrix_{deb}'] = lin
  mb = _np_minibatch_cka([x.reshape(nb, -1, 12)], [y.reshape(nb, -1, 20)])
  expected['minibatch_matrix'] = expected['minibatch_update'] = mb[0, 0]
  tol = cka_atol(n, 20)
  tiny = float(np.finfo(np.float32).tiny)

  def scaled(k):
    s = np.float32(10.0**k)
    return (x * s, y) if side == 'x' else (x, y * s)

  for k in TINY_EXPONENTS:
    xs, ys = scaled(k)
    assert min(_spread(xs), _spread(ys)) >= tiny
    got = jax.device_get(_jit_scale_bundle(xs, ys, nb))
    for name, value in got.items():
      close = abs(value - expected[name]) <= tol
      assert np.isnan(value) or close, (k, name, value)
      assert close, (k, name, value)  # exact: the spread is normal
    cka.validate(xs, ys)
  # Eagerly (op by op) too, where the subnormal entries start.
  for k in (-35, -37):
    xs, ys = scaled(k)
    assert abs(cka.linear_cka(xs, ys) - expected['linear_auto_False']) <= tol
    many = cka.linear_cka_one_to_many(xs, ys[None])[0]
    assert abs(many - expected['one_to_many_False']) <= tol
  # Below the normal range: NaN everywhere, and `validate` names it.
  xs, ys = scaled(-40)
  assert (
    0 < max(_spread(xs), _spread(ys)) and min(_spread(xs), _spread(ys)) < tiny
  )
  got = jax.device_get(_jit_scale_bundle(xs, ys, nb))
  assert all(np.isnan(v) for v in got.values()), got
  with pytest.raises(ValueError, match='smallest normal float'):
    cka.validate(xs, ys)


# ---------------------------------------------------------------------------
# 7. Bad inputs: the documented error or value.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  'call',
  [
    lambda a, b: cka.linear_cka(a, b),
    lambda a, b: cka.rbf_cka(a, b),
    lambda a, b: cka.linear_cka_one_to_many(a, b[None]),
    lambda a, b: cka.cka_matrix([a, b]),
    lambda a, b: cka.validate(a, b),
  ],
)
def test_mismatched_rows_raise_naming_the_shapes(call):
  a, b = np.ones((10, 3)), np.ones((11, 4))
  with pytest.raises(ValueError, match=r'\(10, 3\).*\(11, 4\)'):
    call(a, b)
  with pytest.raises(ValueError, match='11'):
    jax.jit(call)(a, b)


def test_too_few_rows_raise():
  rng = np.random.default_rng(15)
  one, two = rng.normal(size=(1, 3)), rng.normal(size=(2, 3))
  with pytest.raises(ValueError, match='n >= 2'):
    cka.linear_cka(one, one)
  assert np.isfinite(jit_linear(two, two))
  three, four = rng.normal(size=(3, 3)), rng.normal(size=(4, 3))
  for call in (
    lambda a: cka.linear_cka(a, a, debiased=True),
    lambda a: cka.rbf_cka(a, a, debiased=True),
    lambda a: cka.validate(a, debiased=True),
    lambda a: cka.minibatch_cka_update(cka.minibatch_cka_init(1), [a]),
  ):
    with pytest.raises(ValueError, match='n >= 4'):
      call(three)
    with pytest.raises(ValueError, match='n >= 4'):
      jax.jit(call)(three)
  assert np.isfinite(jit_linear(four, four, debiased=True))


@jax.jit
def _all_results(x, y):
  """Every entry point on (x, y), in one compile shared by the tests below."""
  out = {}
  for debiased in (False, True):
    for form in ('feature', 'gram'):
      f = functools.partial(cka.linear_cka, debiased=debiased, form=form)
      out[f'linear_{debiased}_{form}'] = f(x, y)
    out[f'rbf_{debiased}'] = cka.rbf_cka(x, y, debiased=debiased)
  out['many'] = cka.linear_cka_one_to_many(y, jnp.stack([y**2, x, 2 * y]))
  out['matrix'] = cka.cka_matrix([y, x, y**2])
  state = cka.minibatch_cka_init(2, 1)
  state = cka.minibatch_cka_update(state, [y, x], [y**2])
  out['minibatch'] = cka.minibatch_cka_result(state)[:, 0]
  return out


def _check_bad_input_results(out):
  """NaN wherever the bad `x` enters, finite values elsewhere."""
  out = jax.device_get(out)
  for name, value in out.items():
    if name.startswith(('linear', 'rbf')):
      assert np.isnan(value), name
  many, mat, mb = out['many'], out['matrix'], out['minibatch']
  assert np.isnan(many[1]) and np.isfinite(many[[0, 2]]).all()
  assert np.isnan(mat[1]).all() and np.isnan(mat[:, 1]).all()
  assert np.isfinite(mat[np.ix_([0, 2], [0, 2])]).all()
  assert np.isfinite(mb[0]) and np.isnan(mb[1])


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_input(bad):
  x, y = make_pair('gaussian', 20, 5, 5)
  x[3, 1] = bad
  with pytest.raises(ValueError, match='non-finite'):
    cka.validate(x, y)
  with pytest.raises(ValueError, match='non-finite'):
    cka.validate(y, [y, x])
  _check_bad_input_results(_all_results(x, y))


def test_constant_input():
  x, y = make_pair('gaussian', 20, 5, 5)
  const = np.full_like(x, 3.25)
  with pytest.raises(ValueError, match='constant'):
    cka.validate(const, y)
  cka.validate(x, [y, x**2])  # Good inputs pass.
  _check_bad_input_results(_all_results(const, y))
  # Eager (un-jitted) calls: NaN too, never a number.
  assert np.isnan(cka.linear_cka(y, const))
  assert np.isnan(cka.minibatch_cka_result(cka.minibatch_cka_init(1))).all()


def test_validate_is_shape_only_under_jit():
  x, y = make_pair('gaussian', 20, 4, 5)
  jax.jit(cka.validate)(np.full_like(x, 1.0), y)  # Values unknown: no raise.


def _entry_points(x, y):
  """Every public function that takes representations, on `(x, y)`."""
  return {
    'linear_cka': lambda: cka.linear_cka(x, y),
    'linear_cka_debiased': lambda: cka.linear_cka(x, y, debiased=True),
    'rbf_cka': lambda: cka.rbf_cka(x, y),
    'one_to_many': lambda: cka.linear_cka_one_to_many(x, y[None]),
    'cka_matrix': lambda: cka.cka_matrix([x, y]),
    'minibatch_update': lambda: cka.minibatch_cka_update(
      cka.minibatch_cka_init(1, 1), [x], [y]
    ),
    'minibatch_matrix': lambda: cka.minibatch_cka_matrix([x[None], y[None]]),
    'gram_rbf': lambda: cka.gram_rbf(x),
    'validate': lambda: cka.validate(x, y),
  }


@pytest.mark.parametrize('name', list(_entry_points(0, 0)))
def test_empty_input_raises_naming_the_shapes(name):
  """Zero rows: `ValueError` naming the shapes, eagerly and under `jit`."""
  x, y = np.zeros((0, 5), np.float32), np.zeros((0, 3), np.float32)
  call = _entry_points(x, y)[name]
  with pytest.raises(ValueError, match=r'\(0, 5\).*empty input'):
    call()
  with pytest.raises(ValueError, match=r'\(0, 5\)'):
    jax.jit(lambda a, b: _entry_points(a, b)[name]())(x, y)


def test_empty_edge_cases_with_a_defined_result():
  """Documented: no candidates gives `[0]`; an empty Gram is `[0, 0]`."""
  x = np.ones((6, 3), np.float32)
  assert cka.linear_cka_one_to_many(x, np.zeros((0, 6, 2))).shape == (0,)
  assert cka.gram_linear(np.zeros((0, 4))).shape == (0, 0)
  with pytest.raises(ValueError, match=r'num_batches = 0.*\(0, 8, 3\)'):
    cka.minibatch_cka_matrix([np.zeros((0, 8, 3))])


@pytest.mark.parametrize('shape', [(10, 0), (10, 3, 0)])
def test_zero_features_raise_naming_the_shape(shape):
  y = np.ones((10, 2), np.float32)
  x = np.zeros(shape, np.float32)
  calls = dict(_entry_points(x, y), gram_linear=lambda: cka.gram_linear(x))
  message = re.escape(f'{shape}: zero features')
  for call in calls.values():
    with pytest.raises(ValueError, match=message):
      call()
  cands = np.zeros((2, *shape), np.float32)
  with pytest.raises(ValueError, match=r'\(2, 10, .*\): zero features'):
    cka.linear_cka_one_to_many(y, cands)


def test_one_dimensional_input_is_one_feature():
  """`[n]` is reshaped to `[n, 1]` everywhere (candidates `[k, n]`)."""
  x, y = make_pair('gaussian', 24, 1, 3, seed=21)
  x1 = x[:, 0].astype(np.float32)
  y = y.astype(np.float32)
  cands = np.stack([x1**2, np.abs(x1)])
  for deb in (False, True):
    assert cka.linear_cka(x1, y, debiased=deb) == pytest.approx(
      np_linear_cka(x1[:, None], y, deb), abs=cka_atol(24, 3)
    )
    assert cka.rbf_cka(y, x1, debiased=deb) == pytest.approx(
      np_rbf_cka(y, x1[:, None], deb), abs=cka_atol(24, 3)
    )
    cka.validate(x1, [y, x1], debiased=deb)
  np.testing.assert_allclose(
    cka.linear_cka_one_to_many(y, cands),
    [np_linear_cka(y, c[:, None]) for c in cands],
    atol=cka_atol(24, 3),
  )
  np.testing.assert_allclose(
    cka.cka_matrix([x1, y]),
    cka.cka_matrix([x1[:, None], y]),
    atol=cka_atol(24, 3),
  )
  mb = cka.minibatch_cka_matrix([x1.reshape(2, 12), y.reshape(2, 12, 3)])
  expected = _np_minibatch_cka([x1.reshape(2, 12, 1)], [y.reshape(2, 12, 3)])
  assert mb[0, 1] == pytest.approx(expected[0, 0], abs=cka_atol(24, 3))
  assert cka.gram_linear(x1).shape == cka.gram_rbf(x1).shape == (24, 24)


# ---------------------------------------------------------------------------
# 7b. RBF bandwidth: median over distinct pairs.
# ---------------------------------------------------------------------------


def _saturated_pair():
  """`tanh` saturates: 29 distinct rows of 1,000, most of them exactly 1.

  Made in float64 NumPy and rounded to steps of 0.01 before float32, so
  that rows are either equal or at least 0.01 apart per feature: the
  float32 squared distances resolve every distinct pair on every CPU.
  (Made with XLA's float32 `tanh`, the last bit near 1 depended on the
  CPU's vector instructions, and rows 1 ulp apart were distinct in the
  float64 oracle but not in float32.)
  """
  x = np.sqrt(np.ones((1000, 64)).cumsum(0))
  y = np.round(np.tanh(x @ np.ones((64, 32)) / (3 * 64)), 2)  # 29 rows
  return x.astype(np.float32), y.astype(np.float32)


def test_rbf_bandwidth_ignores_duplicated_rows():
  """Saturated `tanh`: most pairs coincide, so the median over all pairs is
  0; over distinct pairs it is not, and RBF CKA is the oracle's value."""
  x, y = _saturated_pair()
  pairs = np.triu_indices(len(y), 1)
  dist = np.sqrt(np.sum((y[pairs[0]] - y[pairs[1]]) ** 2, axis=1))
  assert np.median(dist) == 0 and len(np.unique(y, axis=0)) < 100
  for deb in (False, True):
    got = float(jit_rbf(x, y, debiased=deb))
    assert got == pytest.approx(np_rbf_cka(x, y, deb), abs=cka_atol(1000, 64))
    assert 0.05 < abs(got) < 0.95
    assert float(jit_rbf(y, y, debiased=deb)) == pytest.approx(
      1, abs=cka_atol(1000, 32)
    )
  # Entries: float32 squared distances from the Gram formula carry an error
  # of order eps (‖y_i‖² + ‖y_j‖²) (centered rows), and |dK/d(d²)| is at
  # most 1/(2σ²); allow 8 times that, plus one rounding of exp.
  yc = np_center_columns(y)
  sq = np.sum(yc * yc, axis=1)
  two_var = 2 * (0.8 * np.median(dist[dist > 0])) ** 2
  tol = 8 * EPS32 * (sq[:, None] + sq[None, :]) / two_var
  assert np.all(np.abs(cka.gram_rbf(y) - np_gram_rbf(y)) <= tol + f32_atol(1))
  cka.validate(x, y, kernel='rbf')


def test_rbf_constant_input_and_bad_bandwidth():
  x, y = make_pair('gaussian', 20, 5, 5)
  const = np.full_like(x, 2.5)
  assert np.isnan(cka.gram_rbf(const)).all()
  assert np.isnan(jit_rbf(const, y)) and np.isnan(jit_rbf(y, const))
  for bad in (0.0, -1.0, np.inf, np.nan):
    with pytest.raises(ValueError, match='sigma_frac'):
      cka.rbf_cka(x, y, sigma_frac=bad)
    with pytest.raises(ValueError, match='sigma_frac'):
      cka.validate(x, y, kernel='rbf', sigma_frac=bad)
  # A bandwidth far beyond the data's spread: every entry rounds to 1.
  assert np.isnan(jit_rbf(x, y, sigma_frac=1e5))
  with pytest.raises(ValueError, match='constant within rounding'):
    cka.validate(x, y, kernel='rbf', sigma_frac=1e5)


# ---------------------------------------------------------------------------
# 7c. Degenerate inputs of the unbiased estimator; `validate` agreement.
# ---------------------------------------------------------------------------


def _degenerate(kind, n=12, d=12, seed=22):
  """Non-constant inputs whose squared distances are additive."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=d) + 5.0
  x = np.tile(base, (n, 1))
  if kind == 'one_outlier':
    x[3] += rng.normal(size=d)
  elif kind == 'star':  # Rows 0..5 each offset along its own feature.
    x[np.arange(6), np.arange(6)] += rng.uniform(1, 3, size=6)
  else:  # Equidistant: one-hot codes of n distinct classes.
    x = np.eye(n, d) * 2.0
  return x.astype(np.float32)


@pytest.mark.parametrize('kind', ['one_outlier', 'star', 'equidistant'])
def test_debiased_cka_of_degenerate_inputs_is_nan(kind):
  """`U(K) = 0` although the input varies: debiased CKA is 0/0.

  The float64 oracle confirms the unbiased self-HSIC is zero; float32
  rounding would otherwise return noise of either sign. RBF kernels of the
  star are not degenerate (its RBF distances are not additive).
  """
  x = _degenerate(kind)
  y = make_pair('gaussian', 12, 3, 12, seed=23)[1].astype(np.float32)
  k = np_gram_linear(np_center_columns(x))
  assert abs(np_hsic_unbiased(k, k)) < 1e-12 * np.sum(k * k)
  out = jax.device_get(_all_results(x, y))
  for name, value in out.items():
    if name.startswith('linear'):
      assert np.isnan(value) == ('True' in name), name
  rbf_nan = kind != 'star'
  assert np.isnan(out['rbf_True']) == rbf_nan and np.isfinite(out['rbf_False'])
  many = jax.jit(functools.partial(cka.linear_cka_one_to_many, debiased=True))
  assert np.isnan(many(y, jnp.stack([x, y]))).tolist() == [True, False]
  mat = jax.jit(functools.partial(cka.cka_matrix, debiased=True))([x, y])
  assert np.isnan(mat[0]).all() and np.isfinite(mat[1, 1])
  assert np.isnan(out['minibatch'][1]) and np.isfinite(out['minibatch'][0])
  with pytest.raises(ValueError, match='unbiased HSIC with itself is zero'):
    cka.validate(y, x, debiased=True)
  cka.validate(y, x)
  cka.validate(y, x, kernel='rbf')
  if rbf_nan:
    with pytest.raises(ValueError, match='centered RBF kernel'):
      cka.validate(y, x, debiased=True, kernel='rbf')
  else:
    cka.validate(y, x, debiased=True, kernel='rbf')


def test_minibatch_skips_degenerate_batches_only():
  """A batch in which a layer is degenerate adds zero; all such: NaN."""
  y = make_pair('gaussian', 24, 3, 4, seed=24)[1].astype(np.float32)
  good = make_pair('gaussian', 12, 12, 4, seed=25)[0].astype(np.float32)
  bad = _degenerate('one_outlier')
  mixed = np.stack([bad, good])
  got = cka.minibatch_cka_matrix([mixed, y.reshape(2, 12, 4)])[0, 1]
  expected = _np_minibatch_cka([mixed], [y.reshape(2, 12, 4)])[0, 0]
  assert float(got) == pytest.approx(expected, abs=cka_atol(24, 12))
  both = np.stack([bad, _degenerate('star')])
  assert np.isnan(cka.minibatch_cka_matrix([both, y.reshape(2, 12, 4)])[0, 1])


FAMILIES = ('constant', 'near_constant', 'saturated', 'duplicated', 'random')


def make_family(kind, n, d, seed):
  """Inputs near the edge of definedness (float32)."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=d) * 10.0 ** rng.integers(-1, 4)
  if kind == 'constant':
    x = np.tile(base, (n, 1))
  elif kind == 'near_constant':  # Relative noise 1e-3 .. 1e-9 of the base.
    rel = 10.0 ** -rng.integers(3, 10)
    x = base * (1 + rel * rng.normal(size=(n, d)))
  elif kind == 'saturated':  # Gain up to 1e3: many entries exactly ±1.
    x = np.tanh(10.0 ** rng.uniform(0, 3) * rng.normal(size=(n, d)))
  elif kind == 'duplicated':  # m distinct rows; sometimes one outlier row.
    rows = rng.normal(size=(3, d)) + base
    if rng.random() < 0.5:
      idx = np.zeros(n, int)
      idx[rng.integers(n)] = 1
    else:
      idx = rng.integers(rng.integers(1, 4), size=n)
    x = rows[idx]
  else:
    x = rng.normal(size=(n, d))
  return x.astype(np.float32)


def _resolution(n, d):
  """`lpjax.cka`'s documented threshold `(4n + 8√d + 512) eps`."""
  return (4 * n + 8 * math.sqrt(d) + 512) * EPS32


def np_self_ratio(x, kernel, unbiased):
  """Self-HSIC over the documented scale, in float64; 0 if constant.

  Linear: `n(n-3) HSIC₁(K, K) / Σ K²` (the module returns NaN below
  `_resolution`); biased linear is 1 unless constant. RBF: `Σ kc² / Σ K²`
  with `kc` the centered kernel (NaN below `_resolution · eps`).
  """
  n = len(x)
  if np.all(x == x[:1]):
    return 0.0
  if kernel == 'linear':
    if not unbiased:
      return 1.0
    k = np_gram_linear(np_center_columns(x))
    return np_hsic_unbiased(k, k) * n * (n - 3) / np.sum(k * k)
  k = np_gram_rbf(x)
  if unbiased:
    return np_hsic_unbiased(k, k) * n * (n - 3) / np.sum(k * k)
  return np_hsic_biased(k, k) * (n - 1) ** 2 / np.sum(k * k)


@jax.jit
def _nan_bundle(x, y):
  out = {}
  for deb in (False, True):
    for form in ('auto', 'feature', 'gram'):
      f = functools.partial(cka.linear_cka, debiased=deb, form=form)
      out[f'linear_{deb}_{form}'] = f(x, y)
    many = cka.linear_cka_one_to_many(x, y[None], debiased=deb)
    out[f'linear_{deb}_many'] = many[0]
    out[f'linear_{deb}_matrix'] = cka.cka_matrix([x, y], debiased=deb)[0, 1]
    out[f'rbf_{deb}'] = cka.rbf_cka(x, y, debiased=deb)
  return out


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
  kind_x=st.sampled_from(FAMILIES),
  kind_y=st.sampled_from(FAMILIES),
  shape=st.sampled_from([(5, 1), (5, 4), (24, 1), (24, 4)]),
  seed=st.integers(0, 2**32 - 1),
)
def test_validate_flags_exactly_the_nan_inputs(kind_x, kind_y, shape, seed):
  """`validate` raises iff the jitted functions return NaN, per estimator.

  Over near-constant, saturated and duplicated-row inputs (and constant,
  random). Every linear form, one-to-many and the matrix against
  `validate(kernel='linear')`, `rbf_cka` against `kernel='rbf'`. The
  float64 oracle's self-ratio (`np_self_ratio`) says which inputs are
  undefined; an input within a factor 2 of the threshold may go either way
  (float32 rounding is at most 0.2 of it), so agreement is not required
  there; any other outcome fails.
  """
  n, d = shape
  x = make_family(kind_x, n, d, seed)
  y = make_family(kind_y, n, d, seed + 1)
  got = jax.device_get(_nan_bundle(x, y))
  for kernel, deb in itertools.product(('linear', 'rbf'), (False, True)):
    tau = _resolution(n, d) * (EPS32 if kernel == 'rbf' else 1.0)
    ratios = [np_self_ratio(a, kernel, deb) for a in (x, y)]
    if any(tau / 2 < r < 2 * tau for r in ratios):
      continue  # Within rounding of the threshold: either is right.
    undefined = any(r <= tau for r in ratios)
    prefix = 'rbf' if kernel == 'rbf' else 'linear'
    for name, value in got.items():
      if name.startswith(f'{prefix}_{deb}'):
        assert np.isnan(value) == undefined, (name, ratios, tau)
    try:
      cka.validate(x, y, debiased=deb, kernel=kernel)
      flagged = False
    except ValueError:
      flagged = True
    assert flagged == undefined, (kernel, deb, ratios, tau)


# ---------------------------------------------------------------------------
# 8. Light import.
# ---------------------------------------------------------------------------


def test_import_is_light():
  code = (
    'import sys, lpjax.cka\n'
    "heavy = [m for m in ('flax', 'optax', 'tensorflow') if m in sys.modules]\n"
    'assert not heavy, heavy\n'
  )
  subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, check=True)
