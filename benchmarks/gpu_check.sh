#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA build of torch; results as files in OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR [SECTION ...]      (sections: env tests precision speed; default all)
#
#   env        versions and the GPU's name                             -> env.json
#   tests      the CUDA tests (pytest -k "cuda or nccl")               -> cuda_tests.log
#   precision  float32 against bfloat16 on the demo file, same seed and epochs (50)
#                                                                      -> precision.json
#   speed      the bone-marrow shape (69,249 cells x 13,431 genes x 116,490 peaks), float32 and
#              bfloat16 on one data set, 3 epochs (the first not counted) beside the decoder's
#              matmul floor, then 700 new cells placed                 -> speed.jsonl, speed.log
#
# It runs the project from src/ with the machine's own torch. Packages the machine lacks can
# be brought as wheels in .whl/ (anndata, mudata and what they need; .whl/pandas/ holds a
# pandas 2 wheel, installed only where the machine's pandas is 3 or newer): they are
# installed into /tmp/site. Each section has its own time limit, so one that hangs leaves
# the others' results.
set -u
OUTDIR=${1:?usage: gpu_check.sh OUTDIR [SECTION ...]}
shift
SECTIONS=${*:-env tests precision speed}
mkdir -p "$OUTDIR"
cd "$(dirname "$0")/.."

SITE=/tmp/site
install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@" || exit 1
}
if [ -d .whl ]; then
  install_wheels .whl/*.whl
  # exit status 0 where the machine's pandas is 3 or newer
  if [ -d .whl/pandas ] && python3 -c 'import pandas, sys; sys.exit(int(pandas.__version__.split(".")[0]) < 3)'; then
    install_wheels .whl/pandas/*.whl
  fi
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

for section in $SECTIONS; do
  start=$(date +%s)
  case $section in
    env)
      timeout 60 python3 - >"$OUTDIR/env.json" <<'EOF'
import json, platform
from importlib.metadata import version
import torch
out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       **{name: version(name) for name in ("numpy", "pandas", "scipy", "anndata", "mudata")},
       "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
       "gpu_memory_gb": [round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)
                         for i in range(torch.cuda.device_count())],
       "cpu_threads": torch.get_num_threads()}
print(json.dumps(out))
EOF
      ;;
    tests)
      timeout 240 python3 -m pytest -q -rA -p no:cacheprovider -k "cuda or nccl" \
        tests/test_precision_device.py tests/test_distributed.py >"$OUTDIR/cuda_tests.log" 2>&1
      ;;
    precision)
      timeout 180 python3 benchmarks/precision.py --device cuda --epochs 50 >"$OUTDIR/precision.json" \
        2>"$OUTDIR/precision.log"
      ;;
    speed)
      timeout 420 python3 benchmarks/speed.py --device cuda --cells 69249 --genes 13431 --peaks 116490 \
        --epochs 3 --infer-cells 700 --dtype float32 bfloat16 >"$OUTDIR/speed.jsonl" 2>"$OUTDIR/speed.log"
      ;;
    *)
      echo "unknown section $section (env tests precision speed)" >&2
      exit 2
      ;;
  esac
  echo "$section: exit $? in $(($(date +%s) - start)) s"
done
