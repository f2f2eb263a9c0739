"""The dashboard in a real headless browser during a running job (issue 14, done-when).

Key authority, server (with its dashboard) and three clients run as processes on loopback;
Debian's chromium, driven by selenium through the system chromedriver (nothing is
downloaded), loads the page as the admin while rounds run, finds every device and a
round's per-step overhead bars, and saves the screenshot the README shows.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedhe_cli.cluster import ClientSpec, LocalCluster
from tests.e2e.helpers import free_port, job_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
SNAPSHOT = """
const q = (sel) => Array.from(document.querySelectorAll(sel));
const job = document.querySelector("tr[data-job=dash]");
return {
  devices: q("tr[data-device]").map((r) => ({id: r.dataset.device, online: r.dataset.online,
                                             cpu: r.dataset.cpuPercent})),
  bars: q("#overhead g[data-overhead-client]").map((g) => ({client: g.dataset.overheadClient,
    steps: Array.from(g.querySelectorAll("rect[data-step]")).map(
      (r) => [r.dataset.step, r.dataset.seconds])})),
  points: q("svg[data-chart=accuracy] circle").length,
  overhead_round: document.getElementById("overhead").dataset.round,
  job_state: job ? job.dataset.state : null,
  status: document.getElementById("status").dataset.state,
};
"""
STEPS = {"train_s", "encrypt_s", "upload_s", "aggregate_s", "download_s", "decrypt_s"}


class DashboardCluster(LocalCluster):
    """A loopback federation whose server also serves the dashboard on ``port``."""

    def __init__(self, workdir: Path, clients: list[ClientSpec], port: int) -> None:
        super().__init__(workdir, clients)
        self.dashboard_port = port

    def _write(self, name: str, doc: dict[str, object]) -> Path:
        if name == "server":
            doc = {**doc, "dashboard": {"listen": f"127.0.0.1:{self.dashboard_port}",
                                        "poll_interval_s": 1.0}}  # fmt: skip
        return super()._write(name, doc)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium "
                    "chromium-driver)")  # fmt: skip
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium manager must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,960", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_shows_devices_and_overheads_during_a_job(
    tmp_path: Path, browser: Any
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    specs = [ClientSpec(f"site-{i}", i, 3) for i in range(3)]
    port = free_port()
    with DashboardCluster(tmp_path, specs, port) as cluster:
        cluster.start_keyauth()
        cluster.start_server(
            job_yaml("dash", rounds=40, min_clients=3, heartbeat_interval_s=1.0)
        )
        cluster.start_clients()
        url = f"http://127.0.0.1:{port}/"
        assert f"dashboard: {url}" in cluster.log_tail("server", 200)
        browser.get(url)  # no credentials yet: the server refuses the page
        assert "FedHE dashboard" not in browser.page_source
        browser.execute_cdp_cmd("Network.enable", {})
        token = cluster.tokens["admin"]
        browser.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {token}"}}
        )
        browser.get(url)

        def ready(driver: Any) -> dict[str, Any] | None:
            # One script reads the whole DOM state: the page redraws every poll.
            snap: dict[str, Any] = driver.execute_script(SNAPSHOT)
            devices, bars = snap["devices"], snap["bars"]
            loaded = len(devices) == 3 and all(d["online"] == "true" for d in devices)
            loaded = loaded and all(d["cpu"] for d in devices)
            return snap if loaded and len(bars) == 3 and snap["points"] >= 2 else None

        try:
            snap = WebDriverWait(browser, 180, poll_frequency=0.5).until(ready)
        except Exception:
            print(browser.page_source[-3000:], cluster.log_tail("server"))
            raise
        assert snap["job_state"] == "RUNNING"  # loaded during the job
        assert snap["status"] == "ok"
        assert sorted(d["id"] for d in snap["devices"]) == ["site-0", "site-1", "site-2"]
        assert all(0 <= float(d["cpu"]) <= 100 for d in snap["devices"])
        assert int(snap["overhead_round"]) >= 1
        for bar in snap["bars"]:
            steps = {step: float(seconds) for step, seconds in bar["steps"]}
            assert set(steps) == STEPS
            assert steps["train_s"] > 0 and steps["decrypt_s"] > 0  # measured, not zeros
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
