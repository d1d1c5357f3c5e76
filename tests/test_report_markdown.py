"""report.md shows text from the config and the manifest as written: a study name, a site or a message cannot
open a link, an HTML tag, a table cell or a block in it (report.html escapes the same text as HTML)."""

from __future__ import annotations

import re

import pandas as pd

from mammo_ray.report.render import Section, markdown_text, to_html, to_markdown

NAME = "x](javascript:alert(1))"
SITE = "north|south\n<script>alert(1)</script>"
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _report() -> str:
    table = pd.DataFrame({"subgroup": ["site", "site"], "value": [SITE, "site_a"], "n": [12, 30]})
    section = Section("Subgroups", paragraphs=[f"# not a heading: {NAME}", "- not a list\n> nor a quote"],
                      tables=[("Sites", table)], figures=[(f"ROC of {NAME}", "roc.png", b"")])
    return to_markdown(f"mammo-ray study report: {NAME}", f"weights of {NAME}", [section])


def test_a_study_name_opens_no_link() -> None:
    markdown = _report()
    assert "# mammo-ray study report: x\\](javascript:alert(1))" in markdown.splitlines()
    assert "](javascript" not in markdown.replace("\\]", "")  # every ']' of the name is escaped
    assert "![ROC of x\\](javascript:alert(1))](figures/roc.png)" in markdown  # the figure, ours, still links


def test_a_site_with_a_pipe_and_a_newline_stays_one_cell_of_one_row() -> None:
    rows = [line for line in _report().splitlines() if line.startswith("| site |")]
    assert rows == ["| site | north\\|south \\<script>alert(1)\\</script> | 12 |", "| site | site_a | 30 |"]
    assert all(len(_UNESCAPED_PIPE.findall(row)) == 4 for row in rows)  # three cells, as the header has


def test_paragraphs_open_no_block_and_keep_to_one_line() -> None:
    lines = _report().splitlines()
    assert "\\# not a heading: x\\](javascript:alert(1))" in lines
    assert "\\- not a list > nor a quote" in lines  # mid-line, a ">" opens nothing
    assert not any(line.startswith(("# not", "- not", "> nor", "<script")) for line in lines)


def test_plain_names_are_left_as_they_are() -> None:
    assert markdown_text("imagenet_resnet18 site_a -> site_b: 0.812 (n=40)") == (
        "imagenet_resnet18 site_a -> site_b: 0.812 (n=40)")
    assert markdown_text("_x_ **y** `z` a&b ~~c~~") == "\\_x\\_ \\*\\*y\\*\\* \\`z\\` a\\&b \\~\\~c\\~\\~"


def test_the_html_report_escapes_the_same_text() -> None:
    page = to_html(f"mammo-ray study report: {NAME}", None, [Section("Sites", paragraphs=[SITE])])
    assert "<script>" not in page and "&lt;script&gt;" in page
