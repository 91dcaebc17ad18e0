"""Every criterion side by side: the authors' ResNet-56, and pruning digits.

`--part=resnet56`: the authors' trained Keras ResNet-56 (the Consensus
paper's baseline, `shared/reference/keras`), no training. Calibration
images: the 256 reference inputs (crops of natural photographs,
preprocessed as for CIFAR-10) expanded to `--n` by random 4-pixel-padded
crops and horizontal flips; labels are the unpruned model's predictions
(the Gaussian metrics need classes; there are no true labels). It times
`cka` and `consensus` side by side on the same context (first calls,
compilation included, then `--repeats` warm calls in the order consensus,
cka), times each metric of consensus on the shared representations and the
other criteria, and writes every metric's and criterion's ranking of the 24
blocks and the Kendall tau between every pair.

  python benchmarks/compare_criteria.py --part=resnet56 --n=5000 \
      --out=/tmp/lpjax_compare_r56

`--part=digits`: as `benchmarks/digits_pruning.py` (ResNet-32 on
scikit-learn's digits, one baseline per seed shared by all criteria, one
block removed per iteration with a short fine-tune, down to the floor), for
every criterion: test accuracy vs FLOPs reduction (mean and 95 % Student-t
interval over seeds), accuracy right after each removal (before
fine-tuning), scoring seconds per step, one accuracy-vs-FLOPs plot with every
criterion, and the paired per-seed differences of the pairs in `PAIRS` that
were run (cka - random, consensus - random, consensus - cka, l1 - random,
l1 - cka, block_influence - random) at each number of removed blocks and
averaged over them, with Student-t intervals Holm-Bonferroni-corrected over
that whole family; "separated" only where the corrected interval excludes
0. Resumable: re-running the same command skips finished runs (each run
has its own workdir, `--out/seed{s}/{criterion}`); run it on fewer
`--seeds` to analyse the seeds finished so far. To train, run one seed per
process (`--seeds=S --noanalyse`, e.g. one process per core under
`taskset`), then the command below to analyse.

  taskset -c 1 python benchmarks/compare_criteria.py --part=digits \
      --seeds=0,1,2,3,4,5,6,7,8,9 --criteria=cka,consensus,random,l1 \
      --finetune_epochs=5 --out=/tmp/lpjax_compare_digits10

Results go to `--out` (`summary.json`, `section.md`, plots) and stdout.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import digits_runs
from scipy import stats

from lpjax import errors, methods, models, report, scoring
from lpjax.interop import keras_h5
from lpjax.methods import consensus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PART = flags.DEFINE_enum('part', 'resnet56', ['resnet56', 'digits'], 'Part.')
_OUT = flags.DEFINE_string('out', '/tmp/lpjax_compare', 'Output dir.')
# resnet56
_KERAS = flags.DEFINE_string(
  'keras_dir',
  os.path.join(os.path.dirname(_ROOT), 'shared', 'reference', 'keras'),
  'Folder with resnet56_baseline.{json,h5} and reference_outputs.npz.',
)
_N = flags.DEFINE_integer('n', 5000, 'Calibration images (resnet56).')
_BATCH = flags.DEFINE_integer('batch', 500, 'Images per forward (resnet56).')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Warm calls (resnet56).')
_TIMING_ONLY = flags.DEFINE_bool(
  'timing_only',
  False,
  'resnet56: only the cka vs consensus calls (to `timing.json`), alternating.',
)
# digits
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (digits).')
_CRITERIA = flags.DEFINE_list(
  'criteria',
  ['cka', 'consensus', 'kl', 'block_influence', 'angular', 'l1', 'random'],
  'Criteria (digits; the resnet56 part always runs all of them).',
)
_MODEL = flags.DEFINE_string('model', 'resnet32', 'CIFAR ResNet (digits).')
_BASELINE_EPOCHS = flags.DEFINE_integer('baseline_epochs', 30, 'Epochs.')
_FINETUNE_EPOCHS = flags.DEFINE_integer('finetune_epochs', 5, 'Epochs.')
_ANALYSE = flags.DEFINE_bool(
  'analyse',
  True,
  'digits: write the tables after the runs; --noanalyse only runs (e.g. one '
  'seed per process: a long process exhausts the memory LLVM maps).',
)

OTHER_CRITERIA = ('kl', 'block_influence', 'angular', 'l1', 'random')


def _table(header, rows):
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def _machine():
  return (
    f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
    f'jax {jax.__version__} on {jax.default_backend()}; load average '
    f'{os.getloadavg()[0]:.2f}'
  )


# ---------------------------------------------------------------------------
# Part (b): the authors' ResNet-56.
# ---------------------------------------------------------------------------


def _augment(images, n, seed=0):
  """`n` random 4-px-padded 32x32 crops with flips of `images` (cycled)."""
  rng = np.random.default_rng(seed)
  src = images[np.arange(n) % len(images)]
  padded = np.pad(src, [(0, 0), (4, 4), (4, 4), (0, 0)])
  dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
  out = np.stack([p[y : y + 32, x : x + 32] for p, y, x in zip(padded, dy, dx)])
  flip = rng.random(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  out[: len(images)] = images[: min(n, len(images))]  # the originals first
  return out.astype(np.float32)


_CPU_SECONDS = []  # process CPU seconds of every `_timed` call, in order


def _timed(fn):
  """`(fn(), wall seconds)`; the call's process CPU seconds (all threads)
  go to `_CPU_SECONDS`: the cost, less sensitive than wall time to other
  processes sharing the machine."""
  t0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  _CPU_SECONDS.append(time.process_time() - c0)
  return out, time.perf_counter() - t0


def _kendall(a, b, units):
  return stats.kendalltau([a[u] for u in units], [b[u] for u in units])[0]


def _logits(model, variables, x):
  return models.representations(model, variables, x, ['logits'])['logits']


def resnet56(out):
  arch, variables = keras_h5.load_keras_model(
    os.path.join(_KERAS.value, 'resnet56_baseline.json'),
    os.path.join(_KERAS.value, 'resnet56_baseline.h5'),
  )
  ref = np.load(os.path.join(_KERAS.value, 'reference_outputs.npz'))['inputs']
  x = _augment(ref, _N.value)
  logits = scoring.map_batches(
    _logits,
    arch,
    variables,
    x,
    data_batch_size=_BATCH.value,
  )
  labels = np.asarray(logits).reshape(len(x), -1).argmax(-1)
  counts = np.bincount(labels, minlength=10)
  print(f'{_machine()}\npredicted classes: {counts.tolist()}', flush=True)
  ctx = methods.Context(
    arch=arch,
    variables=variables,
    inputs=x,
    labels=labels,
    hparams={},
    data_batch_size=_BATCH.value,
  )

  def run(name):  # every method with its default hyperparameters
    return methods.get_method(name)(ctx)

  times = {'cka': [], 'consensus': []}
  cpu = {'cka': [], 'consensus': []}
  decisions = {}
  for name in ('cka', 'consensus'):  # first calls, compilation included
    decisions[name], s = _timed(lambda name=name: run(name))
    times[name].append(s)
    cpu[name].append(_CPU_SECONDS[-1])
    print(
      f'{name} first call: {s:.1f}s ({cpu[name][-1]:.1f} CPU s)', flush=True
    )
  for i in range(_REPEATS.value):  # alternate which goes first
    for name in ('consensus', 'cka')[:: 1 if i % 2 == 0 else -1]:
      _, s = _timed(lambda name=name: run(name))
      times[name].append(s)
      cpu[name].append(_CPU_SECONDS[-1])
      print(
        f'{name} warm call: {s:.1f}s ({cpu[name][-1]:.1f} CPU s)', flush=True
      )
  if _TIMING_ONLY.value:
    result = {'machine': _machine(), 'n': len(x), 'seconds': times, 'cpu': cpu}
    with open(os.path.join(out, 'timing.json'), 'w') as f:
      json.dump(result, f)
    for unit, t in (('wall', times), ('CPU', cpu)):
      if _REPEATS.value:
        med = {k: float(np.median(v[1:])) for k, v in t.items()}
        print(
          f'warm medians ({unit}): cka {med["cka"]:.1f} s, consensus '
          f'{med["consensus"]:.1f} s, ratio {med["consensus"] / med["cka"]:.2f}'
        )
    return

  # Where consensus spends its time: the shared pass, then each metric.
  reps, t_reps = _timed(
    lambda: jax.block_until_ready(
      scoring.candidate_representations(
        arch, variables, x, data_batch_size=_BATCH.value
      )
    )
  )
  r, cands = scoring.flatten(reps[0], reps[1:])
  metric_seconds = {}
  for name, fn in consensus.METRICS.items():
    _, metric_seconds[name] = _timed(
      lambda fn=fn: jax.block_until_ready(fn(r, cands, labels, {}))
    )
  print(
    f'representations {t_reps:.1f}s; metrics '
    + ', '.join(f'{k} {v:.2f}s' for k, v in metric_seconds.items()),
    flush=True,
  )

  other_seconds = {}
  for name in OTHER_CRITERIA:
    decisions[name], other_seconds[name] = _timed(lambda name=name: run(name))
    print(f'{name}: {other_seconds[name]:.1f}s', flush=True)

  units = list(arch.candidates)
  scores = dict(decisions['consensus'].diagnostics['metric_scores'])
  scores['consensus'] = dict(decisions['consensus'].scores)
  for name in OTHER_CRITERIA:
    scores[name] = dict(decisions[name].scores)
  ranks = {k: consensus.ranks(v) for k, v in scores.items()}
  names = list(scores)
  tau = {
    (a, b): _kendall(scores[a], scores[b], units)
    for a, b in itertools.product(names, names)
  }
  summary = {
    'machine': _machine(),
    'n': len(x),
    'predicted_class_counts': counts.tolist(),
    'seconds': times,
    'seconds_representations': t_reps,
    'seconds_per_metric': metric_seconds,
    'seconds_other_criteria': other_seconds,
    'scores': scores,
    'ranks': ranks,
    'removed': {k: list(d.edit.remove) for k, d in decisions.items()},
    'kendall_tau': {f'{a}|{b}': t for (a, b), t in tau.items()},
  }
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)

  short = {
    'cka': 'cka',
    'gaussian_stochastic_0': 'gs0',
    'gaussian_stochastic_1': 'gs1',
    'gaussian_stochastic_2': 'gs2',
    'permutation': 'perm',
    'linear_0': 'lin0',
    'linear_1': 'lin1',
    'wasserstein': 'w1',
    'consensus': 'cons',
    'kl': 'kl',
    'block_influence': 'bi',
    'angular': 'ang',
    'l1': 'l1',
    'random': 'rand',
  }
  rank_rows = [[f'`{u}`', *(f'{ranks[k][u]:g}' for k in names)] for u in units]
  tau_rows = [[short[a], *(f'{tau[a, b]:+.2f}' for b in names)] for a in names]
  ratio_first = times['consensus'][0] / times['cka'][0]
  warm = ''
  if _REPEATS.value:
    ratio_warm = np.median(times['consensus'][1:]) / np.median(times['cka'][1:])
    warm = (
      f'; warm (median of {_REPEATS.value}): cka '
      f'{np.median(times["cka"][1:]):.1f} s, consensus '
      f'{np.median(times["consensus"][1:]):.1f} s, ratio {ratio_warm:.2f}x'
    )
  text = '\n\n'.join(
    [
      f'n = {len(x)} images; {_machine()} at the end.',
      f'Scoring time, first calls: cka {times["cka"][0]:.1f} s, consensus '
      f'{times["consensus"][0]:.1f} s, ratio {ratio_first:.2f}x{warm}. '
      f'The shared representation pass alone: {t_reps:.1f} s; the metrics '
      'on it (warm): '
      + ', '.join(f'{k} {v:.2f} s' for k, v in metric_seconds.items())
      + '. Other criteria (first call): '
      + ', '.join(f'{k} {v:.1f} s' for k, v in other_seconds.items())
      + '.',
      'Removed first: '
      + ', '.join(
        f'{k} `{d.edit.remove[0]}`' for k, d in sorted(decisions.items())
      )
      + '.',
      'Rank of each block (1 = most removable):\n\n'
      + _table(['block', *(short[k] for k in names)], rank_rows),
      'Kendall tau between rankings:\n\n'
      + _table(['', *(short[k] for k in names)], tau_rows),
    ]
  )
  with open(os.path.join(out, 'section.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


# ---------------------------------------------------------------------------
# Part (a): pruning digits with every criterion.
# ---------------------------------------------------------------------------

# The paired comparisons reported, `a - b` in percentage points; a pair is
# kept when both of its criteria were run.
PAIRS = (
  ('cka', 'random'),
  ('consensus', 'random'),
  ('consensus', 'cka'),
  ('l1', 'random'),
  ('l1', 'cka'),
  ('block_influence', 'random'),
)
ALPHA = 0.05  # familywise error rate of the paired comparisons
MIN_SEEDS = 10  # fewer: the section says it is incomplete


def _config(seed, criterion):
  return digits_runs.pruning_config(
    seed,
    criterion,
    _MODEL.value,
    _BASELINE_EPOCHS.value,
    _FINETUNE_EPOCHS.value,
  )


def _half_width(sd, n, level=0.95):
  """Half-width of the two-sided Student-t interval of a mean at `level`."""
  return float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n))


def _ci95(values):
  """Mean and half-width of the 95 % Student-t interval of the mean."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), float('nan')
  return float(v.mean()), _half_width(v.std(ddof=1), len(v))


