#!/usr/bin/env bash
# The first thing to run on a GPU machine: everything lmmr1 can only check there, under 8 minutes, one table.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--device cpu] [--skip-bench]    (options: benchmarks/gpu_check.py)
#
# The machine may have no network: the Python packages it lacks are installed from the wheels beside this
# script (benchmarks/gpu_wheels/, made by benchmarks/gpu_wheels.sh where pip can download), into /tmp, never
# over what is there. lmmr1 itself is installed editable from this checkout (its plugins are found through
# entry points), offline; where pip cannot do that, a .dist-info with the entry points stands in for it.
#
# Through the device tool (the wheel folder is git-ignored, so name it in carry):
#   run(command="bash benchmarks/gpu_check.sh --out $OUT", carry=["benchmarks/gpu_wheels"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
PY="${PYTHON:-python3}"
site=/tmp/lmmr1-site
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if ! "$PY" -c "import megatron.core, math_verify, pydantic, datasets" 2>/dev/null; then
  if ! ls benchmarks/gpu_wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_check: megatron-core, math-verify, pydantic or datasets is missing and benchmarks/gpu_wheels/ is" \
         "empty: run benchmarks/gpu_wheels.sh where pip can download, then carry the folder" >&2
  else
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      benchmarks/gpu_wheels/*.whl || { echo "gpu_check: installing the wheels failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi

if ! "$PY" -c "import importlib.metadata as m, lmmr1_plugins; m.distribution('lmmr1')" 2>/dev/null; then
  if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>/tmp/lmmr1-pip.log; then
    echo "gpu_check: pip could not install lmmr1 editable (/tmp/lmmr1-pip.log); using a .dist-info shim" >&2
    mkdir -p "$site/lmmr1-0.1.0.dist-info"
    ln -sfn "$repo/plugins" "$site/lmmr1_plugins"
    printf 'Metadata-Version: 2.1\nName: lmmr1\nVersion: 0.1.0\n' > "$site/lmmr1-0.1.0.dist-info/METADATA"
    "$PY" - "$site/lmmr1-0.1.0.dist-info/entry_points.txt" <<'EOF'
import sys, tomllib
eps = tomllib.load(open("pyproject.toml", "rb"))["project"]
with open(sys.argv[1], "w") as f:
    for group, entries in [("console_scripts", eps.get("scripts", {})), *eps.get("entry-points", {}).items()]:
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n")
EOF
    export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi

exec "$PY" benchmarks/gpu_check.py "$@"
