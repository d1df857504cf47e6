"""The report in a real headless Chromium: click through it as a reviewer would.

Opens index.html from disk (file://, no server), clicks an image card, checks that the
nearest images shown are those of the warehouse, follows the product link, uses the
search box, and saves a screenshot of each page type to tests/output/report/
(index.png, image.png, product.png, products.png, rejects.png, search.png) for a person
to look at. Needs Debian's chromium and chromium-driver (`make test` installs them);
skips with a message when they are absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from test_report import CLIENT, IMAGES, WEIRD_A, make_warehouse

from npimage.report import render_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
OUTPUT = Path(__file__).parent / "output" / "report"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="headless browser test needs /usr/bin/chromium and chromedriver "
    "(apt-get install chromium chromium-driver; `make test` does it)",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """A headless Chromium driven by chromedriver, isolated in a temp profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1360,1000",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report-browser")
    warehouse = make_warehouse(root)
    index = render_report(warehouse, CLIENT, root / "out", per_page=8)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return warehouse, index


def shoot(driver, name: str) -> Path:
    """Screenshot of the whole page (not just the window) into tests/output/report/."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1360, min(max(height + 140, 700), 4000))
    path = OUTPUT / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    driver.set_window_size(1360, 1000)
    return path


def nearest(warehouse: Path, image_id: str) -> list[str]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT match_image_id FROM image_matches WHERE client_id = ? "
                           "AND image_id = ? ORDER BY rank", [CLIENT, image_id]).fetchall()
    return [r[0] for r in rows]


def matching_products(warehouse: Path, product_id: str) -> list[str]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT match_product_id FROM product_matches WHERE client_id = ? "
                           "AND product_id = ? ORDER BY score DESC", [CLIENT, product_id])
        return [r[0] for r in rows.fetchall()]


def loaded_images_ok(driver) -> bool:
    """True when every <img> on the page decoded (no broken thumbnail)."""
    return driver.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


def test_click_from_index_to_image_and_product(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    warehouse, index = site
    browser.get(index.as_uri())
    assert "npimage review" in browser.title
    cards = browser.find_elements(By.CSS_SELECTOR, "li.card")
    assert len(cards) == 8  # per_page
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    WebDriverWait(browser, 10).until(loaded_images_ok)
    shoot(browser, "index")

    image_id = "4006381333931_PIECE_01"
    card = next(c for c in cards if c.get_attribute("data-image-id") == image_id)
    card.find_element(By.CSS_SELECTOR, "a.thumb").click()
    WebDriverWait(browser, 10).until(ec.presence_of_element_located((By.CSS_SELECTOR, "h1")))
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == image_id
    shown = [li.get_attribute("data-match-id")
             for li in browser.find_elements(By.CSS_SELECTOR, "ol.matches > li.match")]
    assert shown == nearest(warehouse, image_id)
    first = browser.find_element(By.CSS_SELECTOR, "ol.matches > li.match")
    assert "Same image" in first.text and "yes, same bytes" in first.text
    pair = first.find_elements(By.CSS_SELECTOR, ".pair img")
    assert len(pair) == 2 and pair[0].location["y"] == pair[1].location["y"]  # side by side
    bars = browser.execute_script(
        "return Array.from(arguments[0].querySelectorAll('.comp dd:not(.bytes)'), d => "
        "[getComputedStyle(d, '::before').width, getComputedStyle(d, '::before')"
        ".backgroundImage])", first)
    assert len(bars) == 4  # dah, ddh, dph, dfv; all 1.0 for this copy: full bars
    assert all(w == "180px" and "100%" in img for w, img in bars), bars
    WebDriverWait(browser, 10).until(loaded_images_ok)
    shoot(browser, "image")

    browser.find_element(By.CSS_SELECTOR, ".facts dd a").click()
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h1"), "Product 4006381333931"))
    shown = [li.get_attribute("data-match-product-id")
             for li in browser.find_elements(By.CSS_SELECTOR, "ol.matches > li.match")]
    assert shown == matching_products(warehouse, "4006381333931")
    WebDriverWait(browser, 10).until(loaded_images_ok)
    shoot(browser, "product")


def test_band_filter_products_and_rejects_pages(browser, site):
    from selenium.webdriver.common.by import By

    _, index = site
    browser.get(index.as_uri())
    browser.find_element(By.CSS_SELECTOR, "a.chip.band-same").click()
    ids = {c.get_attribute("data-image-id") for c in browser.find_elements(By.CSS_SELECTOR,
                                                                           "li.card")}
    assert ids == {"4006381333931_PIECE_01", "4006381333948_PIECE_01"}
    browser.find_element(By.CSS_SELECTOR, ".tabs a[href$='products-all-0001.html']").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "table.products tbody tr")
    assert len(rows) == len({i[1] for i in IMAGES})
    shoot(browser, "products")
    browser.find_element(By.PARTIAL_LINK_TEXT, "Unreadable").click()
    assert "5012345678900_broken" in browser.find_element(By.CSS_SELECTOR, "table.rejects").text
    shoot(browser, "rejects")


def test_search_box_finds_an_id_with_quotes_and_opens_its_page(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, index = site
    browser.get(index.as_uri())
    box = browser.find_element(By.ID, "q")
    box.send_keys('IMG "QUOTED"')  # case-insensitive prefix of WEIRD_A
    WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#results a"))
    results = browser.find_elements(By.CSS_SELECTOR, "#results a")
    assert len(results) == 1 and WEIRD_A in results[0].text  # shown as text, not markup
    shoot(browser, "search")
    results[0].click()
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == WEIRD_A

    box = browser.find_element(By.ID, "q")
    box.send_keys("ref-ä<")  # a reference, typed in another case
    WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#results a"))
    box.send_keys("\n")  # Enter opens the first result: the product of that reference
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "h1").text.startswith("Product "))
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == 'Product weird "prod" <&> ü'
