"""What every tab shares: the workspace, who the caller is, and turning library errors into messages."""

from __future__ import annotations

import functools
import hashlib
import html
import inspect
import logging
import re
import secrets
import threading
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


# An anonymous visitor's browser keeps a random owner key (gr.BrowserState, in its localStorage) across reloads;
# each page load registers its session here, so the session's requests act on that browser's runs. A lookup of
# sessions, shared on purpose: it holds no user's data, and a session is dropped when its page closes.
_browser_owners: dict[str, str] = {}
_browser_lock = threading.Lock()
_KEY = re.compile(r"^[0-9a-f]{32}$")
BROWSER_KEY_STORAGE = "finetune-owner"


def owner(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """The signed-in user on a Space, else the browser (its owner key, kept across reloads), else the session
    (gradio_client)."""
    username: str | None = getattr(profile, "username", None) if profile is not None else None
    if username:
        return "user:" + username
    session: str | None = getattr(request, "session_hash", None) if request is not None else None
    if session:
        with _browser_lock:
            key = _browser_owners.get(session)
        return "browser:" + key if key else "session:" + session
    return "local"


def client_address(request: gr.Request | None) -> str | None:
    """The address the request came from (limits.client_address: X-Forwarded-For only behind a trusted proxy);
    None without a request (a call from Python)."""
    if request is None:
        return None
    from ..limits import client_address as address

    client = getattr(request, "client", None)
    headers = getattr(request, "headers", None)
    forwarded = headers.get("x-forwarded-for") if headers is not None else None
    return address(getattr(client, "host", None), forwarded)


def claim_browser(key: str | None, request: gr.Request) -> str:
    """On page load: this browser's owner key (a new random one the first time, or when what the browser sent is
    not one of ours), registered for the page's session; the browser stores what this returns."""
    if not isinstance(key, str) or not _KEY.match(key):
        key = secrets.token_hex(16)
    session = getattr(request, "session_hash", None)
    if session:
        with _browser_lock:
            _browser_owners[session] = key
    return key


def forget_browser(request: gr.Request) -> None:
    """On page close: drop the session's registration."""
    with _browser_lock:
        _browser_owners.pop(getattr(request, "session_hash", None) or "", None)


def browser_secret(root: Path) -> str:
    """The key gradio encrypts the browsers' stored owner keys with. Gradio hands it to the page (the encryption
    runs in the browser), so it guards nothing by itself: what keeps visitors apart is the random owner key. It only
    has to stay the same across restarts of the app on the same runs folder, so it is derived from that folder
    (nothing is written when the app is built)."""
    return hashlib.sha256(f"finetune-browser-state:{Path(root).resolve()}".encode()).hexdigest()[:32]


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
    return InternalError(internal_message(report_internal(e, where)), print_exception=False)


class InternalError(gr.Error):
    """A bug of ours as the user sees it (``internal error (reference N)``): never taken for a refusal."""


PAGE_ERRORS = "__finetune_page_errors__"  # marks a handler wrapped by page_errors (tests/test_ui_errors.py looks)


def page_errors(fn: Callable[P, R], shown: Callable[[str], Any] | None = None) -> Callable[P, R]:
    """For an event of the page that fills several outputs: a refusal (UserError, or gr.Error raised by the
    handler) is shown as a message, and the outputs show ``shown(message)`` (default: each keeps what it showed;
    ``message`` is HTML-escaped, as shown). Raising would make gradio mark every output of the event with an error
    badge, as if each had failed. A bug still raises: ``internal error (reference N)``, its traceback logged (also
    when a helper wrapped by ``user_errors`` already turned it into that message). Endpoints for scripts use
    ``user_errors`` (the caller gets the error)."""
    where = getattr(fn, "__qualname__", "a request")

    def refused(e: Exception) -> Any:
        if isinstance(e, (UserError, gr.Error)) and not isinstance(e, InternalError):
            message = str(e.message if isinstance(e, gr.Error) else e) or e.__class__.__name__
            log.info("request refused: %s: %s", e.__class__.__name__, message)
            gr.Warning(html.escape(message))
            return shown(html.escape(message)) if shown is not None else gr.skip()  # one skip: all outputs as they were
        raise user_error(e, where) from None

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a refusal becomes a message, anything else is ours
                yield refused(e)

        setattr(gen, PAGE_ERRORS, True)
        return gen

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a refusal becomes a message, anything else is ours
            result: R = refused(e)
            return result

    setattr(wrapper, PAGE_ERRORS, True)
    return wrapper


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
