"""The critic-free group workloads (GRPO, RLOO): settings and helpers both sides share.

Standard library only (imported by rlft's environment and by the trl-latest peer's). Each
step: ``GROUP_PROMPTS`` prompts, ``GROUP_K`` sampled completions of exactly
``GROUP_NEW_TOKENS`` tokens each (EOS suppressed until then), the toy reward
`spec.ppo_score` (share of even token ids), then one optimizer step on the whole batch
(ppo_epochs / num_iterations = 1, one minibatch), fp32 on CPU.

rlft: ``PPOTrainer.generate(..., num_return_sequences=GROUP_K)`` + ``step`` with
``PPOConfig(advantage_estimator=...)``, a plain causal LM, no value head.
TRL: ``GRPOTrainer`` / ``RLOOTrainer`` of the newest TRL, same model, prompts and reward.

What each side computes (pinned, so the two do the same work):
- grpo: advantages (r - group mean) / (group std + eps); k3 KL to a frozen reference in the
  loss with weight ``GRPO_BETA`` (GRPO paper; TRL's default beta is 0); loss = mean over
  sequences of each sequence's token mean (TRL ``loss_type="grpo"``).
- rloo: reward minus ``RLOO_BETA`` x the summed log-ratio to a frozen reference (TRL's RLOO
  default), leave-one-out baseline, no advantage normalisation. One difference remains: TRL's
  RLOOTrainer clips a sequence-level ratio and averages over sequences, rlft clips per token
  and averages over tokens (TRL 0.7's PPO loss). With one pass over the batch every ratio is 1
  and nothing is clipped; the two gradients differ by the constant factor GROUP_NEW_TOKENS.
"""

from __future__ import annotations

WORKLOADS = ("grpo", "rloo")
GROUP_PROMPTS = 8
GROUP_K = 4
GROUP_NEW_TOKENS = 32
CLIP_EPS = 0.2
#: KL weight in GRPO's loss: the value of the GRPO paper's training setup (Shao et al. 2024, DeepSeekMath-RL).
GRPO_BETA = 0.04
#: KL weight in RLOO's reward: TRL's RLOOConfig default.
RLOO_BETA = 0.05


def prompt_texts(tokenizer, prompts: list[list[int]]) -> list[str]:
    """The first ``GROUP_PROMPTS`` fixture prompts as text (TRL's trainers take text prompts)."""
    return [tokenizer.decode(ids) for ids in prompts[:GROUP_PROMPTS]]


def prompt_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of the prompt texts, tokenised as TRL does (no special tokens added)."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def tokens_per_step(tokenizer, texts: list[str]) -> int:
    """Query + response tokens of one step: every prompt K times, each with GROUP_NEW_TOKENS new tokens."""
    return sum(GROUP_K * (len(ids) + GROUP_NEW_TOKENS) for ids in prompt_ids(tokenizer, texts))
