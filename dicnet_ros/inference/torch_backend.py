"""PyTorch backend: the checkpoint run eagerly (CPU or CUDA, autocast fp16 on CUDA).

The reference for the exported graphs and the fallback where no ONNX exists yet. Accepts a ``.pt``
checkpoint, or an exported ONNX whose metadata names its source checkpoint (if that file still exists).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dicnet_ros.inference.base import DOMAIN_KEY, AnomalyModel, BackendUnavailableError, ModelLoadError
from dicnet_ros.inference.graphs import check_file, is_checkpoint

log = logging.getLogger(__name__)

OPTIONS = ("fp16", "threads", "network_resolution")


def _checkpoint_for(path: Path) -> tuple[Path, dict]:
    """(checkpoint path, export settings to mimic) for a .pt or an exported ONNX / separate manifest."""
    if is_checkpoint(path):
        return path, {}
    from dicnet_ros.inference.graphs import resolve_model_files
    from dicnet_ros.inference.ort_backend import OrtGraph

    files = resolve_model_files(path)
    if files.manifest_metadata is not None:
        meta = files.manifest_metadata
    else:
        meta = OrtGraph(files.graphs["fused"], "fused", ["CPUExecutionProvider"], 1, "disable").metadata
    source = meta.source_checkpoint
    # where it was exported, else a file of that name beside the ONNX (how a packaged model ships both)
    candidates = [Path(source), Path(path).with_name(Path(source).name)] if source else []
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ModelLoadError(f"{path}: the torch backend needs the source checkpoint, and the ONNX metadata names "
                             f"{source or 'none'}, which does not exist here; pass the .pt file instead")
    return found, meta.export


class TorchModel(AnomalyModel):
    """DiCNet eager in PyTorch. Options: fp16 (autocast, CUDA only; default on for CUDA), threads (CPU
    intra-op threads, 0 = torch default), network_resolution (outputs at the network size)."""

    backend_name = "torch"

    def __init__(self, path: str | Path, device: str = "auto", fp16: bool | None = None, threads: int = 0,
                 network_resolution: bool | None = None):
        try:
            import torch
        except ImportError as exc:
            from dicnet_ros.installation import install_hint

            raise BackendUnavailableError(f"backend 'torch' needs PyTorch ({install_hint('train')})") from exc
        from dicnet_ros.model.checkpoint import CheckpointError, model_from_checkpoint

        path = Path(path)
        check_file(path)
        checkpoint, export = _checkpoint_for(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device '{device}' needs a CUDA GPU, but torch sees none; use device 'cpu'")
        if device not in ("cpu",) and not device.startswith("cuda"):
            raise BackendUnavailableError(f"unknown device '{device}' for torch; use auto, cpu or cuda[:N]")
        if threads:
            torch.set_num_threads(int(threads))
        try:
            model, metadata, _ = model_from_checkpoint(checkpoint)
        except CheckpointError as exc:
            raise ModelLoadError(" ".join(str(exc).split())) from exc
        super().__init__(path, metadata, device)
        self.torch = torch
        self.model = model.to(device).eval()
        self.fp16 = bool(device.startswith("cuda") if fp16 is None else fp16) and device.startswith("cuda")
        net_res = export.get("output_resolution") == "network"
        self.network_resolution = net_res if network_resolution is None else network_resolution
        self.labels = export.get("labels", "network")  # where class ids / MSP / MaxLogit are taken, as in the ONNX
        log.info("torch: %s on %s%s", checkpoint, device, " (fp16 autocast)" if self.fp16 else "")
        if export.get("dtype") == "int8":
            log.warning("%s is an INT8 graph; the torch backend runs its FP32 source checkpoint %s instead (use "
                        "onnxruntime or tensorrt for INT8)", path, checkpoint)

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def _run(self, image: np.ndarray) -> tuple:
        return self._run_batch(image[None])[0]

    def _run_batch(self, batch: np.ndarray) -> list[tuple]:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            out = self.model(x, network_resolution=self.network_resolution, labels=self.labels)
        results = []
        for i in range(len(batch)):
            extras = {name: baseline[i].float().cpu().numpy()
                      for name, baseline in (("msp", out.msp_score), ("maxlogit", out.maxlogit_score))}
            if out.domain_score is not None:
                extras[DOMAIN_KEY] = out.domain_score[i].float().cpu().numpy()
            results.append((out.anomaly_score[i].float().cpu().numpy(),
                            out.semantic_labels[i].to(torch.uint8).cpu().numpy(), extras))
        return results

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()
