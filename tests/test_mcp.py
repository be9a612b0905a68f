"""The app's endpoints as MCP tools (gradio's MCP server), through the `mcp` package's own client against a launched
shared server: the tools are listed with their descriptions, formatting and a run's status answer, and an agent is
refused another owner's run exactly as a gradio_client caller is (an agent names its owner with X-Finetune-Key)."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest
from apps import SAMPLE, launched

KEY_A = "agent-a-" + "a1b2c3d4" * 4
KEY_B = "agent-b-" + "e5f6a7b8" * 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launched(tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("downloads"), css=False, mcp=True) as (_, url):
        yield url


def mcp_calls(url: str, calls: list[tuple[str, dict[str, Any]]], key: str | None) -> tuple[list[Any], list[Any]]:
    """(the tools listed, the result of each call) through one MCP session with the `mcp` package's client."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def go() -> tuple[list[Any], list[Any]]:
        headers = {"X-Finetune-Key": key} if key else None
        async with streamablehttp_client(url.rstrip("/") + "/gradio_api/mcp/", headers=headers) as (r, w, _):
            async with ClientSession(r, w) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                return tools, [await session.call_tool(name, args) for name, args in calls]

    return asyncio.run(go())


def text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "text", None))


def start_tiny_run(url: str, model_dir: Path, key: str | None) -> tuple[Any, str]:
    from gradio_client import Client
    from test_app import tiny_yaml

    c = Client(url, verbose=False, headers={"X-Finetune-Key": key} if key else None)
    return c, c.predict(tiny_yaml(model_dir, steps=1), None, "local", api_name="/start_training")


def finished_tiny_run(url: str, model_dir: Path, key: str | None) -> tuple[Any, str]:
    c, run_id = start_tiny_run(url, model_dir, key)
    deadline = time.time() + 180
    while (state := c.predict(run_id, api_name="/run_status"))["status"] not in ("finished", "failed", "stopped"):
        assert time.time() < deadline
        time.sleep(0.5)
    assert state["status"] == "finished", state
    return c, run_id


def test_agents_list_tools_format_data_and_see_only_their_own_runs(server, tiny_model_dir):
    from gradio_client.exceptions import AppError

    # an agent's run, started through the API with the agent's key: the same owner
    c, run_id = finished_tiny_run(server, tiny_model_dir, KEY_A)
    rows = "".join(SAMPLE.read_text().splitlines(keepends=True)[:8])
    data_url = "data:application/json;base64," + base64.b64encode(rows.encode()).decode()
    tools, (formatted, status, runs_listed, planned) = mcp_calls(server, [
        ("format_dataset", {"data_file": data_url, "template": "chatml", "max_length": 128}),
        ("run_status", {"run_id": run_id}),
        ("list_runs", {}),
        ("benchmark_estimate", {"run_id": run_id, "tasks": "general_knowledge", "limit": 10}),
    ], KEY_A)
    described = {t.name: t.description for t in tools}
    for name in ("format_dataset", "start_training", "run_status", "list_runs", "stop_training", "evaluate", "chat"):
        assert name in described, name
    assert "run id" in described["start_training"] and "status" in described["run_status"]
    assert not formatted.isError, text(formatted)
    assert "8" in text(formatted) and "prompt" in text(formatted).lower()
    assert not status.isError, text(status)
    assert run_id in text(status) and "max_steps" in text(status)
    assert run_id in text(runs_listed)
    assert not planned.isError, text(planned)  # 10 documents of 4 choices, timed before anything runs
    assert "'documents': 10" in text(planned) and "'requests_per_document': 4" in text(planned)
    assert "'seconds': None" not in text(planned) and "'hardware': 'cpu'" in text(planned)
    assert "benchmark" in described and "poll /benchmark_status" in described["benchmark"]

    # another agent, and an agent with no key on this shared server, are refused; so is another API caller
    _, (other_status, other_list) = mcp_calls(server, [("run_status", {"run_id": run_id}), ("list_runs", {})], KEY_B)
    assert other_status.isError and "no run" in text(other_status) and run_id in text(other_status)
    assert run_id not in text(other_list)
    _, (keyless,) = mcp_calls(server, [("run_status", {"run_id": run_id})], None)
    assert keyless.isError and "X-Finetune-Key" in text(keyless)
    from gradio_client import Client

    with pytest.raises(AppError, match="no run"):
        Client(server, verbose=False).predict(run_id, api_name="/run_status")
    with pytest.raises(AppError, match="X-Finetune-Key header must be 24 to 256 characters"):
        Client(server, verbose=False, headers={"X-Finetune-Key": "short"}).predict(run_id, api_name="/run_status")



@pytest.mark.slow  # a second tiny run, then its benchmark: ~25 s of CPU
def test_a_benchmark_is_a_tool_that_returns_at_once_and_is_polled_with_the_run_id(server, tiny_model_dir):
    c, run_id = finished_tiny_run(server, tiny_model_dir, KEY_A)
    _, (over, named_path, started) = mcp_calls(server, [
        ("benchmark", {"run_id": run_id, "tasks": "general_knowledge", "limit": 0}),
        ("benchmark", {"run_id": run_id, "tasks": "general_knowledge,/etc/passwd.jsonl", "limit": 2}),
        ("benchmark", {"run_id": run_id, "tasks": "general_knowledge", "limit": 2}),
    ], KEY_A)
    assert over.isError and "over this server's limit of 100 per task" in text(over)  # every document: refused
    assert named_path.isError and "a test file is one you upload" in text(named_path)
    assert not started.isError and "running" in text(started)
    deadline = time.time() + 300
    while True:
        _, (polled,) = mcp_calls(server, [("benchmark_status", {"run_id": run_id})], KEY_A)
        assert not polled.isError, text(polled)
        if "'status': 'running'" not in text(polled):
            break
        assert time.time() < deadline
        time.sleep(1)
    report = c.predict(run_id, api_name="/benchmark_status")["report"]  # the same owner through the API
    assert [(r["task"], r["metric"]) for r in report["results"]] == [("general_knowledge", "acc"),
                                                                      ("general_knowledge", "acc_norm")]
    assert report["tasks"][0]["n"] == 2 and report["adapter"] == run_id
    _, (other,) = mcp_calls(server, [("benchmark_status", {"run_id": run_id})], KEY_B)
    assert other.isError and "no run" in text(other)
