"""lpjax.similarity against float64 NumPy/SciPy oracles, and its properties.

Every oracle below is written from the formulas in the metric's docstring
with NumPy/SciPy in float64, along a different route from the code under
test: covariance eigendecompositions and `arccos` of nuclear norms instead of
SVDs of the data and chord lengths, SciPy's `orthogonal_procrustes` and the
Bures fidelity `tr (A^½ C A^½)^½` instead of polar factors and residuals,
brute force over permutations (or over the orthogonal group for `d = 2`)
where that is feasible, and `scipy.stats.wasserstein_distance`.
"""

import functools
import itertools

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.stats
from tolerances import f32_atol, gaussian_shape_atol, magnitude

from lpjax import similarity as sim

# ---------------------------------------------------------------------------
# Data: random, low-rank, class-structured, and more features than examples.
# ---------------------------------------------------------------------------

CLASSES = 3


def _labels(n):
  return np.arange(n) % CLASSES


def _data(kind, n, d, seed):
  """A float32 `[n, d]` representation and a related one, plus labels."""
  rng = np.random.default_rng(seed)
  labels = _labels(n)
  if kind == 'random':
    x = rng.normal(size=(n, d))
  elif kind == 'low_rank':  # rank 3 whatever n and d
    x = rng.normal(size=(n, 3)) @ rng.normal(size=(3, d))
  elif kind == 'classes':  # well separated class means, correlated noise
    centres = 3.0 * rng.normal(size=(CLASSES, d))
    x = centres[labels] + rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / 3
  else:
    raise ValueError(kind)
  # A perturbed, rotated, rescaled copy: nonzero distances of moderate size.
  q = np.linalg.qr(rng.normal(size=(d, d)))[0]
  y = (x + 0.4 * x.std() * rng.normal(size=(n, d))) @ q
  y = np.maximum(y, -1.0)  # a non-linear part no alignment removes
  return x.astype('f4'), y.astype('f4'), labels


# (kind, n, d): d > n in the last two.
CASES = [
  ('random', 30, 5),
  ('low_rank', 30, 6),
  ('classes', 30, 5),
  ('random', 12, 20),
  ('classes', 12, 20),
]
CASE_IDS = [f'{k}-n{n}-d{d}' for k, n, d in CASES]


def _f64(*arrays):
  return [np.asarray(a, np.float64) for a in arrays]


def _centre(x):
  return x - x.mean(axis=0)


def _pad(x, width):
  return np.pad(x, [(0, 0), (0, width - x.shape[1])])


# ---------------------------------------------------------------------------
# Oracles (float64).
# ---------------------------------------------------------------------------


def _psd_sqrt(s):
  lam, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(lam, 0, None))) @ v.T


def _bures2(s1, s2):
  """tr S1 + tr S2 - 2 tr (S1^½ S2 S1^½)^½ (fidelity form)."""
  r = _psd_sqrt(s1)
  fid = np.trace(_psd_sqrt(r @ s2 @ r))
  return np.trace(s1) + np.trace(s2) - 2 * fid


def _class_stats(x, labels):
  cls = np.unique(labels)
  means = np.stack([x[labels == c].mean(0) for c in cls])
  covs = np.stack([np.cov(x[labels == c], rowvar=False, ddof=1) for c in cls])
  return means, covs.reshape(len(cls), x.shape[1], x.shape[1])


def _gaussian_objective(t, stats, alpha):
  (mx, sx), (my, sy) = stats
  total = 0.0
  for c in range(len(mx)):
    total += alpha * np.sum((mx[c] - my[c] @ t) ** 2)
    total += (2 - alpha) * _bures2(sx[c], t.T @ sy[c] @ t)
  return total / len(mx)


def _gaussian_prepare(x, y, labels):
  x, y = _f64(x, y)
  w = max(x.shape[1], y.shape[1])
  x, y = _centre(_pad(x, w)), _centre(_pad(y, w))
  return x, y, (_class_stats(x, labels), _class_stats(y, labels))


def _unit(a):
  norm = np.linalg.norm(a)
  return a / norm if norm > 0 else a


