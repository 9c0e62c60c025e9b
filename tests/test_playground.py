"""`ddpm playground`: the JSON API under misuse, the training job's life cycle, and the page itself
in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium; skipped
with the reason where they are missing)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the playground extra (starlette, uvicorn) is not installed")

from ddpmkit.cli import main  # noqa: E402
from ddpmkit.playground import jobs as jobs_module  # noqa: E402

from .test_cli import TINY_IMAGE_FLAGS  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A playground on a free port, whose images page lists two tiny image runs: digits (1 channel)
    and a class-conditional colour folder (3 channels, two classes of coloured squares)."""
    runs = tmp_path_factory.mktemp("pg")
    assert main(["train", *TINY_IMAGE_FLAGS, "--steps", "4", "-o", str(runs / "digits"), "--no-report"]) == 0
    folder = tmp_path_factory.mktemp("rgb")
    for k, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        (folder / f"class{k}").mkdir()
        for i in range(6):
            img = np.full((16, 16, 3), 255, np.uint8)
            img[2 + i : 10 + i, 3:11] = colour
            Image.fromarray(img).save(folder / f"class{k}" / f"{i}.png")
    rgb = [a if a != "digits" else f"folder:{folder}" for a in TINY_IMAGE_FLAGS]
    flags = [*rgb, "--cond", "class", "--steps", "4", "-o", str(runs / "rgb"), "--no-report"]
    assert main(["train", *flags]) == 0
    ae = [*rgb[:2], "--model.autoencoder.base_channels", "8", "--steps", "2", "--train.threads", "1", "-q"]
    assert main(["train-autoencoder", *ae, "-o", str(runs.parent / "ae"), "--no-report"]) == 0
    latent = ["--latent", str(runs.parent / "ae"), "--model.unet.base_channels", "8",
              "--model.unet.channel_mult", "1", "-T", "20", "--steps", "2", "--train.threads", "1", "-q",
              "--no-report"]  # fmt: skip
    assert main(["train", *latent, "-o", str(runs / "latent")]) == 0
    port = _free_port()
    cmd = [sys.executable, "-m", "ddpmkit.cli", "playground", "--port", str(port), "--runs", str(runs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert f"http://localhost:{port}/" in line, line
    url = f"http://localhost:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/api/info", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_trained(url: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, s = call(url, "/api/status")
        if s["state"] != "running":
            return s
        time.sleep(0.2)
    raise AssertionError("training did not end")


def test_images_page_lists_and_draws_a_colour_run_by_class(server):
    import base64
    import io

    _, listing = call(server, "/api/runs")
    rgb = next(r for r in listing["runs"] if r["path"].endswith("rgb"))
    assert rgb["classes"] == ["class0", "class1"]
    status, out = call(server, "/api/images", {"run": rgb["path"], "n": 4, "steps": 3, "class": "class1"})
    assert status == 200 and len(out["x_t"]) == len(out["x0"]) == len(out["t"]) >= 2
    final = Image.open(io.BytesIO(base64.b64decode(out["x0"][-1].split(",", 1)[-1])))
    assert final.mode == "RGB"  # colour frames, not a grayscale channel


def test_images_page_guides_by_a_weak_run_it_lists(server, tmp_path):
    _, listing = call(server, "/api/runs")
    rgb = next(r["path"] for r in listing["runs"] if r["path"].endswith("rgb"))
    digits = next(r["path"] for r in listing["runs"] if r["path"].endswith("digits"))
    body = {"run": rgb, "n": 2, "steps": 3, "guidance": 1}
    plain = call(server, "/api/images", body)
    itself = call(server, "/api/images", {**body, "guide": rgb})  # (1 + w) D - w D = D: unguided
    assert plain[0] == itself[0] == 200 and len(itself[1]["x0"]) == len(plain[1]["x0"])
    code, other = call(server, "/api/images", {**body, "guide": digits})  # another data space
    assert code == 400 and "\n" not in other["error"]
    code, outside = call(server, "/api/images", {**body, "guide": str(tmp_path)})
    assert code == 400 and "no image run" in outside["error"]


def test_images_page_opens_a_latent_run_and_draws_decoded_frames(server):
    import base64
    import io

    _, listing = call(server, "/api/runs")
    latent = next(r for r in listing["runs"] if r["path"].endswith("latent"))
    status, out = call(server, "/api/images", {"run": latent["path"], "n": 2, "steps": 3})
    assert status == 200 and len(out["x_t"]) == len(out["x0"]) >= 2
    final = Image.open(io.BytesIO(base64.b64decode(out["x0"][-1].split(",", 1)[-1])))
    assert final.mode == "RGB"  # decoded images (16 x 16 each), not 4-channel latents
    assert final.size[1] >= 16


def test_busy_port_is_one_line_and_exit_2(server, capsys):
    port = int(server.rsplit(":", 1)[1])
    assert main(["playground", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot serve on 127.0.0.1" in err[0]


def test_api_misuse_gets_clear_messages_and_the_server_keeps_serving(server):
    assert call(server, "/api/forward?t=3")[1] == {"error": "train a model first"}
    code, r = call(server, "/api/train", {"source": "drawn", "points": [[0, 0], [1, 1]]})
    assert code == 400 and "at least 10 points" in r["error"]
    code, r = call(server, "/api/train", {"source": "csv", "csv": "hello\nworld\n"})
    assert code == 400 and "not a CSV of x,y points" in r["error"]
    code, r = call(server, "/api/train", {"source": "csv", "csv": "x,y\n1,2\n3,4\n"})
    assert code == 400 and "at least 10" in r["error"]
    code, r = call(server, "/api/train", {"dataset": "dino", "steps": 10**9})
    assert code == 400 and "steps must lie in" in r["error"]
    assert call(server, "/api/train", {"dataset": "moons", "steps": 20000, "T": 50})[0] == 200
    code, r = call(server, "/api/train", {"dataset": "moons", "steps": 100})
    assert code == 400 and "training already" in r["error"]
    assert call(server, "/api/cancel", {})[0] == 200
    assert wait_trained(server)["state"] == "cancelled"
    assert call(server, "/api/info")[0] == 200


@pytest.mark.parametrize("method, calls", [("consistency", 2), ("progressive", 4)])
def test_the_points_model_is_distilled_and_its_student_samples(server, method, calls):
    status, _ = call(server, "/api/train", {"dataset": "moons", "steps": 100, "T": 64, "width": 32})
    assert status == 200 and wait_trained(server)["state"] == "done"
    status, body = call(server, "/api/distill", {"method": method, "to_steps": calls, "round_steps": 20})
    assert status == 200, body
    s = wait_trained(server)
    assert (s["state"], s["task"], s["steps"]) == ("done", method, calls), s
    status, r = call(server, "/api/reverse", {"sampler": s["sampler"], "steps": s["steps"]})
    assert status == 200 and len(r["t"]) == calls + 1
    status, d = call(server, "/api/distance", {"sampler": s["sampler"], "steps": s["steps"]})
    assert status == 200 and d["swd_ratio"] > 0
    status, body = call(server, "/api/distill", {"method": "consistency"})  # a student is not distilled again
    assert status == 400 and "student already" in body["error"]


def test_an_abandoned_job_stops_and_leaves_no_thread(monkeypatch, tiny_cfg):
    monkeypatch.setattr(jobs_module, "ABANDON_AFTER_S", 0.5)
    jobs = jobs_module.Jobs()
    job = jobs.start(tiny_cfg.replace(**{"train.steps": 10**6}))
    job.thread.join(timeout=60)  # nobody asks for its status: the page is gone
    assert not job.thread.is_alive() and job.state == "cancelled" and 0 < job.step < 10**6
    jobs.close()
    assert not jobs.root.exists()


# ----- the page in a real browser -----------------------------------------------------------------------
def _browser():
    selenium = pytest.importorskip("selenium", reason="selenium is not installed")  # noqa: F841
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no chromium / chromedriver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _canvas(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').toDataURL()")


def _until(predicate, timeout: float = 600, driver=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    shown = driver.execute_script("return document.getElementById('message').textContent") if driver else ""
    raise AssertionError(f"timed out waiting for the page; its message: {shown!r}")


@pytest.mark.slow
def test_page_trains_and_scrubs_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = _browser()
    try:
        driver.get(server + "/")
        find = lambda i: driver.find_element(By.ID, i)  # noqa: E731
        _until(lambda: len(find("dataset").find_elements(By.TAG_NAME, "option")) > 5, 30)
        # misuse first: a drawing of fewer than 10 points
        driver.find_element(By.CSS_SELECTOR, "input[name=source][value=drawn]").click()
        find("train").click()
        _until(lambda: "at least 10 points" in find("message").text, 30)
        # a tiny dino model
        driver.find_element(By.CSS_SELECTOR, "input[name=source][value=dataset]").click()
        for field, value in (("steps", "300"), ("T", "50")):
            find(field).clear()
            find(field).send_keys(value)
        find("train").click()
        _until(lambda: "done" in find("progress-text").text)
        _until(lambda: find("reverse-i").is_enabled() and "sampled" in find("message").text, 120)
        first = _canvas(driver, "reverse")
        find("reverse-i").send_keys(Keys.END)  # the slider to the last step: the samples
        _until(lambda: "samples" in find("reverse-label").text, 30)
        assert _canvas(driver, "reverse") != first, "the reverse picture did not change"
        before = _canvas(driver, "forward")
        find("forward-t").send_keys(Keys.END)
        _until(lambda: _canvas(driver, "forward") != before, 30)
        assert "ᾱ_t" in find("forward-label").text
        find("distance-run").click()
        _until(lambda: "ratio" in find("distance").text, 120)
        driver.save_screenshot(str(tmp_path / "points.png"))
        # the images page: the tiny digits run (listed first; then the latent and the colour runs)
        find("tab-images").click()
        _until(lambda: len(find("run").find_elements(By.TAG_NAME, "option")) == 3, 30)  # digits, latent, rgb
        find("img-steps").clear()
        find("img-steps").send_keys("5")
        find("img-run").click()
        _until(lambda: find("img-i").is_enabled(), 120, driver)
        src = find("img-xt").get_attribute("src")
        find("img-i").send_keys(Keys.END)
        _until(lambda: find("img-xt").get_attribute("src") != src, 30)
        # the refused drawing answered 400 (Chrome logs that response); nothing else may reach the console
        log = driver.get_log("browser")
        expected = [e for e in log if e["source"] == "network" and "status of 400" in e["message"]]
        errors = [e for e in log if e["level"] == "SEVERE" and e not in expected]
        assert len(expected) == 1 and not errors, log
    finally:
        driver.quit()


def test_a_huge_body_is_refused_at_once_and_the_server_keeps_serving(server):
    start = time.time()
    req = urllib.request.Request(
        server + "/api/train", data=b"[" * (48 << 20), headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(req, timeout=60)
        raise AssertionError("a 48 MB body was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 413 and "at most" in json.loads(e.read())["error"]
    except (ConnectionError, urllib.error.URLError):
        pass  # the server may close the connection while the client still sends: refused all the same
    assert time.time() - start < 30
    assert call(server, "/api/info")[0] == 200


def test_images_page_refuses_runs_outside_its_folder_alike(server, tmp_path):
    code, outside = call(server, "/api/images", {"run": str(tmp_path), "n": 1, "steps": 2})
    code2, missing = call(server, "/api/images", {"run": str(tmp_path / "nothing"), "n": 1, "steps": 2})
    assert code == code2 == 400
    assert outside["error"].split("'")[0] == missing["error"].split("'")[0]  # nothing revealed


def test_drawn_points_of_two_requests_never_share_a_file():
    from ddpmkit.playground.jobs import Jobs

    jobs = Jobs()
    try:
        a = jobs.points_file([[0.0, float(i)] for i in range(12)])
        b = jobs.points_file([[1.0, float(i)] for i in range(12)])
        assert a != b and a.read_text() != b.read_text()  # before: both drawn1.csv, the second won
    finally:
        jobs.close()
