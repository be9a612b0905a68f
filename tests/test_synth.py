"""Data recipes without a model: the recipe format and its errors, documents into chunks (text, Markdown, HTML, PDF),
the plan's keys, the filters (lengths, exact and near duplicates, test-set overlap) and the judge's reading."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from finetune.cli import main
from finetune.errors import UserError
from finetune.synth import Recipe, RecipeError, bundled_recipes, read_material
from finetune.synth.filters import Gate, row_problem
from finetune.synth.generators import GeneratorError, OpenAICompatible, expected_rating, kind_of, make_generator
from finetune.synth.recipe import Filters
from finetune.synth.sources import Pair, document_chunks, html_text, split_text
from finetune.synth.tasks import clean_question, output_row, parse_score, plan


def pdf_bytes(lines: list[str]) -> bytes:
    """A one-page PDF whose text is ``lines`` (Helvetica), with a correct cross-reference table."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({s}) '" for s in lines) + " ET"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(text) + text.encode() + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def test_recipe_problems_each_name_the_field_and_the_fix():
    text = ("task:\n  kind: quiz\n  rows: 0\n  rowz: 3\ngenerator:\n  temprature: 1\n  max_new_tokens: many\n"
            "filters: 3\nsources:\n  seeds:\n    - prompt: ''\n      answer: x\n")
    with pytest.raises(RecipeError) as e:
        Recipe.from_yaml(text, "r.yaml")
    problems = e.value.problems
    assert str(e.value).startswith("r.yaml: ") and "problem(s) in the recipe" in str(e.value)
    assert "task.rowz: unknown key; did you mean 'task.rows'?" in problems
    assert "generator.temprature: unknown key; did you mean 'generator.temperature'?" in problems
    assert any(p.startswith("generator.max_new_tokens: expected a whole number") for p in problems)
    assert any(p.startswith("filters: expected a mapping") for p in problems)
    assert any(p.startswith("task.kind: 'quiz' is not one of qa, instructions, rewrite, preference") for p in problems)
    assert any(p.startswith("task.rows: 0 is out of range") for p in problems)
    assert any(p.startswith("sources.seeds[1].prompt: empty") for p in problems)
    assert isinstance(e.value, UserError)


def test_recipe_cross_checks():
    with pytest.raises(RecipeError, match="sources.documents: the qa task makes rows from documents"):
        Recipe.from_yaml("task:\n  kind: qa\n")
    with pytest.raises(RecipeError, match="output.shape: the preference task writes shape 'preference'"):
        Recipe.from_yaml("task:\n  kind: preference\nsources:\n  documents: [a.md]\n")
    with pytest.raises(RecipeError, match="sources.seeds: the instructions task imitates examples"):
        Recipe.from_yaml("task:\n  kind: instructions\n")


def test_bundled_recipes_load_and_read_three_documents():
    assert set(bundled_recipes()) == {"qa-from-documents", "instructions-from-examples", "preference-pairs"}
    for name, path in bundled_recipes().items():
        recipe = Recipe.load(path)
        assert recipe.name == name and path.read_text().startswith("#")
        Recipe.from_yaml(recipe.to_yaml())  # round-trips
        material = read_material(recipe)
        if recipe.task.kind == "instructions":
            assert len(material.pairs) == 4 and not material.chunks
        else:
            assert {c.source for c in material.chunks} == {"saltmere-library.md", "tidewater-ferry.html",
                                                           "kestrel-kettle.txt"}
            assert all(len(c.text) <= recipe.sources.chunk_chars for c in material.chunks)
            joined = "\n".join(c.text for c in material.chunks)
            assert "console.log" not in joined and "font-family" not in joined  # script and style left out
            assert "dogs travel free" in joined and "founded in 1887" in joined and "0.6 litres" in joined
            assert Path(recipe.base_dir, recipe.filters.test_set).is_file()


