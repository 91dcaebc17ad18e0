"""Every ```python block of README.md runs and prints what it says.

Each block runs in a fresh Python process (this interpreter), in a
temporary working directory, so that one block's state, files or JAX
settings cannot leak into another or into the tests. A block passes when

* it exits without an exception;
* no `print` of the block outputs NaN (an example prints meaningful
  numbers);
* every `print(...)` call written on one line and followed by a comment,
  `print(value)  # expected`, prints output matching the comment, with
  doctest-like rules: `...` matches any text, a run of whitespace matches
  any whitespace (line breaks included), and a number matches to the
  precision written, as pytest's doctest `NUMBER` option does (`0.12`
  accepts 0.115 to 0.125, `1.` or `1.0` accepts 0.95 to 1.05, `125747840`
  only itself). Words after the expected output are a description: the
  output may match the comment up to a space instead (`# 40813184
  multiply-accumulates` accepts `40813184`);
* every such commented `print` actually ran.

The tests are parametrized per block, with ids from the block's heading
(`-k lpjax_cka_on_its_own`).
"""

import io
import json
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import NamedTuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / 'README.md'

_NUMBER = r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?'
_FENCE = re.compile(r'^```python\s*\n(.*?)^```\s*$', re.DOTALL | re.MULTILINE)

# Runs one block: `print` in the block's namespace records (line, output).
_DRIVER = """
import io, json, sys
path, out = sys.argv[1:]
records = []

def recording_print(*args, **kwargs):
  if kwargs.get('file') is not None:
    return print(*args, **kwargs)
  buf = io.StringIO()
  print(*args, **kwargs, file=buf)
  records.append((sys._getframe(1).f_lineno, buf.getvalue()))
  sys.stdout.write(buf.getvalue())

try:
  code = compile(open(path).read(), path, 'exec')
  exec(code, {'__name__': '__main__', 'print': recording_print})
finally:
  with open(out, 'w') as f:
    json.dump(records, f)
"""


class Block(NamedTuple):
  id: str  # From the heading above it.
  line: int  # README line of the block's first code line.
  source: str


def python_blocks(text: str) -> list[Block]:
  """The ```python fenced blocks of a markdown text, in order."""
  blocks = []
  seen = {}
  for match in _FENCE.finditer(text):
    before = text[: match.start()]
    headings = re.findall(r'^#+\s+(.*)$', before, re.MULTILINE)
    slug = re.sub(r'\W+', '_', headings[-1] if headings else 'top')
    slug = slug.strip('_').lower()
    seen[slug] = seen.get(slug, 0) + 1
    if seen[slug] > 1:
      slug = f'{slug}_{seen[slug]}'
    line = before.count('\n') + 2
    blocks.append(Block(slug, line, match.group(1)))
  return blocks


def expected_outputs(source: str) -> dict[int, str]:
  """`{line: comment}` for one-line `print(...)  # comment` statements."""
  comments = {}
  tokens = tokenize.generate_tokens(io.StringIO(source).readline)
  for tok in tokens:
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = tok.string[1:].strip()
  lines = source.splitlines()
  return {
    i: c
    for i, c in comments.items()
    if re.match(r'\s*print\(.*\)\s*#', lines[i - 1])
  }


def output_matches(expected: str, got: str) -> bool:
  """The comment, or its beginning up to a space, matches the output."""
  expected = expected.strip()
  cuts = [m.start() for m in re.finditer(r'\s+', expected)]
  return any(
    _matches(expected[:end], got) for end in [len(expected), *cuts[::-1]]
  )


def _matches(expected: str, got: str) -> bool:
  """doctest-like `ELLIPSIS`, `NORMALIZE_WHITESPACE` and `NUMBER` match."""
  pattern, numbers = [], []
  for part in re.split(r'(\.\.\.|' + _NUMBER + r'|\s+)', expected.strip()):
    if not part:
      continue
    if part == '...':
      pattern.append(r'.*?')
    elif re.fullmatch(_NUMBER, part):
      pattern.append(r'\s*(' + _NUMBER + r')\s*')
      numbers.append(part)
    elif part.isspace():
      pattern.append(r'\s+')
    else:
      pattern.append(re.escape(part))
  match = re.fullmatch(''.join(pattern), got.strip(), re.DOTALL)
  if not match:
    return False
  for want, have in zip(numbers, match.groups()):
    mantissa = re.split(r'[eE]', want)[0]
    decimals = len(mantissa.split('.')[1]) if '.' in mantissa else 0
    exponent = int(re.split(r'[eE]', want)[1]) if re.search('[eE]', want) else 0
    if abs(float(have) - float(want)) > 0.5 * 10.0 ** (exponent - decimals):
      return False
  return True


BLOCKS = python_blocks(README.read_text())


def test_readme_has_python_blocks():
  assert any('from lpjax import cka' in b.source for b in BLOCKS)


@pytest.mark.parametrize(
  'expected, got, ok',
  [
    ('0.12', '0.1182899', True),
    ('0.12', '0.126', False),
    ('1.', '0.9999999', True),
    ('[1. 0.29 0.12]', '[0.9999999  0.29013076 0.1182899 ]', True),
    ('[1. 0.29 0.12]', '[0.9999999  0.29013076]', False),
    ("{'a': 3.75...}", "{'a': 3.7512, 'b': 1}", True),
    ('125747840', '125747841', False),
    ('y (500, 8) is constant ...', 'y (500, 8) is constant over all', True),
    ('y (500, 8) is constant ...', 'x (500, 8) is constant over all', False),
    ('2e-05', '2.4e-05', True),
    ('2e-05', '2.6e-05', False),
    ('40813184 multiply-accumulates', '40813184', True),
    ('40813184 multiply-accumulates', '40813185', False),
  ],
)
def test_output_matching_rules(expected, got, ok):
  assert output_matches(expected, got) == ok


@pytest.mark.parametrize('block', BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_and_prints_what_it_says(block, tmp_path):
  src = tmp_path / 'readme_block.py'
  src.write_text(block.source)
  out = tmp_path / 'prints.json'
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
    [str(REPO_ROOT), *filter(None, [env.get('PYTHONPATH')])]
  )
  proc = subprocess.run(
    [sys.executable, '-c', _DRIVER, str(src), str(out)],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    timeout=900,  # A hang guard: the longest block takes about a minute.
    text=True,
  )
  where = f'README.md block at line {block.line} ({block.id})'
  assert proc.returncode == 0, f'{where} failed:\n{proc.stderr[-4000:]}'
  printed = json.loads(out.read_text())
  expected = expected_outputs(block.source)
  for line, text in printed:
    readme_line = block.line + line - 1
    assert not re.search(r'\bnan\b', text, re.IGNORECASE), (
      f'README.md line {readme_line} printed NaN: {text!r}'
    )
    if line in expected:
      assert output_matches(expected[line], text), (
        f'README.md line {readme_line} printed {text!r}; its comment says '
        f'{expected[line]!r}'
      )
  missing = sorted(set(expected) - {line for line, _ in printed})
  assert not missing, (
    f'{where}: commented prints on block lines {missing} never ran'
  )
