"""training.method beyond SFT: the config fields and their checks, the data shapes of each method (detected,
rendered with the template, bad rows reported by number), the GRPO rewards, the app's refusal of reward code,
and short real trl runs on a tiny model (events carry the method's metrics; a DPO run resumed after an
interruption ends with the adapter of an uninterrupted one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune import methods, service
from finetune.config import ConfigError, RewardSettings, RunConfig, apply_overrides, problems, validate
from finetune.data.preference import FeedbackExample, PairExample, PromptExample, format_for_method
from finetune.data.validate import DataError
from finetune.events import read_events
from finetune.rewards import RewardError, builtin_rewards, judge_reward, last_number, load_reward_module
from finetune.train import train

from test_train import assert_same_adapter, tiny_config

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# config


def test_method_and_its_fields_round_trip_and_are_checked():
    cfg = apply_overrides(RunConfig(), ["training.method=dpo", "training.dpo_beta=0.2"])
    assert (cfg.training.method, cfg.training.dpo_beta) == ("dpo", 0.2)
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    bad = apply_overrides(RunConfig(), ["training.method=ppo"])
    assert any("training.method 'ppo' is not one of: sft, dpo, orpo, kto, grpo" in p for p in problems(bad))
    bad = apply_overrides(RunConfig(), ["training.method=dpo", "training.dpo_beta=0"])
    assert any(p.startswith("training.dpo_beta must be > 0") for p in problems(bad))
    # only the chosen method's fields are checked
    assert problems(apply_overrides(RunConfig(), ["training.dpo_beta=0"])) == []


def test_grpo_config_needs_a_reward_and_a_batch_that_holds_whole_groups():
    cfg = apply_overrides(RunConfig(), ["training.method=grpo", "training.batch_size=6",
                                        "training.grpo_num_generations=4"])
    found = problems(cfg)
    assert any("rewards: grpo needs at least one reward" in p for p in found)
    assert any("must be a multiple of training.grpo_num_generations (4)" in p and "training.batch_size to 4" in p
               for p in found)
    ok = apply_overrides(cfg, ["training.batch_size=8", "rewards.exact_match=1"])
    assert problems(ok) == []
    bad = apply_overrides(ok, ["rewards.regex=([a-", "rewards.json_schema=[1", "rewards.length_weight=1"])
    text = "\n".join(problems(bad))
    assert "rewards.regex is not a valid regular expression" in text
    assert "rewards.json_schema is not valid JSON" in text
    assert "rewards.length_target must be > 0" in text
    with pytest.raises(ConfigError):
        validate(bad)


# ---------------------------------------------------------------------------------------------
# data shapes


def test_preference_pairs_as_strings_messages_and_mapped_columns(smollm2_tokenizer):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
             "chosen": [{"role": "assistant", "content": "Paris."}],
             "rejected": [{"role": "assistant", "content": "Lyon."}]}]
    result = format_for_method(rows, "dpo", template="llama2")
    ex = result.examples[0]
    assert isinstance(ex, PairExample)
    assert ex.prompt == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nCapital of France? [/INST]"
    assert (ex.chosen, ex.rejected) == (" Paris. </s>", " Lyon. </s>")
    assert result.preview()[0]["chosen_span"] == (len(ex.prompt), len(ex.prompt) + len(ex.chosen))
    # the tokenizer's own end token, with the model's template
    own = format_for_method(rows, "orpo", template="model", tokenizer=smollm2_tokenizer).examples[0]
    assert own.prompt.endswith("<|im_start|>assistant\n") and own.chosen == "Paris.<|im_end|>"
    # stack-exchange style columns, found and mapped
    se = [{"question": "2+2?", "response_j": "4", "response_k": "5"}]
    assert str(format_for_method(se, "dpo", template="chatml").shape) == \
        "preference (prompt=question, chosen=response_j, rejected=response_k)"
    mapped = [{"q": "2+2?", "good": "4", "bad": "5"}]
    shape = format_for_method(mapped, "dpo", template="chatml",
                              columns={"prompt": "q", "chosen": "good", "rejected": "bad"}).shape
    assert shape.fields == {"prompt": "q", "chosen": "good", "rejected": "bad"}
    with pytest.raises(DataError, match="dpo needs prompt/chosen/rejected.*missing prompt, chosen, rejected"):
        format_for_method(mapped, "dpo", template="chatml")


def test_implicit_prompt_pairs_share_their_leading_turns():
    user = {"role": "user", "content": "Hi"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "Hello!"}],
             "rejected": [user, {"role": "assistant", "content": "What?"}]}]
    ex = format_for_method(rows, "dpo", template="llama2").examples[0]
    assert (ex.prompt, ex.chosen, ex.rejected) == ("<s>[INST] Hi [/INST]", " Hello! </s>", " What? </s>")


def test_bad_rows_are_reported_by_row_number():
    rows = [
        {"prompt": "a", "chosen": "same", "rejected": "same"},
        {"prompt": "b", "chosen": "good"},
        {"prompt": "c", "chosen": "good", "rejected": "bad"},
        {"prompt": "d", "chosen": [{"role": "user", "content": "x"}], "rejected": "bad"},
    ]
    result = format_for_method(rows, "dpo", template="llama2")
    assert [ex.row for ex in result.examples] == [3]
    found = {p.row: str(p) for p in result.problems}
    assert "rejected: is the same as chosen" in found[1]
    assert "rejected: 'rejected' is missing" in found[2]
    assert "must hold one assistant message" in found[4]
    assert result.skipped["chosen equals rejected"] == 1
    with pytest.raises(DataError, match=r"^data:1: rejected: is the same as chosen"):
        format_for_method(rows, "dpo", template="llama2", strict=True)
    feedback = [{"prompt": "a", "completion": "x", "label": True}, {"prompt": "b", "completion": "y", "label": 1},
                {"prompt": "c", "completion": "z", "label": "false"}]
    result = format_for_method(feedback, "kto", template="llama2")
    assert [(ex.row, ex.label) for ex in result.examples if isinstance(ex, FeedbackExample)] == [(1, True), (3, False)]
    assert "row 2: label: 'label' is 1 (int), expected true or false" in str(result.problems[0])
    with pytest.raises(DataError, match="kto needs both thumbs-up"):
        format_for_method(feedback[:1], "kto", template="llama2")


def test_grpo_prompts_end_where_the_answer_starts_and_keep_their_reference():
    rows = [{"prompt": "What is 2+2?", "answer": 4}, {"prompt": "Name a colour."}]
    result = format_for_method(rows, "grpo", template="llama2")
    first, second = result.examples
    assert isinstance(first, PromptExample)
    assert (first.prompt, first.answer, second.answer) == ("<s>[INST] What is 2+2? [/INST]", "4", None)
    assert str(result.shape) == "prompts (prompt=prompt, answer=answer)"


# ---------------------------------------------------------------------------------------------
# rewards


def test_builtin_rewards_score_and_combine_with_weights():
    rw = RewardSettings(exact_match=1, numeric_match=0.5, regex=r"\d+", regex_weight=0.2, json_valid=1,
                        json_schema='{"type": "object", "required": ["a"]}', contains=["paris", "france"],
                        contains_weight=1, excludes=["sorry"], excludes_weight=1, length_target=10, length_weight=1)
    funcs, weights = builtin_rewards(rw)
    assert [f.__name__ for f in funcs] == ["exact_match", "numeric_match", "regex", "json_valid", "contains",
                                           "excludes", "length"]
    assert weights == [1.0, 0.5, 0.2, 1.0, 1.0, 1.0, 1.0]
    by = {f.__name__: f for f in funcs}
    comps = ["42", "The answer is 42.", '{"a": 1}', '{"b": 1}', "Paris, France", "Sorry, no"]
    refs = ["42"] * len(comps)
    assert by["exact_match"](prompts=comps, completions=comps, answer=refs) == [1, 0, 0, 0, 0, 0]
    assert by["numeric_match"](prompts=comps, completions=comps, answer=refs) == [1, 1, 0, 0, 0, 0]
    assert by["regex"](prompts=comps, completions=comps) == [1, 0, 0, 0, 0, 0]
    assert by["json_valid"](prompts=comps, completions=comps) == [0.5, 0, 1, 0.5, 0, 0]  # "42" is JSON, not an object
    assert by["contains"](prompts=comps, completions=comps) == [0, 0, 0, 0, 1, 0]
    assert by["excludes"](prompts=comps, completions=comps) == [1, 1, 1, 1, 1, 0]
    assert by["length"](prompts=["p"], completions=["x" * 15]) == [0.5]
    assert last_number("costs 1,250.50 dollars") == 1250.5


def test_reward_module_loads_reward_functions_and_judge_must_be_local(tmp_path):
    mod = tmp_path / "my_rewards.py"
    mod.write_text("def reward_short(prompts, completions, **kw):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
                   "def helper():\n    return 0\n")
    funcs = load_reward_module(str(mod))
    assert [f.__name__ for f in funcs] == ["reward_short"] and funcs[0](prompts=["p"], completions=["abc"]) == [0.25]
    with pytest.raises(RewardError, match="is not a Python file"):
        load_reward_module(str(tmp_path / "missing.py"))
    with pytest.raises(RewardError, match="must be a local folder"):
        judge_reward("OpenAssistant/reward-model-deberta-v3-large-v2")


def test_the_app_refuses_reward_code(tmp_path):
    """The service (what the app and its API call) never starts a config that names a reward module."""
    cfg = apply_overrides(RunConfig(), ["training.method=grpo", "rewards.exact_match=1",
                                        f"rewards.module={tmp_path / 'evil.py'}"])
    (tmp_path / "evil.py").write_text("import os\nos.system('touch pwned')\n")
    with pytest.raises(service.ServiceError, match="rewards.module: the app does not run reward code"):
        service.Workspace(tmp_path / "ws").owner_space(None).start(cfg.to_yaml())
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").rglob("config.yaml"))


# ---------------------------------------------------------------------------------------------
# short real runs on a tiny model


def pairs_file(path: Path, n: int = 16) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"Colour for item {i}?"}],
             "chosen": [{"role": "assistant", "content": "blue"}],
             "rejected": [{"role": "assistant", "content": "green"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def method_config(model_dir: Path, data: Path, method: str, **training) -> RunConfig:
    cfg = tiny_config(model_dir, **training)
    cfg.data.source = str(data)
    cfg.data.template = "llama2"
    cfg.training.method = method
    return cfg


def test_dpo_run_logs_its_metrics_and_resumes_to_the_same_adapter(tiny_model_dir, tmp_path):
    """A DPO run: every step event carries the reward margins and accuracies, the card records the method and
    its final metrics; a run interrupted after step 2 and resumed ends with the uninterrupted run's adapter."""
    data = pairs_file(tmp_path / "pairs.jsonl")
    full = train(method_config(tiny_model_dir, data, "dpo", max_steps=4, save_steps=2, batch_size=2), runs_root=tmp_path / "a")
    assert full.status == "finished"
    steps = [e for e in read_events(full.run_dir) if e["type"] == "step"]
    assert len(steps) == 4 and all({"rewards/margins", "rewards/accuracies"} <= set(e["metrics"]) for e in steps)
    assert steps[-1]["metrics"]["rewards/margins"] > steps[0]["metrics"]["rewards/margins"]  # chosen pulled up
    assert full.metrics["method"] == "dpo" and "rewards/margins" in full.metrics
    card = (full.adapter_dir / "README.md").read_text()
    assert "| method | DPO (beta=0.1" in card and "- final rewards/margins: " in card

    part = train(method_config(tiny_model_dir, data, "dpo", max_steps=4, save_steps=2, batch_size=2), runs_root=tmp_path / "b",
                 until_step=2)
    assert part.status == "paused" and part.adapter_dir is None
    resumed = train(None, part.run_dir)
    assert resumed.status == "finished" and resumed.step == 4
    started = [e for e in read_events(part.run_dir) if e["type"] == "started"]
    assert started[-1]["resumed_from"] == "checkpoints/checkpoint-2"
    assert_same_adapter(full.adapter_dir, resumed.adapter_dir)


