"""The API reference page documents every public name, and nothing that is not public."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import header_first_stream
from header_first_stream import HeaderFirstMiddleware, HeaderFirstStreamingResponse
from header_first_stream._headers import DEFAULT_MAX_HEAD_SIZE, DEFAULT_MAX_HEADER_VALUE_SIZE
from header_first_stream._middleware import DEFAULT_HEAD_HOLD

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


# --- only public names in what the page renders -----------------------------------------

PACKAGE = REFERENCE.parent.parent / "header_first_stream"


def _names_defined_in_private_modules() -> set[str]:
    """Every top-level name a module of the package defines (not those it imports)."""
    defined: set[str] = set()
    for path in PACKAGE.glob("_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
    return defined


def _referenced(expressions: list[ast.expr | None], annotations: bool = False) -> set[str]:
    """The names in ``expressions``; with ``annotations``, in quoted ones too."""
    names: set[str] = set()
    for expression in expressions:
        if (
            annotations
            and isinstance(expression, ast.Constant)
            and isinstance(expression.value, str)
        ):
            expression = ast.parse(expression.value, mode="eval").body
        if expression is not None:
            names |= {n.id for n in ast.walk(expression) if isinstance(n, ast.Name)}
    return names


def _rendered_names(obj: object) -> set[str]:
    """The names in what mkdocstrings renders of ``obj``, read from the source as it reads
    it: the signatures of the object or of its public methods (and ``__init__``), and the
    annotations and values of its public class attributes."""
    node = ast.parse(textwrap.dedent(inspect.getsource(obj))).body[0]  # type: ignore[arg-type]
    members = node.body if isinstance(node, ast.ClassDef) else [node]
    names: set[str] = set()
    for member in members:
        if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
            if member.name.startswith("_") and member.name != "__init__":
                continue
            args = member.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            names |= _referenced([a.annotation for a in every if a is not None], True)
            names |= _referenced([member.returns], True)
            names |= _referenced([*args.defaults, *args.kw_defaults])
        elif (
            isinstance(member, ast.AnnAssign)
            and isinstance(member.target, ast.Name)
            and not member.target.id.startswith("_")
        ):
            names |= _referenced([member.annotation], True) | _referenced([member.value])
    return names


def _alias_names() -> dict[str, set[str]]:
    """The names each type alias of `_types.py` is built of, as the page renders it."""
    tree = ast.parse((PACKAGE / "_types.py").read_text())
    return {
        node.target.id: _referenced([node.value])
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def test_every_name_of_ours_that_the_page_renders_is_public() -> None:
    public = set(header_first_stream.__all__) | LAZY
    ours = _names_defined_in_private_modules()
    aliases = _alias_names()
    leaked = {}
    for name in sorted(public - NOT_OBJECTS):
        obj = getattr(header_first_stream, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            rendered = _rendered_names(obj)
        else:
            rendered = aliases[name]  # every other public object is a type alias
        private = (rendered & ours) - public
        if private:
            leaked[name] = sorted(private)
    assert leaked == {}


def test_the_defaults_written_out_for_the_page_are_the_private_constants() -> None:
    parameters = inspect.signature(HeaderFirstMiddleware).parameters
    assert parameters["head_hold_timeout"].default == DEFAULT_HEAD_HOLD == 1.0
    for component in (HeaderFirstStreamingResponse, HeaderFirstMiddleware):
        assert component.max_header_value_size == DEFAULT_MAX_HEADER_VALUE_SIZE
        assert component.max_head_size == DEFAULT_MAX_HEAD_SIZE
