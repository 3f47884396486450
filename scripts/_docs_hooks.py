"""MkDocs hooks of the site (``hooks:`` in mkdocs.yml): a page may include a repository file.

A line ``<!-- include: PATH -->`` in a page is replaced by the file at PATH, relative to the
repository root, so that a README kept beside its code (``examples/litellm_proxy/README.md``)
is on the site as it is, never copied. The included text changes in two ways only:

- its headings move one level down, under the page's own title (outside fenced code);
- its relative links are rewritten for the page: one to a page of the site points there
  from the including page; one to an anchor is kept (the headings keep their text, so their
  anchors); one to any other file of the repository becomes that file's path in code, as
  the site has no repository to link to. Links in fenced code are left alone.

On GitHub the line is an HTML comment, so the page reads as it did without the include.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->$", flags=re.MULTILINE)
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^#{1,5} ")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", flags=re.IGNORECASE)


def include(markdown: str, page: str, root: Path, docs_dir: str = "docs") -> str:
    """``markdown`` of the page ``page`` (its path under ``docs_dir``) with every include
    line replaced by the file it names, read under ``root``.

    Raises:
        FileNotFoundError: An include names a file that does not exist (the build fails,
            naming it).
    """

    def replace(match: re.Match[str]) -> str:
        path = match["path"]
        text = (root / path).read_text()
        return _rewrite(text, path, page, docs_dir).rstrip("\n")

    return INCLUDE.sub(replace, markdown)


def _rewrite(text: str, path: str, page: str, docs_dir: str) -> str:
    lines = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            if _HEADING.match(line):
                line = "#" + line
            line = _LINK.sub(lambda link: _link(link, path, page, docs_dir), line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _link(link: re.Match[str], path: str, page: str, docs_dir: str) -> str:
    text, target = link["text"], link["target"]
    if target.startswith("#") or _SCHEME.match(target):
        return link[0]
    file, _, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), file))
    if resolved.startswith(docs_dir + "/") and resolved.endswith(".md"):
        relative = posixpath.relpath(
            resolved.removeprefix(docs_dir + "/"), posixpath.dirname(page) or "."
        )
        return f"[{text}]({relative}{'#' + anchor if anchor else ''})"
    shown = resolved + ("/" if file.endswith("/") else "")
    code = text.strip("`")
    if text.startswith("`") and shown.rstrip("/").endswith(code.rstrip("/")):
        return f"`{shown}`"  # the link's own text is the file's name: show its full path
    return f"{text} (`{shown}`)"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """MkDocs' hook: run on every page's Markdown before it is converted."""
    root = Path(config["config_file_path"]).parent
    docs_dir = Path(config["docs_dir"]).relative_to(root).as_posix()
    return include(markdown, page.file.src_uri, root, docs_dir)
