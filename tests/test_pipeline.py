"""The whole pipeline: end to end, resume after SIGKILL, and bad input."""

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lpjax import checkpointing, data, errors
from lpjax.run import classifier

REPO = Path(__file__).resolve().parents[1]

# A tiny run: 3 blocks per stage (3 candidates under the floor), width 4,
# 8x8 synthetic images; 2 removals with 2 fine-tuning epochs each.
TINY = """
from configs import base


def get_config():
  c = base.get_config()
  c.dataset = 'synthetic'
  c.synthetic.image_shape = (8, 8, 3)
  c.synthetic.num_classes = 4
  c.synthetic.num_train = 128
  c.synthetic.num_test = 64
  c.model = 'resnet20'
  c.width = 4
  c.blocks_per_stage = (3, 3, 3)
  c.style = 'pytorch'  # BN momentum 0.9: eval statistics settle in few steps
  c.baseline.epochs = 3
  c.train.batch_size = 16
  c.train.eval_batch_size = 64
  c.train.learning_rate = 0.05
  c.train.log_every_steps = 0
  c.prune.target_blocks = 2
  c.prune.calibration_examples = 32
  c.prune.data_batch_size = 32
  c.prune.finetune_epochs = 3
  return c
"""


def _load_config(path):
  spec = importlib.util.spec_from_file_location('tiny_config', path)
  mod = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(REPO))
  try:
    spec.loader.exec_module(mod)
  finally:
    sys.path.remove(str(REPO))
  return mod.get_config()


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """The tiny config file, and one uninterrupted run of it."""
  root = tmp_path_factory.mktemp('tiny')
  cfg_path = root / 'tiny_config.py'
  cfg_path.write_text(TINY)
  workdir = root / 'uninterrupted'
  results = classifier.run(_load_config(cfg_path), str(workdir))
  return cfg_path, workdir, results


def _strip_times(results):
  def clean(rec):
    return {k: v for k, v in rec.items() if not k.startswith('seconds')}

  return {
    'baseline': clean(results['baseline']),
    'iterations': [clean(r) for r in results['iterations']],
  }


def _final_params(workdir):
  with checkpointing.Checkpoints(Path(workdir) / 'iter_002') as ck:
    arch, meta = ck.restore_meta()
    tree = ck.restore()  # No target: parameters come back as saved.
  return arch, meta, tree['params']


def test_end_to_end(tiny):
  _, workdir, results = tiny
  its = results['iterations']
  assert len(its) == 2
  base = results['baseline']
  assert base['blocks_per_stage'] == [3, 3, 3]
  assert base['test_accuracy'] > 0.5  # 4 classes: chance is 0.25
  # One block per iteration, FLOPs strictly down, the lowest score removed.
  for prev, rec in zip([base, *its], its):
    assert sum(rec['blocks_per_stage']) == sum(prev['blocks_per_stage']) - 1
    assert rec['flops_reduction'] > prev['flops_reduction']
    (removed,) = rec['removed']
    assert rec['scores'][removed] == min(rec['scores'].values())
  assert its[0]['removed'][0] not in its[1]['scores']  # re-scored without it
  on_disk = json.loads((workdir / 'results.json').read_text())
  assert _strip_times(on_disk) == _strip_times(results)
  for name in ('report.md', 'accuracy_vs_flops.png', 'scores.png'):
    assert (workdir / name).stat().st_size > 0
  assert 'stage' in (workdir / 'report.md').read_text()
  assert list((workdir / 'tb').iterdir())


def _restore(directory):
  with checkpointing.Checkpoints(directory) as ck:
    arch, _ = ck.restore_meta()
    tree = ck.restore()  # No target: the tree comes back as saved.
  return arch, {'params': tree['params'], 'batch_stats': tree['batch_stats']}


