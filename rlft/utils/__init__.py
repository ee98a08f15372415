"""Utilities shared by the trainers.

- `rlft.utils.checkpoint`: atomic checkpoint folders, completeness markers, `latest_checkpoint`.
- `rlft.utils.faults`: the non-finite-step policy (`NonFiniteGuard`, `NonFiniteError`) and out-of-memory messages.
- `rlft.utils.resumable`: a dataloader wrapper and sampler that resume mid-epoch.
- `rlft.utils.memory`: peak-memory measurement.
- `rlft.utils.running`: statistics kept across steps (`RunningMoments`, `PerPromptStatTracker`).
"""
