"""Text environments for tool use in RL (TRL 0.7.10's ``trl.environment``), plus chat-template tool calling."""

from .base_environment import StringStoppingCriteria, TextEnvironment, TextHistory
from .chat_environment import ChatHistory, ChatToolEnvironment, parse_tool_calls

__all__ = ["ChatHistory", "ChatToolEnvironment", "StringStoppingCriteria", "TextEnvironment", "TextHistory", "parse_tool_calls"]
