"""Faster fp32 linear layers while a model generates on CPU: weights packed once per ``generate`` call.

What the decoding time of a small model on CPU goes to (``benchmarks/decode_bench.py``, 5.3M-parameter
GPT-2 of the benchmark fixtures, 32 rows x 32 new tokens, 2 cores): about 60% in the matrix products
(the LM head alone 20%), run by ``torch.addmm`` / ``F.linear``, i.e. MKL's sgemm, at 100-150 GFLOP/s.
The rest is the model's and transformers' per-token Python and small ops. oneDNN's linear with its
weight reordered ahead of time into oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``
+ ``_linear_pointwise``, what ``torch.compile`` with frozen weights calls) does the same fp32 products
2-3x faster for decode-sized inputs (a few dozen rows), because the weight is laid out once, not on
every call. During ``generate`` the weights do not change, so `packed_linears` packs every fp32
``nn.Linear`` / GPT-2 ``Conv1D`` once on entry and routes their no-grad fp32 CPU calls to the packed
weight; it restores the modules on exit. The reorder costs about 0.1 ms per weight matrix per call.

Same arithmetic, different summation order: outputs differ from ``F.linear``'s at fp32 rounding
(about 1e-6 relative), like any change of batch size or padding. A token drawn by inverse CDF changes
only when a uniform number lands within that rounding of a bin edge. Memory: one packed copy of each
weight while the call runs (the model's fp32 weights once more).

Calls with gradients enabled, under autocast, in another dtype or on another device run the module's own
forward. Set the environment variable ``RLFT_DECODE_LINEARS=torch`` to switch packing off.

`lean_decode` is the second half: transformers' sampling loop without its per-token bookkeeping, for the
settings rlft samples with (plain ancestral sampling, ``max_new_tokens``, ``min_new_tokens`` /
``min_length``, EOS and padding). Per step it makes the same model call as ``generate`` (the same
inputs, cache, positions, ``logits_to_keep``), masks EOS below the minimum length as transformers'
processors do and draws with the same sampler, so a seeded call returns the same tokens as
transformers' loop; it skips the logits-processor and stopping-criteria machinery, the ``isin`` /
``where`` / one-hot / ``argmax`` of each step, and the re-concatenation of the whole sequence.
`lean_decode_plan` takes a call only when every generation setting is one it implements (all others
equal transformers' defaults); anything else goes to ``model.generate``. ``RLFT_DECODE_LOOP=transformers``
switches it off.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

#: Environment variable that selects the linear kernel during generation: "packed" (default) or "torch".
DECODE_LINEARS_ENV = "RLFT_DECODE_LINEARS"
#: Environment variable that selects the sampling loop: "lean" (default, `lean_decode`) or "transformers".
DECODE_LOOP_ENV = "RLFT_DECODE_LOOP"


def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops (CPU builds with mkldnn)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def packing_enabled() -> bool:
    """`packing_available` and not switched off by ``RLFT_DECODE_LINEARS=torch``."""
    choice = os.environ.get(DECODE_LINEARS_ENV, "packed").lower()
    if choice not in ("packed", "torch"):
        raise ValueError(f"{DECODE_LINEARS_ENV}={choice!r} is not a choice: use 'packed' (default) or 'torch'.")
    return choice == "packed" and packing_available()


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def _plain_fp32_cpu(t: Tensor | None, dim: int) -> bool:
    """A plain (no subclass) fp32 CPU tensor with ``dim`` dimensions."""
    return type(t) in (Tensor, torch.nn.Parameter) and t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == dim


def _unpatched_linear(module: torch.nn.Module, conv1d) -> bool:
    """Exactly ``nn.Linear`` or GPT-2's ``Conv1D`` (not subclasses, whose forward may differ), whose forward no one
    has replaced on the instance yet (`packed_linears` here, `rlft.utils.onednn_linear.onednn_linears`)."""
    if type(module) is not torch.nn.Linear and (conv1d is None or type(module) is not conv1d):
        return False
    return "forward" not in module.__dict__


def _packable(module: torch.nn.Module, conv1d) -> bool:
    """`_unpatched_linear` with a plain fp32 CPU weight (and bias)."""
    if not _unpatched_linear(module, conv1d):
        return False
    weight, bias = module.weight, module.bias
    return _plain_fp32_cpu(weight, 2) and weight.numel() > 0 and (bias is None or _plain_fp32_cpu(bias, 1))


def _packed_forward(module: torch.nn.Module, packed: Tensor, bias):
    """A forward for ``module`` that uses ``packed`` (out, in) for no-grad fp32 CPU inputs, else the module's own."""
    own = type(module).forward.__get__(module)

    def forward(x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 2 \
                or torch.is_autocast_enabled("cpu") or x.shape[-1] != packed.shape[1]:
            return own(x)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")  # (..., out)

    return forward


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int | None = None) -> Iterator[int]:
    """Within the block, the fp32 ``nn.Linear`` / ``Conv1D`` layers of ``model`` run no-grad CPU calls with
    weights packed for oneDNN (see the module docstring); yields how many layers were packed (0 when
    packing is off or unavailable). ``rows``: the expected number of input rows per call (a hint for
    the weight layout, e.g. the decode batch size). The modules are restored on exit, also on error;
    the weights must not change inside the block.
    """
    patched: list[torch.nn.Module] = []
    if packing_enabled():
        conv1d = _conv1d_type()
        seen: dict[int, Tensor] = {}  # id(weight in (out, in) layout) -> packed: tied weights are packed once
        with torch.no_grad():
            for module in model.modules():
                if not _packable(module, conv1d):
                    continue
                # Conv1D stores (in, out) and computes x @ W + b; F.linear's layout is (out, in).
                weight = module.weight.t() if type(module) is not torch.nn.Linear else module.weight
                key = (id(module.weight), type(module) is torch.nn.Linear)
                if key not in seen:
                    seen[key] = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
                bias = module.bias.detach() if module.bias is not None else None
                module.forward = _packed_forward(module, seen[key], bias)
                patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


