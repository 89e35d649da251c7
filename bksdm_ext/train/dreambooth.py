"""DreamBooth finetuning of a BK-SDM student (or any SD-v1/v2 A1111 checkpoint), headless,
resumable, as the WebUI's background job runs it (paper appendix J).

Each step trains on a batch of instance images ("a [V] dog") and as many class images
("a dog") made by the original model; loss = MSE(instance half) + prior_weight * MSE(class
half).  U-Net and text encoder are finetuned jointly (or LoRA adapters on their attention).
To fit small GPUs, images are encoded once by the VAE (in half precision), which is then
freed; instance images keep their aspect ratio when encoded and the random square crop
is taken in latent space (8-pixel steps).  All randomness comes from one CPU generator
that is checkpointed with the data positions, so a resumed run repeats the losses of an
uninterrupted one; the loop, checkpoints and samples are the training skeleton's
(skeleton.py).  Output: the finetuned model as an A1111 .safetensors + .yaml (LoRA
merged in), and in LoRA mode the LoRA file too.
"""
import os
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
from .memory_fit import fit_dreambooth, free_gpu_bytes, have_bitsandbytes
from .memory_plan import MemoryPlan
from .noising import Batches, noised
from .optim import adamw, optimizer_step, require_bitsandbytes
from .dreambooth_config import CLASS_SAMPLER, DreamBoothConfig
from ..errors import BadInput
from ..model.generation import make_pipeline
from ..model.hashing import a1111_sha256
from ..model.keymap import UNET_PREFIX, KeyMap
from ..model.loading import latent_scale, load_text_encoder, load_unet, load_vae, noise_scheduler
from ..model.parts_keymap import TEXT_PREFIX, clip_to_ldm
from ..jobs.runs import RunPaths, progress_bar
from ..model.safetensors_io import tensor_out
from .run_state import RunState
from .samples import SampleGrid, Samples, kept_reference, prompt_images
from .skeleton import Cadence, Run, fitted_run, train
from ..scores.agreement import to_tensor
from ..scores.clip import ClipScorer, find_scorer

Latent = Tuple[torch.Tensor, torch.Tensor]  # the VAE posterior's mean and std, [4, h, w]


def dreambooth(cfg: DreamBoothConfig, resume: bool = False) -> Path:
    """Finetune, checkpoint, export; returns the merged checkpoint's path.  A run that
    fails says why in its event file too (the WebUI's job list reads it there)."""
    def fit() -> Tuple[DreamBoothConfig, Optional[MemoryPlan]]:
        info = _check_inputs(cfg)[1]
        return fit_dreambooth(cfg, info.family, info.preset, free_gpu_bytes(),
                              have_bitsandbytes(), resume)

    return fitted_run(cfg, resume, fit, _dreambooth)


