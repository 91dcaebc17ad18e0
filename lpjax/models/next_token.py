"""Next-token statistics of decoders: the loss, chunked logits, held-out
evaluation (`lpjax.models.decoder`'s models).

Held-out evaluation: `perplexity` and `next_token_agreement` (`evaluate`
for both in one pass) run a decoder on token windows `[n, T]`
(`lpjax.data.text.windows`): every position but the last predicts the
next token of its window. `next_token_nll` is that loss per position from
given logits; `next_token_stats` computes it (and the argmax) from the
final hidden states (`Decoder(..., head=False)`) `LOGIT_CHUNK` positions
at a time (`token_stats`), so evaluation, healing (`lpjax.healing`) and
SLEB (`lpjax.methods.llm`) never hold the `[windows, T, vocab]` logits.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib


def next_token_nll(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """Every position's next-token negative log-likelihood `[b, T − 1]`.

  The one next-token loss of lpjax: held-out evaluation sums it per window,
  healing (`lpjax.healing`) and SLEB (`lpjax.methods.llm`) average it.
  Computed in float32 whatever the logits' dtype.

  Args:
    logits: `[b, T', vocab]`, `T' >= T − 1`; position `t` predicts
      `ids[:, t + 1]`. Positions from `T − 1` on (the prediction after the
      last token, where the model was run on all of `ids`) are ignored.
    ids: token windows `[b, T]`.
  """
  target = ids[:, 1:]
  logits = logits[:, : target.shape[1]].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]


# Positions whose logits one step of `token_stats` holds: a `[LOGIT_CHUNK,
# vocab]` float32 block (50 MB for SmolLM2's 49152 tokens, 131 MB for
# LLaMA-3's 128256), whatever the number of windows and their length.
LOGIT_CHUNK = 256


def output_logits(h: jax.Array, params: Any, arch: arch_lib.Arch) -> jax.Array:
  """Logits `[..., vocab]` (float32) of final normed hidden states `h`
  `[..., D]`: their products with the token embedding (`tied`) or the
  `lm_head` kernel, accumulated in float32 whatever the parameters' dtype
  (the embedding is contracted in place, not transposed)."""
  if arch.option('tied'):
    w = params['tok_embed']['embedding']  # [vocab, D]
    dims = (((h.ndim - 1,), (1,)), ((), ()))
  else:
    w = params['lm_head']['kernel']  # [D, vocab]
    dims = (((h.ndim - 1,), (0,)), ((), ()))
  return jax.lax.dot_general(h, w, dims, preferred_element_type=jnp.float32)


def token_stats(
  h: jax.Array,
  params: Any,
  arch: arch_lib.Arch,
  targets: jax.Array,
  *,
  chunk: int = LOGIT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
  """Each position's negative log-likelihood of its target (float32) and
  argmax token (int32), `targets`' shape, from final hidden states `h`
  `[*targets.shape, D]`.

  The positions are flattened and taken `chunk` at a time (`lax.map`; the
  last chunk zero-padded): each step forms that chunk's logits
  (`output_logits`), `logsumexp(z) − z[target]` and `argmax(z)`, so no
  more than `[chunk, vocab]` logits exist at once. Each step is
  rematerialised under differentiation (`jax.checkpoint`): the backward
  pass recomputes a chunk's logits rather than keeping every chunk's.
  Equal to `next_token_nll` and the argmax of the full logits up to float32
  rounding.
  """
  if chunk < 1:
    raise ValueError(
      f'chunk must be a positive number of positions; got {chunk}.'
    )
  shape = targets.shape
  d = h.shape[-1]
  n = int(np.prod(shape))
  c = min(chunk, n)
  m = -(-n // c)
  pad = m * c - n
  hs = jnp.pad(h.reshape(n, d), ((0, pad), (0, 0))).reshape(m, c, d)
  ts = jnp.pad(targets.reshape(n), (0, pad)).reshape(m, c)

  @jax.checkpoint
  def one(args):
    hc, tc = args
    z = output_logits(hc, params, arch)
    picked = jnp.take_along_axis(z, tc[:, None], axis=-1)[:, 0]
    nll = jax.nn.logsumexp(z, axis=-1) - picked
    return nll, jnp.argmax(z, axis=-1).astype(jnp.int32)

  nll, top = jax.lax.map(one, (hs, ts))
  return nll.reshape(-1)[:n].reshape(shape), top.reshape(-1)[:n].reshape(shape)


def next_token_stats(
  model: Any,
  variables: Any,
  ids: jax.Array,
  *,
  skip: jax.Array | None = None,
  chunk: int = LOGIT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
  """Every position's next-token NLL (float32) and argmax prediction
  (int32), both `[b, T − 1]`, of the decoder `model` on windows `ids`
  `[b, T]`, without the full `[b, T − 1, vocab]` logits (`token_stats`).

  The model runs on `ids[:, :-1]`; position `t` predicts `ids[:, t + 1]`.
  `skip`: an optional skip mask, as for the model.
  """
  h = model.apply(variables, ids[:, :-1], skip=skip, head=False)
  return token_stats(
    h, variables['params'], model.arch, ids[:, 1:], chunk=chunk
  )


@functools.lru_cache(maxsize=8)
def evaluation_program(model: Any, chunk: int = LOGIT_CHUNK):
  """The compiled held-out pass: `fn(variables, ids [b, T])` -> (each
  window's summed next-token NLL `[b]` float32, argmax predictions
  `[b, T − 1]` int32), `chunk` positions' logits at a time."""

  @jax.jit
  def nll(variables, ids):
    losses, top = next_token_stats(model, variables, ids, chunk=chunk)
    return jnp.sum(losses, axis=1), top

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


