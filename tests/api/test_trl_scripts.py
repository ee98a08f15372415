"""TRL 0.7.10's example scripts and documentation snippets, run offline after changing only the import.

Each script in ``tests/api/_trl_scripts/`` follows the usage of one TRL 0.7.10 example (written in
our words, not copied): ``examples/scripts/ppo.py``, ``sft.py``, ``dpo.py``, ``reward_modeling.py``,
the StackLLaMA PPO script and the multi-adapter PPO example. It runs in a fresh interpreter,
unchanged but for ``trl`` -> ``rlft`` in its imports, local paths of tiny models and datasets given
on its command line, and smaller sizes (each script's docstring lists any other difference: only
GPU-only settings a CPU cannot run). ``runner.py`` prints what the script computed, and the test
checks it against an independent computation: the rewards against the reward model's own forward,
the trained weights against the saved ones, the step count against the data.

Scripts that use a transformers 4 spelling run with ``RLFT_LEGACY=1`` (docs/legacy.md); each test
says which spelling needs it. The documentation snippets of the seed docs (quickstart PPO loop,
best-of-n, iterative SFT, and the SFT / DPO / reward trainer calls of the API reference) run in
this process.

The script runs take 10-20 s each (a fresh interpreter importing transformers): they are ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.api._trl_scripts import assets as make

SCRIPTS = Path(__file__).with_name("_trl_scripts")
RUNNER = SCRIPTS / "runner.py"
MARK = "RLFT-SUMMARY "


# ----------------------------------------------------------------------------- offline stand-ins
@pytest.fixture(scope="module")
def hub(tmp_path_factory, model_path, tokenizer_path):
    """Local folders standing in for the hub models and datasets the scripts name."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("hub")

    def tok():
        return AutoTokenizer.from_pretrained(tokenizer_path)

    return {
        "gpt2": model_path("gpt2"),
        "opt": make.model_with_pad_token(root / "opt", tok()),
        "sentiment": make.sentiment_classifier(root / "sentiment", tok()),
        "reward_model": make.sentiment_classifier(root / "reward_model", tok(), num_labels=1, seed=1),
        "imdb": make.imdb_like(root / "imdb"),
        "hh": make.hh_like(root / "hh"),
        "stack": make.stack_exchange_like(root / "stack"),
        "guanaco": make.text_like(root / "guanaco"),
        "rm_adapter": make.reward_adapter(root / "rm_adapter", model_path("gpt2")),
    }


