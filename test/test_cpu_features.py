"""The CPU's INT8 path (which integer kernels ONNX Runtime takes) and the warning an INT8 model gives on a path its
export did not measure."""

from __future__ import annotations

import pytest

from dicnet_ros.inference import load_model
from dicnet_ros.inference.cpu_features import (
    Int8Path,
    cpuid_flags,
    detect_int8_path,
    int8_notice,
    int8_path_warning,
)
from dicnet_ros.resources import package_file

# /proc/cpuinfo flags of real CPUs (trimmed to the first processor's lines that matter)
ZEN4 = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall "
        "nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid "
        "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes "
        "xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw "
        "topoext cpuid_fault vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx "
        "smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 "
        "clzero xsaveerptr arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg "
        "avx512_vpopcntdq rdpid fsrm")
ZEN3 = " ".join(f for f in ZEN4.split() if not f.startswith("avx512"))  # Zen 3: the same without AVX-512
SKYLAKE_SP = ZEN3 + " avx512f avx512dq avx512cd avx512bw avx512vl"  # AVX-512 without VNNI
ALDER_LAKE = ZEN3 + " avx_vnni"
GRAVITON3 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc " \
            "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm " \
            "svebf16 i8mm bf16 dgh rng"
CORTEX_A72 = "fp asimd evtstrm crc32 cpuid"


def _x86(flags: str, model: str) -> str:
    return f"processor\t: 0\nvendor_id\t: whatever\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(("cpuinfo", "machine", "kind", "saturates"), [
    (_x86(ZEN4, "AMD EPYC 9B14"), "x86_64", "x86-avx512-vnni", False),
    (_x86(ZEN3, "AMD EPYC 7B13"), "x86_64", "x86-avx2", True),
    (_x86(SKYLAKE_SP, "Intel(R) Xeon(R) Gold 6148"), "x86_64", "x86-avx512-core", True),
    (_x86(ALDER_LAKE, "12th Gen Intel(R) Core(TM) i7-12700"), "x86_64", "x86-avx-vnni", False),
    (f"processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: {GRAVITON3}\nCPU implementer\t: 0x41\n", "aarch64",
     "arm64-dotprod", False),
    (f"processor\t: 0\nFeatures\t: {CORTEX_A72}\n", "aarch64", "arm64-neon", False),
])
def test_the_int8_path_follows_the_cpu_flags(cpuinfo: str, machine: str, kind: str, saturates: bool) -> None:
    path = detect_int8_path(cpuinfo, machine)
    assert path.kind == kind and path.pair_saturation is saturates
    assert ("saturate" in path.describe()) is saturates
    if machine == "x86_64":
        assert path.cpu.startswith(("AMD", "Intel", "12th"))


def test_this_machine_has_an_int8_path_and_cpuid_agrees_with_proc_cpuinfo() -> None:
    """Outside an emulator both sources see the same CPU (under qemu-x86_64 only CPUID changes)."""
    native = detect_int8_path()
    assert native.kind != "unknown" and native.cpu
    assert detect_int8_path(use_cpuid=True).kind == native.kind or native.kind in ("x86-amx", "x86-avx-vnni")
    assert cpuid_flags()  # numpy's dispatcher answers on every CPU it supports


MEASURED = {"saturation": {"can_saturate": 0, "products": 53},
            "parity": {"paths": {"x86-avx512-vnni": {"images": 120}, "x86-avx2": {"images": 48}}}}


def test_no_warning_on_a_measured_path_and_one_elsewhere() -> None:
    assert int8_path_warning(MEASURED, Int8Path("x86-avx2", "AMD EPYC 7B13")) is None
    assert int8_path_warning(MEASURED, Int8Path("x86-avx512-vnni", "AMD EPYC 9B14")) is None
    arm = int8_path_warning(MEASURED, Int8Path("arm64-dotprod", "Graviton3"))
    assert arm and "measured on AVX-512 VNNI, AVX2 without VNNI, not on this CPU's ARM dot product" in arm
    # AVX-512 without VNNI saturates like AVX2: unmeasured, but the saturation check vouches for the arithmetic
    skylake = int8_path_warning(MEASURED, Int8Path("x86-avx512-core", "Xeon Gold 6148"))
    assert skylake and "none of its integer products can saturate" in skylake


def test_a_model_that_can_saturate_says_so_on_a_saturating_cpu() -> None:
    vnni_only = {"saturation": {"can_saturate": 54, "products": 54},
                 "parity": {"paths": {"x86-avx512-vnni": {"images": 120}}}}
    warning = int8_path_warning(vnni_only, Int8Path("x86-avx2", "AMD EPYC 7B13"))
    assert warning and "54 of its integer products can saturate" in warning and "FP32" in warning
    unchecked = int8_path_warning({}, Int8Path("x86-avx2", "AMD EPYC 7B13"))
    assert unchecked and "records no parity measurement" in unchecked and "never checked for 16-bit saturation" \
        in unchecked


def test_the_notice_names_the_path_only_for_int8_models_on_the_cpu() -> None:
    fp32 = load_model(package_file("models/dicnet_sim_default.onnx"), "onnxruntime", "cpu")
    assert int8_notice(fp32) == (None, None)
    int8 = load_model(package_file("models/dicnet_sim_default_int8.onnx"), "onnxruntime", "cpu")
    line, warning = int8_notice(int8, Int8Path("x86-avx2", "AMD EPYC 7B13"))
    assert line == "INT8 on AMD EPYC 7B13: AVX2 without VNNI (u8 x s8 pair sums saturate at 16 bits)"
    assert warning is None  # the shipped model's export measured the AVX2 path (emulated)
    line, warning = int8_notice(int8, Int8Path("arm64-neon", "Cortex-A72"))
    assert line and "ARM NEON" in line and warning and "not on this CPU's ARM NEON" in warning