def test_documents_of_every_type_become_chunks(tmp_path):
    (tmp_path / "a.pdf").write_bytes(pdf_bytes(["The lighthouse was painted red in 1931.",
                                                "Its lamp can be seen from 22 nautical miles."]))
    (tmp_path / "b.html").write_text("<p>First &amp; only.</p><script>var x = 1;</script>")
    (tmp_path / "c.md").write_text("# Title\n\n" + "A sentence that goes on. " * 30)
    chunks = document_chunks(["a.pdf", "b.html", "c.md"], 200, str(tmp_path))
    assert "painted red in 1931" in chunks[0].text and "22 nautical miles" in chunks[0].text
    assert chunks[1].text == "First & only."
    assert [c.source for c in chunks[2:]] == ["c.md"] * len(chunks[2:]) and len(chunks) > 4
    assert all(len(c.text) <= 200 for c in chunks)
    assert html_text("<style>p{}</style><h1>T</h1>x") == "T\n\nx"
    with pytest.raises(UserError, match=r"missing\.md: document not found; check the path"):
        document_chunks(["missing.md"], 200, str(tmp_path))
    (tmp_path / "d.docx").write_text("x")
    with pytest.raises(UserError, match="d.docx: unsupported document type '.docx'"):
        document_chunks(["d.docx"], 200, str(tmp_path))
    (tmp_path / "e.pdf").write_bytes(b"not a pdf at all")
    with pytest.raises(UserError, match="e.pdf: not a readable PDF"):
        document_chunks(["e.pdf"], 200, str(tmp_path))


def test_plan_keys_are_unique_and_stable():
    chunks = split_text("One fact is here, said plainly.\n\nAnother fact is there, said again.", "a.txt", 40)
    recipe = Recipe.from_yaml("task:\n  kind: qa\nsources:\n  documents: [a.txt]\n")
    items = plan(recipe, chunks, [], 5)
    assert [it.key for it in items] == [f"{chunks[0].id}:0", f"{chunks[1].id}:0", f"{chunks[0].id}:1",
                                        f"{chunks[1].id}:1", f"{chunks[0].id}:2"]
    assert [it.key for it in plan(recipe, chunks, [], 5)] == [it.key for it in items]
    rewrite = Recipe.from_yaml("task:\n  kind: rewrite\nsources:\n  seeds: [{prompt: a, answer: b}]\n")
    pairs = [Pair("a", "b"), Pair("a", "b"), Pair("c", "d")]
    keys = [it.key for it in plan(rewrite, [], pairs, 3)]
    assert len(set(keys)) == 3  # the same row twice is made twice (and dropped as a duplicate), keyed apart


def _row(prompt: str, answer: str = "An answer here.") -> dict[str, object]:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def test_gate_drops_duplicates_near_duplicates_test_overlap_and_bad_lengths():
    gate = Gate.of(Filters(min_chars=3, max_chars=80), ["How long does the ferry take to reach Gull Island?"],
                   questions=True)
    rows = [_row("What is the capital of France?"), _row("What is the capital of France?"),
            _row("what is the capital city of France?"), _row("Which river flows through Paris?"),
            _row("How long does the ferry take to Gull Island?"), _row("Why?", ""), _row("Tell me a joke."),
            _row("Which is the longest river?", "x" * 81)]
    verdicts = []
    for r in rows:
        reason = gate.problem(r)
        verdicts.append(reason)
        if reason is None:
            gate.keep(r)
    assert verdicts == [None, "duplicate", "near_duplicate", None, "test_overlap", "empty", "not_a_question",
                        "too_long"]
    pair = {"prompt": "Why is the sky blue?", "chosen": "Scattering.", "rejected": "scattering"}
    assert row_problem(pair, Filters()) == "same_answers"
    none = Gate.of(Filters(dedup="none"))
    none.keep(_row("Same?"))
    assert none.problem(_row("Same?")) is None


def test_judge_scores_and_questions_are_read():
    assert expected_rating({"5": 0.5, "4": 0.5}) == 4.5 and expected_rating({"1": 0.01}) is None
    assert parse_score("Score: 3") == 3.0 and parse_score("10 out of 10") is None
    assert clean_question('1. "Where is it?"') == "Where is it?"
    assert output_row(Recipe.from_yaml("task: {kind: rewrite}\nsources: {seeds: [{prompt: a}]}\n"
                                      "output: {shape: prompt_completion}\n"), "q?", "a", None) == \
        {"prompt": "q?", "completion": "a"}


