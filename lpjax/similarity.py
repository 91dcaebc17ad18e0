"""Representation distances besides CKA: shape metrics and 1-D Wasserstein.

The metrics the Consensus criterion (Mugnaini et al. 2024) votes with, next
to CKA (`lpjax.cka`). Each compares two representations `x` `[n, d1]` and
`y` `[n, d2]` of the same `n` examples (`[n, ...]` inputs are flattened per
example; a 1-D `[n]` input is one feature) and returns a scalar distance:
0 for equal inputs, larger = more different (never a similarity).

* `gaussian_stochastic_distance(x, y, labels, alpha=...)`: the stochastic
  shape metric of Duong et al. (2023, "Representational dissimilarity metric
  spaces for stochastic neural networks", ICLR) with class-conditional
  Gaussians. Needs labels.
* `linear_shape_distance(x, y, alpha=...)`: the angular linear shape metric
  of Williams et al. (2021, "Generalized shape metrics on neural
  representations", NeurIPS), partial whitening `alpha` in `[0, 1]`.
* `permutation_distance(x, y)`: the angular shape metric of Williams et al.
  (2021) under neuron permutations (Hungarian assignment on the host).
* `wasserstein_distance(x, y)`: the 1-D earth mover's distance between the
  empirical distributions of all entries of `x` and of `y`.

Conventions shared by the shape metrics:

* Representations of different widths are compared by padding the narrower
  one with zero features (Williams et al. 2021, section 2), so `d1 != d2`
  is allowed everywhere.
* Columns are centred (the mean over the `n` examples subtracted): every
  shape metric here is invariant to translations.
* Angular distances are reported in radians, `[0, pi]`. They are computed
  from the chord between the normalised, aligned representations,
  `theta = 2 arcsin(‖x̂ - ŷ Q‖_F / 2)`, equal to `arccos(⟨x̂, ŷ Q⟩_F)` but
  accurate for nearly equal inputs, where `arccos` of a value near 1 loses
  half the digits.
* A representation that is constant over the `n` examples has no shape (it
  normalises to 0/0): angular metrics return NaN for it, as CKA does.
  NaN or inf anywhere propagates to a NaN result (the permutation metric
  skips its assignment step and returns NaN). `lpjax.scoring.checked_scores`
  turns such results into an error that names the candidate.

Shape problems raise `ValueError` naming the shapes: different numbers of
rows, fewer than 2 rows, zero features, labels of the wrong length, a
label-needing metric without labels, a class with fewer than 2 examples.

Every metric has a one-against-many form (`*_one_to_many(ref, cands,
...)`, `cands` `[k, n, ...]`, result `[k]`) that prepares the reference
side once and is compiled once per shape; the Consensus criterion scores
all pruning candidates with those.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_HIGHEST = jax.lax.Precision.HIGHEST

__all__ = [
  'gaussian_stochastic_distance',
  'gaussian_stochastic_one_to_many',
  'linear_shape_distance',
  'linear_shape_one_to_many',
  'permutation_distance',
  'permutation_one_to_many',
  'wasserstein_distance',
  'wasserstein_one_to_many',
]


# ---------------------------------------------------------------------------
# Shapes and small helpers.
# ---------------------------------------------------------------------------


def _as_matrix(x: ArrayLike, name: str) -> Array:
  """`[n, ...]` -> float `[n, d]`; `[n]` is one feature."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError(f'{name} must have shape [n, ...], got a scalar.')
  d = math.prod(x.shape[1:])
  if d == 0:
    raise ValueError(f'{name} has shape {tuple(x.shape)}: zero features.')
  x = x.reshape(x.shape[0], d)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _as_stack(cands: ArrayLike) -> Array:
  """`[k, n, ...]` -> float `[k, n, d]`."""
  c = jnp.asarray(cands)
  if c.ndim < 2:
    raise ValueError(
      f'candidates must have shape [k, n, ...]; got {tuple(c.shape)}.'
    )
  d = math.prod(c.shape[2:])
  if d == 0:
    raise ValueError(f'candidates have shape {tuple(c.shape)}: zero features.')
  c = c.reshape(*c.shape[:2], d)
  return c.astype(jnp.promote_types(c.dtype, jnp.float32))


