"""Running `main.py` as a user does, for the tests of whole commands."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PNG = b'\x89PNG\r\n\x1a\n'  # the first bytes of every PNG file


def main_py(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
  """`python main.py ARGS` from the repository root, output captured."""
  return subprocess.run(
    [sys.executable, 'main.py', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