def gaussian_oracle(x, y, labels, alpha, start='samples'):
  """Alternating Procrustes (SciPy) to 1e-14, from the Procrustes alignment
  of the paired examples (`start='samples'`) or of the class means
  completed by a √eps multiple of the paired examples' cross product
  (`'means'`; both as the docstring of the function under test states);
  `'both'`: the lower of the two (a local search, like the function under
  test, in float64)."""
  if isinstance(start, str) and start == 'both':
    return min(
      gaussian_oracle(x, y, labels, alpha, s) for s in ('samples', 'means')
    )
  x, y, stats = _gaussian_prepare(x, y, labels)
  (mx, sx), (my, sy) = stats
  ax = [_psd_sqrt(s) for s in sx]
  by = [_psd_sqrt(s) for s in sy]
  if not isinstance(start, str):  # an orthogonal matrix
    t = np.asarray(start, np.float64)
  elif start == 'samples':
    t = scipy.linalg.orthogonal_procrustes(y, x)[0]  # min ‖y T - x‖
  else:
    tau = np.sqrt(np.finfo(np.float64).eps)
    t = scipy.linalg.polar(_unit(my.T @ mx) + tau * _unit(y.T @ x))[0]
  f = _gaussian_objective(t, stats, alpha)
  for _ in range(20000):
    # Bures alignment per class: min_U ‖Tᵀ B_c U - A_c‖.
    us = [
      scipy.linalg.orthogonal_procrustes(t.T @ b, a)[0] for a, b in zip(ax, by)
    ]
    src = [np.sqrt(alpha) * my] + [
      np.sqrt(2 - alpha) * u.T @ b for u, b in zip(us, by)
    ]
    dst = [np.sqrt(alpha) * mx] + [np.sqrt(2 - alpha) * a for a in ax]
    t = scipy.linalg.orthogonal_procrustes(np.vstack(src), np.vstack(dst))[0]
    f, previous = _gaussian_objective(t, stats, alpha), f
    if previous - f <= 1e-14 * max(previous, 1e-300):
      break
  return np.sqrt(max(f, 0.0))


def gaussian_global_2d(x, y, labels, alpha):
  """The exact distance for d = 2: search all of O(2) (angle, reflection)."""
  x, y, stats = _gaussian_prepare(x, y, labels)
  assert x.shape[1] == 2

  def rot(theta, flip):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]]) @ np.diag([1.0, flip])

  best = np.inf
  for flip in (1.0, -1.0):

    def f(theta, flip=flip):
      return _gaussian_objective(rot(theta, flip), stats, alpha)

    grid = np.linspace(0, 2 * np.pi, 721)
    values = [f(g) for g in grid]
    i = int(np.argmin(values))
    res = scipy.optimize.minimize_scalar(
      f,
      bounds=(grid[max(i - 1, 0)], grid[min(i + 1, 720)]),
      method='bounded',
      options={'xatol': 1e-12},
    )
    best = min(best, res.fun, values[i])
  return np.sqrt(max(best, 0.0))


def linear_oracle(x, y, alpha):
  """Williams et al.'s φ_α from the covariance's eigendecomposition."""

  def phi(z):
    z = _centre(z)
    n = z.shape[0]
    lam, v = np.linalg.eigh(z.T @ z / n)
    keep = lam > lam.max() * 1e-10  # the numerical range (float64 data)
    inv_root = (v[:, keep] / np.sqrt(lam[keep])) @ v[:, keep].T
    return z @ (alpha * np.eye(z.shape[1]) + (1 - alpha) * inv_root)

  px, py = phi(np.asarray(x, np.float64)), phi(np.asarray(y, np.float64))
  nuc = np.linalg.svd(px.T @ py, compute_uv=False).sum()
  cos = nuc / (np.linalg.norm(px) * np.linalg.norm(py))
  return np.arccos(np.clip(cos, -1, 1))


def permutation_oracle(x, y):
  """Brute force over all permutations (d <= 7), else SciPy's assignment."""
  x, y = _f64(x, y)
  w = max(x.shape[1], y.shape[1])
  x, y = _centre(_pad(x, w)), _centre(_pad(y, w))
  cross = y.T @ x  # [w, w]: cross[i, j] = <y_i, x_j>
  if w <= 7:
    best = max(
      sum(cross[p[j], j] for j in range(w))
      for p in itertools.permutations(range(w))
    )
  else:
    r, c = scipy.optimize.linear_sum_assignment(-cross)
    best = cross[r, c].sum()
  cos = best / (np.linalg.norm(x) * np.linalg.norm(y))
  return np.arccos(np.clip(cos, -1, 1))


def wasserstein_oracle(x, y):
  x, y = _f64(x, y)
  return scipy.stats.wasserstein_distance(x.ravel(), y.ravel())


