"""The quickstart notebook: in sync with its jupytext script, and it runs.

The notebook is executed as users open it (the `.ipynb`, in a Jupyter
kernel), in a fresh kernel, from the notebooks folder; then its workdir is
checked for what every cell was meant to produce.
"""

import json
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / 'notebooks'
NOTEBOOK = NOTEBOOKS / 'quickstart.ipynb'
SCRIPT = NOTEBOOKS / 'quickstart.py'


def _cells(nb):
  return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_notebook_and_script_are_paired_and_in_sync():
  ipynb = nbformat.read(NOTEBOOK, as_version=4)
  script = jupytext.read(SCRIPT)
  assert _cells(ipynb) == _cells(script), (
    'notebooks/quickstart.ipynb and quickstart.py differ; edit the .py and '
    'run `jupytext --sync notebooks/quickstart.py`.'
  )
  assert ipynb.metadata['jupytext']['formats'] == 'ipynb,py:percent'
  # Stored without outputs: the notebook in the repository is a source.
  assert all(
    not c.get('outputs') and c.get('execution_count') is None
    for c in ipynb.cells
    if c.cell_type == 'code'
  )


def _kernel_of_this_interpreter(root: Path) -> str:
  """A kernelspec that runs this interpreter, first on the Jupyter path (a
  user's own `python3` kernel could be another Python without lpjax)."""
  name = 'lpjax-test-python'
  spec = root / 'kernels' / name
  spec.mkdir(parents=True)
  argv = [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}']
  spec.joinpath('kernel.json').write_text(
    json.dumps({'argv': argv, 'display_name': name, 'language': 'python'})
  )
  return name


def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  monkeypatch.setenv('LPJAX_WORKDIR', str(workdir))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  kernel = _kernel_of_this_interpreter(tmp_path / 'jupyter')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # A hang fails the test rather than the CI job; the cells raise on error.
  NotebookClient(
    nb,
    timeout=900,
    kernel_name=kernel,
    resources={'metadata': {'path': str(NOTEBOOKS)}},
  ).execute()

  results = json.loads((workdir / 'results.json').read_text())
  iterations = results['iterations']
  # Two of ResNet-20's nine blocks, one per iteration.
  assert [len(it['removed']) for it in iterations] == [1, 1]
  for name in ('report.md', 'accuracy_vs_flops.png', 'scores.png'):
    assert (workdir / name).stat().st_size > 0, name
  evaluation = json.loads((workdir / 'evaluation.json').read_text())
  assert len(evaluation['models']) == 3
  for name in ('robustness.png', 'block_cka.png'):
    assert (workdir / name).stat().st_size > 0, name
  # The CKA cell compared lpjax.cka with float64 NumPy and printed it.
  printed = '\n'.join(
    o.get('text', '')
    for c in nb.cells
    if c.cell_type == 'code'
    for o in c.outputs
    if o.output_type == 'stream'
  )
  assert 'largest difference over all 9² pairs' in printed
  # No cell raised, and none wrote an error output.
  errors = [
    o
    for c in nb.cells
    for o in c.get('outputs', [])
    if o.output_type == 'error'
  ]
  assert not errors, errors


if __name__ == '__main__':
  raise SystemExit(pytest.main([__file__, '-q']))
