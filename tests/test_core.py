import random

import numpy as np
import pytest
import torch

from rlft.core import (
    WANDB_PADDING, LengthSampler, PPODecorators, add_suffix, average_torch_dicts, convert_to_scalar, flatten_dict,
    pad_to_size, randn_tensor, respond_to_batch, set_seed, stack_dicts, stats_to_np, top_k_top_p_filtering,
)


def test_set_seed_reproduces_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    set_seed(3)
    a = draw()
    set_seed(3)
    assert draw() == a


def test_length_sampler_range_and_seed():
    s = LengthSampler(2, 5)
    set_seed(0)
    draws = [s() for _ in range(200)]
    assert set(draws) == {2, 3, 4}
    set_seed(0)
    assert [s() for _ in range(200)] == draws
    with pytest.raises(ValueError, match="min_value < max_value"):
        LengthSampler(5, 5)


def test_flatten_and_scalar_helpers():
    flat = flatten_dict({"a": {"b": 1, "c": {"d": 2}}, "e": 3})
    assert flat == {"a/b": 1, "a/c/d": 2, "e": 3}
    with pytest.raises(ValueError, match="separator"):
        flatten_dict({"a/b": {"c": 1}})
    out = convert_to_scalar({"x": torch.tensor(2.0), "y": np.array([3.0]), "z": torch.ones(2)})
    assert out["x"] == 2.0 and out["y"] == 3.0 and isinstance(out["z"], torch.Tensor)
    assert add_suffix({"a": 1}, "_x") == {"a_x": 1}


def test_stack_and_average_dicts():
    stacked = stack_dicts([{"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([3.0])}])
    torch.testing.assert_close(stacked["a"], torch.tensor([[1.0, 2.0], [3.0, WANDB_PADDING]]))
    avg = average_torch_dicts([{"a": torch.tensor(1.0)}, {"a": torch.tensor(3.0)}])
    assert avg["a"].item() == 2.0
    np_stats = stats_to_np({"a": torch.tensor([1.0]).bfloat16(), "b": np.float32(2.0), "c": "text"})
    assert isinstance(np_stats["a"], np.ndarray) and np_stats["b"] == 2.0 and np_stats["c"] == "text"


def test_pad_to_size():
    t = torch.tensor([[1, 2]])
    torch.testing.assert_close(pad_to_size(t, 4, padding=0), torch.tensor([[1, 2, 0, 0]]))
    assert pad_to_size(t, 2) is t
    with pytest.raises(ValueError):
        pad_to_size(t, 1)


def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k = top_k_top_p_filtering(logits, top_k=2)
    assert torch.isinf(k[0, 2:]).all() and torch.isfinite(k[0, :2]).all()
    p = top_k_top_p_filtering(logits, top_p=0.7)  # 0.5 < 0.7 <= 0.8: keep the first two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    same = top_k_top_p_filtering(logits)
    torch.testing.assert_close(same, logits)


def test_respond_to_batch_shapes_and_value_head(model_path):
    from rlft import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    q = torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.manual_seed(0)
    out = respond_to_batch(model, q, txt_len=6)
    assert out.shape == (2, 6)
    # greedy via top_k=1 equals transformers' greedy decoding
    greedy = respond_to_batch(model.pretrained_model, q, txt_len=5, top_k=1)
    ref = model.pretrained_model.generate(q, max_new_tokens=5, do_sample=False, min_new_tokens=5)[:, 3:]
    torch.testing.assert_close(greedy, ref)


def test_ppo_decorators_context():
    PPODecorators.optimize_device_cache = True
    try:
        with PPODecorators.empty_device_cache():
            x = 1
        assert x == 1
    finally:
        PPODecorators.optimize_device_cache = False


def test_randn_tensor_per_row_generators():
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    a = randn_tensor((2, 3), generator=gens)
    b = torch.cat([torch.randn((1, 3), generator=torch.Generator().manual_seed(i)) for i in range(2)])
    torch.testing.assert_close(a, b)
    assert randn_tensor((2, 3), generator=torch.Generator().manual_seed(0)).shape == (2, 3)