# ---------------------------------------------------------------------------
# Equality with the oracles.
# ---------------------------------------------------------------------------


# Tolerances. Inputs are float32 (eps = 1.2e-7) with entries of order 1 to 10
# and n d <= 400; every metric but the Gaussian one is computed in float32.
#
# * Angles come from residuals ‖x̂ - ŷQ‖ of unit-norm matrices: each entry
#   is off by a few eps, so the chord is off by ~ eps sqrt(n d) ~ 2.4e-6
#   at most here, times the conditioning of the alignment and, for full
#   whitening (alpha = 0), of the whitened data: the suite's float32 rule
#   (tests/tolerances.py) at n d = 400, 2.4e-5 rad; the largest error seen
#   over these cases and seeds 0-2 was 5.3e-7.
# * Gaussian distances are in data units (here 0.5 to 10) and computed in
#   float64 from the float32 inputs; they are a local search, and the tests
#   ask for what every machine shares: a value within `gauss_atol` of the
#   NEAREST of the float64 oracle's local optima (`gaussian_optima`), never
#   of a particular one. `gauss_atol` is how far the distance can move when
#   every input entry moves by one float32 rounding, `f32_atol(1, s)` at
#   the input's magnitude `s` (`tolerances.gaussian_shape_atol`: a
#   triangle inequality, so it bounds each local optimum's value too): the
#   result is asked to be as exact as its float32 inputs. The fit's own
#   float64 rounding and its stopping rule (a step gaining less than 1e-8
#   of the scale) are far below it (largest seen over `CASES`, seeds 0 and
#   3, every α and start: 0.08 of it).
# * Wasserstein: a mean of n d absolute differences of float32 values:
#   the rule at n d = 400, relative.
ANGLE_ATOL = f32_atol(400)
W1_RTOL = f32_atol(400)


def gauss_atol(*pairs):
  """`gaussian_shape_atol` for compared inputs: `pairs` of float32 arrays
  `(x, y)`; the tolerance of one computed distance for each pair, summed
  (a comparison of two computed distances passes two pairs)."""
  total = 0.0
  for x, y in pairs:
    width = max(np.shape(x)[1], np.shape(y)[1])
    errs = [f32_atol(1, magnitude(a)) for a in (x, y)]
    total += gaussian_shape_atol(width, *errs)
  return total


def gaussian_optima(x, y, labels, alpha, random_starts=0, seed=0):
  """The float64 oracle's local optima: from both documented starts in
  both directions (the swapped fit is the same objective with `T -> Tᵀ`;
  it reaches the same optimum up to rounding, or a neighbouring one where
  rounding decides), plus `random_starts` uniformly random orthogonal
  starts."""
  values = [
    gaussian_oracle(a, b, labels, alpha, start)
    for a, b in ((x, y), (y, x))
    for start in ('samples', 'means')
  ]
  rng = np.random.default_rng(seed)
  width = max(x.shape[1], y.shape[1])
  for _ in range(random_starts):
    q = scipy.stats.ortho_group.rvs(width, random_state=rng)
    values.append(gaussian_oracle(x, y, labels, alpha, q))
  return sorted(values)


def assert_near_an_optimum(got, optima, atol, what=''):
  nearest = min(optima, key=lambda v: abs(v - got))
  assert abs(got - nearest) <= atol, (
    f'{what}: {got} is {abs(got - nearest):.3g} from the nearest float64 '
    f'local optimum {nearest} (tolerance {atol:.3g}; optima {optima})'
  )


@pytest.mark.parametrize('alpha', [0.0, 1.0, 2.0])
@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_gaussian_equals_oracle(case, alpha):
  x, y, labels = _data(*case, seed=0)
  got = float(sim.gaussian_stochastic_distance(x, y, labels, alpha=alpha))
  optima = gaussian_optima(x, y, labels, alpha)
  assert min(optima) > 0.1
  assert_near_an_optimum(got, optima, gauss_atol((x, y)))


def _pair_2d(seed, related):
  rng = np.random.default_rng(seed)
  labels = _labels(30)
  x = 2 * rng.normal(size=(CLASSES, 2))[labels] + rng.normal(size=(30, 2))
  if related:  # the pruning regime: a perturbed rotation or reflection
    q = np.linalg.qr(rng.normal(size=(2, 2)))[0]
    y = (x + 0.3 * rng.normal(size=(30, 2))) @ q
  else:
    y = rng.normal(size=(30, 2)) * [2.0, 0.5]
    y += rng.normal(size=(CLASSES, 2))[labels]
  return x.astype('f4'), y.astype('f4'), labels


