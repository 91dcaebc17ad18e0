"""CKA layer pruning of ResNet-56 on CIFAR-10, the recipe of Pons et al. 2024.

Trains the baseline (200 epochs), then repeatedly scores the 24 candidate
blocks on 5,000 class-balanced training images, removes the one whose removal
changes the pooled features least (1 - CKA) and fine-tunes 200 epochs, down
to 75.05 % FLOPs reduction ([2, 2, 3] blocks, 20 removals), where the paper
reports +0.08 pp. CIFAR-10 must be prepared first (see the README).

  python main.py --config=configs/resnet56.py --workdir=$HOME/runs/r56
  # start from the authors' Keras baseline instead of training one:
  python main.py --config=configs/resnet56.py --workdir=$HOME/runs/r56 \
    --config.baseline.source=keras \
    --config.baseline.keras_json=ResNet56.json \
    --config.baseline.keras_h5=ResNet56++.h5

Expected runtime: a full run is 200 + 20 x 200 epochs (~4,200 epochs); on one
modern GPU an epoch of ResNet-56 takes seconds, on a 2-core CPU ~33 minutes,
so use an accelerator or shorten `prune.finetune_epochs`.

`configs/resnet56.py:smoke` is a minutes-long run of the same pipeline (width
4, one epoch, one removal) used by the tests under tfds mock data.
"""

from configs import base


def get_config(mode: str = ''):
  c = base.get_config()
  c.dataset = 'cifar10'
  c.model = 'resnet56'
  c.baseline.epochs = 200
  c.prune.criterion = 'cka'
  c.prune.target_flops_reduction = 75.0
  c.prune.finetune_epochs = 200
  if mode == 'smoke':
    c.width = 4
    c.baseline.epochs = 1
    c.train.batch_size = 16
    c.train.eval_batch_size = 32
    c.prune.target_flops_reduction = 0.0
    c.prune.target_blocks = 1
    c.holdout = 0.5
    c.prune.calibration_examples = 20
    c.prune.data_batch_size = 20
    c.prune.calibration_split = 'holdout'
    c.prune.finetune_epochs = 1
  elif mode:
    raise ValueError(f'Unknown mode {mode!r}; valid: "" or "smoke".')
  return c
