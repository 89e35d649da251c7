"""DreamBooth's class images: generated once by the original model, then reused.

Prior preservation trains on images of the class ("a dog") made by the model before
finetuning, so the subject ("a [V] dog") does not overwrite the class.  Generating 200
of them is the slowest part of a short run, so they live in a folder whose name says
what made them (``class-<prompt slug>-<hash of model file, prompt, resolution, sampler
settings>``): a resumed run, a repeated run or another run given the same ``--class-dir``
finds them there and only tops up what is missing.  Image ``i`` always comes from seed
``i``, so a topped-up folder holds the same images as one generated in one go.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List

import torch

from ..model.checkpoint import Checkpoint
from ..model.detect import inspect_checkpoint
from ..model.generation import make_pipeline
from ..model.loading import load_unet, load_vae
from ..jobs.runs import progress_bar

GENERATION_BATCH = 4
RECIPE_FILE = "class.json"


@dataclass
class ClassImageRecipe:
    """What the images in a class folder are a function of."""

    model: Path
    prompt: str
    resolution: int
    sampler: str
    steps: int
    guidance: float

    def identity(self) -> List[Any]:
        stat = self.model.stat()
        return [self.model.name, stat.st_size, int(stat.st_mtime), self.prompt, self.resolution,
                self.sampler, self.steps, self.guidance]

    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity()).encode("utf-8")).hexdigest()[:10]
        slug = re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:40] or "prompt"
        return "class-%s-%s" % (slug, digest)


@dataclass
class ClassImages:
    folder: Path
    paths: List[Path]
    generated: int
    reused: int


def image_path(folder: Path, index: int) -> Path:
    return folder / ("%05d.png" % index)


def ensure_class_images(root: Path, recipe: ClassImageRecipe, count: int,
                        device: torch.device) -> ClassImages:
    """`count` class images under `root`, generating only those not there yet."""
    folder = root / recipe.folder_name()
    folder.mkdir(parents=True, exist_ok=True)
    recipe_file = folder / RECIPE_FILE
    if not recipe_file.is_file():
        recipe_file.write_text(json.dumps(dict(zip(
            ["model", "size", "mtime", "prompt", "resolution", "sampler", "steps", "guidance"],
            recipe.identity())), indent=2), encoding="utf-8")
    paths = [image_path(folder, i) for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        generate = _generator(recipe, device)
        bar = progress_bar(len(missing), 0, True, "class images by %s" % recipe.model.name)
        for start in range(0, len(missing), GENERATION_BATCH):
            indices = missing[start:start + GENERATION_BATCH]
            for index, image in zip(indices, generate(indices)):
                _save_png(image, image_path(folder, index))
            bar.update(len(indices))
        bar.close()
        del generate
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return ClassImages(folder, paths, generated=len(missing), reused=count - len(missing))


def _generator(recipe: ClassImageRecipe, device: torch.device) -> Callable[[List[int]], List[Any]]:
    """index list -> images, with the recipe's model loaded once (half precision on a GPU)."""
    from ..model.text_encoding import text_encoder_fn

    ckpt = Checkpoint(recipe.model)
    info = inspect_checkpoint(ckpt)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    encode = text_encoder_fn(ckpt, info, device)
    prompt, negative = encode([recipe.prompt]).to(device, dtype), encode([""]).to(device, dtype)
    del encode
    pipe = make_pipeline(load_unet(ckpt, info).to(device, dtype).eval(),
                         load_vae(ckpt).to(device, dtype).eval(), info, recipe.sampler)

    @torch.no_grad()
    def generate(indices: List[int]) -> List[Any]:
        n = len(indices)
        return pipe(prompt_embeds=prompt.expand(n, -1, -1),
                    negative_prompt_embeds=negative.expand(n, -1, -1),
                    height=recipe.resolution, width=recipe.resolution,
                    num_inference_steps=recipe.steps, guidance_scale=recipe.guidance,
                    generator=[torch.Generator().manual_seed(i) for i in indices]).images

    return generate


def _save_png(image: Any, path: Path) -> None:
    """Whole files only: a run killed mid-write leaves no half image to be reused."""
    temp = path.with_name(".%s.%d.tmp" % (path.name, os.getpid()))
    image.save(temp, format="PNG")
    os.replace(temp, path)
