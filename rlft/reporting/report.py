"""A short run report in Markdown and in self-contained HTML (images embedded as base64)."""

from __future__ import annotations

import base64
import html
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

#: Table cells longer than this are cut (with an ellipsis) so a report stays readable.
MAX_CELL_CHARS = 600
#: Rows shown per table; the rest are counted in a note.
MAX_TABLE_ROWS = 50

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
table { border-collapse: collapse; width: 100%; font-size: 90%; margin: .8em 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; white-space: pre-wrap; }
th { background: #f5f5f7; }
code { background: #f5f5f7; padding: 0 .25em; border-radius: 3px; }
pre { background: #f5f5f7; padding: .8em; overflow-x: auto; }
.note { color: #666; font-size: 90%; }
"""


@dataclass
class Section:
    """One part of a report.

    heading: the section title. text_markdown: a few paragraphs of Markdown (headings, lists,
    ``code``, **bold**, fenced code and [links](url) are rendered in the HTML). images: PNG
    (or JPEG/GIF/SVG) files shown in order. table: rows as dicts; the columns are the union of
    their keys in first-seen order.
    """

    heading: str
    text_markdown: str = ""
    images: list = field(default_factory=list)
    table: list[dict] | None = None


def write_report(run_dir: Any, title: str, sections: Sequence[Section], name: str = "report") -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.html`` into ``run_dir`` (a `RunDir` or a folder).

    The Markdown links images relative to the run directory; the HTML embeds them, so it can
    be mailed or opened anywhere alone. Table cells are HTML-escaped, and control characters
    (the NUL bytes a tiny random model generates, ...) are written as ``\\x00``-style escapes in both
    files. Missing image files are named in a note instead of failing the report.

    Returns:
        (markdown path, HTML path).
    """
    root = Path(getattr(run_dir, "path", run_dir))
    root.mkdir(parents=True, exist_ok=True)
    md_parts = [f"# {title}\n"]
    html_parts = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        md_parts.append(_section_markdown(section, root))
        html_parts.append(_section_html(section, root))
    md_path, html_path = root / f"{name}.md", root / f"{name}.html"
    md_path.write_text(escape_control_chars("\n".join(md_parts)), encoding="utf-8")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(html_parts)
        + "\n</body>\n</html>\n"
    )
    html_path.write_text(escape_control_chars(page), encoding="utf-8")
    return md_path, html_path


#: Control characters other than tab, newline and carriage return: invisible, and invalid in HTML.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def escape_control_chars(text: str) -> str:
    """``text`` with each control character (but tab and line breaks) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# ---------------------------------------------------------------------- markdown
def _section_markdown(section: Section, root: Path) -> str:
    parts = [f"## {section.heading}\n"]
    if section.text_markdown.strip():
        parts.append(section.text_markdown.strip() + "\n")
    for image in section.images:
        path = _resolve(image, root)
        if path.exists():
            parts.append(f"![{path.stem}]({_relative(path, root)})\n")
        else:
            parts.append(f"*(missing image: {image})*\n")
    if section.table:
        parts.append(_table_markdown(section.table))
    return "\n".join(parts)


def _table_markdown(rows: list[dict]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:MAX_TABLE_ROWS]:
        lines.append("| " + " | ".join(_md_cell(_format(row.get(c, ""))) for c in columns) + " |")
    if len(rows) > MAX_TABLE_ROWS:
        lines.append(f"\n*{len(rows) - MAX_TABLE_ROWS} more rows not shown.*")
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    # A pipe would end the cell and a newline the row; HTML in a cell would be rendered by viewers.
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


# ---------------------------------------------------------------------- html
def _section_html(section: Section, root: Path) -> str:
    parts = [f"<section>\n<h2>{html.escape(section.heading)}</h2>"]
    if section.text_markdown.strip():
        parts.append(markdown_to_html(section.text_markdown))
    for image in section.images:
        path = _resolve(image, root)
        if path.exists():
            mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f'<img alt="{html.escape(path.stem)}" src="data:{mime};base64,{data}">')
        else:
            parts.append(f'<p class="note">missing image: {html.escape(str(image))}</p>')
    if section.table:
        parts.append(_table_html(section.table))
    parts.append("</section>")
    return "\n".join(parts)


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}


def _table_html(rows: list[dict]) -> str:
    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in rows[:MAX_TABLE_ROWS]
    )
    note = f'<p class="note">{len(rows) - MAX_TABLE_ROWS} more rows not shown.</p>' if len(rows) > MAX_TABLE_ROWS else ""
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>{note}"


def markdown_to_html(text: str) -> str:
    """A small Markdown subset as HTML: headings, paragraphs, ``-``/``*`` lists, fenced code,
    ``code``, **bold**, *italic* and [links](url). Everything else is escaped text."""
    out: list[str] = []
    paragraph: list[str] = []
    in_list = False
    in_code = False
    code: list[str] = []

    def flush_paragraph():
        if paragraph:
            out.append("<p>" + _inline(" ".join(paragraph)) + "</p>")
            paragraph.clear()

    def close_list():
        nonlocal in_list
        if in_list:
            out.append("</ul>")
            in_list = False

    for line in text.strip("\n").splitlines():
        if line.strip().startswith("```"):
            if in_code:
                out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
                code.clear()
                in_code = False
            else:
                flush_paragraph()
                close_list()
                in_code = True
            continue
        if in_code:
            code.append(line)
            continue
        stripped = line.strip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        item = re.match(r"^[-*]\s+(.*)$", stripped)
        if not stripped:
            flush_paragraph()
            close_list()
        elif heading:
            flush_paragraph()
            close_list()
            level = min(6, len(heading.group(1)) + 2)  # inside a section: below its h2
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif item:
            flush_paragraph()
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(item.group(1))}</li>")
        else:
            close_list()
            paragraph.append(stripped)
    if in_code:
        out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
    flush_paragraph()
    close_list()
    return "\n".join(out)


def _inline(text: str) -> str:
    # Split out code spans first so their content is never formatted.
    pieces = re.split(r"(`[^`]+`)", text)
    out = []
    for piece in pieces:
        if piece.startswith("`") and piece.endswith("`") and len(piece) > 1:
            out.append(f"<code>{html.escape(piece[1:-1])}</code>")
            continue
        escaped = html.escape(piece)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        escaped = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", escaped)
        escaped = re.sub(
            r"\[([^\]]+)\]\(((?:https?://|\.{0,2}/|[\w.-]+)[^)\s]*)\)",
            lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>' if not m.group(2).lower().startswith("javascript:") else m.group(0),
            escaped,
        )
        out.append(escaped)
    return "".join(out)


# ---------------------------------------------------------------------- helpers
def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def _format(value: Any) -> str:
    if isinstance(value, float):
        text = "nan" if math.isnan(value) else f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_format(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _resolve(image: Any, root: Path) -> Path:
    """An absolute path; a relative one under the run directory, else relative to the working directory."""
    path = Path(os.fspath(image))
    if path.is_absolute() or not (root / path).exists() and path.exists():
        return path
    return root / path


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
