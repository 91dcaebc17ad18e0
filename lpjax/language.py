"""Offline English text and language-model metrics.

`corpus(split)` is human-written English from the standard library's
`pydoc_data.topics` (the Python reference manual's topics, as `help()`
shows them: 79 topics, about 465,000 characters in CPython 3.11). Topics
are sorted by name; every fourth one (names at sorted positions 3, 7, 11,
...) is `'heldout'`, the rest `'calibration'`. Calibration text may steer
pruning decisions and healing; held-out text is only for evaluation. The
split is by whole topic, so no passage is in both. The topics change
between CPython releases (they are the release's documentation), so
`corpus_digest` identifies the text a result came from.

`perplexity` and `next_token_agreement` evaluate a decoder on token
windows `[n, T]` (`lpjax.interop.gguf_llama.windows`): every position but
the last predicts the next token of its window.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SPLITS = ('calibration', 'heldout')


def corpus(split: str) -> str:
  """The text of `split` (topics joined by blank lines)."""
  if split not in SPLITS:
    raise ValueError(f'Unknown text split {split!r}; valid: {SPLITS}.')
  from pydoc_data import topics

  names = sorted(topics.topics)
  held = {n for i, n in enumerate(names) if i % 4 == 3}
  keep = [n for n in names if (n in held) == (split == 'heldout')]
  return '\n\n'.join(topics.topics[n].strip() for n in keep)


def corpus_digest() -> str:
  """SHA-256 (first 16 hex digits) of both splits' text, and Python's
  version: `'3.11.7:1a2b...'`."""
  import hashlib
  import platform

  h = hashlib.sha256()
  for split in SPLITS:
    h.update(corpus(split).encode())
  return f'{platform.python_version()}:{h.hexdigest()[:16]}'


@functools.lru_cache(maxsize=8)
def _compiled_nll(model: Any):
  @jax.jit
  def nll(variables, ids):
    logits = model.apply(variables, ids[:, :-1]).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    target = ids[:, 1:]
    picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    return -jnp.sum(picked, axis=1), jnp.argmax(logits, axis=-1)

  return nll


def _batches(ids: np.ndarray, batch: int):
  ids = np.asarray(ids, np.int32)
  if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
    raise ValueError(
      f'Token windows must be [n >= 1, T >= 2]; got {ids.shape}.'
    )
  if batch < 1:
    raise ValueError(f'batch must be positive; got {batch}.')
  for start in range(0, len(ids), batch):
    yield ids[start : start + batch]


def _pass(model, variables, ids, batch) -> tuple[np.ndarray, np.ndarray]:
  """Per-window mean next-token NLL `[n]` (float64) and argmax predictions
  `[n, T − 1]`, one pass."""
  nll = _compiled_nll(model)
  sums, preds = [], []
  for chunk in _batches(ids, batch):
    s, p = nll(variables, jnp.asarray(chunk))
    sums.append(np.asarray(s, np.float64) / (chunk.shape[1] - 1))
    preds.append(np.asarray(p))
  return np.concatenate(sums), np.concatenate(preds)


def perplexity(
  model: Any, variables: Any, ids: np.ndarray, *, batch: int = 8
) -> float:
  """exp(mean next-token negative log-likelihood) over every window.

  Args:
    model: a decoder module (`lpjax.models.decoder.Decoder`).
    variables: its variables.
    ids: token windows `[n, T]`; T − 1 predictions per window.
    batch: windows per forward (a last smaller batch compiles once more).
  """
  return float(np.exp(np.mean(_pass(model, variables, ids, batch)[0])))


def predictions(
  model: Any, variables: Any, ids: np.ndarray, *, batch: int = 8
) -> np.ndarray:
  """The argmax next token at every position but the last, `[n, T − 1]`."""
  return _pass(model, variables, ids, batch)[1]


def evaluate(
  model: Any,
  variables: Any,
  ids: np.ndarray,
  reference: np.ndarray | None = None,
  *,
  batch: int = 8,
) -> dict[str, Any]:
  """Perplexity, each window's mean NLL (`window_nll`, for paired
  comparisons over windows), predictions and (with `reference`, the
  unpruned model's `predictions` on the same windows) next-token top-1
  agreement, from one pass over `ids`."""
  window_nll, got = _pass(model, variables, ids, batch)
  out = {
    'perplexity': float(np.exp(np.mean(window_nll))),
    'window_nll': window_nll,
    'predictions': got,
  }
  if reference is not None:
    if got.shape != np.shape(reference):
      raise ValueError(
        f'reference predictions {np.shape(reference)} do not match {got.shape}.'
      )
    out['agreement'] = float(np.mean(got == reference))
  return out


def next_token_agreement(
  model: Any,
  variables: Any,
  reference: np.ndarray,
  ids: np.ndarray,
  *,
  batch: int = 8,
) -> float:
  """Fraction of positions whose argmax equals `reference`'s (the unpruned
  model's `predictions` on the same windows)."""
  return evaluate(model, variables, ids, reference, batch=batch)['agreement']
