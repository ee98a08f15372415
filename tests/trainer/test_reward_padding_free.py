"""RewardTrainer's packed forward (chosen and rejected in one pass, no padding) against the two padded forwards."""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from rlft.data.packing import last_non_pad_positions, pack_padded
from rlft.trainer.reward_config import RewardConfig
from rlft.trainer.reward_trainer import RewardTrainer

GOOD = ["the value is returned to the caller.", "return a new list of names.", "the file", "no"]
BAD = ["zq xv", "qq zz qq zz qq zz qq zz", "xx", "the path is not a string or a file."]


def _trainer(tmp_path, model, tok, margin=False, eos=True) -> RewardTrainer:
    rows = []
    for i in range(8):
        c = tok(GOOD[i % 4] + (tok.eos_token if eos else ""))
        r = tok(BAD[i % 4] + (tok.eos_token if eos else ""))
        row = {"input_ids_chosen": c["input_ids"], "attention_mask_chosen": c["attention_mask"],
               "input_ids_rejected": r["input_ids"], "attention_mask_rejected": r["attention_mask"]}
        if margin:
            row["margin"] = 0.25 * (i % 3)
        rows.append(row)
    args = RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1,
                        per_device_train_batch_size=4, save_strategy="no", gradient_checkpointing=False, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def _model(model_path, tok, arch):
    model = AutoModelForSequenceClassification.from_pretrained(model_path(arch), num_labels=1, attn_implementation="sdpa")
    model.config.pad_token_id = tok.pad_token_id
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), out, grads


@pytest.mark.parametrize("margin", [False, True])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_rewards_loss_and_grads_match_padded(tmp_path, model_path, pad_tokenizer, arch, margin):
    trainer = _trainer(tmp_path, _model(model_path, pad_tokenizer, arch), pad_tokenizer, margin=margin)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert trainer._can_pack(trainer.model)
    assert trainer._packed_rewards(trainer.model, batch) is not None

    fast_loss, fast_out, fast_grads = _loss_and_grads(trainer, batch)
    trainer.padding_free = False  # the straightforward two padded forwards
    slow_loss, slow_out, slow_grads = _loss_and_grads(trainer, batch)
    torch.testing.assert_close(fast_out["rewards_chosen"], slow_out["rewards_chosen"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_out["rewards_rejected"], slow_out["rewards_rejected"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_loss, slow_loss, atol=1e-6, rtol=1e-5)
    assert fast_grads.keys() == slow_grads.keys()
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_last_non_pad_positions_by_hand():
    # pad = 0; sequences [5, 6, 0] (ends with a pad-id token), [7], [0, 0] (pad ids only), [8, 9]
    ids = torch.tensor([[5, 6, 0], [7, 0, 0], [0, 0, 0], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]])
    packed = pack_padded(ids, mask, pad_token_id=0)
    flat = packed.input_ids.reshape(-1)
    where = last_non_pad_positions(packed, 4, pad_token_id=0)
    assert flat[where].tolist()[:2] == [6, 7] and flat[where[3]].item() == 9
    # an all-pad sequence is read at its first token, as the padded model's argmax over zeros does
    seq2 = (packed.seq.reshape(-1) == 2).nonzero().flatten()
    assert where[2].item() == seq2.min().item()


def test_not_packed_when_left_padded_or_no_score_head(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, _model(model_path, pad_tokenizer, "gpt2"), pad_tokenizer)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    left = {k: (v.flip(1) if isinstance(v, torch.Tensor) and v.dim() == 2 else v) for k, v in batch.items()}
    assert trainer._packed_rewards(trainer.model, left) is None
    no_head = torch.nn.Linear(2, 2)
    assert not trainer._packing_probe(no_head)
