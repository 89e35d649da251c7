"""The Distill, DreamBooth and Jobs tabs inside the A1111 1.10.1 stand-in, with real
worker processes training tiny models on the CPU."""
import json
from pathlib import Path

import pytest
from PIL import Image

from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.jobs.runner import CANCELLED, SUCCEEDED
from test_convert import ldm_from_yaml, load_file, unet_part
from test_distill import make_dataset
from test_jobs import wait
from webui_env import allow_data_root, installed_webui, stop_jobs

FAST = dict(steps=6, batch_size=2, grad_accum=1, lr=1e-3, resolution=32, precision="no",
            gradient_checkpointing=False, ema=False, use_8bit_adam=False, save_every=3,
            sample_every=3, sample_prompts="a red circle", gpus=1)


@pytest.fixture
def webui(tmp_path):
    """The extension installed under the stand-in's extensions/ folder, run from elsewhere
    with no PYTHONPATH: its jobs work only as they would in a real A1111."""
    with installed_webui(tmp_path) as folder:
        write_tiny_teacher(folder / "tiny-sd.safetensors")
        from modules import sd_models

        sd_models.list_models()
        allow_data_root(tmp_path)  # the tests' data folders may be typed in
        yield folder


def listed_checkpoints():
    from modules import sd_models

    return {Path(info.filename) for info in sd_models.checkpoints_list.values()}


def tabs():
    from bksdm_ext.webui import distill_tab, jobs_service, jobs_tab

    return distill_tab, jobs_service, jobs_tab


def start_distill(tab, teacher_title, data, free_vram=False, start_from=(), **changes):
    form = dict(FAST, **changes)
    return tab.start(teacher_title, "Small", tab.SOURCES[0], str(data), 0, "", "", False,
                     form["steps"], form["batch_size"], form["grad_accum"], form["lr"],
                     form["resolution"], form["precision"], form["gradient_checkpointing"],
                     form["ema"], form["use_8bit_adam"], form["save_every"],
                     form["sample_every"], form["sample_prompts"], free_vram, form["gpus"],
                     "", *start_from)  # "": nothing uploaded


@pytest.mark.slow
def test_a_distillation_started_in_the_tab_lands_in_the_dropdown_with_a_card(webui, tmp_path):
    from modules import sd_models

    distill_tab, jobs_service, jobs_tab = tabs()
    data = make_dataset(tmp_path / "data")
    title = distill_tab.checkpoints.titles(students=False)[0]
    assert "tiny-sd" in title
    checked = distill_tab.check_dataset(str(data))
    assert "8 images with captions" in checked and "bksdm-success" in checked

    message = start_distill(distill_tab, title, data)
    assert "bksdm-success" in message, message
    runner = jobs_service.runner()
    job = runner.jobs()[-1]
    assert job.kind == "distill" and "--arch=small" in job.argv
    from bksdm_ext.jobs.runner import EXTENSION_ROOT

    assert Path(EXTENSION_ROOT) == webui.parent.parent / "extensions" / "sd-webui-bksdm"
    job = wait(runner, job.id, lambda j: j.state not in ("queued", "running"))
    assert job.state == SUCCEEDED, runner.log_tail(job.id)

    registered = Path(job.registered)
    assert registered.parent == webui and registered.is_file()
    assert registered.with_suffix(".yaml").is_file()
    card = registered.with_suffix(".preview.png")
    with Image.open(card) as image:
        assert image.size == (32, 32)  # the student's first sample, cropped from the grid
    assert registered in {Path(i.filename) for i in sd_models.checkpoints_list.values()}
    state, metadata = load_file(registered)
    assert metadata["bksdm.preset"] == "small" and metadata["bksdm.distilled_steps"] == "6"
    ldm_from_yaml(registered.with_suffix(".yaml")).load_state_dict(unet_part(state), strict=True)
    # the samples were scored against the teacher's; the Jobs tab plots that, best starred
    from bksdm_ext.webui import job_scores

    plot, best = job_scores.view(jobs_service.label(job))
    assert Path(plot).is_file() and "Best student so far:** step " in best

    table, chooser, bar, plot, samples, log, result_title, made, _, panel = jobs_tab.details("")
    assert chooser["value"] == jobs_service.label(job)
    assert table["headers"][:3] == ["job", "kind", "state"]
    assert table["data"][0][2].endswith("succeeded")
    assert "width: 100.0%" in bar and Path(plot).is_file() and Path(samples).is_file()
    assert "distilling" in log and made == ""  # trained on real images only
    assert panel["visible"] is False  # so the teacher-made data panel is not shown
    assert result_title == sd_models.checkpoint_aliases[result_title].title

    # A second run of the same teacher never overwrites the first student.
    again = jobs_service.free_name(webui, registered.stem)
    assert again.name == registered.stem + "-2.safetensors"


