"""TensorRT engines: cache keys, the builder (TensorRT 10 and 11 Python API), and loading.

Cache (default ``$VSQE_TRT_CACHE`` or ``~/.cache/vsqe/trt``), one folder for every model:

    <stem>.engine         the serialized engine, written to a temp file and renamed
    <stem>.json           the full key it was built for (checked before every load)
    timing-<trt>-<gpu>.cache   TensorRT's timing cache, shared by every build on that GPU
    onnx/<model>-<sha>.onnx    the ONNX an engine was built from
    onnx/<fingerprint>.json    module weights + shapes + export code -> that ONNX, so a run
                               whose engine is cached does not export again

``<stem>`` is readable (model, shapes, precision, DCN path, TensorRT version, GPU) plus the first
16 hex digits of the SHA-256 of the canonical key, which holds - like vs-mlrt's engine names -
the ONNX file's SHA-256, the input shapes (min/opt/max), precision, DCN path, TensorRT version,
GPU name and compute capability, the plugin library's SHA-256 (``--dcn plugin``), workspace
and builder optimisation level. Any change gives another file, and a file is used only if its
.json equals the key, so a stale engine is never loaded. :func:`engine_key` is a pure function
of its inputs (tests/trt check it without TensorRT).

BasicVSR++ builds one engine per step graph (export/basicvsrpp_onnx.py: features, flow, four
branch steps, reconstruct), each a plain ONNX file keyed like any other: model
``<name>.<graph>``, the set's frame shape [N, 1, C, H, W] as the profile, the graph's first input
as input name. :func:`plan_step_engines` (pure) lists a set's engines, I/O shapes and files;
:func:`ensure_step_engines` exports (once per weights and size, indexed like single files) and
builds what the cache lacks.

fp16: TensorRT 11 networks are strongly typed (no FP16 builder flag): the engine is built from
the fp16 ONNX (export.onnx.convert_fp16, DCN/offsets/flows/last conv kept fp32). TensorRT 10
builds the fp32 ONNX with BuilderFlag.FP16 and pins the same nodes to fp32 with precision
constraints.

Building logs go to stderr; stdout is redirected to stderr at the file-descriptor level while
TensorRT builds (vspipe and `vsqe run ... -` write video on stdout).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from vsqe.export.basicvsrpp_onnx import StepShapes

Shape5 = tuple[int, int, int, int, int]
Precision = Literal["fp32", "fp16"]
DcnPath = Literal["native", "plugin"]

KEY_VERSION = 1  # bump when the engine layout or build recipe changes incompatibly
MIN_ENGINE_BYTES = 1024
PLUGIN_LIBRARY_NAME = "libvsqe_dcn_plugin.so"


class EngineError(RuntimeError):
    """Building or loading an engine failed (one-line message)."""


# ---- keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """An optimisation profile of the input tensor: [N, T, C, H, W] min / opt / max."""

    min: Shape5
    opt: Shape5
    max: Shape5

    @staticmethod
    def static(shape: Sequence[int]) -> "Profile":
        s = tuple(int(v) for v in shape)
        return Profile(s, s, s)  # type: ignore[arg-type]

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max

    def validate(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max) == 5):
            raise ValueError("profile shapes must have 5 dimensions [N, T, C, H, W]")
        if self.min[:3] != self.opt[:3] or self.opt[:3] != self.max[:3]:
            raise ValueError("profile: N, T and C must be equal in min, opt and max")
        for i in (3, 4):
            if not (1 <= self.min[i] <= self.opt[i] <= self.max[i]):
                raise ValueError(f"profile: need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")

    def label(self) -> str:
        def wh(s: Shape5) -> str:
            return f"{s[4]}x{s[3]}"

        hw = wh(self.opt) if self.is_static else f"{wh(self.min)}-{wh(self.opt)}-{wh(self.max)}"
        return f"n{self.opt[0]}t{self.opt[1]}c{self.opt[2]}_{hw}"


@dataclass(frozen=True)
class BuildTarget:
    """The build settings and the machine an engine is built for: the part of its key that every
    engine of one request shares (a BasicVSR++ step set has seven engines, one target)."""

    precision: Precision
    dcn: DcnPath
    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    plugin_sha256: str | None = None
    workspace_mb: int | None = None
    opt_level: int = 3

    def validate(self) -> None:
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {self.precision!r}")
        if self.dcn not in ("native", "plugin"):
            raise ValueError(f"dcn must be native or plugin, got {self.dcn!r}")
        if self.dcn == "plugin" and not self.plugin_sha256:
            raise ValueError("dcn='plugin' needs the plugin library's sha256 in the key")


@dataclass(frozen=True, kw_only=True)
class EngineKey(BuildTarget):
    """Everything an engine depends on: its build target plus the model, its ONNX and the shapes.
    Two builds with equal keys are interchangeable."""

    model: str
    onnx_sha256: str
    input_name: str
    profile: Profile
    version: int = KEY_VERSION

    def canonical(self) -> str:
        data = asdict(self)
        data["profile"] = {k: list(v) for k, v in data["profile"].items()}
        data["compute_capability"] = list(self.compute_capability)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def stem(self) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-") or "gpu"
        cc = f"sm{self.compute_capability[0]}{self.compute_capability[1]}"
        model = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.model)
        return (f"{model}_{self.profile.label()}_{self.precision}_{self.dcn}_trt{self.trt_version}_"
                f"{gpu}_{cc}_{self.digest()[:16]}")


def engine_key(model: str, onnx_sha256: str, profile: Profile, target: BuildTarget, *,
               input_name: str = "input") -> EngineKey:
    """The cache key of an engine (pure: no file, no TensorRT, no GPU is touched)."""
    target.validate()
    if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256):
        raise ValueError("onnx_sha256 must be a SHA-256 hex digest")
    profile.validate()
    settings = {f.name: getattr(target, f.name) for f in fields(BuildTarget)}
    settings.update(compute_capability=(int(target.compute_capability[0]), int(target.compute_capability[1])),
                    plugin_sha256=target.plugin_sha256 if target.dcn == "plugin" else None)
    return EngineKey(model=model, onnx_sha256=onnx_sha256, input_name=input_name, profile=profile, **settings)


@dataclass(frozen=True)
class CachePaths:
    engine: Path
    meta: Path
    timing: Path


def cache_paths(cache_dir: str | os.PathLike, key: EngineKey) -> CachePaths:
    d = Path(cache_dir)
    stem = key.stem()
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key.gpu_name).strip("-") or "gpu"
    timing = d / f"timing-trt{key.trt_version}-{gpu}-sm{key.compute_capability[0]}{key.compute_capability[1]}.cache"
    return CachePaths(d / f"{stem}.engine", d / f"{stem}.json", timing)


def onnx_cache_path(cache_dir: str | os.PathLike, model: str, onnx_sha256: str) -> Path:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", model)
    return Path(cache_dir) / "onnx" / f"{model}-{onnx_sha256[:16]}.onnx"


def model_fingerprint(module, profile: Profile, precision: str, dcn: str, trt_major: int) -> str:
    """SHA-256 of what an export depends on: the module's class and every parameter and buffer,
    the shapes, precision, DCN path, TensorRT major (fp16 ONNX or not), torch version and the
    export code itself. Equal fingerprints export equal ONNX files."""
    import torch

    from vsqe.export import onnx as vx

    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}|{torch.__version__}|".encode())
    h.update(f"{profile}|{precision}|{dcn}|{trt_major}|".encode())
    h.update(Path(vx.__file__).read_bytes())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cached_engine(cache_dir: str | os.PathLike, key: EngineKey) -> Path | None:
    """The engine file for `key` if it is there, whole, and was built for exactly this key."""
    paths = cache_paths(cache_dir, key)
    try:
        if paths.engine.stat().st_size < MIN_ENGINE_BYTES:
            return None
        meta = json.loads(paths.meta.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != json.loads(key.canonical()):
        return None
    if meta.get("engine_sha256") and meta["engine_sha256"] != file_sha256(paths.engine):
        return None
    return paths.engine


def default_cache_dir() -> Path:
    env = os.environ.get("VSQE_TRT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vsqe" / "trt"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (H, W)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"expected WIDTHxHEIGHT, got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return h, w


# ---- what is installed ------------------------------------------------------------------------


def plugin_library() -> Path | None:
    """Our DCN plugin: $VSQE_TRT_PLUGIN, else next to the vsqe package, else a build folder."""
    env = os.environ.get("VSQE_TRT_PLUGIN")
    if env:
        return Path(env) if Path(env).is_file() else None
    pkg = Path(__file__).resolve().parent.parent
    candidates = [pkg / PLUGIN_LIBRARY_NAME, *sorted(pkg.parent.glob(f"build/*/plugins/{PLUGIN_LIBRARY_NAME}"))]
    return next((c for c in candidates if c.is_file()), None)


def tensorrt_missing() -> str | None:
    """None if the tensorrt package imports, else why not (one line)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        if exc.name in (None, "tensorrt"):
            return "the tensorrt Python package is not installed (pip install tensorrt-cu13)"
        return f"the tensorrt package does not load (missing {exc.name})"
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer, CUDA mismatch)
        return f"the tensorrt package does not load: {type(exc).__name__}: {_first_line(exc)}"
    return None


