"""`python -m finetune train [CONFIG.yaml] [--model ID_OR_DIR] [--data FILE] [--template NAME]
[--max-steps N] [--epochs E] [--set key=value ...] [--run-dir DIR]`

Flags override the config file, which is optional: with nothing given it trains the embedded default
model on the bundled sample. An existing --run-dir is resumed from its last checkpoint.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model (resumes an existing --run-dir)", description=__doc__)
    p.add_argument("config", nargs="?", help="run config YAML or preset name (default: smollm2-135m-cpu)")
    p.add_argument("--model", help="base model: Hub id, local folder or .gguf file")
    p.add_argument("--data", help="data file or Hub dataset id (default: the bundled sample)")
    p.add_argument("--template", help="prompt template (llama2, llama3, chatml, mistral, alpaca, falcon, model)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides epochs)")
    p.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. lora.r=64")
    p.add_argument("--run-dir", help="the run folder (default: runs/<new id>); an existing one is resumed")
    p.add_argument("--runs-root", help="where new run folders go (default: $FINETUNE_RUNS or ./runs)")
    p.add_argument("--quiet", action="store_true", help="print only the run folder at the end")
    p.set_defaults(func=run)


def build_config(args):
    """The config from file/preset + flags, or None when resuming a run folder with no flags."""
    from pathlib import Path

    from finetune.config import apply_overrides
    from finetune.presets import DEFAULT_PRESET, load_preset

    overrides: list[str] = list(args.set)
    for flag, key in (("model", "model.id"), ("data", "data.source"), ("template", "data.template"),
                      ("max_steps", "training.max_steps"), ("epochs", "training.epochs")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    resuming = args.run_dir and (Path(args.run_dir) / "config.yaml").exists()
    if resuming and not args.config and not overrides:
        return None
    cfg = load_preset(args.config or DEFAULT_PRESET)
    return apply_overrides(cfg, overrides) if overrides else cfg


class Printer:
    """A one-line progress bar on a terminal, plain event lines otherwise."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, e: dict) -> None:
        if self.quiet:
            return
        kind = e["type"]
        if kind == "step":
            total = e.get("max_steps") or 0
            done = int(30 * e["step"] / total) if total else 0
            eta = f" eta {e['eta_s']:.0f}s" if e.get("eta_s") is not None else ""
            line = (f"[{'#' * done}{'.' * (30 - done)}] step {e['step']}/{total} loss {e.get('loss', 0):.4f} "
                    f"{e.get('tokens_per_s') or 0:.0f} tok/s{eta}")
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
            return
        if self.tty:
            print(file=sys.stderr)
        detail = {k: v for k, v in e.items() if k not in ("type", "time", "data")}
        print(f"{kind}: {detail}", file=sys.stderr, flush=True)


def run(args) -> int:
    from finetune.cli import UsageError
    from finetune.config import ConfigError
    from finetune.models import ModelError
    from finetune.runs import RunError
    from finetune.train import TrainingError, train

    try:
        cfg = build_config(args)
        result = train(cfg, args.run_dir, runs_root=args.runs_root, on_event=Printer(args.quiet))
    except (ConfigError, ModelError, TrainingError, RunError) as e:
        raise UsageError(str(e).replace("\n", " ")) from e
    except Exception as e:  # data errors and the like carry their own message
        if e.__class__.__name__ in ("DataError", "TemplateError"):
            raise UsageError(str(e)) from e
        raise
    print(result.run_dir)
    return 0 if result.status in ("finished", "paused", "stopped") else 1