def test_bad_input_is_refused_before_anything_is_queued(webui, tmp_path):
    distill_tab, jobs_service, _ = tabs()
    title = distill_tab.checkpoints.titles(students=False)[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    for message in (start_distill(distill_tab, title, tmp_path / "missing"),
                    start_distill(distill_tab, title, empty),
                    start_distill(distill_tab, "gone.safetensors", empty)):
        assert "bksdm-error" in message
    assert "no such folder" in start_distill(distill_tab, title, tmp_path / "missing")
    assert "no captioned images" in start_distill(distill_tab, title, empty)
    assert "not in the checkpoint list" in start_distill(distill_tab, "gone.safetensors", empty)
    assert jobs_service.runner().jobs() == []


def test_a_job_that_frees_vram_moves_the_model_out_and_back(webui, tmp_path, monkeypatch):
    """As A1111's own Unload/Load buttons do; the stand-in records the calls it gets."""
    from modules import sd_models

    from bksdm_ext.webui import a1111
    from webui_env import load

    distill_tab, jobs_service, jobs_tab = tabs()
    load(webui / "tiny-sd.safetensors")
    calls = []
    for name in ("unload_model_weights", "send_model_to_device"):
        real = getattr(sd_models, name)
        monkeypatch.setattr(sd_models, name, lambda *a, real=real, name=name, **k: (
            calls.append(name), real(*a, **k))[1])
    runner = jobs_service.runner()
    job = runner.submit("distill", ["--teacher", "x"], device="cuda:0", title="t",
                        free_vram=True)
    job = wait(runner, job.id, lambda j: j.state not in ("queued", "running"))
    assert job.state == "failed" and calls[:1] == ["unload_model_weights"]
    jobs_service._give_vram_back(runner)
    assert calls == ["unload_model_weights", "send_model_to_device"]
    assert a1111.loaded_model() is not None


@pytest.mark.slow
def test_cancel_and_resume_from_the_tab_buttons(webui, tmp_path):
    distill_tab, jobs_service, jobs_tab = tabs()
    data = make_dataset(tmp_path / "data")
    title = distill_tab.checkpoints.titles(students=False)[0]
    start_distill(distill_tab, title, data, steps=400, save_every=1, sample_every=0)
    runner = jobs_service.runner()
    job = runner.jobs()[-1]
    wait(runner, job.id, lambda j: any(e["event"] == "checkpoint" for e in runner.events(j.id)))
    assert "stops at its next step" in jobs_tab.act("save", jobs_service.label(job))
    job = wait(runner, job.id, lambda j: j.state == CANCELLED)
    assert "checkpoint saved" in job.reason
    assert "queued again" in jobs_tab.act("resume", jobs_service.label(job))
    wait(runner, job.id, lambda j: j.state == "running")
    assert "bksdm-success" in jobs_tab.act("cancel", jobs_service.label(job))
    job = wait(runner, job.id, lambda j: j.state == CANCELLED)
    assert "nothing saved" in job.reason


@pytest.mark.slow
def test_dreambooth_started_in_the_tab_lands_in_the_dropdown(a1111_machine, webui, tmp_path):
    """With the Hugging Face cache A1111 leaves (CLIP's config without weights), the tab's
    default sampling makes its samples and no CLIP score."""
    from bksdm_ext.webui import dreambooth_tab, jobs_service

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, color in enumerate(("red", "blue")):
        Image.new("RGB", (40, 48), color).save(photos / ("dog%d.png" % i))
    title = dreambooth_tab.checkpoints.titles()[0]
    choices, proposed = dreambooth_tab.class_model_choices(title)
    assert proposed == dreambooth_tab.SAME_MODEL and title in choices  # a teacher makes its own

    def start(folder, instance_prompt="a photo of sks dog"):
        return dreambooth_tab.start(title, proposed, str(folder), instance_prompt,
                                    "a photo of a dog", 1, 2, 1e-4, 32, True, True, False, 16,
                                    1e-4, "no", False, False, False)

    assert "no such folder" in start(tmp_path / "missing")
    assert "Write the instance prompt" in start(photos, instance_prompt=" ")
    assert jobs_service.runner().jobs() == []
    assert "bksdm-success" in start(photos)
    runner = jobs_service.runner()
    job = runner.jobs()[-1]
    assert job.kind == "dreambooth"
    job = wait(runner, job.id, lambda j: j.state not in ("queued", "running"), timeout=600)
    assert job.state == SUCCEEDED, runner.log_tail(job.id)
    kinds = [e["event"] for e in runner.events(job.id)]
    assert kinds.count("samples") == 1 and "eval" not in kinds
    registered = Path(job.registered)
    assert registered.parent == webui and registered.with_suffix(".yaml").is_file()
    assert registered.with_suffix(".preview.png").is_file()
    assert registered in listed_checkpoints()
    state, metadata = load_file(registered)
    assert metadata["bksdm.dreambooth_instance_prompt"] == "a photo of sks dog"
    ldm_from_yaml(registered.with_suffix(".yaml")).load_state_dict(unet_part(state), strict=True)
    from bksdm_ext.webui import a1111

    shared = list((a1111.data_dir() / "class-images").glob("class-*/*.png"))
    assert len(shared) == 1  # kept outside the job: the next run with this class reuses them


def test_a_lora_result_goes_to_the_lora_folder_beside_the_merged_checkpoint(webui, tmp_path):
    """What registering a LoRA DreamBooth job puts where (its training is tested in
    test_dreambooth.py): the merged checkpoint in the dropdown, the LoRA in models/Lora."""
    import shutil

    from bksdm_ext.jobs.events import EventLog
    from bksdm_ext.jobs.runner import Job
    from bksdm_ext.webui import a1111

    _, jobs_service, _ = tabs()
    folder = jobs_service.jobs_root() / "db-lora"
    folder.mkdir(parents=True)
    merged = folder / "tiny-sd-dreambooth.safetensors"
    shutil.copy(str(webui / "tiny-sd.safetensors"), str(merged))
    shutil.copy(str(webui / "tiny-sd.yaml"), str(merged.with_suffix(".yaml")))
    lora = folder / "tiny-sd-dreambooth-lora.safetensors"
    lora.write_bytes(b"lora bytes")
    EventLog(folder / "events.jsonl").write("done", step=4, output=str(merged), lora=str(lora))
    job = Job(id="db-lora", kind="dreambooth", argv=[], device="cpu", state=SUCCEEDED,
              result=str(merged))

    target = jobs_service.register(job)
    assert target == webui / merged.name and target.with_suffix(".yaml").is_file()
    assert (a1111.lora_dir() / lora.name).read_bytes() == b"lora bytes"
    assert jobs_service.register(job).name == "tiny-sd-dreambooth-2.safetensors"
    assert (a1111.lora_dir() / "tiny-sd-dreambooth-lora-2.safetensors").is_file()


@pytest.mark.slow
def test_teacher_made_data_is_shown_with_its_counts_prompts_and_grid(webui, tmp_path):
    distill_tab, jobs_service, jobs_tab = tabs()
    title = distill_tab.checkpoints.titles(students=False)[0]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\na lighthouse at dusk\n")
    form = dict(FAST, steps=2, save_every=0, sample_every=0)
    message = distill_tab.start(
        title, "Small", distill_tab.SOURCES[1], "", 4, str(prompts), "blurry", False,
        form["steps"], form["batch_size"], form["grad_accum"], form["lr"], form["resolution"],
        form["precision"], False, False, False, form["save_every"], form["sample_every"], "",
        False, 1)
    assert "bksdm-success" in message, message
    runner = jobs_service.runner()
    job = runner.jobs()[-1]
    assert "--data=teacher:4" in job.argv
    job = wait(runner, job.id, lambda j: j.state not in ("queued", "running"), timeout=600)
    assert job.state == SUCCEEDED, runner.log_tail(job.id)

    assert Path(job.registered) in listed_checkpoints()
    *_, text, grid, panel = jobs_tab.details(jobs_service.label(job))
    assert panel["visible"] is True
    assert "4 of 4 image/caption pairs" in text and "negative prompt 'blurry'" in text
    assert "prompt file prompts.txt" in text and "2 distinct, cycled with new seeds" in text
    assert "made by tiny-sd.safetensors with" in text
    assert "a lighthouse at dusk" in text and Path(grid).is_file()


def test_progress_reads_the_teacher_data_phase_then_training():
    from bksdm_ext.jobs.runner import progress_of

    events = [{"event": "start", "total_steps": 10},
              {"event": "synth", "done": 2, "total": 8, "images_s": 0.5, "eta_s": 12}]
    making = progress_of(events)
    assert (making.phase, making.step, making.total, making.eta_s) == ("teacher data", 2, 8, 12)
    events.append({"event": "step", "step": 3, "loss": 0.5, "it_s": 1.0, "eta_s": 7})
    training = progress_of(events)
    assert (training.phase, training.step, training.total) == ("training", 3, 10)
    assert training.losses == {"loss": [(3, 0.5)]} and training.fraction == 0.3


def test_the_jobs_tab_says_why_a_job_could_not_start_lists_a_broken_one_and_refuses_other_ids(
        webui, tmp_path):
    from bksdm_ext.webui import job_form

    _, jobs_service, jobs_tab = tabs()
    runner = jobs_service.runner()
    job = runner.submit("distill", ["--no-such-option"], device="cpu", title="bad")
    job = wait(runner, job.id, lambda j: j.state not in ("queued", "running"))
    refused = "bksdm distill: error: the following arguments are required"  # it imported bksdm_ext
    assert job.state == "failed" and refused in job.reason
    table, _, bar, *_ = jobs_tab.details("")
    assert refused in bar and refused in job_form.status("distill")
    assert table["data"][0][2].startswith("❌ failed: " + refused)

    broken = jobs_service.jobs_root() / "broken-job"
    broken.mkdir()
    (broken / "job.json").write_text("{")
    table, chooser, *_ = jobs_tab.details("")
    assert [row[2].split(":")[0] for row in table["data"]] == ["💔 broken", "❌ failed"]
    assert "[broken-job]" in chooser["choices"][0]
    assert "is broken" in jobs_tab.act("resume", chooser["choices"][0])

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "job.json").write_text(json.dumps(dict(json.loads(
        (runner.folder(job.id) / "job.json").read_text()), id="outside", state="running")))
    for label in ("x  [../../../../outside]", "x  [%s]" % outside, "x  [%s/..]" % job.id):
        assert "no job" in jobs_tab.act("cancel", label)
    assert sorted(p.name for p in outside.iterdir()) == ["job.json"]
    assert jobs_tab.details("x  [../../../../outside]")[1]["value"] == chooser["choices"][0]


