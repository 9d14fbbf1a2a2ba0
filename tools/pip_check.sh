#!/usr/bin/env bash
# `pip install .` as the README's "Use from Python" gives it: a fresh virtual
# environment, the package built from this checkout by scikit-build-core (its
# wheel tagged py3-none-<platform>: ctypes, no CPython extension), and
# then, from a folder outside the checkout (no PYTHONPATH, no
# GRADCOMP_LIBRARY), the installed package on its own libraries:
# `python -m gradcomp.info`, the preload library beside libgradcomp, and a
# 4-rank 8-bit QSGD allreduce on the CPU world against numpy's sum, within
# the error that quantization allows, the same bits on every rank.
#   tools/pip_check.sh            (CI runs it after the tests)
# GC_PIP_VENV names the environment's folder (default: a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=${GC_PIP_VENV:-$work/venv}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q numpy
echo "pip_check: pip wheel $root, then pip install the wheel"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$venv/bin/python" -m pip wheel -q --no-deps -w "$work/wheel" "$root"
wheel=$(ls "$work"/wheel/gradcomp-*.whl)
case $(basename "$wheel") in
  gradcomp-*-py3-none-linux_*.whl) ;;
  *)
    echo "pip_check: FAILED: $(basename "$wheel") is not tagged py3-none-<platform>: the" \
         "package is ctypes over libgradcomp.so, with no CPython extension, so one wheel" \
         "serves every CPython 3 (pyproject.toml: wheel.py-api = \"py3\")" >&2
    exit 1
    ;;
esac
"$venv/bin/python" -m pip install -q "$wheel"
cd "$work"
env -u GRADCOMP_LIBRARY -u PYTHONPATH "$venv/bin/python" -m gradcomp.info
env -u GRADCOMP_LIBRARY -u PYTHONPATH "$venv/bin/python" - "$venv" <<'PY'
import os
import sys

import numpy as np

import gradcomp

venv = os.path.realpath(sys.argv[1])
pkg = os.path.dirname(os.path.realpath(gradcomp.__file__))
problems = []
if not pkg.startswith(venv + os.sep):
    problems.append(f"gradcomp imported from {pkg}, not from the environment {venv}")
lib = os.path.realpath(gradcomp.library_path())
if os.path.dirname(lib) != os.path.join(pkg, "lib"):
    problems.append(f"libgradcomp loaded from {lib}, not from the package's {pkg}/lib")
if not os.path.exists(os.path.join(pkg, "lib", "libgradcomp_preload.so")):
    problems.append(f"{pkg}/lib has no libgradcomp_preload.so (LD_PRELOAD's library)")
# A wheel holds no symbolic links: every libgradcomp.so* name there is a full copy.
libs = sorted(f for f in os.listdir(os.path.join(pkg, "lib")) if f.startswith("libgradcomp.so"))
if libs != ["libgradcomp.so"]:
    problems.append(f"{pkg}/lib holds {libs}: each a full copy of the library, not libgradcomp.so "
                    "alone")

N, n, bits = 4, 100_000, 8
s = (1 << (bits - 1)) - 1  # QSGD's levels at 8 bits
rng = np.random.default_rng(7)
xs = [rng.standard_normal(n).astype(np.float32) for _ in range(N)]
want = np.sum(np.stack(xs).astype(np.float64), axis=0)
with gradcomp.CpuWorld(N, method="qsgd", bits=bits, min_elements=0, algo="twoshot") as w:
    outs = w.run(lambda c: c.allreduce(xs[c.rank].copy()))
    stats = [c.stats() for c in w.comms]
# Two-shot quantizes each rank's chunk once (error under one level: max|x_r| / s)
# and the owner's sum of the decodes once more (under max|that sum| / s, the sum
# being within e1 of the true one), with fp32's roundings on top.
e1 = sum(float(np.max(np.abs(x))) for x in xs) / s
bound = (e1 + (float(np.max(np.abs(want))) + e1) / s) * (1 + 1e-4)
err = float(np.max(np.abs(outs[0].astype(np.float64) - want)))
if not err <= bound:
    problems.append(f"allreduce error {err:.4g} above the quantization bound {bound:.4g}")
if any(not np.array_equal(o.view(np.uint32), outs[0].view(np.uint32)) for o in outs):
    problems.append("the ranks' results differ")
calls = [st["calls_compressed"] for st in stats]
if calls != [1] * N:
    problems.append(f"calls compressed per rank {calls}, not one each")
if problems:
    sys.exit("pip_check: FAILED: " + "; ".join(problems))
print(f"pip_check: ok: gradcomp {'.'.join(map(str, gradcomp.version()))} from {pkg}; "
      f"4-rank 8-bit QSGD allreduce of {n} elements: max error {err:.3g} "
      f"(bound {bound:.3g}), the same bits on every rank")
PY
