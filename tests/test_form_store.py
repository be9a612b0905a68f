"""The kept form (a reloaded page keeps its form): one small file per owner, and what it brings back is only the
owner's own kept upload, never another file of the server, whatever the kept form says."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.service import ServiceError, Workspace
from finetune.ui.common import Caller
from finetune.ui.form_store import FormStore


def test_a_kept_form_hands_back_only_the_owners_own_upload(tmp_path):
    ws = Workspace(tmp_path / "runs", multi_user=True)
    alice, bob = (Caller(ws.owner_space("browser:" + n * 24), None, None) for n in ("a", "b"))
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    kept = str(alice.space.keep_upload(data))
    store = FormStore([], tmp_path / "dl")
    back = store.handed_back(alice, {"kept": kept, "data_name": "../../pairs.jsonl"})
    assert back and Path(back).name == "pairs.jsonl" and (tmp_path / "dl") in Path(back).parents  # never a path
    secret = tmp_path / "server-secret.txt"
    secret.write_text("x")
    for forged in (str(secret), kept, "/etc/passwd", ""):  # another owner's upload, a server file: nothing
        assert store.handed_back(bob, {"kept": forged, "data_name": "x.jsonl"}) is None


def test_a_form_is_at_most_64_kB_and_a_damaged_one_is_said(tmp_path):
    space = Workspace(tmp_path / "runs", multi_user=True).owner_space("browser:" + "c" * 24)
    with pytest.raises(ServiceError, match="over 64 kB"):
        space.save_form({"config": "x" * 70_000})
    space.save_form({"version": 1, "config": "lora:\n  r: 4\n"})
    assert space.load_form() == {"version": 1, "config": "lora:\n  r: 4\n"}
    (space.root / "form.json").write_text("{broken")
    with pytest.raises(ServiceError, match="could not be read"):
        space.load_form()
    space.forget_form()
    assert space.load_form() is None
