"""The Convert tab in a real browser: the stand-in WebUI page (tests/a1111) with the extension's JavaScript and
A1111's page helpers (progress bar, selectCheckpoint, tab-change callbacks), driven by headless Debian Chromium
through Playwright.

Needs /usr/bin/chromium (`apt-get install chromium`; the Makefile's .venv target installs it) and the `playwright`
package (pyproject's `test` extra; `playwright install` is never needed). Without them the test is skipped, except
under CI (CI=true, as .ci/run sets it), where it fails.
"""
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from tiny import TINY, write_teacher
from webui_env import allow_data_root, installed_webui, load, standin_app, start_webui, stop_jobs

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
SCREENSHOT_COPY = Path("/tmp/bksdm-convert-tab.png")
TIMEOUT_MS = 60000


def _missing_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return "Debian Chromium is missing: %s (apt-get install chromium, or `make .venv` as root)" % CHROMIUM
    return None


@pytest.fixture
def browser():
    missing = _missing_browser()
    if missing:
        if IN_CI:
            pytest.fail("CI needs the browser test: " + missing)
        pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    # expect() waits 5 s unless told otherwise (page.set_default_timeout does not reach
    # it): on a loaded machine a conversion or a comparison takes longer than that.
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
            expect.set_options(timeout=None)


@pytest.fixture
def webui(tmp_path):
    folder = start_webui(tmp_path / "webui")
    teacher = write_teacher(folder, TINY["sd-v1"])
    load(teacher)
    allow_data_root(tmp_path)  # the tests' data folders may be typed in
    yield folder
    stop_jobs()
    standin_app.reset(tmp_path / "after")


@pytest.fixture
def held_progress(monkeypatch):
    """A tiny model converts in a blink, faster than the page polls the progress on a fast
    machine and faster than a loaded machine's browser draws it: the conversion waits
    halfway, its progress reported, until the test sets the returned event (it has seen
    the bar)."""
    from bksdm_ext.webui import a1111

    report = a1111.Progress.__call__
    seen = threading.Event()

    def held(self, done, total):
        report(self, done, total)
        if done == total // 2:
            seen.wait(TIMEOUT_MS / 1000)

    monkeypatch.setattr(a1111.Progress, "__call__", held)
    yield seen
    seen.set()  # a test that failed before it saw the bar lets the conversion end


def _screenshot(page, path: Path, copy: str) -> None:
    """A full-page screenshot, with a copy at a fixed /tmp path to look at by hand."""
    page.screenshot(path=str(path), full_page=True)
    try:
        shutil.copyfile(str(path), copy)
    except OSError:
        pass


def _wait_for(condition, what, timeout=TIMEOUT_MS / 1000):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.1)


def _loaded_file():
    from modules import sd_models

    model = sd_models.model_data.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    return Path(info.filename) if info is not None else None


def _open_dropdown(page, elem_id):
    """Open a gradio 3.41 dropdown's list.  It opens on focus, and Escape hides the list
    but keeps the focus, so a box looked at before is left first: a click on a box that
    still has the focus would open nothing."""
    box = page.locator("#%s input" % elem_id)
    box.blur()
    box.click()


