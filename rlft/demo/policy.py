"""Load the policy (with a LoRA adapter and a value head), sample it, and judge samples.

Judging is separate from training: `evaluate` samples each held-out prompt with a fixed seed,
scores the texts with every judge, and estimates the KL to the reference (the adapter-disabled
model) from the same samples: KL(pi || ref) = E_{y ~ pi}[log pi(y|x) - log ref(y|x)], summed
over the response tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core import set_seed
from ..utils.sampling_generate import generate as sampling_generate
from ..functional.logprobs import selected_log_probs
from ..trainer._helpers import pad

Judge = Callable[[list[str]], list[float]]


def load_policy(path, *, use_lora: bool, lora_r: int, lora_alpha: int, lora_targets: str, dtype=torch.float32):
    """(value-head model, tokenizer) with left padding and a pad token; LoRA when asked."""
    from transformers import AutoTokenizer

    from ..models import AutoModelForCausalLMWithValueHead

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"dtype": dtype}
    if use_lora:
        from ..cli._lora import make_lora_config  # the command line's LoRA options build the same config

        kwargs["peft_config"] = make_lora_config(lora_r, lora_alpha, 0.0, lora_targets, "CAUSAL_LM", str(path))
    model = AutoModelForCausalLMWithValueHead.from_pretrained(path, **kwargs)
    return model, tokenizer


def reference_context(model):
    """The reference policy: the same model with its LoRA adapter switched off (no copy)."""
    inner = model.pretrained_model
    return inner.disable_adapter() if hasattr(inner, "disable_adapter") else nullcontext()


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int, seed: int | None = None,
           on_batch: Callable[[int], object] | None = None):
    """Sample one continuation per prompt (temperature 1, full distribution, as PPO needs).

    Returns (query token lists, response token lists), responses cut after the first EOS.
    """
    if seed is not None:
        set_seed(seed)
    lm = model.pretrained_model if hasattr(model, "pretrained_model") else model
    queries, responses = [], []
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True)
        out = sampling_generate(
            lm,
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            pad_token_id=tokenizer.pad_token_id,
        )
        width = enc["input_ids"].shape[1]
        for row, mask, gen in zip(enc["input_ids"], enc["attention_mask"], out[:, width:]):
            queries.append(row[mask.bool()].tolist())
            gen = gen.tolist()
            if eos in gen:
                gen = gen[: gen.index(eos) + 1]
            responses.append(gen)
        if on_batch is not None:
            on_batch(len(chunk))
    return queries, responses


@torch.no_grad()
def sequence_logprobs(model, queries: list[list[int]], responses: list[list[int]], pad_id: int, batch_size: int = 16) -> Tensor:
    """Sum over response tokens of log p(token | prefix) for each (query, response): (B,)."""
    lm = model.pretrained_model if hasattr(model, "pretrained_model") else model
    totals = []
    for start in range(0, len(queries), batch_size):
        qs, rs = queries[start : start + batch_size], responses[start : start + batch_size]
        seqs = [torch.tensor(q + r, dtype=torch.long) for q, r in zip(qs, rs)]
        # right padding: positions are 0.. for every row
        ids = pad(seqs, padding_value=pad_id, padding_side="right")  # (B, L)
        mask = pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right")  # (B, L)
        logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, L-1, V)
        lp = selected_log_probs(logits, ids[:, 1:])  # (B, L-1)
        for i, (q, r) in enumerate(zip(qs, rs)):
            totals.append(lp[i, len(q) - 1 : len(q) - 1 + len(r)].sum())
    return torch.stack(totals).float()


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval."""
    t = torch.tensor(list(values), dtype=torch.float64)
    if t.numel() < 2:
        return float(t.mean()) if t.numel() else float("nan"), float("nan")
    return float(t.mean()), float(z * t.std(unbiased=True) / math.sqrt(t.numel()))


@dataclass
class Evaluation:
    """Judged samples on the held-out prompts."""

    prompts: list[str]
    responses: list[str]
    scores: dict[str, list[float]]  # judge name -> one score per prompt (mean over its samples)
    kl: list[float]  # per prompt, nats
    seconds: float
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        out = {}
        for name, vals in self.scores.items():
            out[f"{name}_mean"], out[f"{name}_ci95"] = mean_ci(vals)
        out["kl_mean"], out["kl_ci95"] = mean_ci(self.kl)
        return out


def evaluate(
    model,
    tokenizer,
    prompts: Sequence[str],
    judges: dict[str, Judge],
    *,
    max_new_tokens: int,
    batch_size: int,
    samples_per_prompt: int = 2,
    seed: int = 1234,
    on_batch: Callable[[int], object] | None = None,
) -> Evaluation:
    """Sample each prompt ``samples_per_prompt`` times (fixed seed), judge, estimate KL.

    ``on_batch(n)`` is called after each generated batch of ``n`` samples (a progress bar's update).
    """
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    expanded = [p for p in prompts for _ in range(samples_per_prompt)]
    queries, responses = sample(model, tokenizer, expanded, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                on_batch=on_batch)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    full = [p + t for p, t in zip(expanded, texts)]
    pad = tokenizer.pad_token_id
    logp = sequence_logprobs(model, queries, responses, pad)
    with reference_context(model):
        ref_logp = sequence_logprobs(model, queries, responses, pad)
    kl_each = (logp - ref_logp).tolist()
    per_prompt = lambda vals: [sum(vals[i : i + samples_per_prompt]) / samples_per_prompt for i in range(0, len(vals), samples_per_prompt)]  # noqa: E731
    scores = {name: per_prompt([float(s) for s in judge(full)]) for name, judge in judges.items()}
    if was_training:
        model.train()
    return Evaluation(
        prompts=list(prompts),
        responses=texts[::samples_per_prompt],
        scores=scores,
        kl=per_prompt(kl_each),
        seconds=time.perf_counter() - start,
        extra={"all_texts": full},
    )
