"""Everything (Nascimento et al. 2025): filter criteria, the filter child's
budget, arbitration on the holdout only, resume inside a step, replay."""

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pipeline import _load_config
from tolerances import EPS32, f32_atol, magnitude, network_terms

from lpjax import (
  checkpointing,
  errors,
  flops,
  methods,
  models,
  surgery,
)
from lpjax.methods import filters
from lpjax.models import resnet
from lpjax.run import classifier, loop

REPO = Path(__file__).resolve().parents[1]

# --- The filter child's budget -------------------------------------------------

R56 = resnet.resnet_cifar(56)


def _scores(arch, seed):
  rng = np.random.default_rng(seed)
  return {(u, k): rng.random(w) for u, k, w in models.prunable_filters(arch)}


def _removed(arch, edit):
  """{(unit, k): removed channel indices} of a shrink-only edit."""
  widths = {(u, k): w for u, k, w in models.prunable_filters(arch)}
  return {
    (s.unit, s.width): np.setdiff1d(
      np.arange(widths[(s.unit, s.width)]), s.keep
    )
    for s in edit.shrink
  }


def _shrunk(arch, edit):
  for s in edit.shrink:
    arch = arch.with_widths(s.unit, [len(s.keep)])
  return arch


@pytest.mark.parametrize('budget', [1, 16, 32, 64, 128, 600])
def test_filter_child_removes_exactly_the_budget(budget):
  scores = _scores(R56, 0)
  edit = filters.select(R56, scores, budget, np.random.default_rng(1))
  assert not edit.remove
  removed = _removed(R56, edit)
  assert sum(len(r) for r in removed.values()) == budget
  p = budget / models.num_filters(R56)
  for (unit, k), drop in removed.items():
    s = scores[(unit, k)]
    width = len(s)
    assert len(drop) < width  # never empties a conv
    # Lowest scores first within each conv.
    kept = np.setdiff1d(np.arange(width), drop)
    assert s[drop].max() <= s[kept].min()
  # Every conv gives at least its rounded share (the sum of the shares is
  # below the budget here: prunable filters are under half of all filters).
  for unit, k, width in models.prunable_filters(R56):
    share = min(int(np.floor(p * width + 0.5)), width - 1)
    assert len(removed.get((unit, k), ())) >= share
  # The edited network has exactly that many fewer filters.
  small = _shrunk(R56, edit)
  assert models.num_filters(R56) - models.num_filters(small) == budget


def test_filter_child_is_deterministic_given_the_seed():
  scores = _scores(R56, 0)
  a = filters.select(R56, scores, 100, np.random.default_rng(5))
  b = filters.select(R56, scores, 100, np.random.default_rng(5))
  assert a == b
  others = {
    filters.select(R56, scores, 100, np.random.default_rng(s)) for s in range(6)
  }
  assert len(others) > 1  # the random fill does depend on the seed


def test_filter_child_budget_limits():
  scores = _scores(R56, 0)
  most = sum(w - 1 for *_, w in models.prunable_filters(R56))
  edit = filters.select(R56, scores, most, np.random.default_rng(0))
  small = _shrunk(R56, edit)
  assert all(b.widths == (1,) for b in small.blocks)
  assert filters.select(R56, scores, most + 1, np.random.default_rng(0)) is None
  with pytest.raises(ValueError, match='budget'):
    filters.select(R56, scores, 0, np.random.default_rng(0))


