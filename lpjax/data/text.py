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
`calibration_windows`), on which `lpjax.models.next_token.perplexity` and
`next_token_agreement` evaluate them; `window_topics` says which topic
each window comes from (the clusters of a topic bootstrap: a long topic
spans several windows). Every function takes plain values
(an `encode` function from text to token ids, counts, lengths, a seed);
a count or length the text cannot supply raises `lpjax.errors.ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from lpjax.errors import ConfigError

SPLITS = ('calibration', 'heldout')
TOPIC_SEPARATOR = '\n\n'  # between topics in `corpus`


def topics(split: str) -> list[str]:
  """The topics of `split` in corpus order (sorted by name), each stripped
  of surrounding white space; `corpus(split)` joins them with blank lines.
  A topic may be empty."""
  if split not in SPLITS:
    raise ValueError(f'Unknown text split {split!r}; valid: {SPLITS}.')
  from pydoc_data import topics as pydoc_topics

  names = sorted(pydoc_topics.topics)
  held = {n for i, n in enumerate(names) if i % 4 == 3}
  keep = [n for n in names if (n in held) == (split == 'heldout')]
  return [pydoc_topics.topics[n].strip() for n in keep]


def corpus(split: str) -> str:
  """The text of `split` (topics joined by blank lines)."""
  return TOPIC_SEPARATOR.join(topics(split))


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


################################################################################
# Topics of token windows (clustered statistics over held-out text).
################################################################################


def topic_token_starts(
  encode: Callable[[str], np.ndarray], split: str
) -> np.ndarray:
  """The token index at which each topic of `split` starts in
  `encode(corpus(split))` (int64, one per topic of `topics(split)`).

  Topic `i` starts where the text before it (topics `0..i-1`, each followed
  by the separator) ends: `len(encode(prefix))`, so a token `encode` adds
  before every text (BOS) counts as it does in the whole stream; topic 0
  starts at 0. A byte-level BPE may merge the separator with its
  neighbours differently in the prefix than in the whole text, so a start
  may be off by a token; `window_topics` only needs which topic holds most
  of a window.
  """
  parts = topics(split)
  starts = np.zeros(len(parts), np.int64)
  prefix = ''
  for i in range(1, len(parts)):
    prefix += parts[i - 1] + TOPIC_SEPARATOR
    starts[i] = len(encode(prefix))
  return starts


def majority_topic(
  starts: np.ndarray, total: int, length: int, count: int
) -> np.ndarray:
  """For windows `w = 0..count-1` of tokens `[w·length, (w+1)·length)`,
  the topic holding most of the window's tokens (the earliest on a tie),
  topic `i` being tokens `[starts[i], starts[i+1])` of a stream of `total`
  tokens (the last topic ends at `total`).

  Raises:
    ValueError: `starts` does not begin at 0 or decreases, or the windows
      run past `total`.
  """
  starts = np.asarray(starts, np.int64)
  if len(starts) < 1 or starts[0] != 0 or np.any(np.diff(starts) < 0):
    raise ValueError(
      f'Topic starts must begin at 0 and never decrease; got {starts}.'
    )
  if count * length > total:
    raise ValueError(
      f'{count} windows of {length} tokens run past the {total} tokens.'
    )
  ends = np.append(starts[1:], total)
  lo = np.arange(count, dtype=np.int64)[:, None] * length
  overlap = np.minimum(lo + length, ends[None]) - np.maximum(lo, starts[None])
  return np.argmax(np.maximum(overlap, 0), axis=1)


def window_topics(
  encode: Callable[[str], np.ndarray],
  split: str,
  length: int,
  count: int | None = None,
) -> np.ndarray:
  """The topic (index into `topics(split)`) of each window that
  `corpus_windows(encode, split, length, count)` makes: the topic holding
  most of the window's tokens (`majority_topic`).

  Windows of one topic are not independent samples of text (a long topic
  spans several windows); resampling whole topics (a cluster bootstrap)
  respects that.

  Raises:
    ConfigError: the split holds fewer than `count` (or 1) full windows.
  """
  total = len(encode(corpus(split)))
  n = total // length
  want = n if count is None else count
  if want < 1 or n < want:
    raise ConfigError(
      f'{split} text: it holds {total} tokens: {n} full windows of '
      f'{length}; {want} asked. Use a longer text or shorter windows.'
    )
  return majority_topic(topic_token_starts(encode, split), total, length, want)
