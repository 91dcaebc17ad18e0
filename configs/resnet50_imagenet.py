"""CKA layer pruning of ResNet-50 on ImageNet (Pons et al. 2024, Table 3).

Starts from a trained baseline checkpoint (`baseline.source=checkpoint`;
training ResNet-50 from scratch is outside this recipe), scores the 12
candidate bottlenecks on 10 images per class of the training set, and removes
one block per iteration with a 5-epoch fine-tune (lr 1e-3, /10 at 50 % and
75 %, batch 64: the recipe of the authors' ImageNet code), to 8 blocks
(45.28 % FLOPs), where the paper reports -0.90 pp top-1.

ImageNet must be prepared with tfds from the manually downloaded archives
(see the README).

  python main.py --config=configs/resnet50_imagenet.py --workdir=$HOME/runs/r50 \
    --config.baseline.path=$HOME/runs/r50_baseline/baseline \
    --config.data_dir=$HOME/tensorflow_datasets

Expected runtime: one ImageNet epoch of ResNet-50 is hours on one GPU; the
8 iterations x 5 epochs are days. Needs accelerators.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = 'imagenet2012'
  c.model = 'resnet50'
  c.style = 'keras_imagenet'
  c.baseline.source = 'checkpoint'
  c.train.batch_size = 64
  c.train.eval_batch_size = 250
  c.prune.criterion = 'cka'
  c.prune.target_blocks = 8
  c.prune.calibration_examples = 10_000
  c.prune.data_batch_size = 100
  c.prune.candidate_chunk = 0  # shared prefix: at most 13 streams of 100
  c.prune.finetune_epochs = 5
  c.prune.finetune_learning_rate = 1e-3
  return c
