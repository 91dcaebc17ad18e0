"""Synthetic images with real class structure, generated from a seed.

`'synthetic'`: one smooth low-frequency template per class (a sum of random
cosines, standardized) plus Gaussian pixel noise, clipped to [0, 1].
Shapes and sizes are set with the `synthetic` dict of `lpjax.data.load`
(see `SYNTHETIC_DEFAULTS`). Augmentation: pad H // 8, no flip. Used by
tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lpjax.data import core

# Defaults of the `synthetic` dict accepted by `load('synthetic', ...)`.
SYNTHETIC_DEFAULTS = {
  'image_shape': (32, 32, 3),
  'num_classes': 10,
  'num_train': 1024,
  'num_test': 256,
  # Std of the Gaussian pixel noise relative to the (unit-std) templates.
  'noise': 1.0,
}


def make_synthetic(
  *,
  seed: int,
  image_shape: Sequence[int],
  num_classes: int,
  num_train: int,
  num_test: int,
  noise: float,
) -> dict[str, core.ArrayReader]:
  """Class templates (sums of random low-frequency cosines) plus noise."""
  h, w, c = (int(d) for d in image_shape)
  rng = core.make_rng(core.STREAM_SYNTHETIC, seed)
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

  def sample(n: int) -> core.ArrayReader:
    labels = rng.permutation(np.arange(n) % num_classes)
    x = templates[labels] + noise * rng.standard_normal((n, h, w, c))
    images = np.clip(0.5 + 0.15 * x, 0, 1).astype(np.float32)
    return core.ArrayReader(images, labels)

  return {'train': sample(num_train), 'test': sample(num_test)}


def load_synthetic(request: core.Request) -> core.Source:
  """The synthetic dataset of `request.seed` and `request.synthetic`.

  Raises:
    ValueError: an option outside `SYNTHETIC_DEFAULTS`.
  """
  config = dict(SYNTHETIC_DEFAULTS)
  unknown = set(request.synthetic or {}) - set(config)
  if unknown:
    raise ValueError(
      f'Unknown synthetic options {sorted(unknown)}; valid: {list(config)}.'
    )
  config.update(request.synthetic or {})
  image_shape = tuple(int(d) for d in config['image_shape'])
  return core.Source(
    readers=make_synthetic(seed=request.seed, **config),
    num_classes=int(config['num_classes']),
    image_shape=image_shape,
    augmentation=core.Augmentation(pad=image_shape[0] // 8, flip=False),
  )
