#!/usr/bin/env bash
# Optional: creates a separate virtual environment with IBM aihwkit 1.1.0 and torch 2.10.0 for the side-by-side
# benchmark tools/bench_aihwkit.py. Neither aihwkit nor torch is a dependency of edgelearn; nothing else in the
# project needs this venv.
#
#   bash tools/aihwkit_venv.sh [VENV_DIR]      # default VENV_DIR: .aihwkit-venv
#   VENV_DIR/bin/python tools/bench_aihwkit.py --json
#
# Every package is installed with --no-deps at a pinned version: aihwkit 1.1.0 declares build-time and
# development packages (cmake, scikit-build, pybind11, mypy, torchvision, ...) as run-time requirements, and this is
# the minimal set found to import and run both benchmark workloads on CPU (Python 3.11, Linux x86_64).
# torch 2.10.0 on PyPI is the CUDA 12.8 build: even on CPU, `import torch` loads the NVIDIA runtime libraries, so the
# nvidia-*-cu12 wheels (about 3 GB) are needed; cuda-bindings, triton and nvtx are not. Total download about 4 GB.
# sympy + mpmath are imported lazily by torch's optimizers (torch._dynamo); scipy by aihwkit.
# PYTHON selects the interpreter (default python3); tested with CPython 3.11 on Linux x86_64.
set -euo pipefail

VENV_DIR="${1:-.aihwkit-venv}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m venv "$VENV_DIR"
PIP=("$VENV_DIR/bin/python" -m pip install --no-deps)

"${PIP[@]}" torch==2.10.0 aihwkit==1.1.0
"${PIP[@]}" \
    nvidia-cuda-nvrtc-cu12==12.8.93 nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-cupti-cu12==12.8.90 \
    nvidia-cudnn-cu12==9.10.2.21 nvidia-cublas-cu12==12.8.4.1 nvidia-cufft-cu12==11.3.3.83 \
    nvidia-curand-cu12==10.3.9.90 nvidia-cusolver-cu12==11.7.3.90 nvidia-cusparse-cu12==12.5.8.93 \
    nvidia-cusparselt-cu12==0.7.1 nvidia-nccl-cu12==2.27.5 nvidia-nvshmem-cu12==3.4.5 \
    nvidia-nvjitlink-cu12==12.8.93 nvidia-cufile-cu12==1.13.1.3
"${PIP[@]}" typing-extensions==4.16.0 numpy==2.4.6 scipy==1.17.1 sympy==1.14.0 mpmath==1.4.1

"$VENV_DIR/bin/python" -c "import torch, aihwkit; print('torch', torch.__version__, 'aihwkit', aihwkit.__version__)"
