"""DreamBooth finetuning of a BK-SDM student (or any SD-v1/v2 A1111 checkpoint), headless,
resumable, as the WebUI's background job runs it (paper appendix J).

Each step trains on a batch of instance images ("a [V] dog") and as many class images
("a dog") made by the original model; loss = MSE(instance half) + prior_weight * MSE(class
half).  U-Net and text encoder are finetuned jointly (or LoRA adapters on their attention).
To fit small GPUs, images are encoded once by the VAE (in half precision), which is then
freed; instance images keep their aspect ratio when encoded and the random square crop
is taken in latent space (8-pixel steps).  All randomness comes from one CPU generator
that is checkpointed with the data positions, so a resumed run repeats the losses of an
uninterrupted one.  Output: the finetuned model as an A1111 .safetensors + .yaml (LoRA
merged in), and in LoRA mode the LoRA file too.
"""
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..model.checkpoint import Checkpoint
from .class_images import ClassImageRecipe, ensure_class_images
from ..model.convert import DTYPES, student_metadata, teacher_parts, write_student
from .dataset import image_files, leads_out, open_rgb
from ..model.image_files import image_problems
from ..model.detect import ModelInfo, inspect_checkpoint
from .memory_fit import announce, fit_dreambooth, free_gpu_bytes, have_bitsandbytes, out_of_memory_explained
from .memory_plan import MemoryPlan
from .noising import Batches, noised
from .optim import adamw, require_bitsandbytes
from .dreambooth_config import CLASS_SAMPLER, DreamBoothConfig
from ..errors import BadInput
from ..jobs.events import EventLog
from ..model.generation import make_pipeline
from ..model.hashing import a1111_sha256
from ..model.keymap import UNET_PREFIX, KeyMap
from ..model.loading import latent_scale, load_text_encoder, load_unet, load_vae, noise_scheduler
from ..model.parts_keymap import TEXT_PREFIX, clip_to_ldm
from ..jobs.runs import RunPaths, event, failures_reported, progress_bar, stop_run
from ..model.safetensors_io import TensorOut, tensor_bytes, write_safetensors
from ..model.staging import staged
from .state_file import save_state
from ..scores.agreement import to_tensor
from ..scores.clip import find_scorer

Latent = Tuple[torch.Tensor, torch.Tensor]  # the VAE posterior's mean and std, [4, h, w]


def dreambooth(cfg: DreamBoothConfig, resume: bool = False) -> Path:
    """Finetune, checkpoint, export; returns the merged checkpoint's path.  A run that
    fails says why in its event file too (the WebUI's job list reads it there)."""
    with failures_reported(cfg.out):
        info = _check_inputs(cfg)[1]
        cfg, memory = fit_dreambooth(cfg, info.family, info.preset, free_gpu_bytes(),
                                     have_bitsandbytes(), resume)
        announce(memory)
        with out_of_memory_explained(cfg):
            return _dreambooth(cfg, resume, memory)


