"""File hashes as A1111 shows them, so a student records which teacher it came from."""
import hashlib
from pathlib import Path


def a1111_sha256(path: Path) -> str:
    """The full-file SHA-256 A1111 stores in its cache (the dropdown shows the first 10 digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
