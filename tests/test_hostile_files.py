"""Hostile and damaged model files end in their module's clear error.

The Keras importer gets truncated, corrupted and adversarial architecture
JSON and HDF5 weights (wrong shapes, missing layers, cycles in the graph,
huge declared shapes, seeded byte flips), built from a small valid model
written by `test_keras_h5`'s helpers and from the authors' published files;
every case must end within seconds in `KerasImportError` naming the file (or,
for a byte flip that only changes weight values, in a normal load). The
Keras cases run in a subprocess whose address space is capped a little above
what loading needs and with an alarm per case, so a hang, a crash or a huge
allocation fails the case instead of hurting the machine.

Orbax checkpoints with files truncated or deleted (state item, arch JSON,
meta JSON) must raise `CheckpointError` naming the step, or restore exactly
what was saved where the damaged file is not needed.
"""

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np
import pytest
from test_keras_h5 import _keras_files, _tiny

from lpjax import checkpointing

REPO = Path(__file__).resolve().parents[1]
# Every case must finish within this many seconds of CPU time (the cases
# take well under a second on a shared 2-core machine). CPU time, not wall
# time: the bound is on the work a file makes the loader do, which another
# process on the machine does not change.
CASE_SECONDS = 5
# The wall-clock alarm, against hangs (a blocked read uses no CPU): past it
# a case reports TimeoutError.
ALARM_SECONDS = 20
# Address space the worker may add to what it uses after a first load: far
# below any of the huge declared shapes below, above any honest load here.
HEADROOM_BYTES = 1 << 30
# Byte-flip fuzzing: bytes flipped per mutant (the mutants are seeded).
FLIPS = {'h5': 8, 'json': 3}

# --- The Keras worker ---------------------------------------------------------

# Loads every case of a JSON spec from stdin and prints one JSON line per
# case: outcome ('loaded' or the exception's type), message, and wall and
# CPU seconds.
_WORKER = """
import json
import resource
import signal
import sys
import time

from lpjax.interop import KerasImportError, load_keras_model

spec = json.load(sys.stdin)


def expire(signum, frame):
  raise TimeoutError(f'no result within {spec["alarm"]} s')


signal.signal(signal.SIGALRM, expire)
load_keras_model(*spec['warmup'])  # Imports and caches, before the cap.
with open('/proc/self/status') as f:
  used = next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize:'))
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (used + spec['headroom'], hard))
try:
  bytearray(2 * spec['headroom'])
  capped = False
except MemoryError:
  capped = True
print(json.dumps({'case': '<cap>', 'capped': capped}), flush=True)
for name, json_path, h5_path in spec['cases']:
  start, cpu_start = time.monotonic(), time.process_time()
  signal.alarm(spec['alarm'])
  try:
    load_keras_model(json_path, h5_path)
    outcome, message = 'loaded', ''
  except KerasImportError as e:
    outcome, message = 'KerasImportError', str(e)
  except BaseException as e:
    outcome, message = type(e).__name__, str(e)[:2000]
  finally:
    signal.alarm(0)
  seconds = time.monotonic() - start
  cpu_seconds = time.process_time() - cpu_start
  print(json.dumps({'case': name, 'outcome': outcome, 'message': message,
                    'seconds': seconds, 'cpu_seconds': cpu_seconds}),
        flush=True)
"""


def _run_worker(warmup, cases):
  """The worker's results on `cases` (`{name: (json, h5)}`).

  Where the worker dies (a crash, or a hang past its alarm), the case it
  died on is recorded in `crashes` and a new worker takes the cases after it
  (a few times at most).
  """
  results, crashes, pending = {}, {}, dict(cases)
  for _ in range(4):
    done, status, stderr = _run_worker_once(warmup, pending)
    results.update(done)
    missing = [c for c in pending if c not in results]
    if not missing:
      break
    crashes[missing[0]] = f'{status}:\n{stderr}'
    pending = {c: pending[c] for c in missing[1:]}
  return {'results': results, 'crashes': crashes}