def _mean_ci(values):
  """`mean ± 95 % half-width`, in % of accuracy."""
  mean, half = _ci95(100.0 * np.asarray(values, np.float64))
  return f'{mean:.2f} ± {half:.2f}'


def paired_test(diffs):
  """`(mean, sd, p)` of per-seed differences: p is the two-sided p-value of
  the one-sample Student-t test of mean 0 (paired t test). Differences that
  are all equal have sd 0: p is 1 when they are all 0, else 0."""
  d = np.asarray(diffs, np.float64)
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  if sd == 0.0:
    return mean, 0.0, 1.0 if mean == 0.0 else 0.0
  t = mean / (sd / np.sqrt(len(d)))
  return mean, sd, float(2.0 * stats.t.sf(abs(t), len(d) - 1))


def _where(ks):
  """`[1, 2, 3, 5, 'mean']` -> 'after 1–3, 5 removed blocks and on the mean
  over all removals'."""
  nums = [k for k in ks if isinstance(k, int)]
  parts, i = [], 0
  while i < len(nums):
    j = i
    while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
      j += 1
    parts.append(
      str(nums[i])
      if i == j
      else f'{nums[i]}{"–" if j > i + 1 else ", "}{nums[j]}'
    )
    i = j + 1
  text = ''
  if nums:
    text = f'after {", ".join(parts)} removed block'
    text += '' if nums == [1] else 's'
  if 'mean' in ks:
    text += (' and ' if text else '') + 'on the mean over all removals'
  return text


