"""rlft.utils.fused_gelu: GPT-2's GELU as torch's fused tanh GELU, against transformers' own formula."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.activations import NewGELUActivation

from rlft.utils import fused_gelu as fused_gelu_module
from rlft.utils.fused_gelu import fused_gelu


def _formula(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation written out (Hendrycks & Gimpel), independent of both implementations."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@pytest.fixture
def calls(monkeypatch):
    """Counts the fused forwards run."""
    count = [0]
    fused = fused_gelu_module.FusedGELU.forward

    def counting(self, x):
        count[0] += 1
        return fused(self, x)

    monkeypatch.setattr(fused_gelu_module.FusedGELU, "forward", counting)
    return count


def _kinds(model) -> list[str]:
    return [type(m).__name__ for m in model.modules() if type(m).__name__ in ("NewGELUActivation", "FusedGELU")]


def test_values_and_gradients_match_the_formula():
    x64 = torch.randn(64, 96, dtype=torch.float64) * 3
    x64[0, :4] = torch.tensor([0.0, -20.0, 20.0, 1e-4], dtype=torch.float64)
    act = torch.nn.Sequential(NewGELUActivation())
    x = x64.float().requires_grad_(True)
    with fused_gelu(act) as swapped:
        assert swapped == 1
        y = act(x)
        (y * torch.linspace(-1, 1, 96)).sum().backward()
    xr = x64.clone().requires_grad_(True)
    yr = _formula(xr)
    (yr * torch.linspace(-1, 1, 96, dtype=torch.float64)).sum().backward()
    assert torch.allclose(y.double(), yr, atol=1e-6, rtol=1e-6)
    assert torch.allclose(x.grad.double(), xr.grad, atol=1e-6, rtol=1e-6)


def test_gpt2_swaps_every_block_and_restores(model_path, calls):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2")).eval()
    n_layer = model.config.n_layer
    assert model.config.activation_function == "gelu_new"
    ids = torch.randint(5, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    with fused_gelu(model) as swapped:
        assert swapped == n_layer and _kinds(model) == ["FusedGELU"] * n_layer
        with fused_gelu(model) as again:  # nested: already swapped, left to the outer block
            assert again == 0
        assert _kinds(model) == ["FusedGELU"] * n_layer
        # transformers re-applies its hub kernels to NewGELUActivation modules on a train/eval switch
        model.train()
        model.eval()
        with torch.no_grad():
            fused = model(input_ids=ids).logits
        assert calls[0] == n_layer
        clone = copy.deepcopy(model)  # a copy made inside the block runs the fused GELU on its own modules
        with torch.no_grad():
            clone(input_ids=ids)
        assert calls[0] == 2 * n_layer
    assert torch.allclose(fused, plain, atol=1e-5)
    assert _kinds(model) == ["NewGELUActivation"] * n_layer
    with pytest.raises(RuntimeError), fused_gelu(model):
        raise RuntimeError("restored on error too")
    assert _kinds(model) == ["NewGELUActivation"] * n_layer
    model(input_ids=ids)
    assert calls[0] == 2 * n_layer


def test_other_activations_are_left_alone(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))  # SiLU
    with fused_gelu(model) as swapped:
        assert swapped == 0


def test_ppo_step_and_generation_run_it(model_path, pad_tokenizer, calls):
    from rlft import PPOConfig, PPOTrainer
    from rlft.models import AutoModelForCausalLMWithValueHead

    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    n_layer = model.pretrained_model.config.n_layer
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=2), model, tokenizer=pad_tokenizer)
    query = torch.tensor([5, 6, 7])
    response = trainer.generate(query, max_new_tokens=3, min_new_tokens=3, do_sample=True, return_prompt=False)[0]
    generated = calls[0]
    assert generated >= 3 * n_layer  # one call per block per decoded token (and the prompt's forward)
    calls[0] = 0
    trainer.step([query, query], [response, response], [torch.tensor(1.0), torch.tensor(0.0)])
    # every forward of the step: the policy's rollout (eval), the reference's, and 2 epochs x 1 minibatch of
    # updates (train: after transformers' train/eval switch, which re-applies its kernels to NewGELUActivation)
    assert calls[0] == 4 * n_layer
