"""Estimate the time and memory of one training epoch of a config without a GPU.

Runs ONE real training step of each stage on the CPU at the config's crop size (teacher: cross-entropy with the aux
head, SGD; student: frozen teacher forward + student MSE, Adam) and measures, with torch's own accounting:

* FLOPs of the step (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, forward and
  backward),
* the bytes autograd keeps for the backward pass (``torch.autograd.graph.saved_tensors_hooks``, each storage once):
  the activation memory that scales with the batch,
* parameters, gradients and optimizer state (the memory that does not),
* the CPU seconds of the step (the measured throughput this machine reaches).

The GPU epoch time is then images x FLOPs per image / an assumed effective throughput (``--gpu-tflops``); it is an
ESTIMATE, and the README says how it was made. Memory per GPU = batch x saved bytes per image + fixed part (FP32;
AMP stores most activations in FP16, so expect less).

    python benchmarks/estimate_training.py --config cityscapes --images 2975 --gpu-tflops 60
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dicnet_ros.inference.cpu_features import cpu_name
from dicnet_ros.model.dicnet import build_dicnet
from dicnet_ros.preprocessing import PreprocessConfig, preprocess


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward while the context is open."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def _measure(step: Any) -> dict[str, float]:
    saved = SavedBytes()
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with counter, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        step()
    return {"seconds": time.perf_counter() - start, "flops": float(counter.get_total_flops()),
            "saved_bytes": float(saved.total)}


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def estimate(config: str, batch: int, overrides: list[str], num_classes: int = 19) -> dict[str, Any]:
    from dicnet_training.checkpointing import model_config_from
    from dicnet_training.config import load_config

    cfg = load_config(config, [*overrides, "model.teacher_pretrained=none", "model.student_pretrained=none"])
    pp = PreprocessConfig(height=int(cfg["input"]["height"]), width=int(cfg["input"]["width"]))
    model = build_dicnet(model_config_from(cfg, num_classes), pp)
    images = torch.randint(0, 256, (batch, pp.height, pp.width, 3), dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (batch, pp.height, pp.width))
    teacher, student = model.teacher, model.student
    aux_weight = float(cfg["teacher"].get("aux_weight") or 0.0)

    def teacher_step() -> None:
        teacher.train()
        out = teacher(preprocess(images, pp))
        logits = F.interpolate(out.logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels)
        if out.aux_logits is not None and aux_weight > 0:
            aux = F.interpolate(out.aux_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = loss + aux_weight * F.cross_entropy(aux, labels)
        loss.backward()

    def student_step() -> None:
        teacher.eval()
        student.train()
        x = preprocess(images, pp)
        with torch.no_grad():
            target = teacher(x).feature
        F.mse_loss(student(x), target).backward()

    out: dict[str, Any] = {"config": config, "training_config": cfg, "network": f"{pp.width}x{pp.height}",
                           "batch_measured": batch, "cpu": cpu_name(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__}
    for stage, step, trained, optimizer_slots in (("teacher", teacher_step, teacher, 2),
                                                   ("student", student_step, student, 3)):
        m = _measure(step)
        fixed = _param_bytes(trained) * (1 + optimizer_slots)  # weights + grads (+ momentum | Adam m, v)
        if stage == "student":
            fixed += _param_bytes(teacher)  # the frozen teacher's weights
        out[stage] = {"flops_per_image": m["flops"] / batch, "cpu_seconds_per_image": m["seconds"] / batch,
                      "cpu_tflops": m["flops"] / m["seconds"] / 1e12,
                      "saved_gib_per_image": m["saved_bytes"] / batch / 2**30,
                      "fixed_gib": fixed / 2**30, "parameters": sum(p.numel() for p in trained.parameters())}
        model.zero_grad(set_to_none=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cityscapes")
    parser.add_argument("--override", nargs="*", default=[])
    parser.add_argument("--batch", type=int, default=2, help="images in the measured CPU step (>= 2: BatchNorm trains)")
    parser.add_argument("--images", type=int, default=2975, help="training images per epoch (Cityscapes: 2975)")
    parser.add_argument("--gpu-tflops", type=float, default=60.0,
                        help="assumed effective GPU throughput in TFLOP/s for the epoch-time estimate")
    parser.add_argument("--num-classes", type=int, default=19, help="classes of the data set (Cityscapes: 19)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    res = estimate(args.config, args.batch, args.override, args.num_classes)
    cfg = res.pop("training_config")
    for stage in ("teacher", "student"):
        r = res[stage]
        gpu_batch = int(cfg[stage]["batch_size"])
        r["gpu_epoch_minutes_estimate"] = args.images * r["flops_per_image"] / (args.gpu_tflops * 1e12) / 60
        r["gpu_batch"] = gpu_batch
        r["gpu_memory_gib_estimate_fp32"] = gpu_batch * r["saved_gib_per_image"] + r["fixed_gib"]
        print(f"{stage}: {r['flops_per_image'] / 1e12:.2f} TFLOP per image and step (forward + backward), "
              f"{r['parameters'] / 1e6:.1f} M trained parameters; CPU {r['cpu_seconds_per_image']:.1f} s per image "
              f"({r['cpu_tflops'] * 1e3:.0f} GFLOP/s); saved for backward {r['saved_gib_per_image']:.2f} GiB per "
              f"image, fixed {r['fixed_gib']:.2f} GiB -> at batch {gpu_batch}: ~{r['gpu_memory_gib_estimate_fp32']:.1f}"
              f" GiB per GPU (FP32), epoch of {args.images} images ~{r['gpu_epoch_minutes_estimate']:.1f} min at "
              f"{args.gpu_tflops:g} effective TFLOP/s")
    res["assumed_gpu_tflops"] = args.gpu_tflops
    res["images"] = args.images
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
