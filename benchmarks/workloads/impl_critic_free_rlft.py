"""rlft's side of the critic-free group workloads (grpo, rloo): `PPOTrainer` with ``advantage_estimator``.

Settings in `workloads.critic_free`. A plain causal LM (no value head), the reference built by
the trainer (``ref_model=None``), ``generate(..., num_return_sequences=k)`` then ``step`` on the
whole batch once (ppo_epochs=1, one minibatch).
"""

from __future__ import annotations

import torch

from workloads import critic_free as cf
from workloads import spec


def _estimator_settings(name: str) -> dict:
    """The PPOConfig fields that pin each estimator to the work TRL's trainer does (see critic_free)."""
    if name == "grpo":
        return dict(advantage_estimator="grpo", kl_in_reward=False, kl_loss_coef=cf.GRPO_BETA,
                    loss_aggregation="seq_mean_token_mean")
    if name == "rloo":
        return dict(advantage_estimator="rloo", kl_in_reward=True, adap_kl_ctrl=False, init_kl_coef=cf.RLOO_BETA,
                    kl_penalty="kl", kl_loss_coef=0.0, loss_aggregation="token_mean")
    raise ValueError(f"unknown critic-free workload {name!r}; choose one of {cf.WORKLOADS}")


def run(ctx) -> None:
    from rlft import PPOConfig, PPOTrainer

    tok = ctx.tokenizer
    batch = cf.GROUP_PROMPTS * cf.GROUP_K
    torch.manual_seed(0)
    config = PPOConfig(num_generations=cf.GROUP_K, batch_size=batch, mini_batch_size=batch, ppo_epochs=1,
                       learning_rate=spec.LEARNING_RATE, cliprange=cf.CLIP_EPS, seed=0,
                       **_estimator_settings(ctx.workload.name))
    trainer = PPOTrainer(config, ctx.model(), None, tok)
    texts = cf.prompt_texts(tok, ctx.data["prompts"])
    queries = [torch.tensor(ids, dtype=torch.long, device=ctx.device) for ids in cf.prompt_ids(tok, texts)]
    repeated = [q for q in queries for _ in range(cf.GROUP_K)]  # query i's k samples consecutively
    gen = spec.ppo_generation_kwargs(tok.eos_token_id, cf.GROUP_NEW_TOKENS)
    per_step = cf.tokens_per_step(tok, texts)
    for _ in range(ctx.workload.warmup + ctx.workload.steps):
        responses = trainer.generate(queries, return_prompt=False, batch_size=len(queries),
                                     num_return_sequences=cf.GROUP_K, **gen)
        # the fixed token count of ctx.mark holds only if every response has exactly GROUP_NEW_TOKENS tokens
        assert len(responses) == len(repeated) and all(len(r) == cf.GROUP_NEW_TOKENS for r in responses)
        scores = [torch.tensor(spec.ppo_score(r.tolist())) for r in responses]
        trainer.step(repeated, responses, scores)
        ctx.mark(tokens=per_step)
