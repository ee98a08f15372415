"""PPOTrainer's faster defaults against the straightforward computations they replace."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_forward_keeps_only_action_logits_and_matches_the_full_forward(model_path, pad_tokenizer, arch):
    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    from rlft.trainer._ppo_helpers import logits_to_keep as _logits_to_keep

    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path(arch))
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2), model, None, pad_tokenizer)
    queries = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    responses = [torch.tensor([10, 11, 12, 13]), torch.tensor([14, 15])]
    batch = trainer._pad_batch(queries, responses)
    keep = _logits_to_keep(trainer.model, trainer._model_kwargs, batch.input_ids.shape[1], batch.T, "cpu")
    assert isinstance(keep, torch.Tensor) and keep.tolist() == [2, 3, 4, 5]  # width 7, T = 4
    with torch.no_grad():
        logits, values = trainer._forward(trainer.model, batch)
        # the straightforward way: every position through the LM head, then slice
        full = trainer.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    torch.testing.assert_close(logits, full[0][:, -(batch.T + 1) : -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, full[2][:, -(batch.T + 1) : -1], atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # the frozen reference takes the same path
        ref_logits, _ = trainer._forward(trainer.ref_model, batch, return_values=False)
    torch.testing.assert_close(ref_logits, logits, atol=1e-5, rtol=1e-5)
