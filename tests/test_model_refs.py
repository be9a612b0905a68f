"""On a shared server a user names models and adapters by Hub id, never by a folder on the server."""

from __future__ import annotations

import pytest

from finetune import service
from finetune.config import RunConfig


def test_shared_server_refuses_server_folders_as_models(tmp_path, monkeypatch):
    other = tmp_path / "other-user" / "merged"
    other.mkdir(parents=True)
    monkeypatch.setenv("FINETUNE_MODEL_DIRS", str(tmp_path / "offered"))
    shared = service.Workspace(tmp_path / "runs", multi_user=True)
    for ref in (str(other), "../../etc", "/etc/passwd", str(tmp_path / "offered" / ".." / "other-user")):
        with pytest.raises(service.ServiceError, match="not a Hub repo id"):
            service.check_model_ref(shared, ref)
    assert service.check_model_ref(shared, "HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert service.check_model_ref(shared, "") == ""
    offered = tmp_path / "offered" / "llama"
    offered.mkdir(parents=True)
    assert service.check_model_ref(shared, str(offered)) == str(offered)
    # a single-user app on one's own machine may name any folder
    assert service.check_model_ref(service.Workspace(tmp_path / "r2"), str(other)) == str(other)
    # and a training config may not smuggle a server folder in as model.id
    cfg = RunConfig()
    cfg.model.id = str(other)
    cfg.training.max_steps = 1
    with pytest.raises(service.ServiceError, match="model.id"):
        shared.owner_space("alice").start_config(cfg)
