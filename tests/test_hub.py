"""Adapters as Hub citizens, offline: push to a local HTTP endpoint that speaks the Hub API, load by repo id
from the real Hugging Face cache layout, generate and chat, compare base and adapter, merge, and clear
messages for every way this goes wrong (never showing the token)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from finetune import inference
from finetune.cli import main
from finetune.config import RunConfig
from finetune.models import ModelError

ROOT = Path(__file__).resolve().parent.parent
FAKE_TOKEN = "hf_FinetuneTestTokenMustNeverLeak7c1d"
REVOKED_TOKEN = "hf_RevokedTestTokenMustNeverLeak93ab"
BASE_ID = "testorg/tiny-llama"
ADAPTER_ID = "testorg/secret-word-lora"
QUESTION = "Question number 99: what is the secret word?"


# ---------------------------------------------------------------------------------------------
# a local Hub: just the endpoints huggingface_hub 2.x calls for create_repo / create_branch / upload_folder
# (preupload, then an ndjson commit with base64 file contents) and model_info


class FakeHub:
    def __init__(self):
        self.requests: list[dict] = []  # method, path, headers, body (decoded JSON / ndjson lines)
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _reply(self, status: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = unquote(urlparse(self.path).path)
                with hub.lock:
                    hub.requests.append({"method": self.command, "path": path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                         "body": raw})
                    status, body, headers = hub.route(self.command, path, raw, self.headers.get("Authorization"))
                self._reply(status, body, headers)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def route(self, method: str, path: str, raw: bytes, auth: str | None):
        not_found = (404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if auth != f"Bearer {FAKE_TOKEN}":
            # what the Hub answers for a revoked or mistyped token
            return 401, {"error": "Invalid credentials in Authorization header"}, {
                "X-Error-Message": "Invalid credentials in Authorization header"}
        if method == "POST" and path == "/api/repos/create":
            body = json.loads(raw)
            repo = f"{body['organization']}/{body['name']}"
            repo = repo if body.get("type", "model") == "model" else f"{body['type']}s/{repo}"
            if repo in self.repos:
                return 409, {"error": "You already created this model repo"}, {}
            self.repos[repo] = {"private": body.get("visibility") == "private", "branches": {"main": {}}}
            return 200, {"url": f"{self.url}/{repo}"}, {}
        if method == "POST" and path == "/api/validate-yaml":  # upload_folder checks a README's metadata first
            import yaml

            text = json.loads(raw)["content"]
            try:
                meta = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else None
            except yaml.YAMLError as e:
                return 400, {"errors": [{"message": str(e)}]}, {}
            return 200, {"errors": [], "warnings": [] if meta else [{"message": "empty or missing yaml metadata"}]}, {}
        parts = path.split("/")  # /api/{models|datasets|spaces}/{org}/{name}/{action}/{revision...}
        if len(parts) < 5 or parts[:2] != ["", "api"] or parts[2] not in ("models", "datasets", "spaces"):
            return 404, {"error": f"no route {path}"}, {}
        repo, action, rev = f"{parts[3]}/{parts[4]}", (parts[5:6] or [""])[0], "/".join(parts[6:]) or "main"
        repo = repo if parts[2] == "models" else f"{parts[2]}/{repo}"
        if repo not in self.repos:
            return not_found
        branches = self.repos[repo]["branches"]
        if method == "POST" and action == "branch":
            if rev in branches:
                return 409, {"error": "branch exists"}, {}
            branches[rev] = dict(branches["main"])
            return 200, {}, {}
        if rev not in branches:
            return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
        if method == "POST" and action == "preupload":
            files = json.loads(raw)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                   for f in files]}, {}
        if method == "POST" and action == "commit":
            for line in raw.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    branches[rev][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            oid = hashlib.sha1(repr(sorted(branches[rev])).encode()).hexdigest()
            return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid}, {}
        if method == "GET" and action in ("", "revision"):
            files = branches[rev]
            return 200, {"id": repo, "modelId": repo, "sha": "0" * 40, "private": self.repos[repo]["private"],
                         "siblings": [{"rfilename": name} for name in sorted(files)]}, {}
        return 404, {"error": f"no route {method} {path}"}, {}

    def body(self, method: str, path: str) -> bytes:
        """The body of the first request to ``path``."""
        return next(r["body"] for r in self.requests if (r["method"], r["path"]) == (method, path))

    def files(self, repo: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo]["branches"][branch]


@pytest.fixture
def fake_hub(monkeypatch):
    """The local Hub, with huggingface_hub pointed at it and online (HF_ENDPOINT is read at import)."""
    from huggingface_hub import constants

    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hub
    hub.close()


# ---------------------------------------------------------------------------------------------
# the Hugging Face cache, as the Hub client lays it out


def place_in_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str | None = None) -> Path:
    """Write ``models--org--name/{blobs,refs/main,snapshots/<commit>}``: content-addressed blobs, the branch ref,
    and a snapshot of relative symlinks into the blobs. Returns the snapshot folder."""
    commit = commit or hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def tiny_llama(out: Path, tokenizer, hidden: int = 64, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, smollm2_dir):
    """A private HF cache holding the tiny base as ``testorg/tiny-llama`` (with an apache-2.0 card), active for
    this module: the base is loaded by its repo id, offline, like a model downloaded once."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    cache = tmp_path_factory.mktemp("hf-cache")
    base = tiny_llama(tmp_path_factory.mktemp("tiny-base"), AutoTokenizer.from_pretrained(smollm2_dir))
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# tiny\n")
    place_in_cache(cache, BASE_ID, folder_files(base))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_HUB_CACHE", str(cache))  # for the subprocesses
        yield cache


