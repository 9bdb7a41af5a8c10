"""README's Python examples run as shown (from the repository root, where ../shared is the data folder)."""

import os
import re

import pytest

from conftest import REPO


@pytest.mark.shared
def test_readme_python_blocks_run(lbe247, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGELEARN_CACHE_DIR", str(tmp_path / "cache"))
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        namespace = {}
        for block in blocks:
            block = block.replace('"runs/demo"', f'r"{tmp_path}/runs-demo"')
            exec(compile(block.replace('card.save("ID161-200us.json")', f'card.save(r"{tmp_path}/c.json")'),
                         "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert '"pulses_up"' in capsys.readouterr().out
