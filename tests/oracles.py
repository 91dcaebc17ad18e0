"""Independent float64 NumPy oracles shared by the tests."""

import numpy as np


def cka64(x, y):
  """Float64 numpy linear CKA (Kornblith et al. 2019, feature space)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  y = np.asarray(y, np.float64).reshape(len(y), -1)
  x = x - x.mean(0)
  y = y - y.mean(0)
  num = np.linalg.norm(y.T @ x) ** 2
  return num / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
