import inspect
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer
from rlft.core import set_seed

TRL_STAT_KEYS = """objective/kl objective/kl_dist objective/logprobs objective/ref_logprobs objective/kl_coef
objective/entropy ppo/mean_non_score_reward ppo/mean_scores ppo/std_scores tokens/queries_len_mean
tokens/queries_len_std tokens/queries_dist tokens/responses_len_mean tokens/responses_len_std tokens/responses_dist
ppo/loss/policy ppo/loss/value ppo/loss/total ppo/policy/entropy ppo/policy/approxkl ppo/policy/policykl
ppo/policy/clipfrac ppo/policy/advantages ppo/policy/advantages_mean ppo/policy/ratio ppo/returns/mean
ppo/returns/var ppo/val/vpred ppo/val/error ppo/val/clipfrac ppo/val/mean ppo/val/var ppo/val/var_explained
ppo/learning_rate time/ppo/forward_pass time/ppo/compute_rewards time/ppo/compute_advantages
time/ppo/optimize_step time/ppo/calc_stats time/ppo/total""".split()


#: Fields rlft adds after TRL's 47 (non-finite policy, checkpoint retention, critic-free estimators), with their defaults.
RLFT_PPO_FIELDS = {"skip_nonfinite_steps": True, "max_consecutive_nonfinite_steps": 5, "save_total_limit": None,
                   "advantage_estimator": "gae", "num_generations": 1, "kl_in_reward": None, "kl_loss_coef": None,
                   "loss_aggregation": None, "loss_max_tokens": None, "reuse_update_forward": True, "cliprange_high": None,
                   "rollout_logprobs": None, "mixed_precision": None}


def make_trainer(model_path, tokenizer, arch="gpt2", ref=False, **cfg):
    cfg.setdefault("batch_size", 4)
    cfg.setdefault("mini_batch_size", 2)
    cls = AutoModelForSeq2SeqLMWithValueHead if arch in ("t5", "bart") else AutoModelForCausalLMWithValueHead
    model = cls.from_pretrained(model_path(arch))
    ref_model = cls.from_pretrained(model_path(arch)) if ref else None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return PPOTrainer(PPOConfig(**cfg), model, ref_model, tokenizer)


