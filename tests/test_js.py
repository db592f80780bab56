"""The browser client's unit tests (`node --test tests/js/`), run as part of the suite.

Node is on the machine (CI installs Debian's nodejs if it is missing); without
it this test skips, unless RT_REQUIRE_NODE=1 makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_rt_js_unit_tests_pass_under_node():
    node = shutil.which("node")
    if node is None:
        if os.environ.get("RT_REQUIRE_NODE") == "1":
            pytest.fail("node is required (RT_REQUIRE_NODE=1) but not installed")
        pytest.skip("node is not installed")
    result = subprocess.run(
        [node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    passed = re.search(r"^# pass (\d+)", output, re.M)
    failed = re.search(r"^# fail (\d+)", output, re.M)
    assert passed and int(passed[1]) >= 60, output[-2000:]
    assert failed and int(failed[1]) == 0, output[-2000:]
