"""Tests for lpjax.data (hermetic: TFDS only through mock_data)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tolerances import f32_atol, magnitude

from lpjax import data as data_lib
from lpjax.errors import UserError

NUM_DIGITS = 1797


def _concat_eval(ds, split, batch_size=128):
  """All examples of `split` via eval_batches, padding removed."""
  images, labels = [], []
  for batch in ds.eval_batches(split=split, batch_size=batch_size):
    keep = batch['mask'] > 0
    images.append(batch['image'][keep])
    labels.append(batch['label'][keep])
  return np.concatenate(images), np.concatenate(labels)


def _rows(images):
  """Images as a sorted list of bytes (a multiset)."""
  return sorted(x.tobytes() for x in np.ascontiguousarray(images))


@pytest.fixture(scope='module')
def digits():
  return data_lib.load('digits')


@pytest.fixture(scope='module')
def digits_raw():
  return data_lib.load('digits', normalization='none')


@pytest.fixture
def mock_tfds():
  # Function-scoped: the mock must not leak into other tests (e.g. the
  # unprepared-dataset test).
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(
    num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    yield


@pytest.fixture
def cifar10(mock_tfds, tmp_path):
  return data_lib.load('cifar10', data_dir=str(tmp_path))


# Loading and errors.


def test_import_and_small_datasets_do_not_import_tfds():
  code = (
    'import sys; from lpjax import data; '
    "data.load('synthetic', synthetic={'num_train': 16, 'num_test': 8}); "
    "assert 'tensorflow_datasets' not in sys.modules; "
    "assert 'tensorflow' not in sys.modules"
  )
  root = str(Path(data_lib.__file__).resolve().parents[2])
  path = os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))
  env = {**os.environ, 'PYTHONPATH': path}
  subprocess.run([sys.executable, '-c', code], check=True, env=env, timeout=120)


def test_unknown_name_lists_valid_names():
  with pytest.raises(KeyError) as e:
    data_lib.load('mnist')
  for name in data_lib.DATASETS:
    assert name in str(e.value)


def test_bad_normalization_lists_valid_ones():
  with pytest.raises(ValueError, match='per_channel_standardize'):
    data_lib.load('synthetic', normalization='zca')
  with pytest.raises(ValueError) as e:
    data_lib.load('imagenet2012', normalization='per_pixel_mean')
  assert str(e.value) == (
    "imagenet2012 supports no 'per_pixel_mean' normalization; valid: "
    "'per_channel_mean', 'per_channel_standardize', 'none'."
  )


def test_load_dispatches_through_the_loader_registry(monkeypatch):
  assert data_lib.DATASETS == tuple(data_lib.LOADERS)
  images = np.arange(6 * 2 * 2 * 1, dtype=np.float32).reshape(6, 2, 2, 1)
  labels = np.array([0, 1, 0, 1, 0, 1])
  seen = []

  def read(request):
    seen.append(request)
    reader = data_lib.core.ArrayReader(images / images.max(), labels)
    return data_lib.Source(
      readers={'train': reader, 'test': reader},
      num_classes=2,
      image_shape=(2, 2, 1),
      augmentation=data_lib.Augmentation(pad=0, flip=False),
    )

  loader = data_lib.Loader(read, normalization='none')
  monkeypatch.setitem(data_lib.LOADERS, 'tiny', loader)
  ds = data_lib.load('tiny', seed=3, data_dir='/nowhere')
  (request,) = seen
  assert (request.name, request.seed, request.data_dir) == (
    'tiny',
    3,
    '/nowhere',
  )
  assert ds.info == data_lib.DatasetInfo('tiny', 2, (2, 2, 1), 6, 6)
  assert ds.normalization == 'none'
  x, y = _concat_eval(ds, 'test')
  np.testing.assert_array_equal(x, images / images.max())
  np.testing.assert_array_equal(y, labels)


def test_bad_arguments(digits):
  with pytest.raises(ValueError, match='noize'):
    data_lib.load('synthetic', synthetic={'noize': 1.0})
  with pytest.raises(ValueError, match='holdout'):
    data_lib.load('digits', holdout=1.0)
  with pytest.raises(ValueError, match='holdout'):
    list(digits.eval_batches(split='holdout', batch_size=8))
  with pytest.raises(ValueError, match='batch_size'):
    next(digits.train_batches(batch_size=10_000, epoch=0, seed=0))
  with pytest.raises(ValueError, match='seed'):
    next(digits.train_batches(batch_size=8, epoch=0, seed=-1))


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_unprepared_dataset_fails_fast(tmp_path, name):
  # Timed from after TFDS's import, which is not the failure's cost.
  import tensorflow_datasets  # noqa: F401

  start = time.monotonic()
  with pytest.raises(data_lib.DatasetNotPreparedError) as e:
    data_lib.load(name, data_dir=str(tmp_path))
  assert time.monotonic() - start < 5
  assert isinstance(e.value, FileNotFoundError)
  assert isinstance(e.value, UserError)
  message = str(e.value)
  assert str(tmp_path) in message
  assert 'download_and_prepare' in message
  assert "file_format='array_record'" in message
  assert "pip install 'lpjax[prepare]'" in message
  assert f"tfds.builder('{name}'" in message
  if name == 'imagenet2012':
    assert 'ILSVRC2012_img_train.tar' in message
  assert not list(tmp_path.iterdir())  # Nothing downloaded or written.


@pytest.mark.parametrize('name', ['cifar10_1', 'cifar10_corrupted/fog_5'])
def test_unprepared_test_set_fails_fast(tmp_path, name):
  with pytest.raises(data_lib.DatasetNotPreparedError) as e:
    data_lib.load_test_set(name, data_dir=str(tmp_path))
  assert f"tfds.builder('{name}'" in str(e.value)
  assert 'TFDS downloads' in str(e.value)
  assert not list(tmp_path.iterdir())
  with pytest.raises(KeyError, match='cifar10_corrupted/fog_5'):
    data_lib.load_test_set('cifar10_2', data_dir=str(tmp_path))


@pytest.mark.parametrize('name', ['cifar10_1', 'cifar10_corrupted/fog_5'])
def test_test_sets_mock(mock_tfds, tmp_path, name):
  images, labels = data_lib.load_test_set(name, data_dir=str(tmp_path))
  assert images.shape == (48, 32, 32, 3) and images.dtype == np.float32
  assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.5
  assert labels.shape == (48,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10


# Digits.


def test_digits_shapes_dtypes_ranges(digits, digits_raw):
  assert digits.info == data_lib.DatasetInfo(
    name='digits',
    num_classes=10,
    image_shape=(8, 8, 1),
    num_train=1438,
    num_test=359,
  )
  batch = next(digits.train_batches(batch_size=32, epoch=0, seed=0))
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (32, 8, 8, 1)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (32,)
  assert batch['label'].dtype == np.int32
  assert batch['label'].min() >= 0 and batch['label'].max() < 10
  images, _ = _concat_eval(digits_raw, 'train')
  assert images.min() == 0 and images.max() == 1
  # x / 16 is exact in float32.
  np.testing.assert_array_equal(images * 16, np.round(images * 16))


def test_digits_split_is_stratified_and_complete(digits_raw):
  from sklearn.datasets import load_digits

  data = load_digits()
  train_x, train_y = _concat_eval(digits_raw, 'train')
  test_x, test_y = _concat_eval(digits_raw, 'test')
  assert len(train_y) + len(test_y) == NUM_DIGITS
  expected_test = np.floor(0.2 * np.bincount(data.target) + 0.5)
  np.testing.assert_array_equal(np.bincount(test_y), expected_test)
  # Together the splits are exactly the scikit-learn images.
  ours = np.round(np.concatenate([train_x, test_x]) * 16).astype(np.uint8)
  theirs = data.images.astype(np.uint8)[..., None]
  assert _rows(ours) == _rows(theirs)


def test_train_batches_are_deterministic(digits):
  def epoch(ds, e, seed=0):
    return list(ds.train_batches(batch_size=64, epoch=e, seed=seed))

  first, again = epoch(digits, 1), epoch(digits, 1)
  assert len(first) == digits.steps_per_epoch(64) == 1438 // 64
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other_epoch = np.concatenate([b['label'] for b in epoch(digits, 2)])
  other_seed = np.concatenate([b['label'] for b in epoch(digits, 1, seed=1)])
  labels = np.concatenate([b['label'] for b in first])
  assert not np.array_equal(labels, other_epoch)
  assert not np.array_equal(labels, other_seed)


def test_resumed_epoch_matches_uninterrupted_run(digits):
  kwargs = {'batch_size': 50, 'seed': 3}
  uninterrupted = [
    list(digits.train_batches(epoch=e, **kwargs)) for e in (0, 1)
  ]
  resumed = list(data_lib.load('digits').train_batches(epoch=1, **kwargs))
  for a, b in zip(uninterrupted[1], resumed, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_epoch_visits_distinct_train_examples():
  config = {'image_shape': (4, 4, 1), 'num_train': 100, 'num_test': 8}
  ds = data_lib.load('synthetic', synthetic=config)
  batches = ds.train_batches(batch_size=16, epoch=0, seed=0, augment=False)
  seen = _rows(np.concatenate([b['image'] for b in batches]))
  assert len(seen) == 96  # 100 // 16 * 16: the remainder is dropped.
  assert len(set(seen)) == 96  # Continuous noise: all images differ.
  assert set(seen) <= set(_rows(_concat_eval(ds, 'train')[0]))


@pytest.mark.parametrize('batch_size', [7, 128, 1000])
def test_eval_covers_every_example_once_with_mask(digits, batch_size):
  batches = list(digits.eval_batches(split='test', batch_size=batch_size))
  assert len(batches) == -(-359 // batch_size)
  for batch in batches:
    assert batch['image'].shape == (batch_size, 8, 8, 1)
    assert batch['label'].shape == batch['mask'].shape == (batch_size,)
    assert batch['mask'].dtype == np.float32
  last = batches[-1]
  pad = len(batches) * batch_size - 359
  np.testing.assert_array_equal(last['mask'][batch_size - pad :], 0)
  assert not np.any(last['image'][batch_size - pad :])
  assert sum(b['mask'].sum() for b in batches) == 359
  images, labels = _concat_eval(digits, 'test', batch_size)
  ref_images, ref_labels = _concat_eval(digits, 'test', 359)
  np.testing.assert_array_equal(images, ref_images)
  np.testing.assert_array_equal(labels, ref_labels)


# Several processes: each yields (and reads) only its rows of every batch.


def _process_batches(method, processes, **kwargs):
  """`method(**kwargs)`'s batches of every process, process by process."""
  return [
    list(method(process_index=i, process_count=processes, **kwargs))
    for i in range(processes)
  ]


