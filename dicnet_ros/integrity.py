"""Weight checksums carried inside model files: a flipped byte in a model is an error at load, not a wrong mask.

Why: a model file is copied from a workstation to a vehicle, over networks and onto flash; a corrupted byte in the
middle of the weights still parses and runs, and silently changes every score. ``dicnet export`` and every
checkpoint writer record a SHA-256 in the file itself; every loader checks it. An ONNX file holds the digest in its
metadata JSON, which is part of the file it checks: the digest is taken over the file with its own 64 hex digits
replaced by zeros (same length, so nothing else moves). A checkpoint holds the digest of its weight tensors.
Files written before checksums existed load with a note that they cannot be verified. No torch / onnx import here.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DIGEST_KEY = "weights_sha256"
PLACEHOLDER = "0" * 64
#: the JSON text json.dumps writes for the field (ModelMetadata.to_json: default separators)
_FIELD = f'"{DIGEST_KEY}": "'.encode()


class IntegrityError(ValueError):
    """A model file's content does not match the checksum it carries."""


def _digest_span(data: bytes, digest: str) -> int:
    """Where the digest's 64 characters start in ``data``; it must occur exactly once, right after its key."""
    needle = _FIELD + digest.encode()
    first = data.find(needle)
    if first < 0 or data.find(needle, first + 1) >= 0:
        raise IntegrityError(f"the checksum field occurs {0 if first < 0 else 'more than once'} times in the file")
    return first + len(_FIELD)


def file_digest(data: bytes, digest_in_file: str) -> str:
    """SHA-256 of ``data`` with the digest it carries (``digest_in_file``) replaced by the placeholder."""
    start = _digest_span(data, digest_in_file)
    return hashlib.sha256(data[:start] + PLACEHOLDER.encode() + data[start + 64:]).hexdigest()


def stamp_file(path: str | Path) -> str:
    """Fill the placeholder digest of a just-written model file in place (atomically); returns the digest."""
    path = Path(path)
    data = path.read_bytes()
    digest = file_digest(data, PLACEHOLDER)
    start = _digest_span(data, PLACEHOLDER)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data[:start] + digest.encode() + data[start + 64:])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest


def restamp(path: str | Path) -> str | None:
    """Record the checksum again after a deliberate edit of a model file (its old digest is replaced); None when
    the file carries no checksum field."""
    path = Path(path)
    data = path.read_bytes()
    found = re.search(re.escape(_FIELD) + rb"[0-9a-f]{64}", data)
    if found is None:
        return None
    start = found.start() + len(_FIELD)
    path.write_bytes(data[:start] + PLACEHOLDER.encode() + data[start + 64:])
    return stamp_file(path)


def check_digest(path: str | Path, digest: str | None) -> bool:
    """Raise IntegrityError when ``path`` does not hash to ``digest``; False when there is no digest to check."""
    if not digest:
        return False
    data = Path(path).read_bytes()
    try:
        actual = file_digest(data, digest)
    except IntegrityError as exc:
        raise IntegrityError(f"{path}: weights checksum cannot be checked ({exc}): the file was changed after "
                             "export") from None
    if actual != digest:
        raise IntegrityError(f"{path}: weights checksum mismatch (file {actual[:12]}..., recorded {digest[:12]}...): "
                             "the file was changed or damaged after export; copy it again or re-export it")
    return True


def tensors_digest(state_dicts: Iterable[Mapping[str, Any] | None]) -> str:
    """SHA-256 over the tensors of state dicts (sorted names, dtype, shape, bytes), for checkpoints."""
    sha = hashlib.sha256()
    for index, state in enumerate(state_dicts):
        sha.update(f"#{index}".encode())
        for name in sorted(state or {}):
            tensor = state[name]
            array = tensor.detach().cpu().contiguous().numpy() if hasattr(tensor, "detach") else tensor
            sha.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
            sha.update(array.tobytes())
    return sha.hexdigest()