def _digits_machine():
  cpus = sorted(os.sched_getaffinity(0))
  return (
    f'{common.cpu_model()} ({os.cpu_count()} CPUs, this process pinned to '
    f'{len(cpus)}: {cpus}), jax {jax.__version__} on '
    f'{jax.default_backend()}, float32; '
    f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; load average '
    f'{os.getloadavg()[0]:.2f}'
  )


def compare_pairs(acc, criteria, num, n_seeds, alpha=ALPHA):
  """Paired differences of every pair in `PAIRS` present in `criteria`, at
  each number of removed blocks 1..num and averaged over them ('mean'),
  Holm-corrected over that whole family. `acc(crit, i)` gives the per-seed
  accuracies after i removals. Returns `(pairs, rows)`; each row is a dict
  (pair, removed, per-seed differences in pp, mean, p, adjusted p,
  separated, the corrected interval, the uncorrected 95 % interval)."""
  pairs = [(a, b) for a, b in PAIRS if a in criteria and b in criteria]
  rows = []
  for a, b in pairs:
    per_removed = [
      100.0 * (np.asarray(acc(a, i)) - np.asarray(acc(b, i)))
      for i in range(1, num + 1)
    ]
    for k, d in [*enumerate(per_removed, 1), ('mean', np.mean(per_removed, 0))]:
      mean, sd, p = paired_test(d)
      rows.append(
        {
          'pair': f'{a} − {b}',
          'removed': k,
          'diffs_pp': [float(x) for x in d],
          'mean': mean,
          'sd': sd,
          'p': p,
          'half95': _half_width(sd, n_seeds),
        }
      )
  adjusted, levels = common.holm([r['p'] for r in rows], alpha)
  rejected = adjusted <= alpha
  for r, q, rej, lev in zip(rows, adjusted, rejected, levels):
    half = _half_width(r['sd'], n_seeds, 1.0 - lev)
    r.update(
      p_holm=float(q),
      separated=bool(rej),
      level=float(lev),
      interval=(r['mean'] - half, r['mean'] + half),
    )
  return pairs, rows


