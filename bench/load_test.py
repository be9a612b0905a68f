"""Load: N gradio_client sessions format a 1,000-row dataset and chat while one training runs.

    .venv/bin/python bench/load_test.py                      # 8 sessions x 5 rounds, tiny random Llama
    .venv/bin/python bench/load_test.py --clients 16 --rounds 3

Launches the app (multi-user, a temporary workspace), starts one training run through /start_training, and
measures, in the same run:

- the latency of every /format_dataset call (1,000-row JSONL, SmolLM2 tokenizer for token stats): p50/p95/max;
- that the queue reports positions (``job.status().rank`` while a call waits) and that no call failed;
- the training rate (steps/s from the run's events) while the sessions hammer the app, over its rate alone
  just before: the slowdown ratio. Both rates come from the same training process. Next to it, the ratio
  the CPU left to training allows (the fair share): the cores minus those the app and its sessions used
  (this process's CPU time over the window), over the cores training used alone (its /proc CPU time).
  ``slowdown_over_fair_share`` >= ~0.9 means training lost no more than the CPU it shares (a run that
  uses every core alone and gives one back under load lands above 1).

Prints one JSON object and writes it to bench/out/load.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_dataset(path: Path, rows: int = 1000) -> Path:
    """``rows`` distinct alpaca rows (short instruction, ~200-character answer)."""
    lines = []
    for i in range(rows):
        row = {"instruction": f"Question {i}: what is {i} plus {i * 3}?",
               "output": f"{i} plus {i * 3} is {i * 4}. " + "Adding keeps the order of the digits in mind. " * 4}
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_model(out: Path) -> Path:
    """A random 2-layer Llama with the embedded SmolLM2 tokenizer (~0.3 s/step on a CPU)."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def training_yaml(model_dir: Path, steps: int = 100_000) -> str:
    """A run long enough to outlast the measurement; it is stopped at the end."""
    from finetune.config import RunConfig

    cfg = RunConfig()
    cfg.model.id = str(model_dir)
    cfg.quantization.load_in = "none"
    cfg.data.template = "model"
    cfg.lora.r = 4
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps = steps, 4, 128, 1000
    t.learning_rate, t.gradient_checkpointing = 5e-3, False
    return cfg.to_yaml()


def launch(root: Path):
    """The app on a free local port, multi-user (every session its own folder). Returns (demo, url)."""
    from finetune.service import Workspace
    from finetune.ui import build_app

    demo = build_app(Workspace(root / "runs", multi_user=True), root / "downloads")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    return demo, url


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def step_times(run_dir: Path) -> list[tuple[float, int]]:
    from finetune.events import read_events

    return [(e["time"], e["step"]) for e in read_events(run_dir) if e.get("type") == "step"]


def training_pid(run_dir: Path) -> int | None:
    from finetune.events import read_events

    pids = [e["pid"] for e in read_events(run_dir) if e.get("type") == "started" and e.get("pid")]
    return pids[-1] if pids else None


def rate(points: list[tuple[float, int]], t0: float, t1: float) -> float | None:
    """Steps per second between t0 and t1 (first to last step event inside the window)."""
    inside = [(t, s) for t, s in points if t0 <= t <= t1]
    if len(inside) < 2:
        return None
    (ta, sa), (tb, sb) = inside[0], inside[-1]
    return (sb - sa) / (tb - ta) if tb > ta else None


def _session(url: str, data_file: Path, rounds: int, out: dict, lock: threading.Lock, chat: bool) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    try:
        c = Client(url, verbose=False)
        for _ in range(rounds):
            t0 = time.perf_counter()
            job = c.submit(handle_file(str(data_file)), "", "", "train", "chatml", "", "", "", 256, "assistant",
                           api_name="/format_dataset")
            while not job.done():
                st = job.status()
                if st.code == Status.IN_QUEUE and st.rank is not None:
                    with lock:
                        out["ranks"].append(st.rank)
                        out["queue_sizes"].append(st.queue_size)
                time.sleep(0.02)
            summary, *_rest, formatted = job.result()
            with lock:
                out["format_s"].append(time.perf_counter() - t0)
                out["formatted_rows"].append(sum(1 for _ in open(formatted, encoding="utf-8")))
        if chat:
            t0 = time.perf_counter()
            history = c.predict("Say hello.", [], "", "", 0.0, 8, 0.9, 1.0, 0, api_name="/chat")
            with lock:
                out["chat_s"].append(time.perf_counter() - t0)
                out["chat_replies"].append(history[-1]["role"])
    except Exception as e:  # noqa: BLE001 - every failure is counted and shown, the others go on
        with lock:
            out["errors"].append(f"{e.__class__.__name__}: {e}")


