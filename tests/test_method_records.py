"""Methods as records: declared hyperparameters, needs, every method × task.

* `configs/base.py`'s `prune.<method>` groups equal the records' defaults.
* A misspelt hyperparameter key and a wrong-typed value are refused by each
  task's config check (no work has started), naming the valid keys / type;
  and through `main.py`, one line, exit 2, nothing trained.
* Every registered method on every task (classifier, language model,
  sentence encoder): where the task meets the method's needs, one decision
  on a tiny model through the task's own context, whose edit removes
  removable units and applies; elsewhere the task's check refuses it before
  any work, naming the unmet need.
"""

import dataclasses
import importlib.util
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from commands import main_py

from configs import base, minilm, smollm2_depth
from lpjax import errors, methods, models, surgery
from lpjax.models import decoder, encoder
from lpjax.run import classifier, language_model, loop
from lpjax.run import embedding as embedding_task

REPO = __import__('pathlib').Path(__file__).resolve().parents[1]

CLASSIFIER = """
from configs import base


def get_config():
  c = base.get_config()
  c.dataset = 'synthetic'
  c.synthetic.image_shape = (8, 8, 3)
  c.synthetic.num_classes = 4
  c.synthetic.num_train = 64
  c.synthetic.num_test = 32
  c.model = 'resnet20'
  c.width = 4
  c.blocks_per_stage = (2, 2, 2)
  c.min_blocks_per_stage = 1
  c.holdout = 0.25
  c.baseline.epochs = 1
  c.train.batch_size = 16
  c.train.log_every_steps = 0
  c.prune.target_blocks = 1
  c.prune.calibration_examples = 16
  c.prune.data_batch_size = 16
  c.prune.finetune_epochs = 0
  c.prune.everything.probe_epochs = 0
  return c
"""

TASKS = ('classifier', 'llm', 'embedding')


def _load_config(path):
  spec = importlib.util.spec_from_file_location('records_config', path)
  mod = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(REPO))
  try:
    spec.loader.exec_module(mod)
  finally:
    sys.path.remove(str(REPO))
  return mod.get_config()


@pytest.fixture(scope='module')
def classifier_config_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('records') / 'classifier.py'
  path.write_text(CLASSIFIER)
  return path


def _config(task, path):
  if task == 'classifier':
    return _load_config(path)
  if task == 'llm':
    c = smollm2_depth.get_config()
    c.llm.calibration_windows = 8
    c.llm.data_batch_size = 4
    return c
  return minilm.get_config()


def _check(task, config):
  """The task's own refusal of a config, before any work."""
  if task == 'classifier':
    classifier.check_config(config)
  elif task == 'llm':
    language_model.check_config(config)
  else:
    embedding_task.check_config(config)


def _provides(task):
  return {
    'classifier': classifier.provides(
      ml_collections.ConfigDict({'holdout': 0.25})
    ),
    'llm': language_model.PROVIDES,
    'embedding': embedding_task.PROVIDES,
  }[task]


def _set_group(config, name, group):
  config.prune[name] = ml_collections.ConfigDict(group)


# --- Declared once --------------------------------------------------------------


def test_base_config_groups_are_the_records_defaults():
  prune = base.get_config().prune
  groups = {
    k for k, v in prune.items() if isinstance(v, ml_collections.ConfigDict)
  }
  assert groups <= set(methods.METHODS), groups - set(methods.METHODS)
  for name, record in methods.METHODS.items():
    if not record.hparams:
      assert name not in groups, name
      continue
    got = prune[name].to_dict()
    assert got == record.defaults(), name
    for key, value in got.items():  # same types too (1 vs 1.0, 0 vs False)
      assert type(value) is record.hparams[key].type, (name, key)


# --- Bad hyperparameters, refused before work -------------------------------------


def _misspelt(key):
  return key[:-2] + key[-1] + key[-2] if len(key) > 2 else key + 'x'


_WRONG = {bool: 'yes', int: 'three', float: 'half', str: 3}


@pytest.mark.parametrize('task', TASKS)
@pytest.mark.parametrize('name', sorted(methods.METHODS))
def test_misspelt_and_wrong_typed_hyperparameters_are_refused(
  name, task, classifier_config_path
):
  record = methods.METHODS[name]
  config = _config(task, classifier_config_path)
  config.prune.criterion = name
  defaults = record.defaults()
  key = next(iter(defaults), 'typo')
  bad = {**defaults, _misspelt(key): defaults.get(key, 1)}
  bad.pop(key, None)
  _set_group(config, name, bad)
  with pytest.raises(errors.ConfigError) as e:
    _check(task, config)
  message = str(e.value)
  assert 'Unknown hyperparameters' in message and _misspelt(key) in message
  assert f'valid: {sorted(defaults) or "none"}' in message
  for key, hparam in record.hparams.items():
    config = _config(task, classifier_config_path)
    config.prune.criterion = name
    _set_group(config, name, {**defaults, key: _WRONG[hparam.type]})
    with pytest.raises(errors.ConfigError, match=f'prune.{name}.{key} must'):
      _check(task, config)


