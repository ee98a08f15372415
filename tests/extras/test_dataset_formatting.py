"""get_formatting_func_from_dataset: which layouts are recognised and the exact text they produce."""

from __future__ import annotations

import pytest
from datasets import Dataset

from rlft.extras.dataset_formatting import (
    conversations_formatting_function,
    get_formatting_func_from_dataset,
    instructions_formatting_function,
)

TURNS_A = [{"role": "user", "content": "open the file"}, {"role": "assistant", "content": "the file is open."}]
TURNS_B = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]
# The same rows written out by hand in ChatML.
TEXT_A = "<|im_start|>user\nopen the file<|im_end|>\n<|im_start|>assistant\nthe file is open.<|im_end|>\n"
TEXT_B = "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\ny<|im_end|>\n<|im_start|>user\nz<|im_end|>\n"


@pytest.fixture
def chat_tokenizer(tokenizer):
    """The tiny tokenizer with the ChatML template (no model needed to render text)."""
    from rlft.models.utils import ChatMlSpecialTokens

    tokenizer.chat_template = ChatMlSpecialTokens().chat_template
    return tokenizer


@pytest.mark.parametrize("column", ["messages", "conversations"])
def test_conversational_dataset_per_example_and_per_batch(chat_tokenizer, column):
    ds = Dataset.from_dict({column: [TURNS_A, TURNS_B], "id": [1, 2]})  # extra columns are fine
    fn = get_formatting_func_from_dataset(ds, chat_tokenizer)
    assert fn is not None
    assert fn(ds[0]) == TEXT_A and fn(ds[1]) == TEXT_B  # one example -> str
    assert fn(ds[:2]) == [TEXT_A, TEXT_B]  # a batch -> list of str
    assert fn(ds[:0]) == []


def test_turns_with_extra_keys_and_iterable_dataset(chat_tokenizer):
    turns = [dict(t, name="n") for t in TURNS_A]
    ds = Dataset.from_dict({"messages": [turns]})
    assert get_formatting_func_from_dataset(ds, chat_tokenizer)(ds[0]) == TEXT_A
    it = Dataset.from_dict({"messages": [TURNS_A]}).to_iterable_dataset()
    assert get_formatting_func_from_dataset(it, chat_tokenizer)(next(iter(it))) == TEXT_A


def test_instruction_dataset(chat_tokenizer):
    ds = Dataset.from_dict({"prompt": ["open the file", "x"], "completion": ["the file is open.", "y"]})
    fn = get_formatting_func_from_dataset(ds, chat_tokenizer)
    assert fn(ds[0]) == TEXT_A
    assert fn(ds[:2]) == [TEXT_A, "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\ny<|im_end|>\n"]
    assert instructions_formatting_function(chat_tokenizer)({"prompt": "x", "completion": "y"}) == fn(ds[1])


@pytest.mark.parametrize(
    "data",
    [
        {"text": ["plain text"]},
        {"input_ids": [[1, 2, 3]]},
        {"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]},  # a preference dataset
        {"messages": [["just", "strings"]]},  # no role/content turns
        {"messages": [[{"role": "user", "text": "no content key"}]]},
        {"prompt": ["p"], "completion": [1]},  # completion is not text
    ],
    ids=["text", "tokenised", "preference", "string-list", "no-content", "int-completion"],
)
def test_other_layouts_give_none(chat_tokenizer, data):
    assert get_formatting_func_from_dataset(Dataset.from_dict(data), chat_tokenizer) is None


def test_objects_without_features_give_none(chat_tokenizer):
    assert get_formatting_func_from_dataset([{"messages": TURNS_A}], chat_tokenizer) is None
    assert get_formatting_func_from_dataset(None, chat_tokenizer) is None


@pytest.mark.parametrize("data", [{"messages": [TURNS_A]}, {"prompt": ["p"], "completion": ["c"]}])
def test_no_chat_template_names_setup_chat_format(tokenizer, data):
    assert tokenizer.chat_template is None
    with pytest.raises(ValueError, match=r"has none\. Give it one, e\.g\. `model, tokenizer = rlft\.setup_chat_format"):
        get_formatting_func_from_dataset(Dataset.from_dict(data), tokenizer)
    with pytest.raises(ValueError, match="setup_chat_format"):
        conversations_formatting_function(tokenizer, "messages")


def test_uses_the_tokenizers_own_template(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    fn = get_formatting_func_from_dataset(Dataset.from_dict({"messages": [TURNS_A]}), tokenizer)
    assert fn({"messages": TURNS_A}) == "[user] open the file\n[assistant] the file is open.\n"
