"""Distillation retraining of a BK-SDM student: the paper's recipe, resumable, one GPU or many.

Loss = λ_sd·task + λ_out·output-KD + λ_feat·feature-KD (kd.py), teacher frozen in half
precision on a GPU, student initialised from the teacher through the weight map.  Images
and captions are encoded once into an on-disk cache (latent_cache.py), so a step runs
only the two U-Nets.  The data can also be teacher-made (synth.py: ``--data teacher:N``,
a prompt file, a ``bksdm synth`` run, or a dataset plus ``--synthetic N``); those pairs
enter the cache as latents and never pass through the VAE encoder.  An inpainting teacher
(9-channel U-Net) trains its student with random masks (inpainting.py), the only case
where a step runs the VAE.  All randomness comes
from one generator per process whose state is checkpointed with the data position, so a
resumed run repeats the losses of an uninterrupted one.  ``accelerate launch -m bksdm_ext
distill ...`` runs it with DDP.  The loop, checkpoints, samples and evaluation are the
training skeleton's (skeleton.py); what is distillation's own is here: the teacher and
the data (`start_student_run`), the student made ready to train (`StudentTraining`) and the
KD step.  The second student objective, latent consistency distillation (lcm.py, ``--objective
lcm``), takes the first two as they are.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch

from ..errors import BadInput
from ..jobs.runs import RunPaths, progress_bar
from ..model.arch import Architecture
from ..model.blocks import which_student
from ..model.checkpoint import Checkpoint
from ..model.convert import DTYPES, teacher_origin, teacher_parts, write_student
from ..model.detect import ModelInfo, inspect_checkpoint
from ..model.generation import make_pipeline
from ..model.keymap import UNET_PREFIX, KeyMap
from ..model.loading import latent_scale, load_unet, load_vae, noise_scheduler
from ..model.samplers import DEFAULT_CFG, DEFAULT_SAMPLER, DrawPoint
from ..model.safetensors_io import tensor_out
from ..model.text_encoding import text_encoder_fn
from ..scores.agreement import agreement
from .dataset import DatasetScan, scan_dataset
from .distill_config import DistillConfig, kd_result_name
from .init_student import checked_init_student, load_init_student
from .inpainting import InpaintingConditioning
from .kd import EMA, FeatureTaps, LossWeights, kd_loss, student_from_teacher
from .latent_cache import CacheUnion, LatentCache, cache_fingerprint, teacher_identity
from .memory_fit import fit_distill, free_gpu_bytes, have_bitsandbytes
from .memory_plan import MemoryPlan
from .noising import Batches, noised, randn
from .optim import adamw, optimizer_step
from .run_state import RunState
from .samples import SampleGrid, Samples, prompt_images
from .skeleton import Cadence, Run, fitted_run, replicas_agree, train
from .synth import (SynthFolder, SynthPlan, TeacherSampler, finished_synthetic_cache,
                    plan_synthesis, synthesize)
from .synth_config import training_data

Cache = Union[LatentCache, CacheUnion]


def distill(cfg: DistillConfig, resume: bool = False) -> Path:
    """Train, checkpoint, export with `cfg.objective`; returns the final student's
    .safetensors path (an LCM-LoRA run writes its LoRA file beside it, lcm.lora_file).  A
    run that fails says why in its event file too (the WebUI's job list reads it there)."""
    train_run = _distill
    if cfg.objective == "lcm":
        from .lcm import consistency_distill, lcm_settings

        cfg, train_run = lcm_settings(cfg), consistency_distill

    def fit() -> Tuple[DistillConfig, Optional[MemoryPlan]]:
        cfg.check()
        if cfg.lora_rank:
            from .lora import require_peft

            require_peft()
        return fit_distill(cfg, _teacher(cfg)[1].family, free_gpu_bytes(), have_bitsandbytes(),
                           resume)

    return fitted_run(cfg, resume, fit, train_run)


def _distill(cfg: DistillConfig, resume: bool, memory: Optional[MemoryPlan] = None) -> Path:
    s = start_student_run(cfg, resume, memory)
    t = StudentTraining.of(cfg, s.run.accelerator, s.teacher, s.cache, s.student)
    state = t.state()

    def student_file(folder: Path, step: int) -> Dict[str, str]:
        name = "student-step-%07d.safetensors" % step
        export_student(folder / name, t.weights(), s.arch, s.ckpt, s.info, cfg, step)
        return {"student": name}

    with _kd_steps(cfg, s, t) as kd_step:
        train(s.run, state, Cadence.of(cfg, cfg.eval_interval()), kd_step, t.optimizer,
              samples=run_samples(cfg, s, t.weights), files=student_file,
              samples_per_step=cfg.batch_size * cfg.grad_accum * s.run.accelerator.num_processes,
              desc="distilling")
    final = s.run.paths.out / kd_result_name(str(s.ckpt.path), s.arch)
    return s.finish(t.student, state, final, lambda: export_student(
        final, t.weights(), s.arch, s.ckpt, s.info, cfg, state.step))


@dataclass
class StudentRun:
    """A started run of a student objective: its run folder and accelerator, the teacher
    (frozen, loaded), the training cache with any teacher-made data, the student it starts
    from (fp32, on the CPU, not yet prepared to train), and for an inpainting teacher what
    makes the mask and masked-image channels of a step."""

    run: Run
    ckpt: Checkpoint
    info: ModelInfo
    arch: Architecture
    teacher: torch.nn.Module
    cache: Cache
    student: torch.nn.Module
    inpainting: Optional[InpaintingConditioning]

    def finish(self, student: Any, state: RunState, final: Path, export: Callable[[], None],
               **done: Any) -> Path:
        """Export (process 0) and the ``done`` event, once every process agrees on the
        trained weights.  Every process calls this."""
        agree = replicas_agree(student, self.run.accelerator)
        if self.run.main:
            export()
            self.run.event("done", step=state.step, output=str(final), replicas_agree=agree, **done)
        self.run.accelerator.wait_for_everyone()
        return final

    def extra_channels(self, batch: "MicroBatch", generator: torch.Generator
                       ) -> Optional[torch.Tensor]:
        """An inpainting teacher's mask and masked-image latent for `batch` (drawn from
        `generator`); None for a text-to-image teacher."""
        return self.inpainting(batch.mean, generator) if self.inpainting is not None else None


def start_student_run(cfg: DistillConfig, resume: bool, memory: Optional[MemoryPlan],
                      **fields: Any) -> StudentRun:
    """Check the inputs (before any model loads), start the run (`fields` join its start
    event), load the teacher, make the training cache and the student to start from."""
    from accelerate import Accelerator

    ckpt, info, arch = _teacher(cfg)
    start = checked_init_student(cfg.init_student, ckpt, info, arch) if cfg.init_student else None
    # An empty or missing dataset, or bad prompts, fail before any model loads.
    data = training_data(cfg.data, cfg.synthetic, cfg.prompts)
    scan = scan_dataset(data.dataset) if data.dataset is not None else None
    plan = (plan_synthesis(ckpt, info, cfg.synth_settings(data.synthetic, data.prompts))
            if data.teacher_makes_data() else None)
    made = finished_synthetic_cache(data.synth_run) if data.synth_run is not None else None
    resumed_from = RunPaths(Path(cfg.out)).resume_point(resume)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.grad_accum,
                              cpu=not torch.cuda.is_available())
    run = Run.start(cfg, accelerator, resumed_from, memory, objective=cfg.objective,
                    arch=arch.removal.name,  # the key
                    family=info.family, parameterization=info.parameterization,
                    lr=cfg.learning_rate(),
                    dataset=scan.summary() if scan is not None else None,
                    problems=scan.problems() if scan is not None else [],
                    synthetic=dict(plan.description(), count=plan.settings.count) if plan else None,
                    synth_run=str(data.synth_run) if data.synth_run is not None else None,
                    random_conditioning=cfg.random_conditioning_p if cfg.random_conditioning else None,
                    processes=accelerator.num_processes, init_student=cfg.init_student,
                    **fields)

    device = accelerator.device
    teacher = load_unet(ckpt, info).to(device, teacher_dtype(device)).requires_grad_(False).eval()
    cache = _training_cache(cfg, run, ckpt, info, teacher, scan, plan, made)
    student = load_init_student(*start, arch) if start else student_from_teacher(teacher, arch)
    inpainting = (InpaintingConditioning(load_vae(ckpt).to(device, teacher_dtype(device)).eval(),
                                         latent_scale(info))
                  if info.arch.teacher.inpainting else None)
    return StudentRun(run, ckpt, info, arch, teacher, cache, student, inpainting)


