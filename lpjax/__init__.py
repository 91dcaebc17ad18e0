"""lpjax: similarity-guided layer pruning for JAX/Flax.

Submodules are imported on demand so that `import lpjax.cka` needs only JAX.
"""

from __future__ import annotations

__version__ = '0.1.0'


def load(workdir, step=None, *, source=None):
  """A model of the run in `workdir`, ready to run and export.

  `step`: `None` (the last pruned model), `k` (0: the unpruned one),
  `'baseline'`, `'iter_003'`, or `'k/mode'` (an llm run's healed model);
  `source`: the unpruned `(arch, variables)` of an llm or embedding run
  made on a model given in memory. Returns a `lpjax.run.saved.Loaded`
  (`arch`, `variables`, `apply`, `task`, `step`, `provenance`); see
  `lpjax.run.saved`.
  """
  from lpjax.run import saved

  return saved.load(workdir, step, source=source)
