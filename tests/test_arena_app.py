"""The arena through the service (votes private to their owner), the API (gradio_client) and a real browser that
votes three times and sees the tally change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from apps import launched, needs_chromium, open_page, set_text

from finetune.config import RunConfig


def tiny_run(model_dir: Path, root: Path):
    from finetune.train import train

    cfg = RunConfig()
    cfg.model.id = str(model_dir)
    cfg.quantization.load_in = "none"
    cfg.data.template = "chatml"
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 4, 4, 96, 2, False
    t.learning_rate = 5e-3
    return train(cfg, runs_root=root)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One finished tiny run with checkpoints at steps 2 and 4."""
    return tiny_run(tiny_model_dir, tmp_path_factory.mktemp("arena-single"))


@pytest.fixture(scope="module")
def workspace(trained, tmp_path_factory):
    """A shared-server workspace where alice has the run."""
    from finetune.service import Workspace

    ws = Workspace(tmp_path_factory.mktemp("arena-runs"), multi_user=True)
    shutil.copytree(trained.run_dir, ws.for_owner("user:alice") / trained.run_id)
    return ws, trained.run_id


def test_votes_are_private_to_their_owner(workspace, tmp_path):
    from finetune import service

    ws, run_id = workspace
    alice, bob = "user:alice", "user:bob"
    b = ws.owner_space(alice).arena_battle(["base", run_id, f"{run_id}@2"], "Hello?", max_new_tokens=4, seed=7)
    assert set(b["answers"]) == {"A", "B", "C"}
    with pytest.raises(service.ServiceError, match="no run"):
        ws.owner_space(bob).arena_battle(["base", run_id], "Hello?", max_new_tokens=4)  # not bob's run
    with pytest.raises(Exception, match="not open"):
        ws.owner_space(bob).arena_vote(b["battle_id"], "A")
    result = ws.owner_space(alice).arena_vote(b["battle_id"], "A")
    assert result["votes"] == 1 and sorted(result["vote"]["contenders"]) == sorted(["base", run_id, f"{run_id}@2"])
    top = result["standings"][0]
    assert top["name"] == result["vote"]["contenders"][0] and top["wins"] == 2
    assert ws.owner_space(bob).arena_standings() == []
    exported = ws.owner_space(alice).arena_export(tmp_path / "dl")
    [line] = exported.read_text().splitlines()
    assert json.loads(line)["verdict"] == "A" and json.loads(line)["prompt"] == "Hello?"
    with pytest.raises(service.ServiceError, match="no votes yet"):
        ws.owner_space(bob).arena_export(tmp_path / "dl")


@pytest.fixture(scope="module")
def single_user_app(trained, tmp_path_factory):
    root = trained.run_dir.parent
    with launched(root, tmp_path_factory.mktemp("dl"), multi_user=False) as (_, url):
        yield url, trained.run_id, root


def test_arena_endpoints(single_user_app):
    from gradio_client import Client

    url, run_id, _ = single_user_app
    c = Client(url, verbose=False)
    b = c.predict("base, " + run_id, "Hi", "", 0.0, 8, 0.9, 1.0, 3, api_name="/arena_battle")
    assert set(b["answers"]) == {"A", "B"}
    before = c.predict(api_name="/arena_standings")
    r = c.predict(b["battle_id"], "tie", api_name="/arena_vote")
    assert r["vote"]["verdict"] == "tie" and r["votes"] >= 1
    after = c.predict(api_name="/arena_standings")
    assert sum(x["ties"] for x in after) == sum(x["ties"] for x in before) + 2  # one tie, seen from both sides
    path = c.predict(api_name="/arena_export")
    assert json.loads(Path(path).read_text().splitlines()[-1])["battle_id"] == b["battle_id"]


@pytest.mark.slow  # half a minute of browser; the endpoints and the statistics are tested in the default suite
@needs_chromium
def test_browser_votes_three_times_and_sees_the_tally_change(single_user_app, browser):
    from finetune import service

    url, run_id, root = single_user_app
    start = service.Workspace(root).owner_space(None).arena_votes()  # the API test may have voted in this app already
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="4 · Playground").click()
        set_text(page, "arena-contenders", f"base, {run_id}, {run_id}@2")
        tallies, tables = [], []
        for i, verdict in enumerate(["A", "tie", "B"], 1):
            prompt = page.locator("#arena-prompt textarea, #arena-prompt input").first
            prompt.fill(f"Question {i}?")
            page.locator("#arena-battle").click()
            page.wait_for_function("document.querySelector('#arena-reveal').innerText.includes('Which answer')",
                                   timeout=120_000)
            assert page.locator("#arena-answer-C").is_visible()  # three contenders, three answers
            page.locator(f"#arena-vote-{verdict}").click()
            page.wait_for_function(
                f"document.querySelector('#arena-tally').innerText.includes('Your votes so far: {start + i}')"
                " && document.querySelector('#arena-reveal').innerText.includes('You voted')", timeout=60_000)
            tallies.append(page.locator("#arena-tally").inner_text())
            tables.append(page.locator("#arena-standings").inner_text())
        assert len(set(tallies)) == 3 and len(set(tables)) == 3  # the tally and the standings changed each time
        assert run_id in tables[-1] and "base" in tables[-1]
        page.screenshot(path=str(Path(__file__).parent / "screenshots" / "5-arena.png"), full_page=True)
    finally:
        context.close()
