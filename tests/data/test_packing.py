"""Padding-free packing: bin packing by hand, layout round trips, and packed logits == padded logits."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.data.packing import NO_SEQUENCE, first_fit_decreasing, pack_padded, packed_attention_is_exact


def test_first_fit_decreasing_by_hand():
    # lengths 5, 2, 4, 1, 3 into capacity 5: 5 | 4+1 | 3+2  (longest first, first bin with room)
    assert first_fit_decreasing([5, 2, 4, 1, 3], 5) == [[0], [2, 3], [4, 1]]
    assert first_fit_decreasing([3, 3, 3], 3) == [[0], [1], [2]]


def test_pack_padded_right_padding_by_hand():
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 0, 0, 0]])
    mask = (ids != 0).long()
    packed = pack_padded(ids, mask, pad_token_id=0)
    # lengths 3, 2, 1 into width 4: [seq0 + seq2], [seq1 + tail]
    assert packed.input_ids.tolist() == [[1, 2, 3, 6], [4, 5, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert packed.seq.tolist() == [[0, 0, 0, 2], [1, 1, NO_SEQUENCE, NO_SEQUENCE]]
    assert packed.pos.tolist() == [[0, 1, 2, 0], [0, 1, 0, 0]]
    assert packed.starts.tolist() == [[True, False, False, True], [True, False, False, False]]


def test_pack_padded_left_padding_and_gather_round_trip():
    ids = torch.tensor([[0, 0, 7, 8], [0, 9, 10, 11], [0, 0, 0, 12]])
    mask = (ids != 0).long()
    packed = pack_padded(ids, mask, pad_token_id=0)
    assert packed.input_ids.shape[0] == 2
    values = torch.arange(12.0).reshape(3, 4)
    moved = packed.gather(values, fill=-1.0)
    # every real token's value arrives once, at its token
    assert sorted(moved[packed.kept].tolist()) == sorted(values[mask.bool()].tolist())
    assert torch.equal(packed.gather(ids, 0)[packed.kept], packed.input_ids[packed.kept])
    assert (moved[~packed.kept] == -1).all()


def test_pack_padded_declines_when_nothing_is_saved_or_mask_has_holes():
    full = torch.ones(3, 4, dtype=torch.long)
    assert pack_padded(full, full, 0) is None  # three full rows cannot become fewer
    holes = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0]])
    assert pack_padded(holes, holes, 0) is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_logits_equal_padded_logits(model_path, arch):
    model = AutoModelForCausalLM.from_pretrained(model_path(arch)).eval()
    g = torch.Generator().manual_seed(0)
    lengths = [9, 3, 5, 2, 6]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 500, (n,), generator=g)
        mask[i, :n] = 1
    packed = pack_padded(ids, mask, pad_token_id=0)
    assert packed.input_ids.shape[0] < len(lengths)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits  # the straightforward forward
        # use_cache=False: with a cache, transformers builds a plain causal mask and the sequences see each other
        fast = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits
    expected = packed.gather(padded, 0.0)
    torch.testing.assert_close(fast[packed.kept], expected[packed.kept], atol=1e-4, rtol=1e-4)
    assert packed_attention_is_exact(model)


class _IgnoresPositions(torch.nn.Module):
    """A model that drops position_ids: packed sequences would see each other."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_packed_attention_check_rejects_a_model_that_ignores_position_ids(model_path):
    model = _IgnoresPositions(AutoModelForCausalLM.from_pretrained(model_path("gpt2")))
    model.train()
    state = torch.random.get_rng_state()
    assert not packed_attention_is_exact(model)
    assert model.training  # mode restored
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
