"""`python -m lpjax.export`: write a model of a run in a format people run.

    python -m lpjax.export --workdir=W [--step=S] --format=F --out=DIR
        [--dtype=F32|F16|Q8_0] [--name=NAME]

`--step`: `k` (0: the unpruned model), `baseline`, `iter_003`, or `k/mode`
(an llm run's healed model); default the last pruned model. `--format`:
`gguf` or `hf` (llm runs), `sentence-transformers` (embedding runs),
`keras` (classifier runs of a CIFAR ResNet). `--out`: a new or empty
folder (gguf: `model.gguf` in it, or give a new `.gguf` file; keras:
`model.json` + `model.h5`). `--dtype` and `--name`: gguf only. See
`lpjax.export.export`.

A refusal (no run in the workdir, a step the run did not make, a format
that does not fit its model, a used or unwritable output, ...) is one
`error:` line on stderr and exit status 2, before anything is read or
written; Ctrl-C is status 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lpjax import errors
from lpjax.export import FORMATS, export


class _ArgumentError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line (no usage block), status 2."""

  def error(self, message: str):
    raise _ArgumentError(
      f'{message}. Run python -m lpjax.export --help for the flags.'
    )


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m lpjax.export`: 0 written, 2 a user error, 130 Ctrl-C."""
  p = _Parser(
    prog='python -m lpjax.export',
    description='Write a pruned (or healed) model of a run for llama.cpp, '
    'transformers, sentence-transformers or Keras.',
  )
  p.add_argument('--workdir', required=True, help="the run's workdir")
  p.add_argument(
    '--step',
    default=None,
    help='k (0: unpruned), baseline, iter_003, or k/mode (healed); '
    'default: the last pruned model',
  )
  p.add_argument('--format', required=True, help=', '.join(FORMATS))
  p.add_argument(
    '--out', required=True, help='a new or empty folder (gguf: or .gguf)'
  )
  p.add_argument('--dtype', default=None, help='gguf: F32 (default), F16, Q8_0')
  p.add_argument('--name', default=None, help='gguf: general.name')
  try:
    args = p.parse_args(argv)
  except _ArgumentError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 2
  options = {k: v for k, v in (('dtype', args.dtype), ('name', args.name)) if v}
  try:
    paths = export(args.workdir, args.step, args.format, args.out, **options)
  except errors.UserError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2
  except KeyboardInterrupt:
    print(
      'error: interrupted; what was written may be incomplete: delete '
      f'{args.out} and run the same command again.',
      file=sys.stderr,
      flush=True,
    )
    return 130
  for path in paths:
    print(f'Wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
