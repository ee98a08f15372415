import pytest
import torch
from datasets import Dataset

from rlft.data.sft import (
    IGNORE_INDEX,
    ConstantLengthDataset,
    DataCollatorForCausalLMKeepEOS,
    DataCollatorForCompletionOnlyLM,
    labels_from_attention_mask,
    pack_token_sequences,
)
from rlft.testing import tiny


def test_pack_token_sequences_by_hand():
    # [1,2] EOS(9) [3,4,5] EOS -> 7 tokens; chunks of 3 -> two chunks, last token dropped
    chunks = pack_token_sequences([[1, 2], [3, 4, 5]], 3, 9, reset_position_ids=True)
    assert [c["input_ids"] for c in chunks] == [[1, 2, 9], [3, 4, 5]]
    assert [c["position_ids"] for c in chunks] == [[0, 1, 2], [0, 1, 2]]
    chunks = pack_token_sequences([[1, 2], [3, 4, 5]], 6, 9, reset_position_ids=True)
    assert chunks[0]["position_ids"] == [0, 1, 2, 0, 1, 2]
    assert chunks[0]["labels"] == [1, 2, 9, IGNORE_INDEX, 4, 5]  # 3 is not predictable within its example
    plain = pack_token_sequences([[1, 2], [3, 4, 5]], 6, 9, reset_position_ids=False)
    assert plain[0]["labels"] == plain[0]["input_ids"] and "position_ids" not in plain[0]


def test_constant_length_dataset_params_and_chunks(tokenizer):
    import inspect

    params = inspect.signature(ConstantLengthDataset).parameters
    expected = dict(dataset_text_field=None, formatting_func=None, infinite=False, seq_length=1024, num_of_sequences=1024,
                    chars_per_token=3.6, eos_token_id=0, shuffle=True, append_concat_token=True, add_special_tokens=True)
    for name, default in expected.items():
        assert params[name].default == default, name
    ds = Dataset.from_dict({"text": tiny.corpus_lines()[:40]})
    cld = ConstantLengthDataset(tokenizer, ds, dataset_text_field="text", seq_length=16, num_of_sequences=4, shuffle=False)
    chunks = list(cld)
    assert len(chunks) > 3 and all(c["input_ids"].shape == (16,) for c in chunks)
    joined = torch.cat([c["input_ids"] for c in chunks]).tolist()
    assert tokenizer.eos_token_id in joined
    first = tokenizer(tiny.corpus_lines()[0])["input_ids"]
    assert joined[: len(first)] == first[:len(joined)]
    # formatting_func and its type check
    fmt = ConstantLengthDataset(tokenizer, ds, formatting_func=lambda ex: ex["text"].upper(), seq_length=16, num_of_sequences=2)
    assert len(list(fmt)) > 0
    bad = ConstantLengthDataset(tokenizer, ds, formatting_func=lambda ex: 3, seq_length=16)
    with pytest.raises(TypeError, match="must return a str"):
        next(iter(bad))
    with pytest.raises(KeyError, match="no text field 'content'"):
        next(iter(ConstantLengthDataset(tokenizer, ds, dataset_text_field="content")))
    with pytest.raises(ValueError, match="dataset_text_field or formatting_func"):
        ConstantLengthDataset(tokenizer, ds)


def test_constant_length_dataset_infinite(tokenizer):
    ds = Dataset.from_dict({"text": ["a short line of text."] * 2})
    it = iter(ConstantLengthDataset(tokenizer, ds, dataset_text_field="text", seq_length=8, num_of_sequences=1, infinite=True))
    with pytest.warns(UserWarning, match="ran out"):
        chunks = [next(it) for _ in range(10)]
    assert len(chunks) == 10


def test_labels_keep_eos_when_pad_is_eos(pad_tokenizer):
    eos = pad_tokenizer.eos_token_id
    texts = ["return the value." + pad_tokenizer.eos_token, "a" + pad_tokenizer.eos_token]
    batch = DataCollatorForCausalLMKeepEOS(pad_tokenizer)([pad_tokenizer(t) for t in texts])
    short = batch["attention_mask"][1].sum().item()
    assert batch["labels"][1, short - 1].item() == eos  # the example's own EOS is trained
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()  # padding (also EOS) is not
    ids = torch.tensor([[5, 6, 0]]); mask = torch.tensor([[1, 1, 0]])
    assert labels_from_attention_mask(ids, mask).tolist() == [[5, 6, -100]]


def _completion_batch(tok, collator, texts):
    return collator([tok(t) for t in texts])


