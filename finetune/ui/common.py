"""What every tab shares: the workspace, who the caller is, and turning library errors into messages."""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ParamSpec, TypeVar

import gradio as gr

from ..errors import UserError, internal_message, report_internal
from ..service import Workspace

if TYPE_CHECKING:
    from ..config import RunConfig

log = logging.getLogger("finetune.ui")
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class Api:
    """The dependencies tabs receive (nothing global: per-user data lives in gr.State or the workspace)."""

    workspace: Workspace
    downloads: Path  # where generated files (JSONL, zips, YAML) are written for download


def owner(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """The signed-in user on a Space, else the browser (or gradio_client) session."""
    username: str | None = getattr(profile, "username", None) if profile is not None else None
    if username:
        return "user:" + username
    session: str | None = getattr(request, "session_hash", None) if request is not None else None
    if session:
        return "session:" + session
    return "local"


def config_warnings_markdown(cfg: RunConfig) -> str:
    """Risky settings of a config (e.g. trust_remote_code on) as a visible warning above the fit verdict."""
    from ..config import config_warnings

    return "".join(f"⚠️ **{w}**\n\n" for w in config_warnings(cfg))


def user_error(e: BaseException, where: str = "") -> gr.Error:
    """The message shown for a failed request: a UserError's own message (it says what to change); for anything
    else (a bug of ours) ``internal error (reference N)``, its traceback logged under ``finetune.internal``."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, UserError):
        log.info("request refused: %s: %s", e.__class__.__name__, e)
        return gr.Error(str(e) if str(e) else e.__class__.__name__, print_exception=False)
    return gr.Error(internal_message(report_internal(e, where)), print_exception=False)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Show the user's errors as a message that says what to change, never a traceback; any other exception is
    a bug: logged with its traceback, shown as ``internal error (reference N)``."""
    where = getattr(fn, "__qualname__", "a request")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - sorted into the user's errors and ours by user_error
                raise user_error(e, where) from None

        return gen

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - sorted into the user's errors and ours by user_error
            raise user_error(e, where) from None

    return wrapper
