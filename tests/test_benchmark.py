"""General-ability benchmarks (`python -m finetune bench`): lm-eval's own `simple_evaluate` on the base model and on
the adapter gives the report's numbers; the bundled task and a test file's generated task load from local files (no
Hub); a generative task is prompted with the adapter's chat template; bad task names are refused with the names
there are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finetune import runs
from finetune.benchmark import BUNDLED_DIR, BenchError, compare, noise_flag, resolve_tasks, unknown_task
from finetune.cli import main
from finetune.config import RunConfig
from finetune.train import train

OK_TEST = [{"prompt": f"Question number {i}?", "completion": "OK"} for i in (100, 101, 102)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ok_run(tiny_model_dir, tmp_path_factory):
    """A tiny model taught to answer every question with "OK" (24 steps)."""
    folder = tmp_path_factory.mktemp("ok-data")
    data = write_jsonl(folder / "train.jsonl", [{"prompt": f"Question number {i}?", "completion": "OK"}
                                                 for i in range(32)])
    cfg = RunConfig()
    cfg.model.id = str(tiny_model_dir)
    cfg.quantization.load_in = "none"
    cfg.data.source, cfg.data.template = str(data), "chatml"
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps = 24, 4, 64, 24
    t.learning_rate, t.gradient_checkpointing, t.warmup_ratio = 1e-2, False, 0.0
    return train(cfg, runs_root=tmp_path_factory.mktemp("runs"))


def direct(pretrained: str, tokenizer: str, tasks: list, *, peft: str | None = None, chat: bool = False,
           include: Path | None = None, limit: int) -> dict:
    """lm-eval's own route: HFLM loading the model (and the PEFT adapter) by path, then simple_evaluate."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=pretrained, tokenizer=tokenizer, peft=peft, device="cpu", batch_size=1)
    tm = TaskManager(include_path=str(include) if include else None, include_defaults=False)
    return simple_evaluate(lm, tasks=tasks, task_manager=tm, limit=limit, apply_chat_template=chat,
                           fewshot_as_multiturn=chat, log_samples=False)["results"]


