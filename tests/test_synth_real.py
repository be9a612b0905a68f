"""Data recipes with real generators: llama.cpp (xllamacpp) serving the embedded SmolLM2 GGUF through its
OpenAI-compatible API, and the embedded model in this process. Short rows (a few tokens each) keep them quick; the
rows' quality is the 135M model's."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from llamacpp import LlamaCpp

from finetune.cli import main
from finetune.models import embedded_gguf_path
from finetune.service.preview import format_preview
from finetune.synth import Recipe, bundled_recipes, make_dataset, progress_path, summary_path
from finetune.synth.generators import InProcess, OpenAICompatible

DOCS = bundled_recipes()["qa-from-documents"].parent / "documents"


@pytest.fixture(scope="module")
def server() -> str:
    with LlamaCpp(str(embedded_gguf_path()), n_ctx=1024) as cpp:
        yield cpp.url + "/v1"


def quick_recipe(name: str, tmp_path: Path, tokens: int = 24) -> Path:
    """A bundled recipe with short answers, a judge threshold every scored row passes, its paths absolute."""
    text = bundled_recipes()[name].read_text()
    text = text.replace("documents/", f"{DOCS}/").replace("threshold: 3", "threshold: 1")
    text = text.replace("max_new_tokens: 96", f"max_new_tokens: {tokens}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # about 30 s on 2 idle cores, minutes on busy ones: prompts carry a document chunk
def test_qa_recipe_over_three_documents_through_llamacpp(server, tmp_path, capsys):
    out = tmp_path / "qa.jsonl"
    sources = [str(DOCS / n) for n in ("saltmere-library.md", "tidewater-ferry.html", "kestrel-kettle.txt")]
    argv = ["synth", str(quick_recipe("qa-from-documents", tmp_path)), "--rows", "2", "--generator", server,
            "--judge", server, "--out", str(out)]
    for s in sources:
        argv += ["--source", s]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"generator: {server}" in printed and "kept 2 of 2 asked" in printed
    rows = read_rows(out)
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"messages", "score"}
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert "?" in row["messages"][0]["content"] and row["messages"][1]["content"].strip()
        assert 1 <= row["score"] <= 5  # the judge's rating, recorded per row
    summary = json.loads(summary_path(out).read_text())
    assert summary["kept"] == 2 and summary["made"] == 2 + sum(summary["dropped"].values())
    assert summary["judge"] == server and "qa-from-documents" in summary["recipe_yaml"]
    made = [json.loads(x) for x in progress_path(out).read_text().splitlines()[1:]]
    assert len({m["key"] for m in made}) == len(made) == summary["made"]
    formatted = format_preview(str(out), template="model", out_dir=tmp_path / "fmt")
    assert formatted.result.problems == [] and len(formatted.result.examples) == 2


def test_duplicates_removed_and_stop_then_continue_loses_nothing(server, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    egg = "How do I boil an egg so that the yolk stays soft?"
    prompts = [egg, "What is a haiku?", egg, "Name a primary colour.", "How do I boil an egg so the yolk stays soft?",
               "Why do cats purr?"]  # an exact and a near repeat of the first
    seeds.write_text("".join(json.dumps({"prompt": p, "completion": "Briefly: it depends."}) + "\n" for p in prompts))
    recipe = Recipe.from_yaml(f"name: rewrite-test\nsources: {{seeds_file: {seeds}}}\n"
                              "task: {kind: rewrite, rows: 6, max_attempts: 6}\n"
                              "generator: {max_new_tokens: 16, temperature: 0}\njudge: {use: false}\n"
                              "filters: {min_chars: 1}\noutput: {shape: prompt_completion}\n")
    out = tmp_path / "rw.jsonl"
    gen = OpenAICompatible(server)
    stop = threading.Event()
    first = make_dataset(recipe, out, generator=gen, on_progress=lambda p: stop.set(), stop=stop)
    assert first.stopped and first.made == 4 and first.kept == 3 and first.dropped == {"duplicate": 1}
    kept_first = read_rows(out)
    assert len(kept_first) == 3
    second = make_dataset(recipe, out, generator=gen)
    assert not second.stopped and second.made == 6 and second.kept == 4
    assert second.dropped == {"duplicate": 1, "near_duplicate": 1}
    rows = read_rows(out)
    assert rows[:3] == kept_first  # none lost
    assert [r["prompt"] for r in rows] == [egg, "What is a haiku?", "Name a primary colour.",
                                           "Why do cats purr?"]
    assert all(set(r) == {"prompt", "completion", "score"} and r["completion"] for r in rows)
    keys = [json.loads(x)["key"] for x in progress_path(out).read_text().splitlines()[1:]]
    assert len(keys) == len(set(keys)) == 6  # none made twice
    third = make_dataset(recipe, out, generator=gen)  # done: nothing more is made
    assert third.made == 6 and read_rows(out) == rows


@pytest.mark.slow
def test_preference_recipe_with_the_embedded_model_in_process(tmp_path):
    recipe = Recipe.load(quick_recipe("preference-pairs", tmp_path, tokens=16))
    recipe.task.rows = 2
    out = tmp_path / "pairs.jsonl"
    summary = make_dataset(recipe, out)  # the recipe's generator and judge: embedded, in this process
    assert summary.generator == InProcess().name and summary.kept == 2
    rows = read_rows(out)
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected", "score"} and 1 <= row["score"] <= 5
        assert row["chosen"].strip() and row["rejected"].strip() and row["chosen"] != row["rejected"]
    formatted = format_preview(str(out), template="model", out_dir=tmp_path / "fmt", method="dpo")
    assert len(formatted.result.examples) == 2 and not getattr(formatted.result, "problems", [])


@pytest.mark.slow  # a real recipe, a real training run and an evaluation: minutes on CPU
def test_the_loop_closes_recipe_to_trained_adapter_evaluated_on_held_out_questions(server, tmp_path, capsys):
    """qa-from-documents made by llama.cpp serving SmolLM2-135M, trained with the command line, and `finetune eval` on
    the held-out questions about the same documents, the tuned adapter beside the base. The 135M generator writes
    weak rows: the figure is recorded, not asserted to improve."""
    made = tmp_path / "made.jsonl"
    assert main(["synth", str(quick_recipe("qa-from-documents", tmp_path, tokens=48)), "--rows", "16",
                 "--generator", server, "--judge", server, "--out", str(made)]) == 0
    assert len(read_rows(made)) == 16
    held_out = DOCS / "held-out-questions.jsonl"
    made_prompts = {r["messages"][0]["content"] for r in read_rows(made)}
    assert not made_prompts & {json.loads(x)["question"] for x in held_out.read_text().splitlines()}
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(made), "--max-steps", "40", "--run-dir", str(run_dir)]) == 0
    report = tmp_path / "report.json"
    assert main(["eval", "--adapter", str(run_dir), "--data", str(held_out), "--max-new-tokens", "32",
                 "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    printed = capsys.readouterr().out
    print(printed[-2000:])
    assert "adapter" in json.dumps(result) and "base" in json.dumps(result)
