#!/usr/bin/env bash
# Download, on a machine with network, the wheels that benchmarks/gpu_check.sh installs on a GPU machine
# without one. That machine (Python 3.12, torch 2.11 + CUDA, torchvision, transformers 5.17, pluggy, click,
# pyyaml, tensorboard, pillow, safetensors, peft) lacks megatron-core, math-verify (and its LaTeX parser),
# pydantic and datasets; the versions are the ones lmmr1's tests pass with here.
#
#   bash benchmarks/gpu_wheels.sh            # -> benchmarks/gpu_wheels/ (git-ignored, a few MiB)
#
# The folder is ignored by git, so the device tool copies it only when named: run(carry=["benchmarks/gpu_wheels"]).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/gpu_wheels"
mkdir -p "$out"
PY="${PYTHON:-python3}"
WHEELS=(
  megatron-core==0.16.1            # model.backend: megatron (a cp312 build: it has a C++ helper)
  math-verify==0.9.0               # the math_accuracy reward (imported when the rewards plugin loads)
  latex2sympy2_extended==1.11.0
  antlr4-python3-runtime==4.13.2
  pydantic==2.13.4                 # stage files and plugin options
  pydantic-core==2.46.4
  annotated-types==0.7.0
  typing-inspection==0.4.2
  typing-extensions==4.16.0        # pydantic needs >= 4.14.1; the image's may be older
  datasets==5.2.0                  # file and hub data loaders, `lmmr1` CLI start-up
  dill==0.4.1
  multiprocess==0.70.19
)
# --no-deps: each dependency is named above (the rest is on the GPU image); one version of each.
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$out" "${WHEELS[@]}"
du -ch "$out"/*.whl | tail -1
