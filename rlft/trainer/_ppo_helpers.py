"""Plumbing of `PPOTrainer` that is not the algorithm: the policy check, generation in batches,
the default collator and optimizer, forward-argument discovery, padding of chunked outputs, the
out-of-memory hint and the tracker's init arguments."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..models import SUPPORTED_ARCHITECTURES
from ..utils.faults import is_out_of_memory, out_of_memory_error
from ..utils.resumable import ResumableSampler
from ..utils.sampling_generate import generate as sampling_generate
from ._helpers import pad_with_mask
from ._model_helpers import unwrap_base_model
from ._ppo_inputs import InputLimits, check_context
from .ppo_config import PPOConfig


def collate(examples: list):
    """The default collator: dicts become a dict of lists (keeps variable-length tensors apart);
    anything else is collated as torch's default collation does (TRL 0.7's default), falling back
    to a plain list when the items cannot be stacked (ragged tensors)."""
    if isinstance(examples[0], dict):
        return {key: [example[key] for example in examples] for key in examples[0]}
    try:
        return torch.utils.data.default_collate(examples)
    except (RuntimeError, TypeError):
        return list(examples)


def check_policy(model, config: PPOConfig) -> None:
    """GAE needs a value-head model; a critic-free estimator takes any causal / seq2seq LM (warned once about a value head)."""
    if isinstance(model, SUPPORTED_ARCHITECTURES):
        if not config.uses_critic:
            warnings.warn(
                f"advantage_estimator={config.advantage_estimator!r} needs no critic: the model's value head is not "
                "trained (and not in the optimizer). Pass the plain model (e.g. AutoModelForCausalLM) to save its forward.",
                UserWarning, stacklevel=3,
            )
        return
    if not config.uses_critic and isinstance(model, torch.nn.Module) and hasattr(model, "config") and hasattr(model, "generate"):
        return
    raise ValueError(
        f"model must be a value-head model ({', '.join(c.__name__ for c in SUPPORTED_ARCHITECTURES)}) with "
        f"advantage_estimator='gae', got {type(model).__name__}. Wrap it: "
        "AutoModelForCausalLMWithValueHead.from_pretrained(model), or choose a critic-free estimator "
        "(PPOConfig(advantage_estimator='grpo' | 'dr_grpo' | 'rloo' | 'reinforce_pp')), which takes the plain model."
    )


def pad_right(t: Tensor, width: int) -> Tensor:
    """Zero-pad dim 1 of ``t`` to ``width``."""
    missing = width - t.shape[1]
    if missing == 0:
        return t
    pad_shape = list(t.shape)
    pad_shape[1] = missing
    return torch.cat([t, torch.zeros(pad_shape, dtype=t.dtype, device=t.device)], dim=1)


def cat_padded(parts: list[Tensor]) -> Tensor:
    """Concatenate chunks along dim 0, zero-padding dim 1 to the widest chunk (one chunk: itself, no copy)."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.shape[1] for p in parts)
    return torch.cat([pad_right(p, width) for p in parts])


def after_first(tokens: Tensor, eos_ids: set[int]) -> int:
    """Length of ``tokens`` up to and including the first EOS (all of it when there is none)."""
    if not eos_ids or tokens.numel() == 0:
        return tokens.shape[0]
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    hits = torch.nonzero(is_eos)
    return int(hits[0, 0]) + 1 if hits.numel() else tokens.shape[0]


@contextlib.contextmanager
def out_of_memory_hint(where: str, advice: list[str], cleanup: Optional[Callable[[], None]] = None):
    """Re-raise an out-of-memory error with the batch settings to lower (after ``cleanup``); others pass unchanged."""
    try:
        yield
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        if cleanup is not None:
            cleanup()  # no half-accumulated gradient may leak into the next step
        raise out_of_memory_error(err, where, advice) from err


def logits_to_keep(model, accepted: set[str], width: int, T: int, device) -> Union[Tensor, int, None]:
    """What to pass as ``logits_to_keep`` so that only the T action positions reach the LM head.

    The indices of the positions (width - T - 1 .. width - 2) where the model takes a tensor:
    the gathered hidden states are contiguous, so the head is one matmul even when its weight
    is frozen (the reference, a shared trunk, a LoRA base). A count (T + 1) keeps a strided
    view, which torch multiplies by a frozen weight as a batched matmul over one expanded copy
    of the weight per sequence: several times slower. None when the model has no such argument.
    """
    if "logits_to_keep" not in accepted:
        return None
    inner = unwrap_base_model(model)
    try:
        annotation = str(inspect.signature(inner.forward).parameters["logits_to_keep"].annotation)
    except (KeyError, TypeError, ValueError):
        annotation = ""
    if "Tensor" not in annotation:
        return T + 1
    return torch.arange(width - T - 1, width - 1, device=device)  # (T,) positions whose logits score the actions


