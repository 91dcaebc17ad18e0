"""Evaluating pruned models beyond clean accuracy.

One concept a module:

* `adversarial`: FGSM and PGD (L∞) in pixel space, the valid range kept;
* `corruptions`: the 15 CIFAR-10-C corruptions at 5 severities, for any
  image size;
* `latency`: timed jitted forwards (compile excluded, warm-up, median and
  spread, device and threads recorded);
* `energy`: the GPU's NVML energy counter where present, otherwise an
  explicit "not measured";
* `run`: all of them on every model of a finished pruning run
  (`python -m lpjax.evaluate --workdir=W`), added to its report.
"""

from lpjax.evaluate import adversarial, corruptions, energy, latency, run

__all__ = ['adversarial', 'corruptions', 'energy', 'latency', 'run']
