"""Evaluating pruned models beyond clean accuracy.

One concept a module:

* `adversarial`: FGSM and PGD (L∞) in pixel space, the valid range kept;
* `latency`: timed jitted forwards (compile excluded, warm-up, median and
  spread, device and threads recorded);
* `energy`: the GPU's NVML energy counter where present, otherwise an
  explicit "not measured";
* `run`: all of them on every model of a finished pruning run
  (`python -m lpjax.evaluate --workdir=W`), added to its report.
"""

from lpjax.evaluate import adversarial, energy, latency, run

__all__ = ['adversarial', 'energy', 'latency', 'run']
