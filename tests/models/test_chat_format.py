"""setup_chat_format: ChatML tokens, template text, embedding resize, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlft import setup_chat_format
from rlft.models.utils import FORMAT_MAPPING, ChatMlSpecialTokens

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "the file is closed."},
    {"role": "assistant", "content": "return a new list."},
]
# ChatML written out by hand: each turn is <|im_start|>role \n content <|im_end|> \n.
CHATML_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nthe file is closed.<|im_end|>\n"
    "<|im_start|>assistant\nreturn a new list.<|im_end|>\n"
)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # llama: tied input/output embeddings
def test_tokens_template_and_exact_resize(model_path, tokenizer, arch):
    model = AutoModelForCausalLM.from_pretrained(model_path(arch))
    old_rows = model.get_input_embeddings().weight.detach().clone()
    old_len = len(tokenizer)
    model, tok = setup_chat_format(model, tokenizer)

    assert tok is tokenizer and len(tok) == old_len + 2
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert {start, end} == {old_len, old_len + 1}  # appended at the end of the vocabulary
    assert tok.encode("<|im_start|>user", add_special_tokens=False)[0] == start  # never split
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens)

    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == old_len + 2
    assert model.get_output_embeddings().weight.shape[0] == old_len + 2
    torch.testing.assert_close(emb[:old_len].detach(), old_rows)  # old rows untouched
    assert model.config.eos_token_id == end and model.config.pad_token_id == end and model.config.bos_token_id == start
    assert model.generation_config.eos_token_id == end

    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == CHATML_TEXT
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == CHATML_TEXT.split("<|im_start|>assistant")[0] + "<|im_start|>assistant\n"

    ids = tok(CHATML_TEXT, return_tensors="pt")["input_ids"]
    assert (ids == end).sum() == 3
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], old_len + 2)


def test_resize_to_multiple_of(model_path, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    n = len(tokenizer) + 2
    model, tok = setup_chat_format(model, tokenizer, resize_to_multiple_of=64)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == -(-n // 64) * 64 and rows % 64 == 0 and rows > n - 1  # rounded up, never down
    assert len(tok) == n


def test_saved_tokenizer_keeps_the_format(model_path, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    setup_chat_format(model, tokenizer)
    tokenizer.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.apply_chat_template(CONVERSATION, tokenize=False) == CHATML_TEXT
    assert (again.eos_token, again.pad_token, again.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")


def test_special_tokens_dataclass():
    tokens = ChatMlSpecialTokens()
    assert (tokens.system, tokens.user, tokens.assistant) == ("<|im_start|>system", "<|im_start|>user", "<|im_start|>assistant")
    assert FORMAT_MAPPING == {"chatml": ChatMlSpecialTokens}
    custom = ChatMlSpecialTokens(bos_token="[S]", eos_token="[E]")
    assert "'[S]'" in custom.chat_template and "'[E]'" in custom.chat_template and "im_start" not in custom.chat_template


def test_errors(model_path, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    with pytest.raises(ValueError, match=r"unknown format 'zephyr'; available formats: chatml"):
        setup_chat_format(model, tokenizer, format="zephyr")
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match="resize_to_multiple_of must be a positive int"):
            setup_chat_format(model, tokenizer, resize_to_multiple_of=bad)
    with pytest.raises(TypeError, match="resize_token_embeddings"):
        setup_chat_format(torch.nn.Linear(2, 2), tokenizer)
    assert len(tokenizer) == 1024 and tokenizer.chat_template is None  # nothing changed by the failed calls


def test_replacing_an_existing_template_warns(model_path, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    with pytest.warns(UserWarning, match="already has a chat template"):
        setup_chat_format(model, tokenizer)
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == CHATML_TEXT
