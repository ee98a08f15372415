"""`rlft.core`: the helpers TRL 0.7.10 exposed as ``trl.core``.

The math is implemented in `rlft.functional`; this module is the public face a
TRL user imports from, plus the small utilities (seeding, stat dictionaries,
sampling) that go with it.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from .functional.logprobs import entropy_from_logits, logprobs_from_logits
from .functional.stats import clip_by_value, masked_mean, masked_var, masked_whiten, whiten
from .import_utils import is_npu_available, is_xpu_available

#: Value used to pad ragged per-sample stats into one tensor, as TRL does for wandb.
WANDB_PADDING = -1

__all__ = [
    "WANDB_PADDING",
    "LengthSampler",
    "PPODecorators",
    "add_suffix",
    "average_torch_dicts",
    "clip_by_value",
    "convert_to_scalar",
    "entropy_from_logits",
    "flatten_dict",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "pad_to_size",
    "randn_tensor",
    "respond_to_batch",
    "set_seed",
    "stack_dicts",
    "stats_to_np",
    "top_k_top_p_filtering",
    "whiten",
]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy, torch (every device) and accelerate, for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if is_xpu_available():
        torch.xpu.manual_seed_all(seed)
    if is_npu_available():
        torch.npu.manual_seed_all(seed)
    try:
        from accelerate.utils import set_seed as accelerate_set_seed
    except ImportError:
        return
    accelerate_set_seed(seed)


class LengthSampler:
    """Draws an integer uniformly from ``[min_value, max_value)`` (upper bound excluded, as TRL).

    Uses NumPy's global generator, so `set_seed` makes the draws reproducible.
    """

    def __init__(self, min_value: int, max_value: int):
        if int(max_value) <= int(min_value):
            raise ValueError(
                f"LengthSampler needs min_value < max_value (the upper bound is excluded); got {min_value}, {max_value}."
            )
        self.values = list(range(int(min_value), int(max_value)))

    def __call__(self) -> int:
        return int(np.random.choice(self.values))

    def __repr__(self) -> str:
        return f"LengthSampler({self.values[0]}, {self.values[-1] + 1})"


def free_device_cache() -> None:
    """Release cached accelerator memory (and run the garbage collector around it)."""
    gc.collect()
    if is_xpu_available():
        torch.xpu.empty_cache()
    elif is_npu_available():
        torch.npu.empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()
    gc.collect()


class PPODecorators:
    """TRL 0.7's name for the device-cache switch, kept for user code that decorates its own functions.

    ``PPODecorators.optimize_device_cache`` is only read by ``empty_device_cache``; `PPOTrainer` never
    writes it: each trainer follows its own ``config.optimize_device_cache``.
    """

    optimize_device_cache = False

    @classmethod
    @contextmanager
    def empty_device_cache(cls):
        """After the block, release cached accelerator memory when the switch is on."""
        yield
        if cls.optimize_device_cache:
            free_device_cache()


def flatten_dict(nested: Mapping, sep: str = "/") -> dict:
    """Flatten nested mappings, joining keys with ``sep`` ({"a": {"b": 1}} -> {"a/b": 1})."""
    flat: dict = {}

    def visit(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            if sep in key:
                raise ValueError(f"flatten_dict: the separator {sep!r} may not appear in the key {key!r}.")
            if isinstance(value, Mapping):
                visit(value, prefix + key + sep)
            else:
                flat[prefix + key] = value

    visit(nested, "")
    return flat


def convert_to_scalar(stats: Mapping) -> dict:
    """Turn one-element tensors and arrays into Python scalars (for tensorboard)."""
    out = {}
    for key, value in stats.items():
        if isinstance(value, (Tensor, np.ndarray)) and (value.ndim == 0 or (value.ndim == 1 and value.shape[0] == 1)):
            value = value.item()
        out[key] = value
    return out


def stack_dicts(stats_dicts: list[Mapping]) -> dict:
    """Stack per-minibatch stat dicts key by key into (n_dicts, max_len) tensors, ragged rows padded with WANDB_PADDING."""
    if not stats_dicts:
        return {}
    return {
        key: pad_sequence([torch.flatten(d[key]) for d in stats_dicts], batch_first=True, padding_value=WANDB_PADDING)
        for key in stats_dicts[0]
    }


def average_torch_dicts(list_of_dicts: list[Mapping]) -> dict:
    """Mean over dicts, key by key, of same-shaped tensors."""
    return {key: torch.stack([d[key] for d in list_of_dicts]).mean(dim=0) for key in list_of_dicts[0]}


def stats_to_np(stats_dict: Mapping) -> dict:
    """Detach tensors to NumPy (bf16 via fp32); NumPy scalars become Python floats."""
    out = {}
    for key, value in stats_dict.items():
        if isinstance(value, Tensor):
            value = value.detach().cpu()
            if value.dtype in (torch.bfloat16, torch.float16):
                value = value.float()
            value = value.numpy()
        if isinstance(value, (np.number, int, float)) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


def add_suffix(input_dict: Mapping, suffix: str) -> dict:
    """Append ``suffix`` to every key."""
    return {key + suffix: value for key, value in input_dict.items()}


def pad_to_size(tensor: Tensor, size: int, dim: int = 1, padding: int = 50256) -> Tensor:
    """Right-pad ``tensor`` along ``dim`` with ``padding`` up to ``size`` (default pad id: GPT-2's EOS)."""
    missing = size - tensor.shape[dim]
    if missing < 0:
        raise ValueError(f"pad_to_size: tensor is already longer ({tensor.shape[dim]}) than size {size} along dim {dim}.")
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - (dim % tensor.dim())) + [0, missing]
    return F.pad(tensor, pad, value=padding)