def _run_worker_once(warmup, cases):
  spec = {
    'warmup': [str(p) for p in warmup],
    'cases': [[n, str(j), str(h)] for n, (j, h) in cases.items()],
    'alarm': ALARM_SECONDS,
    'headroom': HEADROOM_BYTES,
  }
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  try:
    proc = subprocess.run(
      [sys.executable, '-c', _WORKER],
      input=json.dumps(spec),
      capture_output=True,
      text=True,
      cwd=REPO,
      env=env,
      timeout=60 + 2 * len(cases),
    )
    out, err, status = proc.stdout, proc.stderr, f'exit {proc.returncode}'
  except subprocess.TimeoutExpired as e:
    out, err, status = e.stdout or '', e.stderr or '', 'killed: timed out'
    out = out.decode() if isinstance(out, bytes) else out
    err = err.decode() if isinstance(err, bytes) else err
  results = {}
  for line in out.splitlines():
    if line.startswith('{'):
      result = json.loads(line)
      results[result['case']] = result
  return results, status, err[-3000:]


# A case that must load. Any other must end in `KerasImportError` as
# `(regex its message matches, files one of which it names, may it load)`;
# a byte flip, say, may hit only weight values.
_LOADS = 'loads'


def _problems(run, case, expect) -> str | None:
  """What is wrong with the worker's result for `case`, if anything."""
  result = run['results'].get(case)
  if case in run['crashes']:
    return f'the worker died on it ({run["crashes"][case]})'
  if result is None:
    return 'no result: the worker died on too many cases before it'
  if result['cpu_seconds'] >= CASE_SECONDS:
    return f'took {result["cpu_seconds"]:.1f} s of CPU: {result}'
  outcome, message = result['outcome'], result['message']
  if expect == _LOADS:
    return None if outcome == 'loaded' else f'did not load: {result}'
  pattern, blamed, may_load = expect
  if outcome == 'loaded' and may_load:
    return None
  if outcome != 'KerasImportError':
    return f'not a KerasImportError: {result}'
  if not any(str(b) in message for b in blamed):
    return f'names neither of {blamed}: {message}'
  if not re.search(pattern, message):
    return f'does not match {pattern!r}: {message}'
  return None


# --- Writing damaged copies of a model ----------------------------------------


class _Files:
  """A valid model's `.json` + `.h5`, and damaged copies of them as cases.

  Case names are `group/detail`; `expect[name]` is what the case must end in
  (see `_problems`).
  """

  def __init__(self, directory: Path, json_path: Path, h5_path: Path):
    self.dir, self.json, self.h5 = directory, json_path, h5_path
    self.model = json.loads(json_path.read_text())
    self.cases: dict[str, tuple[Path, Path]] = {}
    self.expect: dict[str, Any] = {}

  def add(self, name, json_path, h5_path, expect):
    self.cases[name] = (json_path, h5_path)
    self.expect[name] = expect

  def path(self, name: str, suffix: str) -> Path:
    return self.dir / f'{name.replace("/", "__")}{suffix}'

  def json_bytes(self, name: str, data: bytes, pattern: str | None) -> Path:
    """A case: `data` as the JSON; refused matching `pattern` (or loads)."""
    path = self.path(name, '.json')
    path.write_bytes(data)
    expect = (pattern, [path], False) if pattern else _LOADS
    self.add(name, path, self.h5, expect)
    return path

  def json_edit(self, name: str, edit, pattern: str | None) -> Path:
    """A case: the JSON after `edit(model)`; `{note}` in `pattern` is what
    `edit` returned."""
    model = copy.deepcopy(self.model)
    note = edit(model)
    if pattern:
      pattern = pattern.replace('{note}', note or '')
    return self.json_bytes(name, json.dumps(model).encode(), pattern)

  def h5_bytes(self, name: str, data: bytes, pattern: str) -> Path:
    path = self.path(name, '.h5')
    path.write_bytes(data)
    self.add(name, self.json, path, (pattern, [path], False))
    return path

  def h5_edit(self, name: str, edit, pattern: str, json_path=None) -> Path:
    """A case: the weights after `edit(h5py_file)`, with `json_path`."""
    path = self.path(name, '.h5')
    shutil.copyfile(self.h5, path)
    with h5py.File(path, 'a') as f:
      edit(f)
    self.add(name, json_path or self.json, path, (pattern, [path], False))
    return path

  def truncations(self, which: str, at: Sequence[float], pattern: str):
    data = (self.json if which == 'json' else self.h5).read_bytes()
    for k, a in enumerate(at):
      cut = data[: a if isinstance(a, int) else int(len(data) * a)]
      name = f'{which}/truncated_{k}'
      if which == 'json':
        self.json_bytes(name, cut, pattern)
      else:
        self.h5_bytes(name, cut, pattern)

  def flips(self, which: str, mutants: int, seed: int) -> None:
    """Seeded byte-flip mutants of the JSON or the weights."""
    source = self.json if which == 'json' else self.h5
    data = source.read_bytes()
    rng = np.random.default_rng(seed)
    for k in range(mutants):
      mutant = bytearray(data)
      for pos in rng.integers(0, len(data), FLIPS[which]):
        mutant[pos] ^= int(rng.integers(1, 256))
      name = f'flips/{which}_{k:02d}'
      path = self.path(name, source.suffix)
      path.write_bytes(bytes(mutant))
      pair = (path, self.h5) if which == 'json' else (self.json, path)
      # A JSON flip may also surface as weights that no longer fit it.
      self.add(name, *pair, ('', pair, True))


