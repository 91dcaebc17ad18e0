"""Input pipelines that yield numpy batches.

`load(name, ...)` returns a `Dataset` for one of `DATASETS`:

* `'digits'`: scikit-learn's 1,797 real 8x8 grayscale digits, scaled from
  0..16 to [0, 1], image shape (8, 8, 1). A fixed (seed-independent)
  stratified split puts round(20%) of every class into 'test': 1,438 train
  and 359 test examples.
* `'synthetic'`: random images with real class structure (one smooth
  low-frequency template per class plus Gaussian pixel noise), generated from
  `seed`; shapes and sizes are set with the `synthetic` dict (see
  `SYNTHETIC_DEFAULTS`). Used by tests.
* `'cifar10'` / `'cifar100'`: read with `tfds.data_source` from an
  array_record-prepared TFDS `data_dir` (no TensorFlow needed). Both splits are
  decoded once per `load()` into uint8 arrays kept in memory (~150 MB train,
  ~30 MB test): random access to 50k small PNG records one by one would
  dominate the step time, and the normalization statistics need a full pass
  anyway. Nothing is written to `data_dir`, which may be read-only or shared.
* `'basicmotions'`: real wearable-sensor human activity recognition, as
  bundled by `aeon` (fetched with `lpjax.interop.weights.fetch('aeon')`,
  the wheel only): a smartwatch's 3-D accelerometer and 3-D gyroscope at
  10 Hz for 10 s, four activities (standing, running, walking, badminton),
  40 train and 40 test recordings of shape (100, 6).
* `'japanesevowels'`: nine speakers uttering the vowels /ae/, 12 LPC
  cepstrum coefficients per frame; aeon's equal-length version, 270 train
  and 370 test series of shape (25, 12).
  Series default to `'per_channel_standardize'` (train statistics) and have
  no augmentation.
* `'imagenet2012'`: streamed with `tfds.data_source` (random access, decoded
  uint8 images), never held in memory. Our 'test' split is TFDS 'validation'
  (the 50k labelled images). Train: shorter side resized to 256 (bilinear,
  PIL), random 224x224 crop, random horizontal flip. Eval: resize to 256,
  center 224x224 crop. Images and labels are decoded in a thread pool; this
  is a simple pipeline, not a tuned ImageNet loader.

TFDS datasets are never downloaded: a dataset that is not prepared raises
`DatasetNotPreparedError` at once with instructions. Only this module imports
`tensorflow_datasets`, lazily, when a TFDS dataset is loaded.

Normalization (`load(normalization=...)`), with statistics computed from the
training examples (the train split minus any holdout) of in-memory datasets:

* `'per_pixel_mean'` (default for the image datasets but ImageNet): x /
  scale minus the mean
  image of the training set, no division by a std; as in the ResNet CIFAR
  papers.
* `'per_channel_mean'`: minus the per-channel mean.
* `'per_channel_standardize'`: minus the per-channel mean, divided by the
  per-channel std. The default of the sensor series. The ImageNet default, with the standard ImageNet constants
  mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) on x / 255 (the
  convention of torchvision's pretrained ResNets); ImageNet supports no
  per-pixel mean (images vary in size).
* `'none'`: x / scale in [0, 1].

Augmentation (`train_batches(augment=True)`, see `AUGMENTATIONS`) for the
fixed-size datasets: the normalized image is zero-padded by `pad` pixels per
side (so the pad value is the mean pixel) and a random crop of the original
size is taken, then flipped horizontally with probability 0.5 if `flip`.
CIFAR: pad 4 + flip. Digits: pad 1, no flip (digits are not mirror
invariant). Synthetic: pad H // 8, no flip.

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
`lpjax.train.shard_batch` expects; B must be divisible by P. The rows and
their augmentation are exactly those of the one-process batch, and every
process yields the same number of batches. `calibration` is not split: every
process gets the whole (small, seed-determined) sample.

Holdout: `load(holdout=f)` moves round(f * N) examples of the train split,
chosen uniformly at random from `seed` (not stratified), into a separate
'holdout' split used for model selection or calibration; 'train' then means
the remaining examples, also for the normalization statistics.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

DATASETS = (
  'digits',
  'synthetic',
  'basicmotions',
  'japanesevowels',
  'cifar10',
  'cifar100',
  'imagenet2012',
)
# Series datasets bundled with aeon: name -> files (train, test).
SERIES = {
  'basicmotions': (
    'BasicMotions/BasicMotions_TRAIN.ts',
    'BasicMotions/BasicMotions_TEST.ts',
  ),
  'japanesevowels': (
    'JapaneseVowels/JapaneseVowels_eq_TRAIN.ts',
    'JapaneseVowels/JapaneseVowels_eq_TEST.ts',
  ),
}
NORMALIZATIONS = (
  'per_pixel_mean',
  'per_channel_mean',
  'per_channel_standardize',
  'none',
)

# Defaults of the `synthetic` dict accepted by `load('synthetic', ...)`.
SYNTHETIC_DEFAULTS = {
  'image_shape': (32, 32, 3),
  'num_classes': 10,
  'num_train': 1024,
  'num_test': 256,
  # Std of the Gaussian pixel noise relative to the (unit-std) templates.
  'noise': 1.0,
}

# Fraction of each digits class that goes to the 'test' split.
DIGITS_TEST_FRACTION = 0.2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224

# Test-only distribution-shifted CIFAR-10 sets in TFDS, read by
# `load_test_set` and evaluated with a CIFAR-10 run's preprocessing:
# CIFAR-10.1 (Recht et al. 2019) and CIFAR-10-C (Hendrycks & Dietterich
# 2019; a TFDS config per corruption and severity, e.g. 'fog_5').
TEST_SETS = ('cifar10_1', 'cifar10_corrupted')

# Our split name -> TFDS split name.
_TFDS_SPLITS = {
  'cifar10': {'train': 'train', 'test': 'test'},
  'cifar100': {'train': 'train', 'test': 'test'},
  'imagenet2012': {'train': 'train', 'test': 'validation'},
}
_TFDS_ARCHIVES = {
  'cifar10_1': 'nothing (TFDS downloads CIFAR-10.1 from GitHub)',
  'cifar10_corrupted': 'nothing (TFDS downloads CIFAR-10-C.tar from Zenodo)',
  'cifar10': 'cifar-10-binary.tar.gz',
  'cifar100': 'cifar-100-binary.tar.gz',
  'imagenet2012': (
    'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from '
    'https://image-net.org/download-images after registering)'
  ),
}

# Stream tags that keep the random streams of different purposes apart.
_SHUFFLE, _AUGMENT, _CALIBRATION, _HOLDOUT, _SYNTHETIC, _DIGITS = range(6)

_READ_CHUNK = 1024  # Examples per `__getitems__` call for in-memory reads.


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is not prepared (in array_record format) in `data_dir`."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a loaded dataset.

  Attributes:
    name: one of `DATASETS`.
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


AUGMENTATIONS = {
  'digits': Augmentation(pad=1, flip=False),
  'cifar10': Augmentation(pad=4, flip=True),
  'cifar100': Augmentation(pad=4, flip=True),
  'imagenet2012': Augmentation(pad=0, flip=True),
  'basicmotions': Augmentation(pad=0, flip=False),
  'japanesevowels': Augmentation(pad=0, flip=False),
  # 'synthetic': Augmentation(pad=H // 8, flip=False), set in `load`.
}


def _rng(*key: int) -> np.random.Generator:
  return np.random.default_rng([int(k) for k in key])


def _check_seed(seed: int, what: str = 'seed') -> None:
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'{what} must be a non-negative integer, got {seed!r}.')


def process_rows(
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> tuple[int, int]:
  """This process's rows `[lo, hi)` of every global batch of `batch_size`.

  Process i of P holds rows [i * B / P, (i + 1) * B / P), the block of the
  `'data'` mesh axis that `lpjax.train.make_mesh` gives its devices.

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


