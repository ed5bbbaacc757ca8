"""End to end in headless Chromium: upload a photo, filter by label, follow "more like this".

Uses Debian's chromium and chromedriver by path; Selenium Manager is never asked to fetch
anything. Set UPDATE_SCREENSHOT=1 to refresh docs/screenshot.png from this run.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from imgsearch.images import content_hash
from imgsearch.settings import PROJECT_ROOT
from webapp import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
VIEWPORT = (1280, 900)

# CI installs Chromium (.ci/run), so there a missing browser is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver packages (apt-get install chromium "
    "chromium-driver)",
)

# The cards once every thumbnail has loaded and no search is in flight (else null).
LOADED_CARDS = """
const main = document.getElementById("search");
if (main.classList.contains("busy")) return null;
const cards = [...document.querySelectorAll("#results .card")];
if (!cards.length) return null;
const loaded = (card) => {
  const img = card.querySelector("img");
  return img.complete && img.naturalWidth > 0;
};
if (!cards.every(loaded)) return null;
return cards.map((card) => ({id: card.dataset.id, label: card.dataset.label}));
"""


def serve(settings, embedder, store):
    """The app on ``store``, served on a free local port: yields its URL, then stops it."""
    app = create_app(settings, embedder=embedder, store=store)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def server(clothing_index, embedder):
    """The app on the indexed clothing split."""
    settings, store, _ = clothing_index
    yield from serve(settings, embedder, store)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager stays offline
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    # An exact viewport, whatever the headless window decorations.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False},
    )
    yield driver
    driver.quit()


def wait_for_cards(driver, predicate=lambda cards: True, timeout=60):
    """The loaded cards, once ``predicate(cards)`` holds."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        cards = d.execute_script(LOADED_CARDS)
        return cards if cards and predicate(cards) else False

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(ready)


