"""Energy of a computation, measured, or reported as not measured.

On an NVIDIA GPU, NVML's total-energy counter (millijoules since the
driver loaded; Volta and later) is read before and after `runs` calls of
`fn`: the difference is the GPU board's energy, idle power included. Where
there is no such counter (CPU-only hosts, whose RAPL counters are usually
not readable by users, or virtual machines that expose none), the result
says "not measured" and why; there is no estimate from FLOPs or TDP
presented as a measurement. The counter read is NVML's GPU 0: with several
GPUs, make the measured one the only visible one (`CUDA_VISIBLE_DEVICES`).
The counter updates in steps of tens of milliseconds, so the calls run for
at least `min_seconds` (and `runs` calls).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


def _nvml_counter():
  """`(read() -> millijoules, name)` of GPU 0, or `(None, reason)`."""
  if jax.default_backend() != 'gpu':
    return None, f'no GPU (JAX backend {jax.default_backend()!r})'
  try:
    import pynvml
  except ImportError:
    return None, 'pynvml is not installed (pip install nvidia-ml-py)'
  try:
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(handle)
    pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
  except Exception as e:  # NVML raises its own error classes
    return None, f'NVML energy counter unavailable ({e})'
  return (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)), name


def measure(
  fn: Callable[[Any], Any],
  x: Any,
  *,
  runs: int = 100,
  min_seconds: float = 2.0,
) -> dict[str, Any]:
  """Joules per call of `fn(x)` from the GPU's energy counter.

  Returns:
    `{'measured': True, 'joules_per_call', 'seconds', 'runs', 'device'}`,
    or `{'measured': False, 'reason': ...}` where no counter exists.
  """
  if not isinstance(runs, int) or runs < 1:
    raise ValueError(f'runs must be an integer >= 1; got {runs!r}.')
  read, name = _nvml_counter()
  if read is None:
    return {'measured': False, 'reason': name}
  jax.block_until_ready(fn(x))  # compile outside the measurement
  t0, e0 = time.perf_counter(), read()
  done = 0
  while done < runs or time.perf_counter() - t0 < min_seconds:
    jax.block_until_ready(fn(x))
    done += 1
  e1, t1 = read(), time.perf_counter()
  return {
    'measured': True,
    'joules_per_call': (e1 - e0) / 1e3 / done,
    'seconds': t1 - t0,
    'runs': done,
    'device': name,
  }


def describe(result: dict[str, Any]) -> str:
  """`'0.123 J per call (NVIDIA H100)'` or `'not measured: <reason>'`."""
  if result.get('measured'):
    return f'{result["joules_per_call"]:.4g} J per call ({result["device"]})'
  return f'not measured: {result["reason"]}'


__all__ = ['describe', 'measure']
