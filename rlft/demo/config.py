"""DemoConfig: the settings of `rlft demo` (each field is a command-line flag)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class DemoConfig:
    """Teach SmolLM2-135M-Instruct to write positive movie reviews, on real offline assets.

    Defaults are the full run (about 15 minutes on a 2-core CPU); ``--quick`` is a ~3-minute
    version; ``--tiny`` runs the same pipeline on a tiny random model and made-up reviews (a smoke
    test that needs no real asset).
    """

    output_dir: Optional[str] = field(default=None, metadata={"help": "Run directory (default: runs/demo-<date>-<time>; an existing non-empty one needs --overwrite)."})
    overwrite: bool = field(default=False, metadata={"help": "Reuse a non-empty output_dir."})
    quick: bool = field(default=False, metadata={"help": "A ~3-minute version: smaller reward-model set, fewer PPO steps and prompts."})
    tiny: bool = field(default=False, metadata={"help": "Smoke test on the tiny offline model and made-up reviews (no real assets)."})
    reward: str = field(default="learned", metadata={"help": "PPO reward: 'learned' (the MiniLM reward model) or 'vader'."})
    seed: int = field(default=0, metadata={"help": "Seed of data splits, sampling and training."})
    # ---- time and size
    max_ppo_steps: Optional[int] = field(default=None, metadata={"help": "PPO steps (default 35: about 9 minutes on an idle 2-core CPU; quick 5)."})
    ppo_minutes: Optional[float] = field(default=None, metadata={"help": "Also stop PPO after this many minutes (default: no time limit; the steps bound the run)."})
    heldout_prompts: Optional[int] = field(default=None, metadata={"help": "Held-out prompts judged before and after (default 64, quick 32)."})
    eval_samples_per_prompt: int = field(default=2, metadata={"help": "Samples per held-out prompt (their mean is the prompt's score)."})
    prompt_min_words: int = field(default=3, metadata={"help": "Prompts are the first min..max words of a snippet."})
    prompt_max_words: int = field(default=6, metadata={"help": "Prompts are the first min..max words of a snippet."})
    # ---- reward model
    rm_train_pairs: Optional[int] = field(default=None, metadata={"help": "Fresh/rotten training pairs for the reward model (default 2000, quick 1200)."})
    rm_epochs: float = field(default=1.0, metadata={"help": "Reward-model epochs."})
    rm_learning_rate: float = field(default=1e-4, metadata={"help": "Reward-model learning rate."})
    rm_trainable_layers: int = field(default=2, metadata={"help": "Top MiniLM layers trained (the rest stay frozen)."})
    # ---- policy and PPO
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (reference = adapter disabled) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_targets: str = field(default="all-linear", metadata={"help": "LoRA target modules: 'all-linear' or a comma list (q_proj,v_proj,...)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "PPO learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Samples per PPO step."})
    mini_batch_size: int = field(default=8, metadata={"help": "PPO minibatch size."})
    ppo_epochs: int = field(default=2, metadata={"help": "PPO epochs per batch."})
    advantage_estimator: str = field(default="gae", metadata={"help": "PPO's GAE with a value head ('gae') or a critic-free estimator: 'grpo', 'dr_grpo', 'rloo', 'reinforce_pp' (docs/critic_free.md)."})
    num_generations: Optional[int] = field(default=None, metadata={"help": "Samples per prompt in a step (batch_size / this many prompts); default 4 for grpo, dr_grpo and rloo, else 1."})
    kl_loss_coef: Optional[float] = field(default=None, metadata={"help": "Weight of the k3 KL term in the loss (default: the estimator's, 0.04 for grpo, else 0)."})
    kl_in_reward: Optional[bool] = field(default=None, metadata={"help": "KL penalty in the reward (default: the estimator's; yes for gae, rloo, reinforce_pp)."})
    init_kl_coef: float = field(default=0.1, metadata={"help": "Initial KL penalty coefficient."})
    target_kl: float = field(default=3.0, metadata={"help": "Adaptive KL controller target (nats per review)."})
    kl_horizon: int = field(default=100, metadata={"help": "Adaptive KL controller horizon (samples); small = reacts within a few steps."})
    max_new_tokens: int = field(default=24, metadata={"help": "Tokens sampled per review."})
    bon_n: int = field(default=4, metadata={"help": "Best-of-n baseline: samples per held-out prompt."})
