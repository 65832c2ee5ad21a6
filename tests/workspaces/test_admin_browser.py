"""The admin half of the quick start, in a real browser against a real gateway.

Debian's Chromium (``/usr/bin/chromium``) driven by Playwright (its own browser downloads are never
used) logs in to a real gateway process (``manage.py serve``, built-in identity backend) on the
test database, registers an executor, creates an access token, checks both secrets are shown once
and nowhere else, and revokes the token with the changelist action: the gateway then refuses it.

Playwright's sync API keeps an asyncio loop running on the test's thread, where Django refuses ORM
calls; the test reaches the database through ``orm``, a one-thread executor of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pytest
from django.contrib.auth import get_user_model
from django.db import connections

from executors import services
from executors.models import Executor, WorkspaceExecutor
from tests.e2e.harness import GatewayProcess, http_json
from workspaces import tokens
from workspaces.identity import Grant, Unauthorized
from workspaces.models import AccessToken

if TYPE_CHECKING:
    from playwright.sync_api import Page, Response

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/admin-token.png")
USERNAME = "quickstart-admin"
PASSWORD = "quick-start-password-1"
EXECUTOR_USER = "user-quickstart"
EXECUTOR_NAME = "laptop executor"
BINDING_NAME = "laptop"
TOKEN_NAME = "laptop TUI"
TOKEN_FORMAT = re.compile(r"cxgt_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{43}")
BROWSER_TIMEOUT_MS = 15_000
DB_TIMEOUT = 30.0

P = ParamSpec("P")
T = TypeVar("T")


class Db:
    """Runs ORM calls on one thread with no event loop (its connection is closed at ``close``)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db")

    def __call__(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._pool.submit(function, *args, **kwargs).result(DB_TIMEOUT)

    def close(self) -> None:
        self._pool.submit(connections.close_all).result(DB_TIMEOUT)
        self._pool.shutdown()


@pytest.fixture
def orm() -> Iterator[Db]:
    runner = Db()
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def builtin_gateway(transactional_db: None) -> Iterator[GatewayProcess]:
    """A real gateway on the test database (committed rows are shared) with built-in identity."""
    gateway = GatewayProcess.start(env={"CODEXGW_IDENTITY_BACKEND": "builtin"})
    try:
        yield gateway
    finally:
        gateway.terminate()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A tab of a fresh headless Chromium profile. Fails (never skips) when a part is missing:
    ``scripts/test`` installs both."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: .venv/bin/pip install -r requirements-dev.txt")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            context.set_default_timeout(BROWSER_TIMEOUT_MS)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def _create_admin() -> Any:
    user = get_user_model().objects.create_superuser(USERNAME, "admin@example.com", PASSWORD)
    tokens.ensure_default_workspace(user)
    return user


def _executor_row(exe_id: str) -> tuple[Executor, list[tuple[str, str]]]:
    executor = Executor.objects.get(exe_id=exe_id)
    bindings = list(WorkspaceExecutor.objects.filter(executor=executor).values_list("workspace_id", "name"))
    return executor, bindings


def _token_pk(prefix: str) -> int:
    return AccessToken.objects.get(prefix=prefix).pk


def _submit(page: Page, label: str) -> Response:
    """Click the submit button ``label`` and return the response of the POST it sends."""
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name=label, exact=True).click()
    page.wait_for_load_state()
    return posted.value


def _envs_list(gateway: GatewayProcess, token: str) -> tuple[int, Any]:
    return http_json(
        "POST", f"{gateway.base_url}/api/connectors/envs/list", {}, headers={"Authorization": f"Bearer {token}"}
    )


def _back(page: Page) -> bool:
    """History back; True if that landed on Chromium's "Confirm Form Resubmission" page, which is
    what a no-store POST result becomes: neither kept nor posted again (net::ERR_CACHE_MISS)."""
    from playwright.sync_api import Error

    try:
        page.go_back()
    except Error as error:
        failure = error.message
    else:
        page.wait_for_load_state()
        return False
    assert "net::ERR_CACHE_MISS" in failure, failure
    page.wait_for_url("chrome-error://chromewebdata/")
    assert "Confirm Form Resubmission" in page.locator("body").inner_text()
    return True


def _executor_count() -> int:
    return Executor.objects.count()


def _token_count() -> int:
    return AccessToken.objects.count()


def _assert_absent(page: Page, secret: str, where: str) -> None:
    html = page.content()
    assert secret not in html, f"the secret is shown again on {where} ({page.url})"