@pytest.mark.parametrize('alpha', [0.0, 1.0, 2.0])
@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_gaussian_finds_the_global_minimum_in_2d(seed, alpha):
  # d = 2: O(2) is a circle of rotations and one of reflections; the oracle
  # searches both exhaustively. For related representations the default
  # start reaches the global minimum.
  x, y, labels = _pair_2d(seed, related=True)
  want = gaussian_global_2d(x, y, labels, alpha)
  got = float(sim.gaussian_stochastic_distance(x, y, labels, alpha=alpha))
  assert got == pytest.approx(want, abs=gauss_atol((x, y)))


@pytest.mark.parametrize('alpha', [0.0, 1.0, 2.0])
@pytest.mark.parametrize('seed', [0, 1, 2, 3, 4, 5])
def test_gaussian_is_an_upper_bound_for_unrelated_inputs_in_2d(seed, alpha):
  # For unrelated representations the fit can stop in a local minimum
  # (documented): each start gives an upper bound on the exact distance and
  # 'both' the lower of the two. α = 2 is solved exactly from the means.
  x, y, labels = _pair_2d(seed, related=False)
  want = gaussian_global_2d(x, y, labels, alpha)
  got = {
    init: float(
      sim.gaussian_stochastic_distance(x, y, labels, alpha=alpha, init=init)
    )
    for init in sim.GAUSSIAN_INITS
  }
  tol = gauss_atol((x, y))
  for init, value in got.items():
    assert value >= want - tol, init
  # The same two fits in another compiled program: the tolerance of each.
  assert got['both'] == pytest.approx(
    min(got['means'], got['samples']), abs=2 * tol
  )
  if alpha == 2.0:
    assert got['means'] == pytest.approx(want, abs=tol)


@pytest.mark.parametrize('seed', [2, 3])
def test_gaussian_both_is_the_lower_fit_near_an_oracle_optimum(seed):
  """Cases with several local optima (seed 3: 2.23 and 2.37, which the
  issue's machines reached differently). Properties every machine shares:
  'both' is the lower of the two one-start fits, symmetric, and within
  `gauss_atol` of the nearest float64 local optimum, whichever that is.
  Seed 2: the start from the means reaches a lower optimum than the
  paired samples' one, so 'both' differs from the default there."""
  x, y, labels = _data('classes', 30, 5, seed=seed)

  def fit(a, b, init):
    return float(sim.gaussian_stochastic_distance(a, b, labels, init=init))

  one = {init: fit(x, y, init) for init in ('samples', 'means')}
  both = fit(x, y, 'both')
  tol = gauss_atol((x, y))
  # The same fits in other compiled programs: each within `tol`.
  assert both <= min(one.values()) + 2 * tol
  assert both >= min(one.values()) - 2 * tol
  assert both == pytest.approx(fit(y, x, 'both'), abs=2 * tol)
  optima = gaussian_optima(x, y, labels, 1.0, random_starts=4)
  assert_near_an_optimum(both, optima, tol, 'both')
  for init, value in one.items():
    assert_near_an_optimum(value, optima, tol, init)
  # The oracle finds distinct optima here, so the checks can fail.
  assert max(optima) - min(optima) > 100 * tol
  if seed == 2:
    assert one['means'] < one['samples'] - 100 * tol


def test_gaussian_is_symmetric_for_every_start():
  """A case Hypothesis found where the paired-samples start once stopped
  at different local optima for (x, y) and (y, x) (float32 fits, 5 %
  apart). The alternating steps and both starts are equivariant under the
  swap (`T -> Tᵀ`), so in float64 every start is symmetric."""
  rng = np.random.default_rng(29437893)
  x, y = (_random_rep(rng, 30, 5, 1) for _ in range(2))
  labels = _labels(30)

  def dist(a, b, init):
    return float(
      sim.gaussian_stochastic_distance(a, b, labels, alpha=0.0, init=init)
    )

  tol = gauss_atol((x, y))
  optima = gaussian_optima(x, y, labels, 0.0)
  for init in ('samples', 'means'):  # 'both' is their minimum
    there, back = dist(x, y, init), dist(y, x, init)
    assert there == pytest.approx(back, abs=2 * tol), init
    assert_near_an_optimum(there, optima, tol, init)


