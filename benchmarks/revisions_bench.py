"""Scores and scoring speed of two git revisions, side by side in one run.

Checks that a refactor changes neither the candidate scores nor the speed of
`lpjax.scoring.score_candidates`. Each revision is checked out into a
temporary `git worktree` (removed at the end, also on error) and runs in its
own long-lived worker process (this file with `--worker`), with the worktree
as working directory and `PYTHONPATH`, so it imports its own `lpjax` (the
workers report `lpjax.__file__`, and refuse any other). The parent sends the
workers commands as JSON lines on stdin and reads JSON lines back.

1. Scores: the authors' Keras ResNet-56 (`resnet56_baseline.json` / `.h5`
   in `--keras_dir`, loaded by `lpjax.interop.keras_h5.load_keras_model`)
   and the 256 reference inputs of `reference_outputs.npz`; the 24 CKA
   scores of each revision, their largest absolute difference and whether
   the two rankings are the same.
2. Speed: the same model scoring its 24 candidates on `--n` random normal
   32x32x3 float32 images (seed `--seed`), `data_batch_size=--batch`. The
   first call of each revision (compilation included; the scores of step 1
   were computed on another input shape, so this compiles afresh), then
   `--repeats` warm calls per revision, interleaved A, B, B, A, A, B, ... so
   that the machine's load falls on both alike. The scores are converted to
   NumPy inside the timed region.

  python benchmarks/revisions_bench.py --out /tmp/rev.md
  python benchmarks/revisions_bench.py --before=8ad0518 --after=HEAD \
    --n=1000 --repeats=2
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BEFORE = flags.DEFINE_string('before', '8ad0518', 'Revision A (before).')
_AFTER = flags.DEFINE_string('after', 'HEAD', 'Revision B (after).')
_KERAS_DIR = flags.DEFINE_string(
  'keras_dir',
  os.path.join('..', 'shared', 'reference', 'keras'),
  'Keras reference directory, relative to the repository root or absolute.',
)
_N = flags.DEFINE_integer('n', 1000, 'Images for the speed measurement.')
_BATCH = flags.DEFINE_integer('batch', 500, 'data_batch_size.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random images.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Warm calls per revision.')
_OUT = flags.DEFINE_string('out', None, 'Also write the report here.')
_WORKER = flags.DEFINE_bool(
  'worker', False, 'Internal: run as a worker (stdin/stdout JSON lines).'
)

_SCORE_TOL = 1e-6
_SPEED_TOL = 1.1


def _worker():
  """Serves commands from stdin; one JSON line out per JSON line in."""
  # The protocol owns the real stdout; anything else printed goes to stderr.
  proto = os.fdopen(os.dup(sys.stdout.fileno()), 'w', buffering=1)
  sys.stdout = sys.stderr

  import jax
  import numpy as np

  import lpjax
  from lpjax import scoring
  from lpjax.interop import keras_h5

  root = os.path.realpath(os.getcwd())
  pkg = os.path.realpath(lpjax.__file__)
  if not pkg.startswith(root + os.sep):
    raise RuntimeError(f'lpjax imported from {pkg}, not from {root}')
  state = {}

  def load(json_path, h5_path):
    state['arch'], state['variables'] = keras_h5.load_keras_model(
      json_path, h5_path
    )
    return {'candidates': len(state['arch'].candidates)}

  def score(inputs_path):
    x = np.load(inputs_path, allow_pickle=False)['inputs']
    out = scoring.score_candidates(state['arch'], state['variables'], x)
    return {'names': list(out), 'scores': [float(v) for v in out.values()]}

  def make_images(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, 32, 32, 3))
    state['x'] = x.astype(np.float32)
    return {'shape': list(state['x'].shape)}

  def timed(batch):
    t0 = time.perf_counter()
    out = scoring.score_candidates(
      state['arch'], state['variables'], state['x'], data_batch_size=batch
    )
    out = jax.block_until_ready(out)
    scores = np.asarray(list(out.values()), np.float64)
    seconds = time.perf_counter() - t0
    return {'seconds': seconds, 'scores': scores.tolist()}

  commands = {
    'load': load,
    'score': score,
    'images': make_images,
    'time': timed,
  }
  hello = {
    'lpjax': pkg,
    'jax': jax.__version__,
    'device': jax.devices()[0].device_kind,
  }
  proto.write(json.dumps(hello) + '\n')
  for line in sys.stdin:
    msg = json.loads(line)
    if msg['cmd'] == 'quit':
      break
    try:
      reply = commands[msg['cmd']](**msg.get('args', {}))
    except Exception as e:
      traceback.print_exc()
      reply = {'error': f'{type(e).__name__}: {e}'}
    proto.write(json.dumps(reply) + '\n')


class _Worker:
  """One worker process, running revision `rev` checked out in `tree`."""

  def __init__(self, label, rev, tree):
    self.label, self.rev, self.tree = label, rev, tree
    env = dict(os.environ, PYTHONPATH=tree)
    self.proc = subprocess.Popen(
      [sys.executable, '-u', os.path.abspath(__file__), '--worker'],
      cwd=tree,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
    )
    self.hello = self._read()

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'worker {self.label} ({self.rev}) exited')
    reply = json.loads(line)
    if 'error' in reply:
      raise RuntimeError(f'worker {self.label} ({self.rev}): {reply["error"]}')
    return reply

  def call(self, cmd, **args):
    self.proc.stdin.write(json.dumps({'cmd': cmd, 'args': args}) + '\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps({'cmd': 'quit'}) + '\n')
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
      except (OSError, subprocess.TimeoutExpired):
        self.proc.kill()
        self.proc.wait()


def _git(*args):
  return subprocess.run(
    ['git', *args], cwd=_REPO, check=True, capture_output=True, text=True
  ).stdout.strip()


def _ranking(names, scores):
  return [n for _, n in sorted(zip(scores, names))]


def _bench(revs, keras_dir, log):
  """Runs both workers; returns the report's markdown lines."""
  workers = []
  try:
    for label, (rev, commit, tree) in zip(('before', 'after'), revs):
      w = _Worker(label, f'{rev} = {commit[:7]}', tree)
      workers.append(w)
      log(f'{label} {w.rev}: lpjax from {w.hello["lpjax"]}')
    a, b = workers
    json_path = os.path.join(keras_dir, 'resnet56_baseline.json')
    h5_path = os.path.join(keras_dir, 'resnet56_baseline.h5')
    npz = os.path.join(keras_dir, 'reference_outputs.npz')
    scores = {}
    for w in workers:
      k = w.call('load', json_path=json_path, h5_path=h5_path)['candidates']
      t0 = time.perf_counter()
      scores[w.label] = w.call('score', inputs_path=npz)
      log(
        f'{w.label}: {k} candidates, scores on the reference inputs in '
        f'{time.perf_counter() - t0:.1f}s'
      )
    sa, sb = scores['before'], scores['after']
    same_names = sa['names'] == sb['names']
    if not same_names:
      log(f'candidate names differ: {sa["names"]} vs {sb["names"]}')
    diffs = [abs(x - y) for x, y in zip(sa['scores'], sb['scores'])]
    max_diff = max(diffs) if len(sa['scores']) == len(sb['scores']) else None
    # Rankings compared by position in network order (names may differ).
    idx = list(range(len(sa['scores'])))
    same_rank = len(sa['scores']) == len(sb['scores']) and _ranking(
      idx, sa['scores']
    ) == _ranking(idx, sb['scores'])

    n, batch = _N.value, _BATCH.value
    for w in workers:
      w.call('images', n=n, seed=_SEED.value)
    first, warm, speed_scores = {}, {a.label: [], b.label: []}, {}
    order = []
    for w in workers:
      r = w.call('time', batch=batch)
      first[w.label] = r['seconds']
      speed_scores[w.label] = r['scores']
      log(f'{w.label}: first call {r["seconds"]:.1f}s')
    for i in range(_REPEATS.value):
      for w in (a, b) if i % 2 == 0 else (b, a):
        r = w.call('time', batch=batch)
        warm[w.label].append(r['seconds'])
        order.append(f'{w.label} {r["seconds"]:.1f}s')
        log(f'{w.label}: warm call {i + 1} {r["seconds"]:.1f}s')
    speed_diff = max(
      abs(x - y) for x, y in zip(speed_scores['before'], speed_scores['after'])
    )
    med = {k: statistics.median(v) if v else None for k, v in warm.items()}
    ratio = (
      med['after'] / med['before'] if med['before'] and med['after'] else None
    )
    jax_versions = {w.hello['jax'] for w in workers}
    device = workers[0].hello['device']
  finally:
    for w in workers:
      w.close()

  def fmt(v, unit='s'):
    return '-' if v is None else f'{v:.1f}{unit}'

  def span(s):
    return f'{min(s["scores"]):.4g} to {max(s["scores"]):.4g}'

  def low(s):
    i = min(range(len(s['scores'])), key=s['scores'].__getitem__)
    return f'lowest: {s["names"][i]}'

  def verdict(ok):
    return 'met' if ok else 'MISSED'

  def rev_name(rev, commit):
    return rev if commit.startswith(rev) else f'{rev} = {commit[:7]}'

  ra, rb = revs[0], revs[1]
  r = _REPEATS.value
  ratio_cell = '-'
  if ratio is not None:
    ratio_cell = (
      f'{ratio:.2f}x ({verdict(ratio <= _SPEED_TOL)}: ≤ {_SPEED_TOL}x)'
    )
  lines = [
    f'ResNet-56 (Keras baseline weights), {len(sa["scores"])} candidates; '
    f'jax {", ".join(sorted(jax_versions))}, {device}, {os.cpu_count()} '
    f'cores, {platform.processor() or platform.machine()}.',
    '',
    f'| | before ({rev_name(*ra[:2])}) | after ({rev_name(*rb[:2])}) | '
    'after vs before |',
    '|---|---|---|---|',
    f'| scores, 256 reference inputs | {span(sa)} | {span(sb)} | '
    'max abs difference '
    f'{"-" if max_diff is None else f"{max_diff:.1e}"} '
    f'({verdict(max_diff is not None and max_diff <= _SCORE_TOL)}: '
    f'≤ {_SCORE_TOL:g}) |',
    f'| ranking of the {len(sa["scores"])} candidates | {low(sa)} | '
    f'{low(sb)} | '
    f'{"identical" if same_rank else "DIFFERENT"} |',
    f'| first call, {n:,} images, batch {batch} (compile included) | '
    f'{fmt(first["before"])} | {fmt(first["after"])} | '
    f'{first["after"] / first["before"]:.2f}x |',
    f'| median of {r} warm calls, {n:,} images | {fmt(med["before"])} | '
    f'{fmt(med["after"])} | {ratio_cell} |',
    '',
  ]
  lines += [
    f'Warm calls in order: {", ".join(order) or "none"}.',
    f'Max abs score difference on the {n:,} random images: {speed_diff:.1e}.',
  ]
  if not same_names:
    lines.append('Candidate names differ between the revisions.')
  return lines


