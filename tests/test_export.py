"""Export to where people run models, proven with the real consumers: llama.cpp (xllamacpp) reads the GGUF files
(tokenizer, chat template, next-token probabilities, LoRA on a base), transformers loads the GGUF back, a Go
template renderer renders the Ollama Modelfile, the Hub's card parser reads the cards of pushed exports."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from finetune.config import RunConfig
from gotemplate import ollama_values, render as go_render
from llamacpp import LlamaCpp
from test_hub import BASE_ID, FAKE_TOKEN, fake_hub, hub_cache  # noqa: F401 - the fixtures are used by name
from test_template_export import train_tiny

ROOT = Path(__file__).resolve().parent.parent
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of Peru?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}],
]


def strong_adapter(adapter_dir: Path, out: Path, seed: int = 1) -> Path:
    """A copy of a trained adapter whose LoRA matrices are large random ones: its update changes every answer,
    so an export that dropped or misplaced it cannot pass for the merged model."""
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(adapter_dir, out))
    weights = load_file(str(folder / "adapter_model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    weights = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in weights.items()}
    save_file(weights, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """A finished llama2-template run on the tiny Llama, with a default system prompt and a strong adapter."""
    tmp = tmp_path_factory.mktemp("export-run")
    result = train_tiny(tiny_model_dir, tmp, "llama2", system_prompt="Default tutor prompt.")
    adapter = result.adapter_dir
    strong = strong_adapter(adapter, tmp / "strong")
    shutil.rmtree(adapter)
    shutil.move(str(strong), str(adapter))
    return result


def merged_model(adapter_dir: Path):
    """The reference: peft's own merge (merge_and_unload) of the adapter into the float32 base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.adapter import read_base_model

    base = AutoModelForCausalLM.from_pretrained(read_base_model(adapter_dir), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def logprobs(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits[0, -1].float(), -1)


def training_text(adapter_dir: Path, messages) -> str:
    from finetune.adapter import read_template_info
    from finetune.templates import SpecialTokens, render, with_default_system

    info = read_template_info(adapter_dir)
    tokens = SpecialTokens(info.get("bos") or "", info["eos"])
    return render(with_default_system(messages, info["system_prompt"]), info["template"], tokens=tokens,
                  add_generation_prompt=True).text


@pytest.fixture(scope="module")
def reference(run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(run.adapter_dir))
    return merged_model(run.adapter_dir), tok


@pytest.fixture(scope="module")
def gguf_f16(run, tmp_path_factory):
    from finetune.export import export_model

    out = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    export_model(run.run_dir, "gguf", out, quant="f16")
    return out


def test_gguf_in_llama_cpp_prompts_tokenizes_and_predicts_like_the_merged_model(run, reference, gguf_f16, tmp_path):
    from finetune.export import export_model

    model, tok = reference
    base_model, _ = merged_model_base(run)
    with LlamaCpp(gguf_f16) as cpp:
        for conv in CONVERSATIONS:
            text = training_text(run.adapter_dir, conv)
            assert cpp.apply_template(conv) == text  # the embedded Jinja template, rendered by llama.cpp
            assert cpp.tokenize(text) == tok(text, add_special_tokens=False).input_ids
            want, base = logprobs(model, tok, text), logprobs(base_model, tok, text)
            got = cpp.next_logprobs(text)
            err = max(abs(lp - float(want[i])) for i, lp in got.items())
            off = max(abs(lp - float(base[i])) for i, lp in got.items())
            assert err < 0.01 and off > 0.3  # the adapter's update is in the file, not just the base
    q8 = export_model(run.run_dir, "gguf", tmp_path / "tiny-q8.gguf", quant="q8_0").out
    assert q8.stat().st_size < 0.7 * gguf_f16.stat().st_size
    with LlamaCpp(q8) as cpp:
        for conv in CONVERSATIONS:
            text = training_text(run.adapter_dir, conv)
            want, got = logprobs(model, tok, text), cpp.next_logprobs(text)
            assert max(abs(lp - float(want[i])) for i, lp in got.items()) < 0.05


def merged_model_base(run):
    from transformers import AutoModelForCausalLM

    from finetune.adapter import read_base_model

    return AutoModelForCausalLM.from_pretrained(read_base_model(run.adapter_dir), dtype=torch.float32).eval(), None


def test_transformers_loads_the_gguf_back_with_the_same_logits(run, reference, gguf_f16):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = reference
    back = AutoModelForCausalLM.from_pretrained(str(gguf_f16.parent), gguf_file=gguf_f16.name, dtype=torch.float32)
    back_tok = AutoTokenizer.from_pretrained(str(gguf_f16.parent), gguf_file=gguf_f16.name)
    text = training_text(run.adapter_dir, CONVERSATIONS[0])
    assert back_tok(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids
    assert torch.allclose(logprobs(back, tok, text), logprobs(model, tok, text), atol=0.02)


def test_lora_gguf_on_the_base_gguf_predicts_like_the_merged_model(run, reference, tmp_path):
    from finetune.export import export_model

    model, tok = reference
    result = export_model(run.run_dir, "lora-gguf", tmp_path / "tiny-lora.gguf", quant="f16", with_base=True)
    lora, base = result.files
    assert base.name == "tiny-lora-base.gguf" and result.command.endswith(f"--lora {lora.name}")
    assert lora.stat().st_size < base.stat().st_size / 4
    with LlamaCpp(base, lora=lora) as cpp:
        for conv in CONVERSATIONS:
            text = training_text(run.adapter_dir, conv)
            want, got = logprobs(model, tok, text), cpp.next_logprobs(text)
            assert max(abs(lp - float(want[i])) for i, lp in got.items()) < 0.01
    with LlamaCpp(base) as cpp:  # the base alone answers differently: the LoRA file carries the update
        text = training_text(run.adapter_dir, CONVERSATIONS[0])
        got = cpp.next_logprobs(text)
        want = logprobs(model, tok, text)
        assert max(abs(lp - float(want[i])) for i, lp in got.items()) > 0.3


@pytest.mark.parametrize("name", ["llama2", "llama3", "chatml", "mistral", "alpaca", "falcon"])
def test_ollama_template_renders_what_training_rendered(name):
    from finetune.export.ollama import go_template
    from finetune.templates import render, special_tokens, with_default_system

    tokens = special_tokens(name)
    for default in ("", "You are terse."):
        for conv in CONVERSATIONS:
            want = render(with_default_system(conv, default), name, tokens=tokens, add_generation_prompt=True).text
            assert go_render(go_template(name, tokens), ollama_values(conv, default)) == want


def test_ollama_export_writes_gguf_modelfile_and_run_command(run, tmp_path):
    from finetune.adapter import read_template_info
    from finetune.export import export_model
    from finetune.export.ollama import GGUF_NAME

    result = export_model(run.run_dir, "ollama", tmp_path / "tutor", quant="q8_0")
    folder = result.out
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "README.md", GGUF_NAME]
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{GGUF_NAME}\n")
    info = read_template_info(run.adapter_dir)
    assert f'SYSTEM """{info["system_prompt"]}"""' in modelfile
    assert f"PARAMETER stop {json.dumps(info['eos'])}" in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    for conv in CONVERSATIONS:
        assert go_render(template, ollama_values(conv, info["system_prompt"])) == training_text(run.adapter_dir, conv)
    assert result.command == "cd " + str(folder) + " && ollama create tutor -f Modelfile && ollama run tutor"
    with LlamaCpp(folder / GGUF_NAME) as cpp:  # the GGUF in the folder is a working model
        assert cpp.apply_template(CONVERSATIONS[0]) == training_text(run.adapter_dir, CONVERSATIONS[0])


def test_cli_export_and_bad_inputs_leave_nothing_behind(run, tmp_path, capsys, monkeypatch):
    from finetune.cli import main
    from finetune.export import ExportError, export_model
    from finetune.export import gguf_file

    out = tmp_path / "m.gguf"
    assert main(["export", "--adapter", str(run.run_dir), "--format", "gguf", "--quant", "q4_0", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "100%" in printed.err and f"written to {out}" in printed.out and out.exists()
    # q4_0: 4-bit blocks for most layers, 8-bit for the value and down projections
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == "Q8_0"
    # a kept checkpoint, named RUN@STEP, exports too (its own LoRA weights, not the finished adapter's)
    from safetensors.torch import load_file

    step = sorted(int(p.name.split("-")[1]) for p in (run.run_dir / "checkpoints").glob("checkpoint-*"))[-1]
    ckpt = tmp_path.parent / f"{tmp_path.name}-ckpt" / "c.gguf"
    assert main(["export", "--adapter", f"{run.run_dir}@{step}", "--format", "lora-gguf", "--quant", "f16",
                 "--out", str(ckpt)]) == 0
    b = next(t for t in GGUFReader(str(ckpt)).tensors if t.name == "blk.0.attn_q.weight.lora_b")
    final = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    final_b = next(v for k, v in final.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    assert b.data.shape[-1] == final_b.shape[1] and float(abs(b.data).max()) < float(final_b.abs().max())
    capsys.readouterr()

    # an unfinished run: no adapter yet
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run.run_dir / "config.yaml", unfinished / "config.yaml")
    assert main(["export", "--adapter", str(unfinished), "--out", str(tmp_path / "u.gguf")]) == 2
    assert "has no adapter yet: it has not finished" in capsys.readouterr().err
    # an existing file is not overwritten
    assert main(["export", "--adapter", str(run.run_dir), "--out", str(out)]) == 2
    assert "exists; choose a new --out" in capsys.readouterr().err

    # a full disk: refused before writing when the space is known to be short ...
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ExportError, match="not enough disk space"):
        export_model(run.run_dir, "gguf", tmp_path / "full.gguf")
    monkeypatch.undo()
    # ... and when the disk fills up mid-write: one message, no partial file
    real = gguf_file._to_numpy
    calls = []

    def disk_full(t, q):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(t, q)

    monkeypatch.setattr(gguf_file, "_to_numpy", disk_full)
    with pytest.raises(ExportError, match="filled up while writing full.gguf; nothing was kept"):
        export_model(run.run_dir, "gguf", tmp_path / "full.gguf")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "unfinished"]


def test_an_unsupported_architecture_is_refused_by_name(run, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from finetune.export import ExportError, export_model

    base = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64)).save_pretrained(base)
    shutil.copy(run.adapter_dir / "tokenizer.json", base / "tokenizer.json")
    with pytest.raises(ExportError, match="does not support the architecture GPT2LMHeadModel; supported: "):
        export_model(run.run_dir, "gguf", tmp_path / "g.gguf", model=str(base))
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial*"))


