"""Render a report from sections: Markdown (figures as files beside it) and one self-contained HTML
(figures embedded as base64 PNG), both written through mammo_ray.storage."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mammo_ray import storage, tables


@dataclass
class Section:
    """A titled part of the report: paragraphs, boxes (a titled aside: e.g. what the paper reports, set apart from
    this study's results), tables and PNG figures, in that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    boxes: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, paragraphs)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)  # (caption, file name, PNG bytes)


def _is_count(column: object) -> bool:
    """Columns of counts are shown as integers (a float column of counts reads "217", not "217.000")."""
    name = str(column)
    return name.startswith("n_") or name in ("permutations", "oof_repeats", "cv_folds", "count")


def _is_p_value(column: object) -> bool:
    """Columns of p-values (delong_p, holm_p, permutation_p): shown by `format_p`, never as 0.000."""
    name = str(column)
    return name == "p" or name.endswith("_p")


def format_p(p: float) -> str:
    """A p-value as the report prints it everywhere: three decimals, or two significant digits in scientific
    notation below 0.001 (a p of 6e-06 is not "0.000")."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _format(value: object, count: bool = False, p_value: bool = False) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float):
        if pd.isna(value):
            return ""
        if p_value:
            return format_p(value)
        return f"{value:.0f}" if count and value == round(value) else f"{value:.3f}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


#: What opens Markdown inline syntax: code, emphasis, links and images, raw HTML and autolinks, table cells,
#: strikethrough, entities; '_' only at a word's edge (inside a word, as in site_a, it is plain text).
_INLINE_SYNTAX = re.compile(r"[\\`*\[\]<|~&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
#: What makes a line a heading, quote, list item or rule where it starts the line.
_BLOCK_START = re.compile(r"^(\d*)([#>+=.)-])")
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def markdown_text(value: object, starts_line: bool = False) -> str:
    """`value` (a study or site name, a message: text from a config, a manifest or an error) as literal Markdown
    text, as the HTML report shows it: control characters and line breaks become one space (a line stays one
    line, a cell one cell) and every character that opens Markdown syntax is escaped, so that `x](javascript:..)`
    or `a|b` is shown as written, never as a link, an HTML tag or another table cell. `starts_line`: the text
    begins a line (a paragraph), where an indent, '#', '>', '-' or '1.' would open a block."""
    text = _INLINE_SYNTAX.sub(lambda found: "\\" + found.group(0), _LINE_BREAKS.sub(" ", str(value)))
    return _BLOCK_START.sub(r"\1\\\2", text.lstrip()) if starts_line else text


def merge_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """Each pair of interval columns (`<x>ci_low`, `<x>ci_high`) shown as one column `<x>interval`, "a to b",
    where the low one stood: a reader reads an interval, not two numbers to pair up across a wide table."""
    shown = frame.copy()
    for low in [c for c in frame.columns if str(c).endswith("ci_low")]:
        high = str(low)[: -len("low")] + "high"
        if high not in shown:
            continue
        merged = [f"{_format(a)} to {_format(b)}" if pd.notna(a) and pd.notna(b) else ""
                  for a, b in zip(shown[low], shown[high], strict=True)]
        position = list(shown.columns).index(low)
        shown = shown.drop(columns=[low, high])
        shown.insert(position, str(low)[: -len("ci_low")] + "interval", merged)
    return shown


def markdown_table(frame: pd.DataFrame) -> str:
    frame = merge_intervals(frame)
    header = "| " + " | ".join(markdown_text(column) for column in frame.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    kinds = [(_is_count(c), _is_p_value(c)) for c in frame.columns]
    rows = ["| " + " | ".join(markdown_text(_format(v, *kind)) for v, kind in zip(row, kinds, strict=True))
            + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


#: Columns that name a row (kept in view while a wide table scrolls sideways).
KEY_COLUMNS = ("extractor", "model", "a")


def html_table(frame: pd.DataFrame) -> str:
    """A table in a container that scrolls sideways at a laptop's width, its first column kept in view
    when it names the row; numbers right-aligned, text left."""
    frame = merge_intervals(frame)
    sticky = len(frame.columns) > 0 and str(frame.columns[0]) in KEY_COLUMNS
    kinds = [(_is_count(c), _is_p_value(c)) for c in frame.columns]

    def cell(tag: str, text: str, index: int, numeric: bool) -> str:
        classes = " ".join(name for name, on in (("key", sticky and index == 0), ("num", numeric)) if on)
        return f"<{tag} class='{classes}'>{text}</{tag}>" if classes else f"<{tag}>{text}</{tag}>"

    # A column name may break after each '_' (and only there), so narrow columns keep whole words.
    head = "".join(cell("th", html.escape(str(c)).replace("_", "_<wbr>"), i, False)
                   for i, c in enumerate(frame.columns))
    body = "".join(
        "<tr>" + "".join(cell("td", html.escape(_format(v, *kinds[i])), i, _is_number(v))
                         for i, v in enumerate(row)) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def to_markdown(title: str, banner: str | None, sections: list[Section]) -> str:
    """The report as Markdown: its text literal (markdown_text), the structure (headings, tables, figures) ours."""
    text = markdown_text
    lines = [f"# {text(title)}", ""]
    if banner:
        lines += [f"> **{text(banner)}**", ""]
    lines += ["**Contents**", "", *(f"{i}. {text(section.title)}" for i, section in enumerate(sections, 1)), ""]
    for section in sections:
        lines += [f"## {text(section.title)}", ""]
        for paragraph in section.paragraphs:
            lines += [text(paragraph, starts_line=True), ""]
        for box_title, box in section.boxes:
            lines += [f"> **{text(box_title)}**", ">"]
            for paragraph in box:
                lines += [f"> {text(paragraph)}", ">"]
            lines[-1] = ""
        for caption, frame in section.tables:
            lines += [f"**{text(caption)}**", "", markdown_table(frame) if len(frame) else "_(no rows)_", ""]
        for caption, name, _ in section.figures:
            lines += [f"![{text(caption)}](figures/{name})", "", f"_{text(caption)}_", ""]
    return "\n".join(lines)


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    ".wide{overflow-x:auto;max-width:100%;margin:.5em 0 1.5em}"
    "table{border-collapse:collapse;font-size:.9em}"
    # Names wrap (at any character: extractor names have no spaces) so that the numbers stay in view on a narrow
    # screen; numbers never wrap.
    "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;overflow-wrap:anywhere;min-width:3em}"
    "th{background:#f3f3f3;overflow-wrap:normal}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    "@media (max-width:900px){table{font-size:.78em}td,th{padding:.2em .3em}}"
    ".key{position:sticky;left:0;background:#fff;z-index:1}th.key{background:#f3f3f3}"
    ".banner{background:#fff3cd;border:1px solid #e0b84c;padding:.75em 1em;font-weight:600}"
    "aside{background:#f4f6fa;border-left:4px solid #7a8bb0;padding:.5em 1em;margin:1em 0}"
    "aside h3{font-size:1em;margin:.25em 0}nav ol{columns:2;font-size:.95em}"
    "img{max-width:100%}figcaption{font-style:italic;color:#555}"
)


def to_html(title: str, banner: str | None, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if banner:
        parts.append(f"<p class='banner'>{html.escape(banner)}</p>")
    parts.append("<nav><b>Contents</b><ol>" + "".join(
        f"<li><a href='#section-{i}'>{html.escape(section.title)}</a></li>" for i, section in enumerate(sections, 1))
        + "</ol></nav>")
    for i, section in enumerate(sections, 1):
        parts.append(f"<h2 id='section-{i}'>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        for box_title, box in section.boxes:
            parts.append(f"<aside><h3>{html.escape(box_title)}</h3>"
                         + "".join(f"<p>{html.escape(p)}</p>" for p in box) + "</aside>")
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
