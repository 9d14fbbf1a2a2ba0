"""Runs a rank script as on the GPU box: torch reports CUDA as the machine's accelerator.

    as_if_cuda.py SCRIPT [ARG...]

Code that leaves the device to torch's default (FSDP2's default mesh is the accelerator's) goes
for CUDA: here, without a GPU, it fails loudly; on the GPU box it would move the tests' CPU
models to the GPU behind their gloo group. Code that names its device, as the CPU-backend rank
scripts must, runs as on any machine. Used by test_torch's multi-process FSDP tests so that CI
without a GPU catches what the GPU box's CTest run would meet.
"""
import os
import runpy
import sys

import torch

torch._C._get_accelerator = lambda *args, **kwargs: torch.device("cuda")

script = os.path.abspath(sys.argv[1])
sys.argv = [script] + sys.argv[2:]
sys.path[0] = os.path.dirname(script)
runpy.run_path(script, run_name="__main__")