@pytest.fixture(scope="module")
def benched(ok_run, tmp_path_factory):
    """`finetune bench` of the run on the bundled task and a test file: (report, what it printed)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("bench")
    test_file = write_jsonl(folder / "ok_questions.jsonl", OK_TEST)
    out, printed = folder / "report.json", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["bench", "--adapter", str(ok_run.run_dir), "--tasks", f"general_knowledge,{test_file}",
                     "--limit", "4", "--out", str(out)]) == 0
    return json.loads(out.read_text()), printed.getvalue()


def test_bench_numbers_are_lm_evals_own_on_the_base_and_on_the_adapter(ok_run, benched, tiny_model_dir):
    report, printed = benched
    assert runs.read_bench_report(ok_run.run_dir) == report  # the run keeps it beside its evaluation
    assert "general_knowledge  acc" in printed and "ok_questions" in printed

    # lm-eval by itself: the bundled task from its YAML (data path made absolute), the test file's generated YAML
    gk = yaml.safe_load((BUNDLED_DIR / "general_knowledge.yaml").read_text())
    gk["dataset_kwargs"]["data_files"]["test"] = str(BUNDLED_DIR / "general_knowledge.jsonl")
    generated = ok_run.run_dir / runs.BENCH_TASKS
    assert (generated / "ok_questions.yaml").is_file()
    adapter = str(ok_run.run_dir / runs.ADAPTER)
    want: dict[str, dict] = {"base": {}, "adapter": {}}
    for side, peft in (("base", None), ("adapter", adapter)):
        want[side] |= direct(str(tiny_model_dir), adapter, [gk], peft=peft, limit=4)
        want[side] |= direct(str(tiny_model_dir), adapter, ["ok_questions"], peft=peft, chat=True, include=generated,
                             limit=4)
    rows = {(r["task"], r["metric"]): r for r in report["results"]}
    assert set(rows) == {("general_knowledge", "acc"), ("general_knowledge", "acc_norm"),
                         ("ok_questions", "exact_match")}
    for (task, metric), row in rows.items():
        for side in ("base", "adapter"):
            assert row[side] == want[side][task][f"{metric},none"], (task, metric, side)
            assert row[f"stderr_{side}"] == want[side][task][f"{metric}_stderr,none"], (task, metric, side)
        assert row["delta"] == pytest.approx(row["adapter"] - row["base"])
    # the adapter learned to say OK (prompted with its chat template); the base never does
    em = rows[("ok_questions", "exact_match")]
    assert (em["base"], em["adapter"], em["beyond_noise"]) == (0.0, 1.0, True)
    assert [t["n"] for t in report["tasks"]] == [4, 3]


def test_an_unknown_task_is_said_with_close_names_the_bundled_ones_and_the_full_list(tmp_path):
    said = str(unknown_task("hellaswg", ["arc_easy", "hellaswag", "mmlu"]))
    assert "unknown task 'hellaswg' (did you mean hellaswag?)" in said
    assert "general_knowledge" in said and "lm-eval's 3 tasks" in said and "--list-tasks" in said
    with pytest.raises(BenchError, match="test file missing.jsonl not found"):
        resolve_tasks(["missing.jsonl"], tmp_path, tokenizer=None)
    with pytest.raises(BenchError, match="no task given"):
        resolve_tasks([" ", ""], tmp_path, tokenizer=None)


@pytest.mark.slow  # lm-eval's index of its ~15,000 task names: ~10 s of CPU
def test_unknown_task_names_are_refused_with_the_names_there_are(tmp_path):
    with pytest.raises(BenchError) as e:
        resolve_tasks(["arc_easyy"], tmp_path, tokenizer=None)
    said = str(e.value)
    assert "unknown task 'arc_easyy'" in said and "did you mean arc_easy" in said
    assert "general_knowledge" in said and "--list-tasks" in said
    with pytest.raises(BenchError, match="humaneval scores answers by running the code the model writes"):
        resolve_tasks(["humaneval"], tmp_path, tokenizer=None)
    [arc] = resolve_tasks(["arc_easy"], tmp_path, tokenizer=None)
    [gsm] = resolve_tasks(["gsm8k"], tmp_path, tokenizer=None)
    assert (arc.kind, arc.generative, gsm.generative) == ("lm-eval", False, True)  # the chat template for gsm8k only


def test_a_conversation_test_file_names_the_row_it_cannot_ask(tmp_path):
    convo = write_jsonl(tmp_path / "c.jsonl", [{"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}])
    with pytest.raises(BenchError, match=r"c.jsonl:1: an lm-eval task takes one user prompt per row"):
        resolve_tasks([str(convo)], tmp_path / "tasks", tokenizer=None)


def test_the_difference_is_flagged_beyond_noise_only_past_two_standard_errors():
    base = {"t": {"acc,none": 0.50, "acc_stderr,none": 0.05, "exact_match,strict": 0.2,
                  "exact_match_stderr,strict": "N/A", "alias": "t"}}
    tuned = {"t": {"acc,none": 0.30, "acc_stderr,none": 0.05, "exact_match,strict": 0.3,
                   "exact_match_stderr,strict": "N/A", "alias": "t"}}
    rows = compare(base, tuned, ["t"])
    assert [(r["metric"], r["beyond_noise"]) for r in rows] == [("acc", True), ("exact_match (strict)", None)]
    assert rows[0]["delta"] == pytest.approx(-0.2)
    assert noise_flag(0.13, 0.05, 0.05) is False  # 1.96 * 0.0707 = 0.139
    assert noise_flag(0.14, 0.05, 0.05) is True


def test_the_pushed_card_carries_the_benchmark_in_model_index(ok_run, benched, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard, constants, metadata_load
    from test_hub import FAKE_TOKEN, FakeHub

    from finetune.hub import push_adapter

    report = benched[0]
    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        push_adapter(ok_run.run_dir, "testorg/ok-bench", token=FAKE_TOKEN)
        files = hub.files("testorg/ok-bench")
    finally:
        hub.close()
    readme = tmp_path / "README.md"
    readme.write_bytes(files["README.md"])
    results = metadata_load(readme)["model-index"][0]["results"]
    harness = [r for r in results if r.get("source", {}).get("name") == "lm-evaluation-harness"]
    assert [r["dataset"]["name"] for r in harness] == ["general_knowledge", "ok_questions"]
    card = ModelCard(files["README.md"].decode())  # the Hub's own parser reads them back
    parsed = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results
              if r.source_name == "lm-evaluation-harness"}
    want = {(r["task"], r["metric"]): round(r["adapter"], 4) for r in report["results"]}
    assert parsed == want
    assert "## General ability" in card.text
    em = next(r for r in report["results"] if r["metric"] == "exact_match")
    assert f"| ok_questions | exact_match | {em['base']:.4f} ± {em['stderr_base']:.4f} |" in card.text
    assert json.loads(files["eval_report.json"])["benchmark"] == report  # joined with the evaluation report


HELDOUT = Path(__file__).resolve().parent.parent / "finetune" / "samples" / "city_year_heldout.jsonl"


@pytest.mark.slow  # the embedded SmolLM2-135M: a short training, then base and adapter through lm-eval twice
def test_the_embedded_model_and_a_trained_adapter_score_as_lm_eval_scores_them(smollm2_dir, tmp_path):
    from finetune.benchmark import benchmark

    cfg = RunConfig.load(Path(__file__).resolve().parent.parent / "presets" / "smollm2-135m-cpu.yaml")
    t = cfg.training
    t.max_steps, t.save_steps, t.batch_size = 8, 8, 4
    run_dir = train(cfg, runs_root=tmp_path / "runs").run_dir
    report = benchmark(run_dir, ["general_knowledge", str(HELDOUT)], limit=8)
    adapter = str(run_dir / runs.ADAPTER)
    gk = yaml.safe_load((BUNDLED_DIR / "general_knowledge.yaml").read_text())
    gk["dataset_kwargs"]["data_files"]["test"] = str(BUNDLED_DIR / "general_knowledge.jsonl")
    generated = run_dir / runs.BENCH_TASKS
    rows = {(r["task"], r["metric"]): r for r in report["results"]}
    for side, peft in (("base", None), ("adapter", adapter)):
        want = direct(str(smollm2_dir), adapter, [gk], peft=peft, limit=8)
        want |= direct(str(smollm2_dir), adapter, ["city_year_heldout"], peft=peft, chat=True, include=generated,
                       limit=8)
        for (task, metric), row in rows.items():
            assert row[side] == want[task][f"{metric},none"], (task, metric, side)
            assert row[f"stderr_{side}"] == want[task][f"{metric}_stderr,none"], (task, metric, side)
    em = rows[("city_year_heldout", "exact_match")]
    assert em["base"] == 0.0 and em["adapter"] > em["base"]  # the task was learned, in the trained template


def test_a_shared_server_caps_the_documents_and_reads_only_the_test_file_uploaded(tmp_path, monkeypatch):
    from finetune.limits import LimitError, check_bench_rows
    from finetune.service import ServiceError, Workspace
    from finetune.service.bench_actions import TEST_FILE, row_limit, task_list

    assert check_bench_rows(100) == 100
    for asked, said in ((0, "every document"), (101, "101 documents")):
        with pytest.raises(LimitError, match=f"would score {said} of each task, over this server's limit of 100"):
            check_bench_rows(asked)
    monkeypatch.setenv("FINETUNE_MAX_BENCH_ROWS", "5")
    with pytest.raises(LimitError, match="limit of 5 per task"):
        check_bench_rows(6)
    shared = Workspace(tmp_path / "shared", multi_user=True).owner_space("session:a")
    mine = Workspace(tmp_path / "mine").owner_space(None)
    assert row_limit(shared, 5) == 5 and row_limit(mine, 0) is None  # one's own machine: every document
    upload = write_jsonl(tmp_path / "my_test.jsonl", OK_TEST)
    names, check = task_list(shared, f"general_knowledge,{TEST_FILE}", str(upload))
    kept = Path(names[1])
    assert names[0] == "general_knowledge" and kept.name == "my_test.jsonl" and kept.is_relative_to(shared.root)
    assert check(names[1]) == kept
    with pytest.raises(ServiceError, match="passwd.jsonl: on this shared server a test file is one you upload"):
        task_list(shared, "general_knowledge,/etc/passwd.jsonl", None)
    with pytest.raises(ServiceError, match="the tasks name the test file, but none was sent"):
        task_list(shared, TEST_FILE, None)
    assert task_list(mine, str(upload), None)[1](str(upload)) == upload  # one's own machine reads one's paths


def test_background_benchmarks_wait_for_the_apps_slot_and_one_per_owner(ok_run):
    import time

    from finetune.service import ServiceError, Workspace
    from finetune.service.bench_actions import Jobs

    space, run_id = Workspace(ok_run.run_dir.parent).owner_space(None), ok_run.run_dir.name
    jobs = Jobs(concurrent=1)
    with jobs.slots:  # another benchmark holds the app's one slot
        state = jobs.start(space, run_id, "general_knowledge", limit=2)
        time.sleep(0.5)
        assert jobs.state(space, run_id)["progress"] == "waiting for another benchmark to finish"
        with pytest.raises(ServiceError, match="a benchmark of yours is running"):
            jobs.start(space, run_id, "general_knowledge", limit=2)
    assert state["status"] == "running"
    deadline = time.time() + 120
    while (state := jobs.state(space, run_id))["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.2)
    assert state["status"] == "finished", state
    assert [t["n"] for t in state["report"]["tasks"]] == [2] and state["report"]["adapter"] == run_id


def test_a_benchmark_in_zerogpu_calls_scores_each_part_once_and_reports_as_one_call(ok_run, benched, tmp_path,
                                                                                     monkeypatch):
    """On ZeroGPU a benchmark runs in GPU calls of its own, one (task, side) part after another, each kept as made:
    a call that runs out of time pauses after its first part, a call cut off from outside is followed by the next,
    no part is scored twice, and the report is the one a single call makes."""
    from finetune import benchmark as bench
    from finetune.backends import zerogpu

    report, _ = benched
    test_file = tmp_path / "ok_questions.jsonl"
    write_jsonl(test_file, OK_TEST)
    scored: list[str] = []
    real = bench.run_lm_eval

    def counting(lm, tasks, limit):
        scored.extend(t.name for t in tasks)
        return real(lm, tasks, limit)

    monkeypatch.setattr(bench, "run_lm_eval", counting)
    calls: list[str] = []

    def chunk(*args):
        if len(calls) == 2:  # the third call is cut off from outside
            calls.append("aborted")
            raise RuntimeError("GPU task aborted")
        out = zerogpu.bench_chunk(*args[:-1], 0)  # no time left after the first part: every call pauses
        calls.append(out["status"])
        return out

    parts = tmp_path / "parts"
    got = zerogpu.run_bench_chunked(str(ok_run.run_dir), ["general_knowledge", str(test_file)], 4, parts,
                                    label="ok", chunk=chunk)
    assert calls == ["paused", "paused", "aborted", "paused", "finished"]
    assert sorted(scored) == sorted(["general_knowledge", "ok_questions"] * 2)  # each task on each side, once
    assert len(list(parts.glob("*.json"))) == 4
    assert got["results"] == report["results"] and got["adapter"] == "ok"


def test_on_zerogpu_the_service_benchmarks_in_gpu_calls_with_the_servers_checks_first(ok_run, tmp_path, monkeypatch):
    from finetune.backends import zerogpu
    from finetune.service import ServiceError, Workspace

    asked: list[tuple] = []
    monkeypatch.setattr(zerogpu, "available", lambda: (True, ""))
    monkeypatch.setattr(zerogpu, "run_bench_chunked",
                        lambda adapter, tasks, limit, parts, label: asked.append((tasks, limit, parts, label)) or {})
    space = Workspace(ok_run.run_dir.parent).owner_space(None)
    space.benchmark(ok_run.run_id, "general_knowledge", limit=3)
    assert asked == [(["general_knowledge"], 3, ok_run.run_dir / runs.BENCH_PARTS, ok_run.run_id)]
    shared = Workspace(tmp_path / "shared", multi_user=True).owner_space("session:a")
    with pytest.raises(ServiceError):  # another owner's run: refused before any GPU call
        shared.benchmark(ok_run.run_id, "general_knowledge", limit=3)
    assert len(asked) == 1