def _check_rows(metric: str, x_shape, y_shape, what='y') -> int:
  """Both sides have the same `n >= 2` rows; returns `n`."""
  if x_shape[0] != y_shape[0]:
    raise ValueError(
      f'{metric} needs the same examples (rows) on both sides; got x '
      f'{tuple(x_shape)}, {what} {tuple(y_shape)}.'
    )
  if x_shape[0] < 2:
    raise ValueError(
      f'{metric} needs n >= 2 examples; got x {tuple(x_shape)}, {what} '
      f'{tuple(y_shape)}.'
    )
  return x_shape[0]


def _common_dtype(*arrays: Array) -> jnp.dtype:
  return jnp.result_type(*[a.dtype for a in arrays])


def _mm(a: Array, b: Array) -> Array:
  return jnp.matmul(a, b, precision=_HIGHEST)


def _t(a: Array) -> Array:
  return jnp.swapaxes(a, -1, -2)


def _centre(x: Array) -> Array:
  """Subtracts the column mean over examples (axis -2)."""
  return x - jnp.mean(x, axis=-2, keepdims=True)


def _pad(x: Array, width: int) -> Array:
  """Pads the last axis with zeros up to `width`."""
  extra = width - x.shape[-1]
  if extra == 0:
    return x
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def _polar(a: Array) -> Array:
  """Orthogonal factor `W Vᵀ` of `a = W S Vᵀ` (batched `[..., d, d]`).

  It maximises `tr(Qᵀ a)` over orthogonal `Q` (orthogonal Procrustes);
  for a singular `a` it is one of the maximisers.
  """
  w, _, vt = jnp.linalg.svd(a, full_matrices=False)
  return _mm(w, vt)


def _chord_angle(sq_chord: Array) -> Array:
  """Angle between unit vectors whose squared distance is `sq_chord`."""
  half = 0.5 * jnp.sqrt(jnp.maximum(sq_chord, 0.0))
  return 2.0 * jnp.arcsin(jnp.minimum(half, 1.0))


def _normalise(x: Array) -> Array:
  """`x / ‖x‖_F` (NaN for a zero `x`: it has no direction)."""
  return x / jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))


# ---------------------------------------------------------------------------
# Gaussian stochastic shape metric (Duong et al. 2023).
# ---------------------------------------------------------------------------


def _classes(labels, n: int, metric: str) -> tuple[np.ndarray, int]:
  """Host-side: per-example class index `[n]` and the number of classes."""
  if labels is None:
    raise ValueError(
      f'{metric} needs class labels [n] (class-conditional means and '
      'covariances); got labels=None.'
    )
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(
      f'{metric}: labels must have shape [n] = ({n},); got {labels.shape}.'
    )
  classes, index, counts = np.unique(
    labels, return_inverse=True, return_counts=True
  )
  if np.any(counts < 2):
    few = {
      c.item(): int(k) for c, k in zip(classes, counts, strict=True) if k < 2
    }
    raise ValueError(
      f'{metric}: classes {sorted(few)} have fewer than 2 examples '
      f'(counts {few}); a class covariance needs at least 2. Use more '
      'calibration examples (at least 2 per class).'
    )
  return index.reshape(n).astype(np.int32), len(classes)


def _psd_sqrt(s: Array) -> Array:
  """Symmetric square root of PSD `s` `[..., d, d]`.

  Eigenvalues below 0 (rounding on a singular covariance) are clipped to
  0, so a singular or zero covariance has a (singular) square root: never
  NaN.
  """
  s = 0.5 * (s + _t(s))
  lam, v = jnp.linalg.eigh(s)
  root = jnp.sqrt(jnp.maximum(lam, 0.0))
  return _mm(v * root[..., None, :], _t(v))


def _class_stats(z: Array, index: Array, num_classes: int):
  """Class means `[C, d]` and covariance square roots `[C, d, d]`.

  `z` `[n, d]` is centred over all examples first. Covariances are the
  unbiased ones (divided by `n_c - 1`), of the class-centred rows.
  """
  z = _centre(z)
  onehot = jax.nn.one_hot(index, num_classes, dtype=z.dtype)  # [n, C]
  counts = jnp.sum(onehot, axis=0)  # [C]
  means = _mm(onehot.T, z) / counts[:, None]
  zc = z - means[index]  # [n, d]: two-pass, no E[zzᵀ] - mmᵀ cancellation
  cov = jnp.einsum('nc,nd,ne->cde', onehot, zc, zc, precision=_HIGHEST)
  cov = cov / (counts - 1.0)[:, None, None]
  return means, _psd_sqrt(cov)


