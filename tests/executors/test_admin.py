"""The operator admin: executors with live presence, bindings, and one-time registration."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils.html import escape

from executors import services
from executors.executor_command import codex_install_command, executor_launch, public_base_url
from executors.models import Executor, WorkspaceExecutor
from executors.presence import Holder, presence_store

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:executors_executor_changelist")
REGISTER = reverse("admin:executors_executor_add")
BINDING_ADD = reverse("admin:executors_workspaceexecutor_add")
BINDINGS = reverse("admin:executors_workspaceexecutor_changelist")


def change_url(exe_id: str) -> str:
    # The admin escapes "_" in object ids (exe_22… would otherwise read as exe_"…): quote like it does.
    return reverse("admin:executors_executor_change", args=[quote(exe_id)])


def claim(exe_id: str) -> None:
    presence_store().claim(exe_id, Holder(channel_name="test.channel!abc", connection_id="conn-1", since=time.time()))


def online_column(html: str) -> dict[str, bool]:
    """exe_id (in full in the id's tooltip) -> the changelist's online icon, row by row."""
    column = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S):
        exe = re.search(r'class="field-executor_id"><a [^>]*><span title="([^"]+)">', row)
        online = re.search(r'class="field-online"><img [^>]*alt="(True|False)"', row)
        if exe and online:
            column[exe.group(1)] = online.group(1) == "True"
    return column


def listed(response: Any) -> set[str]:
    return {executor.exe_id for executor in response.context["cl"].result_list}


def inline_data(executor: Executor, bindings: list[dict[str, str]], initial: int = 0) -> dict[str, str]:
    """A change-form POST for ``executor`` with its bindings inline formset."""
    data = {
        "display_name": executor.display_name,
        "user_id": executor.user_id,
        "bindings-TOTAL_FORMS": str(len(bindings)),
        "bindings-INITIAL_FORMS": str(initial),
        "bindings-MIN_NUM_FORMS": "0",
        "bindings-MAX_NUM_FORMS": "1000",
    }
    for index, binding in enumerate(bindings):
        data.update({f"bindings-{index}-{key}": value for key, value in binding.items()})
    return data


@pytest.fixture
def alpha() -> Executor:
    return services.register_executor("user-a", "alpha box").executor


@pytest.fixture
def beta() -> Executor:
    return services.register_executor("user-b", "beta box").executor


# --- command helper ------------------------------------------------------------------------


def test_executor_launch_command_is_the_documented_one() -> None:
    launch = executor_launch("exe_1", "f00d", "https://gw.example.com")

    assert launch.command == (
        "AWS_ACCESS_KEY_ID=exe_1 AWS_SECRET_ACCESS_KEY=f00d AWS_REGION=us-east-1 \\\n"
        "  codex exec-server --remote https://gw.example.com --remote-transport direct --aws-sigv4"
        f" --environment-id exe_1 --concurrent-requests {settings.CXG_EXECUTOR_CONCURRENT_REQUESTS}"
    )
    assert launch.env_file == "AWS_ACCESS_KEY_ID=exe_1\nAWS_SECRET_ACCESS_KEY=f00d\nAWS_REGION=us-east-1\n"
    assert launch.exec_command == launch.command.split("\\\n  ", 1)[1]


def test_executor_launch_quotes_shell_metacharacters() -> None:
    launch = executor_launch("exe_1", "t", "https://gw.example.com/a b")

    assert "--remote 'https://gw.example.com/a b' --remote-transport" in launch.command


def test_public_base_url_prefers_the_setting(settings: Any) -> None:
    request = RequestFactory().get("/admin/", secure=True)

    settings.CXG_PUBLIC_HTTPS_BASE_URL = ""
    assert public_base_url(request) == "https://testserver"
    settings.CXG_PUBLIC_HTTPS_BASE_URL = "https://gw.example.com/"
    assert public_base_url(request) == "https://gw.example.com"


# --- executor changelist -------------------------------------------------------------------


def test_changelist_online_column_follows_presence(admin_client: Client, alpha: Executor, beta: Executor) -> None:
    claim(alpha.exe_id)

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    assert online_column(response.content.decode()) == {alpha.exe_id: True, beta.exe_id: False}
    assert "Register executor" in response.content.decode()


def test_changelist_is_narrow_and_shows_what_the_executor_reported(admin_client: Client, alpha: Executor) -> None:
    services.record_environment(alpha.exe_id, {"executorVersion": "0.171.0", "platformOs": "linux"})
    Executor.objects.filter(exe_id=alpha.exe_id).update(last_seen_at=datetime(2026, 12, 6, 19, 1, 30, tzinfo=UTC))

    response = admin_client.get(CHANGELIST)

    html = response.content.decode()
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', html)
    assert headers == ["executor_id", "display_name", "owner", "online", "last_seen", "codex", "platform"]
    row = re.search(r"<tr[^>]*>(.*?)</tr>", html.split("<tbody>", 1)[1], re.S)
    assert row is not None
    fields = re.findall(r'class="field-(\w+)"[^>]*>(.*?)</t[dh]>', row.group(1), re.S)
    cells = {name: re.sub(r"<[^>]+>", "", text).strip() for name, text in fields}
    assert cells["executor_id"] == alpha.exe_id[:12] + "…"
    assert cells["last_seen"] == "2026-12-06 19:01"
    assert (cells["codex"], cells["platform"]) == ("0.171.0", "linux")


def test_changelist_looks_presence_up_once_per_page(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch, alpha: Executor, beta: Executor
) -> None:
    store = presence_store()
    calls: list[list[str]] = []
    real_online = store.online

    def counting_online(exe_ids: Any) -> set[str]:
        ids = list(exe_ids)
        calls.append(ids)
        return real_online(ids)

    def no_single_get(exe_id: str) -> None:
        raise AssertionError(f"per-row presence lookup for {exe_id}")

    monkeypatch.setattr(store, "online", counting_online)
    monkeypatch.setattr(store, "get", no_single_get)

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    assert [sorted(ids) for ids in calls] == [sorted([alpha.exe_id, beta.exe_id])]


def test_online_filter(admin_client: Client, alpha: Executor, beta: Executor) -> None:
    claim(beta.exe_id)

    assert listed(admin_client.get(CHANGELIST, {"online": "yes"})) == {beta.exe_id}
    assert listed(admin_client.get(CHANGELIST, {"online": "no"})) == {alpha.exe_id}
    assert listed(admin_client.get(CHANGELIST)) == {alpha.exe_id, beta.exe_id}


def test_search_by_executor_fields_and_bindings(admin_client: Client, alpha: Executor, beta: Executor) -> None:
    services.bind_executor("ws-search", beta.exe_id, "gpu-runner", "", False)

    assert listed(admin_client.get(CHANGELIST, {"q": "alpha"})) == {alpha.exe_id}
    assert listed(admin_client.get(CHANGELIST, {"q": "user-b"})) == {beta.exe_id}
    assert listed(admin_client.get(CHANGELIST, {"q": alpha.exe_id[-8:]})) == {alpha.exe_id}
    assert listed(admin_client.get(CHANGELIST, {"q": "ws-search"})) == {beta.exe_id}
    assert listed(admin_client.get(CHANGELIST, {"q": "gpu-runner"})) == {beta.exe_id}


# --- executor change form --------------------------------------------------------------------


def test_change_form_hides_token_fields_and_shows_presence(admin_client: Client, alpha: Executor) -> None:
    claim(alpha.exe_id)

    html = admin_client.get(change_url(alpha.exe_id)).content.decode()

    assert alpha.registration_token_hash not in html
    assert alpha.registration_token_encrypted not in html
    assert "registration_token" not in html
    assert re.search(r'class="[^"]*field-online[^"]*".*?alt="True"', html, re.S)
    assert 'name="display_name"' in html
    assert 'name="user_id"' in html
    assert 'name="codex_version"' not in html


def test_change_form_edits_only_the_editable_fields(admin_client: Client, alpha: Executor) -> None:
    data = inline_data(alpha, []) | {"display_name": "renamed", "user_id": "user-z", "codex_version": "9.9.9"}

    response = admin_client.post(change_url(alpha.exe_id), data)

    assert response.status_code == 302
    alpha.refresh_from_db()
    assert (alpha.display_name, alpha.user_id, alpha.codex_version) == ("renamed", "user-z", "")


def test_inline_binds_and_unbinds(admin_client: Client, alpha: Executor) -> None:
    bind = {"workspace_id": "ws-1", "name": "gpu", "description": "the GPU box", "is_default": "on"}

    response = admin_client.post(change_url(alpha.exe_id), inline_data(alpha, [bind]))

    assert response.status_code == 302
    binding = WorkspaceExecutor.objects.get(executor=alpha)
    assert (binding.workspace_id, binding.name, binding.description, binding.is_default) == (
        "ws-1",
        "gpu",
        "the GPU box",
        True,
    )

    unbind = {"id": str(binding.pk), "workspace_id": "ws-1", "name": "gpu", "DELETE": "on"}
    response = admin_client.post(change_url(alpha.exe_id), inline_data(alpha, [unbind], initial=1))

    assert response.status_code == 302
    assert not WorkspaceExecutor.objects.filter(executor=alpha).exists()


def test_inline_name_clash_is_a_form_error(admin_client: Client, alpha: Executor, beta: Executor) -> None:
    services.bind_executor("ws-1", alpha.exe_id, "gpu", "", False)

    response = admin_client.post(
        change_url(beta.exe_id), inline_data(beta, [{"workspace_id": "ws-1", "name": "gpu", "description": ""}])
    )

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert "already exists" in str(formset.errors)
    assert not WorkspaceExecutor.objects.filter(executor=beta).exists()


def test_deleting_an_executor_deletes_its_bindings(admin_client: Client, alpha: Executor, beta: Executor) -> None:
    services.bind_executor("ws-1", alpha.exe_id, "a", "", False)
    services.bind_executor("ws-2", alpha.exe_id, "a", "", False)
    kept = services.bind_executor("ws-1", beta.exe_id, "b", "", False)

    response = admin_client.post(
        reverse("admin:executors_executor_delete", args=[quote(alpha.exe_id)]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not Executor.objects.filter(exe_id=alpha.exe_id).exists()
    assert list(WorkspaceExecutor.objects.all()) == [kept]


# --- registration ----------------------------------------------------------------------------


def test_register_shows_token_and_command_once(admin_client: Client, settings: Any) -> None:
    settings.CXG_PUBLIC_HTTPS_BASE_URL = ""

    response = admin_client.post(REGISTER, {"user_id": "user-r", "display_name": "new box"})

    assert response.status_code == 200
    assert "no-store" in [part.strip() for part in response["Cache-Control"].split(",")]
    executor = Executor.objects.get(user_id="user-r")
    assert executor.display_name == "new box"
    token = response.context["token"]
    assert services.check_registration_token(executor.exe_id, token)
    assert services.registration_secret(executor.exe_id) == token
    html = response.content.decode()
    command = (
        f"AWS_ACCESS_KEY_ID={executor.exe_id} AWS_SECRET_ACCESS_KEY={token} AWS_REGION=us-east-1 \\\n"
        f"  codex exec-server --remote http://testserver --remote-transport direct --aws-sigv4"
        f" --environment-id {executor.exe_id} --concurrent-requests {settings.CXG_EXECUTOR_CONCURRENT_REQUESTS}"
    )
    assert escape(command) in html
    assert "shell history" in html
    assert not WorkspaceExecutor.objects.filter(executor=executor).exists()


def test_register_uses_the_configured_public_base(admin_client: Client, settings: Any) -> None:
    settings.CXG_PUBLIC_HTTPS_BASE_URL = "https://gw.example.com/"

    response = admin_client.post(REGISTER, {"user_id": "user-r"})

    assert response.status_code == 200
    assert "--remote https://gw.example.com --remote-transport direct" in response.content.decode()


def test_token_is_never_shown_again(admin_client: Client) -> None:
    response = admin_client.post(REGISTER, {"user_id": "user-r", "workspace_id": "ws-1", "binding_name": "box"})
    token = response.context["token"]
    exe_id = Executor.objects.get(user_id="user-r").exe_id
    assert token in response.content.decode()

    pages = [
        reverse("admin:index"),
        CHANGELIST,
        change_url(exe_id),
        reverse("admin:executors_executor_history", args=[quote(exe_id)]),
        REGISTER,
        BINDINGS,
    ]
    for page in pages:
        again = admin_client.get(page)
        assert again.status_code == 200, page
        assert token not in again.content.decode(), page
    assert all(token not in str(value) for value in admin_client.session.values())
    assert all(token not in entry.change_message for entry in LogEntry.objects.all())


def test_register_and_bind_at_once(admin_client: Client) -> None:
    response = admin_client.post(
        REGISTER,
        {"user_id": "user-r", "workspace_id": "ws-1", "binding_name": "box", "description": "d", "is_default": "on"},
    )

    assert response.status_code == 200
    binding = WorkspaceExecutor.objects.get(workspace_id="ws-1")
    assert (binding.executor.user_id, binding.name, binding.description, binding.is_default) == (
        "user-r",
        "box",
        "d",
        True,
    )
    entry = LogEntry.objects.get(object_id=binding.executor_id)
    assert "ws-1/box" in entry.get_change_message()


def test_register_binding_name_clash_rolls_back(admin_client: Client, alpha: Executor) -> None:
    services.bind_executor("ws-1", alpha.exe_id, "box", "", False)

    response = admin_client.post(REGISTER, {"user_id": "user-r", "workspace_id": "ws-1", "binding_name": "box"})

    assert response.status_code == 200
    assert "already taken" in str(response.context["adminform"].form.errors["binding_name"])
    assert "token" not in response.context
    assert not Executor.objects.filter(user_id="user-r").exists()


def test_register_requires_a_name_with_a_workspace(admin_client: Client) -> None:
    response = admin_client.post(REGISTER, {"user_id": "user-r", "workspace_id": "ws-1"})

    assert response.status_code == 200
    assert response.context["adminform"].form.errors.keys() == {"binding_name"}
    assert not Executor.objects.exists()


def test_register_form_renders(admin_client: Client) -> None:
    response = admin_client.get(REGISTER)

    assert response.status_code == 200
    html = response.content.decode()
    for field in ("user_id", "display_name", "workspace_id", "binding_name", "description", "is_default"):
        assert f'name="{field}"' in html
    assert not Executor.objects.exists()


def test_register_pages_tell_how_to_install_the_pinned_codex(admin_client: Client) -> None:
    pinned = json.loads((settings.BASE_DIR / "package.json").read_text())["dependencies"]["@openai/codex"]
    hint = f"<code>npm install -g @openai/codex@{pinned}</code>"

    form = admin_client.get(REGISTER).content.decode()
    registered = admin_client.post(REGISTER, {"user_id": "user-r"}).content.decode()

    for html in (form, registered):
        assert hint in html
        assert "Node.js 18 or newer" in html
        assert "standalone <code>codex</code> binary" in html


def test_install_hint_without_a_package_json_names_no_version(settings: Any, tmp_path: Any) -> None:
    settings.BASE_DIR = tmp_path

    assert codex_install_command() == "npm install -g @openai/codex"


@pytest.fixture
def viewer(django_user_model: Any) -> Client:
    """A staff user who may look at executors but not register them."""
    user = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_executor"))
    client = Client()
    client.force_login(user)
    return client


def test_register_needs_add_permission(viewer: Client) -> None:
    assert viewer.get(CHANGELIST).status_code == 200
    assert "Register executor" not in viewer.get(CHANGELIST).content.decode()
    assert viewer.get(REGISTER).status_code == 403
    assert viewer.post(REGISTER, {"user_id": "user-r"}).status_code == 403
    assert not Executor.objects.exists()


# --- workspace bindings admin ------------------------------------------------------------------


def test_binding_add_and_delete(admin_client: Client, alpha: Executor) -> None:
    data = {"workspace_id": "ws-1", "name": "box", "executor": alpha.exe_id, "description": ""}

    response = admin_client.post(BINDING_ADD, data)

    assert response.status_code == 302
    binding = WorkspaceExecutor.objects.get(workspace_id="ws-1", name="box")
    assert binding.executor_id == alpha.exe_id

    delete_url = reverse("admin:executors_workspaceexecutor_delete", args=[binding.pk])
    response = admin_client.post(delete_url, {"post": "yes"})

    assert response.status_code == 302
    assert not WorkspaceExecutor.objects.exists()
    assert Executor.objects.filter(exe_id=alpha.exe_id).exists()


def test_binding_name_clash_is_a_form_error(admin_client: Client, alpha: Executor, beta: Executor) -> None:
    services.bind_executor("ws-1", alpha.exe_id, "box", "", False)

    response = admin_client.post(
        BINDING_ADD, {"workspace_id": "ws-1", "name": "box", "executor": beta.exe_id, "description": ""}
    )

    assert response.status_code == 200
    assert "already exists" in str(response.context["adminform"].form.non_field_errors())
    assert WorkspaceExecutor.objects.count() == 1


def test_binding_list_search_and_filter(admin_client: Client, alpha: Executor, beta: Executor) -> None:
    a = services.bind_executor("ws-1", alpha.exe_id, "box", "", False)
    b = services.bind_executor("ws-2", beta.exe_id, "gpu", "", False)

    def bindings(query: dict[str, str]) -> set[int]:
        response = admin_client.get(BINDINGS, query)
        assert response.status_code == 200
        return {binding.pk for binding in response.context["cl"].result_list}

    assert bindings({}) == {a.pk, b.pk}
    assert bindings({"q": "gpu"}) == {b.pk}
    assert bindings({"q": "beta"}) == {b.pk}
    assert bindings({"workspace_id": "ws-1"}) == {a.pk}
    assert bindings({"name": "gpu"}) == {b.pk}
    assert bindings({"executor__exe_id__exact": alpha.exe_id}) == {a.pk}


def test_binding_form_offers_no_popup_registration(admin_client: Client, alpha: Executor) -> None:
    html = admin_client.get(BINDING_ADD).content.decode()

    assert 'name="executor"' in html
    assert 'id="add_id_executor"' not in html


@pytest.mark.parametrize("exe_id", ["exe_22ab", "exe_26cd", "exe_40ef"])
def test_change_page_links_work_for_ids_the_admin_must_escape(admin_client: Client, exe_id: str) -> None:
    # "_22", "_26", "_40" are the admin's own escapes; its links must quote exe ids that contain them.
    Executor.objects.create(exe_id=exe_id, user_id="u", registration_token_hash="x", registration_token_encrypted="x")
    changelist = admin_client.get(CHANGELIST).content.decode()
    assert change_url(exe_id) in changelist
    assert admin_client.get(change_url(exe_id)).status_code == 200
