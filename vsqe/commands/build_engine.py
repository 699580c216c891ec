"""`vsqe build-engine` (a TensorRT engine into the cache) and `vsqe export-onnx` (the ONNX file).

    vsqe export-onnx --model stdf --shape 1280x720 stdf.onnx [--static] [--fp16] [--dcn plugin] [--check]
    vsqe export-onnx --model basicvsrpp --shape 720x720 DIR [--whole-segment --frames T]   (per-step graphs)
    vsqe build-engine --model stdf --shape 1280x720 [--fp16] [--dcn native|plugin]
                      [--min 64x64 --max 1920x1088] [--workspace MB] [--cache DIR]
    vsqe build-engine --model basicvsrpp --shape 720x720   (seven per-step engines, static)

build-engine prints the engine's path on stdout (one path per line for BasicVSR++'s step
engines; nothing else goes there); logs and progress go to stderr. Defaults come from
trt/profiles.toml. See docs/tensorrt.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vsqe.commands.arguments import positive_int

log = logging.getLogger("vsqe.build_engine")

PROFILES = Path(__file__).resolve().parents[2] / "trt" / "profiles.toml"


def _size(text: str) -> tuple[int, int]:
    from vsqe.export.engine import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="stdf", help="registered model name (default: %(default)s)")
    p.add_argument("--weights", metavar="FILE", help="checkpoint to load (default: the model's shipped weights)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="export random weights when the model has no trained default (tests and demos only)")
    p.add_argument("--shape", type=_size, metavar="WxH", help="(optimisation) input size; default from trt/profiles.toml")
    p.add_argument("--frames", type=positive_int, metavar="T",
                   help="export-onnx, recurrent models: frames of a --whole-segment export and of --check")
    p.add_argument("--fp16", action="store_true", default=None, help="fp16 (DCN, offsets, flows, last conv stay fp32)")
    p.add_argument("--fp32", dest="fp16", action="store_false", help="fp32 (overrides the profile's precision)")


def register(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser(
        "build-engine",
        help="build (or find) the TensorRT engine of a model in the engine cache",
        description=(
            "Exports the model to ONNX and builds a TensorRT engine into the cache, keyed by the ONNX\n"
            "hash, shapes, precision, DCN path, TensorRT version, GPU and plugin hash (a cached engine\n"
            "is reused). Prints the engine path on stdout. Needs TensorRT 10 or 11 and an NVIDIA GPU."
        ),
    )
    _model_options(b)
    b.add_argument("--min", type=_size, metavar="WxH", help="smallest input of a dynamic-shape engine")
    b.add_argument("--max", type=_size, metavar="WxH", help="largest input of a dynamic-shape engine")
    b.add_argument("--static", action="store_true", help="static shape even if the profile has min/max")
    b.add_argument("--dcn", choices=["native", "plugin"], help="DCN via TensorRT's DeformConv import or our plugin")
    b.add_argument("--workspace", type=positive_int, metavar="MB", help="builder workspace limit (MiB)")
    b.add_argument("--opt-level", type=int, default=3, choices=range(6), metavar="0-5",
                   help="builder optimisation level (default: %(default)s)")
    b.add_argument("--cache", metavar="DIR", help="engine cache (default: $VSQE_TRT_CACHE or ~/.cache/vsqe/trt)")
    b.add_argument("--device", type=int, default=0, help="CUDA device (default: %(default)s)")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached engine matches")
    b.add_argument("--trt-verbose", action="store_true", help="TensorRT's informational messages on stderr")
    b.set_defaults(handler=build_engine_command)

    e = subparsers.add_parser(
        "export-onnx",
        help="export a model to ONNX (DCN as ONNX DeformConv or as the vsqe TensorRT plugin)",
        description=(
            "Writes the model as ONNX: input 'input' [N, T, C, H, W] float32 in [0, 1], output 'output'.\n"
            "H and W are dynamic for window models unless --static. --check compares ONNX Runtime with\n"
            "torch on a random input."
        ),
    )
    e.add_argument("output", help="the .onnx file to write (replaced only when complete); BasicVSR++: a folder of step graphs")
    _model_options(e)
    e.add_argument("--static", action="store_true", help="fixed H and W")
    e.add_argument("--dcn", choices=["onnx", "plugin"], default="onnx",
                   help="DCN as ONNX DeformConv (default) or as the VsqeDeformConv2d plugin node")
    e.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    e.add_argument("--check", action="store_true", help="run it in ONNX Runtime and compare with torch")
    e.add_argument("--whole-segment", action="store_true",
                   help="BasicVSR++: one graph of a whole --frames segment instead of the per-step graphs")
    e.set_defaults(handler=export_onnx_command)


def load_profiles(path: Path = PROFILES) -> dict[str, dict]:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}


def _profile_defaults(model: str) -> dict:
    return load_profiles().get(model, {})


def _resolve(args: argparse.Namespace):
    from vsqe.errors import ModelError
    from vsqe.export.engine import parse_size
    from vsqe.models import get_model_spec

    spec = get_model_spec(args.model)
    prof = _profile_defaults(args.model)
    shape = args.shape or (parse_size(prof["shape"]) if "shape" in prof else (720, 1280))
    frames = args.frames or prof.get("frames")
    if frames is not None and spec.temporal != "recurrent":
        raise ModelError(f"--frames is for recurrent models; {args.model!r} takes {spec.window} frames")
    fp16 = args.fp16 if args.fp16 is not None else prof.get("precision") == "fp16"
    return spec, prof, shape, frames, fp16


def export_onnx_command(args: argparse.Namespace) -> int:
    from vsqe.errors import ModelError
    from vsqe.export import onnx as vx

    spec, _, (h, w), frames, _ = _resolve(args)
    fp16 = bool(args.fp16)  # the profile's precision is for engines; an ONNX file is fp32 unless asked
    if not args.whole_segment and _has_step_export(spec):
        return _export_steps_command(args, h, w, fp16)
    try:
        proto, spec, shape = vx.export_model(
            args.model, h, w, weights=args.weights, allow_untrained=args.allow_untrained, frames=frames,
            dynamic=False if args.static else None, dcn=args.dcn, exporter=args.exporter, fp16=bool(fp16),
        )
    except vx.ExportError as exc:
        raise ModelError(str(exc)) from None
    path = vx.save_onnx(proto, args.output)
    sys.stderr.write(
        f"vsqe: wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(proto.graph.node)} nodes, "
        f"DCN as {'DeformConv' if args.dcn == 'onnx' else vx.PLUGIN_NAME}, "
        f"{'dynamic' if vx.has_dynamic_hw(proto) else 'static'} H/W, {'fp16' if fp16 else 'fp32'})\n"
    )
    if args.check:
        _check(args, proto, spec, shape, fp16)
    return 0


def _has_step_export(spec) -> bool:
    """BasicVSR++ models export per step (vsqe/export/basicvsrpp_onnx.py)."""
    from vsqe.models.basicvsrpp import BasicVSRPlusPlus

    return getattr(spec.build, "func", spec.build) is BasicVSRPlusPlus


def _export_steps_command(args: argparse.Namespace, h: int, w: int, fp16: bool) -> int:
    """BasicVSR++: the per-step graphs and a manifest into the folder `args.output`."""
    from vsqe.errors import ModelError
    from vsqe.export import basicvsrpp_onnx as bo
    from vsqe.export import onnx as vx

    try:
        module, shapes, graphs = bo.export_model_steps(
            args.model, h, w, weights=args.weights, allow_untrained=args.allow_untrained, dcn=args.dcn, fp16=fp16)
    except vx.ExportError as exc:
        raise ModelError(str(exc)) from None
    manifest = bo.save_steps(graphs, args.output, model=args.model, shapes=shapes, dcn=args.dcn, fp16=fp16)
    nodes = sum(len(g.graph.node) for g in graphs.values())
    sys.stderr.write(
        f"vsqe: wrote {len(graphs)} step graphs + {manifest.name} to {manifest.parent} ({nodes} nodes, "
        f"DCN as {'DeformConv' if args.dcn == 'onnx' else vx.PLUGIN_NAME}, static {shapes.width}x{shapes.height}, "
        f"{'fp16' if fp16 else 'fp32'})\n"
    )
    if args.check:
        _check_steps(module, shapes, graphs, args.frames or 4, fp16)
    return 0


def _check_steps(module, shapes, graphs, frames: int, fp16: bool) -> None:
    import torch

    from vsqe.errors import ModelError
    from vsqe.export import basicvsrpp_onnx as bo

    x = torch.rand(shapes.batch, frames, shapes.in_channels, shapes.height, shapes.width,
                   generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = module(x)
    err = float((bo.StepRunner(graphs, shapes)(x) - ref).abs().max())
    bound = 1e-2 if fp16 else 1e-4
    sys.stderr.write(f"vsqe: ONNX Runtime (step graphs, {frames} frames) vs torch at {shapes.width}x{shapes.height}: "
                     f"max abs diff {err:.3g} ({'ok' if err <= bound else 'TOO LARGE'}, bound {bound})\n")
    if err > bound:
        raise ModelError(f"ONNX Runtime output differs from torch by {err:.3g} (> {bound})")


def _check(args, proto, spec, shape, fp16: bool) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from vsqe.export import onnx as vx
    from vsqe.models import build_model

    module, _, _ = build_model(args.model, args.weights, require_weights=not args.allow_untrained)
    if args.dcn == "plugin":
        proto = vx.plugin_to_deformconv(proto)
    x = torch.rand(shape.as_tuple(), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = module(x).numpy()
    sess = ort.InferenceSession(vx.model_bytes(proto), providers=["CPUExecutionProvider"])
    out = sess.run(None, {vx.io_names(proto)[0]: x.numpy()})[0]
    err = float(np.abs(out - ref).max())
    bound = 1e-2 if fp16 else 1e-4
    sys.stderr.write(f"vsqe: ONNX Runtime vs torch at {shape.width}x{shape.height}: max abs diff {err:.3g} "
                     f"({'ok' if err <= bound else 'TOO LARGE'}, bound {bound})\n")
    if err > bound:
        from vsqe.errors import ModelError

        raise ModelError(f"ONNX Runtime output differs from torch by {err:.3g} (> {bound})")


def build_engine_command(args: argparse.Namespace) -> int:
    from vsqe.backends.tensorrt import unavailable_reason
    from vsqe.errors import BackendError, ModelError
    from vsqe.export import onnx as vx
    from vsqe.export.engine import EngineError, EngineRequest, Profile, default_cache_dir, ensure_engine, parse_size
    from vsqe.models import build_model

    spec, prof, (h, w), frames, fp16 = _resolve(args)
    steps = _has_step_export(spec)
    if steps and args.frames is not None:
        raise ModelError(f"--frames does not apply to {args.model!r}: "
                         "its per-step engines serve segments of any length")
    opt = vx.example_shape(spec, h, w, 1 if steps else frames)
    # The profile's dynamic range applies only to the profile's own shape: --shape alone is static.
    use_prof = args.shape is None and not args.static
    lo = args.min or (parse_size(prof["min"]) if "min" in prof and use_prof else None)
    hi = args.max or (parse_size(prof["max"]) if "max" in prof and use_prof else None)
    if args.static:
        lo = hi = None
    if (lo is None) != (hi is None):
        raise ModelError("give both --min and --max (or neither, for a static engine)")
    if lo is not None and spec.temporal == "recurrent":
        raise ModelError(f"model {args.model!r} exports with static shapes only: drop --min/--max (or use --static)")
    if lo is not None:
        mn = vx.example_shape(spec, lo[0], lo[1], frames)
        mx = vx.example_shape(spec, hi[0], hi[1], frames)
        profile = Profile(mn.as_tuple(), opt.as_tuple(), mx.as_tuple())
    else:
        profile = Profile.static(opt.as_tuple())
    try:
        profile.validate()
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    dcn = args.dcn or prof.get("dcn", "native")
    reason = unavailable_reason("vsqe build-engine")
    if reason:
        raise BackendError(reason)
    module, spec, _ = build_model(args.model, args.weights, require_weights=not args.allow_untrained)
    request = EngineRequest(
        model_name=args.model, profile=profile, precision="fp16" if fp16 else "fp32", dcn=dcn,
        workspace_mb=args.workspace or prof.get("workspace"), opt_level=args.opt_level,
        cache_dir=Path(args.cache) if args.cache else default_cache_dir(), device=args.device,
        verbose=args.trt_verbose,
    )
    if steps:
        return _build_step_engines(module, request, args.force)
    try:
        path, key = ensure_engine(module, spec, request, force=args.force)
    except (EngineError, vx.ExportError) as exc:
        raise BackendError(str(exc)) from None
    sys.stderr.write(f"vsqe: engine {key.profile.label()} {key.precision} dcn={key.dcn} "
                     f"TensorRT {key.trt_version} {key.gpu_name}: {path}\n")
    sys.stdout.write(f"{path}\n")
    return 0


def _build_step_engines(module, request, force: bool) -> int:
    """BasicVSR++: one engine per step graph (export/engine.py's ensure_step_engines); their
    paths on stdout, one per line, in graph order."""
    from vsqe.errors import BackendError
    from vsqe.export import onnx as vx
    from vsqe.export.engine import EngineError, ensure_step_engines

    try:
        plan = ensure_step_engines(module, request, force=force)
    except (EngineError, vx.ExportError) as exc:
        raise BackendError(str(exc)) from None
    key = plan[0].key
    sys.stderr.write(f"vsqe: {len(plan)} step engines {key.profile.label()} {key.precision} dcn={key.dcn} "
                     f"TensorRT {key.trt_version} {key.gpu_name} in {plan[0].paths.engine.parent}\n")
    sys.stdout.write("".join(f"{e.paths.engine}\n" for e in plan))
    return 0