def test_rounding_overshoot_gives_back_the_highest_scores(monkeypatch):
  """If rounding every conv's share overshoots the budget, the highest-
  scoring chosen filters are kept back. (A ResNet cannot overshoot: its
  prunable filters are at most half of all, and round(x) <= 2x for x >= 1/2;
  a family whose prunable filters are all its filters can.)"""
  arch = resnet.resnet_cifar(blocks_per_stage=(2, 2, 2), width=2)
  prunable = models.prunable_filters(arch)
  total = sum(w for *_, w in prunable)  # widths 2, 2, 4, 4, 8, 8: 28
  monkeypatch.setattr(models, 'num_filters', lambda a: total)
  budget = 7  # p = 1/4: shares 1, 1, 1, 1, 2, 2 = 8 > 7
  shares = {
    (u, k): int(np.floor(budget / total * w + 0.5)) for u, k, w in prunable
  }
  assert sum(shares.values()) == budget + 1
  scores = _scores(arch, 3)
  chosen = {key: np.argsort(scores[key])[:n] for key, n in shares.items()}
  back = max(chosen, key=lambda key: scores[key][chosen[key][-1]])
  chosen[back] = chosen[back][:-1]
  edit = filters.select(arch, scores, budget, np.random.default_rng(0))
  removed = _removed(arch, edit)
  assert {key: sorted(v) for key, v in removed.items()} == {
    key: sorted(v) for key, v in chosen.items() if len(v)
  }


# --- Filter criteria against independent oracles -------------------------------

TINY_ARCH = resnet.resnet_cifar(
  blocks_per_stage=(2, 1, 1), width=4, num_classes=5
)
SHAPE = (8, 8, 3)


@pytest.fixture(scope='module')
def tiny_net():
  variables = models.init_variables(TINY_ARCH, 0, SHAPE)
  # Random BN statistics and affine parameters, so channels differ.
  key = jax.random.key(3)
  leaves, tree = jax.tree.flatten(variables['batch_stats'])
  keys = jax.random.split(key, len(leaves))
  # Leaves alternate mean, var (sorted keys).
  stats = [
    jnp.abs(jax.random.normal(k, x.shape)) + 0.5
    if i % 2
    else 0.1 * jax.random.normal(k, x.shape)
    for i, (k, x) in enumerate(zip(keys, leaves))
  ]
  variables = dict(variables, batch_stats=jax.tree.unflatten(tree, stats))
  x = np.asarray(jax.random.normal(jax.random.key(4), (24, *SHAPE)))
  ctx = methods.Context(
    arch=TINY_ARCH,
    variables=variables,
    inputs=x,
    labels=np.zeros(24, np.int32),
    seed=0,
    iteration=1,
    data_batch_size=12,
  )
  return ctx


def _flat(arch, scores):
  return np.concatenate(
    [scores[(u, k)] for u, k, _ in models.prunable_filters(arch)]
  )


@pytest.mark.parametrize('direction', ['forward', 'reverse'])
def test_kl_filter_scores_equal_a_loop_of_masked_forwards(tiny_net, direction):
  ctx = dataclasses.replace(tiny_net, hparams={'direction': direction})
  got = _flat(ctx.arch, filters.kl_scores(ctx))
  model = models.build_model(ctx.arch)
  forward = jax.jit(lambda v, x, m: model.apply(v, x, filter_mask=m))
  total = len(got)
  ref = np.asarray(forward(ctx.variables, ctx.inputs, jnp.ones(total)))
  logp = _log_softmax64(ref)
  want = []
  for i in range(total):
    mask = np.ones(total, np.float32)
    mask[i] = 0.0
    logq = _log_softmax64(np.asarray(forward(ctx.variables, ctx.inputs, mask)))
    if direction == 'reverse':  # KL(q || p), the Everything authors' code
      want.append(np.mean(np.sum(np.exp(logq) * (logq - logp), axis=-1)))
    else:  # KL(p || q), CURL's
      want.append(np.mean(np.sum(np.exp(logp) * (logp - logq), axis=-1)))
  want = np.asarray(want)
  assert want.max() > 1e3 * want.min() > 0  # scores that can be told apart
  # Two float32 forwards whose summation orders differ, then a float32 KL:
  # each log-probability carries the network's rounding error (its fan-in
  # and depth) at the logits' scale, and the sum over classes its own.
  fan_in, depth = network_terms(ctx.variables['params'])
  logits_err = f32_atol(fan_in, magnitude(ref), depth)
  atol = 4 * logits_err + f32_atol(ctx.arch.num_classes, magnitude(logp))
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)
  # The filter ranked lowest is a lowest one up to the tolerance (a near
  # tie may fall either way on another CPU).
  assert want[np.argmin(got)] <= want.min() + 2 * atol


