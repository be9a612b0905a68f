"""A real browser (Debian chromium driven by Playwright) on the Hyperparameters tab's Method picker: picking
dpo, kto or grpo shows that method's fields only, each with its one-line explanation, and the method's own line
above them; "Start from adapter" is there for every method; there is no field for reward code, and a loaded
config YAML that names a reward module does not bring it into the config the app would start."""

from __future__ import annotations

import pytest
from apps import launched, needs_chromium, open_page

from finetune.config import field_help
from finetune.methods import describe
from finetune.ui import forms

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def page(tmp_path_factory, browser):
    with launched(tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("dl")) as (_, url):
        context, pg = open_page(browser, url)
        pg.get_by_role("tab", name="2 · Hyperparameters").click()
        yield pg
        context.close()


def elem(key: str) -> str:
    return "#" + key.replace(".", "-")


@pytest.mark.parametrize("method", ["dpo", "kto", "grpo"])
def test_the_method_picker_shows_that_methods_fields_with_their_explanations(page, method):
    page.locator(elem("training.method")).get_by_label(method, exact=True).check()
    page.wait_for_function(f"document.querySelector('#method-info').innerText.includes({describe(method)!r})",
                           timeout=30_000)
    assert f"{method.upper()}: {describe(method)}" in page.locator("#method-info").inner_text()
    for f in forms.METHOD_FIELDS + forms.REWARD_FIELDS:
        box = page.locator(elem(f.key))
        if forms.METHOD_OF.get(f.key, method) == method:  # its own fields, and those of every method
            box.wait_for(state="visible", timeout=10_000)
            section, name = f.key.split(".")
            text = box.inner_text()
            assert f.label in text and field_help(section, name) in text, (f.key, text)
        else:
            assert not box.is_visible(), f"{f.key} is shown for {method}"
    assert page.locator(elem("training.init_adapter")).is_visible()  # "Start from adapter": every method
    assert page.locator(elem("rewards.module")).count() == 0  # the app takes no reward code


def test_a_loaded_config_does_not_bring_reward_code_into_the_app(page, tmp_path):
    """The Load-a-config button lays a YAML over the form: its grpo fields arrive, its rewards.module does not (the
    form has no such field, and the service refuses it anyway: tests/test_methods.py)."""
    config = tmp_path / "grpo.yaml"
    config.write_text("training:\n  method: grpo\n  grpo_num_generations: 6\nrewards:\n  exact_match: 2\n"
                      f"  module: {tmp_path / 'evil.py'}\n")
    page.locator("button.label-wrap", has_text="Config (YAML)").first.click()  # open the accordion
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Load a config YAML").click()
    chooser.value.set_files(str(config))
    page.wait_for_function("document.querySelector('#preset-info').innerText.includes('Loaded grpo.yaml')",
                           timeout=30_000)
    assert page.locator(elem("training.grpo_num_generations")).is_visible()
    assert page.locator(f"{elem('training.grpo_num_generations')} input[type=number]").input_value() == "6"
    page.wait_for_function("document.querySelector('#config-yaml').innerText.includes('grpo_num_generations: 6')",
                           timeout=30_000)
    yaml_text = page.locator("#config-yaml").inner_text()
    assert "exact_match: 2" in yaml_text and "evil.py" not in yaml_text, yaml_text
    note = page.locator("#preset-info").inner_text()  # and the page says it was left out, and why
    assert "Not taken" in note and "rewards.module" in note and "command line" in note, note
