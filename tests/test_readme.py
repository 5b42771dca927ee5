"""The README's Python examples run as written (on a temporary volumes home)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_blocks_run(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    env = {**os.environ, "MSB_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"README example failed:\n{block}\n{proc.stderr}"