class _ArrayReader:
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


class _SourceReader:
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


def _read_into_memory(
  source: Sequence[dict[str, Any]], image_shape: tuple[int, int, int]
) -> _ArrayReader:
  """Decodes a whole TFDS split of fixed-size images into numpy arrays."""
  n = len(source)
  images = np.empty((n, *image_shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _READ_CHUNK):
    stop = min(start + _READ_CHUNK, n)
    for i, ex in enumerate(_read_many(source, list(range(start, stop)))):
      images[start + i] = ex['image']
      labels[start + i] = ex['label']
  return _ArrayReader(images, labels)


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


class _ArrayTransform:
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
    the random draws are those of the whole batch (see `_draw_rows`).
    """
    x = np.multiply(raw, self.scale, dtype=np.float32)
    x -= self.mean
    x /= self.std
    aug = self.augmentation
    if rng is None or (not aug.pad and not aug.flip):
      return x
    take, total = _draw_rows(len(x), rows)
    offsets = rng.integers(0, 2 * aug.pad + 1, size=(total, 2))[take]
    flips = rng.random(total) < 0.5 if aug.flip else np.zeros(total, bool)
    return pad_crop_flip(x, pad=aug.pad, offsets=offsets, flips=flips[take])


def _draw_rows(n: int, rows: tuple[int, int] | None) -> tuple[slice, int]:
  """(which rows to keep, how many to draw) for `n` rows of a larger batch.

  Random augmentation parameters are drawn for the whole batch of `total`
  rows and sliced, so a process that holds rows `first..first + n` of a
  global batch augments them exactly as one process holding all of it.
  """
  first, total = (0, n) if rows is None else rows
  if not 0 <= first <= first + n <= total:
    raise ValueError(f'Rows {first}..{first + n} of a batch of {total}.')
  return slice(first, first + n), total


def _resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image

  h, w = image.shape[:2]
  scale = size / min(h, w)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))


class _ImageNetTransform:
  """Resize + crop (+ flip) per image, then normalize the stacked batch."""

  def __init__(
    self,
    *,
    mean: np.ndarray,
    std: np.ndarray,
    flip: bool,
    pool_fn: Callable,
  ):
    self.scale = np.float32(1 / 255)
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self.flip = flip
    self._pool = pool_fn

  def __call__(
    self,
    raw: list[np.ndarray],
    rng: np.random.Generator | None,
    rows: tuple[int, int] | None = None,
  ) -> np.ndarray:
    """B images [h_i, w_i, 3] uint8 -> [B, 224, 224, 3] float32.

    `rows`: as for `_ArrayTransform`.
    """
    n = len(raw)
    if rng is None:
      fracs, flips = np.full((n, 2), 0.5), np.zeros(n, bool)
    else:
      take, total = _draw_rows(n, rows)
      fracs = rng.random((total, 2))[take]
      flips = rng.random(total) < 0.5 if self.flip else np.zeros(total, bool)
      flips = flips[take]

    def one(i: int) -> np.ndarray:
      image = _resize_shorter(raw[i], IMAGENET_RESIZE)
      h, w = image.shape[:2]
      if rng is None:  # Center crop.
        top, left = (h - IMAGENET_CROP) // 2, (w - IMAGENET_CROP) // 2
      else:
        top = int(fracs[i, 0] * (h - IMAGENET_CROP + 1))
        left = int(fracs[i, 1] * (w - IMAGENET_CROP + 1))
      crop = image[top : top + IMAGENET_CROP, left : left + IMAGENET_CROP]
      return crop[:, ::-1] if flips[i] else crop

    x = np.stack(list(self._pool().map(one, range(n)))).astype(np.float32)
    return (x * self.scale - self.mean) / self.std


################################################################################
# Dataset.
################################################################################


class Dataset:
  """A loaded dataset: split readers plus preprocessing; see module docstring.

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
    _check_seed(seed)
    _check_seed(epoch, 'epoch')
    n = self.info.num_train
    if not 1 <= batch_size <= n:
      raise ValueError(
        f'batch_size={batch_size} must be in [1, num_train={n}].'
      )
    lo, hi = process_rows(batch_size, process_index, process_count)
    order = _rng(_SHUFFLE, seed, epoch).permutation(n)
    for step in range(self.steps_per_epoch(batch_size)):
      start = step * batch_size
      positions = order[start + lo : start + hi]
      rng = _rng(_AUGMENT, seed, epoch, step) if augment else None
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
    _check_seed(seed)
    reader, keys = self._split(split)
    n = len(keys)
    if not 1 <= num_examples <= n:
      raise ValueError(f'num_examples must be in [1, {n}], got {num_examples}.')
    rng = _rng(_CALIBRATION, seed)
    order = rng.permutation(n)
    if not per_class:
      positions = order[:num_examples]
    else:
      num_classes = self.info.num_classes
      quota = np.full(num_classes, num_examples // num_classes)
      # A prefix of a class permutation: quotas grow with `num_examples`.
      quota[rng.permutation(num_classes)[: num_examples % num_classes]] += 1
      chunk = n if isinstance(reader, _ArrayReader) else 256
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


################################################################################
# Sources.
################################################################################


def _load_digits() -> dict[str, _ArrayReader]:
  from sklearn import datasets

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  rng = _rng(_DIGITS)
  is_test = np.zeros(len(labels), bool)
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    is_test[members[: int(DIGITS_TEST_FRACTION * len(members) + 0.5)]] = True
  return {
    'train': _ArrayReader(images[~is_test], labels[~is_test]),
    'test': _ArrayReader(images[is_test], labels[is_test]),
  }


class SeriesFileError(ValueError):
  """A `.ts` series file that cannot be read, naming the file and line."""


def read_ts(path: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """An equal-length, labelled `.ts` file (the UCR/UEA archive format).

  Header lines start with `@` (`@classLabel true A B ...` names the
  classes, in label order), comments with `#`; after `@data` every line is
  one series: per channel, comma-separated values, channels separated by
  `:`, the class name last.

  Returns:
    `(series [n, T, C] float32, labels [n] int32, class names)`.

  Raises:
    SeriesFileError: no class labels, an unknown class, missing values,
      or series of different lengths or channel counts.
  """
  classes: tuple[str, ...] = ()
  rows, labels = [], []
  in_data = False
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      if not in_data:
        low = line.lower()
        if low.startswith('@classlabel'):
          parts = line.split()
          if len(parts) < 3 or parts[1].lower() != 'true':
            raise SeriesFileError(f'{path}:{number}: no class labels.')
          classes = tuple(parts[2:])
        elif low.startswith('@data'):
          in_data = True
        continue
      *channels, label = line.split(':')
      if not classes:
        raise SeriesFileError(
          f'{path}:{number}: no `@classLabel true ...` line before the data.'
        )
      if label not in classes:
        raise SeriesFileError(
          f'{path}:{number}: class {label!r} is not among {classes}.'
        )
      try:
        series = np.array(
          [[float(v) for v in c.split(',')] for c in channels], np.float64
        )
      except ValueError as e:
        raise SeriesFileError(
          f'{path}:{number}: ragged or non-numeric series ({e}); only '
          'equal-length series without missing values are read.'
        ) from None
      if not np.all(np.isfinite(series)):
        raise SeriesFileError(f'{path}:{number}: missing or infinite values.')
      if rows and series.shape != rows[0].shape:
        raise SeriesFileError(
          f'{path}:{number}: series of shape {series.shape[::-1]} after '
          f'{rows[0].shape[::-1]} (steps, channels); lengths must be equal.'
        )
      rows.append(series)
      labels.append(classes.index(label))
  if not rows:
    raise SeriesFileError(f'{path}: no series after @data.')
  x = np.stack(rows).transpose(0, 2, 1).astype(np.float32)
  return x, np.asarray(labels, np.int32), classes


def _load_series(name: str) -> tuple[dict[str, _ArrayReader], int]:
  from lpjax.interop import weights

  folder = weights.fetch('aeon')
  train_file, test_file = SERIES[name]
  x_tr, y_tr, classes = read_ts(str(folder / train_file))
  x_te, y_te, classes_te = read_ts(str(folder / test_file))
  if classes_te != classes or x_te.shape[1:] != x_tr.shape[1:]:
    raise SeriesFileError(
      f'{name}: train and test files disagree on classes or shapes.'
    )
  readers = {
    'train': _ArrayReader(x_tr, y_tr),
    'test': _ArrayReader(x_te, y_te),
  }
  return readers, len(classes)


def _make_synthetic(
  *,
  seed: int,
  image_shape: Sequence[int],
  num_classes: int,
  num_train: int,
  num_test: int,
  noise: float,
) -> dict[str, _ArrayReader]:
  """Class templates (sums of random low-frequency cosines) plus noise."""
  h, w, c = (int(d) for d in image_shape)
  rng = _rng(_SYNTHETIC, seed)
  waves = 4
  freqs = rng.integers(0, 3, size=(2, num_classes, c, waves, 1, 1))
  freqs[0] += (freqs[0] + freqs[1]) == 0  # No constant waves.
  phases = rng.uniform(0, 2 * np.pi, size=(num_classes, c, waves, 1, 1))
  yy = np.linspace(0, 1, h, endpoint=False)[:, None]
  xx = np.linspace(0, 1, w, endpoint=False)[None, :]
  templates = np.cos(2 * np.pi * (freqs[0] * yy + freqs[1] * xx) + phases).sum(
    axis=2
  )  # [K, C, H, W]
  templates = templates.transpose(0, 2, 3, 1)
  templates -= templates.mean(axis=(1, 2, 3), keepdims=True)
  templates /= templates.std(axis=(1, 2, 3), keepdims=True) + 1e-6

  def sample(n: int) -> _ArrayReader:
    labels = rng.permutation(np.arange(n) % num_classes)
    x = templates[labels] + noise * rng.standard_normal((n, h, w, c))
    images = np.clip(0.5 + 0.15 * x, 0, 1).astype(np.float32)
    return _ArrayReader(images, labels)

  return {'train': sample(num_train), 'test': sample(num_test)}


def _not_prepared_message(
  name: str,
  *,
  data_dir: str | None,
  builder: Any,
  manual_dir: str | None,
  reason: str,
) -> str:
  root = str(builder.data_dir_root)
  searched = (
    f'data_dir={data_dir!r}'
    if data_dir is not None
    else f'the default TFDS data_dir {root!r} (TFDS_DATA_DIR or '
    '~/tensorflow_datasets)'
  )
  manual = manual_dir or os.path.join(root, 'downloads', 'manual')
  snippet = (
    f"tfds.builder('{name}', data_dir='{root}').download_and_prepare("
    "file_format='array_record', download_config=tfds.download."
    f"DownloadConfig(manual_dir='{manual}'))"
  )
  return (
    f'Dataset {name!r} is not prepared in {searched}: {reason} '
    f'(looked in {builder.data_dir}). lpjax reads array_record data with '
    'tfds.data_source and never downloads. Prepare it once (this step needs '
    "TensorFlow: pip install 'lpjax[prepare]'), with "
    f'{_TFDS_ARCHIVES[name.split("/")[0]]} in {manual}, by running in '
    'Python:\n\n'
    f'  import tensorflow_datasets as tfds\n  {snippet}\n'
  )


def _open_tfds(
  name: str, *, data_dir: str | None, manual_dir: str | None
) -> tuple[dict[str, Sequence[dict[str, Any]]], int]:
  """Opens the TFDS data sources of `name` without ever downloading."""
  import tensorflow_datasets as tfds

  if data_dir is not None and '://' not in data_dir:  # Keep gs:// etc.
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  builder = tfds.builder(name, data_dir=data_dir)
  sources = {
    split: _data_source(builder, tfds_split, name, data_dir, manual_dir)
    for split, tfds_split in _TFDS_SPLITS[name].items()
  }
  return sources, builder.info.features['label'].num_classes


def _data_source(builder, split, name, data_dir, manual_dir):
  """`builder`'s array_record data source of `split`, or
  `DatasetNotPreparedError` with the preparation instructions."""
  try:
    return builder.as_data_source(split=split)
  except Exception as e:
    if not builder.is_prepared():
      reason = 'no prepared version found'
    elif isinstance(e, NotImplementedError):
      reason = 'it is prepared, but not in the array_record format'
    else:
      raise
    raise DatasetNotPreparedError(
      _not_prepared_message(
        name,
        data_dir=data_dir,
        builder=builder,
        manual_dir=manual_dir,
        reason=reason,
      )
    ) from e


def load_test_set(
  name: str, *, data_dir: str | None = None, manual_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """A test-only TFDS set as pixels: `(images [n, 32, 32, 3] float32 in
  [0, 1], labels int32 [n])`.

  Args:
    name: `'cifar10_1'`, or `'cifar10_corrupted/<corruption>_<severity>'`
      (the published CIFAR-10-C, e.g. `'cifar10_corrupted/fog_5'`).
    data_dir, manual_dir: as for `load`.

  Raises:
    KeyError: a name outside `TEST_SETS`.
    DatasetNotPreparedError: not prepared in `data_dir` (never downloads).
  """
  if not re.fullmatch(
    r'cifar10_1(/v[46])?|cifar10_corrupted/[a-z_]+_[1-5]', name
  ):
    raise KeyError(
      f'Unknown test set {name!r}; valid: cifar10_1 (or cifar10_1/v4, '
      'cifar10_1/v6), cifar10_corrupted/<corruption>_<severity 1-5> (e.g. '
      "'cifar10_corrupted/fog_5')."
    )
  import tensorflow_datasets as tfds

  if data_dir is not None and '://' not in data_dir:
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # an unknown config: TFDS lists the valid ones
    raise KeyError(f'TFDS has no test set {name!r}: {e}') from None
  source = _data_source(builder, 'test', name, data_dir, manual_dir)
  reader = _read_into_memory(source, (32, 32, 3))
  return reader.images.astype(np.float32) / 255, reader.labels


def _image_stats(
  reader: _ArrayReader, keys: np.ndarray, scale: float
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


def _thread_pool_fn() -> Callable[[], concurrent.futures.ThreadPoolExecutor]:
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


def load(
  name: str,
  *,
  data_dir: str | None = None,
  manual_dir: str | None = None,
  normalization: str | None = None,
  seed: int = 0,
  synthetic: dict[str, Any] | None = None,
  holdout: float = 0.0,
) -> Dataset:
  """Loads a dataset; see the module docstring for each dataset's details.

  Args:
    name: one of `DATASETS`.
    data_dir: TFDS data directory with the array_record-prepared dataset
      (TFDS datasets only); None: TFDS's default.
    manual_dir: where the downloaded archives are (only quoted in the
      preparation instructions of `DatasetNotPreparedError`).
    normalization: one of `NORMALIZATIONS`; None: 'per_channel_standardize'
      for ImageNet and the sensor series, 'per_pixel_mean' otherwise.
    seed: seed (>= 0) of the synthetic data and of the holdout split.
    synthetic: overrides of `SYNTHETIC_DEFAULTS` (only for 'synthetic').
    holdout: fraction in [0, 1) of the train split moved to 'holdout'.

  Returns:
    The `Dataset`.

  Raises:
    KeyError: unknown `name`.
    ValueError: bad `normalization`, `synthetic`, `holdout` or `seed`.
    DatasetNotPreparedError: a TFDS dataset is not prepared in `data_dir`.
  """
  if name not in DATASETS:
    raise KeyError(f'Unknown dataset {name!r}; valid: {", ".join(DATASETS)}.')
  if normalization is None:
    normalization = (
      'per_channel_standardize'
      if name == 'imagenet2012' or name in SERIES
      else 'per_pixel_mean'
    )
  if normalization not in NORMALIZATIONS:
    raise ValueError(
      f'Unknown normalization {normalization!r}; valid: '
      f'{", ".join(NORMALIZATIONS)}.'
    )
  if name == 'imagenet2012' and normalization == 'per_pixel_mean':
    raise ValueError(
      "imagenet2012 supports no 'per_pixel_mean' normalization; valid: "
      "'per_channel_mean', 'per_channel_standardize', 'none'."
    )
  _check_seed(seed)
  if not 0.0 <= holdout < 1.0:
    raise ValueError(f'holdout must be in [0, 1), got {holdout}.')
  if synthetic is not None and name != 'synthetic':
    raise ValueError('`synthetic` is only valid for the synthetic dataset.')

  pool_fn = _thread_pool_fn()
  augmentation = AUGMENTATIONS.get(name)
  scale = 1.0
  if name == 'digits':
    readers = _load_digits()
    num_classes, image_shape = 10, (8, 8, 1)
  elif name == 'synthetic':
    config = dict(SYNTHETIC_DEFAULTS)
    unknown = set(synthetic or {}) - set(config)
    if unknown:
      raise ValueError(
        f'Unknown synthetic options {sorted(unknown)}; valid: {list(config)}.'
      )
    config.update(synthetic or {})
    readers = _make_synthetic(seed=seed, **config)
    num_classes = int(config['num_classes'])
    image_shape = tuple(int(d) for d in config['image_shape'])
    augmentation = Augmentation(pad=image_shape[0] // 8, flip=False)
  elif name in SERIES:
    readers, num_classes = _load_series(name)
    image_shape = tuple(readers['train'].images.shape[1:])
  else:
    sources, num_classes = _open_tfds(
      name, data_dir=data_dir, manual_dir=manual_dir
    )
    if name == 'imagenet2012':
      readers = {k: _SourceReader(s, pool_fn) for k, s in sources.items()}
      image_shape = (IMAGENET_CROP, IMAGENET_CROP, 3)
    else:
      image_shape = (32, 32, 3)
      readers = {
        k: _read_into_memory(s, image_shape) for k, s in sources.items()
      }
      scale = 1 / 255

  num_train = len(readers['train'])
  splits = {
    'train': (readers['train'], np.arange(num_train)),
    'test': (readers['test'], np.arange(len(readers['test']))),
  }
  if holdout > 0:
    k = int(holdout * num_train + 0.5)
    if not 0 < k < num_train:
      raise ValueError(f'holdout={holdout} of {num_train} leaves no examples.')
    order = _rng(_HOLDOUT, seed).permutation(num_train)
    splits['holdout'] = (readers['train'], np.sort(order[:k]))
    splits['train'] = (readers['train'], np.sort(order[k:]))

  channels = image_shape[-1]
  if name == 'imagenet2012':
    mean = np.array(IMAGENET_MEAN)
    std = np.array(IMAGENET_STD)
    if normalization == 'none':
      mean, std = np.zeros(channels), np.ones(channels)
    elif normalization == 'per_channel_mean':
      std = np.ones(channels)
    transform = _ImageNetTransform(
      mean=mean, std=std, flip=augmentation.flip, pool_fn=pool_fn
    )
  else:
    reader, keys = splits['train']
    mean_image, channel_mean, channel_std = _image_stats(reader, keys, scale)
    std = np.ones(channels)
    if normalization == 'per_pixel_mean':
      mean = mean_image
    elif normalization == 'per_channel_mean':
      mean = channel_mean
    elif normalization == 'per_channel_standardize':
      mean, std = channel_mean, channel_std
    else:
      mean = np.zeros(channels)
    transform = _ArrayTransform(
      scale=scale, mean=mean, std=std, augmentation=augmentation
    )

  info = DatasetInfo(
    name=name,
    num_classes=num_classes,
    image_shape=image_shape,
    num_train=len(splits['train'][1]),
    num_test=len(splits['test'][1]),
    num_holdout=len(splits['holdout'][1]) if 'holdout' in splits else 0,
  )
  return Dataset(
    info=info,
    splits=splits,
    transform=transform,
    augmentation=augmentation,
    normalization=normalization,
  )
