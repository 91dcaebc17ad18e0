"""Linear CKA: lpjax against the NumPy reference and the PyPI CKA packages.

Side by side in one run, on the same float32 data:

* `lpjax` / `lpjax-deb`: `lpjax.cka.linear_cka` (biased / debiased), jitted,
  float32, timed with `block_until_ready`, compile excluded.
* `numpy-f64` / `numpy-f32`: a NumPy implementation in float64 / float32
  (feature-space form when `n > d`, Gram form otherwise): the same algorithm
  as lpjax's wherever lpjax's cost model picks the same form (the `lpjax
  form` column), so its ratio to lpjax measures the runtime, not the
  algorithm.
* `pytorch-cka`: `cka.cka_from_features(x, y)` of the `pytorch-cka` package.
  Its only estimator is the unbiased HSIC (debiased CKA), Gram form, in the
  input dtype (float32); it returns a `[1, 1]` matrix, clamped to `[0, 1]`.
* `ckatorch`: `ckatorch.cka_base(x, y)` (biased, linear kernel) of the
  `ckatorch` package; it casts to float64 and uses the Gram form.

Both packages compute the linear CKA of two plain tensors through their
public functions, so no adapter beyond `.item()` is needed. Both use the
Gram form (`n x n` kernels), so at `n >> d` their ratio to lpjax is mostly
the algorithm's (`O(n² d)` against `O(n d²)`), not the runtime's. Every
value is checked against the float64 value of its estimator.

Batched case: one reference against 27 candidates. lpjax uses
`linear_cka_one_to_many` (and a `vmap` of `linear_cka`); the peers run a
Python loop of 27 calls (`pytorch-cka` also has a native batched call,
`cka_from_features(ref, cands)`, timed where its `27 n²` Grams fit).

Also measured in the same run: the backends' own float32 matmul GFLOP/s at
the representative size (`XᵀX`, `n = 10,000`, `d = 4,096`), and lpjax's
achieved GFLOP/s there as a fraction of JAX's.

Timing: medians of repeats (fewer for large shapes); the methods of a shape
run round-robin per repeat so load changes hit all of them alike. Ratios
are paired: the ratio of two methods' times in the same round (same call
index), then the median [quartiles] over rounds.

  python benchmarks/cka_bench.py --out /tmp/cka_bench.md  # then paste into BENCHMARKS.md

Runtime: about 15 minutes on 2 CPU cores (`--quick`: a few seconds). To
stay under 10 minutes per run: `--parts single --max_work 1e11` (every
single-pair shape but 10000 x 4096), then `--parts batched,matmul`.

Before/after: `--baseline FILE` times this checkout's `lpjax.cka` against
another version of the module, e.g. the last commit's, side by side in one
run (no peers, no torch needed): single-pair `linear_cka` (both
estimators), `linear_cka_one_to_many`, `rbf_cka`, `cka_matrix` and
`minibatch_cka_matrix`, the two versions called back to back in every
round (order alternating); the table gives median times and the median and
quartiles of the per-round ratio. About three minutes on 2 CPU cores:

  git show HEAD:lpjax/cka.py > /tmp/cka_before.py
  python benchmarks/cka_bench.py --baseline /tmp/cka_before.py
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lpjax import cka as lpcka

NOTES_MARKER = '<!-- notes: text below this line is kept on regeneration -->'
GOAL_SPEEDUP = 20.0
GOAL_MATMUL_FRACTION = 0.6
NUM_CANDIDATES = 27


# ---------------------------------------------------------------------------
# Implementations.
# ---------------------------------------------------------------------------


def numpy_cka(
  x: np.ndarray, y: np.ndarray, debiased: bool = False, dtype=np.float64
) -> float:
  """Linear CKA in `dtype`, feature-space form if `n > d` else Gram form.

  Biased by default (the timed reference); `debiased=True` (used only to
  check values) evaluates Song et al.'s unbiased HSIC, in feature space via
  `‖YᵀX‖² - n/(n-2) kᵀl + s_x s_y/((n-1)(n-2))` for centered inputs.
  """
  n = x.shape[0]
  x = x.astype(dtype)
  y = y.astype(dtype)
  x -= x.mean(axis=0)
  y -= y.mean(axis=0)
  if n > max(x.shape[1], y.shape[1]):

    def h(a, b):
      t = np.sum(np.square(a.T @ b))
      if not debiased:
        return t
      ka, kb = np.sum(a * a, 1), np.sum(b * b, 1)
      return t - n / (n - 2) * ka @ kb + ka.sum() * kb.sum() / (n - 1) / (n - 2)

  else:

    def h(a, b):
      k, l = a @ a.T, b @ b.T  # noqa: E741
      if not debiased:
        return np.sum(k * l)
      np.fill_diagonal(k, 0)
      np.fill_diagonal(l, 0)
      one_k, one_l = k.sum(0), l.sum(0)
      return (
        np.sum(k * l)
        + k.sum() * l.sum() / (n - 1) / (n - 2)
        - 2 / (n - 2) * one_k @ one_l
      )

  return float(h(x, y) / np.sqrt(h(x, x)) / np.sqrt(h(y, y)))


def numpy_cka_f32(x: np.ndarray, y: np.ndarray) -> float:
  """`numpy_cka` in float32: lpjax's precision, the same algorithm."""
  return numpy_cka(x, y, dtype=np.float32)