def _layers(model):
  return model['config']['layers']


def _inputs(layer):
  nodes = layer['inbound_nodes']
  return [ref[0] for ref in nodes[0]] if nodes else []


def _of_kind(model, kind):
  return [lyr for lyr in _layers(model) if lyr['class_name'] == kind]


def _by_name(model, name):
  (layer,) = [lyr for lyr in _layers(model) if lyr['name'] == name]
  return layer


def _consumers(model, name):
  return [lyr for lyr in _layers(model) if name in _inputs(lyr)]


def _stem(model):
  """The stem's conv, BN and ReLU layers."""
  x, stem = model['config']['input_layers'][0][0], []
  for _ in range(3):
    (layer,) = _consumers(model, x)
    stem.append(layer)
    x = layer['name']
  return stem


def _stem_bn(model):
  return _stem(model)[1]


def _first_conv1(model):
  """The first block's first conv (its width is free: a filter-pruned one)."""
  (conv,) = [
    c
    for c in _consumers(model, _stem(model)[2]['name'])
    if c['class_name'] == 'Conv2D'
  ]
  return conv


def _remove(pick, *, rewire=False):
  """An edit deleting layer `pick(model)`; `rewire`: its consumers read its
  input instead (a model that simply lacks the layer)."""

  def edit(model):
    victim = pick(model)
    _layers(model).remove(victim)
    if rewire:
      for layer in _consumers(model, victim['name']):
        for ref in layer['inbound_nodes'][0]:
          if ref[0] == victim['name']:
            ref[0] = _inputs(victim)[0]
      output = model['config']['output_layers'][0]
      if output[0] == victim['name']:
        output[0] = _inputs(victim)[0]
    return re.escape(victim['name'])

  return edit


def _block_bn(model):
  """A block's second BN (the one an Add reads)."""
  return next(
    _by_name(model, i)
    for add in _of_kind(model, 'Add')
    for i in _inputs(add)
    if _by_name(model, i)['class_name'] == 'BatchNormalization'
  )


def _loop_back(model):
  """The last block's Add feeds the stem ReLU again; the head is cut off.

  Walking blocks from the stem then never reaches the head: the importer must
  see the cycle instead of following it forever.
  """
  pool = _of_kind(model, 'AveragePooling2D')[0]
  last_relu = _by_name(model, _inputs(pool)[0])
  last_add = _inputs(last_relu)[0]
  _stem(model)[2]['inbound_nodes'][0].append([last_add, 0, 0, {}])
  _layers(model).remove(last_relu)
  # The head hangs off a second, unconnected input.
  _layers(model).append(
    {
      'class_name': 'InputLayer',
      'name': 'orphan_input',
      'config': {'name': 'orphan_input', 'batch_input_shape': [None, 1, 1, 1]},
      'inbound_nodes': [],
    }
  )
  pool['inbound_nodes'] = [[['orphan_input', 0, 0, {}]]]