# -- setting up -------------------------------------------------------------------


def _teacher(cfg: DistillConfig) -> Tuple[Checkpoint, ModelInfo, Architecture]:
    ckpt = Checkpoint(cfg.teacher)
    info = inspect_checkpoint(ckpt, cfg.v_prediction)
    if info.is_student:
        raise BadInput("%s is a BK-SDM '%s' student; distil from its teacher" % (ckpt.path, info.preset))
    return ckpt, info, which_student(info.arch.teacher, cfg.preset, cfg.remove)


def _cache_root(cfg: DistillConfig, paths: RunPaths) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else paths.out / "cache"


def _training_cache(cfg: DistillConfig, run: Run, ckpt: Checkpoint, info: ModelInfo,
                    teacher: torch.nn.Module, scan: Optional[DatasetScan],
                    plan: Optional[SynthPlan], made: Optional[LatentCache]) -> Cache:
    """Everything the run trains on, as one cache: the encoded dataset, then the pairs the
    teacher makes now, then those of a finished synth run."""
    real = _cache(cfg, run, ckpt, info, scan) if scan is not None else None
    synthetic = [_synthetic_cache(cfg, run, ckpt, info, teacher, plan) if plan is not None
                 else None, made]
    caches = [cache for cache in [real] + synthetic if cache is not None]
    run.event("data", examples=sum(map(len, caches)), real=len(real) if real else 0,
              synthetic=sum(len(cache) for cache in synthetic if cache is not None))
    return caches[0] if len(caches) == 1 else CacheUnion(caches)


