"""Sensor time series as aeon bundles them, read from `.ts` files.

* `'basicmotions'`: real wearable-sensor human activity recognition: a
  smartwatch's 3-D accelerometer and 3-D gyroscope at 10 Hz for 10 s, four
  activities (standing, running, walking, badminton), 40 train and 40 test
  recordings of shape (100, 6).
* `'japanesevowels'`: nine speakers uttering the vowels /ae/, 12 LPC
  cepstrum coefficients per frame; aeon's equal-length version, 270 train
  and 370 test series of shape (25, 12).

The files come from aeon's wheel (`lpjax.wheels.fetch('aeon')`, the wheel
only, without aeon and its dependencies) and are parsed by `read_ts`.
Series default to `'per_channel_standardize'` (train statistics) and have
no augmentation.
"""

from __future__ import annotations

import numpy as np

from lpjax import wheels
from lpjax.data import core
from lpjax.errors import UserError

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

AUGMENTATIONS = {
  'basicmotions': core.Augmentation(pad=0, flip=False),
  'japanesevowels': core.Augmentation(pad=0, flip=False),
}


class SeriesFileError(UserError, ValueError):
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


def load_series(request: core.Request) -> core.Source:
  """The aeon series dataset `request.name` (a key of `SERIES`)."""
  name = request.name
  folder = wheels.fetch('aeon')
  train_file, test_file = SERIES[name]
  x_tr, y_tr, classes = read_ts(str(folder / train_file))
  x_te, y_te, classes_te = read_ts(str(folder / test_file))
  if classes_te != classes or x_te.shape[1:] != x_tr.shape[1:]:
    raise SeriesFileError(
      f'{name}: train and test files disagree on classes or shapes.'
    )
  readers = {
    'train': core.ArrayReader(x_tr, y_tr),
    'test': core.ArrayReader(x_te, y_te),
  }
  return core.Source(
    readers=readers,
    num_classes=len(classes),
    image_shape=tuple(readers['train'].images.shape[1:]),
    augmentation=AUGMENTATIONS[name],
  )
