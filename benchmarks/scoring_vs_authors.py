"""Scoring every removable block of ResNet-56: lpjax's one call vs the authors'.

The CKA criterion scores each of the authors' ResNet-56's 24 removable
blocks by 1 - CKA between the pooled features of the full model and of the
model without that block, on the same 1,000 inputs (random 32x32x3 images:
the cost does not depend on the values). Two sides, each in its own
process, taking turns `--rounds` times so that load changes hit both:

* `authors` (TensorFlow 2.21 + tf_keras 2.21, the papers' framework): as
  the authors' scripts do, one model per candidate (the Keras JSON and
  weights of the model without that block, written beforehand by
  `lpjax.export.keras`), built with `model_from_json` + `load_weights`,
  `predict(x, batch_size=256)` up to the pooled features, then linear CKA
  in NumPy; plus one predict of the full model. The time covers building
  and predicting all 25 models.
* `lpjax`: `lpjax.scoring.score_candidates` (the shared-prefix pass, CKA
  fused in, one XLA call), first call (with compile) and warm calls; and
  the jitted full forward on the same inputs, warm, to state the pass's
  cost in forwards (the bound for ResNet-56 is 327 / 27 = 12.1 forwards of
  block work). lpjax runs as `import lpjax` sets it up (one CPU device
  per core unless `JAX_NUM_CPU_DEVICES` says otherwise).

Each process reports wall seconds and CPU seconds per wall second. Both
sides' scores are compared (max |difference|).

  python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install \\
    tensorflow-cpu==2.21.0 tf-keras==2.21.0 h5py
  python benchmarks/scoring_vs_authors.py --tf_python=/tmp/tfvenv/bin/python

About 10 minutes on 2 CPU cores with 3 rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

REFERENCE = (
  Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'keras'
)
N, IMAGE = 1000, (32, 32, 3)


def _clock():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return time.perf_counter(), r.ru_utime + r.ru_stime


def _since(start):
  wall, cpu = _clock()
  return wall - start[0], (cpu - start[1]) / max(wall - start[0], 1e-9)


def _linear_cka(x, y):
  """Biased linear CKA of two float64 feature matrices (feature space)."""
  import numpy as np

  x = x - x.mean(0)
  y = y - y.mean(0)
  xy = np.linalg.norm(x.T @ y) ** 2
  return xy / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def prepare(folder: Path, n: int = N) -> None:
  """Writes the inputs and the 25 Keras models (full, each removal)."""
  import numpy as np

  from lpjax.export import keras as keras_export
  from lpjax.interop import keras_h5

  arch, variables = keras_h5.load_keras_model(
    REFERENCE / 'resnet56_baseline.json', REFERENCE / 'resnet56_baseline.h5'
  )
  np.save(
    folder / 'x.npy',
    np.random.default_rng(0).normal(size=(n, *IMAGE)).astype(np.float32),
  )
  from lpjax import surgery

  names = list(arch.candidates)
  keras_export.write(arch, variables, folder / 'full.json', folder / 'full.h5')
  for i, name in enumerate(names):
    a, v = surgery.remove_blocks(arch, variables, [name])
    keras_export.write(a, v, folder / f'c{i:02d}.json', folder / f'c{i:02d}.h5')
  (folder / 'names.json').write_text(json.dumps(names))


def side_authors(folder: Path) -> dict:
  import numpy as np
  import tf_keras as keras

  x = np.load(folder / 'x.npy')
  names = json.loads((folder / 'names.json').read_text())

  def pooled(stem):
    model = keras.models.model_from_json((folder / f'{stem}.json').read_text())
    model.load_weights(str(folder / f'{stem}.h5'))
    feats = keras.Model(model.input, model.layers[-2].output)
    return np.asarray(feats.predict(x, batch_size=256, verbose=0), np.float64)

  pooled('full')  # TensorFlow's own start-up, not the loop's cost
  start = _clock()
  ref = pooled('full')
  scores = [
    1.0 - _linear_cka(ref, pooled(f'c{i:02d}')) for i in range(len(names))
  ]
  wall, util = _since(start)
  return {'loop_s': wall, 'loop_cpu': util, 'scores': scores}


def side_lpjax(folder: Path, warm: int) -> dict:
  import jax
  import numpy as np

  from lpjax import models, scoring
  from lpjax.interop import keras_h5

  arch, variables = keras_h5.load_keras_model(
    REFERENCE / 'resnet56_baseline.json', REFERENCE / 'resnet56_baseline.h5'
  )
  x = np.load(folder / 'x.npy')
  out = {'devices': jax.device_count(), 'n': len(x)}
  start = _clock()
  first = scoring.score_candidates(arch, variables, x, data_batch_size=500)
  out['first_s'], out['first_cpu'] = _since(start)
  runs = []
  for _ in range(warm):
    start = _clock()
    scoring.score_candidates(arch, variables, x, data_batch_size=500)
    runs.append(_since(start))
  out['warm_s'] = statistics.median(r[0] for r in runs)
  out['warm_cpu'] = statistics.median(r[1] for r in runs)
  # The full forward on the same inputs and batches, placed as scoring
  # places them (the same mesh), warm.
  model = models.build_model(arch)
  mesh = scoring._mesh(x, 500, None)
  v, xs = scoring.batch_inputs(arch, variables, x, 500, mesh)
  fwd = jax.jit(lambda v, xs: jax.lax.map(lambda b: model.apply(v, b), xs))
  fwd(v, xs).block_until_ready()
  times = []
  for _ in range(max(3, warm)):
    start = _clock()
    fwd(v, xs).block_until_ready()
    times.append(_since(start))
  out['forward_s'] = statistics.median(t[0] for t in times)
  out['forward_cpu'] = statistics.median(t[1] for t in times)
  out['scores'] = list(first.values())
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--tf_python', default=sys.executable)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument(
    '--n', type=int, default=N, help='inputs (1,000 in BENCHMARKS)'
  )
  p.add_argument('--warm', type=int, default=2)
  p.add_argument('--out', default=None)
  p.add_argument('--side', choices=('authors', 'lpjax'), help=argparse.SUPPRESS)
  p.add_argument('--folder', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.side:
    folder = Path(args.folder)
    res = (
      side_authors(folder)
      if args.side == 'authors'
      else side_lpjax(folder, args.warm)
    )
    print(json.dumps(res))
    return
  folder = Path(tempfile.mkdtemp(prefix='lpjax_scoring_vs_authors_'))
  prepare(folder, args.n)
  load0 = os.getloadavg()[0]
  rows = []
  for r in range(args.rounds):
    order = ('authors', 'lpjax') if r % 2 == 0 else ('lpjax', 'authors')
    got = {}
    for side in order:
      python = args.tf_python if side == 'authors' else sys.executable
      res = subprocess.run(
        [python, __file__, f'--side={side}', f'--folder={folder}',
         f'--warm={args.warm}'],
        capture_output=True, text=True, check=True,
      )  # fmt: skip
      got[side] = json.loads(res.stdout.strip().splitlines()[-1])
      print(f'round {r} {side}: {got[side] | {"scores": "..."}}', flush=True)
    rows.append(got)
  diff = max(
    abs(a - b)
    for row in rows
    for a, b in zip(row['authors']['scores'], row['lpjax']['scores'])
  )

  def q(values):
    values = sorted(values)
    return (
      f'{statistics.median(values):.2f} [{values[0]:.2f}, {values[-1]:.2f}]'
    )

  first = [r['authors']['loop_s'] / r['lpjax']['first_s'] for r in rows]
  warm = [r['authors']['loop_s'] / r['lpjax']['warm_s'] for r in rows]
  fw = [r['lpjax']['warm_s'] / r['lpjax']['forward_s'] for r in rows]
  lines = [
    f'{common.cpu_model()}, {os.cpu_count()} CPUs; lpjax devices: '
    f'{rows[0]["lpjax"]["devices"]}; {args.n} inputs; {args.rounds} rounds, sides '
    f'alternating; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; '
    f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.',
    '',
    '| round | authors loop s (CPU/s) | lpjax first call s (CPU/s) | lpjax '
    'warm s (CPU/s) | lpjax forward s (CPU/s) |',
    '|---|---|---|---|---|',
  ]
  for i, r in enumerate(rows):
    a, b = r['authors'], r['lpjax']
    lines.append(
      f'| {i} | {a["loop_s"]:.1f} ({a["loop_cpu"]:.2f}) | '
      f'{b["first_s"]:.1f} ({b["first_cpu"]:.2f}) | {b["warm_s"]:.1f} '
      f'({b["warm_cpu"]:.2f}) | {b["forward_s"]:.2f} ({b["forward_cpu"]:.2f}) |'
    )
  lines += [
    '',
    'Paired per round, median [min, max]:',
    '',
    f'* authors loop / lpjax first call (compile included): {q(first)}',
    f'* authors loop / lpjax warm call: {q(warm)}',
    f'* lpjax warm call in full forwards: {q(fw)} (block-work bound 12.1)',
    f'* max |score difference| between the sides: {diff:.2e}',
  ]
  text = '\n'.join(lines)
  print(text)
  if args.out:
    Path(args.out).write_text(text + '\n')


if __name__ == '__main__':
  main()
