"""How often a model's out-of-domain alarm goes off: on in-domain frames (false alarms), the demo stream, real
photographs, degenerate camera frames and photometric shifts of increasing strength.

Usage (the model card's table)::

    python benchmarks/bench_domain.py --model models/dicnet_sim_default.onnx \\
        --sim /tmp/sim_2026_urdf /tmp/sim_2026_all ... --demo --real /tmp/real_photos \\
        --base /tmp/sim_2026_all --base-count 50 --json domain.json

``--sim`` takes dataset roots (``dicnet sim --out ROOT --split test ...``; the test split is read, labels are not);
``--real`` takes folders of photographs; ``--base`` is a dataset root whose first ``--base-count`` test images the
degenerate frames and the shifts are made from (never the calibration images). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.data.domain_shift import DEGENERATE_FRAMES, PHOTOMETRIC_SHIFTS, degenerate_frame, photometric_shift
from dicnet_ros.image_conversion import DEFAULT_MAX_PIXELS
from dicnet_ros.inference import load_model
from dicnet_ros.inference.cpu_features import cpu_name
from dicnet_ros.inference.infer_cli import image_files, read_rgb
from dicnet_ros.metrics.domain import DomainTally

STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
BATCH = 8


def dataset_images(root: Path, split: str = "test", limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    from dicnet_ros.data import open_dataset

    ds = open_dataset(root, split)
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        yield f"{root.name}/{i}", ds[i].image


def folder_images(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    for path in image_files([folder]).files:
        yield path.name, read_rgb(path, DEFAULT_MAX_PIXELS)


def demo_images() -> Iterator[tuple[str, np.ndarray]]:
    from dicnet_ros.bag import bag_dataset_info, iter_images
    from dicnet_ros.demo import DEMO_BAG
    from dicnet_ros.resources import package_file

    bag = package_file(DEMO_BAG)
    for i, frame in enumerate(iter_images(bag, bag_dataset_info(bag)["image_topic"])):
        yield f"demo/{i}", frame.rgb


def tally(model: Any, images: Iterable[tuple[str, np.ndarray]],
          keep: list[dict[str, Any]] | None = None) -> DomainTally:
    """Run ``model`` over ``images`` in batches; count the alarms (and record each frame in ``keep``)."""
    counts = DomainTally(model.domain_threshold)
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        for (name, _), result in zip(pending, model.infer_batch([image for _, image in pending]), strict=True):
            verdict = counts.add(result.domain_score)
            if keep is not None:
                keep.append({"image": name, "domain_score": result.domain_score, "in_domain": verdict})
        pending.clear()

    for item in images:
        pending.append(item)
        if len(pending) == BATCH:
            flush()
    flush()
    return counts


def rate(counts: DomainTally) -> str:
    summary = counts.summary()
    if not summary["available"]:
        return "n/a"
    return f"{100.0 * summary['share_out_of_domain']:.1f} % ({summary['out_of_domain']}/{summary['frames']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--sim", type=Path, nargs="*", default=[], help="dataset roots with a test split")
    parser.add_argument("--demo", action="store_true", help="the shipped demo stream")
    parser.add_argument("--real", type=Path, nargs="*", default=[], help="folders of real photographs")
    parser.add_argument("--base", type=Path, default=None, help="dataset root for degenerate frames and shifts")
    parser.add_argument("--base-count", type=int, default=50)
    parser.add_argument("--strengths", type=float, nargs="*", default=list(STRENGTHS))
    parser.add_argument("--seed", type=int, default=0, help="of the degenerate frames' and shifts' randomness")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    model = load_model(args.model, args.backend, "cpu")
    if model.domain_threshold is None:
        print(f"{args.model}: the model has no out-of-domain alarm (calibrate and export it again)", file=sys.stderr)
        return 1
    report: dict[str, Any] = {"model": str(args.model), "backend": model.backend_name,
                              "threshold": model.domain_threshold, "machine": f"{cpu_name()}, {os.cpu_count()} cores",
                              "in_domain": {}, "real": {},
                              "degenerate": {}, "shifts": {}}
    print(f"model `{args.model}` ({model.backend_name}, {model.precision}), alarm above {model.domain_threshold:g}\n")
    rows = []
    sources = [(root.name, dataset_images(root)) for root in args.sim]
    for name, images in [*sources, *([("demo stream", demo_images())] if args.demo else [])]:
        frames = []
        counts = tally(model, images, frames)
        report["in_domain"][name] = {**counts.summary(), "frames": frames}
        rows.append(f"| {name} | {rate(counts)} | {counts.summary()['score_max']:.2f} |")
    if rows:
        print("| in-domain frames | alarms | largest score |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    for folder in args.real:
        frames: list[dict[str, Any]] = []
        counts = tally(model, folder_images(folder), frames)
        report["real"][str(folder)] = {**counts.summary(), "frames": frames}
        low = min(frames, key=lambda f: f["domain_score"]) if frames else None
        print(f"real photographs in `{folder}`: alarm on {rate(counts)}"
              + (f"; lowest score {low['domain_score']:.2f} ({low['image']})" if low else "") + "\n")
    if args.base is not None:
        base = list(dataset_images(args.base, limit=args.base_count))
        rng = np.random.default_rng(args.seed)
        print("| degenerate frame | alarms | lowest score |\n|---|---|---|")
        for kind, what in DEGENERATE_FRAMES.items():
            counts = tally(model, ((f"{kind}/{name}", degenerate_frame(kind, image, rng)) for name, image in base))
            report["degenerate"][kind] = {**counts.summary(), "what": what, "score_min": min(counts.scores)}
            print(f"| {kind} ({what}) | {rate(counts)} | {min(counts.scores):.2f} |")
        print("\n| shift | " + " | ".join(f"{s:g}" for s in args.strengths) + " |\n|---|"
              + "---|" * len(args.strengths))
        for kind, what in PHOTOMETRIC_SHIFTS.items():
            cells = []
            report["shifts"][kind] = {"what": what, "curve": {}}
            for strength in args.strengths:
                counts = tally(model, ((name, photometric_shift(image, kind, strength, rng)) for name, image in base))
                report["shifts"][kind]["curve"][f"{strength:g}"] = counts.summary()
                cells.append(f"{100.0 * counts.summary()['share_out_of_domain']:.0f} %")
            print(f"| {kind} | " + " | ".join(cells) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