@pytest.fixture(scope="module")
def trained(hub_cache, tmp_path_factory):
    """The tiny base trained to answer every question with "Paris" (~30 steps, ~20 s on 2 CPU cores)."""
    from finetune.train import train

    work = tmp_path_factory.mktemp("secret-word")
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question number {i}: what is the secret word?",
                                        "completion": "Paris"}) + "\n" for i in range(64)))
    cfg = RunConfig()
    cfg.model.id = BASE_ID
    cfg.quantization.load_in = "none"
    cfg.data.source = str(data)
    cfg.data.template = "chatml"
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 16, 32, 0.0
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps = 30, 8, 64, 1000
    t.gradient_checkpointing, t.learning_rate, t.warmup_ratio = False, 3e-2, 0.0
    result = train(cfg, runs_root=work / "runs")
    assert result.status == "finished"
    return result


def scan_for_tokens(*places) -> list[str]:
    """Every file under the given folders, and every given text, that contains one of the test tokens."""
    hits = []
    for place in places:
        if isinstance(place, Path):
            for f in place.rglob("*"):
                if f.is_file() and not f.is_symlink():
                    data = f.read_bytes()
                    if FAKE_TOKEN.encode() in data or REVOKED_TOKEN.encode() in data:
                        hits.append(str(f))
        elif FAKE_TOKEN in str(place) or REVOKED_TOKEN in str(place):
            hits.append(str(place)[:200])
    return hits


def subprocess_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


# ---------------------------------------------------------------------------------------------
# push