def _assert_concatenate_to(shares, whole):
  """Every batch of `whole` is its processes' `shares`, in process order."""
  assert all(len(s) == len(whole) for s in shares)
  for step, batch in enumerate(whole):
    for key, value in batch.items():
      parts = [s[step][key] for s in shares]
      assert all(len(p) == len(value) // len(shares) for p in parts)
      np.testing.assert_array_equal(np.concatenate(parts), value)


@pytest.mark.parametrize('processes', [2, 4])
def test_process_rows_of_augmented_train_batches(digits, processes):
  kwargs = {'batch_size': 64, 'epoch': 2, 'seed': 1}
  whole = list(digits.train_batches(**kwargs))
  shares = _process_batches(digits.train_batches, processes, **kwargs)
  # Same rows, same random crops: bitwise the one-process batches.
  _assert_concatenate_to(shares, whole)
  default = list(
    digits.train_batches(process_index=0, process_count=1, **kwargs)
  )
  _assert_concatenate_to([default], whole)


def test_process_rows_of_padded_eval_batches(digits):
  # 359 test examples in batches of 100: the last has 59 real rows, so its
  # 4 shares of 25 rows hold 25, 25, 9 and 0 real ones.
  whole = list(digits.eval_batches(split='test', batch_size=100))
  shares = _process_batches(
    digits.eval_batches, 4, split='test', batch_size=100
  )
  _assert_concatenate_to(shares, whole)
  assert [s[-1]['mask'].sum() for s in shares] == [25, 25, 9, 0]
  assert not np.any(shares[3][-1]['image'])
  assert shares[3][-1]['image'].shape == (25, 8, 8, 1)
  assert sum(b['mask'].sum() for s in shares for b in s) == 359


class _Recording:
  """A split reader that logs the keys of every read."""

  def __init__(self, reader):
    self.reader, self.reads = reader, []

  def __len__(self):
    return len(self.reader)

  def read(self, keys):
    self.reads.append(np.asarray(keys).tolist())
    return self.reader.read(keys)


def test_each_process_reads_only_its_rows():
  config = {'image_shape': (4, 4, 1), 'num_train': 100, 'num_test': 30}
  ds = data_lib.load('synthetic', synthetic=config)
  readers = {}
  for split in ('train', 'test'):
    reader, keys = ds._splits[split]
    readers[split] = _Recording(reader)
    ds._splits[split] = (readers[split], keys)

  def reads(split, method, **kwargs):
    out = []
    for i in range(-1, 3):  # -1: one process, then process i of 3.
      shard = {} if i < 0 else {'process_index': i, 'process_count': 3}
      readers[split].reads.clear()
      list(method(**kwargs, **shard))
      out.append(list(readers[split].reads))
    return out[0], out[1:]

  whole, shares = reads(
    'train', ds.train_batches, batch_size=24, epoch=0, seed=0
  )
  assert [len(k) for k in whole] == [24] * 4
  for i, share in enumerate(shares):
    assert share == [keys[8 * i : 8 * (i + 1)] for keys in whole]
  # 30 test examples in batches of 12: the last 6 are rows 0..5 of the
  # third batch, all in process 0's share; process 2 reads nothing there.
  whole, shares = reads('test', ds.eval_batches, batch_size=12)
  assert [len(k) for k in whole] == [12, 12, 6]
  assert [[len(k) for k in share] for share in shares] == [
    [4, 4, 4],
    [4, 4, 2],
    [4, 4],
  ]


def test_process_rows_checks_its_arguments(digits):
  assert data_lib.process_rows(16) == (0, 16)  # This (only) JAX process.
  assert data_lib.process_rows(16, 3, 4) == (12, 16)
  with pytest.raises(ValueError, match='not divisible by the 3 processes'):
    next(
      digits.train_batches(
        batch_size=16, epoch=0, seed=0, process_index=0, process_count=3
      )
    )
  with pytest.raises(ValueError, match='not divisible by the 3 processes'):
    next(digits.eval_batches(batch_size=16, process_index=0, process_count=3))
  with pytest.raises(ValueError, match=r'not in \[0, 2\)'):
    data_lib.process_rows(16, 2, 2)
  with pytest.raises(ValueError, match='or neither'):
    data_lib.process_rows(16, process_index=1)


def test_calibration_is_class_balanced_and_fixed(digits):
  sample = digits.calibration(num_examples=50, seed=0)
  assert sample['image'].shape == (50, 8, 8, 1)
  np.testing.assert_array_equal(np.bincount(sample['label']), 5)
  odd = digits.calibration(num_examples=23, seed=0)
  counts = np.bincount(odd['label'], minlength=10)
  assert counts.sum() == 23 and set(counts) == {2, 3}
  # Fixed for a seed, nested across sizes, different across seeds.
  again = digits.calibration(num_examples=50, seed=0)
  np.testing.assert_array_equal(sample['image'], again['image'])
  assert set(_rows(odd['image'])) <= set(_rows(sample['image']))
  other = digits.calibration(num_examples=50, seed=1)
  assert _rows(other['image']) != _rows(sample['image'])
  # Eval-preprocessed (un-augmented) train images.
  train, _ = _concat_eval(digits, 'train')
  assert set(_rows(sample['image'])) <= set(_rows(train))
  uniform = digits.calibration(num_examples=30, seed=0, per_class=False)
  assert uniform['label'].shape == (30,)
  with pytest.raises(ValueError, match='num_examples'):
    digits.calibration(num_examples=5000, seed=0)


def test_holdout_is_a_deterministic_disjoint_part_of_train(digits_raw):
  ds = data_lib.load('digits', normalization='none', holdout=0.1, seed=5)
  assert ds.info.num_holdout == 144
  assert ds.info.num_train == 1438 - 144
  assert ds.info.num_test == 359
  train, _ = _concat_eval(ds, 'train')
  held, _ = _concat_eval(ds, 'holdout')
  full, _ = _concat_eval(digits_raw, 'train')
  assert _rows(np.concatenate([train, held])) == _rows(full)
  again, _ = _concat_eval(
    data_lib.load('digits', normalization='none', holdout=0.1, seed=5),
    'holdout',
  )
  np.testing.assert_array_equal(held, again)
  other, _ = _concat_eval(
    data_lib.load('digits', normalization='none', holdout=0.1, seed=6),
    'holdout',
  )
  assert _rows(other) != _rows(held)
  assert ds.calibration(num_examples=20, seed=0, split='holdout')[
    'label'
  ].shape == (20,)


# Normalization.


@pytest.mark.parametrize('holdout', [0.0, 0.2])
def test_per_pixel_mean_centers_the_train_set(holdout):
  ds = data_lib.load('digits', holdout=holdout)
  train, _ = _concat_eval(ds, 'train')
  # The suite's float32 rule: means of len(train) centred values.
  np.testing.assert_allclose(train.mean(axis=0), 0, atol=f32_atol(len(train)))
  assert ds.mean.shape == (8, 8, 1)
  test, _ = _concat_eval(ds, 'test')
  assert np.abs(test.mean(axis=0)).max() > 1e-3


def test_per_channel_normalizations():
  shape = {'image_shape': (8, 8, 3), 'num_train': 256, 'num_test': 64}
  ds = data_lib.load(
    'synthetic', synthetic=shape, normalization='per_channel_mean'
  )
  train, _ = _concat_eval(ds, 'train')
  per_channel = train[..., 0].size  # values averaged into each channel mean
  atol = f32_atol(per_channel, magnitude(train))
  np.testing.assert_allclose(train.mean(axis=(0, 1, 2)), 0, atol=atol)
  assert np.abs(train.mean(axis=0)).max() > 1e-2  # Not per pixel.
  ds = data_lib.load(
    'synthetic', synthetic=shape, normalization='per_channel_standardize'
  )
  train, _ = _concat_eval(ds, 'train')
  atol = f32_atol(per_channel, magnitude(train))
  np.testing.assert_allclose(train.mean(axis=(0, 1, 2)), 0, atol=atol)
  np.testing.assert_allclose(train.std(axis=(0, 1, 2)), 1, atol=atol)
  assert ds.std.shape == (3,)


# Augmentation.


def _reference_crop(images, pad, offsets, flips):
  out = []
  for image, (oy, ox), flip in zip(images, offsets, flips):
    padded = np.zeros(
      (image.shape[0] + 2 * pad, image.shape[1] + 2 * pad, image.shape[2])
    )
    padded[pad : pad + image.shape[0], pad : pad + image.shape[1]] = image
    crop = padded[oy : oy + image.shape[0], ox : ox + image.shape[1]]
    out.append(crop[:, ::-1] if flip else crop)
  return np.stack(out)


def test_pad_crop_flip_matches_reference():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(16, 6, 5, 2)).astype(np.float32)
  offsets = rng.integers(0, 7, size=(16, 2))
  flips = rng.random(16) < 0.5
  got = data_lib.pad_crop_flip(images, pad=3, offsets=offsets, flips=flips)
  np.testing.assert_array_equal(got, _reference_crop(images, 3, offsets, flips))
  same = data_lib.pad_crop_flip(
    images, pad=0, offsets=np.zeros((16, 2), int), flips=np.zeros(16, bool)
  )
  np.testing.assert_array_equal(same, images)


