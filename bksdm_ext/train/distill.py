"""Distillation retraining of a BK-SDM student: the paper's recipe, resumable, one GPU or many.

Loss = λ_sd·task + λ_out·output-KD + λ_feat·feature-KD (kd.py), teacher frozen in half
precision on a GPU, student initialised from the teacher through the weight map.  Images
and captions are encoded once into an on-disk cache (latent_cache.py), so a step runs
only the two U-Nets.  The data can also be teacher-made (synth.py: ``--data teacher:N``,
a prompt file, a ``bksdm synth`` run, or a dataset plus ``--synthetic N``); those pairs
enter the cache as latents and never pass through the VAE encoder.  All randomness comes from one generator per process whose state
is checkpointed with the data position, so a resumed run repeats the losses of an
uninterrupted one.  ``accelerate launch -m bksdm_ext distill ...`` runs it with DDP.
"""
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..model.arch import Architecture, TeacherSpec, preset
from ..model.blocks import known_as, parse_optional, preset_name
from ..model.checkpoint import Checkpoint
from ..model.convert import DTYPES, teacher_origin, teacher_parts, write_student
from .dataset import DatasetScan, scan_dataset
from ..model.detect import ModelInfo, inspect_checkpoint
from .distill_config import DistillConfig
from ..errors import BadInput
from ..jobs.events import EventLog
from .init_student import checked_init_student, load_init_student
from .kd import EMA, FeatureTaps, LossWeights, kd_loss, student_from_teacher
from ..model.keymap import UNET_PREFIX, KeyMap
from .memory_fit import announce, fit_distill, free_gpu_bytes, have_bitsandbytes, out_of_memory_explained
from .memory_plan import MemoryPlan
from .latent_cache import CacheUnion, LatentCache, cache_fingerprint, teacher_identity
from ..model.loading import latent_scale, load_unet, load_vae, noise_scheduler
from ..model.generation import make_pipeline
from .noising import Batches, noised, randn
from .optim import adamw
from ..scores.agreement import agreement
from ..jobs.runs import RunPaths, event, failures_reported, progress_bar, stop_run
from ..model.safetensors_io import TensorOut, tensor_bytes
from .state_file import save_state
from .synth import (SynthFolder, SynthPlan, TeacherSampler, finished_synthetic_cache,
                    plan_synthesis, synthesize)
from .synth_config import training_data
from ..model.text_encoding import text_encoder_fn

Cache = Union[LatentCache, CacheUnion]


def distill(cfg: DistillConfig, resume: bool = False) -> Path:
    """Train, checkpoint, export; returns the final student's .safetensors path.  A run
    that fails says why in its event file too (the WebUI's job list reads it there)."""
    with failures_reported(cfg.out):
        family = _teacher(cfg)[1].family
        cfg, memory = fit_distill(cfg, family, free_gpu_bytes(), have_bitsandbytes(), resume)
        announce(memory)
        with out_of_memory_explained(cfg):
            return _distill(cfg, resume, memory)


