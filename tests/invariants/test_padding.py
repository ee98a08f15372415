"""Padding invariance: how much a sample is padded (because of its batch-mates) changes nothing it computes."""

from __future__ import annotations

import warnings

import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer

SEQ2SEQ = ("t5", "bart")


def ppo_trainer(model_path, tokenizer, arch):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cls = AutoModelForSeq2SeqLMWithValueHead if arch in SEQ2SEQ else AutoModelForCausalLMWithValueHead
    torch.manual_seed(0)
    model = cls.from_pretrained(model_path(arch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no dataset
        return PPOTrainer(PPOConfig(batch_size=3, mini_batch_size=3), model, None, tokenizer)


def tokens(n, seed):
    return torch.randint(5, 900, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_ppo_logprobs_and_values_ignore_padding(model_path, tokenizer, arch):
    """Sample 0 alone (no padding) vs. next to a longer query (left padding for causal models) and a
    longer response (right padding): same log-probs and values on its response tokens."""
    trainer = ppo_trainer(model_path, tokenizer, arch)
    start = [trainer.model.pretrained_model.config.decoder_start_token_id] if arch in SEQ2SEQ else []
    query, response = tokens(3, 0), torch.tensor(start + tokens(4, 1).tolist())
    long_query, long_response = tokens(11, 2), torch.tensor(start + tokens(9, 3).tolist())
    mid_query, mid_response = tokens(6, 4), torch.tensor(start + tokens(6, 5).tolist())
    model = trainer.model.eval()
    with torch.no_grad():
        alone_lp, _, alone_v, alone_m = trainer.batched_forward_pass(model, [query], [response], None)
        lp, _, v, m = trainer.batched_forward_pass(
            model, [query, long_query, mid_query], [response, long_response, mid_response], None
        )
    n = int(alone_m.sum())
    assert n == len(response) - len(start) and int(m[0].sum()) == n  # response tokens only, same count
    assert lp.shape[1] > alone_lp.shape[1]  # sample 0 really was padded in the batch
    torch.testing.assert_close(lp[0, :n], alone_lp[0, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v[0, :n], alone_v[0, :n], rtol=1e-5, atol=1e-5)
    # and for the longest sample the same holds against its own unpadded forward
    with torch.no_grad():
        long_lp, *_ = trainer.batched_forward_pass(model, [long_query], [long_response], None)
    torch.testing.assert_close(lp[1, : long_lp.shape[1]], long_lp[0], rtol=1e-5, atol=1e-5)


TEXTS = ["the value is returned to the caller.",
         "return a new list of the items in the order given, or raise an error when the list is empty."]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_sft_loss_ignores_padding(model_path, pad_tokenizer, tmp_path, padding_side):
    """The loss of a padded batch [short, long] equals the token-weighted mean of each example's loss alone."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainingArguments

    from rlft import SFTTrainer

    pad_tokenizer.padding_side = padding_side
    model = AutoModelForCausalLM.from_pretrained(model_path("llama")).eval()  # eval: no dropout
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=2)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                         dataset_text_field="text", max_seq_length=64, tokenizer=pad_tokenizer)
    rows = [{"input_ids": row["input_ids"]} for row in trainer.train_dataset]
    lengths = [len(r["input_ids"]) for r in rows]
    assert lengths[0] < lengths[1]

    def loss(batch_rows):
        batch = trainer.data_collator(batch_rows)
        with torch.no_grad():
            return trainer.compute_loss(model, batch).item(), int((batch["labels"][:, 1:] != -100).sum())

    (short, n_short), (long, n_long) = loss(rows[:1]), loss(rows[1:])
    together, n_together = loss(rows)
    assert n_together == n_short + n_long  # padding adds no predicted token
    assert together == pytest.approx((short * n_short + long * n_long) / (n_short + n_long), rel=1e-5)
