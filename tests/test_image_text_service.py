"""A two-tower model trained by the recipe, its test images exported, indexed and served by a real ``hsrl serve``
process over loopback HTTP: text finds images, images find images, both modalities share one space; and the
search page in a real headless browser (Debian's chromium driven by Selenium)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import ROOT, free_port, recipe_module
from PIL import Image

from hsrl.cli import main as hsrl_main
from hsrl.data.captions import CLASS_NAMES
from hsrl.data.images import read_fashion_mnist
from hsrl.export import load_embeddings
from hsrl.models.two_tower import load_two_tower

PER_CLASS = 20
QUERY = "a photo of an ankle boot"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real run of the recipe (enough steps for class-level search, not for the headline numbers)."""
    out = tmp_path_factory.mktemp("image-text-run")
    code = recipe_module("image_text").main(["--output-dir", str(out), "--max-steps", "30", "--batch-size", "128",
                                             "--width", "0.25", "--warmup-steps", "5", "--log-with", "none",
                                             "--no-progress", "--no-eval", "--checkpoint-every", "none"])  # fmt: skip
    assert code == 0
    return out / "model"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST test images as PNG files, one sub-folder per class (the folder name is the label)."""
    root = tmp_path_factory.mktemp("images")
    test = read_fashion_mnist("test")
    for label, name in enumerate(CLASS_NAMES):
        folder = root / name.replace(" ", "_")
        folder.mkdir()
        for i, index in enumerate((test.labels == label).nonzero().flatten()[:PER_CLASS].tolist()):
            Image.fromarray(test.images[index, 0].numpy(), "L").save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def served(model_folder: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("served")
    assert hsrl_main(["export", "--model", str(model_folder), "--dataset", str(image_folder), "--output",
                      str(work / "export"), "--no-progress"]) == 0  # fmt: skip
    assert hsrl_main(["index", "build", "--input", str(work / "export"), "--output", str(work / "index")]) == 0
    port = free_port()
    command = [sys.executable, "-m", "hsrl.cli", "serve", "--multimodal-model", f"mm={model_folder}", "--index",
               f"imgs={work / 'index'}", "--port", str(port), "--log-level", "error"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # a bound for a starved machine, not a timing assertion
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"hsrl serve exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "hsrl serve did not become healthy"
            time.sleep(0.1)
        yield {"url": url, "export": work / "export", "model": model_folder}
    finally:
        process.kill()
        process.wait(10)
        process.stderr.close()


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_a_text_query_finds_mostly_its_class_among_the_images(served: dict) -> None:
    reply = httpx.post(f"{served['url']}/search", json={"index": "imgs", "text": QUERY, "k": 10}, timeout=60)
    assert reply.status_code == 200, reply.text
    labels = [hit["metadata"]["label"] for hit in reply.json()["data"]]
    assert len(labels) == 10
    assert labels.count("ankle_boot") >= 6, labels
    # Every hit names its image file (the browser page shows it as a thumbnail).
    assert all(Path(hit["metadata"]["path"]).is_file() for hit in reply.json()["data"])


def test_both_modalities_embed_into_the_model_space(served: dict) -> None:
    url, model = served["url"], load_two_tower(served["model"])
    text = httpx.post(f"{url}/v1/embeddings", json={"input": [QUERY]}, timeout=60).json()
    assert text["model"] == "mm-text"
    expected = model.encode_texts([QUERY])[0]
    torch.testing.assert_close(torch.tensor(text["data"][0]["embedding"]), expected, atol=1e-5, rtol=1e-4)
    vectors, table = load_embeddings(served["export"])
    path = Path(table.column("path")[0].as_py())
    image = httpx.post(f"{url}/v1/embeddings", json={"input": [_data_uri(path)], "modality": "image"}, timeout=60)
    assert image.json()["model"] == "mm-image"
    np.testing.assert_allclose(np.asarray(image.json()["data"][0]["embedding"]), vectors[0], atol=1e-5)
    # The explicit modality field is honoured: a text sent as an image is refused with a JSON 422.
    wrong = httpx.post(f"{url}/v1/embeddings", json={"input": ["a boot"], "modality": "image"}, timeout=60)
    assert wrong.status_code == 422 and "data URI" in wrong.json()["error"]["message"]


def test_an_image_query_finds_itself_first(served: dict) -> None:
    _, table = load_embeddings(served["export"])
    path = Path(table.column("path")[5].as_py())
    reply = httpx.post(f"{served['url']}/search", json={"index": "imgs", "image": _data_uri(path), "k": 3}, timeout=60)
    assert reply.json()["data"][0]["metadata"]["path"] == str(path)


def test_search_page_and_thumbnails(served: dict) -> None:
    url = served["url"]
    page = httpx.get(f"{url}/ui", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="results"' in page.text
    thumb = httpx.get(f"{url}/ui/thumbnail/imgs/0", timeout=10)
    assert thumb.headers["content-type"] == "image/png" and Image.open(io.BytesIO(thumb.content)).size == (28, 28)
    missing = httpx.get(f"{url}/ui/thumbnail/imgs/99999", timeout=10)
    assert missing.status_code == 404 and "no image path" in missing.json()["error"]["message"]
    assert httpx.get(f"{url}/ui/thumbnail/nope/0", timeout=10).status_code == 404


def _chrome() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(
    _chrome() is None and not os.environ.get("HSRL_REQUIRE_BROWSER"),
    reason="needs Debian's chromium and chromium-driver (make browser)",
)
def test_search_page_in_a_headless_browser(served: dict, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    assert _chrome() is not None, "chromium and chromedriver are missing: run `make browser`"
    browser, driver_path = _chrome()  # type: ignore[misc]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,800"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"{served['url']}/ui")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert driver.find_element(By.ID, "index").get_attribute("value") == "imgs"
        driver.find_element(By.ID, "text").send_keys(QUERY)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.hit")) == 12)
        figures = driver.find_elements(By.CSS_SELECTOR, "figure.hit")
        labels = [f.get_attribute("data-label") for f in figures]
        assert labels[:10].count("ankle_boot") >= 6, labels
        # Thumbnails really loaded (a broken image has naturalWidth 0).
        wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) == 28
                                 for img in d.find_elements(By.CSS_SELECTOR, "figure.hit img")))  # fmt: skip
        screenshot = Path(served["export"]).parent / "search-page.png"
        driver.save_screenshot(str(screenshot))
        # Click an image: its nearest images replace the grid, itself first.
        clicked = figures[3].get_attribute("data-id")
        figures[3].click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "status"), f"image {clicked}"))
        first = driver.find_elements(By.CSS_SELECTOR, "figure.hit")[0]
        assert first.get_attribute("data-id") == clicked
    finally:
        driver.quit()
    assert screenshot.stat().st_size > 1000
    if os.environ.get("HSRL_SCREENSHOT"):  # how the README's screenshot is made
        shutil.copyfile(screenshot, os.environ["HSRL_SCREENSHOT"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--multimodal-model", "m", "--text-model", "t"], "--multimodal-model serves both modalities"),
        (["--multimodal-model", "/nowhere/model"], "multimodal model folder not found: /nowhere/model"),
    ],
)
def test_serve_multimodal_bad_input_is_one_line(args: list[str], message: str, capsys, tmp_path: Path) -> None:
    from hsrl_service.cli import main as serve_main

    assert serve_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_serve_refuses_a_folder_that_is_not_two_towers(capsys, tmp_path: Path) -> None:
    from hsrl_service.cli import main as serve_main

    assert serve_main(["--multimodal-model", str(tmp_path)]) == 2
    assert "not an hsrl model folder" in capsys.readouterr().err


def test_a_modality_the_served_model_lacks_is_a_json_4xx_naming_it(tmp_path: Path) -> None:
    from service_support import assert_error, build_service, data_uri, make_index, png_bytes, serve

    index = make_index(tmp_path / "texts", dim=384)
    with serve(build_service(text=True, image=False, indexes=[("texts", index)])) as live, live.client() as http:
        embedded = http.post("/v1/embeddings", json={"input": [data_uri(png_bytes())], "modality": "image"})
        assert "no image model is loaded" in assert_error(embedded, 422)["error"]["message"]
        searched = http.post("/search", json={"index": "texts", "image": data_uri(png_bytes()), "k": 3})
        assert "no image model is loaded" in assert_error(searched, 422)["error"]["message"]
