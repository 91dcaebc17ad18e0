"""A ViT on scikit-learn's digits, pruned layer by layer with CKA.

Runs offline. The 8x8 digits are cut into 2x2 patches (16 tokens + a class
token); a 6-layer pre-LN ViT (width 64, 4 heads, MLP 128) is trained from
scratch, then three times every encoder layer is scored by 1 - CKA of the
pooled (class-token) features with and without it, the lowest is removed
and the model fine-tuned, down to 3 layers.

  python main.py --config=configs/vit_digits.py --workdir=/tmp/lpjax_vit

Expected on a 2-core CPU, seed 0: test accuracy 96.66 % unpruned, then
97.49, 96.94 and 96.38 % after removing layer05, layer04 and layer03
(49.93 % fewer FLOPs) on one machine; 96.94 → 96.66 / 97.21 / 96.10 % on
another (float rounding differs between CPUs; 359 test images: one image
is 0.28 pp, so these differ by one to three images). Wall time 4 min 49 s
with another process using most of both cores (3 min 25 s of CPU).
`benchmarks/documented_tables.py --configs=vit_digits` checks a run against
that range.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = 'digits'  # 1,438 train / 359 test 8x8 grayscale digits
  c.model = 'vit'
  c.vit.patch = 2
  c.vit.width = 64
  c.vit.depth = 6
  c.vit.heads = 4
  c.vit.mlp = 128
  c.vit.pool = 'cls'
  c.vit.dropout = 0.0
  c.min_blocks_per_stage = 3  # prune 6 -> 3 layers
  c.baseline.epochs = 100
  c.train.batch_size = 64
  c.train.learning_rate = 0.05
  c.train.schedule = 'cosine'
  c.train.warmup_epochs = 3
  c.train.weight_decay = 1e-4
  c.train.weight_decay_mask = 'kernels'
  c.train.log_every_steps = 0  # one line per epoch
  c.prune.criterion = 'cka'
  c.prune.calibration_examples = 500
  c.prune.data_batch_size = 250
  c.prune.finetune_epochs = 15
  c.prune.finetune_learning_rate = 0.01
  return c
