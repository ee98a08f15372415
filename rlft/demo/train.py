"""The PPO loop of the sentiment task: sample prompts, generate, score, `PPOTrainer.step`.

One function, shared by `rlft demo` and `benchmarks/sentiment.py`, with a wall-clock budget and
a per-phase clock (generate, score, forward, backward, other; see `train_ppo`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..trainer import PPOConfig, PPOTrainer


@dataclass
class PPOSettings:
    """The knobs of the sentiment PPO run (see docs/demo.md for why these defaults)."""

    learning_rate: float = 3e-4
    batch_size: int = 32
    mini_batch_size: int = 8
    ppo_epochs: int = 2
    init_kl_coef: float = 0.05
    adap_kl_ctrl: bool = True
    target_kl: float = 6.0
    kl_horizon: int = 10000
    max_new_tokens: int = 24
    generation_batch_size: int = 32
    use_score_scaling: bool = True
    use_score_norm: bool = True
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    seed: int = 0
    advantage_estimator: str = "gae"
    num_generations: int = 1
    kl_loss_coef: float | None = None
    kl_in_reward: bool | None = None


@dataclass
class TrainResult:
    steps: int
    seconds: float
    phase_seconds: dict[str, float]
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def make_trainer(model, tokenizer, s: PPOSettings) -> PPOTrainer:
    config = PPOConfig(
        learning_rate=s.learning_rate,
        batch_size=s.batch_size,
        mini_batch_size=s.mini_batch_size,
        ppo_epochs=s.ppo_epochs,
        init_kl_coef=s.init_kl_coef,
        adap_kl_ctrl=s.adap_kl_ctrl,
        target=s.target_kl,
        horizon=s.kl_horizon,
        use_score_scaling=s.use_score_scaling,
        use_score_norm=s.use_score_norm,
        cliprange_value=s.cliprange_value,
        vf_coef=s.vf_coef,
        seed=s.seed,
        log_with=None,
        advantage_estimator=s.advantage_estimator,
        num_generations=s.num_generations,
        kl_loss_coef=s.kl_loss_coef,
        kl_in_reward=s.kl_in_reward,
    )
    import warnings

    with warnings.catch_warnings():  # train_ppo feeds step() itself: PPOTrainer's "no dataset" reminder does not apply
        warnings.filterwarnings("ignore", message="No dataset is provided", category=UserWarning)
        # the demo's value-head model serves every estimator; critic-free ones leave the head alone
        warnings.filterwarnings("ignore", message=".*needs no critic: the model's value head is not trained", category=UserWarning)
        return PPOTrainer(config, model, ref_model=None, tokenizer=tokenizer)


def train_ppo(
    trainer: PPOTrainer,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: Callable[[list[str]], list[float]],
    s: PPOSettings,
    *,
    time_budget_s: float,
    max_steps: int | None = None,
    on_step: Callable[[int, dict], bool | None] | None = None,
) -> TrainResult:
    """PPO steps until the budget (or ``max_steps``) is spent; ``on_step`` returning True stops.

    ``phase_seconds`` of the result splits the wall time into: ``generate``; ``score`` (decoding
    and the reward function); ``forward``, the model forwards of `PPOTrainer.step` (the rollout
    pass and the PPO epochs' forwards with their losses); ``backward``, the epochs' backward
    passes plus clipping and optimizer steps; ``other``, the rest (prompt sampling, rewards,
    advantages, minibatch padding, stats). On CUDA the step's clocks are host-side, so kernel
    time can land in a later phase.
    """
    rng = random.Random(s.seed)
    phases = {"generate": 0.0, "score": 0.0, "forward": 0.0, "backward": 0.0, "other": 0.0}
    history: list[dict] = []
    start = time.perf_counter()
    step = 0
    mean_step = None
    stopped = False
    while True:
        elapsed = time.perf_counter() - start
        if max_steps is not None and step >= max_steps:
            break
        if mean_step is not None and elapsed + mean_step > time_budget_s:
            break
        t0 = time.perf_counter()
        # 1. a batch of training prompts
        k = s.num_generations  # samples per prompt: query i's k responses are consecutive
        distinct = [prompts[rng.randrange(len(prompts))] for _ in range(s.batch_size // k)]
        batch = [p for p in distinct for _ in range(k)]
        queries = [torch.tensor(tokenizer(p)["input_ids"]) for p in batch]
        # 2. generate (temperature 1, full distribution: PPO's ratio needs true samples)
        t = time.perf_counter()
        responses = trainer.generate(
            queries[::k],
            num_return_sequences=k,
            batch_size=max(1, s.generation_batch_size // k),
            return_prompt=False,
            max_new_tokens=s.max_new_tokens,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
        )
        phases["generate"] += time.perf_counter() - t
        # 3. score the review (prompt + continuation)
        t = time.perf_counter()
        texts = [p + tokenizer.decode(r, skip_special_tokens=True) for p, r in zip(batch, responses)]
        scores = [torch.tensor(float(x)) for x in reward_fn(texts)]
        phases["score"] += time.perf_counter() - t
        # 4. PPO step
        stats = trainer.step(queries, responses, scores)
        phases["forward"] += stats.get("time/ppo/forward_pass", 0.0) + stats.get("time/ppo/optimize_step/forward", 0.0)
        phases["backward"] += (
            stats.get("time/ppo/optimize_step/backward", 0.0) + stats.get("time/ppo/optimize_step/optimizer", 0.0)
        )
        step += 1
        step_time = time.perf_counter() - t0
        mean_step = step_time if mean_step is None else 0.7 * mean_step + 0.3 * step_time
        row = {
            "step": step,
            "reward_mean": float(torch.stack(scores).mean()),
            "kl": float(stats["objective/kl"]),
            "kl_coef": float(stats["objective/kl_coef"]),
            "entropy": float(stats["objective/entropy"]),
            "loss": float(stats["ppo/loss/total"]),
            "response_len": float(stats["tokens/responses_len_mean"]),
            "seconds": step_time,
            "tokens_per_s": sum(len(r) for r in responses) / step_time,
            "sample": texts[0],
        }
        history.append(row)
        if on_step is not None and on_step(step, row):
            stopped = True
            break
    total = time.perf_counter() - start
    phases["other"] = max(0.0, total - sum(v for k, v in phases.items() if k != "other"))
    return TrainResult(steps=step, seconds=total, phase_seconds=phases, history=history, stopped_early=stopped)
