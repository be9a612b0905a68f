"""The Export tab in a real browser (chromium + Playwright) and `/export_model` through the real gradio_client:
a finished run becomes a downloadable GGUF file that llama.cpp loads with the trained template."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from apps import launched, needs_chromium, open_page
from llamacpp import LlamaCpp
from test_template_export import train_tiny


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("export-app")
    result = train_tiny(tiny_model_dir, work, "chatml")
    with launched(work / "runs", work / "downloads", multi_user=False) as (_, url):
        yield url, result


def test_export_model_endpoint_returns_a_gguf_and_an_ollama_zip(app, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, run = app
    client = Client(url, verbose=False)
    path, summary = client.predict(run.run_dir.name, "gguf", "q8_0", "", True, api_name="/export_model")
    assert Path(path).read_bytes()[:4] == b"GGUF" and path.endswith("-q8_0.gguf")
    assert "gguf export written" in summary and "MB" in summary
    with LlamaCpp(path) as cpp:
        text = cpp.apply_template([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

    path, summary = client.predict(run.run_dir.name, "ollama", "q8_0", "", True, api_name="/export_model")
    with zipfile.ZipFile(path) as z:
        names = sorted(Path(n).name for n in z.namelist() if not n.endswith("/"))
    assert names == ["Modelfile", "README.md", "model.gguf"] and "ollama create" in summary

    with pytest.raises(AppError, match="has no adapter yet|no run"):
        client.predict("20990101-000000-0000000000", "gguf", "q8_0", "", True, api_name="/export_model")
    with pytest.raises(AppError, match="the space format creates a Space on the Hub: give the repo to create in "
                                       "Push to Hub repo"):
        client.predict(run.run_dir.name, "space", "q8_0", "", True, api_name="/export_model")


@needs_chromium
def test_export_tab_in_the_browser_gives_a_downloadable_file(app, browser, tmp_path):
    url, run = app
    context, page = open_page(browser, url, accept_downloads=True)
    try:
        page.get_by_role("tab", name="5 · Export").click()
        page.wait_for_function("""() => { const i = document.querySelector('#export-run input');
                                          return i && i.value.length > 0; }""", timeout=60_000)
        assert page.locator("#export-run input").input_value() == run.run_dir.name
        page.locator("#export-format").get_by_text("lora-gguf", exact=True).click()
        page.locator("#export-quant input").fill("f16")
        page.locator("#export-quant input").press("Enter")
        page.locator("#export-btn").click()
        link = page.locator("#export-file a").first
        link.wait_for(timeout=180_000)
        with page.expect_download() as info:
            link.click()
        saved = tmp_path / info.value.suggested_filename
        info.value.save_as(saved)
        assert saved.name.endswith("-lora-f16.gguf") and saved.read_bytes()[:4] == b"GGUF"
        assert "lora-gguf export written" in page.locator("#export-result").inner_text()
    finally:
        context.close()
