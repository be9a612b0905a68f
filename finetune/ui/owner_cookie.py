"""An anonymous visitor's owner key, carried by a signed, HttpOnly cookie.

A page's session hash is no secret (it travels in URLs and anyone can send it over the queue protocol), so it
cannot be what ties a visitor to their runs. The key is a random 128-bit value, signed with HMAC-SHA256 under a
server secret, that the browser holds in a cookie page scripts cannot read and sends with every request of the
page. A caller without the cookie (a script, or someone who knows a session hash) is not that visitor.

Pure ASGI (no gradio): ``OwnerCookie`` checks the cookie on every HTTP request and puts the verified key in the
request's state (``STATE_KEY``), where ``common.owner`` reads it; a page load without a valid cookie gets a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, MutableMapping

COOKIE = "finetune_owner"
STATE_KEY = "finetune_owner_key"  # the verified key in the ASGI scope's state (starlette's request.state)
SECRET_ENV = "FINETUNE_OWNER_SECRET"
SECRET_FILE = ".owner-secret"  # in the workspace root: the same secret across restarts on the same runs folder
MAX_AGE_S = 400 * 24 * 3600  # the longest a browser keeps a cookie (Chrome caps it at 400 days); renewed per page load
KEY_PATTERN = re.compile(r"^[0-9a-f]{32}$")
_VALUE = re.compile(r"^([0-9a-f]{32})\.([0-9a-f]{64})$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def new_key() -> str:
    return secrets.token_hex(16)


def sign(key: str, secret: bytes) -> str:
    """The cookie's value for ``key``: the key and its HMAC-SHA256 under ``secret``."""
    return f"{key}.{hmac.new(secret, key.encode('ascii'), hashlib.sha256).hexdigest()}"


def verify(value: str | None, secret: bytes) -> str | None:
    """The key a cookie value carries when its signature is ours, else None (missing, malformed, forged)."""
    found = _VALUE.match(value or "")
    if not found:
        return None
    return found.group(1) if hmac.compare_digest(sign(found.group(1), secret), found.group(0)) else None


def load_secret(root: Path) -> bytes:
    """FINETUNE_OWNER_SECRET when set, else the secret file in ``root``, created (mode 0600) the first time.
    Two processes starting on the same folder agree: the file appears whole or not at all (a hard link of a
    complete temporary file), and the one that loses the race reads the winner's."""
    from_env = os.environ.get(SECRET_ENV, "")
    if from_env:
        return from_env.encode("utf-8")
    path = Path(root) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{SECRET_FILE}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise RuntimeError(f"{path} holds no usable secret: delete it to have a new one made "
                           "(every visitor then gets a new owner key)")
    return secret.encode("utf-8")


def _cookies(scope: Scope, name: str) -> list[str]:
    """Every value the request sends for the cookie ``name`` (a browser may send two: partitioned and not)."""
    found = []
    for header, raw in scope.get("headers") or []:
        if header.lower() != b"cookie":
            continue
        for part in raw.decode("latin-1").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                found.append(v.strip().strip('"'))
    return found


def _header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k.lower() == name), "")


def _page_load(scope: Scope) -> bool:
    """A browser opening or reloading the page (a document asked for as HTML, in a tab or an iframe). Only these get
    a new cookie: a script client (gradio_client keeps the cookies of its first answer) stays its session, as the
    app's API promises."""
    return scope.get("method") in ("GET", "HEAD") and "text/html" in _header(scope, b"accept")


class OwnerCookie:
    """ASGI middleware: the verified owner key of each request in ``scope["state"][STATE_KEY]``; a page load
    without a valid cookie gets a new signed key (``Set-Cookie``), already in that request's state.

    ``space``: served over https inside huggingface.co's iframe, where only a ``SameSite=None; Secure; Partitioned``
    cookie is sent (default: the platform's SPACE_ID is set). Locally ``SameSite=Lax`` over plain http."""

    def __init__(self, app: ASGIApp, root: Path, space: bool | None = None) -> None:
        self.app = app
        self.root = Path(root)
        self.space = bool(os.environ.get("SPACE_ID")) if space is None else space
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    def secret(self) -> bytes:
        # read (or made) on the first request, never when the app is built
        with self._lock:
            if self._secret is None:
                self._secret = load_secret(self.root)
            return self._secret

    def set_cookie(self, value: str) -> bytes:
        flags = "SameSite=None; Secure; Partitioned" if self.space else "SameSite=Lax"
        return f"{COOKIE}={value}; Path=/; Max-Age={MAX_AGE_S}; HttpOnly; {flags}".encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secret = self.secret()
        key = next((k for k in (verify(v, secret) for v in _cookies(scope, COOKIE)) if k), None)
        page = _page_load(scope)
        if key is None and page:
            key = new_key()
        if key is not None:
            # a copy: the server's state dict may be shared beyond this request
            scope = {**scope, "state": {**(scope.get("state") or {}), STATE_KEY: key}}
        if key is None or not page:
            await self.app(scope, receive, send)
            return
        cookie = self.set_cookie(sign(key, secret))  # new, or the same one with its expiry renewed

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)
