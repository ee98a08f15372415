"""A tiny real model whose generations follow a script: script(context text) -> the text to write.

``generate`` runs transformers' real decoding loop (with the environment's stopping criteria);
a logits processor forces, per row, the tokens of the scripted text and then EOS.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class _Force(LogitsProcessor):
    def __init__(self, plans: list[list[int]], width: int, eos_id: int):
        self.plans, self.width, self.eos_id = plans, width, eos_id

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.width  # new tokens so far
        out = torch.full_like(scores, float("-inf"))
        for row, plan in enumerate(self.plans):
            out[row, plan[k] if k < len(plan) else self.eos_id] = 0.0
        return out


class ScriptedModel(torch.nn.Module):
    """Wraps a causal LM; ``calls`` records the batch size of each generate call."""

    def __init__(self, model, tokenizer, script):
        super().__init__()
        self.model, self.tokenizer, self.script = model, tokenizer, script
        self.calls: list[int] = []
        self.generation_config = model.generation_config

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append(input_ids.shape[0])
        plans = []
        for ids, mask in zip(input_ids, attention_mask):
            context = self.tokenizer.decode(ids[mask.bool()])
            plans.append(self.tokenizer(self.script(context), add_special_tokens=False).input_ids)
        force = _Force(plans, input_ids.shape[1], self.tokenizer.eos_token_id)
        kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), force])
        kwargs.setdefault("max_new_tokens", 80)
        kwargs["do_sample"] = False
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