# ---------------------------------------------------------------- the sampling loop
#: Generation settings `lean_decode` implements (or that do not change what it computes). Every other
#: setting of the resolved generation config must equal transformers' default for a call to take it.
_HANDLED = frozenset({
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "eos_token_id", "pad_token_id", "bos_token_id",
    "decoder_start_token_id", "do_sample", "temperature", "top_k", "top_p", "num_beams", "num_return_sequences",
    "use_cache", "output_attentions", "output_hidden_states", "_from_model_config", "transformers_version",
})


@dataclass(frozen=True)
class LeanDecode:
    """One ``generate`` call as `lean_decode` runs it, resolved by `lean_decode_plan`."""

    model: torch.nn.Module  # the transformers causal LM (adapters, if any, inside it)
    input_ids: Tensor  # (B, W) prompts, padded
    attention_mask: Tensor  # (B, W) 1 on prompt tokens, 0 on padding
    max_new_tokens: int
    min_new_tokens: int  # EOS is masked while fewer new tokens than this were drawn
    min_length: int  # EOS is masked while the sequence (prompt columns included) is shorter than this
    eos_ids: Tensor | None  # (E,) tokens that finish a row; None: rows never finish early
    pad_id: int | None  # what finished rows get after their EOS


def decode_loop_enabled() -> bool:
    choice = os.environ.get(DECODE_LOOP_ENV, "lean").lower()
    if choice not in ("lean", "transformers"):
        raise ValueError(f"{DECODE_LOOP_ENV}={choice!r} is not a choice: use 'lean' (default) or 'transformers'.")
    return choice == "lean"


def _as_ids(value) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.tolist()
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def lean_decode_plan(model, kwargs: dict) -> LeanDecode | None:
    """`LeanDecode` for ``model.generate(**kwargs)`` when `lean_decode` computes exactly what it would with
    plain sampling (the caller checks that the sampling settings are plain), else None.

    Taken: a causal transformers model on CPU (alone, in a value-head wrapper, or under a non-prompt-learning
    peft adapter) whose ``generate`` is transformers' own (not overridden by its class or instance),
    ``input_ids`` and ``attention_mask`` of the same (B, W), ``max_new_tokens`` >= 1, and no other
    generation setting than those in `_HANDLED` away from transformers' defaults (no logits
    processors, stopping criteria, streamer, beams, several returned sequences, static cache, ...), and no
    process group of more than one process (transformers keeps every rank stepping there).
    """
    from ..trainer._model_helpers import unwrap_base_model

    if not decode_loop_enabled():
        return None
    target = unwrap_base_model(model)
    # transformers' helpers this mirrors (private; another transformers version without them keeps its own loop)
    needed = ("_prepare_generation_config", "_supports_default_dynamic_cache", "generation_config")
    if not all(hasattr(target, name) for name in needed) or getattr(target.config, "is_encoder_decoder", False):
        return None
    if not hasattr(target.generation_config, "_get_default_generation_params"):
        return None
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return None
    inner = getattr(model, "pretrained_model", None)  # a value-head wrapper's language model (maybe a peft model)
    if getattr(getattr(inner, "active_peft_config", None), "is_prompt_learning", False):
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return None
    if not target._supports_default_dynamic_cache() or target.device.type != "cpu":
        return None
    if target.training and getattr(target, "is_gradient_checkpointing", False):
        return None  # its forward may drop the cache in training mode; transformers' loop warns about it
    from transformers import GenerationMixin

    # a generate of its own (a model class's, or one set on the instance, e.g. to count or wrap calls) must run
    if any("generate" in vars(m) for m in (model, inner, target) if m is not None) \
            or getattr(type(target), "generate", None) is not GenerationMixin.generate:
        return None
    rest = dict(kwargs)
    input_ids, attention_mask = rest.pop("input_ids", None), rest.pop("attention_mask", None)
    if not (isinstance(input_ids, Tensor) and isinstance(attention_mask, Tensor) and input_ids.dim() == 2
            and attention_mask.shape == input_ids.shape and input_ids.shape[1] > 0 and input_ids.device.type == "cpu"):
        return None
    try:
        config, model_kwargs = target._prepare_generation_config(rest.pop("generation_config", None), **rest)
    except (TypeError, ValueError, AttributeError):
        return None  # transformers' own call will say what is wrong
    if model_kwargs:  # logits_processor, stopping_criteria, streamer, forward arguments, ...
        return None
    defaults = type(config)()
    defaults.update(**target.generation_config._get_default_generation_params(), defaults_only=True)
    wanted, default = config.to_dict(), defaults.to_dict()
    if any(wanted.get(key) != default.get(key) for key in set(wanted) | set(default) if key not in _HANDLED):
        return None
    if (config.num_beams or 1) != 1 or (config.num_return_sequences or 1) != 1 or config.use_cache is False \
            or config.output_attentions or config.output_hidden_states:
        return None
    if not isinstance(config.max_new_tokens, int) or config.max_new_tokens < 1:
        return None
    accepted = set(inspect.signature(target.forward).parameters)
    if "cache" not in accepted and "past_key_values" not in accepted:
        return None
    eos = _as_ids(config.eos_token_id)
    pad = config.pad_token_id
    if pad is None and eos:
        pad = eos[0]  # what transformers pads finished rows with then
    return LeanDecode(
        model=target, input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens or 0, min_length=config.min_length or 0,
        eos_ids=torch.tensor(eos, dtype=torch.long) if eos else None, pad_id=None if pad is None else int(_as_ids(pad)[0]),
    )


