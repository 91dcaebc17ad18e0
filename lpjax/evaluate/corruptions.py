"""The 15 common corruptions of CIFAR-10-C, for any image size.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019). The parameters per severity
1..5 are the ones the authors published for CIFAR-10-C (their
`make_cifar_c.py`); the operations are written here with NumPy, SciPy,
Matplotlib's HSV conversion and Pillow (no OpenCV, scikit-image or
ImageMagick). Where the authors used a library routine, this module uses
the same definition, except for two approximations:

* ImageMagick's motion blur (motion blur, snow) is approximated by a
  one-sided line kernel of `2·radius + 1` taps with Gaussian weights
  `exp(−i²/2σ²)`, normalised, sampled bilinearly along the angle
  (ImageMagick rounds the offsets to whole pixels);
* frost shrinks the frost photograph with Pillow's bilinear filter, which
  averages more pixels than OpenCV's `resize` did (a slightly smoother
  frost layer).

OpenCV's `filter2D` / `warpAffine` borders (`BORDER_REFLECT_101`) are
SciPy's `mode='mirror'`; its grey conversion is 0.299 R + 0.587 G +
0.114 B.

Images are float arrays in `[0, 1]`, `[H, W, C]` with `C` = 1 or 3 (grey
images go through the colour operations as equal R, G, B and come back
grey); outputs are float32 in `[0, 1]` and not quantised to 8 bits (the
published dataset is stored as uint8). The parameters are in pixels of
32×32 images: on smaller images (8×8 digits) blurs and displacements are
relatively stronger, on larger ones weaker. `elastic_transform` scales
with the image side as the authors' code does (`IMSIZE`).

Every corruption is deterministic given `seed` (NumPy's PCG64 generator;
the same seed gives the same image, a different one another draw).
`frost` blends crops of the authors' six frost photographs, which are not
redistributed here: pass their folder (`frost_dir`; files `frost1.png`,
`frost2.png`, `frost3.png`, `frost4.jpg`, `frost5.jpg`, `frost6.jpg` from
the authors' repository, ImageNet-C/create_c/).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from lpjax import errors

CORRUPTIONS = (
  'gaussian_noise',
  'shot_noise',
  'impulse_noise',
  'defocus_blur',
  'glass_blur',
  'motion_blur',
  'zoom_blur',
  'snow',
  'frost',
  'fog',
  'brightness',
  'contrast',
  'elastic_transform',
  'pixelate',
  'jpeg_compression',
)
SEVERITIES = (1, 2, 3, 4, 5)
FROST_FILES = (
  'frost1.png',
  'frost2.png',
  'frost3.png',
  'frost4.jpg',
  'frost5.jpg',
  'frost6.jpg',
)


class CorruptionError(errors.UserError, ValueError):
  """Bad input to a corruption, naming the problem and the fix."""


# --- Helpers ------------------------------------------------------------------


def _rgb(x: np.ndarray) -> np.ndarray:
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _like(rgb: np.ndarray, x: np.ndarray) -> np.ndarray:
  return rgb.mean(axis=-1, keepdims=True) if x.shape[-1] == 1 else rgb


def _grey(rgb: np.ndarray) -> np.ndarray:
  return rgb @ np.array([0.299, 0.587, 0.114])


def _gaussian(x: np.ndarray, sigma: float, **kw) -> np.ndarray:
  """Gaussian blur over the two spatial axes only."""
  s = (sigma, sigma) + (0,) * (x.ndim - 2)
  return ndimage.gaussian_filter(x, s, mode=kw.pop('mode', 'nearest'), **kw)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
  """An anti-aliased disk kernel: the indicator of `|p| <= radius` on a grid
  of at least 17×17, normalised, then a 3×3 (5×5 above radius 8) Gaussian
  blur of `alias_blur`."""
  half = 8 if radius <= 8 else int(np.ceil(radius))
  taps = 1 if radius <= 8 else 2
  grid = np.arange(-half, half + 1)
  xx, yy = np.meshgrid(grid, grid)
  disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
  disk /= disk.sum()
  # A (2·taps + 1)-tap Gaussian, as OpenCV's fixed-size GaussianBlur.
  return ndimage.gaussian_filter(
    disk, alias_blur, mode='mirror', truncate=taps / alias_blur
  )


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
  """Zoom into the centre by `factor` (bilinear), cropped to `x`'s size."""
  h, w = x.shape[:2]
  ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
  top, left = (h - ch) // 2, (w - cw) // 2
  crop = x[top : top + ch, left : left + cw]
  z = ndimage.zoom(crop, (factor, factor) + (1,) * (x.ndim - 2), order=1)
  th, tw = (z.shape[0] - h) // 2, (z.shape[1] - w) // 2
  return z[th : th + h, tw : tw + w]


