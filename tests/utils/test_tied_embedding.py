"""The sparse and the in-place lookup gradients of a tied embedding give the dense path's gradient and updates."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from rlft.utils.tied_embedding import (
    densify_grad,
    lookup_grad_in_place,
    sparse_embedding_grad,
    tied_trainable_input_embedding,
)


def _causal(model_path, arch="gpt2"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path(arch))


def _grads(model, emb, ids, loss_of, sparse: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with sparse_embedding_grad(emb if sparse else None):
        out = model(input_ids=ids)
    loss_of(out).backward()
    densify_grad(emb if sparse else None)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sparse_lookup_gradient_equals_the_dense_one(model_path, arch):
    model = _causal(model_path, arch)
    emb = tied_trainable_input_embedding(model)
    assert emb is model.get_input_embeddings() and emb.weight is model.get_output_embeddings().weight
    ids = torch.tensor([[5, 6, 7, 5, 9, 5], [11, 12, 12, 14, 15, 16]])  # repeated ids: rows that must be summed

    def loss_of(out):
        return torch.log_softmax(out.logits, -1)[..., 3].sum() + (out.logits[:, -1] ** 2).mean()

    dense = _grads(model, emb, ids, loss_of, sparse=False)
    sparse = _grads(model, emb, ids, loss_of, sparse=True)
    assert dense.keys() == sparse.keys()
    weight_name = next(n for n, p in model.named_parameters() if p is emb.weight)
    assert not sparse[weight_name].is_sparse
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-6, rtol=1e-5)
    assert emb.sparse is False  # the switch is undone after the forward


def test_a_loss_without_the_head_still_leaves_a_dense_gradient(model_path):
    model = _causal(model_path)
    emb = tied_trainable_input_embedding(model)
    ids = torch.tensor([[5, 6, 7, 8]])

    def loss_of(out):  # only the embedding lookup reaches the loss: the gradient is all sparse rows
        return model.get_input_embeddings()(ids).pow(2).sum()

    model.zero_grad(set_to_none=True)
    with sparse_embedding_grad(emb):
        loss_of(None).backward()
    assert emb.weight.grad.is_sparse
    densify_grad(emb)
    assert not emb.weight.grad.is_sparse
    expected = torch.zeros_like(emb.weight)
    expected[ids[0]] = 2 * emb.weight.detach()[ids[0]]
    torch.testing.assert_close(emb.weight.grad, expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_in_place_lookup_gradient_equals_the_dense_one_over_accumulated_backwards(model_path, arch):
    model = _causal(model_path, arch)
    emb = tied_trainable_input_embedding(model)
    ids = torch.tensor([[5, 6, 7, 5, 9, 5], [11, 12, 12, 14, 15, 16]])  # repeated ids: rows that must be summed

    def loss_of(out):
        return torch.log_softmax(out.logits, -1)[..., 3].sum() + (out.logits[:, -1] ** 2).mean()

    grads = {}
    for mode, context in (("dense", lambda: contextlib.nullcontext()), ("in place", lambda: lookup_grad_in_place(emb))):
        model.zero_grad(set_to_none=True)
        for scale in (1.0, -0.5):  # two backwards into the same .grad, as gradient accumulation does
            with context():
                out = model(input_ids=ids)
            (scale * loss_of(out)).backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["dense"].keys() == grads["in place"].keys()
    for name in grads["dense"]:
        torch.testing.assert_close(grads["in place"][name], grads["dense"][name], atol=1e-6, rtol=1e-5)
    assert not emb._forward_hooks  # the hook is removed after the forward


def test_in_place_lookup_leaves_the_padding_row_to_the_head_alone():
    """An embedding with ``padding_idx`` (the tiny test models have none): the dense lookup gives that row no
    gradient, only the LM head does; the in-place rows must do the same."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, padding_idx=0)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    ids = torch.tensor([[0, 3, 3, 0, 7]])
    grads = []
    for context in (contextlib.nullcontext, lambda: lookup_grad_in_place(emb)):
        emb.weight.grad = None
        with context():
            hidden = emb(ids)
        torch.log_softmax(head(torch.tanh(hidden)), -1)[..., 2].sum().backward()
        grads.append(emb.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-6)


def test_in_place_lookup_without_the_head_in_the_loss(model_path):
    model = _causal(model_path)
    emb = tied_trainable_input_embedding(model)
    ids = torch.tensor([[5, 6, 7, 5]])
    model.zero_grad(set_to_none=True)
    with lookup_grad_in_place(emb):
        rows = emb(ids)
    rows.pow(2).sum().backward()
    expected = torch.zeros_like(emb.weight)
    expected.index_add_(0, ids[0], 2 * emb.weight.detach()[ids[0]])  # id 5 twice: its rows add up
    torch.testing.assert_close(emb.weight.grad, expected)


def test_untied_frozen_and_peft_embeddings_are_left_alone(model_path):
    model = _causal(model_path)
    untied = copy.deepcopy(model)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    assert tied_trainable_input_embedding(untied) is None
    frozen = copy.deepcopy(model)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert tied_trainable_input_embedding(frozen) is None
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    assert tied_trainable_input_embedding(adapted) is None  # the base embedding is frozen under LoRA
    with sparse_embedding_grad(None):  # no-op
        pass


def test_ppo_step_with_the_tied_lookup_gradient_matches_the_dense_path(model_path, pad_tokenizer):
    """The trainer's default on one process: the in-place lookup gradient (`PPOTrainer._tied_lookup_grad`)."""
    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    def run(use_sparse: bool):
        torch.manual_seed(0)
        model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
        trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, seed=0), model, None, pad_tokenizer)
        assert trainer._tied_embedding is not None  # the tiny gpt2 ties its head to the embedding
        if not use_sparse:
            trainer._tied_embedding = None
        queries = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11, 12, 13]), torch.tensor([14])]
        responses = [torch.tensor([20, 21, 22]), torch.tensor([23, 24, 25, 26]), torch.tensor([27, 5]), torch.tensor([28, 29, 30])]
        scores = [torch.tensor(1.0), torch.tensor(-0.5), torch.tensor(0.25), torch.tensor(2.0)]
        before = trainer.model.pretrained_model.get_input_embeddings().weight.detach().clone()
        trainer.step(queries, responses, scores)
        after = trainer.model.pretrained_model.get_input_embeddings().weight.detach().clone()
        return before, after, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    before, after_dense, dense = run(False)
    _, _, sparse = run(True)
    assert not torch.equal(after_dense, before)  # the embedding did train
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-5, rtol=1e-4)
