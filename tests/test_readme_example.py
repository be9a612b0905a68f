"""The README's Python example runs as written against a launched app (only its URL is this test's server): it
polls the run to its end, prints the final status, a chat answer and the exact prompt."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from apps import ROOT, SAMPLE, launched
from test_app import tiny_yaml
README_URL = "http://127.0.0.1:7860/"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path, tiny_model_dir):
    code = readme_example()
    assert README_URL in code and 'open("config.yaml")' in code and '"my_data.jsonl"' in code
    (tmp_path / "config.yaml").write_text(tiny_yaml(tiny_model_dir, steps=4), encoding="utf-8")
    shutil.copy(SAMPLE, tmp_path / "my_data.jsonl")
    with launched(tmp_path / "runs", tmp_path / "downloads", css=False) as (_, url):
        out = subprocess.run([sys.executable, "-c", code.replace(README_URL, url)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("Loaded as API")]  # gradio_client's own
    final = next(i for i, line in enumerate(lines) if line == "finished")  # the final status, after the polling
    assert all(re.match(r"^(new|resuming|queued[^:]*|running): step \d+/\d+ loss", ln) for ln in lines[:final]), lines
    answer = lines[final + 1]
    assert answer.strip() and not answer.startswith("[{"), lines  # the chat answer's text, not a list of parts
    assert "Answer briefly." in out.stdout  # the exact prompt holds the system prompt given
