"""A transformer for wearable-sensor activity recognition, pruned with CKA.

The CKA paper (Pons et al. 2024) prunes a transformer for human-activity
recognition from wearable sensors (10 layers, "128 heads and projection
dimension 64"). Here: aeon's BasicMotions (a smartwatch's 3-D accelerometer
and gyroscope, 100 steps at 10 Hz, 4 activities, 40 train / 40 test
recordings), each step projected to width 64 (the paper's projection
dimension), a learned position embedding, 10 pre-LN encoder layers (the
paper's depth) with 4 heads of 16 features and an MLP of 128, mean pooling
over time, a linear classifier. 128 heads cannot split a 64-wide projection
in standard multi-head attention, so we read the paper's 128 as the MLP
width and use 4 heads; everything else follows the paper's description.

The baseline trains from scratch (AdamW-free: the project's SGD + Nesterov,
cosine schedule), then layers are scored by 1 - CKA of the pooled features
on the training recordings (the test split never steers a decision), the
lowest removed and the model fine-tuned, down to 2 layers.

  python main.py --config=configs/har_basicmotions.py --workdir=/tmp/lpjax_har
  python main.py --config=configs/har_basicmotions.py:japanesevowels \\
    --workdir=/tmp/lpjax_jv

Expected runtime on the project's 2-core CPU: 5.5 to 7.5 min per run (444,
329 and 352 s for three seeds; `:japanesevowels` about 4 min), BENCHMARKS.md
"Sensor transformer".

`:japanesevowels` runs the same model on aeon's JapaneseVowels (12 LPC
coefficients x 25 frames, 9 speakers, 270 / 370). Results over seeds are in
BENCHMARKS.md ("Sensor transformer").
"""

from configs import base


def get_config(variant: str = ''):
  c = base.get_config()
  c.dataset = 'basicmotions'
  c.model = 'encoder'
  c.encoder.width = 64
  c.encoder.depth = 10
  c.encoder.heads = 4
  c.encoder.mlp = 128
  c.encoder.norm = 'pre'
  c.encoder.pool = 'mean'
  c.encoder.dropout = 0.1
  c.min_blocks_per_stage = 2  # prune 10 -> 2 layers
  c.baseline.epochs = 150
  c.train.batch_size = 8
  c.train.eval_batch_size = 100
  c.train.learning_rate = 0.01
  c.train.schedule = 'cosine'
  c.train.warmup_epochs = 5
  c.train.weight_decay = 1e-4
  c.train.weight_decay_mask = 'kernels'
  c.train.augment = False
  c.train.log_every_steps = 0
  c.prune.criterion = 'cka'
  c.prune.calibration_examples = 40
  c.prune.calibration_split = 'train'
  c.prune.data_batch_size = 40
  c.prune.finetune_epochs = 30
  c.prune.finetune_learning_rate = 0.005
  if variant == 'japanesevowels':
    c.dataset = 'japanesevowels'
    c.baseline.epochs = 60
    c.train.batch_size = 30
    c.prune.calibration_examples = 270
    c.prune.data_batch_size = 135
    c.prune.finetune_epochs = 15
  elif variant:
    raise ValueError(
      f'Unknown variant {variant!r}; valid: "" (BasicMotions), japanesevowels.'
    )
  return c
