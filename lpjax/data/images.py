"""Image datasets: scikit-learn's digits, and CIFAR and ImageNet from TFDS.

* `'digits'`: 1,797 real 8x8 grayscale digits, scaled from 0..16 to [0, 1];
  a fixed (seed-independent) stratified split puts round(20%) of every
  class into 'test'.
* `'cifar10'` / `'cifar100'`: read with `tfds.data_source` from an
  array_record-prepared TFDS `data_dir` (no TensorFlow needed), both splits
  decoded once per load into uint8 arrays kept in memory.
* `'imagenet2012'`: streamed with `tfds.data_source` and decoded in a
  thread pool, never held in memory; resized and cropped per image
  (`ImageNetTransform`).
* The test-only, distribution-shifted CIFAR-10 sets (`load_test_set`):
  CIFAR-10.1 and CIFAR-10-C.

TFDS datasets are never downloaded: one that is not prepared raises
`DatasetNotPreparedError` with the preparation instructions. This is the
only module of lpjax that imports `tensorflow_datasets`, lazily, when a TFDS
dataset is loaded.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lpjax.data import core
from lpjax.errors import UserError

# Fraction of each digits class that goes to the 'test' split.
DIGITS_TEST_FRACTION = 0.2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224

AUGMENTATIONS = {
  'digits': core.Augmentation(pad=1, flip=False),
  'cifar10': core.Augmentation(pad=4, flip=True),
  'cifar100': core.Augmentation(pad=4, flip=True),
  'imagenet2012': core.Augmentation(pad=0, flip=True),
}

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


class DatasetNotPreparedError(UserError, FileNotFoundError):
  """A TFDS dataset is not prepared (in array_record format) in `data_dir`."""


################################################################################
# Digits.
################################################################################


def load_digits(request: core.Request) -> core.Source:
  """scikit-learn's digits with the fixed stratified test split."""
  del request  # Nothing to choose.
  from sklearn import datasets

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  rng = core.make_rng(core.STREAM_DIGITS)
  is_test = np.zeros(len(labels), bool)
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    is_test[members[: int(DIGITS_TEST_FRACTION * len(members) + 0.5)]] = True
  readers = {
    'train': core.ArrayReader(images[~is_test], labels[~is_test]),
    'test': core.ArrayReader(images[is_test], labels[is_test]),
  }
  return core.Source(
    readers=readers,
    num_classes=10,
    image_shape=(8, 8, 1),
    augmentation=AUGMENTATIONS['digits'],
  )


################################################################################
# TFDS: opening prepared data sources, never downloading.
################################################################################


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


################################################################################
# CIFAR.
################################################################################


def load_cifar(request: core.Request) -> core.Source:
  """CIFAR-10 or CIFAR-100 (`request.name`), both splits in memory."""
  sources, num_classes = _open_tfds(
    request.name, data_dir=request.data_dir, manual_dir=request.manual_dir
  )
  image_shape = (32, 32, 3)
  readers = {
    k: core.read_into_memory(s, image_shape) for k, s in sources.items()
  }
  return core.Source(
    readers=readers,
    num_classes=num_classes,
    image_shape=image_shape,
    augmentation=AUGMENTATIONS[request.name],
    scale=1 / 255,
  )


def load_test_set(
  name: str, *, data_dir: str | None = None, manual_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """A test-only TFDS set as pixels: `(images [n, 32, 32, 3] float32 in
  [0, 1], labels int32 [n])`.

  Args:
    name: `'cifar10_1'`, or `'cifar10_corrupted/<corruption>_<severity>'`
      (the published CIFAR-10-C, e.g. `'cifar10_corrupted/fog_5'`).
    data_dir, manual_dir: as for `lpjax.data.load`.

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
  reader = core.read_into_memory(source, (32, 32, 3))
  return reader.images.astype(np.float32) / 255, reader.labels


################################################################################
# ImageNet.
################################################################################


def _resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image

  h, w = image.shape[:2]
  scale = size / min(h, w)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))


class ImageNetTransform:
  """Resize + crop (+ flip) per image, then normalize the stacked batch.

  Train: shorter side resized to 256 (bilinear, PIL), random 224x224 crop,
  random horizontal flip. Eval: resize to 256, center 224x224 crop.
  """

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

    `rows`: as for `lpjax.data.core.ArrayTransform`.
    """
    n = len(raw)
    if rng is None:
      fracs, flips = np.full((n, 2), 0.5), np.zeros(n, bool)
    else:
      take, total = core.draw_rows(n, rows)
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


def _imagenet_transform(
  normalization: str,
  reader: Any,
  keys: np.ndarray,
  *,
  pool_fn: Callable,
) -> ImageNetTransform:
  """The standard ImageNet constants, not statistics of the train split."""
  del reader, keys  # No pass over 1.28M images.
  channels = 3
  mean = np.array(IMAGENET_MEAN)
  std = np.array(IMAGENET_STD)
  if normalization == 'none':
    mean, std = np.zeros(channels), np.ones(channels)
  elif normalization == 'per_channel_mean':
    std = np.ones(channels)
  return ImageNetTransform(
    mean=mean,
    std=std,
    flip=AUGMENTATIONS['imagenet2012'].flip,
    pool_fn=pool_fn,
  )


def load_imagenet(request: core.Request) -> core.Source:
  """ImageNet 2012, streamed; our 'test' split is TFDS 'validation'."""
  sources, num_classes = _open_tfds(
    request.name, data_dir=request.data_dir, manual_dir=request.manual_dir
  )
  readers = {
    k: core.SourceReader(s, request.pool_fn) for k, s in sources.items()
  }
  return core.Source(
    readers=readers,
    num_classes=num_classes,
    image_shape=(IMAGENET_CROP, IMAGENET_CROP, 3),
    augmentation=AUGMENTATIONS['imagenet2012'],
    transform=functools.partial(_imagenet_transform, pool_fn=request.pool_fn),
  )
