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

    def test_fsdp_reduce_scatter_needs_the_symbol(self):
        import gradcomp

        if gradcomp.has("gradcompReduceScatterKeyed"):
            rs = self.gt.GradcompReduceScatter(None, "layers.0")
            self.assertEqual(rs.key, self.gt.GradcompReduceScatter(None, "layers.0").key)
            self.assertNotEqual(rs.key, self.gt.GradcompReduceScatter(None, "layers.1").key)
        else:
            with self.assertRaisesRegex(RuntimeError, "has no gradcompReduceScatterKeyed: rebuild"):
                self.gt.GradcompReduceScatter(None, "layers.0")


@unittest.skipIf(torch is None, "PyTorch is not installed")
class TensorBuffers(unittest.TestCase):
    def test_torch_tensors_reduce_like_numpy_arrays(self):
        """The hook hands gradcomp tensors by data_ptr(): the same call on the same bytes."""
        import numpy as np

        import gradcomp

        N, n = 3, 5000
        xs = [torch.randn(n, generator=torch.Generator().manual_seed(r)) * (r + 1)
              for r in range(N)]
        got = {}
        for kind in ("torch", "numpy"):
            bufs = [x.clone() if kind == "torch" else x.numpy().copy() for x in xs]
            with gradcomp.CpuWorld(N, min_elements=0) as w:
                for _ in range(2):
                    w.run(lambda c: c.allreduce(bufs[c.rank], op="avg", key=5))
            got[kind] = [np.asarray(b).view(np.uint32).copy() for b in bufs]
        for r in range(N):
            self.assertTrue(np.array_equal(got["torch"][r], got["numpy"][r]), f"rank {r}")
            self.assertTrue(np.array_equal(got["torch"][r], got["torch"][0]))
        self.assertFalse(np.array_equal(got["torch"][0], xs[0].numpy().view(np.uint32)))


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class LayerAwarePlan(unittest.TestCase):
    """Which parameters of a bucket are compressed, where they sit, and their residual key."""

    class Bucket:
        def __init__(self, params, index):
            self.params, self.i = params, index

        def parameters(self):
            return self.params

        def index(self):
            return self.i

    @staticmethod
    def model(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(5, 10, bias=False),
                                   torch.nn.Linear(40, 40, bias=False))

    def state(self, module, **kw):
        import gradcomp.torch._nccl as nccl
        import gradcomp.torch as gt

        saved = nccl.check_group
        nccl.check_group = lambda pg: (pg, 0, 2)  # no process group needed to plan
        try:
            return gt.GradcompState(module=module, **kw)
        finally:
            nccl.check_group = saved

    def test_small_and_1d_parameters_stay_full_precision(self):
        m = self.model(0)
        w, b, w2, w3 = m[0].weight, m[0].bias, m[1].weight, m[2].weight
        st = self.state(m)  # layer_min_size 1024: w (2048) and w3 (1600) compressed
        plan = st._plan(self.Bucket([w, b, w2, w3], 0))
        self.assertEqual(plan["comp"], [(0, 2048), (2162, 1600)])
        self.assertEqual(plan["full"], [(2048, 114)])  # b and w2, adjacent: one run
        self.assertEqual((plan["comp_n"], plan["full_n"], plan["total"]), (3648, 114, 3762))
        self.assertEqual(st.stats()["full_precision_params"], ["0.bias", "1.weight"])
        self.assertEqual(st.stats()["compressed_params"], ["0.weight", "2.weight"])
        whole = self.state(m, layer_min_size=0, exclude_1d=False)._plan(
            self.Bucket([w, b, w2, w3], 0))
        self.assertEqual((whole["comp"], whole["full"]), ([(0, 3762)], []))

    def test_key_follows_the_parameters_not_the_bucket(self):
        m = self.model(0)
        params = [m[0].weight, m[0].bias, m[2].weight]
        k0 = self.state(m)._plan(self.Bucket(params, 0))["key"]
        k5 = self.state(m)._plan(self.Bucket(params, 5))["key"]  # rebuilt: another index
        m2 = self.model(1)  # a new process: other objects, same architecture
        k_new = self.state(m2)._plan(self.Bucket([m2[0].weight, m2[0].bias, m2[2].weight], 3))
        self.assertEqual(k0, k5)
        self.assertEqual(k0, k_new["key"])
        other = self.state(m)._plan(self.Bucket([m[2].weight, m[0].weight], 0))["key"]
        self.assertNotEqual(k0, other)

    def test_gather_scatter_round_trip(self):
        from gradcomp.torch.ddp import _gather, _scatter

        buf = torch.arange(20, dtype=torch.float32)
        runs = [(0, 3), (7, 5), (15, 2)]
        part = _gather(buf, runs, 10)
        self.assertEqual(part.tolist(), [0, 1, 2, 7, 8, 9, 10, 11, 15, 16])
        out = torch.zeros(20)
        _scatter(part, out, runs)
        self.assertEqual(out[[0, 1, 2, 7, 8, 9, 10, 11, 15, 16]].tolist(), part.tolist())
        self.assertEqual(float(out.sum()), float(part.sum()))


if __name__ == "__main__":
    unittest.main()
