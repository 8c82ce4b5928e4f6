"""The plugin template (examples/plugin): its own tests/test_contract.py, run from here so that the
repository's test run includes it (examples/ is not among the test paths) and it runs once."""

from __future__ import annotations

import importlib.util
import sys

from .conftest import REPO, require_module

require_module("machinery_example", "pip install -e examples/plugin (make venv does)")


def _template_tests() -> object:
    path = REPO / "examples" / "plugin" / "tests" / "test_contract.py"
    spec = importlib.util.spec_from_file_location("machinery_example_template_tests", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_template = _template_tests()
test_found_by_its_url_scheme = _template.test_found_by_its_url_scheme  # type: ignore[attr-defined]
test_imports_lazily = _template.test_imports_lazily  # type: ignore[attr-defined]
TestExample = _template.TestExample  # type: ignore[attr-defined]
TestExampleHostile = _template.TestExampleHostile  # type: ignore[attr-defined]
