#!/usr/bin/env bash
# The GPU check (issue 18) on the device machine: benchmarks/gpu_check.py inside 8 minutes.
#
# That machine has no network and its own Python (3.12, a CUDA build of torch, transformers,
# accelerate, peft, pyarrow, ...): `make venv` cannot run there (it downloads, pins a CPU torch
# 2.13 and needs Python 3.11). What hybridft's training path needs besides (Ray, pydantic,
# DeepSpeed, TRL, datasets and their own needs) travels as wheels, made here first:
#
#   benchmarks/gpu_check.sh --bundle      # here, with network: wheels into $BUNDLE (~50 MB)
#
# then on the device machine, with `carry: [".hybridft/gpu_check_bundle"]`:
#
#   benchmarks/gpu_check.sh [gpu_check.py arguments]
#
# It installs the wheels under /tmp (--no-index), puts src/ on PYTHONPATH (no install of
# hybridft: its pins are for the CPU venv), runs the check and, when $OUT is set, writes the
# final JSON to $OUT/gpu_check.json (rewritten after every phase) and the log to $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE=.hybridft/gpu_check_bundle # under .hybridft/: git-ignored, so it is carried, never committed
# Wheels for the device's Python, at the versions the CPU venv tests (missing from its image).
DISTS="ray pydantic pydantic-core annotated-types typing-inspection jsonschema
  jsonschema-specifications referencing rpds-py trl datasets dill multiprocess hjson"
PLATFORM="--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

bundle() {
  local py=.venv/bin/python pins=() dist
  for dist in $DISTS; do
    pins+=("$dist==$($py -c "import importlib.metadata as m; print(m.version('$dist'))")")
  done
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
  # shellcheck disable=SC2086
  $py -m pip download -q --no-deps --only-binary=:all: $PLATFORM -d "$BUNDLE" "${pins[@]}"
  # DeepSpeed ships a source archive only: built here into a pure-Python wheel with no prebuilt
  # ops (our ZeRO engine steps torch's AdamW, so no DeepSpeed op should be needed; untried on GPU)
  DS_BUILD_OPS=0 $py -m pip wheel -q --no-deps --no-build-isolation -w "$BUNDLE" \
    "deepspeed==$($py -c "import importlib.metadata as m; print(m.version('deepspeed'))")"
  # Ray's wheel is 79 MB, over the 64 MiB a device call carries: its Java jars (32 MB) and RLlib
  # are never used by a Python training job, so they are left out of its copy
  $py - "$BUNDLE"/ray-*.whl <<'EOF'
import os, sys, zipfile

path = sys.argv[1]
drop = ("ray/jars/", "ray/rllib/")
with zipfile.ZipFile(path) as src, zipfile.ZipFile(path + ".slim", "w", zipfile.ZIP_DEFLATED) as out:
    for info in src.infolist():
        if info.filename.startswith(drop):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(x for x in lines if not x.startswith(drop)).encode()
        out.writestr(info, data)  # the same ZipInfo: file modes (the raylet's +x) are kept
os.replace(path + ".slim", path)
EOF
  du -sh "$BUNDLE"
  ls -la "$BUNDLE"
}

if [[ "${1:-}" == "--bundle" ]]; then
  bundle
  exit 0
fi

# the device's python3; here the project's venv, when there is one
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
SITE=/tmp/gpu_check_site
IMPORTS="import ray.train.torch, deepspeed, trl, datasets, pydantic, hybridft.train.run"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
fail() {
  echo "$1" | tail -5
  echo '{"benchmark": "gpu_check", "ok": false, "error": "imports failed (see the log): was .hybridft/gpu_check_bundle made (--bundle) and carried?"}' |
    tee "${OUT:-/tmp}/gpu_check.json"
  exit 1
}
if ! err=$($PY -c "$IMPORTS" 2>&1); then
  [[ -d "$BUNDLE" ]] || fail "$err"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    "$BUNDLE"/*.whl 2>&1 | tail -3 || fail "pip could not install $BUNDLE"
  export PYTHONPATH="$PYTHONPATH:$SITE" # last: it only adds what the image lacks
  err=$($PY -c "$IMPORTS" 2>&1) || fail "$err"
fi
setup_s=$(($(date +%s) - start))
echo "set-up: ${setup_s} s; $($PY --version); $(nvidia-smi -L 2>/dev/null | head -1)"

args=("$@")
log=/dev/null
if [[ -n "${OUT:-}" ]]; then
  args+=(--json-out "$OUT/gpu_check.json")
  log="$OUT/gpu_check.log"
fi
# 8 minutes in all, set-up included; the script's own budget (420 s) ends its phases first
timeout $((480 - setup_s)) "$PY" benchmarks/gpu_check.py "${args[@]}" 2>&1 | tee "$log"
