"""Offline English text: the corpus, its sentences and its token windows.

`corpus(split)` is human-written English from the standard library's
`pydoc_data.topics` (the Python reference manual's topics, as `help()`
shows them: 79 topics, about 465,000 characters in CPython 3.11). Topics
are sorted by name; every fourth one (names at sorted positions 3, 7, 11,
...) is `'heldout'`, the rest `'calibration'`. Calibration text may steer
pruning decisions and healing; held-out text is only for evaluation. The
split is by whole topic, so no passage is in both. The topics change
between CPython releases (they are the release's documentation), so
`corpus_digest` identifies the text a result came from.

The sentence encoders read sentences (`sentences`, `draw_sentences`); the
decoders read token windows `[n, T]` (`windows`, `corpus_windows`,
`calibration_windows`), on which `lpjax.models.decoder.perplexity` and
`next_token_agreement` evaluate them. Every function takes plain values
(an `encode` function from text to token ids, counts, lengths, a seed);
a count or length the text cannot supply raises `lpjax.errors.ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from lpjax.errors import ConfigError

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


################################################################################
# Sentences (sentence encoders).
################################################################################


def sentences(text: str, *, min_words: int = 4, max_words: int = 60) -> list:
  """Sentences of `text`: split after . ! ? followed by white space, joined
  lines, kept if they hold `min_words`..`max_words` words and a letter."""
  flat = re.sub(r'\s+', ' ', text)
  out = []
  for s in re.split(r'(?<=[.!?])\s+', flat):
    words = s.split()
    if min_words <= len(words) <= max_words and re.search('[A-Za-z]', s):
      out.append(s.strip())
  return out


def draw_sentences(split: str, count: int, seed: int) -> list[str]:
  """`count` sentences of text `split`, drawn without replacement (`seed`),
  in text order.

  Raises:
    ConfigError: the split holds fewer than `count` sentences.
  """
  pool = sentences(corpus(split))
  if count > len(pool):
    raise ConfigError(
      f'{count} {split} sentences asked; the {split} text holds '
      f'{len(pool)}. Lower embedding.{split}_sentences.'
    )
  rng = np.random.default_rng([seed, 0 if split == 'calibration' else 1])
  return [pool[i] for i in np.sort(rng.choice(len(pool), count, replace=False))]


################################################################################
# Token windows (decoders).
################################################################################


def windows(
  ids: np.ndarray, length: int, count: int | None = None
) -> np.ndarray:
  """Cut a token stream into `[n, length]` non-overlapping windows.

  Args:
    ids: a 1-D token stream.
    length: tokens per window.
    count: take the first `count` windows (all full ones by default).

  Raises:
    ValueError: the stream holds fewer than `count` (or 1) full windows.
  """
  n = len(ids) // length
  want = n if count is None else count
  if want < 1 or n < want:
    raise ValueError(
      f'The text holds {len(ids)} tokens: {n} full windows of {length}; '
      f'{want} asked. Use a longer text or shorter windows.'
    )
  return np.asarray(ids[: want * length], np.int32).reshape(want, length)


def corpus_windows(
  encode: Callable[[str], np.ndarray],
  split: str,
  length: int,
  count: int | None = None,
) -> np.ndarray:
  """The first `count` (default: all) windows of `length` tokens of text
  `split`, tokenised with `encode`.

  Raises:
    ConfigError: the split holds fewer than `count` (or 1) full windows.
  """
  try:
    return windows(encode(corpus(split)), length, count)
  except ValueError as e:
    raise ConfigError(f'{split} text: {e}') from None


def calibration_windows(
  encode: Callable[[str], np.ndarray], *, count: int, length: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """`(drawn, every)`: `count` calibration windows of `length` tokens drawn
  without replacement (`seed`, in text order), and all of them.

  Raises:
    ConfigError: the calibration text holds fewer than `count` windows.
  """
  every = corpus_windows(encode, 'calibration', length, None)
  if count > len(every):
    raise ConfigError(
      f'{count} calibration windows of {length} tokens asked; the '
      f'calibration text holds {len(every)}. Lower llm.calibration_windows '
      'or calibration_length.'
    )
  rng = np.random.default_rng([seed, 0])
  pick = np.sort(rng.choice(len(every), count, replace=False))
  return every[pick], every
