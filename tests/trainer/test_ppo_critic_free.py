"""Critic-free estimators in PPOTrainer's user-driven step(): GRPO, Dr. GRPO, RLOO, REINFORCE++ (issue 17).

The math is tested in tests/functional/test_critic_free.py; here the trainer: plain models, groups,
what each estimator feeds the loss, the KL term, the stats, and that each one learns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.core import set_seed

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
LOW_IDS = 200  # reward: the share of response tokens with an id below this (about 20% at random)


def _trainer(model_path, tokenizer, estimator="grpo", plain=True, k=2, **cfg):
    cfg.setdefault("batch_size", 4)
    cfg.setdefault("mini_batch_size", 2)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = (AutoModelForCausalLM if plain else AutoModelForCausalLMWithValueHead).from_pretrained(model_path("gpt2"))
    config = PPOConfig(advantage_estimator=estimator, num_generations=k, **cfg)
    return PPOTrainer(config, model, None, tokenizer)


def _groups(n_prompts=2, k=2, r_lens=(4, 2, 5, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 900, (3 + i,), generator=g) for i in range(n_prompts)]
    qs = [p for p in prompts for _ in range(k)]
    rs = [torch.randint(5, 900, (r_lens[i % len(r_lens)],), generator=g) for i in range(len(qs))]
    return qs, rs


# --------------------------------------------------------------------------- models and configs
def test_gae_still_needs_a_value_head(model_path, pad_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    with pytest.raises(ValueError, match="critic-free estimator"):
        PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2), model, None, pad_tokenizer)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_plain_model_steps_without_value_forward_or_loss(model_path, pad_tokenizer, estimator):
    trainer = _trainer(model_path, pad_tokenizer, estimator)
    assert not trainer.has_value_head
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    qs, rs = _groups()
    stats = trainer.step(qs, rs, [1.0, 0.0, 0.5, 2.0])
    assert not any(k.startswith("ppo/val/") for k in stats) and "ppo/loss/value" not in stats
    assert np.isfinite(stats["ppo/loss/total"])
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "no parameter moved"
    assert stats["ppo/group/reward_std"] == pytest.approx(np.mean([np.std([1.0, 0.0]), np.std([0.5, 2.0])]), rel=1e-5) or \
        stats["ppo/group/reward_std"] == pytest.approx(np.mean([np.std([1.0, 0.0], ddof=1), np.std([0.5, 2.0], ddof=1)]), rel=1e-5)
    assert stats["ppo/group/frac_zero_std"] == 0.0


def test_value_head_model_warns_once_and_its_head_stays(model_path, pad_tokenizer):
    with pytest.warns(UserWarning, match="value head is not trained"):
        trainer = _trainer(model_path, pad_tokenizer, "rloo", plain=False)
    head = {n: p.clone() for n, p in trainer.model.named_parameters() if n.startswith("v_head")}
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for n, p in trainer.model.named_parameters() if n.startswith("v_head"))
    qs, rs = _groups()
    trainer.step(qs, rs, [1.0, 0.0, 0.5, 2.0])
    for n, p in trainer.model.named_parameters():
        if n.startswith("v_head"):
            assert torch.equal(p, head[n]), n


def test_config_checks_groups():
    with pytest.raises(ValueError, match="num_generations >= 2"):
        PPOConfig(advantage_estimator="grpo", batch_size=4, mini_batch_size=2)
    with pytest.raises(ValueError, match="multiple of num_generations"):
        PPOConfig(advantage_estimator="rloo", num_generations=3, batch_size=4, mini_batch_size=2)
    with pytest.raises(ValueError, match="advantage_estimator must be one of"):
        PPOConfig(advantage_estimator="ppo2")
    with pytest.raises(ValueError, match="loss_aggregation must be one of"):
        PPOConfig(loss_aggregation="sum")
    PPOConfig(advantage_estimator="reinforce_pp", batch_size=4, mini_batch_size=2)  # no groups needed


def test_paper_defaults():
    assert PPOConfig().resolved_estimator_settings() == (True, 0.0, "token_mean")
    grpo = PPOConfig(advantage_estimator="grpo", num_generations=2, batch_size=4, mini_batch_size=2)
    assert grpo.resolved_estimator_settings() == (False, 0.04, "seq_mean_token_mean")
    dr = PPOConfig(advantage_estimator="dr_grpo", num_generations=2, batch_size=4, mini_batch_size=2)
    assert dr.resolved_estimator_settings() == (False, 0.0, "seq_mean_token_sum_norm")
    rloo = PPOConfig(advantage_estimator="rloo", num_generations=2, batch_size=4, mini_batch_size=2, kl_loss_coef=0.1)
    assert rloo.resolved_estimator_settings() == (True, 0.1, "token_mean")


def test_step_rejects_mixed_queries_within_a_group(model_path, pad_tokenizer):
    trainer = _trainer(model_path, pad_tokenizer, "grpo")
    qs, rs = _groups()
    qs[1] = qs[1].clone()
    qs[1][0] += 1
    with pytest.raises(ValueError, match=r"samples 0\.\.1 form group 0 .* num_return_sequences=2"):
        trainer.step(qs, rs, [1.0, 0.0, 0.5, 2.0])


def test_generate_returns_k_samples_per_query_grouped(model_path, pad_tokenizer):
    trainer = _trainer(model_path, pad_tokenizer, "grpo")
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    out = trainer.generate(prompts, num_return_sequences=2, return_prompt=True, do_sample=True, max_new_tokens=4,
                           eos_token_id=None)
    assert len(out) == 4
    for i, r in enumerate(out):
        p = prompts[i // 2]
        assert torch.equal(r[: len(p)], p) and len(r) == len(p) + 4
    single = trainer.generate(prompts[0], num_return_sequences=3, do_sample=True, max_new_tokens=2, eos_token_id=None)
    assert isinstance(single, list) and len(single) == 3


# --------------------------------------------------------------------------- what the estimators compute
def _advantages(trainer, rewards, mask):
    values = torch.zeros_like(rewards)
    return trainer.compute_advantages(values, rewards, mask)


def test_compute_advantages_group_estimators_against_a_loop(model_path, pad_tokenizer):
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 2.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    seq = [1.0, 3.0, 2.0, 2.0]  # sequence rewards
    for est in ("grpo", "dr_grpo", "rloo"):
        trainer = _trainer(model_path, pad_tokenizer, est)
        _, adv, ret = _advantages(trainer, rewards, mask)
        for i in range(4):
            g = seq[(i // 2) * 2 : (i // 2) * 2 + 2]
            other = g[1 - i % 2]
            expected = {"dr_grpo": seq[i] - np.mean(g), "rloo": seq[i] - other}.get(est)
            if est == "grpo":
                std = np.std(g, ddof=1)
                expected = (seq[i] - np.mean(g)) / (std + 1e-4)
            kept = mask[i].bool()
            assert torch.allclose(adv[i][kept], torch.full((int(kept.sum()),), float(expected)), atol=1e-4), (est, i)
            assert torch.all(adv[i][~kept] == 0)
            assert torch.allclose(ret[i][kept], torch.full((int(kept.sum()),), seq[i]))


def test_compute_advantages_reinforce_pp_is_normalised_returns_to_go(model_path, pad_tokenizer):
    trainer = _trainer(model_path, pad_tokenizer, "reinforce_pp", k=1)
    rewards = torch.tensor([[-0.1, -0.2, 1.0, 0.0], [0.3, -0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    _, adv, ret = _advantages(trainer, rewards, mask)
    expected_ret = [[0.7, 0.8, 1.0], [-0.2, -0.5]]  # returns-to-go with gamma = 1
    flat = [x for row in expected_ret for x in row]
    mean, std = np.mean(flat), np.std(flat, ddof=1)  # masked whitening uses the unbiased variance (as TRL's)
    for i, row in enumerate(expected_ret):
        assert torch.allclose(ret[i, : len(row)], torch.tensor(row), atol=1e-6)
        assert torch.allclose(adv[i, : len(row)], torch.tensor([(x - mean) / std for x in row], dtype=torch.float32), atol=1e-3)
        assert torch.all(adv[i, len(row):] == 0)


def test_kl_in_reward_only_where_the_estimator_keeps_it(model_path, pad_tokenizer):
    scores = torch.tensor([1.0, 2.0, 0.0, 0.0])
    logp = torch.tensor([[-1.0, -2.0], [-1.0, -1.0], [-0.5, -0.5], [-3.0, -1.0]])
    ref = torch.zeros_like(logp)
    mask = torch.ones_like(logp)
    grpo = _trainer(model_path, pad_tokenizer, "grpo")
    rewards, non_score, kls = grpo.compute_rewards(scores, logp, ref, mask)
    assert torch.equal(kls, logp) and torch.all(non_score == 0)
    assert torch.equal(rewards.sum(1), scores)
    rloo = _trainer(model_path, pad_tokenizer, "rloo", init_kl_coef=0.5, adap_kl_ctrl=False)
    rewards, non_score, _ = rloo.compute_rewards(scores, logp, ref, mask)
    assert torch.allclose(non_score, -0.5 * logp) and torch.allclose(rewards.sum(1), scores - 0.5 * logp.sum(1))


def test_first_minibatch_ratio_is_exactly_one_and_kl_loss_starts_at_zero(model_path, pad_tokenizer):
    trainer = _trainer(model_path, pad_tokenizer, "grpo", batch_size=4, mini_batch_size=4, ppo_epochs=1)
    qs, rs = _groups()
    stats = trainer.step(qs, rs, [1.0, 0.0, 0.5, 2.0])
    # ratio 1 on every kept token: the masked means of log(ratio) and its square are exactly 0
    assert stats["ppo/policy/policykl"] == 0.0 and stats["ppo/policy/approxkl"] == 0.0
    assert stats["ppo/loss/kl"] == 0.0  # k3 KL of the policy to itself (the reference is a copy)
    assert stats["ppo/policy/clipfrac"] == 0.0


def test_kl_loss_term_pulls_back_to_the_reference(model_path, pad_tokenizer):
    """Move the policy away, then give every group equal scores (zero advantages): only the k3 KL term
    acts, and it shrinks towards 0; with kl_loss_coef=0 there is no KL term."""
    for coef in (1.0, 0.0):
        set_seed(0)
        trainer = _trainer(model_path, pad_tokenizer, "grpo", kl_loss_coef=coef, learning_rate=1e-3, ppo_epochs=2)
        qs, rs = _groups()
        for _ in range(3):
            trainer.step(qs, rs, [1.0, 0.0, 0.5, 2.0])
        kl = [trainer.step(qs, rs, [1.0, 1.0, 2.0, 2.0]).get("ppo/loss/kl") for _ in range(5)]
        if coef:
            assert kl[0] > 0.01 and kl[-1] < 0.2 * kl[0], kl
        else:
            assert kl == [None] * 5


def test_cliprange_high_lets_ratios_rise_further(model_path, pad_tokenizer):
    """DAPO's clip-higher: with a large upper clip fewer tokens are clipped than with the symmetric range."""
    fracs = {}
    for high in (None, 10.0):
        set_seed(0)
        trainer = _trainer(model_path, pad_tokenizer, "dr_grpo", cliprange_high=high, learning_rate=5e-2, ppo_epochs=4,
                           mini_batch_size=4)
        qs, rs = _groups()
        stats = trainer.step(qs, rs, [1.0, 0.0, 0.0, 2.0])
        fracs[high] = stats["ppo/policy/clipfrac"]
    assert fracs[10.0] < fracs[None], fracs


