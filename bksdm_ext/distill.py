"""Distillation retraining of a BK-SDM student: the paper's recipe, resumable, one GPU or many.

Loss = λ_sd·task + λ_out·output-KD + λ_feat·feature-KD (kd.py), teacher frozen in half
precision on a GPU, student initialised from the teacher through the weight map.  Images
and captions are encoded once into an on-disk cache (latent_cache.py), so a step runs
only the two U-Nets.  All randomness comes from one generator per process whose state
is checkpointed with the data position, so a resumed run repeats the losses of an
uninterrupted one.  ``accelerate launch -m bksdm_ext distill ...`` runs it with DDP.
"""
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .arch import Architecture, preset
from .checkpoint import Checkpoint
from .convert import DTYPES, teacher_origin, teacher_parts, write_student
from .dataset import scan_dataset
from .detect import ModelInfo, inspect_checkpoint
from .distill_config import DistillConfig
from .errors import BadInput, Stopped
from .events import EventLog
from .kd import EMA, FeatureTaps, LossWeights, kd_loss, student_from_teacher
from .keymap import UNET_PREFIX, KeyMap
from .latent_cache import LatentCache, cache_fingerprint
from .loading import latent_scale, load_text_encoder, load_unet, load_vae, noise_scheduler
from .generation import make_pipeline
from .runs import RunPaths, event, progress_bar
from .safetensors_io import TensorOut, tensor_bytes