def test_quick_start_admin_shows_each_secret_once_and_revokes(builtin_gateway: GatewayProcess, page: Page, orm: Db):
    base = builtin_gateway.base_url
    admin_user = orm(_create_admin)

    # --- log in through the login form
    page.goto(f"{base}/admin/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in", exact=True).click()
    page.wait_for_url(f"{base}/admin/")
    assert USERNAME.upper() in page.locator("#user-tools").inner_text().upper()

    # --- register an executor, bound to the default workspace
    page.goto(f"{base}/admin/executors/executor/")
    page.get_by_role("link", name="Register executor", exact=True).click()
    page.wait_for_url(f"{base}/admin/executors/executor/add/")
    page.fill("#id_user_id", EXECUTOR_USER)
    page.fill("#id_display_name", EXECUTOR_NAME)
    page.fill("#id_workspace_id", "default")
    page.fill("#id_binding_name", BINDING_NAME)
    registered = _submit(page, "Register")
    assert registered.status == 200, registered.status
    assert "no-store" in registered.headers.get("cache-control", ""), registered.headers
    assert page.locator("h1").inner_text() == "Executor registered"
    exe_id = page.locator("th:text-is('Executor id') + td code").inner_text()
    registration_token = page.locator("th:text-is('Registration token') + td code").inner_text()
    assert re.fullmatch(r"exe_[0-9a-f-]+", exe_id), exe_id
    assert len(registration_token) >= 32, registration_token
    command = page.locator("pre").first.inner_text()
    assert f"AWS_ACCESS_KEY_ID={exe_id}" in command, command
    assert f"AWS_SECRET_ACCESS_KEY={registration_token}" in command, command
    assert f"codex exec-server --remote {base} --remote-transport direct --aws-sigv4" in command, command
    assert f"--environment-id {exe_id}" in command, command
    executor, bindings = orm(_executor_row, exe_id)
    assert (executor.user_id, executor.display_name) == (EXECUTOR_USER, EXECUTOR_NAME)
    assert bindings == [("default", BINDING_NAME)]
    assert orm(services.check_registration_token, exe_id, registration_token)

    # Never shown again: not on the executor's page, not in the list, not going back or forward.
    page.get_by_role("link", name=str(executor)).click()
    page.wait_for_url(re.compile(r"/admin/executors/executor/.+/change/$"))
    assert exe_id in page.content()
    _assert_absent(page, registration_token, "the executor's change page")
    assert _back(page), f"back from the executor's page shows {page.url}, not the resubmission page"
    _assert_absent(page, registration_token, "the page back from the executor's change page")
    assert not _back(page)
    assert page.url == f"{base}/admin/executors/executor/add/"
    _assert_absent(page, registration_token, "the registration form, back in history")
    assert orm(_executor_count) == 1, "going back in history registered another executor"
    page.goto(f"{base}/admin/executors/executor/")
    assert exe_id[:12] in page.content()
    _assert_absent(page, registration_token, "the executor changelist")

    # --- create an access token on the "Add" page
    page.goto(f"{base}/admin/workspaces/accesstoken/")
    page.get_by_role("link", name="Add access token", exact=True).click()
    page.wait_for_url(f"{base}/admin/workspaces/accesstoken/add/")
    page.select_option("#id_workspace", label="default")
    page.select_option("#id_user", label=USERNAME)
    page.fill("#id_name", TOKEN_NAME)
    checked = page.locator("input[name=scopes]:checked")
    assert sorted(checked.evaluate_all("boxes => boxes.map(box => box.value)")) == sorted(tokens.ALL_SCOPES)
    created = _submit(page, "Create token")
    assert created.status == 200, created.status
    assert "no-store" in created.headers.get("cache-control", ""), created.headers
    assert page.locator("h1").inner_text() == "Access token created"
    token = page.locator("#access-token").inner_text().strip()
    assert TOKEN_FORMAT.fullmatch(token), token
    usage = page.locator("#token-usage").inner_text()
    assert f"export CODEXGW_TOKEN='{token}'" in usage, usage
    assert f"codex --remote {builtin_gateway.ws_base_url} --remote-auth-token-env CODEXGW_TOKEN" in usage, usage
    page.screenshot(path=SCREENSHOT, full_page=True)

    # The token works: for the TUI in the test process, and over real HTTP for the SDK.
    grant = orm(tokens.check, token, "tui")
    prefix = token[: len("cxgt_") + 8]
    expected = Grant("default", str(admin_user.pk), prefix, frozenset(tokens.ALL_SCOPES), grant.expires_at)
    assert grant == expected
    assert grant.expires_at is not None  # the form's default lifetime
    status, body = _envs_list(builtin_gateway, token)
    assert status == 200, (status, body)
    assert body == {"envs": []}, body  # the bound executor is not running, so not listed

    # Shown once: the list and the token's page show its prefix only.
    page.goto(f"{base}/admin/workspaces/accesstoken/")
    row = page.locator("#result_list tbody tr", has_text=prefix)
    assert row.count() == 1
    assert "active" in row.inner_text()
    _assert_absent(page, token, "the access token changelist")
    _assert_absent(page, token[len(prefix) + 1 :], "the access token changelist (secret part)")
    row.get_by_role("link", name=prefix).click()
    page.wait_for_url(re.compile(r"/admin/workspaces/accesstoken/\d+/change/$"))
    assert prefix in page.content()
    _assert_absent(page, token[len(prefix) + 1 :], "the token's change page")
    assert not _back(page)
    assert page.url == f"{base}/admin/workspaces/accesstoken/"
    assert _back(page), f"back to the token's page shows {page.url}, not the resubmission page"
    _assert_absent(page, token[len(prefix) + 1 :], "going back in history to the creation page")
    assert not _back(page)
    assert page.url == f"{base}/admin/workspaces/accesstoken/add/"
    _assert_absent(page, token[len(prefix) + 1 :], "the token form, back in history")
    assert orm(_token_count) == 1, "going back in history created another token"

    # --- revoke it with the changelist action
    page.goto(f"{base}/admin/workspaces/accesstoken/")
    token_pk = orm(_token_pk, prefix)
    page.check(f"#result_list input.action-select[value='{token_pk}']")
    page.select_option("select[name=action]", value="revoke")
    applied = _submit(page, "Go")
    assert applied.status == 302, applied.status  # back to the list, with the message
    success = page.locator(".messagelist .success")
    assert success.inner_text() == "Revoked 1 token(s); they stop working at once.", page.content()
    assert "revoked" in page.locator("#result_list tbody tr", has_text=prefix).inner_text()

    with pytest.raises(Unauthorized) as refused:
        orm(tokens.check, token, "tui")
    assert refused.value.reason == "token revoked"
    status, body = _envs_list(builtin_gateway, token)
    assert status == 401, (status, body)