def test_a_template_mismatch_is_refused_before_writing(run, tmp_path):
    from finetune.export import export_model
    from finetune.verify import TemplateMismatch

    adapter = Path(shutil.copytree(run.adapter_dir, tmp_path / "adapter"))
    jinja = adapter / "chat_template.jinja"
    jinja.write_text(jinja.read_text().replace("' [/INST]'", "' [/INST}'", 1))
    with pytest.raises(TemplateMismatch, match="refusing to export"):
        export_model(adapter, "gguf", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def sharded_tiny(out: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True, max_shard_size="2MB")
    tok.save_pretrained(out)
    return out


def test_streaming_merge_of_a_sharded_model_equals_peft_merge(run, tmp_path, smollm2_dir):
    """The merge writes shard by shard (as many shards as the base) and gives peft's merge_and_unload weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune.adapter import TEMPLATE_FILE
    from finetune.export import merge_adapter

    base = sharded_tiny(tmp_path / "base", smollm2_dir)
    shards = sorted(p.name for p in base.glob("*.safetensors"))
    assert len(shards) >= 3
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            use_rslora=True))
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.3)
    adapter = tmp_path / "adapter"
    peft.save_pretrained(str(adapter))
    shutil.copy(run.adapter_dir / TEMPLATE_FILE, adapter / TEMPLATE_FILE)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (run.adapter_dir / f).exists():
            shutil.copy(run.adapter_dir / f, adapter / f)
    merged = merge_adapter(adapter, tmp_path / "merged", dtype="float16")
    assert sorted(p.name for p in merged.glob("*.safetensors")) == shards
    ours = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    want = peft.merge_and_unload()
    ours_state, want_state = ours.state_dict(), want.state_dict()
    assert ours_state.keys() == want_state.keys()
    for k, v in want_state.items():
        assert torch.allclose(ours_state[k], v, atol=2e-3, rtol=1e-3), k  # float16 rounding of the merged weights
    ids = torch.tensor([[1, 5, 9, 200, 33]])
    assert torch.allclose(ours(ids).logits, want(ids).logits, atol=0.05)


@pytest.fixture
def hub_adapter(run, hub_cache, tmp_path):
    """The run's adapter naming its base by Hub id (``testorg/tiny-llama``, in the Hugging Face cache)."""
    folder = Path(shutil.copytree(run.adapter_dir, tmp_path / "hub-adapter"))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = BASE_ID
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def test_pushed_gguf_card_is_read_by_the_hub_parser(hub_adapter, fake_hub, tmp_path):
    from huggingface_hub import ModelCard

    from finetune.export import export_model

    result = export_model(hub_adapter, "gguf", None, quant="q8_0", push="testorg/tutor-GGUF", token=FAKE_TOKEN)
    assert result.url == f"{fake_hub.url}/testorg/tutor-GGUF" and result.out is None
    files = fake_hub.files("testorg/tutor-GGUF")
    gguf_name = next(n for n in files if n.endswith(".gguf"))
    assert set(files) == {gguf_name, "README.md"} and gguf_name.endswith("-q8_0.gguf")
    card = ModelCard(files["README.md"].decode())
    meta = card.data.to_dict()
    assert meta["library_name"] == "gguf" and meta["base_model"] == BASE_ID and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "apache-2.0"
    assert f"--hf-file {gguf_name}" in card.text and "ollama run hf.co/testorg/tutor-GGUF" in card.text
    assert "[INST]" in card.text and "Default tutor prompt." in card.text  # the prompt format, rendered
    assert FAKE_TOKEN not in card.text

    lora = export_model(hub_adapter, "lora-gguf", None, quant="f16", push="testorg/tutor-lora-GGUF",
                        token=FAKE_TOKEN)
    meta = ModelCard(fake_hub.files("testorg/tutor-lora-GGUF")["README.md"].decode()).data.to_dict()
    assert meta["base_model_relation"] == "adapter" and meta["library_name"] == "gguf" and lora.url


def test_push_without_write_access_is_one_message_and_nothing_is_left(run, fake_hub, tmp_path, monkeypatch):
    from finetune.export import export_model
    from finetune.hub import HubError

    real = fake_hub.route

    def forbidden(method, path, raw, auth):
        if method == "POST" and path == "/api/repos/create":
            return 403, {"error": "You don't have the rights to create a model under the namespace \"otherorg\""}, {
                "X-Error-Message": "You don't have the rights to create a model under the namespace \"otherorg\""}
        return real(method, path, raw, auth)

    monkeypatch.setattr(fake_hub, "route", forbidden)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubError, match="otherorg/tutor") as e:
        export_model(run.run_dir, "gguf", None, push="otherorg/tutor", token=FAKE_TOKEN)
    assert FAKE_TOKEN not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_demo_space_is_pushed_and_its_app_prompts_as_trained(run, hub_adapter, fake_hub, tmp_path, monkeypatch):
    """The Space's files land on the Hub; its app.py renders the training text with the adapter's tokenizer."""
    import importlib.util

    import yaml

    from finetune.export import export_model

    result = export_model(hub_adapter, "space", push="testorg/tutor-demo", token=FAKE_TOKEN)
    assert result.url == f"{fake_hub.url}/spaces/testorg/tutor-demo"
    files = fake_hub.files("spaces/testorg/tutor-demo")
    assert {"app.py", "requirements.txt", "README.md", "space.json", "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json", "adapter/finetune_template.json"} <= set(files)
    meta = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert meta["sdk"] == "gradio" and meta["suggested_hardware"] == "cpu-basic" and meta["app_file"] == "app.py"
    create = json.loads(fake_hub.body("POST", "/api/repos/create"))
    assert create["type"] == "space" and create["sdk"] == "gradio"
    # the published run config names the data file, not this machine's folders (as a pushed adapter's)
    published = files["adapter/run_config.yaml"].decode()
    assert RunConfig.from_yaml(published).data.source == Path(RunConfig.load(run.adapter_dir / "run_config.yaml")
                                                              .data.source).name
    assert str(run.run_dir.parent.parent) not in published
    space = tmp_path / "space"
    for name, data in files.items():
        (space / name).parent.mkdir(parents=True, exist_ok=True)
        (space / name).write_bytes(data)
    spec = importlib.util.spec_from_file_location("space_app", space / "app.py")
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setenv("BASE_MODEL", str(run.adapter_dir))
    spec.loader.exec_module(app)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert app.prompt("Why?", history) == training_text(run.adapter_dir, [*history, {"role": "user", "content": "Why?"}])



def test_qwen2_gguf_in_llama_cpp_predicts_like_the_merged_model(run, tmp_path, smollm2_dir):
    """Qwen2 (biases on q/k/v, no q/k permutation): exported and read by llama.cpp like the llama family."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from finetune.adapter import TEMPLATE_FILE
    from finetune.export import export_model

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    torch.manual_seed(5)
    base = tmp_path / "qwen2"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True)).save_pretrained(base)
    tok.save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)  # non-zero biases: a lost or misplaced bias shows
    model.save_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    adapter = tmp_path / "adapter"
    peft.save_pretrained(str(adapter))
    for f in (TEMPLATE_FILE, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (run.adapter_dir / f).exists():
            shutil.copy(run.adapter_dir / f, adapter / f)
    out = export_model(adapter, "gguf", tmp_path / "qwen2.gguf", quant="f16").out
    merged = peft.merge_and_unload().eval()
    with LlamaCpp(out) as cpp:
        for conv in CONVERSATIONS:
            text = training_text(adapter, conv)
            assert cpp.apply_template(conv) == text
            want, got = logprobs(merged, tok, text), cpp.next_logprobs(text)
            assert max(abs(lp - float(want[i])) for i, lp in got.items()) < 0.01
