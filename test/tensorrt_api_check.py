"""TensorRT API conformance: every TensorRT name and call this package makes, checked against the real bindings.

What is checked. ``scan`` reads the syntax tree of ``trt_api.TENSORRT_MODULES`` and follows the objects named as
in ``trt_api.HANDLES`` (``builder``, ``engine``, ``self.context`` ...): every attribute and enum member read,
every attribute set, every call with its number of positional arguments and its keyword names (constructors
made through ``trt_api.create`` included), the result type a call is kept under, and the callbacks a class
derived from a TensorRT class overrides. ``check`` looks each of them up in a real ``tensorrt`` module: the name
must exist, a call must fit one of the pybind11 signatures in the function's ``__doc__``, an overridden callback
must take what TensorRT passes, and a TensorRT object may only be kept under its handle name (so the scan can
follow it). Names in ``trt_api.USED_BEFORE`` are only required on the versions that still use them.

How the real bindings import without a GPU. The ``tensorrt-cu12-bindings`` wheels (``make`` installs each with
``pip install --no-deps --target $(VENV)/trt-bindings/<version>``) hold the pybind11 extension
``tensorrt_bindings/tensorrt.so``. ``readelf -d`` shows it needs libnvinfer.so.N, libnvonnxparser.so.N and
libnvinfer_plugin.so.N (N = the major version); ``nm -D --undefined-only`` shows it calls nine C functions of
them (``STUB_FUNCTIONS``). ``build_stubs`` compiles one C file defining those nine (returning NULL / 0) into
the three sonames with gcc. With ``LD_LIBRARY_PATH`` on that folder the real extension imports, every class,
enum and signature is there to inspect, and creating a Builder or Runtime fails as on a machine where TensorRT
cannot start (``TypeError: pybind11::init(): factory function returned nullptr``). The name ``tensorrt`` is
bound to ``tensorrt_bindings`` as the ``tensorrt-cu12`` package does (``from tensorrt_bindings import *``).
``LD_LIBRARY_PATH`` is read when a process starts and both versions are named ``tensorrt_bindings``, so each
version is checked in its own process: ``python test/tensorrt_api_check.py BINDINGS_DIR`` prints a JSON report.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# library -> the C functions of it that tensorrt.so calls (nm -D --undefined-only tensorrt.so, 10.13 and 11.4)
STUB_FUNCTIONS = {
    "libnvinfer": ("void *createInferBuilder_INTERNAL(void *logger, int version)",
                   "void *createInferRuntime_INTERNAL(void *logger, int version)",
                   "void *createInferRefitter_INTERNAL(void *engine, void *logger, int version)",
                   "void *getPluginRegistry(void)",
                   "void *getBuilderPluginRegistry(int capability)"),
    "libnvonnxparser": ("void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version)",
                        "void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version)",
                        "int getNvOnnxParserVersion(void)"),
    "libnvinfer_plugin": ("int initLibNvInferPlugins(void *logger, const char *namespace_)",),
}
# the enums whose members the stand-in module copies (names and values, per version)
STANDIN_ENUMS = ("BuilderFlag", "DataType", "TensorIOMode", "MemoryPoolType", "NetworkDefinitionCreationFlag",
                 "ILogger.Severity")
TABLES_FILE = Path(__file__).resolve().parent / "data" / "tensorrt_tables.json"


def build_stubs(folder: Path, major: int) -> Path:
    """The three TensorRT libraries of major version ``major`` as stubs (gcc), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for library, functions in STUB_FUNCTIONS.items():
        source = folder / f"{library}.c"
        body = "\n".join(f"{f} {{ return {'0' if f.startswith('int') else '(void *)0'}; }}" for f in functions)
        source.write_text(body + "\n")
        soname = f"{library}.so.{major}"
        subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-o", str(folder / soname), f"-Wl,-soname,{soname}",
                        str(source)], check=True, capture_output=True, text=True)
    return folder


# ------------------------------------------------------------------------------------------------ the scan
@dataclass(frozen=True)
class Use:
    """One use of TensorRT: ``ref`` says how the code reaches the object (see ``scan``)."""

    where: str  # file:line
    kind: str  # "attr" | "store" | "call" | "keep" (a value kept under a name) | "override"
    ref: tuple  # ("handle", name) | ("attr", ref, name) | ("call", ref, positional, keywords)
    target: str = ""  # keep: the name it is kept under; override: "positional parameters incl. self"


