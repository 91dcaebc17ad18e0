"""The sensor transformer pruned with CKA, over seeds: accuracy vs FLOPs.

Runs `main.py --config=configs/har_basicmotions.py[:japanesevowels]` once
per dataset and seed (each its own process and workdir, so a killed
benchmark resumes every run where it stopped), then prints, per dataset, the
test accuracy after each removal: mean, 95 % t-interval half-width over the
seeds, and the layers removed.

  python benchmarks/har_transformer.py --out=/tmp/lpjax_har --seeds=0,1,2

About 6 min per BasicMotions seed and 4 per JapaneseVowels seed on 2 CPU
cores (checkpoints every 10 epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
DATASETS = {'basicmotions': '', 'japanesevowels': ':japanesevowels'}


def _run(out: Path, dataset: str, seed: int) -> dict:
  workdir = out / f'{dataset}_s{seed}'
  cmd = [
    sys.executable,
    'main.py',
    f'--config=configs/har_basicmotions.py{DATASETS[dataset]}',
    f'--workdir={workdir}',
    f'--config.seed={seed}',
    '--config.checkpoint_every_epochs=10',
  ]
  t0 = time.perf_counter()
  with open(f'{workdir}.log', 'w') as log:
    subprocess.run(cmd, cwd=REPO, stdout=log, stderr=log, check=True)
  print(f'{dataset} seed {seed}: {time.perf_counter() - t0:.0f} s', flush=True)
  return json.loads((workdir / 'results.json').read_text())


def _interval(values):
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), float('nan')
  half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
  return float(v.mean()), float(half)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True)
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--datasets', default=','.join(DATASETS))
  args = p.parse_args()
  out = Path(args.out)
  os.makedirs(out, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(',')]
  for dataset in args.datasets.split(','):
    runs = [_run(out, dataset, s) for s in seeds]
    print(f'\n### {dataset}, seeds {args.seeds}\n')
    print(
      '| layers removed | FLOPs ↓ % | test accuracy % (mean ± 95 % CI) '
      '| Δ vs unpruned (pp) | removed (per seed) |'
    )
    print('|---:|---:|---:|---:|:---|')
    base = [100 * r['baseline']['test_accuracy'] for r in runs]
    m, h = _interval(base)
    print(f'| 0 | 0.00 | {m:.2f} ± {h:.2f} | — | — |')
    for k in range(len(runs[0]['iterations'])):
      its = [r['iterations'][k] for r in runs]
      acc = [100 * it['test_accuracy'] for it in its]
      delta = [a - b for a, b in zip(acc, base)]
      m, h = _interval(acc)
      dm, dh = _interval(delta)
      removed = ' / '.join(','.join(it['removed']) for it in its)
      print(
        f'| {k + 1} | {its[0]["flops_reduction"]:.2f} | {m:.2f} ± {h:.2f} '
        f'| {dm:+.2f} ± {dh:.2f} | {removed} |'
      )


if __name__ == '__main__':
  main()
