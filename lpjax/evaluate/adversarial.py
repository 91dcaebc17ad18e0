"""Adversarial robustness: FGSM and PGD under an L∞ budget, in pixel space.

Models see normalised inputs `x = (p − mean) / std`, where `p` are pixels
scaled to the valid range `[low, high]` (`[0, 1]` for every image dataset
of `lpjax.data`). An attack perturbs the pixels: `p' = p + δ`
with `|δ|∞ ≤ ε` and `p' ∈ [low, high]`, and the model sees
`x' = x + δ / std`, so ε is in pixel units (ε = 8/255 is the usual CIFAR
budget) whatever the normalisation, and ε = 0 returns `x` bitwise.

* FGSM (Goodfellow, Shlens & Szegedy 2015): `δ = ε · sign(∇ₚ L)`, then
  clipped to the valid range.
* PGD (Madry et al. 2018): from a uniform random start in the ε-ball
  (`random_start`) or from `p`, `steps` steps of `δ ← Π(δ + α · sign(∇ₚ
  L))`, `Π` the projection onto the ε-ball and the valid range. Each
  example keeps the first iterate that is misclassified (a later sign step
  can overshoot back across the decision boundary), else the last.

`L` is the cross-entropy of the model in eval mode (no dropout, running
BatchNorm statistics: the caller's `logits_fn`). The gradient sign is per
example, so the batch's mean and sum losses give the same attack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LogitsFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class PixelSpace:
  """How model inputs map to pixels: `x = (p − mean) / std`, `p ∈ [low, high]`.

  Attributes:
    mean: broadcastable to one input (`[H, W, C]` or `[C]`), or a scalar.
    std: likewise, every entry > 0.
    low, high: the valid pixel range.
  """

  mean: Any = 0.0
  std: Any = 1.0
  low: float = 0.0
  high: float = 1.0

  def __post_init__(self):
    if not np.all(np.asarray(self.std) > 0):
      raise ValueError(f'PixelSpace std must be > 0; got {self.std!r}.')
    if not self.low < self.high:
      raise ValueError(
        f'PixelSpace needs low < high; got [{self.low}, {self.high}].'
      )

  @classmethod
  def of_dataset(cls, dataset: Any) -> PixelSpace:
    """The space of an `lpjax.data.Dataset` (pixels in [0, 1])."""
    return cls(
      mean=np.asarray(dataset.mean, np.float32),
      std=np.asarray(dataset.std, np.float32),
    )


def _check(eps: float, x: Any) -> None:
  if not eps >= 0:
    raise ValueError(
      f'The L∞ budget eps must be >= 0 (pixel units); got {eps}.'
    )
  if np.ndim(x) < 2:
    raise ValueError(
      f'Inputs must be a batch [n, ...]; got shape {np.shape(x)}.'
    )


def _grad(logits_fn, delta, x, y, std):
  """∇_δ of the summed cross-entropy at `x + δ / std`."""

  def loss(d):
    logits = logits_fn(x + d / std).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1))

  return jax.grad(loss)(delta)


def _project(delta, p, eps, low, high):
  """δ clipped to the valid range, then to the ε-ball (ε = 0 gives 0)."""
  return jnp.clip(jnp.clip(delta, low - p, high - p), -eps, eps)


def _arrays(space: PixelSpace):
  return (
    jnp.asarray(space.mean, jnp.float32),
    jnp.asarray(space.std, jnp.float32),
    jnp.float32(space.low),
    jnp.float32(space.high),
  )


@functools.partial(jax.jit, static_argnames=('logits_fn',))
def _fgsm(logits_fn, x, y, eps, mean, std, low, high):
  p = x * std + mean
  g = _grad(logits_fn, jnp.zeros_like(x), x, y, std)
  return x + _project(eps * jnp.sign(g), p, eps, low, high) / std


def fgsm(
  logits_fn: LogitsFn,
  x: Any,
  y: Any,
  eps: float,
  space: PixelSpace = PixelSpace(),
) -> jax.Array:
  """FGSM adversarial inputs (model space) for inputs `x` `[n, ...]`, labels
  `y` `[n]`, budget `eps` in pixel units.

  `logits_fn` is a static argument of the compiled attack: pass the same
  function object for every batch to compile once.
  """
  _check(eps, x)
  return _fgsm(
    logits_fn,
    jnp.asarray(x, jnp.float32),
    jnp.asarray(y, jnp.int32),
    jnp.float32(eps),
    *_arrays(space),
  )


@functools.partial(
  jax.jit, static_argnames=('logits_fn', 'steps', 'random_start')
)
def _pgd(
  logits_fn, x, y, eps, alpha, key, mean, std, low, high, steps, random_start
):
  p = x * std + mean
  if random_start:
    delta = jax.random.uniform(key, x.shape, jnp.float32, -eps, eps)
  else:
    delta = jnp.zeros_like(x)
  delta = _project(delta, p, eps, low, high)
  rows = (-1,) + (1,) * (x.ndim - 1)

  def step(_, carry):
    delta, best, found = carry
    g = _grad(logits_fn, delta, x, y, std)
    delta = _project(delta + alpha * jnp.sign(g), p, eps, low, high)
    hit = (jnp.argmax(logits_fn(x + delta / std), axis=-1) != y) & ~found
    best = jnp.where(hit.reshape(rows), delta, best)
    return delta, best, found | hit

  init = (delta, delta, jnp.zeros(x.shape[0], bool))
  delta, best, found = jax.lax.fori_loop(0, steps, step, init)
  return x + jnp.where(found.reshape(rows), best, delta) / std


def pgd(
  logits_fn: LogitsFn,
  x: Any,
  y: Any,
  eps: float,
  *,
  steps: int = 10,
  step_size: float | None = None,
  random_start: bool = True,
  key: jax.Array | None = None,
  space: PixelSpace = PixelSpace(),
) -> jax.Array:
  """PGD adversarial inputs (model space); see the module docstring.

  Args:
    logits_fn: the model in eval mode, `x -> logits` (a static argument of
      the compiled attack: the same object for every batch).
    x: inputs `[n, ...]` (model space).
    y: labels `[n]`.
    eps: L∞ budget in pixel units.
    steps: iterations (>= 1).
    step_size: α; default `2.5 · eps / steps` (Madry et al.'s choice,
      enough to cross the ball from any start).
    random_start: start uniformly in the ε-ball (needs `key`).
    key: PRNG key of the random start.
    space: the pixel space.
  """
  _check(eps, x)
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f'PGD steps must be an integer >= 1; got {steps!r}.')
  if random_start and key is None:
    raise ValueError('PGD with random_start=True needs a PRNG key (key=...).')
  alpha = 2.5 * eps / steps if step_size is None else float(step_size)
  if not alpha >= 0:
    raise ValueError(f'PGD step_size must be >= 0; got {step_size}.')
  return _pgd(
    logits_fn,
    jnp.asarray(x, jnp.float32),
    jnp.asarray(y, jnp.int32),
    jnp.float32(eps),
    jnp.float32(alpha),
    jax.random.PRNGKey(0) if key is None else key,
    *_arrays(space),
    steps=steps,
    random_start=bool(random_start),
  )


def pad_rows(a: Any, rows: int) -> np.ndarray:
  """`a` `[n, ...]` with its last row repeated up to `rows` rows (n ≥ 1), so
  that a short last batch runs the program compiled for full batches."""
  a = np.asarray(a)
  if len(a) >= rows:
    return a
  return np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)])


def accuracy(logits_fn: LogitsFn, x: Any, y: Any, *, batch: int = 512) -> float:
  """Top-1 accuracy of `logits_fn` on `x`, `batch` rows per call (a short
  last batch is padded to `batch` rows: one compiled shape)."""
  x, y = np.asarray(x), np.asarray(y)
  rows = min(batch, len(x))
  right = 0
  for i in range(0, len(x), batch):
    xb, yb = x[i : i + batch], y[i : i + batch]
    logits = logits_fn(jnp.asarray(pad_rows(xb, rows)))[: len(xb)]
    right += int(np.sum(np.asarray(jnp.argmax(logits, -1)) == yb))
  return right / len(x)


__all__ = ['PixelSpace', 'accuracy', 'fgsm', 'pad_rows', 'pgd']