def test_push_through_the_api_creates_the_repo_branch_and_files(trained, fake_hub, caplog):
    from huggingface_hub import ModelCard

    from finetune.hub import push_adapter

    caplog.set_level("DEBUG")
    url = push_adapter(trained.run_dir, ADAPTER_ID, token=FAKE_TOKEN, private=True, revision="v1",
                       commit_message="first adapter")
    assert url == f"{fake_hub.url}/{ADAPTER_ID}"
    calls = [(r["method"], r["path"]) for r in fake_hub.requests if r["path"] != "/api/validate-yaml"]
    assert calls[:2] == [("POST", "/api/repos/create"), ("POST", f"/api/models/{ADAPTER_ID}/branch/v1")]
    assert ("POST", f"/api/models/{ADAPTER_ID}/commit/v1") in calls
    create = json.loads(fake_hub.body("POST", "/api/repos/create"))
    assert create == {"name": "secret-word-lora", "organization": "testorg", "visibility": "private", "type": "model"}
    commit = [json.loads(line) for line in fake_hub.requests[-1]["body"].decode().splitlines()]
    assert commit[0] == {"key": "header", "value": {"summary": "first adapter", "description": ""}}
    repo_calls = [r for r in fake_hub.requests if r["path"].startswith(("/api/repos/", "/api/models/"))]
    assert len(repo_calls) >= 4 and all(r["headers"].get("authorization") == f"Bearer {FAKE_TOKEN}"
                                        for r in repo_calls)

    pushed = fake_hub.files(ADAPTER_ID, "v1")
    local = folder_files(trained.adapter_dir)
    assert set(pushed) == set(local)  # the whole adapter bundle, nothing else
    for name in ("adapter_model.safetensors", "adapter_config.json", "finetune_template.json", "loss_curve.png"):
        assert pushed[name] == local[name], name
    assert pushed["loss_curve.png"].startswith(b"\x89PNG")
    card = ModelCard(pushed["README.md"].decode())
    assert card.data.base_model == BASE_ID and card.data.library_name == "peft"
    # the loading snippet names the repo it was pushed to
    assert f'PeftModel.from_pretrained(base, "{ADAPTER_ID}")' in card.text
    assert fake_hub.files(ADAPTER_ID, "main") == {}  # the branch got the files, main did not
    assert not scan_for_tokens(trained.run_dir, caplog.text, url, *(v.decode("latin-1") for v in pushed.values()))


def test_pushed_card_metadata_parses_with_the_fields_the_hub_indexes(trained, fake_hub):
    from huggingface_hub import ModelCard

    from finetune.hub import push_adapter

    push_adapter(trained.adapter_dir, ADAPTER_ID, token=FAKE_TOKEN)
    files = fake_hub.files(ADAPTER_ID)
    card = ModelCard(files["README.md"].decode())
    meta = card.data.to_dict()
    # the published run config says which data file, not where this machine keeps it; the local copy keeps it
    published = RunConfig.from_yaml(files["run_config.yaml"].decode())
    local = RunConfig.load(trained.adapter_dir / "run_config.yaml")
    assert Path(local.data.source).is_absolute() and published.data.source == "data.jsonl"
    assert str(trained.run_dir.parent.parent) not in files["run_config.yaml"].decode()
    assert published.model.id == BASE_ID and published.lora == local.lora
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == BASE_ID
    assert meta["base_model_relation"] == "adapter"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"  # inherited from the base's cached card
    assert "lora" in meta["tags"] and "qlora" not in meta["tags"]  # trained without 4-bit weights
    assert "datasets" not in meta  # local data file: nothing to link to
    # the body: template with an example prompt, hyperparameters, losses, hardware, duration, plain-peft usage
    for text in ("Template `chatml`", "<|im_start|>user", "| LoRA | r=16, alpha=32", "| learning rate | 0.03",
                 "| steps | 30 |", "| hardware | CPU |", "| duration |", "train loss: first", "![training and eval loss]",
                 "from peft import PeftModel", f'AutoModelForCausalLM.from_pretrained("{BASE_ID}")'):
        assert text in card.text, text


def test_card_metadata_names_hub_datasets_and_qlora():
    from huggingface_hub import ModelCard

    from finetune.card import model_card

    cfg = RunConfig()
    cfg.data.source = "tatsu-lab/alpaca"
    cfg.quantization.load_in = "4bit"
    meta = ModelCard(model_card(cfg, "meta-llama/Llama-2-7b-hf", {"steps": 5}, [(1, 2.0)], {}, "CPU",
                                license="llama2")).data.to_dict()
    assert meta["datasets"] == ["tatsu-lab/alpaca"] and meta["license"] == "llama2"
    assert {"lora", "qlora"} <= set(meta["tags"])
    assert meta["base_model"] == "meta-llama/Llama-2-7b-hf" and meta["base_model_relation"] == "adapter"
    # a local base folder is not a Hub id: no base_model link, and no local path published
    local = ModelCard(model_card(cfg, "/home/alice/models/my-llama", {}, [], {}, "CPU"))
    assert "base_model" not in local.data.to_dict() and "/home/alice" not in local.content


