"""The console's pages without a browser: HTML shells that hold no data and no key, the
Content-Security-Policy on every one, assets from the package, MLflow links without credentials.
The browser tests are in test_console.py."""

from __future__ import annotations

import re

import pytest

from detrforge.api.console import CONSOLE_PATH, CONTENT_SECURITY_POLICY
from detrforge.api.console.pages import PAGES
from detrforge.platform.settings import Settings
from detrforge.registry.entities import Role
from fixtures_cluster import ApiHarness

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
_ASSET = re.compile(r'(?:src|href)="(/console/static/[^"?]+)')


def _page_path(path: str) -> str:
    return CONSOLE_PATH + re.sub(r"\{[^}]+\}", "shelf-detector", path)


def test_every_page_is_a_shell_with_a_strict_policy_and_packaged_assets(
    offline_api: ApiHarness,
) -> None:
    client = offline_api.client
    home = client.get("/", follow_redirects=False)
    assert (home.status_code, home.headers["location"]) == (307, "/console/")
    assets: set[str] = set()
    for page in PAGES:
        response = client.get(_page_path(page.path))
        assert response.status_code == 200, page.path
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        html = response.text
        assert not _INLINE_SCRIPT.search(html), page.path
        assert not re.search(r"\son[a-z]+=", html), f"{page.path}: an inline event handler"
        assert "http://" not in html and "https://" not in html, page.path
        assets.update(_ASSET.findall(html))
    assert f"{CONSOLE_PATH}/static/console.css" in assets
    assert {f"{CONSOLE_PATH}/static/pages/{page.script}.js" for page in PAGES} <= assets
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    script = client.get(f"{CONSOLE_PATH}/static/console.js")
    assert "javascript" in script.headers["content-type"]
    # The client builds text nodes: no API string is ever parsed as markup.
    scripts = [client.get(a).text for a in assets if a.endswith(".js")]
    scripts.append(script.text)
    assert not any(
        re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", s) for s in scripts
    )
    assert all("localStorage" not in s for s in scripts)  # the key lives in sessionStorage only


def test_a_page_for_a_malformed_id_is_404_and_the_id_is_escaped(offline_api: ApiHarness) -> None:
    missing = offline_api.client.get(f"{CONSOLE_PATH}/models/%3Cscript%3E")
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    page = offline_api.client.get(f"{CONSOLE_PATH}/jobs/ft-1.a_b:c")
    assert page.status_code == 200 and 'data-resource="ft-1.a_b:c"' in page.text
    api = offline_api.client.get("/api/v1/models", headers=offline_api.headers(Role.viewer))
    assert "content-security-policy" not in api.headers  # the policy is the console's


@pytest.mark.parametrize(
    ("given", "linked"),
    [
        (
            {"mlflow_ui_url": "https://user:secret@mlflow.example/base/"},
            "https://mlflow.example/base",
        ),
        ({"mlflow_tracking_uri": "http://tok@mlflow:5000"}, "http://mlflow:5000"),
        ({"mlflow_tracking_uri": "sqlite:////tmp/mlflow.db"}, None),
        ({"mlflow_ui_url": "javascript:alert(1)"}, None),
    ],
)
def test_mlflow_links_go_to_an_http_ui_without_credentials(
    given: dict[str, str], linked: str | None
) -> None:
    assert Settings(**given).resolved_mlflow_ui_url() == linked  # type: ignore[arg-type]