def batch(n=4, q_lens=(3, 5, 2, 4), r_lens=(4, 2, 5, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    qs = [torch.randint(5, 900, (q_lens[i % len(q_lens)],), generator=g) for i in range(n)]
    rs = [torch.randint(5, 900, (r_lens[i % len(r_lens)],), generator=g) for i in range(n)]
    return qs, rs


# --------------------------------------------------------------------------- config
def test_config_documented_fields_and_defaults():
    from dataclasses import fields

    names = [f.name for f in fields(PPOConfig)]
    # The 47 TRL 0.7.10 fields come first, unchanged; rlft's reliability fields follow.
    assert len(names) == 47 + len(RLFT_PPO_FIELDS)
    assert names[47:] == list(RLFT_PPO_FIELDS)
    c = PPOConfig()
    expected = dict(seed=0, log_with=None, task_name=None, model_name=None, query_dataset=None, reward_model=None,
                    remove_unused_columns=True, tracker_kwargs={}, accelerator_kwargs={}, project_kwargs={},
                    tracker_project_name="trl", push_to_hub_if_best_kwargs={}, steps=20000, learning_rate=1e-5,
                    adap_kl_ctrl=True, init_kl_coef=0.2, kl_penalty="kl", target=6, horizon=10000, gamma=1, lam=0.95,
                    cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, batch_size=256, forward_batch_size=None,
                    mini_batch_size=1, gradient_accumulation_steps=1, ppo_epochs=4, max_grad_norm=None,
                    optimize_cuda_cache=None, optimize_device_cache=False, early_stopping=False, target_kl=1,
                    compare_steps=1, ratio_threshold=10.0, use_score_scaling=False, use_score_norm=False,
                    score_clip=None, whiten_rewards=False, is_encoder_decoder=None, is_peft_model=None)
    for key, value in expected.items():
        assert getattr(c, key) == value, key
    assert c.backward_batch_size == 1 and c.world_size == 1 and c.global_batch_size == 256
    for key, value in RLFT_PPO_FIELDS.items():
        assert getattr(c, key) == value, key
    assert c.global_backward_batch_size == 1


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="batch_size .* multiple of mini_batch_size"):
        PPOConfig(batch_size=10, mini_batch_size=4)
    with pytest.raises(ValueError, match="kl_penalty"):
        PPOConfig(kl_penalty="js")
    with pytest.raises((ImportError, ValueError), match="log_with"):
        PPOConfig(log_with="comet")
    with pytest.raises(ValueError, match="use_score_norm"):
        PPOConfig(use_score_norm=True)
    with pytest.warns(FutureWarning, match="forward_batch_size"):
        c = PPOConfig(batch_size=8, forward_batch_size=4)
    assert c.mini_batch_size == 4 and c.backward_batch_size == 4


def test_trainer_signature():
    params = inspect.signature(PPOTrainer.__init__).parameters
    assert list(params)[1:] == ["config", "model", "ref_model", "tokenizer", "dataset", "optimizer", "data_collator",
                                "num_shared_layers", "lr_scheduler"]
    gen = inspect.signature(PPOTrainer.generate).parameters
    assert gen["batch_size"].default == 4 and gen["return_prompt"].default is True
    assert gen["generate_ref_response"].default is False and gen["length_sampler"].default is None
    assert list(inspect.signature(PPOTrainer.step).parameters)[1:] == ["queries", "responses", "scores", "response_masks"]
    assert inspect.signature(PPOTrainer.log_stats).parameters["columns_to_log"].default == ["query", "response"]
    assert inspect.signature(PPOTrainer.create_model_card).parameters["model_name"].default == "TRL Model"
    assert list(inspect.signature(PPOTrainer.compute_rewards).parameters)[1:] == ["scores", "logprobs", "ref_logprobs", "masks"]
    # TRL's parameters first; rlft's optional ref_logprobs (the KL loss term) last, default None.
    assert list(inspect.signature(PPOTrainer.loss).parameters)[1:] == [
        "old_logprobs", "values", "logits", "vpreds", "logprobs", "mask", "advantages", "returns", "ref_logprobs"]
    assert inspect.signature(PPOTrainer.loss).parameters["ref_logprobs"].default is None
    assert list(inspect.signature(PPOTrainer.train_minibatch).parameters)[1:] == [
        "old_logprobs", "values", "logprobs", "logits", "vpreds", "mask", "advantages", "returns", "ref_logprobs"]


# --------------------------------------------------------------------------- step input checks
@pytest.mark.parametrize("bad,match", [
    (lambda q, r, s: (q[:3], r, s), "got 3 queries"),
    (lambda q, r, s: (q, r, s[:2]), "got 2 scores"),
    (lambda q, r, s: (tuple(q)[0], r, s), "must be a list"),
    (lambda q, r, s: (q, [x.unsqueeze(0) for x in r], s), "1-D"),
    (lambda q, r, s: (q, r[:3] + [torch.tensor([], dtype=torch.long)], s), "empty"),
    (lambda q, r, s: (q, r, [torch.tensor([1.0, 2.0])] * 4), "scalar"),
    (lambda q, r, s: (q, r, [torch.tensor(True)] + s[1:]), "real number"),
    (lambda q, r, s: (q, r, s[:3] + [1 + 2j]), "number"),
    (lambda q, r, s: ([x.bool() for x in q], r, s), "booleans"),
    (lambda q, r, s: (q, [x + 5000 for x in r], s), "vocabulary"),
    (lambda q, r, s: ([x.to("meta") for x in q], r, s), "meta"),
    (lambda q, r, s: (q, r, ["good"] * 4), "number"),
    (lambda q, r, s: ([x.float() for x in q], r, s), "floats"),
])
def test_step_rejects_bad_input_without_touching_weights(model_path, tokenizer, bad, match):
    trainer = make_trainer(model_path, tokenizer)
    q, r = batch()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises((ValueError, TypeError), match=match):
        trainer.step(*bad(q, r, [torch.tensor(1.0)] * 4))
    for p, b in zip(trainer.model.parameters(), before):
        assert torch.equal(p, b)


def test_rejects_non_value_head_model(model_path, tokenizer):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="value-head model"):
        PPOTrainer(PPOConfig(batch_size=1), AutoModelForCausalLM.from_pretrained(model_path("gpt2")), None, tokenizer)


