"""Drive `ddpm playground` in headless Chromium as a user would: train the dino with the page's
defaults, measure its distance to the data, scrub the sliders, and sample an image run; writes the
README's screenshots and prints the distance ratio the page shows.

    .venv/bin/python benchmarks/playground_shots.py --run runs/mnist_cond --class 7
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

ROOT = Path(__file__).resolve().parents[1]


def until(predicate, timeout: float = 600, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/mnist_cond", help="an image run for the images page")
    p.add_argument("--class", dest="cls", default="7")
    p.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = Path(args.run).resolve().parent
    server = subprocess.Popen([sys.executable, "-m", "ddpmkit.cli", "playground", "--port", str(port),
                               "--runs", str(runs)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    print(server.stdout.readline().strip())
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1120"):
        options.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    find = lambda i: driver.find_element(By.ID, i)  # noqa: E731
    try:
        info = f"http://localhost:{port}/api/info"
        until(lambda: urllib.request.urlopen(info, timeout=2), 60, "the server")
        driver.get(f"http://localhost:{port}/")
        until(lambda: len(find("dataset").find_elements(By.TAG_NAME, "option")) > 5, 30)
        start = time.time()
        find("train").click()  # the page's defaults: dino, linear, T 250, width 256, 4000 steps
        until(lambda: "done" in find("progress-text").text)
        print(f"trained in {time.time() - start:.0f} s (page defaults)")
        until(lambda: find("reverse-i").is_enabled() and "sampled" in find("message").text, 120)
        find("distance-run").click()
        until(lambda: "ratio" in find("distance").text, 300)
        print(find("distance").text)
        for slider, presses in (("forward-t", 60), ("reverse-i", 38)):
            for _ in range(presses):
                find(slider).send_keys(Keys.ARROW_RIGHT)
        time.sleep(1.5)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(Path(args.out) / "playground_points.png"))
        find("tab-images").click()
        until(lambda: len(find("run").find_elements(By.TAG_NAME, "option")) > 0, 30)
        Select(find("run")).select_by_value(str(Path(args.run).resolve()))
        Select(find("img-class")).select_by_value(args.cls)
        find("img-run").click()
        until(lambda: find("img-i").is_enabled(), 300)
        for _ in range(12):
            find("img-i").send_keys(Keys.ARROW_RIGHT)
        time.sleep(1)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(Path(args.out) / "playground_images.png"))
        print(f"screenshots in {args.out}: playground_points.png, playground_images.png")
    finally:
        driver.quit()
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
