"""U-Net key names in LDM (A1111) and diffusers layout, for any `Architecture`.

diffusers' own converters hard-code the teacher's block indices; here every name comes
from the architecture's block list, so students convert as losslessly as teachers.
"""
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar

from .arch import RESNET_RENAMES, Architecture, Block

UNET_PREFIX = "model.diffusion_model."

V = TypeVar("V")


class KeyMap:
    """Finds the block a key belongs to and renames keys between the two layouts."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch
        self._by_ldm = {b.ldm: b for b in arch.blocks}
        self._by_diffusers = {b.diffusers: b for b in arch.blocks}

    def block_of(self, key: str, naming: str = "ldm") -> Optional[Tuple[Block, str]]:
        """(block, the rest of the key after the block's prefix), or None for a foreign key."""
        table = self._by_ldm if naming == "ldm" else self._by_diffusers
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            block = table.get(".".join(parts[:cut]))
            if block is not None:
                return block, ".".join(parts[cut:])
        return None

    def to_diffusers(self, ldm_key: str) -> str:
        block, rest = self.find(ldm_key, "ldm")
        if block.resnet:
            rest = _rename(rest, RESNET_RENAMES)
        return block.diffusers + "." + rest

    def to_ldm(self, diffusers_key: str) -> str:
        block, rest = self.find(diffusers_key, "diffusers")
        if block.resnet:
            rest = _rename(rest, [(d, l) for l, d in RESNET_RENAMES])
        return block.ldm + "." + rest

    def convert_to_diffusers(self, state: Mapping[str, V]) -> Dict[str, V]:
        """An LDM U-Net state dict (keys without ``model.diffusion_model.``) in diffusers names."""
        return {self.to_diffusers(k): v for k, v in state.items()}

    def convert_to_ldm(self, state: Mapping[str, V]) -> Dict[str, V]:
        return {self.to_ldm(k): v for k, v in state.items()}

    def missing_blocks(self, keys: Iterable[str], naming: str = "ldm") -> List[Block]:
        """Blocks of this architecture that none of the keys belongs to."""
        seen = set()
        for key in keys:
            found = self.block_of(key, naming)
            if found is not None:
                seen.add(found[0])
        return [b for b in self.arch.blocks if b not in seen]

    def find(self, key: str, naming: str) -> Tuple[Block, str]:
        found = self.block_of(key, naming)
        if found is None:
            raise KeyError(
                "'%s' is not a %s key of the %s U-Net" % (key, naming, self.arch.removal.name)
            )
        return found


def _rename(rest: str, renames: Iterable[Tuple[str, str]]) -> str:
    for old, new in renames:
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def student_sources(
    arch: Architecture, teacher_keys: Iterable[str], naming: str = "ldm"
) -> Dict[str, str]:
    """Student key -> the teacher key it is copied from (keys relative to the U-Net).

    Raises KeyError when the teacher lacks a block the student needs, or has a key that
    belongs to no teacher block: both mean the teacher is not what the spec says it is.
    """
    teacher_map = KeyMap(Architecture(arch.teacher))
    pairs = arch.weight_map()
    student_of = {t: s for s, t in pairs}
    sources: Dict[str, str] = {}
    covered = set()
    for key in teacher_keys:
        block, rest = teacher_map.find(key, naming)
        student = student_of.get(block)
        if student is None:
            continue  # a removed block
        prefix = student.ldm if naming == "ldm" else student.diffusers
        sources[prefix + "." + rest] = key
        covered.add(student)
    missing = [s for s, _ in pairs if s not in covered]
    if missing:
        raise KeyError("the teacher has no weights for " + ", ".join(b.ldm for b in missing))
    return sources
