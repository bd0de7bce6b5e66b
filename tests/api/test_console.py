"""The web console (/ui), end to end in headless Chromium (Debian's, driven by
Playwright; no browser is downloaded) against a real server with the tiny
models. Screenshots go to test-artifacts/console/."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, start_server, stop_server
from tests.fake_hub import FakeHub
from tests.helpers import wait_until
from tests.cluster.test_cluster import cluster_env

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "console"
USER, ADMIN = "console-user-key", "console-admin-key"

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (make install-browser installs it as root)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (requirements-dev.txt)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def hub(model_dir):
    """A local Hugging Face, slow enough that a pull's bar is seen moving."""
    hub = FakeHub(repos={"org/console-GGUF": {
        "console-Q4_K_M.gguf": (model_dir / "tiny-chat.gguf").read_bytes()}},
        bytes_per_second=150_000).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir, tiny_model, hub):
    tmp = tmp_path_factory.mktemp("console")
    models = tmp / "models"
    models.mkdir()
    for name in ("tiny-chat", "tiny-base"):
        (models / f"{name}.gguf").write_bytes((model_dir / f"{name}.gguf").read_bytes())
    (models / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    srv = start_server(tmp, {"DEFAULT_MODEL": "tiny-chat", "MODEL_BASE_PATH": str(models),
                             "CONTEXT_SIZE": "512", "MAX_CONCURRENT_MODELS": "2",
                             "API_KEYS": USER, "ADMIN_API_KEY": ADMIN,
                             "ALLOW_MODEL_DOWNLOADS": "true", "HF_ENDPOINT": hub.url})
    srv.models = models
    yield srv
    stop_server(srv)


def open_console(browser, url: str, key: str | None = ADMIN, hash_: str = ""):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    if key:
        context.add_init_script(f"localStorage.setItem('vo-key', {key!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/ui/{hash_}")
    return page, errors


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def model_state(page, scope: str, model: str, state: str):
    return page.locator(f'{scope} [data-model="{model}"] .state[data-state="{state}"]')


def test_root_leads_to_the_console_which_asks_for_the_key(browser, server):
    page, errors = open_console(browser, server.url, key=None)
    page.goto(f"{server.url}/")
    assert page.url == f"{server.url}/ui/"
    dialog = page.locator("#key-dialog")
    dialog.wait_for(state="visible", timeout=10_000)
    shot(page, "key-prompt")
    page.fill("#key-input", USER)
    page.click("#key-save")
    model_state(page, "#ov-models", "tiny-chat", "ready").wait_for(timeout=10_000)
    assert not errors
    page.context.close()


def test_overview_shows_the_model_ready_and_live_charts(browser, server):
    page, errors = open_console(browser, server.url)
    model_state(page, "#ov-models", "tiny-chat", "ready").wait_for(timeout=10_000)
    assert "llama_cpp" in page.text_content("#ov-platform")
    faces = page.locator("#ov-faces .face")  # the three protocol faces, each at its URL
    faces.nth(2).wait_for(timeout=10_000)
    assert [faces.nth(i).get_attribute("data-face") for i in range(faces.count())] == \
        ["OpenAI", "Anthropic", "Ollama"]
    assert f"{server.url}/api" in page.text_content("#ov-faces")
    chart = page.locator("#chart-tokens")
    wait_until(lambda: int(chart.get_attribute("data-points") or 0) >= 2, 15, "two chart points")
    for _ in range(3):  # some traffic, for the charts to show
        requests.post(f"{server.url}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {USER}"},
                      json={"model": "tiny-chat", "max_tokens": 30,
                            "messages": [{"role": "user", "content": "hi"}]})
    before = int(chart.get_attribute("data-points"))
    wait_until(lambda: int(chart.get_attribute("data-points")) > before + 1, 15, "the chart updates")
    # the traffic shows: a generation rate, and a TTFT and latency, measured over the polls
    wait_until(lambda: float(chart.get_attribute("data-max")) > 0, 10, "tokens/s above zero")
    wait_until(lambda: float(page.locator("#chart-latency").get_attribute("data-max")) > 0, 10,
             "a latency")
    assert page.locator("#chart-latency canvas").count() == 1
    shot(page, "overview")
    assert not errors
    page.context.close()


