"""Which integer path ONNX Runtime's CPU kernels take for an INT8 model on this CPU, and whether the model was
checked on it.

Why it matters: an INT8 graph's convolutions sum u8 x s8 products, and ONNX Runtime (MLAS) sums them differently
per instruction set. With VNNI (AVX-512 VNNI, AVX-VNNI), AMX and on ARM the sums are exact 32-bit integers. On
AVX2 and on AVX-512 without VNNI it multiplies with VPMADDUBSW, which adds two u8 x s8 products into a *saturating*
16-bit integer; a model whose weights let such a pair pass +-32767 scores worse there than where it was measured
(ONNX Runtime's quantization guide: 7-bit weights with ``reduce_range`` or U8U8 avoid it). The INT8 export records
on which paths it measured its parity with the float graph (``export.quantization.parity.paths`` in the model
metadata) and whether any pair sum can saturate (``export.quantization.saturation``); ``int8_path_warning`` says
when the CPU running a model is not among them. Detection reads /proc/cpuinfo flags (Linux) and the machine type.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# kind (stored in model metadata) -> (what people call it, do u8 x s8 pair sums saturate at 16 bits?)
INT8_PATHS: dict[str, tuple[str, bool | None]] = {
    "x86-amx": ("AMX-INT8 (+ AVX-512 VNNI)", False),
    "x86-avx512-vnni": ("AVX-512 VNNI", False),
    "x86-avx-vnni": ("AVX-VNNI", False),
    "x86-avx512-core": ("AVX-512 without VNNI", True),
    "x86-avx2": ("AVX2 without VNNI", True),
    "x86-sse": ("SSE4.1 (no AVX2)", None),
    "arm64-dotprod": ("ARM dot product (SDOT/UDOT)", False),
    "arm64-neon": ("ARM NEON without dot product", False),
    "unknown": ("unknown CPU", None),
}
SATURATING_KINDS = tuple(kind for kind, (_, saturates) in INT8_PATHS.items() if saturates)


@dataclass(frozen=True)
class Int8Path:
    """The CPU's INT8 arithmetic as ONNX Runtime uses it."""

    kind: str  # a key of INT8_PATHS: what model metadata records
    cpu: str  # model name, e.g. "AMD EPYC 7B13"

    @property
    def name(self) -> str:
        return INT8_PATHS[self.kind][0]

    @property
    def pair_saturation(self) -> bool | None:
        """True: u8 x s8 pairs are summed in saturating 16-bit integers; False: exact; None: not known."""
        return INT8_PATHS[self.kind][1]

    def describe(self) -> str:
        """One line for logs and tables, e.g. ``AVX2 without VNNI (u8 x s8 pair sums saturate at 16 bits)``."""
        how = {True: "u8 x s8 pair sums saturate at 16 bits", False: "exact 32-bit integer sums",
               None: "integer sums not characterised"}[self.pair_saturation]
        return f"{self.name} ({how})"


def _cpuinfo_fields(text: str) -> tuple[set[str], str]:
    """(feature flags, model name) of the first processor in a /proc/cpuinfo text (x86 ``flags``, ARM
    ``Features``)."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    return flags, model


def int8_kind(flags: set[str], machine: str) -> str:
    """The INT8_PATHS kind ONNX Runtime's kernel dispatch takes for these CPU flags (MLAS prefers, in order:
    AMX, AVX-512 VNNI, AVX-VNNI, AVX-512 BW, AVX2, SSE4.1; on ARM64 the dot-product kernels when present)."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        if "amx_int8" in flags and "avx512_vnni" in flags:
            return "x86-amx"
        if "avx512_vnni" in flags and "avx512bw" in flags:
            return "x86-avx512-vnni"
        if "avx_vnni" in flags:
            return "x86-avx-vnni"
        if "avx512bw" in flags:
            return "x86-avx512-core"
        if "avx2" in flags:
            return "x86-avx2"
        return "x86-sse" if flags else "unknown"
    if machine in ("aarch64", "arm64"):
        if "asimddp" in flags or machine == "arm64":  # every Apple silicon CPU has the dot product
            return "arm64-dotprod"
        return "arm64-neon"
    return "unknown"


