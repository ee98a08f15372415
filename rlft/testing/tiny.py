"""Tiny offline tokenizers and randomly initialised models.

Nothing here touches a model hub: the tokenizer is a byte-level BPE trained with
`tokenizers` on `data/corpus.txt` (docstrings of the Python standard library,
shipped with rlft), and the models are built from configs with random weights.
They back the test suite, the benchmarks and the command line's smoke test.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

#: Special tokens of the tiny tokenizer, in id order. GPT-2 style: one token is
#: BOS, EOS and UNK at once; ``<pad>`` exists in the vocabulary for seq2seq models
#: but is not set as the tokenizer's pad token (users set it, as with GPT-2).
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)

#: Architectures `build_model` knows, causal first.
CAUSAL_ARCHS = ("gpt2", "llama", "qwen2", "gpt_neox", "opt")
SEQ2SEQ_ARCHS = ("t5", "bart")
ARCHS = CAUSAL_ARCHS + SEQ2SEQ_ARCHS


def corpus_text() -> str:
    """The text the tiny tokenizer is trained on (about 120k characters)."""
    return resources.files("rlft.testing").joinpath("data/corpus.txt").read_text(encoding="utf-8")


def corpus_lines() -> list[str]:
    return [line for line in corpus_text().splitlines() if line.strip()]


def build_tokenizer(save_dir: str | os.PathLike, vocab_size: int = 1024):
    """Train a byte-level BPE on the shipped corpus and save it to ``save_dir``.

    The folder loads with both ``AutoTokenizer.from_pretrained`` and
    ``GPT2Tokenizer.from_pretrained``. Returns the loaded tokenizer.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus_lines(), vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    bpe.save_model(str(save_dir))  # vocab.json + merges.txt, for GPT2Tokenizer
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )
    fast.model_max_length = 512
    fast.save_pretrained(str(save_dir))
    return AutoTokenizer.from_pretrained(str(save_dir))


def _config(arch: str, vocab_size: int, eos_id: int, pad_id: int, **overrides):
    import transformers as tf

    small = dict(vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=eos_id)
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **small)
    elif arch == "llama":
        cfg = tf.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **small,
        )
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **small,
        )
    elif arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, **small,
        )
    elif arch == "opt":
        cfg = tf.OPTConfig(
            hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64,
            max_position_embeddings=256, pad_token_id=pad_id, **small,
        )
    elif arch == "t5":
        cfg = tf.T5Config(
            d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4,
            vocab_size=vocab_size, eos_token_id=eos_id, pad_token_id=pad_id, decoder_start_token_id=pad_id,
        )
    elif arch == "bart":
        cfg = tf.BartConfig(
            d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256, vocab_size=vocab_size,
            eos_token_id=eos_id, bos_token_id=eos_id, pad_token_id=pad_id, decoder_start_token_id=eos_id,
            forced_eos_token_id=None,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build_model(arch: str, tokenizer, save_dir: str | os.PathLike | None = None, seed: int = 0, **config_overrides):
    """A randomly initialised tiny model of ``arch`` sized for ``tokenizer``.

    Causal architectures come back as ``AutoModelForCausalLM``, seq2seq ones
    (``t5``, ``bart``) as ``AutoModelForSeq2SeqLM``. Saved with ``save_pretrained``
    when ``save_dir`` is given. ``seed`` fixes the initial weights.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    cfg = _config(arch, len(tokenizer), eos_id, pad_id, **config_overrides)
    auto = AutoModelForSeq2SeqLM if arch in SEQ2SEQ_ARCHS else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(cfg)
    model.generation_config.pad_token_id = pad_id if arch in SEQ2SEQ_ARCHS else eos_id
    if save_dir is not None:
        model.save_pretrained(str(save_dir))
    return model
