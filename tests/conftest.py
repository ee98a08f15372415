"""Offline fixtures: a tiny BPE tokenizer and tiny random models of several architectures.

Built once per test session in a temporary folder (about a second in all);
every test gets fresh objects loaded from there, so tests may modify them.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch

from rlft.testing import tiny

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message=".*Writing model shards.*")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tokenizer_path(tiny_dir):
    path = tiny_dir / "tokenizer"
    tiny.build_tokenizer(path)
    return str(path)


@pytest.fixture
def tokenizer(tokenizer_path):
    """A fresh tiny tokenizer with no pad token set (like GPT-2's)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_path)


@pytest.fixture
def pad_tokenizer(tokenizer):
    """The tiny tokenizer with pad = EOS, as TRL users set it for GPT-2."""
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def model_path(tiny_dir, tokenizer_path):
    """model_path(arch) -> folder of a saved tiny random model of that architecture (built on first use)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    cache: dict[str, str] = {}

    def get(arch: str = "gpt2") -> str:
        if arch not in cache:
            path = tiny_dir / f"model-{arch}"
            tiny.build_model(arch, tok, save_dir=path)
            tok.save_pretrained(str(path))
            cache[arch] = str(path)
        return cache[arch]

    return get


@pytest.fixture(autouse=True)
def _fresh_warn_once():
    """rlft warns once per process about each old spelling; every test starts with none warned yet,
    so a test that expects the warning does not depend on which tests ran before it."""
    from rlft import _compat

    _compat._warned.clear()
    yield