def test_completion_only_masks_prompt(pad_tokenizer):
    tok = pad_tokenizer
    template = "### Answer:"
    collator = DataCollatorForCompletionOnlyLM(template, tokenizer=tok)
    text = "### Question: what is returned?\n### Answer: the value" + tok.eos_token
    batch = _completion_batch(tok, collator, [text, "x\n### Answer: y" + tok.eos_token])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    trained = tok.decode(ids[labels != IGNORE_INDEX])
    assert trained.strip() == "the value" + tok.eos_token
    # the template given as token ids as they appear in context works too
    ctx_ids = tok("\n" + template, add_special_tokens=False)["input_ids"][1:]
    by_ids = DataCollatorForCompletionOnlyLM(ctx_ids, tokenizer=tok)
    assert torch.equal(_completion_batch(tok, by_ids, [text])["labels"][0], batch["labels"][0][: len(tok(text)["input_ids"])])


def test_completion_only_template_tokenised_differently_in_context(pad_tokenizer):
    tok = pad_tokenizer
    template = "Answer:"
    alone = tok(template, add_special_tokens=False)["input_ids"]
    text = "Question? The Answer: yes" + tok.eos_token  # " Answer" merges with the space before it
    in_context = tok(text)["input_ids"]
    assert not any(in_context[i : i + len(alone)] == alone for i in range(len(in_context)))  # TRL 0.7 would fail here
    batch = DataCollatorForCompletionOnlyLM(template, tokenizer=tok)([tok(text)])
    trained = tok.decode(batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX])
    assert trained.strip() == "yes" + tok.eos_token


def test_completion_only_missing_template_names_example_when_strict(pad_tokenizer):
    tok = pad_tokenizer
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, strict=True)
    with pytest.raises(ValueError, match=r"not found in example 1 of the batch \('no template here"):
        _completion_batch(tok, collator, ["q\n### Answer: a", "no template here"])


def test_completion_only_truncated_template_is_masked_with_one_warning(pad_tokenizer):
    """TRL 0.7 default: an example whose template truncation cut off is left out of the loss, with a warning."""
    tok = pad_tokenizer
    texts = ["q\n### Answer: a" + tok.eos_token, "a long question " * 6 + "\n### Answer: b", "x\n### Answer: c"]
    examples = [tok(t, truncation=True, max_length=12) for t in texts]  # the second loses its template
    strict_free = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok)
    with pytest.warns(UserWarning, match=r"1 of 3 examples of this batch lack a template .*example 1 of the batch") as caught:
        batch = strict_free(examples)
    assert len([w for w in caught if "lack a template" in str(w.message)]) == 1
    assert (batch["labels"][1] == IGNORE_INDEX).all()
    assert strict_free.num_masked_examples == 1
    # the other examples are labelled exactly as without the truncated one
    alone = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok)([examples[0], examples[2]])
    for row, ref in ((0, 0), (2, 1)):
        n = int(batch["attention_mask"][row].sum())
        assert batch["labels"][row][:n].tolist() == alone["labels"][ref][: int(alone["attention_mask"][ref].sum())].tolist()


def test_completion_only_missing_instruction_template_is_masked(pad_tokenizer):
    tok = pad_tokenizer
    collator = DataCollatorForCompletionOnlyLM("### Assistant:", instruction_template="### Human:", tokenizer=tok)
    with pytest.warns(UserWarning, match="instruction template"):
        batch = _completion_batch(tok, collator, ["### Assistant: hello" + tok.eos_token])
    assert (batch["labels"] == IGNORE_INDEX).all()


def test_completion_only_multi_turn(pad_tokenizer):
    tok = pad_tokenizer
    collator = DataCollatorForCompletionOnlyLM("### Assistant:", instruction_template="### Human:", tokenizer=tok)
    text = "### Human: hi\n### Assistant: hello\n### Human: list\n### Assistant: a list" + tok.eos_token
    batch = _completion_batch(tok, collator, [text])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained = tok.decode(ids[labels != IGNORE_INDEX])
    assert "hello" in trained and "a list" in trained and "hi" not in trained.split("hello")[0]
    assert "Human" not in trained


def test_completion_only_rejects_mlm(pad_tokenizer):
    with pytest.raises(ValueError, match="mlm"):
        DataCollatorForCompletionOnlyLM("x", tokenizer=pad_tokenizer, mlm=True)


def test_labels_leave_out_the_first_token_after_left_padding():
    # Row 0 left-padded by two: its first real token (7) would be predicted from padding, so it is masked.
    # Row 1 unpadded and row 2 right-padded keep every real token; row 3 (padding only) has no labels.
    ids = torch.tensor([[0, 0, 7, 8], [5, 6, 7, 8], [5, 6, 0, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    expected = [[-100, -100, -100, 8], [5, 6, 7, 8], [5, 6, -100, -100], [-100] * 4]
    assert labels_from_attention_mask(ids, mask).tolist() == expected
    # same labels as a loop over rows: mask padding, then the first attended position if padding precedes it
    for row_ids, row_mask, row_expected in zip(ids.tolist(), mask.tolist(), expected):
        loop = [t if m else -100 for t, m in zip(row_ids, row_mask)]
        if 1 in row_mask and row_mask.index(1) > 0:
            loop[row_mask.index(1)] = -100
        assert loop == row_expected