# Stopping floor of the alternating fit, in units of the compute dtype's eps
# times √(terms of the objective): the gain of one step is never compared
# with less than its own rounding error (the probabilistic rounding bound
# with margin 10, Higham & Mary 2019).
_FIT_FLOOR_MARGIN = 10.0


def _gaussian_fit(
  mx: Array,
  ax: Array,
  my: Array,
  by: Array,
  t0: Array,
  *,
  alpha: float,
  max_iter: int,
  tol: float,
) -> Array:
  """Squared distance for one pair of class statistics (see the public fn).

  Args:
    mx, my: class means `[C, d]`.
    ax, by: symmetric covariance square roots `[C, d, d]`.
    t0: the starting alignment `[d, d]`, orthogonal.
    alpha, max_iter, tol: as for `gaussian_stochastic_distance`.

  Returns:
    The fitted objective divided by `C` (the squared distance).
  """
  wm, wc = alpha, 2.0 - alpha
  num_classes, width = mx.shape
  # Σ_c tr Σ_c = Σ_c ‖A_c‖²_F: the scale the tolerance is relative to.
  scale = wm * (jnp.sum(mx * mx) + jnp.sum(my * my)) + wc * (
    jnp.sum(ax * ax) + jnp.sum(by * by)
  )
  # The objective sums C d (d + 1) squares of terms of size ≲ √scale; its
  # rounding is ≲ √(terms) eps scale, so a gain below that is noise.
  eps = float(jnp.finfo(mx.dtype).eps)
  floor = _FIT_FLOOR_MARGIN * math.sqrt(num_classes * width * (width + 1))
  threshold = max(tol, floor * eps) * scale

  def u_step(t):
    # U_c maximises tr(U_cᵀ B_c T A_c): polar factor of B_c T A_c.
    return _polar(_mm(_mm(by, t), ax))

  def objective(t, u):
    mean_term = jnp.sum((mx - _mm(my, t)) ** 2)
    cov_term = jnp.sum((_mm(_mm(_t(u), by), t) - ax) ** 2)
    return wm * mean_term + wc * cov_term

  def t_step(u):
    # T maximises tr(Tᵀ [α M'ᵀ M + (2 - α) Σ_c B_c U_c A_c]).
    h = wm * _mm(my.T, mx) + wc * jnp.sum(_mm(_mm(by, u), ax), axis=0)
    return _polar(h)

  def cond(state):
    _, _, gain, k = state
    return (k < max_iter) & (gain > threshold)

  def body(state):
    t, best, _, k = state
    u = u_step(t)
    f = objective(t, u)
    return t_step(u), jnp.minimum(best, f), best - f, k + 1

  inf = jnp.asarray(jnp.inf, mx.dtype)
  _, best, _, _ = jax.lax.while_loop(cond, body, (t0, inf, inf, 0))
  # Non-finite statistics stop the loop before any step: NaN, never inf.
  return jnp.where(jnp.isfinite(scale), best, jnp.nan) / num_classes


def _unit(a: Array) -> Array:
  """`a / ‖a‖_F`, or 0 for a zero `a`."""
  norm = jnp.sqrt(jnp.sum(a * a))
  return jnp.where(norm > 0, a / jnp.where(norm > 0, norm, 1.0), 0.0)


def _gaussian_starts(x, y, mx, my, init):
  """The starting alignments `[s, d, d]` of `init` (see the public fn)."""
  cross = _mm(y.T, x)  # the paired examples
  starts = []
  if init in ('samples', 'both'):
    starts.append(_polar(cross))
  if init in ('means', 'both'):
    # The class means fix T on their span only (rank <= C - 1 after
    # centring): the polar factor of a rank-deficient matrix is arbitrary
    # on the rest, and which completion an SVD returns depends on rounding
    # (so on the machine). A small multiple of the paired examples' cross
    # product completes it deterministically: as τ -> 0 the polar factor
    # tends to the means' alignment on their span and the examples' one on
    # the rest. τ = √eps keeps it above the rounding of the means' product
    # and changes their alignment by O(τ).
    tau = math.sqrt(float(jnp.finfo(x.dtype).eps))
    starts.append(_polar(_unit(_mm(my.T, mx)) + tau * _unit(cross)))
  return starts


GAUSSIAN_INITS = ('means', 'samples', 'both')