def severe_logs(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_upload_filter_and_more_like_this(server, browser, photos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/")
    severe_logs(browser)  # start from an empty console
    query = photos["t-shirt"][3]

    browser.find_element(By.ID, "file-input").send_keys(str(query))
    cards = wait_for_cards(browser)
    assert len(cards) == 24  # the default number of results
    assert cards[0]["id"] == content_hash(query.read_bytes())  # the photo itself is indexed
    preview = browser.find_element(By.ID, "query-preview")
    assert preview.get_attribute("src").startswith("blob:")
    assert browser.execute_script("return arguments[0].naturalWidth", preview) > 0
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("24 results") and "embed" in status
    # This index has no region vectors, so no box can be drawn.
    assert browser.find_elements(By.ID, "box-editor") == []

    # A label filter re-runs the same upload; every card must then be a pair of pants.
    browser.find_element(By.CSS_SELECTOR, 'input[name="label"][value="pants"]').click()
    cards = wait_for_cards(browser, lambda cs: {c["label"] for c in cs} == {"pants"})
    assert len(cards) == 24
    assert "label=pants" in browser.current_url
    first_card = browser.find_element(By.CSS_SELECTOR, "#results .card")
    assert first_card.find_element(By.CSS_SELECTOR, ".score").text.startswith("0.")
    assert first_card.find_element(By.CSS_SELECTOR, ".label").text == "pants"

    shot = tmp_path / "screenshot.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, PROJECT_ROOT / "docs" / "screenshot.png")

    # "More like this" searches with the stored vector and keeps the filter.
    like_id = cards[0]["id"]
    first_card.find_element(By.CSS_SELECTOR, ".more-like").click()
    WebDriverWait(browser, 30).until(EC.url_contains(f"like={like_id}"))
    cards = wait_for_cards(browser)
    assert len(cards) == 24
    assert like_id not in {c["id"] for c in cards}
    assert {c["label"] for c in cards} == {"pants"}
    checkbox = browser.find_element(By.CSS_SELECTOR, 'input[name="label"][value="pants"]')
    assert checkbox.is_selected()
    WebDriverWait(browser, 30).until(
        EC.text_to_be_present_in_element((By.ID, "query-caption"), "More like")
    )

    # "Load more" appends the next page without repeating any card.
    browser.find_element(By.ID, "load-more").click()
    cards = wait_for_cards(browser, lambda cs: len(cs) > 24)
    assert len({c["id"] for c in cards}) == len(cards) == 41  # 42 pants, less the query one
    assert not browser.find_element(By.ID, "load-more").is_displayed()

    assert severe_logs(browser) == []  # no CSP violation, no failed request, no JS error


def test_a_bad_upload_is_explained_and_the_page_stays_usable(server, browser, photos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/")
    not_a_photo = tmp_path / "holiday.jpg"
    not_a_photo.write_text("these are my notes, not a photo\n")
    browser.find_element(By.ID, "file-input").send_keys(str(not_a_photo))
    message = browser.find_element(By.ID, "message")
    WebDriverWait(browser, 30).until(EC.visibility_of(message))
    assert "not an image" in message.text
    assert browser.find_elements(By.CSS_SELECTOR, "#results .card") == []

    browser.find_element(By.ID, "file-input").send_keys(str(photos["hat"][0]))
    cards = wait_for_cards(browser)
    assert len(cards) == 24
    assert not message.is_displayed()


# -- search by URL: the server fetches the image ---------------------------------------------------


# Text pasted on the page outside any field, as Ctrl+V over the results would paste it.
PASTE_TEXT = """
const data = new DataTransfer();
data.setData("text/plain", arguments[0]);
document.getElementById("results").dispatchEvent(
  new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
"""


@pytest.fixture(scope="module")
def url_host(photos):
    """The test's image host on 127.0.0.1, serving a dress photo of the indexed split."""
    from tests.imagehost import ImageHost

    with ImageHost(photos["dress"][5].read_bytes()) as host:
        yield host


@pytest.fixture(scope="module")
def url_server(clothing_index, embedder, url_host):
    """The app on the indexed clothing split, allowed to fetch from 127.0.0.1 on the image
    host's port (refused by default)."""
    settings, store, _ = clothing_index
    yield from serve(settings.with_(url_allow_hosts=(f"127.0.0.1:{url_host.port}",)), embedder,
                     store)


def test_pasting_an_image_url_searches_with_it(url_server, url_host, browser, photos):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    query = photos["dress"][5]
    host = url_host
    browser.get(f"{url_server}/")
    severe_logs(browser)
    field = browser.find_element(By.ID, "url-input")
    field.send_keys(host.url("/hops/1"))
    browser.find_element(By.ID, "url-search").click()
    cards = wait_for_cards(browser)
    assert len(cards) == 24
    assert cards[0]["id"] == content_hash(query.read_bytes())  # the photo itself is indexed
    caption = browser.find_element(By.ID, "query-caption").text
    assert host.url("/hops/0") in caption and "JPEG" in caption  # where it came from
    assert not browser.find_element(By.ID, "query-frame").is_displayed()  # no foreign <img>
    assert severe_logs(browser) == []  # no CSP violation, no failed request, no JS error

    # A URL the server refuses is explained as a bad upload is, and the results go.
    field.clear()
    field.send_keys("http://10.1.2.3/photo.jpg", Keys.ENTER)
    message = browser.find_element(By.ID, "message")
    WebDriverWait(browser, 30).until(EC.visibility_of(message))
    assert "10.1.2.3 is a private address" in message.text
    assert browser.find_elements(By.CSS_SELECTOR, "#results .card") == []

    # The page stays usable: an address pasted on the page (not in a field) searches too,
    # then a filter re-runs that search.
    field.clear()
    browser.execute_script(PASTE_TEXT, host.url("/photo.jpg"))
    cards = wait_for_cards(browser)
    assert cards[0]["id"] == content_hash(query.read_bytes())
    assert field.get_attribute("value") == host.url("/photo.jpg")
    assert not message.is_displayed()
    browser.find_element(By.CSS_SELECTOR, 'input[name="label"][value="pants"]').click()
    cards = wait_for_cards(browser, lambda cs: {c["label"] for c in cs} == {"pants"})
    assert len(cards) == 24

    # The address is kept in the page's. A page opened on it (a reload, a link from another
    # site) shows the address and fetches nothing until the person presses the button.
    severe_logs(browser)  # leaves out the refused URL's 400 above
    assert "url=" in browser.current_url
    fetched = len(host.requests)
    browser.refresh()
    confirm = browser.find_element(By.ID, "url-confirm")
    WebDriverWait(browser, 30).until(EC.visibility_of(confirm))
    assert browser.find_element(By.ID, "url-confirm-address").text == host.url("/photo.jpg")
    assert browser.find_elements(By.CSS_SELECTOR, "#results .card") == []
    assert len(host.requests) == fetched  # the page load made the server fetch nothing
    browser.find_element(By.ID, "url-confirm-search").click()
    reloaded = wait_for_cards(browser)
    assert [c["id"] for c in reloaded] == [c["id"] for c in cards]
    assert len(host.requests) == fetched + 1 and not confirm.is_displayed()

    # A result opened from it explains its match against the image at the URL.
    browser.find_elements(By.CSS_SELECTOR, "#results .card .card-image")[0].click()
    WebDriverWait(browser, 30).until(lambda d: "query=url" in d.current_url)
    browser.find_element(By.ID, "explain-toggle").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "explain-status").text.startswith("Cosine"))
    assert WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(HEAT_PAINTED, "query-heat"))
    assert severe_logs(browser) == []


