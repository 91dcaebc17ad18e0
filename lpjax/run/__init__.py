"""What every task's run shares: the record of a run in its workdir.

`lpjax.run.record`: atomic JSON written by process 0 only, one config-change
refusal (with its override, `resume_despite_config_change`) for every task,
and the corpus/model identity a resumed run must share.
"""
