"""The app's /make_dataset endpoint through gradio_client: on one's own machine it makes a dataset from uploaded
documents with a generator at a URL (llama.cpp serving the embedded GGUF); a shared server refuses a visitor's URL
and a server path, and says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apps import launched
from gradio_client import Client, handle_file
from llamacpp import LlamaCpp

from finetune.models import embedded_gguf_path

DOCS = Path(__file__).resolve().parent.parent / "presets" / "recipes" / "documents"


def recipe(generator: str, **extra: str) -> str:
    lines = ["name: app-test", "task: {kind: qa, rows: 1}",
             f"generator: {{model: '{generator}', max_new_tokens: 12, temperature: 0}}", "judge: {use: false}"]
    return "\n".join(lines + [f"{k}: {v}" for k, v in extra.items()]) + "\n"


def test_shared_server_refuses_a_generator_url_and_server_paths(tmp_path):
    with launched(tmp_path / "runs", tmp_path / "dl", multi_user=True) as (_, url):
        c = Client(url, verbose=False)
        doc = handle_file(str(DOCS / "kestrel-kettle.txt"))
        for text, words in ((recipe("http://127.0.0.1:9/v1"), "does not call a server at a URL"),
                            (recipe("embedded", judge="{model: 'https://example.com/v1'}"), "judge.model"),
                            (recipe("embedded", filters="{test_set: /etc/passwd}"), "files are uploaded")):
            with pytest.raises(Exception) as info:
                c.predict(text, [doc], api_name="/make_dataset")
            message = str(info.value)
            assert words in message and "internal error" not in message.lower(), message
        with pytest.raises(Exception) as info:  # a document named by path instead of uploaded
            c.predict(recipe("embedded", sources="{documents: [/etc/hostname]}"), None, api_name="/make_dataset")
        assert "documents are uploaded" in str(info.value)
    assert not list((tmp_path / "runs").rglob("*.progress.jsonl"))  # nothing was made


def test_own_machine_makes_a_dataset_from_uploaded_documents(tmp_path):
    with LlamaCpp(str(embedded_gguf_path()), n_ctx=1024) as cpp, \
            launched(tmp_path / "runs", tmp_path / "dl", multi_user=False) as (_, url):
        c = Client(url, verbose=False)
        made, summary = c.predict(recipe(cpp.url + "/v1"), [handle_file(str(DOCS / "saltmere-library.md"))],
                                  api_name="/make_dataset")
    rows = [json.loads(line) for line in Path(made).read_text().splitlines()]
    assert len(rows) == 1 and set(rows[0]) == {"messages", "score"} and rows[0]["score"] is None
    assert "kept 1 of 1 asked" in summary and cpp.url in summary
    progress = next((tmp_path / "runs").rglob("app-test.progress.jsonl"))
    assert '"source": "saltmere-library.md"' in progress.read_text()  # the upload's own name, no server path
