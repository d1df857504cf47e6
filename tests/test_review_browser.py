"""The review application in a real headless Chromium, the whole loop of issue #16.

A small demo catalogue is run for real; `npimage review`'s app is served by uvicorn on
127.0.0.1 (a free port); Chromium opens a group, zooms, switches to slider, flicker and
difference, decides three pairs with the keyboard (keep, merge, not the same), exports
the decisions as CSV, then the client is run again and the pages show the decisions kept
and the rejected pair flagged and proposed no more. Screenshots go to
tests/output/review/. Skips with a message when chromium or chromedriver is absent.
"""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
from pathlib import Path

import duckdb
import pytest
import uvicorn
from test_report_browser import CHROMEDRIVER, CHROMIUM

from npimage.config import Settings
from npimage.pipeline import settings_context
from npimage.review.serve import standalone_app
from npimage.runner import run_pipeline

OUTPUT = Path(__file__).parent / "output" / "review"
CLIENT = "acme"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="headless browser test needs /usr/bin/chromium and chromedriver "
    "(apt-get install chromium chromium-driver; `make test` does it)",
)


def run(data: Path, manifest: Path, run_id: str, mode: str = "full") -> dict:
    settings = Settings().with_overrides(data_dir=data, fv=False)
    return run_pipeline(settings_context(CLIENT, str(manifest), run_id, settings, mode=mode),
                        workers=1, report=False)


