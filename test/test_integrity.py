"""Weight checksums inside model files: a damaged model is refused at load with one line, never run silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicnet_ros.integrity import PLACEHOLDER, IntegrityError, check_digest, file_digest, stamp_file
from dicnet_ros.metadata import METADATA_KEY

onnx = pytest.importorskip("onnx")


def test_stamp_and_check_a_file(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"weights" * 100 + b'{"weights_sha256": "' + PLACEHOLDER.encode() + b'"}' + b"tail")
    digest = stamp_file(path)
    assert len(digest) == 64 and digest.encode() in path.read_bytes()
    assert check_digest(path, digest) and file_digest(path.read_bytes(), digest) == digest
    assert not check_digest(path, None)  # nothing recorded: nothing to check
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        check_digest(path, digest)


def test_exported_model_carries_a_checksum_and_a_flipped_byte_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    from dicnet_ros.inference import ModelLoadError, load_model

    model = load_model(tiny_onnx, "onnxruntime", "cpu")
    digest = model.metadata.weights_sha256
    assert digest and len(digest) == 64 and digest != PLACEHOLDER
    data = bytearray(tiny_onnx.read_bytes())
    weights = data.find(b"weights_sha256") // 2  # somewhere in the weights, far from the metadata
    data[weights] ^= 0xFF
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="weights checksum mismatch") as info:
        load_model(damaged, "onnxruntime", "cpu")
    assert str(damaged) in str(info.value) and "\n" not in str(info.value)


def test_model_without_a_checksum_still_loads(tiny_onnx: Path, tmp_path: Path) -> None:
    from dicnet_ros.inference import load_model

    proto = onnx.load(str(tiny_onnx))
    entry = next(e for e in proto.metadata_props if e.key == METADATA_KEY)
    data = json.loads(entry.value)
    data.pop("weights_sha256")
    entry.value = json.dumps(data)
    older = tmp_path / "older.onnx"
    onnx.save(proto, str(older))
    assert load_model(older, "onnxruntime", "cpu").metadata.weights_sha256 is None


def test_checkpoint_with_changed_weights_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from dicnet_ros.model.checkpoint import CheckpointError, load_checkpoint

    data = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    assert len(data["weights_sha256"]) == 64
    name = next(iter(data["student"]))
    data["student"][name].view(-1)[0] += 1.0  # one weight changed, the recorded checksum kept
    changed = tmp_path / "changed.pt"
    torch.save(data, changed)
    with pytest.raises(CheckpointError, match="weights checksum mismatch"):
        load_checkpoint(changed)
    load_checkpoint(tiny_checkpoint)
