"""Accuracy vs FLOPs reduction on digits: `cka` against `random` and `l1`.

For every seed, trains one ResNet-32 baseline on scikit-learn's digits, then
prunes it with each criterion down to the floor (9 removals, 61.44 % FLOPs),
fine-tuning after every removal; all criteria of a seed start from the same
baseline checkpoint. Writes per-run workdirs, `summary.json`, a plot and a
markdown section.

  python benchmarks/digits_pruning.py --out=/tmp/lpjax_digits_bench \
      --seeds=0,1,2 --criteria=cka,random,l1

Runtime: about 30 minutes on 2 CPU cores for 3 seeds x 3 criteria.
"""

import json
import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import digits_runs

from lpjax import report

_OUT = flags.DEFINE_string('out', '/tmp/lpjax_digits_bench', 'Output dir.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds.')
_CRITERIA = flags.DEFINE_list('criteria', ['cka', 'random', 'l1'], 'Criteria.')
_MODEL = flags.DEFINE_string('model', 'resnet32', 'CIFAR ResNet depth.')
_BASELINE_EPOCHS = flags.DEFINE_integer('baseline_epochs', 30, 'Epochs.')
_FINETUNE_EPOCHS = flags.DEFINE_integer('finetune_epochs', 8, 'Epochs.')


def _config(seed, criterion):
  return digits_runs.pruning_config(
    seed,
    criterion,
    _MODEL.value,
    _BASELINE_EPOCHS.value,
    _FINETUNE_EPOCHS.value,
  )


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  out = os.path.abspath(_OUT.value)
  t0 = time.time()
  runs = digits_runs.run_criteria(
    out, list(map(int, _SEEDS.value)), _CRITERIA.value, _config
  )
  summary = {k: report.aggregate(v) for k, v in runs.items()}
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  report.plot_accuracy_vs_flops(
    runs, os.path.join(out, 'accuracy_vs_flops.png')
  )
  lines = [
    '| blocks removed | FLOPs ↓ % | '
    + ' | '.join(f'{k} acc % (mean ± std)' for k in runs)
    + ' |',
    '|---|---|' + '---|' * len(runs),
  ]
  first = summary[_CRITERIA.value[0]]
  for i, it in enumerate(first['iteration']):
    cells = [
      f'{100 * s["accuracy_mean"][i]:.2f} ± {100 * s["accuracy_std"][i]:.2f}'
      for s in summary.values()
    ]
    lines.append(
      f'| {it} | {first["flops_reduction_mean"][i]:.2f} | '
      + ' | '.join(cells)
      + ' |'
    )
  table = '\n'.join(lines)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(table + '\n')
  print(table)
  print(f'total {time.time() - t0:.0f}s; n = {len(_SEEDS.value)} seeds')


if __name__ == '__main__':
  app.run(main)
