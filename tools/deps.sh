#!/usr/bin/env bash
# Checks the build dependencies; installs the missing Debian packages when run
# as root, otherwise says what to install. Sourced by tools/run.sh and
# tools/test.sh.
gc_need_pkgs=()
command -v cmake >/dev/null 2>&1 || gc_need_pkgs+=(cmake)
command -v g++ >/dev/null 2>&1 || gc_need_pkgs+=(g++)
command -v make >/dev/null 2>&1 || gc_need_pkgs+=(make)
command -v nm >/dev/null 2>&1 || gc_need_pkgs+=(binutils)
if [ "${GC_NEED_GTEST:-0}" = 1 ] && [ ! -e /usr/lib/x86_64-linux-gnu/libgtest.a ] \
   && [ ! -e /usr/lib/aarch64-linux-gnu/libgtest.a ] && [ ! -e /usr/local/lib/libgtest.a ]; then
  gc_need_pkgs+=(libgtest-dev)
fi
# The Python binding's tests (tests/python, run by CTest) need python3 with numpy.
if [ "${GC_NEED_GTEST:-0}" = 1 ] && ! command -v python3 >/dev/null 2>&1; then
  gc_need_pkgs+=(python3)
fi
# CTest bench.tc_link_cpu shapes links in network namespaces (root only;
# skipped otherwise) with ip and tc.
if [ "${GC_NEED_GTEST:-0}" = 1 ] && [ "$(id -u)" = 0 ] && \
   ! { command -v ip && command -v tc; } >/dev/null 2>&1; then
  gc_need_pkgs+=(iproute2)
fi
if [ ${#gc_need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "gradcomp: installing ${gc_need_pkgs[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${gc_need_pkgs[@]}") \
      >/dev/null || { echo "gradcomp: apt-get install ${gc_need_pkgs[*]} failed" >&2; exit 1; }
  else
    echo "gradcomp: missing ${gc_need_pkgs[*]}; install them (e.g. sudo apt-get install ${gc_need_pkgs[*]})" >&2
    exit 1
  fi
fi
# pip install into python3 (quiet); PEP 668: an externally managed
# interpreter outside a venv needs the explicit flag.
gc_pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || return 1
  local flags=(-q)
  if [ -z "${VIRTUAL_ENV:-}" ] && python3 -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    flags+=(--break-system-packages)
  fi
  python3 -m pip install "${flags[@]}" "$@"
}
if [ "${GC_NEED_GTEST:-0}" = 1 ] && ! python3 -c 'import numpy' >/dev/null 2>&1; then
  echo "gradcomp: installing numpy for the Python binding's tests"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
     [ "$(command -v python3)" = /usr/bin/python3 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-numpy) \
      >/dev/null 2>&1
  else
    gc_pip_install numpy >/dev/null 2>&1
  fi
  if ! python3 -c 'import numpy' >/dev/null 2>&1; then
    echo "gradcomp: $(command -v python3) cannot import numpy; install it (pip install numpy, or" \
         "apt-get install python3-numpy)" >&2
    exit 1
  fi
fi
# GC_WANT_TORCH=1 (CI): PyTorch, matplotlib and scikit-learn for gradcomp.torch's tests and
# the CPU smokes of the GPU box's PyTorch scripts (PyPI's CUDA build, ~3 GB, runs on the CPU).
# Best effort: without them those tests skip and say why.
if [ "${GC_WANT_TORCH:-0}" = 1 ] && ! python3 -c 'import torch, matplotlib, sklearn' >/dev/null 2>&1; then
  echo "gradcomp: installing torch, matplotlib and scikit-learn for the PyTorch tests"
  timeout 1500 bash -c "$(declare -f gc_pip_install); gc_pip_install torch matplotlib scikit-learn" \
    >/dev/null 2>&1 || echo "gradcomp: PyTorch could not be installed; its tests will skip" >&2
fi
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "gradcomp: the CUDA toolkit (nvcc 13) is needed to build; install it from NVIDIA's CUDA" \
       "repository and put nvcc on PATH" >&2
  exit 1
fi
# A GPU machine builds for its own GPU; otherwise sm_90 (compile-only checks).
if [ -z "${GRADCOMP_CUDA_ARCHS:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    GRADCOMP_CUDA_ARCHS=native
  else
    GRADCOMP_CUDA_ARCHS=90
  fi
fi
export GRADCOMP_CUDA_ARCHS
GC_BUILD_DIR=${GC_BUILD_DIR:-build}
GC_JOBS=${GC_JOBS:-$(nproc 2>/dev/null || echo 2)}