def _peers():
  """The PyPI packages' public entry points, as `(name, fn, debiased)`."""
  import cka as pytorch_cka  # The `pytorch-cka` package.
  import ckatorch
  import torch

  def pytorch_cka_fn(x, y):
    with torch.no_grad():
      return pytorch_cka.cka_from_features(x, y).item()

  def ckatorch_fn(x, y):
    with torch.no_grad():
      return ckatorch.cka_base(x, y, kernel='linear', unbiased=False).item()

  return torch, [
    ('pytorch-cka', pytorch_cka_fn, True),
    ('ckatorch', ckatorch_fn, False),
  ]


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


# A method whose last call was shorter than this gets one untimed call before
# its timed ones in every round: it wakes that runtime's worker threads
# (parked while the other methods ran) so that short calls are not charged
# a thread wake-up, and it lets the previous runtime's spinning threads stop.
_REWARM_BELOW_S = 0.25


def time_round_robin(
  fns: dict[str, Callable[[], object]],
  rounds: int,
  burst: int,
  compile_first: set[str],
  cold_ok: bool = False,
) -> tuple[dict[str, float], dict[str, object], dict[str, list[float]]]:
  """Median wall time per function over `rounds x burst` timed calls.

  Rounds alternate the functions, so load changes on a shared machine hit
  all of them alike; within a round a function runs `burst` times back to
  back. `compile_first` get one untimed call up front (jit compile);
  `cold_ok` skips the untimed re-warm call in the first round (for shapes
  where one call takes seconds). Also returns every timed call's seconds,
  aligned across functions (round by round, call by call), for paired
  ratios.
  """
  values = {name: fns[name]() for name in compile_first}
  times = {name: [] for name in fns}
  last = {name: (1e9 if cold_ok else 0.0) for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      if last[name] < _REWARM_BELOW_S:
        values[name] = fn()
      for _ in range(burst):
        start = time.perf_counter()
        values[name] = fn()
        last[name] = time.perf_counter() - start
        times[name].append(last[name])
  medians = {k: statistics.median(v) for k, v in times.items()}
  return medians, values, times


def paired(times, num, den):
  """Median and quartiles of the per-call ratio `times[num] / times[den]`.

  `den` may be a tuple: the slower of those methods in each call.
  """
  dens = den if isinstance(den, tuple) else (den,)
  d = np.max([times[k] for k in dens], axis=0)
  q1, q2, q3 = np.percentile(np.asarray(times[num]) / d, [25, 50, 75])
  return float(q1), float(q2), float(q3)


def _form(n, d, num_y=1):
  plan = tuple(lpcka._plan(n, d, d, num_y, 'auto'))
  if all(p == 'feature' for p in plan):
    return 'feature'
  if all(p in ('blocks', 'gram') for p in plan):
    return 'Gram'
  return 'mixed ' + '/'.join(plan)


def _schedule(n: int, d: int, quick: bool) -> tuple[int, int]:
  """(rounds, burst) by problem size."""
  if quick:
    return 1, 1
  work = n * d * max(n, d)
  if work <= 1e9:
    return 3, 5
  return (5, 1) if work <= 1e10 else (3, 1) if work <= 2e11 else (2, 1)


def _data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d), dtype=np.float32)
  w = rng.standard_normal((d, d), dtype=np.float32) / np.float32(np.sqrt(d))
  y = x @ w + rng.standard_normal((n, d), dtype=np.float32)
  return x, y


def _block(fn):
  return lambda *a: jax.block_until_ready(fn(*a))


# ---------------------------------------------------------------------------
# Benchmarks.
# ---------------------------------------------------------------------------