def _dropdown_options(page):
    """The checkpoint dropdown's choices, read by opening it as a user would; a click that
    lands while the page re-renders the dropdown (its choices just refreshed) opens
    nothing, so it is opened again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    options = page.locator("#setting_sd_model_checkpoint ul.options li")
    for attempt in range(3):
        _open_dropdown(page, "setting_sd_model_checkpoint")
        try:
            options.first.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    texts = [t.replace("✓", "").strip() for t in options.all_inner_texts()]
    return texts


def _wait_for_listed(page, checkpoint: Path) -> None:
    """Until the checkpoint dropdown offers `checkpoint` (the page refreshes the list in an
    event that follows the one that wrote the file)."""
    def listed():
        names = _dropdown_options(page)
        page.keyboard.press("Escape")
        return checkpoint.name in names

    _wait_for(listed, "%s in the checkpoint dropdown" % checkpoint.name)


def test_convert_tab_in_the_browser(browser, webui, held_progress, tmp_path):
    from playwright.sync_api import expect

    shots = tmp_path / "screenshots"
    shots.mkdir()
    teacher = webui / "teacher.safetensors"
    student = webui / "teacher-bk-small.safetensors"
    _, url = standin_app.launch()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        # only the stand-in server is reachable (gradio's page also asks for web fonts)
        page.route(re.compile(r"^(?!%s/).*" % re.escape(url)), lambda route: route.abort())
        js_errors, progress_polls = [], []
        page.on("pageerror", lambda error: js_errors.append(str(error)))
        page.on("request", lambda request: progress_polls.append(request.post_data)
                if request.url.endswith("/internal/progress") else None)

        page.goto(url + "/")
        page.locator("#tab_bksdm").wait_for(state="attached")
        page.evaluate("window.bksdmSamePage = true")
        checkpoint = page.locator("#setting_sd_model_checkpoint input")
        expect(checkpoint).to_have_value(re.compile(r"^teacher\.safetensors \["))

        # Opening the tab fills in the loaded model (bksdm.js clicks ↻ on tab change).
        summary = page.locator("#bksdm_loaded").first
        page.locator("#tabs > .tab-nav > button", has_text="BK-SDM").click()
        expect(summary).to_contain_text("Loaded: teacher.safetensors")
        expect(summary).to_contain_text("SD-V1, ε prediction")

        name = page.locator("#bksdm_output_name textarea")
        page.locator("#bksdm_preset label", has_text="Tiny").click()
        expect(name).to_have_value("teacher-bk-tiny")
        page.locator("#bksdm_preset label", has_text="Small").click()
        expect(name).to_have_value("teacher-bk-small")
        expect(page.locator("#bksdm_preview").first).to_contain_text("smaller")

        # Convert, with A1111's progress bar above the progress slot while it runs.
        page.evaluate("""() => {
            window.bksdmProgressSeen = [];
            new MutationObserver(() => {
                const bar = document.querySelector('.progressDiv');
                if (bar) window.bksdmProgressSeen.push(bar.textContent);
            }).observe(document.body, {childList: true, subtree: true, characterData: true});
        }""")
        page.locator("#bksdm_convert").click()
        bar = page.locator(".progressDiv")
        expect(bar).to_contain_text(re.compile(r"Converting: \d+/\d+ tensors"))
        page.screenshot(path=str(shots / "2-converting.png"), full_page=True)
        held_progress.set()
        result = page.locator("#bksdm_convert_result").first
        expect(result.locator(".bksdm-success")).to_contain_text("Wrote %s" % student)
        expect(result).to_contain_text("Time taken")
        expect(bar).to_have_count(0)  # the bar removed itself when the task completed
        page.screenshot(path=str(shots / "3-converted.png"), full_page=True)
        try:
            shutil.copyfile(str(shots / "3-converted.png"), str(SCREENSHOT_COPY))
        except OSError:
            pass

        assert student.is_file() and student.with_suffix(".yaml").is_file()
        polls = [json.loads(body) for body in progress_polls]
        assert polls and all(re.match(r"^task\(\w+\)$", p["id_task"]) and p["live_preview"] is False
                              for p in polls)
        assert any(re.search(r"Converting: \d+/\d+ tensors", text)
                   for text in page.evaluate("window.bksdmProgressSeen"))

        # The new checkpoint is in the dropdown without reloading the page.
        _wait_for_listed(page, student)
        assert page.evaluate("window.bksdmSamePage") is True

        # "Load it now" selects it (A1111's selectCheckpoint) and A1111 loads it.
        page.locator("#bksdm_load_now").click()
        expect(checkpoint).to_have_value(re.compile(r"^%s \[[0-9a-f]{10}\]$" % re.escape(student.name)))
        _wait_for(lambda: _loaded_file() == student, "the student to be the loaded model")
        from modules import shared

        assert shared.opts.sd_model_checkpoint.startswith(student.name)
        page.locator("#bksdm_refresh_loaded").click()
        expect(summary).to_contain_text("already a BK-SDM Small student")

        # Back to the teacher through the dropdown, then an invalid name is refused clearly.
        checkpoint.click()
        page.locator("#setting_sd_model_checkpoint ul.options li", has_text="teacher.safetensors").click()
        _wait_for(lambda: _loaded_file() == teacher, "the teacher to be loaded again")
        page.locator("#bksdm_refresh_loaded").click()
        expect(summary).to_contain_text("Loaded: teacher.safetensors")
        before = sorted(p.name for p in webui.parent.parent.rglob("*"))
        name.fill("../evil")
        page.locator("#bksdm_convert").click()
        expect(result.locator(".bksdm-error")).to_contain_text("'../evil' is not a valid checkpoint name")
        expect(page.locator("#bksdm_load_now")).to_be_hidden()
        page.screenshot(path=str(shots / "4-invalid-name.png"), full_page=True)
        assert sorted(p.name for p in webui.parent.parent.rglob("*")) == before

        assert page.evaluate("window.bksdmSamePage") is True
        assert js_errors == []
    finally:
        standin_app.stop()


def _open_tab(browser, url, sub_tab, height):
    """The page with BK-SDM › `sub_tab` open, only the stand-in server reachable; returns it
    and the list its JavaScript errors go to."""
    page = browser.new_page(viewport={"width": 1280, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    page.route(re.compile(r"^(?!%s/).*" % re.escape(url)), lambda route: route.abort())
    js_errors = []
    page.on("pageerror", lambda error: js_errors.append(str(error)))
    page.goto(url + "/")
    page.locator("#tabs > .tab-nav > button", has_text="BK-SDM").click()
    page.locator("#bksdm_tabs > .tab-nav > button", has_text=sub_tab).click()
    return page, js_errors


def _open_convert_tab(browser, url, height, loaded: str):
    """The Convert tab, its loaded-model line refreshed until it names `loaded`."""
    from playwright.sync_api import expect

    page, js_errors = _open_tab(browser, url, "Convert", height)
    page.locator("#bksdm_refresh_loaded").click()
    expect(page.locator("#bksdm_loaded").first).to_contain_text("Loaded: " + loaded)
    return page, js_errors


def test_latency_tab_in_the_browser(browser, webui, tmp_path):
    from playwright.sync_api import expect

    from bksdm_ext.model.convert import convert_checkpoint

    convert_checkpoint(webui / "teacher.safetensors", webui / "teacher-bk-tiny.safetensors", "tiny",
                       dtype="fp32")
    _, url = standin_app.launch()
    try:
        page, js_errors = _open_tab(browser, url, "Latency", 1200)
        expect(page.locator("#bksdm_device").first).to_contain_text("Device:")
        page.locator("#bksdm_latency_refresh").click()
        models = page.locator("#bksdm_latency_models label")
        expect(models).to_have_count(2)
        for label in models.all():
            label.click()
        for field, value in (("Steps", "2"), ("Width = height", "32"), ("Timed runs", "1"),
                             ("Warm-up runs", "0")):
            box = page.locator("#bksdm_tab_latency").get_by_label(re.compile("^" + re.escape(field)))
            box.fill(value)
        page.locator("#bksdm_latency_points textarea").fill("Euler:2, DPM++ 2M:1")
        page.locator("#bksdm_latency_run").click()
        result = page.locator("#bksdm_latency_result").first
        expect(result.locator(".bksdm-success")).to_contain_text("Measured 2 checkpoints at 2 "
                                                                 "draw point(s)")
        rows = page.locator("#bksdm_latency_table tbody tr")
        expect(rows).to_have_count(4)  # each checkpoint at each draw point
        expect(rows.nth(1)).to_contain_text("DPM++ 2M")
        expect(rows.nth(3)).to_contain_text("tiny")
        expect(page.locator("#bksdm_latency_chart img")).to_have_count(1)
        _screenshot(page, tmp_path / "latency.png", "/tmp/bksdm-latency-tab.png")
        assert _loaded_file() == webui / "teacher.safetensors"
        assert js_errors == []
    finally:
        standin_app.stop()


@pytest.fixture
def installed(tmp_path):
    """The extension installed as a user does (a copy under extensions/, no PYTHONPATH,
    another working directory), so its jobs run only as they would in a real A1111."""
    with installed_webui(tmp_path) as folder:
        allow_data_root(tmp_path)  # the tests' data folders may be typed in
        yield folder


def test_distill_tab_starts_a_job_the_jobs_tab_follows_to_the_dropdown(browser, installed,
                                                                       tmp_path):
    from playwright.sync_api import expect

    from bksdm_ext.demo import write_tiny_teacher
    from bksdm_ext.webui import jobs_service
    from test_distill import make_dataset

    write_tiny_teacher(installed / "tiny-sd.safetensors")  # a whole tiny model: the job trains it
    data = make_dataset(tmp_path / "data")
    _, url = standin_app.launch()
    try:
        page, js_errors = _open_tab(browser, url, "Distill", 1400)

        page.locator("#bksdm_distill_refresh").click()
        page.locator("#bksdm_distill_teacher input").click()
        page.locator("#bksdm_distill_teacher ul.options li", has_text="tiny-sd.safetensors").click()
        page.locator("#bksdm_distill_folder textarea").fill(str(data))
        page.locator("#bksdm_distill_check").click()
        expect(page.locator("#bksdm_distill_checked").first).to_contain_text("8 images with captions")
        # The objective: LCM shows its settings, how the result will draw and its learning
        # rate; KD hides them again.
        box = page.locator("#bksdm_distill_lcm_box")
        draws = page.locator("#bksdm_distill_lcm_draws").first
        lr = page.locator("#bksdm_distill_lr input")
        expect(box).to_be_hidden()
        page.locator("#bksdm_distill_objective label", has_text="LCM (few steps)").click()
        expect(box).to_be_visible()
        expect(draws).to_contain_text("draws with LCM, 4 steps, CFG 1 in A1111")
        expect(lr).to_have_value(re.compile(r"^(8e-0?6|0\.000008)$"))
        page.locator("#bksdm_distill_lcm_steps input").fill("2")
        expect(draws).to_contain_text("draws with LCM, 2 steps, CFG 1 in A1111")
        page.locator("#bksdm_distill_objective label", has_text="KD (the paper)").click()
        expect(box).to_be_hidden()
        expect(lr).to_have_value(re.compile(r"^(5e-0?5|0\.00005)$"))
        for elem_id, value in (("steps", "30"), ("batch", "2"), ("accum", "1"), ("lr", "0.001"),
                               ("resolution", "32"), ("save_every", "0"), ("sample_every", "0")):
            page.locator("#bksdm_distill_%s input" % elem_id).fill(value)
        for label in ("Gradient checkpointing", "EMA of the weights"):
            page.get_by_label(label).first.uncheck()
        page.locator("#bksdm_distill_start").click()
        expect(page.locator("#bksdm_distill_result").first).to_contain_text("Follow it in the Jobs tab")

        page.locator("#bksdm_tabs > .tab-nav > button", has_text="Jobs").click()
        progress = page.locator("#bksdm_jobs_progress").first
        # No clicks: the page's own timer refreshes the tab while the job runs (the run
        # logs every 10 steps: 30 leave time to see it between two refreshes).
        expect(progress).to_contain_text(re.compile(r"step [1-9]\d*/30 \(\d+%\).*ETA \d+m"),
                                         timeout=300000)
        expect(page.locator("#bksdm_jobs_loss img")).to_have_count(1)
        expect(page.locator("#bksdm_jobs_log textarea")).to_have_value(re.compile("distilling"))
        expect(page.locator("#bksdm_jobs_table tbody tr")).to_have_count(1)
        expect(page.locator("#bksdm_jobs_table thead")).to_contain_text("state")
        expect(page.locator("#bksdm_jobs_teacher_data").first).to_be_hidden()  # real images only
        _screenshot(page, tmp_path / "jobs.png", "/tmp/bksdm-jobs-tab.png")

        expect(progress).to_contain_text("succeeded", timeout=600000)
        job = jobs_service.runner().jobs()[-1]
        assert job.state == "succeeded" and Path(job.registered).is_file()
        argv = " ".join(job.argv)
        assert "--data=%s" % data in argv and "--steps=30" in argv and "--no-ema" in argv
        # The page refreshed the checkpoint dropdown itself: the student is there.
        _wait_for_listed(page, Path(job.registered))
        assert js_errors == []
    finally:
        standin_app.stop()


def _pick(page, elem_id, text):
    """Choose `text` in a dropdown whose choices an update is bringing: gradio 3.41 does not
    redraw a list that is already open, so it is opened again until the choice shows."""
    option = page.locator("#%s ul.options li" % elem_id, has_text=text)
    deadline = time.time() + TIMEOUT_MS / 1000
    while True:
        _open_dropdown(page, elem_id)
        try:
            option.click(timeout=2000)
            return
        except Exception:
            if time.time() > deadline:
                raise
            page.keyboard.press("Escape")


def test_uploads_through_the_page_are_picked_from_the_lists(browser, webui, tmp_path):
    """A remote user's way in: a training-set .zip on the Distill tab and photos on the
    DreamBooth tab, sent by the browser's file chooser, then chosen from the lists."""
    import zipfile

    from playwright.sync_api import expect
    from PIL import Image

    from bksdm_ext.webui import uploads
    from test_distill import make_dataset

    data = make_dataset(tmp_path / "cats")
    archive = tmp_path / "cats.zip"
    with zipfile.ZipFile(str(archive), "w") as packed:
        for path in sorted(data.iterdir()):
            packed.write(str(path), "cats/" + path.name)
    photos = []
    for i, color in enumerate(("red", "blue")):
        photos.append(str(tmp_path / ("dog%d.png" % i)))
        Image.new("RGB", (40, 48), color).save(photos[-1])
    _, url = standin_app.launch()
    try:
        page, js_errors = _open_tab(browser, url, "Distill", 1400)
        with page.expect_file_chooser() as chooser:
            page.locator("#bksdm_distill_folder_upload").click()
        chooser.value.set_files(str(archive))
        expect(page.locator("#bksdm_distill_folder_upload_result").first).to_contain_text(
            "cats: stored, 8 images with captions")
        expect(page.locator("#bksdm_distill_folder_uploaded input")).to_have_value("cats")
        page.locator("#bksdm_distill_check").click()
        expect(page.locator("#bksdm_distill_checked").first).to_contain_text(
            "%s: 8 images with captions" % uploads.folder("datasets", "cats"))

        page.locator("#bksdm_tabs > .tab-nav > button", has_text="DreamBooth").click()
        with page.expect_file_chooser() as chooser:
            page.locator("#bksdm_db_folder_upload").click()
        chooser.value.set_files(photos)
        expect(page.locator("#bksdm_db_folder_upload_result").first).to_contain_text(
            "dog0: 2 photos stored")
        expect(page.locator("#bksdm_db_folder_uploaded input")).to_have_value("dog0")
        stored = uploads.folder("instances", "dog0")
        assert sorted(p.name for p in stored.iterdir()) == ["dog0.png", "dog1.png"]
        assert js_errors == []

        # Another visitor's page, built before the uploads, lists them after ↻.
        page, js_errors = _open_tab(browser, url, "Distill", 1400)
        page.locator("#bksdm_distill_folder_refresh").click()
        _pick(page, "bksdm_distill_folder_uploaded", "cats")
        page.locator("#bksdm_distill_check").click()
        expect(page.locator("#bksdm_distill_checked").first).to_contain_text(
            "8 images with captions")
        assert js_errors == []
    finally:
        standin_app.stop()


