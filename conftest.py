"""Repository-wide pytest set-up: the helper modules of every package's tests/ folder are importable.

The test run uses ``--import-mode=importlib`` (root pyproject.toml): every plugin keeps its contract
tests in ``tests/test_contract.py`` (the plugin template's layout, core/PLUGINS.md), and that mode gives
same-named test files of different folders distinct module names. It leaves ``sys.path`` alone, so the
folders whose helpers the tests import by name (``redis_testlib``, ``amqp_testlib``...) are added here.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

for folder in sorted([*ROOT.glob("plugins/*/tests"), *ROOT.glob("examples/*/tests")]):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
