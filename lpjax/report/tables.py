"""Markdown tables of a classifier run's `results.json` (`lpjax.report`).

`markdown_table` (one row per iteration, baseline first), `aggregate` (mean
and std per iteration over seeds), `evaluation_table` (robustness, latency
and energy from `lpjax.evaluate`), the Everything children and final widths
tables, and the helpers the figures share. NumPy and the standard library
only.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILENAME = 'results.json'
REPORT_FILENAME = 'report.md'
ACCURACY_PLOT_FILENAME = 'accuracy_vs_flops.png'
SCORES_PLOT_FILENAME = 'scores.png'
SGLP_PLOT_FILENAME = 'sglp.png'
PARETO_PLOT_FILENAME = 'pareto.png'
EVALUATION_FILENAME = 'evaluation.json'  # written by lpjax.evaluate.run
ROBUSTNESS_PLOT_FILENAME = 'robustness.png'
# Published result tables (`third_party/papers/*.json`, numbers only).
PAPERS_DIR = Path(__file__).resolve().parents[2] / 'third_party' / 'papers'

# Scores are drawn on a log colour scale when all are positive and span more
# than this ratio.
LOG_SCALE_RATIO = 100.0

_MISSING = '—'
_BLOCK_NAME_RE = re.compile(r'^stage(\d+)_block(\d+)$')

Results = dict[str, Any]
PathLike = str | os.PathLike


# --------------------------------------------------------------------------
# Loading and small helpers.
# --------------------------------------------------------------------------


def load_results(path: PathLike) -> Results:
  """Reads a run's `results.json`.

  Args:
    path: the JSON file, or a workdir that holds `results.json`.

  Returns:
    The results dict; `iterations` is an empty list where absent.

  Raises:
    FileNotFoundError: there is no such file.
    ValueError: the file is not valid JSON, or not a results object (a JSON
      object with a `baseline` entry).
  """
  path = Path(path)
  if path.is_dir():
    path = path / RESULTS_FILENAME
  if not path.is_file():
    raise FileNotFoundError(
      f'No results file at {path}: run the pruning pipeline first (it '
      f'writes {RESULTS_FILENAME} into the workdir).'
    )
  try:
    with path.open(encoding='utf-8') as f:
      results = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text: {e}') from e
  if not isinstance(results, dict) or not isinstance(
    results.get('baseline'), dict
  ):
    raise ValueError(
      f'{path} is not a pruning results file: expected a JSON object with '
      'a "baseline" object.'
    )
  if results.get('iterations') is None:
    results['iterations'] = []
  return results


def _iterations(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  return list(results.get('iterations') or [])


def _rows(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  """The baseline followed by the iterations."""
  return [results['baseline'], *_iterations(results)]


def _float(value: Any) -> float:
  """`value` as a float; NaN for None or anything non-numeric."""
  if value is None or isinstance(value, bool):
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _removed(entry: Mapping[str, Any]) -> list[str]:
  removed = entry.get('removed') or []
  if isinstance(removed, str):
    return [removed]
  return [str(name) for name in removed]


def _filters_removed(
  entry: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> tuple[int, int]:
  """(filters removed, widths shrunk) by the entry's edit of `previous`.

  Counted from the inner widths both records hold, of the units that are
  still there (a removed unit's filters count as the unit, not here).
  """
  now = entry.get('widths') or {}
  before = (previous or {}).get('widths') or {}
  removed = shrunk = 0
  for unit, widths in now.items():
    if unit in before:
      for w0, w1 in zip(before[unit], widths):
        if int(w1) < int(w0):
          removed += int(w0) - int(w1)
          shrunk += 1
  return removed, shrunk


def _edit_cell(
  entry: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> str:
  """The removed blocks and the filters the edit removed, if any."""
  parts = [f'`{name}`' for name in _removed(entry)]
  removed, shrunk = _filters_removed(entry, previous)
  if shrunk:
    parts.append(f'{removed} filters in {shrunk} conv(s)')
  return ', '.join(parts) or _MISSING


def _reduction(
  entry: Mapping[str, Any], baseline: Mapping[str, Any], key: str, cost: str
) -> float:
  """`entry[key]` (percent), or derived from the costs where absent."""
  value = _float(entry.get(key))
  if math.isnan(value):
    base, now = _float(baseline.get(cost)), _float(entry.get(cost))
    if base > 0 and not math.isnan(now):
      value = 100.0 * (1.0 - now / base)
    elif entry is baseline:
      value = 0.0
  return value


def _flops_reduction(entry, baseline) -> float:
  return _reduction(entry, baseline, 'flops_reduction', 'macs')


def _params_reduction(entry, baseline) -> float:
  return _reduction(entry, baseline, 'params_reduction', 'params')


def _accuracy(entry: Mapping[str, Any]) -> float:
  return _float(entry.get('test_accuracy'))


def _delta_accuracy(entry, baseline) -> float:
  """Accuracy change against the baseline, a fraction."""
  if entry is baseline:
    return math.nan
  delta = _float(entry.get('delta_accuracy'))
  if math.isnan(delta):
    delta = _accuracy(entry) - _accuracy(baseline)
  return delta


def _fmt(value: float, spec: str, scale: float = 1.0) -> str:
  value = _float(value)
  if math.isnan(value):
    return _MISSING
  return format(value * scale, spec)


def block_sort_key(name: str) -> tuple[int, int, str]:
  """Network order of block names `stage<s>_block<i>`; others go last."""
  match = _BLOCK_NAME_RE.match(name)
  if match:
    return (int(match.group(1)), int(match.group(2)), '')
  return (1 << 30, 0, name)


# --------------------------------------------------------------------------
# Table.
# --------------------------------------------------------------------------


def markdown_table(results: Mapping[str, Any]) -> str:
  """A Markdown table of the run, one row per iteration, baseline first.

  Columns: iteration, removed block(s), blocks per stage, FLOPs and params
  reduction (%), test accuracy (%), accuracy change against the baseline
  (percentage points, signed) and, where any iteration records it, the
  accuracy right after removal, before fine-tuning (%).

  Args:
    results: a results dict (see `load_results`).

  Returns:
    The table, newline-terminated.
  """
  baseline = results['baseline']
  rows = _rows(results)
  with_before = any(
    not math.isnan(_float(it.get('accuracy_before_finetune')))
    for it in _iterations(results)
  )
  header = [
    'iteration',
    'removed block(s)',
    'blocks per stage',
    'FLOPs ↓ %',
    'params ↓ %',
    'accuracy %',
    'Δ accuracy (pp)',
  ]
  align = ['---:', ':---', ':---', '---:', '---:', '---:', '---:']
  if with_before:
    header.append('accuracy before fine-tune %')
    align.append('---:')
  lines = [_table_line(header), _table_line(align)]
  for i, entry in enumerate(rows):
    blocks = entry.get('blocks_per_stage')
    cells = [
      str(entry.get('iteration', i)),
      _edit_cell(entry, rows[i - 1] if i else None),
      '[' + ', '.join(str(b) for b in blocks) + ']' if blocks else _MISSING,
      _fmt(_flops_reduction(entry, baseline), '.2f'),
      _fmt(_params_reduction(entry, baseline), '.2f'),
      _fmt(_accuracy(entry), '.2f', 100.0),
      _fmt(_delta_accuracy(entry, baseline), '+.2f', 100.0),
    ]
    if with_before:
      before = math.nan
      if entry is not baseline:
        before = _float(entry.get('accuracy_before_finetune'))
      cells.append(_fmt(before, '.2f', 100.0))
    lines.append(_table_line(cells))
  return '\n'.join(lines) + '\n'


def _table_line(cells: Sequence[str]) -> str:
  return '| ' + ' | '.join(c.replace('|', r'\|') for c in cells) + ' |'


# --------------------------------------------------------------------------
# Aggregation over seeds.
# --------------------------------------------------------------------------


def aggregate(
  results_list: Sequence[Mapping[str, Any]], *, ddof: int = 0
) -> dict[str, Any]:
  """Per-iteration mean and std over several runs (seeds) of one setting.

  Iterations align by index: entry 0 is the baseline, entry `i` the `i`-th
  pruning iteration of every run that reached it (`n[i]` of them).

  Args:
    results_list: results dicts, one per seed.
    ddof: delta degrees of freedom of the standard deviations (NumPy's
      default 0; 1 gives the sample std). A std over fewer than `ddof + 1`
      runs is 0.

  Returns:
    A dict of equal-length lists (JSON-serialisable): `iteration`, `n`,
    `flops_reduction_mean`, `flops_reduction_std`, `params_reduction_mean`
    (percent), `accuracy_mean`, `accuracy_std` (fractions, like
    `test_accuracy`).

  Raises:
    ValueError: `results_list` is empty.
  """
  results_list = list(results_list)
  if not results_list:
    raise ValueError('aggregate needs at least one results dict.')
  num = max(len(_rows(r)) for r in results_list)
  out: dict[str, list] = {
    key: []
    for key in (
      'iteration',
      'n',
      'flops_reduction_mean',
      'flops_reduction_std',
      'params_reduction_mean',
      'accuracy_mean',
      'accuracy_std',
    )
  }
  for i in range(num):
    flops, params, accuracy = [], [], []
    for results in results_list:
      rows = _rows(results)
      if i < len(rows):
        baseline = results['baseline']
        flops.append(_flops_reduction(rows[i], baseline))
        params.append(_params_reduction(rows[i], baseline))
        accuracy.append(_accuracy(rows[i]))
    out['iteration'].append(i)
    out['n'].append(len(accuracy))
    out['flops_reduction_mean'].append(float(np.mean(flops)))
    out['flops_reduction_std'].append(_std(flops, ddof))
    out['params_reduction_mean'].append(float(np.mean(params)))
    out['accuracy_mean'].append(float(np.mean(accuracy)))
    out['accuracy_std'].append(_std(accuracy, ddof))
  return out


def _std(values: Sequence[float], ddof: int) -> float:
  if len(values) <= ddof:
    return 0.0
  return float(np.std(values, ddof=ddof))


# --------------------------------------------------------------------------
# Figures.
# --------------------------------------------------------------------------


def evaluation_table(evaluation: Mapping[str, Any]) -> str:
  """One row per model of `evaluation.json`: accuracy clean and under
  attack, latency speed-up beside the FLOPs ratio, energy."""
  eps = [f'{e:g}' for e in evaluation['eps']]
  sev = (
    [str(v) for v in evaluation.get('severities', [])]
    if evaluation.get('corruptions')
    else []
  )
  first = evaluation['models'][0] if evaluation['models'] else {}
  batches = list(first.get('latency', {}))
  sets = list(first.get('test_sets', {}))
  head = (
    ['model', 'FLOPs ↓ %', 'clean %']
    + [f'FGSM ε={e} %' for e in eps]
    + [f'PGD-{evaluation["pgd_steps"]} ε={e} %' for e in eps]
    + [f'corrupted s={v} %' for v in sev]
    + [f'{t} %' for t in sets]
    + [f'speed-up b={b} (ms)' for b in batches]
    + ['FLOPs ratio', 'energy']
  )
  lines = [_table_line(head), _table_line(['---'] * len(head))]
  for m in evaluation['models']:
    cells = [
      m['stage'],
      f'{m["flops_reduction"]:.2f}',
      f'{100 * m["clean_accuracy"]:.2f}',
      *[f'{100 * m["fgsm"][e]:.2f}' for e in eps],
      *[f'{100 * m["pgd"][e]:.2f}' for e in eps],
      *[f'{100 * m["corruption_mean"][v]:.2f}' for v in sev],
      *[f'{100 * m["test_sets"][t]:.2f}' for t in sets],
      *[
        f'{m["latency"][b]["speedup"]:.2f}× ({m["latency"][b]["median_ms"]:.3g})'
        for b in batches
      ],
      f'{m["flops_ratio"]:.2f}×',
      (
        f'{m["energy"]["joules_per_call"]:.3g} J'
        if m['energy'].get('measured')
        else 'not measured'
      ),
    ]
    lines.append(_table_line(cells))
  d = evaluation['device']
  energy_note = next(
    (
      m['energy']['reason']
      for m in evaluation['models']
      if not m['energy'].get('measured')
    ),
    None,
  )
  lines += [
    '',
    f'{evaluation["examples"]} test examples; ε in pixel units (pixels in '
    f'[0, 1]); corrupted: mean accuracy over '
    f'{len(evaluation.get("corruptions", []))} CIFAR-10-C corruptions at '
    f'each severity, on {evaluation.get("corruption_examples", 0)} images; '
    f'latency: median of jitted eval forwards on {d["device"]} '
    f'({d["backend"]}, {d["cpu_threads"]} CPU threads), compile excluded.'
    + (f' Energy not measured: {energy_note}.' if energy_note else ''),
  ]
  return '\n'.join(lines) + '\n'


def _summary(results: Mapping[str, Any]) -> str:
  """One line: model, dataset, criterion, iterations and the outcome."""
  parts = [
    f'**{key.capitalize()}:** {results.get(key) or _MISSING}'
    for key in ('model', 'dataset', 'criterion')
  ]
  iterations = _iterations(results)
  baseline = results['baseline']
  parts.append(f'**Iterations:** {len(iterations)}')
  line = ' · '.join(parts)
  acc = _fmt(_accuracy(baseline), '.2f', 100.0)
  if not iterations:
    return f'{line}\n\nBaseline only: accuracy {acc} %.'
  last = iterations[-1]
  removed = sum(len(_removed(it)) for it in iterations)
  rows = _rows(results)
  filters = sum(
    _filters_removed(now, before)[0] for before, now in itertools.pairwise(rows)
  )
  what = f'{removed} block(s)' + (f' and {filters} filters' if filters else '')
  return (
    f'{line}\n\n'
    f'Removed {what}: FLOPs ↓ '
    f'{_fmt(_flops_reduction(last, baseline), ".2f")} %, params ↓ '
    f'{_fmt(_params_reduction(last, baseline), ".2f")} %, accuracy '
    f'{acc} % → {_fmt(_accuracy(last), ".2f", 100.0)} % '
    f'({_fmt(_delta_accuracy(last, baseline), "+.2f", 100.0)} pp).'
  )


def everything_table(results: Mapping[str, Any]) -> str | None:
  """Per step of an `everything` run: the children, their CKA, the winner.

  Returns:
    A Markdown table, or None if no iteration recorded `everything`
    diagnostics.
  """
  steps = [
    (it, (it.get('diagnostics') or {}).get('everything'))
    for it in _iterations(results)
  ]
  steps = [(it, d) for it, d in steps if d]
  if not steps:
    return None
  base = results['baseline']
  header = [
    'iteration',
    'filters removed',
    'CKA layer child',
    'CKA filter child',
    'winner',
    'layer child FLOPs ↓ % / params ↓ %',
    'filter child FLOPs ↓ % / params ↓ %',
  ]
  lines = [
    _table_line(header),
    _table_line(['---:', '---:', '---:', '---:', ':---', '---:', '---:']),
  ]

  def child(record):
    if not record:
      return _MISSING
    flops = _reduction(record, base, '_', 'macs')
    params = _reduction(record, base, '_', 'params')
    return f'{_fmt(flops, ".2f")} / {_fmt(params, ".2f")}'

  for it, d in steps:
    lines.append(
      _table_line(
        [
          str(it.get('iteration', _MISSING)),
          str(d.get('filters_removed', _MISSING)),
          _fmt(d.get('cka_layer'), '.4f'),
          _fmt(d.get('cka_filter'), '.4f'),
          str(d.get('winner', _MISSING)),
          child(d.get('layer_child')),
          child(d.get('filter_child')),
        ]
      )
    )
  return '\n'.join(lines) + '\n'


def widths_table(results: Mapping[str, Any]) -> str | None:
  """The final model's inner widths of every block whose widths changed.

  Returns:
    A Markdown table (block, baseline widths, final widths), or None if no
    width changed (or the run did not record widths).
  """
  iterations = _iterations(results)
  first = results['baseline'].get('widths')
  last = iterations[-1].get('widths') if iterations else None
  if not first or not last:
    return None
  changed = [
    (b, first[b], last[b])
    for b in sorted(last, key=block_sort_key)
    if b in first and list(first[b]) != list(last[b])
  ]
  if not changed:
    return None
  lines = [
    _table_line(['block', 'baseline widths', 'final widths']),
    _table_line([':---', ':---', ':---']),
  ]
  for b, w0, w1 in changed:
    lines.append(_table_line([f'`{b}`', str(list(w0)), str(list(w1))]))
  return '\n'.join(lines) + '\n'