def bench_single(shapes, args, torch, peers):
  jl = jax.jit(lpcka.linear_cka, static_argnames=('debiased',))
  rows = []
  for n, d in shapes:
    x, y = _data(n, d)
    xj, yj = jax.device_put(x), jax.device_put(y)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rounds, burst = _schedule(n, d, args.quick)
    reps = rounds * burst
    big = n * d * max(n, d) > 2e11
    fns = {
      'lpjax': lambda xj=xj, yj=yj: float(_block(jl)(xj, yj)),
      'lpjax-deb': lambda xj=xj, yj=yj: float(
        _block(functools.partial(jl, debiased=True))(xj, yj)
      ),
    }
    skipped = {}
    if big and args.skip_numpy_at_largest:
      skipped['numpy-f64'] = 'skipped (--skip_numpy_at_largest)'
      skipped['numpy-f32'] = 'skipped (--skip_numpy_at_largest)'
    else:
      fns['numpy-f64'] = lambda x=x, y=y: numpy_cka(x, y)
      fns['numpy-f32'] = lambda x=x, y=y: numpy_cka_f32(x, y)
    for name, fn, _ in peers:
      fns[name] = lambda fn=fn, xt=xt, yt=yt: fn(xt, yt)
    times, values, all_times = time_round_robin(
      fns, rounds, burst, {'lpjax', 'lpjax-deb'}, cold_ok=big
    )
    values['f64'] = values.get('numpy-f64', None)
    if values['f64'] is None:
      values['f64'] = numpy_cka(x, y)
    values['f64-deb'] = numpy_cka(x, y, debiased=True)
    rows.append(
      dict(
        n=n,
        d=d,
        reps=reps,
        times=times,
        all=all_times,
        values=values,
        skipped=skipped,
        form=_form(n, d),
      )
    )
    print(_single_line(rows[-1]), flush=True)
  return rows


def bench_batched(shapes, args, torch, peers):
  jitted = {
    'lpjax': jax.jit(lpcka.linear_cka_one_to_many),
    'lpjax-deb': jax.jit(
      functools.partial(lpcka.linear_cka_one_to_many, debiased=True)
    ),
    'lpjax-vmap': jax.jit(jax.vmap(lpcka.linear_cka, in_axes=(None, 0))),
  }
  rows = []
  for n, d in shapes:
    rows.append(_bench_batched_shape(n, d, args, torch, peers, jitted))
    print(_single_line(rows[-1]), flush=True)
  return rows


def _bench_batched_shape(n, d, args, torch, peers, jitted):
  import cka as pytorch_cka  # The `pytorch-cka` package.

  k = NUM_CANDIDATES
  rng = np.random.default_rng(1)
  ref, _ = _data(n, d)
  scale = rng.uniform(0.1, 3.0, size=(k, 1, 1)).astype(np.float32)
  cands = ref[None] + scale * rng.standard_normal((k, n, d), dtype=np.float32)
  refj, candsj = jax.device_put(ref), jax.device_put(cands)
  reft, candst = torch.from_numpy(ref), torch.from_numpy(cands)
  fns = {
    name: functools.partial(lambda f: np.asarray(_block(f)(refj, candsj)), f)
    for name, f in jitted.items()
  }
  fns['numpy-f64'] = lambda: np.array([numpy_cka(ref, c) for c in cands])
  fns['numpy-f32'] = lambda: np.array([numpy_cka_f32(ref, c) for c in cands])
  skipped = {}
  for name, fn, _ in peers:
    est = _single_time(args.single_rows, n, d, name)
    if est is None:  # No single-pair row: time one call.
      start = time.perf_counter()
      fn(reft, candst[0])
      est = time.perf_counter() - start
    if est is not None and est * k > args.loop_budget_s:
      skipped[name] = (
        f'skipped: one call takes {est:.1f} s, the loop '
        f'≈{est * k:.0f} s > --loop_budget_s'
      )
      continue
    fns[name] = functools.partial(
      lambda fn: np.array([fn(reft, c) for c in candst]), fn
    )
  if k * n * n * 4 * 3 <= args.native_batch_bytes:

    def native():
      with torch.no_grad():
        return pytorch_cka.cka_from_features(reft, candst).numpy()[0]

    fns['pytorch-cka-batched'] = native
  else:
    skipped['pytorch-cka-batched'] = (
      f'skipped: {k} Grams of {n}x{n} exceed --native_batch_bytes'
    )
  reps = 1 if args.quick else 3
  times, values, all_times = time_round_robin(fns, reps, 1, set(jitted))
  values['f64'] = values['numpy-f64']
  values['f64-deb'] = [numpy_cka(ref, c, debiased=True) for c in cands]
  return dict(
    n=n,
    d=d,
    reps=reps,
    times=times,
    all=all_times,
    values=values,
    skipped=skipped,
    form=_form(n, d, k),
  )