def test_convert_tab_starts_from_a_student_plus_the_loaded_models_difference(browser, webui,
                                                                             tmp_path):
    from playwright.sync_api import expect

    from test_webui_transplant import quick_path_files

    _, student, mine = quick_path_files(webui)  # base: sd-base.safetensors
    load(mine)
    out = webui / "mine-bk-small.safetensors"
    _, url = standin_app.launch()
    try:
        page, js_errors = _open_convert_tab(browser, url, 1400, "mine.safetensors")
        box = page.locator("#bksdm_transplant_box")
        expect(box).to_be_hidden()
        page.locator("#bksdm_start_from label", has_text="difference from its base").click()
        expect(box).to_be_visible()
        expect(box).to_contain_text("bksdm import-diffusers")
        for elem_id, name in (("student", student.name), ("base", "sd-base.safetensors")):
            page.locator("#bksdm_transplant_%s input" % elem_id).click()
            page.locator("#bksdm_transplant_%s ul.options li" % elem_id, has_text=name).click()
        expect(page.locator("#bksdm_output_name textarea")).to_have_value("mine-bk-small")
        page.locator("#bksdm_convert").click()
        result = page.locator("#bksdm_convert_result").first
        expect(result.locator(".bksdm-success")).to_contain_text(
            "the BK-SDM small student %s + 1.00 × (loaded model − sd-base.safetensors)"
            % student.name)
        expect(page.locator("#bksdm_load_now")).to_be_visible()
        page.screenshot(path=str(tmp_path / "transplant.png"), full_page=True)
        assert out.is_file() and out.with_suffix(".yaml").is_file()
        assert js_errors == []
    finally:
        standin_app.stop()