def run_script(name: str, *argv: str, legacy: bool, cwd: Path) -> dict:
    """Run ``_trl_scripts/<name>.py`` with ``argv`` in a fresh interpreter; return the runner's summary."""
    out = run_process(name, *argv, legacy=legacy, cwd=cwd)
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
    if out.returncode != 0 or not lines:
        pytest.fail(f"{name}.py exited with {out.returncode}:\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len(MARK):])


def run_process(name: str, *argv: str, legacy: bool, cwd: Path) -> subprocess.CompletedProcess:
    """The finished process of ``runner.py _trl_scripts/<name>.py argv`` (offline, one thread, RLFT_LEGACY as asked)."""
    env = {k: v for k, v in os.environ.items() if k != "RLFT_LEGACY"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")]))
    if legacy:
        env["RLFT_LEGACY"] = "1"
    return subprocess.run([sys.executable, str(RUNNER), str(SCRIPTS / f"{name}.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- examples/scripts/ppo.py
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "peft", "seq2seq"])
def test_sentiment_ppo_script(hub, model_path, tmp_path, variant):
    """Needs RLFT_LEGACY=1: the rewards are ``pipe(texts, return_all_scores=True)[i][1]["score"]``."""
    use_peft = variant == "peft"
    policy = model_path("t5") if variant == "seq2seq" else hub["gpt2"]
    argv = ["--ppo_config.model_name", policy, "--ppo_config.query_dataset", hub["imdb"],
            "--ppo_config.reward_model", f"sentiment-analysis:{hub['sentiment']}",
            "--ppo_config.batch_size", "4", "--ppo_config.mini_batch_size", "2"]
    flags = {"full": [], "peft": ["--use_peft"], "seq2seq": ["--use_seq2seq"]}[variant]
    s = run_script("ppo", *argv, *flags, legacy=True, cwd=tmp_path)
    assert s["steps"] == s["dataset_rows"] // s["batch_size"] == 2  # one step per dataloader batch
    assert {"objective/kl", "ppo/loss/total", "ppo/mean_scores", "ppo/policy/clipfrac"} <= set(s["stats_keys"])
    # the rewards are the POSITIVE logit (label 1, not the top-scoring label) of each query + response
    assert s["rewards"] == pytest.approx(s["positive_logits"], abs=1e-5)
    # labels sorted by score (today's top_k=None) would put NEGATIVE at index 1 for these texts
    assert any(p > n for p, n in zip(s["positive_logits"], s["negative_logits"]))
    assert s["ref_rewards"] == pytest.approx(s["ref_positive_logits"], abs=1e-5)
    assert s["max_weight_change"] > 0  # the policy trained (merged LoRA weights for peft)
    assert s["reference_is_none"] is use_peft and s["is_peft"] is use_peft  # peft: the adapter-off model is the reference


# ----------------------------------------------------------------------------- examples/scripts/sft.py
@pytest.mark.slow
def test_sft_script(hub, tmp_path):
    """Needs RLFT_LEGACY=1: ``AutoModelForCausalLM.from_pretrained(..., use_auth_token=True)``."""
    out = tmp_path / "out"
    s = run_script("sft", "--model_name", hub["gpt2"], "--dataset_name", hub["guanaco"], "--batch_size", "2",
                   "--gradient_accumulation_steps", "1", "--seq_length", "64", "--max_steps", "3",
                   "--output_dir", str(out), legacy=True, cwd=tmp_path)
    assert s["global_step"] == 3 and len(s["losses"]) == 3 and all(0 < x < 20 for x in s["losses"])
    assert s["max_weight_change"] > 0
    assert s["tokenizer_pad_is_eos"]  # no tokenizer given: the model's own, padded with EOS (as TRL)
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(s["saved_files"])


# ----------------------------------------------------------------------------- examples/scripts/dpo.py
@pytest.mark.slow
def test_dpo_script(hub, tmp_path):
    """Needs RLFT_LEGACY=1: ``TrainingArguments(evaluation_strategy="steps")``.

    ``--bf16 False``: TRL's script hard-codes bf16, which transformers refuses on a CPU with or without rlft.
    """
    s = run_script("dpo", "--model_name_or_path", hub["gpt2"], "--dataset_name", hub["hh"],
                   "--per_device_train_batch_size", "2", "--max_steps", "2", "--eval_steps", "1",
                   "--max_length", "64", "--max_prompt_length", "32", "--max_target_length", "32", "--bf16", "False",
                   legacy=True, cwd=tmp_path)
    assert s["global_step"] == 2 and s["train_rows"] == 8
    assert s["first_prompt"].startswith("\n\nHuman: ") and s["first_prompt"].endswith("\n\nAssistant:")
    assert len(s["eval_losses"]) == 2  # evaluation_strategy="steps" with eval_steps=1: once per step
    assert {"rewards/chosen", "rewards/accuracies", "rewards/margins", "eval_rewards/margins"} <= set(s["log_keys"])
    assert s["max_weight_change"] > 0


# ----------------------------------------------------------------------------- examples/scripts/reward_modeling.py
@pytest.fixture(scope="module")
def reward_run(hub, tmp_path_factory):
    """One run of the reward-modelling script with an eval split (no legacy mode: rlft's RewardConfig
    accepts its TRL 0.7 field names, ``evaluation_strategy`` included, by itself)."""
    cwd = tmp_path_factory.mktemp("reward_modeling")
    return run_script("reward_modeling", "--model_name", hub["opt"], "--dataset_name", hub["hh"],
                      "--eval_split", "test", "--reward_config.per_device_train_batch_size", "2",
                      "--reward_config.gradient_accumulation_steps", "1", "--reward_config.max_steps", "2",
                      "--reward_config.max_length", "128", "--reward_config.eval_steps", "1",
                      "--reward_config.output_dir", str(cwd / "out"), legacy=False, cwd=cwd)


@pytest.mark.slow
def test_reward_modeling_script_trains(reward_run):
    assert reward_run["global_step"] == 2 and reward_run["num_labels"] == 1
    assert reward_run["max_weight_change"] > 0


@pytest.mark.slow
def test_reward_modeling_script_evaluates_when_asked(reward_run):
    """The script assigns ``reward_config.evaluation_strategy = "steps"`` after parsing (RewardConfig maps it)."""
    assert reward_run["eval_strategy"] == "steps"
    assert reward_run["evaluations"] == 2  # eval_steps=1, max_steps=2


# ----------------------------------------------------------------------------- StackLLaMA rl_training.py
@pytest.mark.slow
def test_stack_llama_ppo_script(hub, tmp_path):
    """Needs RLFT_LEGACY=1: ``return_all_scores=True`` in the pipeline call, and ``load_in_8bit=False``
    given to from_pretrained (transformers 5 removed the argument)."""
    runs = tmp_path / "runs"
    s = run_script("stack_llama_rl", "--model_name", hub["gpt2"], "--tokenizer_name", hub["gpt2"],
                   "--reward_model_name", hub["reward_model"], "--dataset_name", hub["stack"],
                   "--batch_size", "2", "--mini_batch_size", "1", "--gradient_accumulation_steps", "2",
                   "--ppo_epochs", "1", "--steps", "6", "--output_max_length", "8", "--load_in_8bit", "False",
                   "--save_freq", "1", "--output_dir", f"{runs}/", legacy=True, cwd=tmp_path)
    # steps=6, batch_size=2: total_ppo_epochs = ceil(6 / 2) = 3 ends the loop one batch early
    assert s["total_ppo_epochs"] == 3 and s["batches_in_dataloader"] == 4 and s["steps"] == 3
    assert all(4 <= n < 8 for n in s["response_lengths"])  # LengthSampler(4, 8) draws 4..7 new tokens
    assert s["rewards"] == pytest.approx(s["reward_model_scores"], abs=1e-5)  # output[0]["score"] - baseline
    assert s["current_device"] == "cpu" and s["reference_is_none"] and s["is_peft"]
    assert sorted(s["saved"]) == ["step_1", "step_2"]  # save_freq=1, skipping epoch 0
    for files in s["saved"].values():
        assert {"adapter_config.json", "adapter_model.safetensors", "value_head.safetensors"} <= set(files)

    # a saved step loads back as a value-head model: adapter and value head as trained
    from safetensors.torch import load_file

    from rlft import AutoModelForCausalLMWithValueHead

    folder = runs / "step_2"
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
    saved_head = load_file(str(folder / "value_head.safetensors"))
    for key, value in model.v_head.state_dict().items():
        assert torch.equal(value, saved_head[f"v_head.{key}"])
    saved_adapter = load_file(str(folder / "adapter_model.safetensors"))
    loaded = {k: v for k, v in model.pretrained_model.state_dict().items() if "lora_B" in k}
    assert len(loaded) == len([k for k in saved_adapter if "lora_B" in k]) > 0
    assert any(v.abs().sum() > 0 for v in loaded.values())  # trained: LoRA B starts at zero


# ----------------------------------------------------------------------------- multi-adapter PPO
@pytest.mark.slow
def test_multi_adapter_ppo_script(hub, tmp_path):
    """No transformers 4 spelling once the 8-bit GPU loading is left out: runs without legacy mode."""
    s = run_script("multi_adapter_rl", "--model_name", hub["gpt2"], "--rm_adapter_id", hub["rm_adapter"],
                   "--dataset_name", hub["hh"], "--batch_size", "4", "--mini_batch_size", "2", "--max_new_tokens", "6",
                   legacy=False, cwd=tmp_path)
    assert s["steps"] == 2 and s["reference_is_none"]
    batch, _, labels = s["rewards_shape"]
    assert batch == 4 and labels == 2  # compute_reward_score: (B, T, num_labels)
    # the reward adapter + score head score a text as peft's own sequence classifier of that adapter does
    for mine, theirs in zip(s["reward_score_alone"], s["seq_cls_logits"]):
        assert mine == pytest.approx(theirs, abs=1e-4)
    assert s["active_adapter_after"] == "default"  # the policy adapter is active again after scoring
    assert s["rm_lora_tensors"] == s["rm_lora_saved_tensors"] > 0 and s["rm_lora_changed"] == 0.0  # frozen
    assert s["policy_lora_b_norm"] > 0  # the policy adapter trained


# ----------------------------------------------------------------------------- why legacy mode
@pytest.mark.slow
@pytest.mark.parametrize("name, argv, error", [
    ("sft", ["--model_name", "{gpt2}", "--dataset_name", "{guanaco}", "--max_steps", "1"], "'use_auth_token'"),
    ("dpo", ["--model_name_or_path", "{gpt2}", "--dataset_name", "{hh}", "--max_steps", "1", "--bf16", "False"],
     "'evaluation_strategy'"),
    ("stack_llama_rl", ["--model_name", "{gpt2}", "--tokenizer_name", "{gpt2}", "--reward_model_name", "{reward_model}",
                        "--dataset_name", "{stack}", "--batch_size", "2", "--mini_batch_size", "1", "--steps", "2",
                        "--gradient_accumulation_steps", "2", "--load_in_8bit", "False"], "'load_in_8bit'"),
])
def test_scripts_marked_legacy_stop_without_it(hub, tmp_path, name, argv, error):
    """The tests above that say "needs RLFT_LEGACY=1" are right: without it the script stops at the
    transformers 4 spelling (transformers refuses it), not in rlft. (ppo.py's ``return_all_scores`` is
    the KeyError case of tests/test_legacy.py.)"""
    out = run_process(name, *[a.format(**hub) for a in argv], legacy=False, cwd=tmp_path)
    assert out.returncode != 0
    assert "TypeError" in out.stderr and error in out.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- the seed docs' snippets
def _seed_reward(text: str) -> float:
    """A deterministic toy score: the fraction of the letter 'e' (stands in for a reward model)."""
    return text.count("e") / max(1, len(text))


@pytest.mark.slow
def test_quickstart_ppo_loop_and_reload(model_path, tokenizer_path, tmp_path, monkeypatch):
    """The quickstart: one query, generate, a constant reward, ``step``; then save and load the trained model."""
    from transformers import AutoModelForCausalLM, GPT2Tokenizer

    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    from rlft.model import AutoModelForCausalLMWithValueHead as FromModelModule

    # 1. load a pretrained model (GPT2Tokenizer as in the docs: the slow tokenizer class)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    tokenizer = GPT2Tokenizer.from_pretrained(tokenizer_path)
    tokenizer.pad_token = tokenizer.eos_token
    before = {k: v.clone() for k, v in model.pretrained_model.state_dict().items()}
    # 2. trainer
    config = PPOConfig(**{"mini_batch_size": 1, "batch_size": 1})
    ppo_trainer = PPOTrainer(config, model, ref_model, tokenizer)
    # 3. encode a query, 4. generate
    query_tensor = tokenizer.encode("This morning I went to the ", return_tensors="pt").to(model.pretrained_model.device)
    generation_kwargs = {"min_length": -1, "top_k": 0.0, "top_p": 1.0, "do_sample": True,
                         "pad_token_id": tokenizer.eos_token_id, "max_new_tokens": 20}
    response_tensor = ppo_trainer.generate([item for item in query_tensor], return_prompt=False, **generation_kwargs)
    response_txt = tokenizer.decode(response_tensor[0])
    assert isinstance(response_txt, str) and 0 < len(response_tensor[0]) <= 20
    # 5. reward, 6. train
    reward = [torch.tensor(1.0, device=model.pretrained_model.device)]
    train_stats = ppo_trainer.step([query_tensor[0]], [response_tensor[0]], reward)
    assert train_stats["ppo/mean_scores"] == pytest.approx(1.0)
    after = model.pretrained_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # using the trained model: the hub push fails clearly offline; saved locally it loads with plain
    # transformers, or again with its value head
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="save_pretrained"):
        model.push_to_hub("my-fine-tuned-model-ppo")
    model.save_pretrained(str(tmp_path / "my-fine-tuned-model-ppo"))
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "my-fine-tuned-model-ppo"))
    for key, value in plain.state_dict().items():
        assert torch.equal(value, after[key])
    again = FromModelModule.from_pretrained(str(tmp_path / "my-fine-tuned-model-ppo"))
    for key, value in model.v_head.state_dict().items():
        assert torch.equal(again.v_head.state_dict()[key], value)