@functools.partial(
  jax.jit,
  static_argnames=(
    'num_classes',
    'alpha',
    'max_iter',
    'tol',
    'init',
    'work',
  ),
)
def _gaussian_many(
  x, cands, index, *, num_classes, alpha, max_iter, tol, init, work
):
  width = max(x.shape[-1], cands.shape[-1])
  x = _centre(_pad(x.astype(work), width))
  mx, ax = _class_stats(x, index, num_classes)
  fit = functools.partial(
    _gaussian_fit, alpha=alpha, max_iter=max_iter, tol=tol
  )

  def one(y):
    y = _centre(_pad(y.astype(work), width))
    my, by = _class_stats(y, index, num_classes)
    sq = [
      fit(mx, ax, my, by, t0) for t0 in _gaussian_starts(x, y, mx, my, init)
    ]
    return jnp.sqrt(jnp.maximum(jnp.min(jnp.stack(sq)), 0.0))

  # One candidate at a time: each stops iterating when it converges.
  return jax.lax.map(one, cands)


def _check_gaussian_args(
  alpha: float, max_iter: int, tol: float, init: str, compute_dtype
) -> None:
  if init not in GAUSSIAN_INITS:
    raise ValueError(f'init must be one of {GAUSSIAN_INITS}; got {init!r}.')
  if not 0.0 <= alpha <= 2.0:
    raise ValueError(f'alpha must be in [0, 2]; got {alpha}.')
  if max_iter < 1:
    raise ValueError(f'max_iter must be >= 1; got {max_iter}.')
  if tol < 0:
    raise ValueError(f'tol must be >= 0; got {tol}.')
  if compute_dtype is not None and np.dtype(compute_dtype) not in (
    np.float32,
    np.float64,
  ):
    raise ValueError(
      f"compute_dtype must be 'float64', 'float32' or None; got "
      f'{compute_dtype!r}.'
    )


def gaussian_stochastic_one_to_many(
  ref: ArrayLike,
  candidates: ArrayLike,
  labels: ArrayLike,
  *,
  alpha: float = 1.0,
  max_iter: int = 1000,
  tol: float = 1e-8,
  init: str = 'samples',
  compute_dtype: str | None = 'float64',
) -> Array:
  """`gaussian_stochastic_distance(ref, c, labels)` for every candidate.

  The reference's class statistics are computed once; candidates are fitted
  one after the other (`lax.map`), each stopping at its own convergence.

  Args:
    ref: `[n, ...]`.
    candidates: `[k, n, ...]`.
    labels: `[n]` class labels, shared by all.
    alpha, max_iter, tol, init, compute_dtype: as for
      `gaussian_stochastic_distance`.

  Returns:
    `[k]` distances, in the inputs' dtype.
  """
  metric = 'gaussian_stochastic_distance'
  _check_gaussian_args(alpha, max_iter, tol, init, compute_dtype)
  x, c = _as_matrix(ref, 'ref'), _as_stack(candidates)
  n = _check_rows(metric, x.shape, c.shape[1:], 'candidates[i]')
  index, num_classes = _classes(labels, n, metric)
  dtype = _common_dtype(x, c)
  work = dtype if compute_dtype is None else np.dtype(compute_dtype)
  # Float64 on the float32 inputs without a global switch: the jitted
  # function is traced (and cached) under x64, and casts inside, one
  # candidate at a time.
  x64 = jax.enable_x64(True) if work == np.float64 else contextlib.nullcontext()
  with x64:
    out = _gaussian_many(
      x.astype(dtype),
      c.astype(dtype),
      jnp.asarray(index),
      num_classes=num_classes,
      alpha=float(alpha),
      max_iter=int(max_iter),
      tol=float(tol),
      init=init,
      work=work,
    )
    return out.astype(dtype)


