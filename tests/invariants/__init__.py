"""Invariance tests: results that must not depend on how the work is laid out.

- ``test_padding.py``: left/right padding amounts change neither PPO log-probs and values (causal
  and encoder-decoder) nor the SFT loss.
- ``test_accumulation.py``: mini-batch 1 x gradient accumulation 4 gives the same update as
  mini-batch 4 x accumulation 1, for PPOTrainer.step and SFTTrainer.
- Resume: a resumed run continues the uninterrupted one exactly. These tests live with the
  checkpoint code they exercise: ``tests/reliability/test_ppo_resume.py`` (PPO, bitwise, full and
  peft, including a check that dropping the saved RNG state breaks it) and
  ``tests/reliability/test_trainer_resume.py`` (SFT, completion-only, reward, DPO).
- Multi-process: two CPU processes give the same parameters as one process with the same global
  batch, for PPO and SFT: ``tests/reliability/test_multiprocess.py`` (slow); the cross-process
  whitening alone: ``tests/trainer/test_distributed_whitening.py``.
"""