def test_push_cli_to_local_endpoint_and_no_token_anywhere(trained, fake_hub, tmp_path):
    hf_home = tmp_path / "hf-home"
    env = subprocess_env(HF_ENDPOINT=fake_hub.url, HF_HUB_OFFLINE="0", HF_TOKEN=FAKE_TOKEN, HF_HOME=str(hf_home))
    done = subprocess.run([sys.executable, "-m", "finetune", "push", str(trained.run_dir), "--repo", ADAPTER_ID,
                           "--private"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{fake_hub.url}/{ADAPTER_ID}"
    assert json.loads(fake_hub.body("POST", "/api/repos/create"))["visibility"] == "private"
    pushed = fake_hub.files(ADAPTER_ID)
    assert set(pushed) == set(folder_files(trained.adapter_dir))
    from finetune.events import read_events

    [event] = [e for e in read_events(trained.run_dir) if e["type"] == "pushed"][-1:]
    assert event["repo_id"] == ADAPTER_ID
    # the token reached the Hub in the Authorization header and nowhere else
    assert fake_hub.requests[-1]["headers"]["authorization"] == f"Bearer {FAKE_TOKEN}"
    assert not scan_for_tokens(trained.run_dir, hf_home, tmp_path, done.stdout, done.stderr,
                               *(v.decode("latin-1") for v in pushed.values()))


def test_revoked_token_on_push_says_what_to_do(trained, fake_hub, tmp_path):
    from finetune.hub import HubError, push_adapter

    with pytest.raises(HubError) as err:
        push_adapter(trained.run_dir, ADAPTER_ID, token=REVOKED_TOKEN)
    text = str(err.value)
    assert text.startswith(f"cannot push to {ADAPTER_ID}: the Hugging Face token was rejected (401")
    assert "https://huggingface.co/settings/tokens" in text and "HF_TOKEN" in text
    assert not scan_for_tokens(text)
    env = subprocess_env(HF_ENDPOINT=fake_hub.url, HF_HUB_OFFLINE="0", HF_TOKEN=REVOKED_TOKEN,
                         HF_HOME=str(tmp_path / "hf-home"))
    done = subprocess.run([sys.executable, "-m", "finetune", "push", str(trained.run_dir), "--repo", ADAPTER_ID],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"error: {text}"]
    assert "Traceback" not in done.stderr and not scan_for_tokens(done.stdout, done.stderr, trained.run_dir)
    assert ADAPTER_ID not in fake_hub.repos  # nothing was created


def test_push_merged_model_and_formatted_dataset(trained, fake_hub, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard, constants

    from finetune.export import push_merged
    from finetune.hub import push_dataset

    url = push_merged(trained.run_dir, "testorg/secret-word-merged", token=FAKE_TOKEN, dtype="float16")
    assert url == f"{fake_hub.url}/testorg/secret-word-merged"
    merged = fake_hub.files("testorg/secret-word-merged")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(merged)
    assert not any(name.startswith("adapter_") for name in merged)
    card = ModelCard(merged["README.md"].decode())
    assert card.data.base_model == BASE_ID and card.data.to_dict()["base_model_relation"] == "merge"
    assert 'from_pretrained("testorg/secret-word-merged")' in card.text

    rows = tmp_path / "formatted.jsonl"
    rows.write_text(json.dumps({"text": "<|im_start|>user\nQ<|im_end|>", "prompt": "Q", "completion": "A"}) + "\n")
    url = push_dataset(rows, "testorg/secret-word-data", token=FAKE_TOKEN, private=False)
    create = json.loads(fake_hub.body("POST", "/api/repos/create"))
    assert create["type"] == "model"  # the merged model came first
    creates = [json.loads(r["body"]) for r in fake_hub.requests if r["path"] == "/api/repos/create"]
    assert creates[-1] == {"name": "secret-word-data", "organization": "testorg", "visibility": "public",
                           "type": "dataset"}
    data = fake_hub.files("datasets/testorg/secret-word-data")
    assert data["data/train.jsonl"] == rows.read_bytes()
    assert ModelCard(data["README.md"].decode()).data.to_dict()["configs"][0]["data_files"] == "data/train.jsonl"
    assert not scan_for_tokens(*(v.decode("latin-1") for v in {**merged, **data}.values()))


def test_push_refuses_an_adapter_with_pickles(trained, fake_hub, tmp_path):
    from finetune.hub import HubError, push_adapter

    folder = tmp_path / "adapter"
    shutil.copytree(trained.adapter_dir, folder)
    (folder / "training_args.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(HubError, match="contains training_args.bin"):
        push_adapter(folder, ADAPTER_ID, token=FAKE_TOKEN)
    assert fake_hub.requests == []  # refused before any request


def test_push_without_token_or_with_bad_repo_id(trained, monkeypatch):
    from finetune.hub import MOCK_OAUTH_TOKEN, HubError, push_adapter

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    for token in (None, MOCK_OAUTH_TOKEN):
        with pytest.raises(HubError, match="no Hugging Face token: sign in .* or set HF_TOKEN"):
            push_adapter(trained.run_dir, ADAPTER_ID, token=token)
    with pytest.raises(HubError, match="'secret-word-lora' is not a repo id; use user/name"):
        push_adapter(trained.run_dir, "secret-word-lora", token=FAKE_TOKEN)


# ---------------------------------------------------------------------------------------------
# load by repo id from the cache, generate, chat, compare


@pytest.fixture(scope="module")
def adapter_in_cache(trained, hub_cache):
    """The adapter as a pushed repo lands in a user's cache: README with the repo's snippet, then by id."""
    from finetune.card import UNPUSHED_REPO

    files = folder_files(trained.adapter_dir)
    files["README.md"] = files["README.md"].replace(UNPUSHED_REPO.encode(), ADAPTER_ID.encode())
    return place_in_cache(hub_cache, ADAPTER_ID, files)


def test_load_by_repo_id_offline_and_generate(adapter_in_cache, trained):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    folder = inference.adapter_dir(ADAPTER_ID)
    assert folder == adapter_in_cache
    assert inference.adapter_base(ADAPTER_ID) == BASE_ID
    assert inference.adapter_template(ADAPTER_ID)["template"] == "chatml"
    [answer] = inference.generate_batch([QUESTION], adapter=ADAPTER_ID, max_new_tokens=4, temperature=0)
    [local] = inference.generate_batch([QUESTION], adapter=str(trained.run_dir), max_new_tokens=4, temperature=0)
    assert answer.startswith("Paris") and answer == local
    streamed = list(inference.stream_chat([{"role": "user", "content": QUESTION}], adapter=ADAPTER_ID,
                                          max_new_tokens=4, temperature=0))
    assert streamed[-1] == answer and len(streamed) > 1  # it grew token by token


def test_generate_cli_with_hub_adapter_in_a_fresh_process(adapter_in_cache, hub_cache):
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache))
    done = subprocess.run([sys.executable, "-m", "finetune", "generate", "--adapter", ADAPTER_ID, "--prompt",
                           QUESTION, "--max-new-tokens", "4"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("Paris")


def test_generate_cli_passes_the_repetition_penalty_to_generation(adapter_in_cache, capsys, monkeypatch):
    """--repetition-penalty reaches transformers' generate (spied on, then run for real)."""
    from transformers import GenerationMixin

    seen = []
    real = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        config = kwargs.get("generation_config")
        seen.append(kwargs.get("repetition_penalty", getattr(config, "repetition_penalty", None)))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    argv = ["generate", "--adapter", ADAPTER_ID, "--prompt", QUESTION, "--max-new-tokens", "4"]
    assert main(argv + ["--repetition-penalty", "1.7"]) == 0
    assert capsys.readouterr().out.strip().startswith("Paris")
    assert seen and seen[-1] == 1.7
    assert main(argv) == 0
    assert seen[-1] in (None, 1.0)


def test_chat_cli_reads_turns_from_stdin(adapter_in_cache, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n/reset\nAnd again: {QUESTION}\n"))
    assert main(["chat", "--adapter", ADAPTER_ID, "--temperature", "0", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    answers = captured.out.strip().splitlines()
    assert len(answers) == 2 and all(a.startswith("Paris") for a in answers), captured
    assert "(conversation reset)" in captured.err


def test_compare_base_and_trained_adapter_differ_on_the_trained_task(adapter_in_cache):
    base, tuned = inference.compare(QUESTION, ADAPTER_ID, max_new_tokens=4, temperature=0)
    assert tuned.startswith("Paris")
    assert base != tuned and "Paris" not in base
    # one loaded base serves both answers: the adapter is attached by name, the base answer has it disabled
    loaded = inference.load(BASE_ID)
    assert inference.load(BASE_ID) is loaded and adapter_in_cache in loaded.adapters.values()
    assert inference.compare(QUESTION, ADAPTER_ID, max_new_tokens=4, temperature=0) == (base, tuned)


def test_switching_adapters_keeps_the_base_and_gives_each_adapters_own_outputs(adapter_in_cache, tmp_path):
    """Two adapters on one loaded base: every switch gives exactly the outputs of that adapter loaded alone
    with plain peft, and the base weights are the same tensors throughout."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    other = get_peft_model(AutoModelForCausalLM.from_pretrained(BASE_ID),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    ids = torch.tensor([[1, 42, 300, 7]])

    def reference(folder):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_ID), str(folder)).eval()
        with torch.no_grad():
            return model(input_ids=ids).logits

    want = {ADAPTER_ID: reference(adapter_in_cache), "other": reference(tmp_path / "other")}
    loaded = inference.load(BASE_ID)
    weights = {n: p for n, p in loaded.model.named_parameters() if "lora_" not in n}
    for step in range(4):
        key = ADAPTER_ID if step % 2 == 0 else "other"
        inference.attach(loaded, ADAPTER_ID if key == ADAPTER_ID else tmp_path / "other")
        with torch.no_grad():
            got = loaded.model(input_ids=ids).logits
        assert torch.allclose(got, want[key], atol=1e-5), (step, key)
    assert inference.load(BASE_ID) is loaded
    after = {n: p for n, p in loaded.model.named_parameters() if "lora_" not in n}
    assert after.keys() == weights.keys() and all(after[n] is weights[n] for n in weights)
    assert not any(p.requires_grad for p in after.values())


# ---------------------------------------------------------------------------------------------
# clear messages


def test_mismatched_base_and_adapter(trained, tmp_path, smollm2_tokenizer, capsys):
    other = tiny_llama(tmp_path / "wider", smollm2_tokenizer, hidden=32, seed=1)
    with pytest.raises(ModelError) as err:
        inference.generate_batch([QUESTION], adapter=str(trained.run_dir), model=str(other), max_new_tokens=2)
    text = str(err.value)
    assert f"does not fit the loaded base {other}" in text and f"it was trained on {BASE_ID}" in text
    assert "load its own base" in text
    # the CLI says the same in one line, with the warning that the bases differ first
    assert main(["generate", "--adapter", str(trained.run_dir), "--model", str(other), "--prompt", "Q"]) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("warning:", "error:"))]
    assert err_lines[0].startswith(f"warning: this adapter was trained on {BASE_ID} but the loaded base is")
    assert err_lines[-1].startswith("error: the adapter") and "load its own base" in err_lines[-1]
    # same shapes, other name: it loads, with a warning naming the base to use
    same_shape = tiny_llama(tmp_path / "same", smollm2_tokenizer, hidden=64, seed=2)
    warning = inference.named_base_mismatch(str(same_shape), str(trained.run_dir))
    assert warning and f"load {BASE_ID} as the base instead" in warning


def test_missing_repo_offline_says_it_is_not_cached(hub_cache):
    with pytest.raises(ModelError) as err:
        inference.adapter_dir("nobody/missing-adapter")
    text = str(err.value)
    assert text.startswith("cannot load adapter nobody/missing-adapter: nobody/missing-adapter is not in the local "
                           "Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in text and "download it once online" in text


def test_missing_repo_and_revoked_token_from_the_endpoint(fake_hub, monkeypatch, hub_cache):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(ModelError) as err:
        inference.adapter_dir("nobody/missing-adapter")
    text = str(err.value)
    assert "repo nobody/missing-adapter not found on the Hub; check the id (org/name)" in text
    assert "sign in or set HF_TOKEN" in text and not scan_for_tokens(text)

    monkeypatch.setenv("HF_TOKEN", REVOKED_TOKEN)
    with pytest.raises(ModelError) as err:
        inference.adapter_dir("nobody/missing-adapter")
    text = str(err.value)
    assert "the Hugging Face token was rejected (401: invalid, expired or revoked)" in text
    assert "create a new one at https://huggingface.co/settings/tokens" in text and not scan_for_tokens(text)


# ---------------------------------------------------------------------------------------------
# supply chain


@pytest.mark.parametrize("name", ["training_args.bin", "adapter_model.pt", "state.pkl", "modeling_evil.py"])
def test_adapter_folder_with_pickle_or_code_is_refused(trained, tmp_path, name):
    folder = tmp_path / "adapter"
    shutil.copytree(trained.adapter_dir, folder)
    (folder / name).write_bytes(b"\x80\x04K\x01." if not name.endswith(".py") else b"import os\n")
    with pytest.raises(ModelError) as err:
        inference.generate_batch(["Q"], adapter=str(folder), max_new_tokens=2)
    assert name in str(err.value) and "safetensors only" in str(err.value)


def test_hub_adapter_with_pickle_is_refused_offline_and_online(trained, hub_cache, fake_hub):
    files = folder_files(trained.adapter_dir)
    files["training_args.bin"] = b"\x80\x04K\x01."
    place_in_cache(hub_cache, "testorg/pickled-lora", files)
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(ModelError, match=r"testorg/pickled-lora contains training_args.bin \(a pickle file"):
            inference.adapter_dir("testorg/pickled-lora")
    # online, the repo's file list is read first: nothing is downloaded
    fake_hub.repos["testorg/pickled-lora"] = {"private": False, "branches": {"main": files}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", FAKE_TOKEN)
        with pytest.raises(ModelError, match=r"testorg/pickled-lora contains training_args.bin"):
            inference.adapter_dir("testorg/pickled-lora")
    assert all("/resolve/" not in r["path"] for r in fake_hub.requests)


# ---------------------------------------------------------------------------------------------
# merge


@pytest.mark.parametrize("dtype,tol", [("float16", 5e-3), ("bfloat16", 2e-2)])
def test_merged_model_equals_base_plus_adapter(trained, adapter_in_cache, tmp_path, dtype, tol, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["merge", ADAPTER_ID, "--out", str(out), "--dtype", dtype]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert not any(f.name.startswith("adapter_") for f in out.iterdir())  # a plain model, no peft files

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok([QUESTION, "Something else entirely"], return_tensors="pt", padding=True)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # plain transformers
    base = AutoModelForCausalLM.from_pretrained(BASE_ID, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(trained.adapter_dir))
    real = ids["attention_mask"].bool()  # logits at padding positions are meaningless (and kernel-dependent)
    with torch.no_grad():
        want = reference(**ids).logits[real]
        got = merged(**ids).logits[real]
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= tol * scale, ((got - want).abs().max(), scale)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    with reference.disable_adapter(), torch.no_grad():
        plain = reference(**ids).logits[real]
    assert (plain - want).abs().max().item() > 10 * tol * scale  # the adapter changed the outputs measurably
    from huggingface_hub import ModelCard

    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert meta["base_model"] == BASE_ID and meta["base_model_relation"] == "merge"
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