def test_a_short_runs_loss_plot_shows_its_points_on_whole_steps():
    import matplotlib.pyplot as plt

    from bksdm_ext.jobs.runner import Progress
    from bksdm_ext.webui.jobs_tab import loss_figure

    figure = loss_figure(Progress(step=4, losses={"loss": [(4, 0.5)], "kd_out": [(4, 0.2)]}))
    axes = figure.axes[0]
    assert [line.get_marker() for line in axes.get_lines()] == ["o", "o"]
    left, right = axes.get_xlim()
    ticks = [t for t in axes.get_xticks() if left <= t <= right]
    assert right - left >= 2 and 4 in ticks and all(float(t).is_integer() for t in ticks)
    plt.close(figure)
    long_run = Progress(step=400, losses={"loss": [(s, 1.0 / s) for s in range(1, 401)]})
    figure = loss_figure(long_run)
    assert figure.axes[0].get_lines()[0].get_marker() in (None, "None", "")
    plt.close(figure)


@pytest.mark.slow
def test_a_job_another_process_saw_finish_still_lands_in_the_dropdown(webui, tmp_path):
    """`bksdm jobs watch` on the WebUI's jobs folder noticed the end first: the WebUI's
    poller registers the result all the same, once."""
    import shutil
    import time
    from dataclasses import asdict

    from bksdm_ext.jobs.events import EventLog
    from bksdm_ext.jobs.runner import Job

    _, jobs_service, _ = tabs()
    owner = jobs_service.runner()  # its thread polls every POLL_SECONDS
    folder = jobs_service.jobs_root() / "20261129-120000-distill-abcdef"
    folder.mkdir(parents=True)
    result = folder / "tiny-sd-bk-small-distilled.safetensors"
    shutil.copy(str(webui / "tiny-sd.safetensors"), str(result))
    shutil.copy(str(webui / "tiny-sd.yaml"), str(result.with_suffix(".yaml")))
    EventLog(folder / "events.jsonl").write("done", step=2, output=str(result))
    job = Job(id=folder.name, kind="distill", argv=[], device="cpu", state=SUCCEEDED,
              result=str(result))
    (folder / "job.json").write_text(json.dumps(asdict(job)))  # as the CLI left it

    deadline = time.time() + 60
    while not owner.job(job.id).registered and time.time() < deadline:
        time.sleep(0.2)
    registered = Path(owner.job(job.id).registered)
    assert registered == webui / result.name and registered in listed_checkpoints()
    time.sleep(3 * jobs_service.POLL_SECONDS)
    assert sorted(p.name for p in webui.glob("*.safetensors")) == sorted(
        ["tiny-sd.safetensors", result.name])