def _synthetic_cache(cfg: DistillConfig, run: Run, ckpt: Checkpoint, info: ModelInfo,
                     teacher: torch.nn.Module, plan: SynthPlan) -> LatentCache:
    """The pairs the (already loaded) teacher makes, in ``<cache>/synthetic``: made by the
    main process, kept across stops, reused by any run with the same settings."""
    folder = SynthFolder(_cache_root(cfg, run.paths) / "synthetic")
    with run.accelerator.main_process_first():
        if run.main:
            synthesize(folder, plan, lambda: TeacherSampler(ckpt, info, teacher, plan.settings,
                                                            run.accelerator.device),
                       run.paths, run.log, job=False)
        return LatentCache(folder.cache, plan.fingerprint())


def _cache(cfg: DistillConfig, run: Run, ckpt: Checkpoint, info: ModelInfo,
           scan: DatasetScan) -> LatentCache:
    """The encoded dataset; built by the main process, with the encoders loaded only then."""
    accelerator = run.accelerator
    root = _cache_root(cfg, run.paths)
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
    run.event("cache", path=str(root), examples=len(cache), **cache.stats)
    return cache


def teacher_dtype(device: torch.device) -> torch.dtype:
    """The frozen teacher runs in half precision on a GPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


@dataclass
class StudentTraining:
    """What a step of a student objective works with: the frozen teacher, the training
    cache, the student (as accelerate prepared it) with its EMA, optimizer and LR
    scheduler, and the process's own noise generator and data order."""

    accelerator: Any
    teacher: torch.nn.Module
    cache: Cache
    student: Any
    ema: Optional[EMA]
    optimizer: Any
    scheduler: Any
    generator: torch.Generator
    batches: Batches

    @classmethod
    def of(cls, cfg: DistillConfig, accelerator: Any, teacher: torch.nn.Module, cache: Cache,
           student: torch.nn.Module) -> "StudentTraining":
        """`student` made ready to train: on the device with the memory options on, an EMA,
        AdamW at a constant rate, prepared by accelerate; noise and data order seeded."""
        device = accelerator.device
        student = student.to(device).train()
        if cfg.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        _use_xformers(teacher, student, device)
        ema = EMA(student, cfg.ema_decay) if cfg.ema else None
        trained = [p for p in student.parameters() if p.requires_grad]  # LoRA: the adapters
        optimizer = adamw(trained, cfg.learning_rate(), cfg.use_8bit_adam)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant
        student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + accelerator.process_index)
        batches = Batches(len(cache), cfg.batch_size, accelerator.process_index,
                          accelerator.num_processes, cfg.seed)
        return cls(accelerator, teacher, cache, student, ema, optimizer, scheduler, generator,
                   batches)

    def state(self) -> RunState:
        return (RunState(self.accelerator).add_model("student", self.student)
                .add("optimizer", self.optimizer).add("scheduler", self.scheduler)
                .add("ema", self.ema).add_generator("generators", self.generator)
                .add_position("data_position", self.batches))

    def weights(self) -> Dict[str, torch.Tensor]:
        """What gets exported: the EMA weights when averaging is on (as the official
        script does)."""
        if self.ema is not None:
            return self.ema.shadow
        student = self.accelerator.unwrap_model(self.student)
        return {k: v.detach() for k, v in student.state_dict().items()}


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


