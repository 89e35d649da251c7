"""Stand-in for A1111 1.10.1 ``modules/hashes.py``: file sha256 with a cache keyed by title and file mtime.

The real cache is on disk (diskcache); this one is in memory and ``standin_app.reset`` empties it. As in
1.10.1 a checkpoint's hash is only known once ``sha256`` ran for it, so a freshly listed file has no [hash].
"""

import hashlib
import os

from modules import shared

_cache = {}  # (use_addnet_hash, title) -> {"sha256": ..., "mtime": ...}


def calculate_sha256(filename):
    digest = hashlib.sha256()
    with open(filename, mode="rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def sha256_from_cache(filename, title, use_addnet_hash=False):
    """The cached hash, unless the file is gone or changed since it was computed."""
    entry = _cache.get((use_addnet_hash, title))
    if entry is None or not os.path.exists(filename) or os.path.getmtime(filename) > entry["mtime"]:
        return None
    return entry["sha256"]


def sha256(filename, title, use_addnet_hash=False):
    value = sha256_from_cache(filename, title, use_addnet_hash)
    if value is None and not shared.cmd_opts.no_hashing:
        value = calculate_sha256(filename)
        print("Calculated sha256 of %s: %s" % (filename, value))
        _cache[(use_addnet_hash, title)] = {"sha256": value, "mtime": os.path.getmtime(filename)}
    return value