def _single_time(rows, n, d, name):
  for r in rows:
    if (r['n'], r['d']) == (n, d) and name in r['times']:
      return r['times'][name]
  return None


def bench_matmul(args, torch):
  """Float32 `XᵀX` GFLOP/s of each backend, and lpjax at the same size."""
  n, d = (1000, 512) if args.quick else (10_000, 4_096)
  x, y = _data(n, d, seed=2)
  xj, yj = jax.device_put(x), jax.device_put(y)
  xt = torch.from_numpy(x)
  flops = 2.0 * n * d * d
  jx = jax.jit(lambda a: a.T @ a)
  jl = jax.jit(lpcka.linear_cka)
  fns = {
    'jax': lambda: _block(jx)(xj),
    'numpy-f32': lambda: x.T @ x,
    'torch': lambda: xt.T @ xt,
    'lpjax': lambda: _block(jl)(xj, yj),
  }
  reps = 1 if args.quick else 3
  times, _, _ = time_round_robin(fns, reps, 1, {'jax', 'lpjax'}, cold_ok=True)
  plan = lpcka._plan(n, d, d, 1, 'auto')
  b = lpcka._num_blocks(d, lpcka._MIN_COLS)
  # Multiply-adds the chosen plan executes (symmetric blocks included).
  executed = 2.0 * sum(lpcka._costs(n, d, d, plan))
  nominal = 3 * flops
  return dict(
    n=n,
    d=d,
    times=times,
    plan=plan,
    blocks=b,
    gflops={k: flops / times[k] / 1e9 for k in ('jax', 'numpy-f32', 'torch')},
    lpjax_nominal=nominal / times['lpjax'] / 1e9,
    lpjax_executed=executed / times['lpjax'] / 1e9,
  )


def _load_module(path: str, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _baseline_cases(quick: bool):
  """(label, shape text, build) where `build(module)` gives `(fn, args)`.

  Covers every public entry point whose numerics differ between versions:
  single pair (both estimators; feature and Gram forms), one against 27
  candidates (vmapped and one at a time), RBF, the pairwise matrix and
  minibatch accumulation.
  """
  rng = np.random.default_rng(3)

  def single(debiased):
    def build(m, x, y):
      f = jax.jit(functools.partial(m.linear_cka, debiased=debiased))
      return f, (x, y)

    return build

  def many(m, x, y):
    cands = np.stack([y + i * x for i in range(NUM_CANDIDATES)])
    return jax.jit(m.linear_cka_one_to_many), (x, cands)

  def rbf(m, x, y):
    return jax.jit(m.rbf_cka), (x, y)

  def matrix(m, x, y):
    reps = [x, y, x**2, np.abs(y), x + y]
    return jax.jit(m.cka_matrix), (reps,)

  def minibatch(m, x, y):
    reps = [a.reshape(8, -1, a.shape[1]) for a in (x, y, x**2, np.abs(y))]
    return jax.jit(m.minibatch_cka_matrix), (reps,)

  if quick:
    shapes = {'single': [(200, 16)], 'many': [(200, 16)], 'rbf': [(200, 8)]}
    shapes.update(matrix=[(200, 16)], minibatch=[(400, 16)])
  else:
    shapes = {
      'single': [(500, 64), (2000, 64), (10_000, 64), (2000, 512), (500, 4096)],
      'many': [(2000, 64), (500, 512)],
      'rbf': [(1000, 64), (2000, 64)],
      'matrix': [(2000, 64)],
      'minibatch': [(2000, 64)],
    }
  builds = {
    'linear_cka': ('single', single(False)),
    'linear_cka debiased': ('single', single(True)),
    f'linear_cka_one_to_many ({NUM_CANDIDATES})': ('many', many),
    'rbf_cka': ('rbf', rbf),
    'cka_matrix (5 reps)': ('matrix', matrix),
    'minibatch_cka_matrix (4 reps, 8 batches)': ('minibatch', minibatch),
  }
  for label, (kind, build) in builds.items():
    for n, d in shapes[kind]:
      x = rng.standard_normal((n, d), dtype=np.float32)
      y = x @ rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d)
      y = (y + rng.standard_normal((n, d), dtype=np.float32)).astype('f4')
      yield label, f'{n} x {d}', functools.partial(build, x=x, y=y)