# --------------------------------------------------------------------------- step
def test_step_returns_trl_stats_and_changes_every_parameter(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer, learning_rate=1e-3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    q, r = batch()
    stats = trainer.step(q, r, [torch.tensor(float(i)) for i in range(4)])
    missing = [k for k in TRL_STAT_KEYS if k not in stats]
    assert not missing, missing
    assert isinstance(stats["objective/kl"], float) and isinstance(stats["ppo/loss/total"], float)
    assert stats["tokens/queries_len_mean"] == pytest.approx(3.5)
    assert stats["ppo/mean_scores"] == pytest.approx(1.5)
    assert stats["objective/logprobs"].shape == (4, 5)
    unchanged = [n for n, p in trainer.model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, unchanged
    # the first minibatch starts on-policy: ratio 1 exactly up to float error
    assert abs(np.asarray(stats["ppo/policy/ratio"]).flatten()[0] - 1.0) < 1e-4


def test_reference_never_changes_and_kl_is_zero_at_start(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer, learning_rate=1e-3)
    ref_before = [p.detach().clone() for p in trainer.ref_model.parameters()]
    q, r = batch()
    s1 = trainer.step(q, r, [torch.tensor(1.0)] * 4)
    assert s1["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    s2 = trainer.step(q, r, [torch.tensor(1.0)] * 4)
    assert abs(s2["objective/kl"]) > 1e-4
    for p, b in zip(trainer.ref_model.parameters(), ref_before):
        assert torch.equal(p, b)


def test_compute_rewards_public_method(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer)
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0]])
    mask = torch.tensor([[1, 1, 0]])
    rewards, non_score, kls = trainer.compute_rewards(torch.tensor([5.0]), lp, ref, mask)
    torch.testing.assert_close(kls, lp - ref)
    torch.testing.assert_close(non_score, -0.2 * (lp - ref))
    torch.testing.assert_close(rewards, -0.2 * (lp - ref) + torch.tensor([[0.0, 5.0, 0.0]]))


def test_score_scaling_norm_and_clip(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer, use_score_scaling=True, use_score_norm=True, score_clip=0.5)
    scores = trainer._prepare_scores(torch.tensor([1.0, 2.0, 3.0, 10.0]))
    assert scores.abs().max().item() <= 0.5 + 1e-6
    running_mean, running_std = trainer.running.mean, trainer.running.std
    assert running_mean == pytest.approx(4.0, rel=1e-4)
    raw = (torch.tensor([1.0, 2.0, 3.0, 10.0]) - running_mean) / running_std
    torch.testing.assert_close(scores, raw.clamp(-0.5, 0.5), atol=1e-5, rtol=0)


def test_response_masks_are_honoured(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer)
    q, r = batch(r_lens=(4, 4, 4, 4))
    masks = [torch.tensor([1, 1, 0, 0])] * 4
    _, _, _, m = trainer.batched_forward_pass(trainer.model, q, r, {}, response_masks=masks)
    torch.testing.assert_close(m.float(), torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4))
    stats = trainer.step(q, r, [torch.tensor(1.0)] * 4, response_masks=masks)
    assert np.all(np.asarray(stats["objective/logprobs"])[:, 2:] == 0)


def test_ratio_threshold_skips_with_warning(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer, ratio_threshold=1e-6, ppo_epochs=1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    q, r = batch()
    with pytest.warns(UserWarning, match="ratio_threshold"):
        stats = trainer.step(q, r, [torch.tensor(1.0)] * 4)
    assert stats["ppo/skipped_minibatches"] == 2
    for p, b in zip(trainer.model.parameters(), before):
        assert torch.equal(p, b)


def test_early_stopping_stops_ppo_epochs(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer, early_stopping=True, target_kl=1e-4, learning_rate=1e-2, ppo_epochs=4)
    seen = []
    original = trainer.train_minibatch

    def spy(*args):
        out = original(*args)
        seen.append(float(out["policy/policykl"]))
        return out

    trainer.train_minibatch = spy
    q, r = batch()
    trainer.step(q, r, [torch.tensor(float(i)) for i in range(4)])
    threshold = 1.5 * 1e-4
    assert len(seen) < 8, seen  # 4 epochs x 2 minibatches without early stopping
    assert seen[-1] > threshold and all(k <= threshold for k in seen[:-1])


def test_lr_scheduler_is_stepped(model_path, tokenizer):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    tokenizer.pad_token = tokenizer.eos_token
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1), model, None, tokenizer,
                         optimizer=opt, lr_scheduler=sched)
    q, r = batch()
    s1 = trainer.step(q, r, [torch.tensor(1.0)] * 4)
    s2 = trainer.step(q, r, [torch.tensor(1.0)] * 4)
    assert s1["ppo/learning_rate"] == pytest.approx(1e-3) and s2["ppo/learning_rate"] == pytest.approx(5e-4)


