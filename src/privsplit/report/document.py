"""A tiny report document: blocks rendered to Markdown and to self-contained HTML (figures inlined)."""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from privsplit.markdown import markdown_table

__all__ = ["Document", "markdown_table"]


@dataclass
class Document:
    """A report as a list of blocks (headings, paragraphs, tables, figures), rendered to markdown and HTML."""
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str) -> None:
        """Add a section heading."""
        self.blocks.append(("h2", text))

    def para(self, text: str) -> None:
        """Add a paragraph."""
        self.blocks.append(("p", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Add a table."""
        self.blocks.append(("table", list(headers), [list(r) for r in rows]))

    def figure(self, path: str | Path, caption: str) -> None:
        """Add a figure (inlined in the HTML) with its caption."""
        self.blocks.append(("img", Path(path), caption))

    def markdown(self, base: Path) -> str:
        """The document as markdown, figure paths relative to ``base``."""
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h2":
                out += [f"## {block[1]}", ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "table":
                out += [markdown_table(block[1], block[2]), ""]
            else:
                out += [f"![{block[2]}]({block[1].relative_to(base).as_posix()})", f"*{block[2]}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        """The document as one self-contained HTML page (figures inlined as base64)."""
        esc = html.escape
        out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{esc(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;"
               "text-align:right}th{background:#eee}img{max-width:100%}figcaption{color:#555}</style></head><body>",
               f"<h1>{esc(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h2":
                out.append(f"<h2>{esc(block[1])}</h2>")
            elif kind == "p":
                out.append(f"<p>{esc(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{esc(str(h))}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            else:
                data = base64.b64encode(block[1].read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(block[2])}'>"
                           f"<figcaption>{esc(block[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, folder: Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``stem.md`` and ``stem.html`` into ``folder``; returns both paths."""
        md, page = folder / f"{stem}.md", folder / f"{stem}.html"
        md.write_text(self.markdown(folder))
        page.write_text(self.html())
        return md, page