def test_a_misspelt_key_stops_main_before_training(
  classifier_config_path, tmp_path
):
  path = tmp_path / 'typo.py'
  path.write_text(
    CLASSIFIER.replace(
      '  return c\n', '  c.prune.cka.debaised = True\n  return c\n'
    )
  )
  workdir = tmp_path / 'w'
  t0 = time.perf_counter()
  proc = main_py(f'--config={path}', f'--workdir={workdir}', timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()
  assert 'Traceback' not in proc.stderr
  assert last[-1].startswith('error: Unknown hyperparameters')
  assert "Did you mean 'debiased'" in last[-1]
  assert not workdir.exists()  # refused before the workdir was touched
  assert time.perf_counter() - t0 < 200  # no training (a hang guard)


# --- Every method on every task ---------------------------------------------------


@pytest.fixture(scope='module')
def contexts(classifier_config_path, tmp_path_factory):
  """task -> `iteration -> Context` built by the task's own code."""
  out = {}
  # Classifier: the pipeline's own context (labels, loss, holdout, probes).
  config = _config('classifier', classifier_config_path)
  p = classifier.Classifier(config, str(tmp_path_factory.mktemp('classifier')))
  arch = p._new_arch()
  variables = models.init_variables(arch, 0, p.info.image_shape)

  def classifier_context(name):
    p.config.prune.criterion = name
    return loop.context(p, 1, arch, variables)

  out['classifier'] = classifier_context
  # Language model: a tiny decoder through the LLM task's context.
  dec = decoder.decoder(
    vocab=64, width=16, depth=4, heads=2, kv_heads=1, mlp=24, seq_len=12
  )
  dec = dataclasses.replace(dec, min_blocks_per_stage=1)
  dec_vars = models.init_variables(dec, 0)
  ids = np.random.default_rng(0).integers(0, 64, (8, 12)).astype(np.int32)

  def llm(name):
    c = _config('llm', None)
    c.prune.criterion = name
    c.llm.remove, c.llm.heal.at = (1,), ()  # within the tiny decoder
    task = language_model.Decoder(
      c, language_model.LanguageModel(dec, dec_vars, None, 'tiny')
    )
    task.calibration = ids
    return loop.context(task, 1, dec, dec_vars)

  out['llm'] = llm
  # Sentence encoder: a tiny BERT-like encoder through the embedding task's.
  enc = encoder.encoder(
    input='tokens', width=16, depth=4, heads=2, mlp=24, norm='post',
    eps=1e-12, vocab=40, max_len=12, seq_len=7, head=False,
  )  # fmt: skip
  enc = dataclasses.replace(enc, min_blocks_per_stage=1)
  enc_vars = models.init_variables(enc, 0)
  tokens = np.random.default_rng(1).integers(1, 40, (8, 7)).astype(np.int32)

  def embedding(name):
    c = _config('embedding', None)
    c.prune.criterion = name
    c.embedding.data_batch_size = 8
    task = embedding_task.Embedding(c)
    task.calibration = tokens
    return loop.context(task, 1, enc, enc_vars)

  out['embedding'] = embedding
  return out


@pytest.mark.parametrize('task', TASKS)
@pytest.mark.parametrize('name', sorted(methods.METHODS))
def test_every_method_runs_or_is_refused_naming_the_need(
  name, task, contexts, classifier_config_path
):
  record = methods.METHODS[name]
  config = _config(task, classifier_config_path)
  config.prune.criterion = name
  hp = record.complete(
    config.prune[name].to_dict() if name in config.prune else None
  )
  missing = record.needs_of(hp) - _provides(task)
  if missing:
    with pytest.raises(errors.ConfigError) as e:
      _check(task, config)
    assert any(methods.NEEDS[m] in str(e.value) for m in missing), str(e.value)
    return
  _check(task, config)
  ctx = contexts[task](name)
  decision = methods.get_method(name)(ctx)
  removed = set(decision.edit.remove)
  assert removed or decision.edit.shrink  # it decided something
  assert removed <= set(ctx.arch.removable())
  small, small_vars = surgery.apply(ctx.arch, ctx.variables, decision.edit)
  assert len(small.blocks) == len(ctx.arch.blocks) - len(removed)
  x = jax.numpy.asarray(ctx.inputs[:2])
  out = models.build_model(small).apply(small_vars, x)
  assert np.all(np.isfinite(np.asarray(out)))
  for unit, score in decision.scores.items():
    assert unit in ctx.arch.candidates
    assert np.isfinite(score) or score == float('inf')


@pytest.mark.parametrize(
  'task, names',
  [
    ('embedding', ('cka', 'consensus', 'block_influence', 'angular', 'random')),
    ('llm', ('cka', 'consensus', 'sglp', 'sleb', 'angular_block', 'tail')),
  ],
)
def test_the_shipped_configs_run_the_methods_the_task_can(task, names):
  for name in names:  # consensus with the shipped label-free metrics
    config = _config(task, None)
    config.prune.criterion = name
    _check(task, config)
