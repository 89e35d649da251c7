"""Reading and writing .safetensors without holding a model in memory.

The reader memory-maps the file and hands out tensors that are views of it; the
writer streams tensors one at a time after a header computed up front.  Together they
convert a multi-GB checkpoint with a peak memory of about one tensor.
"""
import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

import torch

from ..errors import BadInput, DiskError, ensure_room

DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {v: k for k, v in DTYPES.items()}
ITEMSIZES = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in DTYPES.values()}
# The safetensors library refuses larger headers (its MAX_HEADER_SIZE): a damaged length
# field must not make us read gigabytes of "header" into memory.
MAX_HEADER_BYTES = 100_000_000
# A dimension torch can hold (int64); a header may claim any JSON number.
MAX_DIMENSION = 2 ** 63 - 1
Buffer = Union[bytes, bytearray, memoryview]


class Entry(NamedTuple):
    dtype: torch.dtype
    shape: Tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int


class SafetensorsReader:
    """A memory-mapped .safetensors file."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._read(f)
        except OSError as e:  # unreadable (permissions, I/O error): the user's to fix
            raise DiskError.of(e) or BadInput("%s: cannot be read (%s)" % (
                self.path, e.strerror or e)) from None

    def _read(self, f: BinaryIO) -> None:
        size = os.fstat(f.fileno()).st_size
        header_len = struct.unpack("<Q", f.read(8))[0] if size >= 8 else size
        if size < 8 or 8 + header_len > size:
            raise BadInput(
                "%s: not a complete .safetensors file (its header says %d bytes, the file "
                "has %d): it is truncated or not a safetensors file; download or copy it again"
                % (self.path, header_len + 8, size)
            )
        if header_len > MAX_HEADER_BYTES:
            raise BadInput("%s: not a .safetensors file (its header would be %d bytes, more than "
                           "the %d any safetensors file has); download or copy it again"
                           % (self.path, header_len, MAX_HEADER_BYTES))
        header = _parse_header(self.path, f.read(header_len))
        self.metadata: Dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries = _entries(self.path, header, 8 + header_len, size)
        # A private (copy-on-write) map is writable, which torch.frombuffer wants; we never write.
        self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None

    def keys(self) -> List[str]:
        return list(self.entries)

    def raw(self, name: str) -> memoryview:
        e = self.entries[name]
        return memoryview(self._map)[e.begin:e.end]

    def tensor(self, name: str) -> torch.Tensor:
        """A zero-copy view of the file; `.clone()` it to keep it past `release`."""
        e = self.entries[name]
        count = (e.end - e.begin) // _itemsize(e.dtype)
        if count == 0:
            return torch.empty(e.shape, dtype=e.dtype)
        flat = torch.frombuffer(self._map, dtype=e.dtype, count=count, offset=e.begin)
        return flat.reshape(e.shape)

    def release(self, name: str) -> None:
        """Let the kernel drop the tensor's pages from this process's resident memory."""
        e = self.entries[name]
        if self._map is None or e.end == e.begin:
            return
        start = e.begin - e.begin % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, start, e.end - start)


class TensorOut(NamedTuple):
    """A tensor to write: its bytes are produced only when the writer reaches it, and
    `written` (if any) is called once they are on disk."""

    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    data: Callable[[], Buffer]
    written: Optional[Callable[[], None]] = None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when it is contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_out(name: str, value: torch.Tensor, dtype: torch.dtype) -> TensorOut:
    """An in-memory tensor to write as `name`, cast to `dtype` on the CPU when it is written."""
    return TensorOut(name, dtype, tuple(value.shape),
                     lambda: tensor_bytes(value.detach().to("cpu", dtype)))


def write_safetensors(path: Union[str, Path], tensors: Iterable[TensorOut],
                      metadata: Dict[str, str],
                      progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Write the file in one pass; `progress(done, total)` is called after each tensor.
    A file that would not fit on its disk fails before its first byte (`DiskError`)."""
    tensors = list(tensors)
    header: Dict[str, object] = {}
    offset = 0
    for t in tensors:
        nbytes = data_size([t])
        header[t.name] = {"dtype": CODES[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    ensure_room(path, 8 + len(encoded) + offset)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for i, t in enumerate(tensors):
            data = t.data()
            expected = header[t.name]["data_offsets"]  # type: ignore[index]
            if len(data) != expected[1] - expected[0]:
                raise ValueError("tensor %s produced %d bytes, expected %d"
                                 % (t.name, len(data), expected[1] - expected[0]))
            f.write(data)
            del data
            if t.written is not None:
                t.written()
            if progress is not None:
                progress(i + 1, len(tensors))


def data_size(tensors: Iterable[TensorOut]) -> int:
    """The bytes the tensors' data take in a file (its header aside)."""
    return sum(math.prod(t.shape) * _itemsize(t.dtype) for t in tensors)


def _parse_header(path: Path, text: bytes) -> Dict[str, object]:
    """The JSON header as a dict; anything else (a list, nesting deep enough to exhaust the
    parser, bytes that are not JSON) is a damaged file."""
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise BadInput("%s: the .safetensors header is damaged (not a JSON object of tensors); "
                       "download or copy it again" % path)
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(value, str) for value in metadata.values())):
        raise BadInput("%s: the .safetensors header is damaged (its __metadata__ is not a "
                       "table of texts); download or copy it again" % path)
    return header


def _entries(path: Path, header: Dict[str, object], start: int, size: int) -> Dict[str, Entry]:
    """Every tensor's place in the file, checked as the safetensors library checks them:
    each one's byte count matches its dtype and shape, and the tensors tile the data area
    without gaps or overlaps, so no two tensors share bytes and none reads past the end."""
    entries: Dict[str, Entry] = {}
    for name, info in header.items():
        entry = _entry(info, start)
        if entry is None:
            raise BadInput("%s: the .safetensors header describes tensor '%s' wrongly (unknown "
                           "dtype, bad shape or offsets, or a byte count that does not match its "
                           "shape); download or copy it again" % (path, name))
        entries[name] = entry
    end = start
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != end:
            raise BadInput("%s: the .safetensors header is damaged (tensor '%s' %s the one "
                           "before it); download or copy it again"
                           % (path, name, "overlaps" if entry.begin < end else "leaves a gap after"))
        end = entry.end
    if end > size:
        raise BadInput("%s: truncated: its tensors need %d bytes, the file has %d; download or "
                       "copy it again" % (path, end, size))
    if end < size:
        raise BadInput("%s: %d bytes follow its last tensor; the file is damaged: download or "
                       "copy it again" % (path, size - end))
    return entries


def _entry(info: object, start: int) -> Optional[Entry]:
    """The entry one header item describes, or None when it does not describe one."""
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or \
            info["dtype"] not in DTYPES:
        return None
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
            and all(_is_count(n) for n in shape + offsets)):
        return None
    dtype = DTYPES[info["dtype"]]
    begin, end = offsets
    if end - begin != math.prod(shape) * _itemsize(dtype):
        return None
    return Entry(dtype, tuple(shape), start + begin, start + end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DIMENSION


def _itemsize(dtype: torch.dtype) -> int:
    return ITEMSIZES[dtype]