# -- region search: a box drawn on the query photo ------------------------------------------------

# Each loaded card's matched region as fractions of its image frame (null when it has none).
CARD_REGIONS = """
return [...document.querySelectorAll("#results .card")].map((card) => {
  const region = card.querySelector(".card-region");
  if (region.hidden) return null;
  const frame = card.querySelector(".card-image").getBoundingClientRect();
  const r = region.getBoundingClientRect();
  return [(r.left - frame.left) / frame.width, (r.top - frame.top) / frame.height,
          (r.right - frame.left) / frame.width, (r.bottom - frame.top) / frame.height];
});
"""


@pytest.fixture(scope="module")
def region_server(region_index, embedder):
    """The app on the index with region vectors."""
    settings, store, _, _ = region_index
    yield from serve(settings, embedder, store)


def drag(driver, element, start, end, *, touch=False):
    """Press at ``start`` and release at ``end`` (fractions of ``element``), with a mouse or
    a finger."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    rect = element.rect
    points = [(round((x - 0.5) * rect["width"]), round((y - 0.5) * rect["height"]))
              for x, y in (start, end)]
    kind = interaction.POINTER_TOUCH if touch else interaction.POINTER_MOUSE
    actions = ActionBuilder(driver, mouse=PointerInput(kind, "finger" if touch else "mouse"))
    pointer = actions.pointer_action
    pointer.move_to(element, *points[0]).pointer_down()
    for step in (0.33, 0.66, 1.0):  # moves in between, as a hand makes them
        x = points[0][0] + step * (points[1][0] - points[0][0])
        y = points[0][1] + step * (points[1][1] - points[0][1])
        pointer.move_to(element, round(x), round(y))
    pointer.pointer_up()
    actions.perform()


def test_drawing_a_box_searches_with_that_part_and_shows_matched_regions(
        region_server, browser, region_index, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, _, folder = region_index
    query = sorted((folder / "t-shirt").glob("*.jpg"))[2]
    browser.get(f"{region_server}/")
    severe_logs(browser)
    browser.find_element(By.ID, "file-input").send_keys(str(query))
    whole = wait_for_cards(browser)
    assert whole[0]["id"] == content_hash(query.read_bytes())
    assert browser.execute_script(CARD_REGIONS) == [None] * len(whole)

    editor = browser.find_element(By.ID, "box-editor")
    assert editor.is_displayed()
    stage = browser.find_element(By.ID, "box-stage")
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "return document.getElementById('box-image').naturalWidth") > 0)

    # A mouse drag over the lower-left part of the photo.
    drag(browser, stage, (0.05, 0.45), (0.6, 0.95))
    WebDriverWait(browser, 60).until(lambda d: "marked part" in d.find_element(
        By.ID, "status").text)
    part = wait_for_cards(browser)
    assert [c["id"] for c in part] != [c["id"] for c in whole]
    assert part[0]["id"] == content_hash(query.read_bytes())  # its own photo first
    selection = browser.find_element(By.ID, "box-selection")
    assert selection.is_displayed()
    regions = browser.execute_script(CARD_REGIONS)
    assert all(r is not None for r in regions)
    for x0, y0, x1, y1 in regions:  # drawn inside the thumbnail's frame, with a size
        assert -0.01 <= x0 < x1 <= 1.01 and -0.01 <= y0 < y1 <= 1.01
        assert x1 - x0 > 0.05 and y1 - y0 > 0.05

    shot = tmp_path / "regions.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, PROJECT_ROOT / "docs" / "screenshot-regions.png")

    # A finger draws another box, over the upper right: the results change again.
    drag(browser, stage, (0.95, 0.05), (0.4, 0.5), touch=True)
    upper = wait_for_cards(browser, lambda cs: [c["id"] for c in cs] != [c["id"] for c in part])
    assert all(r is not None for r in browser.execute_script(CARD_REGIONS))

    # A click is not a box; "Search the whole photo" goes back to the whole photo.
    drag(browser, stage, (0.5, 0.5), (0.505, 0.505))
    assert [c["id"] for c in wait_for_cards(browser)] == [c["id"] for c in upper]
    browser.find_element(By.ID, "box-clear").click()
    back = wait_for_cards(browser, lambda cs: [c["id"] for c in cs] == [c["id"] for c in whole])
    assert browser.execute_script(CARD_REGIONS) == [None] * len(back)
    assert not selection.is_displayed()
    assert severe_logs(browser) == []


# -- near-duplicate groups ------------------------------------------------------------------------


@pytest.fixture
def duplicates_server(test_settings, store, embedder, photos, tmp_path):
    """The app on five real photos and a half-size copy of one: ``(url, original id, copy
    id)``."""
    from PIL import Image

    from indexer.index import index_folder

    folder = tmp_path / "photos"
    folder.mkdir()
    for label in ("dress", "hat", "pants", "shoes", "skirt"):
        shutil.copyfile(photos[label][1], folder / f"{label}.jpg")
    with Image.open(photos["shoes"][1]) as im:
        im.resize((im.width // 2, im.height // 2)).save(folder / "shoes-small.jpg", quality=90)
    index_folder(folder, settings=test_settings, embedder=embedder, store=store, progress=False)
    ids = (content_hash((folder / name).read_bytes()) for name in ("shoes.jpg", "shoes-small.jpg"))
    for url in serve(test_settings, embedder, store):
        yield url, *ids


def test_duplicates_page_shows_a_photo_with_its_copy(duplicates_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, original, copy = duplicates_server
    browser.get(f"{url}/")
    severe_logs(browser)
    browser.find_element(By.LINK_TEXT, "Duplicates").click()  # the nav link
    WebDriverWait(browser, 120).until(EC.url_contains("/duplicates"))
    groups = browser.find_elements(By.CSS_SELECTOR, ".dup-group")
    assert len(groups) == 1
    members = groups[0].find_elements(By.CSS_SELECTOR, ".dup-member")
    assert {m.get_attribute("data-id") for m in members} == {original, copy}
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('.dup-member img')]"
        ".every((img) => img.complete && img.naturalWidth > 0)"))
    cosine = members[1].find_element(By.CSS_SELECTOR, ".score").text
    assert 0.9 < float(cosine) < 1.0
    assert "1 group of 2 images among 6 indexed" in browser.find_element(
        By.ID, "duplicates-summary").text

    # A threshold no copy reaches: no groups, and it says so.
    field = browser.find_element(By.ID, "threshold")
    field.clear()
    field.send_keys("1")
    field.submit()
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.ID, "no-groups")))
    assert "threshold=1" in browser.current_url

    # Back to the default, then a member opens its detail page.
    browser.back()
    WebDriverWait(browser, 60).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".dup-member")))
    second = browser.find_elements(By.CSS_SELECTOR, ".dup-member")[1]
    opened = second.get_attribute("data-id")
    second.click()
    WebDriverWait(browser, 30).until(EC.url_contains(f"/images/{opened}"))
    assert severe_logs(browser) == []


def test_resolving_a_group_on_the_page(duplicates_server, browser, test_settings):
    """Signed in with a write key, a person keeps the copy and hides the original; the group is
    gone and the decision listed; Undo brings it back."""
    import uuid

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from imgsearch.esclient import connect
    from imgsearch.keys import KeyStore

    url, original, copy = duplicates_server
    key, _ = KeyStore(connect(test_settings), test_settings.api_keys_index).create(
        f"resolver-{uuid.uuid4().hex[:6]}", "write")
    browser.get(f"{url}/duplicates")
    assert not browser.find_elements(By.CSS_SELECTOR, ".dup-resolve")  # not signed in
    browser.find_element(By.ID, "signin-key").send_keys(key)
    browser.find_element(By.ID, "signin").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "signed-in-as"))
    browser.get(f"{url}/duplicates")
    browser.find_element(By.CSS_SELECTOR, f'.dup-keep input[value="{copy}"]').click()
    browser.find_element(By.CSS_SELECTOR, '.dup-resolve button[value="hide"]').click()
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.ID, "no-groups")))
    listed = browser.find_element(By.ID, "decisions").text
    assert f"Hidden {original[:12]} as a copy of {copy[:12]}" in listed
    browser.find_element(By.CSS_SELECTOR, ".dup-undo button").click()
    WebDriverWait(browser, 60).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".dup-group")))
    members = browser.find_elements(By.CSS_SELECTOR, ".dup-member")
    assert {m.get_attribute("data-id") for m in members} == {original, copy}
    assert severe_logs(browser) == []
    # Cookies belong to a host, not a port: this server's session must not reach the next
    # test's server on 127.0.0.1 (which did not sign it).
    browser.delete_all_cookies()


# -- more / less like these: marks on the results -------------------------------------------------


def test_marking_results_refines_the_search(server, browser, photos):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/")
    severe_logs(browser)
    query = photos["shorts"][2]
    browser.find_element(By.ID, "file-input").send_keys(str(query))
    first = wait_for_cards(browser)
    feedback_bar = browser.find_element(By.ID, "feedback-bar")
    assert not feedback_bar.is_displayed()

    # Mark the top 12 as a person would: shorts are good, anything else bad.
    elements = browser.find_elements(By.CSS_SELECTOR, "#results .card")[:12]
    good = [c["id"] for c in first[:12] if c["label"] == "shorts"]
    bad = [c["id"] for c in first[:12] if c["label"] != "shorts"]
    assert bad, "the query must have some wrong results to refine"
    for card, element in zip(first[:12], elements, strict=True):
        mark = "like" if card["label"] == "shorts" else "unlike"
        button = element.find_element(By.CSS_SELECTOR, f'.mark[data-mark="{mark}"]')
        button.click()
        assert button.get_attribute("aria-pressed") == "true"
    assert feedback_bar.is_displayed()
    assert f"{len(good)} good · {len(bad)} bad" in feedback_bar.text

    browser.find_element(By.ID, "feedback-apply").click()
    refined = wait_for_cards(browser, lambda cs: [c["id"] for c in cs] != [c["id"] for c in first])
    WebDriverWait(browser, 10).until(
        EC.text_to_be_present_in_element((By.ID, "feedback-count"), "refined"))
    assert not {c["id"] for c in refined} & set(bad)  # less like these: gone
    assert set(good) <= {c["id"] for c in refined}  # more like these: still shown
    top = [c["label"] for c in refined[:12]]
    assert top.count("shorts") >= [c["label"] for c in first[:12]].count("shorts")
    # The marks stay on the cards that are still shown.
    pressed = browser.execute_script("""
        return [...document.querySelectorAll('#results .card')].filter((c) =>
          c.querySelector('.mark[data-mark="like"]').getAttribute('aria-pressed') === 'true')
          .map((c) => c.dataset.id);""")
    assert set(pressed) <= set(good) and pressed

    # Clearing the marks goes back to the plain search.
    browser.find_element(By.ID, "feedback-clear").click()
    wait_for_cards(browser, lambda cs: [c["id"] for c in cs] == [c["id"] for c in first])
    assert not feedback_bar.is_displayed()
    assert severe_logs(browser) == []


# -- why it matched: the heat map on the detail page ----------------------------------------------

# How much of a heat canvas is painted warm: the share of pixels with a strong red over blue.
HEAT_PAINTED = """
const canvas = document.getElementById(arguments[0]);
if (canvas.hidden || canvas.dataset.drawn !== "true" || !canvas.width) return null;
const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let warm = 0;
for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 90 && d[i] > d[i + 2] + 100) warm += 1;
return warm / (d.length / 4);
"""


def test_the_detail_page_shows_why_a_result_matched(server, browser, photos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/")
    severe_logs(browser)
    query = photos["shoes"][4]
    browser.find_element(By.ID, "file-input").send_keys(str(query))
    cards = wait_for_cards(browser)
    second = browser.find_elements(By.CSS_SELECTOR, "#results .card")[1]
    cosine = float(second.find_element(By.CSS_SELECTOR, ".score").text)
    second.find_element(By.CSS_SELECTOR, ".card-image").click()
    WebDriverWait(browser, 30).until(lambda d: "query=upload" in d.current_url)
    assert cards[1]["id"] in browser.current_url

    toggle = browser.find_element(By.ID, "explain-toggle")
    assert toggle.is_displayed()
    toggle.click()
    status = browser.find_element(By.ID, "explain-status")
    WebDriverWait(browser, 60).until(lambda d: status.text.startswith("Cosine"))
    assert float(status.text.split()[1].rstrip(":")) == pytest.approx(cosine, abs=0.002)
    for canvas in ("result-heat", "query-heat"):
        painted = WebDriverWait(browser, 30).until(
            lambda d, c=canvas: d.execute_script(HEAT_PAINTED, c))
        assert 0.02 < painted < 0.98, (canvas, painted)  # some parts count, not all alike

    shot = tmp_path / "explain.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, PROJECT_ROOT / "docs" / "screenshot-explain.png")

    # The toggle hides the heat again; a page opened from "more like this" explains too.
    toggle.click()
    assert not browser.find_element(By.ID, "result-heat").is_displayed()
    like = cards[0]["id"]
    browser.get(f"{server}/images/{cards[2]['id']}?query={like}")
    browser.find_element(By.ID, "explain-toggle").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "explain-status").text.startswith("Cosine"))
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(HEAT_PAINTED, "query-heat"))
    # Opened without a query, the page offers no explanation.
    browser.get(f"{server}/images/{cards[2]['id']}")
    assert not browser.find_element(By.ID, "explain").is_displayed()
    assert severe_logs(browser) == []


# -- signing in with a key ------------------------------------------------------------------------


@pytest.fixture
def private_server(clothing_index, embedder):
    """The app with keys required, and a read key: ``(url, key)``."""
    import uuid

    from imgsearch.esclient import connect
    from imgsearch.keys import KeyStore

    settings, store, _ = clothing_index
    local = settings.with_(public_read=False, keys_index=f"t-keys-{uuid.uuid4().hex[:12]}")
    keys = KeyStore(connect(local), local.api_keys_index)
    key, _ = keys.create("browser", "read")
    for url in serve(local, embedder, store):
        yield url, key
    keys.es.indices.delete(index=keys.index, ignore_unavailable=True)


def test_signing_in_with_a_key_searching_and_signing_out(private_server, browser, photos):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, key = private_server
    browser.get(f"{url}/")
    browser.delete_all_cookies()  # another test's session on 127.0.0.1 (cookies ignore ports)
    browser.get(f"{url}/")
    assert "needs an API key" in browser.find_element(By.CSS_SELECTOR, ".error-message").text
    browser.find_element(By.ID, "signin-key").send_keys(key)
    browser.find_element(By.ID, "signin").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "signed-in-as"))
    assert browser.find_element(By.ID, "signed-in-as").text == "browser (read)"
    cookie = browser.get_cookie("imgsearch_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # out of scripts' reach
    severe_logs(browser)

    browser.find_element(By.ID, "file-input").send_keys(str(photos["hat"][0]))
    cards = wait_for_cards(browser)
    assert len(cards) == 24 and cards[0]["id"] == content_hash(photos["hat"][0].read_bytes())
    assert severe_logs(browser) == []

    browser.find_element(By.ID, "signout").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "signin-key"))
    assert browser.get_cookie("imgsearch_session") is None
    assert "needs an API key" in browser.find_element(By.CSS_SELECTOR, ".error-message").text


def test_searching_by_words_tags_on_cards_and_suggestions(server, browser):
    """Words typed in the box find photos by their tags; a card's tag searches for it; an
    unknown word is answered with the nearest known ones, one click away."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/")
    severe_logs(browser)
    box = browser.find_element(By.ID, "words-input")
    box.send_keys("shoes")
    browser.find_element(By.ID, "words-search").click()
    cards = wait_for_cards(browser, lambda cs: len(cs) == 24)
    assert {c["label"] for c in cards[:10]} == {"shoes"}
    assert "q=shoes" in browser.current_url
    first = browser.find_element(By.CSS_SELECTOR, "#results .card")
    tag = first.find_element(By.CSS_SELECTOR, ".card-tags .tag")
    name = tag.text
    assert name
    tag.click()  # a page searching for that class
    WebDriverWait(browser, 30).until(EC.url_contains("q="))
    cards = wait_for_cards(browser)
    assert browser.find_element(By.ID, "words-input").get_attribute("value") == name

    box = browser.find_element(By.ID, "words-input")
    box.clear()
    box.send_keys("sheo")
    browser.find_element(By.ID, "words-search").click()
    hint = WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "words-hint")))
    assert "sheo" in hint.text
    hint.find_element(By.LINK_TEXT, "shoe").click()
    cards = wait_for_cards(browser, lambda cs: {c["label"] for c in cs[:10]} == {"shoes"})
    assert severe_logs(browser) == []