@pytest.mark.parametrize('alpha', [0.0, 1.0, 2.0])
def test_gaussian_invariances_on_aligned_data(alpha):
  """Related inputs (one optimum): independent rotations and translations
  of either input leave the fitted distance alone, every α."""
  x, y, labels = _data('classes', 30, 5, seed=11)
  rng = np.random.default_rng(12)
  q1, q2 = (np.linalg.qr(rng.normal(size=(5, 5)))[0] for _ in range(2))

  def dist(a, b):
    return float(sim.gaussian_stochastic_distance(a, b, labels, alpha=alpha))

  base = dist(x, y)
  assert base > 0.1
  moved = [
    ((x @ q1).astype('f4'), (y @ q2).astype('f4')),
    ((x + 3.0).astype('f4'), (y - rng.normal(size=5)).astype('f4')),
  ]
  for a, b in moved:
    # The moved inputs are float32-rounded: each side's tolerance.
    assert dist(a, b) == pytest.approx(base, abs=gauss_atol((x, y), (a, b)))


def test_gaussian_alpha_one_is_the_wasserstein_distance_of_gaussians():
  # One class: d² = W2² between N(μ, Σ) and N(μ', TᵀΣ'T) minimised over T.
  # With y = x Q the minimum is 0; with y = 2 x it is the W2 distance of
  # N(0, Σ) and N(0, 4Σ) = ‖Σ^½ - 2Σ^½‖_F = sqrt(tr Σ), for any T that
  # commutes with Σ; T = I is optimal by the Bures inequality.
  rng = np.random.default_rng(4)
  x = (rng.normal(size=(40, 4)) @ rng.normal(size=(4, 4))).astype('f4')
  labels = np.zeros(40, int)
  cov = np.cov(np.asarray(x, np.float64), rowvar=False)
  got = float(sim.gaussian_stochastic_distance(x, 2 * x, labels, alpha=1.0))
  # mean over one class of (2 - α) B² = B², B² = tr Σ (2 - 1)².
  want = np.sqrt(np.trace(cov))
  assert got == pytest.approx(want, abs=gauss_atol((x, 2 * x)))


def test_gaussian_compute_dtype():
  """Float64 by default whatever the x64 setting, result in the inputs'
  dtype; `None` computes in the inputs' dtype (float32 here: the fit's
  stopping test is then floored at float32 rounding, see the docstring)."""
  x, y, labels = _data('classes', 30, 5, seed=0)
  assert not jax.config.jax_enable_x64
  default = sim.gaussian_stochastic_distance(x, y, labels)
  assert default.dtype == np.float32
  f32 = sim.gaussian_stochastic_distance(x, y, labels, compute_dtype=None)
  assert f32.dtype == np.float32
  assert float(f32) == float(
    sim.gaussian_stochastic_distance(x, y, labels, compute_dtype='float32')
  )
  with jax.enable_x64(True):
    x64, y64 = (np.asarray(a, np.float64) for a in (x, y))
    f64 = sim.gaussian_stochastic_distance(x64, y64, labels)
    assert f64.dtype == np.float64
  # The same float64 fit of the same values.
  assert float(default) == pytest.approx(float(f64), abs=gauss_atol((x, y)))
  with pytest.raises(ValueError, match='compute_dtype'):
    sim.gaussian_stochastic_distance(x, y, labels, compute_dtype='int32')


@pytest.mark.parametrize('alpha', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_linear_equals_oracle(case, alpha):
  x, y, _ = _data(*case, seed=0)
  got = float(sim.linear_shape_distance(x, y, alpha=alpha))
  want = linear_oracle(x, y, alpha)
  assert got == pytest.approx(want, abs=ANGLE_ATOL)


def test_linear_full_whitening_cannot_tell_full_rank_inputs_apart_when_d_ge_n():
  # The documented CCA degeneracy, and the oracle agrees (both ~0).
  x, y, _ = _data('random', 12, 20, seed=0)
  assert float(sim.linear_shape_distance(x, y, alpha=0.0)) < ANGLE_ATOL
  assert linear_oracle(x, y, 0.0) < 1e-6


@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_permutation_equals_oracle(case):
  x, y, _ = _data(*case, seed=0)
  got = float(sim.permutation_distance(x, y))
  assert got == pytest.approx(permutation_oracle(x, y), abs=ANGLE_ATOL)


def test_permutation_brute_force_with_more_features_than_examples():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(4, 7)).astype('f4')
  y = (x[:, rng.permutation(7)] + 0.5 * rng.normal(size=(4, 7))).astype('f4')
  got = float(sim.permutation_distance(x, y))
  assert got == pytest.approx(permutation_oracle(x, y), abs=ANGLE_ATOL)