def _paired_times(fns, rounds):
  """Times of `before` and `after`, called back to back in every round.

  The order alternates round by round; on a shared machine the ratio of
  the two calls of one round is far steadier than either time.
  """
  times = {name: [] for name in fns}
  values = {}
  for r in range(rounds):
    order = ('before', 'after') if r % 2 else ('after', 'before')
    for name in order:
      start = time.perf_counter()
      values[name] = fns[name]()
      times[name].append(time.perf_counter() - start)
  ratios = [a / b for a, b in zip(times['after'], times['before'])]
  return times, ratios, values


def bench_baseline(args):
  """Median times of this checkout's `lpjax.cka` vs `--baseline`'s."""
  before = _load_module(args.baseline, 'cka_baseline')
  rows = []
  for label, shape, build in _baseline_cases(args.quick):
    fns = {}
    for name, module in (('before', before), ('after', lpcka)):
      fn, fargs = build(module)
      fns[name] = functools.partial(
        lambda fn, fargs: np.asarray(_block(fn)(*fargs)), fn, fargs
      )
      fns[name]()  # Compile and warm up.
    start = time.perf_counter()
    fns['after']()
    t = time.perf_counter() - start
    rounds = 1 if args.quick else 41 if t < 0.05 else 11 if t < 1 else 5
    times, ratios, values = _paired_times(fns, rounds)
    diff = float(np.max(np.abs(values['after'] - values['before'])))
    q1, q2, q3 = np.percentile(ratios, [25, 50, 75])
    med = {k: statistics.median(v) for k, v in times.items()}
    rows.append(
      dict(label=label, shape=shape, med=med, ratio=(q1, q2, q3), diff=diff)
    )
    print(
      f'{label:42} {shape:>12}  before {_fmt_t(med["before"]):>10}  after '
      f'{_fmt_t(med["after"]):>10}  paired after/before {q2:.3f} '
      f'[{q1:.3f}, {q3:.3f}] ({rounds} pairs)  max |diff| {diff:.1e}',
      flush=True,
    )
  lines = [
    '| function | n x d | before | after | after / before, paired median '
    '[quartiles] | max abs diff |',
    '|---|---|---|---|---|---|',
  ]
  for r in rows:
    q1, q2, q3 = r['ratio']
    lines.append(
      f'| `{r["label"]}` | {r["shape"]} | {_fmt_t(r["med"]["before"])} | '
      f'{_fmt_t(r["med"]["after"])} | {q2:.3f} [{q1:.3f}, {q3:.3f}] | '
      f'{r["diff"]:.1e} |'
    )
  medians = [r['ratio'][1] for r in rows]
  lines.append('')
  lines.append(
    f'Paired after / before over all rows: median '
    f'{statistics.median(medians):.3f}, range {min(medians):.3f} to '
    f'{max(medians):.3f}. Load average at start / end: {args.load[0]:.2f} '
    f'/ {os.getloadavg()[0]:.2f}.'
  )
  text = '\n'.join(lines) + '\n'
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
    print(f'wrote {args.out}')


# ---------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------


def _fmt_t(t):
  if t is None:
    return '—'
  return f'{t * 1e3:.2f} ms' if t < 1 else f'{t:.2f} s'


def _peer_names(rows):
  names = []
  for r in rows:
    for k in list(r['times']) + list(r['skipped']):
      if k not in names and not k.startswith(('lpjax', 'numpy')):
        names.append(k)
  return names


def _fastest_peer(r):
  peers = {
    k: v for k, v in r['times'].items() if not k.startswith(('lpjax', 'numpy'))
  }
  if not peers:
    return None, None
  name = min(peers, key=peers.get)
  return name, peers[name]


def _single_line(r):
  parts = [f'n={r["n"]:>6} d={r["d"]:>5}']
  parts += [f'{k}={_fmt_t(v)}' for k, v in r['times'].items()]
  return '  '.join(parts)


def _check_values(r, tol):
  """Max |error| of each method against the float64 value of its estimator."""
  v = r['values']
  ref = {False: v['f64'], True: v['f64-deb']}
  debiased_of = {
    'lpjax': False,
    'lpjax-deb': True,
    'lpjax-vmap': False,
    'pytorch-cka': True,
    'pytorch-cka-batched': True,
    'ckatorch': False,
  }
  out = {}
  for k, deb in debiased_of.items():
    if k in v:
      err = np.abs(np.asarray(v[k], np.float64) - np.asarray(ref[deb]))
      out[k] = float(np.max(err))
  bad = {k: e for k, e in out.items() if not e <= tol}
  return out, bad


