"""TRL's implementation of each benchmark workload (runs in a TRL peer's own environment).

The latest TRL runs SFT, reward and DPO; trl 0.11.4 (the last release with the
``PPOTrainer.generate``/``step`` loop) runs PPO and best-of-n. Each runner uses TRL's own
documented API with the settings of `workloads.spec`, and TRL's defaults otherwise.
"""

from __future__ import annotations

import tempfile

import torch

from workloads import impl_critic_free_trl as critic_free, spec


def library_version() -> str:
    import trl

    return f"trl {trl.__version__}"


def run(ctx) -> None:
    RUNNERS[spec.base_name(ctx.workload.name)](ctx)


def _sft(ctx, packing: bool) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as out:
        args = ctx.training_arguments(SFTConfig, out, max_length=ctx.workload.max_length, packing=packing,
                                      dataset_text_field="text")
        trainer = SFTTrainer(model=ctx.model(), args=args, train_dataset=Dataset.from_dict({"text": ctx.texts()}),
                             processing_class=ctx.tokenizer, callbacks=[ctx.trainer_callback()])
        ctx.watch(trainer)
        trainer.train()


def run_sft_padded(ctx) -> None:
    _sft(ctx, packing=False)


def run_sft_packed(ctx) -> None:
    _sft(ctx, packing=True)


def run_reward(ctx) -> None:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    if ctx.workload.data == "long":  # the same pre-tokenised pairs, in this TRL's column names
        ids = ctx.data["pairs_long_ids"]
        data = {"chosen_ids": ids["chosen_ids"], "rejected_ids": ids["rejected_ids"]}
    else:
        data = ctx.data["pairs"]
    with tempfile.TemporaryDirectory() as out:
        # This TRL switches dropout off by default, TRL 0.7.10 (and rlft) keep the model's: pinned to the
        # workload's choice, except at the documented defaults (then TRL's own default).
        extra = {} if ctx.workload.documented_defaults else {"disable_dropout": ctx.workload.disable_dropout}
        args = ctx.training_arguments(RewardConfig, out, max_length=ctx.workload.max_length, **extra)
        trainer = RewardTrainer(model=ctx.model(), args=args, train_dataset=Dataset.from_dict(data),
                                processing_class=ctx.tokenizer, callbacks=[ctx.trainer_callback()])
        ctx.watch(trainer)
        trainer.train()


def run_dpo(ctx) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    with tempfile.TemporaryDirectory() as out:
        args = ctx.training_arguments(DPOConfig, out, beta=spec.DPO_BETA, max_length=ctx.workload.max_length)
        trainer = DPOTrainer(model=ctx.model(), ref_model=ctx.model(), args=args, train_dataset=Dataset.from_dict(ctx.pairs()),
                             processing_class=ctx.tokenizer, callbacks=[ctx.trainer_callback()])
        ctx.watch(trainer)
        trainer.train()


def _prompt_tensors(ctx, n: int) -> list[torch.Tensor]:
    return [torch.tensor(p, dtype=torch.long, device=ctx.device) for p in ctx.data["prompts"][:n]]


def run_ppo(ctx) -> None:
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    ps = spec.ppo_settings(ctx.workload.name, ctx.arch)
    torch.manual_seed(0)
    kwargs = spec.ppo_model_kwargs(ps)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(ctx.model(), **kwargs)
    # --bf16: TRL's way to ask for mixed precision (accelerate autocasts the prepared models' forwards)
    config = PPOConfig(batch_size=ps["batch"], mini_batch_size=ps["mini_batch"], ppo_epochs=ps["epochs"],
                       learning_rate=ps["learning_rate"], seed=0,
                       accelerator_kwargs={"mixed_precision": "bf16"} if ctx.bf16 else {})
    trainer = PPOTrainer(config, model, None, ctx.tokenizer, num_shared_layers=ps["num_shared_layers"])
    prompts = _prompt_tensors(ctx, ps["batch"])
    gen = spec.ppo_generation_kwargs(ctx.tokenizer.eos_token_id, ps["new_tokens"])
    for _ in range(ctx.workload.warmup + ctx.workload.steps):
        responses = trainer.generate(prompts, return_prompt=False, batch_size=ps["batch"], **gen)
        scores = [torch.tensor(spec.ppo_score(r.tolist())) for r in responses]
        trainer.step(list(prompts), responses, scores)
        ctx.mark(tokens=sum(len(q) + len(r) for q, r in zip(prompts, responses)))


def run_best_of_n(ctx) -> None:
    from trl import AutoModelForCausalLMWithValueHead
    from trl.extras import BestOfNSampler

    model = AutoModelForCausalLMWithValueHead.from_pretrained(ctx.model())
    tok = ctx.tokenizer
    sampler = BestOfNSampler(model, tok, spec.bon_scores, lambda: spec.BON_NEW_TOKENS, sample_size=spec.BON_SAMPLE_SIZE, seed=0)
    queries = _prompt_tensors(ctx, spec.BON_QUERIES)
    gen = spec.bon_generation_kwargs(tok.eos_token_id)
    per_step = sum(len(q) + spec.BON_NEW_TOKENS for q in queries) * spec.BON_SAMPLE_SIZE
    for _ in range(ctx.workload.warmup + ctx.workload.steps):
        best = sampler.generate(queries, device=ctx.device, **gen)
        assert len(best) == len(queries)
        ctx.mark(tokens=per_step)


RUNNERS = {
    "sft_padded": run_sft_padded,
    "sft_packed": run_sft_packed,
    "reward": run_reward,
    "dpo": run_dpo,
    "ppo": run_ppo,
    "ppo_shared_ref": run_ppo,
    "ppo_peft_ref": run_ppo,
    "demo_ppo": run_ppo,
    "best_of_n": run_best_of_n,
    "grpo": critic_free.run,  # workloads/impl_critic_free_trl.py
    "rloo": critic_free.run,
}
