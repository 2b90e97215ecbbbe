"""The operator's page at `/`, in headless Chromium (Debian's chromium and chromedriver,
driven by selenium): it lists the models and their state, reads the README's cheque
through the PP-OCR pipeline and draws the boxes and text it found over the image; a file
that is no image gets the server's own message. The screenshot is checked for the boxes
and kept in $PAGE_SCREENSHOT where that is set."""
import io
import os
import pathlib
import shutil
import tempfile
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHEQUE = ROOT / "benches" / "data" / "cheque.png"
# The page's box colour (src/http/page/app.js), as it lands on the screen.
BOX = (0xD6, 0x00, 0x7B)

pytestmark = [
    pytest.mark.skipif(not (ROOT / "models/ppocr_det/1/model.onnx").exists(),
                       reason="PP-OCR det/rec not fetched (scripts/test.sh does it)"),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="no chromium/chromedriver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory() as profile:
        # This machine's network is closed: no background calls, no first-run fetches.
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1400,1800", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        yield driver
        driver.quit()


def wait_for(driver, condition, what, seconds=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, seconds).until(lambda d: condition(d), message=what)


def box_pixels(png: bytes) -> int:
    """Pixels of about the boxes' colour."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((abs(r - BOX[0]) < 40) & (g < 60) & (abs(b - BOX[2]) < 50)).sum())


def test_the_page_is_static_and_locked_down(ocr):
    with urllib.request.urlopen(f"http://{ocr.http_address}/") as answer:
        assert answer.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        page = answer.read().decode()
    assert "/page/app.js" in page and "http" not in page.replace("http-equiv", "")


def test_the_page_lists_models_and_draws_the_cheques_lines(ocr, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"http://{ocr.http_address}/")
    state = lambda d: {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[2].text
                       for row in d.find_elements(By.CSS_SELECTOR, "#models tbody tr")}
    wait_for(browser, lambda d: state(d).get("ppocr") == "READY", "ppocr listed READY")
    assert set(state(browser)) >= {"ppocr", "ppocr_det", "ppocr_rec", "ppocr_cls"}
    wait_for(browser, lambda d: d.find_element(By.ID, "model").get_attribute("value") == "ppocr",
             "ppocr offered as an image model")
    # The image models are the ones that take one BYTES input and answer boxes.
    offered = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert offered == ["ppocr"], offered
    canvas = browser.find_element(By.ID, "canvas")
    assert canvas.get_attribute("width") == "0"

    browser.find_element(By.ID, "image").send_keys(str(CHEQUE))
    browser.find_element(By.CSS_SELECTOR, "#read button").click()
    lines = lambda d: [li.text for li in d.find_elements(By.CSS_SELECTOR, "#lines li")]
    wait_for(browser, lambda d: len(lines(d)) == 13, "13 lines listed")
    assert any("153,745.58" in line for line in lines(browser)), lines(browser)
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("13 lines from cheque.png in "), status
    with Image.open(CHEQUE) as cheque:
        assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == tuple(map(str, cheque.size))
        original = box_pixels(CHEQUE.read_bytes())
    drawn = box_pixels(canvas.screenshot_as_png)
    page = browser.get_screenshot_as_png()
    (pathlib.Path(os.environ.get("PAGE_SCREENSHOT", tmp_path / "page.png"))).write_bytes(page)
    # 13 outlines and their labels, where the cheque itself has none of the colour.
    assert original == 0 and drawn > 2000, (original, drawn)

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"these are not the pixels you are looking for")
    browser.find_element(By.ID, "image").send_keys(str(not_an_image))
    browser.find_element(By.CSS_SELECTOR, "#read button").click()
    failed = lambda d: "could not read notes.png" in d.find_element(By.ID, "status").text
    wait_for(browser, failed, "the server's refusal shown")
    message = browser.find_element(By.ID, "status").text
    assert "ppocr_image" in message or "image" in message.split(":", 1)[1], message
    assert canvas.get_attribute("width") == "0" and not lines(browser)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and "/infer" not in e["message"]]
    assert not errors, errors