def test_prompts_that_start_with_a_dash_reach_the_run_as_prompts(monkeypatch, webui, tmp_path):
    """A sample, negative, instance or class prompt may start with "-" (issue 22 #12): the
    command each job runs gives it to the run as that prompt, never as an option.  (The
    jobs stay queued until the WebUI is gone: monkeypatch comes first, so it is undone last.)"""
    from bksdm_ext.cli import build_parser
    from bksdm_ext.jobs.runner import JobRunner
    from bksdm_ext.webui import dreambooth_tab

    monkeypatch.setattr(JobRunner, "_start", lambda runner, job: None)  # the command is enough
    distill_tab, jobs_service, _ = tabs()
    runner = jobs_service.runner()

    def parsed(job):
        command = runner.command(job)
        return build_parser().parse_args(command[command.index("bksdm_ext") + 1:])

    title = distill_tab.checkpoints.titles(students=False)[0]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    message = distill_tab.start(
        title, "Small", distill_tab.SOURCES[2], str(make_dataset(tmp_path / "data")), 4,
        str(prompts), "--blurry, -lowres", False, 2, 2, 1, 1e-3, 32, "no", False, False, False,
        0, 1, "-a red circle\n--help", False, 1)
    assert "bksdm-success" in message, message
    args = parsed(runner.jobs()[-1])
    assert args.negative_prompt == "--blurry, -lowres"
    assert args.sample_prompts == ["-a red circle", "--help"]
    assert (args.steps, args.out) == (2, str(runner.folder(runner.jobs()[-1].id)))

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 48), "red").save(photos / "dog.png")
    message = dreambooth_tab.start(title, dreambooth_tab.SAME_MODEL, str(photos), "-sks dog",
                                   "--a dog", 1, 2, 1e-4, 32, True, True, False, 16, 1e-4,
                                   "no", False, False, False)
    assert "bksdm-success" in message, message
    args = parsed(runner.jobs()[-1])
    assert (args.instance_prompt, args.class_prompt) == ("-sks dog", "--a dog")


