"""`HeaderFirstEventSourceResponse` is a lazy export: importing the package imports neither
sse-starlette nor patches uvicorn, and without sse-starlette the error names the extra.
"""

from __future__ import annotations

import sys

import pytest

import header_first_stream

from ._expect import run_python

# --- import and export ---------------------------------------------------------------


def test_importing_the_package_imports_neither_sse_starlette_nor_patches_uvicorn() -> None:
    out = run_python(
        "import sys\n"
        "from uvicorn.main import Server\n"
        "handle_exit = Server.handle_exit\n"
        "import header_first_stream\n"
        "print('sse_starlette' in sys.modules, Server.handle_exit is handle_exit)\n"
        "header_first_stream.HeaderFirstEventSourceResponse\n"
        "print('sse_starlette' in sys.modules, Server.handle_exit is handle_exit)\n"
    ).stdout
    # Only using the SSE class imports sse-starlette (which then patches uvicorn).
    assert out == "False True\nTrue False\n"


def test_without_sse_starlette_the_class_raises_an_import_error_naming_the_extra() -> None:
    out = run_python(
        "import sys\n"
        "sys.modules['sse_starlette'] = None\n"
        "import header_first_stream\n"
        "try:\n"
        "    from header_first_stream import HeaderFirstEventSourceResponse\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    ).stdout
    assert out == (
        "HeaderFirstEventSourceResponse needs sse-starlette (No module named "
        "'sse_starlette.event'; 'sse_starlette' is not a package); install the 'sse' extra: "
        "pip install 'header-first-stream[sse]'\n"
    )


def test_the_import_error_without_sse_starlette_also_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same as above, in this process so that coverage sees the branch. Every module
    # touched is put back by monkeypatch. Whether the SSE module was imported and the lazy
    # export cached depends on the tests run before: both are removed only if there. (Not
    # with delattr, whose look-up would run the lazy import.)
    monkeypatch.setitem(sys.modules, "sse_starlette", None)
    monkeypatch.setitem(sys.modules, "sse_starlette.event", None)
    monkeypatch.delitem(sys.modules, "header_first_stream._sse", raising=False)
    monkeypatch.delitem(vars(header_first_stream), "HeaderFirstEventSourceResponse", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'header-first-stream\[sse\]'$") as info:
        header_first_stream.HeaderFirstEventSourceResponse  # noqa: B018
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_the_lazy_export_is_the_class_and_other_names_still_raise_attribute_error() -> None:
    from header_first_stream._sse import HeaderFirstEventSourceResponse as direct

    # Public, but not in __all__: a star import must not import sse-starlette.
    assert "HeaderFirstEventSourceResponse" not in header_first_stream.__all__
    assert "HeaderFirstEventSourceResponse" in dir(header_first_stream)
    assert header_first_stream.HeaderFirstEventSourceResponse is direct
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        header_first_stream.NoSuchThing  # noqa: B018
