"""Headless Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver``, installed
with apt-get by the test set-up when missing, driven through Selenium (the dev extra).

No browser is ever downloaded by a driver: Selenium is given ``/usr/bin/chromedriver`` and
``/usr/bin/chromium`` explicitly, so its driver manager is never run.

Imported by name (`from browser import ...`): this folder is on sys.path (rootdir conftest).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Debian packages holding the two.
PACKAGES = ("chromium", "chromium-driver")
#: The screen the page must work on.
WINDOW = (1280, 800)


def ensure_chromium() -> None:
    """Install Chromium and ChromeDriver from the OS packages when they are missing.

    Fails the test (never skips) when they cannot be installed: the browser test is part of the
    default suite.
    """
    if os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK):
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(f"Chromium is missing: install the Debian packages {' '.join(PACKAGES)} "
                    f"(sudo apt-get install -y {' '.join(PACKAGES)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"apt-get installed {' '.join(PACKAGES)} but {CHROMIUM} or {CHROMEDRIVER} is missing")


def headless_chromium(profile_dir: Path):
    """A Selenium driver of a new headless Chromium at 1280×800, its profile in ``profile_dir``.

    The flags keep Chromium off the network it would otherwise try to reach at start (the
    machine has none) and let it run as root in a container.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(options=options, service=service)
    # The window size counts the browser's frame: the page itself gets exactly 1280×800.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
    return driver