def test_dpo_sft_term_keeps_the_chosen_answers_likely(tiny_model_dir, tmp_path):
    """training.dpo_sft_weight adds trl's SFT loss on the chosen answers: the same run with it raises the chosen
    answers' log-probability (rewards/chosen: beta x their log ratio to the reference) above plain DPO's, and the
    logged loss is the sum (above plain DPO's, which alone can fall to 0 while every answer becomes unlikely)."""
    data = pairs_file(tmp_path / "pairs.jsonl")
    ends = {}
    for weight in (0.0, 1.0):
        cfg = method_config(tiny_model_dir, data, "dpo", max_steps=4, save_steps=4, batch_size=2)
        cfg.training.dpo_sft_weight = weight
        steps = [e for e in read_events(train(cfg, runs_root=tmp_path / str(weight)).run_dir) if e["type"] == "step"]
        ends[weight] = (steps[-1]["metrics"]["rewards/chosen"], steps[0]["loss"])
    assert ends[1.0][0] > ends[0.0][0], ends
    assert ends[1.0][1] > ends[0.0][1] + 0.5, ends  # step 1: log 2 plus the chosen answers' mean token loss


def test_methods_step_metrics_and_per_step_counts():
    logs = {"loss": 0.5, "reward": 0.25, "rewards/exact_match/mean": 0.25, "completions/mean_length": 7.0,
            "learning_rate": 1e-4}
    assert methods.step_metrics("grpo", logs) == {"reward": 0.25, "completions/mean_length": 7.0,
                                                  "rewards/exact_match/mean": 0.25}
    assert methods.step_metrics("sft", logs) == {}
    assert methods.sequences_per_example("kto") == 2 and methods.needs_reference("grpo", 0.04)


