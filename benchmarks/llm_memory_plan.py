"""Memory plan: what a LLaMA-3-8B-shaped decoder needs in lpjax, in bfloat16.

Nothing is run and no weights are needed: each program lpjax would run is
lowered on abstract shapes (`jax.ShapeDtypeStruct`; the parameters'
shapes from `jax.eval_shape` of the model's init, cast to bfloat16) and
compiled, and XLA's buffer assignment is read
(`compiled.memory_analysis()`: arguments, outputs, temporaries). The
programs are the ones the language-model task runs:

* scoring, `cka`: the shared-prefix pass over the unpruned model and every
  single-layer removal (`lpjax.scoring.candidate_representations`,
  `representation='pooled'`), one calibration batch;
* scoring, `block_influence`: one batched forward keeping every layer's
  output (`lpjax.methods.block_influence`, through
  `lpjax.scoring.map_batches`), one batch;
* held-out evaluation: `lpjax.models.next_token.evaluation_program` (NLL and
  argmax, logits a chunk of positions at a time), one batch;
* LoRA healing: one optimizer step (`lpjax.healing`, rank 8 on every
  layer's MLP, AdamW state included), without and with each layer
  rematerialised (`HealConfig.remat`, healing's default: the backward
  keeps each layer's input and recomputes one layer at a time).

The estimate is the CPU compiler's buffer assignment (this script compiles
for the host); an accelerator's compiler fuses and schedules differently,
and the CPU backend may widen bfloat16 arithmetic to float32 internally, so
read the numbers as the size of what the program keeps alive, not an exact
device figure. One widening is measured: compiled with float32 weights,
the evaluation's temporaries do not grow with depth (6.30 GB at 2 and at 3
layers, 4 x 2048 tokens), with bfloat16 weights they grow by 0.872 GB per
layer, exactly one layer's weights in float32 (218 M parameters x 4 B):
the CPU compiler converts each layer's bfloat16 kernels to float32 for its
dot products and keeps the copies. An accelerator multiplies bfloat16
natively, so the table also gives the temporaries less those copies
(`depth x` one layer's weights in float32) and the total that follows; for
the LoRA step, whose float32 compile grows by 3.64 GB per layer against
3.57 in bfloat16, that adjustment is only approximate. Compiling 32 layers of 8B shapes is slow on a 2-core host,
so each program is compiled at `--depths` (default 2 and 3 layers) and
every quantity is extrapolated linearly to 32 layers: arguments and
outputs grow exactly linearly with depth; a forward's temporaries are
reused layer after layer (slope ~0), while the shared-prefix pass (one more
stream per layer), block influence (every layer's output) and a gradient
(every layer's saved activations) grow by a fixed amount per layer. The
weights column is exact (the 32-layer parameter tree in bfloat16).

  python benchmarks/llm_memory_plan.py            # the table, ~4 min here
  python benchmarks/llm_memory_plan.py --depths=2,3,4
  python benchmarks/llm_memory_plan.py --only=LoRA   # the healing rows

"Fits" compares the total with 80 GB (8·10¹⁰ bytes, an H100's memory).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import healing, models, scoring
from lpjax.methods import block_influence
from lpjax.models import decoder, next_token

# LLaMA-3-8B (Meta's config.json: 32 layers, hidden 4096, 32 heads, 8 KV
# heads, intermediate 14336, vocabulary 128256, rope_theta 500000, untied).
LLAMA3_8B = dict(
  vocab=128256,
  width=4096,
  depth=32,
  heads=32,
  kv_heads=8,
  mlp=14336,
  rope_theta=500000.0,
  eps=1e-5,
  tied=False,
  seq_len=2048,
)
DEVICE_BYTES = 80e9
GB = 1e9


def arch_of(depth: int, seq_len: int):
  return decoder.decoder(**{**LLAMA3_8B, 'depth': depth, 'seq_len': seq_len})


def abstract_variables(arch, dtype=jnp.bfloat16):
  shapes = models.variable_shapes(arch, (arch.option('seq_len'),))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), shapes)


def layer_f32_bytes(arch) -> int:
  """One layer's weights in float32 (the CPU compiler's widened copy)."""
  params = abstract_variables(arch)['params']
  return 4 * sum(
    math.prod(x.shape) for x in jax.tree.leaves(params[arch.blocks[0].name])
  )


def nbytes(tree) -> int:
  return sum(
    math.prod(x.shape) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
  )


def ids(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.int32)


# Each program: name -> (builder(arch, batch, tokens) -> (fn, args)).
def cka_pass(arch, batch, tokens):
  fn = scoring._compiled_representations(arch, 'pooled', None)
  return fn, (abstract_variables(arch), ids(1, batch, tokens))


def influence_pass(arch, batch, tokens):
  fn = scoring._compiled_map(arch, block_influence._influence)
  return fn, (abstract_variables(arch), ids(1, batch, tokens))


def evaluation(arch, batch, tokens):
  fn = next_token.evaluation_program(models.build_model(arch))
  return fn, (abstract_variables(arch), ids(batch, tokens))


def lora_step(arch, batch, tokens, remat=False):
  cfg = healing.HealConfig(
    mode='lora', steps=100, rank=8, batch_size=batch, remat=remat
  )
  step, tx = healing._compiled_step(arch, cfg)
  frozen = abstract_variables(arch)['params']
  trainable = jax.eval_shape(
    lambda p: healing.init_lora(arch, p, cfg.rank, jax.random.PRNGKey(0)),
    frozen,
  )
  opt_state = jax.eval_shape(tx.init, trainable)
  return step, (trainable, opt_state, frozen, ids(batch, tokens))


def lora_step_remat(arch, batch, tokens):
  return lora_step(arch, batch, tokens, remat=True)


PLANS = (
  ('scoring: cka shared-prefix pass', cka_pass, 8, 2048),
  ('scoring: cka shared-prefix pass', cka_pass, 1, 2048),
  ('scoring: block_influence', influence_pass, 8, 2048),
  ('held-out evaluation', evaluation, 4, 2048),
  ('LoRA healing step (rank 8)', lora_step, 1, 2048),
  ('LoRA healing step (rank 8)', lora_step, 4, 2048),
  ('LoRA healing step (rank 8), remat', lora_step_remat, 1, 2048),
  ('LoRA healing step (rank 8), remat', lora_step_remat, 4, 2048),
)


def measure(builder, depth, batch, tokens) -> dict[str, float]:
  arch = arch_of(depth, tokens)
  fn, args = builder(arch, batch, tokens)
  m = fn.lower(*args).compile().memory_analysis()
  return {
    'arguments': m.argument_size_in_bytes,
    'temp': m.temp_size_in_bytes,
    'output': m.output_size_in_bytes,
  }


def extrapolate(points: dict[int, dict[str, float]], depth: int):
  """Least-squares line through (depth, value) per quantity, at `depth`."""
  ds = np.array(sorted(points), float)
  out = {}
  for key in points[int(ds[0])]:
    ys = np.array([points[int(d)][key] for d in ds], float)
    slope, intercept = np.polyfit(ds, ys, 1)
    out[key] = max(0.0, intercept + slope * depth)
    out[key + '_per_layer'] = slope
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--depths', default='2,3', help='layers compiled')
  parser.add_argument(
    '--only', default='', help='run the programs whose name contains this'
  )
  args = parser.parse_args()
  depths = [int(d) for d in args.depths.split(',')]
  full = LLAMA3_8B['depth']
  weights = nbytes(abstract_variables(arch_of(full, 2048)))
  widened = full * layer_f32_bytes(arch_of(1, 2048))
  print(
    f'LLaMA-3-8B shape, bfloat16 weights {weights / GB:.2f} GB; compiled '
    f'at depths {depths}, extrapolated to {full} layers; '
    f'{jax.devices()[0].platform} compiler.'
  )
  rows = []
  for name, builder, batch, tokens in PLANS:
    if args.only not in name:
      continue
    t0 = time.perf_counter()
    points = {d: measure(builder, d, batch, tokens) for d in depths}
    est = extrapolate(points, full)
    total = est['arguments'] + est['temp'] + est['output']
    adjusted = max(0.0, est['temp'] - widened)
    adjusted_total = total - est['temp'] + adjusted
    rows.append(
      (
        name,
        f'{batch} x {tokens}',
        weights / GB,
        est['arguments'] / GB,
        est['temp'] / GB,
        est['temp_per_layer'] / GB,
        est['output'] / GB,
        total / GB,
        'yes' if total < DEVICE_BYTES else 'no',
        adjusted / GB,
        adjusted_total / GB,
        'yes' if adjusted_total < DEVICE_BYTES else 'no',
      )
    )
    print(f'  {name} {batch} x {tokens}: {time.perf_counter() - t0:.0f} s')
  print()
  print(
    '| program | batch x tokens | weights GB | arguments GB | temp GB | '
    'temp per layer GB | output GB | total GB | fits 80 GB | temp less '
    'f32 weight copies GB | total less copies GB | fits 80 GB |'
  )
  print('|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|')
  for r in rows:
    print(
      f'| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | '
      f'{r[5]:.3f} | {r[6]:.3f} | {r[7]:.2f} | {r[8]} | {r[9]:.2f} | '
      f'{r[10]:.2f} | {r[11]} |'
    )


if __name__ == '__main__':
  main()