def gpu_missing() -> str | None:
    """None if torch sees a CUDA GPU, else why not (one line)."""
    import torch

    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support (install a CUDA build of torch)"
    try:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return None
    except Exception as exc:  # noqa: BLE001
        return f"CUDA does not initialise: {_first_line(exc)}"
    return "no CUDA GPU is visible (torch.cuda.is_available() is False)"


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: tuple[int, int]


def device_info(device: int = 0) -> DeviceInfo:
    import torch

    props = torch.cuda.get_device_properties(device)
    return DeviceInfo(props.name, (int(props.major), int(props.minor)))


def tensorrt_version() -> str:
    import tensorrt as trt

    return trt.__version__


def tensorrt_major() -> int:
    return int(tensorrt_version().split(".")[0])


# ---- TensorRT plumbing ------------------------------------------------------------------------


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Sends fd 1 to fd 2 (native libraries print there too) for the duration."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


_LOGGER = None
_PLUGIN_HANDLES: dict[str, Any] = {}


def trt_logger(verbose: bool = False):
    """One TensorRT logger for the process, writing `vsqe: trt: ...` lines to stderr."""
    global _LOGGER
    import tensorrt as trt

    if _LOGGER is None:

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.verbose = False
                self.last_error = ""

            def log(self, severity, msg) -> None:  # noqa: ANN001
                # Severities are ordered INTERNAL_ERROR (0) < ERROR < WARNING < INFO < VERBOSE (4).
                level = int(severity)
                if level <= int(trt.ILogger.Severity.ERROR):
                    self.last_error = msg
                limit = trt.ILogger.Severity.INFO if self.verbose else trt.ILogger.Severity.WARNING
                if level <= int(limit):
                    sys.stderr.write(f"vsqe: trt: {msg}\n")
                    sys.stderr.flush()

        _LOGGER = _Logger()
        trt.init_libnvinfer_plugins(_LOGGER, "")  # the built-in ModulatedDeformConv2d (ONNX DeformConv)
    _LOGGER.verbose = verbose
    return _LOGGER


