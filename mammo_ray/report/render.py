"""Render a report from sections: Markdown (figures as files beside it) and one self-contained HTML
(figures embedded as base64 PNG), both written through mammo_ray.storage."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

import pandas as pd

from mammo_ray import storage, tables


@dataclass
class Section:
    """A titled part of the report: paragraphs, tables and PNG figures, in that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)  # (caption, file name, PNG bytes)


def _format(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.3f}"
    if value is None or value is pd.NA:
        return ""
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_format(v).replace("|", "/") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_markdown(title: str, banner: str | None, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    if banner:
        lines += [f"> **{banner}**", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for caption, frame in section.tables:
            lines += [f"**{caption}**", "", markdown_table(frame) if len(frame) else "_(no rows)_", ""]
        for caption, name, _ in section.figures:
            lines += [f"![{caption}](figures/{name})", "", f"_{caption}_", ""]
    return "\n".join(lines)


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
    "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}"
    ".banner{background:#fff3cd;border:1px solid #e0b84c;padding:.75em 1em;font-weight:600}"
    "img{max-width:100%}figcaption{font-style:italic;color:#555}"
)


def to_html(title: str, banner: str | None, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if banner:
        parts.append(f"<p class='banner'>{html.escape(banner)}</p>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        for caption, frame in section.tables:
            body = html_table(frame) if len(frame) else "<p>(no rows)</p>"
            parts.append(f"<p><b>{html.escape(caption)}</b></p>" + body)
        for caption, _, png in section.figures:
            data = base64.b64encode(png).decode()
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(output_uri: str, title: str, banner: str | None, sections: list[Section]) -> dict[str, str]:
    """Write report.md, its figures and a self-contained report.html under `<output>/report/`."""
    folder = tables.report_uri(output_uri)
    for section in sections:
        for _, name, png in section.figures:
            storage.write_bytes(storage.join(folder, "figures", name), png)
    markdown_uri, html_uri = storage.join(folder, "report.md"), storage.join(folder, "report.html")
    storage.write_bytes(markdown_uri, to_markdown(title, banner, sections).encode())
    storage.write_bytes(html_uri, to_html(title, banner, sections).encode())
    return {"markdown": markdown_uri, "html": html_uri}