def _self_loop(model):
  relu = _stem(model)[2]
  relu['inbound_nodes'][0].append([relu['name'], 0, 0, {}])


def _set(pick, key, value):
  """An edit setting `key` of layer `pick(model)`'s config to `value`."""

  def edit(model):
    layer = pick(model)
    layer['config'][key] = value
    return re.escape(layer['name'])

  return edit


def _first(kind):
  return lambda model: _of_kind(model, kind)[0]


def _global_pool_with_huge_image(model):
  """Global average pooling (no Flatten) over 10**9 x 10**9 images."""
  pool = _of_kind(model, 'AveragePooling2D')[0]
  pool['class_name'] = 'GlobalAveragePooling2D'
  del pool['config']['pool_size']
  _layers(model).remove(_of_kind(model, 'Flatten')[0])
  _of_kind(model, 'Dense')[0]['inbound_nodes'] = [[[pool['name'], 0, 0, {}]]]
  shape = _of_kind(model, 'InputLayer')[0]['config']['batch_input_shape']
  shape[1:3] = [10**9, 10**9]


def _weight(f, layer, name):
  """The path of weight `name` (`kernel`, `gamma`, ...) of `layer`."""
  found = []
  f[layer].visititems(
    lambda p, o: found.append(p) if p.endswith(f'/{name}:0') else None
  )
  (path,) = found
  return f'{layer}/{path}'


def _replace(f, layer, name, **dataset):
  """Replaces weight `name` of `layer` by `f.create_dataset(**dataset)`."""
  path = _weight(f, layer, name)
  del f[path]
  return f.create_dataset(path, **dataset)


def _with(layer, name, **dataset):
  """An h5 edit replacing weight `name` of `layer` (see `_replace`)."""
  return lambda f: _replace(f, layer, name, **dataset)


def _transposed(layer):
  """An h5 edit transposing `layer`'s kernel."""

  def edit(f):
    path = _weight(f, layer, 'kernel')
    value = f[path][()]
    del f[path]
    f[path] = value.T.copy()

  return edit


def _without(layer, name):
  """An h5 edit deleting weight `name` of `layer`."""

  def edit(f):
    del f[_weight(f, layer, name)]

  return edit


_TRANSPOSED_STEM = (
  r'stem_conv/kernel: \((\d+), (\d+), 3, 3\) '
  r'\(model expects \(3, 3, \2, \1\)\)'
)
_HUGE_KERNEL = (10**6, 10**6)


