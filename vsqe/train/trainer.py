"""`vsqe train`: STDF, MFQEv2-Y and BasicVSR++-Y on the CPU with bf16 autocast + channels_last,
exact resume, validation through the inference path.

MFQEv2 (a PQF model) trains one of its two networks per run, chosen by `pqf_role`: "nonpqf"
(non-PQF frames from their neighbouring PQFs) or "pqf" (PQFs from the previous and next PQF);
samples come from vsqe/train/triplets.py.

BasicVSR++-Y (a recurrent model) trains on clip segments of `frames` consecutive frames
(vsqe/train/sequences.py), with the loss over every output frame; validation streams the dev
clips through the Enhancer's segments.

Checkpoint file format (DIR/last.pt, DIR/best.pt): 64 ASCII hex characters (sha256 of the rest)
then a torch.save payload of plain tensors and primitives (loaded with weights_only=True). A file
whose digest does not match is refused with one line. Writes are atomic (temp file, fsync, rename);
the previous last.pt is kept as prev.pt.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import signal
import sys
import time
import types
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vsqe.backends.allocator import keep_freed_memory
from vsqe.errors import CheckpointError, InputError
from vsqe.train.dataset import PatchSampler
from vsqe.train.dcn import deform_conv2d_gs


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "stdf"
    iters: int = 60000
    batch: int = 16
    patch: int = 64
    lr: float = 5e-4
    lr_min_ratio: float = 0.05
    warmup: int = 300
    grad_clip: float = 1.0
    charbonnier_eps: float = 1e-3
    precision: str = "bf16"
    threads: int = 2
    seed: int = 0
    codec_weights: dict = field(default_factory=lambda: {"x265-ldp": 0.8, "x264": 0.2})
    log_every: int = 25
    stats_every: int = 100
    ckpt_minutes: float = 5.0
    val_every: int = 500
    val_full_every: int = 3000
    val_step: int = 3
    val_clips: tuple = ("city_416x240", "phone_832x480", "birds_640x360")
    init_residual_std: float = 0.002
    # Train with BN after every conv+ReLU, folded away on export (vsqe/train/bn.py says why).
    batchnorm: bool = True
    loss: str = "mse"  # "mse" (what PSNR measures) or "charbonnier"
    # PQF models (MFQEv2): which of the two networks this run trains ("nonpqf" or "pqf").
    pqf_role: str = "nonpqf"
    # Weights a new run starts from (exported, plain keys); "" = fresh init. Only read when the
    # run starts. MFQEv2: PowerVQE starts the PQF network from the trained non-PQF one;
    # BasicVSR++: the full network starts from the per-frame stage (`per_frame`).
    init_from: str = ""
    # PQF models, validation only: the other role's weights, used for the other frame class;
    # "" = those frames stay as decoded (identity), so the figures isolate this run's network.
    partner_weights: str = ""
    # Recurrent models (BasicVSR++): frames per training clip segment (the loss covers all of
    # them), and how many leading frames of each dev clip the subset validation streams.
    frames: int = 7
    val_frames: int = 12
    # Recurrent models, first stage: train the per-frame path alone (feature extraction ->
    # reconstruction -> output, BasicVSRPlusPlus.per_frame), BN in all of it, and the
    # reconstruction's weights for the propagated features held at zero. The exported weights
    # are a full network that ignores its propagation; a second run starts from them
    # (--init-from) and trains the propagation. docs/training.md §8 says why.
    per_frame: bool = False
    # Recurrent and PQF models: for the first `teacher_iters` iterations the targets are this
    # window model's output with its shipped default weights (e.g. "stdf"), not the raw frames.
    # Recurrent: a target the network can fully predict moves it off the identity, where the raw
    # frames' unpredictable part leaves it (docs/training.md §8). PQF models: distillation from
    # a teacher that generalises better to the dev streams (docs/training.md §7, session 12).
    # "" = raw frames throughout.
    teacher: str = ""
    teacher_iters: int = 0
    # Models with SpyNet: hold its weights (those of --init-from, e.g. `vsqe train flow`'s graft)
    # fixed. 64-px patches show SpyNet too little motion to keep what the photometric stage taught
    # its coarse levels, and a fixed SpyNet needs no backward pass (most of an MFQEv2 step).
    freeze_flow: bool = False
    # Models with SpyNet: its last conv of every level zeroed and held (flow exactly 0, no motion
    # compensation). Session 8 measured MFQEv2-Y's QE net doing better on unwarped references than
    # on references warped by a SpyNet that aligns well (docs/training.md §7, session 8).
    zero_flow: bool = False
    # Where the steps run: "cpu", or "cuda" / "cuda:N" (a lent GPU machine; docs/training.md
    # "Training on a lent GPU"). Not part of the run's identity: a run may move between machines
    # on resume (checkpoints hold CPU-loadable tensors). Validation always runs on the CPU, through
    # the inference path.
    device: str = "cpu"
    # > 0: fit the schedule to this many minutes of steps from here: after `FIT_AFTER` steps
    # `iters` becomes the iteration the measured rate reaches by then (the cosine follows). For a
    # lent machine held for a fixed time; a resumed run given it refits from where it is.
    minutes: float = 0.0


# Steps measured before `minutes` sets the schedule's length (the first steps include warm-up).
FIT_AFTER = 60


def train_device(name: str) -> torch.device:
    """The torch device of `TrainConfig.device`, refused in one line when it cannot run here."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r} (cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {name}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name}: torch sees no CUDA GPU here")
    return dev


