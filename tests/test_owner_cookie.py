"""An anonymous visitor's owner key is a signed, HttpOnly cookie (finetune/ui/owner_cookie.py): knowing a page's
session hash, which travels in URLs, is not being that visitor. Tried the way an attacker would, over the raw queue
protocol of a launched multi-user app; in a real browser (a reload keeps the owner, page scripts cannot read the
cookie); and unit by unit (signatures, the secret, the middleware, moving the runs of the key pages kept before)."""

from __future__ import annotations

import asyncio
import logging
import stat
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from apps import launched, needs_chromium, open_page, queue_call, wait_text
from test_service import make_run

from finetune.events import EventLog
from finetune.service import Workspace
from finetune.ui.common import adopt_old_browser_runs, owner
from finetune.ui.owner_cookie import (COOKIE, SECRET_ENV, SECRET_FILE, STATE_KEY, OwnerCookie, load_secret, new_key,
                                      sign, verify)

HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser asks for when it opens a page


# =============================================================================================
# Signatures and the secret


def test_a_signed_key_verifies_and_any_change_or_other_secret_does_not():
    key, secret = new_key(), b"s" * 64
    value = sign(key, secret)
    assert verify(value, secret) == key
    assert new_key() != key and len(key) == 32
    mac = value.split(".")[1]
    other = new_key()
    for forged in (key, f"{key}.", f"{other}.{mac}", value[:-1] + ("0" if value[-1] != "0" else "1"),
                   sign(key, b"t" * 64), value.upper(), f" {value}", "", None, f"{value}.{mac}"):
        assert verify(forged, secret) is None, forged


