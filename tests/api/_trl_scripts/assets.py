"""Offline stand-ins for the hub models and datasets that TRL 0.7.10's example scripts download.

Every builder writes a folder that ``from_pretrained`` / ``pipeline`` / ``load_dataset`` accept
as the "name" the script would otherwise fetch from the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlft.testing import tiny

#: Prompts and replies of the stand-in datasets: short lines of the tiny tokenizer's corpus.
_LINES = [line.strip() for line in tiny.corpus_lines() if 40 < len(line.strip()) < 120][:64]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def sentiment_classifier(folder: Path, tokenizer, *, num_labels: int = 2, seed: int = 0) -> str:
    """A tiny randomly initialised GPT-2 sequence classifier (labels NEGATIVE/POSITIVE, or one score).

    Saved with the tokenizer, which has no pad token (like GPT-2's); no ``pad_token_id`` in the config.
    """
    from transformers import GPT2Config, GPT2ForSequenceClassification

    labels = {0: "NEGATIVE", 1: "POSITIVE"} if num_labels == 2 else {0: "LABEL_0"}
    cfg = GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=256, vocab_size=len(tokenizer), num_labels=num_labels,
                     id2label=labels, label2id={v: k for k, v in labels.items()},
                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2ForSequenceClassification(cfg)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def model_with_pad_token(folder: Path, tokenizer, arch: str = "opt") -> str:
    """A tiny causal LM whose saved tokenizer has a pad token of its own (as facebook/opt-350m's)."""
    tokenizer.pad_token = tiny.PAD_TOKEN
    tiny.build_model(arch, tokenizer, save_dir=folder)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def imdb_like(folder: Path, n: int = 8) -> str:
    """``text``/``label`` rows longer than 200 characters (TRL's sentiment script keeps only those)."""
    rows = [{"text": " ".join(_LINES[i : i + 4]), "label": i % 2} for i in range(n)]
    assert all(len(r["text"]) > 200 for r in rows)
    _write_jsonl(folder / "train.jsonl", rows)
    return str(folder)


def text_like(folder: Path, n: int = 8) -> str:
    """A ``text`` column of short "### Human: ... ### Assistant: ..." exchanges (openassistant-guanaco style)."""
    rows = [{"text": f"### Human: {_LINES[i]} ### Assistant: {_LINES[i + 20]}"} for i in range(n)]
    _write_jsonl(folder / "train.jsonl", rows)
    return str(folder)


def hh_like(folder: Path, n_train: int = 8, n_test: int = 4) -> str:
    """Anthropic HH-style ``chosen``/``rejected`` dialogues sharing the prompt up to the last "Assistant:"."""
    def rows(offset: int, n: int) -> list[dict]:
        out = []
        for i in range(offset, offset + n):
            prompt = f"\n\nHuman: {_LINES[i]}\n\nAssistant:"
            out.append({"chosen": prompt + " " + _LINES[i + 20], "rejected": prompt + " " + _LINES[i + 40][:20]})
        return out

    _write_jsonl(folder / "train.jsonl", rows(0, n_train))
    _write_jsonl(folder / "test.jsonl", rows(n_train, n_test))
    return str(folder)


def stack_exchange_like(folder: Path, n: int = 8) -> str:
    """StackExchange-paired-style rows (``question``, ``response_j``, ``response_k``) under ``data/rl``."""
    rows = [{"qid": i, "question": _LINES[i], "response_j": _LINES[i + 20], "response_k": _LINES[i + 40]}
            for i in range(n)]
    _write_jsonl(folder / "data" / "rl" / "train.jsonl", rows)
    return str(folder)


def reward_adapter(folder: Path, base_model_path: str, *, seed: int = 0) -> str:
    """A LoRA reward-model adapter on ``base_model_path``: sequence classification, two labels, head saved.

    As TRL's multi-adapter docs ask: trained as ``AutoModelForSequenceClassification`` with the
    score layer in ``modules_to_save``. Here it is randomly initialised (LoRA B non-zero) instead of trained.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = AutoModelForSequenceClassification.from_pretrained(base_model_path, num_labels=2)
        base.config.pad_token_id = base.config.eos_token_id
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS", modules_to_save=["score"]))
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name or "score" in name:
                    param.normal_(0, 0.5)
    peft_model.save_pretrained(str(folder))
    return str(folder)
