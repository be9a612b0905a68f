"""`python -m finetune push RUN --repo ID [--private | --public] [--revision BRANCH] [--message TEXT]
[--merged-repo ID [--dtype bfloat16|float16]] [--runs-root DIR] [--ignore-template-mismatch]`

Push a finished run's adapter (PEFT weights, template, model card, loss curve) to a Hub model repo, creating
the repo (and the branch) when missing. --merged-repo also pushes the adapter merged into a 16-bit copy of its
base. RUN is a run id, a run folder or an adapter folder. The token comes from HF_TOKEN or `hf auth login`;
it is never printed or written. An adapter whose chat template does not render what training rendered
(`python -m finetune verify-template`) is refused unless --ignore-template-mismatch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_visibility


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("push", help="push a run's adapter (and optionally a merged model) to the Hub",
                       description=__doc__)
    p.add_argument("run", metavar="RUN", help="run id, run folder or adapter folder")
    p.add_argument("--repo", help="Hub model repo, e.g. alice/city-year-lora (default: the run's hub.repo_id)")
    add_visibility(p, None, "create the repo as private (default: the run's hub.private)")
    p.add_argument("--revision", help="branch to push to (created from main when missing)")
    p.add_argument("--message", default="Upload LoRA adapter with finetune", help="commit message")
    p.add_argument("--merged-repo", help="also push the merged 16-bit model to this repo")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"), help="dtype of the merged model")
    p.add_argument("--runs-root", help="the runs folder (default: $FINETUNE_RUNS or ./runs)")
    p.add_argument("--ignore-template-mismatch", action="store_true",
                   help="push even when the adapter's chat template does not render what training rendered")
    p.set_defaults(func=run)


def resolve_run(run: str, runs_root: str | None) -> Path:
    """A path as given when it exists, else a run id under the runs folder."""
    from finetune import runs
    from finetune.cli import UsageError

    path = Path(run)
    if path.exists():
        return path
    try:
        found = runs.run_path(run, runs_root)
    except runs.RunError as e:
        raise UsageError(str(e)) from e
    if not found.exists():
        raise UsageError(f"no run folder {run} (looked in {runs.runs_root(runs_root)}); pass the run's path or --runs-root")
    return found


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import get_token

    from finetune import runs
    from finetune.cli import UsageError
    from finetune.config import RunConfig
    from finetune.events import EventLog
    from finetune.export import push_merged
    from finetune.hub import HubError, find_adapter, push_adapter
    from finetune.models import ModelError
    from finetune.verify import require_consistent

    path = resolve_run(args.run, args.runs_root)
    run_dir = path if (path / runs.CONFIG_FILE).exists() else None
    saved = RunConfig.load(run_dir / runs.CONFIG_FILE) if run_dir else RunConfig()
    repo = args.repo or saved.hub.repo_id
    if not repo:
        raise UsageError("no repo to push to: pass --repo user/name (or set hub.repo_id in the run's config)")
    private = saved.hub.private if args.private is None else args.private
    token = get_token()  # HF_TOKEN, else the token saved by `hf auth login`
    try:
        adapter = find_adapter(path)
        require_consistent(adapter, action="push", ignore_mismatch=args.ignore_template_mismatch)
        url = push_adapter(adapter, repo, token=token, private=private, revision=args.revision,
                           commit_message=args.message)
        merged_url = None
        if args.merged_repo:
            merged_url = push_merged(adapter, args.merged_repo, token=token, private=private,
                                     revision=args.revision, dtype=args.dtype,
                                     commit_message=args.message.replace("LoRA adapter", "merged model"),
                                     ignore_template_mismatch=True)  # checked above
    except (HubError, ModelError) as e:
        raise UsageError(str(e)) from e
    if run_dir is not None:  # the run's history says where its adapter went (never with the token)
        log = EventLog(run_dir)
        log.emit("pushed", repo_id=repo, url=url, revision=args.revision)
        if merged_url:
            log.emit("pushed", repo_id=args.merged_repo, url=merged_url, revision=args.revision, merged=True)
    print(f"pushed the adapter to {url}" + (f" (branch {args.revision})" if args.revision else ""), file=sys.stderr)
    if merged_url:
        print(f"pushed the merged model to {merged_url}", file=sys.stderr)
    print(url)
    return 0
