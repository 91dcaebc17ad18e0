"""Latency of a jitted forward: compile excluded, warmed up, many runs.

`measure(fn, x)` compiles `fn` on `x` (timed separately), runs it `warmup`
more times untimed, then `runs` times, each call followed by
`jax.block_until_ready` so the time is the computation's, not the
dispatch's. It reports the median and the interquartile range in
milliseconds, with the device, the JAX backend and the host's CPU thread
count, so a number is never separated from where it was measured.
`speedup(pruned, unpruned)` is the ratio of medians; compare it with the
FLOPs ratio (`lpjax.flops`) of the same pair.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def device_description() -> dict[str, Any]:
  """The default device, backend and CPU threads available to this process."""
  d = jax.devices()[0]
  try:
    threads = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    threads = os.cpu_count()
  return {
    'backend': jax.default_backend(),
    'device': getattr(d, 'device_kind', str(d)),
    'devices': jax.device_count(),
    'cpu_threads': threads,
  }


def measure(
  fn: Callable[[Any], Any],
  x: Any,
  *,
  runs: int = 20,
  warmup: int = 3,
) -> dict[str, Any]:
  """Times `fn(x)`; `fn` should be jitted (it is compiled on the first call).

  Returns:
    `{'median_ms', 'iqr_ms', 'min_ms', 'runs', 'compile_s', 'batch', ...}`
    plus `device_description()`.
  """
  if not isinstance(runs, int) or runs < 1:
    raise ValueError(f'runs must be an integer >= 1; got {runs!r}.')
  if not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f'warmup must be an integer >= 0; got {warmup!r}.')
  t0 = time.perf_counter()
  jax.block_until_ready(fn(x))
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    jax.block_until_ready(fn(x))
  times = np.empty(runs)
  for i in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    times[i] = time.perf_counter() - t0
  q1, med, q3 = np.percentile(times * 1e3, [25, 50, 75])
  return {
    'median_ms': float(med),
    'iqr_ms': float(q3 - q1),
    'min_ms': float(times.min() * 1e3),
    'runs': runs,
    'compile_s': compile_s,
    'batch': int(np.shape(x)[0]) if np.ndim(x) else 1,
    **device_description(),
  }


def speedup(pruned: dict[str, Any], unpruned: dict[str, Any]) -> float:
  """`unpruned median / pruned median` of two `measure` results, which must
  come from the same device and batch."""
  for key in ('device', 'backend', 'batch'):
    if pruned[key] != unpruned[key]:
      raise ValueError(
        f'Latencies measured with different {key} ({pruned[key]!r} vs '
        f'{unpruned[key]!r}) are not comparable.'
      )
  return unpruned['median_ms'] / pruned['median_ms']


__all__ = ['device_description', 'measure', 'speedup']
