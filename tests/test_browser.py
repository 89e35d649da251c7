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
import time
from pathlib import Path

import pytest

from tiny import TINY, write_teacher
from webui_env import load, standin_app, start_webui, stop_jobs

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
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def webui(tmp_path):
    folder = start_webui(tmp_path / "webui")
    teacher = write_teacher(folder, TINY["sd-v1"])
    load(teacher)
    yield folder
    stop_jobs()
    standin_app.reset(tmp_path / "after")


@pytest.fixture
def slow_progress(monkeypatch):
    """A tiny model converts in a blink; 5 ms per tensor lets the progress bar be seen polling."""
    from bksdm_ext.webui import a1111

    report = a1111.Progress.__call__

    def slowly(self, done, total):
        time.sleep(0.005)
        report(self, done, total)

    monkeypatch.setattr(a1111.Progress, "__call__", slowly)


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


def _dropdown_options(page):
    """The checkpoint dropdown's choices, read by opening it as a user would."""
    page.locator("#setting_sd_model_checkpoint input").click()
    options = page.locator("#setting_sd_model_checkpoint ul.options li")
    options.first.wait_for()
    texts = [t.replace("✓", "").strip() for t in options.all_inner_texts()]
    return texts


def test_convert_tab_in_the_browser(browser, webui, slow_progress, tmp_path):
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
        assert student.name in _dropdown_options(page)
        page.keyboard.press("Escape")
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
        page.locator("#bksdm_latency_run").click()
        result = page.locator("#bksdm_latency_result").first
        expect(result.locator(".bksdm-success")).to_contain_text("Measured 2 checkpoints")
        rows = page.locator("#bksdm_latency_table tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(1)).to_contain_text("tiny")
        expect(page.locator("#bksdm_latency_chart img")).to_have_count(1)
        page.screenshot(path=str(tmp_path / "latency.png"), full_page=True)
        try:
            shutil.copyfile(str(tmp_path / "latency.png"), "/tmp/bksdm-latency-tab.png")
        except OSError:
            pass
        assert _loaded_file() == webui / "teacher.safetensors"
        assert js_errors == []
    finally:
        standin_app.stop()


def test_distill_tab_starts_a_job_the_jobs_tab_follows_and_cancels(browser, webui, tmp_path):
    from playwright.sync_api import expect

    from bksdm_ext.demo import write_tiny_teacher
    from bksdm_ext.webui import jobs_service
    from test_distill import make_dataset

    write_tiny_teacher(webui / "tiny-sd.safetensors")  # a whole tiny model: the job trains it
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
        for elem_id, value in (("steps", "400"), ("batch", "2"), ("accum", "1"), ("lr", "0.001"),
                               ("resolution", "32"), ("save_every", "0"), ("sample_every", "0")):
            page.locator("#bksdm_distill_%s input" % elem_id).fill(value)
        for label in ("Gradient checkpointing", "EMA of the weights"):
            page.get_by_label(label).first.uncheck()
        page.locator("#bksdm_distill_start").click()
        expect(page.locator("#bksdm_distill_result").first).to_contain_text("Follow it in the Jobs tab")

        page.locator("#bksdm_tabs > .tab-nav > button", has_text="Jobs").click()
        progress = page.locator("#bksdm_jobs_progress").first
        # No clicks: the page's own timer refreshes the tab while the job runs.
        expect(progress).to_contain_text(re.compile(r"step [1-9]\d*/400 \(\d+%\).*ETA \d+m"),
                                         timeout=120000)
        expect(page.locator("#bksdm_jobs_loss img")).to_have_count(1)
        expect(page.locator("#bksdm_jobs_log textarea")).to_have_value(re.compile("distilling"))
        expect(page.locator("#bksdm_jobs_table tbody tr")).to_have_count(1)
        expect(page.locator("#bksdm_jobs_table thead")).to_contain_text("state")
        page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)
        try:
            shutil.copyfile(str(tmp_path / "jobs.png"), "/tmp/bksdm-jobs-tab.png")
        except OSError:
            pass

        page.locator("#bksdm_jobs_cancel").click()
        expect(page.locator("#bksdm_jobs_message").first).to_contain_text("stops at its next step")
        expect(progress).to_contain_text("cancelled: stopped at step", timeout=120000)
        job = jobs_service.runner().jobs()[-1]
        assert job.state == "cancelled" and "nothing saved" in job.reason
        argv = " ".join(job.argv)
        assert "--data %s" % data in argv and "--steps 400" in argv and "--no-ema" in argv
        assert js_errors == []
    finally:
        standin_app.stop()


def test_block_picker_converts_a_custom_student_into_the_dropdown(browser, webui, tmp_path):
    from playwright.sync_api import expect

    student = webui / "teacher-my-cut.safetensors"
    _, url = standin_app.launch()
    try:
        page, js_errors = _open_tab(browser, url, "Convert", 1600)
        page.locator("#bksdm_refresh_loaded").click()
        expect(page.locator("#bksdm_loaded").first).to_contain_text("Loaded: teacher.safetensors")
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
        assert student.name in _dropdown_options(page)
        page.keyboard.press("Escape")
        page.screenshot(path=str(tmp_path / "block-picker.png"), full_page=True)
        from bksdm_ext.model.checkpoint import Checkpoint

        assert Checkpoint(student).metadata["bksdm.removal"] == \
            "down.0.1,down.1.1,down.2.1,up.0.1,up.1.1,up.2.1"
        assert js_errors == []
    finally:
        standin_app.stop()