class Batches:
    """Which cache entries each process trains on: an epoch is a seeded permutation of the
    dataset, consumed `global_batch` entries at a time; each process takes its slice.
    The whole state is one integer, `position`, so resuming continues the same sequence."""

    def __init__(self, size: int, batch_size: int, rank: int, world: int, seed: int) -> None:
        self.size, self.batch_size, self.rank, self.world, self.seed = size, batch_size, rank, world, seed
        self.position = 0

    def next(self) -> List[int]:
        global_batch = self.batch_size * self.world
        indices = [self._at(self.position + i) for i in range(global_batch)]
        self.position += global_batch
        return indices[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return int(self._permutation(epoch)[offset])

    def _permutation(self, epoch: int) -> torch.Tensor:
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cached = (epoch, torch.randperm(self.size, generator=generator))
        return self._cached[1]


def distill(cfg: DistillConfig, resume: bool = False) -> Path:
    """Train, checkpoint, export; returns the final student's .safetensors path.  A run
    that fails says why in its event file too (the WebUI's job list reads it there)."""
    try:
        return _distill(cfg, resume)
    except Stopped:
        raise
    except BaseException as e:
        events = RunPaths(Path(cfg.out)).events
        if os.environ.get("RANK", "0") == "0" and events.is_file():
            EventLog(events).write("error", kind=type(e).__name__, message=str(e))
        raise


def _distill(cfg: DistillConfig, resume: bool) -> Path:
    from accelerate import Accelerator

    paths = RunPaths(Path(cfg.out))
    ckpt, info, arch = _teacher(cfg)
    scan = scan_dataset(cfg.data)  # an empty or missing dataset fails before any model loads
    start_checkpoint = paths.resume_point(resume)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.grad_accum,
                              cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    if main:
        paths.out.mkdir(parents=True, exist_ok=True)
        (paths.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    log = EventLog(paths.events) if main else None
    event(log, "start", arch=arch.removal.name, family=info.family,
           parameterization=info.parameterization, dataset=scan.summary(),
           problems=scan.problems(), processes=accelerator.num_processes,
           resumed_from=str(start_checkpoint) if start_checkpoint else None)

    device = accelerator.device
    teacher_dtype = torch.float16 if device.type == "cuda" else torch.float32
    teacher = load_unet(ckpt, info).to(device, teacher_dtype).requires_grad_(False).eval()
    cache = _cache(cfg, paths, ckpt, info, scan, accelerator, log)
    student = student_from_teacher(teacher, arch).to(device).train()
    if cfg.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    _use_xformers(teacher, student, device)
    ema = EMA(student, cfg.ema_decay) if cfg.ema else None
    optimizer = _optimizer(cfg, student)
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
    samples = _Sampler(cfg, ckpt, info, teacher, paths, device) if main and cfg.sample_every else None

    progress = progress_bar(cfg.steps, step, main, "distilling")
    started, first_step = time.perf_counter(), step
    alphas = noise.alphas_cumprod.to(device)
    while step < cfg.steps:
        totals: Dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            batch = _batch(cache, batches.next(), generator, cfg.flip, device)
            latents = (batch["mean"] + batch["std"] * _randn(batch["mean"], generator)) * scale
            eps = _randn(latents, generator)
            timesteps = torch.randint(0, noise.config.num_train_timesteps, (latents.shape[0],),
                                      generator=generator).to(device)
            noisy = _add_noise(alphas, latents, eps, timesteps)
            target = eps if info.parameterization == "eps" else _velocity(alphas, latents, eps, timesteps)
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
                        batches, cfg, ckpt, info, arch, log)
        if samples is not None and (step % cfg.sample_every == 0 or step == cfg.steps):
            path = samples.write(step, _student_weights(accelerator.unwrap_model(student), ema))
            event(log, "samples", step=step, path=str(path))
        request = _stop_request(paths, accelerator)
        if request and step < cfg.steps:
            if request == "save":
                _save_state(paths, step, accelerator, student, optimizer, scheduler, ema,
                            generator, batches, cfg, ckpt, info, arch, log)
            event(log, "stopped", step=step, saved=request == "save")
            progress.close()
            raise Stopped("stopped at step %d%s" % (step, "; checkpoint saved, continue with "
                                                   "--resume" if request == "save" else
                                                   "; nothing saved"))
    progress.close()
    teacher_taps.close()
    student_taps.close()
    final = paths.out / ("%s-bk-%s-distilled.safetensors" % (ckpt.path.stem, arch.removal.name))
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
        return ckpt, info, Architecture(info.arch.teacher, preset(cfg.arch))
    except ValueError as e:
        raise BadInput(str(e)) from None


def _cache(cfg: DistillConfig, paths: RunPaths, ckpt: Checkpoint, info: ModelInfo, scan: Any,
           accelerator: Any, log: Optional[EventLog]) -> LatentCache:
    """The encoded dataset; built by the main process, with the encoders loaded only then."""
    root = Path(cfg.cache_dir) if cfg.cache_dir else paths.out / "cache"
    teacher_file = ckpt.path.stat()
    fingerprint = cache_fingerprint(scan, cfg.resolution, bool(cfg.flip), encoders="%s:%d:%d" % (
        ckpt.path.name, teacher_file.st_size, int(teacher_file.st_mtime)))
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


def text_encoder_fn(ckpt: Checkpoint, info: ModelInfo, device: torch.device) -> Any:
    """captions -> the embeddings the U-Net is conditioned on, with the checkpoint's own
    text encoder and a CLIP tokenizer from files already on the machine."""
    from .tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer(info.family)
    encoder = load_text_encoder(ckpt, info.family).to(device).eval()

    @torch.no_grad()
    def encode(captions: List[str]) -> torch.Tensor:
        ids = tokenizer(list(captions), padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        return encoder(ids.to(device))[0].cpu()

    return encode


def _optimizer(cfg: DistillConfig, student: torch.nn.Module) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes
        except ImportError:
            raise BadInput("--use-8bit-adam needs bitsandbytes: pip install bitsandbytes") from None
        return bitsandbytes.optim.AdamW8bit(student.parameters(), **kwargs)
    # The fused CUDA kernel (torch >= 2.0) updates all parameters in a few launches.
    return torch.optim.AdamW(student.parameters(), fused=next(student.parameters()).is_cuda,
                             **kwargs)


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


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise from the run's own CPU generator: the same numbers on any device, resumable."""
    return torch.randn(like.shape, generator=generator).to(like.device, like.dtype)


def _batch(cache: LatentCache, indices: List[int], generator: torch.Generator, flip: bool,
           device: torch.device) -> Dict[str, torch.Tensor]:
    flips = torch.rand(len(indices), generator=generator) < 0.5
    items = [cache.item(i, flipped=bool(f) and flip) for i, f in zip(indices, flips)]
    return {key: torch.stack([item[key] for item in items]).to(device, torch.float32)
            for key in ("mean", "std", "embedding")}


def _add_noise(alphas: torch.Tensor, latents: torch.Tensor, eps: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
    a = alphas[timesteps].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * eps


def _velocity(alphas: torch.Tensor, latents: torch.Tensor, eps: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
    a = alphas[timesteps].view(-1, 1, 1, 1)
    return a.sqrt() * eps - (1 - a).sqrt() * latents


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
                log: Optional[EventLog]) -> None:
    """Everything a resume needs, written under a temporary name and renamed, plus the
    student as an A1111 file; only the last `keep_last` are kept."""
    generators = _gather(generator.get_state(), accelerator)
    if not accelerator.is_main_process:
        return
    target = paths.checkpoint(step)
    temp = target.with_name(target.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    scaler = getattr(accelerator, "scaler", None)
    torch.save({
        "step": step,
        "data_position": batches.position,
        "generators": generators,
        "student": accelerator.unwrap_model(student).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
    }, str(temp / "train_state.pt"))
    student_file = temp / ("student-step-%07d.safetensors" % step)
    _export(student_file, _student_weights(accelerator.unwrap_model(student), ema), arch, ckpt,
            info, cfg, step)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(temp, target)
    for old in sorted(paths.checkpoints.glob("step-*[0-9]"))[:-max(cfg.keep_last, 1)]:
        shutil.rmtree(old)
    event(log, "checkpoint", step=step, path=str(target),
           student=str(target / student_file.name))


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

    def write(self, step: int, weights: Dict[str, torch.Tensor]) -> Path:
        from diffusers import UNet2DConditionModel
        from PIL import Image

        arch = Architecture(self.info.arch.teacher, preset(self.cfg.arch))
        student = UNet2DConditionModel(**arch.diffusers_config())
        student.load_state_dict({k: v.float() for k, v in weights.items()})
        student_images = self._images(student.to(self.device, self.dtype).eval())
        size = self.cfg.resolution
        grid = Image.new("RGB", (2 * size, size * len(self.prompts)), "white")
        for row, (t, s) in enumerate(zip(self.teacher_images, student_images)):
            grid.paste(t, (0, row * size))
            grid.paste(s, (size, row * size))
        self.paths.samples.mkdir(parents=True, exist_ok=True)
        path = self.paths.samples / ("step-%07d.png" % step)
        grid.save(path)
        return path
