"""StackLLaMA PPO, the usage of TRL 0.7.10's ``examples/research_projects/stack_llama/scripts/rl_training.py``.

(Our wording.) An HfArgumentParser command line, ``PPOConfig(steps=..., optimize_cuda_cache=True, ...)``,
questions turned into "Question: ...\\n\\nAnswer: " queries, a LoRA value-head policy with no
reference model (the adapter is switched off instead), a reward pipeline read as
``output[0]["score"]`` of ``return_all_scores`` (needs RLFT_LEGACY=1, as does ``load_in_8bit``
given to from_pretrained), a ``LengthSampler`` for the response length, a loop that stops at
``config.total_ppo_epochs``, and ``ppo_trainer.save_pretrained`` every ``save_freq`` steps.

Differences from TRL: the import, local paths, smaller sizes, and the device: TRL put the
policy and the reward model on ``{"": Accelerator().local_process_index}`` (GPU 0, which a CPU
machine does not have); here the policy goes to ``"cpu"`` when there is no GPU and the reward
pipeline to ``ppo_trainer.model.current_device`` (as TRL's PEFT docs do).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from accelerate import Accelerator
from datasets import load_dataset
from peft import LoraConfig
from tqdm import tqdm
from transformers import Adafactor, AutoTokenizer, HfArgumentParser, pipeline

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, set_seed
from rlft.core import LengthSampler

tqdm.pandas()


@dataclass
class ScriptArguments:
    model_name: Optional[str] = field(default="", metadata={"help": "the SFT model"})
    tokenizer_name: Optional[str] = field(default="", metadata={"help": "its tokenizer"})
    reward_model_name: Optional[str] = field(default="", metadata={"help": "the reward model"})
    dataset_name: Optional[str] = field(default="lvwerra/stack-exchange-paired", metadata={"help": "questions"})
    log_with: Optional[str] = field(default=None, metadata={"help": "'wandb' to log there"})
    learning_rate: Optional[float] = field(default=1.41e-5, metadata={"help": "learning rate"})
    output_max_length: Optional[int] = field(default=128, metadata={"help": "longest response"})
    mini_batch_size: Optional[int] = field(default=1, metadata={"help": "PPO minibatch size"})
    batch_size: Optional[int] = field(default=32, metadata={"help": "samples per PPO step"})
    ppo_epochs: Optional[int] = field(default=4, metadata={"help": "PPO epochs per step"})
    gradient_accumulation_steps: Optional[int] = field(default=4, metadata={"help": "accumulation steps"})
    adafactor: Optional[bool] = field(default=False, metadata={"help": "Adafactor instead of Adam"})
    early_stopping: Optional[bool] = field(default=False, metadata={"help": "stop a step early on high KL"})
    target_kl: Optional[float] = field(default=0.1, metadata={"help": "KL target of early stopping"})
    reward_baseline: Optional[float] = field(default=0.0, metadata={"help": "subtracted from each reward"})
    batched_gen: Optional[bool] = field(default=False, metadata={"help": "generate in batches"})
    save_freq: Optional[int] = field(default=None, metadata={"help": "save every this many steps"})
    output_dir: Optional[str] = field(default="runs/", metadata={"help": "prefix of the saved folders"})
    seed: Optional[int] = field(default=0, metadata={"help": "seed"})
    steps: Optional[int] = field(default=20000, metadata={"help": "samples to train on"})
    init_kl_coef: Optional[float] = field(default=0.2, metadata={"help": "initial KL coefficient"})
    adap_kl_ctrl: Optional[bool] = field(default=True, metadata={"help": "adaptive KL control"})
    load_in_8bit: Optional[bool] = field(default=True, metadata={"help": "load the models in 8 bits"})


parser = HfArgumentParser(ScriptArguments)
script_args: ScriptArguments = parser.parse_args_into_dataclasses()[0]
reward_model_name = script_args.reward_model_name

config = PPOConfig(
    steps=script_args.steps,
    model_name=script_args.model_name,
    learning_rate=script_args.learning_rate,
    log_with=script_args.log_with,
    batch_size=script_args.batch_size,
    mini_batch_size=script_args.mini_batch_size,
    gradient_accumulation_steps=script_args.gradient_accumulation_steps,
    optimize_cuda_cache=True,
    early_stopping=script_args.early_stopping,
    target_kl=script_args.target_kl,
    ppo_epochs=script_args.ppo_epochs,
    seed=script_args.seed,
    init_kl_coef=script_args.init_kl_coef,
    adap_kl_ctrl=script_args.adap_kl_ctrl,
)

train_dataset = load_dataset(script_args.dataset_name, data_dir="data/rl", split="train")
original_columns = train_dataset.column_names

# raw reward-model outputs, for every label
sent_kwargs = {"return_all_scores": True, "function_to_apply": "none", "batch_size": 16, "truncation": True}

tokenizer = AutoTokenizer.from_pretrained(script_args.tokenizer_name)
if getattr(tokenizer, "pad_token", None) is None:  # LLaMA tokenizers have none
    tokenizer.pad_token = tokenizer.eos_token


def build_dataset(tokenizer):
    """Each question as a "Question: ...\\n\\nAnswer: " query, tokenised; queries of 512 tokens or more dropped."""

    def to_queries(examples):
        out = {"query": [], "input_ids": []}
        for question in examples["question"]:
            query = "Question: " + question + "\n\nAnswer: "
            out["query"].append(query)
            out["input_ids"].append(tokenizer(query, truncation=True)["input_ids"])
        return out

    ds = train_dataset.map(to_queries, batched=True, num_proc=1, remove_columns=original_columns)
    ds = ds.filter(lambda row: len(row["input_ids"]) < 512, batched=False)
    ds.set_format(type="torch")
    return ds


dataset = build_dataset(tokenizer)


def collator(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


set_seed(config.seed)

current_device = Accelerator().local_process_index if torch.cuda.is_available() else "cpu"

lora_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
model = AutoModelForCausalLMWithValueHead.from_pretrained(
    config.model_name,
    load_in_8bit=script_args.load_in_8bit,
    device_map={"": current_device},
    peft_config=lora_config,
)

optimizer = None
if script_args.adafactor:
    optimizer = Adafactor(
        filter(lambda p: p.requires_grad, model.parameters()),
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
        lr=config.learning_rate,
    )
ppo_trainer = PPOTrainer(
    config, model, ref_model=None, tokenizer=tokenizer, dataset=dataset, data_collator=collator, optimizer=optimizer
)

# the reward model, beside the policy
sentiment_pipe = pipeline(
    "sentiment-analysis",
    model=reward_model_name,
    device=ppo_trainer.model.current_device,
    model_kwargs={"load_in_8bit": script_args.load_in_8bit},
    tokenizer=tokenizer,
    return_token_type_ids=False,
)
if sentiment_pipe.model.config.pad_token_id is None:
    sentiment_pipe.model.config.pad_token_id = sentiment_pipe.model.config.eos_token_id

# sample until the length the sampler draws (an unreachable EOS id keeps generation from stopping early)
generation_kwargs = {
    "top_k": 0.0,
    "top_p": 1.0,
    "do_sample": True,
    "pad_token_id": tokenizer.pad_token_id,
    "eos_token_id": 100_000,
}
output_min_length = 4
output_max_length = script_args.output_max_length
output_length_sampler = LengthSampler(output_min_length, output_max_length)

for epoch, batch in tqdm(enumerate(ppo_trainer.dataloader)):
    if epoch >= config.total_ppo_epochs:
        break

    question_tensors = batch["input_ids"]
    response_tensors = ppo_trainer.generate(
        question_tensors, return_prompt=False, length_sampler=output_length_sampler, **generation_kwargs
    )
    batch["response"] = tokenizer.batch_decode(response_tensors, skip_special_tokens=True)

    # reward: the reward model's single score, less a baseline
    texts = [q + r for q, r in zip(batch["query"], batch["response"])]
    pipe_outputs = sentiment_pipe(texts, **sent_kwargs)
    rewards = [torch.tensor(output[0]["score"] - script_args.reward_baseline) for output in pipe_outputs]

    stats = ppo_trainer.step(question_tensors, response_tensors, rewards)
    ppo_trainer.log_stats(stats, batch, rewards)

    if script_args.save_freq and epoch and epoch % script_args.save_freq == 0:
        ppo_trainer.save_pretrained(script_args.output_dir + f"step_{epoch}")
