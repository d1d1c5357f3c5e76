"""The README's generated blocks: the configuration reference and the output tables' reference, each between its
two markers, written from the code (`python -m mammo_ray.readme` rewrites README.md in place) and compared with
it by `tests/test_readme_reference.py`, so that the README cannot drift from the config types and schemas."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from mammo_ray import table_reference
from mammo_ray.config import reference as config_reference

#: Block name -> what writes it.
BLOCKS: dict[str, Callable[[], str]] = {
    "config reference": config_reference.markdown,
    "output tables": table_reference.markdown,
}


def markers(name: str) -> tuple[str, str]:
    return (f"<!-- generated: {name} (python -m mammo_ray.readme); do not edit by hand -->",
            f"<!-- end of generated: {name} -->")


def regenerate(text: str) -> str:
    """`text` with every block between its markers written anew (KeyError naming a block whose markers are
    missing)."""
    for name, write in BLOCKS.items():
        begin, end = markers(name)
        if text.count(begin) != 1 or text.count(end) != 1:
            raise KeyError(f"README: the markers of the generated block {name!r} must appear once each")
        start, stop = text.index(begin) + len(begin), text.index(end)
        text = text[:start] + "\n\n" + write() + "\n\n" + text[stop:]
    return text


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "README.md")
    path.write_text(regenerate(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