@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_wasserstein_equals_scipy(case):
  x, y, _ = _data(*case, seed=0)
  got = float(sim.wasserstein_distance(x, y))
  assert got == pytest.approx(wasserstein_oracle(x, y), rel=W1_RTOL)


@pytest.mark.parametrize(
  'metric',
  ['gaussian', 'linear0', 'linear1', 'permutation', 'wasserstein'],
)
def test_different_widths(metric):
  # d1 != d2: the narrower side is padded with zero features (Wasserstein:
  # samples of different sizes, the CDF-integral path).
  x, y, labels = _data('classes', 30, 6, seed=6)
  y = y[:, :4]
  if metric == 'gaussian':
    got = float(sim.gaussian_stochastic_distance(x, y, labels, alpha=1.0))
    tol = gauss_atol((x, y))
    assert_near_an_optimum(got, gaussian_optima(x, y, labels, 1.0), tol)
    assert float(
      sim.gaussian_stochastic_distance(y, x, labels, alpha=1.0)
    ) == pytest.approx(got, abs=2 * tol)
  elif metric.startswith('linear'):
    alpha = float(metric[-1])
    got = sim.linear_shape_distance(x, y, alpha=alpha)
    assert float(got) == pytest.approx(
      linear_oracle(x, y, alpha), abs=ANGLE_ATOL
    )
  elif metric == 'permutation':
    got = sim.permutation_distance(x, y)
    assert float(got) == pytest.approx(permutation_oracle(x, y), abs=ANGLE_ATOL)
  else:
    got = sim.wasserstein_distance(x, y)
    assert float(got) == pytest.approx(wasserstein_oracle(x, y), rel=W1_RTOL)


def test_one_to_many_equals_pairs():
  x, y, labels = _data('classes', 30, 5, seed=7)
  cands = np.stack([y, 2 * y + 1, x[:, ::-1] + 0.1 * y, x])
  pairs = {
    'gaussian': (
      sim.gaussian_stochastic_one_to_many(x, cands, labels, alpha=1.0),
      lambda c: sim.gaussian_stochastic_distance(x, c, labels, alpha=1.0),
    ),
    'linear': (
      sim.linear_shape_one_to_many(x, cands, alpha=0.0),
      lambda c: sim.linear_shape_distance(x, c, alpha=0.0),
    ),
    'permutation': (
      sim.permutation_one_to_many(x, cands),
      lambda c: sim.permutation_distance(x, c),
    ),
    'wasserstein': (
      sim.wasserstein_one_to_many(x, cands),
      lambda c: sim.wasserstein_distance(x, c),
    ),
  }
  for name, (many, one) in pairs.items():
    want = [float(one(c)) for c in cands]
    tol = _tol(name, x, *cands)
    np.testing.assert_allclose(np.asarray(many), want, rtol=0, atol=tol)
    assert float(many[-1]) <= 1e-3, name  # the reference itself


# ---------------------------------------------------------------------------
# Properties (Hypothesis).
# ---------------------------------------------------------------------------

# name -> (distance(x, y, labels), symmetric group actions it is invariant
# to, is a metric, scale-invariant). Shapes below come from a small set so
# that compilation stays bounded.
#
# The Gaussian metrics' properties are those of the exact minimum over the
# orthogonal group; the estimator is a local fit, which the properties reach
# only when every fit lands in the same optimum. These tests fit from both
# documented starts (`init='both'`, in float64 as always; symmetric up to
# rounding, since the fit and both starts are equivariant under the swap).
# For α = 0 (covariances only) unrelated data have near-equal optima whose
# basins can meet near the starts (a pair and its translate once landed at
# 2.568 and 2.576, α = 0, d = 3): its invariances are not tested on random
# data; `test_gaussian_invariances_on_aligned_data` covers them where the
# optimum is unique.
#
# Each metric is its own test case (`pytest.mark.parametrize`), so every
# property meets every metric; Hypothesis draws only the data, a few
# examples per metric (each new shape is a compile).


def _gaussian_both(x, y, labels, *, alpha):
  return float(
    sim.gaussian_stochastic_distance(x, y, labels, alpha=alpha, init='both')
  )