def _motion_blur(
  x: np.ndarray, radius: int, sigma: float, angle: float
) -> np.ndarray:
  """ImageMagick's MotionBlurImage: each pixel the Gaussian-weighted mean of
  the `2·radius + 1` pixels behind it along `angle` (degrees)."""
  width = 2 * int(radius) + 1
  i = np.arange(width, dtype=np.float64)
  weights = np.exp(-(i**2) / (2 * sigma**2))
  weights /= weights.sum()
  t = np.deg2rad(angle)
  h, w = x.shape[:2]
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  out = np.zeros_like(x, dtype=np.float64)
  for k, wk in enumerate(weights):
    r = rows + k * np.sin(t)
    c = cols + k * np.cos(t)
    for ch in range(x.shape[2]):
      out[..., ch] += wk * ndimage.map_coordinates(
        x[..., ch], [r, c], order=1, mode='nearest'
      )
  return out


def _plasma_fractal(size: int, decay: float, rng) -> np.ndarray:
  """Diamond-square height map in [0, 1], `size` × `size` (a power of 2)."""
  m = np.zeros((size, size))
  step, wibble = size, 100.0

  def wibbled(a):
    return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

  while step >= 2:
    half = step // 2
    corners = m[0:size:step, 0:size:step]
    sq = corners + np.roll(corners, -1, axis=0)
    sq = sq + np.roll(sq, -1, axis=1)
    m[half:size:step, half:size:step] = wibbled(sq)
    centres = m[half:size:step, half:size:step]
    corners = m[0:size:step, 0:size:step]
    lt = (centres + np.roll(centres, 1, axis=0)) + (
      corners + np.roll(corners, -1, axis=1)
    )
    m[0:size:step, half:size:step] = wibbled(lt)
    tt = (centres + np.roll(centres, 1, axis=1)) + (
      corners + np.roll(corners, -1, axis=0)
    )
    m[half:size:step, 0:size:step] = wibbled(tt)
    step //= 2
    wibble /= decay
  m -= m.min()
  return m / m.max()


def _pil_roundtrip(x: np.ndarray, fn) -> np.ndarray:
  from PIL import Image

  u8 = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
  img = Image.fromarray(u8[..., 0] if x.shape[-1] == 1 else u8)
  out = np.asarray(fn(img), np.float64) / 255
  return out[..., None] if out.ndim == 2 else out


# --- The corruptions -----------------------------------------------------------


def gaussian_noise(x, severity, rng, **_):
  c = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
  return x + rng.normal(size=x.shape, scale=c)


def shot_noise(x, severity, rng, **_):
  c = (500, 250, 100, 75, 50)[severity - 1]
  return rng.poisson(x * c) / c


def impulse_noise(x, severity, rng, **_):
  """Salt and pepper on a fraction `c` of the values, half each."""
  c = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
  hit = rng.random(x.shape) < c
  salt = rng.random(x.shape) < 0.5
  return np.where(hit, salt.astype(np.float64), x)


def defocus_blur(x, severity, rng, **_):
  radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[
    severity - 1
  ]
  k = _disk(radius, alias)
  return np.stack(
    [ndimage.correlate(x[..., d], k, mode='mirror') for d in range(x.shape[2])],
    axis=-1,
  )


def glass_blur(x, severity, rng, **_):
  """Blur, quantise to 8 bits (as the authors do between the steps),
  replace each pixel by a random neighbour within `max_delta` (`iterations`
  sweeps, bottom-right to top-left), blur again.

  The authors wrote the shuffle as a swap, `x[h, w], x[h', w'] = x[h', w'],
  x[h, w]`, but on NumPy pixel views that assigns `x[h, w] = x[h', w']`
  only (the right side's views see the first write): the published data
  copies, so pixels move at most `max_delta` per sweep. This copies too.
  """
  sigma, delta, iterations = (
    (0.05, 1, 1),
    (0.25, 1, 1),
    (0.4, 1, 1),
    (0.25, 1, 2),
    (0.4, 1, 2),
  )[severity - 1]
  y = np.floor(np.clip(_gaussian(x, sigma), 0, 1) * 255) / 255
  h, w = x.shape[:2]
  for _ in range(iterations):
    for r in range(h - delta, delta, -1):
      for c in range(w - delta, delta, -1):
        dx, dy = rng.integers(-delta, delta, size=2)
        r2, c2 = r + dy, c + dx
        y[r, c] = y[r2, c2]
  return _gaussian(y, sigma)


