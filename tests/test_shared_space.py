"""A public Space, tried the way an anonymous stranger would: only `gradio_client` against the app started as a
Space starts it (`python app.py` in its own process, multi-user, the owner's `HF_TOKEN` secret set), a local Hub
(HF_ENDPOINT) that records every request's Authorization header, and a model repo whose Python writes a marker file
if it is ever imported. Every way in is refused, the marker never appears, and the server's token never reaches
the Hub for an anonymous caller. The same app run for one user (FINETUNE_MULTI_USER=0) keeps both powers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from finetune.config import RunConfig
from finetune.service import Workspace
from test_hub import FAKE_TOKEN, FakeHub, folder_files

ROOT = Path(__file__).resolve().parent.parent
SERVER_TOKEN = FAKE_TOKEN  # the Space owner's secret: the local Hub accepts it, so a push made with it would land
CODE_REPO = "attacker/remote-code-model"
ADAPTER_REPO = "attacker/adapter-on-a-server-folder"


class PublicHub(FakeHub):
    """The local Hub, plus what an anonymous reader may do: read public repos (their info and their files)."""

    def __init__(self) -> None:
        super().__init__()
        self.public: set[str] = set()

    def add_public(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = {"private": False, "branches": {"main": dict(files)}}
        self.public.add(repo)

    def route(self, method, path, raw, auth):
        parts = path.split("/")
        if method in ("GET", "HEAD") and len(parts) > 5 and parts[3] == "resolve":  # /{org}/{name}/resolve/{rev}/{file}
            repo, name = f"{parts[1]}/{parts[2]}", "/".join(parts[5:])
            files = self.repos.get(repo, {}).get("branches", {}).get("main", {})
            if repo not in self.public or name not in files:
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            return 200, None, {"X-Repo-Commit": "0" * 40, "ETag": f'"{len(files[name])}-{hash(files[name])}"',
                               "__raw__": files[name]}
        if method == "GET" and len(parts) >= 5 and parts[2] == "models" and f"{parts[3]}/{parts[4]}" in self.public:
            files = self.repos[f"{parts[3]}/{parts[4]}"]["branches"]["main"]
            if parts[5:6] == ["tree"]:  # the file list snapshot_download reads
                return 200, [{"type": "file", "path": n, "size": len(b), "oid": str(hash(b))}
                             for n, b in sorted(files.items())], {}
            return 200, {"id": f"{parts[3]}/{parts[4]}", "sha": "0" * 40, "private": False,
                         "siblings": [{"rfilename": n} for n in sorted(files)]}, {}
        return super().route(method, path, raw, auth)


def _serve_raw(hub: PublicHub) -> None:
    """Let the handler send file bytes (``__raw__``) instead of JSON, with HEAD answered without a body."""
    handler = hub.server.RequestHandlerClass
    plain_reply = handler._reply

    def reply(self, status, body=None, headers=None):
        headers = dict(headers or {})
        raw = headers.pop("__raw__", None)
        if raw is None:
            return plain_reply(self, status, body, headers)
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    handler._reply = reply
    handler.do_HEAD = handler._handle


def remote_code_repo(out: Path, model_dir: Path, marker: Path) -> Path:
    """A model folder whose config asks for its own Python (auto_map); importing that Python writes ``marker``."""
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_marker.MarkerConfig",
                          "AutoModelForCausalLM": "modeling_marker.MarkerModel"}
    (out / "config.json").write_text(json.dumps(config))
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n")
    (out / "configuration_marker.py").write_text(code + "class MarkerConfig(LlamaConfig):\n    model_type = 'llama'\n")
    (out / "modeling_marker.py").write_text(code + "from .configuration_marker import MarkerConfig\n"
                                            "class MarkerModel(LlamaForCausalLM):\n    config_class = MarkerConfig\n")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(tmp: Path, hub: PublicHub, *, multi_user: bool, model_dirs: Path) -> tuple[subprocess.Popen, str, Path]:
    """``python app.py`` as a Space runs it, with the owner's HF_TOKEN set: (process, url, runs folder)."""
    port = free_port()
    runs = tmp / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")}
    env.update(HF_TOKEN=SERVER_TOKEN, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp / "hf-home"),
               FINETUNE_RUNS=str(runs), FINETUNE_MULTI_USER="1" if multi_user else "0",
               FINETUNE_MODEL_DIRS=str(model_dirs), GRADIO_SERVER_PORT=str(port), PYTHONUNBUFFERED="1",
               GRADIO_ANALYTICS_ENABLED="False")
    tmp.mkdir(parents=True, exist_ok=True)
    log = open(tmp / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url, runs
        except OSError:
            assert proc.poll() is None and time.time() < deadline, (tmp / "app.log").read_text()[-3000:]
            time.sleep(0.5)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def config_yaml(**fields: object) -> str:
    cfg = RunConfig()
    cfg.quantization.load_in = "none"
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 2, 2, 64, 1000, False
    for key, value in fields.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg.to_yaml()


def refused(call, *words: str) -> str:
    """The message of a refused API call: it says why (``words``), and it is not an internal error."""
    with pytest.raises(Exception) as info:
        call()
    text = str(info.value)
    assert "internal error" not in text.lower(), text
    for w in words:
        assert w.lower() in text.lower(), text
    return text


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """The local Hub holding the marker repo and an adapter whose base is a server folder; a finished tiny run."""
    from finetune.train import train

    tmp = tmp_path_factory.mktemp("shared-space")
    marker = tmp / "MARKER-remote-code-ran"
    code_dir = remote_code_repo(tmp / "server-models" / "remote-code-model", tiny_model_dir, marker)
    hub = PublicHub()
    _serve_raw(hub)
    hub.add_public(CODE_REPO, folder_files(code_dir))
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "completion": "Paris"}) + "\n" for i in range(8)))
    cfg = RunConfig.from_yaml(config_yaml(model__id=str(tiny_model_dir), data__source=str(data),
                                          data__template="chatml"))
    run = train(cfg, runs_root=tmp / "trained")
    assert run.status == "finished"
    adapter = folder_files(run.run_dir / "adapter")
    peft_config = json.loads(adapter["adapter_config.json"])
    peft_config["base_model_name_or_path"] = str(code_dir)  # anyone can write this into a Hub adapter
    adapter["adapter_config.json"] = json.dumps(peft_config).encode()
    hub.add_public(ADAPTER_REPO, adapter)
    yield {"tmp": tmp, "hub": hub, "marker": marker, "code_dir": code_dir, "run": run.run_dir, "data": data,
           "model_dirs": tiny_model_dir}
    hub.close()