def test_the_search_page_on_a_phone(server, browser, photos):
    """At 390 x 844 the query (words, photo, URL) is on the first screen and the filters fold
    behind one button that counts them; a search, then a filter from the panel."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
    try:
        browser.get(f"{server}/")
        severe_logs(browser)
        bottom = browser.execute_script(
            "return document.getElementById('dropzone').getBoundingClientRect().bottom")
        assert bottom <= 844  # the photo box without scrolling
        assert browser.execute_script(  # nothing wider than the phone
            "return document.documentElement.scrollWidth") <= 390
        assert browser.find_element(By.ID, "words-input").is_displayed()
        assert not browser.find_element(By.ID, "sidebar").is_displayed()
        toggle = browser.find_element(By.ID, "filters-toggle")
        assert toggle.is_displayed() and toggle.text == "Filters"

        browser.find_element(By.ID, "file-input").send_keys(str(photos["pants"][0]))
        wait_for_cards(browser)
        width = browser.execute_script(
            "return document.getElementById('results').getBoundingClientRect().width")
        assert width >= 390 - 2 * 16 - 2  # the results fill the width (16 px margins)

        toggle.click()
        WebDriverWait(browser, 10).until(
            lambda d: d.find_element(By.ID, "sidebar").is_displayed())
        browser.find_element(By.CSS_SELECTOR, 'input[name="label"][value="pants"]').click()
        browser.find_element(By.ID, "filters-done").click()
        assert not browser.find_element(By.ID, "sidebar").is_displayed()
        assert toggle.text == "Filters (1)"
        cards = wait_for_cards(browser, lambda cs: {c["label"] for c in cs} == {"pants"})
        assert cards
        assert severe_logs(browser) == []
    finally:
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1,
            "mobile": False})
