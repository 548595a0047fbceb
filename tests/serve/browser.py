"""Headless Debian Chromium driven by Selenium, offline and sandboxed
from the user's profile (a fresh, temporary one each time)."""

import contextlib
import os
import shutil
import tempfile

CHROMIUM = os.environ.get("KERAS_RMAC_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get(
    "KERAS_RMAC_CHROMEDRIVER", "/usr/bin/chromedriver"
)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


def missing() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in (
        (CHROMIUM, "chromium"),
        (CHROMEDRIVER, "chromium-driver"),
    ):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (
                f"{path} not found: apt-get install -y chromium "
                f"chromium-driver (Debian package {package}; .ci/run does it)"
            )
    return None


@contextlib.contextmanager
def chromium():
    """A Selenium WebDriver on headless Chromium; closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="keras-rmac-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(
        service=Service(executable_path=CHROMEDRIVER), options=options
    )
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