def load_plugin(path: str | os.PathLike) -> None:
    """Registers our plugin library's creators with TensorRT (once per process)."""
    import tensorrt as trt

    path = str(Path(path).resolve())
    if path in _PLUGIN_HANDLES:
        return
    trt_logger()
    registry = trt.get_plugin_registry()
    try:
        handle = registry.load_library(path)
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"cannot load the DCN plugin {path}: {_first_line(exc)}") from None
    if handle is None:
        raise EngineError(f"TensorRT refused the DCN plugin library {path}")
    _PLUGIN_HANDLES[path] = handle


class _Progress:
    """TensorRT's IProgressMonitor: top-level build phases on stderr."""

    @staticmethod
    def make():
        import tensorrt as trt

        if not hasattr(trt, "IProgressMonitor"):
            return None

        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.start = time.monotonic()

            def phase_start(self, phase_name, parent_phase, num_steps) -> None:  # noqa: ANN001
                if parent_phase is None:
                    sys.stderr.write(f"vsqe: trt: [{time.monotonic() - self.start:6.1f} s] {phase_name}\n")
                    sys.stderr.flush()

            def step_complete(self, phase_name, step) -> bool:  # noqa: ANN001
                return True

            def phase_finish(self, phase_name) -> None:  # noqa: ANN001
                pass

        return Monitor()


