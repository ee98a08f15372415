"""A leaner gradient for a trainable input embedding that is tied to the LM head.

With tied weights, one (V, d) parameter gets two gradient contributions per backward: a dense
one from the LM head matmul and one from the embedding lookup. torch's dense embedding backward
builds the second as a fresh zero-filled (V, d) tensor with the looked-up rows added in, and the
autograd engine then adds the two into another fresh (V, d) tensor.

Asking the lookup for a sparse gradient (``nn.Embedding.sparse``) makes its contribution a
(tokens, d) list of rows, so the zero-filled (V, d) temporary is never built; the engine still
adds the rows to the dense LM-head gradient out of place (one (V, d) copy). The sum is the same
gradient (up to float summation order). Measured on CPU (docs/benchmarks.md): a small gain, as
filling fresh pages costs little outside the profiler; on GPU it is one vocabulary-sized
temporary fewer at the peak (1 GiB in fp32 for a 128k x 2048 tied model). The parameter's
``.grad`` is dense as before, because the dense LM-head contribution is part of it when the head
is in the loss; `densify_grad` covers the case where it is not (a loss that never reads the logits).

`lookup_grad_in_place` goes one step further on a single process: the lookup does not enter
autograd's sum at all. Its backward keeps the (tokens, d) gradient rows and, once the whole
backward has finished (and the LM head's dense gradient sits in ``.grad``), adds them to
``.grad`` in place with one ``index_add_``: no (V, d) copy. Measured on the `ppo` workload
(8192 x 256 tied weight), 3-8% more steps/s than the sparse path (docs/benchmarks.md). It
must not be used where gradients are reduced across processes during backward (DDP): the rows
arrive after the reduction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def tied_trainable_input_embedding(model: nn.Module) -> nn.Embedding | None:
    """The ``nn.Embedding`` whose trainable weight is also the LM head's weight, else None.

    ``model``: a transformers model, rlft value-head wrapper or peft model, not wrapped for
    distribution (pass ``accelerator.unwrap_model(model)``). None where the switch would not help
    or is not safe: untied or frozen embeddings, embeddings that already ask for sparse
    gradients, and weights that are not plain tensors (sharded or flattened parameters).
    """
    from ..trainer._model_helpers import unwrap_base_model

    inner = unwrap_base_model(model)
    get_in = getattr(inner, "get_input_embeddings", None)
    get_out = getattr(inner, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    try:
        emb, head = get_in(), get_out()
    except (NotImplementedError, AttributeError):
        return None
    if not isinstance(emb, nn.Embedding) or head is None or emb.sparse:
        return None
    weight = emb.weight
    if type(weight) is not nn.Parameter or not weight.requires_grad or weight.dim() != 2:
        return None
    if getattr(head, "weight", None) is not weight:
        return None
    return emb


@contextlib.contextmanager
def sparse_embedding_grad(embedding: nn.Embedding | None) -> Iterator[None]:
    """Forward passes inside record a sparse gradient for ``embedding``'s lookup (no-op for None).

    Only the forward needs to be inside: autograd records the choice when the lookup runs.
    """
    if embedding is None:
        yield
        return
    before = embedding.sparse
    embedding.sparse = True
    try:
        yield
    finally:
        embedding.sparse = before


def densify_grad(embedding: nn.Embedding | None) -> None:
    """Make ``embedding.weight.grad`` dense if only the sparse lookup gradient reached it.

    Optimizers such as Adam (fused or not) and gradient clipping refuse sparse gradients.
    """
    if embedding is None:
        return
    grad = embedding.weight.grad
    if grad is not None and grad.is_sparse:
        embedding.weight.grad = grad.to_dense()


class _LookupRows(torch.autograd.Function):
    """Identity on an embedding's (detached) output whose backward hands the gradient rows to the
    weight's ``.grad`` at the end of the backward pass (`lookup_grad_in_place`).

    anchor: an empty leaf that requires grad (it puts the function into the graph without an edge to
    the weight); output: (..., d) looked-up rows; ids: (...) their token ids.
    """

    @staticmethod
    def forward(ctx, anchor, output, ids, embedding):
        ctx.save_for_backward(ids)
        ctx.embedding = embedding
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        embedding = ctx.embedding
        ids = ids.reshape(-1)  # (N,)
        rows = grad.reshape(-1, grad.shape[-1])  # (N, d)

        def add_rows() -> None:  # after the whole backward: the LM head's dense gradient is in .grad by then
            weight = embedding.weight
            kept = rows.to(weight.dtype)
            if embedding.padding_idx is not None:  # as the dense lookup backward: no gradient for the padding row
                kept = kept.masked_fill((ids == embedding.padding_idx)[:, None], 0.0)
            if weight.grad is None:  # the LM head was not in the loss
                weight.grad = torch.zeros_like(weight)
            weight.grad.index_add_(0, ids, kept)

        torch.autograd.Variable._execution_engine.queue_callback(add_rows)
        return None, None, None, None


def _defer_lookup(module: nn.Embedding, args, output):
    anchor = torch.empty(0, device=output.device, requires_grad=True)
    return _LookupRows.apply(anchor, output.detach(), args[0], module)


@contextlib.contextmanager
def lookup_grad_in_place(embedding: nn.Embedding | None) -> Iterator[None]:
    """Forward passes inside add ``embedding``'s lookup gradient to its weight's ``.grad`` in place at the end of
    each backward (no-op for None). Same gradient as autograd's; single process only (see the module docstring).

    Embeddings that renormalise (``max_norm``) or scale by frequency get `sparse_embedding_grad` instead.
    """
    if embedding is None or embedding.max_norm is not None or embedding.scale_grad_by_freq:
        with sparse_embedding_grad(embedding):
            yield
        return
    handle = embedding.register_forward_hook(_defer_lookup)
    try:
        yield
    finally:
        handle.remove()


__all__ = ["densify_grad", "lookup_grad_in_place", "sparse_embedding_grad", "tied_trainable_input_embedding"]