def motion_blur(x, severity, rng, **_):
  radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[severity - 1]
  return _motion_blur(x, radius, sigma, rng.uniform(-45, 45))


def zoom_blur(x, severity, rng, **_):
  top = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
  factors = np.arange(1, top, 0.01)
  out = np.zeros_like(x, dtype=np.float64)
  for f in factors:
    out += _clipped_zoom(x, f)
  return (x + out) / (len(factors) + 1)


def snow(x, severity, rng, **_):
  loc, scale, zoom, thresh, radius, sigma, keep = (
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
  )[severity - 1]
  rgb = _rgb(x)
  layer = rng.normal(size=x.shape[:2], loc=loc, scale=scale)
  layer = _clipped_zoom(layer[..., None], zoom)
  layer[layer < thresh] = 0
  # The authors store the layer as 8-bit grey before the motion blur.
  layer = np.floor(np.clip(layer, 0, 1) * 255) / 255
  layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45))
  bright = np.maximum(rgb, _grey(rgb)[..., None] * 1.5 + 0.5)
  rgb = keep * rgb + (1 - keep) * bright
  return _like(rgb + layer + np.rot90(layer, k=2), x)


def frost(x, severity, rng, *, frost_dir=None, **_):
  """`a · x + b · (a random crop of a frost photo, resized to a fifth)`."""
  a, b = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[
    severity - 1
  ]
  if frost_dir is None:
    raise CorruptionError(
      "frost blends the authors' frost photographs: pass frost_dir=<folder "
      f'with {", ".join(FROST_FILES)}> (hendrycks/robustness, '
      'ImageNet-C/create_c/).'
    )
  from PIL import Image

  # The authors draw from the first five (randint(5)).
  name = FROST_FILES[int(rng.integers(5))]
  path = os.path.join(os.fspath(frost_dir), name)
  if not os.path.isfile(path):
    raise CorruptionError(f'frost photograph {path} is missing.')
  img = Image.open(path).convert('RGB')
  img = img.resize(
    (max(1, round(img.width * 0.2)), max(1, round(img.height * 0.2))),
    Image.BILINEAR,
  )
  f = np.asarray(img, np.float64) / 255
  h, w = x.shape[:2]
  if f.shape[0] <= h or f.shape[1] <= w:
    raise CorruptionError(
      f'{path} at a fifth of its size ({f.shape[:2]}) is not larger than the '
      f'image ({h}, {w}).'
    )
  r0 = int(rng.integers(0, f.shape[0] - h))
  c0 = int(rng.integers(0, f.shape[1] - w))
  crop = f[r0 : r0 + h, c0 : c0 + w]
  return _like(a * _rgb(x) + b * crop, x)


def fog(x, severity, rng, **_):
  strength, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[
    severity - 1
  ]
  h, w = x.shape[:2]
  size = 1 << int(np.ceil(np.log2(max(h, w, 2))))
  top = x.max()
  y = x + strength * _plasma_fractal(size, decay, rng)[:h, :w, None]
  return y * top / (top + strength)


def brightness(x, severity, rng, **_):
  from matplotlib import colors

  c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
  hsv = colors.rgb_to_hsv(np.clip(_rgb(x), 0, 1))
  hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
  return _like(colors.hsv_to_rgb(hsv), x)


def contrast(x, severity, rng, **_):
  c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
  means = x.mean(axis=(0, 1), keepdims=True)
  return (x - means) * c + means


