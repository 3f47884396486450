"""The public surface: `header_first_stream/__init__.py` is the one place that decides it."""

from __future__ import annotations

import collections.abc
import importlib.metadata
import importlib.resources
import inspect
import typing

import pytest
from starlette.requests import Request

import header_first_stream

from ._asgi import http_scope
from ._expect import run_python

PUBLIC_DUNDERS = {"__version__"}


def module_level_public_names() -> set[str]:
    """Names a user sees on the package, leaving out its own submodules."""
    names = set()
    for name, value in vars(header_first_stream).items():
        if inspect.ismodule(value) and value.__name__.startswith("header_first_stream."):
            continue
        if not name.startswith("_") or name in PUBLIC_DUNDERS:
            names.add(name)
    return names


LAZY = {"HeaderFirstEventSourceResponse"}  # public, imported on first use, not in __all__


def test_all_names_exactly_the_public_names() -> None:
    exported = header_first_stream.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    for name in [*exported, *LAZY]:  # every name importable, lazily imported ones too
        assert getattr(header_first_stream, name) is not None
    assert module_level_public_names() == set(exported) | LAZY
    assert set(dir(header_first_stream)) >= set(exported) | LAZY


def test_star_import_gives_exactly_all_and_does_not_import_sse_starlette() -> None:
    script = (
        "import sys\n"
        "import header_first_stream\n"
        "namespace = {}\n"
        "exec('from header_first_stream import *', namespace)\n"
        "namespace.pop('__builtins__')\n"
        "assert set(namespace) == set(header_first_stream.__all__), set(namespace)\n"
        "assert 'sse_starlette' not in sys.modules, 'sse_starlette imported'\n"
    )
    run_python(script)


def test_the_types_in_public_signatures_can_be_imported() -> None:
    # Each appears in a signature on the API page (tests/test_docs_reference.py checks all).
    from header_first_stream import (
        EventHeaderResolver,
        HasScope,
        HeaderValue,
        ResolverErrorPolicy,
    )

    assert typing.get_args(ResolverErrorPolicy) == ("error", "degrade")
    assert typing.get_args(HeaderValue) == (str, int)
    assert typing.get_origin(EventHeaderResolver) is collections.abc.Callable
    assert isinstance(Request(http_scope()), HasScope)  # a runtime-checkable protocol


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError) as info:
        _ = header_first_stream.NoSuchName
    assert str(info.value) == "module 'header_first_stream' has no attribute 'NoSuchName'"


def test_public_classes_and_functions_are_documented() -> None:
    for name in header_first_stream.__all__:
        value = getattr(header_first_stream, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
            assert value.__module__.startswith("header_first_stream."), name


def test_version_is_kept_in_one_place() -> None:
    assert header_first_stream.__version__ == importlib.metadata.version("header-first-stream")


def test_package_is_marked_typed() -> None:
    marker = importlib.resources.files("header_first_stream").joinpath("py.typed")
    assert marker.is_file()


def test_import_has_no_side_effects_on_other_libraries() -> None:
    script = (
        "import logging, sys\n"
        "import header_first_stream\n"
        "assert 'sse_starlette' not in sys.modules, 'sse_starlette imported'\n"
        "assert 'uvicorn' not in sys.modules, 'uvicorn imported'\n"
        "assert not logging.getLogger('header_first_stream').handlers, 'handler added'\n"
    )
    run_python(script)