# What a checkpoint written before an option existed meant by it (resume stays exact).
LEGACY_CONFIG = {"batchnorm": False, "loss": "charbonnier"}
# Options the command line may change on resume (the run's identity comes from the checkpoint).
RESUME_OVERRIDES = ("iters", "val_every", "val_full_every", "ckpt_minutes", "log_every", "stats_every", "threads",
                    "partner_weights", "val_frames", "teacher_iters", "device", "minutes")


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(digest)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if len(data) < 65 or hashlib.sha256(data[64:]).hexdigest().encode() != data[:64]:
        raise CheckpointError(f"refusing checkpoint {path}: sha256 mismatch (truncated or corrupted)")
    try:
        return torch.load(io.BytesIO(data[64:]), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - one line for any unpickling failure
        raise CheckpointError(f"refusing checkpoint {path}: {str(exc).splitlines()[0]}") from None


# ------------------------------------------------------------------------------ model


def _ensure_ops() -> str:
    """Imports vsqe.ops, or installs a torchvision shim when it does not exist (yet)."""
    try:
        import vsqe.ops as ops  # noqa: F401

        if hasattr(ops, "deform_conv2d"):
            return "vsqe.ops"
    except ImportError:
        pass
    import torchvision

    shim = types.ModuleType("vsqe.ops")

    def deform_conv2d(x, offset, mask, weight, bias, stride=1, padding=0, dilation=1):
        return torchvision.ops.deform_conv2d(
            x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
        )

    shim.deform_conv2d = deform_conv2d
    sys.modules["vsqe.ops"] = shim
    return "torchvision shim"


def is_pqf_model(name: str) -> bool:
    from vsqe.models import get_model_spec

    return get_model_spec(name).temporal == "pqf"


def is_recurrent_model(name: str) -> bool:
    from vsqe.models import get_model_spec

    return get_model_spec(name).temporal == "recurrent"


def passthrough(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input frames the output is compared with: the centre frame of a window / triplet
    ([N, C, H, W]), or every frame of a recurrent model's segment ([N, T, C, H, W])."""
    return x if model.radius is None else x[:, model.radius]


def load_plain_weights(model: torch.nn.Module, name: str, path: str) -> None:
    """Exported weights of model `name` into its training-form `model`, key for key; only for
    models whose training keys are the plain architecture's (no training-only BN added)."""
    from vsqe.models import get_model_spec
    from vsqe.models.checkpoint import read_state_dict

    state = get_model_spec(name).convert_state_dict(read_state_dict(path))
    own = model.state_dict()
    if set(state) != set(own):
        raise CheckpointError(f"--init-from {path}: its keys are not model {name!r}'s training keys")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def build_train_model(name: str = "stdf", batchnorm: bool = False, per_frame: bool = False) -> torch.nn.Module:
    """The network as trained: the DCN as grid_sample, and training-only BN where `batchnorm`
    says (recurrent models: in the per-frame parts; with `per_frame`, the first stage, in all of
    the per-frame path)."""
    _ensure_ops()
    from vsqe.models import get_model_spec
    from vsqe.train.bn import add_batchnorm

    spec = get_model_spec(name)
    model = spec.build()
    if spec.temporal == "recurrent":
        _recurrent_for_training(model)
        if batchnorm:
            from vsqe.train import bn

            if per_frame:
                bn.add_batchnorm_per_frame(model, bn.PER_FRAME_STAGE, bn.PER_FRAME_STAGE_OUTPUT)
            else:
                bn.add_batchnorm_per_frame(model)
        return model
    if per_frame:
        raise ValueError(f"per_frame: {name} is not a recurrent model")
    if not hasattr(model, "radius"):
        model.radius = spec.radius  # index of the frame to enhance in the input (MFQEv2: 1)
    if not hasattr(model, "ffnet"):
        # MFQEv2: its dense QE net already has BN (conv -> PReLU -> BN, part of the published
        # architecture, trained as such); the feature convs are linear and SpyNet has no ReLU
        # modules, so training-only BN (bn.py: conv+ReLU pairs) has nothing to add.
        return model
    if batchnorm:
        add_batchnorm(model)
    dc = model.ffnet.deform_conv

    def forward(x, offset, mask):  # training DCN: grid_sample version, fp32
        with torch.autocast(x.device.type, enabled=False):
            return deform_conv2d_gs(x.float(), offset.float(), mask.float(), dc.weight, dc.bias, padding=dc.padding)

    dc.forward = forward
    return model


def _recurrent_for_training(model: torch.nn.Module) -> None:
    """BasicVSR++ for training: every output frame is compared (radius None), 64-px patches are
    allowed (16-px flow inputs), and each alignment's DCN runs as grid_sample in fp32.

    Training-only BN (`batchnorm`, build_train_model) goes into the per-frame parts only
    (bn.add_batchnorm_per_frame says why not into the recurrence); runs from before session 5
    trained without any (their config says batchnorm false)."""
    model.radius = None
    model.min_flow_size = 16
    for align in model.deform_align.values():

        def deform(x, offset, mask, align=align):  # training DCN: grid_sample version, fp32
            with torch.autocast(x.device.type, enabled=False):
                return deform_conv2d_gs(x.float(), offset.float(), mask.float(), align.weight, align.bias,
                                        padding=align.padding)

        align.deform = deform


def zero_propagated_inputs(model: torch.nn.Module) -> None:
    """BasicVSR++'s reconstruction reads cat(spatial, four propagated features): zeroing the
    input conv's weights for the last four makes the network its per-frame path. The per-frame
    stage keeps them zero (its inputs there are zero, so they get no gradient) and the next stage
    starts the propagation from there: at first it changes nothing, then what it learns."""
    conv = model.reconstruction.main[0]
    with torch.no_grad():
        conv.weight[:, model.mid_channels :].zero_()


class TeacherTargets:
    """A window model's outputs as training targets. The model has its shipped default weights
    and runs in bf16 without gradients.

    * Recurrent students (`__call__`): frame t of a segment x [N, T, C, H, W] enhanced from frames
      t-r..t+r, clamped to the segment (a clip's edge is handled the same way by inference).
    * PQF students (`centre`): the centre frame of a context [N, 2r+1, C, P+2m, P+2m] that the
      triplet sampler cut around the patch, cropped back to P: the margin keeps the teacher's own
      border effects out of the target (knowledge distillation: the student learns the teacher's
      estimate, which carries the teacher's 7-frame view and none of the raw frame's noise)."""

    # Context pixels around a PQF student's patch: STDF's reconstruction sees about this far.
    MARGIN = 16

    def __init__(self, name: str) -> None:
        from vsqe.models import build_model

        model, spec, path = build_model(name)
        if spec.temporal != "window":
            raise ValueError(f"teacher {name!r} is not a window model (stdf is)")
        self.model, self.name, self.weights = model, name, path
        self.radius = spec.radius
        self.border = spec.border

    @torch.no_grad()
    def centre(self, context: torch.Tensor, margin: int) -> torch.Tensor:
        with torch.autocast(context.device.type, dtype=torch.bfloat16):
            out = self.model(context)
        h, w = out.shape[-2:]
        return out.float().clamp(0, 1)[..., margin : h - margin, margin : w - margin].contiguous()

    def to(self, device: torch.device) -> None:
        self.model = self.model.to(device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        r = self.radius
        index = torch.tensor([[min(max(i + d, 0), t - 1) for d in range(-r, r + 1)] for i in range(t)], device=x.device)
        windows = x[:, index].flatten(0, 1)  # [N*T, 2r+1, C, H, W]
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.model(windows)
        return out.float().clamp(0, 1).view_as(x)


def zero_flow(spynet: torch.nn.Module) -> None:
    """SpyNet's last conv of every pyramid level zeroed: the flow is exactly 0 at the start
    (training starts from "no motion compensation", not from a random flow field warping the
    references into noise) and grows from there. No official SpyNet weights are available here."""
    for level in spynet.basic_module:
        last = level.basic_module[-1].conv
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)


def init_weights(model: torch.nn.Module) -> None:
    """He-normal convs (signal keeps its scale through the ReLU stacks), zero offsets (the fusion
    starts as a plain 7-frame conv, mask 0.5), and a small final conv (rescaled later from data)."""
    if hasattr(model, "deform_align"):
        # BasicVSR++: the constructor's mmagic init (residual blocks x0.1, zero offset heads:
        # offsets start as the flow, masks at 0.5), SpyNet from zero flow.
        zero_flow(model.spynet)
        return
    if not hasattr(model, "ffnet"):
        init_mfqev2(model)
        return
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    dc = model.ffnet.deform_conv
    torch.nn.init.kaiming_normal_(dc.weight, nonlinearity="relu")
    torch.nn.init.zeros_(dc.bias)
    torch.nn.init.zeros_(model.ffnet.offset_mask.weight)
    torch.nn.init.zeros_(model.ffnet.offset_mask.bias)


def init_mfqev2(model: torch.nn.Module) -> None:
    """MFQEv2 from scratch: He-normal QE convs; SpyNet from zero flow (`zero_flow`: training
    starts as the plain 3-frame fusion)."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and not name.startswith("spynet."):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    zero_flow(model.spynet)


def output_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    """The conv that produces the residual (STDF: qenet.out_conv; MFQEv2: rec_conv.5; BasicVSR++:
    conv_last)."""
    if hasattr(model, "conv_last"):
        return model.conv_last
    return model.qenet.out_conv if hasattr(model, "qenet") else model.rec_conv[-1]


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights in the published architecture's keys (training-only BN folded in)."""
    from vsqe.train.bn import folded_state_dict

    return folded_state_dict(model)


@torch.no_grad()
def scale_residual(model, x: torch.Tensor, target_std: float) -> float:
    res = model(x) - passthrough(model, x)
    std = float(res.std())
    if std > 0:
        output_conv(model).weight.mul_(target_std / std)
        output_conv(model).bias.zero_()
    return std


@torch.no_grad()
def health(model, x: torch.Tensor) -> dict:
    """Residual std (in 8-bit levels) and the fraction of live ReLU outputs per layer (PReLU:
    positive outputs; LeakyReLU, BasicVSR++: positive inputs); models with SpyNet also the mean
    |flow| in pixels (does SpyNet learn motion?)."""
    live: list[float] = []
    flow: list[float] = []
    hooks = []

    def hook(mod, inp, out):
        live.append(float((out > 0).float().mean()))

    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.ReLU, torch.nn.PReLU, torch.nn.LeakyReLU)):
            hooks.append(m.register_forward_hook(hook))
    if hasattr(model, "spynet"):
        hooks.append(model.spynet.register_forward_hook(lambda mod, inp, out: flow.append(float(out.abs().mean()))))
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    res = out - passthrough(model, x)
    return {
        "res_std": float(res.std()) * 255,
        "live_min": min(live) if live else 1.0,
        "live_mean": sum(live) / len(live) if live else 1.0,
        "live": [round(v, 3) for v in live],
        **({"flow_px": sum(flow) / len(flow)} if flow else {}),
    }


