"""The dashboard in a real browser: Debian's Chromium, driven through
chromedriver (WebDriver) against the test's own coordinator on loopback.

A viewer logs in and sees the agents, the jobs, a job's progress bar move
without a reload, and why a job waits; it finds no cancel button. The admin
logs in and cancels a job. A job's page lists its tasks: a failed one with
its error (a viewer has no retry button; the admin retries the job, which
fails again), and a replicated one's votes, the lying agent's outvoted. The
modules, workflows and schedules pages show a viewer no button; the admin
pauses and resumes a schedule and deletes a module.
Screenshots go to target/dashboard-screenshots.

TLS: Chromium is told to accept exactly the coordinator's server key
(`--ignore-certificate-errors-spki-list` with its SubjectPublicKeyInfo
hash), in a throw-away profile: any other certificate error still fails,
and nothing is added to a trust store that outlives the test."""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple
from urllib.parse import urlparse

import pytest
import requests

from conftest import ROOT, start_agent, stop

# Never let Selenium Manager look for drivers or report usage: the driver
# is Debian's, named below.
os.environ["SE_AVOID_STATS"] = "true"

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "target" / "dashboard-screenshots"


def _der_element(der: bytes, at: int) -> Tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at `at`."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[at : at + n], "big")
        at += n
    return tag, at, at + length


def spki_sha256(cert_der: bytes) -> str:
    """Base64 SHA-256 of a certificate's SubjectPublicKeyInfo, as Chromium's
    --ignore-certificate-errors-spki-list wants it."""
    _, tbs_at, _ = _der_element(cert_der, 0)  # Certificate
    _, at, _ = _der_element(cert_der, tbs_at)  # tbsCertificate
    fields = []
    while len(fields) < 7:
        tag, start, end = _der_element(cert_der, at)
        fields.append((tag, at, end))
        at = end
    # [0] version, serial, signature, issuer, validity, subject, SPKI
    if fields[0][0] != 0xA0:
        raise ValueError("not an X.509 v3 certificate")
    _, spki_start, spki_end = fields[6]
    return base64.b64encode(hashlib.sha256(cert_der[spki_start:spki_end]).digest()).decode()