METRICS = {
  'gaussian_0': (
    functools.partial(_gaussian_both, alpha=0.0),
    # Invariant in exact arithmetic, but not testable here: see above.
    (),
    False,  # a pseudo-metric (α = 0); the triangle inequality still holds
  ),
  'gaussian_1': (
    functools.partial(_gaussian_both, alpha=1.0),
    ('orthogonal', 'translation'),
    False,
  ),
  'gaussian_2': (
    functools.partial(_gaussian_both, alpha=2.0),
    ('orthogonal', 'translation'),
    False,
  ),
  'linear_0': (
    lambda x, y, lab: sim.linear_shape_distance(x, y, alpha=0.0),
    ('orthogonal', 'translation', 'scaling'),
    True,
  ),
  'linear_1': (
    lambda x, y, lab: sim.linear_shape_distance(x, y, alpha=1.0),
    ('orthogonal', 'translation', 'scaling'),
    True,
  ),
  'permutation': (
    lambda x, y, lab: sim.permutation_distance(x, y),
    ('permutation', 'translation', 'scaling'),
    True,
  ),
  'wasserstein': (
    lambda x, y, lab: sim.wasserstein_distance(x, y),
    ('permutation',),
    False,
  ),
}
METRIC_NAMES = sorted(METRICS)
SHAPES = [(30, 3), (30, 5), (12, 8)]
PROPS = hypothesis.settings(
  max_examples=2,  # per metric: 7 metrics x 3 properties x 2 examples
  deadline=None,
  derandomize=True,
  suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
DATA = dict(
  shape=st.sampled_from(SHAPES),
  kind=st.integers(0, 2),
  seed=st.integers(0, 2**31),
)


def _random_rep(rng, n, d, kind):
  labels = _labels(n)
  if kind == 0:
    x = rng.normal(size=(n, d))
  elif kind == 1:
    x = 2 * rng.normal(size=(CLASSES, d))[labels] + rng.normal(size=(n, d))
  else:
    x = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) + 0.1 * rng.normal(
      size=(n, d)
    )
  return (x * rng.uniform(0.5, 2)).astype('f4')


def _tol(name, *reps):
  """Absolute tolerance of a comparison of distances among float32 `reps`:
  angles `ANGLE_ATOL`; Wasserstein the float32 rule at the data's scale;
  the Gaussian metrics `gaussian_shape_atol` with one float32 rounding per
  entry (see `gauss_atol`), each input counted twice (it enters at most two
  of the compared distances)."""
  if name.startswith(('linear', 'permutation')):
    return ANGLE_ATOL
  if name == 'wasserstein':
    scale = max(float(np.sqrt(np.mean(np.square(r)))) for r in reps)
    return f32_atol(max(r.size for r in reps), scale)
  width = max(r.shape[1] for r in reps)
  errs = sum(f32_atol(1, magnitude(r)) for r in reps)
  return 2 * gaussian_shape_atol(width, errs, 0.0)


@pytest.mark.parametrize('name', METRIC_NAMES)
@PROPS
@hypothesis.given(**DATA)
def test_identity_and_symmetry(name, shape, kind, seed):
  fn = METRICS[name][0]
  rng = np.random.default_rng(seed)
  x, y = (_random_rep(rng, *shape, kind) for _ in range(2))
  labels = _labels(shape[0])
  assert abs(float(fn(x, x, labels))) <= _tol(name, x)
  assert float(fn(x, y, labels)) == pytest.approx(
    float(fn(y, x, labels)), abs=_tol(name, x, y)
  )


@pytest.mark.parametrize('name', METRIC_NAMES)
@PROPS
@hypothesis.given(**DATA)
def test_invariances(name, shape, kind, seed):
  fn, groups, _ = METRICS[name]
  rng = np.random.default_rng(seed)
  n, d = shape
  x, y = (_random_rep(rng, n, d, kind) for _ in range(2))
  labels = _labels(n)
  base = float(fn(x, y, labels))
  # Every moved input is one float32 rounding off the exact group action.
  q = np.linalg.qr(rng.normal(size=(d, d)))[0]
  moved = {
    'orthogonal': (x @ q, y @ q.T),
    'permutation': (x[:, rng.permutation(d)], y[:, rng.permutation(d)]),
    'translation': (x + rng.normal(size=d), y - 1.5),
    'scaling': (3.0 * x, 0.25 * y),
  }
  for group in groups:
    gx, gy = (np.asarray(a).astype('f4') for a in moved[group])
    tol = _tol(name, x, y, gx, gy)
    assert float(fn(gx, gy, labels)) == pytest.approx(base, abs=tol), group
  if name == 'wasserstein':  # any permutation of all entries
    shuffled = rng.permutation(y.ravel()).reshape(y.shape)
    tol = _tol(name, x, y)
    assert float(fn(x, shuffled, labels)) == pytest.approx(base, abs=tol)


