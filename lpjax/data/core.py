"""The `Dataset` every loader returns: readers, batching, augmentation.

A dataset is a set of splits, each a reader of raw examples by index
(`ArrayReader` in memory, `SourceReader` streamed from a TFDS data source)
with the keys of its examples, plus a transform that turns raw examples
into a normalized (and, for training, augmented) float32 batch. The
loaders of `lpjax.data` build the readers; `lpjax.data.load` splits off the
holdout, computes the normalization statistics and makes the `Dataset`.

Augmentation (`train_batches(augment=True)`, see `lpjax.data.AUGMENTATIONS`)
for the fixed-size datasets: the normalized image is zero-padded by `pad`
pixels per side (so the pad value is the mean pixel) and a random crop of
the original size is taken, then flipped horizontally with probability 0.5
if `flip`.

Determinism: every random choice is drawn from a numpy generator seeded by a
tuple of integers (a stream tag, the seed, the epoch, the step), so the
batches of epoch `e` do not depend on whether earlier epochs were iterated,
and a resumed run sees exactly the batches an uninterrupted run sees.

Batches are dicts of numpy arrays with a leading batch dimension that the
training code shards over devices: `batch_size` must be divisible by the
device count (the training code checks this, not this module).

Several processes (multi-host, `jax.distributed`): `batch_size` is the global
batch, and each of P processes reads, decodes and yields only its rows of
every global batch, rows [i * B / P, (i + 1) * B / P) for process i (by
default `jax.process_index()` of `jax.process_count()`), as
`lpjax.sharding.shard_batch` expects; B must be divisible by P. The rows and
their augmentation are exactly those of the one-process batch, and every
process yields the same number of batches. `calibration` is not split: every
process gets the whole (small, seed-determined) sample.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

NORMALIZATIONS = (
  'per_pixel_mean',
  'per_channel_mean',
  'per_channel_standardize',
  'none',
)

# Stream tags that keep the random streams of different purposes apart.
(
  STREAM_SHUFFLE,
  STREAM_AUGMENT,
  STREAM_CALIBRATION,
  STREAM_HOLDOUT,
  STREAM_SYNTHETIC,
  STREAM_DIGITS,
) = range(6)

READ_CHUNK = 1024  # Examples per `__getitems__` call for in-memory reads.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a loaded dataset.

  Attributes:
    name: one of `lpjax.data.DATASETS`.
    num_classes: number of classes; labels are in [0, num_classes).
    image_shape: [H, W, C] of the preprocessed images ([T, C] for series).
    num_train: examples in the 'train' split (without the holdout).
    num_test: examples in the 'test' split.
    num_holdout: examples in the 'holdout' split (0 without holdout).
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  num_holdout: int = 0


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training-time augmentation of one dataset.

  Attributes:
    pad: pixels of zero padding per side before a random crop back to the
      original size; 0 disables the random translation. ImageNet uses 0 and
      instead crops 224x224 at random from the image resized to 256.
    flip: whether to flip horizontally with probability 0.5.
  """

  pad: int
  flip: bool


def make_rng(*key: int) -> np.random.Generator:
  """A numpy generator seeded by the integers `key` (a stream tag first)."""
  return np.random.default_rng([int(k) for k in key])


def check_seed(seed: int, what: str = 'seed') -> None:
  """Raises `ValueError` unless `seed` is a non-negative integer."""
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'{what} must be a non-negative integer, got {seed!r}.')


def process_rows(
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> tuple[int, int]:
  """This process's rows `[lo, hi)` of every global batch of `batch_size`.

  Process i of P holds rows [i * B / P, (i + 1) * B / P), the block of the
  `'data'` mesh axis that `lpjax.sharding.make_mesh` gives its devices.

  Args:
    batch_size: the global batch size B.
    process_index: this process; None (with `process_count` None):
      `jax.process_index()`.
    process_count: the number of processes P; None: `jax.process_count()`.

  Raises:
    ValueError: if B is not divisible by P, or for an index outside [0, P).
  """
  if (process_index is None) != (process_count is None):
    raise ValueError(
      'Give both process_index and process_count, or neither (this JAX '
      f'process); got {process_index=}, {process_count=}.'
    )
  if process_index is None:
    import jax  # Lazily: this module is numpy-only otherwise.

    process_index, process_count = jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index={process_index} is not in [0, {process_count}).'
    )
  if batch_size % process_count:
    raise ValueError(
      f'The global batch size {batch_size} is not divisible by the '
      f'{process_count} processes; use a multiple of {process_count}.'
    )
  per_process = batch_size // process_count
  return process_index * per_process, (process_index + 1) * per_process


