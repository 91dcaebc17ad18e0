"""The user-error contract, end to end: every mistake a user can fix is one
`error:` line and exit status 2, found before any work; Ctrl-C is one line
and exit status 130, and the re-run resumes.

Each row runs `main.py` (or `python -m lpjax.evaluate`) as a subprocess on
a tiny synthetic config, as a user would, and checks the status, that at
most two lines follow absl's log lines on stderr (the last naming the
problem), that the workdir holds nothing beyond the resumable state, and
for the checks made before work that no training started. Subprocesses
cost seconds of imports each: the rows are few and the runs tiny.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lpjax import checkpointing, models

REPO = Path(__file__).resolve().parents[1]

# tests/test_pipeline.py's TINY, smaller: 1, 1 and 2 blocks per stage over
# a floor of 1, 1 baseline epoch, one removal fine-tuned 3 epochs.
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
  c.blocks_per_stage = (1, 1, 2)
  c.min_blocks_per_stage = 1
  c.style = 'pytorch'
  c.baseline.epochs = 1
  c.train.batch_size = 16
  c.train.eval_batch_size = 64
  c.train.learning_rate = 0.05
  c.train.log_every_steps = 0
  c.prune.target_blocks = 1
  c.prune.calibration_examples = 32
  c.prune.data_batch_size = 32
  c.prune.finetune_epochs = 3
  return c
"""

# An absl log line: `I0102 03:04:05.678901  1234 file.py:56] ...`.
_LOG = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ ]+:\d+\]')
# Most seconds a refused run may take (imports and the checks: 2-5 s, more
# on a loaded machine); a hang guard. That no training started is checked
# on the workdir: not created, or as it was.
_BEFORE_WORK_S = 60


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  path = tmp_path_factory.mktemp('user_errors') / 'tiny_config.py'
  path.write_text(TINY)
  return path


def _env(**extra):
  """This environment with `extra` (a value of None removes the variable),
  and one device unless `extra` says."""
  env = {k: v for k, v in os.environ.items() if k != 'JAX_NUM_CPU_DEVICES'}
  return {k: v for k, v in {**env, **extra}.items() if v is not None}


def _main(*args, env=None):
  """`python main.py args`: `(status, stderr, seconds)`."""
  return _run([sys.executable, 'main.py', *map(str, args)], env)


def _evaluate(*args):
  return _run([sys.executable, '-m', 'lpjax.evaluate', *map(str, args)])