def test_estimator_counts_pairs_the_reference_pass_and_grpo_sampling():
    from finetune.memory import get_gpu, load_model_spec

    m = __import__("importlib").import_module("finetune.memory.estimate")
    spec, gpu = load_model_spec(""), get_gpu("t4")

    def setup(*over):
        return m.TrainSetup.from_config(apply_overrides(RunConfig(), list(over)), gpu)

    sft, dpo, orpo = setup(), setup("training.method=dpo"), setup("training.method=orpo")
    grpo = setup("training.method=grpo", "rewards.exact_match=1")
    assert (dpo.sequences, dpo.reference, orpo.reference, grpo.generated_tokens) == (2, True, False, 64)
    peak = {k: m.estimate_training(spec, s, gpu, advise=False) for k, s in (("sft", sft), ("dpo", dpo))}
    assert peak["dpo"].peak_gb > peak["sft"].peak_gb  # twice the sequences per example
    assert peak["dpo"].breakdown["reference_model"] == 0  # LoRA: the base with the adapter disabled
    full = m.estimate_training(spec, dpo.with_(method="full"), gpu, advise=False)
    assert full.breakdown["reference_model"] == full.breakdown["weights"]
    secs = {k: m.estimate_time(spec, s, gpu, tokens=100_000).seconds for k, s in
            (("sft", sft), ("dpo", dpo), ("orpo", orpo), ("grpo", grpo))}
    assert secs["sft"] < secs["orpo"] < secs["dpo"] < secs["grpo"]