def _pass(
  model, variables, ids, batch, chunk=LOGIT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
  """Per-window mean next-token NLL `[n]` (float64) and argmax predictions
  `[n, T − 1]`, one pass."""
  nll = evaluation_program(model, chunk)
  sums, preds = [], []
  for chunk in _batches(ids, batch):
    s, p = nll(variables, jnp.asarray(chunk))
    sums.append(np.asarray(s, np.float64) / (chunk.shape[1] - 1))
    preds.append(np.asarray(p))
  return np.concatenate(sums), np.concatenate(preds)


def perplexity(
  model: Any,
  variables: Any,
  ids: np.ndarray,
  *,
  batch: int = 8,
  chunk: int = LOGIT_CHUNK,
) -> float:
  """exp(mean next-token negative log-likelihood) over every window.

  Args:
    model: a decoder module (`lpjax.models.decoder.Decoder`).
    variables: its variables.
    ids: token windows `[n, T]`; T − 1 predictions per window.
    batch: windows per forward (a last smaller batch compiles once more).
    chunk: positions whose logits are held at once (`token_stats`).
  """
  return float(np.exp(np.mean(_pass(model, variables, ids, batch, chunk)[0])))


def predictions(
  model: Any,
  variables: Any,
  ids: np.ndarray,
  *,
  batch: int = 8,
  chunk: int = LOGIT_CHUNK,
) -> np.ndarray:
  """The argmax next token at every position but the last, `[n, T − 1]`."""
  return _pass(model, variables, ids, batch, chunk)[1]


def evaluate(
  model: Any,
  variables: Any,
  ids: np.ndarray,
  reference: np.ndarray | None = None,
  *,
  batch: int = 8,
  chunk: int = LOGIT_CHUNK,
) -> dict[str, Any]:
  """Perplexity, each window's mean NLL (`window_nll`, for paired
  comparisons over windows), predictions and (with `reference`, the
  unpruned model's `predictions` on the same windows) next-token top-1
  agreement, from one pass over `ids`; `chunk` positions' logits at a time
  (`token_stats`), never every window's."""
  window_nll, got = _pass(model, variables, ids, batch, chunk)
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
  chunk: int = LOGIT_CHUNK,
) -> float:
  """Fraction of positions whose argmax equals `reference`'s (the unpruned
  model's `predictions` on the same windows)."""
  out = evaluate(model, variables, ids, reference, batch=batch, chunk=chunk)
  return out['agreement']