def _log_softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_hrank_equals_numpy_matrix_rank(tiny_net):
  ctx = tiny_net
  got = filters.hrank_scores(ctx)
  # Independent capture: every `bn*` output inside a block, then ReLU.
  model = models.build_model(ctx.arch)
  _, state = model.apply(
    ctx.variables,
    ctx.inputs,
    capture_intermediates=lambda mdl, _: (mdl.name or '').startswith('bn'),
    mutable=['intermediates'],
  )
  inter = state['intermediates']
  saw_rank_deficient = False
  for unit, k, _ in models.prunable_filters(ctx.arch):
    act = np.maximum(np.asarray(inter[unit][f'bn{k + 1}']['__call__'][0]), 0)
    maps = np.moveaxis(act, -1, 1)  # [n, c, h, w]
    sv = np.linalg.svd(maps, compute_uv=False)
    tol = sv.max(-1, keepdims=True) * max(maps.shape[-2:]) * EPS32
    # Well-posed: no singular value within 10x of NumPy's threshold.
    near = (sv > tol / 10) & (sv < 10 * tol) & (sv > 0)
    assert not near.any(), f'{unit}/{k}: a singular value near the threshold'
    want = np.linalg.matrix_rank(maps).mean(axis=0)
    np.testing.assert_array_equal(got[(unit, k)], want)
    saw_rank_deficient |= bool(want.min() < min(maps.shape[-2:]))
  assert saw_rank_deficient  # ReLU zeros make some maps rank-deficient


def test_l1_and_random_filter_scores(tiny_net):
  ctx = tiny_net
  got = filters.l1_scores(ctx)
  for unit, k, _ in models.prunable_filters(ctx.arch):
    kernel = np.asarray(ctx.variables['params'][unit][f'conv{k + 1}']['kernel'])
    want = np.abs(kernel.astype(np.float64)).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(got[(unit, k)], want, rtol=1e-12)
  a, b = filters.random_scores(ctx), filters.random_scores(ctx)
  assert all(np.array_equal(a[key], b[key]) for key in a)
  with pytest.raises(KeyError, match='valid'):
    filters.get_filter_criterion('nope')


# --- The authors' filter-pruned model is a replay of edits ---------------------


def test_authors_filter_pruned_model_is_a_replay_of_edits(keras_dir):
  """Blocks removed + widths shrunk (this project's edits) rebuild the
  authors' `resnet56_cka_iter19_filters4` exactly, with their FLOPs."""
  from lpjax.interop import keras_h5

  base, base_vars = keras_h5.load_keras_model(
    keras_dir / 'resnet56_baseline.json', keras_dir / 'resnet56_baseline.h5'
  )
  target, target_vars = keras_h5.load_keras_model(
    keras_dir / 'resnet56_cka_iter19_filters4.json',
    keras_dir / 'resnet56_cka_iter19_filters4.h5',
  )
  kept = {b.name: b for b in target.blocks}
  edits = [surgery.remove([b.name for b in base.blocks if b.name not in kept])]
  for name, block in kept.items():
    if block.widths != base.block(name).widths:
      keep = tuple(range(block.widths[0]))
      edits.append(surgery.Edit(shrink=(surgery.Shrink(name, 0, keep),)))
  assert len(edits) > 1  # blocks and filters
  base = dataclasses.replace(base, min_blocks_per_stage=1)
  arch, variables = surgery.replay(base, base_vars, edits)
  chex.assert_trees_all_equal_shapes(variables, target_vars)
  assert [b.widths for b in arch.blocks] == [b.widths for b in target.blocks]
  assert arch.blocks_per_stage == target.blocks_per_stage
  red = flops.reduction(arch, base)
  assert red == flops.reduction(target, base)
  assert red['flops_reduction'] == pytest.approx(84.7227, abs=5e-5)


# --- A full run -------------------------------------------------------------------

