"""The one loop (`lpjax.run.loop`) as every task runs it.

* Interrupted while a decision is being made (the method raises, as a kill
  or Ctrl-C would stop it), a re-run replays the recorded decisions without
  calling the method for them, and ends with the results of an
  uninterrupted run: the language-model task (iterative, and one-shot with
  one call per k) and the embedding task. The classifier's kills (SIGKILL
  mid-probe, Ctrl-C mid-training) are in tests/test_everything.py and
  tests/test_user_errors.py.
* A process other than 0 of a multi-host run writes no record.
* The schedules' contract: `lowest` against its definition.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from test_language import _tiny_config
from test_llm_pipeline import _config as _llm_config
from test_llm_pipeline import lm  # noqa: F401 (a fixture)

from lpjax import arch as arch_lib
from lpjax import methods
from lpjax.run import embedding, language_model, loop


def _no_seconds(tree):
  if isinstance(tree, dict):
    return {
      k: _no_seconds(v)
      for k, v in tree.items()
      if 'seconds' not in k and k != 'config'
    }
  if isinstance(tree, list):
    return [_no_seconds(v) for v in tree]
  return tree


class _Stop(Exception):
  """Stands for the process being killed mid-decision."""


def _counting(monkeypatch, name, fail_at=None):
  """Replaces method `name` with one that counts its calls and raises on
  call number `fail_at`."""
  original = methods.METHODS[name]
  calls = []

  def fn(ctx):
    calls.append(ctx.iteration)
    if len(calls) == fail_at:
      raise _Stop
    return original.fn(ctx)

  monkeypatch.setitem(
    methods.METHODS, name, dataclasses.replace(original, fn=fn)
  )
  return calls


def _interrupted_then_resumed(monkeypatch, run, name, fail_at):
  """`(uninterrupted results, resumed results, calls on resume)`."""
  clean = run('clean')
  _counting(monkeypatch, name, fail_at=fail_at)
  with pytest.raises(_Stop):
    run('killed')
  calls = _counting(monkeypatch, name)
  return clean, run('killed'), calls


@pytest.mark.parametrize(
  'criterion, schedule, fail_at, calls_on_resume',
  [
    # Iterative: steps 1 and 2; killed deciding step 2: only 2 is decided.
    ('block_influence', 'iterative', 2, [2]),
    # One-shot, one call per k (k = 1, 2): killed in k = 2's call.
    ('angular_block', 'one_shot', 2, [1]),
  ],
)
def test_llm_run_killed_mid_decision_resumes_exactly(
  lm,  # noqa: F811
  tmp_path,
  monkeypatch,
  criterion,
  schedule,
  fail_at,
  calls_on_resume,
):
  def run(where):
    c = _llm_config(**{'prune.criterion': criterion, 'llm.schedule': schedule})
    return language_model.run(c, str(tmp_path / where), lm=lm)

  clean, resumed, calls = _interrupted_then_resumed(
    monkeypatch, run, criterion, fail_at
  )
  assert calls == calls_on_resume
  assert _no_seconds(resumed) == _no_seconds(clean)
  on_disk = json.loads((tmp_path / 'killed' / 'results.json').read_text())
  assert _no_seconds(on_disk) == _no_seconds(json.loads(json.dumps(clean)))


def test_embedding_run_killed_mid_decision_resumes_exactly(
  tmp_path, monkeypatch
):
  def run(where):
    return embedding.run(_tiny_config(), str(tmp_path / where))

  clean, resumed, calls = _interrupted_then_resumed(
    monkeypatch, run, 'cka', fail_at=2
  )
  assert calls == [2]  # iteration 1 replayed from its recorded edit
  assert [r['removed'] for r in resumed['iterations']] == [
    r['removed'] for r in clean['iterations']
  ]
  assert _no_seconds(resumed) == _no_seconds(clean)


def test_a_process_other_than_0_writes_no_record(
  lm,  # noqa: F811
  tmp_path,
  monkeypatch,
):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  language_model.run(_llm_config(), str(tmp_path / 'llm'), lm=lm)
  embedding.run(_tiny_config(), str(tmp_path / 'embedding'))
  for task in ('llm', 'embedding'):
    assert sorted(p.name for p in (tmp_path / task).iterdir()) == []


def test_lowest_follows_scores_then_network_order_within_the_floor():
  def stage(i):
    blocks = tuple(
      arch_lib.Block(stage=i + 1, index=j, widths=(4,), name=f'b{3 * i + j}')
      for j in range(3)
    )
    return arch_lib.Stage(width=4, stride=1, blocks=blocks)

  arch = arch_lib.Arch(
    family='resnet', stages=(stage(0), stage(1)), num_classes=2,
    min_blocks_per_stage=1,
  )  # fmt: skip
  scores = {'b0': 0.5, 'b1': 0.1, 'b2': 0.1, 'b3': None, 'b4': 0.3, 'b5': 0.2}
  # Ties go to network order; unscored units (None) come last; after b1
  # and b2 stage 0 is at its floor, so b0 is skipped for b5, b4, b3.
  assert loop.lowest(arch, scores, 2) == ['b1', 'b2']
  assert loop.lowest(arch, scores, 4) == ['b1', 'b2', 'b5', 'b4']
  with pytest.raises(Exception, match='Only 4 units can be removed'):
    loop.lowest(arch, scores, 5)
  np.testing.assert_equal(len(loop.lowest(arch, scores, 0)), 0)


def test_iterative_steps_short_of_every_k_are_decided_not_measured(
  lm,  # noqa: F811
  tmp_path,
):
  """`llm.remove=(2,)`, iterative: two steps decided, one model measured
  (k = 2: both steps' layers removed, in order)."""
  c = _llm_config(**{'llm.schedule': 'iterative', 'llm.remove': (2,)})
  res = language_model.run(c, str(tmp_path), lm=lm)
  assert [d['step'] for d in res['decisions']] == [1, 2]
  assert list(res['pruned']) == ['2']
  assert res['pruned']['2']['removed'] == [
    u for d in res['decisions'] for u in d['removed']
  ]