def test_generators_by_name_and_their_errors(monkeypatch):
    assert [kind_of(m) for m in ("embedded", "https://x/v1", "provider:org/m", "/models/x")] == \
        ["embedded", "url", "provider", "local"]
    with pytest.raises(GeneratorError, match="sign in"):
        make_generator("provider:org/m", token=None)
    with pytest.raises(GeneratorError, match="SYNTH_KEY is not set"):
        make_generator("http://127.0.0.1:1/v1", api_key_env="SYNTH_KEY")
    monkeypatch.setenv("SYNTH_KEY", "k")
    gen = make_generator("http://127.0.0.1:1/v1", api_key_env="SYNTH_KEY")
    assert isinstance(gen, OpenAICompatible) and gen.api_key == "k" and "k" not in gen.name
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GeneratorError, match=f"cannot reach the generator at http://127.0.0.1:{port}/v1"):
        OpenAICompatible(f"http://127.0.0.1:{port}/v1").chat([[{"role": "user", "content": "hi"}]],
                                                             max_new_tokens=4, temperature=0, seed=0)


def test_cli_reports_recipe_problems_in_one_line(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("task:\n  kind: qa\n")
    assert main(["synth", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "sources.documents" in capsys.readouterr().err
    assert main(["synth", "qa-from-documents", "--rows", "0", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "task.rows: 0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    assert main(["synth", "no-such-recipe", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "cannot read the recipe" in capsys.readouterr().err


def test_cli_flags_override_the_recipe(tmp_path):
    from argparse import Namespace

    from finetune.commands.synth import apply_flags, load_recipe

    doc = tmp_path / "notes.txt"
    doc.write_text("A short note about the harbor, written plainly.")
    args = Namespace(source=[str(doc)], rows=5, generator="http://127.0.0.1:8080/v1", judge="none", test_set=None)
    r = apply_flags(load_recipe("qa-from-documents"), args)
    assert r.sources.documents == [str(doc.resolve())] and r.task.rows == 5
    assert r.generator.model == "http://127.0.0.1:8080/v1" and r.judge.use is False
    assert read_material(r).chunks[0].source == "notes.txt"
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"prompt": "Say hi.", "completion": "Hi!"}) + "\n")
    r = apply_flags(load_recipe("instructions-from-examples"),
                    Namespace(source=[str(seeds)], rows=None, generator=None, judge="embedded", test_set=None))
    assert read_material(r).pairs == [Pair("Say hi.", "Hi!")] and r.judge.model == "embedded"


def test_a_made_dataset_is_pushed_with_a_card_naming_recipe_generator_and_counts(tmp_path, monkeypatch):
    from finetune import hub
    from finetune.service import Workspace
    from finetune.service.checks import push_dataset
    from finetune.synth.card import card_for

    made = tmp_path / "made.jsonl"
    made.write_text(json.dumps({"messages": [], "score": 4.0}) + "\n")
    assert card_for(made) is None  # not made by a recipe: the formatted file's card
    (tmp_path / "made.summary.json").write_text(json.dumps({
        "recipe": "qa-from-documents", "task": "qa", "shape": "messages", "generator": "http://127.0.0.1:8080/v1",
        "judge": "http://127.0.0.1:8080/v1", "made": 9, "kept": 6, "rows_asked": 6,
        "dropped": {"near_duplicate": 2, "test_overlap": 1}, "recipe_yaml": "name: qa-from-documents\n"}))
    pushed: dict[str, str] = {}

    def fake_push(folder, repo_id, **kw):
        pushed["card"] = (Path(folder) / "README.md").read_text()
        pushed["rows"] = (Path(folder) / "data" / "train.jsonl").read_text()
        return f"https://hub/{repo_id}"

    monkeypatch.setattr(hub, "push_folder", fake_push)
    push_dataset(Workspace(tmp_path / "runs"), made, "me/made", token="t")
    card = pushed["card"]
    assert "recipe: qa-from-documents" in card and "generator: http://127.0.0.1:8080/v1" in card
    assert "| nearly the same prompt as an earlier row | 2 |" in card and "| the prompt overlaps the test set | 1 |" in card
    assert "rows made: 9, kept: 6" in card and "name: qa-from-documents" in card
    assert pushed["rows"] == made.read_text()
