"""Centered kernel alignment (CKA) for comparing neural representations.

CKA (Kornblith et al., 2019, "Similarity of Neural Network Representations
Revisited") compares two representations `X` `[n, dx]` and `Y` `[n, dy]` of
the same `n` examples through their centered Gram matrices::

  CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),

with `K = X Xᵀ`, `L = Y Yᵀ` (linear) or RBF kernels. Two HSIC estimators are
provided:

* biased (Gretton et al., 2005): `tr(K H L H) / (n - 1)²` with the centering
  matrix `H = I - 11ᵀ/n`. This is the convention of the CKA papers and the
  default everywhere.
* unbiased (Song et al., 2012, "Feature Selection via Dependence
  Maximization", eq. 5)::

    [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3)),

  where `K̃`, `L̃` are `K`, `L` with the diagonal set to zero. "Debiased CKA"
  (`debiased=True`) plugs it into the ratio above (Nguyen, Raghu & Kornblith,
  2021, "Do Wide and Deep Networks Learn the Same Things?").

Linear CKA is computed in whichever of two algebraically equal forms is
cheaper for the shapes: the feature-space form
`‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)` (`d x d` products, `O(n d²)`) or the Gram form
(`n x n` products, `O(n² d)`). The choice is a static cost model over flop
counts per term, so the reference side and each candidate side may use
different forms. Symmetric products (`XᵀX`, `X Xᵀ`) are formed from their
upper-triangle blocks only (up to 6 x 6 blocks, saving up to 42 % of the
multiply-adds; XLA has no symmetric matmul).

With the columns centered (`X1 = 0`), `K1 = 0`, so writing `k = diag(K)`
and `s = tr(K)`, the unbiased numerator is::

  tr(K̃L̃) - 2/(n-2) kᵀl + s_K s_L / ((n-1)(n-2)),

with `tr(K̃L̃) = ‖YᵀX‖²_F - kᵀl` in feature space. This closed form (our own
derivation from Song et al.'s formula) is what the feature-space debiased
path evaluates.

Numerics: inputs are promoted to at least float32 (float64 stays float64 when
`jax_enable_x64` is on). Each representation is first multiplied by the
power of two that brings its largest magnitude into `[1, 2)`, exactly, also
for subnormal entries (from the bits: XLA's CPU backend reads subnormal
operands as zero, see `_unit_scaled`). Columns are then centered before any
product, with the column mean taken of `x - x[0]` (a per-column shift that
removes a large common offset exactly before summing), and the result is
divided by the power of two that brings its largest magnitude into
`[1/2, 2)`. CKA is invariant to scaling, and powers of two are exact, so
this changes no result; it keeps the fourth powers in `‖XᵀX‖²_F` from
overflowing or underflowing at any scale, so multiplying an input by
`1e30` or by anything down to `1e-37` (float32; any scale at which the
input's spread, max minus min over the rows, is at least the smallest
normal float, `1.2e-38`) gives the same CKA; below that the input has lost
precision and the CKA is NaN (see the policy below). Minibatch CKA fixes
each layer's power of two at its first batch. Matrix products use
`Precision.HIGHEST` so accelerators do not silently drop to bf16/tf32.

Shapes: inputs are `[n, ...]`, flattened to `[n, d]`; a 1-D input `[n]` is
one feature, `[n, 1]` (candidates `[k, n]` likewise).

What cannot be computed (the policy, shared by every function):

* Shape problems raise `ValueError` naming the shapes, at trace time, so
  also under `jit`/`vmap`: mismatched numbers of rows `n`; too few rows,
  empty inputs (`n = 0`) included (biased estimators need `n >= 2`,
  unbiased need `n >= 4`; unbiased `center_gram` needs `n >= 3`); zero
  features; no batches in `minibatch_cka_matrix`. Two empty cases have a
  value: `linear_cka_one_to_many` with `k = 0` candidates returns `[0]`,
  and `gram_linear` of an `[0, ...]` input is `[0, 0]`.
* Value problems never raise inside the computation (they cannot be seen
  under `jit`) and never produce a plausible number: the result is NaN
  exactly when CKA is 0/0, i.e. when an input's HSIC with itself is zero:

  - a constant input (zero variance in every feature, e.g. a dead layer);
    for RBF this is the only input with no pair of distinct rows, which
    `gram_rbf` needs for its bandwidth;
  - for the unbiased (debiased) estimator, also inputs whose kernel is
    additive off the diagonal, `K_ij = a_i + a_j`, for which Song et al.'s
    estimate of `HSIC(K, K)` is exactly zero. For the linear kernel these
    are the inputs with additive squared distances, `‖x_i - x_j‖² = b_i +
    b_j`: all rows but one identical, rows that each differ from a common
    row along their own orthogonal direction, equidistant rows (one-hot
    codes of distinct classes); for RBF, all rows but one identical and
    equidistant rows. Rounding turns the zero into noise of either sign,
    so a self-HSIC within the computation's rounding error of zero counts
    as zero (linear: below `(4n + 8√d + 512) eps` times `Σ K_ij²`, see
    `_resolution`; RBF: below that times `eps`, as its centering is
    explicit);
  - for RBF, a bandwidth so large that the centered kernel is zero within
    rounding (`sigma_frac` of a few hundred: in float32 the CKA is NaN
    from about 300, within 1e-4 of the large-bandwidth limit at 100);
  - an input that varies only below the smallest normal float (its spread,
    the largest over the features of max minus min over the rows, is
    nonzero but below `2^-126`, about `1.2e-38`, in float32; `2^-1022` in
    float64): such values are subnormal, multiples of `2^-149`, so they
    carry less than float32's precision relative to their variation and
    no CKA of them is exact (`validate` names them);
  - NaN or inf anywhere in an input (propagates).

  Call `validate(x, y, debiased=..., kernel=...)` eagerly before computing
  to get a `ValueError` that names the input, the problem and the fix for
  exactly these inputs (up to inputs within rounding of the threshold).
* Biased CKA is in `[0, 1]` up to rounding; debiased CKA is in `[-1, 1]`
  and can legitimately be negative for nearly independent inputs. Results
  are never clipped.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Form = Literal['auto', 'feature', 'gram']

__all__ = [
  'MinibatchCKAState',
  'center_gram',
  'cka_matrix',
  'gram_linear',
  'gram_rbf',
  'hsic',
  'linear_cka',
  'linear_cka_one_to_many',
  'minibatch_cka_init',
  'minibatch_cka_matrix',
  'minibatch_cka_result',
  'minibatch_cka_update',
  'rbf_cka',
  'validate',
]

_PRECISION = jax.lax.Precision.HIGHEST
# Cost of one element of an `n x n` elementwise pass, in multiply-adds: these
# passes are memory bound, so weigh them more than a matmul multiply-add.
_ELEMENTWISE_COST = 4
# `linear_cka_one_to_many` maps over candidates one at a time when each needs
# at least this many multiply-adds, and vectorizes them (`vmap`) below it,
# in chunks that keep the working set under `_CHUNK_BYTES`.
_SEQUENTIAL_MACS = 2e7
_CHUNK_BYTES = 1 << 30
# Symmetric products (`XᵀX`, `X Xᵀ`) are split into at most this many blocks
# per dimension (see `_gram_blocks`), each at least `_MIN_ROWS` rows (Gram
# form) or `_MIN_COLS` columns (feature form) wide. Measured on CPU: XLA's
# matmul with a narrow output and a long contraction (feature form) needs
# wider blocks to stay efficient.
_MAX_BLOCKS = 6
_MIN_ROWS = 200
_MIN_COLS = 256


# ---------------------------------------------------------------------------
# Shape handling (static, so it raises under jit/vmap too).
# ---------------------------------------------------------------------------


def _min_rows(unbiased: bool) -> int:
  return 4 if unbiased else 2


def _as_matrix(x: ArrayLike, name: str) -> Array:
  """`[n, ...]` -> `[n, d]`; a 1-D `[n]` input is one feature, `[n, 1]`.

  Zero rows pass (the row count is `_check_rows`' business, which names
  every input's shape); zero features raise.
  """
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError(f'{name} must have shape [n, ...], got a scalar.')
  d = math.prod(x.shape[1:])
  if d == 0:
    raise ValueError(
      f'{name} has shape {tuple(x.shape)}: zero features, CKA is undefined.'
    )
  return x.reshape(x.shape[0], d)


def _check_rows(shapes: dict[str, tuple[int, ...]], unbiased: bool) -> int:
  """Checks all named shapes share `n` and that `n` is large enough."""
  rows = {s[0] for s in shapes.values()}
  desc = ', '.join(f'{k} {tuple(v)}' for k, v in shapes.items())
  if len(rows) != 1:
    raise ValueError(
      f'CKA needs the same examples (rows) on both sides; got {desc}.'
    )
  n = rows.pop()
  need = _min_rows(unbiased)
  if n < need:
    kind = 'unbiased (debiased)' if unbiased else 'biased'
    empty = ' (no examples: empty input)' if n == 0 else ''
    raise ValueError(
      f'The {kind} HSIC estimator needs n >= {need} rows; got {desc}{empty}.'
    )
  return n


def _float_dtype(*arrays: Array) -> jnp.dtype:
  return jnp.result_type(*[a.dtype for a in arrays], jnp.float32)


# ---------------------------------------------------------------------------
# Numerically careful building blocks.
# ---------------------------------------------------------------------------


def _dot(a: Array, b: Array) -> Array:
  return jnp.matmul(a, b, precision=_PRECISION)


def _float_bits(dtype: jnp.dtype) -> tuple[jnp.dtype, int, int]:
  """(same-width integer dtype, mantissa bits, exponent bias) of a float."""
  if dtype == jnp.float64:
    return jnp.int64, 52, 1023
  if dtype == jnp.float32:
    return jnp.int32, 23, 127
  raise TypeError(f'Expected float32 or float64, got {dtype}.')


def _log2_floor(m: Array) -> Array:
  """`floor(log2(m))` (int32) of a positive normal float; 0 for anything else.

  Read from the exponent bits, so exact; zero, subnormal, inf and NaN give 0
  (no rescaling, so non-finite values propagate as they are).
  """
  itype, mbits, bias = _float_bits(m.dtype)
  field = (jax.lax.bitcast_convert_type(m, itype) >> mbits) & (2 * bias + 1)
  normal = (m > 0) & (field > 0) & (field < 2 * bias + 1)
  return jnp.where(normal, field - bias, 0).astype(jnp.int32)


def _pow2(e: Array, dtype: jnp.dtype) -> Array:
  """`2**e` built from its bits (exact), `e` clipped to the normal range."""
  itype, mbits, bias = _float_bits(dtype)
  e = jnp.clip(e, 1 - bias, bias).astype(itype)
  return jax.lax.bitcast_convert_type((e + bias) << mbits, dtype)


def _times_pow2(x: Array, e: Array) -> Array:
  """`x * 2**e`, exact wherever the result is a normal float.

  Two factors with half the exponent each, so that `2**e` itself never
  leaves the normal range (`2**-127` would be a subnormal, which XLA's CPU
  backend flushes to zero).
  """
  half = e // 2
  return x * _pow2(half, x.dtype) * _pow2(e - half, x.dtype)


def _unit_scaled(x: Array) -> tuple[Array, Array]:
  """`(x 2^-e, e)`, `e = floor(log2 max |x|)` (int32), exact for every entry.

  Afterwards `max |entry|` is in `[1, 2)`. XLA's CPU backend reads subnormal
  operands as zero and flushes subnormal results (DAZ/FTZ), so any float
  arithmetic on an input near float32's smallest normal (`2^-126`, about
  `1.2e-38`) loses its subnormal entries. Both steps therefore start from
  the bits, with integer operations, which flush nothing: the largest
  magnitude is an integer maximum of the sign-cleared bits (they order
  like the magnitudes), and a subnormal entry `± m 2^(1 - bias - mbits)` is
  rebuilt as the float `m` times a power of two. Normal entries are
  multiplied by `2^-e`, exact unless the result is below the normal range
  (entries `2^-126` times smaller than the largest, which scale-free CKA
  cannot see). `e = 0` (no rescaling) for an all-zero input and for one
  with NaN or inf, which then propagate.
  """
  itype, mbits, bias = _float_bits(x.dtype)
  width = jnp.iinfo(itype).bits
  bits = jax.lax.bitcast_convert_type(x, itype)
  mag = bits & jnp.iinfo(itype).max  # the sign bit cleared
  field = mag >> mbits  # biased exponent; 0 for zero and subnormals
  top = jnp.max(mag)
  top_field = top >> mbits
  # floor(log2) of the largest magnitude: from its exponent field if it is
  # normal, from its bit length if it is subnormal.
  sub_e = (width - 1 - jax.lax.clz(top)) + (1 - bias - mbits)
  e = jnp.where(top_field == 0, sub_e, top_field - bias)
  e = jnp.where((top == 0) | (top_field == 2 * bias + 1), 0, e)
  e = e.astype(jnp.int32)
  normal = _times_pow2(x, -e)
  mant = (mag & ((1 << mbits) - 1)).astype(x.dtype)  # exact: < 2^mbits
  sub = _times_pow2(mant, (1 - bias - mbits) - e)
  sub = jnp.where(bits < 0, -sub, sub)
  return jnp.where(field == 0, sub, normal), e


@jax.jit
def _shifted(x: Array) -> tuple[Array, Array]:
  """`(x 2^-e - x[0] 2^-e, e)` of `[n, d]` (`_unit_scaled`): centering's start.

  Subtracting the first row removes a large common offset exactly before
  any sum. The scaled entries are below 2 in magnitude, so the differences
  are below 4 and column sums below `4 n`: no overflow for any `n`.
  Jitted: called eagerly (the reference side of `linear_cka_one_to_many`,
  minibatch updates), its bit operations are one compile per shape, not
  one per operation.
  """
  x1, e = _unit_scaled(x)
  return x1 - x1[:1], e


def _spread(z: Array) -> Array:
  """`max_j (max_i z_ij - min_i z_ij)`, `[n, d]` -> scalar.

  Ranges are shift invariant, so it is in `[max |c|, 2 max |c|]` for the
  centered `c = z - mean(z)`. Per-column maxima and minima of `z`, which
  is formed anyway, cost less on XLA's CPU backend than `max |c|` or a
  mean square.
  """
  return jnp.max(jnp.max(z, axis=0) - jnp.min(z, axis=0))


def _log2_spread(z: Array) -> tuple[Array, Array]:
  """`floor(log2 r)` (int32) of `r = _spread(z)`, and whether `r > 0`.

  The exponent is 0 if `r` is 0 or not finite: no rescaling, so a constant
  input stays all zeros and NaN and inf propagate.
  """
  r = _spread(z)
  return _log2_floor(r), r > 0


def _center_and_spread(x: Array) -> tuple[Array, Array, Array, Array]:
  """Centered `[n, d]` in units of `2^e0`, and the exponent of its spread.

  Returns `(c, e, e0, varies)`: the true centered values are `c 2^e0`;
  `e` is `_log2_spread` of `c` (in those units), so `e + e0` is the
  exponent of the true spread; `varies` is false for a constant input.
  """
  z, e0 = _shifted(x)
  e, varies = _log2_spread(z)
  return z - jnp.mean(z, axis=0, keepdims=True), e, e0, varies


def _lost_precision(e: Array, varies: Array, dtype: jnp.dtype) -> Array:
  """A nonzero spread `2^e` below the normal range of `dtype` (`_standardize`).

  Float32's smallest normal is `2^-126`; an input whose variation is below
  it consists of multiples of the smallest subnormal `2^-149`, which is
  more than `2^-23` of that variation: coarser than float32 rounding.
  """
  return varies & (e < 1 - _float_bits(dtype)[2])


@jax.jit
def _standardize(x: Array) -> Array:
  """Centers `[n, d]` columns; scales, exactly, to `max |entry|` in `[1/2, 2)`.

  CKA is invariant to scaling, so the rescaling changes no result; it keeps
  every later product in range whatever the input's scale or its offset:
  fourth powers such as `‖XᵀX‖²_F` neither overflow nor underflow. Powers
  of two are exact, and `_unit_scaled` keeps subnormal entries exactly.

  An input whose spread (`_spread` of the input as given) is nonzero but
  below the smallest normal float (float32: `2^-126`, about `1.2e-38`)
  comes out NaN throughout (`_lost_precision`): its values carry less than
  the dtype's precision, so no CKA of them is exact (policy: NaN, never a
  wrong number). From that spread up, every entry is exact to `2^-24` of
  the spread, as in any float32 data. A constant input centers to all
  zeros and stays all zeros.
  """
  c, e, e0, varies = _center_and_spread(x)
  # `c` is below 4 in magnitude and its spread is a normal float unless 0
  # (a difference of normal floats that would be subnormal is flushed to
  # 0), so 2^-e is normal: one factor suffices.
  out = c * _pow2(-e, c.dtype)
  lost = _lost_precision(e + e0, varies, c.dtype)
  return jnp.where(lost, jnp.asarray(jnp.nan, c.dtype), out)


def _resolution(n: int, d: ArrayLike, dtype: jnp.dtype) -> Array:
  """Relative resolution below which a self-HSIC counts as zero.

  `(4n + 8√d + 512) eps`: a bound on the rounding error of the unbiased
  self-HSIC's closed form relative to `Σ_ij K_ij²` (its terms cancel for
  degenerate inputs, see `_self_hsic`). The feature form's `XᵀX` sums `n`
  terms (error up to ~`n eps`), the Gram form's `K` sums `d`. On exactly
  degenerate float32 inputs the largest error measured was 0.2 of this
  bound (feature form: `n` 4 to 50,000, `d` up to 3,000; Gram and blocked
  forms: `n` up to 4,000, `d` up to 10,000).
  """
  eps = float(jnp.finfo(dtype).eps)
  return (4 * n + 8 * jnp.sqrt(jnp.asarray(d, dtype)) + 512) * eps


def _zero_diag(g: Array) -> Array:
  n = g.shape[-1]
  return jnp.where(jnp.eye(n, dtype=bool), jnp.zeros((), g.dtype), g)


def _safe_ratio(num: Array, den: Array) -> Array:
  """`num / den`, NaN (never inf or a finite number) where `den == 0`."""
  nan = jnp.asarray(jnp.nan, num.dtype)
  return jnp.where(den == 0, nan, num / jnp.where(den == 0, 1, den))


def _hsic_from_terms(
  t: Array,
  row_sq_a: Array,
  row_sq_b: Array,
  n: int,
  unbiased: bool,
) -> Array:
  """HSIC of two column-centered linear kernels from `t` and their diagonals.

  Args:
    t: `Σ_ij K_ij L_ij` (biased) or `Σ_{i≠j} K_ij L_ij` (unbiased); any
      leading batch shape `[...]`.
    row_sq_a: `diag(K)`, `[..., n]`.
    row_sq_b: `diag(L)`, `[..., n]`.
    n: number of examples.
    unbiased: which estimator.

  Returns:
    HSIC, shape `[...]`.
  """
  n = float(n)  # Python ints beyond int32 would overflow when traced.
  if not unbiased:
    return t / (n - 1) ** 2
  s_a = jnp.sum(row_sq_a, axis=-1)
  s_b = jnp.sum(row_sq_b, axis=-1)
  kl = jnp.sum(row_sq_a * row_sq_b, axis=-1)
  num = t + s_a * s_b / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl
  return num / (n * (n - 3))


def _self_hsic(
  t: Array, row_sq: Array, n: int, d: ArrayLike, unbiased: bool
) -> Array:
  """HSIC of a centered linear kernel with itself; 0 where it is undefined.

  The biased estimator is `Σ_ij K_ij² / (n-1)²`, zero exactly when the
  input is constant. The unbiased one is `‖U(K)‖²_F / (n(n-3)) >= 0` (see
  `center_gram`), zero also for non-constant inputs whose squared
  distances are additive, `‖x_i - x_j‖² = a_i + a_j` (all rows but one
  identical; every row apart from a common one offset along its own
  orthogonal direction; equidistant rows such as one-hot codes). The
  closed form evaluates it as a difference of terms of size `Σ_ij K_ij²`,
  so for those inputs it returns rounding noise of either sign; a value
  within `_resolution` of zero is therefore returned as exactly 0, which
  makes the CKA NaN (0/0) instead of noise.

  Args:
    t: as in `_hsic_from_terms` with `K = L`, shape `[...]`.
    row_sq: `diag(K)`, `[..., n]`.
    n: number of examples.
    d: number of features (`[...]` or a scalar).
    unbiased: which estimator.

  Returns:
    HSIC, shape `[...]`; NaN stays NaN.
  """
  h = _hsic_from_terms(t, row_sq, row_sq, n, unbiased)
  if not unbiased:
    return h
  total = t + jnp.sum(row_sq * row_sq, axis=-1)  # Σ_ij K_ij², diagonal too.
  tol = _resolution(n, d, h.dtype) * total / (float(n) * (n - 3))
  return jnp.where(h <= tol, jnp.zeros_like(h), h)


def _kernel_self_hsic(kc: Array, k: Array, d: int) -> Array:
  """`⟨kc, kc⟩_F` of a centered kernel `kc` of `k`; 0 where undefined.

  `kc` is formed explicitly (`center_gram`), so its rounding error is of
  order eps per entry and `Σ kc²` carries it squared: a value below
  `_resolution · eps · Σ k²` is rounding noise and returned as 0 (the CKA
  is then NaN). That happens for a constant kernel (an RBF kernel whose
  bandwidth is far beyond the data's spread) and, unbiased, for the
  kernels `U(K) = 0` (see `_self_hsic`).
  """
  h = jnp.sum(kc * kc)
  eps = float(jnp.finfo(h.dtype).eps)
  tol = _resolution(k.shape[0], d, h.dtype) * eps * jnp.sum(k * k)
  return jnp.where(h <= tol, jnp.zeros_like(h), h)


def _cka_from_hsic(h_xy: Array, h_xx: Array, h_yy: Array) -> Array:
  # sqrt of each factor separately: the product can overflow in float32.
  return _safe_ratio(h_xy, jnp.sqrt(h_xx) * jnp.sqrt(h_yy))


# ---------------------------------------------------------------------------
# Kernels and HSIC on Gram matrices.
# ---------------------------------------------------------------------------


def gram_linear(x: ArrayLike) -> Array:
  """Linear-kernel Gram matrix `x xᵀ` (not centered; see `center_gram`).

  Args:
    x: `[n, ...]`, flattened to `[n, d]` (a 1-D `[n]` is `[n, 1]`).

  Returns:
    `[n, n]` Gram matrix, dtype at least float32 (`[0, 0]` for `n = 0`).

  Raises:
    ValueError: `x` is a scalar or has zero features.
  """
  x = _as_matrix(x, 'x')
  x = x.astype(_float_dtype(x))
  return _dot(x, x.T)


def _check_sigma_frac(sigma_frac: float) -> None:
  """A concrete bandwidth fraction must be positive and finite."""
  if isinstance(sigma_frac, (int, float)) and not (
    math.isfinite(sigma_frac) and sigma_frac > 0
  ):
    raise ValueError(
      f'sigma_frac must be positive and finite; got {sigma_frac}.'
    )


def _row_hashes(x: Array) -> Array:
  """Two 32-bit hashes of each row's bits, `[n, 2]` uint32.

  Identical rows get identical hashes whatever the backend or summation
  order (wrapping integer sums are exact); distinct rows collide with
  probability about 2⁻⁶⁴. Each word is multiplied by a fixed odd constant
  per column and mixed (xorshift-multiply) before summing, so that
  structured differences such as sign flips do not cancel.
  """
  n = x.shape[0]
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(n, -1)
  rng = np.random.default_rng(0x5EED)
  mult = rng.integers(1, 2**32, size=(2, 1, bits.shape[1]), dtype=np.uint64)
  v = bits[None] * jnp.asarray(mult | 1, jnp.uint32)
  v = v ^ (v >> 15)
  v = v * jnp.uint32(0x2C1B3C6D)
  v = v ^ (v >> 12)
  return jnp.sum(v, axis=-1, dtype=jnp.uint32).T


def _rbf_kernel(x: Array, sigma_frac: float) -> Array:
  """`gram_rbf` of a float `[n, d]` matrix (no shape checks)."""
  # Distances are invariant to the shift and, with the bandwidth relative to
  # them, the kernel to the (exact, power-of-two) scaling.
  x = _standardize(x)
  g = _dot(x, x.T)
  sq = jnp.diagonal(g)
  d2 = sq[:, None] + sq[None, :] - 2 * g
  # Ties: identical rows (by their bits, so exactly, however the product
  # rounds) and pairs whose rounded distance is not positive. NaN stays.
  h = _row_hashes(x)
  same = jnp.all(h[:, None, :] == h[None, :, :], axis=-1)
  d2 = jnp.where(same | (d2 <= 0), jnp.zeros((), x.dtype), d2)
  # Median over the pairs of distinct rows, each pair twice (which leaves
  # the median unchanged); ties and NaNs are moved to the end of the sort.
  distinct = d2 > 0
  count = jnp.sum(distinct, dtype=jnp.int32)
  srt = jnp.sort(jnp.where(distinct, jnp.sqrt(d2), jnp.inf).reshape(-1))
  half = count // 2
  median = 0.5 * (srt[jnp.maximum(half - 1, 0)] + srt[half])
  two_var = 2 * jnp.square(sigma_frac * median)
  two_var = jnp.maximum(two_var, jnp.finfo(x.dtype).tiny)
  k = jnp.exp(-d2 / two_var)
  return jnp.where(count > 0, k, jnp.nan)


def gram_rbf(x: ArrayLike, *, sigma_frac: float = 0.8) -> Array:
  """RBF-kernel Gram matrix with the median heuristic for the bandwidth.

  `K_ij = exp(-‖x_i - x_j‖² / (2 σ²))` with `σ = sigma_frac · median ‖x_i -
  x_j‖` over the pairs of distinct examples, `x_i ≠ x_j` (Kornblith et al.,
  2019, sec. 3; their code takes the median of squared distances over all
  `n²` entries, zero diagonal included). Duplicated examples, common in
  saturated or quantized layers, therefore do not shrink the bandwidth: a
  saturated `tanh` layer with a few dozen distinct rows out of 1,000 gets
  the median distance between distinct rows, not 0. Identical rows are
  recognized by their bits (exactly; distance 0, kernel entry 1), as are
  pairs whose distance rounds to zero or below.

  Policy: a constant input has no pair of distinct rows and gives a NaN
  matrix (its CKA is undefined, as for the linear kernel); non-finite
  inputs propagate NaN. Scale invariant. Cost `O(n² d + n² log n)`, memory
  `O(n²)`.

  Args:
    x: `[n, ...]`, flattened to `[n, d]`; `n >= 2`.
    sigma_frac: bandwidth as a fraction of the median distance, positive.

  Returns:
    `[n, n]` Gram matrix, dtype at least float32.

  Raises:
    ValueError: `n < 2`, a scalar, zero features, or a `sigma_frac` that
      is not positive and finite.
  """
  _check_sigma_frac(sigma_frac)
  x = _as_matrix(x, 'x')
  _check_rows({'x': x.shape}, unbiased=False)
  return _rbf_kernel(x.astype(_float_dtype(x)), sigma_frac)


def center_gram(k: ArrayLike, *, unbiased: bool = False) -> Array:
  """Centers a symmetric Gram matrix.

  Biased: `H K H` with `H = I - 11ᵀ/n`. Unbiased: the U-centering of
  Székely & Rizzo (2014, "Partial distance correlation", sec. 4.1), for
  which `⟨U(K), U(L)⟩_F / (n(n-3))` equals Song et al.'s unbiased HSIC::

    U(K)_ij = K_ij - r_i/(n-2) - r_j/(n-2) + S/((n-1)(n-2)),  i ≠ j,
    U(K)_ii = 0,

  where `r` are the row sums and `S` the total sum of `K` with its diagonal
  set to zero.

  Args:
    k: `[n, n]` symmetric kernel matrix (`[..., n, n]` via `vmap`).
    unbiased: U-centering (needs `n >= 3`) instead of `H K H` (`n >= 2`).

  Returns:
    `[n, n]` centered matrix, dtype at least float32.

  Raises:
    ValueError: `k` is not square, or `n` is too small.
  """
  k = jnp.asarray(k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(
      f'center_gram needs a square [n, n] matrix; got {k.shape}.'
    )
  n = k.shape[0]
  need = 3 if unbiased else 2
  if n < need:
    raise ValueError(
      f'center_gram(unbiased={unbiased}) needs n >= {need}; got k {k.shape}.'
    )
  k = k.astype(_float_dtype(k))
  if not unbiased:
    row = jnp.mean(k, axis=1, keepdims=True)
    col = jnp.mean(k, axis=0, keepdims=True)
    return k - row - col + jnp.mean(row)
  k = _zero_diag(k)
  row = jnp.sum(k, axis=1, keepdims=True)
  col = jnp.sum(k, axis=0, keepdims=True)
  total = jnp.sum(row)
  u = k - row / (n - 2) - col / (n - 2) + total / float((n - 1) * (n - 2))
  return _zero_diag(u)


def hsic(
  k: ArrayLike,
  l: ArrayLike,  # noqa: E741
  *,
  unbiased: bool = False,
) -> Array:
  """Hilbert-Schmidt independence criterion of two kernel matrices.

  Biased: `tr(K H L H) / (n - 1)²` (Gretton et al., 2005). Unbiased: Song et
  al. (2012), computed as `⟨U(K), U(L)⟩_F / (n(n-3))` (see `center_gram`).

  Args:
    k: `[n, n]` symmetric kernel matrix (not centered).
    l: `[n, n]` symmetric kernel matrix (not centered).
    unbiased: use the unbiased estimator (needs `n >= 4`).

  Kernels of raw features with a large common offset have huge entries that
  carry the offset, which costs float32 precision before any centering can
  happen; prefer `linear_cka`, which centers the features first.

  Returns:
    Scalar HSIC estimate. NaN/inf in a kernel propagates.

  Raises:
    ValueError: shapes differ, are not square, or `n` is too small.
  """
  k, l = jnp.asarray(k), jnp.asarray(l)  # noqa: E741
  if k.shape != l.shape or k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(
      f'hsic needs two [n, n] matrices of equal shape; got k {k.shape}, '
      f'l {l.shape}.'
    )
  n = _check_rows({'k': k.shape, 'l': l.shape}, unbiased)
  kc = center_gram(k, unbiased=unbiased)
  lc = center_gram(l, unbiased=unbiased)
  norm = float(n * (n - 3) if unbiased else (n - 1) ** 2)
  return jnp.sum(kc * lc.astype(kc.dtype)) / norm


# ---------------------------------------------------------------------------
# Linear CKA: one reference against one or many candidates.
# ---------------------------------------------------------------------------


def _num_blocks(size: int, min_size: int) -> int:
  """Blocks to split a symmetric product's `size` x `size` output into."""
  return max(1, min(_MAX_BLOCKS, size // min_size))


def _sym_fraction(size: int, min_size: int) -> float:
  """Share of a symmetric product's multiply-adds the blocked form does."""
  b = _num_blocks(size, min_size)
  return (b + 1) / (2 * b)


def _sym_pairs(b: int) -> list[tuple[int, int, float]]:
  """Upper-triangle block pairs `(i, j, weight)`: off-diagonal counts 2x."""
  return [(i, j, 1.0 if i == j else 2.0) for i in range(b) for j in range(i, b)]


def _split(size: int, b: int) -> list[slice]:
  edges = [size * i // b for i in range(b + 1)]
  return [slice(lo, hi) for lo, hi in itertools.pairwise(edges)]


def _gram_blocks(z: Array, unbiased: bool) -> tuple[Array, ...]:
  """Upper-triangle row blocks `K_ij = z_i z_jᵀ` of the Gram `z zᵀ`.

  Only `b(b+1)/2` of the `b²` blocks are formed (a SYRK-like saving; XLA has
  no symmetric product). With `unbiased`, diagonal blocks get a zero
  diagonal so that sums run over `i ≠ j` without cancellation.
  """
  b = _num_blocks(z.shape[0], _MIN_ROWS)
  parts = [z[s] for s in _split(z.shape[0], b)]
  out = []
  for i, j, _ in _sym_pairs(b):
    g = _dot(parts[i], parts[j].T)
    out.append(_zero_diag(g) if unbiased and i == j else g)
  return tuple(out)


def _blocks_inner(n: int, a: Sequence[Array], b: Sequence[Array]) -> Array:
  """`⟨K, L⟩_F` from matching upper-triangle blocks of symmetric `[n, n]`."""
  pairs = _sym_pairs(_num_blocks(n, _MIN_ROWS))
  return sum(w * jnp.sum(ga * gb) for (_, _, w), ga, gb in zip(pairs, a, b))


def _feature_self(z: Array) -> Array:
  """`‖zᵀz‖²_F` from upper-triangle column blocks `z_iᵀ z_j`."""
  b = _num_blocks(z.shape[1], _MIN_COLS)
  parts = [z[:, s] for s in _split(z.shape[1], b)]
  return sum(
    w * jnp.sum(jnp.square(_dot(parts[i].T, parts[j])))
    for i, j, w in _sym_pairs(b)
  )


class _Plan(NamedTuple):
  x: str  # Reference side: 'feature' | 'blocks' | 'gram' (full n x n).
  y: str  # Candidate side, likewise.
  cross: str  # 'feature' | 'blocks' | 'gram_x' (tr YᵀKY) | 'gram_y'.


def _costs(n: int, dx: int, dy: int, plan: _Plan) -> tuple[float, float]:
  """Multiply-adds of the reference side and of one candidate (+ cross).

  `n d²` (times the symmetric saving) for a feature-space side, `n² d` for
  a Gram side, `n dx dy` for the feature-space cross term, `n² d` for
  `tr(Yᵀ K Y)`, plus a weight for memory-bound `n x n` elementwise passes.
  """
  e = _ELEMENTWISE_COST * n * n
  side = {
    'feature': lambda d: n * d * d * _sym_fraction(d, _MIN_COLS),
    'blocks': lambda d: n * n * d * _sym_fraction(n, _MIN_ROWS) + e,
    'gram': lambda d: n * n * d + e,
  }
  cross = {
    'feature': n * dx * dy,
    'blocks': e,
    'gram_x': n * n * dy,
    'gram_y': n * n * dx,
  }
  return side[plan.x](dx), side[plan.y](dy) + cross[plan.cross]


def _plan(n: int, dx: int, dy: int, num_y: int, form: Form) -> _Plan:
  """Chooses the form of each side and of the cross term by cost.

  The reference side is paid once, the candidate side and the cross term
  `num_y` times (see `_costs`).
  """
  if form == 'feature':
    return _Plan('feature', 'feature', 'feature')
  if form == 'gram':
    return _Plan('blocks', 'blocks', 'blocks')
  if form != 'auto':
    raise ValueError(f"form must be 'auto', 'feature' or 'gram'; got {form!r}.")
  options = [
    _Plan('feature', 'feature', 'feature'),
    _Plan('blocks', 'blocks', 'blocks'),
    _Plan('gram', 'feature', 'gram_x'),
    _Plan('feature', 'gram', 'gram_y'),
    _Plan('blocks', 'feature', 'feature'),
    _Plan('feature', 'blocks', 'feature'),
  ]

  def total(plan):
    ref, cand = _costs(n, dx, dy, plan)
    return ref + num_y * cand

  return min(options, key=total)


class _Side(NamedTuple):
  xc: Array  # [n, d] centered, max |entry| in [1/2, 2) (`_standardize`).
  row_sq: Array  # [n] diag of the Gram.
  gram: Array | tuple[Array, ...] | None  # Full Gram, its blocks, or None.
  t_self: Array  # Σ_ij K_ij² (biased) or Σ_{i≠j} K_ij² (unbiased).


def _side(x: Array, *, form: str, unbiased: bool) -> _Side:
  """Centers, rescales and computes the self term in the given form."""
  xc = _standardize(x)
  row_sq = jnp.sum(xc * xc, axis=1)
  if form == 'gram':
    g = _dot(xc, xc.T)
    g = _zero_diag(g) if unbiased else g
    return _Side(xc, row_sq, g, jnp.sum(g * g))
  if form == 'blocks':
    g = _gram_blocks(xc, unbiased)
    return _Side(xc, row_sq, g, _blocks_inner(xc.shape[0], g, g))
  t = _feature_self(xc)
  if unbiased:
    t = t - jnp.sum(row_sq * row_sq)
  return _Side(xc, row_sq, None, t)


def _cross_term(a: _Side, b: _Side, how: str, unbiased: bool) -> Array:
  """`Σ K_ij L_ij` (biased) or `Σ_{i≠j} K_ij L_ij` (unbiased)."""
  if how == 'blocks':
    return _blocks_inner(a.xc.shape[0], a.gram, b.gram)
  if how == 'gram_x':  # tr(Yᵀ K Y) = Σ_ij K_ij L_ij; K̃ excludes i = j.
    return jnp.sum(b.xc * _dot(a.gram, b.xc))
  if how == 'gram_y':
    return jnp.sum(a.xc * _dot(b.gram, a.xc))
  # ‖XᵀY‖²_F by column blocks of Y: same flops as one product, but XLA's CPU
  # matmul runs markedly faster on the narrower outputs (and the squares are
  # summed while a block is still in cache).
  d = b.xc.shape[1]
  t = sum(
    jnp.sum(jnp.square(_dot(a.xc.T, b.xc[:, s])))
    for s in _split(d, _num_blocks(d, _MIN_COLS))
  )
  if unbiased:
    t = t - jnp.sum(a.row_sq * b.row_sq)
  return t


def _cka_against(
  ref: _Side, h_ref: Array, y: Array, plan: _Plan, n: int, unbiased: bool
) -> Array:
  cand = _side(y, form=plan.y, unbiased=unbiased)
  t = _cross_term(ref, cand, plan.cross, unbiased)
  h_xy = _hsic_from_terms(t, ref.row_sq, cand.row_sq, n, unbiased)
  h_yy = _self_hsic(cand.t_self, cand.row_sq, n, y.shape[1], unbiased)
  return _cka_from_hsic(h_xy, h_ref, h_yy)


def linear_cka(
  x: ArrayLike,
  y: ArrayLike,
  *,
  debiased: bool = False,
  form: Form = 'auto',
) -> Array:
  """Linear CKA between two representations of the same `n` examples.

  Columns are centered first; the feature-space or Gram form is chosen by
  a flop count (feature space once `n` exceeds the widths enough: for equal
  widths `d` at about `n > 1.8 d`, since it needs three `d x d` products
  against the Gram form's two symmetric `n x n` ones), see the module
  docstring.

  Policy (see module docstring): mismatched rows, `n < 2` (`n < 4` if
  `debiased`; empty inputs included) or zero features raise `ValueError`
  naming the shapes; a constant input gives NaN, and so, debiased, does an
  input whose unbiased self-HSIC is zero within rounding (e.g. all rows
  but one identical); NaN/inf inputs give NaN. Use `validate` for eager
  errors. Invariant to scaling either input (any float32 scale at which
  its spread is at least the smallest normal float; NaN below, see the
  module docstring).

  Args:
    x: `[n, ...]`, flattened to `[n, dx]`.
    y: `[n, ...]`, flattened to `[n, dy]`.
    debiased: use the unbiased HSIC estimator (Song et al., 2012) as in
      Nguyen et al. (2021); default is the papers' biased estimator.
    form: `'auto'`, or force `'feature'` (`O(n d²)`) or `'gram'`
      (`O(n² d)`); all give the same value up to rounding.

  Returns:
    Scalar CKA, dtype float32 (float64 for float64 inputs under x64).
  """
  x, y = _as_matrix(x, 'x'), _as_matrix(y, 'y')
  n = _check_rows({'x': x.shape, 'y': y.shape}, debiased)
  dtype = _float_dtype(x, y)
  x, y = x.astype(dtype), y.astype(dtype)
  plan = _plan(n, x.shape[1], y.shape[1], 1, form)
  ref = _side(x, form=plan.x, unbiased=debiased)
  h_xx = _self_hsic(ref.t_self, ref.row_sq, n, x.shape[1], debiased)
  return _cka_against(ref, h_xx, y, plan, n, debiased)


def linear_cka_one_to_many(
  ref: ArrayLike,
  candidates: ArrayLike,
  *,
  debiased: bool = False,
  form: Form = 'auto',
) -> Array:
  """Linear CKA of one reference against `k` candidates (for pruning).

  The reference side (centering, scaling, `‖XᵀX‖_F` or its Gram) is
  computed once; the form for each side is chosen by total flop count over
  all candidates. Candidates that each need enough work (≥ 2e7
  multiply-adds) are processed one at a time with `lax.map` (faster on CPU
  than batched matmuls, and memory stays at one candidate's working set);
  small ones are vectorized with `vmap`, in chunks when the working set
  would exceed ~1 GiB. Equal to `[linear_cka(ref, c) for c in candidates]`
  up to rounding.

  Policy: as `linear_cka`, per candidate (a constant candidate gives NaN in
  its slot only; a constant reference makes every slot NaN). `k = 0`
  candidates give an empty `[0]` result.

  Args:
    ref: `[n, ...]`, flattened to `[n, d]`.
    candidates: `[k, n, ...]`, each flattened to `[n, d2]` (`[k, n]`: one
      feature each).
    debiased: unbiased HSIC estimator (see `linear_cka`).
    form: `'auto'`, `'feature'` or `'gram'` (see `linear_cka`).

  Returns:
    `[k]` CKA values.
  """
  x = _as_matrix(ref, 'ref')
  cands = jnp.asarray(candidates)
  if cands.ndim < 2:
    raise ValueError(
      f'candidates must have shape [k, n, ...]; got {cands.shape}.'
    )
  num = cands.shape[0]
  width = math.prod(cands.shape[2:])
  if width == 0:
    raise ValueError(
      f'candidates have shape {tuple(cands.shape)}: zero features, CKA is '
      'undefined.'
    )
  cands = cands.reshape(num, cands.shape[1], width)
  n = _check_rows({'ref': x.shape, 'candidates[i]': cands.shape[1:]}, debiased)
  dtype = _float_dtype(x, cands)
  x, cands = x.astype(dtype), cands.astype(dtype)
  dx, dy = x.shape[1], cands.shape[2]
  plan = _plan(n, dx, dy, num, form)
  side = _side(x, form=plan.x, unbiased=debiased)
  h_xx = _self_hsic(side.t_self, side.row_sq, n, dx, debiased)
  one = functools.partial(
    _cka_against, side, h_xx, plan=plan, n=n, unbiased=debiased
  )
  if _costs(n, dx, dy, plan)[1] >= _SEQUENTIAL_MACS:
    # Enough work per candidate to keep the machine busy: one candidate at a
    # time (XLA's CPU batched matmuls are markedly slower than a sequence
    # of plain ones, and memory stays at one candidate's working set).
    return jax.lax.map(one, cands)
  # Small candidates: vectorize, chunked if the working set gets large.
  per = 2 * n * dy + (2 * n * n if plan.y != 'feature' else dy * dy)
  per += dx * dy if plan.cross == 'feature' else 0
  per *= jnp.dtype(dtype).itemsize
  chunk = max(1, _CHUNK_BYTES // per)
  if num == 0 or chunk >= num:
    return jax.vmap(one)(cands)
  return jax.lax.map(one, cands, batch_size=chunk)


# ---------------------------------------------------------------------------
# RBF CKA.
# ---------------------------------------------------------------------------


def rbf_cka(
  x: ArrayLike,
  y: ArrayLike,
  *,
  sigma_frac: float = 0.8,
  debiased: bool = False,
) -> Array:
  """CKA with RBF kernels and the median-distance bandwidth (`gram_rbf`).

  Policy: as `linear_cka` (a constant input gives NaN); additionally NaN
  when a centered kernel is zero within rounding: a bandwidth so large
  that the kernel is constant within rounding (`sigma_frac` of a few
  hundred), or, debiased, a kernel with `U(K) = 0` (all rows but one
  identical, or equidistant rows). `validate(x, y, kernel='rbf')` names
  these. Scale invariant. Cost `O(n² (dx + dy + log n))`.

  Args:
    x: `[n, ...]`, flattened to `[n, dx]`.
    y: `[n, ...]`, flattened to `[n, dy]`.
    sigma_frac: bandwidth as a fraction of the median distance between
      distinct examples, positive.
    debiased: unbiased HSIC estimator (needs `n >= 4`).

  Returns:
    Scalar CKA.
  """
  _check_sigma_frac(sigma_frac)
  x, y = _as_matrix(x, 'x'), _as_matrix(y, 'y')
  _check_rows({'x': x.shape, 'y': y.shape}, debiased)
  dtype = _float_dtype(x, y)
  k = _rbf_kernel(x.astype(dtype), sigma_frac)
  l = _rbf_kernel(y.astype(dtype), sigma_frac)  # noqa: E741
  kc = center_gram(k, unbiased=debiased)
  lc = center_gram(l, unbiased=debiased)
  # The estimator's normalization cancels in the ratio.
  h_xx = _kernel_self_hsic(kc, k, x.shape[1])
  h_yy = _kernel_self_hsic(lc, l, y.shape[1])
  return _cka_from_hsic(jnp.sum(kc * lc), h_xx, h_yy)


# ---------------------------------------------------------------------------
# Many representations: matrices and minibatch accumulation.
# ---------------------------------------------------------------------------


def _segment_ids(widths: Sequence[int]) -> Array:
  return jnp.repeat(
    jnp.arange(len(widths)),
    jnp.asarray(widths),
    total_repeat_length=sum(widths),
  )


def _block_sq_sums(c: Array, wa: Sequence[int], wb: Sequence[int]) -> Array:
  """`[Σa, Σb]` matrix -> `[len(wa), len(wb)]` sums of squares per block.

  Segment sums, not one-hot matmuls: a NaN block must not leak into the
  others through `NaN * 0`.
  """
  sq = jax.ops.segment_sum(c * c, _segment_ids(wa), num_segments=len(wa))
  return jax.ops.segment_sum(sq.T, _segment_ids(wb), num_segments=len(wb)).T


def _pair_terms(
  xs: Sequence[Array],
  ys: Sequence[Array] | None,
  unbiased: bool,
  form: Form,
) -> tuple[Array, Array, Array]:
  """Cross terms of centered representations, all pairs at once.

  Args:
    xs: `p` centered `[n, d_i]` arrays.
    ys: `q` centered `[n, e_j]` arrays, or None for `ys = xs`.
    unbiased: `Σ_{i≠j}` instead of `Σ_ij` (see `_hsic_from_terms`).
    form: `'auto'`, `'feature'` or `'gram'`.

  Returns:
    `t` `[p, q]`, `t_xx` `[p]`, `t_yy` `[q]`.
  """
  same = ys is None
  ys = xs if same else ys
  n = xs[0].shape[0]
  wx = [a.shape[1] for a in xs]
  wy = [b.shape[1] for b in ys]
  if form == 'auto':
    feat = n * sum(wx) * sum(wy)
    feat += 0 if same else n * (sum(w * w for w in wx) + sum(w * w for w in wy))
    gram = n * n * (sum(wx) + (0 if same else sum(wy)))
    gram += _ELEMENTWISE_COST * n * n * len(xs) * len(ys)
    form = 'feature' if feat <= gram else 'gram'
  if form == 'feature':
    zx = jnp.concatenate(xs, axis=1)
    zy = zx if same else jnp.concatenate(ys, axis=1)
    t = _block_sq_sums(_dot(zx.T, zy), wx, wy)
    if same:
      t_xx = t_yy = jnp.diagonal(t)
    else:
      t_xx = jnp.stack([jnp.sum(jnp.square(_dot(a.T, a))) for a in xs])
      t_yy = jnp.stack([jnp.sum(jnp.square(_dot(b.T, b))) for b in ys])
    if unbiased:
      rx = jnp.stack([jnp.sum(a * a, axis=1) for a in xs])
      ry = rx if same else jnp.stack([jnp.sum(b * b, axis=1) for b in ys])
      t = t - _dot(rx, ry.T)
      t_xx = t_xx - jnp.sum(rx * rx, axis=1)
      t_yy = t_yy - jnp.sum(ry * ry, axis=1)
    return t, t_xx, t_yy
  if form != 'gram':
    raise ValueError(f"form must be 'auto', 'feature' or 'gram'; got {form!r}.")

  def grams(zs):
    g = jnp.stack([_dot(z, z.T) for z in zs])
    return _zero_diag(g) if unbiased else g

  gx = grams(xs)
  gy = gx if same else grams(ys)
  flat_x = gx.reshape(len(xs), -1)
  flat_y = gy.reshape(len(ys), -1)
  t = _dot(flat_x, flat_y.T)
  if same:
    return t, jnp.diagonal(t), jnp.diagonal(t)
  return t, jnp.sum(flat_x * flat_x, axis=1), jnp.sum(flat_y * flat_y, axis=1)


def _prepare_list(
  reps: Sequence[ArrayLike], name: str, unbiased: bool
) -> tuple[list[Array], int]:
  if not isinstance(reps, (list, tuple)):
    raise TypeError(
      f'{name} must be a list or tuple of arrays [n, ...] (one per '
      f'representation); got {type(reps).__name__}.'
    )
  if not reps:
    raise ValueError(f'{name} is empty.')
  mats = [_as_matrix(r, f'{name}[{i}]') for i, r in enumerate(reps)]
  n = _check_rows(
    {f'{name}[{i}]': m.shape for i, m in enumerate(mats)}, unbiased
  )
  return mats, n


def cka_matrix(
  reps: Sequence[ArrayLike],
  *,
  debiased: bool = False,
  form: Form = 'auto',
) -> Array:
  """Linear CKA between every pair of `m` representations (full batch).

  Representations may have different widths. Feature form computes one
  `ZᵀZ` of the concatenation `Z = [X_1 ... X_m]` (`O(n D²)`, `D = Σ d_i`);
  Gram form keeps all `m` Gram matrices (`O(n² D)` time, `O(m n²)` memory).

  Policy: as `linear_cka`; a constant representation gives NaN in its row
  and column only.

  Args:
    reps: list of `m` arrays `[n, ...]` (each flattened to `[n, d_i]`).
    debiased: unbiased HSIC estimator (see `linear_cka`).
    form: `'auto'`, `'feature'` or `'gram'`.

  Returns:
    `[m, m]` symmetric CKA matrix; entry `(i, j)` equals
    `linear_cka(reps[i], reps[j])` up to rounding.
  """
  mats, n = _prepare_list(reps, 'reps', debiased)
  dtype = _float_dtype(*mats)
  xs = [_standardize(m.astype(dtype)) for m in mats]
  t, t_diag, _ = _pair_terms(xs, None, debiased, form)
  rs = jnp.stack([jnp.sum(a * a, axis=1) for a in xs])
  h = _hsic_from_terms(t, rs[:, None, :], rs[None, :, :], n, debiased)
  widths = jnp.array([m.shape[1] for m in mats])
  h_diag = _self_hsic(t_diag, rs, n, widths, debiased)
  return _cka_from_hsic(h, h_diag[:, None], h_diag[None, :])


class MinibatchCKAState(NamedTuple):
  """Running sums for minibatch CKA (Nguyen, Raghu & Kornblith, 2021).

  A pytree of arrays, so it can be carried through `jax.lax.scan`, passed
  through `jit`, or sharded like any other state.

  The sums are in units of each layer's fixed power-of-two scale (CKA is
  scale invariant, the ratio of the sums does not depend on it), so that
  layers of any magnitude neither overflow nor underflow.

  Attributes:
    hsic_xy: `[p, q]` sum over batches of unbiased `HSIC(K_i, L_j)`.
    hsic_xx: `[p]` sum over batches of unbiased `HSIC(K_i, K_i)`.
    hsic_yy: `[q]` sum over batches of unbiased `HSIC(L_j, L_j)`.
    num_batches: `[]` int32 number of batches seen.
    log2_scale_x: `[p]` int32: layer `i` of every batch, centered, is
      divided by `2**log2_scale_x[i]`, the floor of log2 of its spread
      (largest max minus min of a feature over the rows) in the first batch
      in which that layer's self-HSIC is not zero (until then its sums are
      all zero, and the exponent 0).
    log2_scale_y: `[q]` int32, likewise for the y layers.
  """

  hsic_xy: Array
  hsic_xx: Array
  hsic_yy: Array
  num_batches: Array
  log2_scale_x: Array
  log2_scale_y: Array


def minibatch_cka_init(
  num_x: int, num_y: int | None = None, *, dtype: jnp.dtype = jnp.float32
) -> MinibatchCKAState:
  """Empty accumulator for `num_x x num_y` layer pairs.

  Args:
    num_x: number of representations on the x side (`p`).
    num_y: number on the y side (`q`); defaults to `num_x` (self-comparison,
      use `ys=None` in `minibatch_cka_update`).
    dtype: accumulation dtype (`jnp.float64` needs x64).

  Returns:
    A zeroed `MinibatchCKAState`.
  """
  num_y = num_x if num_y is None else num_y
  return MinibatchCKAState(
    hsic_xy=jnp.zeros((num_x, num_y), dtype),
    hsic_xx=jnp.zeros((num_x,), dtype),
    hsic_yy=jnp.zeros((num_y,), dtype),
    num_batches=jnp.zeros((), jnp.int32),
    log2_scale_x=jnp.zeros((num_x,), jnp.int32),
    log2_scale_y=jnp.zeros((num_y,), jnp.int32),
  )


def minibatch_cka_update(
  state: MinibatchCKAState,
  xs: Sequence[ArrayLike],
  ys: Sequence[ArrayLike] | None = None,
  *,
  form: Form = 'auto',
) -> MinibatchCKAState:
  """Adds one batch: unbiased HSIC of every layer pair on this batch.

  Each batch contributes Song et al.'s unbiased HSIC computed on that batch
  alone, so the final ratio (`minibatch_cka_result`) is Nguyen et al.'s
  minibatch CKA. It is NOT the full-data debiased CKA unless there is a
  single batch: averaging per-batch estimates drops all cross-batch pairs.
  The unbiased estimator is invariant to centering, so each batch is
  centered on its own (for accuracy) without changing the estimate.

  Each layer is centered on the batch and divided by the power of two fixed
  in the state (`MinibatchCKAState.log2_scale_x`), so every batch of a
  layer is in the same units and any overall scale of a layer, from `1e30`
  down to `1e-37` in float32, gives the same CKA (a layer whose spread at
  its first batch is below the smallest normal float is NaN, as in
  `linear_cka`). Later batches should stay within about `1e6` of the first
  one's scale (their fourth powers are summed).

  Policy: shape errors raise `ValueError` (batch size `b < 4`, mismatched
  rows, wrong number of layers); non-finite values propagate NaN into the
  affected sums. A batch in which a layer's unbiased self-HSIC is zero
  within rounding (a constant layer; see `linear_cka` for the others)
  adds exactly zero to that layer's sums; a layer for which that holds in
  every batch is NaN in `minibatch_cka_result`.

  Args:
    state: accumulator from `minibatch_cka_init`.
    xs: `p` arrays `[b, ...]` (one per layer, widths may differ).
    ys: `q` arrays `[b, ...]`, or None to compare `xs` with itself (each
      Gram computed once).
    form: `'auto'`, `'feature'` or `'gram'` (per-batch computation).

  Returns:
    The updated state (same structure and dtypes).
  """
  p, q = state.hsic_xx.shape[0], state.hsic_yy.shape[0]
  mx, b = _prepare_list(xs, 'xs', unbiased=True)
  if ys is None:
    my = None
    if p != q:
      raise ValueError(
        f'ys=None needs a square state; got state for {p} x {q} layers.'
      )
  else:
    my, by = _prepare_list(ys, 'ys', unbiased=True)
    if by != b:
      raise ValueError(f'xs and ys batches differ in rows: {b} vs {by}.')
  if len(mx) != p or (my is not None and len(my) != q):
    raise ValueError(
      f'State holds {p} x {q} layers; got {len(mx)} xs and '
      f'{len(my) if my is not None else len(mx)} ys.'
    )
  dtype = _float_dtype(*mx, *(my or []))
  cx, ex = _scaled_batch(mx, dtype, state.log2_scale_x, state.hsic_xx)
  if my is None:
    cy, ey = None, ex
  else:
    cy, ey = _scaled_batch(my, dtype, state.log2_scale_y, state.hsic_yy)
  t, t_xx, t_yy = _pair_terms(cx, cy, True, form)
  rx = jnp.stack([jnp.sum(a * a, axis=1) for a in cx])
  ry = rx if cy is None else jnp.stack([jnp.sum(a * a, axis=1) for a in cy])
  h = _hsic_from_terms(t, rx[:, None, :], ry[None, :, :], b, True)
  h_xx = _self_hsic(t_xx, rx, b, jnp.array([a.shape[1] for a in mx]), True)
  if my is None:
    h_yy = h_xx
  else:
    h_yy = _self_hsic(t_yy, ry, b, jnp.array([a.shape[1] for a in my]), True)
  # A layer whose self-HSIC is zero on this batch has U(K) = 0: its HSIC
  # with anything is zero too (the computed value is rounding noise).
  zero = (h_xx == 0)[:, None] | (h_yy == 0)[None, :]
  h = jnp.where(zero, jnp.zeros_like(h), h)
  acc = state.hsic_xy.dtype
  return MinibatchCKAState(
    hsic_xy=state.hsic_xy + h.astype(acc),
    hsic_xx=state.hsic_xx + h_xx.astype(acc),
    hsic_yy=state.hsic_yy + h_yy.astype(acc),
    num_batches=state.num_batches + 1,
    log2_scale_x=ex,
    log2_scale_y=ey,
  )


def _scaled_batch(
  mats: Sequence[Array], dtype: jnp.dtype, log2_scale: Array, sums: Array
) -> tuple[list[Array], Array]:
  """Centers each layer's batch and divides it by the layer's power of two.

  A layer whose self-HSIC sum is still zero takes this batch's own scale
  (`_standardize`'s: max |entry| in `[1/2, 2)`); the others keep theirs.
  Once every layer has a scale (usually after the first batch), a `cond`
  skips the reductions that measure this batch's scales.

  Args:
    mats: `p` arrays `[b, d_i]`.
    dtype: computation dtype.
    log2_scale: `[p]` int32 exponents from the state.
    sums: `[p]` the state's self-HSIC sums.

  Returns:
    The `p` centered, scaled `[b, d_i]` arrays and the `[p]` exponents.
  """
  shifted = [_shifted(m.astype(dtype)) for m in mats]
  zs = [z for z, _ in shifted]
  # Each batch is first scaled exactly by its own power of two (`_shifted`),
  # `e0`; the layer's scale is in true units.
  e0 = jnp.stack([e for _, e in shifted])

  def own_scales(zs):
    # A constant batch (no spread) sets nothing (0): it adds zeros.
    own = [_log2_spread(z) for z in zs]
    own = jnp.stack(
      [jnp.where(v, e + e0[i], 0) for i, (e, v) in enumerate(own)]
    )
    return jnp.where(sums == 0, own, log2_scale).astype(jnp.int32)

  e = jax.lax.cond(
    jnp.all(sums != 0), lambda zs: log2_scale.astype(jnp.int32), own_scales, zs
  )
  # A layer measured at a spread below the normal range: NaN (`_standardize`).
  lost = _lost_precision(e, True, dtype)
  out = [
    jnp.where(
      lost[i],
      jnp.asarray(jnp.nan, dtype),
      _times_pow2(z - jnp.mean(z, axis=0, keepdims=True), e0[i] - e[i]),
    )
    for i, z in enumerate(zs)
  ]
  return out, e


def minibatch_cka_result(state: MinibatchCKAState) -> Array:
  """Minibatch CKA `Σ_b HSIC_xy / sqrt(Σ_b HSIC_xx · Σ_b HSIC_yy)`.

  Equals the ratio of per-batch average unbiased HSICs (the `1/B` factors
  cancel). NaN where a denominator is zero: a layer whose self-HSIC was
  zero (within rounding) in every batch, or no batches yet.

  Args:
    state: accumulator after one or more `minibatch_cka_update` calls.

  Returns:
    `[p, q]` CKA matrix.
  """
  return _cka_from_hsic(
    state.hsic_xy, state.hsic_xx[:, None], state.hsic_yy[None, :]
  )


def minibatch_cka_matrix(
  reps: Sequence[ArrayLike], *, form: Form = 'auto'
) -> Array:
  """Minibatch CKA between all pairs of `m` batched representations.

  Runs `minibatch_cka_update` over the leading (batch index) axis with
  `jax.lax.scan`.

  Args:
    reps: list of `m` arrays `[num_batches, b, ...]`, widths may differ.
    form: `'auto'`, `'feature'` or `'gram'`.

  Returns:
    `[m, m]` minibatch CKA matrix.

  Raises:
    TypeError: `reps` is not a non-empty list or tuple.
    ValueError: leading dims differ, `num_batches == 0` (no data), or a
      batch shape error of `minibatch_cka_update`.
  """
  if not isinstance(reps, (list, tuple)) or not reps:
    raise TypeError(
      'reps must be a non-empty list of [num_batches, b, ...] arrays.'
    )
  reps = [jnp.asarray(r) for r in reps]
  shapes = {tuple(r.shape[:2]) for r in reps}
  if any(r.ndim < 2 for r in reps) or len(shapes) != 1:
    raise ValueError(
      'reps must share [num_batches, b, ...] leading dims; got '
      f'{[tuple(r.shape) for r in reps]}.'
    )
  if not shapes.pop()[0]:
    raise ValueError(
      'reps have no batches (num_batches = 0), CKA is undefined; got '
      f'{[tuple(r.shape) for r in reps]}.'
    )
  dtype = _float_dtype(*reps)
  state = minibatch_cka_init(len(reps), dtype=dtype)

  def step(s, batch):
    return minibatch_cka_update(s, list(batch), form=form), None

  state, _ = jax.lax.scan(step, state, tuple(reps))
  return minibatch_cka_result(state)


# ---------------------------------------------------------------------------
# Eager validation.
# ---------------------------------------------------------------------------


@functools.partial(
  jax.jit, static_argnames=('kernel', 'unbiased', 'sigma_frac')
)
def _diagnose(
  x: Array, *, kernel: str, unbiased: bool, sigma_frac: float
) -> dict[str, Array]:
  """Why CKA would be NaN for this `[n, d]` float input, by the same helpers.

  Args:
    x: `[n, d]` float32/float64.
    kernel: `'linear'` or `'rbf'`.
    unbiased: the estimator.
    sigma_frac: RBF bandwidth fraction.

  Returns:
    `non_finite` (count), `constant`, `subnormal` (a spread below the
    normal range, see `_standardize`) and `degenerate` (self-HSIC zero
    within rounding, which the CKA functions turn into NaN) flags.
  """
  n, d = x.shape
  c, e, e0, varies = _center_and_spread(x)
  out = {
    'non_finite': jnp.size(x) - jnp.count_nonzero(jnp.isfinite(x)),
    'constant': jnp.all(c == 0),
    'subnormal': _lost_precision(e + e0, varies, x.dtype),
  }
  if kernel == 'rbf':
    k = _rbf_kernel(x, sigma_frac)
    kc = center_gram(k, unbiased=unbiased)
    out['degenerate'] = _kernel_self_hsic(kc, k, d) == 0
  elif unbiased:
    side = _side(x, form=_plan(n, d, d, 1, 'auto').x, unbiased=True)
    out['degenerate'] = _self_hsic(side.t_self, side.row_sq, n, d, True) == 0
  else:  # The biased self-HSIC is zero only for a constant input.
    out['degenerate'] = out['constant']
  return out


def validate(
  x: ArrayLike,
  y: ArrayLike | Sequence[ArrayLike] | None = None,
  *,
  debiased: bool = False,
  kernel: Literal['linear', 'rbf'] = 'linear',
  sigma_frac: float = 0.8,
) -> None:
  """Raises `ValueError` for inputs on which CKA is undefined (NaN).

  Checks shapes (as the CKA functions do) and, on concrete arrays, the
  values, in the dtype the CKA functions compute in: non-finite entries;
  constant inputs; and inputs whose self-HSIC is zero within rounding
  (see `_self_hsic`): for the unbiased estimator, all rows but one
  identical, equidistant rows, and similar additive-distance inputs; for
  `kernel='rbf'`, also a bandwidth so large that the kernel is constant.
  These are exactly the inputs for which `linear_cka` (`kernel='linear'`)
  or `rbf_cka` (`kernel='rbf'`), also under `jit`, returns NaN, except
  that for the two rounding-based checks an input within rounding of the
  threshold may be judged differently by a differently shaped computation
  (the form `linear_cka` picks depends on both widths). Under `jit`
  (tracers) only the shape checks run, and the CKA functions return NaN
  for bad values.

  Cost: for `debiased=True` or `kernel='rbf'`, about one CKA evaluation
  per input; otherwise one pass over the data.

  Args:
    x: `[n, ...]` representation.
    y: optional `[n, ...]` representation, or a sequence of them (e.g.
      `list(candidates)`).
    debiased: check for the unbiased estimator (`n >= 4`, and its
      degenerate inputs).
    kernel: `'linear'` or `'rbf'`: the CKA function the inputs are for.
    sigma_frac: the RBF bandwidth fraction (`kernel='rbf'` only).

  Raises:
    ValueError: naming the input, its shape, the problem and the fix.
  """
  if kernel not in ('linear', 'rbf'):
    raise ValueError(f"kernel must be 'linear' or 'rbf'; got {kernel!r}.")
  if kernel == 'rbf':
    _check_sigma_frac(sigma_frac)
  if y is None:
    ys = []
  elif isinstance(y, (list, tuple)):
    ys = list(y)
  else:
    ys = [y]
  named = {'x': _as_matrix(x, 'x')}
  for i, a in enumerate(ys):
    name = 'y' if len(ys) == 1 else f'y[{i}]'
    named[name] = _as_matrix(a, name)
  _check_rows({k: v.shape for k, v in named.items()}, debiased)
  for name, a in named.items():
    if isinstance(a, jax.core.Tracer):
      continue  # Traced: values are unknown; see the NaN policy.
    what = f'{name} {tuple(a.shape)}'
    found = jax.device_get(
      _diagnose(
        a.astype(_float_dtype(a)),
        kernel=kernel,
        unbiased=debiased,
        sigma_frac=float(sigma_frac),
      )
    )
    if found['non_finite']:
      raise ValueError(
        f'{what} has {int(found["non_finite"])} non-finite value(s) (NaN/inf)'
        '; CKA would be NaN. Fix: find where they arise (overflow, log of 0, '
        'diverged training) or drop the affected rows from every input.'
      )
    if found['constant']:
      raise ValueError(
        f'{what} is constant over all {a.shape[0]} rows (zero variance in '
        'every feature), so CKA is 0/0 and undefined. Fix: exclude this '
        'representation (e.g. a dead ReLU layer or collapsed features) or '
        'use more varied examples.'
      )
    if found['subnormal']:
      tiny = float(jnp.finfo(_float_dtype(a)).tiny)
      raise ValueError(
        f'{what} varies only below the smallest normal float ({tiny:.3g}): '
        "its values are subnormal, with less than the dtype's precision, "
        'so CKA is NaN rather than inexact. Fix: compute the '
        'representation at a larger scale (CKA is scale invariant) or in '
        'float64.'
      )
    if found['degenerate'] and kernel == 'linear':
      raise ValueError(
        f'{what}: its unbiased HSIC with itself is zero within rounding, '
        'so debiased CKA is 0/0 and undefined. This happens when the '
        'squared distances between rows are additive, ‖x_i - x_j‖² = a_i + '
        'a_j: all rows but one identical, rows that differ from a common '
        'row each along its own orthogonal direction, or equidistant rows '
        '(e.g. one-hot codes of distinct classes). Fix: use the biased '
        'estimator (debiased=False) or more varied examples.'
      )
    if found['degenerate']:
      raise ValueError(
        f'{what}: its centered RBF kernel (sigma_frac={sigma_frac}) is zero '
        'within rounding, so RBF CKA is 0/0 and undefined: '
        + (
          'all rows but one identical, or equidistant rows (the unbiased '
          "estimator's U-centering removes such a kernel entirely), or "
          if debiased
          else ''
        )
        + 'a bandwidth so large that the kernel is constant within rounding. '
        'Fix: '
        'a smaller sigma_frac, '
        + ('the biased estimator, ' if debiased else '')
        + 'or more varied examples.'
      )
