"""README's Python quickstart runs as written (in an empty folder, offline) and trains a step."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_quickstart_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    code = text.split("### Python quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 16 and "examples/quickstart.py" in text
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    stats = namespace["stats"]
    assert "ppo/loss/total" in stats and namespace["response"].numel() > 0