# --------------------------------------------------------------------------- learning
def _learn(trainer, steps, *, prompts=4, k=4, new_tokens=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        ps = [torch.randint(5, 900, (4,), generator=g) for _ in range(prompts)]
        rs = trainer.generate(ps, num_return_sequences=k, return_prompt=False, batch_size=prompts, do_sample=True,
                              top_k=0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None)
        qs = [p for p in ps for _ in range(k)]
        scores = [(r < LOW_IDS).float().mean() for r in rs]
        trainer.step(qs, rs, scores)
        history.append(torch.stack(scores).mean().item())
    return history


@pytest.mark.slow
@pytest.mark.parametrize("estimator,lora", [(e, False) for e in ESTIMATORS] + [("grpo", True), ("reinforce_pp", True)],
                         ids=[f"full-{e}" for e in ESTIMATORS] + ["lora-grpo", "lora-reinforce_pp"])
def test_each_estimator_learns_a_programmatic_reward(tmp_path, tokenizer, estimator, lora):
    """A plain causal LM (untied head, as in test_ppo_learning.py) learns to emit low token ids.

    Reward at random is about 0.2; the bar is +0.15 over 25 steps of 16 samples (4 prompts x 4).
    """
    from rlft.testing.tiny import build_model

    set_seed(0)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    build_model("gpt2", tokenizer, tmp_path / "untied", seed=0, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "untied")
    if lora:
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                           target_modules=["c_attn", "c_proj", "c_fc", "lm_head"]))
    config = PPOConfig(advantage_estimator=estimator, num_generations=4 if estimator != "reinforce_pp" else 1,
                       batch_size=16, mini_batch_size=8, learning_rate=1e-2 if lora else 3e-3, ppo_epochs=2,
                       init_kl_coef=0.01, adap_kl_ctrl=False, seed=0)
    trainer = PPOTrainer(config, model, None, tokenizer)
    assert (trainer.ref_model is None) == lora
    history = _learn(trainer, 25)
    assert np.mean(history[-5:]) > np.mean(history[:5]) + 0.15, history