@contextmanager
def _kd_steps(cfg: DistillConfig, s: StudentRun, t: StudentTraining
              ) -> Iterator[Callable[[], Dict[str, float]]]:
    """The paper's step: `cfg.grad_accum` micro-batches of cached latents, noised (with an
    inpainting model's mask and masked-image latent beside them); the frozen teacher's
    prediction and block outputs and the student's; the three-term loss (kd.py); then the
    EMA follows the student.  Returns the losses averaged."""
    accelerator, device = t.accelerator, t.accelerator.device
    pairs = s.arch.feature_kd_pairs()
    teacher_taps = FeatureTaps(t.teacher, [name for name, _ in pairs])
    student_taps = FeatureTaps(accelerator.unwrap_model(t.student), [name for _, name in pairs])
    alphas, scale = noise_scheduler(s.info).alphas_cumprod.to(device), latent_scale(s.info)
    half = teacher_dtype(device)
    weights = LossWeights(cfg.lambda_task, cfg.lambda_output, cfg.lambda_feature)

    def step() -> Dict[str, float]:
        totals: Dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            batch = training_batch(cfg, t, scale)
            noisy, timesteps, target = noised(batch.latents, alphas, s.info.parameterization,
                                              t.generator)
            noisy = with_channels(noisy, s.extra_channels(batch, t.generator))
            embedding = batch.embedding
            with torch.no_grad(), accelerator.autocast():
                teacher_pred = t.teacher(noisy.to(half), timesteps, embedding.to(half)).sample
            teacher_features = teacher_taps.take()
            with accelerator.accumulate(t.student), accelerator.autocast():
                student_pred = t.student(noisy, timesteps, embedding).sample
                loss, parts = kd_loss(student_pred, teacher_pred, target, student_taps.take(),
                                      teacher_features, weights)
                optimizer_step(accelerator, loss, t.student.parameters(), t.optimizer,
                               cfg.max_grad_norm, t.scheduler)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value / cfg.grad_accum
        if t.ema is not None:
            t.ema.update(accelerator.unwrap_model(t.student))
        return totals

    try:
        yield step
    finally:
        teacher_taps.close()
        student_taps.close()


class MicroBatch(NamedTuple):
    """A micro-batch of training data: clean latents (a draw from each cached posterior,
    scaled for the U-Net), their caption embeddings, and the posterior means (VAE scale),
    from which an inpainting step makes its masked images."""

    latents: torch.Tensor
    embedding: torch.Tensor
    mean: torch.Tensor


def training_batch(cfg: DistillConfig, t: StudentTraining, scale: float) -> MicroBatch:
    """The next micro-batch of this process, flipped at random."""
    indices = t.batches.next()
    batch = _batch(t.cache, indices, t.generator, cfg.flip, t.accelerator.device)
    if cfg.random_conditioning:
        _unrelated_latents(batch, t.cache, indices, t.generator, cfg.random_conditioning_p)
    latents = (batch["mean"] + batch["std"] * randn(batch["mean"], t.generator)) * scale
    return MicroBatch(latents, batch["embedding"], batch["mean"])


