"""PPOConfig.rollout_logprobs="generation": the behaviour log-probs (and values) recorded by
PPOTrainer.generate, against independent full forwards, and step() using them instead of a policy forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.trainer._model_helpers import unwrap_base_model
from rlft.trainer.ppo_config import ROLLOUT_LOGPROBS_ATOL

#: Ragged prompts: batched generation left-pads them.
PROMPTS = ([5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15])
GEN = dict(do_sample=True, top_k=0, top_p=1.0, max_new_tokens=6)


def _queries(n=4):
    return [torch.tensor(PROMPTS[i % len(PROMPTS)]) for i in range(n)]


def _lora(model, arch="gpt2"):
    import peft

    targets = ["c_attn", "c_proj", "c_fc"] if arch == "gpt2" else ["q_proj", "v_proj", "up_proj"]
    # init_lora_weights=False: a random adapter, so the policy differs from the reference (adapter disabled)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False,
                             fan_in_fan_out=arch == "gpt2", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def _trainer(model_path, tokenizer, kind="value_head", arch="gpt2", **cfg):
    cfg.setdefault("batch_size", 4)
    cfg.setdefault("mini_batch_size", 2)
    cfg.setdefault("rollout_logprobs", "generation")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)  # the same LoRA and value-head initialisation in every trainer of a test
    base = AutoModelForCausalLM.from_pretrained(model_path(arch))
    if kind == "plain":
        model = base
        cfg.setdefault("advantage_estimator", "reinforce_pp")
    elif kind == "lora":
        model = AutoModelForCausalLMWithValueHead.from_pretrained(_lora(base, arch))
    else:
        model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    torch.manual_seed(0)
    return PPOTrainer(PPOConfig(**cfg), model, None, tokenizer)


def _independent(trainer, query, response):
    """Slow reference: one unpadded full forward of query + response; log-softmax of the raw logits at the
    positions before each response token, and the value head on those positions. (T,) each."""
    policy = trainer.accelerator.unwrap_model(trainer.model)
    ids = torch.cat([query, response])[None]  # (1, Q + T)
    with torch.no_grad():
        out = policy(input_ids=ids)
    logits = out[0] if isinstance(out, tuple) else out.logits  # (1, Q + T, V)
    before = slice(len(query) - 1, ids.shape[1] - 1)  # position t predicts token t + 1
    logprobs = torch.log_softmax(logits[0, before].double(), dim=-1).gather(-1, response[:, None]).squeeze(-1)
    values = out[2][0, before] if isinstance(out, tuple) else None
    return logprobs.float(), values


def _recorded(trainer, queries, responses):
    taken = trainer._behaviour.take(queries, responses, trainer._policy_version())
    assert taken is not None, "generate recorded nothing for these responses"
    return taken


class _Counter:
    """Counts a module's no-grad forward calls (the rollout's; generation's are reset before step)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if not torch.is_grad_enabled():
            self.calls += 1


# --------------------------------------------------------------------------- recorded numbers
@pytest.mark.parametrize(
    "kind,arch,k",
    [("plain", "gpt2", 1), ("value_head", "gpt2", 1), ("value_head", "llama", 2), ("lora", "gpt2", 2), ("lora", "llama", 1)],
)
def test_recorded_logprobs_and_values_equal_an_independent_forward(model_path, pad_tokenizer, kind, arch, k):
    trainer = _trainer(model_path, pad_tokenizer, kind, arch)
    queries = _queries(4)
    # batch_size 2 x k rows per generate call: two calls, each left-padded to its own widest prompt
    responses = trainer.generate(queries, batch_size=2, return_prompt=False, num_return_sequences=k, **GEN)
    queries = [q for q in queries for _ in range(k)]
    assert len(responses) == len(queries) and len({tuple(r.tolist()) for r in responses}) > 1
    logprobs, values = _recorded(trainer, queries, responses)
    assert (values is None) == (kind == "plain")
    for i, (q, r) in enumerate(zip(queries, responses)):
        ref_lp, ref_v = _independent(trainer, q, r)
        torch.testing.assert_close(logprobs[i, : len(r)], ref_lp, atol=ROLLOUT_LOGPROBS_ATOL, rtol=0)
        if kind != "plain":
            torch.testing.assert_close(values[i, : len(r)], ref_v, atol=ROLLOUT_LOGPROBS_ATOL, rtol=0)
    if kind == "lora":  # the adapter was on while sampling: the record is the policy's, not the reference's
        with trainer._reference_context() as ref, torch.no_grad():
            ids = torch.cat([queries[0], responses[0]])[None]
            ref_logits = ref(input_ids=ids)[0][0, len(queries[0]) - 1 : -1]
        ref_lp = torch.log_softmax(ref_logits, -1).gather(-1, responses[0][:, None]).squeeze(-1)
        assert (ref_lp - logprobs[0, : len(responses[0])]).abs().max() > 100 * ROLLOUT_LOGPROBS_ATOL