def test_each_objective_queues_its_runs_with_their_settings(monkeypatch, webui, tmp_path):
    """KD: the paper's run; LCM: one LCM run with its steps and LoRA rank; KD then LCM: two
    jobs, the LCM one waiting for the KD one and starting from the file it will write.
    (The jobs stay queued: the commands are what is checked; the next test runs them.)"""
    from bksdm_ext.cli import build_parser
    from bksdm_ext.jobs.runner import JobRunner
    from bksdm_ext.webui import objective_form

    monkeypatch.setattr(JobRunner, "_start", lambda runner, job: None)
    distill_tab, jobs_service, _ = tabs()
    runner = jobs_service.runner()
    title = distill_tab.checkpoints.titles(students=False)[0]
    data = make_dataset(tmp_path / "data")

    def queued(objective, **changes):
        before = len(runner.jobs())
        message = start_distill(distill_tab, title, data, start_from=(
            distill_tab.init_student_form.START_FROM[0], "", "", objective,
            changes.get("lcm_steps", 4), changes.get("lora_rank", 0)))
        assert "bksdm-success" in message, message
        jobs = runner.jobs()[before:]
        parsed = []
        for job in jobs:
            command = runner.command(job)
            parsed.append(build_parser().parse_args(command[command.index("bksdm_ext") + 1:]))
        return message, jobs, parsed

    _, (kd,), (args,) = queued("KD (the paper)")
    assert "--objective=lcm" not in kd.argv and args.objective == "kd" and not kd.after
    assert args.lr == FAST["lr"] and kd.title == "Distill tiny-sd → BK-Small"

    _, (lcm,), (args,) = queued("LCM (few steps)", lcm_steps=2, lora_rank=8)
    assert "--objective=lcm" in lcm.argv and "--lcm-steps=2" in lcm.argv
    assert (args.objective, args.lcm_steps, args.lora_rank) == ("lcm", 2, 8)
    assert args.init_student is None and lcm.title.endswith("· LCM")

    message, (first, second), (kd_args, lcm_args) = queued("KD then LCM", lcm_steps=3)
    assert kd_args.objective == "kd" and "--objective=lcm" not in first.argv
    assert (lcm_args.objective, lcm_args.lcm_steps, lcm_args.lora_rank) == ("lcm", 3, None)
    assert lcm_args.init_student == str(runner.folder(first.id)
                                        / "tiny-sd-bk-small-distilled.safetensors")
    assert lcm_args.lr is None  # the LCM objective's own rate, not the KD box's
    assert second.after == first.id and not first.after
    assert first.title.endswith("KD then LCM, 1 of 2: KD")
    assert second.title.endswith("KD then LCM, 2 of 2: LCM")
    assert "starts from its result once it has succeeded" in message

    refused = start_distill(distill_tab, title, data, start_from=(
        distill_tab.init_student_form.START_FROM[0], "", "", "KD then LCM", 0, 0))
    assert "bksdm-error" in refused and "--lcm-steps" in refused
    assert len(runner.jobs()) == 4  # nothing of the refused pair was queued

    line = objective_form.draws("LCM (few steps)", 2, 0)
    assert "draws with LCM, 2 steps, CFG 1 in A1111" in line
    assert "LCM, 8 steps, CFG 1" in objective_form.draws("KD then LCM", 8, 4)
    assert objective_form.draws("KD (the paper)", 4, 0) == ""
    assert objective_form.learning_rate("LCM (few steps)", 0, 5e-5) == 8e-6
    assert objective_form.learning_rate("LCM (few steps)", 16, 5e-5) == 1e-4
    assert objective_form.learning_rate("KD then LCM", 16, 1e-4) == 5e-5