@pytest.fixture(scope="module")
def server(small_demo, tmp_path_factory):
    """The standalone review app on 127.0.0.1:<free port>, over a freshly run client."""
    data = tmp_path_factory.mktemp("review-browser")
    run(data, small_demo.manifest, "r1")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(standalone_app(data, CLIENT, user="reviewer"),
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "review server did not start"
        time.sleep(0.05)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    yield f"http://127.0.0.1:{port}", data, small_demo
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1360,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-review')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def shoot(driver, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1360, min(max(height + 140, 700), 3000))
    assert driver.save_screenshot(str(OUTPUT / f"{name}.png")), name
    driver.set_window_size(1360, 1000)


def images_loaded(driver) -> bool:
    return driver.execute_script(
        "return Array.from(document.images).filter(i => i.offsetParent !== null)"
        ".every(i => i.complete && i.naturalWidth > 0)")


def pair_ids(driver) -> tuple[str, str] | None:
    """The pair shown, read in one script call (safe while a page is being replaced)."""
    ids = driver.execute_script(
        "var e = document.getElementById('pair'); return e ? [e.dataset.a, e.dataset.b] : null")
    return tuple(ids) if ids else None


def press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def test_review_loop(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, data, demo = server
    wait = WebDriverWait(browser, 30)

    # open the client, then its largest group
    browser.get(f"{url}/c/{CLIENT}")
    wait.until(images_loaded)
    shoot(browser, "overview")
    browser.find_element(By.CSS_SELECTOR, "li.group a").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "figure.card"))
    wait.until(images_loaded)
    cards = browser.find_elements(By.CSS_SELECTOR, "figure.card")
    assert len(cards) >= 3
    assert all("px" in c.text and ("KB" in c.text or "bytes" in c.text) for c in cards)
    assert browser.find_elements(By.CSS_SELECTOR, "figure.card .pname")  # product names
    shoot(browser, "group")

    # the group's first pair: zoom, slider, flicker, difference
    browser.find_element(By.CSS_SELECTOR, "li.pair a").click()
    wait.until(lambda d: d.find_elements(By.ID, "pair"))
    wait.until(images_loaded)
    natural = browser.execute_script("return document.getElementById('img-a').naturalWidth")
    press(browser, "1")
    press(browser, "+")
    assert browser.find_element(By.ID, "zoom-level").text == "150 %"
    width = browser.execute_script("return document.getElementById('img-a').clientWidth")
    assert abs(width - natural * 1.5) <= 2
    shoot(browser, "pair-zoom")
    press(browser, "0")
    press(browser, "v")
    assert browser.find_element(By.CSS_SELECTOR, ".stack").is_displayed()
    clip = browser.execute_script("return document.querySelector('img.over').style.clipPath")
    assert "50%" in clip
    shoot(browser, "pair-slider")
    press(browser, "f")
    states = set()
    for _ in range(8):
        states.add(browser.execute_script(
            "return document.querySelector('img.over').style.visibility"))
        time.sleep(0.2)
    assert states == {"visible", "hidden"}  # it flickers
    press(browser, "d")
    wait.until(lambda d: d.execute_script(
        "var i = document.getElementById('diff-img'); return i.complete && i.naturalWidth > 0"))
    wait.until(lambda d: "differ" in d.find_element(By.ID, "diff-share").text)
    shoot(browser, "pair-difference")
    press(browser, "b")
    assert "Suggested to keep" in browser.find_element(By.ID, "suggestion").text

    # three decisions by keyboard: keep left, merge, not the same (each moves on)
    decided = []
    for key, decision in (("a", "keep"), ("m", "merge"), ("n", "not_same")):
        before = pair_ids(browser)
        decided.append((before, decision))
        press(browser, key)
        wait.until(lambda d, b=before: pair_ids(d) not in (None, b))
        wait.until(images_loaded)
    rejected = decided[2][0]
    press(browser, "k")  # back to the rejected pair: its decision shows
    wait.until(lambda d: pair_ids(d) == rejected)
    assert "not the same" in browser.find_element(By.ID, "current-decision").text
    shoot(browser, "pair-decided")

    # export from the page's link, as the browser fetches it
    browser.get(f"{url}/c/{CLIENT}/decisions")
    href = browser.find_element(By.CSS_SELECTOR, "a[download]").get_attribute("href")
    text = browser.execute_async_script(
        "var done = arguments[1]; fetch(arguments[0]).then(r => r.text()).then(done);", href)
    rows = list(csv.DictReader(io.StringIO(text)))
    got = {(r["item_id"], r["match_id"]): r["decision"] for r in rows}
    assert got == {tuple(sorted(p)): d for p, d in decided}
    assert all(r["decided_by"] == "reviewer" and r["run_id"] == "r1" for r in rows)
    shoot(browser, "decisions")

    # rerun the client: decisions kept, the rejected pair flagged, no longer proposed
    run(data, demo.manifest, "r2", "incremental")
    browser.get(f"{url}/c/{CLIENT}/decisions")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#decisions tr.in-force")) == 3
    browser.get(f"{url}/c/{CLIENT}/pair?kind=image&a={rejected[0]}&b={rejected[1]}")
    wait.until(lambda d: d.find_elements(By.ID, "pair"))
    assert browser.find_element(By.CSS_SELECTOR, ".meta .flag").text == "rejected"
    assert "not the same" in browser.find_element(By.ID, "current-decision").text
    shoot(browser, "rerun-rejected-pair")
    browser.get(f"{url}/c/{CLIENT}")
    for link in [a.get_attribute("href") for a in
                 browser.find_elements(By.CSS_SELECTOR, "li.group > a")]:
        browser.get(link)
        shown = {(li.get_attribute("data-a"), li.get_attribute("data-b"))
                 for li in browser.find_elements(By.CSS_SELECTOR, "li.pair")}
        assert tuple(sorted(rejected)) not in shown  # in no group any more
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT bool_and(rejected), count(*) FROM image_matches WHERE "
                           "client_id = ? AND least(image_id, match_image_id) = ? AND "
                           "greatest(image_id, match_image_id) = ?",
                           [CLIENT, *sorted(rejected)]).fetchone() == (True, 2)
        assert con.execute("SELECT count(*) FROM decisions").fetchone() == (3,)
    browser.get(f"{url}/c/{CLIENT}")
    shoot(browser, "rerun-overview")