def _dreambooth(cfg: DreamBoothConfig, resume: bool, memory: Optional[MemoryPlan] = None
                ) -> Path:
    from accelerate import Accelerator

    from ..model.tokenizer import clip_tokenizer

    ckpt, info, class_model, instances = _check_inputs(cfg)
    resumed_from = RunPaths(Path(cfg.out)).resume_point(resume)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = cfg.mixed_precision if device.type == "cuda" else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type != "cuda")
    # Before any work: a CLIP named with --clip-model that cannot be had ends the run now.
    clip = find_scorer(cfg.clip_model, device) if cfg.sample_every else None
    run = Run.start(cfg, accelerator, resumed_from, memory, model=str(ckpt.path),
                    class_model=str(class_model) if class_model else None, family=info.family,
                    preset=info.preset, parameterization=info.parameterization,
                    instance_images=len(instances),
                    class_images=cfg.num_class_images if cfg.prior_preservation else 0,
                    mode="lora" if cfg.lora else "full", lr=cfg.learning_rate(),
                    mixed_precision=precision)

    class_paths = _class_images(cfg, run, class_model, device) if class_model is not None else []
    instance_latents, class_latents, side = _encode_images(ckpt, instances, class_paths,
                                                           cfg.resolution, device)
    tokenizer = clip_tokenizer(info.family)
    unet, text_encoder = _trainable_models(cfg, ckpt, info, device)
    params = [p for model in (unet, text_encoder) for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, cfg.learning_rate(), cfg.use_8bit_adam)
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    prompts = _token_ids(tokenizer, [cfg.instance_prompt] * cfg.batch_size
                         + [cfg.class_prompt] * (cfg.batch_size if class_paths else 0)).to(device)
    conditioning = prompts if cfg.train_text_encoder else _encode_text(text_encoder, prompts)
    alphas, scale = noise_scheduler(info).alphas_cumprod.to(device), latent_scale(info)

    generator = torch.Generator().manual_seed(cfg.seed)
    instance_order = Batches(len(instance_latents), cfg.batch_size, 0, 1, cfg.seed)
    class_order = Batches(max(len(class_latents), 1), cfg.batch_size, 0, 1, cfg.seed + 1)
    state = (RunState(accelerator).add_model("unet", unet, trained_only=True)
             .add_model("text_encoder", text_encoder, trained_only=True)
             .add("optimizer", optimizer).add_generator("generator", generator, per_process=False)
             .add_position("instance_position", instance_order)
             .add_position("class_position", class_order))
    samples = (_samples(cfg, ckpt, info, tokenizer, run, unet, text_encoder, clip)
               if cfg.sample_every else None)

    def step() -> Dict[str, float]:
        chosen = [instance_latents[i] for i in instance_order.next()]
        if class_latents:
            chosen += [class_latents[i] for i in class_order.next()]
        latents = torch.stack([_crop(latent, side, generator) for latent in chosen]).to(device) * scale
        noisy, timesteps, target = noised(latents, alphas, info.parameterization, generator)
        return train_step(cfg, accelerator, unet, text_encoder, optimizer, params, noisy,
                          timesteps, target, conditioning)

    # The CLIP score comes with the samples.
    train(run, state, Cadence.of(cfg, cfg.sample_every), step, optimizer, samples=samples,
          desc="dreambooth")
    return _finish(cfg, run, ckpt, info, accelerator.unwrap_model(unet),
                   accelerator.unwrap_model(text_encoder), class_model, state.step)


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
    if cfg.prior_preservation and cfg.num_class_images < 1:  # the other ranges: the config's
        raise BadInput("--num-class-images 0: prior preservation needs at least 1 (or pass "
                       "--no-prior-preservation)")
    ckpt = Checkpoint(cfg.model)
    info = inspect_checkpoint(ckpt)
    if info.arch.teacher.inpainting:
        raise BadInput("%s is an inpainting model; DreamBooth here trains text-to-image models: "
                       "personalise the text-to-image model it comes from" % ckpt.path)
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


def _class_images(cfg: DreamBoothConfig, run: Run, class_model: Path, device: torch.device
                  ) -> List[Path]:
    """The class images prior preservation trains on, made by `class_model` where the
    class folder does not hold them yet."""
    recipe = ClassImageRecipe(class_model, cfg.class_prompt, cfg.resolution, CLASS_SAMPLER,
                              cfg.class_steps, cfg.class_guidance)
    classes = ensure_class_images(Path(cfg.class_dir) if cfg.class_dir else run.paths.out,
                                  recipe, cfg.num_class_images, device)
    run.event("class_images", folder=str(classes.folder), model=str(class_model),
              generated=classes.generated, reused=classes.reused)
    return classes.paths


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
    optimizer_step(accelerator, loss, params, optimizer, cfg.max_grad_norm)
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


# -- samples ----------------------------------------------------------------------