def _pq(q, unit='×'):
  return f'{q[1]:.2f}{unit} [{q[0]:.2f}, {q[2]:.2f}]'


def _ratios(r):
  """Paired ratios of a row: `{(num, den): (q1, median, q3)}`.

  Speed-ups over lpjax: the fastest peer (by median) against the slower of
  lpjax's two estimators in each round, and each NumPy method against
  `lpjax` (the same estimator, biased).
  """
  out = {}
  fp, _ = _fastest_peer(r)
  if fp:
    out['peer'] = paired(r['all'], fp, ('lpjax', 'lpjax-deb'))
  for k in ('numpy-f32', 'numpy-f64'):
    if k in r['all']:
      out[k] = paired(r['all'], k, 'lpjax')
  return out


def _table(rows, title, lpjax_keys):
  peers = _peer_names(rows)
  cols = [*lpjax_keys, 'numpy-f32', 'numpy-f64', *peers]
  head = [
    'n',
    'd',
    'lpjax form',
    *cols,
    'fastest peer',
    'fastest peer / lpjax (slower estimator)',
    'numpy-f32 / lpjax',
    'numpy-f64 / lpjax',
    'max error vs float64',
  ]
  lines = [
    f'### {title}',
    '',
    '| ' + ' | '.join(head) + ' |',
    '|' + '---|' * len(head),
  ]
  for r in rows:
    fp, _ = _fastest_peer(r)
    ratios = _ratios(r)
    cells = [str(r['n']), str(r['d']), r['form']]
    for c in cols:
      if c in r['times']:
        cells.append(_fmt_t(r['times'][c]))
      elif c in r['skipped']:
        cells.append('skipped¹')
      else:
        cells.append('—')
    cells += [
      fp or '—',
      _pq(ratios['peer']) if 'peer' in ratios else '—',
      _pq(ratios['numpy-f32']) if 'numpy-f32' in ratios else '—',
      _pq(ratios['numpy-f64']) if 'numpy-f64' in ratios else '—',
      ', '.join(f'{k} {e:.1e}' for k, e in r['diffs'].items()),
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if any(r['skipped'] for r in rows):
    lines.append('')
    lines.append(
      '¹ '
      + '; '.join(
        f'n={r["n"]}, d={r["d"]}, {k}: {m}'
        for r in rows
        for k, m in r['skipped'].items()
      )
    )
  return '\n'.join(lines)


def _goals(single, batched, mm):
  lines = ['### Goals (reported, not enforced)', '']
  kinds = (('single', single), ('batched', batched))
  have_peer = [
    (_ratios(r)['peer'][1], kind, r['n'], r['d'])
    for kind, rows in kinds
    for r in rows
    if _fastest_peer(r)[1]
  ]
  if have_peer:
    worst = min(have_peer)
    ok = worst[0] >= 1.0
    lines.append(
      f"* ≤ 1.0× the fastest peer's time at every shape (slower of lpjax's "
      f'two estimators, paired median): {"met" if ok else "MISSED"}; worst '
      f'{1 / worst[0]:.3f}× ({worst[1]}, n={worst[2]}, d={worst[3]}).'
    )
  tall = [
    (_ratios(r), kind, r['n'], r['d'], r['form'])
    for kind, rows in kinds
    for r in rows
    if r['n'] >= 20 * r['d'] and _fastest_peer(r)[1]
  ]
  if tall:
    least = min(t[0]['peer'][1] for t in tall)
    lines.append(
      f'* ≥ {GOAL_SPEEDUP:.0f}× faster where n ≥ 20·d: '
      f'{"met" if least >= GOAL_SPEEDUP else "MISSED"}; paired median '
      'speed-up over the fastest PyPI package (Gram form, so mostly the '
      'algorithm) and over NumPy with the same algorithm as lpjax '
      '(float32 / float64), median [quartiles]: '
      + '; '.join(
        f'{k} {n}x{d} ({form}): {_pq(q["peer"])} over the package, '
        + (
          f'{_pq(q["numpy-f32"])} / {_pq(q["numpy-f64"])} over NumPy'
          if 'numpy-f32' in q
          else 'NumPy not run'
        )
        for q, k, n, d, form in tall
      )
      + '.'
    )
  if mm is None:
    return '\n'.join(lines)
  frac = mm['lpjax_nominal'] / mm['gflops']['jax']
  lines.append(
    f'* ≥ {GOAL_MATMUL_FRACTION:.0%} of measured matmul GFLOP/s at '
    f'n={mm["n"]}, d={mm["d"]}: '
    f'{"met" if frac >= GOAL_MATMUL_FRACTION else "MISSED"}; lpjax '
    f'{mm["lpjax_nominal"]:.1f} GFLOP/s counting the textbook 3 x 2·n·d² '
    f"= {frac:.0%} of JAX's {mm['gflops']['jax']:.1f} GFLOP/s "
    f'(executed flops with the {mm["blocks"]}-block symmetric products: '
    f'{mm["lpjax_executed"]:.1f} GFLOP/s = '
    f'{mm["lpjax_executed"] / mm["gflops"]["jax"]:.0%}).'
  )
  return '\n'.join(lines)


def _versions(torch):
  def v(dist):
    try:
      return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      return 'not installed'

  return {
    'python': platform.python_version(),
    'jax': jax.__version__,
    'jaxlib': v('jaxlib'),
    'numpy': np.__version__,
    'torch': torch.__version__,
    'pytorch-cka': v('pytorch-cka'),
    'ckatorch': v('ckatorch'),
  }


def _load():
  return ', '.join(f'{v:.2f}' for v in os.getloadavg())


def _machine():
  model = 'unknown'
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return model, os.cpu_count()


def _command(args):
  parts = ['python benchmarks/cka_bench.py']
  if args.out:
    parts.append(f'--out {args.out}')
  if args.quick:
    parts.append('--quick')
  if args.parts != 'single,batched,matmul':
    parts.append(f'--parts {args.parts}')
  if args.max_work:
    parts.append(f'--max_work {args.max_work:g}')
  return ' '.join(parts)


def render(args, single, batched, mm, torch, load):
  model, cores = _machine()
  vers = _versions(torch)
  lines = [
    '## CKA: lpjax vs NumPy and the PyPI CKA packages',
    '',
    f'Generated by `{_command(args)}` on {datetime.date.today().isoformat()}.',
    '',
    f'* Machine: {model}, {cores} cores ({platform.machine()}, '
    f'{platform.system()}); JAX backend {jax.default_backend()}; torch '
    f'threads {torch.get_num_threads()}. Load average (1, 5, 15 min) at '
    f'start / end: {load[0]} / {load[1]} (the machine was shared).',
    '* Versions: ' + ', '.join(f'{k} {v}' for k, v in vers.items()) + '.',
    '* Data: `x` standard normal `[n, d]` float32, `y = x W / √d + noise`; '
    'every method gets the same float32 arrays.',
    '* Times: median of 15 / 5 / 3 / 2 timed calls by size (3 for the '
    'batched case), compile excluded for lpjax (jit, float32, '
    'block_until_ready). Methods alternate round by round; a method whose '
    'calls are short (< 0.25 s) gets one untimed call at the start of each '
    'round, so no one is charged a thread wake-up after another runtime ran.',
    "* `lpjax` = `linear_cka` (biased, the papers' estimator); `lpjax-deb` "
    '= debiased. pytorch-cka only offers the debiased estimator, ckatorch '
    "is called with its default (biased). Last column: each method's "
    'largest error against the float64 NumPy value of its own estimator '
    '(computed untimed for the debiased one).',
    '* Algorithms: "lpjax form" is the form lpjax\'s cost model picked '
    '(feature space `XᵀY`, `O(n d²)`, or Gram `XXᵀ`, `O(n² d)`). '
    '`numpy-f32` / `numpy-f64` use the feature-space form when n > d and '
    "the Gram form otherwise: where lpjax's form is the same, their "
    'ratio to lpjax compares runtimes on the same algorithm. Both PyPI '
    'packages always use the Gram form, so where lpjax uses the feature '
    "space (n > d) their ratio is mostly the algorithm's.",
    '* Ratios (speed-ups of lpjax, > 1 is lpjax faster) are paired: the '
    "ratio of two methods' times in the same round and call, then the "
    'median [quartiles] over the rounds. "fastest peer" is the PyPI package '
    'with the smaller median; its ratio is taken against the slower of '
    "lpjax's two estimators in each round; the NumPy ratios against "
    '`lpjax` (the same, biased, estimator).',
  ]
  if single:
    lines += [
      '',
      _table(
        single,
        'Single pair, `linear_cka(x, y)`, dx = dy = d',
        ['lpjax', 'lpjax-deb'],
      ),
    ]
  if batched:
    lines += [
      '',
      _table(
        batched,
        f'One reference against {NUM_CANDIDATES} candidates '
        '(`linear_cka_one_to_many`; peers and NumPy: a Python loop)',
        ['lpjax', 'lpjax-deb', 'lpjax-vmap'],
      ),
    ]
  if mm is not None:
    lines += [
      '',
      f'### Matmul throughput (float32 `XᵀX`, n={mm["n"]}, d={mm["d"]})',
      '',
      '| backend | time | GFLOP/s |',
      '|---|---|---|',
    ]
    for k, g in mm['gflops'].items():
      lines.append(f'| {k} | {_fmt_t(mm["times"][k])} | {g:.1f} |')
    lines += [
      f'| lpjax `linear_cka` (plan {tuple(mm["plan"])}) | '
      f'{_fmt_t(mm["times"]["lpjax"])} | {mm["lpjax_nominal"]:.1f} nominal '
      f'(3 × 2nd²), {mm["lpjax_executed"]:.1f} executed |',
      '',
      '(numpy computes `x.T @ x` with a symmetric SYRK kernel, doing half '
      'the multiply-adds; its figure counts the full product.)',
    ]
  lines += ['', _goals(single, batched, mm)]
  return '\n'.join(lines) + '\n'


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default=None, help='Markdown file to write.')
  p.add_argument('--quick', action='store_true', help='Tiny smoke run.')
  p.add_argument(
    '--skip_numpy_at_largest',
    action='store_true',
    help='Skip the float64 NumPy reference at n·d·max(n,d) > 2e11.',
  )
  p.add_argument(
    '--loop_budget_s',
    type=float,
    default=120.0,
    help="Skip a peer's 27-call loop estimated to take longer.",
  )
  p.add_argument(
    '--native_batch_bytes',
    type=float,
    default=2e9,
    help="Memory allowed for pytorch-cka's batched Grams.",
  )
  p.add_argument(
    '--parts',
    default='single,batched,matmul',
    help='Comma-separated parts to run: single, batched, matmul.',
  )
  p.add_argument(
    '--max_work',
    type=float,
    default=0.0,
    help='Skip single-pair and batched shapes with n·d·max(n, d) above '
    'this (0: none).',
  )
  p.add_argument(
    '--baseline',
    default=None,
    help='Another version of lpjax/cka.py: time it against this checkout '
    "(before/after), instead of the peers' comparison.",
  )
  args = p.parse_args()
  if args.baseline:
    print(f'jax {jax.__version__} on {jax.default_backend()}', flush=True)
    args.load = (os.getloadavg()[0],)
    bench_baseline(args)
    return

  parts = set(args.parts.split(','))
  unknown = parts - {'single', 'batched', 'matmul'}
  if unknown:
    p.error(f'--parts: unknown {sorted(unknown)}; use single, batched, matmul')
  torch, peers = _peers()
  load0 = _load()
  if args.quick:
    single_shapes = [(200, 16), (100, 300)]
    batched_shapes = [(200, 16)]
  else:
    single_shapes = [
      (n, d) for n in (500, 2000, 10_000) for d in (64, 512, 4096)
    ]
    batched_shapes = [(500, 512), (2000, 64), (2000, 512), (10_000, 64)]
  if args.max_work:

    def small(shape):
      n, d = shape
      return n * d * max(n, d) <= args.max_work

    single_shapes = list(filter(small, single_shapes))
    batched_shapes = list(filter(small, batched_shapes))
  if 'single' not in parts:
    single_shapes = []
  if 'batched' not in parts:
    batched_shapes = []
  print(
    f'jax {jax.__version__} on {jax.default_backend()}, torch '
    f'{torch.__version__} ({torch.get_num_threads()} threads)',
    flush=True,
  )
  print('# single', flush=True)
  single = bench_single(single_shapes, args, torch, peers)
  args.single_rows = single
  print('# batched', flush=True)
  batched = bench_batched(batched_shapes, args, torch, peers)
  mm = None
  if 'matmul' in parts:
    print('# matmul', flush=True)
    mm = bench_matmul(args, torch)
  tol = 1e-4
  bad_all = {}
  for r in single + batched:
    r['diffs'], bad = _check_values(r, tol)
    if bad:
      bad_all[(r['n'], r['d'])] = bad
  text = render(args, single, batched, mm, torch, (load0, _load()))
  print(text)
  if bad_all:
    print(f'WARNING: values differ from lpjax by more than {tol}: {bad_all}')
  if args.out:
    notes = ''
    if os.path.exists(args.out):
      with open(args.out) as f:
        old = f.read()
      if NOTES_MARKER in old:
        notes = old.split(NOTES_MARKER, 1)[1]
    with open(args.out, 'w') as f:
      f.write(text + '\n' + NOTES_MARKER + notes)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
