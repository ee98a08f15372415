"""Text environments for tool use in RL (TRL 0.7.10's ``trl.environment``)."""

from .base_environment import StringStoppingCriteria, TextEnvironment, TextHistory

__all__ = ["StringStoppingCriteria", "TextEnvironment", "TextHistory"]
