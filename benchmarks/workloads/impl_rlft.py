"""rlft's implementation of each benchmark workload (runs in rlft's own environment).

Each ``run_<workload>(ctx)`` builds the trainer from the fixtures exactly as a user of the
TRL 0.7 API would, then runs ``warmup + steps`` steps, calling ``ctx.mark()`` after each.
"""

from __future__ import annotations

import tempfile

import torch

from workloads import impl_critic_free_rlft as critic_free, spec


def library_version() -> str:
    """``rlft <version>``, plus `` from <folder>`` when the package is not this checkout's (compare.py --rlft-src)."""
    from pathlib import Path

    import rlft

    src = Path(rlft.__file__).resolve().parents[1]
    here = Path(__file__).resolve().parents[2]
    return f"rlft {getattr(rlft, '__version__', '?')}" + ("" if src == here else f" from {src}")


def run(ctx) -> None:
    RUNNERS[spec.base_name(ctx.workload.name)](ctx)


def _texts_dataset(ctx):
    from datasets import Dataset

    return Dataset.from_dict({"text": ctx.texts()})


def _sft(ctx, packing: bool) -> None:
    from transformers import TrainingArguments

    from rlft import SFTTrainer

    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=ctx.model(), args=ctx.training_arguments(TrainingArguments, out), train_dataset=_texts_dataset(ctx),
            processing_class=ctx.tokenizer, dataset_text_field="text", max_seq_length=ctx.workload.max_length,
            packing=packing, dataset_kwargs={"add_eos_token": True}, callbacks=[ctx.trainer_callback()],
        )
        ctx.watch(trainer)
        trainer.train()


def run_sft_padded(ctx) -> None:
    _sft(ctx, packing=False)


def run_sft_packed(ctx) -> None:
    _sft(ctx, packing=True)


def run_reward(ctx) -> None:
    from datasets import Dataset

    from rlft import RewardConfig, RewardTrainer

    tok = ctx.tokenizer
    rows = {k: [] for k in ("input_ids_chosen", "attention_mask_chosen", "input_ids_rejected", "attention_mask_rejected")}
    if ctx.workload.data == "long":  # pre-tokenised by the user, as TRL 0.7's reward example does
        sides = zip(ctx.data["pairs_long_ids"]["chosen_ids"], ctx.data["pairs_long_ids"]["rejected_ids"])
    else:
        pairs = ctx.data["pairs"]
        sides = ((tok(p + c + tok.eos_token)["input_ids"], tok(p + r + tok.eos_token)["input_ids"])  # as TRL's reward tokenisation
                 for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]))
    for chosen, rejected in sides:
        for side, ids in (("chosen", chosen), ("rejected", rejected)):
            rows[f"input_ids_{side}"].append(ids)
            rows[f"attention_mask_{side}"].append([1] * len(ids))
    with tempfile.TemporaryDirectory() as out:
        extra = {"disable_dropout": True} if ctx.workload.disable_dropout else {}  # else RewardConfig's default: kept
        args = ctx.training_arguments(RewardConfig, out, max_length=ctx.workload.max_length, **extra)
        trainer = RewardTrainer(
            model=ctx.model(), args=args, train_dataset=Dataset.from_dict(rows), processing_class=tok,
            callbacks=[ctx.trainer_callback()],
        )
        ctx.watch(trainer)
        trainer.train()


def run_dpo(ctx) -> None:
    from datasets import Dataset
    from transformers import TrainingArguments

    from rlft import DPOTrainer

    with tempfile.TemporaryDirectory() as out:
        trainer = DPOTrainer(
            model=ctx.model(), ref_model=ctx.model(), beta=spec.DPO_BETA, loss_type="sigmoid",
            args=ctx.training_arguments(TrainingArguments, out, remove_unused_columns=False),
            train_dataset=Dataset.from_dict(ctx.pairs()), processing_class=ctx.tokenizer,
            max_length=ctx.workload.max_length, max_prompt_length=spec.DPO_MAX_PROMPT_LENGTH, callbacks=[ctx.trainer_callback()],
        )
        ctx.watch(trainer)
        trainer.train()


def _prompt_tensors(ctx, n: int) -> list[torch.Tensor]:
    return [torch.tensor(p, dtype=torch.long, device=ctx.device) for p in ctx.data["prompts"][:n]]


def _score(response: torch.Tensor) -> torch.Tensor:
    return torch.tensor(spec.ppo_score(response.tolist()))


def run_ppo(ctx) -> None:
    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    ps = spec.ppo_settings(ctx.workload.name, ctx.arch)
    torch.manual_seed(0)
    kwargs = spec.ppo_model_kwargs(ps)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(ctx.model(), **kwargs)
    config = PPOConfig(batch_size=ps["batch"], mini_batch_size=ps["mini_batch"], ppo_epochs=ps["epochs"],
                       learning_rate=ps["learning_rate"], seed=0,
                       **({"mixed_precision": "bf16"} if ctx.bf16 else {}))  # (an older --rlft-src lacks the field)
    trainer = PPOTrainer(config, model, None, ctx.tokenizer, num_shared_layers=ps["num_shared_layers"])
    prompts = _prompt_tensors(ctx, ps["batch"])
    gen = spec.ppo_generation_kwargs(ctx.tokenizer.eos_token_id, ps["new_tokens"])
    for _ in range(ctx.workload.warmup + ctx.workload.steps):
        responses = trainer.generate(prompts, return_prompt=False, batch_size=ps["batch"], **gen)
        scores = [_score(r) for r in responses]
        trainer.step(list(prompts), responses, scores)
        ctx.mark(tokens=sum(len(q) + len(r) for q, r in zip(prompts, responses)))


def run_best_of_n(ctx) -> None:
    from rlft import AutoModelForCausalLMWithValueHead
    from rlft.extras import BestOfNSampler

    model = AutoModelForCausalLMWithValueHead.from_pretrained(ctx.model())
    tok = ctx.tokenizer
    sampler = BestOfNSampler(model, tok, spec.bon_scores, lambda: spec.BON_NEW_TOKENS, sample_size=spec.BON_SAMPLE_SIZE, seed=0)
    queries = _prompt_tensors(ctx, spec.BON_QUERIES)
    gen = spec.bon_generation_kwargs(tok.eos_token_id)
    per_step = sum(len(q) + spec.BON_NEW_TOKENS for q in queries) * spec.BON_SAMPLE_SIZE
    for _ in range(ctx.workload.warmup + ctx.workload.steps):
        best = sampler.generate(queries, **gen)
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
    "grpo": critic_free.run,  # workloads/impl_critic_free_rlft.py
    "rloo": critic_free.run,
}