def _dreambooth(cfg: DreamBoothConfig, resume: bool, memory: Optional[MemoryPlan] = None
                ) -> Path:
    from accelerate import Accelerator

    paths = RunPaths(Path(cfg.out))
    ckpt, info, class_model, instances = _check_inputs(cfg)
    start_checkpoint = paths.resume_point(resume)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = cfg.mixed_precision if device.type == "cuda" else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type != "cuda")
    # Before any work: a CLIP named with --clip-model that cannot be had ends the run now.
    clip = find_scorer(cfg.clip_model, device) if cfg.sample_every else None
    paths.out.mkdir(parents=True, exist_ok=True)
    (paths.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    log = EventLog(paths.events)
    event(log, "start", total_steps=cfg.steps, model=str(ckpt.path), class_model=str(class_model) if class_model else None,
          family=info.family, preset=info.preset, parameterization=info.parameterization,
          instance_images=len(instances),
          class_images=cfg.num_class_images if cfg.prior_preservation else 0,
          mode="lora" if cfg.lora else "full", lr=cfg.learning_rate(), mixed_precision=precision,
          memory_plan=memory.describe() if memory is not None else None,
          resumed_from=str(start_checkpoint) if start_checkpoint else None)

    class_paths: List[Path] = []
    if class_model is not None:
        recipe = ClassImageRecipe(class_model, cfg.class_prompt, cfg.resolution, CLASS_SAMPLER,
                                  cfg.class_steps, cfg.class_guidance)
        classes = ensure_class_images(Path(cfg.class_dir) if cfg.class_dir else paths.out,
                                      recipe, cfg.num_class_images, device)
        event(log, "class_images", folder=str(classes.folder), model=str(class_model),
              generated=classes.generated, reused=classes.reused)
        class_paths = classes.paths
    instance_latents, class_latents, side = _encode_images(ckpt, instances, class_paths,
                                                           cfg.resolution, device)

    from ..model.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer(info.family)
    unet, text_encoder = _trainable_models(cfg, ckpt, info, device)
    params = [p for model in (unet, text_encoder) for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, cfg.learning_rate(), cfg.use_8bit_adam)
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    prompts = _token_ids(tokenizer, [cfg.instance_prompt] * cfg.batch_size
                         + [cfg.class_prompt] * (cfg.batch_size if class_paths else 0)).to(device)
    conditioning = prompts if cfg.train_text_encoder else _encode_text(text_encoder, prompts)
    noise = noise_scheduler(info)
    alphas = noise.alphas_cumprod.to(device)
    scale = latent_scale(info)

    generator = torch.Generator().manual_seed(cfg.seed)
    instance_order = Batches(len(instance_latents), cfg.batch_size, 0, 1, cfg.seed)
    class_order = Batches(max(len(class_latents), 1), cfg.batch_size, 0, 1, cfg.seed + 1)
    samples = None
    if cfg.sample_every:  # "before" images come from the weights as loaded from `model`
        samples = _Samples(cfg, ckpt, info, tokenizer, paths, device, accelerator)
        samples.remember_before(unet, text_encoder)
    step = 0
    if start_checkpoint is not None:
        step = _load_state(start_checkpoint, accelerator, unet, text_encoder, optimizer,
                           generator, instance_order, class_order)

    progress = progress_bar(cfg.steps, step, True, "dreambooth")
    started, first_step = time.perf_counter(), step
    while step < cfg.steps:
        chosen = [instance_latents[i] for i in instance_order.next()]
        if class_latents:
            chosen += [class_latents[i] for i in class_order.next()]
        latents = torch.stack([_crop(latent, side, generator) for latent in chosen]).to(device) * scale
        noisy, timesteps, target = noised(latents, alphas, info.parameterization, generator)
        parts = train_step(cfg, accelerator, unet, text_encoder, optimizer, params, noisy,
                           timesteps, target, conditioning)
        step += 1
        progress.update(1)
        progress.set_postfix(loss="%.4f" % parts["loss"])
        if step % cfg.log_every == 0 or step == cfg.steps:
            event(log, "step", step=step, lr=optimizer.param_groups[0]["lr"],
                  **_speed(started, first_step, step, cfg.steps, device), **parts)
        if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
            _save_state(paths, step, cfg, accelerator, unet, text_encoder, optimizer, generator,
                        instance_order, class_order, log)
        if samples is not None and (step % cfg.sample_every == 0 or step == cfg.steps):
            event(log, "samples", step=step, path=str(samples.write(step, unet, text_encoder)))
            if clip is not None:
                scores = clip.score(to_tensor(samples.latest), samples.prompts)
                event(log, "eval", step=step, clip_model=clip.name,
                      clip_score=float(scores.mean()))
        request = paths.take_stop_request()
        if request and step < cfg.steps:
            stop_run(request, step, lambda: _save_state(
                paths, step, cfg, accelerator, unet, text_encoder, optimizer, generator,
                instance_order, class_order, log), log, progress)
    progress.close()
    return _finish(cfg, paths, ckpt, info, accelerator.unwrap_model(unet),
                   accelerator.unwrap_model(text_encoder), class_model, step, log)


# -- inputs -----------------------------------------------------------------------


def _check_inputs(cfg: DreamBoothConfig) -> Tuple[Checkpoint, ModelInfo, Optional[Path], List[Path]]:
    """Everything a user can get wrong, found before any model loads."""
    if not cfg.instance_prompt.strip():
        raise BadInput('--instance-prompt is empty; give e.g. "a photo of sks dog"')
    if cfg.prior_preservation and not cfg.class_prompt.strip():
        raise BadInput('--class-prompt is empty; give e.g. "a photo of a dog", or pass '
                       '--no-prior-preservation')
    if cfg.export_dtype not in DTYPES:
        raise BadInput("unknown --export-dtype '%s'; choose one of: %s"
                       % (cfg.export_dtype, ", ".join(DTYPES)))
    if cfg.resolution % 8 or cfg.resolution < 8:
        raise BadInput("--resolution %d: must be a positive multiple of 8 (512 for SD-v1)"
                       % cfg.resolution)
    if cfg.steps < 1 or cfg.batch_size < 1 or (cfg.prior_preservation and cfg.num_class_images < 1):
        raise BadInput("--steps, --batch-size and --num-class-images must be at least 1")
    ckpt = Checkpoint(cfg.model)
    info = inspect_checkpoint(ckpt)
    class_model = None
    if cfg.prior_preservation:
        class_model = Path(cfg.class_model) if cfg.class_model else ckpt.path
        inspect_checkpoint(Checkpoint(class_model))  # an SD checkpoint, or BadInput now
    instances = instance_images(Path(cfg.instance_dir))
    if cfg.lora:
        from .lora import require_peft

        require_peft()
    if cfg.use_8bit_adam:
        require_bitsandbytes()
    return ckpt, info, class_model, instances


def instance_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise BadInput("%s: no such folder; give the folder with the photos of your subject"
                       % folder)
    images = sorted(image_files(folder))
    if not images:
        raise BadInput("%s: no images (.png, .jpg, .jpeg, .webp or .bmp); put 3-5 photos of "
                       "your subject there" % folder)
    root = Path(os.path.realpath(str(folder)))
    problems = {p: "a link out of the folder; put the photo itself there" for p in images
                if leads_out(p, root)}
    problems.update(image_problems([p for p in images if p not in problems]))
    broken = [p for p in images if problems[p]]
    if broken:
        raise BadInput("%s: %s%s" % (broken[0], problems[broken[0]], " (and %d more)"
                                     % (len(broken) - 1) if len(broken) > 1 else ""))
    return images


def _load_resized(path: Path, resolution: int, multiple: int) -> torch.Tensor:
    """RGB in [-1, 1], [3, H, W]: shorter edge `resolution`, longer edge rounded to a
    multiple of the VAE's downscale so the latent covers it exactly; transparency
    becomes white."""
    from PIL import Image

    image = open_rgb(path)
    width, height = image.size
    ratio = resolution / min(width, height)
    size = (max(resolution, int(round(width * ratio / multiple)) * multiple),
            max(resolution, int(round(height * ratio / multiple)) * multiple))
    image = image.resize(size, Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1.0


@torch.no_grad()
def _encode_images(ckpt: Checkpoint, instances: List[Path], classes: List[Path], resolution: int,
                   device: torch.device) -> Tuple[List[Latent], List[Latent], int]:
    """Every image through the VAE once (half precision on a GPU), and the latent side of
    a `resolution` image; the VAE is freed after."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    vae = load_vae(ckpt).to(device, dtype).eval()
    downscale = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for SD's VAE

    bar = progress_bar(len(instances) + len(classes), 0, True, "encoding images")
    encoded = []
    for path in instances + classes:
        pixels = _load_resized(path, resolution, downscale)
        dist = vae.encode(pixels[None].to(device, dtype)).latent_dist
        encoded.append((dist.mean[0].float().cpu(), dist.std[0].float().cpu()))
        bar.update(1)
    bar.close()
    del vae
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return encoded[:len(instances)], encoded[len(instances):], resolution // downscale


def _crop(latent: Latent, side: int, generator: torch.Generator) -> torch.Tensor:
    """A random `side`-square crop of one latent, sampled from the posterior."""
    mean, std = latent
    top = int(torch.randint(0, mean.shape[1] - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, mean.shape[2] - side + 1, (1,), generator=generator))
    mean, std = mean[:, top:top + side, left:left + side], std[:, top:top + side, left:left + side]
    return mean + std * torch.randn(mean.shape, generator=generator)


def _token_ids(tokenizer: Any, prompts: List[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


@torch.no_grad()
def _encode_text(text_encoder: Any, ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(ids)[0]


# -- models and optimizer ---------------------------------------------------------


def _trainable_models(cfg: DreamBoothConfig, ckpt: Checkpoint, info: ModelInfo,
                      device: torch.device) -> Tuple[Any, Any]:
    unet = load_unet(ckpt, info).to(device)
    text_encoder = load_text_encoder(ckpt, info.family).to(device)
    prepare_models(cfg, unet, text_encoder, device)
    return unet, text_encoder


def prepare_models(cfg: DreamBoothConfig, unet: Any, text_encoder: Any, device: torch.device
                   ) -> None:
    """Mark what trains (all weights, or LoRA adapters) and turn on the memory options; a
    frozen text encoder runs in half precision on a GPU."""
    unet.train()
    if cfg.lora:
        from .lora import TEXT_TARGETS, UNET_TARGETS, add_lora

        add_lora(unet, UNET_TARGETS, cfg.lora_rank)
        if cfg.train_text_encoder:
            add_lora(text_encoder, TEXT_TARGETS, cfg.lora_rank)
    if cfg.train_text_encoder:
        text_encoder.train()
    else:
        text_encoder.requires_grad_(False).eval()
        if device.type == "cuda":
            text_encoder.half()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            _checkpoint_activations(text_encoder)
            # transformers' checkpointing reruns layers only for inputs that need grad;
            # with frozen embeddings (LoRA) the adapters would get none without this.
            text_encoder.enable_input_require_grads()


# -- one step ---------------------------------------------------------------------


def train_step(cfg: DreamBoothConfig, accelerator: Any, unet: Any, text_encoder: Any,
               optimizer: Any, params: List[torch.nn.Parameter], noisy: torch.Tensor,
               timesteps: torch.Tensor, target: torch.Tensor, conditioning: torch.Tensor
               ) -> Dict[str, float]:
    """One optimizer step on instance + class latents; `conditioning` is the prompts' token
    ids when the text encoder trains, else their (cached) embeddings."""
    with accelerator.autocast():
        embeddings = text_encoder(conditioning)[0] if cfg.train_text_encoder else conditioning
        prediction = unet(noisy, timesteps, embeddings).sample
        loss, parts = _loss(prediction, target, cfg.batch_size, cfg.prior_weight)
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # frees the gradients until the next backward
    return parts


def _loss(prediction: torch.Tensor, target: torch.Tensor, instances: int, prior_weight: float
          ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """MSE on the instance half + prior_weight * MSE on the class half, in fp32."""
    prediction, target = prediction.float(), target.float()
    instance = F.mse_loss(prediction[:instances], target[:instances])
    parts = {"loss_instance": instance.item()}
    loss = instance
    if prediction.shape[0] > instances:
        prior = F.mse_loss(prediction[instances:], target[instances:])
        loss = instance + prior_weight * prior
        parts["loss_prior"] = prior.item()
    parts["loss"] = loss.item()
    return loss, parts


def _speed(started: float, first_step: int, step: int, steps: int, device: torch.device
           ) -> Dict[str, Any]:
    it_s = (step - first_step) / max(time.perf_counter() - started, 1e-9)
    figures = {"it_s": round(it_s, 4), "eta_s": round((steps - step) / it_s) if it_s > 0 else None}
    if device.type == "cuda":
        figures["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
    return figures


# -- checkpoints ------------------------------------------------------------------


def _trained(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The tensors that train: every weight, or only the LoRA adapters."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _save_state(paths: RunPaths, step: int, cfg: DreamBoothConfig, accelerator: Any, unet: Any,
                text_encoder: Any, optimizer: Any, generator: torch.Generator,
                instance_order: Batches, class_order: Batches, log: EventLog) -> None:
    """Everything a resume needs, written under a temporary name and renamed; only the
    newest `keep_last` are kept."""
    scaler = getattr(accelerator, "scaler", None)
    state = {
        "step": step,
        "generator": generator.get_state(),
        "instance_position": instance_order.position,
        "class_position": class_order.position,
        "unet": _trained(accelerator.unwrap_model(unet)),
        "text_encoder": _trained(accelerator.unwrap_model(text_encoder)),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    target = paths.write_checkpoint(step, lambda folder: save_state(
        state, folder / "train_state.pt"), cfg.keep_last)
    event(log, "checkpoint", step=step, path=str(target))


def _load_state(path: Path, accelerator: Any, unet: Any, text_encoder: Any, optimizer: Any,
                generator: torch.Generator, instance_order: Batches, class_order: Batches) -> int:
    state = torch.load(str(path / "train_state.pt"), map_location="cpu", weights_only=True)
    for model, saved in ((unet, state["unet"]), (text_encoder, state["text_encoder"])):
        model = accelerator.unwrap_model(model)
        if set(saved) != set(_trained(model)):
            raise BadInput("%s was saved with other training settings (full vs --lora, text "
                           "encoder trained or not); resume with the run's own settings" % path)
        model.load_state_dict(saved, strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    generator.set_state(state["generator"])
    instance_order.position = state["instance_position"]
    class_order.position = state["class_position"]
    return int(state["step"])


# -- samples ----------------------------------------------------------------------


class _Samples:
    """Images of the sample prompts from fixed seeds: before finetuning | now, one row each."""

    def __init__(self, cfg: DreamBoothConfig, ckpt: Checkpoint, info: ModelInfo, tokenizer: Any,
                 paths: RunPaths, device: torch.device, accelerator: Any) -> None:
        self.prompts = list(cfg.sample_prompts) or [cfg.instance_prompt]
        self.ids = _token_ids(tokenizer, self.prompts + [""])
        self.cfg, self.ckpt, self.info, self.paths = cfg, ckpt, info, paths
        self.device, self.accelerator = device, accelerator
        self.before_path = paths.samples / "before.png"
        self.latest: List[Any] = []  # the newest "now" images, for their CLIP score

    def remember_before(self, unet: Any, text_encoder: Any) -> None:
        """The base model's images, made once and kept on disk for resumed runs."""
        if self.before_path.is_file():
            return
        self.paths.samples.mkdir(parents=True, exist_ok=True)
        self._column(self._images(unet, text_encoder)).save(self.before_path)

    def write(self, step: int, unet: Any, text_encoder: Any) -> Path:
        from PIL import Image

        size = self.cfg.resolution
        grid = Image.new("RGB", (2 * size, size * len(self.prompts)), "white")
        with Image.open(self.before_path) as before:
            grid.paste(before, (0, 0))
        self.latest = self._images(unet, text_encoder)
        grid.paste(self._column(self.latest), (size, 0))
        path = self.paths.samples / ("step-%07d.png" % step)
        grid.save(path)
        return path

    def _column(self, images: List[Any]) -> Any:
        from PIL import Image

        size = self.cfg.resolution
        column = Image.new("RGB", (size, size * len(images)), "white")
        for row, image in enumerate(images):
            column.paste(image, (0, row * size))
        return column

    def _images(self, unet: Any, text_encoder: Any) -> List[Any]:
        training = unet.training, text_encoder.training
        vae = load_vae(self.ckpt).to(self.device).eval()
        unet.eval()
        text_encoder.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                embeddings = text_encoder(self.ids.to(self.device))[0].float()
                pipe = make_pipeline(self.accelerator.unwrap_model(unet), vae, self.info)
                images = []
                for i in range(len(self.prompts)):
                    images.append(pipe(
                        prompt_embeds=embeddings[i:i + 1], negative_prompt_embeds=embeddings[-1:],
                        height=self.cfg.resolution, width=self.cfg.resolution,
                        num_inference_steps=self.cfg.sample_steps,
                        generator=torch.Generator().manual_seed(self.cfg.seed + i)).images[0])
        finally:
            unet.train(training[0])
            text_encoder.train(training[1])
            del vae
        return images


# -- export -----------------------------------------------------------------------


def _finish(cfg: DreamBoothConfig, paths: RunPaths, ckpt: Checkpoint, info: ModelInfo,
            unet: torch.nn.Module, text_encoder: torch.nn.Module, class_model: Optional[Path],
            step: int, log: EventLog) -> Path:
    final = paths.out / ("%s-dreambooth.safetensors" % ckpt.path.stem)
    origin = _origin(cfg, ckpt, info, class_model, step)
    if cfg.lora:
        from .lora import kohya_metadata, kohya_state, merged_state_dict

        unet_state = merged_state_dict(unet)
        text_state = merged_state_dict(text_encoder) if cfg.train_text_encoder else None
        lora_file = paths.out / ("%s-dreambooth-lora.safetensors" % ckpt.path.stem)
        adapters = kohya_state(unet, info.arch, text_encoder if cfg.train_text_encoder else None)
        metadata = kohya_metadata(info.arch, cfg.lora_rank, ckpt.path.name)
        metadata.update({k: v for k, v in origin.items() if k.startswith("bksdm.dreambooth_")})
        _write_tensors(lora_file, adapters, DTYPES[cfg.export_dtype] or torch.float32, metadata)
    else:
        unet_state = unet.state_dict()
        text_state = text_encoder.state_dict() if cfg.train_text_encoder else None
    _export(final, ckpt, info, unet_state, text_state, DTYPES[cfg.export_dtype], origin)
    done = {"step": step, "output": str(final)}
    if cfg.lora:
        done["lora"] = str(lora_file)
    event(log, "done", **done)
    return final


def _origin(cfg: DreamBoothConfig, ckpt: Checkpoint, info: ModelInfo,
            class_model: Optional[Path], step: int) -> Dict[str, str]:
    """The base model's own ``bksdm.*`` record (which teacher, distillation) plus this run's."""
    owned = set(student_metadata(info.arch, "", {}))
    origin = {k: v for k, v in ckpt.metadata.items() if k.startswith("bksdm.") and k not in owned}
    origin.update({
        "bksdm.dreambooth_base": ckpt.path.name,
        "bksdm.dreambooth_base_sha256": a1111_sha256(ckpt.path),
        "bksdm.dreambooth_instance_prompt": cfg.instance_prompt,
        "bksdm.dreambooth_class_prompt": cfg.class_prompt if class_model else "",
        "bksdm.dreambooth_class_model": class_model.name if class_model else "",
        "bksdm.dreambooth_steps": str(step),
        "bksdm.dreambooth_mode": "lora-r%d" % cfg.lora_rank if cfg.lora else "full",
        "bksdm.dreambooth_text_encoder": "trained" if cfg.train_text_encoder else "frozen",
    })
    return origin


def _export(output: Path, ckpt: Checkpoint, info: ModelInfo, unet_state: Dict[str, torch.Tensor],
            text_state: Optional[Dict[str, torch.Tensor]], dtype: Optional[torch.dtype],
            origin: Dict[str, str]) -> None:
    """The base checkpoint with its U-Net (and text encoder, when trained) replaced."""
    dtype = dtype or torch.float32
    trained = {UNET_PREFIX + k: v for k, v in KeyMap(info.arch).convert_to_ldm(unet_state).items()}
    if text_state is not None:
        prefix = TEXT_PREFIX[info.family]
        # Only names the base file has: SD-v2 keeps its unused last block and projection.
        trained.update({prefix + k: v for k, v in clip_to_ldm(text_state, info.family).items()
                        if prefix + k in ckpt})
    tensors = [_tensor_out(k, v, dtype) for k, v in trained.items()]
    tensors += [t for t in teacher_parts(ckpt) if t.name not in trained]
    write_student(output, info.arch, tensors, info.config, origin, overwrite=True)


def _tensor_out(name: str, value: torch.Tensor, dtype: torch.dtype) -> TensorOut:
    return TensorOut(name, dtype, tuple(value.shape),
                     lambda: tensor_bytes(value.detach().to("cpu", dtype)))


def _write_tensors(path: Path, state: Dict[str, torch.Tensor], dtype: torch.dtype,
                   metadata: Dict[str, str]) -> None:
    with staged([path], overwrite=True) as (temp,):
        write_safetensors(temp, [_tensor_out(k, v, dtype) for k, v in sorted(state.items())],
                          metadata)


def _checkpoint_activations(model: Any) -> None:
    """Gradient checkpointing of a transformers model: transformers 5 renamed the call
    (the old name warns until v6), 4.x only has the old one."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