def _run(cmd, env=None):
  t0 = time.monotonic()
  proc = subprocess.run(
    cmd,
    cwd=REPO,
    env=env or _env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  return proc.returncode, proc.stderr, time.monotonic() - t0


def _message(stderr: str) -> str:
  """The one line after absl's log lines; at most two lines may follow."""
  lines = stderr.splitlines()
  last_log = max((i for i, s in enumerate(lines) if _LOG.match(s)), default=-1)
  after = [s for s in lines[last_log + 1 :] if s.strip()]
  assert 1 <= len(after) <= 2, stderr[-3000:]
  assert after[-1].startswith('error: '), stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  return after[-1]


def _leftovers(workdir: Path) -> list[str]:
  """Unfinished writes: orbax's temporary saves and `*.tmp` files."""
  return [
    str(p)
    for p in workdir.rglob('*')
    if checkpointing.TMP_MARKER in p.name or p.name.endswith('.tmp')
  ]


# --- Refused before any work --------------------------------------------------


def _misspelt_path(tiny, w):
  return [f'--config={tiny.with_name("tiny_confg.py")}', f'--workdir={w}']


def _unwritable(tiny, w):
  w.parent.mkdir(parents=True, exist_ok=True)
  (w.parent / 'a_file').write_text('')
  return [f'--config={tiny}', f'--workdir={w.parent / "a_file" / "w"}']


def _corrupt_config_json(tiny, w):
  w.mkdir(parents=True)
  (w / 'config.json').write_text('{"seed": 0,')
  return [f'--config={tiny}', f'--workdir={w}']


def _cache_in_a_file(tiny, w):
  w.parent.mkdir(parents=True, exist_ok=True)
  (w.parent / 'a_file').write_text('')
  return [
    f'--config={tiny}',
    f'--workdir={w}',
    f'--config.compilation_cache={w.parent / "a_file" / "xla"}',
  ]


def _override(*overrides):
  def args(tiny, w):
    return [f'--config={tiny}', f'--workdir={w}', *overrides]

  return args


# id -> (arguments of main.py from (config, workdir), environment, the
# pattern its error line must match).
REFUSED = {
  'misspelt_config_path': (
    _misspelt_path,
    {},
    r'No config file .*tiny_confg\.py\. Did you mean .*tiny_config\.py\?',
  ),
  'unknown_field': (
    _override('--config.prune.critrion=random'),
    {},
    r"no field 'critrion'; did you mean 'criterion'\?",
  ),
  'unknown_criterion': (
    _override('--config.prune.criterion=hrank'),
    {},
    r"Unknown criterion 'hrank'; valid criteria: .*'cka'",
  ),
  'unwritable_workdir': (
    _unwritable,
    {},
    r'Cannot create the workdir .*a_file/w: Not a directory\. Choose',
  ),
  'compilation_cache_in_a_file': (
    _cache_in_a_file,
    # The session's cache (tests/conftest.py) would take precedence.
    {'JAX_COMPILATION_CACHE_DIR': None},
    r'Cannot create the compilation_cache folder .*a_file/xla: Not a '
    r"directory\. Set --config\.compilation_cache to a writable folder, or ''",
  ),
  'corrupt_config_json': (
    _corrupt_config_json,
    {},
    r'w/config\.json is not valid JSON.*new --workdir',
  ),
  'devices_do_not_divide_the_batch': (
    _override(),
    {'JAX_NUM_CPU_DEVICES': '3'},
    r'train\.batch_size=16 is not a multiple of the 3 devices '
    r'\(JAX_NUM_CPU_DEVICES=3\).*JAX_NUM_CPU_DEVICES=2',
  ),
  'sleb_on_a_resnet': (
    _override('--config.prune.criterion=sleb'),
    {},
    r"'sleb' needs a decoder .*--config\.prune\.criterion",
  ),
  'negative_floor': (
    _override('--config.min_blocks_per_stage=-1'),
    {},
    r'min_blocks_per_stage must be an integer >= 1; got -1',
  ),
  'untrained_baseline': (
    _override('--config.baseline.epochs=0'),
    {},
    r'baseline\.epochs=0 .*randomly initialised.*'
    r'--config\.baseline\.allow_untrained=True',
  ),
}


@pytest.fixture(scope='module')
def refused(tiny, tmp_path_factory):
  """Every row of `REFUSED`, three at a time (each is seconds of imports):
  `{id: (status, stderr, seconds, workdir, its listing and config.json
  before, or None)}`."""
  pending, running, out = list(REFUSED.items()), {}, {}
  try:
    while pending or running:
      while pending and len(running) < 3:
        name, (make_args, env, _) = pending.pop(0)
        w = tmp_path_factory.mktemp(name) / 'w'
        args = make_args(tiny, w)
        before = None
        if w.exists():
          listing = sorted(p.name for p in w.iterdir())
          before = (listing, (w / 'config.json').read_text())
        proc = subprocess.Popen(
          [sys.executable, 'main.py', *args],
          cwd=REPO,
          env=_env(**env),
          stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE,
          text=True,
        )
        running[name] = (proc, time.monotonic(), w, before)
      name = next(iter(running))
      proc, t0, w, before = running.pop(name)
      _, stderr = proc.communicate(timeout=300)
      out[name] = (proc.returncode, stderr, time.monotonic() - t0, w, before)
  finally:
    for proc, *_ in running.values():
      proc.kill()
      proc.wait()
  return out


@pytest.mark.parametrize('name', list(REFUSED))
def test_refused_before_work(refused, name):
  status, stderr, seconds, w, before = refused[name]
  assert status == 2, stderr[-3000:]
  message = _message(stderr)
  assert re.search(REFUSED[name][2], message), message
  assert seconds < _BEFORE_WORK_S
  if before is None:
    assert not w.exists()  # not even created: no training started
  else:  # the workdir as it was
    listing, config_json = before
    assert sorted(p.name for p in w.iterdir()) == listing
    assert (w / 'config.json').read_text() == config_json


# --- Ctrl-C, resume, and what a finished run refuses --------------------------


@pytest.fixture(scope='module')
def interrupted(tiny, tmp_path_factory):
  """A run sent SIGINT during iteration 1's fine-tune (during one of its
  saves if the poll sees one), then re-run to the end, beside an
  uninterrupted run: `(workdir, status, stderr of the interrupted run,
  what it left, stderr of the re-run, the uninterrupted run's workdir)`."""
  root = tmp_path_factory.mktemp('interrupted')
  w, clean = root / 'w', root / 'clean'
  stage = w / 'iter_001'
  uninterrupted = subprocess.Popen(
    [sys.executable, 'main.py', f'--config={tiny}', f'--workdir={clean}'],
    cwd=REPO,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  proc = subprocess.Popen(
    [sys.executable, 'main.py', f'--config={tiny}', f'--workdir={w}'],
    cwd=REPO,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 300:
      # After the edit (step 0), by epoch 2 of 3: mid fine-tune; best in
      # the save of step 1, which orbax leaves half-written in its
      # temporary folder if the interrupt reaches it.
      if (stage / '0').is_dir() and (
        (stage / '1').is_dir()
        or any(
          checkpointing.TMP_MARKER in p.name
          for p in stage.iterdir()
          if not p.name.startswith('0')
        )
      ):
        break
      time.sleep(0.002)
    assert proc.poll() is None, 'the run ended before its fine-tune'
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    left = sorted(str(p.relative_to(w)) for p in w.rglob('*'))
    status, rerun_stderr, _ = _main(f'--config={tiny}', f'--workdir={w}')
    assert status == 0, rerun_stderr[-3000:]
    assert uninterrupted.wait(timeout=300) == 0
  finally:
    for p in (proc, uninterrupted):
      if p.poll() is None:
        p.kill()
        p.wait()
  return w, proc.returncode, stderr, left, rerun_stderr, clean


def _results(workdir):
  """`results.json`'s records without their timings."""
  results = json.loads((workdir / 'results.json').read_text())
  return [
    {k: v for k, v in rec.items() if not k.startswith('seconds')}
    for rec in [results['baseline'], *results['iterations']]
  ]


def _final_params(workdir):
  with checkpointing.Checkpoints(workdir / 'iter_001') as ck:
    arch, meta = ck.restore_meta()
    params = ck.restore()['params']
  return arch, meta, params


def test_ctrl_c_is_one_line_and_the_rerun_resumes_exactly(interrupted):
  w, status, stderr, left, rerun_stderr, clean = interrupted
  assert status == 130, stderr[-3000:]
  message = _message(stderr)
  assert message.startswith('error: interrupted; re-run the same command')
  assert str(w) in message
  # Only complete steps: no temporary save, no half-written file.
  assert not [p for p in left if checkpointing.TMP_MARKER in p or '.tmp' in p]
  assert 'iter_001/0' in left and not any(
    p.startswith('iter_002') for p in left
  )
  assert 'iter_001: resuming training at epoch' in rerun_stderr
  assert not _leftovers(w)
  # As if never interrupted: the same records, the same final parameters.
  assert _results(w) == _results(clean)
  arch, meta, params = _final_params(w)
  arch_clean, _, params_clean = _final_params(clean)
  assert meta['complete'] and meta['epoch'] == 3 and arch == arch_clean
  jax.tree.map(np.testing.assert_array_equal, params, params_clean)


def test_evaluate_checks_its_arguments_before_any_model(interrupted):
  w = interrupted[0]
  status, stderr, seconds = _evaluate(
    f'--workdir={w}', '--corruptions=gausian_noise'
  )
  assert status == 2, stderr[-3000:]
  message = _message(stderr)
  assert "Unknown corruption 'gausian_noise'" in message
  assert "Did you mean 'gaussian_noise'?" in message
  assert seconds < _BEFORE_WORK_S
  assert not (w / 'evaluation.json').exists()


def test_random_bytes_in_a_checkpoint_name_the_stage_and_the_fix(
  tiny, interrupted, tmp_path
):
  """The error names the step and stage folder and how to redo it, in one
  short line: not orbax's ~60-line TensorStore spec."""
  w = tmp_path / 'w'
  shutil.copytree(interrupted[0], w)
  stage = w / 'iter_001'
  step = max(int(p.name) for p in stage.iterdir() if p.name.isdigit())
  data = max(
    (p for p in (stage / str(step) / 'state').rglob('*') if p.is_file()),
    key=lambda p: p.stat().st_size,
  )
  data.write_bytes(np.random.default_rng(0).bytes(data.stat().st_size))
  status, stderr, _ = _main(f'--config={tiny}', f'--workdir={w}')
  assert status == 2, stderr[-3000:]
  message = _message(stderr)
  assert f'Checkpoint step {step} in {stage} cannot be read' in message
  assert f'delete {stage / str(step)}' in message
  assert f'the folder {stage} to redo that stage' in message
  assert 'driver' not in stderr and len(message) < 800, message


# --- The compilation cache ----------------------------------------------------


def test_a_second_run_loads_its_programs_from_the_compilation_cache(
  tiny, tmp_path
):
  """`compilation_cache`: the first run writes its compiled programs there,
  a second run of the same config (another workdir) loads them (JAX logs
  each hit under JAX_LOG_COMPILES) and records the same results."""
  cache = tmp_path / 'xla'
  env = _env(
    JAX_COMPILATION_CACHE_DIR=None,  # the session's cache would win
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',  # tiny programs too
    JAX_LOG_COMPILES='1',
  )
  runs = []
  for name in ('first', 'second'):
    w = tmp_path / name
    status, stderr, _ = _main(
      f'--config={tiny}',
      f'--workdir={w}',
      f'--config.compilation_cache={cache}',
      env=env,
    )
    assert status == 0, stderr[-3000:]
    runs.append((w, stderr))
    if name == 'first':
      entries = sorted(p.name for p in cache.iterdir())
      assert any(e.startswith('jit_train_step-') for e in entries), entries
  hit = "Persistent compilation cache hit for 'jit_train_step'"
  assert hit not in runs[0][1]
  assert hit in runs[1][1], runs[1][1][-3000:]
  assert _results(runs[1][0]) == _results(runs[0][0])


# --- Checkpoints: an interrupted save leaves no temporary folder -------------


def _state(value):
  return {'w': np.full((4, 3), value, np.float32), 'b': np.zeros(3, np.float32)}


def test_an_interrupted_save_is_abandoned_cleanly(tmp_path, monkeypatch):
  arch = models.get_arch('resnet20')
  with checkpointing.Checkpoints(tmp_path / 'ck') as ck:
    ck.save(0, state=_state(0.0), arch=arch, meta={'epoch': 0})

    save = ocp.CompositeCheckpointHandler.save

    def interrupted(self, *args, **kwargs):
      save(self, *args, **kwargs)  # the step written in its temporary folder
      raise KeyboardInterrupt  # before orbax renames it

    with monkeypatch.context() as m:
      m.setattr(ocp.CompositeCheckpointHandler, 'save', interrupted)
      with pytest.raises(KeyboardInterrupt):
        ck.save(1, state=_state(1.0), arch=arch, meta={'epoch': 1})
    assert sorted(p.name for p in (tmp_path / 'ck').iterdir()) == ['0']
  # A new run resumes from step 0, and saves step 1 again.
  with checkpointing.Checkpoints(tmp_path / 'ck') as ck:
    assert ck.latest_step() == 0
    assert ck.restore_meta()[1] == {'epoch': 0}
    ck.save(1, state=_state(1.0), arch=arch, meta={'epoch': 1})
    np.testing.assert_array_equal(ck.restore()['w'], _state(1.0)['w'])


@pytest.mark.parametrize('wait', [True, False], ids=['sync', 'background'])
def test_ctrl_c_during_a_save_takes_effect_once_the_step_is_written(
  tmp_path, monkeypatch, wait
):
  # Ctrl-C reaches the main thread as orbax starts writing: in the save
  # itself, or (`wait=False`) while the writer thread writes and the main
  # thread goes on into `wait`.
  arch = models.get_arch('resnet20')
  save = ocp.CompositeCheckpointHandler.save

  def pressed(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
    save(self, *args, **kwargs)

  with checkpointing.Checkpoints(tmp_path / 'ck') as ck:
    ck.save(0, state=_state(0.0), arch=arch)
    with monkeypatch.context() as m:
      m.setattr(ocp.CompositeCheckpointHandler, 'save', pressed)
      with pytest.raises(KeyboardInterrupt):
        ck.save(1, state=_state(1.0), arch=arch, meta={'epoch': 1}, wait=wait)
        ck.wait()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  assert sorted(p.name for p in (tmp_path / 'ck').iterdir()) == ['0', '1']
  with checkpointing.Checkpoints(tmp_path / 'ck') as ck:
    assert ck.restore_meta()[1] == {'epoch': 1}
    np.testing.assert_array_equal(ck.restore()['w'], _state(1.0)['w'])


def test_a_background_save_is_complete_before_the_next_call(
  tmp_path, monkeypatch
):
  arch = models.get_arch('resnet20')
  save = ocp.CompositeCheckpointHandler.save
  started = threading.Event()

  def slow(self, *args, **kwargs):
    started.set()
    time.sleep(0.3)  # the caller goes on meanwhile
    save(self, *args, **kwargs)

  monkeypatch.setattr(ocp.CompositeCheckpointHandler, 'save', slow)
  with checkpointing.Checkpoints(tmp_path / 'ck') as ck:
    state, meta = _state(0.0), {'epoch': 0, 'losses': [1.0]}
    ck.save(0, state=state, arch=arch, meta=meta, wait=False)
    # The caller goes on and changes what it saved, before it is written.
    state['w'][:] = 5.0
    meta['losses'].append(2.0)
    assert started.wait(30)
    assert ck.latest_step() == 0  # waits for the write, then lists it
    assert ck.restore_meta()[1] == {'epoch': 0, 'losses': [1.0]}
    np.testing.assert_array_equal(ck.restore()['w'], _state(0.0)['w'])
    ck.save(1, state=_state(1.0), arch=arch, wait=False)
  # `close` finished the second write.
  assert sorted(p.name for p in (tmp_path / 'ck').iterdir()) == ['0', '1']
  with checkpointing.Checkpoints(tmp_path / 'ck') as ck:
    np.testing.assert_array_equal(ck.restore()['w'], _state(1.0)['w'])


def test_a_failed_background_save_raises_at_the_next_call(
  tmp_path, monkeypatch
):
  arch = models.get_arch('resnet20')

  def full(self, *args, **kwargs):
    raise OSError(28, 'No space left on device')

  with checkpointing.Checkpoints(tmp_path / 'ck') as ck:
    ck.save(0, state=_state(0.0), arch=arch)
    with monkeypatch.context() as m:
      m.setattr(ocp.CompositeCheckpointHandler, 'save', full)
      ck.save(1, state=_state(1.0), arch=arch, wait=False)
      with pytest.raises(OSError, match='No space left'):
        ck.latest_step()
    assert ck.latest_step() == 0  # raised once; step 0 intact


def test_a_killed_runs_temporary_save_goes_at_the_next_save(tmp_path):
  arch = models.get_arch('resnet20')
  directory = tmp_path / 'ck'
  with checkpointing.Checkpoints(directory) as ck:
    ck.save(0, state=_state(0.0), arch=arch)
  stale = directory / f'1{checkpointing.TMP_MARKER}'
  (stale / 'state').mkdir(parents=True)
  with checkpointing.Checkpoints(directory) as ck:
    ck.restore()
    assert stale.exists()  # a reader never touches a save in progress
    ck.save(1, state=_state(1.0), arch=arch)
  assert sorted(p.name for p in directory.iterdir()) == ['0', '1']