def gaussian_stochastic_distance(
  x: ArrayLike,
  y: ArrayLike,
  labels: ArrayLike | None,
  *,
  alpha: float = 1.0,
  max_iter: int = 1000,
  tol: float = 1e-8,
  init: str = 'samples',
  compute_dtype: str | None = 'float64',
) -> Array:
  """Gaussian stochastic shape distance (Duong et al. 2023).

  Each class `c` of `labels` is summarised by the mean `μ_c` `[d]` and the
  covariance `Σ_c` `[d, d]` of its rows of `x` (unbiased, over its `n_c`
  examples; `μ'_c`, `Σ'_c` for `y`), after `x` and `y` are centred over
  all examples. With `T` ranging over orthogonal `d x d` matrices::

    d(x, y)² = min_T mean_c [ α ‖μ_c - μ'_c T‖² + (2 - α) B²(Σ_c, Tᵀ Σ'_c T) ]
    B²(A, C) = tr A + tr C - 2 tr (A^½ C A^½)^½

  `B²` is the squared Bures distance; `α = 1` gives the 2-Wasserstein
  distance between the class-conditional Gaussians, `α = 0` compares
  covariances only and `α = 2` means only (Duong et al. 2023, eq. 4 and
  section 3; Bhatia, Jain & Lim 2019 for `B`).

  Since `tr (A^½ C A^½)^½ = ‖B_c T A_c‖_*` for `C = TᵀΣ'_cT`, with the
  symmetric roots `A_c = Σ_c^½`, `B_c = Σ'_c^½` (`‖·‖_*` the nuclear
  norm), the minimum maximises the convex function
  `g(T) = α tr(Tᵀ Σ_c μ'_cᵀ μ_c) + (2 - α) Σ_c ‖B_c T A_c‖_*` over the
  orthogonal group. It is fitted by alternating Procrustes steps: every
  `U_c` is the polar factor of `B_c T A_c` (the Bures alignment of class
  `c`, so `B² = ‖U_cᵀ B_c T - A_c‖²_F`), then `T` that of
  `α Σ_c μ'_cᵀ μ_c + (2 - α) Σ_c B_c U_c A_c` (the gradient of `g`; the
  objective never rises). It stops after `max_iter` objective evaluations or
  when one lowers the objective by at most `tol` times
  `Σ_c [α (‖μ_c‖² + ‖μ'_c‖²) + (2 - α)(tr Σ_c + tr Σ'_c)]` (scale-free),
  with `tol` raised, if needed, to `10 √(C d (d + 1)) eps` of the compute
  dtype: the objective sums `C d (d + 1)` squares, so a smaller gain is
  within its rounding and stopping there would hinge on the last bit.

  Reproducibility. Maximising a convex function has local optima, and
  which one a fit reaches is decided by the start and, near the boundary
  between two basins, by rounding. By default (`compute_dtype='float64'`,
  under `jax.enable_x64` whatever the global setting, so also for float32
  inputs) the class statistics, their square roots and the fit run in
  float64, from starts that are well-defined functions of the inputs, so
  different machines (instruction sets, summation orders, BLAS/LAPACK
  builds) reach the same optimum to far below float32 resolution; the
  result is returned in the inputs' dtype. (In float32 a fit stopped
  wherever a step's gain drowned in rounding, and the means start was
  arbitrary, see below: from the same nominal starts one pair of inputs
  reached 2.37 in float32 and 2.23 in a float64 oracle, and machines
  differed.) `compute_dtype=None` computes in the inputs' dtype; pass it
  where float64 is slow (TPUs).

  Starts. `init='samples'` (the default) starts from the Procrustes
  alignment of the paired examples, `polar(yᵀx)` (exact when `y = xQ`;
  where `yᵀx` is rank deficient only the representations' null spaces are
  left arbitrary, which no step sees). `init='means'` starts from the
  Procrustes alignment of the class means (the reference implementation's
  start; exact for `α = 2`). After centring the means span at most `C - 1`
  dimensions, and on the rest of the space their alignment is arbitrary:
  an SVD completes it as rounding goes, which made the reference start
  machine-dependent. Here the means' cross product is completed by `√eps`
  times the paired examples' one (both normalised): the limit is the
  means' alignment on their span and the examples' on the rest. With
  fewer classes than features the means start can stall far from the
  minimum: 10 classes, 64 features, `y = x` plus 2 % noise, `α = 0`: 49.5
  after 81 steps from the (arbitrarily completed) means, 0.116 after 7
  from the paired examples. `'both'` fits from both starts and keeps the
  lower, at twice the cost. The fit and both starts are equivariant under
  swapping `x` and `y` (the swapped problem is the same objective with
  `T → Tᵀ`, and each start transposes), so `d(x, y) = d(y, x)` for every
  `init`, up to float64 rounding. The result is an upper bound on the
  exact distance: a local optimum, equal to the global one in the tests
  where that is known (`d = 2`), within float32 resolution of a float64
  oracle's local optimum elsewhere.

  Singular covariances (`d > n_c`, dead features) need no regularisation:
  their square roots come from eigenvalues clipped at 0, `B²` is defined
  for every PSD pair, and the alignment steps only take SVDs. The result is
  never NaN for finite inputs.

  The metric is symmetric, invariant to orthogonal maps and translations of
  either input (not to scaling: it is a distance between distributions in
  the representation's units) and satisfies the triangle inequality (a
  metric for every `α` in `(0, 2]`, a pseudo-metric for `α = 0`; Duong et
  al. 2023, proposition 1), up to the local fit above. It is Lipschitz in
  the entries: moving every entry of `x` by at most `e` moves each local
  optimum's value by at most `2 √(2 d) e` (the tests' tolerance,
  `tests/tolerances.py: gaussian_shape_atol`).

  Labels are read on the host (they fix the number of classes, a static
  shape): to `jit` over `x` and `y`, close over the labels.

  Args:
    x: `[n, ...]` representation, flattened to `[n, d1]`.
    y: `[n, ...]`, flattened to `[n, d2]`.
    labels: `[n]` class labels (any values); every class needs at least 2
      examples.
    alpha: in `[0, 2]`; the consensus criterion uses 0, 1 and 2.
    max_iter: cap on objective evaluations of the alternating fit (>= 1),
      per start.
    tol: relative stopping tolerance of the fit (>= 0; raised to the
      compute dtype's rounding floor, see above).
    init: `'means'`, `'samples'` or `'both'` (see above).
    compute_dtype: `'float64'` (default), `'float32'`, or None for the
      inputs' dtype: the dtype of the class statistics and the fit.

  Returns:
    Scalar distance >= 0, in the units of the representation, in the
    inputs' dtype.

  Raises:
    ValueError: missing labels, naming the metric; a class with fewer than
      2 examples; shape problems; `alpha`, `max_iter`, `tol`, `init` or
      `compute_dtype` out of range.
  """
  y = _as_matrix(y, 'y')
  return gaussian_stochastic_one_to_many(
    x,
    y[None],
    labels,
    alpha=alpha,
    max_iter=max_iter,
    tol=tol,
    init=init,
    compute_dtype=compute_dtype,
  )[0]


