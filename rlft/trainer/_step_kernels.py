"""Which kernels the trainers' linear layers and GPT-2 GELUs run on while a step trains or evaluates: the one
choice, shared by PPOTrainer's ``step`` and the transformers-Trainer-based trainers' ``training_step`` /
``prediction_step`` (SFT, reward, DPO) and IterativeSFTTrainer's ``step``.

Every GPT-2 ``gelu_new`` activation runs as torch's fused tanh GELU (`rlft.utils.fused_gelu`: the same
formula in one kernel, swapped in as a module; rlft's generate does the same), also when the parameters are
sharded (the GELU has none, and a sharded run then computes what a 1-process run does); not for compiled
models (below).

The block routes each ``nn.Linear`` / GPT-2 ``Conv1D`` of the models through `rlft.utils.onednn_linear`
(oneDNN's inner product, forward and backward; equal to torch's MKL path to fp32 rounding; about 1.5x a
forward+backward of the benchmark GPT-2 on the benchmark CPU). A training step's backward runs inside the
block, so gradient checkpointing's recomputed forwards are routed too. They must be: a forward routed in the
block and recomputed after it fails in torch.utils.checkpoint ("Recomputed values ... have different
metadata": the routed layer saves its input zero-padded to `bucketed_rows`, the plain one does not). Calls under bf16 / fp16 autocast,
in other dtypes or on other devices run torch's own kernels (`onednn_linears` checks every call).
Nothing is routed:

- when the parameters are sharded (FSDP, DeepSpeed): their engines own the forwards;
- for encoder-decoder models: the tiny BART of tests/trainer/test_ppo_seq2seq_learning.py (lr 3e-2,
  Adam) gained 0.15 / 0.14 / 0.52 / 0.32 / 0.51 / 0.57 on seeds 0-5 with oneDNN, 0.46 / 0.66 / 0.52 /
  0.28 / 0.51 / 0.65 without. One forward/backward agrees to fp32 rounding, so this looks like Adam
  amplifying rounding, but it is not settled (docs/ppo_performance.md);
- for models compiled with ``torch.compile`` (a wrapper, or ``module.compile()`` anywhere in the model): a compiled
  graph never runs the routed forward (`onednn_linears` steps aside while dynamo traces), and swapping the
  layers' forwards would only make dynamo compile the model once more (measured: 5 s on the tiny test GPT-2);
- with the environment variable ``RLFT_ONEDNN_LINEARS=torch``.
"""

from __future__ import annotations

import contextlib

from torch import nn

from ..utils.fused_gelu import fused_gelu
from ..utils.onednn_linear import onednn_linears
from ._distributed import shards_parameters


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model`` is, or wraps (DDP, value head, peft, ``torch.compile``), an encoder-decoder transformers
    model: a module whose ``config.is_encoder_decoder`` is True, or a value-head wrapper that says so."""
    return any(
        getattr(m, "is_encoder_decoder", None) is True
        or getattr(getattr(m, "config", None), "is_encoder_decoder", None) is True
        for m in model.modules()
    )


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is, or holds, a ``torch.compile`` wrapper, or a module compiled in place (``module.compile()``)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return any(isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def step_kernels(accelerator, *models: nn.Module | None) -> contextlib.ExitStack:
    """A context manager that, for the block, fuses the GPT-2 GELUs of ``models`` and puts their large enough
    linear layers on oneDNN (None entries are skipped; wrapped models are fine): nothing for a compiled model,
    and no oneDNN when the accelerator shards parameters or for an encoder-decoder (see the module docstring).
    Nested blocks are harmless: a module already swapped is left as it is, and restored by the block that
    swapped it."""
    stack = contextlib.ExitStack()
    sharded = shards_parameters(accelerator)
    for model in models:
        if model is None or is_compiled(model):
            continue
        stack.enter_context(fused_gelu(model))  # a parameter-free module: sharding does not touch it
        if not sharded and not is_encoder_decoder(model):
            stack.enter_context(onednn_linears(model))
    return stack


class StepKernelsMixin:
    """For transformers-Trainer-based trainers (``class X(StepKernelsMixin, Trainer)``): transformers'
    ``training_step`` (the forward, the backward and gradient checkpointing's recomputed forwards) inside
    `step_kernels` for the models of `_step_models`."""

    def _step_models(self, model: nn.Module) -> tuple[nn.Module | None, ...]:
        """The models a step of ``model`` runs: the model itself; a trainer with a reference adds it."""
        return (model,)

    def training_step(self, model, inputs, num_items_in_batch=None):
        with step_kernels(self.accelerator, *self._step_models(model)):
            return super().training_step(model, inputs, num_items_in_batch)
