"""`vsqe train flow`: teaches a model's SpyNet to align frames, by itself, before the model trains.

Why a stage of its own: no official SpyNet weights can be had here, so vsqe's SpyNet starts from
zero flow (`trainer.zero_flow`). Trained only through the enhancement loss it hardly moves: the
QE network can ignore its references, so the flow gets a weak gradient. Shipped MFQEv2-Y round 3
measured on the dev HM non-PQFs: +0.4327 dB with its flow, +0.4332 with the flow set to zero and
+0.4186 with the frame itself as both references. STDF's DCN window is worth +0.056 dB over the
same single-frame test. So MFQEv2-Y's motion compensation did nothing.

The objective is the self-supervised one of unsupervised optical flow (photometric consistency),
with the inputs inference gives SpyNet. The flow is computed from the *decoded* frames (centre ->
reference). It warps the *raw* reference, which is compared with the raw centre: a Charbonnier
penalty over the pixels that the warp samples from inside the patch, plus a small edge-aware
first-order smoothness term. The raw frames make the target free of coding noise; the decoded
inputs make it the flow inference will compute. References lie 1..`max_distance` frames away on
either side (MFQEv2's PQF references are 1-4 frames away).

Validation (`evaluate_flow`): on the dev HM streams, the PQF scheduler's own pairs (each measured
frame with its left and right references), full frames. The score is the Y-PSNR of the warped raw
reference against the raw frame, minus that of the unwarped one, in dB (16-px border excluded).
Zero flow scores 0.

The run's checkpoint holds the SpyNet alone; `graft` writes the base model's weights with the
trained `spynet.*` in their place, and the next training run starts from that file (`--init-from`).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import signal
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsqe.errors import CheckpointError, InputError
from vsqe.models.spynet import SpyNet, as_spynet_input, flow_warp
from vsqe.train.dataset import PatchSampler

FLOW_CKPT_FORMAT = "vsqe-flow-ckpt/1"
ALIGNMENT_METRIC = "pooled-squared-error"  # evaluate_flow's figure (best["metric"] in checkpoints)


@dataclass
class FlowConfig:
    data: str
    out: str
    base: str  # weights whose spynet.* start the run and receive the result (graft)
    model: str = "mfqev2-y"
    iters: int = 3000
    batch: int = 8
    patch: int = 128
    lr: float = 1e-4
    lr_min_ratio: float = 0.05
    warmup: int = 200
    grad_clip: float = 1.0
    charbonnier_eps: float = 1e-3
    smooth: float = 0.02  # weight of the edge-aware first-order smoothness of the flow (px per px)
    max_distance: int = 4
    precision: str = "bf16"
    threads: int = 2
    seed: int = 0
    codec_weights: dict = field(default_factory=lambda: {"x265-ldp": 0.8, "x264": 0.2})
    log_every: int = 25
    ckpt_minutes: float = 5.0
    val_every: int = 500
    val_step: int = 3
    device: str = "cpu"  # as TrainConfig.device: the steps only; validation runs on the CPU


class FlowPairSampler(PatchSampler):
    """(decoded [2, P, P], raw [2, P, P]) uint8: index 0 the frame, 1 a reference 1..max_distance
    frames before or after it, the same patch of both. The reference is redrawn until it lies in
    the clip; flips and transpose apply to all four planes alike."""

    def __init__(self, data_dir: str | Path, max_distance: int = 4, **kwargs) -> None:
        kwargs.setdefault("radius", 0)
        super().__init__(data_dir, **kwargs)
        if max_distance < 1:
            raise ValueError(f"max_distance must be at least 1, got {max_distance}")
        self.max_distance = max_distance

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        p = self.patch
        for _ in range(20):
            clip, raw, k, enc = self._draw_encode()
            t_len, h, w = raw.shape
            t = int(rng.integers(t_len))
            d = int(rng.integers(1, self.max_distance + 1)) * (1 if rng.random() < 0.5 else -1)
            r = t + d if 0 <= t + d < t_len else t - d
            r = min(max(r, 0), t_len - 1)
            y0, x0 = self._draw_origin(h, w)
            target = np.asarray(raw[t, y0 : y0 + p, x0 : x0 + p])
            if r != t and self._keep(target, np.asarray(enc[t, y0 : y0 + p, x0 : x0 + p])):
                break
        dec = np.stack([np.asarray(enc[i, y0 : y0 + p, x0 : x0 + p]) for i in (t, r)])
        ref = np.stack([np.asarray(raw[i, y0 : y0 + p, x0 : x0 + p]) for i in (t, r)])
        self.last = (clip["id"], k, t, r)
        return self._flip_stacks(dec, ref)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """decoded [n, 2, 1, P, P], raw [n, 2, 1, P, P], float in [0, 1]."""
        return self._stacks_batch(n)


def photometric_loss(
    flow: torch.Tensor, raw_frame: torch.Tensor, raw_ref: torch.Tensor, eps: float, smooth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, warped raw reference). Charbonnier over the pixels whose sample point lies inside
    the patch (the rest has no content to compare), plus `smooth` x the edge-aware first-order
    smoothness of the flow (weight exp(-50 |grad I|): flow edges are free where the image has one)."""
    warped = flow_warp(raw_ref, flow)
    inside = flow_warp(torch.ones_like(raw_ref), flow).detach() > 0.999
    err = torch.sqrt((warped - raw_frame) ** 2 + eps * eps)
    photo = (err * inside).sum() / inside.sum().clamp(min=1)
    gx_i = (raw_frame[..., :, 1:] - raw_frame[..., :, :-1]).abs()
    gy_i = (raw_frame[..., 1:, :] - raw_frame[..., :-1, :]).abs()
    gx_f = (flow[..., :, 1:] - flow[..., :, :-1]).abs().mean(1, keepdim=True)
    gy_f = (flow[..., 1:, :] - flow[..., :-1, :]).abs().mean(1, keepdim=True)
    sm = (torch.exp(-50 * gx_i) * gx_f).mean() + (torch.exp(-50 * gy_i) * gy_f).mean()
    return photo + smooth * sm, warped