@pytest.mark.slow  # three samplers, 28 samples
def test_best_of_n_snippet(model_path, tokenizer_path, tmp_path, tokenizer):
    """The best-of-n page: a scoring callable over a sentiment pipeline, then the sampler's options."""
    from transformers import AutoTokenizer, GenerationConfig, pipeline

    from rlft import AutoModelForCausalLMWithValueHead
    from rlft.core import LengthSampler
    from rlft.extras import BestOfNSampler

    device = "cpu"
    reward_model = make.sentiment_classifier(tmp_path / "sentiment", tokenizer)
    ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    reward_pipe = pipeline("sentiment-analysis", model=reward_model, device=device)
    tokenizer = AutoTokenizer.from_pretrained(model_path("gpt2"))
    tokenizer.pad_token = tokenizer.eos_token
    seen: list[tuple[str, float]] = []

    def queries_to_scores(list_of_strings):
        scores = [output["score"] for output in reward_pipe(list_of_strings)]
        seen.extend(zip(list_of_strings, scores))
        return scores

    output_length_sampler = LengthSampler(2, 6)
    query_tensors = [tokenizer.encode(t, return_tensors="pt")[0] for t in ("Return the", "The file is")]
    gen_kwargs = {"do_sample": True, "pad_token_id": tokenizer.eos_token_id}

    best_of_n = BestOfNSampler(ref_model, tokenizer, queries_to_scores, length_sampler=output_length_sampler)
    best = best_of_n.generate(query_tensors, device=device, **gen_kwargs)
    assert [len(b) for b in best] == [1, 1] and len(seen) == 2 * 4  # default sample_size 4
    for query_best, query_seen in zip(best, (seen[:4], seen[4:])):  # each query's samples scored in one call
        assert query_best[0] == max(query_seen, key=lambda pair: pair[1])[0]

    seen.clear()
    best_of_n = BestOfNSampler(ref_model, tokenizer, queries_to_scores, length_sampler=output_length_sampler,
                               sample_size=8, n_candidates=2)
    best = best_of_n.generate(query_tensors, device=device, **gen_kwargs)
    assert [len(b) for b in best] == [2, 2] and len(seen) == 2 * 8
    for query_best, query_seen in zip(best, (seen[:8], seen[8:])):
        ranked = [text for text, _ in sorted(query_seen, key=lambda pair: -pair[1])]
        assert query_best == ranked[:2]

    generation_config = GenerationConfig(min_length=-1, top_k=0.0, top_p=1.0, do_sample=True,
                                         pad_token_id=tokenizer.eos_token_id)
    best_of_n = BestOfNSampler(ref_model, tokenizer, queries_to_scores, length_sampler=output_length_sampler,
                               generation_config=generation_config, seed=0)
    first = best_of_n.generate(query_tensors, device=device)
    assert [len(b) for b in first] == [1, 1]
    assert BestOfNSampler(ref_model, tokenizer, queries_to_scores, length_sampler=output_length_sampler,
                          generation_config=generation_config, seed=0).generate(query_tensors, device=device) == first


