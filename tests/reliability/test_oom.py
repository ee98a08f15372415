"""Out of memory during a step or a generation: the error says which batch settings to lower,
and no half-accumulated gradient survives into the next step."""

import pytest
import torch

from rlft.utils.faults import is_out_of_memory, out_of_memory_error

from ._ppo_helpers import make_ppo


def batch(n=4):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(5, 900, (3,), generator=g) for _ in range(n)], [torch.randint(5, 900, (4,), generator=g) for _ in range(n)]


def _fail_in_training(trainer, error, after_calls=0):
    """Make the value head raise ``error`` in train mode (the PPO epochs) after ``after_calls`` good calls."""
    head = trainer.model.v_head
    real = head.forward
    calls = {"n": 0}

    def forward(hidden):
        if head.training:
            calls["n"] += 1
            if calls["n"] > after_calls:
                raise error
        return real(hidden)

    head.forward = forward


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes."),
], ids=["cuda", "cpu"])
def test_step_oom_names_the_settings_and_drops_gradients(model_path, tokenizer, error):
    trainer = make_ppo(model_path, tokenizer, scheduler=False, gradient_accumulation_steps=2, mini_batch_size=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    _fail_in_training(trainer, error, after_calls=1)  # the first minibatch of the window has already backpropagated
    with pytest.raises(type(error)) as info:
        trainer.step(*batch(), [1.0, 0.0, 0.5, 1.0])
    message = str(info.value)
    assert "Out of memory in PPOTrainer.step" in message
    assert "mini_batch_size (now 1" in message and "gradient_accumulation_steps (now 2)" in message
    assert "batch_size (now 4)" in message and "max_new_tokens" in message and "longest query + response now 7" in message
    assert info.value.__cause__ is error
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.grad is None or not p.grad.any(), name  # the window's partial gradients are gone
    assert trainer.current_step == 0


def test_other_errors_pass_unchanged(model_path, tokenizer):
    trainer = make_ppo(model_path, tokenizer, scheduler=False)
    error = RuntimeError("some shape problem")
    _fail_in_training(trainer, error)
    with pytest.raises(RuntimeError) as info:
        trainer.step(*batch(), [1.0, 0.0, 0.5, 1.0])
    assert info.value is error


def test_generate_oom_names_generate_settings(model_path, tokenizer):
    trainer = make_ppo(model_path, tokenizer, scheduler=False)
    policy = trainer.model.pretrained_model

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    policy.generate = boom
    with pytest.raises(torch.OutOfMemoryError, match=r"generate\(batch_size=...\) \(now 3\).*max_new_tokens \(now 8\)"):
        trainer.generate(batch()[0], batch_size=3, max_new_tokens=8)


def test_oom_detection():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only the types torch raises
    err = out_of_memory_error(MemoryError(), "x", ["a (now 1)"])
    assert isinstance(err, MemoryError) and "Lower, in this order: a (now 1)" in str(err)
