"""Padding of tokenised preference pairs for DPO (TRL's ``DPODataCollatorWithPadding``).

A tokenised row (see ``DPOTrainer.tokenize_row``) holds, per side ``prompt``,
``chosen`` and ``rejected``, lists under ``<side>_input_ids``,
``<side>_attention_mask`` and (responses) ``<side>_labels``, plus the raw text,
and after ``precompute_ref_log_probs`` the floats ``reference_chosen_logps`` and
``reference_rejected_logps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..functional.dpo import IGNORE_INDEX


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
                left = not self.is_encoder_decoder and key.startswith("prompt")
                if left:
                    # Left padding = right padding of the reversed sequences, reversed back.
                    seqs = [s.flip(0) for s in seqs]
                padded = pad_sequence(seqs, batch_first=True, padding_value=self._pad_value(key))  # (B, L)
                batch[key] = padded.flip(1) if left else padded
            elif key.endswith("_logps"):
                batch[key] = torch.tensor(values, dtype=torch.float32)  # (B,)
            else:
                batch[key] = values
        return batch
