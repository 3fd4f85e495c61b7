"""The review page in a real headless Chromium, against the Serve app on 127.0.0.1.

The module scores two synthetic nights, builds their review (``build_review``), deploys the app
with that scored root as its review (token required), and drives the page with the keyboard as a
scorer would: open the queue, open the top night, stage two epochs, and check the corrections
file the import reads.  Chromium and ChromeDriver come from the OS packages (installed by the
test set-up when missing, ``tests/browser.py``).

Set ``SOMNRAY_REVIEW_SCREENSHOT=path.png`` to keep the screenshot of the night view (the one in
``docs/images/review-page.png`` is made so).
"""

from __future__ import annotations

import os
import shutil

import pytest
import requests
from browser import WINDOW, ensure_chromium, headless_chromium  # tests/ is on sys.path
from loopback import free_port
from review_factory import ReviewSite, make_review_site  # tests/serve is on sys.path

from somnray.serve.review_files import read_corrections, read_table

TOKEN = "review-token-5e2b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REVIEW = "scored"  # the page names a review by its root's last folder name


@pytest.fixture(scope="module")
def site(synth_cohort, tmp_path_factory) -> ReviewSite:
    """Two scored 1-h nights with their review, inside a storage root."""
    return make_review_site(tmp_path_factory.mktemp("review-page"), synth_cohort("sleep-edf", n_nights=2, hours=1.0))


@pytest.fixture(scope="module")
def url(ray_local, site):
    """The app deployed for the module on a free loopback port, reviewing ``site.scored``."""
    from ray import serve

    from somnray.serve.app import build_app
    from somnray.serve.config import ServeConfig

    port = free_port()
    config = ServeConfig(run_uri=str(site.run), port=port, token=TOKEN, storage_roots=(str(site.root),),
                         review_roots=(str(site.scored),), model_num_cpus=0, preprocess_num_cpus=0,
                         ingress_num_cpus=0, device="cpu", precision="fp32")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(config), name="somnray-review-page", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium at 1280×800 (installed from the OS packages first if missing)."""
    ensure_chromium()
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def _attr(driver, css: str, name: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).get_attribute(name) or ""


def _press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(driver).send_keys(key).perform()


@pytest.mark.integration
def test_a_scorer_corrects_two_epochs_of_the_top_night_with_the_keyboard(site, url, browser, tmp_path):
    """The queue lists the nights by rank; Enter opens the top one on its most uncertain epoch; U moves
    to the next uncertain one; 2 then R stage it and the next epoch N2 and REM, and the night's
    <id>_corrections.csv holds exactly those two rows, which read_corrections reads back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    nights = read_table(site.scored, "nights.csv")
    top = nights[0]["recording_id"]
    queue = sorted((r for r in read_table(site.scored, "queue.csv") if r["recording_id"] == top),
                   key=lambda r: r["rank"])

    browser.get(f"{url}/review#token={TOKEN}")
    _wait(browser, lambda d: _attr(d, "body", "data-view") == "queue"
          and len(d.find_elements(By.CSS_SELECTOR, "#nights tbody tr")) == len(nights), "the queue")
    assert "token" not in browser.current_url  # taken off the address bar at once
    rows = browser.find_elements(By.CSS_SELECTOR, "#nights tbody tr")
    assert [r.get_attribute("data-recording-id") for r in rows] == [n["recording_id"] for n in nights]
    assert rows[0].get_attribute("aria-selected") == "true"

    _press(browser, Keys.ENTER)
    _wait(browser, lambda d: _attr(d, "body", "data-loaded") == top, "the top night")
    assert int(_attr(browser, "#epoch-info", "data-epoch")) == queue[0]["epoch"]  # opens on the most uncertain
    _press(browser, "u")
    first = int(_attr(browser, "#epoch-info", "data-epoch"))
    assert first == queue[1]["epoch"]
    _press(browser, "2")
    _wait(browser, lambda d: int(_attr(d, "#epoch-info", "data-epoch")) == first + 1, "the next epoch")
    _press(browser, "r")
    _wait(browser, lambda d: _attr(d, "#save-state", "data-state") == "saved"
          and "2 correction" in d.find_element(By.ID, "save-state").text, "both corrections saved")

    assert read_corrections(site.scored, top) == {first: 2, first + 1: 4}
    assert (site.scored / top / f"{top}_corrections.csv").read_text().splitlines() == [
        "epoch,onset_s,stage", f"{first},{first * 30},N2", f"{first + 1},{(first + 1) * 30},REM"]

    # The view a scorer sees: the traces drawn for the current epoch, all of it at 1280×800.
    _press(browser, Keys.ARROW_LEFT)
    _wait(browser, lambda d: _attr(d, "#traces", "data-epoch") == str(first + 1), "the epoch's traces")
    assert browser.find_element(By.ID, "panel-correction").text == "REM"
    size = browser.execute_script("const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]")
    assert size[0] <= WINDOW[0] and size[1] <= WINDOW[1], f"the night view needs {size} px, no scrolling at {WINDOW}"
    shot = tmp_path / "review-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("SOMNRAY_REVIEW_SCREENSHOT"):
        shutil.copy(shot, os.environ["SOMNRAY_REVIEW_SCREENSHOT"])

    # Back in the queue, the night counts its corrections.
    _press(browser, Keys.ESCAPE)
    _wait(browser, lambda d: _attr(d, "body", "data-view") == "queue"
          and d.find_element(By.CSS_SELECTOR, "#nights tbody tr td:last-child").text == "2", "the updated queue")


