"""The one user-error type of lpjax.

Every mistake a user can fix (a bad config value, an unprepared dataset, an
unreadable model, checkpoint or workdir file) raises a `UserError`; the
entry points (`main.py`, `python -m lpjax.evaluate`) print it as one line
and exit with status 2. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import os


class UserError(Exception):
  """A problem the user can fix; its message names the problem and the fix."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ''


class ConfigError(UserError, KeyError, ValueError):
  """A config that cannot work: an unknown name or a bad value.

  Also a `KeyError` (unknown names) and a `ValueError` (bad values), so
  code that catches either keeps working.
  """


def writable_folder(
  path: str, what: str, fix: str, error: type[UserError] = UserError
) -> str:
  """`path` as a folder this process can write into (created); else `error`.

  Args:
    path: the folder.
    what: what it is, for the message (`'the workdir'`).
    fix: the sentence that tells the user what to do instead.
    error: the `UserError` type to raise.
  """
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise error(
      f'Cannot create {what} {path}: {e.strerror or e}. {fix}'
    ) from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise error(f'{what[:1].upper()}{what[1:]} {path} is not writable. {fix}')
  return path


__all__ = ['ConfigError', 'UserError', 'writable_folder']