# ---------------------------------------------------------------------------
# Linear (partially whitened) shape metric (Williams et al. 2021).
# ---------------------------------------------------------------------------


def _whitened(z: Array, alpha: float) -> Array:
  """`φ_α(z) V` `[n, r]`, `r = min(n, d)`, of centred `z` (see below).

  With `z = U S Vᵀ` (thin SVD) and `C = zᵀz / n = V (S²/n) Vᵀ`,
  `φ_α(z) = z (α I + (1 - α) C^{-½}) = U diag(α s + (1 - α) √n) Vᵀ`. The
  angular metric is invariant to the right factor `Vᵀ`, so `U diag(...)`
  is returned. Directions with `s <= s_max max(n, d) eps` (NumPy's rank
  rule) are numerically absent from `z` and get weight 0: `C^{-½}` is the
  pseudo-inverse root, so full whitening of a rank-deficient input never
  divides by a rounding-level singular value.
  """
  n, d = z.shape[-2:]
  u, s, _ = jnp.linalg.svd(z, full_matrices=False)
  eps = jnp.finfo(z.dtype).eps
  keep = s > s[..., :1] * (max(n, d) * eps)
  weight = jnp.where(keep, alpha * s + (1.0 - alpha) * math.sqrt(n), 0.0)
  return u * weight[..., None, :]


def _aligned_angle(a: Array, b: Array) -> Array:
  """Angular distance of unit-norm `a`, `b` `[n, w]` after the best rotation."""
  q = _polar(_mm(b.T, a))  # maximises ⟨a, b Q⟩ over orthogonal Q
  return _chord_angle(jnp.sum((a - _mm(b, q)) ** 2))


@functools.partial(jax.jit, static_argnames=('alpha',))
def _linear_many(x, cands, *, alpha):
  width = min(x.shape[0], max(x.shape[1], cands.shape[2]))
  a = _normalise(_pad(_whitened(_centre(x), alpha), width))

  def one(y):
    b = _normalise(_pad(_whitened(_centre(y), alpha), width))
    return _aligned_angle(a, b)

  return jax.vmap(one)(cands)


def linear_shape_one_to_many(
  ref: ArrayLike, candidates: ArrayLike, *, alpha: float = 1.0
) -> Array:
  """`linear_shape_distance(ref, c)` for every candidate `c`, `[k]`."""
  metric = 'linear_shape_distance'
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'{metric}: alpha must be in [0, 1]; got {alpha}.')
  x, c = _as_matrix(ref, 'ref'), _as_stack(candidates)
  _check_rows(metric, x.shape, c.shape[1:], 'candidates[i]')
  dtype = _common_dtype(x, c)
  return _linear_many(x.astype(dtype), c.astype(dtype), alpha=float(alpha))


