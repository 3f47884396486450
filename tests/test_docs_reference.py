"""The API reference page documents every public name, and nothing that is not public."""

from __future__ import annotations

import re
from pathlib import Path

import header_first_stream

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
LAZY = {"HeaderFirstEventSourceResponse"}  # public, imported on first use, not in __all__
NOT_OBJECTS = {"__version__"}  # a string: named in the page's text, not rendered


def test_every_public_name_has_a_section_and_no_other_name_does() -> None:
    text = REFERENCE.read_text()
    documented = re.findall(r"^::: header_first_stream\.(\w+)$", text, flags=re.MULTILINE)
    assert len(documented) == len(set(documented)), "a name documented twice"
    public = (set(header_first_stream.__all__) | LAZY) - NOT_OBJECTS
    assert set(documented) == public
    assert "`header_first_stream.__version__`" in text
    # Every directive names the package, never a private module.
    assert not re.search(r"^::: (?!header_first_stream\.\w+$)", text, flags=re.MULTILINE)
