"""The suite's one rule for float32 tolerances.

A float32 value that accumulates `m` rounded operations on numbers of
magnitude `s` differs from the exact value, and from another float32
evaluation of the same formula in another order (XLA fuses, tiles and
reorders sums differently per program, batch size, shape and machine), by a
walk of `m` roundings of relative size at most `eps = 2**-23`. Rounding
errors behave like independent zero-mean steps, so the walk typically ends
near `√m · eps · s` (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., §3.6; Higham & Mary, "A new approach to probabilistic
rounding error analysis", SIAM J. Sci. Comput. 41, 2019). A network chains
`depth` such stages; each re-rounds an input that already carries the
earlier stages' errors, and with normalisation keeping the stages' gains near
1 the walk covers `depth · m` roundings:

    atol = MARGIN · √(depth · m) · eps · s

Under their model of independent roundings, Higham & Mary bound the error of
such a sum by `λ √m u` (`u = eps/2`, the unit roundoff) with probability at
least `1 − 2m exp(−λ²/2)`. `MARGIN = 10` (in units of `eps`) gives each of
the two float32 programs of a comparison `λ = 10`: a failure probability
below `m · 10⁻²¹`. Gains above 1 (unnormalised layers, ill-conditioned
ratios) are what a test states on top of the rule, with its reason.
`s` is the magnitude of the summed terms, which is the magnitude of the
result unless the sum cancels; callers pass it where it differs.

Comparisons against float64 oracles use the same rule: the oracle's own error
is ~10⁹ times smaller. Exact equalities (bitwise replays, integer counts)
stay exact; float64-only comparisons state their own tolerances.
"""

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
MARGIN = 10.0


def f32_atol(terms: float, scale: float = 1.0, depth: int = 1) -> float:
  """`MARGIN · √(depth · terms) · eps · scale` (see the module docstring)."""
  if terms < 1 or depth < 1 or not scale >= 0:
    raise ValueError(f'terms={terms}, depth={depth}, scale={scale}')
  return MARGIN * math.sqrt(depth * terms) * EPS32 * scale


def magnitude(*arrays) -> float:
  """Largest |entry| over `arrays`, at least 1 (absolute error floor)."""
  return max(1.0, *(float(np.max(np.abs(np.asarray(a)))) for a in arrays))


def assert_f32_close(got, want, terms, depth=1, scale=None, err_msg=''):
  """`|got − want| ≤ f32_atol(terms, scale, depth)` elementwise.

  `scale` defaults to `magnitude(want)`.
  """
  want = np.asarray(want, np.float64)
  scale = magnitude(want) if scale is None else scale
  atol = f32_atol(terms, scale, depth)
  np.testing.assert_allclose(
    np.asarray(got, np.float64), want, rtol=0, atol=atol, err_msg=err_msg
  )
  return atol


def network_terms(params) -> tuple[int, int]:
  """`(terms, depth)` of a network for `f32_atol`: the largest fan-in of a
  `kernel` leaf (the products one output unit sums; an upper bound for
  multi-axis attention kernels) and the number of kernels (the chained
  stages). Leaves need only a `.shape` (`jax.eval_shape` output works)."""
  leaves = [leaf for _, leaf in _kernel_leaves(params)]
  if not leaves:
    raise ValueError('no kernel leaves in params')
  terms = max(math.prod(tuple(k.shape)[:-1]) for k in leaves)
  return terms, len(leaves)


def _kernel_leaves(tree, path=()):
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    for key, value in tree.items():
      yield from _kernel_leaves(value, (*path, key))
  elif path and path[-1] == 'kernel':
    yield path, tree


def cka_atol(n: int, d: int, net: tuple[int, int] | None = None) -> float:
  """Absolute tolerance of a float32 (1 −) CKA of `[n, d]` features.

  The CKA itself sums `n · d` products into each Gram or cross-covariance
  entry: `f32_atol(n · d)` (CKA is scale-free: `s = 1`). If the features
  come out of two differently compiled float32 forwards of a network
  (`net = network_terms(params)`), they differ by a relative `ε =
  f32_atol(terms, 1, depth)`; CKA is the cosine of the two centred Gram
  matrices, each of which moves by `2ε` relative, and a cosine moves by at
  most the relative change of each of its vectors: `4ε` more.
  """
  atol = f32_atol(n * d)
  if net is not None:
    atol += 4 * f32_atol(net[0], 1.0, net[1])
  return atol


def gaussian_shape_atol(width: int, err_x: float, err_y: float) -> float:
  """Absolute tolerance of a Gaussian stochastic shape distance (any α).

  For inputs `[n, width]` (the wider one's width) whose entries are off by
  at most `err_x` and `err_y`. The bound is a triangle inequality, so it
  holds at every alignment `T`, and the value of each local optimum of the
  fit moves by at most it too:

  * for a fixed `T` the objective's square root is a metric between the
    two sets of class Gaussians (per class √(α ‖Δμ‖² + (2 − α) B²), then
    the root mean square over classes), so it moves by at most the
    distance at `T = I` between each input and its perturbed self;
  * an entry error `e` moves a centred class mean by `2e` per feature,
    `‖Δμ_c‖² ≤ 4 e² d`, and the class-centred rows `Z_c` by
    `‖ΔZ_c‖_F ≤ e √(n_c d)`; the covariance root `Σ_c^½ = |Z_c| / √(n_c −
    1)` then moves by `‖ΔΣ^½‖²_F ≤ 2 ‖ΔZ_c‖²_F / (n_c − 1) ≤ 4 e² d`
    (`n_c ≥ 2`; Araki & Yamagami 1981: `‖|A| − |B|‖_F ≤ √2 ‖A − B‖_F`), and
    `B²(Σ, Σ̃) ≤ ‖Σ^½ − Σ̃^½‖²_F`; with `α + (2 − α) = 2` the squared
    distance is at most `8 e² d`.

  Hence `|Δd| ≤ 2 √(2 d) (err_x + err_y)`: Lipschitz in the entries, with
  no dependence on the conditioning of the covariances (their square
  roots, taken of `ZᵀZ`, would amplify errors near 0; the bound does not
  go through them).
  """
  if width < 1 or not (err_x >= 0 and err_y >= 0):
    raise ValueError(f'width={width}, err_x={err_x}, err_y={err_y}')
  return 2.0 * math.sqrt(2.0 * width) * (err_x + err_y)
