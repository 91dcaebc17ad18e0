"""Shared pytest fixtures, and the suite's float32 tolerance rule.

Every float32 comparison in the suite takes its tolerance from
`tests/tolerances.py`: a value that accumulates `m` rounded operations on
numbers of magnitude `s` through `depth` chained stages is within

    MARGIN · √(depth · m) · eps · s,   eps = 2**-23, MARGIN = 10

of the exact value and of any other float32 evaluation order (probabilistic
rounding-error analysis; derivation and references in that module). Tests
pass `m`, `depth` and `s` from their problem (a network's fan-in and kernel
count, a CKA's `n · d`), and state any gain on top with its reason. Exact
operations (replays, resumes, exact arithmetic) are compared bitwise.
"""

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import hypothesis
import jax
import pytest

# lpjax's default CPU devices (one per core) before any test computes, as
# in the runs the tests start in subprocesses.
import lpjax.sharding  # noqa: F401

# `shared/reference` beside the repository root (read-only material from
# elsewhere; see its README.md).
DEFAULT_REFERENCE_DIR = (
  Path(__file__).resolve().parents[1].parent / 'shared' / 'reference'
)


def _xla_cache_dir() -> Path:
  """One XLA compilation cache per test session, shared by its xdist workers
  and by the processes its tests start (`python main.py` resumes, README
  blocks): the tiny runs compile the same programs many times over. A cache
  hit loads the executable a compile produced, so results are unchanged.
  A fresh folder per session, named by an id the first process draws and
  its workers inherit, removed at the end; set `LPJAX_TEST_XLA_CACHE=0` to
  compile everything afresh."""
  run = os.environ.setdefault('LPJAX_TEST_RUN_ID', uuid.uuid4().hex)
  return Path(tempfile.gettempdir()) / f'lpjax-test-xla-cache-{run}'


if os.environ.get('LPJAX_TEST_XLA_CACHE', '1') != '0':
  if 'LPJAX_TEST_RUN_ID' not in os.environ:  # The first process: sweep up
    # the caches of sessions that were killed before their end (a day old).
    for old in Path(tempfile.gettempdir()).glob('lpjax-test-xla-cache-*'):
      try:
        if old.stat().st_mtime < time.time() - 86400:
          shutil.rmtree(old, ignore_errors=True)
      except OSError:  # Removed meanwhile by its own session.
        pass
  _CACHE = _xla_cache_dir()
  _CACHE.mkdir(exist_ok=True)
  # The environment reaches subprocesses; jax.config this process.
  os.environ['JAX_COMPILATION_CACHE_DIR'] = str(_CACHE)
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  jax.config.update('jax_compilation_cache_dir', str(_CACHE))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


# Property tests draw new examples on every run by default, so a rare
# failing input shows up on a developer's machine; in CI (`CI` set, as in
# `.ci/run`'s environment) they are derandomized: the same examples every
# run, so a CI result can be reproduced and a red CI is never a new draw.
hypothesis.settings.register_profile('ci', derandomize=True, database=None)
if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
  hypothesis.settings.load_profile('ci')


def pytest_sessionfinish(session):
  # The controller (or a run without xdist) removes the session's cache.
  if os.environ.get('LPJAX_TEST_XLA_CACHE', '1') != '0' and not hasattr(
    session.config, 'workerinput'
  ):
    shutil.rmtree(_xla_cache_dir(), ignore_errors=True)


@pytest.fixture(scope='session')
def reference_dir() -> Path:
  """The reference folder: `$LPJAX_REFERENCE_DIR` or `DEFAULT_REFERENCE_DIR`.

  Where it is absent, dependent tests skip, or fail when
  `LPJAX_REQUIRE_REFERENCE=1` (as CI sets it).
  """
  path = Path(os.environ.get('LPJAX_REFERENCE_DIR') or DEFAULT_REFERENCE_DIR)
  if not path.is_dir():
    _absent(
      f'Reference folder {path} is absent (set LPJAX_REFERENCE_DIR to the '
      "'shared/reference' folder)"
    )
  return path


@pytest.fixture(scope='session')
def keras_dir(reference_dir) -> Path:
  """The authors' Keras models and their recorded outputs."""
  path = reference_dir / 'keras'
  if not (path / 'reference_meta.json').is_file():
    _absent(f'Keras reference models are absent from {path}')
  return path


def _absent(message: str) -> None:
  """Skips, or fails where `LPJAX_REQUIRE_REFERENCE=1`."""
  if os.environ.get('LPJAX_REQUIRE_REFERENCE') == '1':
    pytest.fail(f'{message}; LPJAX_REQUIRE_REFERENCE=1 needs it.', False)
  pytest.skip(message)
