"""Sample grids of a training run: the model being trained draws fixed prompts from fixed
seeds every few steps, beside a reference column (the teacher's images in distillation,
the model's own before finetuning in DreamBooth), one row a prompt, so the grids of one
run (and of its resumed part) differ only by what training changed."""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..model.samplers import DEFAULT_CFG


@torch.no_grad()
def prompt_images(pipe: Any, embeddings: torch.Tensor, negative: torch.Tensor, size: int,
                  steps: int, seed: int, cfg_scale: float = DEFAULT_CFG) -> List[Any]:
    """One image per prompt embedding (rows of `embeddings`), prompt i from seed `seed + i`,
    through a pipeline that takes ``prompt_embeds`` (a CFG scale of 1: no guidance)."""
    return [pipe(prompt_embeds=embeddings[i:i + 1], negative_prompt_embeds=negative,
                 height=size, width=size, num_inference_steps=steps, guidance_scale=cfg_scale,
                 generator=torch.Generator().manual_seed(seed + i)).images[0]
            for i in range(len(embeddings))]


class SampleGrid:
    """``samples/step-N.png``: the reference images | the trained model's, a row a prompt."""

    def __init__(self, folder: Path, size: int, reference: List[Any]) -> None:
        self.folder, self.size, self.reference = folder, size, reference

    def write(self, step: int, images: List[Any]) -> Path:
        from PIL import Image

        size = self.size
        grid = Image.new("RGB", (2 * size, size * len(self.reference)), "white")
        for row, (reference, image) in enumerate(zip(self.reference, images)):
            grid.paste(reference, (0, row * size))
            grid.paste(image, (size, row * size))
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / ("step-%07d.png" % step)
        grid.save(path)
        return path


def kept_reference(path: Path, size: int, make: Callable[[], List[Any]]) -> List[Any]:
    """Reference images made once and kept at `path` as one column, so a resumed run shows
    the same ones (e.g. the model's before finetuning, which the resumed run no longer has)."""
    from PIL import Image

    if path.is_file():
        with Image.open(path) as image:
            column = image.convert("RGB")
        return [column.crop((0, row * size, size, (row + 1) * size))
                for row in range(column.height // size)]
    images = make()
    column = Image.new("RGB", (size, size * len(images)), "white")
    for row, image in enumerate(images):
        column.paste(image, (0, row * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    column.save(path)
    return images


@dataclass
class Samples:
    """How a run shows and scores the model it trains (see skeleton.train): `draw` makes
    its images of the sample prompts now, `grid` writes them beside the reference, `score`
    gives an ``eval`` event's figures for them (None: nothing to score with), and
    `best_by` names the figure whose highest value marks the best checkpoint (None: no
    best is tracked)."""

    grid: SampleGrid
    draw: Callable[[], List[Any]]
    score: Optional[Callable[[List[Any]], Dict[str, Any]]] = None
    best_by: Optional[str] = None