def wait_until(what: str, check: Callable[[], object], seconds: float = 60) -> object:
    end = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def browser(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    for path in (CHROMEDRIVER, CHROMIUM):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: install Debian's chromium and chromium-driver (scripts/test does)")
    url = urlparse((data_dir / "url").read_text().strip())
    assert url.hostname in ("127.0.0.1", "localhost"), url
    leaf = ssl.get_server_certificate((url.hostname, url.port))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the test command runs as root, where the sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        f"--ignore-certificate-errors-spki-list={spki_sha256(ssl.PEM_cert_to_DER_cert(leaf))}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: webdriver.Chrome, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


class Api:
    """The admin's API, for setting the scene."""

    def __init__(self, data_dir: Path):
        self.url = (data_dir / "url").read_text().strip()
        self.s = requests.Session()
        # Per request: a session's `verify` loses to REQUESTS_CA_BUNDLE.
        self.ca = str(data_dir / "ca.pem")
        self.s.headers["Authorization"] = "Bearer " + (data_dir / "admin.token").read_text().strip()

    def post(self, path: str, body: object) -> dict:
        r = self.s.post(self.url + path, json=body, timeout=30, verify=self.ca)
        assert r.status_code == 201, r.text
        return r.json()

    def upload(self, path: str, body: bytes, content_type: str) -> dict:
        r = self.s.post(
            self.url + path, data=body, headers={"Content-Type": content_type}, timeout=30, verify=self.ca
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    def get(self, path: str) -> dict:
        r = self.s.get(self.url + path, timeout=30, verify=self.ca)
        assert r.status_code == 200, r.text
        return r.json()


def login(driver: webdriver.Chrome, base: str, token: str) -> None:
    driver.get(base + "/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    wait_until("the dashboard after login", lambda: driver.find_elements(By.ID, "tab-overview"))
    settled("live data", lambda: driver.find_element(By.ID, "live").text == "live")


def relogin(driver: webdriver.Chrome, base: str, token: str) -> None:
    """Logs in afresh, whoever was logged in before."""
    driver.get(base + "/")
    driver.delete_all_cookies()
    login(driver, base, token)


def settled(what: str, read: Callable[[], object], seconds: float = 60) -> object:
    """What `read` returns once it is truthy, read again whenever the page
    redrew under it (it redraws every second) or the element is not there yet."""

    def attempt() -> object:
        try:
            return read()
        except (StaleElementReferenceException, NoSuchElementException):
            return None

    return wait_until(what, attempt, seconds)


def click(driver: webdriver.Chrome, element_id: str) -> None:
    """Clicks the element once it is there; the page redraws every second,
    so an element found just before a redraw is found again."""

    def attempt() -> bool:
        try:
            found = driver.find_elements(By.ID, element_id)
            if found:
                found[0].click()
                return True
        except StaleElementReferenceException:
            pass
        return False

    wait_until(f"a click on #{element_id}", attempt)


def _section(kind: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([kind, len(body)]) + body


def _name(s: str) -> bytes:
    return bytes([len(s)]) + s.encode()


def trapping_module() -> bytes:
    """The smallest WebAssembly kernel of ABI version 1 (memory,
    musketeer_alloc, musketeer_map), whose map traps: every task of it fails
    on the agent, with the trap as its error."""
    types = bytes([2, 0x60, 1, 0x7F, 1, 0x7F, 0x60, 2, 0x7F, 0x7F, 1, 0x7E])
    exports = (
        bytes([3])
        + _name("memory") + bytes([2, 0])
        + _name("musketeer_alloc") + bytes([0, 0])
        + _name("musketeer_map") + bytes([0, 1])
    )
    # alloc: i32.const 1024; map: unreachable.
    code = bytes([2, 5, 0, 0x41, 0x80, 0x08, 0x0B, 3, 0, 0x00, 0x0B])
    return (
        b"\0asm" + bytes([1, 0, 0, 0])
        + _section(1, types)
        + _section(3, bytes([2, 0, 1]))
        + _section(5, bytes([1, 0, 1]))
        + _section(7, exports)
        + _section(10, code)
    )


def wait_for_state(api: Api, job: str, state: str, seconds: float = 120) -> None:
    wait_until(f"job {job} {state}", lambda: api.get("/v1/jobs/" + job)["state"] == state, seconds)


def progress_of(driver: webdriver.Chrome) -> int:
    """The job page's progress bar, -1 before it is drawn; read again when
    the page redrew under the read (it redraws every second)."""
    while True:
        try:
            bars = driver.find_elements(By.CSS_SELECTOR, "#job-view .progress")
            return int(bars[0].get_attribute("aria-valuenow")) if bars else -1
        except StaleElementReferenceException:
            continue


def test_viewer_and_admin_in_a_browser(
    data_dir: Path, browser: webdriver.Chrome, tmp_path_factory: pytest.TempPathFactory
) -> None:
    api = Api(data_dir)
    base = api.url
    viewer = api.post("/v1/tokens", {"role": "viewer"})["token"]
    # A job no agent can take, and one for a queue no agent serves yet.
    stuck = api.post("/v1/jobs", {"kernel": "factorial", "n": 2000, "labels": {"gpu": "yes"}})["id"]
    later = api.post(
        "/v1/jobs",
        {"kernel": "fibonacci", "range": {"start": 0, "end": 3000}, "items_per_task": 10, "queue": "browser"},
    )
    total = later["tasks"]
    assert total == 300

    # The viewer: agents, jobs, and the waiting job's reason.
    login(browser, base, viewer)
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-role") == "viewer"
    browser.get(base + "/#/agents")
    wait_until("an agent row", lambda: browser.find_elements(By.CSS_SELECTOR, "#agents-table .agent-row"))
    assert not browser.find_elements(By.CSS_SELECTOR, "#agents-table button"), "a viewer sees no drain or remove"
    shot(browser, "viewer-agents")
    browser.get(base + "/#/jobs")
    wait_until("the jobs list", lambda: browser.find_elements(By.ID, "job-" + stuck))
    shot(browser, "viewer-jobs")
    browser.get(base + "/#/job/" + stuck)
    reasons = settled(
        "the reason the labelled job waits",
        lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, '#why li[data-code="missing_label"]')],
    )
    assert reasons[0] == "no active agent carries label gpu=yes"
    assert not browser.find_elements(By.ID, "cancel-job"), "a viewer has no cancel button"
    shot(browser, "viewer-waiting-job")

    # The queued job's page; then an agent for its queue starts, and the bar
    # moves in the page as it is (a reload would lose the marker).
    browser.get(base + "/#/job/" + later["id"])
    settled(
        "the job page",
        lambda: browser.find_elements(By.ID, "job-id")
        and browser.find_element(By.ID, "job-id").text == later["id"]
        and progress_of(browser) == 0,
    )
    browser.execute_script("window.__noReload = 'still here'")
    seen: List[int] = []
    agent = start_agent(data_dir, tmp_path_factory.mktemp("browser-agent"), "--cpus", "1", "--queues", "browser")
    try:
        def finished() -> bool:
            p = progress_of(browser)
            if not seen or seen[-1] != p:
                seen.append(p)
                if 0 < p < total and len(seen) == 2:
                    shot(browser, "viewer-progress")
            return p == total

        wait_until("the progress bar to reach the end", finished, seconds=120)
    finally:
        stop(agent)
    assert browser.execute_script("return window.__noReload") == "still here", "the page reloaded"
    assert seen[0] == 0 and seen[-1] == total and seen == sorted(seen), seen
    assert len(seen) >= 2, seen
    settled("succeeded", lambda: browser.find_element(By.ID, "job-state").text == "succeeded")
    assert browser.find_elements(By.ID, "download")
    shot(browser, "viewer-job-done")

    # The admin cancels the stuck job from its page.
    browser.find_element(By.CSS_SELECTOR, "#logout-form button").click()
    wait_until("the login page", lambda: browser.find_elements(By.ID, "login-form"))
    login(browser, base, (data_dir / "admin.token").read_text().strip())
    browser.get(base + "/#/job/" + stuck)
    settled("the stuck job's page", lambda: browser.find_elements(By.ID, "job-id")
            and browser.find_element(By.ID, "job-id").text == stuck)
    wait_until("the cancel button", lambda: browser.find_elements(By.ID, "cancel-job"))
    shot(browser, "admin-job")
    click(browser, "cancel-job")
    browser.switch_to.alert.accept()
    settled("cancelled in the page", lambda: browser.find_element(By.ID, "job-state").text == "cancelled")
    assert api.get("/v1/jobs/" + stuck)["state"] == "cancelled"
    assert not browser.find_elements(By.ID, "cancel-job")
    shot(browser, "admin-cancelled")


def test_a_jobs_tasks_and_votes_in_a_browser(
    data_dir: Path, browser: webdriver.Chrome, tmp_path_factory: pytest.TempPathFactory
) -> None:
    api = Api(data_dir)
    base = api.url
    viewer = api.post("/v1/tokens", {"role": "viewer"})["token"]

    # A task that fails on the agent (its module traps), out of attempts at once.
    module = api.upload("/v1/modules", trapping_module(), "application/wasm")["id"]
    broken = api.post(
        "/v1/jobs", {"kernel": "wasm", "module": module, "range": {"start": 1, "end": 3}, "max_attempts": 1}
    )["id"]
    wait_for_state(api, broken, "failed")

    relogin(browser, base, viewer)
    browser.get(base + "/#/job/" + broken)
    error = settled(
        "the failed task's error",
        lambda: browser.find_element(By.CSS_SELECTOR, '#tasks-table tr.task-row[data-state="failed"] td.error').text,
    )
    job_error = settled("the job's error", lambda: browser.find_element(By.CSS_SELECTOR, "#job-view dd.error").text)
    assert error in job_error, (error, job_error)
    assert not browser.find_elements(By.ID, "retry-job"), "a viewer has no retry button"
    shot(browser, "viewer-failed-task")

    # The admin retries its failed tasks from its page: the module still
    # traps, so the job fails again, a second time, with the same reason.
    failed_at = api.get("/v1/jobs/" + broken)["finished_ms"]
    relogin(browser, base, (data_dir / "admin.token").read_text().strip())
    browser.get(base + "/#/job/" + broken)
    button = wait_until("the retry button", lambda: browser.find_elements(By.ID, "retry-job"))[0]
    assert button.text == "Retry failed tasks"
    shot(browser, "admin-failed-job")
    button.click()
    browser.switch_to.alert.accept()
    wait_until(
        "the retried job to fail again",
        lambda: (lambda j: j["state"] == "failed" and j["finished_ms"] != failed_at)(api.get("/v1/jobs/" + broken)),
    )
    assert "trap" in api.get("/v1/jobs/" + broken)["error"]
    settled("failed again in the page", lambda: browser.find_element(By.ID, "job-state").text == "failed")

    # A replicated task: an honest agent and a lying one disagree, and a
    # second honest agent, started once they have voted, breaks the tie.
    def voter(name: str, *extra: str) -> subprocess.Popen:
        return start_agent(data_dir, tmp_path_factory.mktemp(name), "--cpus", "1", "--queues", "votes", *extra)

    def votes() -> Dict[str, str]:
        """Each listed replica's vote, by its state and agent."""
        out = {}
        for row in browser.find_elements(By.CSS_SELECTOR, "#tasks-table tr.task-row"):
            cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            out[cells[2] + " " + cells[4]] = cells[5]
        return out

    agents = [voter("honest"), voter("liar", "--corrupt-results", "1")]
    try:
        voted = api.post(
            "/v1/jobs",
            {"kernel": "fibonacci", "range": {"start": 0, "end": 10}, "items_per_task": 10,
             "redundancy": 2, "queue": "votes"},
        )["id"]
        assert api.get("/v1/jobs/" + voted)["progress"]["total"] == 1
        wait_until(
            "the two votes to disagree (a third replica)",
            lambda: len(api.get("/dashboard/snapshot?job=" + voted)["job"]["tasks"]) == 3,
        )
        browser.get(base + "/#/job/" + voted)
        settled("the undecided votes", lambda: sorted(votes().values()) == ["", "undecided", "undecided"])
        shot(browser, "viewer-votes-undecided")
        agents.append(voter("tie-breaker"))
        wait_for_state(api, voted, "succeeded")
        settled("the verdicts in the page", lambda: sorted(votes().values()) == ["agreed", "agreed", "outvoted"])
    finally:
        for a in agents:
            stop(a)
    liars = [a["id"] for a in api.get("/v1/agents")["agents"] if a["results_invalid"] > 0]
    assert len(liars) == 1, liars
    assert settled("the liar's vote", lambda: votes().get("done " + liars[0])) == "outvoted", votes()
    shot(browser, "viewer-votes")


def test_modules_workflows_and_schedules_in_a_browser(data_dir: Path, browser: webdriver.Chrome) -> None:
    api = Api(data_dir)
    base = api.url
    viewer = api.post("/v1/tokens", {"role": "viewer"})["token"]
    module = api.upload("/v1/modules", trapping_module(), "application/wasm")["id"]
    wf = api.post(
        "/v1/workflows",
        {"steps": [
            {"name": "first", "job": {"kernel": "factorial", "n": 50}},
            {"name": "then", "after": ["first"], "job": {"kernel": "factorial", "n": 60}},
        ]},
    )["id"]
    wait_until("the workflow to succeed", lambda: api.get("/v1/workflows/" + wf)["state"] == "succeeded", 120)
    schedule = api.post(
        "/v1/schedules", {"cron": "0 0 1 1 *", "timezone": "Europe/Paris", "job": {"kernel": "factorial", "n": 10}}
    )["id"]

    # The viewer: the three pages, and no button on them.
    relogin(browser, base, viewer)
    browser.get(base + "/#/modules")
    cells = settled(
        "the module's row",
        lambda: [c.text for c in browser.find_element(By.ID, "module-" + module).find_elements(By.TAG_NAME, "td")],
    )
    assert cells[3:5] == ["no", "no"], cells  # no reduce, not in use
    assert not browser.find_elements(By.CSS_SELECTOR, "#modules-table button"), "a viewer cannot delete"
    shot(browser, "viewer-modules")

    browser.get(base + "/#/workflows")

    def steps() -> Dict[str, str]:
        rows = browser.find_elements(By.CSS_SELECTOR, f'[id="workflow-{wf}"] tr.step-row')
        return {r.get_attribute("data-step"): r.find_elements(By.TAG_NAME, "td")[1].text for r in rows}

    state = settled(
        "the workflow", lambda: browser.find_element(By.CSS_SELECTOR, f'[id="workflow-{wf}"] .wf-state').text
    )
    assert state == "succeeded", state
    assert settled("its steps", steps) == {"first": "succeeded", "then": "succeeded"}
    shot(browser, "viewer-workflows")

    browser.get(base + "/#/schedules")
    text = settled("the schedule's row", lambda: browser.find_element(By.ID, "schedule-" + schedule).text)
    for part in ("0 0 1 1 *", "Europe/Paris", "factorial", "active"):
        assert part in text, text
    assert not browser.find_elements(By.CSS_SELECTOR, "#schedules-table button"), "a viewer cannot pause"
    shot(browser, "viewer-schedules")

    # The admin pauses and resumes the schedule, and deletes the module.
    relogin(browser, base, (data_dir / "admin.token").read_text().strip())
    browser.get(base + "/#/schedules")

    def schedule_state() -> str:
        return browser.find_element(By.CSS_SELECTOR, f'[id="schedule-{schedule}"] .schedule-state').text

    click(browser, "pause-" + schedule)
    settled("paused in the page", lambda: schedule_state() == "paused")
    assert [s["paused"] for s in api.get("/v1/schedules")["schedules"] if s["id"] == schedule] == [True]
    shot(browser, "admin-schedule-paused")
    click(browser, "resume-" + schedule)
    settled("active in the page", lambda: schedule_state() == "active")
    browser.get(base + "/#/modules")
    click(browser, "delete-module-" + module)
    browser.switch_to.alert.accept()
    wait_until("the module gone from the page", lambda: not browser.find_elements(By.ID, "module-" + module))
    assert module not in [m["id"] for m in api.get("/v1/modules")["modules"]]
    shot(browser, "admin-module-deleted")
