"""TensorRT API conformance against the REAL bindings of every supported major version (no GPU, no TensorRT libraries).

``make test`` installs the ``tensorrt-cu12-bindings`` wheels into ``$(VENV)/trt-bindings/<version>``; each
version is imported in its own process against gcc-built stubs of libnvinfer / libnvonnxparser /
libnvinfer_plugin (how and why: tensorrt_api_check.py). The list of what is checked is read from the
package's source (``trt_api.TENSORRT_MODULES``), not written here.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from tensorrt_api_check import ROOT, TABLES_FILE, build_stubs, run_checked, scan

from dicnet_ros.inference.trt_api import HANDLES, SUPPORTED_MAJORS, TENSORRT_MODULES

BINDINGS = Path(sys.prefix) / "trt-bindings"  # $(VENV)/trt-bindings, filled by the Makefile
# what the check must show it would catch: the calls every inference makes
RENAMED = frozenset({"IExecutionContext.execute_async_v3", "IExecutionContext.set_tensor_address"})
# code the checker must find fault with (line -> the problem it must report)
BAD_CODE = '''
def bad(trt, onnx_path, stream):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger, 3)
    network = builder.create_network()
    config = builder.create_builder_config()
    config.set_timing_cache(config.create_timing_cache(b""), ignore=True)
    plan_bytes = builder.build_serialized_network(network, config)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
    context = engine.create_execution_context()
    context.execute_async_v3()
    context.set_tensor_address("image")
    network.num_inputs = 3
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 64, 96, 3), (4, 64, 96, 3))
    trt.BuilderFlag.FP17
'''
BAD_CODE_PROBLEMS = {
    4: "Builder called with 2 positional argument(s)",
    7: "IBuilderConfig.set_timing_cache called with 1 positional argument(s) and ignore",
    8: "is kept as 'plan_bytes'",
    11: "IExecutionContext.execute_async_v3 called with 0 positional argument(s)",
    12: "IExecutionContext.set_tensor_address called with 1 positional argument(s)",
    13: "INetworkDefinition.num_inputs cannot be set",
    15: "IOptimizationProfile.set_shape called with 3 positional argument(s)",
    16: "has no BuilderFlag.FP17",
}


def _bindings(major: int) -> Path:
    found = sorted(BINDINGS.glob(f"{major}.*"))
    if not found:
        pytest.fail(f"no TensorRT {major}.x bindings in {BINDINGS}: run `make test` (its .trt-bindings step installs "
                    f"tensorrt-cu12-bindings with pip --no-deps --target)")
    return found[-1]


@pytest.fixture(scope="session")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """The conformance report of every supported major version, each from its own process."""
    if shutil.which("gcc") is None:
        pytest.fail("the TensorRT API check builds stub libraries with gcc; install gcc")
    folder = tmp_path_factory.mktemp("trt_api")
    bad = folder / "bad_code.py"
    bad.write_text(BAD_CODE)
    out = {}
    for major in SUPPORTED_MAJORS:
        stubs = build_stubs(folder / f"stubs{major}", major)
        out[major] = run_checked(_bindings(major), stubs, RENAMED, bad)
    return out


@pytest.mark.parametrize("major", SUPPORTED_MAJORS)
def test_every_tensorrt_name_and_call_exists_in_the_real_bindings(reports: dict, major: int) -> None:
    report = reports[major]
    assert report["version"].startswith(f"{major}.")
    assert report["problems"] == []
    called = {tuple(_names(u["ref"])) for u in report["uses"] if u["kind"] == "call"}
    # the scan sees the build, the batch profile and the run (if it did not, an empty problem list would mean little)
    for path in (("Builder",), ("Builder", "create_optimization_profile"), ("IOptimizationProfile", "set_shape"),
                 ("IBuilderConfig", "add_optimization_profile"), ("IExecutionContext", "set_input_shape"),
                 ("IExecutionContext", "set_tensor_address"), ("IExecutionContext", "execute_async_v3"),
                 ("Runtime", "deserialize_cuda_engine"), ("Builder", "build_serialized_network")):
        assert path in called, path
    assert len(report["uses"]) > 100


def _names(ref: list) -> list[str]:
    """A scanned reference as (handle's class, attribute): ("IExecutionContext", "execute_async_v3")."""
    if ref[0] == "handle":
        return [] if HANDLES[ref[1]] == "module" else [HANDLES[ref[1]].removeprefix("class:")]
    if ref[0] == "attr":
        return [*_names(ref[1]), ref[2]]
    return _names(ref[1])


@pytest.mark.parametrize("major", SUPPORTED_MAJORS)
def test_the_check_reports_renamed_calls(reports: dict, major: int) -> None:
    """The day execute_async_v3 or set_tensor_address are renamed, the check names them and where they are used."""
    problems = reports[major]["problems_with_hidden"]
    for name in RENAMED:
        assert any(p.startswith("trt_backend.py:") and p.endswith(f"has no {name}") for p in problems), name
    assert all(any(name in p for name in RENAMED) for p in problems)


@pytest.mark.parametrize("major", SUPPORTED_MAJORS)
def test_the_check_reports_wrong_arity_unknown_names_and_untracked_objects(reports: dict, major: int) -> None:
    problems = reports[major]["extra_problems"]
    for line, text in BAD_CODE_PROBLEMS.items():
        assert any(p.startswith(f"bad_code.py:{line}:") and text in p for p in problems), (line, text, problems)
    assert len(problems) == len(BAD_CODE_PROBLEMS), problems


@pytest.mark.parametrize("major", SUPPORTED_MAJORS)
def test_the_stand_in_has_the_real_names_and_values(reports: dict, major: int) -> None:
    """tensorrt_standin.py builds its enums and its null-factory error from this table: it must be the real one."""
    report = reports[major]
    table = json.loads(TABLES_FILE.read_text())[report["version"]]
    assert table["enums"] == report["tables"]
    assert table["factory_error"] == report["factory_errors"]["Builder"] == report["factory_errors"]["Runtime"]


@pytest.mark.parametrize("major", SUPPORTED_MAJORS)
def test_real_bindings_that_cannot_start_give_one_line(reports: dict, major: int) -> None:
    """The real bindings raise TypeError ... nullptr; trt_api turns it into one line, and the availability probe
    says TensorRT cannot run here."""
    report = reports[major]
    assert "factory function returned nullptr" in report["factory_errors"]["Runtime"]
    assert report["create_error"].startswith("TensorRT cannot create a Builder on cuda:0")
    assert "\n" not in report["create_error"]
    assert report["runtime_problem"].startswith(f"TensorRT {report['version']} cannot create a Runtime: ")


def test_only_the_listed_modules_import_tensorrt() -> None:
    """A TensorRT call outside trt_api.TENSORRT_MODULES would escape the check."""
    importers = set()
    for folder in ("dicnet_ros", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "tensorrt" or n.startswith("tensorrt.") for n in names):
                    importers.add(path.relative_to(ROOT).as_posix())
    assert importers and importers <= set(TENSORRT_MODULES)
    assert scan([ROOT / TENSORRT_MODULES[0]])  # the probe's Runtime is among the checked uses
