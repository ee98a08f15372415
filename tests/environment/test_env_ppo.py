"""TextEnvironment rollouts through PPOTrainer: tool-output tokens get no gradient; a toy tool is learnt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, TextEnvironment
from rlft.core import set_seed

from ._scripted import ScriptedModel


def calc(expression: str) -> str:
    a, b = expression.split("+")
    return str(int(a) + int(b))


def _capture_action_logit_grads(trainer):
    """Wrap trainer._forward so that the gradient of the loss w.r.t. the action logits (n, T, V) is recorded."""
    captured = []
    forward = trainer._forward

    def wrapped(model, batch, return_values=True):
        logits, values = forward(model, batch, return_values)
        if logits.requires_grad:
            entry = {"mask": batch.mask.clone(), "actions": batch.actions.clone()}
            logits.register_hook(lambda g, e=entry: e.__setitem__("grad", g.detach().clone()))
            captured.append(entry)
        return logits, values

    trainer._forward = wrapped
    return captured


@pytest.mark.filterwarnings("ignore:No dataset is provided")
@pytest.mark.parametrize("use_masks", [True, False])
def test_no_gradient_reaches_the_policy_from_tool_output_tokens(model_path, pad_tokenizer, use_masks):
    set_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, learning_rate=1e-3), model, None,
                         pad_tokenizer)

    def script(ctx):
        if ctx.count("<response>") == 0:
            return "<request><calc>12+30<call>" if "A" in ctx else "<request><calc>1+1<call>"
        return " so it is 42<submit>" if "A" in ctx else " 2<submit>"

    env = TextEnvironment(ScriptedModel(model.pretrained_model, pad_tokenizer, script), pad_tokenizer, tools=[calc],
                          reward_fn=lambda segs: [1.0 if "42" in s else -1.0 for s in segs], prompt="Q: ")
    queries, responses, masks, rewards, histories = env.run(["A", "B"])
    assert [m.tolist().count(0) for m in masks] == [len(pad_tokenizer("42<response>").input_ids),
                                                     len(pad_tokenizer("2<response>").input_ids)]

    captured = _capture_action_logit_grads(trainer)
    trainer.step(queries, responses, rewards, masks if use_masks else None)
    assert len(captured) == 1 and "grad" in captured[0]
    grad, batch_mask, actions = captured[0]["grad"], captured[0]["mask"], captured[0]["actions"]
    per_token = grad.abs().sum(-1)  # (n, T): how much loss gradient each action position receives
    rows = []
    for b in range(actions.shape[0]):  # the minibatch may be shuffled: match rows to episodes by their tokens
        i = next(i for i, r in enumerate(responses) if torch.equal(actions[b, : len(r)], r) and
                 torch.all(batch_mask[b, len(r):] == 0))
        rows.append((b, responses[i], masks[i]))
    assert sorted(len(r) for _, r, _ in rows) == sorted(len(r) for r in responses)
    for b, response, mask in rows:
        n = len(response)
        tool = mask == 0  # the tool's output and the <response> token
        if use_masks:
            assert torch.equal(batch_mask[b, :n], mask.to(batch_mask.dtype))
            assert torch.all(per_token[b, :n][tool] == 0), per_token[b, :n]
        else:
            assert torch.all(per_token[b, :n][tool] > 0)  # the check above can fail: unmasked, they get gradient
        assert torch.all(per_token[b, :n][~tool] > 0)  # model tokens are trained either way
        assert torch.all(per_token[b, n:] == 0)  # right padding


# --------------------------------------------------------------------------- learning
#: A toy vocabulary: the protocol's strings are single tokens (the tool call is one), plus two digits.
TOY_VOCAB = ["<eos>", "Q:", "x", "<request><Secret>", "<call>", "<response>", "<submit>", "7", "3"]


def toy_tokenizer():
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOY_VOCAB)}, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(re.escape(t) for t in TOY_VOCAB)), behavior="isolated")
    tk.decoder = decoders.Fuse()  # tokens concatenate without spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")


def toy_model(path, seed):
    import transformers as tf

    config = tf.GPT2Config(vocab_size=len(TOY_VOCAB), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                           bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tf.GPT2LMHeadModel(config).save_pretrained(path)
    return AutoModelForCausalLMWithValueHead.from_pretrained(path)


def score(history) -> float:
    """0.4 for a call the Secret tool answered, 0.6 more when the model's next (last) turn repeats its output."""
    answered = len(history.text_spans) > 2 and history.text[slice(*history.text_spans[2])] == "7<response>"
    model_turns = [i for i, system in enumerate(history.system_spans) if not system]
    final = history.text[slice(*history.text_spans[model_turns[-1]])]
    return 0.4 * answered + 0.6 * (answered and model_turns[-1] == 3 and final.startswith("7"))


