"""Data parallelism over every device: the mesh, batches split along it.

The state is replicated over a one-axis `'data'` mesh of every device
(`make_mesh`) and each batch is split along its first axis (`shard_batch`).
With several processes (multi-host, after `jax.distributed.initialize()`)
the mesh spans every process's devices, process i's devices holding the
i-th contiguous block of the `'data'` axis, and every host batch is
process-local: each process passes only its rows [i * B / P, (i + 1) * B /
P) of the global batch, and `shard_batch` assembles the global array from
them. `check_batch_sizes` refuses batch sizes the devices cannot split
before any work.

Every core by default: on a CPU host JAX makes one device of all the cores
and XLA:CPU runs many operations (most convolution weight gradients, the
fused element-wise work) on one thread. `use_every_core`, called when this
module is imported (by `lpjax.models`, `lpjax.scoring`, `lpjax.train`,
`lpjax.run`; not by the JAX-free `lpjax.report` nor the standalone
`lpjax.cka`), gives JAX one CPU device per usable core instead, and
scoring spreads each batch over them (`auto_mesh`: each device runs the
shared-prefix pass on its rows), and a run's training and evaluation split
over them where each device's share of a batch is large enough to gain
(`data_devices`), on one device otherwise. It does nothing
where the count was chosen already (`JAX_NUM_CPU_DEVICES`,
`--xla_force_host_platform_device_count` in `XLA_FLAGS`,
`jax.config.update('jax_num_cpu_devices', n)`) or JAX's backends were
started before this module was imported; `JAX_NUM_CPU_DEVICES=1` turns
it off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lpjax import errors

DATA_AXIS = 'data'

# The CPU device count `use_every_core` set, or None where it set nothing.
_DEFAULT_CPU_DEVICES: int | None = None

Batch = Mapping[str, Any]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis `'data'` mesh over `devices` (default: `jax.devices()`).

  With several processes, the devices are ordered by process (stably, so
  each process keeps `jax.make_mesh`'s order of its own): process i holds
  the i-th contiguous block of the axis, the rows
  `lpjax.data.process_rows` gives it.
  """
  devices = list(jax.devices() if devices is None else devices)
  mesh = jax.make_mesh(
    (len(devices),),
    (DATA_AXIS,),
    axis_types=(AxisType.Auto,),
    devices=devices,
  )
  if jax.process_count() == 1:
    return mesh
  ordered = sorted(mesh.devices.flat, key=lambda d: d.process_index)
  return Mesh(np.array(ordered), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def usable_cores() -> int:
  """The cores this process may run on (its CPU affinity), at least 1."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # no affinity on this OS
    return max(1, os.cpu_count() or 1)


def use_every_core() -> int | None:
  """One JAX CPU device per usable core, unless the count is chosen already.

  Must run before JAX's backends start (this module calls it on import). Leaves
  everything as it is where `JAX_NUM_CPU_DEVICES` is set (1 turns this
  off), `XLA_FLAGS` forces a host device count, the program set
  `jax_num_cpu_devices`, or a JAX computation already ran.

  Returns:
    The device count set, or None where it set nothing.
  """
  global _DEFAULT_CPU_DEVICES
  flags = os.environ.get('XLA_FLAGS', '')
  if (
    os.environ.get('JAX_NUM_CPU_DEVICES')
    or 'xla_force_host_platform_device_count' in flags
    or jax.config.jax_num_cpu_devices != -1
  ):
    return None
  cores = usable_cores()
  if cores < 2:
    return None
  try:
    jax.config.update('jax_num_cpu_devices', cores)
  except RuntimeError:  # the backends started before this import
    return None
  _DEFAULT_CPU_DEVICES = cores
  return cores


def defaulted() -> bool:
  """Whether the devices are `use_every_core`'s CPU devices."""
  return (
    _DEFAULT_CPU_DEVICES is not None
    and jax.default_backend() == 'cpu'
    and jax.process_count() == 1
  )


# The least work (multiply-accumulates of one device's share of a batch's
# forward pass) for which the default devices split training. ResNet train
# steps on the 2-core AVX-512 EPYC, two devices against one (BENCHMARKS.md
# "Every core by default"): 0.91x at 81 M per device, 0.96x at 162 M,
# 1.11x at 182 M, 1.19-1.52x from 324 M to 8 G.
SPLIT_MACS = 250_000_000


def data_devices(
  sizes: Mapping[str, int], macs_per_example: int | None = None
) -> list[jax.Device]:
  """The devices a data-parallel run (training, evaluation) splits its
  batches over.

  Every device, after `check_batch_sizes`. Where the count is
  `use_every_core`'s default: the most devices that divide every batch
  size and still get at least `SPLIT_MACS` of forward work each from the
  smallest batch, else one. XLA:CPU runs most convolutions of a device on
  one core, so large steps gain from the split (ResNet-56 at batch 128:
  1.34x faster over two devices), while small ones lose to its overhead
  (the digits quickstart's ResNet-20 at batch 64: 0.91x).

  Args:
    sizes: config field -> batch size.
    macs_per_example: the model's forward multiply-accumulates for one
      example (`lpjax.flops.cost(arch).macs` in a run,
      `lpjax.train.forward_macs` in `lpjax.train.fit` and `evaluate`);
      None: unknown, one device under the default.
  """
  devices = jax.devices()
  if not defaulted():
    check_batch_sizes(sizes)
    return devices
  if macs_per_example is None or not sizes:
    return devices[:1]
  smallest = min(sizes.values())
  for d in range(len(devices), 1, -1):
    divides = all(size % d == 0 for size in sizes.values())
    if divides and macs_per_example * smallest >= d * SPLIT_MACS:
      return devices[:d]
  return devices[:1]


def auto_mesh(n: int, batch_size: int) -> Mesh | None:
  """The mesh a library call uses when it is given none.

  Where the devices are `use_every_core`'s default: a mesh over the most
  of them (2 or more) that split some batch of at most `batch_size` rows
  dividing `n` evenly; otherwise (one device, accelerators, several
  processes, or no such split) None: one device, as JAX does by default.
  """
  if not defaulted():
    return None
  devices = jax.devices()
  for d in range(len(devices), 1, -1):
    if any(n % b == 0 for b in range(d, min(batch_size, n) + 1, d)):
      return make_mesh(devices[:d])
  return None


def device_count_source() -> str:
  """Where the device count comes from, for messages.

  Returns:
    `' (JAX_NUM_CPU_DEVICES=3)'` on a CPU host that sets it, else `''`.
  """
  env = os.environ.get('JAX_NUM_CPU_DEVICES')
  if env and jax.default_backend() == 'cpu':
    return f' (JAX_NUM_CPU_DEVICES={env})'
  return ''


def check_batch_sizes(sizes: Mapping[str, int]) -> None:
  """Refuses batch sizes the data-parallel mesh cannot split, before work.

  Args:
    sizes: config field -> global batch size; each must be a multiple of
      `jax.device_count()` (every process's rows split over its devices).

  Raises:
    errors.ConfigError: naming the first field that is not, and the fix.
  """
  devices = jax.device_count()
  for field, size in sizes.items():
    if size % devices:
      fits = max(  # the most devices, up to now's, that fit every batch
        d
        for d in range(1, devices + 1)
        if all(s % d == 0 for s in sizes.values())
      )
      other = (
        f'set JAX_NUM_CPU_DEVICES={fits}'
        if device_count_source()
        else f'run on {fits} device(s)'
      )
      raise errors.ConfigError(
        f'{field}={size} is not a multiple of the {devices} devices'
        f'{device_count_source()} every batch is split over: use a multiple '
        f'of {devices} (--config.{field}=N), or {other}.'
      )


def _check_process_layout(mesh: Mesh) -> None:
  """Raises unless process i holds the i-th contiguous block of `mesh`."""
  processes = [d.process_index for d in mesh.devices.flat]
  count = jax.process_count()
  per_process = len(processes) // count
  expected = [i // per_process for i in range(per_process * count)]
  if processes != expected:
    raise ValueError(
      f'With {count} processes, the data-parallel mesh must hold every '
      "process's devices, process i's as the i-th contiguous block of "
      f"the {DATA_AXIS!r} axis (as make_mesh() orders them); this mesh's "
      f'devices belong to processes {processes}.'
    )


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
  """Places this process's rows of a batch on `mesh`, split along the rows.

  With one process, `batch` is the whole batch. With P processes, each
  process passes its own rows [i * B / P, (i + 1) * B / P) of the global
  batch of B (what `lpjax.data.Dataset` yields) and gets the
  global batch of B rows, assembled from every process's rows without
  copying data between processes.

  Args:
    batch: arrays with a common leading dimension: this process's rows.
    mesh: a mesh from `make_mesh`.

  Returns:
    The global batch as `jax.Array`s sharded `P('data')`.

  Raises:
    ValueError: if the rows are not a multiple of this process's devices
      in the mesh, or (several processes) the mesh does not give each
      process one contiguous block.
  """
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  count = jax.process_count()
  if count > 1:
    _check_process_layout(mesh)
  per_process = mesh.size // count
  out = {}
  for key, value in batch.items():
    shape = np.shape(value)
    n = shape[0]
    if n % per_process:
      raise ValueError(
        f'Batch size {n} (batch[{key!r}]) is not divisible by the '
        f'{per_process} devices of the data-parallel mesh; use a batch size '
        f'that is a multiple of {per_process}.'
      )
    out[key] = jax.make_array_from_process_local_data(
      sharding, value, (n * count, *shape[1:])
    )
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places `tree` on every device of `mesh` (sharding `P()`).

  Args:
    tree: a pytree of arrays, e.g. a `TrainState`.
    mesh: a mesh from `make_mesh`.

  Returns:
    The replicated tree.
  """
  return jax.device_put(tree, NamedSharding(mesh, P()))


# One JAX CPU device per core unless the count was chosen: before any JAX
# computation of the modules that import this one.
use_every_core()
