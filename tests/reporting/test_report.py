"""write_report: Markdown links the images, HTML embeds them and escapes table cells."""

from __future__ import annotations

import base64
import re

from rlft.reporting import RunDir
from rlft.reporting.report import Section, markdown_to_html, write_report

PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def test_markdown_and_self_contained_html(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.path / "plots").mkdir()
    (run.path / "plots" / "curve.png").write_bytes(PNG_1x1)
    sections = [
        Section("Curves", "Reward **rose**; see `plots/`.\n\n- one\n- two", images=["plots/curve.png", "plots/gone.png"]),
        Section("Samples", table=[{"query": "<script>alert(1)</script>", "score": 0.123456}, {"query": "a|b\nc", "extra": 1}]),
    ]
    md, html_path = write_report(run, "Run <1>", sections)
    assert md == run.path / "report.md" and html_path == run.path / "report.html"
    text = md.read_text()
    assert "# Run <1>" in text and "![curve](plots/curve.png)" in text and "missing image: plots/gone.png" in text
    assert "| query | score | extra |" in text and "a\\|b<br>c" in text and "&lt;script&gt;" in text
    page = html_path.read_text()
    assert "<title>Run &lt;1&gt;</title>" in page
    assert "data:image/png;base64," + base64.b64encode(PNG_1x1).decode() in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<strong>rose</strong>" in page and "<code>plots/</code>" in page and "<li>two</li>" in page
    assert "0.1235" in page
    assert not re.search(r'src="(?!data:)', page)  # nothing refers to a file outside the page


def test_absolute_and_cwd_relative_image_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir("rel/run")
    (run.path / "plots").mkdir()
    (run.path / "plots" / "a.png").write_bytes(PNG_1x1)
    md, html_path = write_report(run, "t", [Section("s", images=[run.path / "plots" / "a.png", (run.path / "plots" / "a.png").resolve()])])
    assert md.read_text().count("![a](plots/a.png)") == 2
    assert html_path.read_text().count("data:image/png;base64,") == 2


def test_markdown_subset():
    out = markdown_to_html("# Title\ntext *it* [l](https://x.org) [bad](javascript:alert(1))\n```\n<b>code</b>\n```")
    assert "<h3>Title</h3>" in out and "<em>it</em>" in out and '<a href="https://x.org">l</a>' in out
    assert "javascript" in out and 'href="javascript' not in out
    assert "<pre><code>&lt;b&gt;code&lt;/b&gt;</code></pre>" in out


def test_control_bytes_are_escaped_in_both_files(tmp_path):
    from rlft.reporting import Section, write_report

    md, page = write_report(tmp_path, "t", [Section("S", "text\x00", table=[{"sample": "a\x00b\x1b[1m", "ok": "tab\there"}])])
    for path in (md, page):
        text = path.read_text()
        assert "\x00" not in text and "\x1b" not in text
        assert "a\\x00b\\x1b[1m" in text and "\t" in text