@pytest.mark.integration
def test_the_api_refuses_requests_without_the_token_and_ids_escaping_the_root(site, url):
    """Without the token every review call is a 401 (the page's own files are not); an id that climbs
    out of the scored root, or a night folder linked outside it, is refused without naming a path."""
    night = f"{url}/v1/review/{REVIEW}/nights"
    assert requests.get(f"{url}/review", timeout=30).status_code == 200
    assert requests.get(f"{url}/review/static/review.js", timeout=30).status_code == 200
    for resp in (requests.get(night, timeout=30),
                 requests.get(f"{night}/SC4001E0", headers={"Authorization": "Bearer wrong"}, timeout=30),
                 requests.post(f"{night}/SC4001E0/corrections", json={"corrections": {"0": "W"}}, timeout=30)):
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert not (site.scored / "SC4001E0" / "SC4001E0_corrections.csv").exists()

    outside = site.root.parent / f"{site.root.name}-outside"
    (outside / "evil").mkdir(parents=True)
    shutil.copy(site.scored / "SC4001E0" / "SC4001E0_epochs.parquet", outside / "evil" / "evil_epochs.parquet")
    (site.scored / "evil").symlink_to(outside / "evil")
    try:
        answers = {
            "dots": requests.get(f"{night}/..%2F..%2Fetc%2Fpasswd", headers=AUTH, timeout=30),
            "dotdot": requests.get(f"{night}/%2E%2E", headers=AUTH, timeout=30),
            "linked out": requests.get(f"{night}/evil", headers=AUTH, timeout=30),
            "save linked out": requests.post(f"{night}/evil/corrections", headers=AUTH,
                                             json={"corrections": {"0": "W"}}, timeout=30),
            "other review": requests.get(f"{url}/v1/review/etc/nights", headers=AUTH, timeout=30),
        }
        for what, resp in answers.items():
            assert resp.status_code in (400, 404), f"{what}: {resp.status_code} {resp.text[:200]}"
            assert str(site.root) not in resp.text and str(outside) not in resp.text, what
        assert answers["linked out"].status_code == 404
        assert not (outside / "evil" / "evil_corrections.csv").exists()
    finally:
        (site.scored / "evil").unlink()
        shutil.rmtree(outside)

    ok = requests.get(night, headers=AUTH, timeout=30)
    assert ok.status_code == 200 and [n["recording_id"] for n in ok.json()["nights"]] == \
        [n["recording_id"] for n in read_table(site.scored, "nights.csv")]
    assert requests.post(f"{night}/SC4001E0/corrections", headers=AUTH, json={"corrections": {"0": "S9"}},
                         timeout=30).status_code == 400
    assert requests.post(f"{night}/SC4001E0/corrections", headers=AUTH, data=b"{not json",
                         timeout=30).status_code == 400
