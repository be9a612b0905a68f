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


def _form_events(tmp_path, space):
    """A FormStore over stand-in widgets (any keys do: gradio hands ``save`` a widget -> value mapping) and a way
    to save the form with a given data file."""
    from finetune import config as _config
    from finetune.ui import forms

    store = FormStore([object() for _ in range(len(forms.FORM_FIELDS) + 7)], tmp_path / "dl")
    defaults = forms.config_to_values(_config.RunConfig())
    me = Caller(space, None, None)

    def save(data_file):
        values = [*defaults, data_file, "", "", "train", "", "", "smollm2-135m-cpu"]
        store.save(me, dict(zip(store.kept, values)))
        return space.load_form()

    return store, me, save


def test_reloads_hand_back_one_copy_and_a_replaced_file_is_dropped_unless_a_run_names_it(tmp_path):
    space = Workspace(tmp_path / "runs", multi_user=True).owner_space("browser:" + "d" * 24)
    store, me, save = _form_events(tmp_path, space)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text('{"prompt": "a", "completion": "b"}\n')
    second.write_text('{"prompt": "c", "completion": "d"}\n')

    form = save(str(first))
    kept = Path(form["kept"])
    assert kept.is_file() and kept.name == "first.jsonl"
    backs = {store.handed_back(me, space.load_form()) for _ in range(5)}  # five reloads
    assert len(backs) == 1 and Path(backs.pop()).name == "first.jsonl"
    assert len(list((tmp_path / "dl").rglob("*.jsonl"))) == 1  # one copy, not one per reload
    again = save(store.hand_back_path(me, form))  # the reloaded page's form, saved as it is
    assert again["kept"] == str(kept)

    save(str(second))  # another file: the first is no longer kept (no run names it)
    assert not kept.exists() and Path(space.load_form()["kept"]).name == "second.jsonl"

    run = space.root / "20261207-000000-abcd"  # a run that trains on the second file keeps it
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  source: {space.load_form()['kept']}\n")
    kept_second = Path(space.load_form()["kept"])
    save(str(first))
    assert kept_second.exists()


def test_a_kept_name_fits_a_file_name_in_any_script():
    from finetune.service import kept_name

    for name in ("数据" * 100 + ".jsonl", "𝔡" * 100 + ".csv", "../../etc/passwd", ".hidden.json"):
        kept = kept_name(name)
        assert len(kept.encode("utf-8")) <= 255 and "/" not in kept and not kept.startswith("."), kept
    assert kept_name("数据" * 100 + ".jsonl").endswith(".jsonl")


def test_an_upload_kept_already_takes_no_room_and_is_not_refused_near_the_quota(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_OWNER_DISK_MB", "1")
    space = Workspace(tmp_path / "runs", multi_user=True).owner_space("browser:" + "e" * 24)
    data = tmp_path / "big.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n' * 18_000)  # ~0.65 MB: one copy fits in 1 MB, two do not
    kept = space.keep_upload(data)
    assert space.keep_upload(data) == kept  # the same content again: no quota check, no second copy
    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "q", "completion": "c"}\n' * 18_000)
    with pytest.raises(ServiceError):
        space.keep_upload(other)
