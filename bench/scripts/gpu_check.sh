#!/usr/bin/env bash
# The GPU check on a machine that has torch with CUDA but not diffusers (docs/gpu-check.md): install the
# carried wheels into a folder of their own, put it and this repo on PYTHONPATH, then run
# `python -m bench.gpu_check` (under 5 minutes) with its report under $OUT.
#   bench/scripts/gpu_check.sh [more gpu_check options, e.g. --parts compile --budget-s 150]
# WHEELS: the carried wheel folder (default wheels/: diffusers, and xformers if you carry it);
# OUT: the report folder (default gpu_out): gpu_check.json, gpu_check.md and gpu_check.log;
# PYTHON: the interpreter that has torch (default python3).
# Exit code: gpu_check's (0 only when every part ran; its last line says which did not, and why), 3 when the
# wheels do not install, 4 when torch does not import.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
OUT=${OUT:-gpu_out}
SITE=${SITE:-/tmp/ee-gpu-check-site}
mkdir -p "$OUT"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    echo "gpu_check.sh: installing ${wheels[*]} into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "${wheels[@]}" || { echo "gpu_check.sh: the wheels in $WHEELS/ did not install" >&2; exit 3; }
else
    echo "gpu_check.sh: no wheels in $WHEELS/: using what $PY has (diffusers must be installed)" >&2
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# What will run, before anything is built: torch and its CUDA, diffusers, and whether a carried xformers
# declares a torch this machine has (gpu_check itself tries it and reports the outcome either way).
"$PY" - <<'EOF' || exit 4
import importlib.metadata as md
import torch

print(f"gpu_check.sh: torch {torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()})")
for name in ("diffusers", "xformers"):
    try:
        print(f"gpu_check.sh: {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"gpu_check.sh: {name} not installed")
try:
    from packaging.requirements import Requirement

    wanted = [Requirement(r) for r in md.requires("xformers") or [] if r.startswith("torch")]
    for req in wanted:
        if not req.specifier.contains(torch.__version__.split("+")[0], prereleases=True):
            print(f"gpu_check.sh: the carried xformers wants {req}, this machine has torch {torch.__version__}")
except md.PackageNotFoundError:
    pass
except ImportError:
    print("gpu_check.sh: packaging is missing: xformers' torch requirement not compared")
EOF

"$PY" -m bench.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