def _pin_fp32_layers(network, names: Sequence[str]) -> int:
    """TensorRT 10 + FP16 flag: keeps the layers of these ONNX nodes in fp32."""
    import tensorrt as trt

    wanted = set(names)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        meta = getattr(layer, "metadata", "") or ""
        hit = layer.name in wanted or any(f"[ONNX Layer: {n}]" in meta for n in wanted)
        if not hit:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _add_profile(builder, network, config, key: EngineKey) -> None:
    """An optimisation profile for a dynamic-shape input. A static network needs none (TensorRT
    makes a default one), and a step graph's inputs do not have the 5-D frame shape its key
    records, so static networks get no profile."""
    shapes = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    dynamic = [name for name, shape in shapes.items() if any(d < 0 for d in shape)]
    if not dynamic:
        return
    if dynamic != [key.input_name]:
        raise EngineError(f"dynamic inputs {dynamic}: only {key.input_name!r} has a profile")
    p = key.profile
    profile = builder.create_optimization_profile()
    profile.set_shape(key.input_name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)


def build_engine(
    onnx_path: str | os.PathLike,
    key: EngineKey,
    cache_dir: str | os.PathLike,
    *,
    fp32_nodes: Sequence[str] = (),
    plugin_path: str | os.PathLike | None = None,
    verbose: bool = False,
) -> Path:
    """Builds the engine for `key` from `onnx_path` into the cache; returns its path.

    fp16 on TensorRT >= 11 expects `onnx_path` to be the fp16 ONNX; on TensorRT 10 the fp32 ONNX
    (the FP16 flag is set and `fp32_nodes` are pinned to fp32)."""
    import tensorrt as trt

    paths = cache_paths(cache_dir, key)
    major = int(trt.__version__.split(".")[0])
    logger = trt_logger(verbose)
    if key.dcn == "plugin":
        if plugin_path is None:
            raise EngineError("--dcn plugin: the plugin library was not found (build it: docs/tensorrt.md)")
        load_plugin(plugin_path)
    start = time.monotonic()
    sys.stderr.write(f"vsqe: building TensorRT engine {paths.engine.name} (this takes minutes; cached after)\n")
    sys.stderr.flush()
    with stdout_to_stderr():
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch; TensorRT 11: always strongly typed
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors or logger.last_error}")
        config = builder.create_builder_config()
        if key.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(key.workspace_mb) << 20)
        config.builder_optimization_level = key.opt_level
        if key.precision == "fp16" and major < 11:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            _pin_fp32_layers(network, fp32_nodes)
        _add_profile(builder, network, config, key)
        timing_blob = paths.timing.read_bytes() if paths.timing.is_file() else b""
        timing = config.create_timing_cache(timing_blob)
        config.set_timing_cache(timing, ignore_mismatch=False)
        monitor = _Progress.make()
        if monitor is not None:
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"TensorRT could not build the engine: {logger.last_error or 'see the log above'}")
        data = bytes(serialized)
    write_atomic(paths.engine, data)
    with contextlib.suppress(Exception):
        write_atomic(paths.timing, bytes(config.get_timing_cache().serialize()))
    meta = {
        "key": json.loads(key.canonical()),
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "onnx": str(onnx_path),
        "build_seconds": round(time.monotonic() - start, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_atomic(paths.meta, json.dumps(meta, indent=1).encode())
    sys.stderr.write(f"vsqe: engine built in {time.monotonic() - start:.0f} s: {paths.engine}\n")
    sys.stderr.flush()
    return paths.engine


def load_engine(path: str | os.PathLike, key: EngineKey, plugin_path: str | os.PathLike | None = None):
    """Deserialises an engine (loading our plugin first for --dcn plugin engines)."""
    import tensorrt as trt

    logger = trt_logger()
    if key.dcn == "plugin":
        if plugin_path is None:
            raise EngineError("this engine uses the vsqe DCN plugin, which was not found")
        load_plugin(plugin_path)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise EngineError(f"TensorRT cannot load engine {path}: {logger.last_error or 'unknown error'}")
    return runtime, engine


# ---- from a model to an engine ----------------------------------------------------------------


@dataclass
class EngineRequest:
    """What to build: the model (registered name or module), shapes, precision, DCN path."""

    model_name: str
    profile: Profile
    precision: Precision = "fp32"
    dcn: DcnPath = "native"
    workspace_mb: int | None = None
    opt_level: int = 3
    cache_dir: Path = field(default_factory=default_cache_dir)
    device: int = 0
    verbose: bool = False


def prepare_onnx(module, spec, request: EngineRequest):
    """Exports `module` for `request` (fp16 ONNX for TensorRT >= 11) -> (proto, fp32_node_names)."""
    from vsqe.export import onnx as vx

    p = request.profile
    shape = vx.ExportShape(*p.opt)
    dynamic = not p.is_static
    proto = vx.export_module(module, spec, shape, dynamic=dynamic, dcn="plugin" if request.dcn == "plugin" else "onnx",
                             max_size=(p.max[3], p.max[4]) if dynamic else None)
    return _for_precision(proto, request.precision)


def _for_precision(proto, precision: Precision):
    """(the ONNX to build, the nodes a TensorRT 10 fp16 build pins to fp32): TensorRT 11 is
    strongly typed, so its fp16 engines are built from the fp16 ONNX; TensorRT 10 builds the fp32
    ONNX with the FP16 flag."""
    from vsqe.export import onnx as vx

    keep = vx.fp32_node_names(proto)
    if precision == "fp16" and tensorrt_major() >= 11:
        proto = vx.convert_fp16(proto)
    return proto, keep


def require_tensorrt(what: str) -> None:
    """Raises EngineError with one line (the backend's wording) when tensorrt does not import."""
    reason = tensorrt_missing()
    if reason:
        raise EngineError(f"{what} needs TensorRT: {reason}")


def _plugin_for(dcn: DcnPath) -> Path | None:
    """Our plugin library for --dcn plugin (an error if it is not found), None for native."""
    if dcn != "plugin":
        return None
    plugin = plugin_library()
    if plugin is None:
        raise EngineError(f"--dcn plugin: {PLUGIN_LIBRARY_NAME} not found (build it with -DTENSORRT_ROOT, "
                          "or set VSQE_TRT_PLUGIN; docs/tensorrt.md)")
    return plugin


def _build_target(request: EngineRequest) -> tuple[BuildTarget, Path | None]:
    """This machine's build target for `request`, and the plugin library it names (None: native)."""
    plugin = _plugin_for(request.dcn)
    dev = device_info(request.device)
    target = BuildTarget(
        precision=request.precision, dcn=request.dcn, trt_version=tensorrt_version(), gpu_name=dev.name,
        compute_capability=dev.compute_capability, plugin_sha256=file_sha256(plugin) if plugin else None,
        workspace_mb=request.workspace_mb, opt_level=request.opt_level,
    )
    return target, plugin


def ensure_engine(module, spec, request: EngineRequest, *, force: bool = False) -> tuple[Path, EngineKey]:
    """The cached engine for this module and request, built if missing (needs TensorRT + GPU).

    The ONNX is exported only when no earlier export of the same weights, shapes and export code
    is in the cache (see model_fingerprint); its SHA-256 keys the engine."""
    from vsqe.export import onnx as vx

    require_tensorrt(f"building the TensorRT engine of {request.model_name}")
    cache = Path(request.cache_dir)
    major = tensorrt_major()
    fingerprint = model_fingerprint(module, request.profile, request.precision, request.dcn, major)
    index = cache / "onnx" / f"{fingerprint}.json"
    onnx_path: Path | None = None
    try:
        entry = json.loads(index.read_text())
        candidate = Path(entry["onnx"])
        if not force and file_sha256(candidate) == entry["onnx_sha256"]:
            onnx_path, digest, keep, input_name = candidate, entry["onnx_sha256"], entry["fp32_nodes"], entry["input"]
    except (OSError, ValueError, KeyError):
        pass
    if onnx_path is None:
        sys.stderr.write(f"vsqe: exporting {request.model_name} to ONNX for TensorRT\n")
        sys.stderr.flush()
        proto, keep = prepare_onnx(module, spec, request)
        digest = vx.onnx_sha256(proto)
        input_name = vx.io_names(proto)[0]
        onnx_path = vx.save_onnx(proto, onnx_cache_path(cache, request.model_name, digest))
        write_atomic(index, json.dumps({"onnx": str(onnx_path), "onnx_sha256": digest, "fp32_nodes": list(keep),
                                        "input": input_name}).encode())
    target, plugin = _build_target(request)
    key = engine_key(request.model_name, digest, request.profile, target, input_name=input_name)
    if not force:
        hit = cached_engine(cache, key)
        if hit is not None:
            return hit, key
    import torch

    with torch.cuda.device(request.device):
        path = build_engine(onnx_path, key, cache, fp32_nodes=keep, plugin_path=plugin, verbose=request.verbose)
    return path, key


# ---- BasicVSR++: one engine per step graph ----------------------------------------------------
#
# A recurrent model is not built as one unrolled segment graph (tied to one T, growing with it)
# but as its seven static step graphs (export/basicvsrpp_onnx.py), each a plain ONNX file with its
# own engine and cache key; backends/tensorrt.py runs StepLoop over them.


@dataclass(frozen=True)
class StepEngine:
    """One engine of a BasicVSR++ step set: the graph, its I/O names and shapes (graph_io), its
    key, the ONNX file it is built from and its cache files."""

    graph: str
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    key: EngineKey
    onnx: Path
    paths: CachePaths


def step_engine_model(model: str, graph: str) -> str:
    """The model name in a step engine's key and file names: `basicvsrpp.step_forward_1`."""
    return f"{model}.{graph}"


def step_profile(shapes: "StepShapes") -> Profile:
    """The frame shape a step set serves, [N, 1, C, H, W]: the readable profile of every key of
    the set (each graph's own input shapes follow from its ONNX, whose SHA-256 is in the key)."""
    return Profile.static((shapes.batch, 1, shapes.in_channels, shapes.height, shapes.width))


def plan_step_engines(
    model: str,
    shapes: "StepShapes",
    onnx_sha256: Mapping[str, str],
    cache_dir: str | os.PathLike,
    target: BuildTarget,
) -> tuple[StepEngine, ...]:
    """The engines of a step set, in GRAPH_NAMES order (pure: no file, TensorRT or GPU touched).

    `onnx_sha256` maps each graph to the SHA-256 of the ONNX it is built from (fp16 ONNX for
    fp16 on TensorRT 11), which keys its engine like any single-model engine."""
    from vsqe.export.basicvsrpp_onnx import GRAPH_NAMES, graph_io

    missing = [g for g in GRAPH_NAMES if g not in onnx_sha256]
    if missing:
        raise ValueError(f"no ONNX SHA-256 for step graphs {', '.join(missing)}")
    plan = []
    for graph in GRAPH_NAMES:
        inputs, outputs = graph_io(graph, shapes)
        name = step_engine_model(model, graph)
        key = engine_key(name, onnx_sha256[graph], step_profile(shapes), target, input_name=next(iter(inputs)))
        plan.append(StepEngine(graph, inputs, outputs, key, onnx_cache_path(cache_dir, name, onnx_sha256[graph]),
                               cache_paths(cache_dir, key)))
    return tuple(plan)


def step_set_fingerprint(module, shapes: "StepShapes", precision: str, dcn: str, trt_major: int) -> str:
    """model_fingerprint for a step set: also keyed by the step export code."""
    from vsqe.export import basicvsrpp_onnx as bo

    h = hashlib.sha256(model_fingerprint(module, step_profile(shapes), precision, dcn, trt_major).encode())
    h.update(b"|steps|")
    h.update(Path(bo.__file__).read_bytes())
    return h.hexdigest()


def _read_step_index(index: Path) -> dict[str, dict] | None:
    """The step set's ONNX files recorded in `index`, if every one is there and unchanged."""
    from vsqe.export.basicvsrpp_onnx import GRAPH_NAMES

    try:
        graphs = json.loads(index.read_text())["graphs"]
        if all(file_sha256(graphs[g]["onnx"]) == graphs[g]["onnx_sha256"] for g in GRAPH_NAMES):
            return graphs
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _step_onnx(module, shapes: "StepShapes", request: EngineRequest, force: bool) -> dict[str, dict]:
    """graph -> {onnx, onnx_sha256, fp32_nodes}: exported once per weights, size, precision and
    export code (the index in onnx/ finds an earlier export), like ensure_engine's single file."""
    from vsqe.export import basicvsrpp_onnx as bo
    from vsqe.export import onnx as vx

    cache = Path(request.cache_dir)
    fingerprint = step_set_fingerprint(module, shapes, request.precision, request.dcn, tensorrt_major())
    index = cache / "onnx" / f"{fingerprint}.json"
    found = None if force else _read_step_index(index)
    if found is not None:
        return found
    sys.stderr.write(f"vsqe: exporting {request.model_name} to ONNX for TensorRT ({len(bo.GRAPH_NAMES)} step graphs)\n")
    sys.stderr.flush()
    protos = bo.export_steps(module, shapes.height, shapes.width, batch=shapes.batch,
                             dcn="plugin" if request.dcn == "plugin" else "onnx")
    graphs = {}
    for graph, proto in protos.items():
        proto, keep = _for_precision(proto, request.precision)
        digest = vx.onnx_sha256(proto)
        path = vx.save_onnx(proto, onnx_cache_path(cache, step_engine_model(request.model_name, graph), digest))
        graphs[graph] = {"onnx": str(path), "onnx_sha256": digest, "fp32_nodes": list(keep)}
    write_atomic(index, json.dumps({"graphs": graphs}).encode())
    return graphs


def ensure_step_engines(module, request: EngineRequest, *, force: bool = False) -> tuple[StepEngine, ...]:
    """The cached engines of a BasicVSR++ module's step graphs for the frame size of
    request.profile (static; T is ignored: one set serves any segment length), each built if
    missing. Needs TensorRT + GPU."""
    from vsqe.export import basicvsrpp_onnx as bo

    require_tensorrt(f"building the TensorRT engines of {request.model_name}")
    if not request.profile.is_static:
        raise EngineError(f"{request.model_name}: BasicVSR++ step engines have static shapes only")
    n, _, _, h, w = request.profile.opt
    shapes = bo.step_shapes(module, h, w, batch=n)
    graphs = _step_onnx(module, shapes, request, force)
    target, plugin = _build_target(request)
    plan = plan_step_engines(request.model_name, shapes, {g: e["onnx_sha256"] for g, e in graphs.items()},
                             request.cache_dir, target)
    import torch

    for engine in plan:
        if not force and cached_engine(request.cache_dir, engine.key) is not None:
            continue
        with torch.cuda.device(request.device):
            entry = graphs[engine.graph]  # the file the index verified (engine.onnx names the same one)
            build_engine(entry["onnx"], engine.key, request.cache_dir, fp32_nodes=entry["fp32_nodes"],
                         plugin_path=plugin, verbose=request.verbose)
    return plan


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
