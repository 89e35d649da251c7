"""The prompts a comparison or an evaluation runs on: a built-in set, a file, or lines.

The built-in set covers what users ask Stable Diffusion for (people, animals, places,
objects, food, vehicles, text-free art styles, indoor and outdoor light, close-ups and
wide views), so a student's weak spots show up in a few dozen images.  Evaluation during
distillation takes its first few.
"""
from pathlib import Path
from typing import List, Sequence, Tuple

from ..errors import BadInput

BUILTIN = "builtin"
EVAL_PROMPTS = (
    "a photo of an astronaut riding a horse on mars",
    "a portrait of an old fisherman with a grey beard, natural light",
    "a golden retriever puppy sitting in a field of flowers",
    "a red sports car parked on a wet city street at night",
    "a bowl of ramen with a soft-boiled egg, top view",
    "a cozy living room with a fireplace and a bookshelf, warm light",
    "a snowy mountain range at sunrise, wide angle",
    "an oil painting of a sailing ship in a storm",
    "a watercolor painting of a small village by a lake",
    "a close-up photo of a hummingbird drinking from a flower",
    "a futuristic city skyline with flying cars, digital art",
    "a tabby cat sleeping on a windowsill in the sun",
    "a plate of fresh strawberries on a wooden table",
    "a lighthouse on a rocky coast under a starry sky",
    "a young woman reading a book in a cafe, film photo",
    "a steam locomotive crossing a stone bridge in autumn",
    "a bouquet of sunflowers in a blue vase, still life",
    "an isometric illustration of a tiny island with palm trees",
    "a medieval castle on a hill surrounded by fog",
    "a chef preparing sushi in a restaurant kitchen",
    "a macro photo of a dew drop on a green leaf",
    "a pencil sketch of an elephant",
    "a desert road with cacti and a vintage van at sunset",
    "a children's book illustration of a fox in a forest",
    "a glass of orange juice on a breakfast table with croissants",
    "an underwater photo of a coral reef with tropical fish",
    "a black and white photo of a jazz musician playing saxophone",
    "a bright modern kitchen with white cabinets and plants",
    "a pixel art scene of a knight fighting a dragon",
    "a hot air balloon floating over green hills",
)


def load_prompts(source: str) -> List[str]:
    """`builtin`, or a text file with one prompt per line (blank lines and lines starting
    with # are skipped)."""
    if source == BUILTIN:
        return list(EVAL_PROMPTS)
    path = Path(source)
    if not path.is_file():
        raise BadInput("%s: no such prompt file; give a .txt file with one prompt per line, "
                       "or 'builtin' for the built-in set of %d" % (source, len(EVAL_PROMPTS)))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput("%s: cannot read the prompt file (%s); save it as UTF-8 text"
                       % (source, e)) from None
    prompts = prompt_lines(text)
    if not prompts:
        raise BadInput("%s: no prompts in the file; write one prompt per line" % source)
    return prompts


def prompt_lines(text: str) -> List[str]:
    """Typed or read lines: stripped, blank lines and # comments dropped."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def cases(prompts: Sequence[str], seeds: int, first_seed: int = 0) -> List[Tuple[str, int]]:
    """Every (prompt, seed) pair, prompt by prompt: the grid's rows and the images' order."""
    if seeds < 1:
        raise BadInput("seeds per prompt must be at least 1 (got %d)" % seeds)
    return [(prompt, first_seed + s) for prompt in prompts for s in range(seeds)]
