"""Text (`lpjax.data.text`), decoder metrics and the sentence-encoder pipeline.

Perplexity and next-token agreement (`lpjax.models.decoder`) against
float64 NumPy on a tiny decoder; the corpus split is disjoint and fixed;
sentences and token windows are drawn as documented, and counts the text
cannot supply raise `ConfigError`; the embedding pipeline runs the real
MiniLM end to end on a few sentences, resumes by replaying its edits, and
refuses a changed config.
"""

import json

import numpy as np
import pytest
from test_pipeline import REPO, _load_config
from tolerances import f32_atol

from lpjax import errors, models
from lpjax.data import text
from lpjax.errors import ConfigError
from lpjax.models import decoder, next_token
from lpjax.run import embedding as embedding_task


def test_corpus_splits_are_disjoint_whole_topics():
  from pydoc_data import topics

  cal, held = text.corpus('calibration'), text.corpus('heldout')
  texts = {n: t.strip() for n, t in topics.topics.items()}
  in_cal = {n for n, t in texts.items() if t and t in cal}
  in_held = {n for n, t in texts.items() if t and t in held}
  assert not in_cal & in_held
  assert len(in_held) == len(texts) // 4  # every fourth topic
  # By name (CPython 3.11's topics): sorted positions 3 and 7 are held out.
  assert {'atom-identifiers', 'augassign'} <= in_held
  assert {'assert', 'assignment', 'async', 'atom-literals'} <= in_cal
  assert len(in_cal) + len(in_held) == sum(bool(t) for t in texts.values())
  with pytest.raises(ValueError, match='valid'):
    text.corpus('test')


