"""The dashboard in a real browser (Debian's chromium driven by Playwright) and scraped by a
real Prometheus, on a running `appliance serve` with Orthanc as the PACS.

Screenshots land in test-artifacts/dashboard/ for people to look at."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pydicom import dcmread

from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from tests.support.dcmtk import storescu
from tests.support.orthanc import AE_TITLE, running_orthanc
from tests.support.processes import serve
from tests.support.services import free_port, missing_service
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
PASSWORD = "correct horse battery"


def add_user(config: Path, name: str, role: str) -> None:
    added = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(config), "users", "add", name,
         "--role", role, "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`serve` with Orthanc routing to it, an operator `otto` and a viewer `vera`."""
    port, web = free_port(), free_port()
    with running_orthanc(tmp_path / "pacs", route_to=("APPLIANCE", port)) as pacs:
        process = serve(tmp_path, port, pacs.dicom_port, {"dashboard": {"port": web}})
        try:
            config = tmp_path / "appliance.yaml"
            add_user(config, "otto", "operator")
            add_user(config, "vera", "viewer")
            yield {"url": f"http://127.0.0.1:{web}", "pacs": pacs, "config": config}
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        missing_service("Debian chromium (/usr/bin/chromium) is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
        )
        yield browser
        browser.close()


def sign_in(browser: Any, url: str, name: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/")
    assert page.url.endswith("/login")  # not signed in: the login page, nothing else
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    return page


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def job_state(page: Any, url: str, study_uid: str) -> str | None:
    page.goto(f"{url}/jobs")
    row = page.locator("#jobs tr", has_text=study_uid)
    return row.locator(".state").first.inner_text() if row.count() else None


def test_an_operator_watches_a_study_through_and_retries_a_failed_job_a_viewer_may_not(
    appliance: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    url, pacs = appliance["url"], appliance["pacs"]
    cine = write_us_cine(generate_cine(300_008, frames=6), tmp_path / "us" / "cine.dcm")
    broken = write_ct_series(generate_ct(16, Grid((20, 48, 48), (5.0, 7.0, 7.0))), tmp_path / "ct")
    del broken[9]  # a gap: the job fails with its reason
    good_uid = str(dcmread(cine, stop_before_pixels=True).StudyInstanceUID)
    bad_uid = str(dcmread(broken[0], stop_before_pixels=True).StudyInstanceUID)

    otto = sign_in(browser, url, "otto")
    assert otto.locator("text=otto (operator)").count() == 1
    shot(otto, "01-overview-empty")
    assert storescu(pacs.dicom_port, [cine], called=AE_TITLE).returncode == 0
    states = []
    wait_for(lambda: states.append(job_state(otto, url, good_uid)) or states[-1] == "done", 120)
    assert "done" in states
    shot(otto, "02-jobs-study-done")
    otto.click(f"#jobs tr:has-text('{good_uid}') a")
    assert otto.locator("#trail", has_text="delivering -> done").count() == 1
    shot(otto, "03-job-trail")

    assert storescu(pacs.dicom_port, broken, called=AE_TITLE).returncode == 0
    wait_for(lambda: job_state(otto, url, bad_uid) == "failed", 120)
    otto.click(f"#jobs tr:has-text('{bad_uid}') a")
    assert "uneven or has gaps" in otto.inner_text("main")
    failed_job_url = otto.url
    otto.click("button:has-text('Retry')")
    otto.wait_for_url(failed_job_url)
    assert "retried by otto" in otto.inner_text("#trail")
    shot(otto, "04-job-retried")
    otto.goto(f"{url}/")
    shot(otto, "05-overview")

    vera = sign_in(browser, url, "vera")
    vera.goto(failed_job_url)
    assert vera.locator("button:has-text('Retry')").count() == 0  # no buttons for a viewer
    refused = vera.request.post(f"{failed_job_url}/cancel", max_redirects=0)
    assert refused.status == 403
    vera.set_content(refused.text())
    shot(vera, "06-viewer-refused")
    assert "may not do this" in refused.text()
    history = requests.get(f"{pacs.url}/instances", timeout=10).json()
    # the cine, its SEG, SR and outlined copy, the broken CT
    assert len(history) == 4 + len(broken)


def test_a_real_prometheus_scrapes_the_appliance_with_a_token(
    appliance: dict[str, Any], tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        missing_service("Prometheus (Debian package prometheus) is not installed")
    token = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(appliance["config"]), "users",
         "token", "vera", "--name", "prometheus"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    target = appliance["url"].removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "appliance", "static_configs": [{"targets": [target]}],
             "authorization": {"type": "Bearer", "credentials": token}},
            {"job_name": "stranger", "static_configs": [{"targets": [target]}]},
        ],
    }))  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )  # fmt: skip
    try:

        def up() -> dict[str, str] | None:
            try:
                answer = requests.get(
                    f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}, timeout=2
                ).json()
            except requests.RequestException:
                return None
            found = {r["metric"]["job"]: r["value"][1] for r in answer["data"]["result"]}
            return found if len(found) == 2 else None

        scraped = wait_for(up, 60)
        assert scraped == {"appliance": "1", "stranger": "0"}  # no token, no metrics
        time.sleep(1.5)
        answer = requests.get(
            f"http://127.0.0.1:{port}/api/v1/query",
            params={"query": 'appliance_jobs{state="queued"}'},
            timeout=5,
        ).json()
        assert answer["data"]["result"][0]["value"][1] == "0"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_new_user_sees_what_the_models_found_on_the_job_page(
    browser: Any, tmp_path: Path
) -> None:
    """No destination configured, as on the embedded defaults: start-up says where results go,
    the job page shows the SR's summary, its measurements and key images with the outlines
    drawn, and its results table lists them as kept here, with their files in the outbox."""
    port, web = free_port(), free_port()
    overrides = {"dashboard": {"port": web}, "delivery": {"destinations": []}}
    process = serve(tmp_path, port, 1, overrides)
    try:
        config = tmp_path / "appliance.yaml"
        add_user(config, "vera", "viewer")
        url = f"http://127.0.0.1:{web}"
        phantom = generate_ct(13, Grid((20, 48, 48), (5.0, 7.0, 7.0)), lesion_count=3)
        ct = write_ct_series(phantom, tmp_path / "ct")
        study_uid = str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
        assert storescu(port, ct).returncode == 0
        vera = sign_in(browser, url, "vera")
        wait_for(lambda: job_state(vera, url, study_uid) == "done", 180)
        vera.click(f"#jobs tr:has-text('{study_uid}') a")
        vera.wait_for_selector("#findings-1 img")
        images = vera.locator("#findings-1 img")
        assert images.count() >= 1
        vera.wait_for_function(
            "() => [...document.querySelectorAll('#findings-1 img')]"
            ".every(i => i.complete && i.naturalWidth === 384)"
        )
        shot(vera, "07-job-findings-preview")
        outbox = tmp_path / "outbox" / study_uid
        reports = [dcmread(p) for p in outbox.glob("*.dcm")]
        (sr,) = [ds for ds in reports if ds.Modality == "SR"]
        summary = next(
            str(e.value)
            for e in sr.iterall()
            if e.keyword == "TextValue" and "Automated" in str(e.value)
        )
        assert vera.inner_text("#findings-1 .summary") == summary
        stated = [
            e.value for e in sr.iterall() if e.keyword == "NumericValue"
        ]  # every measurement of the SR, and only those, in the table
        assert vera.locator("#findings-1 table.measurements tr").count() == len(stated) + 1
        results = vera.inner_text("main table:below(h2:has-text('Results'))")
        assert results.count("kept here") == 2
    finally:
        process.terminate()
        process.wait(timeout=30)
    log = (tmp_path / "appliance.log").read_text()
    assert "no destination is configured: results are kept in" in log
    listed = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(config), "outbox", "list"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert listed.count("kept ") == 2
    assert str(tmp_path / "outbox" / study_uid) in listed