#: Device types whose parameters the default optimizer updates with torch's fused Adam kernel.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def default_optimizer(params: list, lr: float) -> torch.optim.Optimizer:
    """Adam, TRL's default, as torch's fused kernel where every parameter allows it.

    ``torch.optim.Adam(params, lr=lr, fused=True)`` applies the update of TRL's per-parameter
    ``torch.optim.Adam(params, lr=lr)`` in one pass over all parameters (about 5x faster on CPU,
    where the per-parameter loop took about 10% of a 5M-parameter model's PPO step). Same formula,
    not the same floats: the kernel rounds differently (about 1e-7 relative per step), so a seeded
    run does not follow TRL's trajectory bit for bit. Pass ``optimizer=torch.optim.Adam(...)`` to
    PPOTrainer for the reference loop.

    Fused needs floating-point plain tensors on a device in `FUSED_ADAM_DEVICES`; otherwise
    (complex parameters, other devices, tensor subclasses) torch picks: foreach on CUDA, the
    per-parameter loop elsewhere. (Adam checks ``fused`` only at its first step, so this is decided here.)
    """
    params = list(params)
    fused = all(
        type(p) in (Tensor, torch.nn.Parameter) and p.device.type in FUSED_ADAM_DEVICES and torch.is_floating_point(p)
        for p in params
    )
    if fused and params:
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def accepted_kwargs(model) -> set[str]:
    """Forward arguments of the transformers model inside a wrapper (and peft) that we may pass."""
    inner = unwrap_base_model(model)
    try:
        return set(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return set()


def tracker_init_kwargs(config: PPOConfig) -> dict:
    kwargs = dict(config.tracker_kwargs)
    if config.log_with == "wandb":
        import os

        wandb_kwargs = dict(kwargs.get("wandb", {}))
        # Without credentials or network, log offline instead of failing the run.
        if not os.environ.get("WANDB_API_KEY") or os.environ.get("HF_HUB_OFFLINE") == "1":
            wandb_kwargs.setdefault("mode", os.environ.get("WANDB_MODE", "offline"))
        kwargs["wandb"] = wandb_kwargs
    return kwargs


def generate_responses(
    model, queries: list[Tensor], *, batch_size: int, pad_id: int, eos_ids: set[int], limits: InputLimits, device,
    length_sampler=None, return_prompt: bool = True, behaviour: Optional[tuple] = None, **generation_kwargs,
) -> list[Tensor]:
    """Sample one response per query, ``batch_size`` queries per `generate` call, with the model in eval mode.

    Causal models: queries left-padded; each output is the query plus its new tokens up to and
    including the first EOS (or only the new tokens with ``return_prompt=False``). Encoder-decoders:
    queries right-padded; each output starts with the decoder-start token.
    ``behaviour``: (a `BehaviourRecorder` on ``model``, a `BehaviourCache`, the policy's version) to
    record each response's behaviour log-probs (and values) in, keyed by the query and the new
    tokens (causal models only).
    """
    was_training = model.training
    model.eval()
    outputs: list[Tensor] = []
    try:
        for start in range(0, len(queries), batch_size):
            if length_sampler is not None:
                generation_kwargs["max_new_tokens"] = int(length_sampler())
            batch = [q.to(device=device, dtype=torch.long) for q in queries[start : start + batch_size]]
            check_context(batch, limits, generation_kwargs.get("max_new_tokens"))
            padding_side = "right" if limits.is_encoder_decoder else "left"
            input_ids, attention_mask = pad_with_mask(batch, pad_id, padding_side)
            width = input_ids.shape[1]
            record = behaviour is not None and not limits.is_encoder_decoder
            with behaviour[0].recording(width) if record else contextlib.nullcontext():
                generated = sampling_generate(model, input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs)
            recorded = behaviour[0].result(generated) if record else None  # ((n, new), (n, new) or None) or None
            for i, (query, row) in enumerate(zip(batch, generated)):
                if limits.is_encoder_decoder:
                    new = row  # starts with the decoder-start token; the prompt is not in it
                    cut = after_first(new[1:], eos_ids) + 1
                    outputs.append(new[:cut])
                    continue
                new = row[width:]
                new = new[: after_first(new, eos_ids)]
                outputs.append(torch.cat([query, new]) if return_prompt else new)
                if recorded is not None:
                    logprobs, values = recorded
                    n = new.shape[0]
                    behaviour[1].add(query, new, logprobs[i, :n], None if values is None else values[i, :n], behaviour[2])
    finally:
        model.train(was_training)
    return outputs


def build_dataloader(dataset, data_collator: Callable, config: PPOConfig, forward_params: set[str]) -> torch.utils.data.DataLoader:
    """`PPOTrainer.prepare_dataloader`: ``config.batch_size`` samples per batch, incomplete batches dropped,
    a `datasets.Dataset`'s columns the model does not take removed (``remove_unused_columns``)."""
    try:
        import datasets

        if isinstance(dataset, datasets.Dataset) and config.remove_unused_columns:
            dataset = _drop_unused_columns(dataset, forward_params | {"label", "query", "response"})
    except ImportError:
        pass
    if hasattr(dataset, "__len__") and len(dataset) < config.batch_size:
        warnings.warn(  # TRL 0.7 built the (empty) dataloader too; iterating it yields nothing
            f"The dataset has {len(dataset)} examples, fewer than PPOConfig.batch_size={config.batch_size}: the "
            "dataloader drops incomplete batches, so it yields nothing. Lower batch_size or add data.",
            UserWarning, stacklevel=3,
        )
    # Its own generator: starting an iterator must not draw from the global RNG (generation samples from it).
    generator = torch.Generator().manual_seed(config.seed)
    common = dict(batch_size=config.batch_size, collate_fn=data_collator, drop_last=True, generator=generator)
    if not hasattr(dataset, "__len__"):  # iterable datasets keep their own order; resuming skips batches
        return torch.utils.data.DataLoader(dataset, **common)
    return torch.utils.data.DataLoader(dataset, sampler=ResumableSampler(len(dataset), seed=config.seed), **common)


def _drop_unused_columns(dataset, keep: set[str]):
    drop = [c for c in dataset.column_names if c not in keep]
    columns = [c for c in dataset.column_names if c in keep]
    fmt = dataset.format
    dataset = dataset.remove_columns(drop)
    if fmt.get("type") is not None:
        dataset = dataset.with_format(type=fmt["type"], columns=[c for c in columns if c in dataset.column_names])
    return dataset
