"""A shared server's limits, tried as a visitor would: a launched multi-user app driven by gradio_client only.
Runs per visitor survive a new session; queued runs hold no process and start when the slot frees; steps and
wall-clock time are capped; the disk quota names what to delete; old downloads are cleaned up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from apps import SAMPLE, launched
from finetune import limits, runs, slots
from finetune.events import read_events
from finetune.ui.train_tab import caps_markdown
from test_app import tiny_yaml
from test_queue import wait_until

STOPPED_OR_DONE = ("stopped", "finished", "failed", "interrupted")


@pytest.fixture
def app(tmp_path, tiny_model_dir, monkeypatch):
    """A multi-user app over ``tmp_path/runs`` that offers the tiny test model (as an operator offers models)."""
    monkeypatch.setenv("FINETUNE_MODEL_DIRS", str(tiny_model_dir))
    for env in (slots.MAX_ENV, limits.RUNS_PER_VISITOR_ENV, limits.MAX_STEPS_ENV, limits.MAX_MINUTES_ENV,
                limits.DISK_ENV, limits.TRUST_FORWARDED_ENV):
        monkeypatch.delenv(env, raising=False)
    with launched(tmp_path / "runs", tmp_path / "downloads", css=False) as (demo, url):
        yield {"url": url, "root": tmp_path / "runs", "downloads": tmp_path / "downloads", "demo": demo}


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)  # a new session: a new owner


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return str(info.value)


def start(c, yaml: str, data: str | None = None) -> str:
    from gradio_client import handle_file

    return c.predict(yaml, handle_file(data) if data else None, "local", api_name="/start_training")


def run_dir_of(app, rid: str) -> Path:
    return next(app["root"].glob(f"users/*/{rid}"))


def wait_ended(c, rid: str, timeout: float = 120) -> dict:
    return wait_until(lambda: (s := c.predict(rid, api_name="/run_status"))["status"] in STOPPED_OR_DONE and s,
                      timeout, f"run {rid} to end")


def test_a_new_session_from_the_same_address_cannot_reset_the_run_limit(app, tiny_model_dir):
    """Three queued runs from one client, then a fourth from a new client (a new owner, same address) is refused;
    the queued runs hold no process, and the first starts once the slot frees."""
    qdir = slots.queue_dir(app["root"])
    held = slots.acquire_slot(qdir)  # the only training slot is busy: every run waits in line
    assert held is not None
    first = client(app["url"])
    yaml = tiny_yaml(tiny_model_dir, steps=2)
    ids = [start(first, yaml) for _ in range(3)]
    message = refusal(start, client(app["url"]), yaml)
    assert limits.RUNS_PER_VISITOR_ENV in message and "stop one" in message, message
    assert "internal error" not in message
    assert refusal(start, first, yaml).count("you already have 3 runs") == 1  # the same owner: named as theirs

    states = [first.predict(rid, api_name="/run_status") for rid in ids]
    assert [s["status_text"] for s in states] == [f"queued (position {i})" for i in (1, 2, 3)]
    for rid in ids:  # a waiting run is a ticket, not a process
        events = read_events(run_dir_of(app, rid))
        assert [e["type"] for e in events] == ["queued"] and "pid" not in events[0], events
    assert len(slots.pending_tickets(qdir)) == 3

    slots.release(held)  # the slot frees: the next status read starts the first run's process
    wait_until(lambda: first.predict(ids[0], api_name="/run_status")["status"] in ("new", "running", "finished"),
               20, "the first queued run launched")
    assert any(e["type"] == "launched" and e.get("pid") for e in read_events(run_dir_of(app, ids[0])))
    assert first.predict(ids[1], api_name="/run_status")["status_text"] == "queued (position 1)"
    for rid in reversed(ids):  # stopping frees the visitor's allowance
        first.predict(rid, api_name="/stop_training")
    for rid in ids:
        wait_ended(first, rid)
    again = client(app["url"])
    rid = start(again, yaml)  # under the limit again
    again.predict(rid, api_name="/stop_training")
    wait_ended(again, rid)


def test_steps_over_the_cap_are_refused_and_the_caps_are_shown(app, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(limits.MAX_STEPS_ENV, "5")
    c = client(app["url"])
    message = refusal(start, c, tiny_yaml(tiny_model_dir, steps=6))
    assert "training.max_steps" in message and "6 steps" in message and limits.MAX_STEPS_ENV in message, message
    by_epochs = tiny_yaml(tiny_model_dir, steps=6).replace("max_steps: 6", "max_steps: 0")
    assert "max_steps: 0" in by_epochs
    message = refusal(start, c, by_epochs, str(SAMPLE))  # 240 rows in batches of 4: planned over 5 steps
    assert "over this server's limit of 5 steps" in message, message
    assert not list((app["root"] / "users").glob("*/*/config.yaml"))  # nothing was created
    shown = caps_markdown(limits.run_caps(), 60)
    assert "at most 5 steps" in shown and "over the limit" in shown
    assert caps_markdown(None, 60) == ""  # one's own machine: no limits shown


def test_the_time_cap_checkpoints_and_stops_a_run(app, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(limits.MAX_MINUTES_ENV, "0.05")  # 3 seconds: the first step ends past it
    c = client(app["url"])
    rid = start(c, tiny_yaml(tiny_model_dir, steps=200))
    state = wait_ended(c, rid, 180)
    assert state["status"] == "stopped", state
    assert limits.MAX_MINUTES_ENV in state["message"] and "resume" in state["message"], state
    assert 0 < state["step"] < 200
    run_dir = run_dir_of(app, rid)
    assert runs.last_checkpoint(run_dir) is not None  # the work so far is kept
    assert [e.get("limit") for e in read_events(run_dir) if e["type"] == "stopped"] == ["time"]


def test_the_disk_quota_names_what_to_delete(app, tiny_model_dir, monkeypatch):
    c = client(app["url"])
    c.predict(api_name="/list_runs")  # the session's owner folder
    rid = start(c, tiny_yaml(tiny_model_dir, steps=2))
    wait_ended(c, rid, 180)
    user_root = run_dir_of(app, rid).parent
    (runs.run_path(rid, user_root) / "big.bin").write_bytes(b"\0" * 1_500_000)
    monkeypatch.setenv(limits.DISK_ENV, "1")  # 1 MB
    message = refusal(start, c, tiny_yaml(tiny_model_dir, steps=2), str(SAMPLE))
    assert "uploading city_year.jsonl refused" in message and rid in message and limits.DISK_ENV in message, message
    message = refusal(start, c, tiny_yaml(tiny_model_dir, steps=2))
    assert "starting a run refused" in message and f"delete runs you no longer need, largest first: {rid}" in message
    assert c.predict(rid, api_name="/delete_run").startswith("Your runs and uploads use 0.0 MB")
    assert not runs.run_path(rid, user_root).exists()
    again = start(c, tiny_yaml(tiny_model_dir, steps=2))  # room again
    c.predict(again, api_name="/stop_training")
    wait_ended(c, again)


def test_old_downloads_are_cleaned_up(app, tmp_path):
    folder = tmp_path / "downloads-check"
    old, new = folder / "adapters" / "a.zip", folder / "exports" / "b.gguf"
    for f in (old, new):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    assert limits.remove_old_files(folder, 3600) == 1
    assert not old.exists() and not old.parent.exists() and new.exists()
    # the app cleans its own downloads folder in the background, and gradio's cache by age
    assert any(t.name == "downloads-cleanup" and t.daemon for t in __import__("threading").enumerate())
    assert app["demo"].delete_cache == (3600, 24 * 3600)


def test_client_address_trusts_forwarded_only_when_told(monkeypatch):
    monkeypatch.delenv(limits.TRUST_FORWARDED_ENV, raising=False)
    assert limits.client_address("10.0.0.5", "1.2.3.4, 10.0.0.1") == "10.0.0.5"
    monkeypatch.setenv(limits.TRUST_FORWARDED_ENV, "1")  # one proxy: the address it appended, not a forged first
    assert limits.client_address("10.0.0.5", "6.6.6.6, 1.2.3.4") == "1.2.3.4"
    monkeypatch.setenv(limits.TRUST_FORWARDED_ENV, "2")
    assert limits.client_address("10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.1") == "1.2.3.4"
    monkeypatch.setenv(limits.RUNS_PER_VISITOR_ENV, "none")
    with pytest.raises(ValueError, match="FINETUNE_MAX_RUNS_PER_VISITOR='none' is not a number"):
        limits.runs_per_visitor()


def test_signed_in_users_are_counted_by_account(tmp_path):
    """Two accounts behind one address each get their own allowance; anonymous visitors there share one."""
    root = tmp_path
    owner_root = root / "users" / "u"
    for i, (owner, address) in enumerate([("user:ann", "9.9.9.9"), ("user:ann", "9.9.9.9"),
                                          ("user:ann", "9.9.9.9")]):
        run_dir = owner_root / f"r{i}"
        run_dir.mkdir(parents=True)
        (run_dir / runs.CONFIG_FILE).write_text("{}")
        (run_dir / "events.jsonl").write_text('{"type": "queued", "position": 1}\n')
        limits.record_run(root, run_dir, owner, address)
    with pytest.raises(limits.LimitError, match="you already have 3"):
        limits.check_visitor(root, "user:ann", "9.9.9.9")
    limits.check_visitor(root, "user:bob", "9.9.9.9")  # another account at the same address
    limits.check_visitor(root, "browser:" + "0" * 32, "9.9.9.9")  # signed-in runs do not count for the address
    (owner_root / "r0" / "events.jsonl").write_text('{"type": "queued", "position": 1}\n'
                                                    '{"type": "stopped", "queued": true}\n')
    limits.check_visitor(root, "user:ann", "9.9.9.9")  # one ended: room again
    assert not (root / limits.LEDGER_DIR / "r0.json").exists()  # and its entry left the ledger
