"""What every tab shares: the workspace, who the caller is, and turning library errors into messages."""

from __future__ import annotations

import errno
import functools
import hashlib
import html
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ParamSpec, TypeVar

import gradio as gr

from .. import runs
from ..errors import UserError, app_message, internal_message, report_internal
from ..service import OwnerSpace, Workspace
from .owner_cookie import KEY_PATTERN, STATE_KEY

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


BROWSER_KEY_STORAGE = "finetune-owner"  # where pages before the owner cookie kept their key (localStorage)


def browser_owner(request: gr.Request | None) -> str | None:
    """The browser's owner from its signed, HttpOnly cookie (checked by ``owner_cookie.OwnerCookie`` on every
    request), else None: a caller who only knows a session hash has no cookie of that browser."""
    if request is None:
        return None
    key = getattr(getattr(request, "state", None), STATE_KEY, None)
    return "browser:" + key if isinstance(key, str) and KEY_PATTERN.match(key) else None


# An API or MCP client may name its owner itself: a secret of its choosing in this header, the same on every call
# (an MCP client's configuration, a script's gradio_client headers). Whoever knows the secret is that owner.
OWNER_KEY_HEADER = "x-finetune-key"
OWNER_KEY_CHARS = (24, 256)  # a shorter secret could be guessed
MCP_CALLER_HEADER = ("x-gradio-user", "mcp")  # gradio's MCP server calls the app's API with this header


class OwnerKeyError(UserError):
    """An owner key that cannot name an owner (too short, too long); or an MCP call on a shared server without one."""


def _header(request: gr.Request | None, name: str) -> str | None:
    headers = getattr(request, "headers", None) if request is not None else None
    value = headers.get(name) if headers is not None else None
    return value.strip() if isinstance(value, str) else None


def key_owner(request: gr.Request | None) -> str | None:
    """The owner a client names with its ``X-Finetune-Key`` header (its secret, hashed), else None."""
    key = _header(request, OWNER_KEY_HEADER)
    if not key:
        return None
    low, high = OWNER_KEY_CHARS
    if not low <= len(key) <= high:
        raise OwnerKeyError(f"the X-Finetune-Key header must be {low} to {high} characters (a secret of your choosing, "
                            f"the same on every call), got {len(key)}")
    return "key:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def through_mcp(request: gr.Request | None) -> bool:
    """Whether the call came through gradio's MCP server (whose calls all share one session)."""
    return _header(request, MCP_CALLER_HEADER[0]) == MCP_CALLER_HEADER[1]


