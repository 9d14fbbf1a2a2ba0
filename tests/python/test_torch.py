"""gradcomp.torch without a GPU: the refusals a user meets first (gloo group, CPU tensors,
unsupported dtypes). Skipped, with the reason, where PyTorch is not installed; the
multi-rank GPU checks are tools/torch_hooks_check.sh's (tools/gpu-check.sh step torch_hooks)."""
import os
import socket
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))

try:
    import torch
    import torch.distributed as dist
except ImportError:
    torch = None


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class TorchRefusals(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import gradcomp.torch as gt

        cls.gt = gt

    def test_gloo_group_is_refused_with_what_to_do(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                world_size=1)
        try:
            with self.assertRaisesRegex(ValueError, r"need an NCCL process group.*'gloo'.*"
                                        r"init_process_group\('nccl'\)"):
                self.gt.GradcompState()
        finally:
            dist.destroy_process_group()

    def test_uninitialized_distributed_is_refused(self):
        with self.assertRaisesRegex(RuntimeError, "init_process_group"):
            self.gt.GradcompState()

    def test_cpu_and_float64_buckets_are_refused(self):
        class Bucket:
            def __init__(self, t):
                self.t = t

            def buffer(self):
                return self.t

        state = self.gt.GradcompState.__new__(self.gt.GradcompState)
        with self.assertRaisesRegex(TypeError, "got a cpu gradient bucket.*move the model to the "
                                    "GPU"):
            self.gt.gradcomp_hook(state, Bucket(torch.zeros(8)))
        if torch.cuda.is_available():
            with self.assertRaisesRegex(TypeError, "torch.float64 gradient bucket.*float32, "
                                        "float16 and bfloat16"):
                self.gt.gradcomp_hook(state, Bucket(torch.zeros(8, dtype=torch.float64,
                                                                device="cuda")))


if __name__ == "__main__":
    unittest.main()