def top_k_top_p_filtering(
    logits: Tensor, top_k: int = 0, top_p: float = 1.0, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1
) -> Tensor:
    """Set logits outside the top-k and outside the nucleus (top-p) to ``filter_value``.

    logits: (B, V). ``top_k=0`` and ``top_p=1.0`` disable each filter. At least
    ``min_tokens_to_keep`` tokens survive per row (Holtzman et al. 2019).
    """
    logits = logits.clone()
    top_k = int(top_k)
    if top_k > 0:
        k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, filter_value)
    if 0 <= top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)  # (B, V)
        remove = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        remove[..., :min_tokens_to_keep] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), filter_value)
    return logits


@torch.no_grad()
def respond_to_batch(model: nn.Module, queries: Tensor, txt_len: int = 20, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Sample ``txt_len`` tokens after each query with top-k / top-p; returns (B, txt_len).

    queries: (B, Tq) token ids of equal length. Works for plain causal LMs and for
    value-head models (whose forward returns logits first). Reuses the KV cache
    when the model returns one.
    """
    input_ids, past, new_tokens = queries, None, []
    step_input = input_ids
    for _ in range(txt_len):
        try:
            # transformers 5 calls the KV cache `cache` (`past_key_values` is deprecated)
            out = model(input_ids=step_input, use_cache=True, **({} if past is None else {"cache": past}))
        except TypeError:  # a model without cache arguments: rerun the whole prefix
            out, past = model(input_ids), None
        logits = out[0] if isinstance(out, tuple) else out.logits
        past = out.get("cache") if hasattr(out, "get") else None
        next_logits = top_k_top_p_filtering(logits[:, -1, :], top_k=top_k, top_p=top_p)
        token = torch.multinomial(F.softmax(next_logits.float(), dim=-1), num_samples=1)  # (B, 1)
        new_tokens.append(token)
        input_ids = torch.cat([input_ids, token], dim=-1)
        step_input = token if past is not None else input_ids
    return torch.cat(new_tokens, dim=-1)


def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None) -> Tensor:
    """Standard normal noise of ``shape``; a list of generators seeds each batch row on its own.

    CPU generators with a non-CPU ``device`` draw on the CPU and move the result.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    layout = layout or torch.strided
    gens = generator if isinstance(generator, list) else [generator]
    gen_device = gens[0].device if gens[0] is not None else device
    draw_device = "cpu" if gen_device.type == "cpu" else device
    if gen_device.type != "cpu" and gen_device.type != device.type:
        raise ValueError(f"randn_tensor: cannot draw a {device} tensor from a {gen_device.type} generator.")
    if isinstance(generator, list) and len(generator) > 1:
        if len(generator) != shape[0]:
            raise ValueError(f"randn_tensor: got {len(generator)} generators for a batch of {shape[0]}.")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=draw_device, dtype=dtype, layout=layout) for g in generator]
        return torch.cat(rows).to(device)
    return torch.randn(shape, generator=gens[0], device=draw_device, dtype=dtype, layout=layout).to(device)