################################################################################
# Split readers: raw examples by index.
################################################################################


class ArrayReader:
  """A split held in memory.

  Attributes:
    images: [N, H, W, C] uint8 or float32 raw images (scaled by the transform).
    labels: [N] int32.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images = images
    self.labels = labels.astype(np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def read_labels(self, keys: np.ndarray) -> np.ndarray:
    return self.labels[keys]

  def read(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[keys], self.labels[keys]


class SourceReader:
  """A split streamed from a TFDS data source (random access)."""

  def __init__(self, source: Sequence[dict[str, Any]], pool_fn: Callable):
    self._source = source
    self._pool = pool_fn

  def __len__(self) -> int:
    return len(self._source)

  def _examples(self, keys: np.ndarray) -> list[dict[str, Any]]:
    return list(self._pool().map(self._source.__getitem__, keys.tolist()))

  def read_labels(self, keys: np.ndarray) -> np.ndarray:
    # The image feature cannot be skipped without TensorFlow: this decodes.
    return np.array([ex['label'] for ex in self._examples(keys)], np.int32)

  def read(self, keys: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    examples = self._examples(keys)
    labels = np.array([ex['label'] for ex in examples], np.int32)
    return [ex['image'] for ex in examples], labels


def _read_many(source: Sequence[dict[str, Any]], keys: list[int]) -> list:
  """Reads `keys` from a TFDS data source, batched when it supports it."""
  try:
    return source.__getitems__(keys)
  except TypeError:  # `tfds.testing.mock_data` breaks `__getitems__`.
    return [source[k] for k in keys]


def read_into_memory(
  source: Sequence[dict[str, Any]], image_shape: tuple[int, int, int]
) -> ArrayReader:
  """Decodes a whole TFDS split of fixed-size images into numpy arrays."""
  n = len(source)
  images = np.empty((n, *image_shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, READ_CHUNK):
    stop = min(start + READ_CHUNK, n)
    for i, ex in enumerate(_read_many(source, list(range(start, stop)))):
      images[start + i] = ex['image']
      labels[start + i] = ex['label']
  return ArrayReader(images, labels)


def thread_pool_fn() -> Callable[[], concurrent.futures.ThreadPoolExecutor]:
  """A function that returns one thread pool, created on its first call."""
  pool = None

  def get() -> concurrent.futures.ThreadPoolExecutor:
    nonlocal pool
    if pool is None:
      pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=min(16, os.cpu_count() or 1),
        thread_name_prefix='lpjax_input',
      )
    return pool

  return get


################################################################################
# Loaders: what `lpjax.data.load` asks of one dataset.
################################################################################


@dataclasses.dataclass(frozen=True)
class Request:
  """The arguments of `lpjax.data.load` that a loader reads.

  Attributes:
    name: the dataset's name (a key of `lpjax.data.LOADERS`).
    data_dir: TFDS data directory, or None for TFDS's default.
    manual_dir: where the downloaded archives are (only quoted in errors).
    seed: seed (>= 0) of generated data.
    synthetic: the `synthetic` options, or None.
    pool_fn: returns the thread pool of this `load` (decoding, transforms).
  """

  name: str
  data_dir: str | None
  manual_dir: str | None
  seed: int
  synthetic: dict[str, Any] | None
  pool_fn: Callable[[], concurrent.futures.ThreadPoolExecutor]


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset's raw splits, as a loader returns them.

  Attributes:
    readers: 'train' and 'test' split readers.
    num_classes: number of classes.
    image_shape: shape of one preprocessed example.
    augmentation: the training augmentation.
    scale: raw values times `scale` are in [0, 1] (before normalization).
    transform: `transform(normalization, reader, keys)` -> the batch
      transform, given the training examples `reader[keys]`; None: the
      in-memory normalization of `stats_transform`.
  """

  readers: dict[str, Any]
  num_classes: int
  image_shape: tuple[int, ...]
  augmentation: Augmentation
  scale: float = 1.0
  transform: Callable[[str, Any, np.ndarray], Callable] | None = None


