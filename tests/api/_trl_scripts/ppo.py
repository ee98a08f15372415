"""Sentiment PPO, the usage of TRL 0.7.10's ``examples/scripts/ppo.py`` (our wording).

A tyro command line holding a PPOConfig and a LoraConfig, a review dataset cut into short
queries, a value-head policy (plus a reference copy), and the loop over ``ppo_trainer.dataloader``:
generate policy and reference responses, score both with a sentiment pipeline read as
``output[1]["score"]`` (transformers 4's ``return_all_scores``: needs RLFT_LEGACY=1), ``step``,
``log_stats``. Differences from TRL: the import, local paths, smaller sizes.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import tyro
from accelerate import Accelerator
from datasets import load_dataset
from peft import LoraConfig
from tqdm import tqdm
from transformers import AutoTokenizer, pipeline

from rlft import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer, set_seed
from rlft.core import LengthSampler

tqdm.pandas()


@dataclass
class ScriptArguments:
    ppo_config: PPOConfig = field(
        default_factory=lambda: PPOConfig(
            model_name="lvwerra/gpt2-imdb",
            query_dataset="imdb",
            reward_model="sentiment-analysis:lvwerra/distilbert-imdb",
            learning_rate=1.41e-5,
            log_with=None,
            mini_batch_size=128,
            batch_size=128,
            gradient_accumulation_steps=1,
            early_stopping=False,
            target_kl=6.0,
            kl_penalty="kl",
            seed=0,
            use_score_scaling=False,
            use_score_norm=False,
            score_clip=None,
        )
    )
    use_seq2seq: bool = False
    """encoder-decoder policy instead of a causal one"""
    use_peft: bool = False
    """train a LoRA adapter; the reference is then the policy with its adapter off"""
    peft_config: Optional[LoraConfig] = field(
        default_factory=lambda: LoraConfig(r=16, lora_alpha=16, bias="none", task_type="CAUSAL_LM")
    )
    trust_remote_code: bool = False


args = tyro.cli(ScriptArguments)

# the classifier's raw logits for every label, in label order
sent_kwargs = {"return_all_scores": True, "function_to_apply": "none", "batch_size": 4}

value_head_class = AutoModelForSeq2SeqLMWithValueHead if args.use_seq2seq else AutoModelForCausalLMWithValueHead


def build_dataset(config, query_dataset, input_min_text_length=2, input_max_text_length=8):
    """Reviews longer than 200 characters, each cut to a random 2..8-token query."""
    tokenizer = AutoTokenizer.from_pretrained(config.model_name)
    tokenizer.pad_token = tokenizer.eos_token
    ds = load_dataset(query_dataset, split="train")
    ds = ds.rename_columns({"text": "review"})
    ds = ds.filter(lambda row: len(row["review"]) > 200, batched=False)
    query_length = LengthSampler(input_min_text_length, input_max_text_length)

    def to_query(row):
        row["input_ids"] = tokenizer.encode(row["review"])[: query_length()]
        row["query"] = tokenizer.decode(row["input_ids"])
        return row

    ds = ds.map(to_query, batched=False)
    ds.set_format(type="torch")
    return ds


dataset = build_dataset(args.ppo_config, args.ppo_config.query_dataset)


def collator(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


set_seed(args.ppo_config.seed)

if args.use_peft:
    peft_config = args.peft_config
    ref_model = None
    device_map = {"": Accelerator().local_process_index} if torch.cuda.is_available() else None
else:
    peft_config = None
    device_map = None
    ref_model = value_head_class.from_pretrained(args.ppo_config.model_name, trust_remote_code=args.trust_remote_code)

model = value_head_class.from_pretrained(
    args.ppo_config.model_name, trust_remote_code=args.trust_remote_code, device_map=device_map, peft_config=peft_config
)
tokenizer = AutoTokenizer.from_pretrained(args.ppo_config.model_name)
tokenizer.pad_token_id = tokenizer.eos_token_id  # GPT-2 style tokenizers have no pad token

ppo_trainer = PPOTrainer(args.ppo_config, model, ref_model, tokenizer, dataset=dataset, data_collator=collator)

# the reward pipeline goes on the trainer's device (the CPU when there is one process and no GPU)
device = ppo_trainer.accelerator.device
if ppo_trainer.accelerator.num_processes == 1:
    device = 0 if torch.cuda.is_available() else "cpu"
task, reward_model_name = args.ppo_config.reward_model.split(":")
ds_plugin = ppo_trainer.accelerator.state.deepspeed_plugin
if ds_plugin is not None and ds_plugin.is_zero3_init_enabled():
    with ds_plugin.zero3_init_context_manager(enable=False):
        sentiment_pipe = pipeline(task, model=reward_model_name, device=device)
else:
    sentiment_pipe = pipeline(task, model=reward_model_name, device=device)

# a GPT-2 style reward model needs a pad token to score a batch
if sentiment_pipe.tokenizer.pad_token_id is None:
    sentiment_pipe.tokenizer.pad_token_id = tokenizer.pad_token_id
if sentiment_pipe.model.config.pad_token_id is None:
    sentiment_pipe.model.config.pad_token_id = tokenizer.pad_token_id

generation_kwargs = {
    "min_length": -1,
    "top_k": 0.0,
    "top_p": 1.0,
    "do_sample": True,
    "pad_token_id": tokenizer.eos_token_id,
    "max_new_tokens": 6,
}

for _epoch, batch in tqdm(enumerate(ppo_trainer.dataloader)):
    query_tensors = batch["input_ids"]

    # responses of the policy and, for comparison, of the reference model
    response_tensors, ref_response_tensors = ppo_trainer.generate(
        query_tensors, return_prompt=False, generate_ref_response=True, **generation_kwargs
    )
    batch["response"] = tokenizer.batch_decode(response_tensors)
    batch["ref_response"] = tokenizer.batch_decode(ref_response_tensors)

    # reward: the POSITIVE logit of query + response
    texts = [q + r for q, r in zip(batch["query"], batch["response"])]
    rewards = [torch.tensor(out[1]["score"]) for out in sentiment_pipe(texts, **sent_kwargs)]
    ref_texts = [q + r for q, r in zip(batch["query"], batch["ref_response"])]
    batch["ref_rewards"] = [torch.tensor(out[1]["score"]) for out in sentiment_pipe(ref_texts, **sent_kwargs)]

    stats = ppo_trainer.step(query_tensors, response_tensors, rewards)
    ppo_trainer.log_stats(stats, batch, rewards, columns_to_log=["query", "response", "ref_response", "ref_rewards"])
