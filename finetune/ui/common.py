"""What every tab shares: the workspace, who the caller is, and turning library errors into messages."""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..service import Workspace

log = logging.getLogger("finetune.ui")


@dataclass
class Api:
    """The dependencies tabs receive (nothing global: per-user data lives in gr.State or the workspace)."""

    workspace: Workspace
    downloads: Path  # where generated files (JSONL, zips, YAML) are written for download


def owner(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """The signed-in user on a Space, else the browser (or gradio_client) session."""
    if profile is not None and getattr(profile, "username", None):
        return "user:" + profile.username
    if request is not None and getattr(request, "session_hash", None):
        return "session:" + request.session_hash
    return "local"


def config_warnings_markdown(cfg) -> str:
    """Risky settings of a config (e.g. trust_remote_code on) as a visible warning above the fit verdict."""
    from ..config import config_warnings

    return "".join(f"⚠️ **{w}**\n\n" for w in config_warnings(cfg))


def user_errors(fn):
    """Show library errors as a message that says what to change, never a traceback."""

    def convert(e: Exception):
        if isinstance(e, gr.Error):
            return e
        log.info("request failed: %s: %s", e.__class__.__name__, e)
        return gr.Error(str(e) if str(e) else e.__class__.__name__, print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every failure becomes a message for the user
                raise convert(e) from None

        return gen

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every failure becomes a message for the user
            raise convert(e) from None

    return wrapper