# Three stage-1 blocks of width 4 and a 1 % FLOPs target: one step, whichever
# child wins; 3 probe epochs per child.
TINY = """
from configs import base

def get_config():
  c = base.get_config()
  c.dataset = 'synthetic'
  c.synthetic.image_shape = (8, 8, 3)
  c.synthetic.num_classes = 4
  c.synthetic.num_train = 128
  c.synthetic.num_test = 64
  c.holdout = 0.25
  c.model = 'resnet20'
  c.width = 4
  c.blocks_per_stage = (3, 2, 2)
  c.style = 'pytorch'
  c.baseline.epochs = 3
  c.train.batch_size = 16
  c.train.eval_batch_size = 64
  c.train.learning_rate = 0.05
  c.train.log_every_steps = 0
  c.prune.criterion = 'everything'
  c.prune.target_flops_reduction = 1.0
  c.prune.calibration_examples = 32
  c.prune.data_batch_size = 32
  c.prune.finetune_epochs = 1
  c.prune.everything.probe_epochs = 3
  c.prune.everything.filter_chunk = 8
  return c
"""


class _GuardedTestSplit:
  """The dataset, whose test split raises while `armed`."""

  def __init__(self, dataset):
    self._dataset, self.armed, self.test_reads_outside = dataset, False, 0

  def __getattr__(self, name):
    attr = getattr(self._dataset, name)
    if not callable(attr):
      return attr

    def call(*args, **kwargs):
      split = kwargs.get('split', args[0] if args else None)
      if split == 'test':
        if self.armed:
          raise AssertionError(f'the method read the test split ({name})')
        self.test_reads_outside += 1
      return attr(*args, **kwargs)

    return call


@pytest.fixture(scope='module')
def run(tmp_path_factory, monkeypatch_module):
  """One uninterrupted run, its method unable to read the test split."""
  root = tmp_path_factory.mktemp('everything')
  cfg_path = root / 'config.py'
  cfg_path.write_text(TINY)
  workdir = root / 'clean'
  p = classifier.Classifier(_load_config(cfg_path), str(workdir))
  guarded = _GuardedTestSplit(p.dataset)
  p.dataset = guarded
  original = methods.METHODS['everything']
  calls = []

  def method(ctx):
    guarded.armed = True
    try:
      calls.append(ctx.iteration)
      return original.fn(ctx)
    finally:
      guarded.armed = False

  monkeypatch_module.setitem(
    methods.METHODS, 'everything', dataclasses.replace(original, fn=method)
  )
  results = loop.run(p, p.workdir)
  return cfg_path, workdir, results, guarded, calls


@pytest.fixture(scope='module')
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()


def test_a_step_records_both_children(run):
  _, workdir, results, guarded, calls = run
  assert calls == [1]
  (rec,) = results['iterations']
  d = rec['diagnostics']['everything']
  assert d['winner'] in ('layer', 'filter')
  assert 0 <= d['cka_layer'] <= 1 and 0 <= d['cka_filter'] <= 1
  assert (d['winner'] == 'filter') == (d['cka_filter'] > d['cka_layer'])
  assert d['filters_removed'] == 8  # a stage-1 block of width 4: 2 x 4
  winner = d[f'{d["winner"]}_child']
  assert rec['edit'] == winner['edit']
  assert rec['macs'] == winner['macs'] and rec['params'] == winner['params']
  # The probe children are their own stages; the test split was read for
  # reporting only, never while the method ran.
  assert (workdir / 'iter_001_layer').is_dir()
  assert (workdir / 'iter_001_filter').is_dir()
  assert guarded.test_reads_outside > 0
  report = (workdir / 'report.md').read_text()
  assert 'Everything: the two children of every step' in report


def _restore(directory):
  with checkpointing.Checkpoints(directory) as ck:
    arch, _ = ck.restore_meta()
    tree = ck.restore()
  return arch, {'params': tree['params'], 'batch_stats': tree['batch_stats']}


