"""The run record every task shares (`lpjax.run.record`)."""

import json

import jax
import pytest

from configs import base, minilm, smollm2_depth
from lpjax import errors
from lpjax.run import record


@pytest.mark.parametrize(
  'make', [base.get_config, minilm.get_config, smollm2_depth.get_config]
)
def test_config_change_is_refused_unless_overridden(make, tmp_path):
  config = make()
  assert record.start(str(tmp_path), config) is None  # a fresh run
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved == json.loads(json.dumps(config.to_dict()))
  changed = make()
  changed.seed = 3
  with pytest.raises(errors.ConfigError) as e:
    record.start(str(tmp_path), changed)
  assert 'seed: 0 -> 3' in str(e.value)
  assert 'resume_despite_config_change' in str(e.value)
  # Fields that cannot change results may differ.
  free = make()
  free.checkpoint_max_to_keep = 5
  record.start(str(tmp_path), free)
  # The override resumes anyway and records the new config.
  changed.resume_despite_config_change = True
  record.start(str(tmp_path), changed)
  assert json.loads((tmp_path / 'config.json').read_text())['seed'] == 3


def test_identity_and_damaged_files_are_refused(tmp_path):
  config = minilm.get_config()
  record.start(str(tmp_path), config, identity={'corpus': 'a', 'model': 'm'})
  record.write_json(
    str(tmp_path / 'results.json'),
    {'config': config.to_dict(), 'corpus': 'a', 'model': 'm'},
  )
  record.start(str(tmp_path), config, identity={'corpus': 'a', 'model': 'm'})
  with pytest.raises(errors.ConfigError, match='other text'):
    record.start(str(tmp_path), config, identity={'corpus': 'b'})
  with pytest.raises(errors.ConfigError, match="model 'm', not 'n'"):
    record.start(str(tmp_path), config, identity={'model': 'n'})
  (tmp_path / 'config.json').write_text('{"seed": ')
  with pytest.raises(errors.UserError, match=r'config\.json is not valid JSON'):
    record.start(str(tmp_path), config)
  under_a_file = tmp_path / 'results.json' / 'w'
  with pytest.raises(errors.UserError, match='Cannot create the workdir'):
    record.start(str(under_a_file), config)


def test_only_process_0_writes(tmp_path, monkeypatch):
  path = tmp_path / 'results.json'
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  record.write_json(str(path), {'a': 1})
  assert not path.exists()
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  record.write_json(str(path), {'a': 1})
  assert json.loads(path.read_text()) == {'a': 1}
  assert not (tmp_path / 'results.json.tmp').exists()
