"""The package's shape, as the house keeps it: no class over 250 lines, the response class
Starlette's plus ours (an MRO of 4), and the SSE class sse-starlette's plus ours."""

from __future__ import annotations

import ast
from pathlib import Path

import header_first_stream
from header_first_stream import HeaderFirstEventSourceResponse, HeaderFirstStreamingResponse

PACKAGE = Path(header_first_stream.__file__).parent


def test_no_class_of_the_package_is_over_250_lines() -> None:
    sizes = {
        f"{path.name}:{node.name}": node.end_lineno - node.lineno + 1
        for path in sorted(PACKAGE.glob("*.py"))
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None
    }
    assert sizes  # the package was read
    assert {name: size for name, size in sizes.items() if size > 250} == {}


def test_the_response_classes_add_one_class_each_to_their_peers() -> None:
    names = [cls.__qualname__ for cls in HeaderFirstStreamingResponse.__mro__]
    assert names == ["HeaderFirstStreamingResponse", "StreamingResponse", "Response", "object"]
    sse = [cls.__qualname__ for cls in HeaderFirstEventSourceResponse.__mro__]
    assert sse == [
        "HeaderFirstEventSourceResponse",
        "HeaderFirstStreamingResponse",
        "StreamingResponse",
        "EventSourceResponse",
        "Response",
        "object",
    ]