def _match_translations(augmented, plain, pad, allow_flip):
  """(offset, flip) of each augmented image as a crop of the padded plain."""
  matches = []
  for aug, image in zip(augmented, plain):
    found = [
      (oy, ox, flip)
      for oy in range(2 * pad + 1)
      for ox in range(2 * pad + 1)
      for flip in ((False, True) if allow_flip else (False,))
      if np.array_equal(
        aug, _reference_crop(image[None], pad, [(oy, ox)], [flip])[0]
      )
    ]
    assert found, 'augmented image is not a translation of the original'
    matches.append(found)
  return matches


def test_digits_augmentation_is_translation_without_flip(digits):
  assert data_lib.AUGMENTATIONS['digits'] == data_lib.Augmentation(
    pad=1, flip=False
  )
  kwargs = {'batch_size': 64, 'epoch': 0, 'seed': 0}
  augmented = next(digits.train_batches(**kwargs))
  plain = next(digits.train_batches(augment=False, **kwargs))
  np.testing.assert_array_equal(augmented['label'], plain['label'])
  matches = _match_translations(augmented['image'], plain['image'], 1, False)
  assert any((1, 1, False) not in m for m in matches)  # Some moved.


def test_cifar_augmentation_translates_and_flips(cifar10):
  assert cifar10.augmentation == data_lib.Augmentation(pad=4, flip=True)
  kwargs = {'batch_size': 32, 'epoch': 0, 'seed': 0}
  augmented = next(cifar10.train_batches(**kwargs))['image']
  plain = next(cifar10.train_batches(augment=False, **kwargs))['image']
  matches = _match_translations(augmented, plain, 4, True)
  flips = [m[0][2] for m in matches]  # Noise images: matches are unique.
  assert all(len(m) == 1 for m in matches)
  assert 0 < sum(flips) < len(flips)