def test_toy_tokenizer_round_trips():
    tok = toy_tokenizer()
    text = "Q:x<request><Secret><call>7<response>7<submit>"
    assert tok(text).input_ids == [1, 2, 3, 4, 7, 5, 7, 6] and tok.decode(tok(text).input_ids) == text


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:No dataset is provided")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_learns_to_call_a_tool_and_repeat_its_output(tmp_path, seed):
    """The Secret tool answers 7; the reward wants a call, then its output repeated.

    A tiny GPT-2 over a 9-token toy vocabulary samples on-policy (nothing restricted at sampling
    time) and scores about 0.02 at random. With these settings the mean score of the last five
    of 50 steps was 0.73 to 0.91 above the first five over seeds 0-4 (lr=0: -0.004), so the 0.4
    bar fails only if learning breaks. (At a higher lr the policy reached a batch of identical
    scores of 1.0 and then collapsed in the next step.)
    """
    set_seed(seed)
    tokenizer = toy_tokenizer()
    model = toy_model(tmp_path / "m", seed)
    config = PPOConfig(batch_size=32, mini_batch_size=16, learning_rate=1e-3, ppo_epochs=2, init_kl_coef=0.01,
                       adap_kl_ctrl=False, seed=seed)
    trainer = PPOTrainer(config, model, None, tokenizer)
    env = TextEnvironment(model, tokenizer, tools={"Secret": lambda query: "7"}, reward_fn=lambda s: [0.0] * len(s),
                          prompt="Q:", max_turns=2,
                          generation_kwargs={"do_sample": True, "top_k": 0, "max_new_tokens": 3})
    history = []
    for _ in range(50):
        queries, responses, masks, _, histories = env.run(["x"] * 32)
        scores = [score(h) for h in histories]
        trainer.step(queries, responses, scores, masks)
        history.append(float(np.mean(scores)))
    assert np.mean(history[-5:]) > np.mean(history[:5]) + 0.4, history


@pytest.mark.filterwarnings("ignore:No dataset is provided")
def test_groups_feed_a_group_estimator(model_path, pad_tokenizer):
    """num_generations=k gives the consecutive blocks of identical queries that GRPO's step expects."""
    from transformers import AutoModelForCausalLM

    set_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    config = PPOConfig(advantage_estimator="grpo", num_generations=2, batch_size=4, mini_batch_size=2)
    trainer = PPOTrainer(config, model, None, pad_tokenizer)
    env = TextEnvironment(model, pad_tokenizer, tools=[calc], reward_fn=lambda segs: [float(len(s)) for s in segs],
                          prompt="Q: ", max_turns=2, num_generations=2,
                          generation_kwargs={"do_sample": True, "max_new_tokens": 4})
    queries, responses, masks, rewards, _ = env.run(["1+1", "2+2"])
    assert len(queries) == 4 and torch.equal(queries[0], queries[1]) and torch.equal(queries[2], queries[3])
    assert not torch.equal(queries[1], queries[2])
    stats = trainer.step(queries, responses, rewards, masks)
    assert np.isfinite(stats["ppo/loss/total"])