def measure(url: str, runs_root: Path, model_dir: Path, data_file: Path, *, clients: int = 8, rounds: int = 5,
            alone_s: float = 12.0, chat: bool = True) -> dict:
    """Run the load against a launched app while one training runs; return the numbers."""
    from gradio_client import Client

    from finetune.cpushare import process_cpu_seconds

    trainer = Client(url, verbose=False)
    run_id = trainer.predict(training_yaml(model_dir), None, "local", api_name="/start_training")
    run_dir = next(runs_root.glob(f"users/*/{run_id}"))
    deadline = time.time() + 300
    while len(step_times(run_dir)) < 3:  # past model loading: steady steps
        if time.time() > deadline:
            raise RuntimeError(f"training did not start: {trainer.predict(run_id, api_name='/run_status')}")
        time.sleep(0.2)
    pid = training_pid(run_dir)
    a0, ta0 = time.time(), process_cpu_seconds(pid)
    time.sleep(alone_s)
    a1, ta1 = time.time(), process_cpu_seconds(pid)

    out: dict = {"format_s": [], "chat_s": [], "ranks": [], "queue_sizes": [], "errors": [], "formatted_rows": [],
                 "chat_replies": []}
    lock = threading.Lock()
    threads = [threading.Thread(target=_session, args=(url, data_file, rounds, out, lock, chat)) for _ in range(clients)]
    l0, tl0, app0 = time.time(), process_cpu_seconds(pid), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    l1, tl1, app1 = time.time(), process_cpu_seconds(pid), time.process_time()
    time.sleep(1.0)  # the last step event of the window
    trainer.predict(run_id, api_name="/stop_training")
    state = trainer.predict(run_id, api_name="/run_status")
    points = step_times(run_dir)
    alone, loaded = rate(points, a0, a1), rate(points, l0, l1)
    lat = out["format_s"]
    cores = os.cpu_count() or 1
    train_cores_alone = (ta1 - ta0) / (a1 - a0)
    app_cores = (app1 - app0) / (l1 - l0)  # the app and its sessions: this process, every thread
    # The CPU the app takes is what training loses at most: the cores left over the cores training used alone.
    fair = min(1.0, max(0.0, cores - app_cores) / train_cores_alone) if train_cores_alone > 0 else None
    ratio = loaded / alone if alone and loaded else None
    return {
        "clients": clients,
        "rounds": rounds,
        "rows": out["formatted_rows"][0] if out["formatted_rows"] else None,
        "format_calls": len(lat),
        "format_p50_s": round(percentile(lat, 50), 3) if lat else None,
        "format_p95_s": round(percentile(lat, 95), 3) if lat else None,
        "format_max_s": round(max(lat), 3) if lat else None,
        "chat_calls": len(out["chat_s"]),
        "chat_p95_s": round(percentile(out["chat_s"], 95), 3) if out["chat_s"] else None,
        "queue_positions_seen": len(out["ranks"]),
        "max_queue_rank": max(out["ranks"]) if out["ranks"] else None,
        "errors": out["errors"],
        "train_steps_per_s_alone": round(alone, 3) if alone else None,
        "train_steps_per_s_loaded": round(loaded, 3) if loaded else None,
        "train_slowdown_ratio": round(ratio, 3) if ratio else None,
        "train_cpu_cores_alone": round(train_cores_alone, 2),
        "train_cpu_cores_loaded": round((tl1 - tl0) / (l1 - l0), 2),
        "app_cpu_cores_loaded": round(app_cores, 2),
        "fair_share_ratio": round(fair, 3) if fair is not None else None,
        "slowdown_over_fair_share": round(ratio / fair, 3) if ratio and fair else None,
        "load_window_s": round(l1 - l0, 1),
        "training_status_after": state["status"],
        "cpu_cores": cores,
        "formatted_rows_ok": all(n == out["formatted_rows"][0] for n in out["formatted_rows"]),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5, help="/format_dataset calls per session (then one /chat)")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--alone-s", type=float, default=12.0, help="seconds the training is measured alone first")
    p.add_argument("--no-chat", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "load.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="finetune-load-") as tmp:
        tmp = Path(tmp)
        cache = Path(__file__).resolve().parent / "out" / "models" / "tiny"
        model_dir = tiny_model(cache)
        # a shared server trains only on Hub ids and the model folders its operator offers: offer this one
        os.environ["FINETUNE_MODEL_DIRS"] = os.pathsep.join(
            filter(None, [os.environ.get("FINETUNE_MODEL_DIRS"), str(model_dir.parent.resolve())]))
        data_file = make_dataset(tmp / "data.jsonl", args.rows)
        demo, url = launch(tmp)
        try:
            result = measure(url, tmp / "runs", model_dir, data_file, clients=args.clients, rounds=args.rounds,
                             alone_s=args.alone_s, chat=not args.no_chat)
        finally:
            demo.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"p95 /format_dataset ({result['rows']} rows, {args.clients} sessions): {result['format_p95_s']} s; "
          f"training slowdown (loaded/alone steps/s): {result['train_slowdown_ratio']} where its CPU share allows "
          f"{result['fair_share_ratio']} (ratio {result['slowdown_over_fair_share']}); errors: {len(result['errors'])}")
    return result


if __name__ == "__main__":
    main()
