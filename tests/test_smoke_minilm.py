"""The documented MiniLM smoke command, end to end, as a user runs it.

`python main.py --config=configs/minilm.py:smoke --workdir=W` on the real
all-MiniLM-L6-v2 (fetched once into the lpjax cache): exit 0, the table
printed, two layers removed with cosines to the unpruned embeddings in
(0, 1], and a report with its figures.
"""

import json

from commands import PNG, main_py


def test_minilm_smoke_command_leaves_a_report(tmp_path):
  proc = main_py('--config=configs/minilm.py:smoke', f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| iteration | removed |' in proc.stdout
  res = json.loads((tmp_path / 'results.json').read_text())
  its = res['iterations']
  assert [len(r['removed']) for r in its] == [1, 1]
  assert its[0]['removed'] != its[1]['removed']
  for r in its:
    assert 0.0 < r['cosine_min'] <= r['cosine'] <= 1.0 + 1e-6
    assert 0.0 <= r['nn_agreement'] <= 1.0
  report = (tmp_path / 'report.md').read_text()
  assert '| iteration | removed |' in report
  for name in ('agreement.png', 'scores.png'):
    assert f']({name})' in report
    assert (tmp_path / name).read_bytes()[:8] == PNG