def test_replay_rebuilds_every_model_from_the_edits(tiny, tmp_path):
  """Baseline checkpoint + recorded edits = every saved intermediate model."""
  # Without fine-tuning every checkpoint is the baseline plus the edits.
  workdir = tmp_path / 'no_finetune'
  c = _config(tiny[0], **{'prune.finetune_epochs': 0})
  results = classifier.run(c, str(workdir))
  base_arch, base_vars = _restore(workdir / 'baseline')
  assert len(results['iterations']) == 2
  for k, rec in enumerate(results['iterations'], start=1):
    assert rec['edit'] == {'remove': rec['removed'], 'shrink': []}
    arch, variables = classifier.replay_edits(results, base_arch, base_vars, k)
    saved_arch, saved = _restore(workdir / f'iter_{k:03d}')
    assert arch == saved_arch
    assert jax.tree.structure(variables) == jax.tree.structure(saved)
    jax.tree.map(np.testing.assert_array_equal, variables, saved)
  # With fine-tuning (the tiny run), the architectures replay alike.
  _, clean_dir, clean_results = tiny
  base_arch, base_vars = _restore(clean_dir / 'baseline')
  arch, _ = classifier.replay_edits(clean_results, base_arch, base_vars, 2)
  assert arch == _restore(clean_dir / 'iter_002')[0]


def _wait_for(path, proc, timeout=300):
  t0 = time.time()
  while not path.exists():
    if proc.poll() is not None:
      raise AssertionError(f'run ended (rc {proc.returncode}) before {path}')
    if time.time() - t0 > timeout:
      raise AssertionError(f'timed out waiting for {path}')
    time.sleep(0.05)


