"""Reward modelling, the usage of TRL 0.7.10's ``examples/scripts/reward_modeling.py`` (our wording).

A tyro command line holding a RewardConfig (with TRL 0.7 / transformers 4 field names) and a
LoraConfig, a one-label sequence classifier, chosen/rejected pairs tokenised into the four
columns RewardTrainer reads, pairs longer than ``max_length`` filtered out, an optional eval
split switched on by assigning ``evaluation_strategy`` after parsing, then ``train``.
Differences from TRL: the import, local paths, smaller sizes.
"""

from dataclasses import dataclass, field
from typing import Optional

import tyro
from accelerate import Accelerator
from datasets import load_dataset
from peft import LoraConfig
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

from rlft import RewardConfig, RewardTrainer, is_xpu_available

tqdm.pandas()


@dataclass
class ScriptArguments:
    model_name: str = "facebook/opt-350m"
    """the model to turn into a reward model"""
    dataset_name: str = "Anthropic/hh-rlhf"
    """chosen/rejected pairs"""
    dataset_text_field: str = "text"
    eval_split: str = "none"
    """split to evaluate on ('none': no evaluation)"""
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    trust_remote_code: bool = True
    reward_config: RewardConfig = field(
        default_factory=lambda: RewardConfig(
            output_dir="output",
            per_device_train_batch_size=64,
            num_train_epochs=1,
            gradient_accumulation_steps=16,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            learning_rate=1.41e-5,
            report_to="none",
            remove_unused_columns=False,
            optim="adamw_torch",
            logging_steps=500,
            evaluation_strategy="no",
            max_length=512,
        )
    )
    use_peft: bool = False
    """train a LoRA adapter (and the score head)"""
    peft_config: Optional[LoraConfig] = field(
        default_factory=lambda: LoraConfig(
            r=16, lora_alpha=16, bias="none", task_type="SEQ_CLS", modules_to_save=["scores"]
        ),
    )


args = tyro.cli(ScriptArguments)
args.reward_config.evaluation_strategy = "steps" if args.eval_split != "none" else "no"

# 1. the model: one output, the reward
if args.load_in_8bit and args.load_in_4bit:
    raise ValueError("choose 8 bits or 4 bits, not both")
elif args.load_in_8bit or args.load_in_4bit:
    quantization_config = BitsAndBytesConfig(load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit)
    device_map = {"": f"xpu:{Accelerator().local_process_index}"} if is_xpu_available() else {"": Accelerator().local_process_index}
else:
    device_map = None
    quantization_config = None

model = AutoModelForSequenceClassification.from_pretrained(
    args.model_name,
    quantization_config=quantization_config,
    device_map=device_map,
    trust_remote_code=args.trust_remote_code,
    num_labels=1,
)

# 2. tokenise each pair into the columns RewardTrainer expects
tokenizer = AutoTokenizer.from_pretrained(args.model_name)
train_dataset = load_dataset(args.dataset_name, split="train")


def preprocess_function(examples):
    columns = {"input_ids_chosen": [], "attention_mask_chosen": [], "input_ids_rejected": [], "attention_mask_rejected": []}
    for chosen, rejected in zip(examples["chosen"], examples["rejected"]):
        good, bad = tokenizer(chosen), tokenizer(rejected)
        columns["input_ids_chosen"].append(good["input_ids"])
        columns["attention_mask_chosen"].append(good["attention_mask"])
        columns["input_ids_rejected"].append(bad["input_ids"])
        columns["attention_mask_rejected"].append(bad["attention_mask"])
    return columns


def short_enough(row):
    limit = args.reward_config.max_length
    return len(row["input_ids_chosen"]) <= limit and len(row["input_ids_rejected"]) <= limit


train_dataset = train_dataset.map(preprocess_function, batched=True, num_proc=1)
train_dataset = train_dataset.filter(short_enough)

if args.eval_split == "none":
    eval_dataset = None
else:
    eval_dataset = load_dataset(args.dataset_name, split=args.eval_split)
    eval_dataset = eval_dataset.map(preprocess_function, batched=True, num_proc=1)
    eval_dataset = eval_dataset.filter(short_enough)

# 3. LoRA, when asked
peft_config = args.peft_config if args.use_peft else None

# 4. train
trainer = RewardTrainer(
    model=model,
    tokenizer=tokenizer,
    args=args.reward_config,
    train_dataset=train_dataset,
    eval_dataset=eval_dataset,
    peft_config=peft_config,
)
trainer.train()