def _handles() -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    from dicnet_ros.inference.trt_api import HANDLES

    return HANDLES


def _ref(node: ast.AST, handles: dict[str, str]) -> tuple | None:
    """How an expression reaches a TensorRT object, or None when it does not."""
    if isinstance(node, ast.Name) and node.id in handles:
        return ("handle", node.id)
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in handles:
            return ("handle", node.attr)
        base = _ref(node.value, handles)
        return ("attr", base, node.attr) if base else None
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "create" and node.args:  # trt_api.create(factory, ...)
            factory = _ref(node.args[0], handles)
            return ("call", factory, len(node.args) - 1, ()) if factory else None
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            base = _ref(node.args[0], handles)
            return ("attr", base, node.args[1].value) if base else None
        func = _ref(node.func, handles)
        if func:
            return ("call", func, len(node.args), tuple(sorted(k.arg for k in node.keywords if k.arg)))
    return None


def _target(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def scan(paths: list[Path] | None = None, handles: dict[str, str] | None = None) -> list[Use]:
    """Every TensorRT use in ``paths`` (default: trt_api.TENSORRT_MODULES)."""
    handles = handles if handles is not None else _handles()
    if paths is None:
        from dicnet_ros.inference.trt_api import TENSORRT_MODULES

        paths = [ROOT / p for p in TENSORRT_MODULES]
    uses: list[Use] = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, (ast.Attribute, ast.Call)):
                ref = _ref(node, handles)
                if ref and ref[0] != "handle":
                    store = isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    uses.append(Use(where, "store" if store else ref[0], ref))
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                ref, name = _ref(node.value, handles), _target(node.targets[0])
                if ref and ref[0] != "handle" and name:
                    uses.append(Use(where, "keep", ref, name))
            elif isinstance(node, ast.ClassDef):
                for base in node.bases:
                    ref = _ref(base, handles)
                    if not ref:
                        continue
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef) and item.name != "__init__":
                            count = len(item.args.posonlyargs) + len(item.args.args)
                            uses.append(Use(f"{path.name}:{item.lineno}", "override", ("attr", ref, item.name),
                                            str(count)))
    return uses


# ----------------------------------------------------------------------------------------------- the check
@dataclass
class Value:
    """What a reference resolves to in the real module."""

    kind: str  # "module" | "class" | "instance" | "function" | "unknown"
    obj: Any = None  # module, class, or function
    label: str = ""  # "Builder", "IExecutionContext.execute_async_v3" ...
    bound: bool = True  # function looked up on an instance (self is implied)


def _signatures(function: Any, name: str) -> list[tuple[list[tuple[str, bool]], str]]:
    """pybind11 signatures from a docstring: [(params [(name, has default)] incl. self, return type)]."""
    found = []
    pattern = re.compile(rf"^(?:\d+\.\s*)?{re.escape(name)}\((.*)\)\s*->\s*(.+)$")
    for line in (getattr(function, "__doc__", "") or "").splitlines():
        match = pattern.match(line.strip())
        if match:
            found.append((_params(match.group(1)), match.group(2).strip()))
    specific = [s for s in found if [p for p, _ in s[0]] != ["*args", "**kwargs"]]
    return specific or found