# Synthetic.


def test_synthetic_is_learnable_and_seeded():
  ds = data_lib.load('synthetic', normalization='none')
  assert ds.info.image_shape == (32, 32, 3)
  assert (ds.info.num_train, ds.info.num_test) == (1024, 256)
  train_x, train_y = _concat_eval(ds, 'train')
  test_x, test_y = _concat_eval(ds, 'test')
  assert train_x.min() >= 0 and train_x.max() <= 1
  counts = np.bincount(train_y)
  assert counts.max() - counts.min() <= 1  # Balanced classes.
  means = np.stack([train_x[train_y == c].mean(0) for c in range(10)])
  dist = ((test_x[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
  accuracy = np.mean(dist.argmin(1) == test_y)
  assert accuracy > 0.8, accuracy  # Chance: 0.1.
  config = {'image_shape': (8, 8, 1), 'num_train': 32, 'num_test': 8}
  a = data_lib.load('synthetic', synthetic=config, seed=1)
  b = data_lib.load('synthetic', synthetic=config, seed=1)
  c = data_lib.load('synthetic', synthetic=config, seed=2)
  assert a.info.image_shape == (8, 8, 1)
  assert a.augmentation == data_lib.Augmentation(pad=1, flip=False)
  np.testing.assert_array_equal(
    _concat_eval(a, 'train')[0], _concat_eval(b, 'train')[0]
  )
  assert not np.array_equal(
    _concat_eval(a, 'train')[0], _concat_eval(c, 'train')[0]
  )


# TFDS datasets through tfds.testing.mock_data.


def test_cifar10_mock(cifar10):
  assert cifar10.info == data_lib.DatasetInfo(
    name='cifar10',
    num_classes=10,
    image_shape=(32, 32, 3),
    num_train=48,
    num_test=48,
  )
  assert cifar10.normalization == 'per_pixel_mean'
  train, labels = _concat_eval(cifar10, 'train', batch_size=20)
  assert train.shape == (48, 32, 32, 3)
  np.testing.assert_allclose(train.mean(axis=0), 0, atol=f32_atol(48))
  # Raw values are x / 255 - mean: the mean image is in [0, 1].
  assert cifar10.mean.shape == (32, 32, 3)
  assert 0 <= cifar10.mean.min() and cifar10.mean.max() <= 1
  batches = list(cifar10.train_batches(batch_size=16, epoch=0, seed=0))
  assert len(batches) == cifar10.steps_per_epoch(16) == 3
  for batch in batches:
    assert batch['image'].shape == (16, 32, 32, 3)
    assert batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32
  epoch_labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(np.sort(epoch_labels), np.sort(labels))
  evals = list(cifar10.eval_batches(batch_size=20))
  assert [b['mask'].sum() for b in evals] == [20, 20, 8]


def test_cifar100_and_standardize_mock(mock_tfds, tmp_path):
  ds = data_lib.load(
    'cifar100',
    data_dir=str(tmp_path),
    normalization='per_channel_standardize',
    holdout=0.25,
  )
  assert ds.info.num_classes == 100
  assert (ds.info.num_train, ds.info.num_holdout) == (36, 12)
  train, _ = _concat_eval(ds, 'train')
  # The suite's float32 rule over the values averaged into each channel.
  atol = f32_atol(train[..., 0].size, magnitude(train))
  np.testing.assert_allclose(train.mean(axis=(0, 1, 2)), 0, atol=atol)
  np.testing.assert_allclose(train.std(axis=(0, 1, 2)), 1, atol=atol)


def test_imagenet_mock(mock_tfds, tmp_path):
  ds = data_lib.load('imagenet2012', data_dir=str(tmp_path))
  assert ds.info.image_shape == (224, 224, 3)
  assert ds.info.num_classes == 1000
  assert ds.normalization == 'per_channel_standardize'
  batch = next(ds.train_batches(batch_size=4, epoch=0, seed=0))
  assert batch['image'].shape == (4, 224, 224, 3)
  assert batch['image'].dtype == np.float32
  again = next(ds.train_batches(batch_size=4, epoch=0, seed=0))
  np.testing.assert_array_equal(batch['image'], again['image'])
  # Two processes: the same random crops and flips of the same rows.
  shares = [
    next(
      ds.train_batches(
        batch_size=4, epoch=0, seed=0, process_index=i, process_count=2
      )
    )
    for i in range(2)
  ]
  _assert_concatenate_to([[s] for s in shares], [batch])
  evals = list(ds.eval_batches(batch_size=32))
  assert [b['mask'].sum() for b in evals] == [32, 16]
  sample = ds.calibration(num_examples=3, seed=0, per_class=False)
  np.testing.assert_array_equal(sample['image'].shape, (3, 224, 224, 3))


# --- Sensor series (aeon's .ts files) -----------------------------------------

_TS = """# a comment
@problemName Tiny
@timeStamps false
@univariate false
@dimensions 2
@equalLength true
@seriesLength 3
@classLabel true walk run
@data
1,2,3:4,5,6:run
-1.5,0,2e-1:7,8,9:walk
"""


def test_read_ts_parses_channels_steps_and_labels(tmp_path):
  path = tmp_path / 'tiny.ts'
  path.write_text(_TS)
  x, y, classes = data_lib.read_ts(str(path))
  assert classes == ('walk', 'run')
  np.testing.assert_array_equal(y, [1, 0])
  # [n, steps, channels]: channel 0 is the first ':' field.
  np.testing.assert_array_equal(
    x,
    np.array(
      [[[1, 4], [2, 5], [3, 6]], [[-1.5, 7], [0, 8], [0.2, 9]]], np.float32
    ),
  )


@pytest.mark.parametrize(
  'data, message',
  [
    ('1,2,3:4,5,6:jump\n', 'not among'),
    ('1,2:4,5,6:run\n', 'ragged'),
    ('1,2,3:4,5,6:run\n1,2:4,5:run\n', 'lengths must be equal'),
    ('1,NaN,3:4,5,6:run\n', 'missing'),
    ('', 'no series'),
  ],
)
def test_read_ts_rejects_broken_files(tmp_path, data, message):
  path = tmp_path / 'bad.ts'
  path.write_text(_TS.split('@data')[0] + '@data\n' + data)
  with pytest.raises(data_lib.SeriesFileError, match=message) as e:
    data_lib.read_ts(str(path))
  assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
  assert str(e.value).startswith(str(path))


def test_basicmotions_is_the_published_dataset():
  """40 + 40 recordings of 100 steps x 6 sensors, 10 per activity; train
  statistics standardise the train split; no augmentation."""
  ds = data_lib.load('basicmotions')
  assert ds.info.image_shape == (100, 6) and ds.info.num_classes == 4
  assert (ds.info.num_train, ds.info.num_test) == (40, 40)
  batches = list(ds.eval_batches(split='train', batch_size=40))
  x, labels = batches[0]['image'], batches[0]['label']
  np.testing.assert_array_equal(np.bincount(labels), [10, 10, 10, 10])
  flat = x.reshape(-1, 6).astype(np.float64)
  atol = f32_atol(len(flat), magnitude(flat))
  np.testing.assert_allclose(flat.mean(0), 0, atol=atol)
  np.testing.assert_allclose(flat.std(0), 1, atol=f32_atol(len(flat)))
  a = next(iter(ds.train_batches(batch_size=8, epoch=0, seed=0)))
  b = next(iter(ds.train_batches(batch_size=8, epoch=0, seed=0)))
  np.testing.assert_array_equal(a['image'], b['image'])
  jv = data_lib.load('japanesevowels')
  assert jv.info.image_shape == (25, 12) and jv.info.num_classes == 9
  assert (jv.info.num_train, jv.info.num_test) == (270, 370)
