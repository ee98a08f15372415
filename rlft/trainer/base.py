"""BaseTrainer: what TRL 0.7 exposed as ``trl.trainer.BaseTrainer``."""

from __future__ import annotations


class BaseTrainer:
    """Common base of the step-based trainers: holds the config and defines the interface."""

    def __init__(self, config):
        self.config = config

    def step(self, *args):
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def loss(self, *args):
        raise NotImplementedError(f"{type(self).__name__} does not implement loss()")

    def compute_rewards(self, *args):
        raise NotImplementedError(f"{type(self).__name__} does not implement compute_rewards()")

    def _save_pretrained(self, save_directory):
        raise NotImplementedError(f"{type(self).__name__} does not implement _save_pretrained()")

    def save_checkpoint(self, directory):
        """Save the complete training state to ``directory/checkpoint-<step>`` atomically; return that folder."""
        raise NotImplementedError(f"{type(self).__name__} does not implement save_checkpoint()")

    def load_checkpoint(self, path):
        """Restore a `save_checkpoint` folder (or the latest complete one in a run folder); return the folder used."""
        raise NotImplementedError(f"{type(self).__name__} does not implement load_checkpoint()")