def _pair_cell(r):
  lo, hi = r['interval']
  verdict = '**separated**' if r['separated'] else 'noise'
  return f'{r["mean"]:+.2f} [{lo:+.2f}, {hi:+.2f}] {verdict}'


def _pair_prose(pairs, rows):
  """One line per pair naming where its corrected interval excludes 0."""

  def stat(r):
    lo, hi = r['interval']
    return f'{r["mean"]:+.2f} pp [{lo:+.2f}, {hi:+.2f}]'

  lines = []
  for a, b in pairs:
    mine = [r for r in rows if r['pair'] == f'{a} − {b}']
    sep = [r for r in mine if r['separated']]
    noise = [r['removed'] for r in mine if not r['separated']]
    if not sep:
      lines.append(
        f'* **{a} − {b}: noise everywhere.** No corrected interval '
        'excludes 0, after any number of removed blocks nor on the mean '
        f'over all removals ({stat(mine[-1])}).'
      )
      continue
    parts = []
    for name, sign in ((a, 1), (b, -1)):
      where = [r for r in sep if sign * r['mean'] > 0]
      if where:
        parts.append(
          f'{name} higher {_where([r["removed"] for r in where])} ('
          + '; '.join(f'{r["removed"]}: {stat(r)}' for r in where)
          + ')'
        )
    tail = f'; noise {_where(noise)}' if noise else ''
    lines.append(
      f'* **{a} − {b}: separated**: ' + '; '.join(parts) + tail + '.'
    )
  return '\n'.join(lines)