def test_recorded_logprobs_are_of_the_raw_logits_under_temperature_and_top_k(model_path, pad_tokenizer):
    """Sampling warped by temperature / top-k still records the raw-logit log-probs, as the recompute path reads them."""
    trainer = _trainer(model_path, pad_tokenizer, "value_head")
    queries = _queries(4)
    responses = trainer.generate(queries, return_prompt=False, **dict(GEN, temperature=0.7, top_k=20))
    logprobs, _ = _recorded(trainer, queries, responses)
    for i, (q, r) in enumerate(zip(queries, responses)):
        torch.testing.assert_close(logprobs[i, : len(r)], _independent(trainer, q, r)[0], atol=ROLLOUT_LOGPROBS_ATOL, rtol=0)


def test_responses_are_cut_at_eos_and_recorded_per_response(model_path, pad_tokenizer):
    """A short response (first EOS) gets exactly its own tokens' log-probs; ones returned with the prompt match when sliced."""
    trainer = _trainer(model_path, pad_tokenizer, "value_head")
    eos = pad_tokenizer.eos_token_id
    queries = _queries(4)
    # a logits processor that forces EOS as the 3rd token of row 0: that response is 3 tokens, the others 6
    from transformers import LogitsProcessor, LogitsProcessorList

    class ForceEos(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - 5 == 2:  # widest prompt 5 columns: third new token
                scores[0] = float("-inf")
                scores[0, eos] = 0.0
            return scores

    full = trainer.generate(queries, logits_processor=LogitsProcessorList([ForceEos()]), **GEN)
    responses = [f[len(q):] for q, f in zip(queries, full)]
    assert len(responses[0]) == 3 and responses[0][-1] == eos and max(len(r) for r in responses) == 6
    logprobs, _ = _recorded(trainer, queries, responses)
    assert logprobs.shape == (4, 6) and (logprobs[0, 3:] == 0).all()  # padded after the 3 tokens of response 0
    torch.testing.assert_close(logprobs[0, :3], _independent(trainer, queries[0], responses[0])[0], atol=ROLLOUT_LOGPROBS_ATOL, rtol=0)


# --------------------------------------------------------------------------- step with the record
class _RatioTrainer(PPOTrainer):
    """Records |logprobs - old_logprobs| on kept tokens of each minibatch loss, in call order."""

    def loss(self, old_logprobs, values, logits, vpreds, logprobs, mask, *args, **kwargs):
        self.gaps = getattr(self, "gaps", [])
        self.gaps.append(((logprobs.detach() - old_logprobs).abs() * mask).max().item())
        self.value_gaps = getattr(self, "value_gaps", [])
        self.value_gaps.append(((vpreds.detach() - values).abs() * mask).max().item())
        return super().loss(old_logprobs, values, logits, vpreds, logprobs, mask, *args, **kwargs)


@pytest.mark.parametrize("kind", ["value_head", "lora"])
def test_step_uses_the_record_and_the_first_ratio_is_one(model_path, pad_tokenizer, kind):
    trainer = _trainer(model_path, pad_tokenizer, kind)
    trainer.__class__ = _RatioTrainer
    policy_base = unwrap_base_model(trainer.accelerator.unwrap_model(trainer.model))
    counter = _Counter(policy_base)
    queries = _queries(4)
    responses = trainer.generate(queries, return_prompt=False, **GEN)
    counter.calls = 0
    trainer.step(queries, responses, [1.0, 0.0, 0.5, -1.0])
    # no no-grad policy forward: the reference only (a peft policy's reference runs the same modules)
    assert counter.calls == (2 if kind == "lora" else 0)  # a peft policy's reference: 2 chunks of mini_batch_size
    # the first minibatch runs before any update: its ratio is exp(gap) = 1 within the tolerance
    assert trainer.gaps[0] <= ROLLOUT_LOGPROBS_ATOL and trainer.value_gaps[0] <= ROLLOUT_LOGPROBS_ATOL
    assert len(trainer._behaviour) == 0  # the record is spent: the update made it stale


def test_edited_or_foreign_responses_fall_back_to_the_policy_forward(model_path, pad_tokenizer):
    trainer = _trainer(model_path, pad_tokenizer, "value_head")
    counter = _Counter(unwrap_base_model(trainer.accelerator.unwrap_model(trainer.model)))
    queries = _queries(4)
    scores = [1.0, 0.0, 0.5, -1.0]

    responses = trainer.generate(queries, return_prompt=False, **GEN)
    edited = [r.clone() for r in responses]
    edited[2][1] = (edited[2][1] + 1) % 900
    counter.calls = 0
    trainer.step(queries, edited, scores)
    assert counter.calls == 2  # the policy's rollout forward, 2 chunks of mini_batch_size

    responses = trainer.generate(queries, return_prompt=False, **GEN)
    counter.calls = 0
    trainer.step(queries[::-1], responses[::-1], scores)  # same samples, other order: matched by content
    assert counter.calls == 0

    responses = trainer.generate(queries, return_prompt=False, **GEN)
    with torch.no_grad():  # a weight change after generate makes the record stale
        next(trainer.model.parameters()).add_(0.0)
    counter.calls = 0
    trainer.step(queries, responses, scores)
    assert counter.calls == 2

    responses = trainer.generate(queries, return_prompt=False, **GEN)
    trainer.step(queries, responses, scores)
    counter.calls = 0
    trainer.step(queries, responses, scores)  # the same batch again, after an update: recomputed
    assert counter.calls == 2


def test_recompute_and_single_update_do_not_record(model_path, pad_tokenizer):
    for cfg in (dict(rollout_logprobs="recompute"), dict(ppo_epochs=1, mini_batch_size=4), dict(kl_penalty="full")):
        trainer = _trainer(model_path, pad_tokenizer, "value_head", **cfg)
        trainer.generate(_queries(4), return_prompt=False, **GEN)
        assert len(trainer._behaviour) == 0, cfg


def test_critic_free_without_kl_forwards_nothing(model_path, pad_tokenizer):
    """dr_grpo (no KL in the reward or the loss) with a plain policy: the rollout runs no forward at all."""
    trainer = _trainer(model_path, pad_tokenizer, "plain", advantage_estimator="dr_grpo", num_generations=2, rollout_logprobs=None)
    assert trainer.config.resolved_rollout_logprobs() == "generation"
    policy = _Counter(trainer.accelerator.unwrap_model(trainer.model))
    ref = _Counter(trainer.ref_model)
    queries = _queries(2)
    responses = trainer.generate(queries, return_prompt=False, num_return_sequences=2, **GEN)
    policy.calls = ref.calls = 0
    stats = trainer.step([q for q in queries for _ in range(2)], responses, [1.0, 0.0, 0.5, -1.0])
    assert policy.calls == 0 and ref.calls == 0
    assert stats["objective/kl"] == 0.0


def test_the_default_keeps_trl_recompute_for_gae_and_rejects_unknown_values():
    assert PPOConfig().resolved_rollout_logprobs() == "recompute"
    assert PPOConfig(advantage_estimator="reinforce_pp").resolved_rollout_logprobs() == "generation"
    with pytest.raises(ValueError, match="rollout_logprobs"):
        PPOConfig(rollout_logprobs="cached")


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("kind", ["value_head", "lora"])
def test_learning_with_the_record_matches_recompute(model_path, pad_tokenizer, kind):
    """Three SGD steps (2 epochs x 2 minibatches each) on the same samples: the parameters of the run that
    reads generate's record equal the recomputing run's within float error, and both moved."""
    cfg = dict(ppo_epochs=2, adap_kl_ctrl=False, init_kl_coef=0.1)
    runs = {}
    for mode in ("generation", "recompute"):
        trainer = _trainer(model_path, pad_tokenizer, kind, rollout_logprobs=mode, **cfg)
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        trainer.optimizer = torch.optim.SGD(params, lr=0.05)
        runs[mode] = trainer
    start = {n: p.detach().clone() for n, p in runs["generation"].model.named_parameters()}
    queries = _queries(4)
    for step in range(3):
        torch.manual_seed(step)
        responses = runs["generation"].generate(queries, return_prompt=False, **GEN)
        scores = [float(sum(int(t) % 2 == 0 for t in r)) / len(r) for r in responses]
        for mode, trainer in runs.items():
            np.random.seed(step)  # the same minibatch order in both runs
            trainer.step(queries, responses, scores)
    moved = max((p.detach() - start[n]).abs().max().item() for n, p in runs["generation"].model.named_parameters())
    assert moved > 1e-3, moved
    a, b = (dict(runs[m].model.named_parameters()) for m in ("generation", "recompute"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