def _params(text: str) -> list[tuple[str, bool]]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[(<{"
        depth -= char in "])>}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    params = []
    for part in parts:
        name = part.split(":")[0].split("=")[0].strip()
        params.append((name, " = " in part or part.strip().endswith("=None")))
    return params


def _fits(params: list[tuple[str, bool]], positional: int, keywords: tuple[str, ...]) -> bool:
    names = [n for n, _ in params]
    if "*args" in names:
        return True
    if positional > len(params):
        return False
    rest = params[positional:]
    if any(k not in [n for n, _ in rest] for k in keywords):
        return False
    return all(has_default or name in keywords for name, has_default in rest)


def _class_named(trt: Any, type_text: str) -> Any:
    match = re.fullmatch(r"(?:tensorrt_bindings\.)?tensorrt\.(\w+)", type_text)
    return getattr(trt, match.group(1), None) if match else None


class Checker:
    """Resolves scanned references in one real tensorrt module; ``hidden`` names ("Class.name") count as
    missing, to show what the check reports the day TensorRT renames or removes them."""

    def __init__(self, trt: Any, hidden: frozenset[str] = frozenset(), handles: dict[str, str] | None = None):
        self.trt, self.hidden = trt, hidden
        self.handles = handles if handles is not None else _handles()
        self.version = tuple(int(p) for p in str(trt.__version__).split(".")[:2])
        self.problems: list[str] = []

    def _problem(self, where: str, text: str) -> None:
        if f"{where}: {text}" not in self.problems:
            self.problems.append(f"{where}: {text}")

    def _required(self, label: str) -> bool:
        from dicnet_ros.inference.trt_api import USED_BEFORE

        before = USED_BEFORE.get(label)
        return before is None or self.version < before

    def resolve(self, ref: tuple, where: str) -> Value | None:
        kind = ref[0]
        if kind == "handle":
            what = self.handles[ref[1]]
            if what == "module":
                return Value("module", self.trt, "tensorrt")
            name = what.removeprefix("class:")
            cls = getattr(self.trt, name, None) if name not in self.hidden else None
            if cls is None:
                self._problem(where, f"tensorrt has no {name} (handle '{ref[1]}')")
                return None
            return Value("class" if what.startswith("class:") else "instance", cls, name)
        if kind == "attr":
            base = self.resolve(ref[1], where)
            if base is None:
                return None
            return self._attribute(base, ref[2], where)
        if kind == "call":
            function = self.resolve(ref[1], where)
            return self._call(function, ref[2], ref[3], where) if function else None
        raise ValueError(ref)

    def _attribute(self, base: Value, name: str, where: str) -> Value | None:
        if base.kind in ("unknown", "function"):
            self._problem(where, f"cannot follow .{name} on {base.label or 'a value'} (keep TensorRT objects under "
                                 f"the names in trt_api.HANDLES)")
            return None
        label = name if base.kind == "module" else f"{base.label}.{name}"
        found = getattr(base.obj, name, None) if label not in self.hidden else None
        if found is None:
            if self._required(label):
                self._problem(where, f"TensorRT {self.trt.__version__} has no {label}")
            return None
        if isinstance(found, type):
            return Value("class", found, name if base.kind == "module" else label)
        if isinstance(found, property):
            return Value("unknown", found, label)
        if callable(found):  # a method (self implied when looked up on an instance) or a module function
            return Value("function", found, label, bound=base.kind == "instance")
        return Value("instance", type(found), type(found).__name__)  # an enum member or another value

    def _call(self, function: Value, positional: int, keywords: tuple[str, ...], where: str) -> Value | None:
        if function.kind == "class":
            name, doc_owner, extra = "__init__", function.obj.__init__, 1  # self is implied
            result = Value("instance", function.obj, function.obj.__name__)
        elif function.kind == "function":
            name, doc_owner = function.label.split(".")[-1], function.obj
            extra = 1 if function.bound else 0
            result = Value("unknown", None, f"{function.label}()")
        else:
            self._problem(where, f"{function.label} is not callable")
            return None
        signatures = _signatures(doc_owner, name)
        if not signatures:
            return result  # a plain Python function (e.g. from the package's __init__.py): nothing to compare
        if not any(_fits(params, positional + extra, keywords) for params, _ in signatures):
            shown = " | ".join("(" + ", ".join(n for n, _ in params) + ")" for params, _ in signatures)
            self._problem(where, f"{function.label} called with {positional} positional argument(s)"
                                 f"{' and ' + ', '.join(keywords) if keywords else ''}, TensorRT "
                                 f"{self.trt.__version__} takes {shown}")
        if function.kind == "function":
            returned = {_class_named(self.trt, ret) for _, ret in signatures}
            if len(returned) == 1 and None not in returned:
                cls = returned.pop()
                result = Value("instance", cls, cls.__name__)
        return result

    def check(self, uses: list[Use]) -> list[str]:
        handled = {v.removeprefix("class:") for v in self.handles.values() if v != "module"}
        for use in uses:
            value = self.resolve(use.ref, use.where)
            if value is None:
                continue
            if use.kind == "store" and not (isinstance(value.obj, property) and value.obj.fset is not None):
                self._problem(use.where, f"{value.label} cannot be set")
            elif use.kind == "keep" and value.kind in ("class", "instance") \
                    and value.obj is not None and value.obj.__name__ in handled:
                declared = self.handles.get(use.target)
                want = f"class:{value.obj.__name__}" if value.kind == "class" else value.obj.__name__
                if declared != want:
                    self._problem(use.where, f"a TensorRT {want} is kept as '{use.target}', which trt_api.HANDLES "
                                             f"declares as {declared!r}: the check cannot follow it")
            elif use.kind == "override":
                signatures = _signatures(value.obj, use.ref[2]) if value.kind == "function" else []
                if not any(len(params) == int(use.target) for params, _ in signatures):
                    self._problem(use.where, f"override {value.label} takes {int(use.target)} parameter(s), "
                                             f"TensorRT {self.trt.__version__} calls it with "
                                             f"{[len(p) for p, _ in signatures]}")
        return self.problems


def enum_tables(trt: Any) -> dict[str, dict[str, int]]:
    """Names and values of the enums the stand-in copies."""
    tables = {}
    for path in STANDIN_ENUMS:
        enum: Any = trt
        for part in path.split("."):
            enum = getattr(enum, part)
        tables[path] = {name: int(value) for name, value in enum.__members__.items()}
    return tables


def import_bindings(folder: Path) -> Any:
    """The real module from a ``--target`` install, importable as ``tensorrt`` (as the tensorrt-cu12 package does)."""
    sys.path.insert(0, str(folder))
    module = importlib.import_module("tensorrt_bindings")
    sys.modules["tensorrt"] = module
    return module


def report(folder: Path, hidden: frozenset[str] = frozenset(), extra: Path | None = None) -> dict[str, Any]:
    """Everything the conformance test asserts, for the bindings in ``folder`` (run inside the stubbed process):
    the problems of the package's TensorRT uses, of the same with ``hidden`` names missing, of the code in
    ``extra`` (tests of the checker), the enum tables, and what creating a Builder / Runtime does."""
    trt = import_bindings(folder)
    sys.path.insert(0, str(ROOT))
    from dicnet_ros.inference import trt_api
    from dicnet_ros.inference.base import BackendUnavailableError

    uses = scan()
    out: dict[str, Any] = {"version": trt.__version__, "uses": [asdict(u) for u in uses],
                           "problems": Checker(trt).check(uses), "tables": enum_tables(trt)}
    if hidden:
        out["problems_with_hidden"] = Checker(trt, hidden).check(uses)
    if extra is not None:
        out["extra_problems"] = Checker(trt).check(scan([extra]))
    factory_errors = {}
    for what in ("Builder", "Runtime"):
        try:
            getattr(trt, what)(trt.Logger(trt.Logger.WARNING))
            factory_errors[what] = ""
        except Exception as exc:
            factory_errors[what] = f"{type(exc).__name__}: {exc}"
    out["factory_errors"] = factory_errors
    try:
        trt_api.create(trt.Builder, trt.Logger(trt.Logger.WARNING), what="Builder", where="cuda:0 (stub)")
        out["create_error"] = ""
    except BackendUnavailableError as exc:
        out["create_error"] = str(exc)
    out["runtime_problem"] = trt_api.runtime_problem()
    return out


def run_checked(folder: Path, stubs: Path, hidden: frozenset[str] = frozenset(),
                extra: Path | None = None) -> dict[str, Any]:
    """``report`` in a fresh process whose dynamic loader finds the stubs."""
    env = {**os.environ, "LD_LIBRARY_PATH": f"{stubs}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")}
    command = [sys.executable, str(Path(__file__).resolve()), str(folder), *[f"--hide={h}" for h in sorted(hidden)],
               *([f"--extra={extra}"] if extra else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"conformance run for {folder.name} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    hide = frozenset(a.split("=", 1)[1] for a in arguments if a.startswith("--hide="))
    extras = [Path(a.split("=", 1)[1]) for a in arguments if a.startswith("--extra=")]
    print(json.dumps(report(Path(arguments[0]), hide, extras[0] if extras else None)))
