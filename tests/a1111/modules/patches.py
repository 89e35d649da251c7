"""Stand-in for A1111 1.10.1 ``modules/patches.py``: replace an attribute of an object and remember the original
under a key, so that whoever patched can put it back. As in 1.10.1, patching the same (key, object, attribute)
twice raises RuntimeError, and ``undo`` of something not patched does nothing."""

from collections import defaultdict

originals = defaultdict(dict)


def patch(key, obj, field, replacement):
    """Sets ``obj.field = replacement``; returns the original value."""
    patch_key = (obj, field)
    if patch_key in originals[key]:
        raise RuntimeError(f"patch for {field} is already applied")
    original_func = getattr(obj, field)
    originals[key][patch_key] = original_func
    setattr(obj, field, replacement)
    return original_func


def undo(key, obj, field):
    """Puts back what ``patch`` replaced; returns None."""
    patch_key = (obj, field)
    if patch_key not in originals[key]:
        return None
    setattr(obj, field, originals[key].pop(patch_key))
    return None


def original(key, obj, field):
    """The value ``patch`` replaced, or None when nothing is patched."""
    return originals[key].get((obj, field), None)