# ---------------------------------------------------------------------------------------------
# starting from an adapter (training.init_adapter)


def test_a_run_starts_from_an_adapter_and_a_resumed_one_does_not_start_over(tiny_model_dir, tmp_path):
    """SFT, then DPO from its adapter: the DPO run's LoRA weights before its first step are the SFT adapter's (its
    rank too, not the config's), the base stays as it was, the card says where it continued from; interrupted
    after step 2 of 3 and resumed, it ends with the uninterrupted run's adapter (the resume loads its checkpoint, not
    the starting adapter again)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    sft = train(tiny_config(tiny_model_dir, max_steps=2), runs_root=tmp_path / "sft")
    source = load_file(str(sft.adapter_dir / "adapter_model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))

    class Start(TrainerCallback):
        weights: dict = {}
        base: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kw):
            Start.weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}

        def on_train_end(self, args, state, control, model=None, **kw):  # the base weights, by the base's names
            Start.base = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p.detach().clone()
                          for n, p in model.named_parameters() if "lora_" not in n}

    data = pairs_file(tmp_path / "pairs.jsonl")

    def dpo_config():
        cfg = method_config(tiny_model_dir, data, "dpo", max_steps=3, save_steps=2, batch_size=2)
        cfg.training.init_adapter = str(sft.run_dir)
        cfg.lora.r = 16  # the adapter's r=8 wins: its weights only fit their own rank
        return cfg

    full = train(dpo_config(), runs_root=tmp_path / "a", callbacks=[Start()])
    assert Start.weights.keys() == source.keys()
    assert all(torch.equal(Start.weights[k], source[k]) for k in source)
    trained = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    assert trained.keys() == source.keys() and any(not torch.equal(trained[k], source[k]) for k in source)
    assert json.loads((full.adapter_dir / "adapter_config.json").read_text())["r"] == 8
    assert not (full.adapter_dir / "ref").exists()  # trl's frozen reference copy is not part of the adapter
    assert Start.base.keys() == base.keys() and all(torch.equal(Start.base[k], base[k]) for k in base)  # untouched
    events = read_events(full.run_dir)
    assert next(e for e in events if e["type"] == "started")["init_adapter"] == sft.run_id
    assert any(e["type"] == "note" and "LoRA settings come from the adapter" in e["message"] for e in events)
    card = (full.adapter_dir / "README.md").read_text()
    assert f"continued from the adapter `{sft.run_id}`" in card and "reference: the starting adapter" in card
    assert "| LoRA | r=8," in card

    part = train(dpo_config(), runs_root=tmp_path / "b", until_step=2)
    assert part.status == "paused"
    resumed = train(None, part.run_dir)
    assert resumed.status == "finished" and resumed.step == 3
    assert_same_adapter(full.adapter_dir, resumed.adapter_dir)


def test_a_start_adapter_of_another_base_or_outside_the_owners_runs_is_refused(tiny_model_dir, tmp_path):
    import shutil

    from finetune.train import TrainingError

    ws = service.Workspace(tmp_path / "ws")
    sft = train(tiny_config(tiny_model_dir, max_steps=1), runs_root=ws.for_owner(None))
    other = tmp_path / "other-adapter"
    shutil.copytree(sft.adapter_dir, other)
    cfg_json = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg_json, "base_model_name_or_path": "org/other-base"}))
    cfg = tiny_config(tiny_model_dir, max_steps=1)
    cfg.training.init_adapter = str(other)
    with pytest.raises(TrainingError, match=r"init_adapter other-adapter was trained on org/other-base, but this run's "
                                            r"base model is .*; set model.id to org/other-base"):
        train(cfg, runs_root=tmp_path / "runs")
    cfg.training.init_adapter = str(tmp_path)
    with pytest.raises(TrainingError, match="no adapter there"):
        train(cfg, runs_root=tmp_path / "runs")
    # the app: one of the owner's runs by its id, nothing else
    assert ws.owner_space(None).start_adapter_path(sft.run_id) == sft.adapter_dir.resolve()
    for bad in (str(other), "../x", "no-such-run"):
        with pytest.raises(service.ServiceError, match="init_adapter"):
            ws.owner_space(None).start_adapter_path(bad)
    # a Hugging Face job cannot read it
    from finetune.backends import hfjobs

    job_cfg = RunConfig()
    job_cfg.training.init_adapter = str(sft.adapter_dir)
    with pytest.raises(hfjobs.JobError, match="training.init_adapter is an adapter on this machine"):
        hfjobs.portable_config(job_cfg)
    # the command line: a run id under the runs folder, or a folder
    from finetune.cli import UsageError
    from finetune.commands.train import init_adapter_path

    root = str(ws.for_owner(None))
    assert init_adapter_path(sft.run_id, root) == str(sft.run_dir.resolve())
    assert init_adapter_path(str(other), root) == str(other.resolve())
    with pytest.raises(UsageError, match="--init-adapter no-such-run: no run or adapter folder of that name"):
        init_adapter_path("no-such-run", root)


def test_a_run_asked_to_train_sft_on_pairs_names_the_methods_that_read_them(tmp_path, smollm2_tokenizer):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}) + "\n")
    cfg = RunConfig()
    cfg.data.source, cfg.data.template = str(pairs), "chatml"
    with pytest.raises(DataError, match=r"preference pairs .*pick DPO or ORPO as the method \(training.method\)"):
        methods.get("sft").datasets(cfg, smollm2_tokenizer)
