"""The documented SmolLM2 smoke command, end to end, as a user runs it.

`python main.py --config=configs/smollm2_depth.py:smoke --workdir=W` on the
real SmolLM2-135M (fetched once into the lpjax cache): exit 0, the results
table printed, `results.json` with finite perplexities for the unpruned,
pruned and healed models, and a report with its figures.
"""

import json
import math

from commands import PNG, main_py


def test_llm_smoke_command_leaves_a_report(tmp_path):
  proc = main_py(
    '--config=configs/smollm2_depth.py:smoke', f'--workdir={tmp_path}'
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| layers removed |' in proc.stdout
  res = json.loads((tmp_path / 'results.json').read_text())
  assert sorted(res['pruned']) == ['1', '2']
  assert list(res['healed']) == ['2/lora']
  ppl = [
    res['baseline']['perplexity'],
    *(v['perplexity'] for v in res['pruned'].values()),
    res['healed']['2/lora']['perplexity'],
  ]
  assert all(math.isfinite(p) and p > 1 for p in ppl), ppl
  # Removing layers from a pretrained model costs perplexity.
  assert res['pruned']['2']['perplexity'] > res['baseline']['perplexity']
  report = (tmp_path / 'report.md').read_text()
  assert '| layers removed |' in report
  for name in ('perplexity.png', 'scores.png'):
    assert f']({name})' in report
    assert (tmp_path / name).read_bytes()[:8] == PNG