# --------------------------------------------------------------------------- padding and invariance
def test_padded_batch_matches_single_examples(model_path, tokenizer):
    """Left-padded queries and right-padded responses give the same log-probs and values as each example alone."""
    trainer = make_trainer(model_path, tokenizer, arch="llama", batch_size=4, mini_batch_size=4)
    q, r = batch()
    lp, _, values, mask = trainer.batched_forward_pass(trainer.model, q, r, {})
    for i in range(4):
        lp1, _, v1, m1 = trainer.batched_forward_pass(trainer.model, [q[i]], [r[i]], {})
        n = len(r[i])
        torch.testing.assert_close(lp[i, :n], lp1[0, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values[i, :n], v1[0, :n], atol=1e-5, rtol=1e-5)
        assert mask[i, :n].all() and not mask[i, n:].any()
    # and the values equal an unpadded plain forward of the concatenation
    model = trainer.accelerator.unwrap_model(trainer.model)
    ids = torch.cat([q[1], r[1]])[None]
    logits, _, v = model(input_ids=ids)
    logp = torch.log_softmax(logits[0, len(q[1]) - 1 : -1].double(), -1).gather(-1, r[1][:, None]).squeeze(-1)
    torch.testing.assert_close(lp[1, : len(r[1])].double(), logp, atol=1e-5, rtol=1e-5)


def test_minibatch_times_accumulation_invariance(model_path, tokenizer):
    """mini_batch_size=1 x gradient_accumulation_steps=4 matches mini_batch_size=4 (equal-length responses)."""
    results = []
    for mbs, gas in ((4, 1), (1, 4)):
        set_seed(0)
        trainer = make_trainer(model_path, tokenizer, batch_size=4, mini_batch_size=mbs, gradient_accumulation_steps=gas,
                               learning_rate=1e-3, ppo_epochs=2)
        q, r = batch(q_lens=(4,), r_lens=(5,))
        trainer.step(q, r, [torch.tensor(float(i)) for i in range(4)])
        results.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    for name in results[0]:
        # Adam divides by sqrt(v): float noise on near-zero gradients shows at ~1e-5 (updates are ~1e-3)
        torch.testing.assert_close(results[0][name], results[1][name], atol=5e-5, rtol=1e-4)


# --------------------------------------------------------------------------- generation
def test_generate_list_strips_padding_and_stops_at_eos(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer)
    eos = tokenizer.eos_token_id
    q = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11, 12, 13]), torch.tensor([14])]
    set_seed(0)
    out = trainer.generate(q, batch_size=3, return_prompt=False, do_sample=True, max_new_tokens=12, top_k=0, top_p=1.0)
    assert len(out) == 4
    for resp in out:
        assert resp.dim() == 1 and 1 <= len(resp) <= 12
        eos_pos = (resp == eos).nonzero().flatten().tolist()
        assert eos_pos in ([], [len(resp) - 1])  # at most one EOS, and only at the end
    with_prompt = trainer.generate(q, batch_size=2, return_prompt=True, do_sample=False, max_new_tokens=4)
    for query, resp in zip(q, with_prompt):
        assert torch.equal(resp[: len(query)], query)
    # greedy batched == greedy one at a time
    single = [trainer.generate(x, return_prompt=True, do_sample=False, max_new_tokens=4)[0] for x in q]
    for a, b in zip(with_prompt, single):
        assert torch.equal(a, b)


def test_generate_eos_stop_forced(model_path, tokenizer):
    """A model that always emits EOS after two tokens: responses end exactly there."""
    trainer = make_trainer(model_path, tokenizer)
    eos = tokenizer.eos_token_id
    out = trainer.generate([torch.tensor([5, 6])], return_prompt=False, do_sample=False, max_new_tokens=6,
                           min_new_tokens=1, forced_eos_token_id=eos)
    assert out[0][-1].item() == eos or len(out[0]) == 6


def test_generate_single_tensor_and_errors(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer)
    out = trainer.generate(torch.tensor([5, 6, 7]), return_prompt=False, do_sample=False, max_new_tokens=3)
    assert out.dim() == 2 and out.shape[0] == 1
    with pytest.raises(ValueError, match="1-D"):
        trainer.generate(torch.tensor([[5, 6, 7]]))
    with pytest.raises(ValueError, match="empty"):
        trainer.generate([torch.tensor([], dtype=torch.long)])


