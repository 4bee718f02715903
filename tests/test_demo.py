"""The Gradio demo, for real: served on 127.0.0.1 by hub_scripts/demo.py, driven by headless Chromium
(selenium + Debian's chromium-driver) and by gradio_client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _search_helpers import RED_APPLE, trained_search_model
from _server_helpers import connect, free_port, local_env, serve, stop

from modeling_ccr.search import GallerySearch, build_index, load_gallery, load_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "hub_scripts" / "demo.py"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    model_dir, gallery_dir = trained_search_model()
    model, processor = load_model(str(model_dir))
    return build_index(model, processor, load_gallery(gallery_dir), tmp_path_factory.mktemp("demo") / "index",
                       model_name=str(model_dir), progress=False)


@pytest.fixture(scope="module")
def demo_url(index_dir):
    process, url = serve([str(DEMO), "--index", str(index_dir), "--port", str(free_port())], ROOT, "demo running on")
    assert url.startswith("http://127.0.0.1:")
    yield url
    stop(process)


def chromium():
    """Headless Chromium through Debian's chromedriver (installed by tools/setup_env.sh)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get("CI"):
            pytest.fail("chromium / chromedriver missing: tools/setup_env.sh installs them")
        pytest.skip("chromium / chromedriver not installed (tools/setup_env.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1400", "--no-proxy-server", "--disable-extensions", "--disable-sync"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_browser_query_shows_the_red_apple(demo_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    try:
        driver.get(demo_url)
        wait = WebDriverWait(driver, 60)
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#query textarea")))
        box.send_keys("roter Apfel")
        box.send_keys(Keys.ENTER)
        wait.until(ec.text_to_be_present_in_element((By.ID, "results-table"), RED_APPLE))
        rows = driver.find_element(By.ID, "results-table").text
        assert RED_APPLE in rows
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results-grid img")) >= 5)
        captions = driver.find_element(By.ID, "results-grid").text
        assert RED_APPLE in captions
        time.sleep(1)  # let the thumbnails paint
        shot = Path(os.environ.get("CCR_DEMO_SCREENSHOT", tmp_path / "demo.png"))
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_gradio_client_text_and_image_endpoints(demo_url, index_dir, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(demo_url, verbose=False)
    grid, table = client.predict("roter Apfel", 5, api_name="/search_text")
    assert table["headers"] == ["rank", "image_id", "score"]
    ids = [row[1] for row in table["data"]]
    assert len(ids) == 5 and RED_APPLE in ids
    assert [row[0] for row in table["data"]] == [1, 2, 3, 4, 5]
    assert len(grid) == 5 and all(Path(item["image"]).is_file() for item in grid)
    search = GallerySearch(index_dir)
    expected = search.search_text("roter Apfel", 5)
    assert ids == [hit.id for hit in expected]
    path = tmp_path / "apple.png"
    search.image(RED_APPLE).save(path)
    captions = client.predict(handle_file(str(path)), ["de", "fr"], 2, api_name="/image_captions")
    rows = captions["data"]
    assert [(row[0], row[1]) for row in rows] == [("de", 1), ("de", 2), ("fr", 1), ("fr", 2)]
    assert rows[0][3] == RED_APPLE and rows[0][2] in {"roter Apfel", "Apfel | Frucht | Obst | rot | roter Apfel"}


def test_space_export_holds_what_the_space_runs(index_dir, tmp_path):
    space = tmp_path / "space"
    done = subprocess.run([sys.executable, str(DEMO), "--index", str(index_dir), "--export-space", str(space)],
                          capture_output=True, text=True, cwd=ROOT, env=local_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names = set(os.listdir(space))
    assert {"app.py", "README.md", "requirements.txt", "modeling_ccr", "index", "model"} <= names
    card = (space / "README.md").read_text()
    assert "sdk: gradio" in card and "app_file: app.py" in card
    assert "faiss-cpu" in (space / "requirements.txt").read_text()
    # The exported Space starts on its own (the package copied beside app.py, the model copied in).
    env = dict(local_env(), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(free_port()))
    process = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        client = connect(f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/", process)
        _, table = client.predict("roter Apfel", 3, api_name="/search_text")
        assert RED_APPLE in [row[1] for row in table["data"]]
    finally:
        stop(process)