def test_models_are_loaded_and_unloaded_from_the_page(browser, server):
    page, errors = open_console(browser, server.url, hash_="#models")
    row = '#models-table tr[data-model="tiny-base"]'
    page.locator(f"{row} .state[data-state='unloaded']").wait_for(timeout=10_000)
    assert "KB" in page.text_content(f"{row} td:nth-child(7)")  # its size
    assert page.text_content(f"{row} td:nth-child(4)") == "llama"  # read from the file
    page.click(f"{row} button.load")
    page.locator(f"{row} .state[data-state='ready']").wait_for(timeout=30_000)
    status = requests.get(f"{server.url}/v1/models/tiny-base/status", timeout=5,
                          headers={"Authorization": f"Bearer {USER}"}).json()
    assert status["state"] == "ready"
    # MAX_BATCH_SIZE left at auto: the sequences chosen at load, and how
    runtime = status["runtime"]
    assert runtime["batch_plan"].startswith(f"auto: {runtime['parallel_sequences']} sequences")
    assert page.text_content(f"{row} td:nth-child(9)") == \
        f"{runtime['parallel_sequences']} (auto)"
    assert page.get_attribute(f"{row} td:nth-child(9)", "title") == runtime["batch_plan"]
    shot(page, "models-loaded")
    page.click(f"{row} button.unload")
    page.locator(f"{row} .state[data-state='unloaded']").wait_for(timeout=30_000)
    broken = '#models-table tr[data-model="broken"]'
    page.click(f"{broken} button.load")
    page.locator(f"{broken} .state[data-state='error']").wait_for(timeout=30_000)
    assert page.text_content(f"{broken} .error")  # the load's own error text
    shot(page, "models-error")
    assert not errors
    page.context.close()


def test_a_model_is_added_from_the_page_and_its_bar_reaches_100(browser, server):
    page, errors = open_console(browser, server.url, hash_="#models")
    page.fill("#pull-repo", "org/no-such-repo")
    page.click("#pull-start")
    page.locator("#notice").wait_for(state="visible", timeout=10_000)
    assert "no repository 'org/no-such-repo'" in page.text_content("#notice")
    page.fill("#pull-repo", "org/console-GGUF")
    page.fill("#pull-file", "Q4_K_M")
    page.click("#pull-start")
    row = '#pulls-table tr[data-pull="console-Q4_K_M"]'
    page.locator(f'{row}[data-status="downloading"]').wait_for(timeout=10_000)
    assert page.locator(f"{row} button.cancel").is_visible()
    shot(page, "models-pulling")
    page.locator(f'{row}[data-status="success"] progress[data-percent="100"]').wait_for(
        timeout=30_000)
    assert (server.models / "console-Q4_K_M.gguf").is_file()
    model = '#models-table tr[data-model="console-Q4_K_M"]'
    page.locator(f"{model} .state[data-state='unloaded']").wait_for(timeout=10_000)
    assert page.text_content(f"{model} td:nth-child(4)") == "llama"
    assert "chat" in page.text_content(f"{model} td:nth-child(10)")
    shot(page, "models-pulled")
    assert not errors
    page.context.close()


def test_a_user_key_cannot_load_and_is_told_so(browser, server):
    page, _ = open_console(browser, server.url, key=USER, hash_="#models")
    row = '#models-table tr[data-model="tiny-base"]'
    page.locator(f"{row} .state[data-state='unloaded']").wait_for(timeout=10_000)
    page.click(f"{row} button.load")
    page.locator("#notice").wait_for(state="visible", timeout=10_000)
    assert "ADMIN_API_KEY" in page.text_content("#notice")
    page.context.close()