def test_the_secret_is_made_once_private_and_kept_and_the_environment_overrides_it(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    root = tmp_path / "runs"
    first = load_secret(root)
    path = root / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert load_secret(root) == first  # a restart on the same runs folder: the same secret
    assert sorted(p.name for p in root.iterdir()) == [SECRET_FILE]  # no temporary file left
    assert load_secret(tmp_path / "other") != first
    monkeypatch.setenv(SECRET_ENV, "from-the-environment")
    assert load_secret(root) == b"from-the-environment"


# =============================================================================================
# The middleware, as pure ASGI


def call(mw: OwnerCookie, headers: dict[str, str], method: str = "GET") -> tuple[dict, list[str]]:
    """One HTTP request through the middleware: (the state the app saw, the Set-Cookie headers it answered)."""
    seen: dict = {}
    sent: list[dict] = []

    async def app(scope, receive, send):
        seen.update(scope.get("state") or {})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    mw.app = app
    scope = {"type": "http", "method": method, "path": "/", "state": {"lifespan": 1},
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(mw(scope, receive, send))
    assert scope["state"] == {"lifespan": 1}  # the server's state is not written into
    cookies = [v.decode() for m in sent if m["type"] == "http.response.start" for k, v in m["headers"]
               if k == b"set-cookie"]
    return seen, cookies


def test_a_page_load_gets_a_signed_httponly_cookie_visible_to_its_own_request(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    mw = OwnerCookie(None, tmp_path / "runs")  # type: ignore[arg-type]
    assert not (tmp_path / "runs").exists()  # nothing written until a request comes
    seen, [cookie] = call(mw, HTML)
    name, _, rest = cookie.partition("=")
    value, *flags = [f.strip() for f in rest.split(";")]
    assert name == COOKIE and verify(value, load_secret(tmp_path / "runs")) == seen[STATE_KEY]
    assert {"HttpOnly", "Path=/", "SameSite=Lax"} <= set(flags) and "Secure" not in flags

    # the browser sends it back: the same key, the same cookie renewed on a page load, none set on other requests
    again, [renewed] = call(mw, {**HTML, "cookie": f"other=1; {COOKIE}={value}"})
    assert again[STATE_KEY] == seen[STATE_KEY] and renewed.startswith(f"{COOKIE}={value};")
    api, none = call(mw, {"accept": "*/*", "cookie": f"{COOKIE}={value}"}, method="POST")
    assert api[STATE_KEY] == seen[STATE_KEY] and none == []

    # a forged or unsigned cookie is no key: a script gets none, a page load a fresh one
    key = seen[STATE_KEY]
    for forged in (key, f"{key}.{'0' * 64}", sign(key, b"a guessed secret of some length......")):
        api, none = call(mw, {"accept": "*/*", "cookie": f"{COOKIE}={forged}"}, method="POST")
        assert STATE_KEY not in api and none == []
        fresh, [cookie] = call(mw, {**HTML, "cookie": f"{COOKIE}={forged}"})
        assert fresh[STATE_KEY] != key and not cookie.startswith(f"{COOKIE}={forged};")


def test_on_a_space_the_cookie_is_sent_inside_huggingfaces_iframe(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/finetune")
    _, [cookie] = call(OwnerCookie(None, tmp_path), HTML)  # type: ignore[arg-type]
    flags = {f.strip() for f in cookie.split(";")[1:]}
    assert {"HttpOnly", "Secure", "SameSite=None", "Partitioned"} <= flags


# =============================================================================================
# Who calls


def request(key: str | None = None, session: str = "s1") -> SimpleNamespace:
    """What owner() reads of a gr.Request: the state the middleware wrote, and the session hash."""
    return SimpleNamespace(state=SimpleNamespace(**({STATE_KEY: key} if key else {})), session_hash=session)


def test_owner_is_the_user_then_the_cookie_then_the_session():
    key = new_key()
    assert owner(request(key), SimpleNamespace(username="ann")) == "user:ann"
    assert owner(request(key)) == "browser:" + key
    assert owner(request(None, "abc")) == "session:abc"
    assert owner(request("not a key", "abc")) == "session:abc"
    assert owner(None) == "local"


def test_the_runs_of_the_key_pages_kept_before_move_to_the_cookies_owner(tmp_path):
    ws = Workspace(tmp_path, multi_user=True)
    old_key, key = new_key(), new_key()
    old_dir = ws.for_owner("browser:" + old_key)
    live = make_run(old_dir, "r1")  # its process (this one) still trains
    assert adopt_old_browser_runs(ws, old_key, request(None)) == old_key  # no cookie yet: kept for later
    assert adopt_old_browser_runs(ws, old_key, request(key)) == old_key  # a run writes there: once it ends
    assert old_dir.is_dir() and not ws.for_owner("browser:" + key).exists()
    EventLog(live).emit("stopped", step=3)
    assert adopt_old_browser_runs(ws, old_key, request(key)) == ""  # done: the browser forgets the old key
    assert not old_dir.exists() and (ws.for_owner("browser:" + key) / "r1" / "config.yaml").exists()
    assert adopt_old_browser_runs(ws, old_key, request(key)) == ""  # again (another tab): nothing left to move
    assert adopt_old_browser_runs(ws, "../../etc", request(key)) == ""  # not one of ours: forgotten
    assert adopt_old_browser_runs(ws, "", request(key)) == ""

    # the cookie's owner has a folder already: entries move one by one; a name taken keeps the old key
    second, third = new_key(), new_key()
    make_run(ws.for_owner("browser:" + second), "r2", alive=False)
    make_run(ws.for_owner("browser:" + second), "r1", alive=False)
    assert adopt_old_browser_runs(ws, second, request(key)) == second
    assert (ws.for_owner("browser:" + key) / "r2").is_dir() and (ws.for_owner("browser:" + second) / "r1").is_dir()
    make_run(ws.for_owner("browser:" + third), "r3", alive=False)
    assert adopt_old_browser_runs(ws, third, request(key)) == ""
    assert (ws.for_owner("browser:" + key) / "r3").is_dir() and not ws.for_owner("browser:" + third).exists()


# =============================================================================================
# A launched multi-user app, over the raw queue protocol


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("dl"), css=False) as (demo, url):
        from gradio_client import Client

        deps = Client(url, verbose=False).config["dependencies"]
        events = {d.get("api_name"): i for i, d in enumerate(deps)}
        [page_load] = [i for i, d in enumerate(deps) if any(t[1] == "load" for t in d["targets"])]
        yield SimpleNamespace(url=url, root=root, ws=Workspace(root, multi_user=True), events=events,
                              page_load=page_load)


def listed(app, session: str, http: httpx.Client | None = None) -> list[str]:
    msg = queue_call(app.url, app.events["list_runs"], [], session, http)
    assert msg["success"], msg
    return [r["run_id"] for r in msg["output"]["data"][0]]


def keep_file(app, session: str, http: httpx.Client) -> Path:
    """Upload a test file through the page (its upload event keeps it in the caller's folder): that folder."""
    rows = b'{"prompt": "capital of France?", "reference": "Paris"}\n'
    [path] = http.post(f"{app.url.rstrip('/')}/gradio_api/upload", files=[("files", ("t.jsonl", rows))]).json()
    msg = queue_call(app.url, app.events["keep_test_file"],
                     [{"path": path, "orig_name": "t.jsonl", "meta": {"_type": "gradio.FileData"}}], session, http)
    assert msg["success"], msg
    kept = Path(msg["output"]["data"][0])
    return app.root / "users" / kept.relative_to(app.root / "users").parts[0]


def test_a_session_hash_alone_never_acts_as_the_browser_that_opened_it(app):
    alice, session = httpx.Client(), uuid.uuid4().hex[:11]
    alice.get(app.url, headers=HTML).raise_for_status()  # alice opens the page
    assert queue_call(app.url, app.page_load, [""], session, alice)["success"]
    folder = keep_file(app, session, alice)  # alice's page makes something: her folder
    make_run(folder, "alices-run", alive=False)
    assert listed(app, session, alice) == ["alices-run"]

    # the attacker knows alice's session hash, not her cookie: every event of the page, the private ones too
    bare = httpx.Client()
    assert queue_call(app.url, app.page_load, [""], session, bare)["success"]
    assert queue_call(app.url, app.page_load, [new_key()], session, bare)["success"]
    assert listed(app, session, bare) == []
    assert listed(app, session) == []
    key = alice.cookies[COOKIE].split(".")[0]
    for forged in (key, f"{key}.{'0' * 64}", sign(key, b"a guessed secret of some length......")):
        forger = httpx.Client(cookies={COOKIE: forged})
        assert listed(app, session, forger) == []
        opened = forger.get(app.url, headers=HTML)  # a page load with it: a fresh owner
        assert opened.cookies[COOKIE].split(".")[0] != key and listed(app, session, forger) == []
    # alice, with her cookie, in a new session (a reload): still hers
    assert listed(app, uuid.uuid4().hex[:11], alice) == ["alices-run"]
    assert folder == app.ws.for_owner("browser:" + key)


def test_a_page_with_the_old_stored_key_brings_its_runs_to_its_cookie(app):
    old_key = new_key()
    make_run(app.ws.for_owner("browser:" + old_key), "from-before", alive=False)
    visitor, session = httpx.Client(), uuid.uuid4().hex[:11]
    # someone without that browser's cookie sends the key: nothing moves, nothing shows
    assert queue_call(app.url, app.page_load, [old_key], session)["output"]["data"] == [old_key]
    assert listed(app, session) == []
    visitor.get(app.url, headers=HTML).raise_for_status()
    msg = queue_call(app.url, app.page_load, [old_key], session, visitor)
    assert msg["success"] and msg["output"]["data"] == [""]  # the browser forgets the old key
    assert listed(app, session, visitor) == ["from-before"]


def test_scripts_stay_their_session_as_before(app):
    from gradio_client import Client

    c = Client(app.url, verbose=False)
    assert COOKIE not in c.cookies
    make_run(app.ws.for_owner("session:" + c.session_hash), "scripted", alive=False)
    assert [r["run_id"] for r in c.predict(api_name="/list_runs")] == ["scripted"]


# =============================================================================================
# A real browser


@needs_chromium
def test_a_reload_keeps_the_owner_and_page_scripts_cannot_read_the_cookie(app, browser):
    context, page = open_page(browser, app.url)
    try:
        [cookie] = [c for c in context.cookies() if c["name"] == COOKIE]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert COOKIE not in page.evaluate("document.cookie")
        key = verify(cookie["value"], load_secret(app.root))
        assert key is not None
        make_run(app.ws.for_owner("browser:" + key), "in-the-browser", alive=False)
        page.reload()
        page.wait_for_selector("text=1 · Dataset", timeout=60_000)
        page.get_by_role("tab", name="3 · Train").click()
        wait_text(page, "runs-table", "in-the-browser")
        assert [c["value"] for c in context.cookies() if c["name"] == COOKIE] == [cookie["value"]]
        # another visitor (its own cookies) does not see it
        other, other_page = open_page(browser, app.url)
        other_page.get_by_role("tab", name="3 · Train").click()
        other_page.wait_for_timeout(1500)
        assert "in-the-browser" not in other_page.locator("#runs-table").first.inner_text()
        other.close()
    finally:
        context.close()


SERVER_LOGGERS = ("finetune", "gradio", "uvicorn", "starlette", "fastapi")


def test_nothing_logs_the_cookie_the_keys_or_the_secret(app, caplog):
    caplog.set_level(logging.DEBUG)
    old_key = new_key()
    make_run(app.ws.for_owner("browser:" + old_key), "logged", alive=False)
    visitor, session = httpx.Client(), uuid.uuid4().hex[:11]
    visitor.get(app.url, headers=HTML).raise_for_status()
    assert queue_call(app.url, app.page_load, [old_key], session, visitor)["output"]["data"] == [""]
    assert listed(app, session, visitor) == ["logged"]
    value = visitor.cookies[COOKIE]
    # the server's logs (this test's own HTTP client logs what it receives, the cookie included)
    server = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in SERVER_LOGGERS)
    assert "moved" in server  # the move is logged, by folder name only
    for secret in (value, value.split(".")[0], old_key, load_secret(app.root).decode()):
        assert secret not in server
