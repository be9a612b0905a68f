"""Experiment tracking through a maintained library, chosen in the config: off by default; trackio keeps a local
dashboard per owner next to their runs; an unknown tracker or a missing package is a message naming the fix; no
token reaches the config or the tracker's files."""

from __future__ import annotations

import os
import sqlite3

import pytest

from finetune.config import ConfigError, RunConfig, validate
from finetune.train import TrainingError, train
from test_train import tiny_config

TOKEN = "hf_trackingtesttokenabcdefghijklmnopqrstuv"


def test_tracking_is_off_by_default_and_names_are_checked():
    assert RunConfig().training.report_to == "none"
    cfg = RunConfig()
    cfg.training.report_to = "trackio, nonsense"
    with pytest.raises(ConfigError, match="training.report_to: unknown tracker 'nonsense'"):
        validate(cfg)


def test_a_missing_tracker_package_names_the_install(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, max_steps=1, report_to="mlflow")
    if __import__("importlib.util").util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    with pytest.raises(TrainingError, match="install mlflow"):
        train(cfg, runs_root=tmp_path)


@pytest.mark.slow  # a real run of the tiny model with trackio, about 25 s
def test_trackio_records_the_losses_next_to_the_owners_runs(tiny_model_dir, tmp_path, monkeypatch):
    if __import__("importlib.util").util.find_spec("trackio") is None:  # not imported here: it reads its folder once
        pytest.skip("trackio is not installed")
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = train(tiny_config(tiny_model_dir, max_steps=3, report_to="trackio", project="cities"), runs_root=tmp_path)
    os.environ.pop("TRACKIO_DIR", None)  # set by the run for its own process
    assert result.status == "finished"
    dashboard = tmp_path / ".trackio"
    dbs = list(dashboard.rglob("*.db"))
    assert dbs, sorted(p.name for p in dashboard.rglob("*"))
    logged = []
    for db in dbs:
        with sqlite3.connect(db) as con:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
            if "metrics" in tables:
                logged += [r for r in con.execute("select * from metrics")]
    assert any("loss" in str(row) for row in logged), logged[:3]
    assert any(result.run_id in str(row) for row in logged) or "cities" in str(dbs), dbs
    for f in list(dashboard.rglob("*")) + list(result.run_dir.rglob("*")):
        if f.is_file() and f.stat().st_size < 50_000_000:
            assert TOKEN.encode() not in f.read_bytes(), f