def _graph_cases(files: _Files) -> None:
  """Damaged architecture JSON: every case names the JSON file."""
  files.truncations('json', (0, 1, 1 / 7, 1 / 3, 1 / 2, -1), 'is not JSON')
  files.json_bytes('json/not_utf8', b'\xff\xfe{"config": 1}', 'not UTF-8')
  files.json_bytes('json/deep', b'[' * 200_000, 'nests .* too deeply')

  def model(**config):
    return json.dumps({'class_name': 'Model', 'config': config}).encode()

  layer_a = {'name': 'a', 'class_name': 'Dense'}
  for name, data, pattern in [
    ('list', b'[]', 'not a Keras model JSON'),
    ('layers_int', model(layers=5), '"layers" is 5'),
    ('layer_int', model(layers=[1]), 'layer #0 is 1'),
    ('no_class', model(layers=[{'name': 'a'}]), "'a' has class_name null"),
    ('config_list', model(layers=[{**layer_a, 'config': []}]), "'a' has conf"),
    ('inputs_int', model(layers=[], input_layers=7), '"input_layers" is 7'),
  ]:
    files.json_bytes(f'not_a_model/{name}', data, pattern)

  def bad_node(model):
    _first_conv1(model)['inbound_nodes'] = [[5]]

  def duplicate(model):
    layer = copy.deepcopy(_of_kind(model, 'Dense')[0])
    _layers(model).append(layer)
    return re.escape(layer['name'])

  def ghost(model):
    conv = _first_conv1(model)
    conv['inbound_nodes'] = [[['ghost', 0, 0, {}]]]

  edit = files.json_edit
  edit('graph/node_format', bad_node, 'has inbound nodes in a format')
  edit('graph/duplicate', duplicate, "two layers are called '{note}'")
  edit('graph/missing_stem_bn', _remove(_stem_bn), "reads from '{note}'")
  edit(
    'graph/missing_stem_bn_rewired',
    _remove(_stem_bn, rewire=True),
    'is where the stem BN was expected',
  )
  edit(
    'graph/missing_block_bn_rewired',
    _remove(_block_bn, rewire=True),
    'the residual branch into .*; expected conv -> BN -> ReLU -> conv -> BN',
  )
  edit('graph/missing_dense', _remove(_first('Dense')), "'{note}' is not a")
  edit(
    'graph/missing_dense_rewired',
    _remove(_first('Dense'), rewire=True),
    'feeds 0 layers .* the dense head',
  )
  edit('graph/inbound_ghost', ghost, "reads from 'ghost', which is not a")
  edit('graph/cycle_loop_back', _loop_back, 'the graph has a cycle of')
  edit('graph/cycle_self', _self_loop, r'cycle of 1 layers: (\S+) -> \1;')

  conv = _first('Conv2D')
  for pick, key, value, pattern in [
    (conv, 'filters', 'abc', 'filters "abc"'),
    (conv, 'filters', None, 'filters null'),
    (conv, 'filters', -3, 'filters -3'),
    (conv, 'filters', 2.5, 'filters 2.5'),
    (conv, 'filters', True, 'filters true'),
    (conv, 'kernel_size', 'x', 'kernel_size "x"'),
    (conv, 'strides', [0, 0], 'strides 0'),
    (_first('BatchNormalization'), 'epsilon', 'x', 'epsilon "x"'),
    (_first('BatchNormalization'), 'momentum', [1], r'momentum \[1\]'),
    (_first('Dense'), 'units', 'x', 'units "x"'),
    (_first('InputLayer'), 'batch_input_shape', 5, 'shape 5'),
    (_first('InputLayer'), 'batch_input_shape', [0, 'a', 8, 3], 'height "a"'),
    (_first('InputLayer'), 'batch_input_shape', [0, 8, 8, -1], 'channels -1'),
    (_first('AveragePooling2D'), 'pool_size', 3, 'pools 3 windows'),
  ]:
    name = re.sub(r'\W+', '_', f'{key}_{json.dumps(value)}').strip('_')
    edit(f'numbers/{name}', _set(pick, key, value), "'{note}'.* " + pattern)


