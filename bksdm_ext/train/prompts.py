"""Prompts for teacher-made training data: the user's own, or a built-in generator.

Most people who want a small version of their checkpoint have no captioned dataset, so the
teacher draws one.  What it draws is decided by the prompts: a prompt file (one a line), a
folder of ``.txt`` captions, the captions of a dataset folder, or the built-in generator,
which combines styles, subjects, settings, lighting and a finishing detail into tens of
millions of distinct prompts.  Image ``i`` always gets prompt ``i`` (cycling a short list)
so a resumed synthesis makes exactly what an uninterrupted one would.

"""
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .dataset import IMAGE_SUFFIXES, METADATA_FILES, _read_text, leads_out, scan_dataset
from ..errors import BadInput

BUILTIN = "builtin"

STYLES = (
    "a photo", "a watercolor painting", "an oil painting", "a pencil sketch", "a 3d render",
    "a digital illustration", "a studio photograph", "a polaroid photo", "an anime drawing",
    "a charcoal drawing", "a low poly render", "a pixel art image", "a linocut print",
    "an ink drawing", "a vintage postcard", "a children's book illustration", "a cinematic still",
    "a macro photograph", "an isometric illustration", "a stained glass window", "a mosaic",
    "a claymation still", "a concept art painting", "a gouache painting", "a pastel drawing",
    "an impressionist painting", "a ukiyo-e woodblock print", "a comic book panel",
    "a matte painting", "a black and white photo", "a long exposure photo",
    "an aerial photograph", "a film photograph", "a tilt-shift photo",
    "a paper cutout illustration", "an embroidery", "a graffiti mural",
    "a flat vector illustration", "a baroque painting", "a surrealist painting",
)
SUBJECTS = (
    "a red fox", "a golden retriever", "a tabby cat", "an old fisherman", "a young dancer",
    "a knight in armor", "a vintage car", "a steam locomotive", "a sailboat", "a hot air balloon",
    "a lighthouse", "a wooden cabin", "a gothic cathedral", "a bowl of ramen", "a stack of pancakes",
    "a bouquet of tulips", "a bonsai tree", "a giant tortoise", "a hummingbird", "a barn owl",
    "a grizzly bear", "a herd of elephants", "a koi fish", "a jellyfish", "a humpback whale",
    "a chess board", "a stack of old books", "an astronaut", "a robot", "a dragon",
    "a unicorn", "a castle", "a windmill", "a farmhouse", "a street market",
    "a bicycle", "a motorcycle", "a cup of coffee", "a teapot", "a basket of apples",
    "a wedding cake", "a pizza", "a violin", "a grand piano", "an electric guitar",
    "a pair of sneakers", "a leather handbag", "a wristwatch", "a vintage camera", "a typewriter",
    "a little girl with a kite", "an elderly couple", "a chef", "a firefighter", "a street musician",
    "a ballerina", "a samurai", "a wizard", "a pirate ship", "a submarine",
    "a mountain goat", "a flamingo", "a peacock", "a penguin", "a polar bear",
    "a tiger", "a zebra", "a giraffe", "a panda", "a sloth",
    "a snail", "a butterfly", "a beetle", "a frog", "a chameleon",
    "a horse", "a cow", "a sheep", "a rooster", "a rabbit",
    "a treehouse", "a glass greenhouse", "a stone bridge", "a skyscraper", "a subway train",
    "a food truck", "a taxi", "a tractor", "a fighter jet", "a space station",
    "a sunflower field", "a waterfall", "a volcano", "a glacier", "a desert oasis",
    "a medieval village", "a japanese temple", "a diner", "a library", "a carousel",
)
SETTINGS = (
    "in a snowy forest", "on a sandy beach", "in a busy city street", "on a mountain top",
    "in a quiet meadow", "under the sea", "in outer space", "in a cozy living room",
    "in a rainy alley", "on a frozen lake", "in a bamboo grove", "in a desert canyon",
    "at a night market", "in an abandoned factory", "in a sunlit kitchen", "on a rooftop",
    "in a misty swamp", "in a lavender field", "on a riverbank", "in a tropical jungle",
    "in a medieval courtyard", "on a train platform", "in a flower garden", "in a museum hall",
    "on an island", "in a cave", "at a harbor", "on a country road", "in a wheat field",
    "in an autumn park", "on a busy highway", "in a small cafe", "in a science lab",
    "on a stage", "in a greenhouse", "at a carnival", "in a snowy village", "on a cliff edge",
    "by a campfire", "in the clouds", "in a neon-lit city", "in a vineyard",
    "at the edge of a waterfall", "in a rice terrace", "in a mountain valley",
    "on a windowsill", "in a toy shop", "in a ruined temple", "on the surface of mars",
    "in a dense fog",
)
LIGHTING = (
    "golden hour light", "soft morning light", "dramatic lighting", "neon lights",
    "overcast sky", "candlelight", "moonlight", "harsh midday sun", "backlit",
    "studio lighting", "foggy atmosphere", "rim lighting", "sunset glow", "blue hour",
    "dappled light", "warm indoor light",
)
DETAILS = (
    "highly detailed", "wide angle", "close-up", "shallow depth of field", "muted colors",
    "vibrant colors", "symmetrical composition", "minimalist", "high contrast", "soft focus",
    "rule of thirds", "intricate textures",
)
# Each choice gets its own slot; the product is the number of distinct built-in prompts.
VOCABULARY = (STYLES, SUBJECTS, SETTINGS, LIGHTING, DETAILS)