def _distill(cfg: DistillConfig, resume: bool, memory: Optional[MemoryPlan] = None) -> Path:
    from accelerate import Accelerator

    paths = RunPaths(Path(cfg.out))
    ckpt, info, arch = _teacher(cfg)
    start = checked_init_student(cfg.init_student, ckpt, info, arch) if cfg.init_student else None
    # An empty or missing dataset, or bad prompts, fail before any model loads.
    data = training_data(cfg.data, cfg.synthetic, cfg.prompts)
    scan = scan_dataset(data.dataset) if data.dataset is not None else None
    plan = (plan_synthesis(ckpt, info, cfg.synth_settings(data.synthetic, data.prompts))
            if data.teacher_makes_data() else None)
    made = finished_synthetic_cache(data.synth_run) if data.synth_run is not None else None
    start_checkpoint = _resume_point(paths, resume, plan is not None)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.grad_accum,
                              cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    if main:
        paths.out.mkdir(parents=True, exist_ok=True)
        (paths.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    log = EventLog(paths.events) if main else None
    event(log, "start", total_steps=cfg.steps, arch=arch.removal.name, family=info.family,
           parameterization=info.parameterization,
           dataset=scan.summary() if scan is not None else None,
           problems=scan.problems() if scan is not None else [],
           synthetic=dict(plan.description(), count=plan.settings.count) if plan else None,
           synth_run=str(data.synth_run) if data.synth_run is not None else None,
           random_conditioning=cfg.random_conditioning_p if cfg.random_conditioning else None,
           processes=accelerator.num_processes, init_student=cfg.init_student,
           memory_plan=memory.describe() if memory is not None else None,
           resumed_from=str(start_checkpoint) if start_checkpoint else None)

    device = accelerator.device
    teacher_dtype = torch.float16 if device.type == "cuda" else torch.float32
    teacher = load_unet(ckpt, info).to(device, teacher_dtype).requires_grad_(False).eval()
    cache = _training_cache(cfg, paths, ckpt, info, teacher, scan, plan, made, accelerator, log)
    student = (load_init_student(*start, arch) if start else student_from_teacher(teacher, arch)
               ).to(device).train()
    if cfg.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    _use_xformers(teacher, student, device)
    ema = EMA(student, cfg.ema_decay) if cfg.ema else None
    optimizer = adamw(list(student.parameters()), cfg.lr, cfg.use_8bit_adam)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    pairs = arch.feature_kd_pairs()
    teacher_taps = FeatureTaps(teacher, [t for t, _ in pairs])
    student_taps = FeatureTaps(accelerator.unwrap_model(student), [s for _, s in pairs])
    noise = noise_scheduler(info)
    scale = latent_scale(info)

    generator = torch.Generator().manual_seed(cfg.seed * 1000 + accelerator.process_index)
    batches = Batches(len(cache), cfg.batch_size, accelerator.process_index,
                      accelerator.num_processes, cfg.seed)
    step = 0
    if start_checkpoint is not None:
        step = _load_state(start_checkpoint, accelerator, student, optimizer, scheduler, ema,
                           generator, batches)
    samples = (_Sampler(cfg, ckpt, info, teacher, paths, device)
               if main and (cfg.sample_every or cfg.eval_interval()) else None)
    best = _BestScore(paths)

    progress = progress_bar(cfg.steps, step, main, "distilling")
    started, first_step = time.perf_counter(), step
    alphas = noise.alphas_cumprod.to(device)
    while step < cfg.steps:
        totals: Dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            indices = batches.next()
            batch = _batch(cache, indices, generator, cfg.flip, device)
            if cfg.random_conditioning:
                _unrelated_latents(batch, cache, indices, generator, cfg.random_conditioning_p)
            latents = (batch["mean"] + batch["std"] * randn(batch["mean"], generator)) * scale
            noisy, timesteps, target = noised(latents, alphas, info.parameterization, generator)
            with torch.no_grad(), accelerator.autocast():
                teacher_pred = teacher(noisy.to(teacher_dtype), timesteps,
                                       batch["embedding"].to(teacher_dtype)).sample
            teacher_features = teacher_taps.take()
            with accelerator.accumulate(student), accelerator.autocast():
                student_pred = student(noisy, timesteps, batch["embedding"]).sample
                loss, parts = kd_loss(student_pred, teacher_pred, target, student_taps.take(),
                                      teacher_features, LossWeights(cfg.lambda_task, cfg.lambda_output, cfg.lambda_feature))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value / cfg.grad_accum
        step += 1
        if ema is not None:
            ema.update(accelerator.unwrap_model(student))
        progress.update(1)
        progress.set_postfix(loss="%.4f" % totals["loss"])
        if step % cfg.log_every == 0 or step == cfg.steps:
            event(log, "step", step=step, lr=scheduler.get_last_lr()[0],
                   **_speed(started, first_step, step, cfg, accelerator.num_processes, device),
                   **totals)
        if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
            _save_state(paths, step, accelerator, student, optimizer, scheduler, ema, generator,
                        batches, cfg, ckpt, info, arch, log, best.checkpoint)
        sample_now, eval_now = (bool(every) and (step % every == 0 or step == cfg.steps)
                                for every in (cfg.sample_every, cfg.eval_interval()))
        if samples is not None and (sample_now or eval_now):
            images = samples.student_images(_student_weights(accelerator.unwrap_model(student), ema))
            if sample_now:
                event(log, "samples", step=step, path=str(samples.write(step, images)))
            if eval_now:
                scores = agreement(images, samples.teacher_images)
                saved = paths.checkpoint(step)  # the checkpoint of this step, when one was saved
                saved_path = saved if saved.is_dir() else None
                event(log, "eval", step=step, best=best.update(scores["ssim"], saved_path),
                      prompts=len(images), checkpoint=str(saved_path) if saved_path else None,
                      **scores)
        request = _stop_request(paths, accelerator)
        if request and step < cfg.steps:
            stop_run(request, step, lambda: _save_state(
                paths, step, accelerator, student, optimizer, scheduler, ema, generator, batches,
                cfg, ckpt, info, arch, log, best.checkpoint), log, progress)
    progress.close()
    teacher_taps.close()
    student_taps.close()
    final = paths.out / ("%s-bk-%s-distilled.safetensors" % (ckpt.path.stem, preset_name(arch)))
    # DDP keeps every process's copy identical; say so, since a silent divergence would
    # make the exported (process 0) student not the one the other processes trained.
    checksums = _gather(torch.stack([p.detach().double().sum() for p in student.parameters()]).sum()
                        .cpu(), accelerator)
    if main:
        _export(final, _student_weights(accelerator.unwrap_model(student), ema), arch, ckpt,
                info, cfg, step)
        event(log, "done", step=step, output=str(final),
               replicas_agree=all(torch.equal(c, checksums[0]) for c in checksums))
    accelerator.wait_for_everyone()
    return final


# -- setting up -------------------------------------------------------------------


def _teacher(cfg: DistillConfig) -> Tuple[Checkpoint, ModelInfo, Architecture]:
    ckpt = Checkpoint(cfg.teacher)
    info = inspect_checkpoint(ckpt, cfg.v_prediction)
    if info.is_student:
        raise BadInput("%s is a BK-SDM '%s' student; distil from its teacher" % (ckpt.path, info.preset))
    try:
        return ckpt, info, student_architecture(info.arch.teacher, cfg)
    except ValueError as e:
        raise BadInput(str(e)) from None


def student_architecture(teacher: TeacherSpec, cfg: DistillConfig) -> Architecture:
    """The student `cfg` asks for: its preset with the ``remove`` units taken out too
    (a preset when they amount to one)."""
    removal = parse_optional(teacher, cfg.remove, preset(cfg.arch))
    return Architecture(teacher, known_as(Architecture(teacher, removal)))


def _resume_point(paths: RunPaths, resume: bool, synthesizes: bool) -> Optional[Path]:
    """The checkpoint to continue from.  A run stopped while the teacher was still making
    its data has none yet, but resumes too: the synthesis continues where it stopped."""
    if resume and synthesizes and paths.latest_checkpoint() is None:
        return None
    return paths.resume_point(resume)


def _cache_root(cfg: DistillConfig, paths: RunPaths) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else paths.out / "cache"


def _training_cache(cfg: DistillConfig, paths: RunPaths, ckpt: Checkpoint, info: ModelInfo,
                    teacher: torch.nn.Module, scan: Optional[DatasetScan],
                    plan: Optional[SynthPlan], made: Optional[LatentCache], accelerator: Any,
                    log: Optional[EventLog]) -> Cache:
    """Everything the run trains on, as one cache: the encoded dataset, then the pairs the
    teacher makes now, then those of a finished synth run."""
    real = _cache(cfg, paths, ckpt, info, scan, accelerator, log) if scan is not None else None
    synthetic = [_synthetic_cache(cfg, paths, ckpt, info, teacher, plan, accelerator, log)
                 if plan is not None else None, made]
    caches = [cache for cache in [real] + synthetic if cache is not None]
    event(log, "data", examples=sum(map(len, caches)), real=len(real) if real else 0,
          synthetic=sum(len(cache) for cache in synthetic if cache is not None))
    return caches[0] if len(caches) == 1 else CacheUnion(caches)


def _synthetic_cache(cfg: DistillConfig, paths: RunPaths, ckpt: Checkpoint, info: ModelInfo,
                     teacher: torch.nn.Module, plan: SynthPlan, accelerator: Any,
                     log: Optional[EventLog]) -> LatentCache:
    """The pairs the (already loaded) teacher makes, in ``<cache>/synthetic``: made by the
    main process, kept across stops, reused by any run with the same settings."""
    folder = SynthFolder(_cache_root(cfg, paths) / "synthetic")
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            paths.checkpoints.mkdir(parents=True, exist_ok=True)  # resumable from here on
            synthesize(folder, plan, lambda: TeacherSampler(ckpt, info, teacher, plan.settings,
                                                            accelerator.device),
                       paths, log, job=False)
        return LatentCache(folder.cache, plan.fingerprint())


def _cache(cfg: DistillConfig, paths: RunPaths, ckpt: Checkpoint, info: ModelInfo,
           scan: DatasetScan, accelerator: Any, log: Optional[EventLog]) -> LatentCache:
    """The encoded dataset; built by the main process, with the encoders loaded only then."""
    root = _cache_root(cfg, paths)
    fingerprint = cache_fingerprint(scan, cfg.resolution, bool(cfg.flip),
                                    encoders=teacher_identity(ckpt.path))
    with accelerator.main_process_first():  # the main process builds, the others then read
        cache = LatentCache(root, fingerprint)
        if accelerator.is_main_process and not cache.is_complete():
            vae = load_vae(ckpt).to(accelerator.device).eval()
            encode_text = text_encoder_fn(ckpt, info, accelerator.device)

            @torch.no_grad()
            def encode_images(images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
                dist = vae.encode(images.to(accelerator.device)).latent_dist
                return dist.mean.cpu(), dist.std.cpu()

            bar = progress_bar(len(scan.examples), 0, True, "encoding dataset")
            cache.build(scan, encode_images, encode_text, cfg.resolution, cfg.flip,
                        progress=lambda done, total: bar.update(done - bar.n))
            bar.close()
            del vae
    event(log, "cache", path=str(root), examples=len(cache), **cache.stats)
    return cache


def _use_xformers(teacher: torch.nn.Module, student: torch.nn.Module, device: torch.device) -> None:
    """xformers' attention where it is installed and works (a GPU); else PyTorch's SDPA,
    which diffusers uses by default."""
    if device.type != "cuda":
        return
    import importlib.util

    if importlib.util.find_spec("xformers") is None:
        return
    for unet in (teacher, student):
        unet.enable_xformers_memory_efficient_attention()


# -- one step ---------------------------------------------------------------------


def _batch(cache: Cache, indices: List[int], generator: torch.Generator, flip: bool,
           device: torch.device) -> Dict[str, torch.Tensor]:
    flips = torch.rand(len(indices), generator=generator) < 0.5
    items = [cache.item(i, flipped=bool(f) and flip) for i, f in zip(indices, flips)]
    return {key: torch.stack([item[key] for item in items]).to(device, torch.float32)
            for key in ("mean", "std", "embedding")}


def _unrelated_latents(batch: Dict[str, torch.Tensor], cache: Cache, indices: List[int],
                       generator: torch.Generator, p: float) -> None:
    """Random conditioning (arXiv 2504.02011): with probability `p` an example keeps its
    caption embedding but takes the latents of another, random example.  The teacher's
    answer for a caption over an image it does not describe is still a lesson for the
    student, so the captions cover more of the condition space than the images do."""
    size = len(cache)
    chosen = (torch.rand(len(indices), generator=generator) < p).tolist()
    shifts = torch.randint(1, max(size, 2), (len(indices),), generator=generator).tolist()
    for row, (index, swap, shift) in enumerate(zip(indices, chosen, shifts)):
        if swap and size > 1:
            other = cache.item((index + shift) % size)  # never the example itself
            batch["mean"][row] = other["mean"].to(batch["mean"].device)
            batch["std"][row] = other["std"].to(batch["std"].device)


def _speed(started: float, first_step: int, step: int, cfg: DistillConfig, processes: int,
           device: torch.device) -> Dict[str, Any]:
    seconds = max(time.perf_counter() - started, 1e-9)
    it_s = (step - first_step) / seconds
    figures = {"it_s": round(it_s, 4),
               "samples_s": round(it_s * cfg.batch_size * cfg.grad_accum * processes, 3),
               "eta_s": round((cfg.steps - step) / it_s) if it_s > 0 else None}
    if device.type == "cuda":
        figures["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
    return figures


# -- checkpoints, samples, export -------------------------------------------------


def _save_state(paths: RunPaths, step: int, accelerator: Any, student: Any, optimizer: Any,
                scheduler: Any, ema: Optional[EMA], generator: torch.Generator, batches: Batches,
                cfg: DistillConfig, ckpt: Checkpoint, info: ModelInfo, arch: Architecture,
                log: Optional[EventLog], best: Optional[Path]) -> None:
    """Everything a resume needs, written under a temporary name and renamed, plus the
    student as an A1111 file; only the last `keep_last` are kept, and the `best` one."""
    generators = _gather(generator.get_state(), accelerator)
    if not accelerator.is_main_process:
        return
    scaler = getattr(accelerator, "scaler", None)
    student_name = "student-step-%07d.safetensors" % step

    def fill(folder: Path) -> None:
        save_state({
            "step": step,
            "data_position": batches.position,
            "generators": generators,
            "student": accelerator.unwrap_model(student).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": ema.state_dict() if ema is not None else None,
        }, folder / "train_state.pt")
        _export(folder / student_name, _student_weights(accelerator.unwrap_model(student), ema),
                arch, ckpt, info, cfg, step)

    target = paths.write_checkpoint(step, fill, cfg.keep_last, keep=best)
    event(log, "checkpoint", step=step, path=str(target), student=str(target / student_name))


def _stop_request(paths: RunPaths, accelerator: Any) -> str:
    """"save", "discard" or "" from the run folder's STOP file, as process 0 sees it (all
    processes must stop at the same step)."""
    request = paths.take_stop_request() if accelerator.is_main_process else ""
    if accelerator.num_processes > 1:
        shared = [request]
        torch.distributed.broadcast_object_list(shared, src=0)
        request = shared[0]
    return request


def _gather(state: torch.Tensor, accelerator: Any) -> List[torch.Tensor]:
    """The value from every process (e.g. generator states: each draws its own noise)."""
    if accelerator.num_processes == 1:
        return [state]
    gathered: List[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def _load_state(path: Path, accelerator: Any, student: Any, optimizer: Any, scheduler: Any,
                ema: Optional[EMA], generator: torch.Generator, batches: Batches) -> int:
    state = torch.load(str(path / "train_state.pt"), map_location="cpu", weights_only=True)
    if len(state["generators"]) != accelerator.num_processes:
        raise BadInput("%s was saved by %d processes; resume with the same number (now %d)"
                       % (path, len(state["generators"]), accelerator.num_processes))
    accelerator.unwrap_model(student).load_state_dict(state["student"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    generator.set_state(state["generators"][accelerator.process_index])
    batches.position = state["data_position"]
    return int(state["step"])


def _student_weights(student: torch.nn.Module, ema: Optional[EMA]) -> Dict[str, torch.Tensor]:
    """What gets exported: the EMA weights when averaging is on (as the official script does)."""
    if ema is not None:
        return ema.shadow
    return {k: v.detach() for k, v in student.state_dict().items()}


def _export(output: Path, weights: Dict[str, torch.Tensor], arch: Architecture, ckpt: Checkpoint,
            info: ModelInfo, cfg: DistillConfig, step: int) -> None:
    dtype = DTYPES[cfg.export_dtype] or torch.float32
    ldm = KeyMap(arch).convert_to_ldm(weights)
    unet = [TensorOut(UNET_PREFIX + k, dtype, tuple(v.shape),
                      lambda v=v: tensor_bytes(v.detach().to("cpu", dtype)))
            for k, v in ldm.items()]
    origin = teacher_origin(ckpt)
    origin["bksdm.distilled_steps"] = str(step)
    if cfg.init_student:
        origin["bksdm.init_student"] = Path(cfg.init_student).name
    write_student(output, arch, teacher_parts(ckpt) + unet, info.config, origin, overwrite=True)


class _Sampler:
    """Teacher and student images for fixed prompts and seeds, side by side, every few steps."""

    def __init__(self, cfg: DistillConfig, ckpt: Checkpoint, info: ModelInfo,
                 teacher: torch.nn.Module, paths: RunPaths, device: torch.device) -> None:
        encode = text_encoder_fn(ckpt, info, device)
        self.prompts = list(cfg.sample_prompts)
        self.embeddings = encode(self.prompts)
        self.negative = encode([""])
        self.cfg, self.info, self.paths, self.device = cfg, info, paths, device
        self.dtype = next(teacher.parameters()).dtype  # fp16 on a GPU: VAE and student follow
        self.vae = load_vae(ckpt).to(device, self.dtype).eval()
        self.teacher_images = self._images(teacher)

    @torch.no_grad()
    def _images(self, unet: torch.nn.Module) -> List[Any]:
        pipe = make_pipeline(unet, self.vae, self.info)
        size = self.cfg.resolution
        images = []
        for i, embedding in enumerate(self.embeddings):
            generator = torch.Generator().manual_seed(self.cfg.seed + i)
            images.append(pipe(prompt_embeds=embedding[None].to(self.device, self.dtype),
                               negative_prompt_embeds=self.negative.to(self.device, self.dtype),
                               height=size, width=size, num_inference_steps=self.cfg.sample_steps,
                               generator=generator).images[0])
        return images

    def student_images(self, weights: Dict[str, torch.Tensor]) -> List[Any]:
        from diffusers import UNet2DConditionModel

        arch = student_architecture(self.info.arch.teacher, self.cfg)
        student = UNet2DConditionModel(**arch.diffusers_config())
        student.load_state_dict({k: v.float() for k, v in weights.items()})
        return self._images(student.to(self.device, self.dtype).eval())

    def write(self, step: int, student_images: List[Any]) -> Path:
        from PIL import Image

        size = self.cfg.resolution
        grid = Image.new("RGB", (2 * size, size * len(self.prompts)), "white")
        for row, (t, s) in enumerate(zip(self.teacher_images, student_images)):
            grid.paste(t, (0, row * size))
            grid.paste(s, (size, row * size))
        self.paths.samples.mkdir(parents=True, exist_ok=True)
        path = self.paths.samples / ("step-%07d.png" % step)
        grid.save(path)
        return path


class _BestScore:
    """The best SSIM against the teacher so far and its checkpoint (when that step saved
    one), also across a resume (read back from the run's eval events): an `eval` event says
    whether it is the new best, and checkpoint pruning spares the best one."""

    def __init__(self, paths: RunPaths) -> None:
        from ..jobs.events import read_events

        self.ssim, self.checkpoint = float("-inf"), None  # type: float, Optional[Path]
        for e in read_events(paths.events):
            if e.get("event") == "eval":
                self.update(e["ssim"], Path(e["checkpoint"]) if e.get("checkpoint") else None)

    def update(self, ssim: float, checkpoint: Optional[Path]) -> bool:
        if ssim > self.ssim:
            self.ssim, self.checkpoint = ssim, checkpoint
            return True
        return False