def test_iterative_sft_snippet(model_path, tokenizer_path):
    """The iterative trainer page: ``IterativeSFTTrainer(model, tokenizer)``, then ``step`` on tensors and on texts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlft import IterativeSFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    tokenizer = AutoTokenizer.from_pretrained(model_path("gpt2"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = IterativeSFTTrainer(model, tokenizer)

    texts = ["the value is returned to the caller.", "return a new list of the items."]
    encoded = [tokenizer(t, return_tensors="pt") for t in texts]
    inputs = {"input_ids": [e["input_ids"][0] for e in encoded], "attention_mask": [e["attention_mask"][0] for e in encoded]}
    trainer.step(**inputs)
    inputs = {"texts": texts}
    trainer.step(**inputs)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sft_docs_call_with_a_model_name(model_path, tmp_path, monkeypatch):
    """``SFTTrainer("<model name>", train_dataset=..., dataset_text_field="text", max_seq_length=...)``, no args:
    the trainer loads model and tokenizer from the name and trains with default arguments."""
    from datasets import Dataset

    from rlft import SFTTrainer

    monkeypatch.chdir(tmp_path)  # the default TrainingArguments write to ./tmp_trainer
    dataset = Dataset.from_dict({"text": ["the value is returned to the caller.", "return a new list of the items."] * 2})
    trainer = SFTTrainer(model_path("gpt2"), train_dataset=dataset, dataset_text_field="text", max_seq_length=32)
    trainer.args.max_steps, trainer.args.report_to = 1, []
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_dpo_docs_call(model_path, pad_tokenizer, tmp_path):
    """``DPOTrainer(model, model_ref, args=training_args, beta=0.1, train_dataset=..., tokenizer=tokenizer)``
    with a dict-of-lists dataset of prompt / chosen / rejected, as the DPO page shows."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainingArguments

    from rlft import DPOTrainer

    dpo_dataset_dict = {
        "prompt": ["hello", "how are you", "What is your name?", "Which is the best programming language?"],
        "chosen": ["hi nice to meet you", "I am fine", "My name is Mary", "Python"],
        "rejected": ["leave me alone", "I am not fine", "Whats it to you?", "Javascript"],
    }
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    model_ref = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    training_args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2,
                                      remove_unused_columns=False, report_to="none", learning_rate=1e-3, logging_steps=1)
    dpo_trainer = DPOTrainer(model, model_ref, args=training_args, beta=0.1,
                             train_dataset=Dataset.from_dict(dpo_dataset_dict), tokenizer=pad_tokenizer)
    dpo_trainer.train()
    losses = [e["loss"] for e in dpo_trainer.state.log_history if "loss" in e]
    assert dpo_trainer.state.global_step == 2
    assert losses and losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start: log 2


