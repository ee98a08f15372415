"""Shared pieces of the PPO reliability tests: a tiny trainer, a toy reward, a resumable user loop."""

from __future__ import annotations

import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

#: Generation settings of the toy loop: sampling (so the torch RNG matters), fixed length (no empty responses).
GEN_KWARGS = {"do_sample": True, "top_k": 0, "top_p": 1.0, "max_new_tokens": 4, "min_new_tokens": 4}


def toy_reward(response: torch.Tensor) -> torch.Tensor:
    """Fraction of even token ids: deterministic, so runs differ only through the trainer."""
    return (response % 2 == 0).float().mean()


def query_dataset(n: int = 12, seed: int = 0):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, 900, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    ds = Dataset.from_dict({"input_ids": rows})
    ds.set_format("torch")
    return ds


def make_ppo(model_path, tokenizer, peft=False, scheduler=True, **cfg):
    cfg = {"batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 2, "learning_rate": 1e-3, "use_score_scaling": True,
           "seed": 3, **cfg}
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {}
    if peft:
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    torch.manual_seed(0)  # the value head's (and LoRA's) random init must not depend on what ran before
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), **kwargs)
    config = PPOConfig(**cfg)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5) if scheduler else None
    return PPOTrainer(config, model, None, tokenizer, dataset=query_dataset(), optimizer=optimizer, lr_scheduler=lr_scheduler)


def train_until(trainer, steps: int, save_dir=None, save_every: int = 0) -> list[dict]:
    """The user loop, written so that it resumes: epochs until ``steps`` PPO steps are done."""
    history = []
    while trainer.current_step < steps:
        for batch in trainer.dataloader:
            queries = batch["input_ids"]
            responses = trainer.generate(queries, return_prompt=False, **GEN_KWARGS)
            stats = trainer.step(queries, responses, [toy_reward(r) for r in responses])
            history.append(stats)
            if save_dir is not None and save_every and trainer.current_step % save_every == 0:
                trainer.save_checkpoint(save_dir)
            if trainer.current_step >= steps:
                break
    return history


def trainable(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