def spynet_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `spynet.*` entries of a model state dict, without the prefix."""
    sub = {k[len("spynet.") :]: v for k, v in state.items() if k.startswith("spynet.")}
    if not sub:
        raise CheckpointError("the base weights have no spynet.* keys (a model that aligns with SpyNet is needed)")
    return sub


def read_base(path: str | Path, model: str) -> dict[str, torch.Tensor]:
    """The base weights in the model's own key layout (official checkpoints converted)."""
    from vsqe.models import get_model_spec
    from vsqe.models.checkpoint import read_state_dict

    return get_model_spec(model).convert_state_dict(read_state_dict(str(path)))


def graft(
    base: str | Path, model: str, spynet_state: dict[str, torch.Tensor], out: str | Path, record: dict | None = None
) -> None:
    """Writes `base`'s weights with spynet.* replaced by `spynet_state` (safetensors, atomic).
    `record`: metadata telling the flow stage (a model card lists it among the rounds)."""
    from safetensors.torch import save_file

    state = dict(read_base(base, model))
    own = spynet_of(state)
    if set(own) != set(spynet_state):
        raise CheckpointError(f"{base}: its spynet keys do not match the trained SpyNet's")
    for k, v in spynet_state.items():
        state[f"spynet.{k}"] = v.detach().to(state[f"spynet.{k}"].dtype).contiguous()
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    meta = {"vsqe_model": model, "flow_stage": "1", **{k: v if isinstance(v, str) else json.dumps(v)
                                                         for k, v in (record or {}).items()}}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    tmp.replace(out)


