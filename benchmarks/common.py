"""What several benchmark scripts share: the CPU's name, Holm's correction,
one timed `main.py` run.

Scripts import it as `common` (each puts its own folder first on
`sys.path`, which `python benchmarks/<script>.py` does anyway).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ALPHA = 0.05  # family-wise error level


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (the platform's elsewhere)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or 'unknown CPU'


def holm(pvalues, alpha: float = ALPHA):
  """Holm-Bonferroni over a family: `(adjusted p-values, levels)`.

  With the m p-values sorted ascending, the hypothesis of rank j (from 1)
  is rejected when every rank i <= j has p_(i) <= alpha / (m - i + 1); its
  adjusted p-value is max over i <= j of min(1, (m - i + 1) p_(i)) (Holm
  1979), so it is rejected exactly when that is <= alpha. `levels[h]` is
  the per-comparison error level of hypothesis h's interval: alpha /
  (m - j + 1) up to the first rank k not rejected, and alpha / (m - k + 1)
  from k on, so that the interval at confidence 1 - level excludes 0
  exactly when Holm rejects.
  """
  p = np.asarray(pvalues, np.float64)
  m = len(p)
  adjusted, levels = np.empty(m), np.empty(m)
  running, stop = 0.0, None
  for j, h in enumerate(np.argsort(p, kind='stable')):  # rank j + 1
    running = max(running, min(1.0, (m - j) * p[h]))
    adjusted[h] = running
    if stop is None and p[h] > alpha / (m - j):
      stop = j
    levels[h] = alpha / (m - (j if stop is None else stop))
  return adjusted, levels


def _children_cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def quiet_env(**extra: str) -> dict[str, str]:
  """This environment less every variable lpjax or JAX reads (`LPJAX_*`,
  `JAX_*`, `XLA_*`), then `extra`: what a new user's process sees, plus
  what a variant sets."""
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(('LPJAX_', 'JAX_', 'XLA_'))
  }
  return {**env, **extra}


def send_result(out) -> None:
  """A child process's answer to `child_result`: one `RESULT <json>` line."""
  print('RESULT ' + json.dumps(out), flush=True)


def child_result(cmd: list[str], env: dict[str, str], what: str):
  """Runs a benchmark's child process and returns what it `send_result`s.

  Raises:
    RuntimeError: naming `what`, with the end of its stderr, when it sends
      nothing.
  """
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT ') :])
  raise RuntimeError(f'{what} failed:\n{proc.stderr[-3000:]}')


# The papers' recipe the train-step benchmarks time: SGD at a constant
# learning rate 0.01, Nesterov momentum 0.9, L2 1e-4 on the conv kernels.
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


def sgd_train_step(model, variables):
  """The papers' SGD step for `model`, jitted over lpjax's default devices:
  `(state replicated over the mesh, step function, mesh)`."""
  from lpjax import sharding, train

  tx = train.make_optimizer(
    learning_rate=LEARNING_RATE,
    total_steps=1_000_000,
    momentum=MOMENTUM,
    nesterov=True,
    schedule='constant',
  )
  mesh = sharding.make_mesh()
  state = train.replicate(train.create_train_state(model, variables, tx), mesh)
  step = train.jit_train_step(weight_decay=WEIGHT_DECAY, mesh=mesh)
  return state, step, mesh


def emit(report: str, out: str | None) -> None:
  """Prints a benchmark's report, and writes it to `out` when given."""
  print(report)
  if out:
    with open(out, 'w') as f:
      f.write(report + '\n')


def run_main(
  tree: str, args: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, str]:
  """`python main.py *args` in `tree`: (wall s, CPU s of the process and its
  children, the results table it printed). Without `env`: `quiet_env()`."""
  if env is None:
    env = quiet_env()
  cpu0, t0 = _children_cpu(), time.perf_counter()
  out = subprocess.run(
    [sys.executable, 'main.py', *args],
    cwd=tree,
    env=env,
    capture_output=True,
    text=True,
  )
  wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
  if out.returncode != 0:
    raise RuntimeError(f'{tree}: exit {out.returncode}\n{out.stderr[-3000:]}')
  table = '\n'.join(
    line for line in out.stdout.splitlines() if line.startswith('| ')
  )
  return wall, cpu, table


def quartiles(values) -> tuple[float, float, float]:
  """`(q1, median, q3)` of `values` (linear interpolation, as
  `statistics.quantiles(..., method='inclusive')`)."""
  q1, q2, q3 = np.percentile(np.asarray(values, float), [25, 50, 75])
  return float(q1), float(q2), float(q3)


def median_quartiles(values, digits: int = 3, unit: str = '') -> str:
  """`median [q1, q3]` of `values` (the value alone for one, '—' for
  none), `unit` after the median."""
  values = list(values)
  if not values:
    return '—'
  if len(values) == 1:
    return f'{values[0]:.{digits}f}{unit}'
  q1, q2, q3 = quartiles(values)
  return f'{q2:.{digits}f}{unit} [{q1:.{digits}f}, {q3:.{digits}f}]'