def main(argv):
  del argv
  if _WORKER.value:
    _worker()
    return
  start = time.perf_counter()

  def log(msg):
    print(f'[{time.perf_counter() - start:6.1f}s] {msg}', flush=True)

  keras_dir = os.path.join(_REPO, _KERAS_DIR.value)
  keras_dir = os.path.abspath(keras_dir)
  tmp = tempfile.mkdtemp(prefix='lpjax_revisions_')
  trees = []
  try:
    revs = []
    for label, rev in (('before', _BEFORE.value), ('after', _AFTER.value)):
      commit = _git('rev-parse', '--verify', f'{rev}^{{commit}}')
      tree = os.path.join(tmp, label)
      _git('worktree', 'add', '--detach', tree, commit)
      trees.append(tree)
      revs.append((rev, commit, tree))
    log(
      f'load average {os.getloadavg()[0]:.2f}; before {revs[0][1][:7]}, '
      f'after {revs[1][1][:7]}'
    )
    lines = _bench(revs, keras_dir, log)
  finally:
    for tree in trees:
      subprocess.run(
        ['git', 'worktree', 'remove', '--force', tree],
        cwd=_REPO,
        check=False,
        capture_output=True,
      )
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
      ['git', 'worktree', 'prune'], cwd=_REPO, check=False, capture_output=True
    )
  total = time.perf_counter() - start
  lines.append(
    f'Total {total:.0f}s; load average at the end {os.getloadavg()[0]:.2f}.'
  )
  report = '\n'.join(lines) + '\n'
  print('\n' + report, end='')
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      f.write(report)


if __name__ == '__main__':
  app.run(main)