def graft_checkpoint(state: dict, out: str | Path, into: str | Path | None = None) -> None:
    """A `vsqe train flow` checkpoint's SpyNet grafted into its base weights, with the record of
    the stage (`vsqe train export` calls this for flow checkpoints). `into`: other weights of the
    same model to receive it instead (e.g. a stage trained beside the flow stage); the record then
    names that file as the one the result started from."""
    from vsqe.train.export import weights_origin

    cfg = state["config"]
    if into is not None:
        base, origin = str(into), json.dumps(weights_origin(into))
    else:
        base = cfg["base"]
        now = weights_origin(base)
        origin = state.get("base_origin") or json.dumps(now)  # older runs kept no record: the file as it is now
        # The checkpoint holds SpyNet only; the rest comes from the base file, which must still be the
        # one the run started from (shipping replaces files under vsqe/weights/).
        if now.get("sha256") != json.loads(origin).get("sha256"):
            raise CheckpointError(f"{base} is no longer the base this flow run started from (sha256 differs): "
                                  "graft into a copy of the original")
    best = state.get("best", {})
    # an alignment figure only if measured at this iteration by today's metric (the first runs
    # averaged per-pair PSNR differences)
    measured = best.get("iteration") == state["iteration"] and best.get("metric") == ALIGNMENT_METRIC
    record = {"iteration": str(state["iteration"]), "train_hours": f"{state.get('elapsed', 0.0) / 3600:.3f}",
              **({"alignment_gain_db": f"{best['gain_db']:+.4f}"} if measured else {}),
              "patch": str(cfg["patch"]), "batch": str(cfg["batch"]), "max_distance": str(cfg["max_distance"]),
              "smooth": str(cfg["smooth"]), "device": cfg.get("device", "cpu"), "init_from": origin}
    graft(base, cfg["model"], state["model"], out, record)


@torch.no_grad()
def evaluate_flow(
    spynet: SpyNet,
    clips: tuple[str, ...] | None = None,
    stream: str = "hm",
    frame_step: int = 3,
    border: int = 16,
) -> dict:
    """Alignment gain (dB) of `spynet` on the dev clips: for frames 0, step, ... and each of their
    PQF-schedule references, the squared error of the warped raw reference against the raw frame
    and that of the unwarped one, the flow computed from the decoded frames; per clip
    10 log10(total error unwarped / total error warped), and the mean over clips.

    Errors are pooled before the ratio because a per-pair PSNR difference is unbounded: the phone
    clip's first five frames are identical, so zero flow matches them exactly (PSNR 100 after the
    cap) and one such pair outweighs every other."""
    from vsqe.pipeline.pqf_schedule import triplet_for
    from vsqe.train.validate import DEV_CLIPS, DEV_DIR, _decoded, dev_pqf_flags, to_8bit

    t0 = time.time()
    spynet.eval()
    per_clip = {}
    for clip in clips or DEV_CLIPS:
        ref, dec = _decoded(clip, stream, DEV_DIR)
        flags, lookahead = dev_pqf_flags(clip, stream, DEV_DIR, len(dec))
        err_zero = err_warp = 0.0
        for n in range(0, len(dec), frame_step):
            for r in set(triplet_for(n, flags, lookahead)) - {n}:
                planes = [to_8bit(dec[i].planes[0], dec[i].fmt.bit_depth) for i in (n, r)]
                x = [torch.from_numpy(np.ascontiguousarray(p)).float().div(255)[None, None] for p in planes]
                flow = spynet(as_spynet_input(x[0]), as_spynet_input(x[1]))
                raw_r = torch.from_numpy(np.ascontiguousarray(ref[r])).float()[None, None]
                warped = flow_warp(raw_r, flow, padding_mode="border")[0, 0].round().clamp(0, 255).numpy()
                inner = (slice(border, -border), slice(border, -border))
                target = ref[n][inner].astype(np.float64)
                err_warp += float(((warped[inner] - target) ** 2).sum())
                err_zero += float(((ref[r][inner] - target) ** 2).sum())
        per_clip[clip] = round(10 * math.log10(max(err_zero, 1e-9) / max(err_warp, 1e-9)), 4)
    spynet.train()
    return {"gain_db": round(float(np.mean(list(per_clip.values()))), 4), "per_clip": per_clip,
            "seconds": round(time.time() - t0, 1)}