def lr_at(it: int, cfg: TrainConfig) -> float:
    if it < cfg.warmup:
        return cfg.lr * (0.01 + 0.99 * it / cfg.warmup)
    frac = min(1.0, (it - cfg.warmup) / max(1, cfg.iters - cfg.warmup))
    lo = cfg.lr * cfg.lr_min_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * frac))


def charbonnier(out: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt((out - y) ** 2 + eps * eps).mean()


# ------------------------------------------------------------------------------ training


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        resume_from: str | None = None,
        refresh_data: bool = False,
        log=print,
        overrides: Collection[str] | None = None,
    ) -> None:
        """`overrides`: on resume, which RESUME_OVERRIDES options `cfg` sets (the command line's
        explicit ones); None = all of them (a Python caller's cfg says what it wants)."""
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = log
        torch.set_num_threads(cfg.threads)
        # Every step allocates the same large activations: glibc keeping freed memory saves their
        # page faults (2 threads: MFQEv2-Y 1.18 -> 1.38 it/s, BasicVSR++-Y 0.81 -> 0.88).
        keep_freed_memory()
        self.ops = _ensure_ops()
        state = None
        if resume or resume_from:
            ck = Path(resume_from) if resume_from else self.out / "last.pt"
            if not resume_from and not ck.is_file() and (self.out / "prev.pt").is_file():
                # Only a run killed by an older vsqe inside its checkpoint rotation gets here.
                ck = self.out / "prev.pt"
                log(f"no last.pt in {self.out}; resuming from prev.pt")
            if ck.is_file():
                state = load_checkpoint(ck)
                saved = state["config"]
                # The run's identity comes from the checkpoint; the command line may change the
                # length, validation and logging cadence, and the thread count.
                changed = RESUME_OVERRIDES if overrides is None else [k for k in RESUME_OVERRIDES if k in overrides]
                merged = {**LEGACY_CONFIG, **saved, **{k: getattr(cfg, k) for k in changed}}
                if "minutes" not in changed:
                    merged["minutes"] = 0.0  # the saved fit is in `iters`; refit only when asked again
                merged["val_clips"] = tuple(merged["val_clips"])
                self.cfg = cfg = TrainConfig(**merged)
                torch.set_num_threads(cfg.threads)
                log(f"resuming from {ck} at iteration {state['iteration']}")
            elif resume_from:
                raise CheckpointError(f"checkpoint not found: {ck}")
            else:
                log(f"no checkpoint in {self.out}; starting a new run")
        torch.manual_seed(cfg.seed)
        # The run trains on a fixed list of clips (out/clips.json) so that a resume is exact even
        # when the data folder has grown; --refresh-data adopts the folder's current clips.
        clips_file = self.out / "clips.json"
        clip_ids = None
        if state is not None and clips_file.is_file() and not refresh_data:
            clip_ids = json.loads(clips_file.read_text())
        self.pqf_model = is_pqf_model(cfg.model)
        self.recurrent = is_recurrent_model(cfg.model)
        if self.recurrent:
            from vsqe.train.sequences import SegmentSampler

            self.sampler = SegmentSampler(
                cfg.data, frames=cfg.frames, patch=cfg.patch, codec_weights=cfg.codec_weights, seed=cfg.seed,
                clip_ids=clip_ids,
            )
        elif self.pqf_model:
            from vsqe.train.triplets import TripletSampler

            from vsqe.models.registry import get_model_spec

            teacher_spec = get_model_spec(cfg.teacher) if cfg.teacher and cfg.teacher_iters > 0 else None
            self.sampler = TripletSampler(
                cfg.data, role=cfg.pqf_role, patch=cfg.patch, codec_weights=cfg.codec_weights, seed=cfg.seed,
                clip_ids=clip_ids,
                context_radius=teacher_spec.radius if teacher_spec else 0,
                context_margin=TeacherTargets.MARGIN if teacher_spec else 0,
                context_border=teacher_spec.border if teacher_spec else "replicate",
            )
        else:
            self.sampler = PatchSampler(
                cfg.data, patch=cfg.patch, codec_weights=cfg.codec_weights, seed=cfg.seed, clip_ids=clip_ids
            )
        if clip_ids is None:
            clips_file.write_text(json.dumps(self.sampler.clip_ids))
            if state is not None:
                log(f"training data: {len(self.sampler.clips)} clips from {cfg.data} (refreshed)")
        if cfg.loss not in ("mse", "charbonnier"):
            raise ValueError(f"unknown loss {cfg.loss!r} (mse or charbonnier)")
        if cfg.per_frame and not self.recurrent:
            raise ValueError(f"per_frame is for recurrent models, not {cfg.model}")
        if cfg.teacher and not (self.recurrent or self.pqf_model):
            raise ValueError(f"teacher is for recurrent and PQF models, not {cfg.model}")
        self.model = build_train_model(cfg.model, batchnorm=cfg.batchnorm, per_frame=cfg.per_frame)
        self.teacher = TeacherTargets(cfg.teacher) if cfg.teacher and cfg.teacher_iters > 0 else None
        self.radius = self.model.radius
        self.model.radius = self.radius
        self.device = train_device(cfg.device)
        if self.teacher is not None:
            self.teacher.to(self.device)
        self.model = self.model.to(self.device)
        if cfg.precision == "bf16":
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.freeze_flow or cfg.zero_flow:
            if not hasattr(self.model, "spynet"):
                raise ValueError(f"freeze_flow / zero_flow: model {cfg.model} has no SpyNet")
            if cfg.freeze_flow and not cfg.zero_flow and state is None and not cfg.init_from:
                raise ValueError("freeze_flow needs --init-from weights whose SpyNet is trained (e.g. `vsqe train flow`)")
            self.model.spynet.requires_grad_(False)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(trainable, lr=cfg.lr, betas=(0.9, 0.999))
        self.iteration = 0
        self.best = {"delta": -1e9, "iteration": -1}
        self.elapsed = 0.0
        # What --init-from's file recorded, read when the run starts: the file may be replaced later
        # (e.g. shipping over vsqe/weights/), and exports and cards must tell what this run began from.
        self.init_origin = ""
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sampler.load_state_dict(state["sampler"])  # the RNG stream continues
            torch.set_rng_state(state["torch_rng"])
            self.iteration = int(state["iteration"])
            self.best = dict(state["best"])
            self.elapsed = float(state.get("elapsed", 0.0))
            self.init_origin = state.get("init_origin", "")
        elif cfg.init_from:
            from vsqe.train.export import weights_origin

            self.init_origin = json.dumps(weights_origin(cfg.init_from))
            self._load_init(cfg.init_from)
            log(f"init: weights from {cfg.init_from}")
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        else:
            init_weights(self.model)
            if cfg.per_frame:
                zero_propagated_inputs(self.model)
            x, _ = self.sampler.batch(cfg.batch)
            x = x.to(self.device)
            std0 = scale_residual(self.model, x, cfg.init_residual_std)
            log(f"init: residual std {std0 * 255:.2f} -> {cfg.init_residual_std * 255:.2f} levels")
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        if cfg.zero_flow and state is None:
            zero_flow(self.model.spynet)  # held there: requires_grad is off (above)
            log("SpyNet's flow set to zero and held (no motion compensation)")
        self._stop = False

    def _load_init(self, path: str) -> None:
        """Starts from exported weights (e.g. the PQF run from the non-PQF run's file): only for
        models whose training keys are the plain architecture's (no training-only BN added)."""
        load_plain_weights(self.model, self.cfg.model, path)

    # -- state
    def state(self) -> dict:
        return {
            "format": "vsqe-train-ckpt/1",
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()},
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "iteration": self.iteration,
            "best": self.best,
            "elapsed": self.elapsed,
            "init_origin": self.init_origin,
        }

    def checkpoint(self) -> None:
        """last.pt <- this state; prev.pt <- the one before. last.pt never goes missing: a kill at
        any point leaves a complete last.pt (old or new) and at worst a stale prev.pt."""
        last = self.out / "last.pt"
        if last.is_file():
            tmp_prev = self.out / "prev.pt.tmp"
            tmp_prev.unlink(missing_ok=True)
            try:
                os.link(last, tmp_prev)  # a second name for the old file: no copy, no gap
            except OSError:
                shutil.copyfile(last, tmp_prev)
            os.replace(tmp_prev, self.out / "prev.pt")
        save_checkpoint(last, self.state())  # temp file + fsync + rename

    # -- one step
    def step(self) -> dict:
        cfg = self.cfg
        # PQF models cut the teacher's input (its window around each patch) only while its targets
        # are used; the samples are the same either way.
        teaching = self.teacher is not None and self.iteration < cfg.teacher_iters
        context = None
        if teaching and self.pqf_model:
            x, y, context = self.sampler.batch_with_context(cfg.batch)
        else:
            x, y = self.sampler.batch(cfg.batch)
        if self.device.type != "cpu":
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        # The loss's targets (the teacher's output for the first teacher_iters iterations, if
        # any); the logged figures stay against the raw frames.
        target = y
        if teaching:
            if context is not None:
                target = self.teacher.centre(context.to(self.device), TeacherTargets.MARGIN)
            else:
                target = self.teacher(x)
        lr = lr_at(self.iteration, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        forward = self.model.per_frame if cfg.per_frame else self.model
        if cfg.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = forward(x)
        else:
            out = forward(x)
        if cfg.loss == "mse":
            loss = F.mse_loss(out.float(), target)
        else:
            loss = charbonnier(out.float(), target, cfg.charbonnier_eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.opt.param_groups[0]["params"], cfg.grad_clip))
        if not math.isfinite(gnorm):
            self.opt.zero_grad(set_to_none=True)  # skip a non-finite step
        else:
            self.opt.step()
        self.iteration += 1
        with torch.no_grad():
            mse_out = float(F.mse_loss(out.float().clamp(0, 1), y))
            mse_in = float(F.mse_loss(passthrough(self.model, x), y))
        return {"loss": float(loss.detach()), "lr": lr, "gnorm": gnorm, "mse_in": mse_in, "mse_out": mse_out, "x": x}

    # -- validation through the inference path
    def validate(self, full: bool) -> dict:
        from safetensors.torch import save_file

        from vsqe.pipeline.enhancer import Enhancer
        from vsqe.train.validate import evaluate, summarize

        tmp = self.out / "val_weights.safetensors"
        sd = {k: v.detach().float().cpu().contiguous() for k, v in plain_state_dict(self.model).items()}
        save_file(sd, str(tmp))
        t0 = time.time()
        if self.pqf_model:
            res = self._validate_pqf(str(tmp), full)
        elif self.recurrent:
            from vsqe.train.validate import evaluate_recurrent

            # Recurrent: every frame of a clip depends on the whole segment, so the subset streams
            # the first val_frames frames of each clip (measuring all of them), the full pass all.
            enh = Enhancer(model=self.cfg.model, weights=str(tmp), backend="torch-fp32", threads=self.cfg.threads)
            res = evaluate_recurrent(enh, clips=tuple(self.cfg.val_clips), max_frames=None if full else self.cfg.val_frames)
        else:
            enh = Enhancer(model=self.cfg.model, weights=str(tmp), backend="torch-fp32", threads=self.cfg.threads)
            res = evaluate(enh, clips=tuple(self.cfg.val_clips), frame_step=1 if full else self.cfg.val_step)
        s = summarize(res)
        s["seconds"] = round(time.time() - t0, 1)
        s["full"] = full
        torch.set_num_threads(self.cfg.threads)
        return s

    def _validate_pqf(self, trained: str, full: bool) -> list:
        """The PQF pipeline on the dev clips: this run's network on its frame class; the other
        class through `partner_weights`, or left as decoded when there are none yet."""
        from vsqe.pipeline.enhancer import Enhancer
        from vsqe.train.validate import evaluate_pqf

        cfg = self.cfg
        partner = cfg.partner_weights or None
        own_pqf = cfg.pqf_role == "pqf"
        nonpqf_w = (partner or trained) if own_pqf else trained
        pqf_w = trained if own_pqf else (partner or trained)
        enh = Enhancer(model=cfg.model, weights=nonpqf_w, pqf_weights=pqf_w, backend="torch-fp32", threads=cfg.threads)
        enhance = ("pqf", "nonpqf") if partner else (cfg.pqf_role,)
        return evaluate_pqf(enh, clips=tuple(cfg.val_clips), frame_step=1 if full else cfg.val_step,
                            enhance=enhance, all_of="pqf" if own_pqf and not full else None)

    def _log_val(self, s: dict) -> None:
        path = self.out / "val.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            # PQF models add the mean gain on PQFs and on non-PQFs (frames left as decoded count
            # in the class means as 0 gain only when they are this class: see validate.py).
            extra = ["pqf", "nonpqf"] if self.pqf_model else []
            if new:
                w.writerow(["iteration", "hours", "kind", "delta_mean", "city", "phone", "birds", "worst_class", "worst_frame", *extra])
            pc = s["per_clip"]
            w.writerow([
                self.iteration, round(self.elapsed / 3600, 3), "full" if s["full"] else "subset", s["delta_mean"],
                pc.get("city_416x240", ""), pc.get("phone_832x480", ""), pc.get("birds_640x360", ""),
                s["worst_class"], s["worst_frame"], *[s.get("pqf_class", {}).get(k, "") for k in extra],
            ])
        with open(self.out / "val.jsonl", "a") as f:
            f.write(json.dumps({"iteration": self.iteration, **s}) + "\n")
        try:
            plot_curves(self.out)
        except Exception as exc:  # noqa: BLE001 - a plot must never stop training
            self.log(f"plot failed: {exc}")

    def run(self) -> None:
        cfg = self.cfg
        self.model.train()  # BN (when on) normalises with batch statistics while training
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        train_csv = self.out / "train.csv"
        new = not train_csv.is_file()
        fcsv = open(train_csv, "a", newline="")
        wcsv = csv.writer(fcsv)
        if new:
            wcsv.writerow(["iteration", "hours", "loss", "lr", "gnorm", "psnr_in", "psnr_out", "it_per_s", "res_std", "live_min", "live_mean"])
        last_ckpt = time.time()
        t_mark, it_mark = time.time(), self.iteration
        fit_at, t_start = (self.iteration + FIT_AFTER, time.time()) if cfg.minutes > 0 else (None, 0.0)
        if fit_at is not None:
            cfg.iters = max(cfg.iters, fit_at + 1)  # until the fit (the warm-up holds the lr meanwhile)
        acc = {"loss": 0.0, "gnorm": 0.0, "mse_in": 0.0, "mse_out": 0.0, "n": 0}
        self.log(
            f"training {cfg.model}: batch {cfg.batch} x {cfg.patch}px, lr {cfg.lr}, {cfg.precision}, "
            f"{len(self.sampler.clips)} clips, DCN for validation: {self.ops}"
            + (", per-frame path only (stage 1)" if cfg.per_frame else "")
            + (f", targets from {self.teacher.name} ({self.teacher.weights}) until iteration {cfg.teacher_iters}"
               if self.teacher is not None else "")
        )
        try:
            while self.iteration < cfg.iters and not self._stop:
                t0 = time.time()
                r = self.step()
                self.elapsed += time.time() - t0
                for k in ("loss", "gnorm", "mse_in", "mse_out"):
                    acc[k] += r[k]
                acc["n"] += 1
                if self.iteration == fit_at:
                    self._fit_schedule(fit_at, t_start)
                hl = None
                if self.iteration % cfg.stats_every == 0 or self.iteration <= 1:
                    hl = health(self.model, r["x"][: min(4, len(r["x"]))])
                if self.iteration % cfg.log_every == 0 or hl is not None:
                    n = acc["n"]
                    now = time.time()
                    ips = (self.iteration - it_mark) / max(1e-6, now - t_mark)
                    pin = 10 * math.log10(1 / max(acc["mse_in"] / n, 1e-12))
                    pout = 10 * math.log10(1 / max(acc["mse_out"] / n, 1e-12))
                    row = [self.iteration, round(self.elapsed / 3600, 4), round(acc["loss"] / n, 6), f"{r['lr']:.3g}",
                           round(acc["gnorm"] / n, 4), round(pin, 3), round(pout, 3), round(ips, 3)]
                    row += [round(hl["res_std"], 3), round(hl["live_min"], 3), round(hl["live_mean"], 3)] if hl else ["", "", ""]
                    wcsv.writerow(row)
                    fcsv.flush()
                    msg = (f"it {self.iteration} loss {acc['loss'] / n:.5f} lr {r['lr']:.2e} gnorm {acc['gnorm'] / n:.3f} "
                           f"patch dPSNR {pout - pin:+.3f} ({pin:.2f}->{pout:.2f}) {ips:.2f} it/s")
                    if hl:
                        msg += f" | res_std {hl['res_std']:.2f} lv, live relu min {hl['live_min']:.2f} mean {hl['live_mean']:.2f}"
                        if "flow_px" in hl:
                            msg += f", |flow| {hl['flow_px']:.3f} px"
                        if self.iteration % (cfg.stats_every * 10) == 0 or self.iteration <= 1:
                            msg += f" per layer {hl['live']}"
                    self.log(msg)
                    acc = {"loss": 0.0, "gnorm": 0.0, "mse_in": 0.0, "mse_out": 0.0, "n": 0}
                    t_mark, it_mark = now, self.iteration
                do_full = cfg.val_full_every > 0 and self.iteration % cfg.val_full_every == 0
                if do_full or (cfg.val_every > 0 and self.iteration % cfg.val_every == 0):
                    s = self.validate(full=do_full)
                    self._log_val(s)
                    tag = "full" if do_full else (f"first {cfg.val_frames} frames" if self.recurrent else f"every {cfg.val_step}rd frame")
                    self.log(f"val it {self.iteration} ({tag}, {s['seconds']}s): dY-PSNR {s['delta_mean']:+.4f} dB "
                             f"{s['per_clip']} worst class {s['worst_class']:+.4f} worst frame {s['worst_frame']:+.4f}"
                             + (f" PQF {_db(s['pqf_class']['pqf'])} non-PQF {_db(s['pqf_class']['nonpqf'])}" if "pqf_class" in s else ""))
                    if not do_full and s["delta_mean"] > self.best["delta"]:
                        self.best = {"delta": s["delta_mean"], "iteration": self.iteration, **{k: s[k] for k in ("per_clip", "worst_class", "worst_frame")}}
                        save_checkpoint(self.out / "best.pt", self.state())
                        self.log(f"new best at {self.iteration}: {s['delta_mean']:+.4f} dB")
                    self.checkpoint()
                    last_ckpt = time.time()
                    t_mark, it_mark = time.time(), self.iteration
                elif time.time() - last_ckpt > cfg.ckpt_minutes * 60:
                    self.checkpoint()
                    last_ckpt = time.time()
        finally:
            fcsv.close()
        self.checkpoint()
        self.log(f"stopped at iteration {self.iteration} ({'signal' if self._stop else 'done'}); checkpoint {self.out / 'last.pt'}")

    def _fit_schedule(self, fit_at: int, t_start: float) -> None:
        """`minutes`: the schedule's length from the rate of the first FIT_AFTER steps."""
        cfg = self.cfg
        elapsed = time.time() - t_start
        rate = FIT_AFTER / max(elapsed, 1e-6)
        iters = fit_at - FIT_AFTER + int(rate * cfg.minutes * 60)
        self.cfg.iters = max(iters, fit_at + 1)
        # config.json tells the schedule the run follows (cards read it where only an export came back)
        (self.out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=1))
        self.log(f"schedule fitted to {cfg.minutes:g} min at {rate:.2f} it/s: {self.cfg.iters} iterations")

    def _on_signal(self, signum, frame) -> None:  # finish the current step, checkpoint, exit
        self._stop = True