def lean_decode(plan: LeanDecode, draw: Callable[[Tensor], Tensor]) -> Tensor:
    """Sample up to ``plan.max_new_tokens`` tokens per row with ``draw`` (fp32 scores (B, V) -> tokens (B,)).

    Returns (B, W + n) token ids as ``generate`` does: the prompts, then n columns of new tokens, where
    n < max_new_tokens only when every row has finished; a row's columns after its EOS hold ``pad_id``.
    The model calls equal transformers' (`lean_decode_plan`): a prefill over the prompts, then one call
    per token with the KV cache, positions counted over the unpadded tokens, ``logits_to_keep=1``.
    """
    from transformers import DynamicCache

    model, ids, mask = plan.model, plan.input_ids, plan.attention_mask
    B, W = ids.shape
    N = plan.max_new_tokens
    accepted = set(inspect.signature(model.forward).parameters)
    cache_key = "cache" if "cache" in accepted else "past_key_values"
    out = torch.empty(B, W + N, dtype=torch.long)  # (B, W + N) prompts, then the drawn tokens
    out[:, :W] = ids
    # as generate: positions count the unpadded tokens (padding at 0); an all-ones mask is passed as None
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0) if "position_ids" in accepted else None  # (B, W)
    full_mask = None
    if not bool((mask == 1).all()):
        full_mask = torch.ones(B, W + N, dtype=mask.dtype)  # (B, W + N); column W + i is step i's token
        full_mask[:, :W] = mask
    call = {cache_key: DynamicCache(config=model.config.get_text_config(decoder=True)), "use_cache": True, "return_dict": True}
    if "logits_to_keep" in accepted:
        call["logits_to_keep"] = 1
    unfinished = torch.ones(B, dtype=torch.bool)  # (B,)
    eos = plan.eos_ids
    step_ids = ids
    n = 0
    with torch.no_grad():
        for i in range(N):
            width = W + i  # columns the model has seen after this call
            if i > 0:
                step_ids = out[:, width - 1 : width]  # (B, 1) the previous step's token
                positions = positions[:, -1:] + 1 if positions is not None else None
            inputs = dict(call, input_ids=step_ids.contiguous())
            if positions is not None:
                inputs["position_ids"] = positions
            if full_mask is not None:
                inputs["attention_mask"] = full_mask[:, :width]
            logits = model(**inputs).logits[:, -1].to(copy=True, dtype=torch.float32)  # (B, V)
            if eos is not None and (i < plan.min_new_tokens or width < plan.min_length):
                logits[:, eos] = float("-inf")  # transformers' MinNewTokens / MinLength processors
            token = draw(logits)  # (B,)
            if eos is not None:
                token = torch.where(unfinished, token, torch.full_like(token, plan.pad_id))
                unfinished &= ~torch.isin(token, eos)
            out[:, width] = token
            n = i + 1
            if eos is not None and not bool(unfinished.any()):
                break
    return out[:, : W + n]


__all__ = [
    "DECODE_LINEARS_ENV", "DECODE_LOOP_ENV", "LeanDecode", "decode_loop_enabled", "lean_decode", "lean_decode_plan",
    "packed_linears", "packing_available", "packing_enabled",
]