def elastic_transform(x, severity, rng, **_):
  """A random affine warp of three points, then a smooth random
  displacement field (Simard et al. 2003), both bilinear with mirrored
  borders."""
  s = float(min(x.shape[:2]))
  alpha, sigma, affine = (
    (s * 0, s * 0, s * 0.08),
    (s * 0.05, s * 0.2, s * 0.07),
    (s * 0.08, s * 0.06, s * 0.06),
    (s * 0.1, s * 0.04, s * 0.05),
    (s * 0.1, s * 0.03, s * 0.03),
  )[severity - 1]
  h, w = x.shape[:2]
  centre = np.array([w, h], np.float64) // 2  # (x, y), as OpenCV's points
  sq = min(h, w) // 3
  src = np.array(
    [centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq], np.float64
  )
  dst = src + rng.uniform(-affine, affine, size=src.shape)
  # The affine map src -> dst; warping samples the input at its inverse.
  m = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # [2, 3], (x, y)
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  sx = inv[0, 0] * cols + inv[0, 1] * rows + inv[0, 2]
  sy = inv[1, 0] * cols + inv[1, 1] * rows + inv[1, 2]
  warped = np.stack(
    [
      ndimage.map_coordinates(x[..., d], [sy, sx], order=1, mode='mirror')
      for d in range(x.shape[2])
    ],
    axis=-1,
  )
  if alpha == 0:
    dx = dy = np.zeros((h, w))
  else:
    dx = alpha * ndimage.gaussian_filter(
      rng.uniform(-1, 1, (h, w)), sigma, mode='reflect', truncate=3
    )
    dy = alpha * ndimage.gaussian_filter(
      rng.uniform(-1, 1, (h, w)), sigma, mode='reflect', truncate=3
    )
  return np.stack(
    [
      ndimage.map_coordinates(
        warped[..., d], [rows + dy, cols + dx], order=1, mode='reflect'
      )
      for d in range(x.shape[2])
    ],
    axis=-1,
  )


def pixelate(x, severity, rng, **_):
  """Box-downsample to `c` of the side and box-upsample back (Pillow)."""
  from PIL import Image

  c = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
  h, w = x.shape[:2]
  small = (max(1, int(w * c)), max(1, int(h * c)))
  return _pil_roundtrip(
    x,
    lambda img: img.resize(small, Image.BOX).resize((w, h), Image.BOX),
  )


def jpeg_compression(x, severity, rng, **_):
  """Encoded and decoded as JPEG at quality `c` (Pillow, 8-bit)."""
  from PIL import Image

  c = (80, 65, 58, 50, 40)[severity - 1]

  def encode(img):
    buf = io.BytesIO()
    img.save(buf, 'JPEG', quality=c)
    return Image.open(io.BytesIO(buf.getvalue()))

  return _pil_roundtrip(x, encode)


FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
  name: globals()[name] for name in CORRUPTIONS
}


def corrupt(
  images: Any,
  name: str,
  severity: int,
  *,
  seed: int = 0,
  frost_dir: str | os.PathLike | None = None,
) -> np.ndarray:
  """`images` `[n, H, W, C]` (or one `[H, W, C]`) in `[0, 1]`, corrupted.

  Image `i` of the batch draws from the generator seeded `(seed, i)`: the
  same batch and seed give the same result, and a batch's first `k`
  images are corrupted as the batch of those `k` alone.

  Raises:
    CorruptionError: an unknown name or severity, images that are not
      `[…, H, W, 1 or 3]` in `[0, 1]`, or frost without its photographs.
  """
  if name not in FUNCTIONS:
    raise CorruptionError(
      f'Unknown corruption {name!r}; valid: {", ".join(CORRUPTIONS)}.'
    )
  if severity not in SEVERITIES:
    raise CorruptionError(f'severity must be 1..5; got {severity!r}.')
  x = np.asarray(images, np.float64)
  single = x.ndim == 3
  if single:
    x = x[None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:3]) < 2:
    raise CorruptionError(
      f'images must be [n, H, W, 1 or 3] (or [H, W, C]); got {np.shape(images)}.'
    )
  if x.size and (x.min() < 0 or x.max() > 1 or not np.all(np.isfinite(x))):
    raise CorruptionError(
      'images must be pixels in [0, 1] (before normalisation); got values in '
      f'[{x.min()}, {x.max()}].'
    )
  fn = FUNCTIONS[name]
  out = np.stack(
    [
      fn(img, severity, np.random.default_rng([seed, i]), frost_dir=frost_dir)
      for i, img in enumerate(x)
    ]
  )
  out = np.clip(out, 0, 1).astype(np.float32)
  return out[0] if single else out


__all__ = [
  'CORRUPTIONS',
  'SEVERITIES',
  'CorruptionError',
  'corrupt',
]