def _huge_cases(files: _Files) -> None:
  """Huge declared sizes: refused before allocating them, or loaded."""
  edit = files.json_edit  # A mismatch names both files.
  edit(
    'huge/filters_in_json',
    _set(_first_conv1, 'filters', 10**9),
    r'conv1/kernel: \(3, 3, \d+, \d+\) \(model expects \(3, 3, \d+, 10{9}\)',
  )
  edit(
    'huge/channels_in_json',
    _set(_first('InputLayer'), 'batch_input_shape', [None, 8, 8, 10**9]),
    r'stem_conv/kernel: \(3, 3, 3, \d+\) \(model expects \(3, 3, 10{9},',
  )
  edit('huge/image_global_pool', _global_pool_with_huge_image, None)

  # The JSON asks for 10**8 classes and the weights declare them, unwritten
  # (or one compressed chunk of zeros): 6.4 GB never to be allocated.
  units = 10**8
  json_path = files.path('huge/units', '.json')
  model = copy.deepcopy(files.model)
  _set(_first('Dense'), 'units', units)(model)
  json_path.write_text(json.dumps(model))
  dense = _of_kind(files.model, 'Dense')[0]['name']

  def unwritten_head(*, bomb=False, **options):
    def edit(f):
      width = f[_weight(f, dense, 'kernel')].shape[0]
      for name, shape in (('kernel', (width, units)), ('bias', (units,))):
        ds = _replace(f, dense, name, shape=shape, dtype='f4', **options)
        if bomb:
          ds[..., :4096] = 0

    return edit

  gzip = {'chunks': True, 'compression': 'gzip'}
  for name, edit_h5 in [
    ('contiguous', unwritten_head()),
    ('gzip', unwritten_head(**gzip)),
    ('gzip_bomb', unwritten_head(bomb=True, **gzip)),
  ]:
    files.h5_edit(
      f'huge/units_{name}',
      edit_h5,
      rf'declares shape \((\d+, )?{units},?\) \(\d+ bytes\) but the file '
      r'stores \d+ bytes',
      json_path=json_path,
    )
  files.h5_edit(
    'huge/dataset_in_h5',
    _with(
      _stem(files.model)[0]['name'], 'kernel', shape=_HUGE_KERNEL, dtype='f4'
    ),
    r'stem_conv/kernel: \(1000000, 1000000\)',
  )


def _weights_cases(files: _Files) -> None:
  """Damaged weights: every case names the HDF5 file."""
  files.truncations(
    'h5',
    (0, 8, 100, 2048, 1 / 3, 1 / 2, -1),
    'is not an HDF5 file, or is truncated or damaged',
  )
  stem_conv, stem_bn, _ = (lyr['name'] for lyr in _stem(files.model))
  dense = _of_kind(files.model, 'Dense')[0]['name']
  raw = files.dir / 'outside.bin'
  raw.write_bytes(bytes(1 << 16))
  outside = {'dtype': 'f4', 'external': [(str(raw), 0, 1 << 16)]}
  strings = np.array([b'a', b'b', b'c'])
  for name, edit, pattern in [
    (
      'wrong_shape',
      _with(stem_bn, 'gamma', data=np.ones(5, 'f4')),
      r'stem_bn/scale: \(5,\) \(model expects \(\d+,\)\)',
    ),
    ('transposed', _transposed(stem_conv), _TRANSPOSED_STEM),
    (
      'missing',
      _without(stem_bn, 'beta'),
      rf"'{stem_bn}' has weights \['gamma', 'moving_mean', 'moving_var",
    ),
    ('strings', _with(dense, 'bias', data=strings), "'bias' .* has dtype"),
    (
      'external',
      _with(dense, 'bias', shape=(3,), **outside),
      'stored outside the file',
    ),
  ]:
    files.h5_edit(f'weights/{name}', edit, pattern)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """The hermetic cases: damaged copies of a tiny model written here."""
  directory = tmp_path_factory.mktemp('hostile_tiny')
  arch, variables = _tiny()
  files = _Files(directory, *_keras_files(directory, arch, variables))
  _graph_cases(files)
  _huge_cases(files)
  _weights_cases(files)
  files.flips('json', 15, seed=1)
  files.flips('h5', 40, seed=2)
  return files, _run_worker((files.json, files.h5), files.cases)


def _check_group(files: _Files, run, group: str) -> None:
  cases = [c for c in files.cases if c.split('/')[0] == group]
  assert cases, f'no case in group {group!r}'
  problems = [
    f'{case}: {problem}'
    for case in cases
    if (problem := _problems(run, case, files.expect[case]))
  ]
  assert not problems, '\n'.join(problems)


def test_the_worker_caps_its_address_space(tiny_run):
  """Else the huge-shape cases would prove nothing (and could hurt)."""
  _, run = tiny_run
  cap = run['results'].get('<cap>')
  assert cap and cap['capped'], run


@pytest.mark.parametrize(
  'group',
  ['json', 'not_a_model', 'graph', 'numbers', 'huge', 'h5', 'weights', 'flips'],
)
def test_tiny_model_damaged(tiny_run, group):
  _check_group(*tiny_run, group)


# --- The authors' published files ---------------------------------------------


