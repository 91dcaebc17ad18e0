"""The LLM depth-pruning pipeline and healing, on a tiny byte-level decoder.

The decoder reads UTF-8 bytes of the real calibration / held-out text
(vocabulary 256), so every path of `lpjax.llm_pipeline` runs in seconds.
Oracles: a float64 NumPy LLaMA forward (tests/test_transformers.py) for the
recorded perplexities; the recorded scores for the one-shot removals; LoRA
merging against NumPy; an uninterrupted healing run for the resumed one.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_transformers import _decoder_oracle, _np
from tolerances import f32_atol, magnitude, network_terms

from configs import smollm2_depth
from lpjax import (
  errors,
  healing,
  methods,
  models,
  report,
  surgery,
)
from lpjax.data import text
from lpjax.methods import consensus
from lpjax.models import decoder, next_token
from lpjax.run import language_model, loop

DEPTH = 5
LENGTH = 16


def _encode(text):
  return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)


def _variables(arch, seed=0):
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    if path[-1].key == 'kernel':
      return jnp.asarray(noise / np.sqrt(math.prod(leaf.shape[:-1])))
    if path[-1].key == 'scale':
      return jnp.asarray(1.0 + 0.3 * noise)
    return jnp.asarray(noise)

  shapes = models.variable_shapes(arch)
  return jax.tree.map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def lm():
  arch = decoder.decoder(
    vocab=256, width=16, depth=DEPTH, heads=2, kv_heads=1, mlp=24,
    seq_len=LENGTH, rope_theta=1e4,
  )  # fmt: skip
  return language_model.LanguageModel(arch, _variables(arch), _encode, 'bytes')


def _config(**kw):
  c = smollm2_depth.get_config()
  c.llm.calibration_windows = 8
  c.llm.calibration_length = LENGTH
  c.llm.heldout_windows = 4
  c.llm.heldout_length = LENGTH
  c.llm.data_batch_size = 4
  c.llm.remove = (1, 2)
  c.llm.heal.at = ()
  c.llm.heal.steps = 3
  c.llm.heal.batch_size = 4
  c.llm.heal.learning_rate = 1e-2
  c.llm.heal.checkpoint_every = 2
  for key, value in kw.items():
    node = c
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _ppl64(arch, variables, ids):
  """Float64 perplexity, and its float32 relative tolerance.

  The mean NLL is a logit minus a log-sum-exp, each within the logits'
  float32 tolerance (log-sum-exp is 1-Lipschitz in the max norm), so the
  NLL is within twice that, and exp turns an absolute NLL error into the
  same relative perplexity error (first order).
  """
  logits = _decoder_oracle(arch, _np(variables['params']), ids[:, :-1])
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  picked = np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
  terms, depth = network_terms(models.variable_shapes(arch)['params'])
  rel = 2 * f32_atol(terms, magnitude(logits), depth)
  return float(np.exp(-picked.mean())), rel


def _heldout(lm, c):
  return text.corpus_windows(
    lm.encode, 'heldout', c.llm.heldout_length, c.llm.heldout_windows
  )


def test_one_shot_removes_the_lowest_scores_and_evaluates_exactly(lm, tmp_path):
  c = _config(**{'prune.criterion': 'block_influence'})
  res = language_model.run(c, str(tmp_path), lm=lm)
  (decision,) = res['decisions']  # scored once, on the unpruned model
  scores = decision['scores']
  ranked = sorted(scores, key=lambda u: (scores[u], u))
  held = _heldout(lm, c)
  # The unpruned perplexity against a float64 forward.
  want, rel = _ppl64(lm.arch, lm.variables, held)
  assert res['baseline']['perplexity'] == pytest.approx(want, rel=rel)
  for k in (1, 2):
    got = res['pruned'][str(k)]
    assert got['removed'] == ranked[:k]
    arch, variables = surgery.apply(
      lm.arch, lm.variables, surgery.remove(ranked[:k])
    )
    assert got['layers'] == DEPTH - k
    # Perplexity of the model with those layers deleted, float64 NumPy.
    want, rel = _ppl64(arch, variables, held)
    assert got['perplexity'] == pytest.approx(want, rel=rel)
    assert abs(got['perplexity'] / res['baseline']['perplexity'] - 1) > 10 * rel
    # Equal windows: perplexity = exp(mean of the windows' mean NLL).
    assert len(got['window_nll']) == len(held)
    assert np.exp(np.mean(got['window_nll'])) == pytest.approx(
      got['perplexity'], rel=1e-12
    )
    assert 0.0 <= got['agreement'] < 1.0
  # Nothing was healed: heal.at is empty.
  assert res['healed'] == {}
  table = report.table(res)
  assert '| 2 | ' + ', '.join(ranked[:2]) in table


def test_iterative_sleb_rescores_each_step_and_resumes(lm, tmp_path):
  c = _config(**{'prune.criterion': 'sleb', 'llm.schedule': 'iterative'})
  res = language_model.run(c, str(tmp_path), lm=lm)
  steps = res['decisions']
  assert [d['step'] for d in steps] == [1, 2]
  # Step 2 scores only the layers left after step 1.
  assert steps[0]['removed'][0] not in steps[1]['scores']
  assert len(steps[1]['scores']) == DEPTH - 1
  for d in steps:
    s = d['scores']
    assert d['removed'] == [min(s, key=lambda u: (s[u], u))]
  assert res['pruned']['2']['removed'] == [
    steps[0]['removed'][0],
    steps[1]['removed'][0],
  ]
  # A re-run resumes: nothing is decided or evaluated again.
  before = (tmp_path / 'results.json').read_text()
  again = language_model.run(c, str(tmp_path), lm=lm)
  assert again['decisions'] == json.loads(before)['decisions']
  assert again['pruned'] == json.loads(before)['pruned']
  # Interrupted after step 1: the re-run replays it, decides step 2 again
  # and evaluates again, equal to the uninterrupted run.
  path = tmp_path / 'results.json'
  saved = json.loads(before)
  path.write_text(
    json.dumps({**saved, 'decisions': saved['decisions'][:1], 'pruned': {}})
  )

  def strip(recs):
    return [{k: v for k, v in r.items() if 'seconds' not in k} for r in recs]

  again = json.loads(json.dumps(language_model.run(c, str(tmp_path), lm=lm)))
  assert strip(again['decisions']) == strip(saved['decisions'])
  assert strip(again['pruned'].values()) == strip(saved['pruned'].values())
  path.write_text(before)
  # A record made on other text (another Python's pydoc topics) is refused.
  path.write_text(json.dumps({**json.loads(before), 'corpus': '3.0.0:0000'}))
  with pytest.raises(errors.ConfigError, match='other text'):
    language_model.run(c, str(tmp_path), lm=lm)
  path.write_text(before)
  # A config that changes results is refused.
  with pytest.raises(errors.ConfigError, match='different config'):
    language_model.run(
      _config(**{'prune.criterion': 'cka', 'llm.schedule': 'iterative'}),
      str(tmp_path),
      lm=lm,
    )


def test_angular_block_and_sglp_decide_per_k(lm, tmp_path):
  c = _config(**{'prune.criterion': 'angular_block'})
  res = language_model.run(c, str(tmp_path / 'ab'), lm=lm)
  names = [b.name for b in lm.arch.blocks]
  for k in (1, 2):
    removed = res['pruned'][str(k)]['removed']
    start = names.index(removed[0])
    assert removed == names[start : start + k]  # contiguous block of k
  assert [d['k'] for d in res['decisions']] == [1, 2]
  c = _config(**{'prune.criterion': 'sglp'})
  res = language_model.run(c, str(tmp_path / 'sglp'), lm=lm)
  assert [len(res['pruned'][k]['removed']) for k in ('1', '2')] == [1, 2]
  assert (
    res['decisions'][1]['diagnostics']['removed']
    == (res['pruned']['2']['removed'])
  )


def test_lowest_respects_the_floor(lm):
  arch = dataclasses.replace(lm.arch, min_blocks_per_stage=DEPTH - 1)
  scores = {u: float(i) for i, u in enumerate(arch.candidates)}
  assert loop.lowest(arch, scores, 1) == ['layer00']
  with pytest.raises(errors.ConfigError, match='floor'):
    loop.lowest(arch, scores, 2)


@pytest.mark.parametrize(
  'changes, message',
  [
    ({'prune.criterion': 'kl'}, "needs a classifier's logits"),
    ({'prune.criterion': 'everything'}, 'needs'),
    ({'prune.criterion': 'sglp', 'prune.sglp.num_segmets': 2}, 'Did you mean'),
    ({'llm.schedule': 'greedy'}, 'llm.schedule'),
    ({'llm.remove': (2, 2)}, 'distinct'),
    ({'llm.heal.at': (3,)}, 'among llm.remove'),
    ({'llm.heal.at': (-1,)}, '>= 0'),
    ({'llm.heal.modes': 'full,qlora'}, 'unknown modes'),
    ({'llm.heal.learning_rate': 0.0}, 'learning_rate'),
    ({'llm.calibration_length': 1}, 'calibration_length'),
    ({'prune.representation': 'logits'}, "'pooled'"),
    (
      {
        'prune.criterion': 'consensus',
        'prune.consensus.metrics': 'cka,gaussian_stochastic_1',
      },
      'label-free',
    ),
  ],
)
def test_bad_configs_are_refused_before_work(changes, message):
  with pytest.raises(errors.ConfigError, match=message):
    language_model.check_config(_config(**changes))


def test_remove_beyond_the_floor_is_refused(lm, tmp_path):
  with pytest.raises(errors.ConfigError, match='lets pruning'):
    language_model.run(
      _config(**{'llm.remove': (DEPTH,)}), str(tmp_path), lm=lm
    )


def test_the_shipped_config_passes_the_checks():
  c = smollm2_depth.get_config()
  language_model.check_config(c)
  for criterion in methods.available(language_model.PROVIDES):
    c.prune.criterion = criterion
    language_model.check_config(c)
  # The shipped consensus metrics are the label-free ones, so consensus
  # runs on a decoder too.
  assert set(consensus.LABEL_FREE) == set(c.prune.consensus.metrics.split(','))
  c.prune.criterion = 'consensus'
  language_model.check_config(c)


# --- Healing -----------------------------------------------------------------


def _windows(lm, n=16):
  return text.windows(_encode(text.corpus('calibration')), LENGTH, n)


def test_merge_lora_equals_numpy():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(6, 5)).astype(np.float32)
  a = rng.normal(size=(6, 2)).astype(np.float32)
  b = rng.normal(size=(2, 5)).astype(np.float32)
  params = {'layer00': {'up': {'kernel': w}, 'q': {'kernel': w}}}
  out = healing.merge_lora(params, {'layer00': {'up': {'a': a, 'b': b}}}, 0.5)
  want = w.astype(np.float64) + 0.5 * a.astype(np.float64) @ b
  np.testing.assert_allclose(
    out['layer00']['up']['kernel'], want, rtol=0, atol=f32_atol(2, 10.0)
  )
  assert out['layer00']['q']['kernel'] is w  # untouched


def test_lora_healing_trains_only_low_rank_mlp_updates(lm):
  arch, variables = surgery.apply(
    lm.arch, lm.variables, surgery.remove(['layer02'])
  )
  cfg = healing.HealConfig(
    mode='lora', steps=6, learning_rate=3e-2, batch_size=4, rank=2
  )
  healed, rec = healing.heal(arch, variables, _windows(lm), cfg)
  assert len(rec['losses']) == 6
  assert rec['losses'][-1] < rec['losses'][0]
  before, after = _np(variables['params']), _np(healed['params'])
  adapted = {path[:2] for path in healing.lora_targets(arch)}
  assert {name for _, name in adapted} == {'gate', 'up', 'down'}
  for block in arch.blocks:
    for name, sub in before[block.name].items():
      if (block.name, name) in adapted:
        delta = after[block.name][name]['kernel'] - sub['kernel']
        assert np.abs(delta).max() > 0
        assert np.linalg.matrix_rank(delta, tol=1e-5) <= 2
      else:
        for leaf, value in sub.items():
          np.testing.assert_array_equal(after[block.name][name][leaf], value)
  for name in ('tok_embed', 'norm'):
    jax.tree.map(np.testing.assert_array_equal, after[name], before[name])


def test_full_healing_lowers_the_loss_and_resumes_bitwise(lm, tmp_path):
  arch, variables = lm.arch, lm.variables
  cfg = healing.HealConfig(
    mode='full', steps=5, learning_rate=1e-2, batch_size=4, checkpoint_every=2
  )
  windows = _windows(lm)
  clean, rec = healing.heal(
    arch, variables, windows, cfg, directory=str(tmp_path / 'a')
  )
  assert rec['losses'][-1] < rec['losses'][0]
  changed = jax.tree.map(
    lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
    clean['params'],
    variables['params'],
  )
  assert all(jax.tree.leaves(changed))  # every parameter trains

  class Stop(Exception):
    pass

  def stop_at_3(step, loss):
    if step == 3:
      raise Stop

  with pytest.raises(Stop):
    healing.heal(
      arch,
      variables,
      windows,
      cfg,
      directory=str(tmp_path / 'b'),
      progress=stop_at_3,
    )
  # The checkpoint interval may change on resume (it does not change results).
  resumed, rec_b = healing.heal(
    arch,
    variables,
    windows,
    dataclasses.replace(cfg, checkpoint_every=4),
    directory=str(tmp_path / 'b'),
  )
  assert rec_b['resumed_from'] == 2
  assert rec_b['losses'] == rec['losses']
  jax.tree.map(np.testing.assert_array_equal, resumed, clean)
  # Another setting in the same directory is refused.
  with pytest.raises(healing.HealingError, match='steps: 5 -> 6'):
    healing.heal(
      arch,
      variables,
      windows,
      healing.HealConfig(mode='full', steps=6, learning_rate=1e-2),
      directory=str(tmp_path / 'b'),
    )


def test_pipeline_heals_the_pruned_model_on_calibration_text_only(
  lm, tmp_path, monkeypatch
):
  c = _config(
    **{
      'prune.criterion': 'cka',
      'llm.remove': (1, 2),
      'llm.heal.at': (0, 2),
      'llm.heal.modes': 'full,lora',
    }
  )
  seen = {'decide': [], 'heal': []}
  real_heal, real_get = healing.heal, language_model.get_method

  def spy_heal(arch, variables, windows, cfg, **kw):
    seen['heal'].append(np.asarray(windows))
    return real_heal(arch, variables, windows, cfg, **kw)

  def spy_get(name):
    method = real_get(name)

    def wrapped(ctx):
      seen['decide'].append(np.asarray(ctx.inputs))
      return method.fn(ctx)

    return dataclasses.replace(method, fn=wrapped)

  monkeypatch.setattr(language_model.healing, 'heal', spy_heal)
  monkeypatch.setattr(language_model, 'get_method', spy_get)
  res = language_model.run(c, str(tmp_path), lm=lm)
  # Held-out windows never reach a decision or healing; calibration does.
  held = {tuple(r) for r in _heldout(lm, c)}
  _, every = text.calibration_windows(
    lm.encode,
    count=c.llm.calibration_windows,
    length=c.llm.calibration_length,
    seed=c.seed,
  )
  calib = {tuple(r) for r in every}
  rows = [tuple(r) for a in seen['decide'] + seen['heal'] for r in a]
  assert rows and not held & set(rows) and set(rows) <= calib
  # Each healed entry is healing.heal of the k=2 model (k=0: the unpruned
  # one), then its held-out perplexity (same machine and programs: equal).
  models_at = {
    '0': (lm.arch, lm.variables),
    '2': surgery.apply(
      lm.arch, lm.variables, surgery.remove(res['pruned']['2']['removed'])
    ),
  }
  assert sorted(res['healed']) == ['0/full', '0/lora', '2/full', '2/lora']
  for key in ('0/lora', '2/full', '2/lora'):
    arch, variables = models_at[key[0]]
    healed, rec = real_heal(
      arch,
      variables,
      seen['heal'][0],
      language_model.heal_config(c, key.split('/')[1]),
    )
    got = res['healed'][key]
    assert got['losses'] == rec['losses']
    ev = next_token.evaluate(models.build_model(arch), healed, _heldout(lm, c))
    assert got['perplexity'] == ev['perplexity']
  # The checkpoints are gone once recorded (keep_checkpoints=False).
  assert not (tmp_path / 'heal' / 'k2_lora').exists()
  assert 'full' in report.table(res)


def test_other_criteria_remove_their_lowest_scores(lm, tmp_path):
  for name, changes in {
    'consensus': {'prune.criterion': 'consensus'},
    'cka_last': {'prune.criterion': 'cka', 'prune.representation': 'last'},
    'random': {'prune.criterion': 'random'},
  }.items():
    res = language_model.run(_config(**changes), str(tmp_path / name), lm=lm)
    (decision,) = res['decisions']
    s = decision['scores']
    ranked = sorted(s, key=lambda u: (s[u], u))
    assert res['pruned']['2']['removed'] == ranked[:2], name


def test_heal_config_errors():
  with pytest.raises(healing.HealingError, match='mode'):
    healing.HealConfig(mode='qlora').check()
  with pytest.raises(healing.HealingError, match='rank'):
    healing.HealConfig(rank=0).check()
  with pytest.raises(healing.HealingError, match='windows'):
    healing.heal(
      decoder.decoder(vocab=8, width=4, depth=1, heads=1, kv_heads=1, mlp=4),
      {'params': {}},
      np.zeros((3,), np.int32),
      healing.HealConfig(),
    )


def test_config_group_is_required():
  c = ml_collections.ConfigDict({'task': 'llm'})
  with pytest.raises(errors.ConfigError, match='config group'):
    language_model.check_config(c)