@dataclasses.dataclass(frozen=True)
class Loader:
  """One entry of the loader registry `lpjax.data.LOADERS`.

  Attributes:
    read: `read(request) -> Source`, the dataset's splits.
    normalization: the default normalization.
    normalizations: the normalizations the dataset supports.
  """

  read: Callable[[Request], Source]
  normalization: str = 'per_pixel_mean'
  normalizations: tuple[str, ...] = NORMALIZATIONS


################################################################################
# Transforms: raw examples -> preprocessed float32 batch.
################################################################################


def pad_crop_flip(
  images: np.ndarray,
  *,
  pad: int,
  offsets: np.ndarray,
  flips: np.ndarray,
) -> np.ndarray:
  """Translates (and mirrors) a batch by cropping its zero-padded images.

  Args:
    images: [B, H, W, C].
    pad: zero padding per side.
    offsets: [B, 2] int crop offsets (row, column) in [0, 2 * pad].
    flips: [B] bool, whether to flip each crop horizontally.

  Returns:
    [B, H, W, C]: `crop = padded[b, oy:oy + H, ox:ox + W]`, reversed along W
    where `flips[b]`.
  """
  _, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.empty_like(images)
  # One strided copy per image: ~2x faster than a single fancy-index gather.
  for i, ((top, left), flip) in enumerate(zip(offsets, flips)):
    crop = padded[i, top : top + h, left : left + w]
    out[i] = crop[:, ::-1] if flip else crop
  return out


def draw_rows(n: int, rows: tuple[int, int] | None) -> tuple[slice, int]:
  """(which rows to keep, how many to draw) for `n` rows of a larger batch.

  Random augmentation parameters are drawn for the whole batch of `total`
  rows and sliced, so a process that holds rows `first..first + n` of a
  global batch augments them exactly as one process holding all of it.
  """
  first, total = (0, n) if rows is None else rows
  if not 0 <= first <= first + n <= total:
    raise ValueError(f'Rows {first}..{first + n} of a batch of {total}.')
  return slice(first, first + n), total


class ArrayTransform:
  """Normalizes and augments a batch of fixed-size images."""

  def __init__(
    self,
    *,
    scale: float,
    mean: np.ndarray,
    std: np.ndarray,
    augmentation: Augmentation,
  ):
    self.scale = np.float32(scale)
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self.augmentation = augmentation

  def __call__(
    self,
    raw: np.ndarray,
    rng: np.random.Generator | None,
    rows: tuple[int, int] | None = None,
  ) -> np.ndarray:
    """[B, H, W, C] raw -> [B, H, W, C] float32; augments iff `rng`.

    `rows=(first, total)`: `raw` are rows `first..` of a batch of `total`;
    the random draws are those of the whole batch (see `draw_rows`).
    """
    x = np.multiply(raw, self.scale, dtype=np.float32)
    x -= self.mean
    x /= self.std
    aug = self.augmentation
    if rng is None or (not aug.pad and not aug.flip):
      return x
    take, total = draw_rows(len(x), rows)
    offsets = rng.integers(0, 2 * aug.pad + 1, size=(total, 2))[take]
    flips = rng.random(total) < 0.5 if aug.flip else np.zeros(total, bool)
    return pad_crop_flip(x, pad=aug.pad, offsets=offsets, flips=flips[take])


