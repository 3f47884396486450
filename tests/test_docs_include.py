"""The site's include hook (`scripts/_docs_hooks.py`): a repository file put into a page,
its headings under the page's title and its links rewritten for the site."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_docs_hooks", ROOT / "scripts/_docs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()

README = """\
# The example

See [the tests](#tests), [`config.yaml`](config.yaml), [`tests/`](tests/), the
[upstream](../gateway/upstream.py#L10), [the headers page](../../docs/headers.md#refused)
and [a site](https://example.org/x.md). ![a picture](shot.png)

```sh
# a comment, not a heading: [kept](config.yaml)
```

## Tests
"""


def test_an_include_line_is_replaced_by_the_file_with_its_links_and_headings_rewritten(
    tmp_path: Path,
) -> None:
    (tmp_path / "examples" / "proxy").mkdir(parents=True)
    (tmp_path / "examples" / "proxy" / "README.md").write_text(README)
    page = "# Proxy\n\nIntro.\n\n<!-- include: examples/proxy/README.md -->\n\nAfter.\n"

    assert hooks.include(page, "howto/proxy.md", tmp_path) == (
        "# Proxy\n\nIntro.\n\n"
        "## The example\n"
        "\n"
        "See [the tests](#tests), `examples/proxy/config.yaml`, `examples/proxy/tests/`, the\n"
        "upstream (`examples/gateway/upstream.py`), "
        "[the headers page](../headers.md#refused)\n"
        "and [a site](https://example.org/x.md). ![a picture](shot.png)\n"
        "\n"
        "```sh\n"
        "# a comment, not a heading: [kept](config.yaml)\n"
        "```\n"
        "\n"
        "### Tests\n"
        "\nAfter.\n"
    )


def test_a_page_without_an_include_is_unchanged(tmp_path: Path) -> None:
    page = "# Page\n\n<!-- a comment -->\n[a link](other.md)\n"
    assert hooks.include(page, "page.md", tmp_path) == page


def test_an_include_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"examples/missing\.md"):
        hooks.include("<!-- include: examples/missing.md -->\n", "page.md", tmp_path)


def test_the_litellm_page_includes_the_examples_readme_with_no_link_outside_the_site() -> None:
    page = (ROOT / "docs" / "litellm.md").read_text()
    assert "<!-- include: examples/litellm_proxy/README.md -->" in page.splitlines()
    included = hooks.include(page, "litellm.md", ROOT)
    readme = (ROOT / "examples" / "litellm_proxy" / "README.md").read_text()
    first_heading = readme.splitlines()[0]
    assert first_heading.startswith("# ")
    assert "#" + first_heading in included.splitlines()  # under the page's own title
    for target in re.findall(r"(?<!!)\]\(([^)\s]+)\)", included):
        file = target.partition("#")[0]
        assert not file or re.match(r"[a-z]+://", file) or (ROOT / "docs" / file).is_file(), (
            f"the LiteLLM page links to {target}, which the site does not have"
        )
