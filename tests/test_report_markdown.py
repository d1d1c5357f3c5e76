"""report.md shows text from the config and the manifest as written: a study name, a site or a message cannot
open a link, an HTML tag, a table cell or a block in it (report.html escapes the same text as HTML)."""

from __future__ import annotations

import html
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


def test_p_values_are_never_printed_as_zero_and_read_the_same_in_tables_and_the_verdict():
    from mammo_ray.report.render import format_p, markdown_table

    frame = pd.DataFrame({"a": ["x", "y"], "holm_p": [6.21e-06, 0.0412], "auc_a": [0.81234, 0.5]})
    table = markdown_table(frame)
    assert "| x | 6.2e-06 | 0.812 |" in table and "| y | 0.041 | 0.500 |" in table
    assert "0.000" not in table and format_p(6.21e-06) == "6.2e-06" and format_p(0.5) == "0.500"


def test_a_subgroup_interval_reads_a_to_b_or_too_few_patients_never_zero_width():
    from mammo_ray.report.subgroups import subgroups_section

    rows = pd.DataFrame({
        "extractor": ["e"] * 3, "selection": ["none"] * 3, "balancing": ["none"] * 3, "classifier": ["logreg"] * 3,
        "subgroup": ["view"] * 3, "value": ["CC", "MLO", "XCCL"], "n_images": [40, 38, 2], "n_patients": [20, 19, 1],
        "n_positive": [10, 9, 1], "auc": [0.71, 0.64, 0.4], "ci_low": [0.55, 0.5, 0.4], "ci_high": [0.85, 0.79, 0.4],
        "small": [False, False, True]})
    (_, shown), = subgroups_section(rows, 0.95).tables
    assert shown["interval"].tolist() == ["0.550 to 0.850", "0.500 to 0.790", "too few patients (1)"]
    assert "ci_low" not in shown and list(shown.columns).index("interval") == list(shown.columns).index("auc") + 1


def test_the_papers_facts_stand_in_a_labelled_box_and_the_report_opens_with_its_contents():
    from mammo_ray.report.grid import PAPER_BOX, grid_section

    section = grid_section(None)
    assert section.boxes == [(PAPER_BOX, section.boxes[0][1])] and not any("1/82" in p for p in section.paragraphs)
    markdown = to_markdown("report", None, [Section("Verdict"), section])
    lines = markdown.splitlines()
    assert lines[2:6] == ["**Contents**", "", "1. Verdict", "2. Table 2: features + classifiers, paper protocol vs "
                          "leak-free protocol"]
    boxed = [line for line in lines if line.startswith(">")]
    assert boxed[0] == f"> **{PAPER_BOX}**" and any("1/82" in line for line in boxed)
    page = to_html("report", None, [Section("Verdict"), section])
    assert "<nav><b>Contents</b><ol><li><a href='#section-1'>Verdict</a></li>" in page
    assert f"<aside><h3>{html.escape(PAPER_BOX)}</h3><p>Table 1 (fine-tuning): accuracies are multiples of 1/82" in page
    escaped = to_html("r", None, [Section("s", boxes=[("In the paper", [SITE])])])
    assert "<script>" not in escaped and "&lt;script&gt;" in escaped


def test_interval_columns_read_as_one_a_to_b_column_where_the_low_one_stood():
    from mammo_ray.report.render import html_table, markdown_table

    frame = pd.DataFrame({"a": ["x"], "auc": [0.7], "auc_ci_low": [0.55], "auc_ci_high": [0.85], "difference": [0.1],
                          "ci_low": [float("nan")], "ci_high": [0.2]})
    lines = markdown_table(frame).splitlines()
    assert lines[0] == "| a | auc | auc_interval | difference | interval |"
    assert lines[2] == "| x | 0.700 | 0.550 to 0.850 | 0.100 |  |"
    assert "<td>0.550 to 0.850</td>" in html_table(frame) and "ci_low" not in html_table(frame)


def test_narrow_screens_keep_every_number_in_view_names_wrap_numbers_do_not():
    from mammo_ray.report.render import html_table

    table = html_table(pd.DataFrame({"n_images": [96], "extractor": ["nyu_avg+imagenet_resnet50"]}))
    assert "<th>n_<wbr>images</th>" in table  # a header breaks after '_' only
    page = to_html("r", None, [Section("s")])
    assert "td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}" in page
    assert "overflow-wrap:anywhere" in page and "@media (max-width:900px)" in page
