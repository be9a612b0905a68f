"""`python -m finetune format`: the contract (flags, output keys, summary, exit status 2 with one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune", "format", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_subprocess_writes_examples_and_summary(tmp_path):
    data = write(tmp_path / "d.jsonl", [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(10)]
                 + [{"instruction": "Q0", "output": "A0"}])
    out = tmp_path / "out.jsonl"
    done = run_cli(str(data), "--template", "llama2", "--system", "Be brief.", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and all(set(r) == {"text", "prompt", "completion", "messages"} for r in rows)
    assert rows[0]["text"] == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nQ0 [/INST] A0 </s>"
    assert [r["messages"][1]["content"] for r in rows] == [f"Q{i}" for i in range(10)]  # input order
    for needle in ("rows in: 11", "rows written: 10", "rows skipped: 1", "1 × duplicate", "shape: alpaca"):
        assert needle in done.stdout, needle


def test_subprocess_unusable_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "empty.jsonl"
    bad.write_text("")
    done = run_cli(str(bad), "--out", str(tmp_path / "o.jsonl"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {bad}: the file is empty"]
    assert "Traceback" not in done.stderr and not (tmp_path / "o.jsonl").exists()


def test_subprocess_with_model_gives_token_stats(tmp_path, smollm2_dir):
    data = write(tmp_path / "d.jsonl", [{"prompt": "Hello " * n, "completion": "Hi"} for n in range(1, 6)])
    done = run_cli(str(data), "--model", str(smollm2_dir), "--out", str(tmp_path / "o.jsonl"))
    assert done.returncode == 0, done.stderr
    assert "template: model" in done.stdout and "tokens: min" in done.stdout
    first = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert first["text"].startswith("<|im_start|>")


@pytest.mark.parametrize("content,name,expected", [
    (b"", "e.csv", "e.csv: the file is empty"),
    (b"a,b\n1,2\n", "u.csv", "u.csv: cannot tell the data's shape from its columns (a, b)"),
    ("instruction,output\ncaf\xe9,x\n".encode("latin-1"), "l.csv", "l.csv:1: not valid UTF-8 at line 2"),
    (b'{"instruction": "", "output": "x"}\n', "z.jsonl", "z.jsonl: no usable rows"),
    (b"[1, 2", "b.json", "b.json:1: not valid JSON"),
])
def test_unusable_inputs(tmp_path, capsys, content, name, expected):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["format", str(path), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}/{expected}"), err


def test_strict_stops_at_the_first_bad_row(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n{"instruction": "d", "output": ""}\n')
    assert main(["format", str(data), "--out", str(tmp_path / "o.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "rows skipped: 2" in out and "1 × missing field" in out and "1 × empty field" in out
    assert "row 2: output: 'output' is missing" in out
    assert main(["format", str(data), "--strict", "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {data}:2: output: 'output' is missing; add the value or remove the row"


def test_val_fraction_writes_a_second_file(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)])
    out = tmp_path / "train.jsonl"
    assert main(["format", str(data), "--val-fraction", "0.25", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    val = tmp_path / "train.val.jsonl"
    assert str(val) in printed
    assert len(out.read_text().splitlines()) == 15 and len(val.read_text().splitlines()) == 5


def test_columns_flag(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [{"ask": "hi", "say": "yo"}])
    assert main(["format", str(data), "--columns", "prompt=ask,completion=say", "--template", "chatml",
                 "--out", str(tmp_path / "o.jsonl")]) == 0
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert row["completion"] == "yo<|im_end|>"
    assert main(["format", str(data), "--columns", "prompt", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "must look like field=column" in capsys.readouterr().err


def test_bad_flags(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    assert main(["format", str(data), "--template", "nope", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown template 'nope'" in capsys.readouterr().err
    assert main(["format", str(data), "--val-fraction", "0.9", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--val-fraction must be between 0 and 0.5" in capsys.readouterr().err


def test_formatting_benchmark_runs_and_compares_equal_output():
    """bench/format_throughput.py on a small file: both sides write identical bytes (it asserts that) and it
    prints rows/s for each and the ratio."""
    proc = subprocess.run([sys.executable, "bench/format_throughput.py", "--rows", "3000", "--repeat", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "identical bytes from both" in out
    assert "pipeline (finetune.data):" in out and "naive per-row baseline:" in out and out.count("rows/s") == 2
    ratio = float(out.split("speed-up: ")[1].split("x")[0])
    assert ratio > 1  # the size of the gap is the benchmark's to show at 100,000 rows, not this test's
