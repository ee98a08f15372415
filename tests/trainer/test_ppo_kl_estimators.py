"""The KL that PPOTrainer.step logs (and puts into the rewards) against an independent computation:
each sample forwarded alone through the policy and the reference, with the estimator written out here.

Replaces the weak ``test_kl_estimators_run_and_are_logged`` of test_ppo_trainer.py, whose ``kind="kl"``
case asserted nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

Q_LENS, R_LENS = (3, 5, 2, 4), (4, 2, 5, 3)


def independent_kl(policy, reference, query, response, kind: str) -> float:
    """Sum over the response tokens of the per-token KL estimate, from unpadded single-sample forwards."""
    ids = torch.cat([query, response])[None]  # (1, Q + R)
    with torch.no_grad():
        logp = torch.log_softmax(policy(ids).logits[0].double(), -1)[len(query) - 1 : -1]  # (R, V): position t predicts t+1
        logq = torch.log_softmax(reference(ids).logits[0].double(), -1)[len(query) - 1 : -1]
    if kind == "full":  # exact KL(p || q) per position, over the vocabulary
        return float((logp.exp() * (logp - logq)).sum())
    diff = logp.gather(-1, response[:, None]).squeeze(-1) - logq.gather(-1, response[:, None]).squeeze(-1)  # (R,)
    per_token = {"kl": diff, "abs": diff.abs(), "mse": 0.5 * diff**2}[kind]  # k1, |k1|, k2 (Schulman 2020)
    return float(per_token.sum())


@pytest.mark.parametrize("kind", ["kl", "abs", "mse", "full"])
def test_logged_kl_matches_independent_computation(model_path, tokenizer, kind):
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    reference = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    config = PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, learning_rate=1e-2, kl_penalty=kind,
                       adap_kl_ctrl=False, init_kl_coef=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        trainer = PPOTrainer(config, model, reference, tokenizer)
    g = torch.Generator().manual_seed(0)
    queries = [torch.randint(5, 900, (n,), generator=g) for n in Q_LENS]
    responses = [torch.randint(5, 900, (n,), generator=g) for n in R_LENS]
    scores = [torch.tensor(1.0)] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a negative-KL warning is possible for kind="kl"
        trainer.step(queries, responses, scores)  # moves the policy away from the reference

        policy, ref = trainer.model.pretrained_model.eval(), reference.pretrained_model.eval()
        want = np.array([independent_kl(policy, ref, q, r, kind) for q, r in zip(queries, responses)])
        assert np.abs(want).max() > 1e-3  # the policy really moved, so a zero or sign error would show
        stats = trainer.step(queries, responses, scores)

    np.testing.assert_allclose(np.asarray(stats["objective/kl_dist"], dtype=np.float64), want, rtol=1e-4, atol=1e-6)
    assert float(stats["objective/kl"]) == pytest.approx(want.mean(), rel=1e-4, abs=1e-6)
    # the KL enters the rewards: non-score reward = -beta * per-token KL, averaged over kept tokens
    tokens = sum(R_LENS)
    assert float(stats["ppo/mean_non_score_reward"]) == pytest.approx(-0.3 * want.sum() / tokens, rel=1e-4, abs=1e-6)
