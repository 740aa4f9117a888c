"""INT8 parity of a shipped-style INT8 model on this CPU's integer path and on the emulated AVX2 path.

The model card's INT8 table comes from this script. Each run compares the INT8 graph's integer kernels with the same
graph run as float arithmetic (ONNX Runtime graph optimisations off) and with the FP32 model on the first N images
of a labelled split, against the bar of ``dicnet export --int8`` (``dicnet_training.int8_check.ParityBar``).

The AVX2 path (AMD Zen 1-3 and many Intel CPUs: AVX2 without VNNI) is measured on any x86-64 Linux machine under
user-mode emulation: ``apt-get install qemu-user`` (QEMU 7.2 or newer emulates AVX2 and FMA), then
``--emulate x86-avx2`` runs the integer kernels in a child Python under ``qemu-x86_64 -cpu Haswell``; the child
checks that CPUID there reports AVX2 without AVX-512 before it scores. It is slow: about 5 s per 384x216 image on one
core of a 2-core AMD EPYC (Zen 4), against 0.05 s natively.

Usage::

    dicnet sim --out /tmp/held8088 --split test --count 320 --size 384x216 --seed 8088
    python benchmarks/int8_parity.py --model models/dicnet_sim_default_int8.onnx --data /tmp/held8088 \\
        --images 320 --emulate x86-avx2 --json int8_parity.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dicnet_training.int8_check import EMULATORS, ParityReferences, parity_check, saturation_check

from dicnet_ros.inference.bench import hardware_info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the INT8 ONNX model")
    parser.add_argument("--fp32", type=Path, default=Path("models/dicnet_sim_default.onnx"),
                        help="the FP32 model it was exported from (default: the shipped one)")
    parser.add_argument("--data", type=Path, required=True, help="dataset root with a labelled test split")
    parser.add_argument("--images", type=int, default=120, help="first N images of the split (default 120)")
    parser.add_argument("--emulate", nargs="*", choices=sorted(EMULATORS), default=[],
                        help="also measure these paths under their emulator (slow)")
    parser.add_argument("--emulated-images", type=int, default=None, help="images for emulated paths (default all)")
    parser.add_argument("--no-native", action="store_true", help="only the emulated paths")
    parser.add_argument("--json", type=Path, default=None, help="write everything measured here")
    args = parser.parse_args()

    saturation = saturation_check(args.model)
    print(f"{args.model}: {saturation.summary()}")
    runs = [] if args.no_native else [(None, args.images)]
    runs += [(path, args.emulated_images or args.images) for path in args.emulate]
    results = []
    references = ParityReferences.measure(args.model, args.fp32, args.data, max(count for _, count in runs)) \
        if runs else None
    for emulate, count in runs:
        start = time.perf_counter()
        result = parity_check(args.model, args.fp32, args.data, count, emulate=emulate, references=references)
        print(f"{result.summary()} [{time.perf_counter() - start:.0f} s]")
        results.append({"path": result.path, "passed": result.passed, **result.metadata()})
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "hardware": hardware_info(),
                                         "saturation": saturation.metadata(), "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
