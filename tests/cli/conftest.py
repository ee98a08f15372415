"""Fixtures for the command-line tests: small data files in every supported format."""

from __future__ import annotations

import json

import pytest

from rlft.cli._load import tiny_rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def data_files(tmp_path):
    """Paths of prompts.jsonl, texts.json (a list), pairs.csv and triples.parquet built from the tiny corpus."""
    import pandas as pd

    folder = tmp_path / "data"
    folder.mkdir()
    prompts = write_jsonl(folder / "prompts.jsonl", [{"prompt": r["query"], "id": i} for i, r in enumerate(tiny_rows("prompt")[:24])])
    texts = folder / "texts.json"
    texts.write_text(json.dumps(tiny_rows("text")[:24]), encoding="utf-8")
    triples = tiny_rows("preference")[:24]
    pd.DataFrame([{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in triples]).to_csv(
        folder / "pairs.csv", index=False
    )
    pd.DataFrame(triples).to_parquet(folder / "triples.parquet")
    return {"prompts": prompts, "texts": str(texts), "pairs": str(folder / "pairs.csv"), "triples": str(folder / "triples.parquet")}


@pytest.fixture(autouse=True, scope="session")
def _private_rlft_cache(tmp_path_factory):
    """`rlft <command> --help` caches its text under $RLFT_CACHE: keep the tests' copies out of ~/.cache."""
    import os

    old = os.environ.get("RLFT_CACHE")
    os.environ["RLFT_CACHE"] = str(tmp_path_factory.mktemp("rlft-cache"))
    yield
    if old is None:
        os.environ.pop("RLFT_CACHE", None)
    else:
        os.environ["RLFT_CACHE"] = old
