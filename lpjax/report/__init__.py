"""Reports of a pruning run: `results.json` -> markdown tables and figures.

`write_report(workdir)` writes `report.md` and its figures for a run of any
task (`results['task']`): a classifier run (`tables`: the iterations, the
Everything children, final widths, robustness from `lpjax.evaluate`;
`plots`: accuracy vs FLOPs, per-block scores, the published points beside a
matching run, robustness, SGLP's segments), or a language-model or sentence-
encoder run (`text`: its table, perplexity or agreement vs layers removed,
per-layer scores). `table(results)` is the table `main.py` prints.

NumPy, Matplotlib (lazily, never `pyplot`) and the standard library only,
so reports can be made without JAX.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lpjax.report import text
from lpjax.report.plots import (
  _sglp_diagnostics,
  cka_heatmap,
  paper_points,
  plot_accuracy_vs_flops,
  plot_pareto,
  plot_robustness,
  plot_scores,
  plot_sglp,
)
from lpjax.report.tables import (
  ACCURACY_PLOT_FILENAME,
  EVALUATION_FILENAME,
  LOG_SCALE_RATIO,
  PAPERS_DIR,
  PARETO_PLOT_FILENAME,
  REPORT_FILENAME,
  RESULTS_FILENAME,
  ROBUSTNESS_PLOT_FILENAME,
  SCORES_PLOT_FILENAME,
  SGLP_PLOT_FILENAME,
  PathLike,
  Results,
  _summary,
  aggregate,
  block_sort_key,
  evaluation_table,
  everything_table,
  load_results,
  markdown_table,
  widths_table,
)


def table(results: Mapping[str, Any]) -> str:
  """The results table of a run of any task."""
  task = results.get('task')
  if task == 'llm':
    return text.llm_table(results)
  if task == 'embedding':
    return text.embedding_table(results)
  return markdown_table(results)


def write_report(workdir: PathLike, *, title: str | None = None) -> str:
  """Writes `report.md` and its figures for the run in `workdir`.

  Reads `workdir/results.json`. A classifier run gets `accuracy_vs_flops.png`
  and `scores.png`, `pareto.png` when published results exist for its model
  and dataset, `sglp.png` for SGLP and `robustness.png` once evaluated; a
  language-model run `perplexity.png` and `scores.png`; a sentence-encoder
  run `agreement.png` and `scores.png`.

  Args:
    workdir: the run's workdir.
    title: the report's title (classifier runs); a default one where None.

  Returns:
    The Markdown written to `report.md`.

  Raises:
    FileNotFoundError: `workdir/results.json` is missing.
    ValueError: it is not a valid results file.
  """
  workdir = Path(workdir)
  results = load_results(workdir / RESULTS_FILENAME)
  if results.get('task') in ('llm', 'embedding'):
    markdown = text.write(workdir, results)
  else:
    markdown = _classifier_report(workdir, results, title)
  (workdir / REPORT_FILENAME).write_text(markdown, encoding='utf-8')
  return markdown


def _section(title: str, table: str | None) -> list[str]:
  return [] if table is None else [f'## {title}', '', table.rstrip('\n'), '']


def _classifier_report(
  workdir: Path, results: Results, title: str | None
) -> str:
  """`report.md` and the figures of a classifier run."""
  criterion = results.get('criterion') or 'run'
  plot_accuracy_vs_flops(
    {str(criterion): results}, workdir / ACCURACY_PLOT_FILENAME
  )
  plot_scores(results, workdir / SCORES_PLOT_FILENAME)
  sglp_diag = _sglp_diagnostics(results)
  if sglp_diag is not None:
    plot_sglp(sglp_diag, workdir / SGLP_PLOT_FILENAME)
  papers = paper_points(results.get('model'), results.get('dataset'))
  if papers:
    plot_pareto(results, workdir / PARETO_PLOT_FILENAME, papers)
  evaluation = None
  if (workdir / EVALUATION_FILENAME).is_file():
    evaluation = json.loads((workdir / EVALUATION_FILENAME).read_text())
    plot_robustness(evaluation, workdir / ROBUSTNESS_PLOT_FILENAME)
  if title is None:
    model = results.get('model')
    title = f'Layer pruning of {model}' if model else 'Layer pruning'
  markdown = '\n'.join(
    [
      f'# {title}',
      '',
      _summary(results),
      '',
      '## Iterations',
      '',
      markdown_table(results).rstrip('\n'),
      '',
      *_section(
        'Everything: the two children of every step', everything_table(results)
      ),
      *_section(
        'Final inner widths (blocks whose filters were pruned)',
        widths_table(results),
      ),
      *_section(
        'Beyond accuracy (python -m lpjax.evaluate)',
        evaluation_table(evaluation) if evaluation else None,
      ),
      '## Figures',
      '',
      f'![Accuracy vs FLOPs reduction]({ACCURACY_PLOT_FILENAME})',
      '',
      f'![Block scores per iteration]({SCORES_PLOT_FILENAME})',
      '',
    ]
    + (
      [f'![SGLP: CKA segments and GradNorm]({SGLP_PLOT_FILENAME})', '']
      if sglp_diag is not None
      else []
    )
    + (
      [
        f'![Accuracy change vs FLOPs reduction, beside published results]'
        f'({PARETO_PLOT_FILENAME})',
        '',
        'Published points: `third_party/papers/` (citations in each file).',
        '',
      ]
      if papers
      else []
    )
    + (
      [f'![Robustness vs FLOPs reduction]({ROBUSTNESS_PLOT_FILENAME})', '']
      if evaluation
      else []
    )
  )
  return markdown


__all__ = [
  'ACCURACY_PLOT_FILENAME',
  'EVALUATION_FILENAME',
  'LOG_SCALE_RATIO',
  'PAPERS_DIR',
  'PARETO_PLOT_FILENAME',
  'REPORT_FILENAME',
  'RESULTS_FILENAME',
  'ROBUSTNESS_PLOT_FILENAME',
  'SCORES_PLOT_FILENAME',
  'SGLP_PLOT_FILENAME',
  'aggregate',
  'block_sort_key',
  'cka_heatmap',
  'evaluation_table',
  'everything_table',
  'load_results',
  'markdown_table',
  'paper_points',
  'plot_accuracy_vs_flops',
  'plot_pareto',
  'plot_robustness',
  'plot_scores',
  'plot_sglp',
  'table',
  'text',
  'widths_table',
  'write_report',
]
