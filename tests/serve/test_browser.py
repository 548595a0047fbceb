"""The search page in headless Chromium: upload, results, click through."""

import pytest

from keras_rmac.serve import SearchEngine
from keras_rmac.serve import create_app
from tests.cli import photos
from tests.serve import browser
from tests.serve import server
from tests.serve.conftest import PHOTOS

WHY = browser.missing()
pytestmark = pytest.mark.skipif(WHY is not None, reason=str(WHY))


@pytest.fixture(scope="module")
def site(built_index):
    engine = SearchEngine(built_index[1], poll_interval=0)
    with server.running(create_app(engine)) as base:
        yield base, engine


@pytest.fixture(scope="module")
def page(site):
    with browser.chromium() as driver:
        driver.get(site[0] + "/")
        yield driver


def _wait(driver, condition, what, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        lambda d: condition(d), message=what
    )


def _results(driver):
    from selenium.webdriver.common.by import By

    return [
        (
            b.get_attribute("data-name"),
            b.find_element(By.CLASS_NAME, "score").text,
            b,
        )
        for b in driver.find_elements(By.CSS_SELECTOR, "#results button.hit")
    ]


def _search_done(driver, query_label):
    from selenium.webdriver.common.by import By

    status = driver.find_element(By.ID, "status").text
    query = driver.find_element(By.ID, "query").text
    return "results from index version" in status and query_label in query


def test_upload_then_click_through(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = page
    _wait(
        driver,
        lambda d: f"{PHOTOS} photos" in d.find_element(By.ID, "info").text,
        "the page shows the index",
    )
    query = photos.save(tmp_path / "my query.png", photos.photo(3))
    driver.find_element(By.ID, "file").send_keys(str(query))
    _wait(driver, lambda d: _search_done(d, "my query.png"), "upload answer")
    hits = _results(driver)
    assert len(hits) == PHOTOS  # The page asks for 12.
    assert hits[0][0] == "p03.png" and hits[0][1] == "1.0000"
    # Every thumbnail loaded.
    _wait(
        driver,
        lambda d: all(
            d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth",
                b.find_element(By.TAG_NAME, "img"),
            )
            for _, _, b in _results(d)
        ),
        "thumbnails",
    )

    # Click the third result: its neighbours, itself first.
    name = hits[2][0]
    hits[2][2].click()
    _wait(driver, lambda d: _search_done(d, name), "click answer")
    clicked = _results(driver)
    assert clicked[0][0] == name and clicked[0][1] == "1.0000"
    assert [n for n, _, _ in clicked] != [n for n, _, _ in hits]

    # Keyboard: focus lands on the first result; Tab to the second, Enter.
    second = clicked[1][0]
    active = driver.switch_to.active_element
    assert active.get_attribute("data-name") == name
    active.send_keys(Keys.TAB)
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    _wait(driver, lambda d: _search_done(d, second), "keyboard answer")
    assert _results(driver)[0][0] == second


def test_pasting_a_thumbnail_address(page, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = page
    base, engine = site
    i = engine.snapshot.paths.index("p07.png")
    field = driver.find_element(By.ID, "url")
    field.clear()
    field.send_keys(f"{base}/api/photos/{i}/thumbnail?version=1", Keys.ENTER)
    _wait(driver, lambda d: _search_done(d, f"photo {i}"), "pasted answer")
    assert _results(driver)[0][0] == "p07.png"

    # Another site's address is refused without any request.
    field.clear()
    field.send_keys("https://example.org/cat.jpg", Keys.ENTER)
    _wait(
        driver,
        lambda d: (
            "other addresses are not fetched"
            in d.find_element(By.ID, "status").text
        ),
        "refusal",
    )


def test_the_page_passes_its_token_on(built_index, tmp_path):
    from selenium.webdriver.common.by import By

    from keras_rmac.serve import ServeConfig

    engine = SearchEngine(built_index[1], poll_interval=0)
    app = create_app(engine, ServeConfig(token="s3cret"))
    with server.running(app) as base, browser.chromium() as driver:
        driver.get(base + "/")
        assert "token" in driver.page_source  # The 401 answer, no page.
        driver.get(base + "/?token=s3cret")
        query = photos.save(tmp_path / "q.png", photos.photo(9))
        driver.find_element(By.ID, "file").send_keys(str(query))
        _wait(driver, lambda d: _search_done(d, "q.png"), "upload answer")
        assert _results(driver)[0][0] == "p09.png"
        first = driver.find_element(By.CSS_SELECTOR, "#results img")
        _wait(
            driver,
            lambda d: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth",
                first,
            ),
            "a thumbnail loaded with the token",
        )
