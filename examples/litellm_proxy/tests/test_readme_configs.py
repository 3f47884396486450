"""The ``config.yaml`` lines in examples/litellm_proxy/README.md are setups the tier runs.

Each YAML block of the README names callback files; together they must be one of the
callback sets that test_litellm_proxy.py starts a real proxy with, and each named
instance must exist in its file.
"""

from __future__ import annotations

import re

import pytest
import yaml

from ..running import EXAMPLE
from .test_litellm_proxy import VARIANTS

_YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def _blocks() -> list[str]:
    return _YAML_BLOCK.findall((EXAMPLE / "README.md").read_text())


def test_the_readme_has_its_three_configs() -> None:
    assert len(_blocks()) == 3


@pytest.mark.parametrize("block", _blocks())
def test_a_readme_config_is_a_tested_setup(block: str) -> None:
    callbacks = yaml.safe_load(block)["litellm_settings"]["callbacks"]
    entries = callbacks if isinstance(callbacks, list) else [callbacks]
    files = []
    for entry in entries:
        module, _, instance = entry.partition(".")
        source = (EXAMPLE / f"{module}.py").read_text()
        assert re.search(rf"^{instance} = ", source, re.MULTILINE), entry
        files.append(f"{module}.py")
    assert tuple(files) in VARIANTS.values()


def test_the_example_config_names_the_header_first_callback() -> None:
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    assert config["litellm_settings"] == {
        "callbacks": "header_first_callback.proxy_handler_instance"
    }