# --------------------------------------------------------------------------- one update: one policy forward
@pytest.mark.parametrize("estimator,plain", [("grpo", True), ("rloo", True), ("gae", False)])
def test_single_update_reuses_its_forward_and_matches_the_recompute_path(model_path, pad_tokenizer, estimator, plain):
    """ppo_epochs=1 and one minibatch: the rollout reads the update's forward (2 forwards per step, not 3)
    and the update equals the one of the path that recomputes the rollout in a no-grad forward."""
    results = {}
    for reuse in (True, False):
        calls = []

        class Counting(PPOTrainer):
            def batched_forward_pass(self, *args, **kwargs):
                calls.append(torch.is_grad_enabled())
                return super().batched_forward_pass(*args, **kwargs)

        set_seed(0)
        if pad_tokenizer.pad_token is None:
            pad_tokenizer.pad_token = pad_tokenizer.eos_token
        model = (AutoModelForCausalLM if plain else AutoModelForCausalLMWithValueHead).from_pretrained(model_path("gpt2"))
        config = PPOConfig(advantage_estimator=estimator, num_generations=2 if estimator != "gae" else 1, batch_size=4,
                           mini_batch_size=4, ppo_epochs=1, reuse_update_forward=reuse, learning_rate=1e-3, seed=0)
        # SGD: Adam's first step is lr * sign(gradient), which float rounding flips for near-zero gradients
        sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        trainer = Counting(config, model, None, pad_tokenizer, optimizer=sgd)
        qs, rs = _groups()
        stats = trainer.step(qs, rs, [1.0, 0.0, 0.5, 2.0])
        results[reuse] = ({n: p.detach().clone() for n, p in trainer.model.named_parameters()}, stats, calls)
    (p_reuse, s_reuse, c_reuse), (p_re, s_re, c_re) = results[True], results[False]
    assert c_reuse == [True, False] and c_re == [False, False, True]
    assert s_reuse["ppo/policy/policykl"] == 0.0 and s_reuse["ppo/policy/approxkl"] == 0.0
    for name in p_re:
        torch.testing.assert_close(p_reuse[name], p_re[name], rtol=1e-5, atol=1e-6, msg=name)
    for key in ("objective/kl", "ppo/loss/policy", "ppo/mean_scores"):
        assert s_reuse[key] == pytest.approx(s_re[key], rel=1e-4, abs=1e-6), key