def test_generate_ref_response_uses_reference(model_path, tokenizer):
    trainer = make_trainer(model_path, tokenizer, learning_rate=1e-2)
    q, r = batch()
    for _ in range(2):
        trainer.step(q, r, [torch.tensor(1.0)] * 4)
    resp, ref_resp = trainer.generate(q, return_prompt=False, generate_ref_response=True, do_sample=False, max_new_tokens=6)
    plain = trainer.ref_model.generate(input_ids=q[0][None], max_new_tokens=6, do_sample=False,
                                       pad_token_id=tokenizer.eos_token_id)[0, len(q[0]):]
    n = len(ref_resp[0])
    assert torch.equal(ref_resp[0], plain[:n])


def test_length_sampler_sets_max_new_tokens(model_path, tokenizer):
    from rlft.core import LengthSampler

    trainer = make_trainer(model_path, tokenizer)
    q = [torch.tensor([5, 6])] * 4
    out = trainer.generate(q, length_sampler=LengthSampler(2, 3), return_prompt=False, do_sample=True,
                           eos_token_id=None, max_new_tokens=50)
    assert all(len(x) <= 2 for x in out)


# --------------------------------------------------------------------------- dataset
def test_dataset_becomes_dataloader(model_path, tokenizer):
    from datasets import Dataset

    ds = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 8, "query": ["a b c"] * 8, "junk": [0] * 8})
    ds.set_format("torch")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    tokenizer.pad_token = tokenizer.eos_token
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2), model, None, tokenizer, dataset=ds)
    b = next(iter(trainer.dataloader))
    assert set(b) == {"input_ids", "query"} and len(b["input_ids"]) == 4
    with pytest.warns(UserWarning, match="fewer than PPOConfig.batch_size"):  # TRL 0.7 built an empty dataloader
        empty = PPOTrainer(PPOConfig(batch_size=16, mini_batch_size=2), model, None, tokenizer, dataset=ds)
    assert list(empty.dataloader) == []


# --------------------------------------------------------------------------- saving
def test_save_pretrained_and_model_card(model_path, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(model_path, tokenizer, learning_rate=1e-3)
    q, r = batch()
    trainer.step(q, r, [torch.tensor(1.0)] * 4)
    trainer.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "PPO steps done: 1" in card and "learning_rate" in card
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))
    torch.testing.assert_close(reloaded.v_head.summary.weight, trainer.model.v_head.summary.weight)
    assert plain is not None


# --------------------------------------------------------------------------- seed quickstart
def test_seed_quickstart_runs():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "examples" / "quickstart.py")], capture_output=True, text=True,
                         timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ppo/loss/total" in out.stdout


# --------------------------------------------------------------------------- learning
def test_ppo_raises_a_programmatic_reward_causal(model_path, tokenizer):
    """Reward = share of response tokens with id < 200 (about 20% at random): PPO must push it up clearly."""
    set_seed(0)
    trainer = make_trainer(model_path, tokenizer, batch_size=16, mini_batch_size=8, learning_rate=3e-3, ppo_epochs=2,
                           init_kl_coef=0.01, adap_kl_ctrl=False)
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in range(15):
        qs = [torch.randint(5, 900, (4,), generator=g) for _ in range(16)]
        rs = trainer.generate(qs, return_prompt=False, batch_size=16, do_sample=True, top_k=0, top_p=1.0,
                              max_new_tokens=8, min_new_tokens=8, eos_token_id=None)
        scores = [(r < 200).float().mean() for r in rs]
        trainer.step(qs, rs, scores)
        history.append(torch.stack(scores).mean().item())
    start, end = np.mean(history[:3]), np.mean(history[-3:])
    assert end > start + 0.1, history


def test_dropout_is_off_including_functional_rates(model_path):
    from rlft.trainer._helpers import disable_dropout_in_model

    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(model_path("t5"))
    attn = model.pretrained_model.encoder.block[0].layer[0].SelfAttention
    assert attn.dropout > 0  # T5 applies attention dropout through a float rate, not an nn.Dropout
    disable_dropout_in_model(model)
    assert attn.dropout == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    model.train()
    ids = torch.tensor([[5, 6, 7, 8]])
    a = model(input_ids=ids, decoder_input_ids=ids)[0]
    b = model(input_ids=ids, decoder_input_ids=ids)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
