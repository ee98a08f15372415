"""``rlft <command> --help`` in well under a second: the help text, once rendered, is kept in rlft's
cache and reused while neither rlft's sources nor the versions of the libraries whose dataclasses
make up the options change. (Rendering it imports transformers, which alone takes seconds.)"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path

#: Libraries whose classes contribute options (TrainingArguments, peft's task types, ...).
_LIBRARIES = ("transformers", "peft", "torch", "diffusers")
HELP_FLAGS = ("-h", "--help")


def cache_folder() -> Path:
    """Where rendered help texts are kept: ``$RLFT_CACHE/help`` (default ``~/.cache/rlft/help``)."""
    root = os.environ.get("RLFT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlft")
    return Path(root) / "help"


def _key(command: str) -> str:
    """A fingerprint of everything the help text depends on: rlft's sources and the libraries' versions."""
    digest = hashlib.sha1(command.encode())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    for name in _LIBRARIES:
        try:
            digest.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=none".encode())
    return digest.hexdigest()[:16]


def cached_help(command: str) -> str | None:
    """The rendered help of ``command`` if it is cached and current, else None."""
    try:
        return (cache_folder() / f"{command}-{_key(command)}.txt").read_text(encoding="utf-8")
    except OSError:
        return None


def store_help(command: str, text: str) -> None:
    """Keep ``text`` for the next ``rlft <command> --help`` (older versions of it are removed); never fails."""
    folder = cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{command}-*.txt"):
            old.unlink(missing_ok=True)
        path = folder / f"{command}-{_key(command)}.txt"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
