"""The small rough edges a newcomer meets: no alarming start-up line about a missing `kernels` package, the API
documents the playground's adapter as text, loss figures are rounded, the length histogram's axis follows the
data, the backend's help follows the backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from apps import launched

ROOT = Path(__file__).resolve().parent.parent


def test_importing_bitsandbytes_through_finetune_prints_no_kernels_warning():
    code = "import finetune.models, bitsandbytes, torch; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
    assert "kernels" not in out.stderr, out.stderr[-2000:]


def test_histogram_axis_follows_the_data():
    from finetune.ui.dataset_tab import histogram

    fig = histogram([40, 60, 80, 120], 1024)
    ax = fig.axes[0]
    assert ax.get_xlim()[1] < 200 and "every example fits max_length 1024" in ax.get_title()
    cut = histogram([40, 60, 80, 120], 100).axes[0]
    assert any(line.get_label() == "max_length 100" for line in cut.lines)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("dl"), multi_user=False, css=False) as (demo, url):
        yield demo, url, root


def test_api_documents_the_adapter_as_text(app):
    from gradio_client import Client

    _, url, _ = app
    info = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    params = {p["parameter_name"]: p for p in info["named_endpoints"]["/chat"]["parameters"]}
    assert params["adapter"]["python_type"]["type"] == "str", params["adapter"]


def test_backend_help_and_rounded_loss(app, tmp_path):
    from finetune.ui import train_tab

    assert set(train_tab.BACKEND_INFO) == {"local", "zerogpu", "hf-jobs"}
    assert len(set(train_tab.BACKEND_INFO.values())) == 3  # each backend its own help
    from finetune import runs
    from finetune.config import RunConfig
    from finetune.events import EventLog

    demo, _, root = app
    fns = {getattr(b.fn, "__name__", ""): b.fn for b in demo.fns.values()}
    run_dir = root / "20260101-000000-aaaaaaaaaa"
    run_dir.mkdir()
    RunConfig().save(run_dir / runs.CONFIG_FILE)
    EventLog(run_dir).emit("step", step=3, max_steps=10, loss=1.234567891)
    frame = fns["table"](None)[0]
    assert list(frame["loss"]) == [1.2346]
    shown = fns["backend_panels"]("hf-jobs", "", None, "t4-small")
    assert shown[-1] == train_tab.BACKEND_INFO["hf-jobs"]
    assert fns["backend_panels"]("local", "", None, "t4-small")[-1] == train_tab.LOCAL_INFO


def test_duplicates_can_be_kept(tmp_path):
    from finetune.cli import main
    from finetune.config import RunConfig
    from finetune.config import DataConfig
    from finetune.data import format_dataset

    rows = [{"instruction": "a", "output": "b"}] * 3 + [{"instruction": "c", "output": "d"}]
    dropped = format_dataset(rows, DataConfig(template="chatml"))
    kept = format_dataset(rows, DataConfig(template="chatml", keep_duplicates=True))
    assert len(dropped.examples) == 2 and sum(dropped.skipped.values()) == 2
    assert len(kept.examples) == 4 and not kept.problems
    assert RunConfig.from_yaml("data:\n  keep_duplicates: true\n").data.keep_duplicates
    data = tmp_path / "d.jsonl"
    data.write_text("".join('{"instruction": "%s", "output": "b"}\n' % x for x in "aab"), encoding="utf-8")
    assert main(["format", str(data), "--keep-duplicates", "--template", "chatml", "--out", str(tmp_path / "o.jsonl")]) == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow  # two real runs of the tiny model, about 15 s
def test_runs_report_memory_and_utilisation_and_curves_overlay(tiny_model_dir, tmp_path):
    """A real run's step events carry the gauge (memory in use of the total, utilisation); the Train tab draws it
    and overlays the loss curves of several runs."""
    from finetune import service
    from finetune.train import train
    from finetune.ui.train_tab import gauge_html, progress_html
    from test_train import tiny_config

    a = train(tiny_config(tiny_model_dir, max_steps=3, save_steps=10), runs_root=tmp_path)
    b = train(tiny_config(tiny_model_dir, max_steps=2, save_steps=10, learning_rate=1e-3), runs_root=tmp_path)
    state = service.Workspace(tmp_path).owner_space(None).status(a.run_id)
    assert 0 < state["mem_gb"] < state["mem_total_gb"] and state["util_pct"] is not None and state["device"] == "cpu"
    html = progress_html(state)
    assert "id='ft-gauge'" in html and f"{state['mem_gb']:.1f} / {state['mem_total_gb']:.1f} GB" in html
    assert gauge_html({"mem_gb": None}) == ""
    rows = service.Workspace(tmp_path).owner_space(None).loss_curves([a.run_id, b.run_id])
    assert [(r["run"], r["step"]) for r in rows] == [(a.run_id, 1), (a.run_id, 2), (a.run_id, 3),
                                                     (b.run_id, 1), (b.run_id, 2)]
    with pytest.raises(service.ServiceError, match="no run"):
        service.Workspace(tmp_path).owner_space(None).loss_curves(["20990101-000000-ffffffffff"])