# numpy's CPU dispatcher asks CPUID itself: its names -> the /proc/cpuinfo flag names int8_kind reads
_NUMPY_FLAGS = {"AVX2": "avx2", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni", "SSE41": "sse4_1",
                "ASIMDDP": "asimddp", "ASIMD": "asimd"}


def cpuid_flags() -> set[str]:
    """Feature flags as the CPU's CPUID reports them to this process (through numpy's dispatcher).

    Unlike /proc/cpuinfo (the host's, even under a user-mode emulator such as ``qemu-x86_64 -cpu Haswell``) this is
    what ONNX Runtime's own dispatch sees; AVX-VNNI and AMX are not among numpy's features."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return {flag for name, flag in _NUMPY_FLAGS.items() if features.get(name)}


def detect_int8_path(cpuinfo: str | None = None, machine: str | None = None, use_cpuid: bool = False) -> Int8Path:
    """This CPU's INT8 path; ``cpuinfo`` / ``machine`` stand in for /proc/cpuinfo and platform.machine().

    ``use_cpuid`` takes the flags from CPUID instead of /proc/cpuinfo (what an emulated CPU reports)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:  # not Linux: CPUID below, and the machine type
            cpuinfo = ""
    flags, model = _cpuinfo_fields(cpuinfo)
    if use_cpuid or not flags:
        flags = cpuid_flags()
    machine = machine or platform.machine()
    return Int8Path(int8_kind(flags, machine), model or platform.processor() or machine)


def cpu_name() -> str:
    """This CPU's model name (/proc/cpuinfo; else the platform's processor or machine type): what every benchmark
    records as the machine its figures come from."""
    try:
        _, model = _cpuinfo_fields(CPUINFO.read_text(errors="replace"))
    except OSError:
        model = ""
    return model or platform.processor() or platform.machine()


def int8_path_warning(quantization: Mapping[str, Any] | None, path: Int8Path) -> str | None:
    """Why this INT8 model's quality on ``path`` is not vouched for by its export (None when it is).

    ``quantization`` is the model metadata's ``export.quantization``. The parity measured at export names the
    paths it ran on; on a saturating path (AVX2, AVX-512 without VNNI) the saturation check also counts."""
    quantization = quantization or {}
    checked = dict((quantization.get("parity") or {}).get("paths") or {})
    if path.kind in checked:
        return None
    saturation = quantization.get("saturation") or {}
    if checked:
        where = ", ".join(INT8_PATHS.get(k, (k, None))[0] for k in checked)
        text = f"this INT8 model's parity with the float model was measured on {where}, not on this CPU's {path.name}"
    else:
        text = f"this INT8 model records no parity measurement of its integer kernels (this CPU: {path.name})"
    if path.pair_saturation:
        risky = saturation.get("can_saturate")
        if risky is None:
            return (f"{text}, and it was never checked for 16-bit saturation: its scores may be worse here than its "
                    f"model card says; prefer the FP32 model or re-export with `dicnet export --int8`")
        if risky:
            return (f"{text}, and {risky} of its integer products can saturate 16-bit pair sums here: prefer the FP32 "
                    f"model or re-export with `dicnet export --int8`")
        return f"{text}; none of its integer products can saturate 16-bit pair sums, so the integer arithmetic is exact"
    return text


def int8_notice(model: Any, path: Int8Path | None = None) -> tuple[str | None, str | None]:
    """(a line naming the CPU's INT8 path, a warning or None) for a loaded ``AnomalyModel``; (None, None) unless it
    is an INT8 model whose arithmetic runs on the CPU. The node, ``dicnet infer`` and ``dicnet bench`` call this."""
    if getattr(model, "precision", None) != "int8" or getattr(model, "device", None) != "cpu":
        return None, None
    path = path or detect_int8_path()
    quantization = (model.metadata.export or {}).get("quantization")
    return f"INT8 on {path.cpu}: {path.describe()}", int8_path_warning(quantization, path)