def _log_softmax64(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_perplexity_and_agreement_equal_a_float64_oracle():
  arch = decoder.decoder(
    vocab=30, width=16, depth=2, heads=4, kv_heads=2, mlp=8
  )
  variables = models.init_variables(arch, 0, (9,))
  model = models.build_model(arch)
  ids = np.random.default_rng(0).integers(0, 30, size=(5, 9)).astype(np.int32)
  # Oracle: the model's logits in float64, then NumPy log-softmax.
  logits = np.asarray(model.apply(variables, ids[:, :-1]), np.float64)
  logp = _log_softmax64(logits)
  nll = -np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
  want = np.exp(nll.mean())
  got = next_token.perplexity(model, variables, ids, batch=2)  # 2 + 2 + 1
  # Same logits; only the float32 log-softmax and mean differ: 30 terms per
  # log-sum-exp, nll.size terms in the mean, on numbers of size |log p|.
  atol = f32_atol(30 * nll.size, float(np.abs(logp).max()))
  assert abs(got - want) <= want * atol
  preds = next_token.predictions(model, variables, ids, batch=5)
  np.testing.assert_array_equal(preds, logits.argmax(-1))
  assert next_token.next_token_agreement(model, variables, preds, ids) == 1.0
  other = preds.copy()
  other[0, :4] = (other[0, :4] + 1) % 30
  assert next_token.next_token_agreement(model, variables, other, ids) == (
    1 - 4 / preds.size
  )
  with pytest.raises(ValueError, match='T >= 2'):
    next_token.perplexity(model, variables, ids[:, :1])


def test_sentences_and_agreement():
  passage = (
    'First one is here.  A second\nsentence, split over lines!  Hi. ' * 2
  )
  assert (
    text.sentences(passage)
    == [
      'First one is here.',
      'A second sentence, split over lines!',
    ]
    * 2
  )
  rng = np.random.default_rng(0)
  e = rng.normal(size=(6, 4))
  e /= np.linalg.norm(e, axis=1, keepdims=True)
  same = embedding_task.agreement(e, e)
  assert same['nn_agreement'] == 1.0
  assert abs(same['cosine'] - 1.0) < 1e-12
  flipped = embedding_task.agreement(-e, e)
  assert abs(flipped['cosine'] + 1.0) < 1e-12
  # Nearest neighbours by an explicit loop, for two unrelated sets.
  p = rng.normal(size=(6, 4))
  p /= np.linalg.norm(p, axis=1, keepdims=True)

  def nearest(x, i):
    others = [j for j in range(len(x)) if j != i]
    return max(others, key=lambda j: float(np.dot(x[i], x[j])))

  want = np.mean([nearest(p, i) == nearest(e, i) for i in range(6)])
  got = embedding_task.agreement(p, e)
  assert got['nn_agreement'] == want
  assert abs(got['cosine'] - np.mean(np.sum(p * e, 1))) < 1e-12
  assert abs(got['cosine_min'] - np.min(np.sum(p * e, 1))) < 1e-12


def test_draw_sentences_is_seeded_in_text_order_and_checks_the_count():
  pool = text.sentences(text.corpus('heldout'))
  drawn = text.draw_sentences('heldout', 20, seed=4)
  assert drawn == text.draw_sentences('heldout', 20, seed=4)
  assert drawn != text.draw_sentences('heldout', 20, seed=5)
  # Positions drawn without replacement from the split's stream (1 for
  # 'heldout'), kept in text order.
  rng = np.random.default_rng([4, 1])
  where = np.sort(rng.choice(len(pool), 20, replace=False))
  assert drawn == [pool[i] for i in where]
  with pytest.raises(ConfigError) as e:
    text.draw_sentences('heldout', len(pool) + 1, seed=0)
  assert str(e.value) == (
    f'{len(pool) + 1} heldout sentences asked; the heldout text holds '
    f'{len(pool)}. Lower embedding.heldout_sentences.'
  )


def _bytes(s):
  return np.frombuffer(s.encode('utf-8'), np.uint8).astype(np.int32)


def test_token_windows_of_the_corpus():
  ids = np.arange(23)
  np.testing.assert_array_equal(
    text.windows(ids, 5), np.arange(20).reshape(4, 5)
  )
  np.testing.assert_array_equal(text.windows(ids, 5, 2), [ids[:5], ids[5:10]])
  with pytest.raises(ValueError, match='5 asked') as e:
    text.windows(ids, 5, 5)
  assert not isinstance(e.value, ConfigError)
  held = text.corpus_windows(_bytes, 'heldout', 64, 3)
  stream = _bytes(text.corpus('heldout'))
  np.testing.assert_array_equal(held.ravel(), stream[: 3 * 64])
  assert held.dtype == np.int32
  with pytest.raises(ConfigError) as e:
    text.corpus_windows(_bytes, 'heldout', len(stream) + 1)
  assert str(e.value) == (
    f'heldout text: The text holds {len(stream)} tokens: 0 full windows of '
    f'{len(stream) + 1}; 0 asked. Use a longer text or shorter windows.'
  )


def test_calibration_windows_are_a_seeded_sample_of_every_window():
  drawn, every = text.calibration_windows(_bytes, count=6, length=128, seed=2)
  np.testing.assert_array_equal(
    every, text.corpus_windows(_bytes, 'calibration', 128)
  )
  pick = np.sort(
    np.random.default_rng([2, 0]).choice(len(every), 6, replace=False)
  )
  np.testing.assert_array_equal(drawn, every[pick])
  again, _ = text.calibration_windows(_bytes, count=6, length=128, seed=2)
  np.testing.assert_array_equal(drawn, again)
  with pytest.raises(ConfigError) as e:
    text.calibration_windows(_bytes, count=len(every) + 1, length=128, seed=0)
  assert str(e.value) == (
    f'{len(every) + 1} calibration windows of 128 tokens asked; the '
    f'calibration text holds {len(every)}. Lower llm.calibration_windows or '
    'calibration_length.'
  )


def _tiny_config(**overrides):
  c = _load_config(REPO / 'configs' / 'minilm.py')
  c.embedding.calibration_sentences = 12
  c.embedding.heldout_sentences = 10
  c.embedding.max_length = 24
  c.embedding.data_batch_size = 12
  c.prune.target_blocks = 2
  for k, v in overrides.items():
    group, key = k.split('.')
    c[group][key] = v
  return c


def test_minilm_pipeline_runs_resumes_and_refuses_changes(tmp_path):
  c = _tiny_config()
  res = embedding_task.run(c, str(tmp_path))
  its = res['iterations']
  assert [len(r['removed']) for r in its] == [1, 1]
  assert its[0]['blocks'] == 5 and its[1]['blocks'] == 4
  # The scores ranked the removed layer lowest among the removable ones.
  for r in its:
    assert r['scores'][r['removed'][0]] == min(r['scores'].values())
    assert 0.0 < r['cosine'] <= 1.0 + 1e-6
    assert 0.0 <= r['nn_agreement'] <= 1.0
  assert its[0]['removed'] != its[1]['removed']
  # Interrupted after iteration 1: the re-run replays it and computes
  # iteration 2 again, equal to the uninterrupted run's.
  path = tmp_path / 'results.json'
  saved = json.loads(path.read_text())
  path.write_text(json.dumps({**saved, 'iterations': saved['iterations'][:1]}))

  def strip(rec):
    return {k: v for k, v in rec.items() if 'seconds' not in k}

  again = embedding_task.run(c, str(tmp_path))
  assert [strip(r) for r in json.loads(json.dumps(again['iterations']))] == [
    strip(r) for r in saved['iterations']
  ]
  assert again['corpus'] == saved['corpus']
  # A record made on other text (another Python's pydoc topics) is refused.
  path.write_text(json.dumps({**saved, 'corpus': '3.0.0:0000'}))
  with pytest.raises(errors.ConfigError, match='other text'):
    embedding_task.run(c, str(tmp_path))
  path.write_text(json.dumps(saved))
  with pytest.raises(errors.ConfigError, match='target_blocks'):
    embedding_task.run(
      _tiny_config(**{'prune.target_blocks': 3}), str(tmp_path)
    )
  with pytest.raises(errors.ConfigError, match='floor'):
    embedding_task.run(
      _tiny_config(**{'prune.target_blocks': 6}), str(tmp_path / 'z')
    )
  with pytest.raises(errors.ConfigError, match='loss'):
    embedding_task.run(
      _tiny_config(**{'prune.criterion': 'sglp'}), str(tmp_path / 'x')
    )
  with pytest.raises(ConfigError, match='holds'):
    embedding_task.run(
      _tiny_config(**{'embedding.heldout_sentences': 10**6}),
      str(tmp_path / 'y'),
    )
