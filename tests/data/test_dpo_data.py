"""DPODataCollatorWithPadding and pad_to_length."""

import pytest
import torch

from rlft.data.dpo import DPODataCollatorWithPadding, pad_to_length


def test_public_path_matches_trl():
    from rlft.trainer.utils import DPODataCollatorWithPadding as A, pad_to_length as B

    assert A is DPODataCollatorWithPadding and B is pad_to_length


def test_pad_to_length():
    t = torch.tensor([[1, 2], [3, 4]])
    assert pad_to_length(t, 4, 9).tolist() == [[1, 2, 9, 9], [3, 4, 9, 9]]
    assert pad_to_length(t, 2, 9) is t
    assert pad_to_length(t, 3, 0, dim=0).tolist() == [[1, 2], [3, 4], [0, 0]]


def _rows():
    return [
        {"prompt": "a", "prompt_input_ids": [5, 6], "prompt_attention_mask": [1, 1],
         "chosen_input_ids": [5, 6, 7], "chosen_attention_mask": [1, 1, 1], "chosen_labels": [-100, -100, 7],
         "reference_chosen_logps": -1.5},
        {"prompt": "bb", "prompt_input_ids": [8], "prompt_attention_mask": [1],
         "chosen_input_ids": [8, 9, 10, 11], "chosen_attention_mask": [1, 1, 1, 1], "chosen_labels": [-100, 9, 10, 11],
         "reference_chosen_logps": -2.0},
    ]


def test_decoder_only_pads_prompt_left_and_responses_right():
    batch = DPODataCollatorWithPadding(pad_token_id=3)(_rows())
    assert batch["prompt_input_ids"].tolist() == [[5, 6], [3, 8]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert batch["chosen_input_ids"].tolist() == [[5, 6, 7, 3], [8, 9, 10, 11]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["chosen_labels"].tolist() == [[-100, -100, 7, -100], [-100, 9, 10, 11]]
    assert batch["reference_chosen_logps"].dtype == torch.float32
    assert batch["reference_chosen_logps"].tolist() == [-1.5, -2.0]
    assert batch["prompt"] == ["a", "bb"]


def test_encoder_decoder_pads_everything_right():
    batch = DPODataCollatorWithPadding(pad_token_id=3, label_pad_token_id=-1, is_encoder_decoder=True)(_rows())
    assert batch["prompt_input_ids"].tolist() == [[5, 6], [8, 3]]
    assert batch["chosen_labels"].tolist() == [[-100, -100, 7, -1], [-100, 9, 10, 11]]


def test_missing_pad_id_and_empty_batch_are_errors():
    with pytest.raises(ValueError, match="pad_token_id is None"):
        DPODataCollatorWithPadding(pad_token_id=None)(_rows())
    with pytest.raises(ValueError, match="empty"):
        DPODataCollatorWithPadding()([])


# ---------------------------------------------------------------- the row tokeniser (DPOTrainer.tokenize_row's logic)
def test_row_tokenizer_stands_alone_and_truncates_as_documented(pad_tokenizer):
    from rlft.data.dpo import DPORowTokenizer

    tok = DPORowTokenizer(pad_tokenizer, max_length=12, max_prompt_length=4, truncation_mode="keep_start")
    prompt = " ".join(["value"] * 10)
    row = tok({"prompt": prompt, "chosen": " " + " ".join(["item"] * 20), "rejected": " no"})
    bos, eos = pad_tokenizer.bos_token_id, pad_tokenizer.eos_token_id
    full_prompt = [bos] + pad_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # reference: the prompt cut to its first 4 tokens, then responses cut to 12 - 4 = 8 tokens
    assert row["prompt_input_ids"] == full_prompt[:4]
    assert len(row["chosen_input_ids"]) == 12 and row["chosen_labels"][:4] == [-100] * 4
    no = pad_tokenizer(" no", add_special_tokens=False)["input_ids"] + [eos]
    assert row["rejected_input_ids"] == full_prompt[:4] + no
    assert tok.counts == {"prompt": 1, "response": 1, "rows": 1}
    with pytest.raises(ValueError, match="empty 'rejected'"):
        tok({"prompt": "a", "chosen": "b", "rejected": "  "})
