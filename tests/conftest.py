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
from pathlib import Path

import pytest

# `shared/reference` beside the repository root (read-only material from
# elsewhere; see its README.md).
DEFAULT_REFERENCE_DIR = (
  Path(__file__).resolve().parents[1].parent / 'shared' / 'reference'
)


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
