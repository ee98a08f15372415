"""Data plumbing for supervised fine-tuning: packing, padding, completion-only labels.

Notation: ``B`` batch, ``L`` padded sequence length.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset
from transformers import DataCollatorForLanguageModeling

#: Label value the loss ignores (PyTorch cross-entropy's default ignore_index).
IGNORE_INDEX = -100


def _format_one(example: Any, dataset_text_field: str | None, formatting_func: Callable | None, where: str) -> str:
    """The training text of one example, with an error that says what went wrong."""
    if formatting_func is not None:
        text = formatting_func(example)
        if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
            text = text[0]
        if not isinstance(text, str):
            raise TypeError(f"{where}: formatting_func must return a str for one example, got {type(text).__name__}.")
        return text
    if dataset_text_field is None:
        raise ValueError(f"{where}: pass dataset_text_field or formatting_func.")
    if dataset_text_field not in example:
        raise KeyError(f"{where}: the dataset has no text field {dataset_text_field!r}; its fields are {sorted(example)}.")
    text = example[dataset_text_field]
    if not isinstance(text, str):
        raise TypeError(f"{where}: field {dataset_text_field!r} must hold strings, got {type(text).__name__}.")
    return text


def pack_token_sequences(
    sequences: list[list[int]], seq_length: int, concat_token_id: int | None, reset_position_ids: bool
) -> list[dict[str, list[int]]]:
    """Concatenate token sequences and cut them into chunks of exactly ``seq_length`` tokens.

    Each example is followed by ``concat_token_id`` (None: nothing between examples); the last
    incomplete chunk is dropped. With ``reset_position_ids`` each chunk gets ``position_ids``
    that restart at 0 where an example (or the chunk) starts; models that build their attention
    mask from position ids (transformers' packed-sequence detection, used when no
    attention_mask is given) then keep examples from attending to each other, and the label of
    an example's first token is ``IGNORE_INDEX`` because nothing in its own example predicts it.
    Without it, chunks are plain concatenations (TRL 0.7 behaviour): labels = input_ids.
    """
    tokens: list[int] = []
    starts: list[bool] = []  # True where an example begins
    for seq in sequences:
        piece = list(seq) + ([concat_token_id] if concat_token_id is not None else [])
        tokens.extend(piece)
        starts.extend([True] + [False] * (len(piece) - 1))
    chunks = []
    for lo in range(0, len(tokens) - seq_length + 1, seq_length):
        ids = tokens[lo : lo + seq_length]
        chunk: dict[str, list[int]] = {"input_ids": ids, "labels": list(ids)}
        if reset_position_ids:
            positions, pos = [], 0
            for k in range(seq_length):
                pos = 0 if (k == 0 or starts[lo + k]) else pos + 1
                positions.append(pos)
                if k > 0 and starts[lo + k]:
                    chunk["labels"][k] = IGNORE_INDEX
            chunk["position_ids"] = positions
        chunks.append(chunk)
    return chunks


class ConstantLengthDataset(IterableDataset):
    """Iterable dataset of fixed-length token chunks packed from a text dataset.

    Reads texts until about ``seq_length * chars_per_token * num_of_sequences`` characters are
    buffered, tokenises them, joins them with the EOS token and yields chunks of ``seq_length``
    tokens as ``input_ids`` and ``labels`` (and ``position_ids``, see ``reset_position_ids``).

    Parameters (TRL 0.7.10's, plus ``reset_position_ids``):
        tokenizer: tokenises the texts; its EOS id separates examples.
        dataset: a ``datasets.Dataset``/``IterableDataset`` or any iterable of dict examples.
        dataset_text_field: name of the text field (or use ``formatting_func``).
        formatting_func: example -> text; takes precedence over ``dataset_text_field``.
        infinite: restart from the beginning when the dataset runs out (default False).
        seq_length: tokens per chunk (default 1024).
        num_of_sequences: how many chunks' worth of text to buffer before packing (default 1024).
        chars_per_token: estimate used to size the buffer (default 3.6).
        eos_token_id: separator used when the tokenizer has no EOS token (default 0).
        shuffle: shuffle the chunks of each buffer (default True).
        append_concat_token: put the separator after each example (default True).
        add_special_tokens: let the tokenizer add its special tokens to each text (default True).
        reset_position_ids: restart ``position_ids`` at each example so models that support it
            do not attend across examples (default True; False gives plain concatenation).
    """

    def __init__(
        self,
        tokenizer,
        dataset,
        dataset_text_field: str | None = None,
        formatting_func: Callable | None = None,
        infinite: bool = False,
        seq_length: int = 1024,
        num_of_sequences: int = 1024,
        chars_per_token: float = 3.6,
        eos_token_id: int = 0,
        shuffle: bool = True,
        append_concat_token: bool = True,
        add_special_tokens: bool = True,
        *,
        reset_position_ids: bool = True,
    ):
        if dataset_text_field is None and formatting_func is None:
            raise ValueError("ConstantLengthDataset: pass dataset_text_field or formatting_func.")
        if seq_length <= 0 or num_of_sequences <= 0 or chars_per_token <= 0:
            raise ValueError("ConstantLengthDataset: seq_length, num_of_sequences and chars_per_token must be positive.")
        if dataset_text_field is not None and formatting_func is not None:
            warnings.warn("ConstantLengthDataset: both dataset_text_field and formatting_func given; formatting_func is used.", UserWarning, stacklevel=2)
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.dataset_text_field = dataset_text_field
        self.formatting_func = formatting_func
        self.infinite = infinite
        self.seq_length = seq_length
        self.num_of_sequences = num_of_sequences
        self.chars_per_token = chars_per_token
        self.concat_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eos_token_id
        self.shuffle = shuffle
        self.append_concat_token = append_concat_token
        self.add_special_tokens = add_special_tokens
        self.reset_position_ids = reset_position_ids
        self.max_buffer_size = seq_length * chars_per_token * num_of_sequences
        self.current_size = 0

    def __len__(self) -> int:
        # TRL 0.7 reports the number of source examples, not of chunks; kept for compatibility.
        return len(self.dataset)

    def _texts(self) -> Iterator[str]:
        while True:
            empty = True
            for example in self.dataset:
                empty = False
                yield _format_one(example, self.dataset_text_field, self.formatting_func, "ConstantLengthDataset")
            if empty:
                raise ValueError("ConstantLengthDataset: the dataset is empty.")
            if not self.infinite:
                return
            warnings.warn("ConstantLengthDataset: the dataset ran out; starting again (infinite=True).", UserWarning, stacklevel=2)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        texts = self._texts()
        done = False
        while not done:
            buffer, size = [], 0
            while size < self.max_buffer_size:
                try:
                    text = next(texts)
                except StopIteration:
                    done = True
                    break
                buffer.append(text)
                size += len(text)
            if not buffer:
                return
            self.current_size += len(buffer)
            ids = self.tokenizer(buffer, add_special_tokens=self.add_special_tokens, truncation=False)["input_ids"]
            chunks = pack_token_sequences(
                ids, self.seq_length, self.concat_token_id if self.append_concat_token else None, self.reset_position_ids
            )
            if self.shuffle:
                random.shuffle(chunks)
            for chunk in chunks:
                yield {k: torch.tensor(v, dtype=torch.long) for k, v in chunk.items()}


def labels_from_attention_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Causal-LM labels: the input ids where the attention mask is 1, ``ignore_index`` on padding.

    input_ids, attention_mask: (B, L). Unlike masking every ``pad_token_id``, this keeps a real
    EOS in the labels when the pad token is the EOS token, so the model learns to stop.

    A left-padded row's first real token is ``ignore_index`` too: the shifted loss would predict
    it from the padding position before it, a term with no context that the same example padded on
    the right (or alone) does not have. Rows without left padding keep every real token, so the
    loss of a padded batch is the token-weighted mean of its examples' losses on either side.
    """
    labels = input_ids.masked_fill(attention_mask == 0, ignore_index)
    attended = attention_mask != 0  # (B, L)
    first = attended.int().argmax(dim=1)  # (B,) first attended position; 0 for a row of padding only
    left_padded = torch.nonzero(attended.any(dim=1) & (first > 0)).squeeze(1)  # rows with padding before the text
    labels[left_padded, first[left_padded]] = ignore_index
    return labels


class DataCollatorForCausalLMKeepEOS(DataCollatorForLanguageModeling):
    """Pad tokenised examples for causal LM training; labels keep EOS even when pad == EOS.

    A drop-in for ``DataCollatorForLanguageModeling(tokenizer, mlm=False)``.
    """

    def __init__(self, tokenizer, *args, mlm: bool = False, ignore_index: int = IGNORE_INDEX, **kwargs):
        if mlm:
            raise ValueError(f"{type(self).__name__} is for causal language modelling; mlm must be False.")
        super().__init__(tokenizer, *args, mlm=False, **kwargs)
        self.ignore_index = ignore_index

    def torch_call(self, examples: list[Any]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        if "attention_mask" not in batch:
            pad = self.tokenizer.pad_token_id
            batch["attention_mask"] = torch.ones_like(batch["input_ids"]) if pad is None else (batch["input_ids"] != pad).long()
        batch["labels"] = labels_from_attention_mask(batch["input_ids"], batch["attention_mask"], self.ignore_index)
        return batch


def _find_all(ids: list[int], pattern: list[int]) -> list[int]:
    """Start indices of every occurrence of ``pattern`` in ``ids``."""
    n = len(pattern)
    return [i for i in range(len(ids) - n + 1) if ids[i : i + n] == pattern] if n else []


class DataCollatorForCompletionOnlyLM(DataCollatorForCausalLMKeepEOS):
    """Causal LM collator that trains only on completions: labels before (and, in multi-turn
    data, between) response templates are ``ignore_index``.

    Parameters (as in TRL 0.7.10):
        response_template: the text (or its token ids) that precedes each completion.
        instruction_template: optional text (or ids) that starts each human turn; with it,
            every span from a response template to the next instruction template is trained.
        mlm: must be False.
        ignore_index: label of the tokens left out of the loss (default -100).
        strict: what to do with an example whose template is missing (usually cut off by
            truncation to ``max_seq_length``): False (default, as TRL 0.7) leaves the whole
            example out of the loss and warns once per batch with the count; True raises
            ValueError naming the example. ``num_masked_examples`` counts the masked ones.
        Other arguments go to ``transformers.DataCollatorForLanguageModeling`` (``tokenizer``
        first).

    A template given as a string is matched by its token ids, by the ids it gets after a
    newline, a space or a letter (BPE tokenisers often merge the first template token with
    the character before it), and finally by text through the decoded tokens.
    """

    def __init__(
        self,
        response_template: str | list[int],
        instruction_template: str | list[int] | None = None,
        *args,
        mlm: bool = False,
        ignore_index: int = IGNORE_INDEX,
        strict: bool = False,
        **kwargs,
    ):
        super().__init__(*args, mlm=mlm, ignore_index=ignore_index, **kwargs)
        self.strict = strict
        self.num_masked_examples = 0
        self.response_template = response_template
        self.instruction_template = instruction_template
        self.response_token_ids = self._variants(response_template)[0]
        self.instruction_token_ids = None if instruction_template is None else self._variants(instruction_template)[0]

    def _variants(self, template: str | list[int]) -> list[list[int]]:
        if not isinstance(template, str):
            ids = [int(t) for t in template]
            if not ids:
                raise ValueError("DataCollatorForCompletionOnlyLM: a template must not be empty.")
            return [ids]
        if not template:
            raise ValueError("DataCollatorForCompletionOnlyLM: a template must not be empty.")
        variants = [self.tokenizer.encode(template, add_special_tokens=False)]
        for context in ("\n", " ", "a", "\n\n"):
            ctx = self.tokenizer.encode(context, add_special_tokens=False)
            full = self.tokenizer.encode(context + template, add_special_tokens=False)
            if full[: len(ctx)] == ctx and len(full) > len(ctx):
                variants.append(full[len(ctx) :])
        unique: list[list[int]] = []
        for v in variants:
            if v and v not in unique:
                unique.append(v)
        return unique

    def _spans(self, ids: list[int], template: str | list[int]) -> list[tuple[int, int]]:
        """(start, end) token spans of every occurrence of ``template`` in ``ids``, sorted."""
        spans = set()
        for variant in self._variants(template):
            spans.update((s, s + len(variant)) for s in _find_all(ids, variant))
        if spans or not isinstance(template, str):
            return sorted(spans)
        # Text fallback: locate the template in the decoded text and map characters to tokens.
        pieces = [self.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in ids]
        offsets, pos = [], 0
        for p in pieces:
            offsets.append(pos)
            pos += len(p)
        text = "".join(pieces)
        found, at = [], text.find(template)
        while at != -1:
            end_char = at + len(template)
            start_tok = max(k for k, o in enumerate(offsets) if o <= at)
            end_tok = next((k for k, o in enumerate(offsets) if o >= end_char), len(ids))
            found.append((start_tok, end_tok))
            at = text.find(template, at + 1)
        return found

    def _describe(self, ids: list[int], index: int) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return f"example {index} of the batch ({text[:120]!r}{'...' if len(text) > 120 else ''})"

    def torch_call(self, examples: list[Any]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        missing: list[str] = []  # one description per example left out of the loss
        for i in range(len(batch["input_ids"])):
            keep = batch["attention_mask"][i].bool()
            positions = keep.nonzero().flatten().tolist()  # token indices without padding (either side)
            ids = batch["input_ids"][i][keep].tolist()
            trained = self._trained_positions(ids, i, missing)
            labels = batch["labels"][i]
            labels[[p for p, t in zip(positions, trained.tolist()) if not t]] = self.ignore_index
        if missing:
            self.num_masked_examples += len(missing)
            warnings.warn(
                f"DataCollatorForCompletionOnlyLM: {len(missing)} of {len(batch['input_ids'])} examples of this batch "
                f"lack a template and are left out of the loss (first: {missing[0]}). Truncation to max_seq_length "
                "usually cuts it off: raise max_seq_length, or pass strict=True to make this an error.",
                UserWarning,
                stacklevel=2,
            )
        return batch

    def _trained_positions(self, ids: list[int], index: int, missing: list[str]) -> torch.Tensor:
        """(L,) bool: the tokens of one example (padding removed) that get a loss; all False, with the
        example added to ``missing``, when a template is absent (an error when ``strict``)."""
        trained = torch.zeros(len(ids), dtype=torch.bool)
        responses = self._spans(ids, self.response_template)
        instructions = None
        if responses and self.instruction_template is not None:
            instructions = [s for s, _ in self._spans(ids, self.instruction_template)]
        absent = ("response", self.response_template) if not responses else (
            ("instruction", self.instruction_template) if instructions == [] else None
        )
        if absent is not None:
            where = f"{absent[0]} template {absent[1]!r} not found in {self._describe(ids, index)}"
            if self.strict:
                raise ValueError(
                    f"DataCollatorForCompletionOnlyLM: {where}. Check the template, or pass its token ids as they "
                    "appear in context; a truncated example needs a larger max_seq_length."
                )
            missing.append(where)
            return trained
        if instructions is None:
            trained[responses[0][1] :] = True
        else:
            for _, end in responses:
                nxt = min((s for s in instructions if s >= end), default=len(ids))
                trained[end:nxt] = True
        return trained
