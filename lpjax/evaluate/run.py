"""Evaluate every model of a finished pruning run beyond clean accuracy.

    python -m lpjax.evaluate --workdir=W [--eps=0.0314] [--examples=1000]

reads the run's `results.json` and its checkpoints (`baseline/`,
`iter_001/`, ...: the last step of each stage is that model after its
fine-tune), rebuilds the run's dataset from the recorded config, and for
every model measures, on the first `examples` test images:

* clean accuracy, accuracy under FGSM and under PGD (`steps`, random start,
  seed) at each ε in pixel units (`lpjax.evaluate.adversarial`, in the
  dataset's pixel space);
* accuracy on the CIFAR-10-C corruptions at each severity, and their mean
  per severity (`lpjax.evaluate.corruptions`, on the first
  `corruption_examples` test images);
* accuracy on prepared TFDS test-only sets of a CIFAR-10 run (CIFAR-10.1,
  the published CIFAR-10-C; `test_sets`);
* latency of the jitted eval-mode forward at each batch size, and the
  speed-up against the unpruned model beside the FLOPs ratio
  (`lpjax.evaluate.latency`);
* energy per batch from the GPU's counter, or "not measured"
  (`lpjax.evaluate.energy`).

It writes `evaluation.json` and rewrites `report.md`, which then shows the
table and `robustness.png` (accuracy under attack against FLOPs
reduction). Test data is only measured here; nothing is decided from it.

Every argument (`check_arguments`: counts, budgets, corruption and test-set
names with a "did you mean", severities, the frost photographs) and the
workdir (its run, every stage's checkpoint folder) are checked before any
model is loaded; a bad one is one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lpjax import checkpointing, data, errors, models
from lpjax import report as report_lib
from lpjax.evaluate import adversarial, energy, latency
from lpjax.evaluate import corruptions as corruptions_lib

EVALUATION_FILENAME = 'evaluation.json'
# The CIFAR-10-C corruptions as TFDS names its `cifar10_corrupted` configs
# (`<name>_<severity 1-5>`; `frosted_glass_blur` and `elastic` are the
# paper's glass_blur and elastic_transform, the last four its extras).
TFDS_CORRUPTIONS = (
  'brightness',
  'contrast',
  'defocus_blur',
  'elastic',
  'fog',
  'frost',
  'frosted_glass_blur',
  'gaussian_blur',
  'gaussian_noise',
  'impulse_noise',
  'jpeg_compression',
  'motion_blur',
  'pixelate',
  'saturate',
  'shot_noise',
  'snow',
  'spatter',
  'speckle_noise',
  'zoom_blur',
)
# Every name `test_sets` accepts (`lpjax.data.load_test_set`).
TEST_SETS = (
  'cifar10_1',
  'cifar10_1/v4',
  'cifar10_1/v6',
  *(
    f'cifar10_corrupted/{c}_{v}'
    for c in TFDS_CORRUPTIONS
    for v in corruptions_lib.SEVERITIES
  ),
)


class EvaluationError(errors.UserError, ValueError):
  """A workdir that cannot be evaluated, naming the problem and the fix."""


def _did_you_mean(name: str, valid: Sequence[str]) -> str:
  near = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
  return f' Did you mean {near[0]!r}?' if near else ''


def check_arguments(
  *,
  eps: Sequence[float],
  examples: int,
  pgd_steps: int,
  batch: int,
  latency_batches: Sequence[int],
  latency_runs: int,
  corruptions: Sequence[str] | None,
  severities: Sequence[int],
  corruption_examples: int,
  frost_dir: str | os.PathLike | None,
  test_sets: Sequence[str],
) -> tuple[str, ...]:
  """Refuses any argument of `evaluate_run` that cannot work, before work.

  Returns:
    The corruptions to apply (`None`: all 15 with `frost_dir`, else the 14
    without frost).

  Raises:
    EvaluationError: one line naming the argument (as its flag) and the fix.
  """
  counts = {
    'examples': examples,
    'pgd_steps': pgd_steps,
    'batch': batch,
    'latency_runs': latency_runs,
    'corruption_examples': corruption_examples,
  }
  for name, value in counts.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise EvaluationError(f'--{name} must be an integer >= 1; got {value!r}.')
  if not latency_batches or any(
    isinstance(b, bool) or not isinstance(b, int) or b < 1
    for b in latency_batches
  ):
    raise EvaluationError(
      '--latency_batches must be comma-separated batch sizes >= 1; got '
      f'{list(latency_batches)}.'
    )
  if not eps or any(not 0 <= e < math.inf for e in eps):
    raise EvaluationError(
      '--eps must be comma-separated budgets >= 0 in pixel units (pixels in '
      f'[0, 1], e.g. 0.0314 for 8/255); got {list(eps)}.'
    )
  if corruptions is None:
    corruptions = tuple(
      c for c in corruptions_lib.CORRUPTIONS if c != 'frost' or frost_dir
    )
  valid = corruptions_lib.CORRUPTIONS
  for c in corruptions:
    if c not in valid:
      raise EvaluationError(
        f'Unknown corruption {c!r} (--corruptions).{_did_you_mean(c, valid)} '
        f'Valid: {", ".join(valid)}, or none.'
      )
  if corruptions:
    bad = [v for v in severities if v not in corruptions_lib.SEVERITIES]
    if bad or not severities:
      raise EvaluationError(
        '--severities must be comma-separated integers in 1..5; got '
        f'{list(severities)}.'
      )
  if 'frost' in corruptions:
    if not frost_dir:
      raise EvaluationError(
        "The frost corruption blends the authors' frost photographs: pass "
        f'--frost_dir=<folder with {", ".join(corruptions_lib.FROST_FILES)}> '
        '(hendrycks/robustness, ImageNet-C/create_c/), or leave frost out '
        'of --corruptions.'
      )
    missing = [
      f
      for f in corruptions_lib.FROST_FILES
      if not os.path.isfile(os.path.join(os.fspath(frost_dir), f))
    ]
    if missing:
      raise EvaluationError(
        f'--frost_dir={os.fspath(frost_dir)} lacks {", ".join(missing)}: '
        "the authors' frost photographs (hendrycks/robustness, "
        'ImageNet-C/create_c/).'
      )
  for t in test_sets:
    if t not in TEST_SETS:
      raise EvaluationError(
        f'Unknown test set {t!r} (--test_sets).{_did_you_mean(t, TEST_SETS)} '
        'Valid: cifar10_1 (or cifar10_1/v4, cifar10_1/v6), '
        'cifar10_corrupted/<corruption>_<severity 1-5> with a corruption '
        f'of {", ".join(TFDS_CORRUPTIONS)}.'
      )
  return tuple(corruptions)


def stages(workdir: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
  """`[(stage directory name, its results record)]`, baseline first."""
  path = Path(workdir) / report_lib.RESULTS_FILENAME
  if not path.is_file():
    raise EvaluationError(
      f'{path} does not exist: evaluate the workdir of a finished (or '
      'partly finished) `python main.py` run.'
    )
  results = report_lib.load_results(path)
  if 'baseline' not in results or 'config' not in results:
    raise EvaluationError(
      f'{path} is not a classifier pruning run of lpjax (no baseline/config).'
    )
  out = [('baseline', results['baseline'])]
  for k, rec in enumerate(results.get('iterations') or [], start=1):
    out.append((f'iter_{k:03d}', rec))
  return out


def load_model(directory: str | os.PathLike):
  """`(arch, variables)` of a stage's last checkpoint."""
  with checkpointing.Checkpoints(directory) as ck:
    if ck.latest_step() is None:
      raise EvaluationError(f'{directory} holds no checkpoint.')
    arch, _ = ck.restore_meta()
    tree = ck.restore()  # as saved: only params and batch_stats are used
  variables = {'params': tree['params']}
  if tree.get('batch_stats'):
    variables['batch_stats'] = tree['batch_stats']
  return arch, variables


