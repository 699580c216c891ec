#!/usr/bin/env bash
# Training on a lent GPU machine (docs/training.md §9): runs in the repo root there, with a
# `vsqe data subset` folder packed as .gpu/pack.tar.xz (and the native DCN modules, .gpu/*.so)
# beside it, and writes what comes back to $OUT. Trainings that do not depend on each other run
# side by side on the one GPU.
#   * BasicVSR++-Y (B_PLAN=teacher, the default; docs/training.md §8): stage 1, the per-frame path
#     under the STDF teacher, beside the SpyNet flow stage (`vsqe train flow` on fresh weights);
#     the flow stage's SpyNet grafted into stage 1's export starts stage 2, the full network under
#     the teacher with that SpyNet held. B_PLAN=raw: flow stage, then the full network on raw
#     targets. B_INIT=FILE: one more stage-2 round from FILE (B_TEACHER="--teacher stdf
#     --teacher-iters N" for the teacher). Stage 2's schedule is fitted to the time left.
#   * MFQEv2-Y's non-PQF network from M_INIT (default: the shipped weights), no motion
#     compensation (--zero-flow, as shipped), for M_MIN minutes (default 0: not run).
# Validation needs PyAV (not on that machine): it runs here afterwards, on the CPU.
# Comes back: the exports, BasicVSR++-Y's last.pt in 15 MiB pieces, logs.tgz (the runs' logs and configs).
# Environment: BUDGET_S (seconds the whole script may take, default 540), B_PLAN, B_INIT, B_TEACHER,
# B1_MIN, B1_BATCH, B_BATCH, B_FRAMES, B_LR, FLOW_ITERS, M_MIN, M_INIT, M_BATCH, M_LR; CODECS (the
# encodes drawn, `vsqe train --codecs`; default x265-ldp=1: pack a subset made with the same
# `--codecs`, e.g. x265-ldp-hm for HM-like encodes, docs/training.md §10); DEVICE (cuda)
# and WORK (/root/lent) for a dry run elsewhere.
set -euo pipefail
t_start=$(date +%s)
BUDGET_S=${BUDGET_S:-540}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
W=${WORK:-/root/lent}
rm -rf "$W"  # a machine still warm from an earlier call keeps its files
mkdir -p "$W" "$OUT"
export WORK=$W
python3 - <<'EOF'
import os, tarfile, torch
tarfile.open(".gpu/pack.tar.xz").extractall(os.environ["WORK"], filter="data")
print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU", flush=True)
EOF
DATA=$(dirname "$(ls "$W"/*/manifest.json | head -1)")
V="python3 -m vsqe.train.cli"
DEVICE=${DEVICE:-cuda}
CODECS=${CODECS:-x265-ldp=1}
COMMON="--val-every 0 --val-full-every 0 --codecs $CODECS --device $DEVICE --threads 4 --log-every 100"
left() { echo $(( BUDGET_S - ($(date +%s) - t_start) )); }

