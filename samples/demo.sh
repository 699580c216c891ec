#!/usr/bin/env bash
# `make demo`: enhance the HM-encoded city sample with STDF and measure ΔPSNR against the raw clip.
set -euo pipefail
cd "$(dirname "$0")/.."
VSQE=.venv/bin/vsqe
REF=../shared/data/city_416x240.y4m
IN=samples/city_416x240_hm_ldp_qp37.hevc
mkdir -p out
extra=()
if ! .venv/bin/python -c 'from vsqe.models import get_model_spec as g; import sys; sys.exit(g("stdf").default_weights_path() is None)'; then
  echo "demo: NO TRAINED DEFAULT WEIGHTS ARE INSTALLED for stdf: running the untrained network to show the pipeline; expect ΔPSNR <= 0" >&2
  extra=(--allow-untrained)
fi
"$VSQE" run "$IN" out/city_stdf.y4m --model stdf "${extra[@]}"
if [ -f "$REF" ]; then
  "$VSQE" eval --ref "$REF" --dist "$IN" --enh out/city_stdf.y4m --csv out/city_stdf.csv --plot out/city_stdf.png
else
  echo "demo: reference $REF not found (../shared/data beside the repo): skipping ΔPSNR" >&2
fi