def test_the_playground_streams_a_reply(browser, server):
    page, errors = open_console(browser, server.url, hash_="#playground")
    page.locator('#pg-model option[value="tiny-chat"]').wait_for(state="attached", timeout=10_000)
    page.select_option("#pg-model", "tiny-chat")
    page.fill("#pg-max-tokens", "60")
    page.fill("#pg-system", "You are terse.")
    page.evaluate("""() => {
        window.replyUpdates = 0;
        new MutationObserver((records) => { window.replyUpdates += records.length; })
            .observe(document.getElementById('pg-messages'),
                     {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#pg-input", "Tell me something.")
    page.click("#pg-send")
    page.wait_for_function("document.getElementById('pg-stats').textContent.includes('token/s')",
                           timeout=30_000)
    reply = page.locator("#pg-messages .msg.assistant").last
    assert reply.text_content() and "error" not in (reply.get_attribute("class") or "")
    assert page.evaluate("window.replyUpdates") > 10  # chunk by chunk, not at once
    stats = page.text_content("#pg-stats")
    assert re.search(r"\b60\b", stats) and "token/s" in stats  # usage: 60 completion tokens
    curl = page.text_content("#snippet-curl")
    assert f"{server.url}/v1/chat/completions" in curl and '"tiny-chat"' in curl
    assert "You are terse." in page.text_content("#snippet-python")
    shot(page, "playground")
    assert not errors
    page.context.close()


def test_the_playground_folds_the_thinking(browser, scripted_server):
    from tests.scripted_model import THINK_ANSWER, THINK_REASONING

    page, errors = open_console(browser, scripted_server.url, key=None, hash_="#playground")
    page.locator('#pg-model option[value="scripted-think"]').wait_for(state="attached",
                                                                       timeout=10_000)
    page.select_option("#pg-model", "scripted-think")
    page.fill("#pg-input", "What is 17 × 23?")
    page.click("#pg-send")
    page.wait_for_function("document.getElementById('pg-stats').textContent.includes('token/s')",
                           timeout=30_000)
    reply = page.locator("#pg-messages .msg.assistant").last
    assert reply.get_attribute("data-reasoning-chars") == str(len(THINK_REASONING))
    thinking = reply.locator("details.thinking")
    assert thinking.is_visible() and thinking.get_attribute("open") is None  # folded
    assert not reply.locator(".thinking-text").is_visible()
    assert reply.locator(".answer").text_content() == THINK_ANSWER
    reply.locator("details.thinking summary").click()
    assert reply.locator(".thinking-text").text_content() == THINK_REASONING
    shot(page, "playground-thinking")
    assert not errors
    page.context.close()


def test_logs_filter_by_request_id_and_the_english_toggle(browser, server):
    requests.get(f"{server.url}/v1/models", timeout=5,
                 headers={"Authorization": f"Bearer {USER}", "X-Request-ID": "console-log-0001"})
    page, errors = open_console(browser, server.url, hash_="#logs")
    page.select_option("#log-file", "api_requests.log")
    page.fill("#log-request-id", "console-log-0001")
    page.click("#log-refresh")
    # the page loaded the unfiltered lines first: wait for the table to show this query
    page.locator('#logs-table[data-file="api_requests.log"][data-request-id="console-log-0001"]'
                 ).wait_for(timeout=10_000)
    rows = page.locator("#logs-table tbody tr")
    assert rows.count() >= 1
    assert all("console-log-0001" in rows.nth(i).text_content() for i in range(rows.count()))
    shot(page, "logs")
    page.click("#lang-button")
    assert page.text_content('#tabs a[data-tab="models"]') == "Models"
    assert page.text_content("#lang-button") == "中文"
    assert not errors
    page.context.close()


def test_the_cluster_page_in_load_balanced_mode(browser, tmp_path, model_dir, tiny_model):
    lb = start_server(tmp_path, cluster_env(model_dir, CLUSTER_INSTANCES="1",
                                            HEALTH_CHECK_INTERVAL="5"))
    try:
        page, errors = open_console(browser, lb.url, hash_="#cluster")
        tab = page.locator('#tabs a[data-tab="cluster"]')
        tab.wait_for(state="visible", timeout=10_000)
        row = '#cluster-table tr[data-instance="instance_0"]'
        page.locator(f"{row} .state[data-state='healthy']").wait_for(timeout=30_000)
        page.select_option("#cl-strategy", "least_connections")
        page.click("#cl-apply")
        wait_until(lambda: requests.get(f"{lb.url}/v1/cluster/status", timeout=5).json()
                 ["load_balancer_strategy"] == "least_connections", 10, "strategy switched")
        chart = page.locator("#chart-tokens")  # polled whichever page is open
        wait_until(lambda: int(chart.get_attribute("data-points") or 0) >= 2, 15, "two points")
        for _ in range(3):
            assert requests.post(f"{lb.url}/v1/chat/completions", timeout=60, json={
                "model": "tiny-chat", "max_tokens": 30,
                "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        # the open cluster page is read again: the instance's request count moves by itself
        requests_cell = page.locator(f"{row} td:nth-child(5)")
        wait_until(lambda: int(requests_cell.text_content()) >= 3, 15, "the table refreshed")
        shot(page, "cluster")
        # the overview adds up the instances' figures: the traffic shows as tokens/s
        page.click('#tabs a[data-tab="overview"]')
        model_state(page, "#ov-models", "tiny-chat", "ready").wait_for(timeout=10_000)
        wait_until(lambda: float(chart.get_attribute("data-max")) > 0, 10, "tokens/s above zero")
        shot(page, "cluster-overview")
        assert not errors
        page.context.close()
    finally:
        stop_server(lb)


def test_console_files_are_served_without_a_key(server):
    for path in ("/ui/", "/ui/static/console.js", "/ui/static/vendor/uplot-1.6.32/uPlot.iife.min.js"):
        assert requests.get(f"{server.url}{path}", timeout=5).status_code == 200, path
    assert requests.get(f"{server.url}/v1/system/status", timeout=5).status_code == 401
    assert os.path.getsize(ROOT / "src/api/console/static/vendor/uplot-1.6.32/LICENSE") > 0