def test_both_children_replay_from_the_records(run):
  """Each child's recorded edit, replayed on the baseline, has the child's
  recorded FLOPs and params; the run's edits replay to the final arch."""
  _, workdir, results, *_ = run
  base_arch, base_vars = _restore(workdir / 'baseline')
  (rec,) = results['iterations']
  d = rec['diagnostics']['everything']
  for child in ('layer_child', 'filter_child'):
    edit = surgery.Edit.from_dict(d[child]['edit'])
    arch, variables = surgery.apply(base_arch, base_vars, edit)
    cost = flops.cost(arch, (8, 8, 3))
    assert (cost.macs, cost.params) == (d[child]['macs'], d[child]['params'])
    assert sum(x.size for x in jax.tree.leaves(variables['params'])) == (
      cost.trainable_params
    )
  arch, _ = classifier.replay_edits(results, base_arch, base_vars, 1)
  assert arch == _restore(workdir / 'iter_001')[0]
  assert rec['widths'] == {b.name: list(b.widths) for b in arch.blocks}


def _steps(directory):
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_sigkill_during_the_second_probe_resumes_it(run, tmp_path):
  """Killed after the filter child's first probe epoch: the restart restores
  the layer child untouched, resumes the filter child, and ends bitwise
  equal to the uninterrupted run."""
  cfg_path, clean_dir, clean_results, *_ = run
  workdir = tmp_path / 'killed'
  cmd = [
    sys.executable,
    'main.py',
    f'--config={cfg_path}',
    f'--workdir={workdir}',
  ]
  proc = subprocess.Popen(
    cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  marker = workdir / 'iter_001_filter' / '1' / 'commit_success.txt'
  try:
    import time

    t0 = time.time()
    while not marker.exists():
      assert proc.poll() is None, 'the run ended before the second probe'
      assert time.time() - t0 < 600, 'timed out'
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  assert _steps(workdir / 'iter_001_filter')[-1] < 3  # killed mid-probe
  # The decision was being made: nothing of the iteration is recorded yet.
  assert not (workdir / 'iter_001').exists()
  assert not json.loads((workdir / 'results.json').read_text())['decisions']
  layer_files = {
    p: p.stat().st_mtime_ns for p in (workdir / 'iter_001_layer').rglob('*')
  }
  assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
  # The first child was restored, not retrained.
  assert {
    p: p.stat().st_mtime_ns for p in (workdir / 'iter_001_layer').rglob('*')
  } == layer_files
  results = json.loads((workdir / 'results.json').read_text())

  def strip(res):
    return [
      {k: v for k, v in r.items() if not k.startswith('seconds')}
      for r in [res['baseline'], *res['iterations']]
    ]

  assert strip(results) == strip(clean_results)
  arch_a, vars_a = _restore(clean_dir / 'iter_001')
  arch_b, vars_b = _restore(workdir / 'iter_001')
  assert arch_a == arch_b
  # The same programs on the same restored states: bitwise.
  jax.tree.map(np.testing.assert_array_equal, vars_a, vars_b)


# --- Configuration errors, before any work -----------------------------------------


@pytest.mark.parametrize(
  'overrides, match',
  [
    ({'holdout': 0.0}, 'holdout'),
    ({'prune.everything.filter_criterion': 'l2'}, 'filter_criterion'),
    ({'prune.everything.layer_criterion': 'everything'}, 'cannot be'),
    ({'prune.everything.representation': 'stem'}, 'representation'),
    ({'prune.everything.probe_epochs': -1}, 'probe_epochs'),
    ({'model': 'vit'}, 'prunable filter widths'),
    ({'prune.everything.arbitration_examples': 33}, 'the 32 holdout'),
    ({'prune.everything.nope': 1}, "Unknown hyperparameters.*'everything'"),
  ],
)
def test_config_problems_fail_first(run, tmp_path, overrides, match):
  c = _load_config(run[0])
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split('.')
    for part in path:
      node = node[part]
    node[leaf] = value
  with pytest.raises(errors.ConfigError, match=match):
    classifier.Classifier(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_method_outside_a_pipeline_says_what_it_needs(tiny_net):
  with pytest.raises(errors.ConfigError, match='fine-tune probe children'):
    methods.get_method('everything')(tiny_net)
