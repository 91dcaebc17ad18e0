"""Representations of every single-unit removal, in one compiled call.

`candidate_representations` runs the unpruned forward and, for every
candidate unit, the forward with that unit skipped, and returns the chosen
representation of each: `[1 + num_candidates, n, ...]`. It is one jitted XLA
computation, `lax.map`ped over batches of the calibration data, with two
ways to evaluate the candidates:

* shared prefix (`candidate_chunk=None`, the default, for families with a
  `fanout` pass; the others get every masked forward at once): one pass of
  the model
  with `fanout=True`. Everything before candidate i is the same for the
  unpruned model and the model without i, so it is computed once; at each
  candidate the batch gains a stream that carries the block's input past
  it. For the CIFAR ResNets this is about half the work of the masked
  forwards (ResNet-56: 327 block evaluations instead of 627; a loop of
  separate forwards of the 24 smaller models and the full one does 651).
* masked (`candidate_chunk=c`): the full forward `vmap`ped over one-hot skip
  masks, `c` masks at a time (`lax.map`), so memory is bounded by
  `data_batch_size` images x `c` forwards. About twice the arithmetic (vmap
  shares only the blocks before the first candidate); for models whose
  fanout does not fit in memory.

Both give the same numbers (tested), equal to a loop of separate forwards
of the surgered models. Every forward is in eval mode and sees the same
images.

`score_candidates` turns those into per-candidate scores with a similarity
function (1 - linear CKA against the unpruned representation, by default).
`map_batches` is the same compiled batching for any other per-batch
statistic of a model (e.g. every unit's input and output, for ShortGPT's
block influence).

Inputs are cast to the family's input dtype (float images and series, int
tokens); representations of any rank are flattened per example
(`[n, H, W, C]` or `[n, T, D]` -> `[n, features]`) before the similarity.

Compiled functions are cached per (model, representation, chunking, shapes),
so re-scoring a model of the same arch after fine-tuning does not retrace.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lpjax import arch as arch_lib
from lpjax import cka, models, sharding

# (reference [n, ...], candidates [k, n, ...]) -> similarity [k].
SimilarityFn = Callable[[jax.Array, jax.Array], jax.Array]


def _representations_fn(
  arch: arch_lib.Arch,
  representation: str,
  candidate_chunk: int | None,
  mesh: Mesh | None = None,
):
  """Un-jitted (variables, xs) -> [1 + K, n, ...], composed below.

  With a mesh, each device runs the pass on its own rows of every batch
  (`shard_map`): the streams a fanout pass appends never cross devices.
  """
  if candidate_chunk is not None and candidate_chunk < 1:
    raise ValueError(
      f'candidate_chunk must be None (shared-prefix pass) or a positive '
      f'number of masked forwards; got {candidate_chunk}.'
    )
  model = models.build_model(arch)
  fanout = models.get_family(arch.family).fanout
  num = len(arch.candidates)
  # Row 0 skips nothing (the reference); row 1 + i skips candidate i.
  masks = jnp.concatenate(
    [jnp.zeros((1, num), bool), jnp.eye(num, dtype=bool)], axis=0
  )

  def one(variables, x, mask):
    reps = models.representations(
      model, variables, x, [representation], skip=mask
    )
    return reps[representation]

  def batch(variables, x):
    if candidate_chunk is None and fanout:
      reps = models.representations(
        model, variables, x, [representation], fanout=True
      )
      return reps[representation]
    if candidate_chunk is None or candidate_chunk >= num + 1:
      return jax.vmap(one, in_axes=(None, None, 0))(variables, x, masks)
    return jax.lax.map(
      lambda m: one(variables, x, m), masks, batch_size=candidate_chunk
    )

  if mesh is not None:
    batch = jax.shard_map(
      batch,
      mesh=mesh,
      in_specs=(PartitionSpec(), PartitionSpec(sharding.DATA_AXIS)),
      out_specs=PartitionSpec(None, sharding.DATA_AXIS),
    )

  def run(variables, xs):
    # xs: [num_batches, batch, ...] -> [num_batches, 1 + K, batch, ...]
    out = jax.lax.map(lambda x: batch(variables, x), xs)
    out = jnp.moveaxis(out, 1, 0)  # [1 + K, num_batches, batch, ...]
    return out.reshape(out.shape[0], -1, *out.shape[3:])

  return run


@functools.lru_cache(maxsize=32)
def _compiled_representations(arch, representation, candidate_chunk, mesh=None):
  return jax.jit(
    _representations_fn(arch, representation, candidate_chunk, mesh)
  )


@functools.lru_cache(maxsize=32)
def _compiled_scores(
  arch, representation, candidate_chunk, similarity, mesh=None
):
  reps_fn = _representations_fn(arch, representation, candidate_chunk, mesh)

  @jax.jit
  def run(variables, xs):
    reps = reps_fn(variables, xs)
    return 1.0 - similarity(reps[0], reps[1:])

  return run


def _batch_size(n: int, requested: int, devices: int) -> int:
  """Largest b <= requested dividing n (and a multiple of `devices`)."""
  for b in range(min(requested, n), 0, -1):
    if n % b == 0 and b % devices == 0:
      return b
  raise ValueError(
    f'Cannot split {n} calibration examples into batches divisible by '
    f'{devices} devices; use a multiple of {devices} examples.'
  )


def candidate_representations(
  arch: arch_lib.Arch,
  variables,
  images: np.ndarray | jax.Array,
  *,
  representation: str = 'pooled',
  data_batch_size: int = 500,
  candidate_chunk: int | None = None,
  mesh: Mesh | None = None,
) -> jax.Array:
  """Representations of the unpruned model and of every 1-unit removal.

  Args:
    arch: the network; its `candidates` define the order of the output.
    variables: `{'params', 'batch_stats'}`.
    images: calibration inputs `[n, ...]` (images, series or tokens).
    representation: `'pooled'`, `'logits'`, `'stem'` or a unit name (see
      `lpjax.models.representations`).
    data_batch_size: images per forward pass; the largest divisor of `n` not
      above it is used.
    candidate_chunk: `None` (default): every candidate in one shared-prefix
      pass (least work; families without one: every masked forward at
      once). An int: masked forwards, that many at a time (bounds memory at
      about twice the work).
    mesh: device mesh with a `'data'` axis; each device runs the pass on
      its share of every batch. Default: `lpjax.sharding.auto_mesh` (every
      CPU core where lpjax chose the device count, else one device).

  Returns:
    `[1 + len(arch.candidates), n, ...]`: row 0 is the unpruned model.
  """
  mesh = _mesh(images, data_batch_size, mesh)
  fn = _compiled_representations(arch, representation, candidate_chunk, mesh)
  return fn(
    *_prepare(arch, variables, images, representation, data_batch_size, mesh)
  )


def _mesh(images, data_batch_size: int, mesh: Mesh | None) -> Mesh | None:
  """`mesh`, or the default one for `images` (`sharding.auto_mesh`)."""
  if mesh is not None:
    return mesh
  return sharding.auto_mesh(int(np.shape(images)[0]), data_batch_size)


def _prepare(arch, variables, images, representation, data_batch_size, mesh):
  """Checks inputs; batches and (optionally) shards the images."""
  if representation not in models.representation_names(arch):
    raise KeyError(
      f'Representation {representation!r} does not exist in this model; '
      f'valid names: {list(models.representation_names(arch))}.'
    )
  if not arch.candidates:
    raise ValueError(f'{arch.summary()} has no candidate units to score.')
  return batch_inputs(arch, variables, images, data_batch_size, mesh)


def batch_inputs(arch, variables, inputs, data_batch_size, mesh):
  """`(variables, [num_batches, b, ...] inputs)`, placed on `mesh` if given.

  The inputs are the whole calibration set, the same on every process (not
  one process's rows, unlike training batches): with a mesh, each process
  copies only the slices its own devices hold (`P(None, 'data')`) and the
  variables are replicated, so scores are global and equal everywhere.
  """
  images = np.asarray(inputs, models.input_dtype(arch))
  n = images.shape[0]
  devices = mesh.size if mesh is not None else 1
  b = _batch_size(n, data_batch_size, devices)
  xs = images.reshape(n // b, b, *images.shape[1:])
  if mesh is not None:
    sharding = NamedSharding(mesh, PartitionSpec(None, 'data'))
    xs = jax.make_array_from_callback(xs.shape, sharding, xs.__getitem__)
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
  return variables, xs


def flatten(ref: jax.Array, cands: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`[n, ...]`, `[k, n, ...]` -> `[n, d]`, `[k, n, d]` (features per example)."""
  n = ref.shape[0]
  return ref.reshape(n, -1), cands.reshape(*cands.shape[:2], -1)


def cka_similarity(ref: jax.Array, cands: jax.Array) -> jax.Array:
  """Linear CKA (papers' biased form) of `ref` against each candidate."""
  return cka.linear_cka_one_to_many(*flatten(ref, cands))


def score_candidates(
  arch: arch_lib.Arch,
  variables,
  images: np.ndarray | jax.Array,
  *,
  similarity: SimilarityFn = cka_similarity,
  representation: str = 'pooled',
  data_batch_size: int = 500,
  candidate_chunk: int | None = None,
  mesh: Mesh | None = None,
  similarity_dtype: str = 'float32',
) -> dict[str, float]:
  """`1 - similarity(unpruned, without unit)` for every candidate unit.

  Lower = removing the unit changes the representation less = more
  removable. Scores are keyed by unit id, never by position.

  Args:
    arch, variables, images, representation, data_batch_size,
    candidate_chunk, mesh: as for `candidate_representations`.
    similarity: maps (reference `[n, ...]`, candidates `[k, n, ...]`) to
      `[k]` (see `flatten`).
    similarity_dtype: `'float32'` (default): forwards and similarity in
      one compiled call. `'float64'`: the forwards stay float32 (one
      compiled call), the similarity step runs in float64 (a second compiled
      call under `jax.enable_x64`), for rankings that hinge on score
      differences near float32 resolution.

  Returns:
    `{unit_id: score}` in network order.

  Raises:
    FloatingPointError: naming the candidates whose scores are not finite.
  """
  if similarity_dtype not in SIMILARITY_DTYPES:
    raise ValueError(
      f'Unknown similarity_dtype {similarity_dtype!r}; valid: '
      f'{SIMILARITY_DTYPES}.'
    )
  mesh = _mesh(images, data_batch_size, mesh)
  inputs = _prepare(
    arch, variables, images, representation, data_batch_size, mesh
  )
  if similarity_dtype == 'float32':
    fn = _compiled_scores(
      arch, representation, candidate_chunk, similarity, mesh
    )
    return checked_scores(arch.candidates, fn(*inputs))
  reps = _compiled_representations(arch, representation, candidate_chunk, mesh)(
    *inputs
  )
  reps = np.asarray(reps, np.float64)
  with jax.enable_x64(True):
    sim = _similarity64(similarity)(reps[0], reps[1:])
    return checked_scores(arch.candidates, 1.0 - np.asarray(sim))


SIMILARITY_DTYPES = ('float32', 'float64')


@functools.lru_cache(maxsize=8)
def _similarity64(similarity):
  return jax.jit(similarity)


def checked_scores(names, values) -> dict[str, float]:
  """`{name: float64 score}`; raises if any score is NaN or infinite."""
  scores = np.asarray(values, np.float64)
  if not np.all(np.isfinite(scores)):
    bad = [c for c, s in zip(names, scores) if not np.isfinite(s)]
    raise FloatingPointError(
      f'Scores of {bad} are not finite: the representation is constant or '
      'non-finite on the calibration data (a collapsed or diverged model, '
      'or too few calibration examples).'
    )
  return dict(zip(names, scores.tolist()))


# (model, variables, x [b, ...]) -> any pytree of arrays.
BatchFn = Callable[[Any, Any, jax.Array], Any]


@functools.lru_cache(maxsize=32)
def _compiled_map(arch, fn):
  model = models.build_model(arch)
  return jax.jit(
    lambda variables, xs: jax.lax.map(lambda x: fn(model, variables, x), xs)
  )


def map_batches(
  fn: BatchFn,
  arch: arch_lib.Arch,
  variables,
  inputs: np.ndarray | jax.Array,
  *,
  data_batch_size: int = 500,
  mesh: Mesh | None = None,
) -> Any:
  """`fn` on every batch of `inputs`, in one compiled call.

  Args:
    fn: `fn(model, variables, x)` for a batch `x` `[b, ...]`, returning a
      pytree of arrays; a module-level function (it keys the compile cache,
      so the same `(arch, fn)` never retraces).
    arch, variables: the model.
    inputs: `[n, ...]`, cast to the family's input dtype.
    data_batch_size: examples per batch; the largest divisor of `n` not
      above it is used, so every batch has the same size.
    mesh: optional device mesh with a `'data'` axis.

  Returns:
    `fn`'s pytree with a leading `[num_batches]` axis.
  """
  return _compiled_map(arch, fn)(
    *batch_inputs(arch, variables, inputs, data_batch_size, mesh)
  )