def linear_shape_distance(
  x: ArrayLike,
  y: ArrayLike,
  labels: ArrayLike | None = None,
  *,
  alpha: float = 1.0,
) -> Array:
  """Angular linear shape distance (Williams et al. 2021, eqs. 4-6).

  Centre both inputs, partially whiten each,
  `φ_α(x) = x (α I + (1 - α) C_x^{-½})` with `C_x = xᵀx / n`, and return the
  angle between them after the best orthogonal alignment::

    θ_α(x, y) = min_Q arccos ⟨φ_α(x), φ_α(y) Q⟩_F / (‖φ_α(x)‖_F ‖φ_α(y)‖_F)
              = arccos ‖φ_α(x)ᵀ φ_α(y)‖_* / (‖φ_α(x)‖_F ‖φ_α(y)‖_F)

  (`‖·‖_*` the nuclear norm). `α = 1` is the Procrustes angle; `α = 0`
  whitens fully, so `cos θ_0` is the mean canonical correlation (over
  `sqrt(rank x rank y)`): CCA-like. With `d >= n - 1` and inputs of full
  rank `n - 1`, both whitened inputs span every centred direction and
  `θ_0 = 0`: CCA cannot tell such inputs apart (Williams et al. regularise
  with `0 < α` for that). The covariance's inverse root is taken on its
  numerical range only (see `_whitened`).

  A metric on shapes for every `α` in `[0, 1]`: symmetric, triangle
  inequality, invariant to translations and orthogonal maps of either input,
  and for `α` in `{0, 1}` to isotropic scaling (intermediate `α` mix a
  scale-free and a scaled term). In radians, `[0, π/2]` here since the best
  alignment never has a negative inner product.

  Args:
    x: `[n, ...]`, flattened to `[n, d1]`.
    y: `[n, ...]`, flattened to `[n, d2]`.
    labels: unused (the common metric signature).
    alpha: partial whitening in `[0, 1]`; the consensus criterion uses 0
      and 1.

  Returns:
    Scalar angle in radians; NaN if an input is constant over the examples.
  """
  del labels
  y = _as_matrix(y, 'y')
  return linear_shape_one_to_many(x, y[None], alpha=alpha)[0]


# ---------------------------------------------------------------------------
# Permutation shape metric (Williams et al. 2021).
# ---------------------------------------------------------------------------


@jax.jit
def _permutation_cross(x, cands):
  """Normalised centred sides and their cross products `[k, w, w]`."""
  width = max(x.shape[1], cands.shape[2])
  a = _normalise(_pad(_centre(x), width))
  b = _normalise(_pad(_centre(cands), width))
  return a, b, jnp.einsum('knw,nv->kwv', b, a, precision=_HIGHEST)


@jax.jit
def _permuted_angle(a, b, perms):
  """Angle between `a` and each `b[k]` with its columns taken in `perms[k]`."""
  aligned = jnp.take_along_axis(b, perms[:, None, :], axis=2)
  return _chord_angle(jnp.sum((a[None] - aligned) ** 2, axis=(1, 2)))


def permutation_one_to_many(ref: ArrayLike, candidates: ArrayLike) -> Array:
  """`permutation_distance(ref, c)` for every candidate `c`, `[k]`.

  The flow: one compiled call centres and normalises both sides and forms
  every candidate's cross product `b_kᵀ a` `[w, w]`; the host solves one
  assignment per candidate (`scipy.optimize.linear_sum_assignment`, `O(w³)`,
  milliseconds at `w = 64`); a second compiled call measures each aligned
  residual. Candidates whose cross product is not finite get NaN without
  an assignment.
  """
  from scipy import optimize  # the one host step (Hungarian assignment)

  metric = 'permutation_distance'
  x, c = _as_matrix(ref, 'ref'), _as_stack(candidates)
  _check_rows(metric, x.shape, c.shape[1:], 'candidates[i]')
  dtype = _common_dtype(x, c)
  a, b, cross = _permutation_cross(x.astype(dtype), c.astype(dtype))
  cross = np.asarray(cross, np.float64)
  width = cross.shape[-1]
  perms = np.tile(np.arange(width), (cross.shape[0], 1))
  finite = np.all(np.isfinite(cross), axis=(1, 2))
  for k in np.flatnonzero(finite):
    # Maximise Σ_j cross[π(j), j]: column j of `a` meets column π(j) of b.
    rows, cols = optimize.linear_sum_assignment(cross[k], maximize=True)
    perms[k, cols] = rows
  angles = _permuted_angle(a, b, jnp.asarray(perms, jnp.int32))
  return jnp.where(jnp.asarray(finite), angles, jnp.nan)