@pytest.fixture(scope='module')
def reference_run(keras_dir, tmp_path_factory):
  """Damaged copies of the authors' pruned ResNet-56 (iteration 19)."""
  directory = tmp_path_factory.mktemp('hostile_reference')
  stem = 'resnet56_cka_iter19'
  files = _Files(
    directory, keras_dir / f'{stem}.json', keras_dir / f'{stem}.h5'
  )
  files.truncations('json', (1 / 3, 1 / 2, -1), 'is not JSON')
  files.truncations(
    'h5', (1 / 3, 1 / 2, -1), 'is not an HDF5 file, or is truncated or'
  )
  edit = files.json_edit
  edit('graph/missing_stem_bn', _remove(_stem_bn), "reads from '{note}'")
  edit(
    'graph/missing_block_bn_rewired',
    _remove(_block_bn, rewire=True),
    'the residual branch into .*; expected conv -> BN -> ReLU -> conv -> BN',
  )
  edit('graph/missing_dense', _remove(_first('Dense')), "'{note}' is not a")
  edit('graph/cycle_loop_back', _loop_back, 'the graph has a cycle of')
  edit(
    'huge/filters_in_json',
    _set(_first_conv1, 'filters', 10**9),
    r'conv1/kernel: \(3, 3, 16, \d+\) \(model expects \(3, 3, 16, 10{9}\)',
  )
  stem_conv = _stem(files.model)[0]['name']
  files.h5_edit('weights/transposed', _transposed(stem_conv), _TRANSPOSED_STEM)
  files.h5_edit(
    'huge/dataset_in_h5',
    _with(stem_conv, 'kernel', shape=_HUGE_KERNEL, dtype='f4'),
    r'stem_conv/kernel: \(1000000, 1000000\)',
  )
  files.flips('json', 5, seed=3)
  files.flips('h5', 12, seed=4)
  return files, _run_worker((files.json, files.h5), files.cases)


@pytest.mark.parametrize(
  'group', ['json', 'h5', 'graph', 'huge', 'weights', 'flips']
)
def test_published_model_damaged(reference_run, group):
  _check_group(*reference_run, group)


# --- Orbax checkpoints --------------------------------------------------------

STEP = 3


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """`(directory, arch, meta, state)` of one saved checkpoint step."""
  arch, variables = _tiny()
  state = {'step': np.int32(7), **variables}
  meta = {'epoch': 3, 'complete': False}
  directory = tmp_path_factory.mktemp('checkpoint') / 'stage'
  with checkpointing.Checkpoints(directory) as ck:
    ck.save(STEP, state=state, arch=arch, meta=meta)
  return directory, arch, meta, state


def _copy(saved, directory: Path, damage) -> Path:
  """A copy of the saved checkpoint after `damage(step_directory)`."""
  shutil.copytree(saved[0], directory)
  damage(directory / str(STEP))
  return directory


@contextlib.contextmanager
def _time_bound():
  """Fails what takes `CASE_SECONDS` of CPU time (this process's threads,
  the checkpointer's included); interrupts it at `ALARM_SECONDS` of wall
  time."""

  def expire(signum, frame):
    raise TimeoutError(f'still running after {ALARM_SECONDS} s')

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(ALARM_SECONDS)
  start = time.process_time()
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
    elapsed = time.process_time() - start
    assert elapsed < CASE_SECONDS, f'took {elapsed:.1f} s of CPU'


def _restore(directory: Path, saved):
  """Everything a resume reads: arch, meta, and the state into its tree."""
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), saved[3]
  )
  with _time_bound(), checkpointing.Checkpoints(directory) as ck:
    arch, meta = ck.restore_meta()
    state = ck.restore(abstract)
  return arch, meta, state


def _assert_names_the_step(error, directory):
  message = str(error)
  assert f'step {STEP} ' in message and str(directory) in message, message


def _truncate(fraction):
  def damage(path):
    with open(path, 'r+b') as f:
      f.truncate(int(os.path.getsize(path) * fraction))

  return damage