def test_convert_tab_bakes_a_lora_into_a_student(browser, webui, tmp_path):
    """The third "Start from": the LoRA list replaces the base list, and the result says what
    was added."""
    from playwright.sync_api import expect

    from modules import shared
    from test_lora_keymap import save_lora, teacher_lora
    from test_webui_transplant import quick_path_files

    base, student, _ = quick_path_files(webui)
    load(base)
    loras = Path(shared.cmd_opts.lora_dir)
    loras.mkdir(parents=True, exist_ok=True)
    save_lora(loras / "mylora.safetensors", teacher_lora("sd-v1", "lora", "diffusers")[0])
    _, url = standin_app.launch()
    try:
        page, js_errors = _open_convert_tab(browser, url, 1400, "sd-base.safetensors")
        page.locator("#bksdm_start_from label", has_text="a LoRA made for").click()
        expect(page.locator("#bksdm_transplant_box")).to_contain_text("merged into the student")
        expect(page.locator("#bksdm_transplant_base")).to_be_hidden()
        for elem_id, name in (("student", student.name), ("lora", "mylora.safetensors")):
            page.locator("#bksdm_transplant_%s input" % elem_id).click()
            page.locator("#bksdm_transplant_%s ul.options li" % elem_id, has_text=name).click()
        page.locator("#bksdm_output_name textarea").fill("base-small-mylora")
        page.locator("#bksdm_convert").click()
        expect(page.locator("#bksdm_convert_result").first.locator(".bksdm-success")).to_contain_text(
            "the BK-SDM small student %s + 1.00 × the LoRA mylora.safetensors" % student.name)
        assert (webui / "base-small-mylora.safetensors").is_file() and js_errors == []
    finally:
        standin_app.stop()