def permutation_distance(
  x: ArrayLike, y: ArrayLike, labels: ArrayLike | None = None
) -> Array:
  """Angular shape distance under neuron permutations (Williams et al. 2021).

  Centre both inputs (padding the narrower with zero features), then::

    θ(x, y) = min_P arccos ⟨x, y P⟩_F / (‖x‖_F ‖y‖_F)

  over permutation matrices `P`; the best `P` maximises `tr(Pᵀ yᵀ x)`, a
  linear assignment problem solved exactly by the Hungarian method
  (`scipy.optimize.linear_sum_assignment` on the host, between two
  compiled steps; see `permutation_one_to_many`). Not `jit`-able for that
  reason.

  A metric on shapes: symmetric, triangle inequality, invariant to
  translations, isotropic scaling and permutations of the features (neurons)
  of either input; in radians, `[0, π]`.

  Args:
    x: `[n, ...]`, flattened to `[n, d1]`.
    y: `[n, ...]`, flattened to `[n, d2]`.
    labels: unused (the common metric signature).

  Returns:
    Scalar angle in radians; NaN if an input is constant or not finite.
  """
  del labels
  y = _as_matrix(y, 'y')
  return permutation_one_to_many(x, y[None])[0]


# ---------------------------------------------------------------------------
# 1-D Wasserstein distance between the entries.
# ---------------------------------------------------------------------------


def _wasserstein_sorted(a: Array, b: Array) -> Array:
  """W1 between the empirical distributions of sorted 1-D `a` and `b`."""
  if a.shape[0] == b.shape[0]:
    # Equal weights: the optimal coupling matches order statistics.
    return jnp.mean(jnp.abs(a - b))
  # W1 = ∫ |F_a(t) - F_b(t)| dt, exact over the merged breakpoints.
  points = jnp.sort(jnp.concatenate([a, b]))
  cdf_a = jnp.searchsorted(a, points[:-1], side='right') / a.shape[0]
  cdf_b = jnp.searchsorted(b, points[:-1], side='right') / b.shape[0]
  return jnp.sum(jnp.abs(cdf_a - cdf_b) * jnp.diff(points))


@jax.jit
def _wasserstein_many(x, cands):
  a = jnp.sort(x.reshape(-1))
  return jax.vmap(lambda y: _wasserstein_sorted(a, jnp.sort(y.reshape(-1))))(
    cands
  )


def wasserstein_one_to_many(ref: ArrayLike, candidates: ArrayLike) -> Array:
  """`wasserstein_distance(ref, c)` for every candidate `c`, `[k]`."""
  x, c = _as_matrix(ref, 'ref'), _as_stack(candidates)
  _check_rows('wasserstein_distance', x.shape, c.shape[1:], 'candidates[i]')
  dtype = _common_dtype(x, c)
  return _wasserstein_many(x.astype(dtype), c.astype(dtype))


def wasserstein_distance(
  x: ArrayLike, y: ArrayLike, labels: ArrayLike | None = None
) -> Array:
  """1-D Wasserstein (earth mover's) distance between all entries.

  The `n d1` entries of `x` and the `n d2` entries of `y` are two empirical
  distributions on the real line; their 1-Wasserstein distance is (e.g.
  Ramdas, García Trillos & Cuturi 2017, "On Wasserstein two-sample
  testing", eq. 1)::

    W1 = ∫ |F_x(t) - F_y(t)| dt = ∫_0^1 |F_x⁻¹(q) - F_y⁻¹(q)| dq,

  computed exactly by sorting: for `d1 = d2` the mean absolute difference of
  the order statistics, otherwise the integral of the CDF difference over
  the merged sorted values. No centring or scaling: the metric sees the
  values themselves, so it is invariant to any permutation of the entries
  (of neurons, of examples) but not to rotations, offsets or scale. A
  metric (symmetric, triangle inequality) between distributions.

  Args:
    x: `[n, ...]`.
    y: `[n, ...]`.
    labels: unused (the common metric signature).

  Returns:
    Scalar distance >= 0, in the units of the representation.
  """
  del labels
  y = _as_matrix(y, 'y')
  return wasserstein_one_to_many(x, y[None])[0]
