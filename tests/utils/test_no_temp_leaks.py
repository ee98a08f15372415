"""Helpers that build throwaway files clean them up (a test run used to leave ~25 folders in /tmp)."""

from __future__ import annotations

import tempfile
from pathlib import Path


def _entries(prefix: str) -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(prefix + "*")}


def test_tiny_clip_tokenizer_leaves_no_folder_behind():
    from rlft.testing.tiny_diffusion import build_clip_tokenizer

    before = _entries("rlft-tiny-clip-")
    tokenizer = build_clip_tokenizer()
    assert _entries("rlft-tiny-clip-") == before
    ids = tokenizer("the cat")["input_ids"]  # still usable after its files are gone
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "thecat"


def test_tiny_clip_tokenizer_keeps_an_explicit_folder(tmp_path):
    from rlft.testing.tiny_diffusion import build_clip_tokenizer

    build_clip_tokenizer(tmp_path / "tok")
    assert (tmp_path / "tok" / "vocab.json").is_file() and (tmp_path / "tok" / "merges.txt").is_file()