def plot_flow_curves(out: Path) -> None:
    """out/curves.png: the dev alignment gain (mean and per clip) against the iteration, from val.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(out / "val.csv")))
    its = [int(r["iteration"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(its, [float(r["gain_db"]) for r in rows], "o-", label="mean")
    for clip in [k for k in rows[0] if k not in ("iteration", "hours", "gain_db")]:
        ax.plot(its, [float(r[clip]) for r in rows], ".--", lw=0.7, label=clip)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("dB")
    ax.set_title("SpyNet on the dev HM frames: alignment gain over no motion")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out / "curves.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out / "curves.png")


class FlowTrainer:
    """SpyNet alone, photometric loss; resumable exactly like `Trainer` (model, optimiser, sampler
    RNG, torch RNG in DIR/last.pt), best by `evaluate_flow` in DIR/best.pt, graft on the best."""

    # What a resumed run takes from the command line; the rest is the checkpoint's.
    RESUME_OVERRIDES = ("iters", "threads", "val_every", "log_every", "ckpt_minutes", "device")

    def __init__(self, cfg: FlowConfig, resume: bool = False, log=print, overrides: Collection[str] | None = None) -> None:
        """`overrides`: on resume, which RESUME_OVERRIDES `cfg` sets (the command line's explicit
        ones); None = all of them."""
        from vsqe.backends.allocator import keep_freed_memory
        from vsqe.train.trainer import load_checkpoint

        self.out = Path(cfg.out)  # made once the base and the data are known good: no empty run folder
        self.log = log
        state = None
        last = self.out / "last.pt"
        if resume and last.is_file():
            state = load_checkpoint(last)
            if state.get("format") != FLOW_CKPT_FORMAT:
                raise CheckpointError(f"{last} is not a `vsqe train flow` checkpoint")
            keep = [k for k in self.RESUME_OVERRIDES if overrides is None or k in overrides]
            cfg = FlowConfig(**{**state["config"], **{k: getattr(cfg, k) for k in keep}})
            log(f"resuming from {last} at iteration {state['iteration']}")
        elif resume:
            log(f"no checkpoint in {self.out}; starting a new run")
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        keep_freed_memory()
        torch.manual_seed(cfg.seed)
        if not Path(cfg.base).is_file():
            raise InputError(f"--base {cfg.base}: no such file")
        self.sampler = FlowPairSampler(cfg.data, max_distance=cfg.max_distance, patch=cfg.patch,
                                       codec_weights=cfg.codec_weights, seed=cfg.seed)
        self.spynet = SpyNet()
        self.iteration, self.elapsed = 0, 0.0
        self.best = {"gain_db": -1e9, "iteration": -1}
        if state is not None:
            self.spynet.load_state_dict(state["model"])
            self.base_origin = state["base_origin"]
        else:
            from vsqe.train.export import weights_origin

            self.spynet.load_state_dict(spynet_of(read_base(cfg.base, cfg.model)))
            # read now: the base file may be replaced later (shipping does), the graft's record may not
            self.base_origin = json.dumps(weights_origin(cfg.base))
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        from vsqe.train.trainer import train_device

        self.device = train_device(cfg.device)
        self.spynet = self.spynet.to(self.device)
        if cfg.precision == "bf16":
            self.spynet = self.spynet.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.spynet.parameters(), lr=cfg.lr)
        if state is not None:
            self.opt.load_state_dict(state["optimizer"])
            self.sampler.load_state_dict(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            self.iteration, self.elapsed = int(state["iteration"]), float(state["elapsed"])
            self.best = dict(state["best"])
        self._stop = False

    def state(self) -> dict:
        return {"format": FLOW_CKPT_FORMAT, "config": asdict(self.cfg), "model": self.spynet.state_dict(),
                "optimizer": self.opt.state_dict(), "sampler": self.sampler.state_dict(),
                "torch_rng": torch.get_rng_state(), "iteration": self.iteration, "elapsed": self.elapsed,
                "best": self.best, "base_origin": self.base_origin}

    def step(self) -> dict:
        from vsqe.train.trainer import lr_at

        cfg = self.cfg
        x, y = self.sampler.batch(cfg.batch)
        x, y = x.to(self.device), y.to(self.device)
        lr = lr_at(self.iteration, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        frame, ref = as_spynet_input(x[:, 0]), as_spynet_input(x[:, 1])
        if cfg.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                flow = self.spynet(frame, ref)
        else:
            flow = self.spynet(frame, ref)
        loss, warped = photometric_loss(flow.float(), y[:, 0], y[:, 1], cfg.charbonnier_eps, cfg.smooth)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.spynet.parameters(), cfg.grad_clip))
        if math.isfinite(gnorm):
            self.opt.step()
        self.iteration += 1
        with torch.no_grad():
            mse_warp = float(F.mse_loss(warped, y[:, 0]))
            mse_zero = float(F.mse_loss(y[:, 1], y[:, 0]))
        return {"loss": float(loss.detach()), "lr": lr, "gnorm": gnorm, "mse_warp": mse_warp,
                "mse_zero": mse_zero, "flow_px": float(flow.detach().float().abs().mean())}

    def checkpoint(self, name: str = "last.pt") -> None:
        from vsqe.train.trainer import save_checkpoint

        save_checkpoint(self.out / name, self.state())

    def validate(self) -> dict:
        # on the CPU, like every validation (the dev streams are decoded there)
        net = self.spynet if self.device.type == "cpu" else copy.deepcopy(self.spynet).cpu()
        s = evaluate_flow(net, frame_step=self.cfg.val_step)
        new = not (self.out / "val.csv").is_file()
        with open(self.out / "val.csv", "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["iteration", "hours", "gain_db", *s["per_clip"]])
            w.writerow([self.iteration, round(self.elapsed / 3600, 3), s["gain_db"], *s["per_clip"].values()])
        self.log(f"val it {self.iteration} ({s['seconds']}s): alignment gain {s['gain_db']:+.3f} dB {s['per_clip']}")
        plot_flow_curves(self.out)
        if s["gain_db"] > self.best["gain_db"]:
            self.best = {"gain_db": s["gain_db"], "iteration": self.iteration, "per_clip": s["per_clip"],
                         "metric": ALIGNMENT_METRIC}
            self.checkpoint("best.pt")
            graft_checkpoint(self.state(), self.out / "grafted.safetensors")
            self.log(f"new best at {self.iteration}: {s['gain_db']:+.3f} dB -> {self.out / 'grafted.safetensors'}")
        return s

    def run(self) -> None:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.log(f"training {cfg.model}'s SpyNet (photometric): batch {cfg.batch} x {cfg.patch}px, references "
                 f"1..{cfg.max_distance} frames away, lr {cfg.lr}, smooth {cfg.smooth}, {len(self.sampler.clips)} clips")
        if self.iteration == 0 and cfg.val_every > 0:
            self.validate()  # the base's own flow: the figure to beat
        last_ckpt, t_mark, it_mark = time.time(), time.time(), self.iteration
        acc = {"loss": 0.0, "mse_warp": 0.0, "mse_zero": 0.0, "flow_px": 0.0, "n": 0}
        while self.iteration < cfg.iters and not self._stop:
            t0 = time.time()
            r = self.step()
            self.elapsed += time.time() - t0
            for k in ("loss", "mse_warp", "mse_zero", "flow_px"):
                acc[k] += r[k]
            acc["n"] += 1
            if self.iteration % cfg.log_every == 0:
                n, now = acc["n"], time.time()
                gain = 10 * math.log10(max(acc["mse_zero"], 1e-12) / max(acc["mse_warp"], 1e-12))
                self.log(f"it {self.iteration} loss {acc['loss'] / n:.5f} lr {r['lr']:.2e} patch alignment "
                         f"{gain:+.2f} dB |flow| {acc['flow_px'] / n:.2f} px "
                         f"{(self.iteration - it_mark) / max(1e-6, now - t_mark):.2f} it/s")
                acc = dict.fromkeys(acc, 0.0)
                acc["n"] = 0
                t_mark, it_mark = now, self.iteration
            if cfg.val_every > 0 and self.iteration % cfg.val_every == 0:
                self.validate()
                self.checkpoint()
                last_ckpt, t_mark, it_mark = time.time(), time.time(), self.iteration
            elif time.time() - last_ckpt > cfg.ckpt_minutes * 60:
                self.checkpoint()
                last_ckpt = time.time()
        self.checkpoint()
        self.log(f"stopped at iteration {self.iteration} ({'signal' if self._stop else 'done'}); "
                 f"best {self.best['gain_db']:+.3f} dB at {self.best['iteration']} -> {self.out / 'grafted.safetensors'}")

    def _on_signal(self, signum, frame) -> None:
        self._stop = True
