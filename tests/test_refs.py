"""refs.classify: what a user string names (Hub id, local path, embedded default), under both Hub-id rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.refs import Ref, classify, is_hub_id, starts_like_path

DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """A working folder holding a folder ``org/name`` and a file ``tinyllama`` (names that also read as Hub ids)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "tinyllama").write_text("not a model")
    return tmp_path


def test_empty_is_the_embedded_default():
    assert classify("") == Ref("embedded", "")
    assert classify("", strict=False).kind == "embedded"


@pytest.mark.parametrize("text", ["HuggingFaceTB/SmolLM2-135M-Instruct", "alice/my_data.v2", "gpt2", "org-1/a-b"])
def test_hub_ids(cwd, text):
    for strict in (True, False):
        ref = classify(text, strict=strict)
        assert ref.kind == "hub" and ref.repo_id == text and ref.revision is None
    assert classify(text).has_namespace == ("/" in text)


@pytest.mark.parametrize("text", ["./model", "../model", "/srv/models/x", "~/models/x", "~alice/x", ".hidden/x",
                                  "a/b/c", "runs/alice/adapter"])
def test_path_shaped_text_is_a_path_under_both_rules(cwd, text):
    assert starts_like_path(text) or text.count("/") > 1
    assert classify(text).kind == "path"
    assert classify(text, strict=False).kind == "path"
    assert classify(text, strict=False, local_first=False).kind == "path"


def test_tilde_of_an_unknown_user_is_a_path_without_expanding_it(cwd):
    # Path("~nobody-here/x").expanduser() raises; classifying must not
    assert classify("~nobody-here/x", strict=False).kind == "path"


@pytest.mark.parametrize("text", ["a b/c", "org/", "a/.", "a/..", "a..b/c", "org/x.", "org/.x", "-a/b", "_a/b"])
def test_strict_rule_refuses_what_the_hub_refuses_and_loose_rule_leaves_it_to_the_hub(cwd, text):
    assert classify(text).kind == "path"
    assert classify(text, strict=False, local_first=False).kind == "hub"


def test_an_existing_local_path_wins_unless_local_first_is_off(cwd):
    assert classify("org/name").kind == "path"
    assert classify("org/name", strict=False).kind == "path"
    assert classify("tinyllama").kind == "path"  # an existing file too
    assert classify("org/name", local_first=False).kind == "hub"
    assert classify("tinyllama", strict=False, local_first=False).kind == "hub"
    assert not is_hub_id("org/name")


@pytest.mark.parametrize("text", ["alice/rows.jsonl", "rows.jsonl", "x/train.csv", "data.parquet", "a/b.json", "t.tsv"])
def test_data_file_names_are_files_not_hub_ids(cwd, text):
    assert classify(text, file_suffixes=DATA_SUFFIXES).kind == "path"
    assert classify(text).kind == "hub"  # without the suffixes it reads as a repo id


def test_revision_is_split_off_only_when_asked(cwd):
    ref = classify("alice/lora@v1", strict=False, revision=True)
    assert (ref.kind, ref.repo_id, ref.revision, ref.text) == ("hub", "alice/lora", "v1", "alice/lora@v1")
    assert classify("alice/lora@", strict=False, revision=True).revision is None
    assert classify("alice/lora@v1").kind == "path"  # "@" is no Hub character
    assert classify("a/b/c@v1", strict=False, revision=True).kind == "path"


def test_path_expands_home():
    assert classify("~/models/x").path == Path.home() / "models" / "x"
    assert classify("./m").path == Path("m")


def test_is_hub_id_needs_org_and_name(cwd):
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not is_hub_id("gpt2")
    assert not is_hub_id("")
    assert not is_hub_id("/models/x")
    assert not is_hub_id(str(cwd / "org" / "name"))