def _db(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def plot_curves(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(out / "train.csv")))
    vals = list(csv.DictReader(open(out / "val.csv"))) if (out / "val.csv").is_file() else []
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    it = [int(r["iteration"]) for r in rows]
    ax[0].plot(it, [float(r["psnr_out"]) - float(r["psnr_in"]) for r in rows], lw=0.6)
    ax[0].set_title("training patches: dPSNR (dB)")
    ax[0].axhline(0, color="k", lw=0.5)
    st = [(int(r["iteration"]), float(r["res_std"]), float(r["live_min"])) for r in rows if r["res_std"]]
    if st:
        ax[1].plot([s[0] for s in st], [s[1] for s in st], label="residual std (levels)")
        ax1b = ax[1].twinx()
        ax1b.plot([s[0] for s in st], [s[2] for s in st], color="r", label="min live ReLU fraction")
        ax1b.set_ylim(0, 1)
        ax[1].set_title("residual std (blue), min live ReLU (red)")
    for kind, mk in (("subset", "o-"), ("full", "s--")):
        vv = [v for v in vals if v["kind"] == kind]
        if vv:
            x = [int(v["iteration"]) for v in vv]
            ax[2].plot(x, [float(v["delta_mean"]) for v in vv], mk, label=f"mean ({kind})")
            for c in ("city", "phone", "birds"):
                if all(v[c] for v in vv):  # a run validating on fewer clips leaves the others empty
                    ax[2].plot(x, [float(v[c]) for v in vv], mk, lw=0.6, ms=2, alpha=0.6, label=f"{c} ({kind})")
    ax[2].axhline(0, color="k", lw=0.5)
    ax[2].axhline(0.4, color="g", lw=0.5, ls=":")
    ax[2].set_title("dev HM QP37: dY-PSNR (dB)")
    ax[2].legend(fontsize=6)
    for a in ax:
        a.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(out / "curves.png.tmp.png", dpi=90)
    plt.close(fig)
    os.replace(out / "curves.png.tmp.png", out / "curves.png")
