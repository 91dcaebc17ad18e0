"""The one user-error type of lpjax.

Every mistake a user can fix (a bad config value, an unprepared dataset, an
unreadable model, checkpoint or workdir file) raises a `UserError`; the
entry points (`main.py`, `python -m lpjax.evaluate`) print it as one line
and exit with status 2. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """A problem the user can fix; its message names the problem and the fix."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ''


class ConfigError(UserError, KeyError, ValueError):
  """A config that cannot work: an unknown name or a bad value.

  Also a `KeyError` (unknown names) and a `ValueError` (bad values), so
  code that catches either keeps working.
  """


__all__ = ['ConfigError', 'UserError']