@pytest.mark.parametrize('name', METRIC_NAMES)
@PROPS
@hypothesis.given(**DATA)
def test_triangle_inequality(name, shape, kind, seed):
  # Every metric here satisfies it: shape metrics are metrics on the
  # quotient by their group (Williams et al. 2021, Duong et al. 2023;
  # the Gaussian one with α = 0 a pseudo-metric), W1 on distributions.
  fn = METRICS[name][0]
  rng = np.random.default_rng(seed)
  x, y, z = (_random_rep(rng, *shape, kind) for _ in range(3))
  labels = _labels(shape[0])
  xy, yz, xz = (float(fn(a, b, labels)) for a, b in ((x, y), (y, z), (x, z)))
  assert xz <= xy + yz + _tol(name, x, y, z)


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_label_needing_metric_without_labels_names_the_metric():
  x, y, _ = _data('random', 30, 5, seed=0)
  with pytest.raises(ValueError, match='gaussian_stochastic_distance needs'):
    sim.gaussian_stochastic_distance(x, y, None)


def test_class_with_fewer_than_two_examples_is_refused():
  x, y, labels = _data('random', 30, 5, seed=0)
  labels = labels.copy()
  labels[7] = 9  # class 9 has one example
  with pytest.raises(ValueError, match=r'classes \[9\] have fewer than 2'):
    sim.gaussian_stochastic_distance(x, y, labels)


def test_singular_covariances_give_finite_oracle_values():
  # More features than examples per class (10 per class, 16 features), a
  # dead feature, and one class whose examples are all identical (a zero
  # covariance): every covariance is singular.
  rng = np.random.default_rng(8)
  labels = _labels(30)
  x = rng.normal(size=(30, 16))
  x[:, 3] = 0.0
  x[labels == 2] = x[labels == 2][0]
  y = x @ np.linalg.qr(rng.normal(size=(16, 16)))[0] + 0.3 * rng.normal(
    size=(30, 16)
  )
  x, y = x.astype('f4'), y.astype('f4')
  for alpha in (0.0, 1.0, 2.0):
    got = float(sim.gaussian_stochastic_distance(x, y, labels, alpha=alpha))
    assert np.isfinite(got)
    optima = gaussian_optima(x, y, labels, alpha)
    assert_near_an_optimum(got, optima, gauss_atol((x, y)), alpha)
  for alpha in (0.0, 1.0):
    got = float(sim.linear_shape_distance(x, y, alpha=alpha))
    assert got == pytest.approx(linear_oracle(x, y, alpha), abs=ANGLE_ATOL)


def test_constant_or_non_finite_input_gives_nan_never_a_number():
  x, _, labels = _data('random', 30, 5, seed=0)
  const = np.ones_like(x)
  bad = x.copy()
  bad[3, 2] = np.nan
  for y in (const, bad):
    assert np.isnan(float(sim.linear_shape_distance(x, y, alpha=0.0)))
    assert np.isnan(float(sim.permutation_distance(x, y)))
  assert np.isnan(float(sim.wasserstein_distance(x, bad)))
  assert np.isnan(float(sim.gaussian_stochastic_distance(x, bad, labels)))


@pytest.mark.parametrize(
  'call, match',
  [
    (lambda x: sim.linear_shape_distance(x, x[:10]), 'same examples'),
    (lambda x: sim.wasserstein_distance(x[:1], x[:1]), 'n >= 2'),
    (lambda x: sim.permutation_distance(x, np.ones((30, 0))), 'zero features'),
    (lambda x: sim.linear_shape_distance(x, x, alpha=1.5), 'alpha'),
    (
      lambda x: sim.gaussian_stochastic_distance(x, x, _labels(30), alpha=3),
      'alpha',
    ),
    (
      lambda x: sim.gaussian_stochastic_distance(x, x, _labels(29)),
      r'labels must have shape \[n\]',
    ),
    (
      lambda x: sim.gaussian_stochastic_distance(
        x, x, _labels(30), init='zero'
      ),
      'init',
    ),
  ],
)
def test_shape_and_argument_errors(call, match):
  x, _, _ = _data('random', 30, 5, seed=0)
  with pytest.raises(ValueError, match=match):
    call(x)
