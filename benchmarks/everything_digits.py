r"""Everything (layer or filter child, arbitrated by CKA) against layer-only
`cka` on scikit-learn's digits, ResNet-32: accuracy vs FLOPs reduction.

Per seed: one baseline (10 % of the training data held out: the holdout the
Everything arbitration reads), then `cka` to the layer floor (two blocks per
stage: 61.69 % fewer FLOPs on 8x8 inputs) and `everything` until layer
pruning is exhausted, both from that baseline's checkpoint. Resumable: a
re-run skips finished runs.

  python benchmarks/everything_digits.py --seeds=0,1,2 \
      --out=/tmp/lpjax_everything_digits

Writes `section.md` (the tables for BENCHMARKS.md) and
`accuracy_vs_flops.png` into `--out`.
"""

import os
import sys
import time

import numpy as np
from absl import app, flags
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import digits_runs

from lpjax import checkpointing, flops, report, surgery

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds.')
_OUT = flags.DEFINE_string('out', '/tmp/lpjax_everything_digits', 'Output.')
_MODEL = flags.DEFINE_string('model', 'resnet32', 'Model.')
_BASELINE_EPOCHS = flags.DEFINE_integer('baseline_epochs', 30, 'Epochs.')
_FINETUNE_EPOCHS = flags.DEFINE_integer(
  'finetune_epochs', 5, 'Fine-tune epochs after each step.'
)
_PROBE_EPOCHS = flags.DEFINE_integer(
  'probe_epochs', 2, "Each Everything child's probe fine-tune."
)
_CALIBRATION = flags.DEFINE_integer(
  'calibration_examples', 200, 'Training images the criteria score on.'
)

CRITERIA = ('cka', 'everything')


def _config(seed, criterion):
  c = digits_runs.pruning_config(
    seed,
    criterion,
    _MODEL.value,
    _BASELINE_EPOCHS.value,
    _FINETUNE_EPOCHS.value,
  )
  c.holdout = 0.1  # the same baseline for both: trained on 90 % of train
  c.prune.calibration_examples = _CALIBRATION.value
  c.prune.data_batch_size = _CALIBRATION.value
  c.prune.everything.probe_epochs = _PROBE_EPOCHS.value
  return c


def _path(res):
  rows = [res['baseline'], *res['iterations']]
  x = np.array([r['flops_reduction'] for r in rows])
  y = np.array([100.0 * r['test_accuracy'] for r in rows])
  return x, y


def _at(res, flops_reduction):
  """Accuracy (%) interpolated at `flops_reduction` along the run's path."""
  x, y = _path(res)
  if flops_reduction > x[-1] + 1e-9:
    return float('nan')
  return float(np.interp(flops_reduction, x, y))


def _ci(values):
  v = np.asarray(values, np.float64)
  half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
  return f'{v.mean():+.2f} ± {half:.2f}' if len(v) > 1 else f'{v[0]:+.2f}'


def _check_replay(workdir, res):
  """The recorded edits, replayed on the baseline's arch, give the final
  checkpoint's mixed block + filter arch and its recorded FLOPs."""
  with checkpointing.Checkpoints(os.path.join(workdir, 'baseline')) as ck:
    arch, _ = ck.restore_meta()
  last = len(res['iterations'])
  path = os.path.join(workdir, f'iter_{last:03d}')
  with checkpointing.Checkpoints(path) as ck:
    final_arch, _ = ck.restore_meta()
  for rec in res['iterations']:
    edit = surgery.Edit.from_dict(rec['edit'])
    if edit.remove:
      arch = arch.without(edit.remove)
    for s in edit.shrink:
      widths = list(arch.block(s.unit).widths)
      widths[s.width] = len(s.keep)
      arch = arch.with_widths(s.unit, widths)
  assert arch == final_arch, f'{workdir}: the edits replay to another arch'
  assert flops.cost(arch, (8, 8, 1)).macs == res['iterations'][-1]['macs']


def main(argv):
  del argv
  out = _OUT.value
  seeds = [int(s) for s in _SEEDS.value]
  t0 = time.time()
  runs = digits_runs.run_criteria(out, seeds, CRITERIA, _config)
  floor = max(r['iterations'][-1]['flops_reduction'] for r in runs['cka'])
  lines = [
    f'{_MODEL.value} on digits, {len(seeds)} seeds; baseline '
    f'{_BASELINE_EPOCHS.value} epochs, {_FINETUNE_EPOCHS.value} fine-tune '
    f'epochs per step, Everything probes {_PROBE_EPOCHS.value} epochs per '
    f'child, {_CALIBRATION.value} calibration images; '
    f'{time.time() - t0:.0f} s for what this invocation ran.',
    '',
    '| seed | baseline % | cka at its floor (FLOPs ↓ %) | everything at '
    'the same FLOPs ↓ | everything final: FLOPs ↓ % / accuracy % | steps '
    '(filter child won) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  diffs, finals = [], []
  for i, seed in enumerate(seeds):
    cka, ev = runs['cka'][i], runs['everything'][i]
    _check_replay(os.path.join(out, f'seed{seed}', 'everything'), ev)
    cx, cy = _path(cka)
    ex, ey = _path(ev)
    at = _at(ev, cx[-1])
    diffs.append(at - cy[-1])
    finals.append((ex[-1], ey[-1]))
    wins = sum(
      it['diagnostics']['everything']['winner'] == 'filter'
      for it in ev['iterations']
    )
    lines.append(
      f'| {seed} | {cy[0]:.2f} | {cy[-1]:.2f} ({cx[-1]:.2f}) | {at:.2f} | '
      f'{ex[-1]:.2f} / {ey[-1]:.2f} | {len(ev["iterations"])} ({wins}) |'
    )
  fx = [f[0] for f in finals]
  fy = [f[1] for f in finals]
  lines += [
    '',
    f'everything − cka at the layer floor ({floor:.2f} % FLOPs ↓): '
    f'{_ci(diffs)} pp (mean ± 95 % t-interval half-width over seeds). '
    f'Everything final: FLOPs ↓ {np.mean(fx):.2f} % (range '
    f'{min(fx):.2f}–{max(fx):.2f}), accuracy {np.mean(fy):.2f} %.',
  ]
  report.plot_accuracy_vs_flops(
    {
      f'{k} seed {s}': runs[k][i] for k in CRITERIA for i, s in enumerate(seeds)
    },
    os.path.join(out, 'accuracy_vs_flops.png'),
    title=f'{_MODEL.value} on digits: everything vs cka',
  )
  text = '\n'.join(lines)
  with open(os.path.join(out, 'section.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  app.run(main)
