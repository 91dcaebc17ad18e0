"""ResNet-56 on the default device: latency pruned vs unpruned, train steps.

Side by side in one process, on random CIFAR-shaped inputs (the cost does
not depend on the values) and fresh weights:

* paired latency of the jitted eval-mode forward of the unpruned ResNet-56
  ([9, 9, 9] blocks) and of the pruned [2, 2, 2] one (the CKA paper's
  21-block removal, 78.80 % fewer FLOPs), at each batch of `--batches`:
  both are compiled and warmed up, then called alternately, one call each
  per pair (the order swapping pair by pair), each call followed by
  `jax.block_until_ready`. The table gives the median and IQR of each
  model's times and the median [quartiles] of the per-pair speed-up
  (unpruned / pruned time) and of the speed-up / FLOPs ratio. A pair's two
  calls are milliseconds apart, so a change of load on the shared machine
  hits both; the per-pair ratio is steadier than either time;
* `--blocked R`: the old, unpaired scheme for comparison, repeated `R`
  times at each batch: `--runs` calls of the unpruned model, then `--runs`
  of the pruned one (`lpjax.evaluate.latency.measure`, 3 warm-up calls
  each), the speed-up as the ratio of the two medians; the spread of that
  ratio over the `R` repetitions shows what an unpaired figure can say;
* `--sweep K1,K2,...`: the same paired scheme over [k, k, k] ResNets (the
  first k blocks of every stage) at each batch, every depth called once per
  round in a rotating order, to tell fixed per-call costs from per-block
  costs: per depth the median time, its paired speed-up against the
  deepest, that speed-up / FLOPs ratio, and the median milliseconds per
  block of the per-round least-squares line `t = a + b * blocks`;
* training throughput of the unpruned ResNet-56: images per second of the
  jitted SGD train step (`lpjax.train.jit_train_step`, BatchNorm, L2) at
  batch `--train_batch`, median over `--train_steps` steps after compile
  (0: skipped).

  python benchmarks/device_bench.py [--runs 20] [--batches 1,256]
  python benchmarks/device_bench.py --sweep 1,2,3,5,9 --train_steps 0
  python benchmarks/device_bench.py --blocked 5 --train_steps 0

`--min_time_s`: at a batch where `--runs` pairs would take less, more pairs
are timed (batch 1: a few hundred pairs in 5 s). Writes markdown to stdout
(and `--out`) with the CPU model, jax version, date and the load average
at the start and end. On 2 CPU cores about 3 minutes (4 more with a sweep);
seconds on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import numpy as np

from lpjax import flops, models, sharding, train
from lpjax.evaluate import latency

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common


def pruned_k(arch, k):
  """`arch` with every stage cut to its first `k` blocks."""
  drop = [b.name for stage in arch.stages for b in stage.blocks[k:]]
  return arch.without(drop, enforce_floor=False)


def pruned_222(arch):
  """`arch` with every stage cut to its first 2 blocks."""
  return pruned_k(arch, 2)


def _forward(arch, shape):
  variables = models.init_variables(arch, 0, shape)
  model = models.build_model(arch)
  return jax.jit(
    lambda x, model=model, variables=variables: model.apply(
      variables, x, train=False
    )
  )


def _call(fn, x):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(x))
  return time.perf_counter() - t0


def interleaved(fns, x, runs, warmup=3, min_time_s=0.0):
  """Per-round times of `fns` (a list), each called once per round.

  Every function is compiled, then all are warmed up alternately; round `r`
  calls them in an order rotated by `r` (two functions: alternating), so
  no function always runs first or after the same one. Rounds: `runs`, or
  more where `runs` rounds would take under `min_time_s`.

  Returns:
    `[rounds, len(fns)]` seconds.
  """
  for fn in fns:
    jax.block_until_ready(fn(x))  # Compile.
  for _ in range(warmup):
    for fn in fns:
      _call(fn, x)
  per_round = sum(_call(fn, x) for fn in fns)
  rounds = max(runs, int(np.ceil(min_time_s / max(per_round, 1e-9))))
  t = np.empty((rounds, len(fns)))
  m = len(fns)
  for r in range(rounds):
    for j in range(m):
      i = (j + r) % m if m > 2 else (j if r % 2 == 0 else m - 1 - j)
      t[r, i] = _call(fns[i], x)
  return t


def _q(v, fmt='{:.2f}'):
  q1, q2, q3 = common.quartiles(v)
  return f'{fmt.format(q2)} [{fmt.format(q1)}, {fmt.format(q3)}]'


def _ms(v):
  q1, q2, q3 = common.quartiles(np.asarray(v) * 1e3)
  return f'{q2:.2f} ({q3 - q1:.2f})'


def pair_table(full, small, ratio, shape, batches, args, rng):
  lines = [
    '| batch | pairs | unpruned ms (IQR) | [2, 2, 2] ms (IQR) | speed-up, '
    'median [quartiles] | FLOPs ratio | speed-up / FLOPs ratio, median '
    '[quartiles] |',
    '|---:|---:|---:|---:|---:|---:|---:|',
  ]
  fns = [_forward(full, shape), _forward(small, shape)]
  for b in batches:
    x = jax.numpy.asarray(rng.normal(size=(b, *shape)).astype(np.float32))
    t = interleaved(fns, x, args.runs, min_time_s=args.min_time_s)
    s = t[:, 0] / t[:, 1]
    lines.append(
      f'| {b} | {len(t)} | {_ms(t[:, 0])} | {_ms(t[:, 1])} | {_q(s)}× | '
      f'{ratio:.2f}× | {_q(s / ratio)} |'
    )
    print(lines[-1], flush=True)
  return lines


def blocked_table(full, small, ratio, shape, batches, args, rng):
  """The unpaired scheme (all unpruned calls, then all pruned), `R` times."""
  fns = [_forward(full, shape), _forward(small, shape)]
  lines = [
    f'Unpaired (blocked) scheme, {args.blocked} repetitions of {args.runs} '
    f'unpruned calls then {args.runs} pruned calls:',
    '',
    '| batch | ratio of medians / FLOPs ratio, each repetition | median '
    '| min – max |',
    '|---:|---|---:|---:|',
  ]
  for b in batches:
    x = jax.numpy.asarray(rng.normal(size=(b, *shape)).astype(np.float32))
    rel = []
    for _ in range(args.blocked):
      r_full = latency.measure(fns[0], x, runs=args.runs)
      r_small = latency.measure(fns[1], x, runs=args.runs)
      rel.append(latency.speedup(r_small, r_full) / ratio)
    lines.append(
      f'| {b} | {", ".join(f"{v:.2f}" for v in rel)} | '
      f'{np.median(rel):.2f} | {min(rel):.2f} – {max(rel):.2f} |'
    )
    print(lines[-1], flush=True)
  return lines


def sweep_table(full, ks, shape, batches, args, rng):
  """Paired times of [k, k, k] ResNets, against the deepest of `ks`."""
  ks = sorted(ks)
  archs = [pruned_k(full, k) for k in ks]
  macs = np.array([flops.cost(a).macs for a in archs], float)
  blocks = np.array([3 * k for k in ks], float)
  fns = [_forward(a, shape) for a in archs]
  deep = len(ks) - 1
  lines = []
  for b in batches:
    x = jax.numpy.asarray(rng.normal(size=(b, *shape)).astype(np.float32))
    t = interleaved(fns, x, args.runs, min_time_s=args.min_time_s)
    # Per round, the least-squares line t = a + slope * blocks.
    design = np.stack([np.ones_like(blocks), blocks], 1)
    coef = np.linalg.lstsq(design, t.T, rcond=None)[0]  # [2, rounds]
    mac_coef = np.linalg.lstsq(design, macs, rcond=None)[0]
    lines += [
      f'Batch {b}, {len(t)} rounds: per-round line t = a + b × blocks: '
      f'a = {_q(coef[0] * 1e3)} ms, b = {_q(coef[1] * 1e3, "{:.3f}")} ms '
      f'per block; MACs: {mac_coef[0] / 1e6:.2f} M + '
      f'{mac_coef[1] / 1e6:.2f} M per block (intercept / per block: '
      f'{mac_coef[0] / mac_coef[1]:.2f} blocks of MACs, '
      f'{_q(coef[0] / coef[1])} blocks of time).',
      '',
      f'| blocks | MACs (M) | ms (IQR) | speed-up vs {int(blocks[deep])} '
      'blocks | FLOPs ratio | speed-up / FLOPs ratio | ms per block |',
      '|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for i in range(len(ks)):
      s = t[:, deep] / t[:, i]
      r = macs[deep] / macs[i]
      lines.append(
        f'| {int(blocks[i])} | {macs[i] / 1e6:.1f} | {_ms(t[:, i])} | '
        f'{_q(s)}× | {r:.2f}× | {_q(s / r)} | '
        f'{_q(t[:, i] / blocks[i] * 1e3, "{:.3f}")} |'
      )
    lines.append('')
    print('\n'.join(lines[-len(ks) - 5 :]), flush=True)
  return lines


def train_line(full, shape, args, rng):
  mesh = sharding.make_mesh()
  model = models.build_model(full)
  tx = train.make_optimizer(learning_rate=0.1, total_steps=1000)
  state = train.create_train_state(
    model, models.init_variables(full, 0, shape), tx
  )
  step = train.jit_train_step(weight_decay=1e-4, mesh=mesh)
  n = args.train_batch
  batch = {
    'image': rng.normal(size=(n, *shape)).astype(np.float32),
    'label': rng.integers(0, 10, n).astype(np.int32),
  }
  # Placed as `lpjax.train.fit` places them, then two untimed steps (the
  # compile, and one more with the step's own output state).
  state = sharding.replicate(state, mesh)
  batch = sharding.shard_batch(batch, mesh)
  for _ in range(2):
    state, m = step(state, batch)
    jax.block_until_ready(m)
  times = []
  for _ in range(args.train_steps):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  return (
    f'ResNet-56 train step at batch {n}: median {med * 1e3:.1f} ms over '
    f'{args.train_steps} steps, {n / med:.0f} images/s.'
  )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--runs', type=int, default=20, help='Pairs (at least).')
  p.add_argument('--min_time_s', type=float, default=5.0)
  p.add_argument('--batches', default='1,256')
  p.add_argument('--sweep', default='', help='Depths k of [k, k, k].')
  p.add_argument('--blocked', type=int, default=0, help='Unpaired repeats.')
  p.add_argument('--train_batch', type=int, default=128)
  p.add_argument('--train_steps', type=int, default=10)
  p.add_argument('--out', default=None)
  args = p.parse_args(argv)
  load0 = os.getloadavg()
  full = models.get_arch('resnet56')
  small = pruned_222(full)
  ratio = flops.cost(full).macs / flops.cost(small).macs
  shape = (32, 32, 3)
  rng = np.random.default_rng(0)
  batches = [int(v) for v in args.batches.split(',') if v]
  dev = latency.device_description()
  lines = [
    f'Device: {dev["device"]} ({dev["backend"]}, {dev["devices"]} device(s), '
    f'{dev["cpu_threads"]} CPU threads); CPU {common.cpu_model()}; jax '
    f'{jax.__version__}; XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; '
    f'{datetime.date.today().isoformat()}; load average (1, 5, 15 min) at '
    f'the start {", ".join(f"{v:.2f}" for v in load0)}.',
    '',
  ]
  print('\n'.join(lines), flush=True)
  lines += pair_table(full, small, ratio, shape, batches, args, rng)
  if args.blocked:
    lines += ['']
    lines += blocked_table(full, small, ratio, shape, batches, args, rng)
  if args.sweep:
    ks = [int(v) for v in args.sweep.split(',') if v]
    lines += ['', '[k, k, k] ResNets, paired rounds:', '']
    lines += sweep_table(full, ks, shape, batches, args, rng)
  if args.train_steps:
    lines += ['', train_line(full, shape, args, rng)]
  load1 = os.getloadavg()
  lines += [
    '',
    f'Load average at the end {", ".join(f"{v:.2f}" for v in load1)}.',
  ]
  md = '\n'.join(lines)
  print(md)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(md + '\n')


if __name__ == '__main__':
  main()