def _samples(cfg: DreamBoothConfig, ckpt: Checkpoint, info: ModelInfo, tokenizer: Any, run: Run,
             unet: Any, text_encoder: Any, clip: Optional[ClipScorer]) -> Samples:
    """Before finetuning | now, for the sample prompts (the instance prompt unless given)
    from fixed seeds; with a CLIP model, the CLIP score of the new images with their prompts."""
    prompts = list(cfg.sample_prompts) or [cfg.instance_prompt]
    ids = _token_ids(tokenizer, prompts + [""])

    def draw() -> List[Any]:
        return _sample_images(cfg, ckpt, info, run.accelerator, unet, text_encoder, ids)

    def clip_score(images: List[Any]) -> Dict[str, Any]:
        scores = clip.score(to_tensor(images), prompts)
        return {"clip_model": clip.name, "clip_score": float(scores.mean())}

    # "Before" comes from the weights as loaded from `model`, made once and kept on disk
    # for resumed runs.
    before = kept_reference(run.paths.samples / "before.png", cfg.resolution, draw)
    return Samples(SampleGrid(run.paths.samples, cfg.resolution, before), draw,
                   clip_score if clip is not None else None)


def _sample_images(cfg: DreamBoothConfig, ckpt: Checkpoint, info: ModelInfo, accelerator: Any,
                   unet: Any, text_encoder: Any, ids: torch.Tensor) -> List[Any]:
    """The models' images of the prompts `ids` holds (the last row: the negative prompt);
    the VAE is loaded for them only."""
    training = unet.training, text_encoder.training
    vae = load_vae(ckpt).to(accelerator.device).eval()
    unet.eval()
    text_encoder.eval()
    try:
        with torch.no_grad(), accelerator.autocast():
            embeddings = text_encoder(ids.to(accelerator.device))[0].float()
            pipe = make_pipeline(accelerator.unwrap_model(unet), vae, info)
            return prompt_images(pipe, embeddings[:-1], embeddings[-1:], cfg.resolution,
                                 cfg.sample_steps, cfg.seed)
    finally:
        unet.train(training[0])
        text_encoder.train(training[1])
        del vae


# -- export -----------------------------------------------------------------------


def _finish(cfg: DreamBoothConfig, run: Run, ckpt: Checkpoint, info: ModelInfo,
            unet: torch.nn.Module, text_encoder: torch.nn.Module, class_model: Optional[Path],
            step: int) -> Path:
    final = run.paths.out / ("%s-dreambooth.safetensors" % ckpt.path.stem)
    origin = _origin(cfg, ckpt, info, class_model, step)
    if cfg.lora:
        from .lora import kohya_metadata, kohya_state, merged_state_dict, write_lora

        unet_state = merged_state_dict(unet)
        text_state = merged_state_dict(text_encoder) if cfg.train_text_encoder else None
        lora_file = run.paths.out / ("%s-dreambooth-lora.safetensors" % ckpt.path.stem)
        adapters = kohya_state(unet, info.arch, text_encoder if cfg.train_text_encoder else None)
        metadata = kohya_metadata(info.arch, cfg.lora_rank, ckpt.path.name)
        metadata.update({k: v for k, v in origin.items() if k.startswith("bksdm.dreambooth_")})
        write_lora(lora_file, adapters, DTYPES[cfg.export_dtype] or torch.float32, metadata)
    else:
        unet_state = unet.state_dict()
        text_state = text_encoder.state_dict() if cfg.train_text_encoder else None
    _export(final, ckpt, info, unet_state, text_state, DTYPES[cfg.export_dtype], origin)
    done = {"step": step, "output": str(final)}
    if cfg.lora:
        done["lora"] = str(lora_file)
    run.event("done", **done)
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
    tensors = [tensor_out(k, v, dtype) for k, v in trained.items()]
    tensors += [t for t in teacher_parts(ckpt) if t.name not in trained]
    write_student(output, info.arch, tensors, info.config, origin, overwrite=True)


def _checkpoint_activations(model: Any) -> None:
    """Gradient checkpointing of a transformers model: transformers 5 renamed the call
    (the old name warns until v6), 4.x only has the old one."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
