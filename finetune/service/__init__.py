"""Every action the app and the CLI expose. No Gradio here: the UI turns a request into an owner's space once
(``Workspace.owner_space``) and calls its methods; the CLI does the same with no owner.

- ``space.py``: the workspace and one owner's space (start, status, stop, resume, runs, push, evaluate, export,
  the arena, chat models), whose longer actions live in a module each: ``uploads.py`` (an upload kept in the
  owner's folder and named as the user did), ``arena_actions.py`` (the blind arena);
- ``checks.py``: what a shared server refuses (code, server folders, the server's token), backend names, the queue;
- ``plans.py``: what a run will use before it starts (steps, ZeroGPU quota, a job's time limit and cost);
- ``preview.py``: a dataset formatted for the Dataset tab's preview (what it shows is the UI's).
"""

from .checks import (BACKEND_NAMES, SIGN_IN_TO, ServiceError, Shared, backend_name, backend_of,
                     check_config_code, check_data_chosen, check_hub_dataset_id, check_model_ref, check_zerogpu,
                     hub_token, parse_config, push_dataset, queue_dir, run_caps)
from .plans import JobCost, RunPlan, job_cost, planned_steps, run_plan, zerogpu_quota, zerogpu_quota_for
from ..methods import method_hint
from .preview import Formatted, WrongMethod, format_preview
from .space import SYNC_EVERY_S, ExportDownload, OwnerSpace, Workspace, default_workspace
from .uploads import UPLOADS, as_uploaded, kept_name

__all__ = ["BACKEND_NAMES", "SIGN_IN_TO", "SYNC_EVERY_S", "UPLOADS", "ExportDownload",
           "Formatted", "JobCost", "WrongMethod", "method_hint", "OwnerSpace", "RunPlan", "ServiceError", "Shared", "Workspace",
           "as_uploaded", "backend_name", "backend_of", "check_config_code", "check_data_chosen", "check_hub_dataset_id",
           "check_model_ref", "check_zerogpu", "default_workspace", "format_preview", "hub_token", "job_cost", "kept_name",
           "parse_config", "planned_steps", "push_dataset", "queue_dir", "run_caps", "run_plan", "zerogpu_quota",
           "zerogpu_quota_for"]