def owner(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """The signed-in user on a Space, else the browser (its owner cookie, kept across reloads), else the key a
    client names (``X-Finetune-Key``), else the session (gradio_client)."""
    username: str | None = getattr(profile, "username", None) if profile is not None else None
    if username:
        return "user:" + username
    browser = browser_owner(request) or key_owner(request)
    if browser:
        return browser
    session: str | None = getattr(request, "session_hash", None) if request is not None else None
    return "session:" + session if session else "local"


def oauth_token(oauth: gr.OAuthToken | None) -> str | None:
    """The signed-in user's token; None (then HF_TOKEN) when signed out or for the local mock token, which must
    never be sent to the Hub."""
    from ..hub import MOCK_OAUTH_TOKEN

    token = getattr(oauth, "token", None)
    return None if not token or token == MOCK_OAUTH_TOKEN else token


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


def adopt_old_browser_runs(ws: Workspace, old_key: str | None, request: gr.Request) -> str:
    """On page load: the runs of the owner key this browser kept in localStorage before the owner cookie move to
    the cookie's owner, so nothing an anonymous visitor made is lost. Returns what the browser keeps from then on:
    "" once done, or the old key while it cannot be done yet (no cookie; names already taken in the new folder).
    Knowing a browser's session hash does not help: this takes the old key, which only that browser holds."""
    if not isinstance(old_key, str) or not KEY_PATTERN.match(old_key):
        return ""
    browser = browser_owner(request)
    if browser is None:
        return old_key
    old, new = ws.for_owner("browser:" + old_key), ws.for_owner(browser)
    if old == new or not old.is_dir():  # single-user (one folder for all), or nothing was ever made
        return ""
    if any(r.status in runs.LIVE for r in runs.list_runs(old)):
        return old_key  # a run still writes there (its process outlived a restart): once it ends
    try:
        if not new.exists():
            try:
                old.rename(new)  # one step; it fails if another tab of this browser made the new folder meanwhile
                log.info("an anonymous visitor's runs moved to their owner cookie's folder %s", new.name)
                return ""
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        # the cookie's owner has a folder already (another tab moved first, or made something): entry by entry
        for entry in list(old.iterdir()):
            if not (new / entry.name).exists():
                entry.rename(new / entry.name)
        if any(old.iterdir()):
            log.warning("an anonymous visitor's folder %s keeps entries whose names %s has", old.name, new.name)
            return old_key
        old.rmdir()
    except FileNotFoundError:  # another tab of this browser moved it first
        return ""
    log.info("an anonymous visitor's runs moved to their owner cookie's folder %s", new.name)
    return ""


def browser_secret(root: Path) -> str:
    """The key gradio encrypts the browsers' stored owner keys with (pages before the owner cookie; read once, for
    ``adopt_old_browser_runs``). Gradio hands it to the page (the encryption runs in the browser), so it guards
    nothing by itself. It only has to stay the same across restarts of the app on the same runs folder, so it is
    derived from that folder (nothing is written when the app is built)."""
    return hashlib.sha256(f"finetune-browser-state:{Path(root).resolve()}".encode()).hexdigest()[:32]


@dataclass
class PushRow:
    """A push to the Hub on the page: the repo box, the Private tick, the button, and the result under them."""

    repo: gr.Textbox
    private: gr.Checkbox
    button: gr.Button
    result: gr.Markdown


def push_row(what: str, label: str, placeholder: str) -> PushRow:
    """The widgets of a push (of ``what``: "dataset", "adapter") on one row, private by default."""
    with gr.Row():
        repo = gr.Textbox(value="", label=label, placeholder=placeholder, scale=3)
        private = gr.Checkbox(value=True, label="Private")
        button = gr.Button(f"⇪ Push {what}")
    return PushRow(repo, private, button, gr.Markdown())


def config_warnings_markdown(cfg: RunConfig) -> str:
    """Risky settings of a config (e.g. trust_remote_code on) as a visible warning above the fit verdict."""
    from ..config import config_warnings

    return "".join(f"⚠️ **{w}**\n\n" for w in config_warnings(cfg))


def user_error(e: BaseException, where: str = "") -> gr.Error:
    """The message shown for a failed request: a UserError's own message in the app's words (it says what to
    change: ``errors.app_message``); for anything
    else (a bug of ours) ``internal error (reference N)``, its traceback logged under ``finetune.internal``."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, UserError):
        log.info("request refused: %s: %s", e.__class__.__name__, e)
        return gr.Error(app_message(e), print_exception=False)  # in the app's words
    return InternalError(internal_message(report_internal(e, where)), print_exception=False)


class InternalError(gr.Error):
    """A bug of ours as the user sees it (``internal error (reference N)``): never taken for a refusal."""


# Runs in the browser as an action of the page starts (an event's ``js``): the toasts of the last action close, so
# each action shows its own message once (gradio stacks toasts of one kind into one: an upload's warning and the
# next Format's read "Warning (2)", the same message twice). The event's inputs go on unchanged.
NEW_ACTION_JS = "(...inputs) => { document.querySelectorAll('.toast-close').forEach(b => b.click()); return inputs; }"

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
            message = (str(e.message) or e.__class__.__name__) if isinstance(e, gr.Error) else app_message(e)
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


@dataclass(frozen=True)
class Caller:
    """Who calls an endpoint: their space (their runs only), their Hub token (None: signed out, or not asked for)
    and their address (limits.client_address)."""

    space: OwnerSpace
    token: str | None
    client: str | None


_P = inspect.Parameter


def scoped(api: Api, *, token: bool = False) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Turn a handler ``fn(caller, *args)`` into the event function gradio calls with ``args`` and the request: the
    handler gets the caller's space once (:class:`Caller`). Gradio fills ``request``, ``profile`` and, with
    ``token``, ``oauth`` from their type hints; the API's parameters (names, order, defaults) are the handler's
    after ``caller``, and gradio's progress tracker (a ``gr.Progress()`` default) stays last."""

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        params = list(inspect.signature(fn).parameters.values())[1:]
        special = [_P("request", _P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request | None),
                   _P("profile", _P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.OAuthProfile | None)]
        if token:
            special.append(_P("oauth", _P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.OAuthToken | None))
        at = next((i for i, p in enumerate(params) if isinstance(p.default, gr.Progress)), len(params))
        signature = inspect.Signature(params[:at] + special + params[at:])

        def call(args: Any, kwargs: Any) -> tuple[Caller, dict[str, Any]]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            given = dict(bound.arguments)
            request, profile, oauth = given.pop("request"), given.pop("profile"), given.pop("oauth", None)
            who = owner(request, profile)
            if api.workspace.multi_user and through_mcp(request) and who.startswith("session:"):
                # every MCP call arrives in the MCP server's one session: without a key, agents would share runs
                raise OwnerKeyError("an MCP client names its owner on this shared server: add the header "
                                    "X-Finetune-Key with a secret of your choosing (24 characters or more) to the "
                                    "client's configuration, the same on every call")
            space = api.workspace.owner_space(who)
            return Caller(space, oauth_token(oauth) if token else None, client_address(request)), given

        if inspect.isgeneratorfunction(fn):

            def gen(*args: Any, **kwargs: Any) -> Any:
                caller, given = call(args, kwargs)
                yield from fn(caller, **given)

            wrapper: Callable[..., Any] = gen
        else:

            def plain(*args: Any, **kwargs: Any) -> R:
                caller, given = call(args, kwargs)
                return fn(caller, **given)

            wrapper = plain
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(wrapper, attr, getattr(fn, attr))
        annotations = {p.name: p.annotation for p in signature.parameters.values()}
        if "return" in fn.__annotations__:
            annotations["return"] = fn.__annotations__["return"]
        wrapper.__annotations__ = annotations
        setattr(wrapper, "__signature__", signature)
        setattr(wrapper, "__wrapped__", fn)  # its string hints resolve in the handler's module
        return wrapper

    return decorate