@pytest.mark.slow  # four optimizer steps plus two scoring passes
def test_reward_docs_call(model_path, tokenizer, tmp_path):
    """``RewardTrainer(model=..., args=RewardConfig(...), tokenizer=..., train_dataset=...)`` with the four
    tokenised columns the reward trainer page lists."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from rlft import RewardConfig, RewardTrainer

    tokenizer.pad_token = tokenizer.eos_token
    pairs = [("the value is returned to the caller.", "value caller the."),
             ("return a new list of the items.", "list list list."),
             ("the file is closed.", "closed is file"), ("a new dictionary.", "dictionary a")]
    columns = {"input_ids_chosen": [], "attention_mask_chosen": [], "input_ids_rejected": [], "attention_mask_rejected": []}
    for chosen, rejected in pairs:
        good, bad = tokenizer(chosen), tokenizer(rejected)
        columns["input_ids_chosen"].append(good["input_ids"])
        columns["attention_mask_chosen"].append(good["attention_mask"])
        columns["input_ids_rejected"].append(bad["input_ids"])
        columns["attention_mask_rejected"].append(bad["attention_mask"])
    model = AutoModelForSequenceClassification.from_pretrained(model_path("gpt2"), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, learning_rate=1e-3,
                        report_to="none", max_length=32, remove_unused_columns=False)
    trainer = RewardTrainer(model=model, args=args, tokenizer=tokenizer, train_dataset=Dataset.from_dict(columns))

    def accuracy_margin():
        with torch.no_grad():
            margins = []
            for chosen, rejected in pairs:
                good = model(**tokenizer(chosen, return_tensors="pt")).logits[0, 0]
                bad = model(**tokenizer(rejected, return_tensors="pt")).logits[0, 0]
                margins.append((good - bad).item())
        return sum(margins)

    before = accuracy_margin()
    trainer.train()
    assert trainer.state.global_step == 4
    assert accuracy_margin() > before  # trained to rank chosen above rejected


def test_reward_config_on_an_hf_argument_parser(tmp_path):
    """The reward page: RewardConfig turns into command-line options through ``HfArgumentParser``,
    its own fields (max_length, gradient_checkpointing with TRL's default True) included."""
    from transformers import HfArgumentParser

    from rlft import RewardConfig

    (cfg,) = HfArgumentParser(RewardConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--max_length", "64", "--eval_strategy", "steps", "--eval_steps", "3"])
    assert cfg.max_length == 64 and cfg.eval_strategy == "steps" and cfg.eval_steps == 3
    assert cfg.gradient_checkpointing is True  # TRL 0.7's default for reward models
    (cfg,) = HfArgumentParser(RewardConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--gradient_checkpointing", "False"])
    assert cfg.max_length is None and cfg.gradient_checkpointing is False and not cfg.activation_checkpointing