def with_channels(noisy: torch.Tensor, extra: Optional[torch.Tensor]) -> torch.Tensor:
    """A U-Net's input: the noisy latents, and an inpainting model's extra channels."""
    return noisy if extra is None else torch.cat([noisy, extra], dim=1)


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


# -- checkpoints, samples, export -------------------------------------------------


def export_student(output: Path, weights: Dict[str, torch.Tensor], arch: Architecture,
                   ckpt: Checkpoint, info: ModelInfo, cfg: DistillConfig, step: int) -> None:
    """The student as an A1111 checkpoint: the teacher's VAE and text encoder, the
    student's U-Net, the run's metadata."""
    dtype = DTYPES[cfg.export_dtype] or torch.float32
    unet = [tensor_out(UNET_PREFIX + k, v, dtype)
            for k, v in KeyMap(arch).convert_to_ldm(weights).items()]
    write_student(output, arch, teacher_parts(ckpt) + unet, info.config,
                  dict(teacher_origin(ckpt), **run_metadata(cfg, step)), overwrite=True)


def run_metadata(cfg: DistillConfig, step: int) -> Dict[str, str]:
    """What a run records in the files it exports: objective, steps, the student it started
    from, and how the result is meant to draw (an LCM student: sampler, steps, CFG)."""
    metadata = {"bksdm.objective": cfg.objective, "bksdm.distilled_steps": str(step)}
    if cfg.init_student:
        metadata["bksdm.init_student"] = Path(cfg.init_student).name
    recommendation = cfg.recommendation()
    if recommendation is not None:
        metadata.update(recommendation.metadata())
    return metadata


def run_samples(cfg: DistillConfig, s: StudentRun, weights: Callable[[], Dict[str, torch.Tensor]]
             ) -> Optional[Samples]:
    """Teacher | student grids, and the student's PSNR/SSIM against the teacher on the
    same prompts and seeds (process 0's, when either is asked for).  The teacher draws
    with the default sampler at ``sample_steps``, the student as the run's result is meant
    to (an LCM student: the LCM sampler at ``lcm_steps``, no CFG)."""
    run = s.run
    if not (run.main and (cfg.sample_every or cfg.eval_interval())):
        return None
    sampler = _Sampler(cfg, s.ckpt, s.info, s.teacher, run.accelerator.device)
    return Samples(SampleGrid(run.paths.samples, cfg.resolution, sampler.teacher_images),
                   draw=lambda: sampler.student_images(weights()),
                   score=lambda images: dict(prompts=len(images),
                                             **agreement(images, sampler.teacher_images)),
                   best_by="ssim")


class _Sampler:
    """Teacher and student images for the sample prompts from fixed seeds."""

    def __init__(self, cfg: DistillConfig, ckpt: Checkpoint, info: ModelInfo,
                 teacher: torch.nn.Module, device: torch.device) -> None:
        encode = text_encoder_fn(ckpt, info, device)
        self.dtype = next(teacher.parameters()).dtype  # fp16 on a GPU: VAE and student follow
        self.embeddings = encode(list(cfg.sample_prompts)).to(device, self.dtype)
        self.negative = encode([""]).to(device, self.dtype)
        self.cfg, self.info, self.device = cfg, info, device
        self.vae = load_vae(ckpt).to(device, self.dtype).eval()
        reference = DrawPoint(DEFAULT_SAMPLER, cfg.sample_steps, DEFAULT_CFG)
        self.teacher_images = self._images(teacher, reference)
        self.drawing = cfg.recommendation() or reference

    def _images(self, unet: torch.nn.Module, drawing: DrawPoint) -> List[Any]:
        return prompt_images(make_pipeline(unet, self.vae, self.info, drawing.sampler),
                             self.embeddings, self.negative, self.cfg.resolution, drawing.steps,
                             self.cfg.seed, drawing.cfg_scale)

    def student_images(self, weights: Dict[str, torch.Tensor]) -> List[Any]:
        from diffusers import UNet2DConditionModel

        arch = which_student(self.info.arch.teacher, self.cfg.preset, self.cfg.remove)
        student = UNet2DConditionModel(**arch.diffusers_config())
        student.load_state_dict({k: v.float() for k, v in weights.items()})
        return self._images(student.to(self.device, self.dtype).eval(), self.drawing)