@pytest.mark.slow
def test_kd_then_lcm_runs_the_lcm_job_from_the_kd_result_after_it(webui, tmp_path):
    distill_tab, jobs_service, _ = tabs()
    runner = jobs_service.runner()
    title = distill_tab.checkpoints.titles(students=False)[0]
    message = start_distill(distill_tab, title, make_dataset(tmp_path / "data"), steps=2,
                            save_every=0, sample_every=0, start_from=(
                                distill_tab.init_student_form.START_FROM[0], "", "",
                                "KD then LCM", 2, 0))
    assert "bksdm-success" in message, message
    first, second = runner.jobs()[-2:]
    assert runner.job(second.id).state == "queued"
    from bksdm_ext.webui.jobs_tab import state_cell

    assert state_cell(runner.job(second.id)).endswith("queued, after job " + first.id)
    second = wait(runner, second.id, lambda j: j.state not in ("queued", "running"))
    first = runner.job(first.id)
    assert first.state == SUCCEEDED and second.state == SUCCEEDED, runner.log_tail(second.id)
    assert second.started >= first.ended
    start = next(e for e in runner.events(second.id) if e["event"] == "start")
    assert start["objective"] == "lcm"
    assert Path(first.result).name == "tiny-sd-bk-small-distilled.safetensors"
    assert "--init-student=%s" % first.result in second.argv
    _, metadata = load_file(Path(second.registered))
    assert metadata["bksdm.objective"] == "lcm" and metadata["bksdm.recommended_steps"] == "2"


def delete_by_hand(folder: Path) -> None:
    """`rm -rf` while the WebUI runs, again when the queue's thread made its lock file in the
    folder meanwhile (rmtree then finds it not empty)."""
    import shutil

    for _ in range(100):
        shutil.rmtree(str(folder), ignore_errors=True)
        if not folder.exists():
            return
    raise AssertionError("%s keeps coming back" % folder)


def test_the_queue_says_nothing_while_its_folder_is_gone(webui, capsys, monkeypatch):
    """A jobs folder deleted by hand (or a test's, after it ended) is nothing to poll: the
    queue's thread waits quietly instead of printing an error every two seconds."""
    import time

    from bksdm_ext.webui import jobs_service

    monkeypatch.setattr(jobs_service, "POLL_SECONDS", 0.05)
    runner = jobs_service.runner()
    delete_by_hand(runner.root)
    time.sleep(0.5)
    assert "job queue" not in capsys.readouterr().out


def test_a_job_is_queued_after_the_jobs_folder_was_deleted(webui):
    """Deleted by hand while the WebUI runs: the next submit makes it again (it failed with
    FileNotFoundError on the folder's lock file)."""
    from bksdm_ext.webui import jobs_service

    runner = jobs_service.runner()
    delete_by_hand(runner.root)
    again = jobs_service.runner()
    assert again is not runner and again.root.is_dir()
    job = again.submit("distill", ["--teacher", "x"], device="cpu", title="t")
    assert job.id in again.ids()
    stop_jobs()
