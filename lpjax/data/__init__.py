"""Input data: datasets that yield numpy batches, and offline text.

`load(name, ...)` returns a `Dataset` (`lpjax.data.core`) for one of
`DATASETS`, read by that name's entry of the loader registry `LOADERS`:

* `'digits'`: scikit-learn's 1,797 real 8x8 grayscale digits, scaled from
  0..16 to [0, 1], image shape (8, 8, 1). A fixed (seed-independent)
  stratified split puts round(20%) of every class into 'test': 1,438 train
  and 359 test examples (`lpjax.data.images`).
* `'synthetic'`: random images with real class structure (one smooth
  low-frequency template per class plus Gaussian pixel noise), generated from
  `seed`; shapes and sizes are set with the `synthetic` dict (see
  `SYNTHETIC_DEFAULTS`). Used by tests (`lpjax.data.synthetic`).
* `'cifar10'` / `'cifar100'`: read with `tfds.data_source` from an
  array_record-prepared TFDS `data_dir` (no TensorFlow needed). Both splits are
  decoded once per `load()` into uint8 arrays kept in memory (~150 MB train,
  ~30 MB test): random access to 50k small PNG records one by one would
  dominate the step time, and the normalization statistics need a full pass
  anyway. Nothing is written to `data_dir`, which may be read-only or shared.
* `'basicmotions'`: real wearable-sensor human activity recognition, as
  bundled by `aeon` (fetched with `lpjax.wheels.fetch('aeon')`, the wheel
  only): a smartwatch's 3-D accelerometer and 3-D gyroscope at 10 Hz for
  10 s, four activities (standing, running, walking, badminton), 40 train
  and 40 test recordings of shape (100, 6) (`lpjax.data.series`).
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

`load_test_set` reads the test-only, distribution-shifted CIFAR-10 sets
(CIFAR-10.1, CIFAR-10-C) as pixels.

TFDS datasets are never downloaded: a dataset that is not prepared raises
`DatasetNotPreparedError` at once with instructions. Only
`lpjax.data.images` imports `tensorflow_datasets`, lazily, when a TFDS
dataset is loaded.

Normalization (`load(normalization=...)`), with statistics computed from the
training examples (the train split minus any holdout) of in-memory datasets:

* `'per_pixel_mean'` (default for the image datasets but ImageNet): x /
  scale minus the mean image of the training set, no division by a std; as
  in the ResNet CIFAR papers.
* `'per_channel_mean'`: minus the per-channel mean.
* `'per_channel_standardize'`: minus the per-channel mean, divided by the
  per-channel std. The default of the sensor series, and of ImageNet, with
  the standard ImageNet constants mean (0.485, 0.456, 0.406) and std
  (0.229, 0.224, 0.225) on x / 255 (the convention of torchvision's
  pretrained ResNets); ImageNet supports no per-pixel mean (images vary in
  size).
* `'none'`: x / scale in [0, 1].

Augmentation (`train_batches(augment=True)`, see `AUGMENTATIONS`): CIFAR:
pad 4 + flip. Digits: pad 1, no flip (digits are not mirror invariant).
Synthetic: pad H // 8, no flip. Determinism, batching and several
processes: see `lpjax.data.core`.

Holdout: `load(holdout=f)` moves round(f * N) examples of the train split,
chosen uniformly at random from `seed` (not stratified), into a separate
'holdout' split used for model selection or calibration; 'train' then means
the remaining examples, also for the normalization statistics.

Text for the pretrained transformers (the corpus, sentences, token
windows) is in `lpjax.data.text`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lpjax.data import images, series
from lpjax.data import synthetic as synthetic_lib
from lpjax.data.core import (
  NORMALIZATIONS,
  STREAM_HOLDOUT,
  Augmentation,
  Dataset,
  DatasetInfo,
  Loader,
  Request,
  Source,
  check_seed,
  make_rng,
  pad_crop_flip,
  process_rows,
  stats_transform,
  thread_pool_fn,
)
from lpjax.data.images import (
  TEST_SETS,
  DatasetNotPreparedError,
  load_test_set,
)
from lpjax.data.series import SERIES, SeriesFileError, read_ts
from lpjax.data.synthetic import SYNTHETIC_DEFAULTS

# The loader registry: dataset name -> how `load` reads it.
LOADERS: dict[str, Loader] = {
  'digits': Loader(images.load_digits),
  'synthetic': Loader(synthetic_lib.load_synthetic),
  'basicmotions': Loader(
    series.load_series, normalization='per_channel_standardize'
  ),
  'japanesevowels': Loader(
    series.load_series, normalization='per_channel_standardize'
  ),
  'cifar10': Loader(images.load_cifar),
  'cifar100': Loader(images.load_cifar),
  'imagenet2012': Loader(
    images.load_imagenet,
    normalization='per_channel_standardize',
    normalizations=('per_channel_mean', 'per_channel_standardize', 'none'),
  ),
}
DATASETS = tuple(LOADERS)

# The training augmentation of each dataset ('synthetic': pad H // 8, no
# flip, set by its loader from the image shape).
AUGMENTATIONS = {**images.AUGMENTATIONS, **series.AUGMENTATIONS}


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
  if name not in LOADERS:
    raise KeyError(f'Unknown dataset {name!r}; valid: {", ".join(DATASETS)}.')
  loader = LOADERS[name]
  if normalization is None:
    normalization = loader.normalization
  if normalization not in NORMALIZATIONS:
    raise ValueError(
      f'Unknown normalization {normalization!r}; valid: '
      f'{", ".join(NORMALIZATIONS)}.'
    )
  if normalization not in loader.normalizations:
    raise ValueError(
      f'{name} supports no {normalization!r} normalization; valid: '
      f'{", ".join(repr(n) for n in loader.normalizations)}.'
    )
  check_seed(seed)
  if not 0.0 <= holdout < 1.0:
    raise ValueError(f'holdout must be in [0, 1), got {holdout}.')
  if synthetic is not None and name != 'synthetic':
    raise ValueError('`synthetic` is only valid for the synthetic dataset.')

  source = loader.read(
    Request(
      name=name,
      data_dir=data_dir,
      manual_dir=manual_dir,
      seed=seed,
      synthetic=synthetic,
      pool_fn=thread_pool_fn(),
    )
  )
  readers = source.readers
  num_train = len(readers['train'])
  splits = {
    'train': (readers['train'], np.arange(num_train)),
    'test': (readers['test'], np.arange(len(readers['test']))),
  }
  if holdout > 0:
    k = int(holdout * num_train + 0.5)
    if not 0 < k < num_train:
      raise ValueError(f'holdout={holdout} of {num_train} leaves no examples.')
    order = make_rng(STREAM_HOLDOUT, seed).permutation(num_train)
    splits['holdout'] = (readers['train'], np.sort(order[:k]))
    splits['train'] = (readers['train'], np.sort(order[k:]))

  reader, keys = splits['train']
  if source.transform is None:
    transform = stats_transform(source, normalization, reader, keys)
  else:
    transform = source.transform(normalization, reader, keys)
  info = DatasetInfo(
    name=name,
    num_classes=source.num_classes,
    image_shape=source.image_shape,
    num_train=len(splits['train'][1]),
    num_test=len(splits['test'][1]),
    num_holdout=len(splits['holdout'][1]) if 'holdout' in splits else 0,
  )
  return Dataset(
    info=info,
    splits=splits,
    transform=transform,
    augmentation=source.augmentation,
    normalization=normalization,
  )


__all__ = [
  'AUGMENTATIONS',
  'DATASETS',
  'LOADERS',
  'NORMALIZATIONS',
  'SERIES',
  'SYNTHETIC_DEFAULTS',
  'TEST_SETS',
  'Augmentation',
  'Dataset',
  'DatasetInfo',
  'DatasetNotPreparedError',
  'Loader',
  'Request',
  'SeriesFileError',
  'Source',
  'load',
  'load_test_set',
  'pad_crop_flip',
  'process_rows',
  'read_ts',
]