def image_stats(
  reader: ArrayReader, keys: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean image [H, W, C] (or series [T, C]), channel mean [C] and channel
  std [C] (float64).

  One chunked pass; uint8 images are summed exactly in integers.
  """
  images = reader.images
  channels = images.shape[-1]
  exact = images.dtype == np.uint8
  acc, square = (np.int64, np.int32) if exact else (np.float64, np.float64)
  total = np.zeros(images.shape[1:], acc)
  total_sq = np.zeros(channels, acc)
  for start in range(0, len(keys), 1024):
    x = images[keys[start : start + 1024]]
    total += x.sum(axis=0, dtype=acc)
    flat = x.reshape(-1, channels).astype(square)
    total_sq += np.square(flat).sum(axis=0, dtype=acc)
  n = len(keys)
  mean_image = total * scale / n
  channel_mean = mean_image.reshape(-1, channels).mean(axis=0)
  pixels = n * int(np.prod(images.shape[1:-1]))
  channel_var = total_sq * scale**2 / pixels - np.square(channel_mean)
  return mean_image, channel_mean, np.sqrt(np.maximum(channel_var, 0))


def stats_transform(
  source: Source, normalization: str, reader: ArrayReader, keys: np.ndarray
) -> ArrayTransform:
  """The transform of an in-memory dataset, normalized with the statistics
  of the training examples `reader[keys]` (one of `NORMALIZATIONS`)."""
  channels = source.image_shape[-1]
  mean_image, channel_mean, channel_std = image_stats(
    reader, keys, source.scale
  )
  std = np.ones(channels)
  if normalization == 'per_pixel_mean':
    mean = mean_image
  elif normalization == 'per_channel_mean':
    mean = channel_mean
  elif normalization == 'per_channel_standardize':
    mean, std = channel_mean, channel_std
  else:
    mean = np.zeros(channels)
  return ArrayTransform(
    scale=source.scale, mean=mean, std=std, augmentation=source.augmentation
  )


################################################################################
# Dataset.
################################################################################


class Dataset:
  """A loaded dataset: split readers plus preprocessing; see `lpjax.data`.

  Attributes:
    info: static description (`DatasetInfo`).
    augmentation: training augmentation parameters (`Augmentation`).
    normalization: the normalization mode (one of `NORMALIZATIONS`).
    mean: float32 subtracted after scaling to [0, 1]: [H, W, C] for
      'per_pixel_mean', [C] otherwise.
    std: float32 [C] (or scalar 1) divided by after subtracting `mean`.
  """

  def __init__(
    self,
    *,
    info: DatasetInfo,
    splits: dict[str, tuple[Any, np.ndarray]],
    transform: Callable,
    augmentation: Augmentation,
    normalization: str,
  ):
    self.info = info
    self.augmentation = augmentation
    self.normalization = normalization
    self._splits = splits  # name -> (reader, int64 [n] keys into reader)
    self._transform = transform
    self.mean = transform.mean
    self.std = transform.std

  def __repr__(self) -> str:
    return f'Dataset({self.info}, normalization={self.normalization!r})'

  def _split(self, split: str) -> tuple[Any, np.ndarray]:
    if split not in self._splits:
      raise ValueError(
        f'Unknown split {split!r} for {self.info.name!r}; valid: '
        f"{sorted(self._splits)} ('holdout' needs load(holdout=...))."
      )
    return self._splits[split]

  def _load(
    self,
    split: str,
    positions: np.ndarray,
    rng: np.random.Generator | None,
    rows: tuple[int, int] | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
    reader, keys = self._split(split)
    if not len(positions):  # E.g. a process's share of a padded eval batch.
      shape = (0, *self.info.image_shape)
      return np.zeros(shape, np.float32), np.zeros(0, np.int32)
    raw, labels = reader.read(keys[positions])
    return self._transform(raw, rng, rows), labels

  def num_examples(self, split: str = 'train') -> int:
    """Number of examples in `split`."""
    return len(self._split(split)[1])

  def steps_per_epoch(self, batch_size: int) -> int:
    """Training batches per epoch (the remainder is dropped)."""
    return self.info.num_train // batch_size

  def train_batches(
    self,
    *,
    batch_size: int,
    epoch: int,
    seed: int,
    augment: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
  ) -> Iterator[dict[str, np.ndarray]]:
    """One training epoch, shuffled deterministically from (seed, epoch).

    The order and augmentation depend only on (seed, epoch, step), so a run
    resumed at epoch `e` sees exactly the batches an uninterrupted run sees.
    The last incomplete batch is dropped. With several processes, each
    reads and yields only its rows of every global batch (module docstring).

    Args:
      batch_size: examples per global batch (divisible by the device count
        and by the process count).
      epoch: epoch index (>= 0).
      seed: shuffle and augmentation seed (>= 0).
      augment: apply the dataset's `augmentation`.
      process_index: this process; None (with `process_count` None):
        `jax.process_index()`.
      process_count: processes sharing each batch; None:
        `jax.process_count()`.

    Yields:
      `steps_per_epoch(batch_size)` dicts with 'image': float32
      [B / P, H, W, C] and 'label': int32 [B / P]: rows
      [i * B / P, (i + 1) * B / P) of each global batch for process i of P.

    Raises:
      ValueError: bad arguments, or `batch_size` not divisible by P.
    """
    check_seed(seed)
    check_seed(epoch, 'epoch')
    n = self.info.num_train
    if not 1 <= batch_size <= n:
      raise ValueError(
        f'batch_size={batch_size} must be in [1, num_train={n}].'
      )
    lo, hi = process_rows(batch_size, process_index, process_count)
    order = make_rng(STREAM_SHUFFLE, seed, epoch).permutation(n)
    for step in range(self.steps_per_epoch(batch_size)):
      start = step * batch_size
      positions = order[start + lo : start + hi]
      rng = make_rng(STREAM_AUGMENT, seed, epoch, step) if augment else None
      images, labels = self._load('train', positions, rng, (lo, batch_size))
      yield {'image': images, 'label': labels}

  def eval_batches(
    self,
    *,
    split: str = 'test',
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
  ) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` exactly once, in a fixed order.

    All global batches have `batch_size` examples: the last one is
    zero-padded. With several processes, each reads and yields only its
    rows of every global batch (module docstring); every process yields
    `ceil(n / batch_size)` batches, some possibly all padding.

    Args:
      split: 'test', 'train' or 'holdout'.
      batch_size: examples per global batch (divisible by the process
        count).
      process_index, process_count: as for `train_batches`.

    Yields:
      Dicts with 'image': float32 [B / P, H, W, C] (un-augmented), 'label':
      int32 [B / P] and 'mask': float32 [B / P] (1 for real examples, 0 for
      padding): rows [i * B / P, (i + 1) * B / P) of each global batch.
    """
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {batch_size}.')
    lo, hi = process_rows(batch_size, process_index, process_count)
    n = self.num_examples(split)
    for start in range(0, n, batch_size):
      positions = np.arange(min(start + lo, n), min(start + hi, n))
      images, labels = self._load(split, positions, None)
      mask = np.ones(hi - lo, np.float32)
      pad = hi - lo - len(positions)
      if pad:
        images = np.concatenate(
          [images, np.zeros((pad, *self.info.image_shape), images.dtype)]
        )
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        mask[len(positions) :] = 0
      yield {'image': images, 'label': labels, 'mask': mask}

  def calibration(
    self,
    *,
    num_examples: int,
    seed: int,
    split: str = 'train',
    per_class: bool = True,
  ) -> dict[str, np.ndarray]:
    """A fixed sample of un-augmented examples for scoring pruning criteria.

    Not split between processes: every process gets the whole sample (the
    same on each), and scoring places it on the mesh itself.

    With `per_class`, every class gets `num_examples // num_classes` examples
    and `num_examples % num_classes` classes chosen from `seed` get one more;
    otherwise the sample is uniform. Within a class the examples are the first
    ones of a `seed`-determined permutation of `split`, so a larger sample
    contains a smaller one with the same seed. For ImageNet, per-class
    sampling decodes examples until every quota is met.

    Args:
      num_examples: sample size.
      seed: sampling seed (>= 0).
      split: 'train', 'holdout' or 'test'.
      per_class: class-balanced sample.

    Returns:
      'image': float32 [N, H, W, C] eval-preprocessed, 'label': int32 [N].

    Raises:
      ValueError: if `split` has too few examples (of some class).
    """
    check_seed(seed)
    reader, keys = self._split(split)
    n = len(keys)
    if not 1 <= num_examples <= n:
      raise ValueError(f'num_examples must be in [1, {n}], got {num_examples}.')
    rng = make_rng(STREAM_CALIBRATION, seed)
    order = rng.permutation(n)
    if not per_class:
      positions = order[:num_examples]
    else:
      num_classes = self.info.num_classes
      quota = np.full(num_classes, num_examples // num_classes)
      # A prefix of a class permutation: quotas grow with `num_examples`.
      quota[rng.permutation(num_classes)[: num_examples % num_classes]] += 1
      chunk = n if isinstance(reader, ArrayReader) else 256
      chosen = []
      for start in range(0, n, chunk):
        block = order[start : start + chunk]
        for pos, label in zip(block, reader.read_labels(keys[block])):
          if quota[label] > 0:
            quota[label] -= 1
            chosen.append(pos)
        if len(chosen) == num_examples:
          break
      if len(chosen) < num_examples:
        short = np.flatnonzero(quota).tolist()
        raise ValueError(
          f'Split {split!r} has too few examples of classes {short} for a '
          f'class-balanced sample of {num_examples}.'
        )
      positions = np.array(chosen, np.int64)
    images, labels = self._load(split, positions, None)
    return {'image': images, 'label': labels}
