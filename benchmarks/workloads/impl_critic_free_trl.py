"""TRL's side of the critic-free group workloads: the newest TRL's GRPOTrainer / RLOOTrainer.

Settings in `workloads.critic_free`; TRL's defaults otherwise, except those pinned so that both
sides do the same work: fp32 on CPU (TRL's configs default to bf16), one generation and one
optimizer step per step, exactly GROUP_NEW_TOKENS new tokens, the KL weights and GRPO's loss type.
"""

from __future__ import annotations

import tempfile

from workloads import critic_free as cf
from workloads import spec


def _reward(prompts, completions, completion_ids, **kwargs) -> list[float]:
    """The shared toy reward (share of even token ids) on the completion's token ids."""
    # the fixed token count of the step marks holds only if every completion has exactly GROUP_NEW_TOKENS tokens
    assert all(len(ids) == cf.GROUP_NEW_TOKENS for ids in completion_ids)
    return [spec.ppo_score(ids) for ids in completion_ids]


def _classes(name: str):
    import trl

    if name == "grpo":
        return trl.GRPOConfig, trl.GRPOTrainer, dict(beta=cf.GRPO_BETA, loss_type="grpo", scale_rewards="group")
    if name == "rloo":
        return trl.RLOOConfig, trl.RLOOTrainer, dict(beta=cf.RLOO_BETA, normalize_advantages=False)
    raise ValueError(f"unknown critic-free workload {name!r}; choose one of {cf.WORKLOADS}")


def run(ctx) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback

    tok = ctx.tokenizer
    config_cls, trainer_cls, algo = _classes(ctx.workload.name)
    texts = cf.prompt_texts(tok, ctx.data["prompts"])
    per_step = cf.tokens_per_step(tok, texts)

    class Mark(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ctx.mark(tokens=per_step)

    model = ctx.model()
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as ref_dir:
        # TRL builds its frozen reference with from_pretrained(model.config._name_or_path): give it the fixture.
        model.save_pretrained(ref_dir)
        model.config._name_or_path = ref_dir
        args = ctx.training_arguments(
            config_cls, out, num_generations=cf.GROUP_K, max_completion_length=cf.GROUP_NEW_TOKENS,
            generation_kwargs={"min_new_tokens": cf.GROUP_NEW_TOKENS}, temperature=1.0, top_p=1.0, top_k=0,
            steps_per_generation=1, num_iterations=1, gradient_accumulation_steps=1, epsilon=cf.CLIP_EPS,
            mask_truncated_completions=False, log_completions=False, **algo,
        )
        # One step uses every prompt (GROUP_PROMPTS rows x GROUP_K samples = per_device_train_batch_size),
        # so both sides process the same tokens each step.
        trainer = trainer_cls(model=model, reward_funcs=_reward, args=args,
                              train_dataset=Dataset.from_dict({"prompt": texts}), processing_class=tok,
                              callbacks=[Mark()])
        if getattr(trainer, "ref_model", None) is not None:
            # Count the reference forwards too, as rlft's reference copy (a deepcopy of the hooked model) is.
            trainer.ref_model.base_model.register_forward_pre_hook(ctx._counter(ctx.n_params), with_kwargs=True)
        trainer.train()
