"""A demo Space: a small Gradio chat app for one adapter, pushed to the Hub in one call.

The Space holds the adapter (``adapter/``: weights, tokenizer with the trained chat template, template info) and
an ``app.py`` that loads the base from the Hub, applies the adapter, and prompts it with the adapter tokenizer's
chat template, which carries the trained format and default system prompt. The hardware is chosen to fit:
the free CPU for small models, ZeroGPU for larger ones (the app then runs generation under ``@spaces.GPU``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..adapter import read_template_info
from ..models import EMBEDDED_REPO_ID
from ..refs import is_hub_id
from .gguf_file import ExportError
from .merge import Progress, no_progress

if TYPE_CHECKING:
    from huggingface_hub import HfApi

APP_DIR = Path(__file__).with_name("space_app")
CPU_MAX_PARAMS = 2_000_000_000  # fp32 on the free CPU (16 GB RAM): up to ~2B parameters load and answer


def hardware_for(params: int) -> str:
    """The Space hardware that fits a base model of ``params`` parameters."""
    return "cpu-basic" if params <= CPU_MAX_PARAMS else "zero-a10g"


def _params(base_name: str) -> int:
    from .merge import MergedWeights, base_folder

    try:
        return MergedWeights(base_folder(base_name), None).numel()
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - an unknown size: assume a GPU is needed
        from ..errors import is_programming_error

        if is_programming_error(e):
            raise
        return CPU_MAX_PARAMS + 1


def space_readme(title: str, base_model: str, hardware: str, template: str) -> str:
    meta: dict[str, Any] = {
        "title": title[:60], "emoji": "💬", "colorFrom": "indigo", "colorTo": "blue", "sdk": "gradio",
        "app_file": "app.py", "pinned": False, "suggested_hardware": hardware, "models": [base_model],
        "tags": ["finetune", "lora", "chat"],
    }
    return "\n".join([
        "---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {title}", "",
        f"A chat demo of a LoRA fine-tune of [{base_model}](https://huggingface.co/{base_model}), prompted with the "
        f"`{template}` template it was trained with (the adapter's chat template in `adapter/`).", "",
    ])


def stage_space(adapter_folder: Path, base_name: str, out: Path, title: str) -> Path:
    """The Space's files in ``out``: app.py, requirements.txt, README.md and the adapter."""
    from ..adapter import ADAPTER_FILES, strip_local_paths

    hub_base = EMBEDDED_REPO_ID if not is_hub_id(base_name) and "SmolLM2-135M" in base_name else base_name
    if not is_hub_id(hub_base):
        said = f"the base model {base_name} is a local folder; a Space loads its base from the Hub: train on a Hub model, "
        raise ExportError(said + "or export --format merged and upload that model first").in_app(
            said + "or export with Format merged and upload that model first")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(APP_DIR / "app.py.in", out / "app.py")
    shutil.copy(APP_DIR / "requirements.txt", out / "requirements.txt")
    dest = out / "adapter"
    dest.mkdir()
    import fnmatch

    for f in sorted(adapter_folder.iterdir()):
        if f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in ADAPTER_FILES) and f.name != "README.md":
            shutil.copy(f, dest / f.name)
    strip_local_paths(dest)  # published: this machine's folders left out of the run config, as a pushed adapter
    (out / "space.json").write_text(json.dumps({"base_model": hub_base}, indent=2))
    info = read_template_info(adapter_folder) or {}
    (out / "README.md").write_text(space_readme(title, hub_base, hardware_for(_params(base_name)),
                                                str(info.get("template") or "model")), encoding="utf-8")
    return out


def push_space(adapter_folder: Path, base_name: str, repo_id: str, *, token: str | None = None, private: bool = True,
               api: HfApi | None = None, progress: Progress = no_progress) -> str:
    """Create (or update) the Gradio Space ``repo_id`` showing the adapter; returns its URL."""
    from ..hub import push_folder

    progress(0.1, "staging the Space")
    with tempfile.TemporaryDirectory(prefix="finetune-space-") as tmp:
        staged = stage_space(adapter_folder, base_name, Path(tmp) / "space", repo_id.split("/")[-1])
        progress(0.5, "uploading the Space")
        url = push_folder(staged, repo_id, repo_type="space", token=token, private=private,
                          commit_message="Create chat demo with finetune", api=api, space_sdk="gradio")
    progress(1.0, "done")
    return url