def digits(out):
  logging.set_verbosity(logging.WARNING)
  criteria = _CRITERIA.value
  seeds = [int(s) for s in _SEEDS.value]
  if _ANALYSE.value and len(seeds) < 2:
    raise errors.UserError(
      f'--seeds={",".join(_SEEDS.value)}: paired intervals need at least two '
      'seeds; pass two or more.'
    )
  t0 = time.time()
  runs = digits_runs.run_criteria(out, seeds, criteria, _config)
  if not _ANALYSE.value:
    return
  report.plot_accuracy_vs_flops(
    runs,
    os.path.join(out, 'accuracy_vs_flops.png'),
    title=f'{_MODEL.value} on digits, {len(seeds)} seeds',
  )
  iters = [r['iterations'] for r in runs[criteria[0]]]
  num = len(iters[0])
  flops = [0.0] + [it['flops_reduction'] for it in iters[0]]

  def acc(crit, i, key='test_accuracy'):
    """Per-seed values at iteration i (0 = baseline)."""
    if i == 0:
      return [r['baseline']['test_accuracy'] for r in runs[crit]]
    return [r['iterations'][i - 1][key] for r in runs[crit]]

  after = _table(
    ['removed', 'FLOPs ↓ %', *criteria],
    [
      [i, f'{flops[i]:.2f}', *(_mean_ci(acc(k, i)) for k in criteria)]
      for i in range(num + 1)
    ],
  )
  before = _table(
    ['removed', *criteria],
    [
      [i, *(_mean_ci(acc(k, i, 'accuracy_before_finetune')) for k in criteria)]
      for i in range(1, num + 1)
    ],
  )
  mean_before = {
    k: np.mean(
      [acc(k, i, 'accuracy_before_finetune') for i in range(1, num + 1)]
    )
    for k in criteria
  }
  mean_after = {
    k: np.mean([acc(k, i) for i in range(1, num + 1)]) for k in criteria
  }
  seconds = {
    k: [it['seconds_scoring'] for r in runs[k] for it in r['iterations']]
    for k in criteria
  }
  finetune = {
    k: [
      it.get('seconds_finetune', 0.0) for r in runs[k] for it in r['iterations']
    ]
    for k in criteria
  }
  overview = _table(
    [
      'criterion',
      'mean acc. after fine-tune %',
      'mean acc. before fine-tune %',
      'final acc. %',
      'scoring s/step (mean, max)',
    ],
    [
      [
        k,
        f'{100 * mean_after[k]:.2f}',
        f'{100 * mean_before[k]:.2f}',
        _mean_ci(acc(k, num)),
        f'{np.mean(seconds[k]):.2f}, {np.max(seconds[k]):.2f}',
      ]
      for k in criteria
    ],
  )
  pairs, rows = compare_pairs(acc, criteria, num, len(seeds))
  m = len(rows)
  cell = {(r['pair'], r['removed']): r for r in rows}
  paired = _table(
    ['removed', 'FLOPs ↓ %', *(f'{a} − {b}' for a, b in pairs)],
    [
      [
        k,
        f'{flops[k]:.2f}' if isinstance(k, int) else '',
        *(_pair_cell(cell[f'{a} − {b}', k]) for a, b in pairs),
      ]
      for k in [*range(1, num + 1), 'mean']
    ],
  )
  summary = {
    'machine': _digits_machine(),
    'argv': sys.argv,
    'seeds': seeds,
    'criteria': criteria,
    'flops_reduction': flops,
    'accuracy': {k: [acc(k, i) for i in range(num + 1)] for k in criteria},
    'accuracy_before_finetune': {
      k: [acc(k, i, 'accuracy_before_finetune') for i in range(1, num + 1)]
      for k in criteria
    },
    'seconds_scoring': seconds,
    'seconds_finetune': finetune,
    'seconds_baseline': [
      r['baseline'].get('seconds') for r in runs[criteria[0]]
    ],
    'seconds_this_invocation': time.time() - t0,
    'paired': {'alpha': ALPHA, 'family_size': m, 'rows': rows},
  }
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  n = len(seeds)
  text = '\n\n'.join(
    [
      f'{n} seeds ({", ".join(map(str, seeds))}); {_digits_machine()}; '
      f'{time.time() - t0:.0f} s in this invocation.',
      'Test accuracy after fine-tuning, % (mean ± half-width of the 95 % '
      f'Student-t interval over the {n} seeds, t({n - 1}) = '
      f'{stats.t.ppf(0.975, n - 1):.2f}; per cell, uncorrected):\n\n' + after,
      'Right after each removal, before fine-tuning, % (same intervals):'
      '\n\n' + before,
      'Per criterion:\n\n' + overview,
      f'Paired differences, a − b in pp (same baseline per seed; mean over '
      f'the {n} seeds of the per-seed difference). Family: {len(pairs)} '
      f'pairs × ({num} numbers of removed blocks + the mean over them) = '
      f'{m} comparisons, Holm–Bonferroni at familywise {100 * ALPHA:g} %: '
      'each cell is the mean and its Holm-corrected Student-t interval (the '
      "interval at the Holm step's level, which excludes 0 exactly when "
      'Holm rejects), "separated" where it excludes 0, "noise" elsewhere:'
      '\n\n' + paired,
      'What the corrected intervals separate'
      + (
        ''
        if n >= MIN_SEEDS
        else f' (INCOMPLETE: {n} seeds, fewer than the {MIN_SEEDS} this '
        'study needs; no claim rests on these lines)'
      )
      + ':\n\n'
      + _pair_prose(pairs, rows),
    ]
  )
  with open(os.path.join(out, 'section.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


def main(argv):
  del argv
  out = os.path.abspath(_OUT.value)
  os.makedirs(out, exist_ok=True)
  if _PART.value == 'resnet56':
    resnet56(out)
  else:
    digits(out)


if __name__ == '__main__':
  app.run(main)