def _test_arrays(dataset, examples: int):
  images, labels = [], []
  have = 0
  for b in dataset.eval_batches(split='test', batch_size=min(examples, 1000)):
    keep = b['mask'] > 0
    images.append(b['image'][keep])
    labels.append(b['label'][keep])
    have += int(keep.sum())
    if have >= examples:
      break
  return np.concatenate(images)[:examples], np.concatenate(labels)[:examples]


def _corrupted(x, space, name, severity, seed, frost_dir):
  """Model-space inputs: the pixels of `x` (clipped to [0, 1] against
  rounding), corrupted, normalised back."""
  mean = np.asarray(space.mean, np.float64)
  std = np.asarray(space.std, np.float64)
  pixels = np.clip(np.asarray(x, np.float64) * std + mean, 0, 1)
  p = corruptions_lib.corrupt(
    pixels, name, int(severity), seed=seed, frost_dir=frost_dir
  )
  return ((p - mean) / std).astype(np.float32)


def evaluate_run(
  workdir: str | os.PathLike,
  *,
  eps: Sequence[float] = (8 / 255,),
  examples: int = 1000,
  pgd_steps: int = 10,
  batch: int = 250,
  latency_batches: Sequence[int] = (1, 256),
  latency_runs: int = 20,
  seed: int = 0,
  corruptions: Sequence[str] | None = None,
  severities: Sequence[int] = corruptions_lib.SEVERITIES,
  corruption_examples: int = 500,
  frost_dir: str | os.PathLike | None = None,
  test_sets: Sequence[str] = (),
) -> dict[str, Any]:
  """Evaluates every model of the run in `workdir`; see the module docstring.

  `corruptions` (default: all 15 with `frost_dir`, else the 14 without
  frost; `()` for none) are applied at each of `severities` to the first
  `corruption_examples` test images, once, and every model is evaluated on
  the same corrupted images.

  `test_sets` are TFDS test-only sets of a CIFAR-10 run
  (`lpjax.data.load_test_set`: `'cifar10_1'`,
  `'cifar10_corrupted/fog_5'`, ...), read from the run's `data_dir` and
  normalised with its statistics.

  Returns:
    The evaluation record (also written to `workdir/evaluation.json`).
  """
  corruptions = check_arguments(
    eps=eps,
    examples=examples,
    pgd_steps=pgd_steps,
    batch=batch,
    latency_batches=latency_batches,
    latency_runs=latency_runs,
    corruptions=corruptions,
    severities=severities,
    corruption_examples=corruption_examples,
    frost_dir=frost_dir,
    test_sets=test_sets,
  )
  workdir = Path(workdir)
  entries = stages(workdir)
  results = report_lib.load_results(workdir / report_lib.RESULTS_FILENAME)
  config = ml_collections.ConfigDict(results['config'])
  if config.get('task', 'main') != 'main':
    raise EvaluationError(
      f'{workdir} is a task={config.task!r} run; the evaluation is for '
      'classifier runs (task main).'
    )
  if test_sets and config.dataset != 'cifar10':
    raise EvaluationError(
      f'test sets {list(test_sets)} are CIFAR-10 test images; this run is '
      f'on {config.dataset}.'
    )
  if config.dataset in data.SERIES:
    raise EvaluationError(
      f'{config.dataset} is a sensor-series dataset: the attacks and their '
      'budgets are defined in pixel space, for image datasets.'
    )
  for name, _ in entries:
    if not (workdir / name).is_dir():
      raise EvaluationError(
        f'{workdir / name} is missing: the run records {name} but its '
        'checkpoint is gone; re-run the same `python main.py` command to '
        'restore it.'
      )
  dataset = data.load(
    config.dataset,
    data_dir=config.data_dir or None,
    normalization=config.normalization or None,
    seed=config.seed,
    synthetic=(
      config.synthetic.to_dict() if config.dataset == 'synthetic' else None
    ),
    holdout=config.holdout,
  )
  space = adversarial.PixelSpace.of_dataset(dataset)
  x, y = _test_arrays(dataset, examples)
  x_c, y_c = x[:corruption_examples], y[:corruption_examples]
  shifted = {}
  for t in test_sets:
    try:
      images, labels = data.load_test_set(t, data_dir=config.data_dir or None)
    except KeyError as e:
      raise EvaluationError(str(e.args[0])) from None
    mean = np.asarray(space.mean, np.float32)
    std = np.asarray(space.std, np.float32)
    shifted[t] = ((images - mean) / std, labels)
  record: dict[str, Any] = {
    'corruptions': list(corruptions),
    'severities': [int(v) for v in severities],
    'corruption_examples': len(y_c),
    'examples': len(x),
    'eps': [float(e) for e in eps],
    'pgd_steps': pgd_steps,
    'seed': seed,
    'device': latency.device_description(),
    'models': [],
  }
  base_latency: dict[int, dict[str, Any]] = {}
  logits_fns = []
  base_macs = float(entries[0][1]['macs'])
  for name, rec in entries:
    arch, variables = load_model(workdir / name)
    model = models.build_model(arch)
    logits_fn = jax.jit(
      lambda v, model=model, variables=variables: model.apply(variables, v)
    )

    def attack(kind, e, logits_fn=logits_fn):
      out = []
      rows = min(batch, len(x))  # A short last batch is padded: one compile.
      for i in range(0, len(x), batch):
        n = len(x[i : i + batch])
        xb = adversarial.pad_rows(x[i : i + batch], rows)
        yb = adversarial.pad_rows(y[i : i + batch], rows)
        if kind == 'fgsm':
          adv = adversarial.fgsm(logits_fn, xb, yb, e, space)
        else:
          key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
          adv = adversarial.pgd(
            logits_fn, xb, yb, e, steps=pgd_steps, key=key, space=space
          )
        out.append(np.asarray(adv[:n]))
      return adversarial.accuracy(
        logits_fn, np.concatenate(out), y, batch=batch
      )

    entry: dict[str, Any] = {
      'stage': name,
      'flops_reduction': float(rec.get('flops_reduction', 0.0)),
      'flops_ratio': base_macs / float(rec['macs']),
      'clean_accuracy': adversarial.accuracy(logits_fn, x, y, batch=batch),
      'fgsm': {},
      'pgd': {},
      'latency': {},
    }
    for e in eps:
      entry['fgsm'][f'{e:g}'] = attack('fgsm', e)
      entry['pgd'][f'{e:g}'] = attack('pgd', e)
    entry['test_sets'] = {
      t: adversarial.accuracy(logits_fn, xs, ys, batch=batch)
      for t, (xs, ys) in shifted.items()
    }
    for b in latency_batches:
      xb = jnp.asarray(np.resize(x, (b, *x.shape[1:])))
      lat = latency.measure(logits_fn, xb, runs=latency_runs)
      if name == 'baseline':
        base_latency[b] = lat
      lat['speedup'] = latency.speedup(lat, base_latency[b])
      entry['latency'][str(b)] = lat
    b = latency_batches[-1]
    entry['energy'] = energy.measure(
      logits_fn, jnp.asarray(np.resize(x, (b, *x.shape[1:]))), runs=latency_runs
    )
    logging.info(
      '%s: clean %.4f, FGSM %s, PGD %s, speed-up %s.',
      name,
      entry['clean_accuracy'],
      entry['fgsm'],
      entry['pgd'],
      {k: round(v['speedup'], 3) for k, v in entry['latency'].items()},
    )
    record['models'].append(entry)
    logits_fns.append(logits_fn)
  # Each corrupted set once, every model on it (one set in memory).
  for entry in record['models']:
    entry['corrupted'] = {c: {} for c in corruptions}
  for c in corruptions:
    for v in severities:
      xs = _corrupted(x_c, space, c, v, seed, frost_dir)
      for entry, fn in zip(record['models'], logits_fns):
        entry['corrupted'][c][str(v)] = adversarial.accuracy(
          fn, xs, y_c, batch=batch
        )
    logging.info('Evaluated every model on %s.', c)
  if corruptions:
    for entry in record['models']:
      entry['corruption_mean'] = {
        str(v): float(
          np.mean([entry['corrupted'][c][str(v)] for c in corruptions])
        )
        for v in severities
      }
  path = workdir / EVALUATION_FILENAME
  tmp = path.with_suffix('.json.tmp')
  try:
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
  except BaseException:  # Ctrl-C too: no half-written file left behind
    tmp.unlink(missing_ok=True)
    raise
  report_lib.write_report(workdir)
  return record


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line (no usage block), status 2."""

  def error(self, message: str):
    print(
      f'error: {message}. Run python -m lpjax.evaluate --help for the flags.',
      file=sys.stderr,
      flush=True,
    )
    sys.exit(2)


def _numbers(text: str | None, flag: str, kind: type, default: list):
  """Comma-separated numbers of a flag; `EvaluationError` naming it."""
  if text is None:
    return default
  try:
    return [kind(v) for v in text.split(',') if v.strip()]
  except ValueError:
    raise EvaluationError(
      f'{flag} must be comma-separated {kind.__name__}s; got {text!r}.'
    ) from None


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m lpjax.evaluate`: 0 done, 2 a user error, 130 Ctrl-C."""
  p = _Parser(
    prog='python -m lpjax.evaluate',
    description='Robustness, latency and energy of every model of a run.',
  )
  p.add_argument('--workdir', required=True)
  p.add_argument(
    '--eps',
    default=None,
    help='comma-separated L∞ budgets in pixel units (pixels in [0, 1]); '
    'default 8/255',
  )
  p.add_argument('--examples', type=int, default=1000)
  p.add_argument('--pgd_steps', type=int, default=10)
  p.add_argument('--batch', type=int, default=250)
  p.add_argument('--latency_batches', default='1,256')
  p.add_argument('--latency_runs', type=int, default=20)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument(
    '--corruptions',
    default=None,
    help='comma-separated names (default: all, frost only with --frost_dir;'
    " 'none' for none)",
  )
  p.add_argument('--severities', default='1,2,3,4,5')
  p.add_argument('--corruption_examples', type=int, default=500)
  p.add_argument('--frost_dir', default=None)
  p.add_argument(
    '--test_sets',
    default='',
    help='TFDS test-only sets of a CIFAR-10 run, comma-separated: cifar10_1,'
    ' cifar10_corrupted/<corruption>_<severity>',
  )
  args = p.parse_args(argv)
  if args.corruptions is None:
    names = None
  elif args.corruptions == 'none':
    names = ()
  else:
    names = tuple(c.strip() for c in args.corruptions.split(',') if c.strip())
  checkpointing.quiet_logging()
  try:
    evaluate_run(
      args.workdir,
      eps=_numbers(args.eps, '--eps', float, [8 / 255]),
      examples=args.examples,
      pgd_steps=args.pgd_steps,
      batch=args.batch,
      latency_batches=_numbers(
        args.latency_batches, '--latency_batches', int, []
      ),
      latency_runs=args.latency_runs,
      seed=args.seed,
      corruptions=names,
      severities=_numbers(args.severities, '--severities', int, []),
      corruption_examples=args.corruption_examples,
      frost_dir=args.frost_dir,
      test_sets=[t.strip() for t in args.test_sets.split(',') if t.strip()],
    )
  except errors.UserError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2
  except KeyboardInterrupt:
    print(
      f'error: interrupted; {EVALUATION_FILENAME} was not written; re-run '
      'the same command to evaluate again.',
      file=sys.stderr,
      flush=True,
    )
    return 130
  print(f'evaluation.json and report.md are in {args.workdir}.')
  return 0


__all__ = [
  'EVALUATION_FILENAME',
  'TEST_SETS',
  'TFDS_CORRUPTIONS',
  'EvaluationError',
  'check_arguments',
  'evaluate_run',
  'load_model',
  'main',
  'stages',
]
