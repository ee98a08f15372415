"""Tokenising and padding preference pairs for DPO: `DPORowTokenizer` (what ``DPOTrainer.tokenize_row``
does) and TRL's ``DPODataCollatorWithPadding``.

A tokenised row holds, per side ``prompt``,
``chosen`` and ``rejected``, lists under ``<side>_input_ids``,
``<side>_attention_mask`` and (responses) ``<side>_labels``, plus the raw text,
and after ``precompute_ref_log_probs`` the floats ``reference_chosen_logps`` and
``reference_rejected_logps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..functional.dpo import IGNORE_INDEX
from ..trainer._helpers import pad

#: Which end of a too-long prompt is kept.
TRUNCATION_MODES = ("keep_end", "keep_start")


def pad_to_length(tensor: Tensor, length: int, pad_value: int | float, dim: int = -1) -> Tensor:
    """Right-pad ``tensor`` along ``dim`` with ``pad_value`` up to ``length`` (unchanged if already that long)."""
    size = tensor.size(dim)
    if size >= length:
        return tensor
    pad_shape = list(tensor.shape)
    pad_shape[dim] = length - size
    return torch.cat([tensor, pad_value * torch.ones(*pad_shape, dtype=tensor.dtype, device=tensor.device)], dim=dim)


@dataclass
class DPODataCollatorWithPadding:
    """Pad a list of tokenised preference rows into a batch of tensors.

    Args:
        pad_token_id: value for padded ``*_input_ids`` positions (use the model's pad id).
        label_pad_token_id: value for padded ``*_labels`` positions (ignored by the loss).
        is_encoder_decoder: encoder-decoder rows are right-padded everywhere; for
            decoder-only models the prompt is left-padded, so that generation from
            ``prompt_input_ids`` continues right after the prompt's last token.

    Keys ending in ``_input_ids``, ``_attention_mask``, ``_labels`` or
    ``_pixel_values`` become padded tensors, keys ending in ``_logps`` a float
    tensor, everything else (the raw text) stays a list.
    """

    pad_token_id: int = 0
    label_pad_token_id: int = IGNORE_INDEX
    is_encoder_decoder: bool | None = False

    def _pad_value(self, key: str) -> int | float:
        if key.endswith("_input_ids"):
            if self.pad_token_id is None:
                raise ValueError(
                    "DPODataCollatorWithPadding: pad_token_id is None; set the tokenizer's pad token "
                    "(e.g. tokenizer.pad_token = tokenizer.eos_token) or pass padding_value."
                )
            return self.pad_token_id
        if key.endswith("_labels"):
            return self.label_pad_token_id
        return 0  # attention masks and pixel values

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("DPODataCollatorWithPadding: got an empty list of features.")
        batch: dict[str, Any] = {}
        for key in features[0]:
            values = [row[key] for row in features]
            if key.endswith(("_input_ids", "_attention_mask", "_labels", "_pixel_values")):
                dtype = torch.float32 if key.endswith("_pixel_values") else torch.long
                seqs = [torch.as_tensor(v, dtype=dtype) for v in values]
                # decoder-only prompts are left-padded so that generation continues right after them
                side = "left" if not self.is_encoder_decoder and key.startswith("prompt") else "right"
                batch[key] = pad(seqs, padding_value=self._pad_value(key), padding_side=side)  # (B, L, ...)
            elif key.endswith("_logps"):
                batch[key] = torch.tensor(values, dtype=torch.float32)  # (B,)
            else:
                batch[key] = values
        return batch


@dataclass
class DPORowTokenizer:
    """Tokenise (prompt, chosen, rejected) text rows into the layout `DPODataCollatorWithPadding` pads.

    Args:
        tokenizer: the model's tokenizer.
        max_length: maximum prompt + response tokens (decoder-only).
        max_prompt_length: maximum prompt tokens.
        max_target_length: maximum response tokens (encoder-decoder only).
        truncation_mode: "keep_end" or "keep_start": which end of a too-long prompt stays.
        label_pad_token_id: label of the prompt positions (no loss there).
        is_encoder_decoder: the encoder reads the prompt, the decoder is scored on the response.
        counts: running counts of truncated prompts, truncated responses and rows seen (a dict the
            caller may share; DPOTrainer exposes it as ``truncation_counts``).
    """

    tokenizer: Any
    max_length: int
    max_prompt_length: int
    max_target_length: int | None = None
    truncation_mode: str = "keep_end"
    label_pad_token_id: int = IGNORE_INDEX
    is_encoder_decoder: bool = False
    counts: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "response": 0, "rows": 0})

    def build_tokenized_answer(self, prompt: str, answer: str) -> dict[str, list[int]]:
        """Tokenise ``prompt + answer`` and split it into prompt and answer ids.

        BPE merges across the boundary mean ``enc(prompt + answer)`` need not start
        with ``enc(prompt)``; the split point is therefore taken in the joint
        encoding, moved one token left when the last prompt token merged with the
        answer's first. Returns ``prompt_input_ids``, ``prompt_attention_mask``,
        ``input_ids`` and ``attention_mask`` (the answer's), without special tokens.
        """
        full = self.tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        split = len(prompt_ids)
        if full[:split] != prompt_ids:
            split -= 1  # the boundary token merged: it belongs to the answer
        split = max(split, 0)
        prompt_part, answer_part = full[:split], full[split:]
        if not answer_part:
            raise ValueError(f"DPOTrainer: the answer {answer!r} tokenises to nothing after prompt {prompt[-40:]!r}.")
        return {
            "prompt_input_ids": prompt_part,
            "prompt_attention_mask": [1] * len(prompt_part),
            "input_ids": answer_part,
            "attention_mask": [1] * len(answer_part),
        }

    def __call__(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        """Tokenise one row, truncating it to the length limits.

        When prompt + longer response exceeds ``max_length``, the prompt is cut to
        ``max_prompt_length`` (per ``truncation_mode``); if still too long, both
        responses are cut to ``max_length - max_prompt_length``. Every cut is
        counted in ``counts``. Response labels copy the ``input_ids`` with the
        prompt positions set to ``label_pad_token_id``. ``model`` (encoder-decoder
        only) supplies ``prepare_decoder_input_ids_from_labels``.
        """
        prompt, chosen, rejected = feature.get("prompt"), feature.get("chosen"), feature.get("rejected")
        for name, text in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if not isinstance(text, str):
                raise ValueError(f"DPOTrainer: '{name}' must be a string, got {type(text).__name__}: {text!r}.")
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise ValueError(f"DPOTrainer: empty '{name}' response for prompt {prompt[:60]!r}; drop or fix this row.")
        self.counts["rows"] += 1
        if self.is_encoder_decoder:
            return self._encoder_decoder_row(prompt, chosen, rejected, model)

        chosen_tok = self.build_tokenized_answer(prompt, chosen)
        rejected_tok = self.build_tokenized_answer(prompt, rejected)
        # Both splits must agree on the prompt; a merge may shorten one of them by a token.
        prompt_ids = chosen_tok["prompt_input_ids"]
        if len(rejected_tok["prompt_input_ids"]) < len(prompt_ids):
            prompt_ids = rejected_tok["prompt_input_ids"]
        chosen_ids = chosen_tok["prompt_input_ids"][len(prompt_ids) :] + chosen_tok["input_ids"]
        rejected_ids = rejected_tok["prompt_input_ids"][len(prompt_ids) :] + rejected_tok["input_ids"]

        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        if bos is not None and (not prompt_ids or prompt_ids[0] != bos):
            prompt_ids = [bos] + prompt_ids  # one BOS, never two
        if eos is not None:
            chosen_ids = chosen_ids if chosen_ids[-1:] == [eos] else chosen_ids + [eos]  # one EOS, never two
            rejected_ids = rejected_ids if rejected_ids[-1:] == [eos] else rejected_ids + [eos]

        longer = max(len(chosen_ids), len(rejected_ids))
        if len(prompt_ids) + longer > self.max_length and len(prompt_ids) > self.max_prompt_length:
            prompt_ids = self._truncate_prompt(prompt_ids)
            self.counts["prompt"] += 1
        if len(prompt_ids) + longer > self.max_length:
            room = self.max_length - len(prompt_ids)
            self.counts["response"] += int(len(chosen_ids) > room) + int(len(rejected_ids) > room)
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]

        out: dict[str, Any] = {"prompt_input_ids": prompt_ids, "prompt_attention_mask": [1] * len(prompt_ids)}
        for side, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            seq = prompt_ids + ids
            out[f"{side}_input_ids"] = seq
            out[f"{side}_attention_mask"] = [1] * len(seq)
            out[f"{side}_labels"] = [self.label_pad_token_id] * len(prompt_ids) + ids
        return out

    def _truncate_prompt(self, ids: list[int]) -> list[int]:
        if self.truncation_mode == "keep_start":
            return ids[: self.max_prompt_length]
        return ids[-self.max_prompt_length :]

    def _encoder_decoder_row(self, prompt: str, chosen: str, rejected: str, model: Any) -> dict[str, Any]:
        # The encoder reads the prompt, the decoder is scored on the response: the
        # tokenizer's own special tokens are kept (T5 appends </s>, BART wraps <s> ... </s>).
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        if len(prompt_ids) > self.max_prompt_length:
            prompt_ids = self._truncate_prompt(prompt_ids)
            self.counts["prompt"] += 1
        out: dict[str, Any] = {"prompt_input_ids": prompt_ids, "prompt_attention_mask": [1] * len(prompt_ids)}
        eos = self.tokenizer.eos_token_id
        for side, text in (("chosen", chosen), ("rejected", rejected)):
            ids = self.tokenizer(text)["input_ids"]
            if eos is not None and ids[-1:] != [eos]:
                ids = ids + [eos]
            if len(ids) > self.max_target_length:
                ids = ids[: self.max_target_length]
                self.counts["response"] += 1
            out[f"{side}_labels"] = ids
            if model is not None and hasattr(model, "prepare_decoder_input_ids_from_labels"):
                out[f"{side}_decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(
                    labels=torch.tensor([ids])
                )[0].tolist()
        return out