def test_compare_tab_in_the_browser(browser, webui, tmp_path):
    from playwright.sync_api import expect

    from bksdm_ext.model.convert import convert_checkpoint

    convert_checkpoint(webui / "teacher.safetensors", webui / "teacher-bk-small.safetensors",
                       "small", dtype="fp32")
    _, url = standin_app.launch()
    try:
        page, js_errors = _open_tab(browser, url, "Compare", 1600)
        page.locator("#bksdm_compare_refresh").click()
        checked = page.locator("#bksdm_compare_models input:checked")
        expect(checked).to_have_count(2)  # the loaded teacher and its student, preselected
        page.locator("#bksdm_compare_source label", has_text="Typed lines").click()
        page.locator("#bksdm_compare_typed textarea").fill("a red cube\na blue ball")
        tab = page.locator("#bksdm_tab_compare")
        for field, value in (("Prompts to use", "1"), ("Seeds per prompt", "2"), ("Steps", "2"),
                             ("Width = height", "32")):
            tab.get_by_label(re.compile("^" + re.escape(field))).fill(value)
        expect(page.locator("#bksdm_compare_clip").first).to_contain_text("CLIP")
        page.locator("#bksdm_compare_run").click()
        result = page.locator("#bksdm_compare_result").first
        expect(result.locator(".bksdm-success")).to_contain_text("Compared 2 checkpoints on 2 "
                                                                 "images each")
        rows = page.locator("#bksdm_compare_table tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("inf")
        expect(rows.nth(1)).to_contain_text("small")
        expect(page.locator("#bksdm_compare_grid img")).to_have_count(1)
        expect(page.locator("#bksdm_compare_csv a")).to_have_count(1)
        expect(page.locator("#bksdm_compare_explanations").first).to_contain_text(
            "agreement with the teacher")
        _screenshot(page, tmp_path / "compare.png", "/tmp/bksdm-compare-tab.png")
        assert _loaded_file() == webui / "teacher.safetensors"
        assert js_errors == []
    finally:
        standin_app.stop()


def test_block_picker_converts_a_custom_student_into_the_dropdown(browser, webui, tmp_path):
    from playwright.sync_api import expect

    student = webui / "teacher-my-cut.safetensors"
    _, url = standin_app.launch()
    try:
        page, js_errors = _open_convert_tab(browser, url, 1600, "teacher.safetensors")
        page.locator("#bksdm_preset label", has_text="Small").click()
        page.locator("#bksdm_block_picker").get_by_text("Pick blocks").click()
        blocks = page.locator("#bksdm_blocks")
        expect(blocks.locator("input:checked")).to_have_count(4 + 4 + 1)  # down.*.1, up.*.1, mid
        summary = page.locator("#bksdm_blocks_summary").first
        # Keep the mid block: that is Base; then also keep stage 3's layers.
        blocks.get_by_label("mid", exact=True).uncheck()
        expect(summary).to_contain_text("(= the base preset)")
        base_text = summary.inner_text()
        blocks.get_by_label("down.3.1", exact=True).uncheck()
        expect(summary).to_contain_text("Cannot remove these: stage 3 removes 0 down and 1 up")
        blocks.get_by_label("up.3.1", exact=True).uncheck()
        expect(summary).to_contain_text("down.0.1,down.1.1,down.2.1,up.0.1,up.1.1,up.2.1")
        counts = [re.search(r"→ ([\d,]+)", t).group(1) for t in (base_text, summary.inner_text())]
        assert int(counts[1].replace(",", "")) > int(counts[0].replace(",", ""))
        expect(summary).to_contain_text(re.compile(r"step time 0\.\d\d× the teacher's"))
        page.locator("#bksdm_scan_refresh").click()
        expect(page.locator("#bksdm_scan_status").first).to_contain_text(
            "No scan of teacher.safetensors yet")

        page.locator("#bksdm_use_blocks input").check()
        page.locator("#bksdm_output_name textarea").fill(student.stem)
        page.locator("#bksdm_convert").click()
        result = page.locator("#bksdm_convert_result").first
        expect(result.locator(".bksdm-success")).to_contain_text("Wrote %s" % student)
        _wait_for_listed(page, student)
        page.screenshot(path=str(tmp_path / "block-picker.png"), full_page=True)
        from bksdm_ext.model.checkpoint import Checkpoint

        assert Checkpoint(student).metadata["bksdm.removal"] == \
            "down.0.1,down.1.1,down.2.1,up.0.1,up.1.1,up.2.1"
        assert js_errors == []
    finally:
        standin_app.stop()