@pytest.fixture
def start():
  """Starts `main.py` runs; kills those still running when the test ends,
  so a failed wait does not leave a run training beside the rest of the
  suite."""
  procs = []

  def _start(cfg_path, workdir):
    proc = subprocess.Popen(
      [
        sys.executable,
        'main.py',
        f'--config={cfg_path}',
        f'--workdir={workdir}',
      ],
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    return proc

  yield _start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def test_resume_after_sigkill(tiny, tmp_path, start):
  """Killed mid fine-tune and mid pruning loop, it ends like the clean run."""
  cfg_path, clean_dir, clean_results = tiny
  workdir = tmp_path / 'killed'
  # 1. Kill during iteration 1's fine-tuning (after its first epoch).
  proc = start(cfg_path, workdir)
  _wait_for(workdir / 'iter_001' / '1' / 'commit_success.txt', proc)
  assert proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # 2. Kill between iterations: after iteration 2's surgery.
  proc = start(cfg_path, workdir)
  _wait_for(workdir / 'iter_002' / '0' / 'commit_success.txt', proc)
  assert proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # 3. Finish.
  proc = start(cfg_path, workdir)
  assert proc.wait(timeout=600) == 0
  results = json.loads((workdir / 'results.json').read_text())
  assert _strip_times(results) == _strip_times(clean_results)
  arch_a, _, params_a = _final_params(clean_dir)
  arch_b, _, params_b = _final_params(workdir)
  assert arch_a == arch_b
  # Exact resume: the same programs on the same restored state, bitwise.
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_sparse_checkpoints_resume_to_the_same_result(tiny, tmp_path, start):
  """checkpoint_every_epochs=2: epoch 1 is not saved, a kill after epoch 2's
  save resumes there, and the run ends bitwise like the clean one."""
  _, clean_dir, clean_results = tiny
  cfg_path = tmp_path / 'sparse_config.py'
  cfg_path.write_text(
    TINY.replace('  return c', '  c.checkpoint_every_epochs = 2\n  return c')
  )
  workdir = tmp_path / 'sparse'
  proc = start(cfg_path, workdir)
  _wait_for(workdir / 'iter_001' / '2' / 'commit_success.txt', proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / 'iter_001' / '1').exists()
  proc = start(cfg_path, workdir)
  assert proc.wait(timeout=600) == 0
  results = json.loads((workdir / 'results.json').read_text())
  assert _strip_times(results) == _strip_times(clean_results)
  _, _, params_a = _final_params(clean_dir)
  _, _, params_b = _final_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  with pytest.raises(ValueError, match='checkpoint_every_epochs'):
    classifier.check_config(_config(tiny[0], checkpoint_every_epochs=0))


def test_corrupt_checkpoint_gives_a_clear_error(tiny, tmp_path):
  cfg_path, clean_dir, _ = tiny
  workdir = tmp_path / 'corrupt'
  shutil.copytree(clean_dir, workdir)
  step = max(
    int(p.name) for p in (workdir / 'iter_002').iterdir() if p.name.isdigit()
  )
  for f in (workdir / 'iter_002' / str(step) / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(b'\x00garbage')
  with pytest.raises(checkpointing.CheckpointError, match='iter_002'):
    classifier.run(_load_config(cfg_path), str(workdir))


def _config(cfg_path, **overrides):
  c = _load_config(cfg_path)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize(
  'key, value, match',
  [
    ('prune.criterion', 'hrank', "valid criteria: .*'cka'"),
    ('model', 'vgg16', 'valid models'),
    ('dataset', 'mnist', "valid datasets: \\['digits'"),
    ('style', 'caffe', 'valid styles'),
  ],
)
def test_unknown_names_list_the_valid_ones(tiny, tmp_path, key, value, match):
  with pytest.raises(KeyError, match=match):
    classifier.Classifier(_config(tiny[0], **{key: value}), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()  # failed before any work


@pytest.mark.parametrize(
  'key, value',
  [('prune.target_blocks', 4), ('prune.target_flops_reduction', 60.0)],
)
def test_target_beyond_the_floor_fails_first(tiny, tmp_path, key, value):
  with pytest.raises(ValueError, match='beyond the floor'):
    classifier.Classifier(_config(tiny[0], **{key: value}), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize(
  'key, value',
  [('prune.data_batch_size', 0), ('prune.candidate_chunk', -1)],
)
def test_bad_counts_fail_first(tiny, tmp_path, key, value):
  with pytest.raises(ValueError, match=f'{key} must be an integer'):
    classifier.Classifier(_config(tiny[0], **{key: value}), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize(
  'overrides, match',
  [
    ({'prune.calibration_split': 'test'}, 'test split steer'),
    ({'prune.calibration_split': 'holdout'}, 'needs a holdout'),
    ({'prune.calibration_examples': 129}, 'more than the 128 examples'),
  ],
)
def test_calibration_problems_fail_first(tiny, tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    classifier.Classifier(_config(tiny[0], **overrides), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


# main.py's user errors as a user sees them (one line, status 2, before any
# work), this one included: tests/test_user_errors.py.


def test_resume_with_another_config_is_refused(tiny):
  cfg_path, workdir, clean = tiny
  before = sorted(p.name for p in workdir.iterdir())
  c = _config(cfg_path, **{'prune.criterion': 'random', 'seed': 3})
  with pytest.raises(errors.ConfigError) as e:
    classifier.run(c, str(workdir))
  message = str(e.value)
  assert "prune.criterion: 'cka' -> 'random'" in message
  assert 'seed: 0 -> 3' in message
  assert 'resume_despite_config_change' in message
  assert sorted(p.name for p in workdir.iterdir()) == before
  # Every checkpoint carries the config it was made with.
  for stage in ('baseline', 'iter_001', 'iter_002'):
    with checkpointing.Checkpoints(workdir / stage) as ck:
      assert ck.restore_meta()[1]['config']['prune']['criterion'] == 'cka'
  # Fields that cannot change results may differ.
  c = _config(cfg_path, **{'train.log_every_steps': 7})
  assert classifier.run(c, str(workdir))['iterations'] == clean['iterations']


def test_unprepared_dataset(tiny, tmp_path):
  c = _config(tiny[0], dataset='cifar10', data_dir=str(tmp_path / 'tfds'))
  t0 = time.time()
  with pytest.raises(
    data.DatasetNotPreparedError, match='download_and_prepare'
  ):
    classifier.Classifier(c, str(tmp_path / 'w'))
  assert time.time() - t0 < 30


def test_resnet56_smoke_config_under_mock_data(tmp_path):
  """configs/resnet56.py, smoke mode, end to end on tfds mock CIFAR-10."""
  import tensorflow_datasets as tfds

  sys.path.insert(0, str(REPO))
  try:
    from configs import resnet56
  finally:
    sys.path.remove(str(REPO))
  c = resnet56.get_config('smoke')
  with tfds.testing.mock_data(num_examples=200):
    results = classifier.run(c, str(tmp_path / 'r56'))
  assert results['baseline']['blocks_per_stage'] == [9, 9, 9]
  (it,) = results['iterations']
  assert len(it['scores']) == 24
  assert sum(it['blocks_per_stage']) == 26
  assert it['flops_reduction'] > 0


@pytest.mark.parametrize(
  'path',
  sorted(
    p.name for p in (REPO / 'configs').glob('*.py') if p.stem != '__init__'
  ),
)
def test_every_config_file_passes_the_checks(path):
  """Each experiment config names known datasets, models and methods with
  workable values (the checks a run makes before any work)."""
  c = _load_config(REPO / 'configs' / path)
  if c.task == 'embedding':
    from lpjax.run import embedding as embedding_task

    embedding_task.check_config(c)
    return
  if c.task == 'llm':
    from lpjax.run import language_model

    language_model.check_config(c)
    return
  if c.baseline.source == 'checkpoint' and not c.baseline.path:
    with pytest.raises(ValueError, match=r'baseline\.path'):
      classifier.check_config(c)  # the one value the user must give
    c.baseline.path = '/path/given/on/the/command/line'
  classifier.check_config(c)
  assert c.to_json()  # plain data, no callables


def test_evaluate_every_model_of_a_finished_run(tiny, tmp_path, capsys):
  """`python -m lpjax.evaluate` on the tiny run: every stage's model, the
  report extended."""
  from lpjax.evaluate import run as evaluate

  _, clean_dir, results = tiny
  workdir = tmp_path / 'run'
  shutil.copytree(clean_dir, workdir)
  ev = evaluate.evaluate_run(
    workdir,
    eps=(0.05,),
    examples=64,
    pgd_steps=3,
    batch=64,  # one shape for every call: one compile per attack and model
    latency_batches=(64,),
    latency_runs=2,
    corruptions=('contrast', 'gaussian_noise'),
    severities=(1, 5),
    corruption_examples=64,
  )
  recs = [results['baseline'], *results['iterations']]
  assert [m['stage'] for m in ev['models']] == [
    'baseline',
    'iter_001',
    'iter_002',
  ]
  for m, rec in zip(ev['models'], recs):
    # The whole synthetic test split (64): the recorded accuracy, up to one
    # example at a decision boundary (another compiled forward).
    assert abs(m['clean_accuracy'] - rec['test_accuracy']) <= 1 / 64
    assert m['pgd']['0.05'] <= m['clean_accuracy']
    assert m['fgsm']['0.05'] <= m['clean_accuracy']
    assert m['flops_ratio'] == recs[0]['macs'] / rec['macs']
    if jax.default_backend() == 'cpu':
      assert m['energy'] == {
        'measured': False,
        'reason': "no GPU (JAX backend 'cpu')",
      }
    for c in ('contrast', 'gaussian_noise'):
      assert set(m['corrupted'][c]) == {'1', '5'}
    assert m['corruption_mean']['1'] == pytest.approx(
      (m['corrupted']['contrast']['1'] + m['corrupted']['gaussian_noise']['1'])
      / 2
    )
  assert ev['models'][0]['latency']['64']['speedup'] == 1.0
  report = (workdir / 'report.md').read_text()
  assert 'Beyond accuracy' in report and '(robustness.png)' in report
  assert 'corrupted s=5 %' in report
  assert (workdir / 'robustness.png').stat().st_size > 0
  with pytest.raises(evaluate.EvaluationError, match='CIFAR-10'):
    evaluate.evaluate_run(workdir, test_sets=('cifar10_1',))
  # A workdir without a run: one clear line, status 2.
  assert evaluate.main(['--workdir', str(tmp_path / 'nothing')]) == 2
  assert 'finished' in capsys.readouterr().err