def running(world: dict, multi_user: bool):
    """The app of ``world`` started as a Space (or, ``multi_user`` off, as on one's own machine); stopped after."""
    proc, url, runs = start_app(world["tmp"] / ("multi" if multi_user else "single"), world["hub"],
                                multi_user=multi_user, model_dirs=world["model_dirs"])
    yield {"url": url, "runs": runs}
    stop_app(proc)


@pytest.fixture(scope="module")
def shared(world):
    yield from running(world, multi_user=True)


def visitor(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def own_run(runs: Path, client, src: Path, run_id: str = "20261207-120000-aaaaaaaaaa", **config: object) -> str:
    """A copy of a finished run in the visitor's own folder (``config``: fields changed in its config.yaml)."""
    folder = Workspace(runs, multi_user=True).for_owner("session:" + client.session_hash) / run_id
    shutil.copytree(src, folder)
    if config:
        cfg = RunConfig.load(folder / "config.yaml")
        for key, value in config.items():
            section, name = key.split("__")
            setattr(getattr(cfg, section), name, value)
        (folder / "config.yaml").write_text(cfg.to_yaml())
    return run_id


def test_no_visitor_makes_the_server_run_a_model_repos_code_or_load_a_server_folder(world, shared):
    c = visitor(shared["url"])
    code_dir = str(world["code_dir"])
    start = lambda yaml: c.predict(yaml, None, "local", api_name="/start_training")  # noqa: E731
    refused(lambda: start(config_yaml(model__id=CODE_REPO, model__trust_remote_code=True)),
            "trust_remote_code", "command line")
    refused(lambda: start(config_yaml(model__id=code_dir)), "not a Hub repo id")
    refused(lambda: start(config_yaml(model__id="finetune/samples")), "not a Hub repo id")  # a folder here, Hub-shaped
    refused(lambda: start(config_yaml(model__id=CODE_REPO, model__gguf_file="../../x.gguf")), "gguf_file")
    grpo = config_yaml(training__method="grpo", training__batch_size=4, rewards__judge_model=code_dir,
                       rewards__judge_weight=1.0)
    refused(lambda: start(grpo), "judge_model", "not a Hub repo id")
    refused(lambda: start(config_yaml(training__init_adapter=str(world["run"]))), "init_adapter")
    # several training processes (a share of the machine per process) are not a visitor's to ask for
    refused(lambda: start(config_yaml(training__distributed="fsdp", training__num_processes=64)),
            "training.num_processes 64", "one process", "Hugging Face Job")
    # a run folder that asks for remote code (written by an older version) is not resumed
    rid = own_run(shared["runs"], c, world["run"], model__trust_remote_code=True)
    refused(lambda: c.predict(rid, api_name="/resume_training"), "trust_remote_code")
    # the Playground: a typed base, and a Hub adapter whose base_model_name_or_path names a server folder
    chat = dict(message="hi", temperature=0.0, max_new_tokens=8, api_name="/chat")
    refused(lambda: c.predict(base_model=code_dir, **chat), "not a Hub repo id")
    refused(lambda: c.predict(adapter=ADAPTER_REPO, **chat), "base model of the adapter", "not a Hub repo id")
    refused(lambda: c.predict(prompt="hi", adapter=ADAPTER_REPO, api_name="/compare"), "not a Hub repo id")
    refused(lambda: c.predict(message="hi", adapter=ADAPTER_REPO, api_name="/exact_prompt"), "not a Hub repo id")
    # token statistics of a server folder would tell a visitor what exists where
    from gradio_client import handle_file

    for model in (code_dir, "finetune/samples", str(world["run"] / "adapter")):
        refused(lambda: c.predict(handle_file(str(world["data"])), "", "", "train", "chatml", "", "", model,
                                  api_name="/format_dataset"), "not a Hub repo id")
    assert not world["marker"].exists()


def test_anonymous_visitors_never_act_with_the_servers_token(world, shared):
    from gradio_client import handle_file

    c = visitor(shared["url"])
    rid = own_run(shared["runs"], c, world["run"])
    hub = world["hub"]
    seen = len(hub.requests)
    sign_in = "sign in with Hugging Face"
    refused(lambda: c.predict(rid, "visitor/adapter", True, api_name="/push_adapter"), sign_in)
    refused(lambda: c.predict(handle_file(str(world["data"])), "visitor/data", True, api_name="/push_dataset"),
            sign_in)
    refused(lambda: c.predict(rid, "lora-gguf", "f16", "visitor/gguf", True, api_name="/export_model"), sign_in)
    refused(lambda: c.predict(rid, "space", "f16", "visitor/demo", True, api_name="/export_model"), sign_in)
    refused(lambda: c.predict(config_yaml(data__source="visitor/data"), None, "hf-jobs", "t4-small",
                              "visitor/out", api_name="/start_training"), sign_in)
    # a Hub adapter is read as an anonymous reader reads it: the owner's token is not sent implicitly either
    refused(lambda: c.predict(message="hi", adapter=ADAPTER_REPO, max_new_tokens=8, api_name="/chat"))
    sent = [r["headers"].get("authorization") for r in hub.requests[seen:]]
    assert sent, "the Hub adapter was read from the local Hub"
    assert all(a is None for a in sent), sent
    assert not any(r["method"] == "POST" for r in hub.requests[seen:])  # nothing created or committed


def test_bad_input_is_the_users_not_an_internal_error(world, shared):
    c = visitor(shared["url"])
    rid = own_run(shared["runs"], c, world["run"])
    shutil.rmtree(Workspace(shared["runs"], multi_user=True).for_owner("session:" + c.session_hash) / rid /
                  "checkpoints", ignore_errors=True)
    refused(lambda: c.predict(message="hi", adapter=rid, seed=2 ** 70, max_new_tokens=8, api_name="/chat"),
            "seed", "out of range")
    refused(lambda: c.predict(f"base, {rid}", "hi", "", 0.0, 8, 0.9, 1.0, 2 ** 70, api_name="/arena_battle"),
            "seed", "out of range")
    refused(lambda: c.predict(message="hi", adapter=f"{rid}@²", max_new_tokens=8, api_name="/chat"),
            "no checkpoint")
    # the run has no checkpoints: the message names the run, not where the server keeps it
    from gradio_client import handle_file

    text = refused(lambda: c.predict(rid, handle_file(str(world["data"])), "all", 4, api_name="/evaluate"),
                   "no saved checkpoints", rid)
    assert str(shared["runs"]) not in text and "/users/" not in text


@pytest.fixture(scope="module")
def single(world):
    yield from running(world, multi_user=False)


def test_the_single_user_app_keeps_remote_code_and_the_servers_token(world, single):
    from gradio_client import handle_file

    c = visitor(single["url"])
    hub = world["hub"]
    seen = len(hub.requests)
    url = c.predict(handle_file(str(world["data"])), "owner/data", True, api_name="/push_dataset")
    assert "owner/data" in url
    assert f"Bearer {SERVER_TOKEN}" in [r["headers"].get("authorization") for r in hub.requests[seen:]]
    assert hub.files("datasets/owner/data")["data/train.jsonl"] == world["data"].read_bytes()
    # on one's own machine a repo's code may run when asked for: the marker proves this test would see it
    assert not world["marker"].exists()
    rid = c.predict(config_yaml(model__id=str(world["code_dir"]), model__trust_remote_code=True,
                                data__template="chatml"), handle_file(str(world["data"])), "local",
                    api_name="/start_training")
    deadline = time.time() + 180
    while not world["marker"].exists():
        state = c.predict(rid, api_name="/run_status")
        assert time.time() < deadline and state["status"] not in ("failed", "finished", "stopped"), state
        time.sleep(1)
    world["marker"].unlink()
    c.predict(rid, api_name="/stop_training")