def builtin_prompt_count() -> int:
    """How many distinct prompts the generator can make (about 38 million)."""
    total = 1
    for words in VOCABULARY:
        total *= len(words)
    return total


def builtin_prompt(number: int) -> str:
    """Prompt `number` of the generator's space, read as mixed-radix digits."""
    parts = []
    for words in VOCABULARY:
        number, digit = divmod(number, len(words))
        parts.append(words[digit])
    style, subject, setting, lighting, detail = parts
    return "%s of %s %s, %s, %s" % (style, subject, setting, lighting, detail)


def generate_prompts(count: int, seed: int) -> List[str]:
    """`count` distinct prompts drawn at random from the generator's space.

    The draw is one seeded sequence with repeats skipped, so the first k prompts of a
    longer list are the k prompts of a shorter one: growing a set keeps what it had.
    """
    space = builtin_prompt_count()
    if count > space // 2:
        raise BadInput("the built-in generator makes at most {:,} prompts; ask for fewer or "
                       "give a prompt file".format(space // 2))
    rng = random.Random(seed)
    seen = set()
    prompts: List[str] = []
    while len(prompts) < count:
        prompt = builtin_prompt(rng.randrange(space))
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


@dataclass
class PromptSet:
    """The prompts of a synthetic set, in order; image i gets `prompt(i)`."""

    prompts: List[str]
    description: str  # one line for a log or the UI

    def prompt(self, index: int) -> str:
        return self.prompts[index % len(self.prompts)]

    def cycled(self, count: int) -> bool:
        """Whether `count` images reuse prompts (each reuse gets a different seed)."""
        return count > len(self.prompts)

    def digest(self) -> str:
        """What the images depend on: the prompts and their order."""
        return hashlib.sha256(json.dumps(self.prompts).encode("utf-8")).hexdigest()


def load_prompts(source: Optional[str], count: int, seed: int) -> PromptSet:
    """The prompts named by `source`: None or "builtin" (the generator, `count` prompts from
    `seed`), a .txt file (one prompt a line), a folder of images with captions (their
    captions, as distillation reads them) or a folder of .txt captions (one prompt a file)."""
    if source is None or source.strip() == "" or source == BUILTIN:
        return PromptSet(generate_prompts(count, seed),
                         "built-in generator (seed {}, {:,} distinct prompts)".format(seed, count))
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() != ".txt":
            raise BadInput("%s: not a prompt file; give a .txt file with one prompt a line, a "
                           "folder of .txt captions or a dataset folder" % path)
        prompts = [_clean(line) for line in _read_text(path).splitlines()]
        return _nonempty(path, [p for p in prompts if p], "prompt file %s" % path.name)
    if path.is_dir():
        return _folder_prompts(path)
    raise BadInput("%s: no such file or folder; give a .txt prompt file (one a line), a folder "
                   "of .txt captions, a dataset folder or %s" % (path, BUILTIN))


def _folder_prompts(folder: Path) -> PromptSet:
    """A dataset's captions where the folder holds images, else each .txt file's text
    (links that lead out of the folder are not followed)."""
    root = Path(os.path.realpath(str(folder)))
    files = sorted(p for p in folder.rglob("*")
                   if not _hidden(p, folder) and not leads_out(p, root) and p.is_file())
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files) or any(
            (folder / name).is_file() for name in METADATA_FILES):
        scan = scan_dataset(folder)
        return _nonempty(folder, [_clean(e.caption) for e in scan.examples],
                         "captions of the dataset %s" % folder.name)
    captions = [_clean(_read_text(p)) for p in files if p.suffix.lower() == ".txt"]
    return _nonempty(folder, [c for c in captions if c], "caption files in %s" % folder.name)


def _nonempty(path: Path, prompts: List[str], what: str) -> PromptSet:
    if not prompts:
        raise BadInput("%s: holds no prompts; write one prompt a line (a .txt file) or one "
                       "caption a .txt file (a folder)" % path)
    return PromptSet(prompts, "{} ({:,} prompts)".format(what, len(prompts)))


def _clean(text: str) -> str:
    """One line, single spaces: prompts.txt holds one prompt a line."""
    return " ".join(text.split())


def _hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)
