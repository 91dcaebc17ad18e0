"""Quickstart: CKA layer pruning of a ResNet-20 on scikit-learn's digits.

Runs offline (the digits ship inside scikit-learn): trains the baseline, then
three times scores every candidate block by 1 - CKA, removes the lowest and
fine-tunes, down to the floor of two blocks per stage.

  python main.py --config=configs/quickstart.py --workdir=/tmp/lpjax_quickstart

Expected on a 2-core CPU: 1.5 to 3.5 min (more with other jobs running);
test accuracy 98.05-99.72 % unpruned and 97.77-99.16 % after removing three
blocks (34.93 % fewer FLOPs): the spread over seeds 0-2, two machines and
one- or two-core runs
(README "Quickstart"; `benchmarks/documented_tables.py` checks a run against
it).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = 'digits'  # 1,438 train / 359 test 8x8 grayscale digits
  c.model = 'resnet20'
  c.baseline.epochs = 30
  c.train.batch_size = 64
  c.train.learning_rate = 0.05
  c.train.log_every_steps = 0  # one line per epoch
  c.prune.criterion = 'cka'
  c.prune.calibration_examples = 500
  c.prune.data_batch_size = 250
  c.prune.finetune_epochs = 8
  c.prune.finetune_learning_rate = 0.01
  return c