finish() {  # whatever happened: the logs come back
  tar -czf "$OUT/logs.tgz" -C "$W" --exclude='*.pt' --exclude='*.safetensors' --exclude='*.npy' \
      $(cd "$W" && ls -d *.log b-init b1 flow b m 2>/dev/null) || true
}
trap finish EXIT
# the native DCN modules built on the CPU machine (static cudart: they import there unchanged)
cp .gpu/*.so vsqe/ 2>/dev/null || echo "no native DCN modules carried: STDF (the teacher) cannot run"

# MFQEv2-Y non-PQF, in the background for M_MIN minutes (0: not this time)
m_pid=""
if [ "${M_MIN:-0}" != "0" ]; then
  M_INIT=${M_INIT:-vsqe/weights/mfqev2_y_qp37.safetensors}
  $V train --model mfqev2-y --pqf-role nonpqf --zero-flow --init-from "$M_INIT" --data "$DATA" --out "$W/m" \
     --batch "${M_BATCH:-32}" --patch 128 --lr "${M_LR:-1e-4}" --warmup 100 --minutes "$M_MIN" $COMMON \
     > "$W/m.log" 2>&1 &
  m_pid=$!
fi

# BasicVSR++-Y, SpyNet first: initial weights, then `vsqe train flow` (photometric) on them
flow_stage() {
  $V train --model basicvsrpp-y --no-batchnorm --data "$DATA" --out "$W/b-init" --iters 0 $COMMON > "$W/b-init.log" 2>&1 &&
  $V train export --ckpt "$W/b-init/last.pt" --out "$W/b-base.safetensors" &&
  $V train flow --model basicvsrpp-y --base "$W/b-base.safetensors" --data "$DATA" --out "$W/flow" \
     --iters "${FLOW_ITERS:-1500}" --batch 16 --patch 192 --lr 2e-4 --warmup 100 --val-every 0 --codecs "$CODECS" \
     --device "$DEVICE" --threads 4 --log-every 100 > "$W/flow.log" 2>&1
}
# SpyNet of the flow run grafted into FILE's weights -> $W/b-grafted.safetensors
graft_flow_into() {
  $V train export --ckpt "$W/flow/last.pt" --into "$1" --out "$W/b-grafted.safetensors"
}

if [ -n "${B_INIT:-}" ]; then
  :  # a further round from B_INIT
elif [ "${B_PLAN:-teacher}" = "teacher" ]; then
  # Stage 1 (docs/training.md §8): the per-frame path with BN under the STDF teacher, beside the
  # flow stage; then its export with the flow stage's SpyNet grafted in starts stage 2.
  flow_stage & f_pid=$!
  $V train --model basicvsrpp-y --per-frame --teacher stdf --teacher-iters 1000000 --data "$DATA" --out "$W/b1" \
     --batch "${B1_BATCH:-16}" --frames 7 --patch 128 --lr 2e-4 --warmup 200 --minutes "${B1_MIN:-3.5}" $COMMON \
     > "$W/b1.log" 2>&1 && $V train export --ckpt "$W/b1/last.pt" --out "$W/b-stage1.safetensors" \
     || echo "basicvsrpp-y stage 1 failed"
  wait "$f_pid" || echo "flow stage failed"
  graft_flow_into "$W/b-stage1.safetensors" || echo "graft failed"
  cp "$W/b-stage1.safetensors" "$OUT/basicvsrpp_y_stage1.safetensors" 2>/dev/null || true
  B_INIT="$W/b-grafted.safetensors"
  B_TEACHER="--teacher stdf --teacher-iters 1000000"
else
  flow_stage && graft_flow_into "$W/b-base.safetensors" || echo "basicvsrpp-y first stages failed"
  B_INIT="$W/b-grafted.safetensors"
fi
b_min=$(python3 -c "print(max(1.0, ($(left) - 45) / 60))")
echo "BasicVSR++-Y main stage: $b_min min"
$V train --model basicvsrpp-y --no-batchnorm --freeze-flow --init-from "$B_INIT" --data "$DATA" --out "$W/b" \
   --batch "${B_BATCH:-8}" --frames "${B_FRAMES:-10}" --patch 128 --lr "${B_LR:-2e-4}" --warmup 200 \
   ${B_TEACHER:-} --minutes "$b_min" $COMMON > "$W/b.log" 2>&1 || echo "basicvsrpp-y run failed"
[ -z "$m_pid" ] || wait "$m_pid" || echo "mfqev2-y run failed"

$V train export --ckpt "$W/b/last.pt" --out "$OUT/basicvsrpp_y.safetensors" || true
# the checkpoint itself (exact resume, `ship --ckpt`) in pieces under the 16 MiB per-file limit:
# here, `cat b-last.pt.part-* > last.pt`
[ -f "$W/b/last.pt" ] && split -b 15M "$W/b/last.pt" "$OUT/b-last.pt.part-" || true
[ -z "$m_pid" ] || $V train export --ckpt "$W/m/last.pt" --out "$OUT/mfqev2_y_nonpqf.safetensors" || true
tail -n 3 "$W"/*.log
nvidia-smi --query-gpu=memory.used,memory.total --format=csv || true
echo "total $(( $(date +%s) - t_start )) s"
