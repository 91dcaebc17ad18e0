"""Tests for lpjax.report on synthetic results (no pipeline needed)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from lpjax import report

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _results(
  *,
  num_iterations=3,
  accuracies=(0.9712, 0.9587, 0.9601, 0.9410),
  criterion='cka',
  with_before=True,
):
  """A synthetic ResNet-20 run removing one block per iteration."""
  order = ['stage2_block01', 'stage1_block02', 'stage3_block02']
  candidates = [
    'stage1_block01',
    'stage1_block02',
    'stage2_block01',
    'stage2_block02',
    'stage3_block01',
    'stage3_block02',
  ]
  blocks = [3, 3, 3]
  macs, params = 40_000_000, 270_000
  results = {
    'config': {'seed': 0},
    'criterion': criterion,
    'model': 'resnet20',
    'dataset': 'digits',
    'baseline': {
      'iteration': 0,
      'blocks_per_stage': list(blocks),
      'macs': macs,
      'params': params,
      'flops_reduction': 0.0,
      'params_reduction': 0.0,
      'test_accuracy': accuracies[0],
      'test_loss': 0.1,
      'seconds': 12.3,
    },
    'iterations': [],
  }
  left = list(candidates)
  for i in range(num_iterations):
    removed = order[i]
    # Scores spanning orders of magnitude; the removed block scores lowest.
    scores = {
      name: 10.0 ** -(k % 4) + 0.5 for k, name in enumerate(left, start=1)
    }
    scores[removed] = 1e-4
    left.remove(removed)
    blocks[int(removed[5]) - 1] -= 1
    flops = 100.0 * (i + 1) * 4_718_592 / macs
    entry = {
      'iteration': i + 1,
      'removed': [removed],
      'blocks_per_stage': list(blocks),
      'macs': int(macs * (1 - flops / 100)),
      'params': params - 1000 * (i + 1),
      'flops_reduction': flops,
      'params_reduction': 100.0 * 1000 * (i + 1) / params,
      'test_accuracy': accuracies[i + 1],
      'test_loss': 0.12,
      'delta_accuracy': accuracies[i + 1] - accuracies[0],
      'accuracy_before_finetune': 0.90 - 0.1 * i if with_before else None,
      'scores': scores,
      'seconds_scoring': 1.2,
      'seconds_finetune': 30.0,
    }
    results['iterations'].append(entry)
  return results


def _body_rows(table):
  lines = table.strip().splitlines()
  return [[c.strip() for c in line.strip('|').split('|')] for line in lines[2:]]


def _assert_png(path):
  import matplotlib.image

  assert path.is_file(), path
  assert path.read_bytes()[:8] == PNG_MAGIC
  pixels = matplotlib.image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
  assert float(np.var(pixels)) > 0


def test_table_rows_and_formatting():
  results = _results()
  results['iterations'][0]['delta_accuracy'] = -0.0125
  table = report.markdown_table(results)
  header = table.splitlines()[0]
  assert 'FLOPs ↓ %' in header and 'accuracy before fine-tune %' in header
  rows = _body_rows(table)
  assert len(rows) == 1 + 3
  # Baseline first.
  assert rows[0][0] == '0'
  assert rows[0][1] == '—'
  assert rows[0][2] == '[3, 3, 3]'
  assert rows[0][3] == '0.00'
  assert rows[0][5] == '97.12'
  assert rows[0][6] == '—'
  # Iterations.
  assert [r[0] for r in rows[1:]] == ['1', '2', '3']
  assert rows[1][1] == '`stage2_block01`'
  assert rows[2][1] == '`stage1_block02`'
  assert rows[3][1] == '`stage3_block02`'
  assert rows[1][2] == '[3, 2, 3]'
  assert rows[1][3] == '11.80'  # 4,718,592 / 40,000,000
  assert rows[1][5] == '95.87'
  assert rows[1][6] == '-1.25'
  assert rows[2][6] == '-1.11'
  assert rows[1][7] == '90.00'
  assert all(len(r) == 8 for r in rows)


def test_table_positive_delta_and_derived_values():
  results = _results(num_iterations=1, accuracies=(0.95, 0.9525))
  del results['iterations'][0]['delta_accuracy']
  del results['iterations'][0]['flops_reduction']
  results['baseline']['macs'] = 100
  results['iterations'][0]['macs'] = 75
  rows = _body_rows(report.markdown_table(results))
  assert rows[1][3] == '25.00'
  assert rows[1][6] == '+0.25'


def test_table_without_before_finetune_column():
  results = _results(with_before=False)
  table = report.markdown_table(results)
  assert 'before fine-tune' not in table
  assert all(len(r) == 7 for r in _body_rows(table))


def test_aggregate_matches_numpy():
  accuracies = np.array(
    [
      [0.97, 0.96, 0.95, 0.93],
      [0.96, 0.955, 0.94, 0.935],
      [0.975, 0.95, 0.948, 0.91],
    ]
  )
  runs = [_results(accuracies=tuple(a)) for a in accuracies]
  runs[1]['iterations'][1]['flops_reduction'] += 1.0  # unequal x, for mean
  flops = np.array(
    [
      [r['baseline']['flops_reduction']]
      + [it['flops_reduction'] for it in r['iterations']]
      for r in runs
    ]
  )
  agg = report.aggregate(runs)
  assert agg['iteration'] == [0, 1, 2, 3]
  assert agg['n'] == [3, 3, 3, 3]
  np.testing.assert_allclose(agg['accuracy_mean'], accuracies.mean(0))
  np.testing.assert_allclose(agg['accuracy_std'], accuracies.std(0))
  np.testing.assert_allclose(agg['flops_reduction_mean'], flops.mean(0))
  agg1 = report.aggregate(runs, ddof=1)
  np.testing.assert_allclose(agg1['accuracy_std'], accuracies.std(0, ddof=1))
  json.dumps(agg)  # JSON-serialisable.


def test_aggregate_ragged_and_empty():
  runs = [_results(num_iterations=3), _results(num_iterations=1)]
  agg = report.aggregate(runs)
  assert agg['n'] == [2, 2, 1, 1]
  assert agg['accuracy_std'][3] == 0.0
  with pytest.raises(ValueError):
    report.aggregate([])


def test_plots_are_valid_pngs(tmp_path):
  seeds = [_results(accuracies=(0.97, 0.96 + d, 0.95, 0.93)) for d in (0, 0.01)]
  runs = {'cka': seeds, 'random': _results(criterion='random')}
  path = report.plot_accuracy_vs_flops(runs, tmp_path / 'acc.png')
  _assert_png(path)
  _assert_png(report.plot_scores(_results(), tmp_path / 'scores.png'))
  # Linear colour scale (narrow range) and a nested output folder.
  narrow = _results()
  for it in narrow['iterations']:
    it['scores'] = {k: 0.5 + 0.01 * j for j, k in enumerate(it['scores'])}
  _assert_png(report.plot_scores(narrow, tmp_path / 'a' / 'b.png'))
  labels = ['stage1_block01', 'stage1_block02', 'stage2_block01']
  matrix = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
  _assert_png(report.cka_heatmap(matrix, labels, tmp_path / 'cka.png'))
  with pytest.raises(ValueError):
    report.cka_heatmap(np.ones((2, 3)), labels[:2], tmp_path / 'x.png')


def test_score_matrix_network_order_and_gaps():
  matrix, blocks, removed = report.plots._score_matrix(_results())
  assert blocks == sorted(blocks, key=report.block_sort_key)
  assert blocks[0] == 'stage1_block01' and blocks[-1] == 'stage3_block02'
  assert matrix.shape == (3, 6)
  col = blocks.index('stage2_block01')
  assert removed[0] == [col]
  assert matrix[0, col] == 1e-4
  assert np.isnan(matrix[1:, col]).all()  # Removed: blank afterwards.
  assert report.block_sort_key('stage2_block10') > report.block_sort_key(
    'stage2_block09'
  )


def test_log_norm_choice():
  from matplotlib import colors

  wide = np.array([[1e-4, 1.0], [np.nan, 0.5]])
  assert isinstance(report.plots._norm(wide), colors.LogNorm)
  assert not isinstance(report.plots._norm(wide + 1.0), colors.LogNorm)
  assert not isinstance(report.plots._norm(wide - 0.5), colors.LogNorm)


def test_write_report(tmp_path):
  (tmp_path / 'results.json').write_text(json.dumps(_results()))
  markdown = report.write_report(tmp_path)
  assert (tmp_path / 'report.md').read_text(encoding='utf-8') == markdown
  assert markdown.startswith('# ')
  for word in ('resnet20', 'digits', 'cka', 'stage2_block01', '97.12'):
    assert word in markdown
  assert '(accuracy_vs_flops.png)' in markdown
  assert '(scores.png)' in markdown
  _assert_png(tmp_path / 'accuracy_vs_flops.png')
  _assert_png(tmp_path / 'scores.png')


def test_write_report_zero_iterations(tmp_path):
  results = _results(num_iterations=0)
  (tmp_path / 'results.json').write_text(json.dumps(results))
  markdown = report.write_report(tmp_path)
  assert len(_body_rows(report.markdown_table(results))) == 1
  assert '97.12' in markdown
  _assert_png(tmp_path / 'accuracy_vs_flops.png')
  _assert_png(tmp_path / 'scores.png')


def test_missing_results_names_the_path(tmp_path):
  with pytest.raises(
    FileNotFoundError, match=re.escape(str(tmp_path / 'results.json'))
  ):
    report.write_report(tmp_path)
  with pytest.raises(FileNotFoundError, match=re.escape('nope.json')):
    report.load_results(tmp_path / 'nope.json')


def test_invalid_results(tmp_path):
  bad = tmp_path / 'results.json'
  bad.write_text('{"baseline": ')
  with pytest.raises(ValueError, match=re.escape('results.json')):
    report.load_results(bad)
  bad.write_text('[1, 2]')
  with pytest.raises(ValueError, match=re.escape('results.json')):
    report.load_results(tmp_path)


def test_import_is_cheap():
  code = (
    'import sys, lpjax.report; '
    "bad = [m for m in ('jax', 'flax', 'matplotlib.pyplot') if m in "
    'sys.modules]; '
    'assert not bad, bad'
  )
  subprocess.run([sys.executable, '-c', code], check=True)


def _everything_results():
  """A hand-made two-step `everything` run: a filter step, then a block."""
  widths0 = {
    'stage1_block00': [16],
    'stage1_block01': [16],
    'stage2_block00': [32],
  }
  widths1 = {
    'stage1_block00': [12],
    'stage1_block01': [4],
    'stage2_block00': [32],
  }
  widths2 = {'stage1_block00': [12], 'stage2_block00': [32]}

  def child(macs, params):
    return {'macs': macs, 'params': params, 'edit': {}}

  def step(k, winner, widths, macs, removed):
    return {
      'iteration': k,
      'removed': removed,
      'blocks_per_stage': [len(widths) - 1, 1],
      'widths': widths,
      'macs': macs,
      'params': macs // 10,
      'test_accuracy': 0.9,
      'diagnostics': {
        'everything': {
          'filters_removed': 16 if k == 1 else 20,
          'cka_layer': 0.8,
          'cka_filter': 0.9 if winner == 'filter' else 0.7,
          'winner': winner,
          'layer_child': child(750, 75),
          'filter_child': child(800, 80),
        }
      },
    }

  base = {
    'blocks_per_stage': [2, 1],
    'widths': widths0,
    'macs': 1000,
    'params': 100,
    'test_accuracy': 0.95,
  }
  return {
    'criterion': 'everything',
    'baseline': base,
    'iterations': [
      step(1, 'filter', widths1, 800, []),
      step(2, 'layer', widths2, 500, ['stage1_block01']),
    ],
  }


def test_everything_tables_and_filter_counts():
  results = _everything_results()
  table = report.markdown_table(results)
  assert '16 filters in 2 conv(s)' in table  # 4 + 12 from the widths
  assert '`stage1_block01`' in table
  ev = report.everything_table(results)
  rows = [
    line
    for line in ev.splitlines()
    if line.startswith('| 1') or line.startswith('| 2')
  ]
  assert rows[0].split(' | ')[1:5] == ['16', '0.8000', '0.9000', 'filter']
  assert '25.00 / 25.00' in rows[0] and '20.00 / 20.00' in rows[0]
  assert rows[1].split(' | ')[4] == 'layer'
  widths = report.widths_table(results)
  assert '| `stage1_block00` | [16] | [12] |' in widths
  assert 'stage2_block00' not in widths and 'stage1_block01' not in widths
  summary = report.tables._summary(results)
  assert 'Removed 1 block(s) and 16 filters' in summary
  # A layer-only run has neither table.
  results['iterations'] = [
    {k: v for k, v in it.items() if k != 'diagnostics'}
    for it in results['iterations']
  ]
  assert report.everything_table(results) is None
  results['iterations'][-1]['widths'] = results['baseline']['widths']
  assert report.widths_table(results) is None


def test_report_shows_published_points_for_a_matching_run(tmp_path):
  results = _results()
  results.update(model='resnet56', dataset='cifar10')
  (tmp_path / 'results.json').write_text(json.dumps(results))
  markdown = report.write_report(tmp_path)
  assert '(pareto.png)' in markdown
  _assert_png(tmp_path / 'pareto.png')
  # The drawn points are the file's rows, and the run's Δ accuracy.
  papers = report.paper_points('resnet56', 'cifar10')
  drawn = report.plot_pareto(results, tmp_path / 'p.png', papers)
  table = json.loads(
    (report.PAPERS_DIR / 'pons2024_cka.json').read_text(encoding='utf-8')
  )
  (cifar,) = [
    t
    for t in table['tables']
    if (t['model'], t['dataset']) == ('resnet56', 'cifar10')
  ]
  cka = sorted(
    (r['flops_reduction'], r['delta_accuracy'])
    for r in cifar['rows']
    if r['method'] == 'CKA (Pons et al.)'
  )
  assert drawn['CKA (Pons et al.)'] == (
    [x for x, _ in cka],
    [y for _, y in cka],
  )
  assert len(cka) == 7 and cka[-1] == (78.80, -0.66)
  acc = [0.9712, 0.9587, 0.9601, 0.9410]
  np.testing.assert_allclose(
    drawn['cka (this run)'][1], [100 * (a - acc[0]) for a in acc[1:]]
  )


def test_no_published_points_for_other_runs_and_bad_tables(tmp_path):
  (tmp_path / 'results.json').write_text(json.dumps(_results()))  # resnet20
  assert 'pareto.png' not in report.write_report(tmp_path)
  assert report.paper_points('resnet20', 'digits') == {}
  bad = tmp_path / 'papers'
  bad.mkdir()
  (bad / 'x.json').write_text('{"tables": [{"model": "resnet56"}]}')
  with pytest.raises(ValueError, match=r'x\.json'):
    report.paper_points('resnet56', 'cifar10', bad)


def test_scores_plot_marks_the_units_the_floor_kept(tmp_path):
  """`protected`: per iteration, the scored units of stages at the floor
  in the model the iteration decided on."""

  def widths(names):
    return {n: [4] for n in names}

  base = ['s1_b0', 's1_b1', 's2_b0', 's2_b1', 's2_b2']
  results = {
    'config': {'min_blocks_per_stage': 2},
    'criterion': 'cka',
    'baseline': {'blocks_per_stage': [2, 3], 'widths': widths(base)},
    'iterations': [
      # Stage 1 is at the floor from the start; stage 2 after iteration 1.
      {
        'scores': {n: 0.1 * i for i, n in enumerate(base)},
        'removed': ['s2_b1'],
        'blocks_per_stage': [2, 2],
        'widths': widths(['s1_b0', 's1_b1', 's2_b0', 's2_b2']),
      },
      {
        'scores': {'s1_b0': 0.0, 's1_b1': 0.1, 's2_b0': 0.2, 's2_b2': 0.3},
        'removed': [],
        'blocks_per_stage': [2, 2],
        'widths': widths(['s1_b0', 's1_b1', 's2_b0', 's2_b2']),
      },
    ],
  }
  assert report.plots.protected(results) == [
    ['s1_b0', 's1_b1'],
    ['s1_b0', 's1_b1', 's2_b0', 's2_b2'],
  ]
  _assert_png(report.plot_scores(results, tmp_path / 'scores.png'))
  # Without the floor or the widths recorded: nothing is marked.
  del results['config']['min_blocks_per_stage']
  assert report.plots.protected(results) == [[], []]