_DAMAGE = {
  'deleted': os.remove,
  'halved': _truncate(0.5),
  'empty': _truncate(0),
}


def _largest_state_file(step_dir: Path) -> Path:
  return max(
    (p for p in (step_dir / 'state').rglob('*') if p.is_file()),
    key=lambda p: p.stat().st_size,
  )


@pytest.mark.parametrize('damage', sorted(_DAMAGE))
@pytest.mark.parametrize(
  'target',
  [
    'arch/metadata',
    'meta/metadata',
    'state/_METADATA',
    'state/manifest.ocdbt',
    'state data',
  ],
)
def test_damaged_checkpoint_file_names_the_step(
  saved, tmp_path, target, damage
):
  def hit(step_dir):
    if target == 'state data':  # The array data: the largest file.
      path = _largest_state_file(step_dir)
    else:
      path = step_dir / target
    assert path.is_file(), path
    _DAMAGE[damage](path)

  directory = _copy(saved, tmp_path / 'copy', hit)
  with pytest.raises(checkpointing.CheckpointError) as error:
    _restore(directory, saved)
  _assert_names_the_step(error.value, directory)


def test_every_file_damaged_fails_clearly_or_changes_nothing(saved, tmp_path):
  """Each file of the step deleted, then halved: a clear error, or (for a
  file the restore does not need) exactly what was saved."""
  _, arch, meta, state = saved
  files = sorted(
    p.relative_to(saved[0] / str(STEP))
    for p in (saved[0] / str(STEP)).rglob('*')
    if p.is_file()
  )
  assert len(files) >= 6, files
  refused = 0
  for k, (name, damage) in enumerate(
    (f, d) for f in files for d in ('deleted', 'halved')
  ):
    directory = _copy(
      saved,
      tmp_path / f'copy{k}',
      lambda s, name=name, damage=damage: _DAMAGE[damage](s / name),
    )
    try:
      got = _restore(directory, saved)
    except checkpointing.CheckpointError as e:
      _assert_names_the_step(e, directory)
      refused += 1
      continue
    assert got[:2] == (arch, meta), (name, damage)
    jax.tree.map(np.testing.assert_array_equal, got[2], state)
  assert refused >= 10, refused


@pytest.mark.parametrize('item', ['state', 'arch', 'meta', '*'])
def test_missing_item_names_the_step(saved, tmp_path, item):
  def remove(step_dir):
    for path in step_dir.glob(item):
      shutil.rmtree(path) if path.is_dir() else path.unlink()

  directory = _copy(saved, tmp_path / 'copy', remove)
  with pytest.raises(checkpointing.CheckpointError) as error:
    _restore(directory, saved)
  _assert_names_the_step(error.value, directory)


_ARCH = {
  'family': 'resnet_cifar',
  'num_classes': 3,
  'min_blocks_per_stage': 2,
  'options': {},
  'stages': [],
}


@pytest.mark.parametrize(
  'item, text, pattern',
  [
    ('arch', '[]', 'invalid arch'),
    ('arch', '{}', 'invalid arch'),
    ('arch', json.dumps({**_ARCH, 'family': 'nope'}), "family 'nope'"),
    ('arch', json.dumps({**_ARCH, 'stages': [5]}), 'invalid arch'),
    ('arch', json.dumps({**_ARCH, 'options': [1]}), 'invalid arch'),
    ('arch', '\xff{', 'cannot be read'),
    ('meta', '[1, 2]', 'meta of type list'),
    ('meta', '[]', 'meta of type list'),
    ('meta', 'null', 'meta of type NoneType'),
    ('meta', '"xy"', 'meta of type str'),
  ],
)
def test_item_that_is_json_but_not_what_was_saved(
  saved, tmp_path, item, text, pattern
):
  def rewrite(step_dir):
    (step_dir / item / 'metadata').write_text(text)

  directory = _copy(saved, tmp_path / 'copy', rewrite)
  with pytest.raises(checkpointing.CheckpointError, match=pattern) as error:
    _restore(directory, saved)
  _assert_names_the_step(error.value, directory)
