"""Multi-adapter PPO, the usage of TRL 0.7.10's multi-adapter RL example and docs page (our wording).

One base model carries two LoRA adapters: the policy adapter being trained (``peft_config``) and a
frozen reward-model adapter with its score head (``reward_adapter=``). Rewards come from
``ppo_trainer.model.compute_reward_score(**inputs)``: per-token scores whose last position, label 1,
is the reward. No reference model: the adapter is switched off instead.

Differences from TRL: the import, local paths, smaller sizes, and the device: TRL loaded the base
model in 8 bits on GPU 0 (``load_in_8bit=True, device_map={"": 0}``); here it stays in full
precision on the CPU when there is no GPU.
"""

import argparse

import torch
from datasets import load_dataset
from peft import LoraConfig
from tqdm import tqdm
from transformers import AutoTokenizer

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.core import LengthSampler

cli = argparse.ArgumentParser()
cli.add_argument("--model_name", default="huggyllama/llama-7b")
cli.add_argument("--rm_adapter_id", default="trl-lib/llama-7b-hh-rm-adapter")
cli.add_argument("--dataset_name", default="Anthropic/hh-rlhf")
cli.add_argument("--batch_size", type=int, default=8)
cli.add_argument("--mini_batch_size", type=int, default=2)
cli.add_argument("--max_new_tokens", type=int, default=None)
paths = cli.parse_args()

rm_adapter_id = paths.rm_adapter_id
model_name = paths.model_name
dataset_name = paths.dataset_name

input_min_text_length = 6
input_max_text_length = 12


def create_and_prepare_dataset(tokenizer):
    """The first 6..12 tokens of each chosen dialogue as the query."""
    dataset = load_dataset(dataset_name, split="train[:100%]")
    query_length = LengthSampler(input_min_text_length, input_max_text_length)

    def to_query(row):
        row["input_ids"] = tokenizer.encode(row["chosen"])[: query_length()]
        row["query"] = tokenizer.decode(row["input_ids"])
        return row

    dataset = dataset.map(to_query, batched=False)
    dataset.set_format("torch")
    return dataset


lora_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
on_gpu = torch.cuda.is_available()
model = AutoModelForCausalLMWithValueHead.from_pretrained(
    model_name,
    device_map={"": 0} if on_gpu else None,
    peft_config=lora_config,
    reward_adapter=rm_adapter_id,
)
tokenizer = AutoTokenizer.from_pretrained(model_name)
tokenizer.pad_token = tokenizer.eos_token

dataset = create_and_prepare_dataset(tokenizer)


def collator(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


config = PPOConfig(
    model_name=model_name,
    learning_rate=1e-5,
    batch_size=paths.batch_size,
    mini_batch_size=paths.mini_batch_size,
    gradient_accumulation_steps=2,
    optimize_device_cache=True,
)

ppo_trainer = PPOTrainer(config, model, ref_model=None, tokenizer=tokenizer, dataset=dataset, data_collator=collator)

generation_kwargs = {"top_k": 0.0, "top_p": 1.0, "do_sample": True, "pad_token_id": tokenizer.pad_token_id}
if paths.max_new_tokens:
    generation_kwargs["max_new_tokens"] = paths.max_new_tokens

for _epoch, batch in tqdm(enumerate(ppo_trainer.dataloader)):
    question_tensors = batch["input_ids"]

    response_tensors = ppo_trainer.generate(question_tensors, return_prompt=False, **generation_kwargs)
    batch["response"] = tokenizer.batch_decode(response_tensors, skip_special_tokens=True)

    # reward: the reward adapter's label-1 score at the last position
    texts = [q + r for q, r in zip(batch["query"], batch["response"])]
    inputs = tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(ppo_trainer.accelerator.device)
    raw_rewards = ppo_trainer.model.compute_reward_score(**inputs)
    rewards = [raw_rewards[i, -1, 1] for i in range(len(raw_rewards))]

    stats = ppo_trainer.step(question_tensors, response_tensors, rewards)
    ppo_trainer.log_stats(stats, batch, rewards)
