"""gradcomp.torch without a GPU: the refusals a user meets first (gloo group, CPU tensors,
unsupported dtypes), the layer-aware plan, and the DDP hook's body on the CPU world (threads as
ranks) against a serial reference, with its checkpoint resume. Skipped, with the reason, where
PyTorch is not installed; the multi-rank GPU checks are tools/torch_hooks_check.py's
(tools/gpu-check.sh step torch_hooks)."""
import contextlib
import os
import re
import sys
import threading
import unittest
from unittest import mock
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))

from gradcomp._ports import reserve_port  # noqa: E402

try:
    import torch
    import torch.distributed as dist
except ImportError:
    torch = None


def init_one_rank_gloo():
    """A gloo world of this process alone, its store on a port held until it listens there."""
    with reserve_port("127.0.0.1") as held:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{held.port}", rank=0,
                                world_size=1)


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class TorchRefusals(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import gradcomp.torch as gt

        cls.gt = gt

    def test_gloo_group_is_refused_with_what_to_do(self):
        init_one_rank_gloo()
        try:
            with self.assertRaisesRegex(ValueError, r"need an NCCL process group.*'gloo'.*"
                                        r"init_process_group\('nccl'\).*for CPU tensors on a "
                                        r"gloo group, make the state with backend='cpu'"):
                self.gt.GradcompState()
            with self.assertRaisesRegex(ValueError, r"backend='mpi' is not one of nccl\|cpu"):
                self.gt.GradcompState(backend="mpi")
            # Opted in, the gloo group is accepted; one rank is still refused.
            with self.assertRaisesRegex(ValueError, "has 1 rank: there is nothing to reduce"):
                self.gt.GradcompState(backend="cpu")
        finally:
            dist.destroy_process_group()

    def test_a_non_member_rank_and_a_device_mesh_are_refused_with_what_to_do(self):
        """A rank outside the group (new_group gives it GroupMember.NON_GROUP_MEMBER) and a
        DeviceMesh given for its group were refused by torch.distributed's "Invalid process
        group specified" and "... is not initialized in the world group map. Please initialize
        the group first", which name neither mistake."""
        from torch.distributed.device_mesh import init_device_mesh

        init_one_rank_gloo()
        try:
            with self.assertRaisesRegex(ValueError, r"this rank \(global rank 0\) is not a member "
                                        r"of the process group given.*NON_GROUP_MEMBER.*on the "
                                        r"group's members only"):
                self.gt.GradcompState(dist.GroupMember.NON_GROUP_MEMBER, backend="cpu")
            mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("dp",))
            for m in (mesh, mesh["dp"]):
                with self.assertRaisesRegex(ValueError, r"process_group=DeviceMesh.* is a "
                                            r"DeviceMesh, not a process group.*get_group\(\)"):
                    self.gt.GradcompState(m, backend="cpu")
        finally:
            dist.destroy_process_group()

    def test_a_ddp_module_of_another_group_is_refused(self):
        """DDP(process_group=dp) with a state over other ranks (the world, by default) would
        reduce gradients over the wrong ranks: refused, naming both."""
        import gradcomp.torch._group as group

        DDP = torch.nn.parallel.DistributedDataParallel
        ddp = DDP.__new__(DDP)  # the attributes the state reads, without a process group
        torch.nn.Module.__init__(ddp)
        ddp.module = torch.nn.Linear(4, 4)
        dp, world = object(), object()
        ddp.process_group = dp
        ranks = {id(dp): [0, 2], id(world): [0, 1, 2, 3]}
        with mock.patch.object(group, "check_group", lambda pg, backend: (pg, 0, 4)), \
                mock.patch.object(dist, "get_process_group_ranks", lambda g: ranks[id(g)]):
            with self.assertRaisesRegex(ValueError, r"reduces over ranks \[0, 2\], but this "
                                        r"GradcompState over ranks \[0, 1, 2, 3\]"):
                self.gt.GradcompState(world, module=ddp)
            st = self.gt.GradcompState(dp, module=ddp)  # the same ranks: accepted
            self.assertEqual(len(st._param_ids), 2)

    def test_register_ddp_hook_refuses_another_module_or_state_and_a_closed_state(self):
        import gradcomp.torch._group as group

        DDP = torch.nn.parallel.DistributedDataParallel
        ddp = DDP.__new__(DDP)  # refused before anything of the DDP is read
        torch.nn.Module.__init__(ddp)
        with mock.patch.object(group, "check_group", lambda pg, backend: (pg, 0, 2)):
            st = self.gt.GradcompState(object())
        with self.assertRaisesRegex(TypeError, r"takes the DistributedDataParallel module; got "
                                    r"Linear: wrap the model first"):
            self.gt.register_ddp_hook(torch.nn.Linear(4, 4), st)
        with self.assertRaisesRegex(TypeError, "takes a GradcompState; got object"):
            self.gt.register_ddp_hook(ddp, object())
        # A wrap that is not a function failed with Python's "'str' object is not callable".
        with self.assertRaisesRegex(TypeError, r"^register_ddp_hook's wrap='fp16' is not "
                                    r"callable: pass None, or a function that takes the hook"):
            self.gt.register_ddp_hook(ddp, st, wrap="fp16")
        st.close()
        with self.assertRaisesRegex(RuntimeError, r"the state was closed"):
            self.gt.register_ddp_hook(ddp, st)
        self.assertEqual(len(st._ddps), 0)

    def test_single_rank_group_is_refused(self):
        from unittest import mock

        init_one_rank_gloo()
        try:  # an NCCL group of one rank, as far as the check can tell
            with mock.patch.object(dist, "get_backend", lambda group=None: "nccl"):
                with self.assertRaisesRegex(ValueError, r"has 1 rank: there is nothing to "
                                            r"reduce.*register no comm hook"):
                    self.gt.GradcompState()
                with self.assertRaisesRegex(ValueError, r"backend='cpu' needs a gloo process "
                                            r"group.*this one is 'nccl'"):
                    self.gt.GradcompState(backend="cpu")
        finally:
            dist.destroy_process_group()

    def test_uninitialized_distributed_is_refused(self):
        with self.assertRaisesRegex(RuntimeError, "init_process_group"):
            self.gt.GradcompState()

    def test_misspelt_options_a_model_given_first_and_a_module_not_a_module_are_refused(self):
        """Each names the argument and what it takes: a misspelt option of the state's own went
        to gradcomp's Config, whose sentence lists gradcomp's settings only; the model given as
        the first argument failed in torch naming no argument; module="m" raised
        AttributeError."""
        import gradcomp.torch._group as group

        with mock.patch.object(group, "check_group", lambda pg, backend: (pg, 0, 2)):
            for kw, meant in ((dict(start_iters=3), "start_iter"),
                              (dict(layer_minsize=0), "layer_min_size"),
                              (dict(backed="cpu"), "backend"),
                              (dict(bucketsize=512), "bucket_size"),
                              (dict(GRADCOMP_METHOD="topk"), "method"),
                              (dict(START_ITER=3), "start_iter"),
                              (dict(ef=0), "error_feedback")):
                with self.subTest(**kw):
                    with self.assertRaisesRegex(ValueError, rf"GradcompState got unknown keyword "
                                                rf"{next(iter(kw))} \(did you mean {meant}\?\); "
                                                r"its own options are process_group, module, "
                                                r"layer_min_size, start_iter, exclude_1d, .*and "
                                                r"gradcomp's settings are method, algo, bits"):
                        self.gt.GradcompState(**kw)
            model = torch.nn.Sequential(torch.nn.Linear(4, 4))
            for bad in ("model", [model]):
                with self.assertRaisesRegex(TypeError, r"module= takes the model \(a "
                                            rf"torch.nn.Module\); got {type(bad).__name__}"):
                    self.gt.GradcompState(module=bad)
        init_one_rank_gloo()
        try:
            with self.assertRaisesRegex(ValueError, r"^process_group is a Sequential, not a "
                                        r"torch.distributed process group: .*the model goes in "
                                        r"module= \(GradcompState\(module=model, ...\)\)$"):
                self.gt.GradcompState(model, backend="cpu")
            with self.assertRaisesRegex(ValueError, r"^process_group is a str, not a "
                                        r"torch.distributed process group: .*or None for the "
                                        r"default group$"):
                self.gt.GradcompState("world", backend="cpu")
        finally:
            dist.destroy_process_group()

    class Bucket:
        """The part of DDP's GradBucket the hook's first checks read."""

        def __init__(self, t):
            self.t = t

        def buffer(self):
            return self.t

    def test_cpu_and_float64_buckets_are_refused(self):
        Bucket = self.Bucket
        state = self.gt.GradcompState.__new__(self.gt.GradcompState)
        state.backend = "nccl"
        with self.assertRaisesRegex(TypeError, "got a cpu gradient bucket.*move the model to the "
                                    "GPU.*make the state with backend='cpu'"):
            self.gt.gradcomp_hook(state, Bucket(torch.zeros(8)))
        cpu_state = self.gt.GradcompState.__new__(self.gt.GradcompState)
        cpu_state.backend = "cpu"
        with self.assertRaisesRegex(TypeError, "got a meta gradient bucket: the state's backend "
                                    "'cpu' compresses CPU tensors"):
            self.gt.gradcomp_hook(cpu_state, Bucket(torch.zeros(8, device="meta")))
        with self.assertRaisesRegex(TypeError, "torch.float64 gradient bucket.*float32, "
                                    "float16 and bfloat16"):
            self.gt.gradcomp_hook(cpu_state, Bucket(torch.zeros(8, dtype=torch.float64)))
        if torch.cuda.is_available():
            with self.assertRaisesRegex(TypeError, "torch.float64 gradient bucket.*float32, "
                                        "float16 and bfloat16"):
                self.gt.gradcomp_hook(state, Bucket(torch.zeros(8, dtype=torch.float64,
                                                                device="cuda")))

    def test_sparse_bucket_is_refused_at_the_first_call(self):
        # DDP buckets nn.Embedding(sparse=True)'s gradient alone, as a sparse tensor: refused
        # at the first call, not at start_iter with "Cannot access data pointer".
        Bucket = self.Bucket
        state = self.gt.GradcompState.__new__(self.gt.GradcompState)
        state.backend = "cpu"
        grad = torch.sparse_coo_tensor([[0, 3]], torch.ones(2, 4), (10, 4))
        with self.assertRaisesRegex(TypeError, "torch.sparse_coo gradient bucket.*"
                                    "nn.Embedding\\(sparse=True\\).*sparse=False"):
            self.gt.gradcomp_hook(state, Bucket(grad))

    def test_compiled_autograd_per_parameter_call_is_refused_with_advice(self):
        # DDP with optimize_ddp='python_reducer' calls hook(state, (param.grad, param)) for
        # each parameter (torch/nn/parallel/distributed.py, _register_accum_grad_hook).
        state = self.gt.GradcompState.__new__(self.gt.GradcompState)
        state.backend = "cpu"
        p = torch.nn.Parameter(torch.zeros(8))
        p.grad = torch.ones(8)
        with self.assertRaisesRegex(TypeError, r"\(grad, param\) tuple.*compiled autograd.*"
                                    "ddp_optimizer.*LD_PRELOAD=libgradcomp_preload.so"):
            self.gt.gradcomp_hook(state, (p.grad, p))
        self.assertTrue(torch.equal(p.grad, torch.ones(8)))

    def test_fsdp_reduce_scatter_over_another_group_is_refused_naming_both(self):
        """FSDP's shard group and the state's group differ: refused, naming both groups' ranks
        (the sentence named neither)."""
        import gradcomp

        if not gradcomp.has("gradcompReduceScatterKeyed"):
            self.skipTest("this libgradcomp has no gradcompReduceScatterKeyed")
        state = self.gt.GradcompState.__new__(self.gt.GradcompState)
        state.backend, state._paused = "cpu", False
        state.config = gradcomp.Config(from_env=False, method="qsgd")
        state._agree_call = lambda *args: None  # no peers to compare the call with

        class Group:
            def size(self):
                return 2

        shard, mine = Group(), object()
        state.process_group = mine
        rs = self.gt.GradcompReduceScatter(None, "layers.0")
        rs.state = state
        ranks = {id(shard): [2, 3], id(mine): [0, 2]}
        with mock.patch.object(dist, "get_process_group_ranks", lambda g: ranks[id(g)]):
            with self.assertRaisesRegex(ValueError, r"FSDP reduces over ranks \[2, 3\], but the "
                                        r"GradcompState over ranks \[0, 2\]: make the state "
                                        r"with process_group=<FSDP's shard group>"):
                rs(output_tensor=torch.zeros(4), input_tensor=torch.zeros(8), group=shard,
                   op=dist.ReduceOp.AVG)

    def test_fsdp_reduce_scatter_needs_the_symbol(self):
        import gradcomp

        if gradcomp.has("gradcompReduceScatterKeyed"):
            rs = self.gt.GradcompReduceScatter(None, "layers.0")
            self.assertEqual(rs.key, self.gt.GradcompReduceScatter(None, "layers.0").key)
            self.assertNotEqual(rs.key, self.gt.GradcompReduceScatter(None, "layers.1").key)
        else:
            with self.assertRaisesRegex(RuntimeError, "has no gradcompReduceScatterKeyed: rebuild"):
                self.gt.GradcompReduceScatter(None, "layers.0")

    def test_hooks_given_something_else_than_a_state_refuse_it_by_type(self):
        """FSDP2's hooks and the register functions took any object as the state and failed
        later with an AttributeError from inside (state._serve_fsdp, state.config) naming none
        of it; gradcomp_hook did at the first step. A TypeError names what was passed and what
        is expected, where it is passed (None stays the hooks' "no state")."""
        import gradcomp
        from gradcomp.torch import fsdp

        def refused(make, s):
            with self.assertRaisesRegex(TypeError, f"^{make.__name__} takes a "
                                        r"gradcomp.torch.GradcompState; got .* \(a "
                                        f"{type(s).__name__}\)"):
                make(s, "layers.0")

        wrong = (gradcomp.Config(from_env=False), "state", 0)
        for s in wrong:
            with self.subTest(state=repr(s)):
                if gradcomp.has("gradcompReduceScatterKeyed"):
                    refused(self.gt.GradcompReduceScatter, s)
                refused(self.gt.GradcompReplicaAllReduce, s)
                with self.assertRaisesRegex(TypeError, r"^gradcomp_hook takes a GradcompState "
                                            f"as its state; got .* \(a {type(s).__name__}\)"):
                    self.gt.gradcomp_hook(s, None)

        class FsdpModule(torch.nn.Linear):  # stands in for FSDP2's class: both calls there
            def set_custom_reduce_scatter(self, hook):
                pass

            def set_all_reduce_hook(self, hook):
                pass

        with mock.patch.object(fsdp, "_fsdp_module_class", lambda: FsdpModule):
            for register in (self.gt.register_fsdp_reduce_scatter,
                             self.gt.register_fsdp_replica_all_reduce):
                with self.subTest(register=register.__name__):
                    with self.assertRaisesRegex(TypeError, f"^{register.__name__} takes a "
                                                r"gradcomp.torch.GradcompState; got "
                                                r"Config\(.* \(a Config\)"):
                        register(FsdpModule(2, 2), wrong[0])
                    with self.assertRaisesRegex(TypeError, f"^{register.__name__} takes the "
                                                r"model \(a torch.nn.Module.*got str"):
                        register("model", None)

    def test_fsdp_reduce_scatter_names_the_device_of_tensors_off_cuda(self):
        # Called "CPU tensors" whatever their device (a meta shard's too).
        import gradcomp

        if not gradcomp.has("gradcompReduceScatterKeyed"):
            self.skipTest("this libgradcomp has no gradcompReduceScatterKeyed")
        rs = self.gt.GradcompReduceScatter(None, "layers.0")
        with self.assertRaisesRegex(TypeError, "^GradcompReduceScatter got meta tensors: "
                                    "gradcomp reduces CUDA tensors"):
            rs(output_tensor=torch.zeros(4, device="meta"),
               input_tensor=torch.zeros(8, device="meta"), group=None, op=dist.ReduceOp.AVG)
        with self.assertRaisesRegex(TypeError, "^GradcompReduceScatter got CPU tensors: "
                                    "gradcomp reduces CUDA tensors"):
            rs(output_tensor=torch.zeros(4), input_tensor=torch.zeros(8), group=None,
               op=dist.ReduceOp.AVG)

    def test_fsdp2_without_custom_reduce_scatter_is_refused_with_what_to_do(self):
        """FSDP2 took set_custom_reduce_scatter in PyTorch 2.9: on an older FSDPModule (a
        stand-in without the method) registering refuses before touching the model, and
        unsupported_reason() (which the GPU script's skip prints) says the same."""
        from unittest import mock

        import gradcomp
        from gradcomp.torch import fsdp

        class OldFsdpModule:  # FSDP2 of PyTorch 2.4 .. 2.8
            pass

        with mock.patch.object(fsdp, "_fsdp_module_class", lambda: OldFsdpModule):
            reason = fsdp.unsupported_reason()
            self.assertRegex(reason, r"has FSDP2 without FSDPModule.set_custom_reduce_scatter "
                             r"\(PyTorch >= 2.9\): upgrade PyTorch, or compress FSDP2's "
                             r"reduce-scatters with LD_PRELOAD=libgradcomp_preload.so")
            self.assertIn(torch.__version__, reason)
            with self.assertRaisesRegex(RuntimeError, "gradcomp: this PyTorch .* without "
                                        "FSDPModule.set_custom_reduce_scatter"):
                self.gt.register_fsdp_reduce_scatter(torch.nn.Linear(2, 2), None)
        with mock.patch.object(fsdp, "_fsdp_module_class", lambda: None):
            self.assertRegex(fsdp.unsupported_reason(), r"has no FSDP2 \(fully_shard, PyTorch "
                             r">= 2.4\)")
            with self.assertRaisesRegex(RuntimeError, "has no FSDP2"):
                self.gt.register_fsdp_reduce_scatter(torch.nn.Linear(2, 2), None)
        # This PyTorch: the class found, and no reason unless it or the library lacks the call.
        cls = fsdp._fsdp_module_class()
        if cls is not None and hasattr(cls, "set_custom_reduce_scatter") and gradcomp.has(
                "gradcompReduceScatterKeyed"):
            self.assertIsNone(fsdp.unsupported_reason())
            with self.assertRaisesRegex(ValueError, "the model has no FSDP module"):
                self.gt.register_fsdp_reduce_scatter(torch.nn.Linear(2, 2), None)

    def test_fsdp_replica_all_reduce_refusals_without_a_group(self):
        """GradcompReplicaAllReduce: a CPU tensor on the NCCL backend refused with what to do;
        its keys per module name, apart from the reduce-scatter's; where FSDP2 has no
        set_all_reduce_hook (a stand-in class), registering refuses with the reason."""
        from unittest import mock

        from gradcomp.torch import fsdp

        import gradcomp

        state = self.gt.GradcompState.__new__(self.gt.GradcompState)
        state.backend, state._pending_blob = "nccl", None
        state.config = gradcomp.Config(from_env=False, method="qsgd")
        hook = self.gt.GradcompReplicaAllReduce(state, "layers.0")
        with self.assertRaisesRegex(TypeError, "GradcompReplicaAllReduce got a cpu tensor: "
                                    "gradcomp reduces CUDA tensors.*backend='cpu'"):
            hook(torch.zeros(8))
        self.assertEqual(state._keyed_by(), "fsdp-replicas")
        key = self.gt.GradcompReplicaAllReduce(None, "layers.0").key
        self.assertEqual(hook.key, key)
        self.assertNotEqual(key, self.gt.GradcompReplicaAllReduce(None, "layers.1").key)
        if self.gt.fsdp.unsupported_reason() is None:
            self.assertNotEqual(key, self.gt.GradcompReduceScatter(None, "layers.0").key)

        class OldFsdpModule:  # FSDP2 without the all-reduce hook
            pass

        with mock.patch.object(fsdp, "_fsdp_module_class", lambda: OldFsdpModule):
            self.assertRegex(fsdp.replica_unsupported_reason(), r"has FSDP2 without "
                             r"FSDPModule.set_all_reduce_hook: upgrade PyTorch")
            with self.assertRaisesRegex(RuntimeError, "gradcomp: this PyTorch .* without "
                                        "FSDPModule.set_all_reduce_hook"):
                self.gt.register_fsdp_replica_all_reduce(torch.nn.Linear(2, 2), None)
        cls = fsdp._fsdp_module_class()
        if cls is not None and hasattr(cls, "set_all_reduce_hook"):
            self.assertIsNone(fsdp.replica_unsupported_reason())
            with self.assertRaisesRegex(ValueError, "the model has no FSDP module"):
                self.gt.register_fsdp_replica_all_reduce(torch.nn.Linear(2, 2), None)

    def test_fsdp_replica_all_reduce_records_its_tensor_on_the_hook_stream(self):
        """GradcompReplicaAllReduce on the GPU (torch.cuda's stream and the tensor's device
        replaced by recorders): FSDP allocates the tensor on its reduce-scatter stream and
        calls the hook on its all-reduce stream, where PyTorch 2.11's FSDP2 may free the
        tensor while gradcomp's allreduce of it runs there; the hook records the tensor on
        that stream before gradcomp's call, which gets the same stream's handle."""
        from unittest import mock

        import gradcomp

        state = self.gt.GradcompState.__new__(self.gt.GradcompState)
        state.backend, state._pending_blob = "nccl", None
        state.config = gradcomp.Config(from_env=False, method="qsgd")
        hook = self.gt.GradcompReplicaAllReduce(state, "layers.0")
        events = []

        class Stream:
            cuda_stream = 0x5000

        stream = Stream()
        hook._all_reduce = lambda t, handle: events.append(("all_reduce", t, handle))
        t = torch.zeros(8)
        with mock.patch.object(torch.Tensor, "device", torch.device("cuda", 0)), \
                mock.patch.object(torch.cuda, "current_stream", lambda device=None: stream), \
                mock.patch.object(torch.Tensor, "record_stream",
                                  lambda self, s: events.append(("record", self, s)),
                                  create=True):
            self.assertIsNone(hook(t))
        self.assertEqual(len(events), 2)
        self.assertEqual(events[0][0], "record")
        self.assertIs(events[0][1], t)
        self.assertIs(events[0][2], stream)
        self.assertEqual(events[1][0], "all_reduce")
        self.assertIs(events[1][1], t)
        self.assertEqual(events[1][2], Stream.cuda_stream)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class SocketRootAddress(unittest.TestCase):
    """backend="cpu": rank 0's address as gradcomp reads it; an IPv6 MASTER_ADDR goes in
    brackets (gradcompCommCreateSocket takes "[IPv6]:port"; its IPv6 comm is test_socket's).
    A group's rank 0 on another machine than MASTER_ADDR's listens on an address of its own."""

    def host(self, addr, own=True):
        from gradcomp.torch import _group

        old = os.environ.get("MASTER_ADDR")
        os.environ["MASTER_ADDR"] = addr
        try:
            if own:  # every address taken as this machine's
                with mock.patch.object(_group, "_own_address", lambda host: host):
                    return _group._root_host(None)
            return _group._root_host(None)
        finally:
            if old is None:
                del os.environ["MASTER_ADDR"]
            else:
                os.environ["MASTER_ADDR"] = old

    def test_a_group_root_off_the_master_host_listens_on_its_own_address(self):
        """A subgroup's rank 0 on another machine than the store's (MASTER_ADDR): it listened
        on MASTER_ADDR, which is not its own ("cannot listen at ...: Cannot assign requested
        address", its peers waiting for it to the timeout). Here MASTER_ADDR is an address of
        another machine that this one has a route to."""
        import socket

        def bindable(addr):
            with socket.socket() as s:
                try:
                    s.bind((addr, 0))
                    return True
                except OSError:
                    return False

        def routed(addr):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.connect((addr, 9))
                    return True
                except OSError:
                    return False

        other = next((a for a in ("203.0.113.7", "198.51.100.7", "192.0.2.1")
                      if not bindable(a) and routed(a)), None)
        if other is None:
            self.skipTest("no route from this machine to another's address")
        host = self.host(other, own=False)
        self.assertNotEqual(host, other)
        self.assertTrue(bindable(host), f"rank 0 would listen at {host}, not this machine's")
        # The store's host where it is this machine's, as given (a name stays a name).
        self.assertEqual(self.host("127.0.0.1", own=False), "127.0.0.1")
        self.assertEqual(self.host("localhost", own=False), "localhost")

    def test_a_store_of_no_host_gives_an_address_the_other_machines_reach(self):
        """file:// (a FileStore, no MASTER_ADDR): rank 0 published 127.0.0.1, where the ranks
        of other machines connect to their own loopback. Now gloo's own choice: the first
        interface of GLOO_SOCKET_IFNAME, else the host name's address where it is this
        machine's and not loopback, else the default route's interface's, else loopback."""
        import socket

        from gradcomp.torch import _group

        addrs = {"ib0": "10.3.0.7", "eth0": "192.0.2.9", "lo": "127.0.0.1"}
        names = {"vm": [(socket.AF_INET, 1, 6, "", ("127.0.1.1", 0))],
                 "node-3": [(socket.AF_INET, 1, 6, "", ("127.0.0.1", 0)),
                            (socket.AF_INET, 1, 6, "", ("127.0.0.1", 0))]}

        def choose(env, hostname, route="eth0"):
            def info(name, *a, **k):
                if name not in names:
                    raise socket.gaierror("unknown")
                return names[name]

            with mock.patch.dict(os.environ, env), \
                    mock.patch.object(_group, "_interface_address", addrs.get), \
                    mock.patch.object(_group, "_default_route_interface", lambda: route), \
                    mock.patch.object(socket, "gethostname", lambda: hostname), \
                    mock.patch.object(socket, "getaddrinfo", info):
                os.environ.pop("MASTER_ADDR", None)
                if "GLOO_SOCKET_IFNAME" not in env:
                    os.environ.pop("GLOO_SOCKET_IFNAME", None)
                return _group._root_host(dist.FileStore(os.devnull, 1)
                                         if hasattr(dist, "FileStore") else None)

        self.assertEqual(choose({"GLOO_SOCKET_IFNAME": "ib0,eth0"}, "vm"), "10.3.0.7")
        self.assertEqual(choose({}, "vm"), "192.0.2.9")  # the name is loopback's: the route
        self.assertEqual(choose({}, "nowhere"), "192.0.2.9")  # a name that does not resolve
        self.assertEqual(choose({}, "vm", route=None), "127.0.0.1")  # no network at all
        with self.assertRaisesRegex(ValueError, r"GLOO_SOCKET_IFNAME='ib9': interface 'ib9' has "
                                    r"no IPv4 or global IPv6 address"):
            choose({"GLOO_SOCKET_IFNAME": "ib9"}, "vm")
        # The host name's own address where it is this machine's: here, one it can bind.
        own = _group._interface_address(_group._default_route_interface() or "lo")
        if own and own != "127.0.0.1":
            names["node-3"][1] = (socket.AF_INET, 1, 6, "", (own, 0))
            self.assertEqual(choose({}, "node-3", route="lo"), own)

    def test_a_file_init_world_across_two_network_namespaces(self):
        """Two machines, as two network namespaces joined by a veth pair, and a file:// init
        on a file both see: rank 1 reaches rank 0's comm (it connected to its own loopback)."""
        import shutil
        import subprocess
        import tempfile

        if shutil.which("unshare") is None or shutil.which("ip") is None:
            self.skipTest("unshare or ip is not installed")
        if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
            self.skipTest("this machine gives no network namespace (unshare -rn)")
        rank = (
            "import os, sys\n"
            "import torch, torch.distributed as dist\n"
            "from gradcomp.torch import _group\n"
            "from gradcomp.config import Config\n"
            "r = int(sys.argv[1])\n"
            "dist.init_process_group('gloo', init_method='file://' + sys.argv[2], rank=r, "
            "world_size=2)\n"
            "comm = _group.make_socket_comm(None, Config(cpu_timeout_sec=20))\n"
            "x = torch.full((8,), float(r + 1))\n"
            "comm.allreduce(x)\n"
            # One write (below PIPE_BUF: atomic), as both ranks share the pipe.
            "os.write(1, f'rank {r} sum {x.tolist()[0]}\\n'.encode())\n"
            "comm.close()\n"
            "dist.destroy_process_group()\n")
        script = (
            "set -e\n"
            "ip link set lo up\n"
            "unshare -n sleep 120 & other=$!\n"
            "trap 'kill $other 2>/dev/null' EXIT\n"
            # Until the child has its own namespace (a fixed sleep could lose the race on a
            # loaded machine, leaving both ranks in one namespace: no test of the address).
            "i=0; while [ \"$(readlink /proc/$other/ns/net)\" = \"$(readlink /proc/$$/ns/net)\" ]"
            "; do i=$((i+1)); [ $i -lt 400 ] || exit 3; sleep 0.05; done\n"
            "ip link add gca type veth peer name gcb netns $other\n"
            "ip addr add 10.231.7.1/24 dev gca && ip link set gca up\n"
            "nsenter -t $other -n sh -c 'ip link set lo up; ip addr add 10.231.7.2/24 dev gcb; "
            "ip link set gcb up'\n"
            "GLOO_SOCKET_IFNAME=gca python3 -c \"$RANK\" 0 \"$STORE\" & zero=$!\n"
            "GLOO_SOCKET_IFNAME=gcb nsenter -t $other -n python3 -c \"$RANK\" 1 \"$STORE\"\n"
            "wait $zero\n")
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, RANK=rank, STORE=os.path.join(tmp, "store"))
            env.pop("MASTER_ADDR", None)
            env.pop("MASTER_PORT", None)
            try:
                run = subprocess.run(["unshare", "-rn", "bash", "-c", script], env=env,
                                     capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired as e:
                self.fail(f"the two ranks hung: {e.stdout} {e.stderr}")
        if "gca" not in run.stderr and "veth" in run.stderr.lower():
            self.skipTest(f"no veth pair here: {run.stderr.strip()}")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("rank 0 sum 3.0", run.stdout)
        self.assertIn("rank 1 sum 3.0", run.stdout)

    def test_hosts(self):
        self.assertEqual(self.host("::1"), "[::1]")
        self.assertEqual(self.host("fd00::7"), "[fd00::7]")
        self.assertEqual(self.host("[fd00::7]"), "[fd00::7]")
        self.assertEqual(self.host("10.1.2.3"), "10.1.2.3")
        self.assertEqual(self.host("node-3.cluster"), "node-3.cluster")


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class UniqueIdThroughTheStore(unittest.TestCase):
    """The first half of make_comm on the CPU: rank 0's ncclGetUniqueId (from the libnccl
    torch loaded; it needs no GPU) reaches every rank byte for byte through a store."""

    def test_every_rank_gets_rank_0s_bytes(self):
        import ctypes

        from gradcomp.torch import _nccl

        try:
            _nccl.nccl()
        except RuntimeError as e:  # a CPU-only torch brings no libnccl
            self.skipTest(str(e))
        store = dist.HashStore()
        got = [None] * 3

        def rank(r):
            uid = _nccl.share_unique_id(store, "gradcomp/nccl_id/0-1-2/0", r)
            got[r] = ctypes.string_at(ctypes.addressof(uid), ctypes.sizeof(uid))

        threads = [threading.Thread(target=rank, args=(r,)) for r in (2, 1, 0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(got[0]), 128)
        self.assertEqual(got[1], got[0])
        self.assertEqual(got[2], got[0])
        self.assertIn(0, got[0][:16])  # NULs inside: a copy cut at the first one would differ
        self.assertNotEqual(got[0], bytes(128))

    def make_comm_on_rank_0(self, store, init_result):
        """make_comm's rank 0 with ncclCommInitRank returning init_result and the comm's
        creation stubbed (no GPU): the store key it published, and what it raised."""
        import types

        from gradcomp.torch import _nccl

        class Lib:
            def ncclCommInitRank(self, handle, size, uid, rank):
                handle._obj.value = 0x1000
                return init_result

            def ncclCommAbort(self, handle):
                pass

        fake = types.SimpleNamespace(lib=Lib())
        fake.check = lambda res, what: (_ for _ in ()).throw(RuntimeError(f"{what}: {res}")) \
            if res else None
        key = "gradcomp/nccl_id/0-1/0/0"
        with mock.patch.object(_nccl, "check_group", lambda pg: (pg, 0, 2)), \
                mock.patch.object(_nccl, "nccl", lambda: fake), \
                mock.patch.object(_nccl, "store_key", lambda kind, pg, ranks: key), \
                mock.patch.object(_nccl, "share_unique_id",
                                  lambda st, k, r: (st.set(k, b"\x07" * 128), None)[1]), \
                mock.patch.object(_nccl.Comm, "create", lambda h, config: "comm"), \
                mock.patch.object(dist, "get_process_group_ranks", lambda pg: [0, 1]), \
                mock.patch.object(dist.distributed_c10d, "_get_default_store", lambda: store), \
                mock.patch.object(torch.cuda, "device", lambda d: contextlib.nullcontext()):
            try:
                return key, _nccl.make_comm(None, 0, None), None
            except RuntimeError as e:
                return key, None, e

    def test_rank_0_deletes_the_key_once_made_and_marks_a_failed_creation(self):
        """make_comm's rank 0 (NCCL): once the comm is made every rank has read the unique
        id, so its key is deleted (a restarted world on the same store, numbering from 0 again,
        finds no stale id); a failed creation marks the key instead, so that a peer still to
        read it raises rank 0's error at once, not at the store's timeout (30 minutes)."""
        from gradcomp.torch import _group

        store = dist.HashStore()
        key, made, err = self.make_comm_on_rank_0(store, 0)
        self.assertIsNone(err)
        self.assertEqual(made, ("comm", 0x1000))
        self.assertFalse(store.check([key]), "the made comm's key is left in the store")
        store = dist.HashStore()
        key, made, err = self.make_comm_on_rank_0(store, 5)
        self.assertRegex(str(err), "ncclCommInitRank")
        self.assertTrue(store.check([key]), "the failed creation left no mark")
        with self.assertRaisesRegex(RuntimeError, "rank 0 of the group could not make the comm "
                                    f"of {key} \\(ncclCommInitRank"):
            _group.check_key_value(store.get(key), key)

    def test_a_wrong_size_in_the_store_is_refused(self):
        from gradcomp.torch import _nccl

        store = dist.HashStore()
        store.set("k", b"\x01" * 5)
        with self.assertRaisesRegex(RuntimeError, "holds 5 bytes under k, not an NCCL unique id "
                                    r"\(128 bytes\)"):
            _nccl.share_unique_id(store, "k", 1)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class OneLibnccl(unittest.TestCase):
    """libgradcomp needs libnccl.so.2 and the loader keeps the first one a process maps for
    everyone: loaded before torch, gradcomp's build-time libnccl would become torch's too, and
    the communicators gradcomp.torch makes through torch's library (_nccl) would be served by
    another NCCL than torch's. gradcomp imports torch first: in a fresh interpreter that only
    imports gradcomp, the one libnccl mapped is torch's (the nvidia-nccl wheel's, where torch
    brings one), and _nccl calls that one."""

    def test_gradcomp_loads_after_torch_and_shares_its_libnccl(self):
        import subprocess

        probe = (
            "import json, os, gradcomp\n"
            "gradcomp.library_path()\n"
            "maps = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libnccl.so' in l})\n"
            "import torch\n"
            "from gradcomp.info import nccl_library\n"
            "try:\n"
            "    import nvidia.nccl as m\n"
            "    wheel = [os.path.realpath(os.path.join(p, 'lib', 'libnccl.so.2')) for p in m.__path__]\n"
            "except ImportError:\n"
            "    wheel = []\n"
            "print(json.dumps({'maps': [os.path.realpath(p) for p in maps], 'wheel': wheel,\n"
            "                  'nccl_library': nccl_library()}))\n")
        p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        import json

        got = json.loads(p.stdout.strip().splitlines()[-1])
        if not got["maps"]:
            self.skipTest("no libnccl in this process (a libgradcomp built without NCCL?)")
        self.assertEqual(len(got["maps"]), 1, got)
        wheel = [w for w in got["wheel"] if os.path.exists(w)]
        if wheel:  # torch's NCCL is the wheel's: gradcomp must be on it, not its build-time one
            self.assertIn(got["maps"][0], wheel, got)
        self.assertEqual(os.path.realpath(got["nccl_library"]), got["maps"][0], got)


def _built_preload():
    """This build's libgradcomp_preload.so, next to the libgradcomp.so the tests load."""
    from gradcomp import _lib

    build = os.path.dirname(os.path.realpath(_lib.library_path()))
    path = os.path.join(build, "plugin", "preload", "libgradcomp_preload.so")
    return path if os.path.exists(path) else None


@unittest.skipIf(torch is None, "PyTorch is not installed")
class HooksUnderThePreload(unittest.TestCase):
    """Two doors at once: a launcher's LD_PRELOAD=libgradcomp_preload.so and a script that
    registers gradcomp's hooks. The hooks' own communicator and gradcomp's calls on it never
    reach the interposer (_nccl calls torch's libnccl through its own handle, the library
    calls pnccl*), but torch.distributed's calls on the process group do, those the state sends
    uncompressed on purpose among them: a state made on an NCCL group says so, once, naming the
    interposer and what to do."""

    PROBE = (
        "import warnings\n"
        "from unittest import mock\n"
        "import gradcomp.torch as gt\n"
        "import gradcomp.torch._group as group\n"
        "with mock.patch.object(group, 'check_group', lambda pg, backend: (pg, 0, 2)):\n"
        "    for backend in ('nccl', 'cpu'):\n"
        "        with warnings.catch_warnings(record=True) as w:\n"
        "            warnings.simplefilter('always')\n"
        "            gt.GradcompState(object(), backend=backend)\n"
        "        print(backend, len(w), *[str(x.message) for x in w])\n")

    def probe(self, **env):
        import subprocess

        env = dict(os.environ, **env)
        p = subprocess.run([sys.executable, "-c", self.PROBE], capture_output=True, text=True,
                           timeout=120, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        return dict(line.split(" ", 1) for line in p.stdout.strip().splitlines())

    def test_a_state_on_an_nccl_group_warns_of_the_preload(self):
        preload = _built_preload()
        if preload is None:
            self.skipTest("no libgradcomp_preload.so in this build")
        # After any preload already there (a sanitizer's runtime must stay first).
        got = self.probe(LD_PRELOAD=" ".join(filter(None, [os.environ.get("LD_PRELOAD"),
                                                             preload])))
        self.assertRegex(got["nccl"], r"^1 gradcomp: ncclAllReduce in this process is "
                         + re.escape(os.path.realpath(preload)) + r"'s \(LD_PRELOAD\).*the first "
                         r"start_iter steps, the small and 1-d parameters.*unset LD_PRELOAD for "
                         r"this job, or register no gradcomp hook")
        self.assertEqual(got["cpu"], "0")  # gloo's calls never reach it
        # GRADCOMP_METHOD=none: the interposer passes every call to NCCL. In any case, as the
        # library reads a choice (NONE warned of a compression that never happened).
        for method in ("none", "NONE", "None"):
            got = self.probe(LD_PRELOAD=" ".join(filter(None, [os.environ.get("LD_PRELOAD"),
                                                                 preload])), GRADCOMP_METHOD=method)
            self.assertEqual(got, {"nccl": "0", "cpu": "0"}, method)

    def test_no_warning_without_it(self):
        kept = [p for p in os.environ.get("LD_PRELOAD", "").split() if "gradcomp" not in p]
        got = self.probe(LD_PRELOAD=" ".join(kept))
        self.assertEqual(got, {"nccl": "0", "cpu": "0"})


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

    def test_tensors_off_the_host_are_refused_where_gradcomp_reads_the_host(self):
        """The host codecs and the CPU backend's comms read buffers on the host: a tensor on
        another device ("meta" here, a GPU tensor likewise) is refused by name, not read."""
        import gradcomp
        import gradcomp.codecs

        off = torch.empty(4096, device="meta")
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "x is on meta.*x.cpu()"):
            gradcomp.codecs.qsgd_encode(off)
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "v is on meta"):
            gradcomp.codecs.topk_select(off)
        with gradcomp.CpuWorld(1, min_elements=0) as w:
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "sendbuf is on meta"):
                w.comms[0].allreduce(off)

    def test_tensors_of_other_layouts_are_refused_by_name(self):
        """A sparse, CSR, jagged or mkldnn tensor has no one dense buffer at data_ptr(): each is
        refused naming the argument and its layout (a sparse one read as "not contiguous: pass
        x.contiguous()", a CSR or mkldnn one raised torch's error naming no argument, a jagged
        one reached the library as a NULL address)."""
        import warnings

        import gradcomp
        import gradcomp.codecs

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nested tensors are a prototype
            odd = [torch.ones(64, 64).to_sparse(), torch.ones(64, 64).to_sparse_csr(),
                   torch.nested.nested_tensor([torch.ones(3), torch.ones(2)],
                                              layout=torch.jagged)]
        if torch.backends.mkldnn.is_available():
            odd.append(torch.ones(64).to_mkldnn())
        with gradcomp.CpuWorld(1, min_elements=0) as w:
            for x in odd:
                with self.subTest(layout=str(x.layout)):
                    with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                                f"^sendbuf has layout {x.layout} .*reads dense "
                                                r"\(torch.strided\) tensors.*to_dense\(\)"):
                        w.comms[0].allreduce(x)
                    with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                                f"^recvbuf has layout {x.layout}"):
                        w.comms[0].allreduce(torch.ones(5), x)
                    with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                                f"^x has layout {x.layout}"):
                        gradcomp.codecs.qsgd_encode(x)

    def test_negated_views_are_refused_by_name(self):
        """A tensor torch negates lazily (is_neg(): the imaginary part of a conjugate view, as
        z.conj().imag) holds its values unnegated in memory, which gradcomp reads and writes by
        address: a sum into another buffer, a max or an encode got the wrong sign, silently.
        Refused naming the argument and resolve_neg(), rather than resolved into a temporary:
        a buffer gradcomp writes must hold the result (and keys the residual by its address).
        A conjugate view (is_conj()) is complex, a dtype gradcomp refuses."""
        import gradcomp
        import gradcomp.codecs

        z = torch.tensor([3.0 + 2.0j])
        neg = z.conj().imag  # -2.0, over the memory holding 2.0
        self.assertTrue(neg.is_neg() and neg.is_contiguous())
        self.assertEqual(neg.item(), -2.0)
        wide = torch._neg_view(torch.randn(4096))  # the same bit on a long tensor
        self.assertTrue(wide.is_neg() and wide.is_contiguous())
        with gradcomp.CpuWorld(1, min_elements=0) as w:
            c = w.comms[0]
            out = torch.zeros(1)
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        r"^sendbuf is a negated view, is_neg\(\) \(shape \(1,\), "
                                        r"dtype torch.float32\).*sendbuf.resolve_neg\(\)"):
                c.allreduce(neg, out, op="max")
            self.assertEqual(out.item(), 0.0)  # nothing written
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                        r"^recvbuf is a negated view.*recvbuf.copy_\(result\)"):
                c.allreduce(torch.ones(1), neg)
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "^sendbuf is a negated"):
                c.allreduce(neg)
            if gradcomp.Comm.has_reduce_scatter():
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "^sendbuf is a negated"):
                    c.reduce_scatter(neg, torch.zeros(1))
            # The way the sentence gives: resolved, reduced, copied back through the view.
            r = neg.resolve_neg()
            c.allreduce(r, op="max")
            neg.copy_(r)
            self.assertEqual((neg.item(), z.imag.item()), (-2.0, 2.0))
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "^sendbuf is a negated"):
                c.allreduce(wide)
            # A conjugate view: complex, refused by its dtype.
            self.assertTrue(z.conj().is_conj())
            with self.assertRaisesRegex(gradcomp.InvalidArgumentError, "has no NCCL type"):
                c.allreduce(z.conj())
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, r"^x is a negated view"):
            gradcomp.codecs.qsgd_encode(wide)
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, r"^v is a negated view"):
            gradcomp.codecs.topk_select(wide)
        x = torch.randn(4096)
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, r"^residual is a negated"):
            gradcomp.codecs.qsgd_encode(x, residual=torch._neg_view(torch.zeros(4096)))
        with self.assertRaisesRegex(gradcomp.InvalidArgumentError, r"^out is a negated view"):
            gradcomp.codecs.qsgd_decode(gradcomp.codecs.qsgd_encode(x), 4096,
                                        out=torch._neg_view(torch.zeros(4096)))

    def test_a_tensor_without_storage_of_its_own_is_refused_by_name(self):
        """A DTensor (a sharded parameter's gradient under FSDP2) has no storage of its own: its
        data_ptr() is 0 and its numel() the global one. It reached the library as a NULL
        address; it is refused naming the argument and its local shard."""
        import gradcomp
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        init_one_rank_gloo()
        try:
            d = distribute_tensor(torch.ones(64), init_device_mesh("cpu", (1,)), [Shard(0)])
            with gradcomp.CpuWorld(1, min_elements=0) as w:
                with self.assertRaisesRegex(gradcomp.InvalidArgumentError,
                                            r"^sendbuf is a DTensor without storage of its own "
                                            r"\(shape \(64,\), .*sendbuf.to_local\(\)\)$"):
                    w.comms[0].allreduce(d)
                local = d.to_local()
                w.comms[0].allreduce(local)  # the local shard goes through
                self.assertTrue(torch.equal(local, torch.ones(64)))
                # An empty tensor's data_ptr() is 0 too: a call on nothing, as before.
                w.comms[0].allreduce(torch.empty(0))
        finally:
            dist.destroy_process_group()


@unittest.skipIf(torch is None, "PyTorch is not installed")
class DgcSgdOptimizer(unittest.TestCase):
    """gradcomp.torch.DGCSGD: torch.optim.SGD bit for bit on unmarked groups; on a group marked
    by param_groups, p -= lr * (g + w) with the decay's own buffer w = m*w + wd*p (written out
    here); a marked group with its own momentum, dampening, nesterov or maximize is refused."""

    @staticmethod
    def params(seed):
        torch.manual_seed(seed)
        return [torch.randn(7, 5), torch.randn(11)]

    def grads(self, params, step):
        g = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)

    def test_unmarked_groups_are_torch_sgd_bit_for_bit(self):
        from gradcomp.torch import DGCSGD

        for kw in (dict(momentum=0.9, weight_decay=1e-2), dict(momentum=0.8, nesterov=True),
                   dict(momentum=0.5, dampening=0.3, maximize=True), dict(weight_decay=0.1)):
            a, b = self.params(1), self.params(1)
            oa = torch.optim.SGD(a, lr=0.1, foreach=False, **kw)
            ob = DGCSGD(b, lr=0.1, **kw)
            for step in range(4):
                self.grads(a, step)
                self.grads(b, step)
                oa.step()
                ob.step()
            for x, y in zip(a, b):
                self.assertTrue(torch.equal(x, y), f"{kw}: DGCSGD differs from torch.optim.SGD")

    def test_marked_group_keeps_the_decay_momentum(self):
        from gradcomp.torch import DGCSGD

        m, wd, lr = 0.9, 0.05, 0.1
        p = self.params(2)
        ref = [x.clone() for x in p]
        w = [None] * len(p)
        opt = DGCSGD([{"params": p, "momentum": 0.0, "weight_decay": wd / (1 - m),
                       "gradcomp_velocity": m, "gradcomp_weight_decay": wd}], lr=lr)
        for step in range(5):
            self.grads(p, step)
            for i, x in enumerate(ref):
                w[i] = wd * x if w[i] is None else m * w[i] + wd * x
                ref[i] = x - lr * (p[i].grad + w[i])
            opt.step()
        for x, y in zip(p, ref):
            self.assertLess(float((x - y).abs().max()), 1e-6)
        self.assertIn("weight_decay_buffer", opt.state[p[0]])

    def test_weight_decay_given_to_dgcsgd_reaches_the_marked_groups(self):
        """DGCSGD(groups, weight_decay=wd), as torch.optim.SGD takes it, or a marked group's own
        weight_decay without gradcomp_weight_decay: the marked group decays by wd through the
        decay's buffer w = m*w + wd*p (not silently without decay)."""
        from gradcomp.torch import DGCSGD

        m, wd, lr = 0.9, 0.05, 0.1
        for how in ("constructor", "group"):
            p, bias = self.params(5)
            ref, w = p.clone(), None
            marked = {"params": [p], "momentum": 0.0, "gradcomp_velocity": m}
            if how == "constructor":  # as state.param_groups(params) marks it
                marked["gradcomp_weight_decay"] = 0.0
                opt = DGCSGD([{"params": [bias], "momentum": m}, marked], lr=lr,
                             weight_decay=wd)
            else:
                marked["weight_decay"] = wd
                opt = DGCSGD([marked], lr=lr)
            for step in range(4):
                self.grads([p, bias], step)
                w = wd * ref if w is None else m * w + wd * ref
                ref = ref - lr * (p.grad + w)
                opt.step()
            self.assertLess(float((p - ref).abs().max()), 1e-6, f"{how}: decay not applied")
            self.assertIn("weight_decay_buffer", opt.state[p])

    def test_disagreeing_decays_of_a_marked_group_are_refused(self):
        from gradcomp.torch import DGCSGD

        g = {"params": self.params(6), "momentum": 0.0, "gradcomp_velocity": 0.9,
             "gradcomp_weight_decay": 0.05, "weight_decay": 0.3}
        with self.assertRaisesRegex(ValueError, r"weight_decay=0.3 and gradcomp_weight_decay="
                                    r"0.05, which disagree.*param_groups\(params, weight_decay"):
            DGCSGD([g], lr=0.1)
        # What param_groups writes (wd / (1 - m) for torch.optim.SGD) is accepted.
        DGCSGD([dict(g, weight_decay=0.05 / (1 - 0.9))], lr=0.1)
        DGCSGD([dict(g, weight_decay=0.05)], lr=0.1)

    def test_marked_group_with_its_own_momentum_is_refused(self):
        from gradcomp.torch import DGCSGD

        for extra, named in (({"momentum": 0.9}, "momentum=0.9"),
                             ({"nesterov": True}, "nesterov=True"),
                             ({"dampening": 0.1}, "dampening=0.1"),
                             ({"gradcomp_velocity": 1.0}, "gradcomp_velocity=1.0")):
            g = dict({"params": self.params(3), "momentum": 0.0, "gradcomp_velocity": 0.9},
                     **extra)
            with self.assertRaisesRegex(ValueError, named):
                DGCSGD([g], lr=0.1)
            opt = DGCSGD(self.params(4), lr=0.1)
            with self.assertRaisesRegex(ValueError, named):
                opt.add_param_group(g)
            self.assertEqual(len(opt.param_groups), 1, "the refused group was added")

    def test_momentum_set_on_a_marked_group_after_it_joined_is_refused_at_the_step(self):
        """A scheduler cycling momentum (OneCycleLR's default) or a loaded state dict sets the
        marked group's momentum without add_param_group: the step refuses it, rather than
        leaving it unapplied while the other groups' momentum cycles."""
        from gradcomp.torch import DGCSGD

        def make():
            p, bias = self.params(8)
            return [p, bias], DGCSGD([{"params": [bias], "momentum": 0.9},
                                      {"params": [p], "momentum": 0.0,
                                       "gradcomp_velocity": 0.9}], lr=0.1)

        params, opt = make()
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
        self.grads(params, 0)
        with self.assertRaisesRegex(ValueError, r"it has momentum=0\.95 .*cycle_momentum=False"):
            opt.step()
        params, opt = make()
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10, cycle_momentum=False)
        self.grads(params, 0)
        opt.step()
        sd = opt.state_dict()
        sd["param_groups"][1]["momentum"] = 0.9
        params, opt = make()
        opt.load_state_dict(sd)
        self.grads(params, 1)
        with self.assertRaisesRegex(ValueError, r"it has momentum=0\.9"):
            opt.step()

    def test_torch_sgd_keywords_foreach_fused_differentiable(self):
        """torch.optim.SGD's foreach, fused and differentiable are taken: foreach (the same
        values either way) by the single-tensor updates, fused=True and differentiable=True
        refused by name."""
        from gradcomp.torch import DGCSGD

        for foreach in (None, False, True):
            a, b = self.params(9), self.params(9)
            oa = torch.optim.SGD(a, lr=0.1, momentum=0.9, foreach=False)
            ob = DGCSGD(b, lr=0.1, momentum=0.9, foreach=foreach, fused=None,
                        differentiable=False)
            for step in range(3):
                self.grads(a, step)
                self.grads(b, step)
                oa.step()
                ob.step()
            for x, y in zip(a, b):
                self.assertTrue(torch.equal(x, y), f"foreach={foreach}")
        for kw, named in ((dict(fused=True), "fused=True"),
                          (dict(differentiable=True), "differentiable=True")):
            with self.assertRaisesRegex(ValueError, f"{named} is not supported"):
                DGCSGD(self.params(9), lr=0.1, **kw)


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
        import gradcomp.torch._group as group
        import gradcomp.torch as gt

        saved = group.check_group
        group.check_group = lambda pg, backend: (pg, 0, 2)  # no process group needed to plan
        try:
            st = gt.GradcompState(module=module, **kw)
        finally:
            group.check_group = saved
        st._options_agreed = True  # no group to compare the hook's options on
        st._agree_call = lambda *args: None  # nor each call's
        return st

    def test_the_options_take_numpy_bools_and_refuse_bools_for_numbers(self):
        """exclude_1d took numpy's bool only under the type name numpy 1 gives it (bool_;
        numpy 2's is bool), and layer_min_size=True was refused without its range."""
        import numpy as np

        m = self.model(0)
        self.assertFalse(self.state(m, exclude_1d=np.False_).exclude_1d)
        self.assertTrue(self.state(m, exclude_1d=np.True_).exclude_1d)
        for name in ("layer_min_size", "start_iter"):
            for v in (True, np.False_):
                with self.subTest(name=name, value=repr(v)):
                    with self.assertRaisesRegex(ValueError, f"^{name}={re.escape(repr(v))} is "
                                                f"a bool, not an integer in 0..{2**63 - 1}"):
                        self.state(m, **{name: v})
        with self.assertRaisesRegex(ValueError, r"^exclude_1d=1 is not True or False"):
            self.state(m, exclude_1d=1)

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

    def test_complex_parameters_are_planned_where_ddp_puts_them(self):
        # DDP's bucket holds a complex parameter's gradient as its real view (two floats per
        # element) in a float32 buffer. Planned at one element each, a mixed bucket's runs
        # stopped halfway: the complex weight's second half was left unreduced (this rank's own
        # gradient), the complex bias half compressed, silently.
        class Complex(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.c = torch.nn.Parameter(torch.randn(40, 40, dtype=torch.complex64))
                self.cb = torch.nn.Parameter(torch.randn(40, dtype=torch.complex64))

            def forward(self, x):
                return (x.to(torch.complex64) @ self.c + self.cb).abs().sum()

        init_one_rank_gloo()
        try:
            m = Complex()
            ddp = torch.nn.parallel.DistributedDataParallel(m)
            buckets = []

            def record(_, bucket):
                buckets.append((list(bucket.parameters()), bucket.buffer().clone()))
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut

            ddp.register_comm_hook(None, record)
            ddp(torch.randn(4, 40)).backward()
        finally:
            dist.destroy_process_group()
        (params, buf), = buckets
        self.assertEqual(buf.dtype, torch.float32)
        st = self.state(m)  # c (1600 elements, 2-D) compressed, cb (1-D) in full precision
        plan = st._plan(self.Bucket(params, 0))
        self.assertEqual(plan["total"], buf.numel())
        self.assertEqual((plan["comp_n"], plan["full_n"]), (3200, 80))
        for runs, want in ((plan["comp"], m.c), (plan["full"], m.cb)):
            got = torch.cat([buf[o:o + n] for o, n in runs])
            self.assertTrue(torch.equal(got, torch.view_as_real(want.grad).flatten()))

        # A bucket whose buffer the plan does not cover is refused, naming both sizes, before
        # any exchange: never a partly reduced bucket.
        from gradcomp.torch.ddp import _HostStream, _reduce_bucket

        class Sized(self.Bucket):
            def buffer(self):
                return buf[:1640]

            def is_last(self):
                return True

        st.backend, st.start_iter = "cpu", 0
        with self.assertRaisesRegex(RuntimeError, "bucket 0's parameters take 3280 elements, "
                                    "but its buffer holds 1640"):
            _reduce_bucket(st, Sized(params, 0), buf[:1640], _HostStream())

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

    def test_two_models_sharing_a_state_are_refused(self):
        # Without module=, two models of one architecture would key their buckets alike and
        # take each other's residuals (and count two steps per step), silently.
        a, b = self.model(0), self.model(1)
        for interleaved in (False, True):
            st = self.state(None)
            ba = [self.Bucket([a[2].weight], 0), self.Bucket([a[0].weight, a[0].bias], 1)]
            bb = [self.Bucket([b[2].weight], 0), self.Bucket([b[0].weight, b[0].bias], 1)]
            if interleaved:  # one backward through both models
                st._note_bucket(ba[0], False)
                with self.assertRaisesRegex(ValueError, "twice in one step.*two DDP models"):
                    st._note_bucket(bb[0], False)
            else:  # model a's step, then model b's
                st._note_bucket(ba[0], False)
                st._note_bucket(ba[1], True)
                st._note_bucket(ba[0], False)  # a's next step: its own parameters
                st._note_bucket(ba[1], True)
                with self.assertRaisesRegex(ValueError, "two DDP models share this state"):
                    st._note_bucket(bb[0], False)

    def test_a_step_the_hook_refused_is_not_taken_for_a_second_model(self):
        # An unpickled state keyed by parameter index refuses its first compressed bucket until
        # set_module(model); DDP's backward then raises mid-step. After set_module and a new DDP
        # of the model, its first step is that model's, not bucket 0 "seen twice in one step".
        import gradcomp.torch.ddp as ddp

        class Bucket(self.Bucket):
            def __init__(self, params, index, last):
                super().__init__(params, index)
                self.last = last

            def is_last(self):
                return self.last

        m = self.model(0)
        st = self.state(m, start_iter=0)
        st._param_ids, st._param_names, st._needs_module = None, None, True  # as unpickled
        first = Bucket([m[2].weight], 0, False)
        buf = torch.zeros(1600)
        with self.assertRaisesRegex(RuntimeError, "call state.set_module"):
            ddp._reduce_bucket(st, first, buf, ddp._HostStream())
        st.set_module(m)
        st._note_bucket(Bucket([m[2].weight, m[0].weight, m[0].bias], 0, True), True)
        st._note_bucket(first, False)  # and the steps after it

    def test_the_model_wrapped_again_with_unfrozen_parameters_is_taken(self):
        # A state made with module=model follows the model's parameters, frozen ones included:
        # a new DDP of the model after unfreezing a layer is not a second model sharing it.
        m = self.model(0)
        st = self.state(m)
        first = self.Bucket([m[0].weight, m[0].bias], 0)  # m[2] frozen: not in DDP's buckets
        st._note_bucket(first, True)
        st._note_bucket(first, True)
        st._note_bucket(self.Bucket([m[2].weight], 0), False)  # unfrozen, DDP made again
        st._note_bucket(self.Bucket([m[0].weight, m[0].bias], 1), True)
        # Without module=, the state knows only the first step's parameters: the error names
        # the unfrozen re-wrap too (not only a second model) and module=, which follows it.
        st = self.state(None)
        st._note_bucket(first, True)
        with self.assertRaisesRegex(ValueError, "two DDP models share this state, or its model "
                                    "was wrapped again with parameters unfrozen.*module="):
            st._note_bucket(self.Bucket([m[2].weight], 0), False)
        other = self.model(1)  # another model's parameters are still refused, at once
        with self.assertRaisesRegex(ValueError, "not in the module given.*two DDP models share "
                                    "this state"):
            self.state(m)._note_bucket(self.Bucket([other[2].weight], 0), False)

    def test_bad_settings_and_state_dicts_are_refused(self):
        m = self.model(0)
        for kw in ({"layer_min_size": 1.7}, {"layer_min_size": "abc"}, {"start_iter": -1},
                   {"start_iter": True}, {"exclude_1d": "no"}):
            with self.assertRaises(ValueError, msg=str(kw)):
                self.state(m, **kw)
        with self.assertRaisesRegex(ValueError, "grad_scaler=2.0 has no get_scale"):
            self.state(m, grad_scaler=2.0)
        st = self.state(m)
        good = st.state_dict()
        for bad, why in (({**good, "iter": -100}, "iter=-100"), (None, "NoneType"),
                         ({**good, "gradcomp": "text"}, "not the bytes"),
                         ({**good, "keyed_by": ["params"], "gradcomp": self.blob(st)},
                          r"keyed_by=\['params'\] is not one of params, bucket"),
                         ({**good, "keyed_by": {}, "gradcomp": self.blob(st)}, "keyed_by={}")):
            with self.assertRaisesRegex(ValueError, why):
                st.load_state_dict(bad)
        # The slices carried for parameters DDP gave no gradient (find_unused_parameters).
        one = torch.ones(3)
        for carry in ([[["params", 0], one]], [[["params", "0"], one, 1.0]],
                      [[["bucket", 1], one, 1.0]], [[["params", 0], one.view(3, 1), 1.0]],
                      [[["params", 0], one.long(), 1.0]], [[["params", 0], one, 0.0]],
                      [[[["params"], 0], one, 1.0]], "x"):
            with self.assertRaisesRegex(ValueError, "carry is not the list of", msg=str(carry)):
                st.load_state_dict({**good, "gradcomp": self.blob(st), "carry": carry})
        self.assertEqual(st._loaded_carry, {})  # refused: the state as it was
        st.load_state_dict({**good, "gradcomp": self.blob(st), "carry": [[["params", 0], one,
                                                                          2.0]]})
        self.assertEqual(st.state_dict()["carry"][0][0], ["params", 0])
        # Residuals keyed by FSDP module name match no DDP bucket: refused, not dropped.
        with self.assertRaisesRegex(ValueError, "keyed by FSDP module name"):
            st.load_state_dict({**good, "keyed_by": "fsdp", "gradcomp": b"GCST" + bytes(108)})
        with self.assertRaises(TypeError):
            st.set_module(None)
        self.assertIsNotNone(st._param_ids)  # a refused set_module leaves the module's keys

    def test_options_and_iter_beyond_int64_are_refused_where_given(self):
        """layer_min_size, start_iter and the step counter travel as int64 in the ranks'
        agreement at the hook's first call: a value of 2**63 or more made that rank fail there
        alone (an OverflowError from torch.tensor) while its peers waited in the all_gather
        (a hang) until 2026-12-06. It is refused where it is given, naming the value and the
        range; 2**63 - 1 is taken."""
        m = self.model(0)
        for name in ("layer_min_size", "start_iter"):
            for v in (2**63, 2**64 + 5):
                with self.assertRaisesRegex(ValueError, f"{name}={v} is not an integer in "
                                            f"0..{2**63 - 1}", msg=name):
                    self.state(m, **{name: v})
            self.assertEqual(getattr(self.state(m, **{name: 2**63 - 1}), name), 2**63 - 1)
        st = self.state(m)
        good = st.state_dict()
        for v in (2**63, 2**64):
            with self.assertRaisesRegex(ValueError, f"iter={v} is not a step count in "
                                        f"0..{2**63 - 1}"):
                st.load_state_dict({**good, "iter": v})
        self.assertEqual(st.iter, 0)  # refused: unchanged
        st.load_state_dict({**good, "iter": 2**63 - 1})
        self.assertEqual(st.iter, 2**63 - 1)

    def blob(self, st):
        """A state blob's header as _precheck_blob reads it: rank 0 of 2, st's method."""
        import struct

        b = bytearray(b"GCST" + bytes(108))
        struct.pack_into("<ii", b, 32, 0, 2)
        struct.pack_into("<i", b, 48, int(st.config.struct.method))
        return bytes(b)

    def test_a_state_dict_blob_is_copied_at_the_load(self):
        # Kept until the first compressed call (no comm yet), the blob is the bytes the load
        # checked: a bytearray the caller reuses does not change it, and a memoryview is not
        # handed back by state_dict() (it would not pickle into the next checkpoint).
        import pickle

        m = self.model(0)
        for kind in (bytearray, memoryview):
            st = self.state(m)
            blob = bytearray(self.blob(st))
            st.load_state_dict({**st.state_dict(), "gradcomp": kind(blob)})
            blob[:4] = b"XXXX"
            saved = st.state_dict()
            self.assertIs(type(saved["gradcomp"]), bytes, kind.__name__)
            self.assertEqual(saved["gradcomp"], self.blob(st), kind.__name__)
            pickle.dumps(saved)

    def test_residuals_of_another_world_size_are_refused_saying_what_to_do(self):
        """A state dict saved at another world size (FSDP resharded onto other ranks, an elastic
        restart) or by another rank: refused naming both, with the way on (before: the ranks
        only, and no way to resume). Before the comm is made, once it is (the library's own
        check would say less), and at the first call that makes it (an unpickled state); the
        state dict without residuals loads, its step counter with it."""
        import struct

        st = self.state(self.model(0))
        st.backend = "cpu"  # its comm stood in for below: no CUDA stream to wait on
        good = st.state_dict()
        other = bytearray(self.blob(st))
        struct.pack_into("<ii", other, 32, 0, 3)
        wrong_rank = bytearray(self.blob(st))
        struct.pack_into("<ii", wrong_rank, 32, 1, 2)
        world = (r"saved by rank 0 of 3; this state is rank 0 of 2: residuals do not carry to "
                 r"another world size. Resume at 3 ranks, or load the state dict without them, "
                 r"state.load_state_dict\(dict\(d, gradcomp=None\)\)")
        rank = "saved by rank 1 of 2; .*: load on each rank the state dict that rank saved"

        class Comm:  # made: the library would check the blob on load_state
            loaded = []

            def load_state(self, blob):
                self.loaded.append(blob)

            def reset_state(self):
                pass

        for comm in (None, Comm()):
            st._comm = comm
            for blob, why in ((other, world), (wrong_rank, rank)):
                with self.assertRaisesRegex(ValueError, "state blob refused, this state is "
                                            "unchanged: " + why, msg=str(comm)):
                    st.load_state_dict({**good, "iter": 7, "gradcomp": bytes(blob)})
                self.assertEqual((st.iter, st._pending_blob, Comm.loaded), (0, None, []))
            st.load_state_dict({**good, "iter": 7, "gradcomp": None})
            self.assertEqual(st.iter, 7)
            st.iter = 0
        st._comm = None
        st._pending_blob = bytes(other)  # as unpickled: checked where the comm is made
        st._make_comm = lambda device: (Comm(), None)
        st._count_ranks = lambda *flags, device: (int(flags[0]), int(flags[1]))
        st._drop_comm = lambda: None
        with self.assertRaisesRegex(ValueError, world):
            st.comm(torch.device("cpu"))
        self.assertEqual(Comm.loaded, [])
        st._comm = None

    def test_residuals_keyed_otherwise_are_refused_after_the_load_too(self):
        # Residuals keyed by bucket, made parameter-keyed by set_module() after the load (or
        # after unpickling), would match no bucket: refused as load_state_dict refuses them.
        import pickle

        import gradcomp.torch._group as group

        m = self.model(0)
        st = self.state(None)
        blob = self.blob(st)
        st.load_state_dict({**st.state_dict(), "gradcomp": blob})
        with self.assertRaisesRegex(ValueError, "keyed by bucket index.*none would match"):
            st.set_module(m)
        self.assertIsNone(st._param_ids)  # refused: the state as it was
        self.assertEqual(st._keyed_by(), "bucket")
        with mock.patch.object(group, "check_group", lambda pg, backend: (pg, 0, 2)):
            again = pickle.loads(pickle.dumps(st))
            fsdp = pickle.loads(pickle.dumps(st))
        with self.assertRaisesRegex(ValueError, "keyed by bucket index.*none would match"):
            again.set_module(m)
        # An FSDP2 state's residuals, unpickled and handed DDP buckets.
        fsdp._pending_keyed = "fsdp"
        with self.assertRaisesRegex(ValueError, "keyed by FSDP module name.*none would match"):
            fsdp._plan(self.Bucket([m[0].weight], 0))
        keyed = self.state(m)  # parameter-keyed residuals: set_module takes them
        keyed.load_state_dict({**keyed.state_dict(), "gradcomp": blob})
        keyed.set_module(self.model(1))
        self.assertEqual(keyed._keyed_by(), "params")

    def test_residuals_of_another_layer_rule_are_refused(self):
        # Another layer_min_size or exclude_1d compresses other parameters, so the saved
        # residuals' keys would match no bucket: refused, the state as it was.
        m = self.model(0)
        st = self.state(m)
        saved = {**st.state_dict(), "gradcomp": self.blob(st)}
        for kw, why in (({"layer_min_size": 3000}, "saved with layer_min_size=1024, this state "
                         "has layer_min_size=3000"),
                        ({"exclude_1d": False, "layer_min_size": 1024}, "saved with "
                         "exclude_1d=True, this state has exclude_1d=False")):
            other = self.state(m, **kw)
            with self.assertRaisesRegex(ValueError, why + ".*fresh residuals"):
                other.load_state_dict(saved)
            self.assertIsNone(other._pending_blob)
        same = self.state(self.model(1))
        same.load_state_dict(saved)  # the same rule: taken
        self.assertEqual(same._pending_blob, saved["gradcomp"])
        other = self.state(m, start_iter=5)  # start_iter picks no parameter: taken
        other.load_state_dict(saved)

    def test_residuals_of_a_model_with_other_shapes_are_refused(self):
        # Residuals keyed by parameter index, loaded into a model whose parameters at those
        # indices have other shapes: a bucket's key is the saved one with another size (its
        # residual starts fresh, the saved one carried along unused) or a saved residual of the
        # same size lies on another layout, silently. Refused, naming the parameter and shapes.
        import pickle

        import gradcomp.torch._group as group

        nn = torch.nn
        m = self.model(0)  # 0.weight (64, 32) and 2.weight (40, 40) compressed
        st = self.state(m)
        saved = {**st.state_dict(), "gradcomp": self.blob(st)}
        wider = nn.Sequential(nn.Linear(32, 128), nn.Linear(5, 10, bias=False),
                              nn.Linear(40, 40, bias=False))
        other = self.state(wider)
        with self.assertRaisesRegex(ValueError, r"saved for a model whose parameter 0 is "
                                    r"'0.weight' of shape \(64, 32\), but this model's parameter "
                                    r"0 is '0.weight' of shape \(128, 32\).*do not load it"):
            other.load_state_dict(saved)
        self.assertIsNone(other._pending_blob)  # refused: the state as it was
        with self.assertRaisesRegex(ValueError, r"param_shapes is not the list of \[name, "
                                    r"shape\]"):
            self.state(self.model(1)).load_state_dict({**saved, "param_shapes": [["0.weight"]]})
        with self.assertRaisesRegex(ValueError, r"parameter 3 is '2.weight' of shape \(40, 40\), "
                                    "but this model has 2 parameters"):
            self.state(nn.Sequential(nn.Linear(32, 64))).load_state_dict(saved)
        # Taken: a full-precision parameter of another shape (no residual), parameters added
        # after the saved ones, and the same shapes under other names (a wrapper's).
        self.state(nn.Sequential(nn.Linear(32, 64), nn.Linear(6, 10, bias=False),
                                 nn.Linear(40, 40, bias=False))).load_state_dict(saved)
        self.state(nn.Sequential(*self.model(1), nn.Linear(3, 3))).load_state_dict(saved)
        self.state(nn.Sequential(self.model(1))).load_state_dict(saved)
        # A lazy module's parameter has no shape before its first forward: not checked there.
        lazy = nn.Sequential(nn.LazyLinear(64), nn.Linear(5, 10, bias=False),
                             nn.Linear(40, 40, bias=False))
        self.state(lazy).load_state_dict(saved)
        # Restored by unpickling: set_module checks the model it is given, and refuses it
        # leaving the state waiting for the right one.
        taken = self.state(self.model(1))
        taken.load_state_dict(saved)
        with mock.patch.object(group, "check_group", lambda pg, backend: (pg, 0, 2)):
            again = pickle.loads(pickle.dumps(taken))
        with self.assertRaisesRegex(ValueError, r"parameter 0 is '0.weight' of shape \(64, 32\)"):
            again.set_module(wider)
        self.assertTrue(again._needs_module)
        again.set_module(self.model(1))
        self.assertEqual(again.state_dict()["param_shapes"], saved["param_shapes"])

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


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class HookOnCpuWorld(unittest.TestCase):
    """gradcomp_hook's body (after its CUDA checks) with N threads as ranks: each its own
    GradcompState, a gloo group on a shared store, and the CPU world's comm in place of the
    NCCL one. Compared bit for bit with a serial reference: the mean of the buffers where the
    hook sends full precision, the library's own keyed allreduce of the gathered compressed
    parts (a second world making the same calls) elsewhere."""

    N, START, STEPS = 2, 1, 4

    def setUp(self):
        ctx = warnings.catch_warnings()  # bucket 2's expected "sent uncompressed" warning
        ctx.__enter__()
        warnings.simplefilter("ignore")
        self.addCleanup(ctx.__exit__, None, None, None)

    @classmethod
    def setUpClass(cls):
        import gradcomp

        # The GPU box's twin of this test (tools/hook_exact_rank.py) holds the part of DDP's
        # GradBucket the hook reads.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools"))
        import hook_exact_rank

        cls.Bucket = hook_exact_rank.Bucket
        cls.gradcomp = gradcomp
        torch.manual_seed(0)
        # bucket 0: one large weight (all compressed); bucket 1: mixed (2048 and 1600
        # compressed, a bias and a 50-element weight in full precision); bucket 2: a norm's
        # weight and bias only (all full precision).
        cls.model = torch.nn.Sequential(
            torch.nn.Linear(48, 48, bias=False), torch.nn.Linear(32, 64),
            torch.nn.Linear(5, 10, bias=False), torch.nn.Linear(40, 40, bias=False),
            torch.nn.LayerNorm(16))
        p = list(cls.model.parameters())
        cls.buckets = [[p[0]], [p[1], p[2], p[3], p[4]], [p[5], p[6]]]

    def config(self):
        return self.gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)

    def grads(self, step, rank, b):
        g = torch.Generator().manual_seed(1000 * step + 10 * rank + b)
        n = sum(q.numel() for q in self.buckets[b])
        return torch.randn(n, generator=g) * (rank + 1)

    @staticmethod
    def make_states(case, N, world, tag, module, start_iter, config, **settings):
        """N GradcompStates, rank r's on a gloo group of a shared store and world.comms[r]
        (settings: GradcompState's keywords over config()), closed when the test `case` ends
        (a state closed or aborted already: a no-op)."""
        import gradcomp.torch as gt
        import gradcomp.torch._group as group

        store = dist.HashStore()
        pgs = [None] * N

        def connect(r):  # gloo's rendezvous waits for every rank
            pgs[r] = dist.ProcessGroupGloo(dist.PrefixStore(tag, store), r, N)

        threads = [threading.Thread(target=connect, args=(r,)) for r in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        saved = group.check_group
        out = []
        try:
            for r, pg in enumerate(pgs):
                group.check_group = lambda pg, backend, r=r: (pg, r, N)
                # start_iter None: not given (FSDP2's hooks take no start_iter).
                given = {} if start_iter is None else {"start_iter": start_iter}
                st = gt.GradcompState(pg, module=module, backend="cpu", config=config(),
                                      **given, **settings)
                st._make_comm = lambda device, c=world.comms[r]: (c, None)
                case.addCleanup(st.close)
                out.append(st)
        finally:
            group.check_group = saved
        return out

    def states(self, world, tag):
        return self.make_states(self, self.N, world, tag, self.model, self.START, self.config)

    def step(self, world, states, step):
        """One DDP step of every rank: the buckets in order, then every future."""
        from gradcomp.torch.ddp import _HostStream, _reduce_bucket

        def rank(comm):
            r = comm.rank
            futs = []
            for b, params in enumerate(self.buckets):
                bucket = self.Bucket(self.grads(step, r, b), params, b,
                                     b == len(self.buckets) - 1)
                futs.append(_reduce_bucket(states[r], bucket, bucket.buf, _HostStream()))
            return [f.wait().clone() for f in futs]

        return world.run(rank)

    def reference(self, world, step, compressed):
        """What every rank must hold after the step: (x_0 + x_1) / 2 computed as the hook's
        torch allreduce does (x * (1/N), then summed), the compressed runs replaced by the
        library's keyed Avg allreduce of their gathered elements."""
        plan_state = self.states(world, "plan")[0]
        comp_runs = []
        for b, params in enumerate(self.buckets):
            plan = plan_state._plan(self.Bucket(None, params, b, False))
            comp_runs.append(plan if compressed and plan["comp_n"] else None)

        def rank(comm):
            out = []
            for b in range(len(self.buckets)):
                xs = [self.grads(step, r, b) for r in range(self.N)]
                mean = xs[0] * (1.0 / self.N)
                for x in xs[1:]:
                    mean = mean + x * (1.0 / self.N)
                plan = comp_runs[b]
                if plan is not None:
                    idx = torch.cat([torch.arange(o, o + n) for o, n in plan["comp"]])
                    part = xs[comm.rank][idx].contiguous()
                    comm.allreduce(part, op="avg", key=plan["key"])
                    mean[idx] = part
                out.append(mean)
            return out

        return world.run(rank)

    def same_bits(self, a, b, what):
        self.assertTrue(torch.equal(a.view(torch.int32), b.view(torch.int32)),
                        f"{what}: {int((a != b).sum())} of {a.numel()} elements differ")

    def test_a_parameter_frozen_later_gets_no_gradient(self):
        """A compressed parameter frozen after some steps (requires_grad=False; DDP with
        find_unused_parameters zero-fills its slice): its slice of the result is 0, as plain
        DDP's. It was what the parameter's error feedback (DGC: its velocity, for many steps)
        still held, which under gradient_as_bucket_view=True is the frozen parameter's .grad,
        so the optimizer went on moving it."""
        from gradcomp.torch.ddp import _HostStream, _reduce_bucket

        N = self.N
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(48, 48, bias=False),
                                    torch.nn.Linear(32, 64, bias=False), torch.nn.Linear(40, 40))
        w, w2, w3, b3 = model.parameters()
        # bucket 0 all compressed (w, w2), bucket 1 mixed (w3 compressed, b3 full precision)
        buckets = [[w, w2], [w3, b3]]
        frozen = [(0, w.numel()), (0, w3.numel())]  # the slices of w and w3

        def dgc():
            return self.gradcomp.Config(from_env=False, method="dgc", density=0.01,
                                        min_elements=0)

        for config in (self.config, dgc):
            with self.gradcomp.CpuWorld(N, config()) as world:
                states = self.make_states(self, N, world, f"frozen-{config.__name__}", model, 0,
                                          config)

                def step(s, freeze):
                    def rank(comm):
                        futs = []
                        for b, params in enumerate(buckets):
                            g = torch.Generator().manual_seed(100 * s + 10 * comm.rank + b)
                            buf = torch.randn(sum(p.numel() for p in params), generator=g)
                            if freeze:
                                o, n = frozen[b]
                                buf[o:o + n] = 0  # DDP's zero-fill of an unused parameter
                            bucket = self.Bucket(buf, params, b, b == len(buckets) - 1)
                            futs.append(_reduce_bucket(states[comm.rank], bucket, buf,
                                                       _HostStream()))
                        return [f.wait().clone() for f in futs]

                    return world.run(rank)

                for s in range(3):
                    step(s, False)
                w.requires_grad_(False)
                w3.requires_grad_(False)
                try:
                    for s in range(3, 6):
                        outs = step(s, True)
                        for r in range(N):
                            for b, (o, n) in enumerate(frozen):
                                out = outs[r][b]
                                self.assertEqual(float(out[o:o + n].abs().max()), 0.0,
                                                 f"{config.__name__} step {s} rank {r} bucket {b}")
                                self.assertGreater(float(out[o + n:].abs().max()), 0.0)
                finally:
                    w.requires_grad_(True)
                    w3.requires_grad_(True)

    def test_hook_matches_the_serial_reference_and_counts_what_it_sent(self):
        N = self.N
        with self.gradcomp.CpuWorld(N, self.config()) as w, \
                self.gradcomp.CpuWorld(N, self.config()) as ref:
            states = self.states(w, "hook")
            for step in range(self.STEPS):
                got = self.step(w, states, step)
                want = self.reference(ref, step, step >= self.START)
                for r in range(N):
                    for b in range(len(self.buckets)):
                        self.same_bits(got[r][b], want[0][b], f"step {step} rank {r} bucket {b}")
            self.assertIn(("full", 2), states[0]._warned)  # the all-full bucket, warned once
            st = states[0].stats()
            comp = self.STEPS - self.START
            self.assertEqual(st["iter"], self.STEPS)
            self.assertEqual(st["uncompressed_steps"], self.START)
            self.assertEqual(st["compressed_calls"], 2 * comp)  # buckets 0 and 1
            self.assertEqual(st["compressed_dense_bytes"], 4 * (2304 + 2048 + 1600) * comp)
            self.assertEqual(st["full_precision_calls"], 2 * comp)  # buckets 1 and 2
            self.assertEqual(st["full_precision_bytes"], 4 * (64 + 50 + 32) * comp)
            self.assertEqual(st["gradcomp"]["calls_compressed"], 2 * comp)
            self.assertEqual(st["gradcomp"]["bytes_in"], st["compressed_dense_bytes"])
            self.assertEqual(st["full_precision_params"],
                             ["1.bias", "2.weight", "4.bias", "4.weight"])
            self.assertEqual(st["compressed_params"], ["0.weight", "1.weight", "3.weight"])

    def test_a_resumed_step_with_buckets_grouped_otherwise_warns(self):
        """A state dict loaded where DDP groups the compressed parameters otherwise than the saved
        run did (a resumed static_graph=True DDP regroups after its second step, not its first)
        compresses under keys the saved run never used: those residuals start fresh and the
        loaded ones wait unused, which the hook says (once). The saved grouping does not warn."""
        N, K = self.N, self.START + 2
        with self.gradcomp.CpuWorld(N, self.config()) as w:
            states = self.states(w, "a")
            for step in range(K):
                self.step(w, states, step)
            saved = [s.state_dict() for s in states]
        buckets = self.buckets
        for regrouped in (False, True):
            with self.gradcomp.CpuWorld(N, self.config()) as w2:
                resumed = self.states(w2, f"r{int(regrouped)}")
                for s, d in zip(resumed, saved):
                    s.load_state_dict(d)
                if regrouped:  # DDP's first buckets: buckets 0 and 1 in one
                    self.buckets = [buckets[0] + buckets[1], buckets[2]]
                try:
                    with warnings.catch_warnings(record=True) as got:
                        warnings.simplefilter("always")
                        self.step(w2, resumed, K)
                finally:
                    self.buckets = buckets
                said = [str(x.message) for x in got if "grouped otherwise" in str(x.message)]
                self.assertEqual(bool(said), regrouped, said)
                if regrouped:
                    self.assertIn("static_graph=True after its second", said[0])

    def test_a_state_dict_that_saved_no_keys_checks_none(self):
        """A state dict from before the residual keys were saved, loaded and saved again before
        any compressed call, holds the residuals under no key: resumed from it, the saved
        grouping does not warn (it warned, every bucket taken as grouped otherwise), as
        FSDP2's hooks already did."""
        N, K = self.N, self.START + 2
        with self.gradcomp.CpuWorld(N, self.config()) as w:
            states = self.states(w, "a")
            for step in range(K):
                self.step(w, states, step)
            old = [{k: v for k, v in s.state_dict().items() if k != "keys"} for s in states]
        with self.gradcomp.CpuWorld(N, self.config()) as w1:
            mid = self.states(w1, "m")
            for s, d in zip(mid, old):
                s.load_state_dict(d)
            again = [s.state_dict() for s in mid]
        self.assertEqual((again[0]["keys"], again[0]["gradcomp"] is None), ([], False))
        with self.gradcomp.CpuWorld(N, self.config()) as w2:
            resumed = self.states(w2, "r")
            for s, d in zip(resumed, again):
                s.load_state_dict(d)
            with warnings.catch_warnings(record=True) as got:
                warnings.simplefilter("always")
                self.step(w2, resumed, K)
        said = [str(x.message) for x in got if "grouped otherwise" in str(x.message)]
        self.assertEqual(said, [])

    def test_state_dict_resumes_bit_for_bit(self):
        """Saved after K steps and loaded into fresh states and a fresh world, the next step
        is bitwise the uninterrupted run's; without the load it is not (the residuals count)."""
        N, K = self.N, self.START + 2
        with self.gradcomp.CpuWorld(N, self.config()) as w:
            states = self.states(w, "a")
            for step in range(K):
                self.step(w, states, step)
            saved = [s.state_dict() for s in states]
            self.assertTrue(all(d["gradcomp"] for d in saved))
            after = self.step(w, states, K)
        with self.gradcomp.CpuWorld(N, self.config()) as w2:
            resumed = self.states(w2, "b")
            for s, d in zip(resumed, saved):
                s.load_state_dict(d)
            again = self.step(w2, resumed, K)
        with self.gradcomp.CpuWorld(N, self.config()) as w3:
            fresh = self.states(w3, "c")
            for s in fresh:
                s.iter = K
            cold = self.step(w3, fresh, K)
        for r in range(N):
            for b in range(len(self.buckets)):
                self.same_bits(again[r][b], after[r][b], f"rank {r} bucket {b}")
        self.assertFalse(torch.equal(cold[0][0], after[0][0]))


    def test_a_refused_load_leaves_the_state_as_it_was(self):
        """load_state_dict of a blob the library refuses: (a) with the comm made, raises and
        leaves the step counter and residuals as they were; (b) before the comm (a resume),
        a blob of another method raises at load time, the state unchanged; (c) a blob only the
        library can refuse (other bits) raises at the first compressed call and at every later
        one: the comm is not kept, so no step runs on fresh residuals."""
        import gradcomp

        N = self.N

        def dgc():
            return gradcomp.Config(from_env=False, method="dgc", density=0.05, min_elements=0)

        def bits2():
            return gradcomp.Config(from_env=False, method="qsgd", bits=2, min_elements=0)

        saved = {}
        for name, cfg in (("dgc", dgc), ("bits2", bits2)):
            with gradcomp.CpuWorld(N, cfg()) as w:
                states = self.make_states(self, N, w, "save-" + name, self.model, self.START, cfg)
                for step in range(self.START + 1):
                    self.step(w, states, step)
                saved[name] = states[0].state_dict()
        with gradcomp.CpuWorld(N, self.config()) as w:
            states = self.states(w, "refuse")
            for step in range(self.START + 3):
                self.step(w, states, step)
            before = states[0].state_dict()
            with self.assertRaisesRegex(ValueError, "state blob refused"):
                states[0].load_state_dict(saved["dgc"])
            self.assertEqual(states[0].iter, before["iter"])
            self.assertEqual(states[0].state_dict(), before)
        with gradcomp.CpuWorld(N, self.config()) as w:
            fresh = self.states(w, "refuse-fresh")
            with self.assertRaisesRegex(ValueError, "state blob refused, this state is "
                                        "unchanged: saved with method='dgc'"):
                fresh[0].load_state_dict(saved["dgc"])
            self.assertEqual((fresh[0].iter, fresh[0]._pending_blob), (0, None))

            class Owned:  # the world's comm, closed by the world, not by the state
                def __init__(self, c):
                    self.c, self.closed = c, False

                def load_state(self, blob):
                    self.c.load_state(blob)

                def close(self):
                    self.closed = True

            made = [[] for _ in range(N)]
            for r, st in enumerate(fresh):
                st._make_comm = lambda device, r=r: (
                    made[r].append(Owned(w.comms[r])) or made[r][-1], None)
            # Rank 0 alone resumes from a blob the library refuses (the method agrees: checked
            # at the comm); every rank raises at the first compressed call, none waits for
            # another, and again at the next call.
            fresh[0].load_state_dict(saved["bits2"])
            for _ in range(2):
                errors = [None] * N

                def first_call(r):
                    try:
                        fresh[r].comm(torch.device("cpu"))
                    except Exception as e:  # noqa: BLE001 - checked below
                        errors[r] = e

                threads = [threading.Thread(target=first_call, args=(r,), daemon=True)
                           for r in range(N)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                self.assertFalse(any(t.is_alive() for t in threads), "a rank still waits")
                self.assertIsInstance(errors[0], ValueError)
                self.assertRegex(str(errors[0]), "state blob refused.*bits")
                self.assertIsInstance(errors[1], RuntimeError)
                self.assertIn("another rank's gradcomp refused its saved state", str(errors[1]))
            self.assertEqual([[m.closed for m in ms] for ms in made], [[True, True]] * N)
            self.assertEqual([st._comm for st in fresh], [None] * N)

    def test_a_state_dict_keyed_otherwise_is_refused(self):
        """Residuals saved under parameter indices (module=model) do not load into a state
        keyed by bucket, nor the reverse: none would match. An unpickled state (no module)
        refuses to compress until set_module()."""
        import pickle

        N, K = self.N, self.START + 1
        with self.gradcomp.CpuWorld(N, self.config()) as w:
            states = self.states(w, "keyed")
            for step in range(K):
                self.step(w, states, step)
            by_params = states[0].state_dict()
            self.assertEqual(by_params["keyed_by"], "params")
        with self.gradcomp.CpuWorld(N, self.config()) as w:
            bucketed = self.make_states(self, N, w, "keyed-b", None, self.START, self.config)
            with self.assertRaisesRegex(ValueError, "keyed by parameter index"):
                bucketed[0].load_state_dict(by_params)
            self.assertEqual((bucketed[0].iter, bucketed[0]._pending_blob), (0, None))
        import gradcomp.torch as gt
        import gradcomp.torch._group as group

        saved_check = group.check_group
        group.check_group = lambda pg, backend: (pg, 0, N)  # no default group here
        try:
            st = gt.GradcompState.__new__(gt.GradcompState)
            st.__setstate__(pickle.loads(pickle.dumps(by_params)))
        finally:
            group.check_group = saved_check
        self.assertEqual(st._keyed_by(), "params")
        with self.assertRaisesRegex(RuntimeError, "call state.set_module"):
            st._plan(self.Bucket(None, self.buckets[0], 0, False))
        st.set_module(self.model)
        self.assertEqual(st._plan(self.Bucket(None, self.buckets[0], 0, False))["key"],
                         states[0]._plan(self.Bucket(None, self.buckets[0], 0, False))["key"])

    def test_method_none_warning_gives_the_real_reason(self):
        """A state with method='none' (e.g. GRADCOMP_METHOD=none) sends every call
        uncompressed; its one warning says so, not that gradcomp needs two ranks."""
        import gradcomp

        def none():
            return gradcomp.Config(from_env=False, method="none", min_elements=0)

        with gradcomp.CpuWorld(self.N, none()) as w:
            states = self.make_states(self, self.N, w, "none", self.model, 0, none)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.step(w, states, 0)
        said = {str(c.message) for c in caught if "uncompressed:" in str(c.message)}
        self.assertTrue(said)
        for m in said:
            self.assertIn("the state's method is 'none'", m)
            self.assertIn("GRADCOMP_METHOD=none", m)
            self.assertNotIn("two or more ranks", m)
        self.assertEqual(states[0].counters["compressed_calls"], 0)

    def _first_bucket_errors(self, w, states, step, exc):
        """Every rank of world w reduces its first bucket of the given step through its state
        (the hook's own path, on the host): what each rank raised of type exc, or None."""
        from gradcomp.torch.ddp import _HostStream, _reduce_bucket

        def first_bucket(comm):
            r = comm.rank
            bucket = self.Bucket(self.grads(step, r, 0), self.buckets[0], 0, False)
            try:
                _reduce_bucket(states[r], bucket, bucket.buf, _HostStream())
            except exc as e:
                return str(e)
            return None

        return w.run(first_bucket, timeout=60)

    def test_ranks_with_different_hook_options_fail_alike(self):
        """layer_min_size, exclude_1d and start_iter decide which calls each step makes, and
        the step counter (iter) from which step it compresses: a rank that differs (a keyword,
        a state dict loaded on some ranks only) made other calls than its peers until
        2026-12-06 (a hang on NCCL, a timeout or gloo's abort on the CPU backend). At the
        hook's first call outside paused() every
        rank raises the same ValueError naming the rank, the option and both values, before
        any gradient is sent; a paused step (on every rank) sends uncompressed and compares
        no option."""
        N = self.N
        cases = (("start_iter", self.START + 2, self.START),
                 ("layer_min_size", 4096, 1024),  # bucket 1's 2048 and 1600 in full precision
                 ("exclude_1d", False, True),
                 ("iter", 3, 0))  # a state dict loaded on rank 1 only
        for name, value, first in cases:
            with self.subTest(name=name), self.gradcomp.CpuWorld(N, self.config()) as w:
                states = self.states(w, "differ-" + name)
                with states[0].paused(), states[1].paused():
                    self.step(w, states, 0)  # uncompressed, nothing compared
                setattr(states[1], name, value)

                said = self._first_bucket_errors(w, states, 0, ValueError)
                want = (f"rank 1 of the state's group has {name}={value!r} while rank 0 has "
                        f"{first!r}")
                for r in range(N):
                    self.assertIsNotNone(said[r], f"rank {r} raised nothing")
                    self.assertIn(want, said[r])
                self.assertEqual(said[0], said[1])
                self.assertEqual([st.counters["compressed_calls"] for st in states], [0, 0])

    def test_close_finishes_the_state(self):
        """After close() the residuals are gone: state_dict(), load_state_dict() and a hook
        call raise the sentence saying to take state_dict() before close() (not a checkpoint
        without residuals, nor a step on a silently made fresh comm); stats() still reads."""
        import gradcomp.torch as gt

        N = self.N
        with self.gradcomp.CpuWorld(N, self.config()) as w:
            states = self.states(w, "close")
            for step in range(self.START + 2):
                self.step(w, states, step)
            saved = states[0].state_dict()
            made, closed = [], []
            for r, st in enumerate(states):
                comm = st._comm
                comm.close = lambda r=r: closed.append(r)  # the world owns its comms
                st._make_comm = lambda device: made.append(device)
                st.close()
                st.close()  # a no-op
                del comm.close  # the world's own close() again: it closes the comm at its end
            self.assertEqual(closed, list(range(N)))
            msg = r"the state was closed \(GradcompState.close\(\)\).*state_dict\(\) before close"
            for st in states:
                with self.assertRaisesRegex(RuntimeError, msg):
                    st.state_dict()
                with self.assertRaisesRegex(RuntimeError, msg):
                    st.load_state_dict(saved)
                with self.assertRaisesRegex(RuntimeError, msg):
                    gt.gradcomp_hook(st, self.Bucket(torch.zeros(8), self.buckets[0], 0, True))
                with self.assertRaisesRegex(RuntimeError, msg):
                    self.step(w, [st] * N, self.START + 2)
            self.assertEqual(made, [])
            self.assertEqual(states[0].stats()["iter"], self.START + 2)

    def test_a_state_dict_loaded_on_some_ranks_only_fails_every_rank(self):
        """Residuals loaded on rank 0 only (`if rank == 0: state.load_state_dict(...)`), the
        step counters alike (FSDP2's hooks keep none): rank 0's first compressed call would
        run the load's check of its call alone, which on NCCL its peers never join (a hang).
        When the comm is made every rank counts the ranks that loaded, and all raise the same
        RuntimeError, the comm not kept (as for a refused state dict). Any count between none
        and all is refused: 1 of 2 ranks, and 2 of 3 (one rank short of all)."""
        steps = self.START + 2
        for N, loaders in ((self.N, 1), (3, 2)):
            with self.subTest(ranks=N, loaded=loaders):
                with self.gradcomp.CpuWorld(N, self.config()) as w:
                    states = self.make_states(self, N, w, f"partial-save-{N}", self.model,
                                              self.START, self.config)
                    for step in range(steps):
                        self.step(w, states, step)
                    saved = [st.state_dict() for st in states]
                stack = contextlib.ExitStack()  # the world outlives the states (their cleanup)
                self.addCleanup(stack.close)
                w = stack.enter_context(self.gradcomp.CpuWorld(N, self.config()))
                states = self.make_states(self, N, w, f"partial-load-{N}", self.model,
                                          self.START, self.config)
                for r in range(N):
                    if r < loaders:
                        states[r].load_state_dict(saved[r])
                    else:
                        states[r].iter = saved[r]["iter"]

                said = self._first_bucket_errors(w, states, steps, RuntimeError)
                for r in range(N):
                    self.assertIsNotNone(said[r], f"rank {r} raised nothing")
                    self.assertIn(f"{loaders} of the group's {N} ranks loaded a state dict with "
                                  "residuals (load_state_dict) and the others did not", said[r])
                self.assertEqual([st._comm for st in states], [None] * N)
                self.assertEqual([st.counters["compressed_calls"] for st in states], [0] * N)


class HookNearestOnCpuWorld(HookOnCpuWorld):
    """HookOnCpuWorld's tests with GRADCOMP_ROUNDING=nearest, given to the states as
    GradcompState's keyword rounding="nearest" (the worlds' comms, which the hook uses here,
    are made from the same settings)."""

    def config(self):
        return self.gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0,
                                    rounding="nearest")

    def states(self, world, tag):
        def plain():
            return self.gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)

        states = self.make_states(self, self.N, world, tag, self.model, self.START, plain,
                                  rounding="nearest")
        for s in states:
            self.assertEqual((s.config.rounding, s.config.struct.rounding), ("nearest", 1))
        return states

    def test_nearest_without_error_feedback_is_refused(self):
        with self.assertRaisesRegex(ValueError, r"rounding=nearest \(GRADCOMP_ROUNDING\) with "
                                    r"error_feedback=0 \(GRADCOMP_EF\)"):
            self.gradcomp.Config(from_env=False, rounding="nearest", error_feedback=0)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CudaStreamOrder(unittest.TestCase):
    """The hook's GPU-only part (_CudaStream) on the CPU world, torch.cuda's stream, event and
    CUDA-aware future replaced by recorders: gradcomp gets the hook stream's handle; in a mixed
    bucket the event is recorded once the compressed part is back in the bucket, and the
    future's callback waits on it before it writes the full-precision part (on the GPU they
    run on two streams); the other futures are made for the bucket's device."""

    def test_mixed_bucket_orders_its_two_streams(self):
        from unittest import mock

        import gradcomp
        import gradcomp.torch.ddp as ddp_mod

        H = HookOnCpuWorld
        H.setUpClass()  # its model, buckets and gradients
        N, cuda = 2, torch.device("cuda", 0)
        local = threading.local()  # the rank thread's bucket buffer and events
        devices_seen = []

        class Event:
            def record(self, stream):
                self.buf = local.buf
                self.at_record = local.buf.clone()
                local.events.append(self)

        class Stream:
            cuda_stream = 0x5000

            def wait_event(self, ev):  # called from the future's callback
                ev.at_wait = ev.buf.clone()

        class Future(torch.futures.Future):
            def __init__(self, devices=None):
                devices_seen.append(devices)
                super().__init__()

        def config():
            return gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)

        def grads(r, b):
            return H.grads(H, 0, r, b)

        with gradcomp.CpuWorld(N, config()) as world, \
                mock.patch.object(torch.cuda, "current_stream", lambda device=None: Stream()), \
                mock.patch.object(torch.cuda, "Event", Event), \
                mock.patch.object(torch.futures, "Future", Future):
            states = H.make_states(self, N, world, "cuda-order", H.model, 0, config)
            streams = [[] for _ in range(N)]
            for r, c in enumerate(world.comms):
                def raw(*args, real=c.allreduce_raw, r=r):
                    streams[r].append(args[5])  # the stream argument
                    return real(*args)

                c.allreduce_raw = raw

            def rank(comm):
                r = comm.rank
                local.events = []
                out = []
                for b in (0, 1):  # all compressed, then mixed
                    local.buf = grads(r, b)
                    bucket = H.Bucket(local.buf, H.buckets[b], b, b == 1)
                    fut = ddp_mod._reduce_bucket(states[r], bucket, local.buf,
                                                 ddp_mod._CudaStream(cuda))
                    out.append((local.buf, fut.wait()))
                return out, local.events

            got = world.run(rank)
        plan = states[0]._plan(H.Bucket(None, H.buckets[1], 1, False))
        comp = torch.cat([torch.arange(o, o + n) for o, n in plan["comp"]])
        full = torch.cat([torch.arange(o, o + n) for o, n in plan["full"]])
        mean = sum(grads(q, 1) * (1.0 / N) for q in range(N))
        for r in range(N):
            out, events = got[r]
            self.assertEqual(streams[r], [Stream.cuda_stream] * 2)
            buf, result = out[1]
            self.assertIs(result, buf)
            sent = grads(r, 1)
            (ev,) = events  # the mixed bucket's
            # Recorded after the compressed part came back: it is the final one, the
            # full-precision part still this rank's own gradient.
            self.assertTrue(torch.equal(ev.at_record[comp], buf[comp]))
            self.assertFalse(torch.equal(buf[comp], sent[comp]))
            self.assertTrue(torch.equal(ev.at_record[full], sent[full]))
            # Waited on before the full-precision part was written.
            self.assertTrue(torch.equal(ev.at_wait[full], sent[full]))
            self.assertTrue(torch.allclose(buf[full], mean[full]))
        # Bucket 0's done(), for its buffer's device (the CPU here; the GPU's on the GPU);
        # bucket 1's future is then()'s, which follows the allreduce's.
        self.assertEqual(devices_seen, [[torch.device("cpu")]] * N)


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class StateCallsOnTheCommDevice(unittest.TestCase):
    """gradcomp's calls outside the hook (state save, load and reset, destroy) act on the current
    CUDA device: its NULL stream is the handle the hook passed for DDP's default stream, and a
    load allocates the restored states there. They run with the device the comm was made on
    current, whatever device the caller's thread has (DDP(device_ids=[k]) without
    torch.cuda.set_device(k)); torch.cuda's device switch and stream replaced by recorders."""

    def test_save_load_reset_close_run_on_the_comm_device(self):
        from unittest import mock

        import gradcomp.torch.ddp as ddp_mod

        current = ["cuda:0"]  # the caller's thread: not the comm's device
        seen = []

        class Device:
            def __init__(self, device):
                self.device = str(device)

            def __enter__(self):
                self.prev, current[0] = current[0], self.device

            def __exit__(self, *exc):
                current[0] = self.prev

        class Stream:
            def synchronize(self):
                seen.append(("synchronize", current[0]))

        class Comm:
            def save_state(self):
                seen.append(("save", current[0]))
                return b"blob"

            def load_state(self, blob):
                seen.append(("load", current[0]))

            def reset_state(self):
                seen.append(("reset", current[0]))

            def close(self):
                seen.append(("close", current[0]))

        with mock.patch.object(ddp_mod._group, "check_group", lambda pg, backend: (None, 0, 2)), \
                mock.patch.object(torch.cuda, "device", Device), \
                mock.patch.object(torch.cuda, "current_stream", lambda device=None: Stream()), \
                mock.patch.object(ddp_mod._nccl, "destroy_nccl",
                                  lambda handle: seen.append(("destroy", current[0]))), \
                mock.patch.object(ddp_mod.GradcompState, "_count_ranks",
                                  lambda self, *flags, device: seen.append(("agree", current[0]))
                                  or [2 * int(f) for f in flags]):  # both ranks alike
            state = ddp_mod.GradcompState()
            state._make_comm = lambda device: (Comm(), 0x1234)
            v = ddp_mod._STATE_VERSION
            # Restored before the first call (a resumed run): loaded when the hook makes the comm.
            # A state header (plugin/state.cc) of rank 0 of 2 and this method: what
            # load_state_dict checks before the comm exists.
            import struct
            pending = (b"GCST" + bytes(28) + struct.pack("<ii", 0, 2) + bytes(8)
                       + struct.pack("<i", int(state.config.struct.method)) + bytes(60))
            state.load_state_dict({"version": v, "iter": 5, "gradcomp": pending})
            state.comm(torch.device("cuda", 1))  # as the hook does, on the bucket's device
            state.load_state_dict({"version": v, "iter": 5, "gradcomp": b"saved"})
            state.load_state_dict({"version": v, "iter": 5, "gradcomp": None})
            self.assertEqual(state.state_dict()["gradcomp"], b"blob")
            state.close()
        # A load and a save first wait for the current stream (a replayed graph's calls are
        # not the comm's to wait for).
        self.assertEqual([what for what, _ in seen], ["load", "agree", "synchronize", "load",
                                                      "synchronize", "reset", "synchronize",
                                                      "save", "close", "destroy"])
        self.assertEqual({dev for _, dev in seen}, {"cuda:1"})
        self.assertEqual(current, ["cuda:0"])


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class RealDdpBuckets(unittest.TestCase):
    """The hook's body under this torch's real DDP (one rank, gloo, a 1-rank CPU world that
    passes through): the GradBucket calls it makes exist, a bucket's buffer is its
    parameters() in order (the plan's offsets), steps are counted on the last bucket, and the
    trained parameters are bitwise those of DDP without a hook."""

    STEPS = 4

    def train(self, use_hook):
        import gradcomp
        import gradcomp.torch as gt
        import gradcomp.torch._group as group
        from gradcomp.torch.ddp import _HostStream, _reduce_bucket

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                    torch.nn.Linear(128, 10), torch.nn.LayerNorm(10))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        state = None
        if use_hook:
            config = gradcomp.Config(from_env=False, min_elements=0)
            world = gradcomp.CpuWorld(1, config)
            self.addCleanup(world.close)
            saved = group.check_group
            group.check_group = lambda pg, backend: (dist.group.WORLD, 0, 1)
            try:
                state = gt.GradcompState(module=model, start_iter=1, backend="cpu",
                                         config=config)
            finally:
                group.check_group = saved
            self.addCleanup(state.close)  # before the world's close: runs first
            state._make_comm = lambda device: (world.comms[0], None)

            def hook(st, bucket):
                buf, off = bucket.buffer(), 0
                for p, g in zip(bucket.parameters(), bucket.gradients()):
                    self.assertEqual(g.data_ptr(), buf.data_ptr() + off * buf.element_size())
                    off += p.numel()
                self.assertEqual(off, buf.numel())
                return _reduce_bucket(st, bucket, buf, _HostStream())

            ddp.register_comm_hook(state, hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(5)
        for _ in range(self.STEPS):
            x, y = torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()], state

    def test_real_buckets(self):
        init_one_rank_gloo()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plain, _ = self.train(False)
                hooked, state = self.train(True)
        finally:
            dist.destroy_process_group()
        for a, b in zip(plain, hooked):
            self.assertTrue(torch.equal(a.view(torch.int32), b.view(torch.int32)))
        st = state.stats()
        comp = self.STEPS - 1
        self.assertEqual((st["iter"], st["uncompressed_steps"]), (self.STEPS, 1))
        # DDP rebuilt its bucket after step 0 (the uncompressed one): one plan, for the new order.
        self.assertEqual(len(state._plans), 1)
        # The one-rank world passes every call through: handed to gradcomp, not compressed.
        self.assertEqual((st["compressed_calls"], st["passed_calls"]), (0, comp))
        self.assertEqual(st["passed_dense_bytes"], 4 * (128 * 64 + 10 * 128) * comp)
        self.assertEqual(st["full_precision_bytes"], 4 * (128 + 10 + 10 + 10) * comp)
        self.assertEqual(st["compressed_params"], ["0.weight", "2.weight"])
        self.assertEqual(st["full_precision_params"], ["0.bias", "2.bias", "3.bias", "3.weight"])


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class FsdpReduceScatterOnCpuWorld(unittest.TestCase):
    """GradcompReduceScatter's call (after its CUDA checks) from 2 threads as ranks on the CPU
    world, FSDP's way: keyword arguments, FSDP's AVG (fp32/bf16) and SUM (fp16, pre/post
    divided) ops, one module's flat gradients each step. Bit for bit the library's own keyed
    reduce-scatter on a second world making the same calls."""

    N, n, STEPS = 2, 1000, 3

    def setUp(self):
        import gradcomp
        from unittest import mock

        if not gradcomp.has("gradcompReduceScatterKeyed"):
            self.skipTest("this libgradcomp has no gradcompReduceScatterKeyed")
        self.gradcomp = gradcomp
        # The bare gloo groups are not registered with torch.distributed: both are the world.
        patch = mock.patch.object(dist, "get_process_group_ranks",
                                  lambda group: list(range(self.N)))
        patch.start()
        self.addCleanup(patch.stop)

    def config(self):
        return self.gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)

    def inputs(self, step, rank):
        g = torch.Generator().manual_seed(100 * step + rank)
        return torch.randn(self.N * self.n, generator=g) * (rank + 1)

    def test_reduce_scatter_matches_the_library_and_counts_its_calls(self):
        import gradcomp.torch as gt

        ops = [dist.ReduceOp.AVG, dist.ReduceOp.SUM, dist.ReduceOp.AVG]
        with self.gradcomp.CpuWorld(self.N, self.config()) as w, \
                self.gradcomp.CpuWorld(self.N, self.config()) as ref:
            states = HookOnCpuWorld.make_states(self, self.N, w, "rs", None, None, self.config)
            hooks = [gt.GradcompReduceScatter(st, "layers.0") for st in states]

            def rank(comm):
                r, outs = comm.rank, []
                for step, op in enumerate(ops):
                    out = hooks[r].allocate((self.n,), dtype=torch.float32, device="cpu")
                    self.assertIsNone(hooks[r]._reduce_scatter(
                        out, self.inputs(step, r), states[r].process_group, op, False,
                        lambda: None))
                    outs.append(out)
                return outs

            def reference(comm):
                outs = []
                for step, op in enumerate(ops):
                    out = torch.empty(self.n)
                    comm.reduce_scatter(self.inputs(step, comm.rank), out,
                                        op="avg" if op == dist.ReduceOp.AVG else "sum",
                                        key=hooks[0].key)
                    outs.append(out)
                return outs

            got, want = w.run(rank), ref.run(reference)
            for r in range(self.N):
                for step in range(len(ops)):
                    self.assertTrue(torch.equal(got[r][step].view(torch.int32),
                                                want[r][step].view(torch.int32)),
                                    f"rank {r} step {step}")
            self.assertFalse(torch.equal(got[0][0], got[1][0]))  # each rank its own block
            st = states[0].stats()
            self.assertEqual(st["compressed_calls"], len(ops))
            self.assertEqual(st["compressed_dense_bytes"], 4 * self.N * self.n * len(ops))
            self.assertEqual(st["gradcomp"]["calls_reduce_scatter"], len(ops))

    def test_mismatched_sizes_are_refused(self):
        import gradcomp.torch as gt

        rs = gt.GradcompReduceScatter(None, "layers.0")

        class Group:
            def size(self):
                return 2

        with self.assertRaisesRegex(ValueError, r"input has 7 elements, not world_size \* "
                                    r"output = 2 \* 3"):
            rs._reduce_scatter(torch.zeros(3), torch.zeros(7), Group(), dist.ReduceOp.AVG,
                               False, lambda: None)
        with self.assertRaisesRegex(ValueError, "has no state"):
            with mock.patch.object(torch.Tensor, "device", torch.device("cuda", 0)):
                rs(torch.zeros(3), torch.zeros(6), Group(), dist.ReduceOp.AVG)
        # gradcomp writes the output by address: a strided view would be written past (into
        # the elements between its own), and a strided input read wrongly.
        base = torch.full((12,), -7.0)
        with self.assertRaisesRegex(ValueError, "non-contiguous output"):
            with mock.patch.object(torch.Tensor, "device", torch.device("cuda", 0)):
                rs(base[::2], torch.zeros(12), Group(), dist.ReduceOp.AVG)
        with self.assertRaisesRegex(ValueError, "non-contiguous input"):
            with mock.patch.object(torch.Tensor, "device", torch.device("cuda", 0)):
                rs(torch.zeros(3), torch.zeros(12)[::2], Group(), dist.ReduceOp.AVG)
        self.assertTrue(bool((base == -7.0).all()))

    def test_an_op_gradcomp_does_not_compress_is_refused_under_dgc_momentum(self):
        """FSDP's pre-multiplied sum (any op but Sum/Avg) goes to torch uncompressed, which
        under DGC's momentum correction would train every parameter without momentum: every
        rank refuses it, naming the way out; other methods send it with a warning."""
        import gradcomp.torch as gt

        def dgc():
            return self.gradcomp.Config(from_env=False, method="dgc", density=0.01,
                                        min_elements=0)

        with self.gradcomp.CpuWorld(self.N, dgc()) as w:
            states = HookOnCpuWorld.make_states(self, self.N, w, "rs-op", None, None, dgc)
            rs = gt.GradcompReduceScatter(states[0], "layers.0")
            with self.assertRaisesRegex(ValueError, "set_force_sum_reduction_for_comms"):
                rs._reduce_scatter(torch.zeros(self.n), torch.zeros(self.N * self.n),
                                   states[0].process_group, dist.ReduceOp.MAX, False,
                                   lambda: None)
        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            states = HookOnCpuWorld.make_states(self, self.N, w, "rs-op-q", None, None, self.config)
            rs = gt.GradcompReduceScatter(states[0], "layers.0")
            sent = self.ops_sent_to_torch(rs, states[0], dist.ReduceOp.MAX,
                                          torch.zeros(self.N * self.n))
            self.assertEqual(sent, [dist.ReduceOp.MAX])
            self.assertIn("fsdp-op", states[0]._warned)


    def test_a_divide_factor_is_nccls_premul_sum_compressed_or_not(self):
        """FSDP's PREMUL_SUM(1/f) (set_gradient_divide_factor(f), f not the group's size):
        every rank's input multiplied by 1/f in its type, as NCCL's PreMulSum does, then
        summed. Compressed, bit for bit the library's keyed Sum of the multiplied inputs; sent
        uncompressed (method none), bit for bit NCCL's PreMulSum in rank order, and at f = N
        the CPU transports' Avg (their PreMulSum); under DGC's momentum correction compressed,
        not refused; paused, torch gets a Sum of the multiplied input (gloo refuses
        PREMUL_SUM). Before, the call went to torch uncompressed: gloo refused it, and so did
        the state under DGC."""
        import gradcomp.torch as gt

        def cfg(**kw):
            return lambda: self.gradcomp.Config(from_env=False, min_elements=0, auto_tune=0, **kw)

        qsgd, none = cfg(method="qsgd", bits=4), cfg(method="none")
        dgc = cfg(method="dgc", density=0.01)

        def scaled(x, f):  # NCCL's PreMulSum of one input: x * T(1/f), rounded once
            return x * torch.tensor(1.0 / f, dtype=torch.float32).to(x.dtype)

        def inputs(dtype):
            return [self.inputs(0, r).to(dtype) for r in range(self.N)]

        def hooked(config, tag, dtype, f):
            """Every rank's output of one PREMUL_SUM(1/f) call, and the rank 0 state."""
            xs = inputs(dtype)
            with warnings.catch_warnings(), self.gradcomp.CpuWorld(self.N, config()) as w:
                warnings.simplefilter("ignore")  # method none: "sent uncompressed"
                states = HookOnCpuWorld.make_states(self, self.N, w, tag, None, None, config)
                hooks = [gt.GradcompReduceScatter(st, "layers.0") for st in states]

                def rank(comm):
                    out = torch.empty(self.n, dtype=dtype)
                    hooks[comm.rank]._reduce_scatter(
                        out, xs[comm.rank].clone(), states[comm.rank].process_group,
                        dist.ReduceOp.PREMUL_SUM(1.0 / f), False, lambda: None)
                    return out

                return w.run(rank), states[0], hooks[0].key

        def library(config, ins, op, key):
            with warnings.catch_warnings(), self.gradcomp.CpuWorld(self.N, config()) as w:
                warnings.simplefilter("ignore")

                def rank(comm):
                    out = torch.empty(self.n, dtype=ins[0].dtype)
                    comm.reduce_scatter(ins[comm.rank].clone(), out, op=op, key=key)
                    return out

                return w.run(rank)

        f = 3.0
        for dtype in (torch.float32, torch.bfloat16):
            got, st, key = hooked(qsgd, f"pm-q-{dtype}", dtype, f)
            want = library(qsgd, [scaled(x, f) for x in inputs(dtype)], "sum", key)
            self.assertEqual(st.counters["compressed_calls"], 1)
            got_none, _, _ = hooked(none, f"pm-n-{dtype}", dtype, f)
            xs = [scaled(x, f) for x in inputs(dtype)]
            for r in range(self.N):
                same_bits(self, got[r].view(torch.int16), want[r].view(torch.int16),
                          f"{dtype} compressed rank {r}")
                block = slice(r * self.n, (r + 1) * self.n)
                nccl = xs[0][block] + xs[1][block]  # in the type, rounded once per sum
                same_bits(self, got_none[r].view(torch.int16), nccl.view(torch.int16),
                          f"{dtype} uncompressed rank {r}")
            # The compressed sum is the divided sum, within QSGD's error.
            exact = (inputs(torch.float32)[0] + inputs(torch.float32)[1])[:self.n] / f
            self.assertLess(float((got[0].float() - exact).abs().max()),
                            0.5 * float(exact.abs().max()))
        # At f = N: the CPU transports' Avg, which is NCCL's PreMulSum of 1/N.
        got, _, key = hooked(none, "pm-n-avg", torch.float32, float(self.N))
        want = library(none, inputs(torch.float32), "avg", key)
        for r in range(self.N):
            same_bits(self, got[r], want[r], f"PREMUL_SUM(1/N) rank {r}")
        # Under DGC's momentum correction: compressed, neither refused nor warned.
        _, st, _ = hooked(dgc, "pm-dgc", torch.float32, f)
        self.assertEqual(st.counters["compressed_calls"], 1)
        self.assertNotIn("fsdp-op", st._warned)
        # Paused: torch's Sum of the multiplied input.
        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            states = HookOnCpuWorld.make_states(self, self.N, w, "pm-paused", None, None,
                                                self.config)
            rs = gt.GradcompReduceScatter(states[0], "layers.0")
            sent = []
            x = inputs(torch.float32)[0]
            with states[0].paused(), mock.patch.object(
                    dist, "reduce_scatter_tensor",
                    lambda out, inp, **kw: sent.append((kw["op"], inp.clone()))), \
                    mock.patch.object(states[0], "_agree_call", lambda *args: None):
                rs._reduce_scatter(torch.empty(self.n), x.clone(), states[0].process_group,
                                   dist.ReduceOp.PREMUL_SUM(1.0 / f), False, lambda: None)
            self.assertEqual([op for op, _ in sent], [dist.ReduceOp.SUM])
            same_bits(self, sent[0][1], scaled(x, f), "paused input")

    def ops_sent_to_torch(self, rs, state, op, inp):
        """The ops of the reduce-scatters rs hands to torch (reduce_scatter_tensor mocked) for
        one call of input inp, made by one rank alone (its peers compare no call with it)."""
        sent = []
        with mock.patch.object(dist, "reduce_scatter_tensor",
                               lambda out, inp, **kw: sent.append(kw["op"])), \
                mock.patch.object(state, "_agree_call", lambda *args: None):
            rs._reduce_scatter(torch.zeros(self.n), inp, state.process_group, op, False,
                               lambda: None)
        return sent

    def test_a_resume_under_other_module_names_warns(self):
        """The FSDP2 reduce-scatter's residuals are keyed by module name, and its state dict
        saves the keys it reduced under: a resumed run whose module is named otherwise (a
        model registered through another wrapper) warns, naming the module, that its residual
        starts fresh; under the saved name it does not. Without the saved keys it was silent."""
        import gradcomp.torch as gt

        def step(hooks, states):
            def rank(comm):
                r = comm.rank
                out = torch.empty(self.n)
                hooks[r]._reduce_scatter(out, self.inputs(0, r), states[r].process_group,
                                         dist.ReduceOp.AVG, False, lambda: None)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                w.run(rank)
            return [str(c.message) for c in caught if "no residual" in str(c.message)]

        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            states = HookOnCpuWorld.make_states(self, self.N, w, "rs-keys", None, None, self.config)
            self.assertEqual(step([gt.GradcompReduceScatter(st, "layers.0") for st in states],
                                  states), [])
            saved = [st.state_dict() for st in states]
            self.assertEqual(saved[0]["keys"], [gt.GradcompReduceScatter(None, "layers.0").key])
        for name, warned in (("_orig_mod.layers.0", True), ("layers.0", False)):
            with self.gradcomp.CpuWorld(self.N, self.config()) as w:
                states = HookOnCpuWorld.make_states(self, self.N, w, "rs-keys-" + name, None, None,
                                                    self.config)
                hooks = [gt.GradcompReduceScatter(st, name) for st in states]
                for st, d in zip(states, saved):
                    st.load_state_dict(d)
                got = step(hooks, states)
                if warned:
                    self.assertEqual(len(got), self.N)
                    self.assertRegex(got[0], r"FSDP module '_orig_mod\.layers\.0' has no "
                                     r"residual in the run whose state was loaded: its "
                                     r"residual starts fresh")
                else:
                    self.assertEqual(got, [])

    def test_a_resume_into_a_module_of_another_size_warns(self):
        """A resumed FSDP module of the saved name whose flat buffer has another size (its
        parameters changed shape, or some got no gradient) got a fresh residual under the saved
        key while the saved one lay unused in every later checkpoint, silently: every rank
        warns once, naming the module and both sizes; the saved size goes on quietly, and its
        count is saved again."""
        import gradcomp.torch as gt

        def step(hooks, states, n):
            def rank(comm):
                r = comm.rank
                hooks[r]._reduce_scatter(torch.empty(n), self.inputs(0, r)[:self.N * n],
                                         states[r].process_group, dist.ReduceOp.AVG, False,
                                         lambda: None)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                w.run(rank)
            return [str(c.message) for c in caught if "under its name" in str(c.message)]

        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            states = HookOnCpuWorld.make_states(self, self.N, w, "rs-size", None, None,
                                                self.config)
            step([gt.GradcompReduceScatter(st, "layers.0") for st in states], states, self.n)
            saved = [st.state_dict() for st in states]
        for n in (self.n // 2, self.n):
            with self.gradcomp.CpuWorld(self.N, self.config()) as w:
                states = HookOnCpuWorld.make_states(self, self.N, w, f"rs-size-{n}", None, None,
                                                    self.config)
                hooks = [gt.GradcompReduceScatter(st, "layers.0") for st in states]
                for st, d in zip(states, saved):
                    st.load_state_dict(d)
                got = step(hooks, states, n) + step(hooks, states, n)
                if n != self.n:
                    self.assertEqual(len(got), self.N)  # once per rank
                    self.assertRegex(got[0], f"FSDP module 'layers.0' reduces {self.N * n} "
                                     f"elements, but the run whose state was loaded reduced "
                                     f"{self.N * self.n} under its name: its saved residual "
                                     "lies unused")
                    continue
                self.assertEqual(got, [])
                self.assertEqual(states[0].state_dict()["key_counts"], saved[0]["key_counts"])
        self.assertEqual(saved[0]["key_counts"], [[hooks[0].key, self.N * self.n]])

    def test_the_step_counter_counts_fsdp_steps_as_the_ddp_hooks(self):
        """state.iter (stats()["iter"], the state dict's iter) counts FSDP2's steps as the DDP
        hook counts its own: one per step of one call per module, for the reduce-scatter and
        the replica all-reduce alike, none for a paused step; a loaded state dict's count goes
        on, and the resumed calls are bit for bit the uninterrupted run's. It stayed 0."""
        import gradcomp.torch as gt

        names, K, STEPS = ("layers.0", "layers.1"), 2, 4

        def run(w, states, hooks, steps, paused=False, op=dist.ReduceOp.AVG):
            def rank(comm):
                r, outs = comm.rank, []
                for step in steps:
                    for name in names:
                        out = torch.empty(self.n)
                        with states[r].paused() if paused else contextlib.nullcontext():
                            hooks[r][name]._reduce_scatter(
                                out, self.inputs(step, r), states[r].process_group, op, False,
                                lambda: None)
                        outs.append(out)
                return outs

            return w.run(rank)

        def make(w, tag, cls=gt.GradcompReduceScatter):
            states = HookOnCpuWorld.make_states(self, self.N, w, tag, None, None, self.config)
            return states, [{name: cls(st, name) for name in names} for st in states]

        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            states, hooks = make(w, "rs-iter")
            run(w, states, hooks, range(K))
            self.assertEqual([st.iter for st in states], [K] * self.N)
            self.assertEqual(states[0].stats()["iter"], K)
            saved = [st.state_dict() for st in states]
            self.assertEqual(saved[0]["iter"], K)
            with mock.patch.object(dist, "reduce_scatter_tensor", lambda *a, **kw: None):
                run(w, states, hooks, [K], paused=True)
                # An op gradcomp does not compress, sent to torch: paused, not counted either.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run(w, states, hooks, [K], paused=True, op=dist.ReduceOp.MAX)
            self.assertEqual(states[0].iter, K)
            after = run(w, states, hooks, range(K, STEPS))
            self.assertEqual(states[0].iter, STEPS)
        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            states, hooks = make(w, "rs-iter-resumed")
            for st, d in zip(states, saved):
                st.load_state_dict(d)
            self.assertEqual(states[0].iter, K)
            again = run(w, states, hooks, range(K, STEPS))
            self.assertEqual([st.iter for st in states], [STEPS] * self.N)
        for r in range(self.N):
            for k, (a, b) in enumerate(zip(again[r], after[r])):
                same_bits(self, a, b, f"rank {r} call {k}")
        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            states, hooks = make(w, "ar-iter", gt.GradcompReplicaAllReduce)

            def rank(comm):
                for step in range(K):
                    for name in names:
                        hooks[comm.rank][name]._all_reduce(self.inputs(step, comm.rank), None)

            w.run(rank)
            self.assertEqual([st.stats()["iter"] for st in states], [K] * self.N)
            self.assertEqual(states[0].state_dict()["iter"], K)

    def test_paused_state_sends_uncompressed_and_leaves_the_residual(self):
        """Inside state.paused() the FSDP2 reduce-scatter goes to torch uncompressed, as the
        DDP hook does: gradcomp makes no call and the saved state is unchanged."""
        import gradcomp.torch as gt

        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            states = HookOnCpuWorld.make_states(self, self.N, w, "rs-paused", None, None,
                                                self.config)
            rs = gt.GradcompReduceScatter(states[0], "layers.0")
            comm = w.comms[0]  # the state's comm (make_states); state.comm() would agree
            before = comm.call_counts()

            def no_comm(device):
                raise AssertionError("the paused reduce-scatter asked for gradcomp's comm")

            states[0].comm = no_comm
            with states[0].paused():
                sent = self.ops_sent_to_torch(rs, states[0], dist.ReduceOp.AVG,
                                              torch.ones(self.N * self.n))
            self.assertEqual(sent, [dist.ReduceOp.AVG])
            self.assertEqual(comm.call_counts(), before)

    def test_dgc_param_groups_give_every_parameter_momentum_once(self):
        """DGC with momentum correction under FSDP2: the reduce-scatter returns gradcomp's
        velocity u = m*u + g for every element of FSDP's flat buffer (biases included), so
        state.param_groups() puts every parameter in the momentum-0 group, and plain SGD on
        those groups is momentum SGD on the plain gradient for the weight and the bias alike
        (the DDP split would give the bias the optimizer's momentum on top of u)."""
        import gradcomp.torch as gt

        m, steps = 0.9, 3

        def config():
            return self.gradcomp.Config(from_env=False, method="dgc", density=1.0, momentum=m,
                                        momentum_masking=0, min_elements=0, auto_tune=0)

        with warnings.catch_warnings(), self.gradcomp.CpuWorld(self.N, config()) as w:
            warnings.simplefilter("ignore")
            states = HookOnCpuWorld.make_states(self, self.N, w, "rs-dgc", None, None, config)
            hooks = [gt.GradcompReduceScatter(st, "layers.0") for st in states]

            def rank(comm):
                r, outs = comm.rank, []
                for _ in range(steps):  # the gradient 1.0 on every rank, every step
                    out = torch.empty(self.n)
                    hooks[r]._reduce_scatter(out, torch.ones(self.N * self.n),
                                             states[r].process_group, dist.ReduceOp.AVG, False,
                                             lambda: None)
                    outs.append(out)
                return outs

            got = w.run(rank)[0]
        weight = torch.nn.Parameter(torch.zeros(64, 64))  # compressed by the DDP rule
        bias = torch.nn.Parameter(torch.zeros(64))  # full precision by the DDP rule
        groups = states[0].param_groups([weight, bias])
        self.assertEqual([(len(g["params"]), g["momentum"]) for g in groups], [(2, 0.0)])
        opt = torch.optim.SGD(groups, lr=1.0)
        ref_p = [torch.nn.Parameter(torch.zeros(64, 64)), torch.nn.Parameter(torch.zeros(64))]
        ref = torch.optim.SGD(ref_p, lr=1.0, momentum=m)
        for u in got:
            for p in (weight, bias):
                p.grad = torch.full_like(p, float(u[0]))  # the reduce-scatter's output
            for p in ref_p:
                p.grad = torch.ones_like(p)
            opt.step()
            ref.step()
        for p, q in zip((weight, bias), ref_p):
            self.assertTrue(torch.allclose(p, q, rtol=1e-6), f"{p.flatten()[0]} vs "
                            f"{q.flatten()[0]}: a parameter got momentum twice")

    def test_param_groups_before_the_fsdp_reduce_scatter_is_refused(self):
        import gradcomp.torch as gt

        def config():
            return self.gradcomp.Config(from_env=False, method="dgc", min_elements=0)

        with self.gradcomp.CpuWorld(self.N, config()) as w:
            st = HookOnCpuWorld.make_states(self, self.N, w, "rs-order", None, None, config)[0]
            st.param_groups([torch.nn.Parameter(torch.zeros(64, 64)),
                             torch.nn.Parameter(torch.zeros(64))])
            with self.assertRaisesRegex(ValueError, r"param_groups\(\) was called before.*"
                                        r"register_fsdp_reduce_scatter\(model, state\) first"):
                gt.GradcompReduceScatter(st, "layers.0")

    def test_the_ddp_hooks_options_are_refused_by_fsdp(self):
        """start_iter, layer_min_size and exclude_1d are the DDP hook's: FSDP2's reduce-scatter
        and replica all-reduce compress every parameter from the first call, so a state made
        with any of them (start_iter=5 for uncompressed warm-up steps) is refused, naming it,
        rather than compressed from step 0. A state without them, also unpickled, is taken."""
        import pickle

        import gradcomp.torch as gt
        import gradcomp.torch._group as group

        with self.gradcomp.CpuWorld(self.N, self.config()) as w:
            for kw, hook in (({"start_iter": 5}, gt.GradcompReduceScatter),
                             ({"layer_min_size": 0}, gt.GradcompReplicaAllReduce),
                             ({"exclude_1d": False}, gt.GradcompReduceScatter),
                             ({"start_iter": 2}, gt.GradcompReplicaAllReduce)):
                name, value = next(iter(kw.items()))
                rest = {k: v for k, v in kw.items() if k != "start_iter"}
                st = HookOnCpuWorld.make_states(self, self.N, w, f"ddp-only-{name}", None,
                                                kw.get("start_iter"), self.config, **rest)[0]
                with self.assertRaisesRegex(ValueError, rf"made with {name}={value!r}, which "
                                            r"only the DDP hook applies.*from the first call.*"
                                            r"state\.paused\(\)"):
                    hook(st, "layers.0")
                self.assertIsNone(st._fsdp_role)
            st = HookOnCpuWorld.make_states(self, self.N, w, "ddp-only-none", None, None,
                                            self.config)[0]
            with mock.patch.object(group, "check_group", lambda pg, backend: (pg, 0, 2)):
                again = pickle.loads(pickle.dumps(st))
            for state in (st, again):
                gt.GradcompReduceScatter(state, "layers.0")
                self.assertEqual(state._keyed_by(), "fsdp")
            self.assertEqual((again.start_iter, again.layer_min_size, again.exclude_1d),
                             (2, 1024, True))


@unittest.skipIf(torch is None, "PyTorch is not installed: gradcomp.torch is checked on the GPU "
                 "box (tools/gpu-check.sh, step torch_hooks)")
class FsdpProtocol(unittest.TestCase):
    """FSDP2 of this torch, 2 processes on gloo (fsdp_protocol_rank.py): it calls the objects
    register_fsdp_reduce_scatter installs, by keyword, with AVG for fp32 gradients and an input
    of world_size * output elements; on CPU tensors the call refuses with its sentence."""

    def test_fsdp_calls_the_reduce_scatter_as_it_expects(self):
        import json
        import tempfile

        import gradcomp
        import gradcomp.torch as gt

        reason = gt.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        root = os.path.dirname(os.path.dirname(HERE))
        sys.path.insert(0, os.path.join(root, "tools"))
        import gc_ranks

        env = {"PYTHONPATH": os.pathsep.join(os.path.join(root, d) for d in ("python", "tools")),
               "GRADCOMP_LIBRARY": gradcomp.library_path()}
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "p")
            # As on the GPU box (as_if_cuda.py): FSDP2 must not take the CPU model to CUDA.
            status, _ = gc_ranks.launch(2, [os.path.join(HERE, "as_if_cuda.py"),
                                            os.path.join(HERE, "fsdp_protocol_rank.py"), out],
                                        out, env=env, timeout=120)
            logs = []
            for r in range(2):
                with open(f"{out}_r{r}.log") as f:
                    logs.append(f.read())
            self.assertEqual(status, "ok", logs)
            got = []
            for r in range(2):
                with open(f"{out}.rank{r}.json") as f:
                    got.append(json.load(f))
        keys = {gt.GradcompReduceScatter(None, name).key for name in ("0", "2")}
        for r, g in enumerate(got):
            self.assertEqual(g["registered"], 3)  # model[0], model[2] and the root
            self.assertEqual(len(g["calls"]), 1, g)  # the first call refused
            c = g["calls"][0]
            self.assertEqual((c["positional"], c["keywords"]),
                             (0, ["group", "input_tensor", "op", "output_tensor"]))
            self.assertIn("AVG", c["op"])
            self.assertEqual(c["input_numel"], 2 * c["output_numel"])
            self.assertEqual(c["dtype"], "torch.float32")
            self.assertIn(c["key"], keys)
            self.assertRegex(g["error"], "got CPU tensors: gradcomp reduces CUDA tensors")


def launch_ranks(test, mode, world=2):
    """tests/python/cpu_backend_rank.py as `world` gloo processes; (records, results) by rank."""
    import json
    import tempfile

    import gradcomp

    if not gradcomp.has("gradcompCommCreateSocket"):
        test.skipTest("this libgradcomp has no gradcompCommCreateSocket")
    root = os.path.dirname(os.path.dirname(HERE))
    sys.path.insert(0, os.path.join(root, "tools"))
    import gc_ranks

    env = {"PYTHONPATH": os.pathsep.join(os.path.join(root, d) for d in ("python", "tools")),
           "GRADCOMP_LIBRARY": gradcomp.library_path(), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, mode)
        # As on the GPU box (as_if_cuda.py): the CPU backend's tensors must stay on the host
        # where torch's default device would be CUDA.
        status, _ = gc_ranks.launch(world, [os.path.join(HERE, "as_if_cuda.py"),
                                            os.path.join(HERE, "cpu_backend_rank.py"), mode, out],
                                    out, env=env, timeout=240)
        logs = []
        for r in range(world):
            with open(f"{out}_r{r}.log") as f:
                logs.append(f.read())
        test.assertEqual(status, "ok", "\n".join(logs))
        records = [torch.load(f"{out}.rank{r}.pt") for r in range(world)]
        results = []
        for r in range(world):
            with open(f"{out}.rank{r}.json") as f:
                results.append(json.load(f))
    return records, results


def same_bits(test, a, b, what):
    test.assertTrue(torch.equal(a.view(torch.int32), b.view(torch.int32)),
                    f"{what}: {int((a != b).sum())} of {a.numel()} elements differ")


def cbr_unused_at():
    """The step at which the unused-parameter cases leave p unused on every rank."""
    sys.path.insert(0, HERE)
    import cpu_backend_rank as cbr

    return cbr.UNUSED_AT


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendDdp(unittest.TestCase):
    """gradcomp_hook with GradcompState(backend="cpu") on real DDP: 2 processes on gloo,
    gradcomp's comm made from the process group (rank 0's address through the store, TCP).
    Every bucket's result on every rank is bit for bit the serial reference built from the
    recorded gradients on the in-process CPU world: the mean (x_0/2 + x_1/2, as the hook's
    torch all_reduce of x * (1/N)) where the hook sends full precision, the library's keyed Avg
    allreduce of the gathered compressed parts, in the hook's call order, elsewhere."""

    def test_hook_on_real_ddp_matches_the_serial_reference(self):
        records, results = launch_ranks(self, "ddp")
        N = 2
        order = [[(r["step"], r["index"], r["compressed"]) for r in rec] for rec in records]
        self.assertEqual(order[0], order[1])
        steps = sorted({s for s, _, _ in order[0]})
        self.assertEqual(steps, list(range(5)))
        buckets = {i for s, i, c in order[0] if s > 0}
        self.assertGreater(len(buckets), 1, "the rebuilt DDP has one bucket: nothing mixed")
        kinds = serial_reference(self, records, "ddp")
        self.assertIn("mixed", kinds)
        self.assertIn("full precision", kinds)
        self.assertEqual(results[0]["param_hash"], results[1]["param_hash"])
        st = results[0]["stats"]
        self.assertEqual(st["compressed_params"], ["0.weight", "2.weight"])
        self.assertEqual(st["full_precision_params"],
                         ["0.bias", "4.bias", "4.weight", "5.bias", "5.weight"])
        comp_steps = 5 - 1
        self.assertEqual(st["uncompressed_steps"], 1)
        self.assertEqual(st["compressed_dense_bytes"], 4 * (2048 + 2560) * comp_steps)
        self.assertEqual(st["full_precision_bytes"], 4 * (64 + 200 + 5 + 5 + 5) * comp_steps)
        self.assertEqual(st["gradcomp"]["bytes_in"], st["compressed_dense_bytes"])
        self.assertGreater(st["gradcomp"]["bytes_on_wire"], 0)
        for r in range(N):
            self.assertTrue(results[r]["resume_bitwise"], f"rank {r}: resume is not bit for bit")


    def test_full_precision_is_ddps_own_mean_at_three_ranks(self):
        """Every parameter in full precision (layer_min_size above them all): the parameters
        after 5 steps are bitwise those of DDP without a hook at 3 ranks, where DDP's
        x * (1/3) and x / 3 round differently (the hook divided until 2026-12-05)."""
        _, results = launch_ranks(self, "excluded", world=3)
        for r, res in enumerate(results):
            self.assertEqual(res["hooked"], res["plain"], f"rank {r}")
        self.assertEqual(len({res["plain"] for res in results}), 1)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendUnusedParameters(unittest.TestCase):
    """DDP(find_unused_parameters=True), 2 gloo processes (cpu_backend_rank.py unused): a
    compressed weight unused on every rank at one step gets no gradient from DDP there (its
    gradient is left alone, or None), while its slice of the hook's result holds what the
    error feedback released for it. Nothing is lost: after flush steps that drain top-k's
    residual exactly, the gradients p got sum to the sum of the ranks' averaged gradients, with
    gradient_as_bucket_view and zero_grad(set_to_none) either way (also different on the two
    ranks), with register_comm_hook (also on a model wrapped again), and across a checkpoint
    taken while the slice is carried; without find_unused_parameters, and under static_graph,
    the hook does nothing of it."""

    def test_the_zero_input_flags_are_one_per_slice(self):
        # The candidates of a call: slices all zero (-0 too), not one holding a NaN or a value;
        # fp32, fp16 and bf16, as DDP's buckets are.
        from gradcomp.torch.ddp import _zero_slices
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            b = torch.arange(1, 14, dtype=torch.float32).to(dt)
            b[3:6] = 0
            b[6:9] = -0.0
            b[9] = float("nan")
            b[12] = 0
            params = [(0, 3, None), (3, 3, None), (6, 3, None), (9, 3, None), (12, 1, None)]
            self.assertEqual(_zero_slices(b, params).tolist(), [False, True, True, False, True],
                             msg=str(dt))

    def test_a_globally_unused_parameter_loses_no_error_feedback(self):
        records, _ = launch_ranks(self, "unused")
        sys.path.insert(0, HERE)
        import cpu_backend_rank as cbr

        at = cbr.UNUSED_AT
        for r in range(2):
            # Without find_unused_parameters the hook queues no callback (and reads nothing).
            self.assertEqual(records[r].pop("settled_without_find_unused"), 0, f"rank {r}")
        for name in records[0]:
            recs = [records[r][name] for r in range(2)]
            with self.subTest(case=name):
                self.assertEqual(len(recs[0]["input"]), at + 2 + cbr.UNUSED_FLUSH)
                # The step whose result would be lost: p unused on every rank (a zero input
                # on both), its slice of the result not zero.
                for r in range(2):
                    self.assertFalse(bool(recs[r]["input"][at].any()), f"rank {r}")
                self.assertGreater(float(recs[0]["output"][at].abs().max()), 1e-3)
                if name in ("bav0_none1", "bav1_none1", "register_comm_hook", "resumed"):
                    self.assertTrue(recs[0]["grad_none"][at])
                true = sum((a + b) * 0.5 for a, b in zip(recs[0]["input"], recs[1]["input"]))
                for r in range(2):
                    got = sum(recs[r]["grad"])
                    err = float((true - got).abs().max())
                    self.assertLess(err, 1e-4, f"rank {r}: the gradients p got sum to other "
                                    f"than its averaged gradients (max |difference| {err}; "
                                    f"|step {at}'s released slice| "
                                    f"{float(recs[r]['output'][at].abs().max())})")
                    for s, (g0, g1) in enumerate(zip(recs[0]["grad"], recs[1]["grad"])):
                        same_bits(self, g0, g1, f"step {s}: rank 0 and 1's p.grad")
                # One settling callback per compressed backward (the resumed run's paused step
                # has none).
                self.assertEqual(recs[0]["settled"], len(recs[0]["grad"]) - 1)
        self.assertEqual(records[0]["resumed"]["carried"], 1)

    def test_nothing_is_carried_inside_join(self):
        """Join: p used at step 0 only; rank 1 has a batch more than rank 0, so that inside the
        Join the ranks still training see p unused on every rank while rank 0's shadow calls
        keep nothing. After the Join, p.grad must be the same on both ranks (no rank added a
        slice the other did not keep)."""
        _, results = launch_ranks(self, "unused_join")
        self.assertEqual([r["carried"] for r in results], [0, 0])
        for s in range(3):
            self.assertEqual(results[0]["grads"][s], results[1]["grads"][s],
                             f"step {s} after the Join: p.grad differs between the ranks")

    def test_a_result_that_is_not_finite_is_carried_alike_on_every_rank(self):
        """p unused on rank 0 only at step 0 while rank 1's gradient is not finite: the
        averaged result is not finite and DDP gives it to p on both ranks (p is used
        globally). No rank may keep it as a carry of its own: the next steps' p.grad must be
        the same on both ranks, as DDP's replicas need."""
        import math

        _, results = launch_ranks(self, "unused_nan")
        for method in results[0]:
            with self.subTest(method=method):
                g0, g1 = results[0][method]["grads"], results[1][method]["grads"]
                self.assertTrue(any(math.isnan(v) for v in g0[0]), "step 0's result is finite")
                for s in (1, 2):
                    self.assertTrue(all(math.isfinite(v) for v in g1[s]), f"rank 1, step {s}")
                    self.assertEqual(
                        [v if math.isfinite(v) else repr(v) for v in g0[s]],
                        [v if math.isfinite(v) else repr(v) for v in g1[s]],
                        f"step {s}: p.grad differs between the ranks (carried after step 0: "
                        f"{[results[r][method]['carried'] for r in range(2)]} entries)")

    def _conserved(self, rec, r, what):
        """The gradients p got on rank r sum to the sum of its averaged gradients (rec: both
        ranks' records of one run)."""
        true = sum((a + b) * 0.5 for a, b in zip(rec[0]["input"], rec[1]["input"]))
        err = float((true - sum(rec[r]["grad"])).abs().max())
        self.assertLess(err, 1e-4, f"{what}, rank {r}: the gradients p got sum to other than its "
                        f"averaged gradients (max |difference| {err})")

    def test_ranks_with_other_bucket_view_and_set_to_none_settings_get_the_same_gradients(self):
        """Rank 0 with gradient_as_bucket_view=True and zero_grad(set_to_none=False), whose
        p.grad is its slice of the bucket (which holds the hook's result wherever DDP writes
        nothing), rank 1 otherwise: at the step where p is unused on every rank, both must keep
        the released slice (rank 0's p.grad is then 0, as under DDP's own allreduce) and add it
        at the next step, so that p.grad stays the same on both ranks at every step."""
        records, _ = launch_ranks(self, "unused_mixed")
        for name in records[0]:
            recs = [records[r][name] for r in range(2)]
            with self.subTest(case=name):
                at = cbr_unused_at()
                self.assertGreater(float(recs[0]["output"][at].abs().max()), 1e-3)
                for s, (g0, g1) in enumerate(zip(recs[0]["grad"], recs[1]["grad"])):
                    same_bits(self, g0, g1, f"step {s}: rank 0 and 1's p.grad")
                for r in range(2):
                    self._conserved(recs, r, name)

    def test_a_model_wrapped_again_with_register_comm_hook_keeps_the_carry(self):
        """register_comm_hook gives the hook no DDP: the state finds it at its first call and
        keeps its settings. The model wrapped again alike (the first DDP(find_unused_parameters=
        True) dropped), registered with the same state: the slice released for p at the step
        where it is unused on every rank is kept, and nothing is lost."""
        records, results = launch_ranks(self, "unused_rewrapped")
        at = cbr_unused_at()
        for r in range(2):
            self.assertEqual(results[r]["carried"][at], 1, f"rank {r}: no slice kept at step {at}")
        recs = [records[r]["rec"] for r in range(2)]
        for r in range(2):
            self._conserved(recs, r, "wrapped again")

    def test_a_model_wrapped_again_whose_first_ddp_goes_at_other_times_on_the_ranks(self):
        """As the case above, with the first DDP in a reference cycle: it goes when each
        process's cyclic collector runs, rank 0 at once, rank 1 a few steps later. What the state
        does (its collectives, what it keeps) must not hang on when each rank frees it: the run
        completes, p's released slice is kept on both ranks, and p.grad is alike on both."""
        records, results = launch_ranks(self, "unused_rewrapped_gc")
        at = cbr_unused_at()
        for r in range(2):
            self.assertEqual(results[r]["carried"][at], 1, f"rank {r}: no slice kept at step {at}")
        recs = [records[r]["rec"] for r in range(2)]
        for s, (g0, g1) in enumerate(zip(recs[0]["grad"], recs[1]["grad"])):
            same_bits(self, g0, g1, f"step {s}: rank 0 and 1's p.grad")
        for r in range(2):
            self._conserved(recs, r, "wrapped again, freed at other times")

    def test_a_first_ddp_left_in_join_goes_at_other_times_on_the_ranks(self):
        """As the case above, the first DDP's steps inside Join, which leaves its Join enabled
        (torch never resets it): whether the state reads that from the first DDP (still alive
        on rank 1) or not (gone on rank 0) must not split the ranks: the run completes, both
        keep alike at every step, and p.grad is alike on both."""
        records, results = launch_ranks(self, "unused_rewrapped_join_gc")
        self.assertEqual(results[0]["carried"], results[1]["carried"])
        recs = [records[r]["rec"] for r in range(2)]
        for s, (g0, g1) in enumerate(zip(recs[0]["grad"], recs[1]["grad"])):
            same_bits(self, g0, g1, f"step {s}: rank 0 and 1's p.grad")

    def test_a_first_ddp_in_join_without_a_backward_goes_at_other_times_on_the_ranks(self):
        """As the case above, the first DDP's steps outside Join and an evaluation pass (no
        backward, so no hook call) inside it after them: the Join it is left in must not split
        the ranks either, whether the state reads it from the first DDP (still alive on rank 1)
        or not (gone on rank 0): the run completes, both keep alike at every step, and p.grad is
        alike on both."""
        records, results = launch_ranks(self, "unused_rewrapped_join_eval_gc")
        self.assertEqual(results[0]["carried"], results[1]["carried"])
        recs = [records[r]["rec"] for r in range(2)]
        for s, (g0, g1) in enumerate(zip(recs[0]["grad"], recs[1]["grad"])):
            same_bits(self, g0, g1, f"step {s}: rank 0 and 1's p.grad")

    def test_a_join_one_rank_sat_out_then_a_wrap_again_goes_on_alike(self):
        """A Join after the first DDP's steps in which rank 0 has no input (no forward there,
        only the shadow of rank 1's step), then the model wrapped again: the Join is noted on
        both ranks (by the found DDP's forward on rank 1, by the shadow call on rank 0), so
        both keep nothing from then on; before, rank 0 went on watching and waited in the
        flags' all-reduce while rank 1 waited in the next step's agreement."""
        records, results = launch_ranks(self, "unused_rewrapped_idle_join")
        self.assertEqual(results[0]["carried"], results[1]["carried"])
        recs = [records[r]["rec"] for r in range(2)]
        for s, (g0, g1) in enumerate(zip(recs[0]["grad"], recs[1]["grad"])):
            same_bits(self, g0, g1, f"step {s}: rank 0 and 1's p.grad")

    def test_nothing_is_carried_under_a_static_graph(self):
        """static_graph=True (with find_unused_parameters=True): a parameter unused at one step
        is unused at every step, so a kept slice could never reach it; and DDP regroups its
        buckets there, so ZeRO's overlap (hook_with_zero_step) would step the parameter from
        bucket.gradients(), the slice included, and again with the slice added back."""
        _, results = launch_ranks(self, "unused_static")
        for r in range(2):
            self.assertTrue(results[r]["rebuilt"], f"rank {r}: DDP did not regroup its buckets")
            self.assertTrue(all(results[r]["grad_none"]), f"rank {r}")
            self.assertEqual(results[r]["carried"], [0, 0, 0, 0], f"rank {r}")


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendGradScaler(unittest.TestCase):
    """GradcompState(grad_scaler=GradScaler) on real DDP (2 gloo processes): a loss scale that
    grows x2 every 2 steps and is cut to 1/8 once leaves the parameters bit for bit those of
    the unscaled run (QSGD, and DGC with clipping and momentum correction), because gradcomp
    rescales its residuals and velocity with the scale; without grad_scaler they differ. The
    scale is read once per step however many buckets compress. The same for FSDP2's
    reduce-scatter (three modules a step)."""

    def test_scaled_training_follows_the_unscaled_run_bit_for_bit(self):
        _, results = launch_ranks(self, "scaler")
        for r, res in enumerate(results):
            for m in ("qsgd", "dgc"):
                self.assertTrue(res[m + "_scaled_equal"], f"rank {r} {m}: scaled run differs")
                self.assertFalse(res[m + "_unfollowed_equal"],
                                 f"rank {r} {m}: without grad_scaler the run is the same, so "
                                 "the test cannot tell")
                self.assertGreater(res[m + "_buckets"], 1, "one bucket: nothing per bucket")
                self.assertEqual(res["reads"][m], 8, f"rank {r} {m}: scale reads")
                # The scaler's own history (x2 every 2 steps, /8 once): the comm's scale is
                # the one the last step's gradients carried.
                scales = res[m + "_scales"]
                self.assertEqual(len(set(scales)), 4, scales)
                self.assertEqual(res[m + "_final_scale"], scales[-1])
                # A scaler given after steps that recorded no scale is warned about once; a
                # state that had it from the start is not.
                self.assertEqual(res[m + "_unfollowed_unrecorded_warnings"], 1)
                self.assertEqual(res[m + "_scaled_unrecorded_warnings"], 0)
            # FSDP2's reduce-scatter (QSGD 4-bit): the same, one read per step for 3 modules.
            self.assertTrue(res["fsdp_scaled_equal"], f"rank {r} FSDP: scaled run differs")
            self.assertFalse(res["fsdp_unfollowed_equal"], f"rank {r} FSDP: cannot tell")
            self.assertEqual(res["fsdp_calls"], 3 * 8)
            self.assertEqual(res["fsdp_reads"], 8)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendOverflowSkipsOneStep(unittest.TestCase):
    """DDP's gradcomp_hook (2 gloo processes), a step whose finite gradients (2e38 on each rank)
    sum past fp32's largest value, then ordinary steps: the scaler (or, without grad_scaler, a
    check of the gradients) skips that step alone, and the later steps' gradients are the
    ordinary ones (|g| of a few units), for top-k, DGC, rand-k and 2-bit QSGD. Before, error
    feedback kept the overflow: without grad_scaler every later step was skipped too (top-k,
    DGC, rand-k), and with it top-k's and rand-k's halved leftovers came back as finite
    gradients of 2e38, which the optimizer applied (DGC's kept overflowing)."""

    def test_one_overflowing_step_is_skipped_and_the_next_are_clean(self):
        _, results = launch_ranks(self, "overflow")
        for r, res in enumerate(results):
            for m in ("topk", "dgc", "randk", "qsgd"):
                for run in ("plain", "scaled"):
                    got = res[f"{m}_{run}"]
                    self.assertEqual(got["skipped"], [False, False, True, False, False, False],
                                     f"rank {r} {m} {run}")
                    for step, g in enumerate(got["largest"]):
                        if step != 2:
                            self.assertLess(g, 100.0, f"rank {r} {m} {run} step {step}")


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendOverlappingGroups(unittest.TestCase):
    """States on overlapping subgroups A=[0,1], B=[0,2] of 3 gloo processes, rank 0 making B's
    comm before A's: the store keys are numbered per group, so every comm comes up (a
    process-wide number hangs rank 1 on A's key) and each group's sum is its members'."""

    def test_comms_of_overlapping_groups_come_up_in_any_order(self):
        _, results = launch_ranks(self, "subgroups", world=3)
        self.assertEqual([r["made"] for r in results], [["B", "A"], ["A"], ["B"]])
        # allreduce of rank+1 over the group (4-bit QSGD of a constant is exact).
        self.assertEqual(results[0]["sums"], {"A": 3.0, "B": 4.0})
        self.assertEqual(results[1]["sums"], {"A": 3.0})
        self.assertEqual(results[2]["sums"], {"B": 4.0})


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendDdpGroup(unittest.TestCase):
    """A GradcompState made without module= over other ranks than the DDP it is registered on
    (4 ranks, DDP on {0,1} and {2,3}): every call averaged over the state's ranks, silently
    (5.0 here where DDP's mean is 3.0 or 7.0). Refused at the first call on every rank of the
    DDP's group, a rank whose own state is right included (no wait for the one refused)."""

    def test_a_state_over_other_ranks_than_ddps_is_refused_on_every_rank(self):
        _, results = launch_ranks(self, "ddp_group", world=4)
        for r, res in enumerate(results):
            pair = [[0, 1], [2, 3]][r // 2]
            self.assertRegex(res["world"]["error"] or "", re.escape(
                f"ValueError: gradcomp: the DDP module this GradcompState is registered on "
                f"reduces over ranks {pair}, but the state over ranks [0, 1, 2, 3]"))
            # Registered again on a new DDP (as after the error): refused again.
            self.assertRegex(res["world_again"]["error"] or "", re.escape(
                f"reduces over ranks {pair}, but the state over ranks [0, 1, 2, 3]"),
                f"rank {r}: {res['world_again']}")
        mixed = [res["mixed"] for res in results]
        self.assertRegex(mixed[0]["error"] or "", re.escape(
            "rank(s) [1] of the DDP module's group (ranks [0, 1]) registered a GradcompState "
            "made over other ranks"))
        self.assertRegex(mixed[1]["error"] or "", re.escape("reduces over ranks [0, 1], but the "
                                                            "state over ranks [0, 1, 2, 3]"))
        self.assertLess(mixed[0]["seconds"], 15, "rank 0 waited for rank 1")
        # The pair whose states are right trains: DDP's mean of 2 * (rank + 1) over {2, 3}.
        self.assertEqual([m["error"] for m in mixed[2:]], [None, None])
        self.assertEqual([m["grad"] for m in mixed[2:]], [7.0, 7.0])


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendRanksDisagree(unittest.TestCase):
    """What decides a hook call and only each rank knows of itself, different by rank on real
    DDP (2 gloo processes, cpu_backend_rank.py disagree): a compressed parameter frozen on one
    rank only (the hook zeroed that rank's slice where DDP averages the gradient of a parameter
    any rank used: the ranks' gradients differed, silently), paused() entered on one rank only
    (a collective mismatch, which gloo answered by aborting the process), a state dict of a
    later step loaded on one rank only during the uncompressed steps (that rank compressed
    while its peer did not), and FSDP2's reduce-scatter inside paused() on one rank only, or
    after an FSDP2 state dict of a later step loaded on one rank only (gradcomp's own step check
    refused it inside the call, as a step mismatch naming neither the state nor the load). Every
    rank raises the same RuntimeError at that step, naming the ranks, before any collective of
    the call; frozen on every rank trains on, without a gradient for the weight."""

    def test_every_rank_raises_alike_naming_the_ranks(self):
        _, results = launch_ranks(self, "disagree")
        want = {
            "frozen": "gradcomp: parameter '2.weight' (bucket 0) requires no gradient on rank(s) "
                      "[0] of the state's group and requires one on rank(s) [1]",
            "paused": "gradcomp: rank(s) [0] of the state's group are inside state.paused() and "
                      "rank(s) [1] are not",
            "paused_warmup": "gradcomp: rank(s) [0] of the state's group are inside "
                             "state.paused() and rank(s) [1] are not",
            "loaded": "gradcomp: the ranks of the state's group are at different steps "
                      "(state.iter by rank: [4, 1])",
            "fsdp_paused": "gradcomp: rank(s) [0] of the state's group are inside "
                           "state.paused() and rank(s) [1] are not: those inside would send "
                           "the reduce-scatter of FSDP module '<root>' uncompressed",
            "fsdp_loaded": "gradcomp: the ranks of the state's group are at different steps "
                           "(state.iter by rank: [3, 1])",
        }
        for r, res in enumerate(results):
            for case, said in want.items():
                self.assertIn("RuntimeError: " + said, res[case]["error"] or "",
                              f"rank {r} {case}")
            self.assertIsNone(res["frozen_all"]["error"], f"rank {r}")
            self.assertIsNone(res["frozen_all"]["grad"], f"rank {r}")


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendRegisterDdpHook(unittest.TestCase):
    """gct.register_ddp_hook(ddp, state) on 2 gloo processes: the DDP and its group recorded on
    the state, each DDP checked at its own first hook call, where register_comm_hook leaves the
    state to find its DDP by a gc walk once (blind after gc.freeze(), and to a DDP registered
    later: those averaged over the state's ranks, with one warning), also under torch's hook
    wrappers (wrap=). The states are over the world, the
    refused DDPs over each rank alone, where DDP's own gradient is 2 * (rank + 1) and the
    state's mean 3.0. One launch (cpu_backend_rank.py ddp_register) serves every test here."""

    results = None

    def launch(self):
        if CpuBackendRegisterDdpHook.results is None:
            CpuBackendRegisterDdpHook.results = launch_ranks(self, "ddp_register")[1]
        return CpuBackendRegisterDdpHook.results

    def refused(self, r, got):
        self.assertRegex(got["error"] or "", re.escape(
            f"ValueError: gradcomp: the DDP module this GradcompState is registered on reduces "
            f"over ranks [{r}], but the state over ranks [0, 1]"), f"rank {r}: {got}")

    def test_the_helper_trains_as_register_comm_hook_bit_for_bit(self):
        for r, res in enumerate(self.launch()):
            self.assertEqual(res["trained"]["register_ddp_hook"],
                             res["trained"]["register_comm_hook"], f"rank {r}")
            self.assertGreater(res["register_ddp_hook_compressed_calls"], 0)
            self.assertEqual(res["register_ddp_hook_compressed_calls"],
                             res["register_comm_hook_compressed_calls"])

    def test_a_state_over_other_ranks_is_refused_after_gc_freeze(self):
        for r, res in enumerate(self.launch()):
            self.refused(r, res["frozen"])

    def test_a_state_moved_to_a_ddp_of_another_group_is_checked_again(self):
        for r, res in enumerate(self.launch()):
            self.assertEqual(res["moved"][0], {"error": None, "grad": 3.0}, f"rank {r}")
            self.refused(r, res["moved"][1])

    def test_one_state_on_two_ddps_checks_each(self):
        for r, res in enumerate(self.launch()):
            # Both registered before the first step: each DDP's own group is checked (the gc
            # walk found one of the two, and checked the state once).
            self.assertEqual(res["two"][0], {"error": None, "grad": 3.0}, f"rank {r}")
            self.refused(r, res["two"][1])
            # The second by register_comm_hook: its gc walk passes by the helper's DDP.
            self.assertEqual(res["helper_and_plain"][0], {"error": None, "grad": 3.0})
            self.refused(r, res["helper_and_plain"][1])
            # DDPs of two models on one state: refused before their residuals mix.
            self.assertEqual(res["two_models"][0], {"error": None, "grad": 3.0}, f"rank {r}")
            self.assertRegex(res["two_models"][1]["error"] or "", "ValueError: gradcomp_hook "
                             "got a bucket of parameters that are not in the module given to "
                             "this GradcompState: two DDP models share this state")

    def test_torch_hook_wrappers_go_through_the_helper(self):
        """wrap=fp16_compress_wrapper: trains as register_comm_hook(state,
        fp16_compress_wrapper(gradcomp_hook)) bit for bit, and the DDP is named at each call, so
        a state over other ranks is refused after gc.freeze() too, where that register_comm_hook
        finds no DDP (and warns); a DDP registered after it by register_comm_hook is checked on
        its own. A wrap that returns no hook, or calls it with another state, is refused."""
        for r, res in enumerate(self.launch()):
            self.assertEqual(res["trained"]["register_ddp_hook_fp16"],
                             res["trained"]["register_comm_hook_fp16"], f"rank {r}")
            self.assertNotEqual(res["trained"]["register_ddp_hook_fp16"],
                                res["trained"]["register_ddp_hook"], "fp16 made no difference")
            self.assertGreater(res["register_ddp_hook_fp16_compressed_calls"], 0)
            self.assertEqual(res["register_ddp_hook_fp16_compressed_calls"],
                             res["register_comm_hook_fp16_compressed_calls"])
            self.refused(r, res["wrapped_frozen_helper"])
            self.assertEqual(res["wrapped_frozen_register_comm_hook"]["grad"], 3.0)
            self.assertTrue(res["wrapped_frozen_register_comm_hook"].get("unchecked"))
            self.assertEqual(res["wrapped_helper_and_plain"][0], {"error": None, "grad": 3.0})
            self.refused(r, res["wrapped_helper_and_plain"][1])
            self.assertRegex(res["wrap_returns_no_hook"] or "", re.escape(
                "TypeError: register_ddp_hook's wrap returned 5, not a hook"))
            self.assertRegex(res["wrap_passes_another_state"]["error"] or "", re.escape(
                "TypeError: the hook register_ddp_hook registered was called with a dict, not "
                "the GradcompState it was registered with"))

    def test_a_hook_of_ones_own_under_another_state_warns_that_it_is_unchecked(self):
        """DDP given None as its hook's state, the hook calling gradcomp_hook with a state it
        holds: the gc walk finds no DDP, so a state over the world on a DDP of one rank averages
        over both (3.0, where DDP's own mean is 2 * (rank + 1)); it says so once, with what to
        register with (it said nothing until 2026-12-06)."""
        for r, res in enumerate(self.launch()):
            got = res["own_hook_other_state"]
            self.assertEqual((got["error"], got["grad"]), (None, 3.0), f"rank {r}")
            self.assertEqual(len(got.get("unchecked", [])), 1, f"rank {r}: {got}")
            said = got["unchecked"][0]
            self.assertIn("cannot check that the DDP reduces over the state's 2 ranks", said)
            self.assertIn("gct.register_ddp_hook(model, state, wrap=...)", said)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendTorchCompositions(unittest.TestCase):
    """gradcomp's DDP hook with torch's own tools on 2 gloo processes, as README's list of
    compositions says they work. One launch (cpu_backend_rank.py compose) serves every test."""

    results = None

    def launch(self):
        if CpuBackendTorchCompositions.results is None:
            CpuBackendTorchCompositions.results = launch_ranks(self, "compose")
        return CpuBackendTorchCompositions.results

    def test_half_precision_wrappers_give_gradcomps_own_half_precision_results(self):
        """fp16_compress_wrapper and bf16_compress_wrapper around the hook (register_ddp_hook's
        wrap=): each call's result on each rank is bit for bit the serial reference of the
        half-precision bucket the wrapper hands on (its full-precision part the mean x_0/2 +
        x_1/2 in that type, its compressed part the library's keyed Avg allreduce of the
        gathered elements, in the hook's call order)."""
        import gradcomp

        records, results = self.launch()
        N = 2
        cfg = gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            recs = [records[r][name] for r in range(N)]
            self.assertEqual(len(recs[0]), len(recs[1]))
            self.assertTrue(any(rec["compressed"] and rec["comp_n"] for rec in recs[0]))
            self.assertGreater(results[0][name + "_compressed_calls"], 0)
            with gradcomp.CpuWorld(N, cfg) as world:
                for k, rec0 in enumerate(recs[0]):
                    xs = [recs[r][k]["input"] for r in range(N)]
                    self.assertEqual(xs[0].dtype, dtype)
                    want = xs[0] * (1.0 / N) + xs[1] * (1.0 / N)
                    if rec0["compressed"] and rec0["comp_n"]:
                        idx = torch.cat([torch.arange(o, o + n) for o, n in rec0["comp"]])
                        parts = [x[idx].contiguous() for x in xs]
                        world.run(lambda c: c.allreduce(parts[c.rank], op="avg",
                                                        key=rec0["key"]))
                        want[idx] = parts[0]
                    for r in range(N):
                        got = recs[r][k]["output"]
                        self.assertTrue(torch.equal(got.view(torch.int16),
                                                    want.view(torch.int16)),
                                        f"{name} rank {r} call {k}: "
                                        f"{int((got != want).sum())} elements differ")

    def test_zero_redundancy_optimizer_trains_as_its_optimizer(self):
        """ZeroRedundancyOptimizer (without overlap_with_ddp) over momentum SGD: the parameters
        bit for bit those of torch.optim.SGD on the same hook's results."""
        _, results = self.launch()
        for r, res in enumerate(results):
            self.assertEqual(res["zero"]["zero"], res["zero"]["sgd"], f"rank {r}")
            self.assertGreater(res["zero_compressed_calls"], 0)
        self.assertEqual(results[0]["zero"], results[1]["zero"])

    def test_join_with_uneven_inputs(self):
        """Join: the joined rank's shadow calls go through the hook too (DDP's zero buckets), so
        the ranks' step counters and compressed calls agree; at full precision the parameters
        are bit for bit DDP's without a hook (the hook divides by the group's size, as Join's
        default divide_by_initial_world_size=True does)."""
        _, results = self.launch()
        for r, res in enumerate(results):
            join = res["join"]
            self.assertEqual(join["full_precision"]["hash"], join["plain"]["hash"], f"rank {r}")
            self.assertEqual(join["fp16"]["iter"], 5)
            self.assertGreater(join["fp16"]["compressed_calls"], 0)
        self.assertEqual(results[0]["join"], results[1]["join"])


def serial_reference(test, recs, what):
    """Each hook call's result on each of 2 ranks (recs: their lists of records, as
    cpu_backend_rank.py's ddp writes them) is bit for bit the serial reference on the in-process
    CPU world: the mean x_0/2 + x_1/2 where the hook sends full precision, the library's keyed
    Avg allreduce of the gathered compressed parts, in the hook's call order, elsewhere.
    Returns the kinds of calls seen ("full precision", "mixed", "whole")."""
    import gradcomp

    N = 2
    test.assertEqual(len(recs[0]), len(recs[1]), what)
    kinds = set()
    cfg = gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)
    with gradcomp.CpuWorld(N, cfg) as world:
        for k, rec0 in enumerate(recs[0]):
            xs = [recs[r][k]["input"] for r in range(N)]
            want = xs[0] * (1.0 / N) + xs[1] * (1.0 / N)
            if rec0["compressed"] and rec0["comp_n"]:
                idx = torch.cat([torch.arange(o, o + n) for o, n in rec0["comp"]])
                parts = [x[idx].contiguous() for x in xs]
                world.run(lambda c: c.allreduce(parts[c.rank], op="avg", key=rec0["key"]))
                want[idx] = parts[0]
                kinds.add("whole" if not rec0["full"] else "mixed")
            else:
                kinds.add("full precision")
            for r in range(N):
                same_bits(test, recs[r][k]["output"], want,
                          f"{what}: rank {r} step {rec0['step']} bucket {rec0['index']}")
    return kinds


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendDdpPatterns(unittest.TestCase):
    """The DDP hook under common training patterns on 2 gloo processes (cpu_backend_rank.py
    patterns, one launch for the class; compiled): gradient accumulation with ddp.no_sync(),
    the unused-parameter carry under it and under activation checkpointing (use_reentrant=
    False), torch.compile of the DDP model. Each hook call's result is bit for bit the serial
    reference (error feedback carried from call to call), and reaches the parameters' .grad."""

    results = None

    def launch(self):
        if CpuBackendDdpPatterns.results is None:
            CpuBackendDdpPatterns.results = launch_ranks(self, "patterns")
        return CpuBackendDdpPatterns.results

    def _check(self, name, micro=1):
        records, results = self.launch()
        recs = [records[r][name] for r in range(2)]
        kinds = serial_reference(self, recs, name)
        self.assertIn("mixed", kinds, name)
        for r in range(2):
            # One step counted per optimizer step (the synced pass), whatever the passes.
            self.assertEqual(results[r][name]["iter"], list(range(1, 6)), f"{name} rank {r}")
            self.assertEqual(results[r][name]["undelivered"], [0] * 5, f"{name} rank {r}")
            # The hook runs in the synced pass only, and compresses from step START on.
            self.assertEqual({rec["micro"] for rec in recs[r]}, {micro - 1}, f"{name} rank {r}")
            self.assertTrue(any(rec["compressed"] and rec["comp_n"] for rec in recs[r]))

    def test_gradient_accumulation_with_no_sync(self):
        """3 backward passes a step, the first two inside ddp.no_sync(): the hook gets the
        accumulated gradient once a step, and its step counter counts steps, not passes. Also
        with gradient_as_bucket_view=True and zero_grad(set_to_none=False), where the passes
        accumulate in DDP's buckets themselves and the result written there is .grad."""
        self._check("no_sync", micro=3)
        self._check("no_sync_view", micro=3)

    def test_the_unused_parameter_carry_under_accumulation_and_checkpointing(self):
        """DDP(find_unused_parameters=True) on top-k: p used in a no_sync pass only at step
        UNUSED_AT, on every rank or on rank 0 only (DDP counts it used and gives it its slice,
        also where its input slice is zero: nothing is kept), unused in every pass of that step
        on every rank (its released slice is kept for the next step), and unused under
        checkpointing (the backward recomputes its use). The gradients p got sum to its
        averaged gradients, and p.grad is alike on both ranks at every step."""
        records, _ = self.launch()
        at = cbr_unused_at()
        want_kept = {"used_in_no_sync_only": 0, "used_in_no_sync_only_view": 0,
                     "used_in_no_sync_on_rank_0": 0, "unused_in_every_pass": 1,
                     "checkpoint": 1}
        self.assertEqual(set(records[0]["carry"]), set(want_kept))
        for name, kept in want_kept.items():
            recs = [records[r]["carry"][name] for r in range(2)]
            with self.subTest(case=name):
                for r in range(2):
                    self.assertEqual(recs[r]["carried"][at], kept, f"rank {r}")
                    true = sum((a + b) * 0.5 for a, b in zip(recs[0]["input"], recs[1]["input"]))
                    err = float((true - sum(recs[r]["grad"])).abs().max())
                    self.assertLess(err, 1e-4, f"rank {r}: the gradients p got sum to other "
                                    f"than its averaged gradients (max |difference| {err})")
                for s, (g0, g1) in enumerate(zip(recs[0]["grad"], recs[1]["grad"])):
                    same_bits(self, g0, g1, f"step {s}: rank 0 and 1's p.grad")

    def test_torch_compile_of_the_model_in_ddp(self):
        """DDP(torch.compile(model)): the compiled backward fills DDP's buckets, the hook's
        results are the serial reference's and reach .grad (dynamo captured a graph: the
        model did run compiled)."""
        records, results = launch_ranks(self, "compiled")
        recs = [records[r]["compiled"] for r in range(2)]
        self.assertIn("mixed", serial_reference(self, recs, "compiled"))
        for r in range(2):
            self.assertGreater(results[r]["compiled"]["graphs"], 0, f"rank {r}: nothing compiled")
            self.assertEqual(results[r]["compiled"]["iter"], list(range(1, 6)))
            self.assertEqual(results[r]["compiled"]["undelivered"], [0] * 5)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendRestart(unittest.TestCase):
    """An in-process restart (destroy_process_group, init_process_group on a new store prefix)
    after a life in which only rank 0 reached a comm's creation: life 2's comm comes up on both
    ranks (its store keys numbered from 0 in the new world, not on from each process's count
    of the last one, which differs), and its state, loaded from life 1's checkpoint, trains bit
    for bit as life 1's went on. Rank 0 deletes each key once its comm is made or has failed: a
    world restarted on the same store (which torch.distributed takes) numbers from 0 again."""

    def test_a_restarted_world_numbers_its_comms_afresh(self):
        _, results = launch_ranks(self, "restart")
        self.assertRegex(results[0]["life1_error"] or "", "timed out")
        # The failed creation's key holds its mark (the comm made before it was deleted), which
        # a late peer reads as rank 0's error at once.
        self.assertEqual(results[0]["life1_keys_left"], [1])
        self.assertRegex(results[0]["late_peer_error"] or "", r"rank 0 of the group could not "
                         r"make the comm of gradcomp/socket_root/0-1/.*/1 \(.*timed out")
        self.assertLess(results[0]["late_peer_s"], 5)
        self.assertEqual(results[0]["life2_keys_left"], [])
        for r, res in enumerate(results):
            self.assertEqual(res["hash"], res["ref_hash"], f"rank {r}")
            self.assertEqual(res["compressed_calls"], 2, f"rank {r}")


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendDgcMomentum(unittest.TestCase):
    """DGC's momentum correction from PyTorch: GradcompState.param_groups gives the parameters
    gradcomp compresses an optimizer group with momentum 0 (gradcomp keeps their velocity) and
    the others momentum m. At density 1 without masking all of u is sent every step, so 6 steps
    of DDP with the hook and plain SGD on those groups follow momentum SGD on plain DDP to
    float rounding; giving the compressed parameters the optimizer's momentum as well (the
    mistake the groups prevent) is off by far more."""

    def test_param_groups_make_dgc_follow_momentum_sgd(self):
        records, results = launch_ranks(self, "dgc")
        self.assertEqual(results[0]["param_hash"], results[1]["param_hash"])
        for r, (res,) in enumerate(records):
            full, comp = res["membership"]
            self.assertEqual(sorted(n for n, _ in comp), res["stats"]["compressed_params"])
            self.assertEqual(sorted(n for n, _ in full), res["stats"]["full_precision_params"])
            self.assertEqual({mo for _, mo in comp}, {0.0})
            self.assertEqual({round(mo, 6) for _, mo in full}, {0.9})
            self.assertEqual(res["stats"]["gradcomp"]["dense_fallbacks"],
                             res["stats"]["compressed_calls"])
            worst = max(float((a - b).abs().max()) for a, b in zip(res["groups"], res["ref"]))
            twice = max(float((a - b).abs().max()) for a, b in zip(res["twice"], res["ref"]))
            self.assertLess(worst, 1e-5, f"rank {r}: the DGC run is {worst} from momentum SGD")
            self.assertGreater(twice, 100 * max(worst, 1e-7),
                               f"rank {r}: momentum applied twice is only {twice} away")
            # Weight decay through param_groups: gct.DGCSGD keeps the decay's own momentum
            # and follows momentum SGD with decay; torch.optim.SGD's wd / (1 - m) does not.
            exact = max(float((a - b).abs().max()) for a, b in zip(res["wd_exact"],
                                                                      res["ref_wd"]))
            approx = max(float((a - b).abs().max()) for a, b in zip(res["wd_approx"],
                                                                       res["ref_wd"]))
            self.assertLess(exact, 1e-5, f"rank {r}: DGCSGD is {exact} from momentum SGD "
                            "with weight decay")
            self.assertGreater(approx, 100 * max(exact, 1e-7),
                               f"rank {r}: the steady-state decay is only {approx} away")
            self.assertEqual(res["qsgd_groups"], 1)
            # weight_decay=wd: wd on the full-precision group, wd / (1 - m) on the compressed
            # one (momentum SGD's steady-state decay), wd alone for the other methods.
            (nf, mf, wf), (nc, mc, wc) = res["wd_groups"]
            self.assertEqual((nf, nc), (len(full), len(comp)))
            self.assertAlmostEqual(mf, 0.9, places=6)
            self.assertEqual(mc, 0.0)
            self.assertAlmostEqual(wf, 1e-4, places=12)
            self.assertAlmostEqual(wc, 1e-4 / (1 - mf), places=9)
            self.assertEqual(res["qsgd_wd"], [1e-4])
            self.assertEqual(res["uncorrected_groups"], 1)
            # DGC at 0.1% whose calls gradcomp passes through (under min_elements): the
            # compressed parameters still get gradcomp's velocity, so momentum SGD again,
            # counted as passed and warned about once.
            passed = max(float((a - b).abs().max()) for a, b in zip(res["passed"], res["ref"]))
            self.assertLess(passed, 1e-5, f"rank {r}: passed-through DGC is {passed} from "
                            "momentum SGD (its parameters lost their momentum)")
            ps = res["passed_stats"]
            self.assertEqual((ps["compressed_calls"], ps["passed_calls"]), (0, 6))
            self.assertEqual(ps["gradcomp"]["calls_passed_through"], 6)
            self.assertEqual(len(res["passed_warnings"]), 1, res["passed_warnings"])
            self.assertIn("min_elements=1048576", res["passed_warnings"][0])
            self.assertIn("still applies its DGC momentum", res["passed_warnings"][0])


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendFsdp(unittest.TestCase):
    """GradcompReduceScatter with GradcompState(backend="cpu") under FSDP2 on gloo (2
    processes): every call's output on every rank is bit for bit the library's keyed
    reduce-scatter on the in-process CPU world fed the recorded inputs in call order."""

    def test_fsdp_reduce_scatter_matches_the_serial_reference(self):
        import gradcomp
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        records, results = launch_ranks(self, "fsdp")
        factored = [[r for r in rec if r["run"] == "factor"] for rec in records]
        records = [[r for r in rec if r["run"] == "plain"] for rec in records]
        N = 2
        self.assertEqual([(r["key"], r["op"]) for r in records[0]],
                         [(r["key"], r["op"]) for r in records[1]])
        self.assertEqual(len(records[0]), 3 * 2)  # 3 steps, 2 sharded layers
        cfg = gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)
        with gradcomp.CpuWorld(N, cfg) as world:
            for k, rec0 in enumerate(records[0]):
                self.assertIn(rec0["op"], ("avg", "sum"))
                outs = [torch.empty_like(records[r][k]["output"]) for r in range(N)]
                world.run(lambda c: c.reduce_scatter(records[c.rank][k]["input"], outs[c.rank],
                                                     op=rec0["op"], key=rec0["key"]))
                for r in range(N):
                    same_bits(self, records[r][k]["output"], outs[r], f"rank {r} call {k}")
        self.assertEqual(results[0]["param_hash"], results[1]["param_hash"])
        self.assertEqual(results[0]["stats"]["gradcomp"]["calls_reduce_scatter"], 6)
        # The step counter as the DDP hook's: 3 steps; saved after 2, resumed for the third,
        # which is bit for bit the uninterrupted run's.
        for r in range(N):
            self.assertEqual(results[r]["stats"]["iter"], 3, f"rank {r}")
            self.assertEqual(results[r]["iters"], {"saved": 2, "resumed": 3,
                                                   "resumed_stats": 3}, f"rank {r}")
            self.assertTrue(results[r]["resume_bitwise"], f"rank {r}")
        # set_gradient_divide_factor(4.0) at 2 ranks: FSDP's PREMUL_SUM(1/4), which gloo
        # refuses: every call is the library's keyed Sum of the inputs times float32(1/4), as
        # NCCL's PreMulSum multiplies them, compressed (2 steps, 2 sharded layers).
        self.assertEqual(len(factored[0]), 2 * 2)
        with gradcomp.CpuWorld(N, cfg) as world:
            for k, rec0 in enumerate(factored[0]):
                self.assertEqual((rec0["op"], rec0["factor"]), ("premul_sum", 0.25))
                outs = [torch.empty_like(factored[r][k]["output"]) for r in range(N)]
                world.run(lambda c: c.reduce_scatter(factored[c.rank][k]["input"] * 0.25,
                                                     outs[c.rank], op="sum", key=rec0["key"]))
                for r in range(N):
                    same_bits(self, factored[r][k]["output"], outs[r], f"factor rank {r} call {k}")
        self.assertEqual(results[0]["factor_param_hash"], results[1]["factor_param_hash"])
        self.assertEqual(results[0]["factor_stats"]["compressed_calls"], 4)

    def test_a_divide_factor_changed_between_steps_keeps_the_residual_s_weight(self):
        """The residual holds what a step did not send in the unit of the input the library
        got; where FSDP's division changed since (set_gradient_divide_factor: an Avg become a
        pre-multiplied Sum and back, the post-division of a forced sum or of fp16), it was
        added to the next step's gradient weighed by the new factor (off by 2 to 4 here),
        silently, also in a run resumed at the new factor. Every case's second step, run
        through or resumed from the first's state dict, is bit for bit that of a run at the
        new factor throughout whose first step's gradients are the same (its loss scaled by
        f2/f1); but fp16's, which is not scaled (the multiply could overflow what FSDP divided to
        keep finite) and warns. GradcompReplicaAllReduce (HSDP by hand, the factor making its
        Avg over the replicas a Sum) alike."""
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        _, results = launch_ranks(self, "fsdp_factor")
        for r in range(2):
            self.assertEqual(sorted(results[r]), ["avg_to_premul", "forced_sum", "fp16",
                                                  "premul_to_avg", "premul_to_premul",
                                                  "replicas_avg_to_sum", "replicas_sum_to_sum"])
            for name, got in results[r].items():
                # fp16: FSDP divides the input before the call so that the sum stays finite;
                # a multiply into the residual's unit could undo that, so the state takes the
                # new unit instead (the carry off by the factors' ratio for one step), warned.
                fp16 = name == "fp16"
                self.assertEqual(got, {"step1": True, "changed": not fp16, "resumed": not fp16,
                                       "resumed_as_changed": True, "warned": fp16},
                                 f"rank {r} {name}")

    def test_one_hook_installed_on_two_modules_is_refused(self):
        """One GradcompReduceScatter installed on two FSDP modules of one size (set by hand):
        both reduced under its key, one residual for the two (each one's error feedback added
        to the other's gradient) and two steps counted for one, silently. Every rank refuses
        at the first call, naming the other module."""
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        _, results = launch_ranks(self, "fsdp_shared_hook")
        for r in range(2):
            self.assertRegex(results[r]["error"] or "",
                             r"^ValueError: the gradcomp reduce-scatter made for FSDP module "
                             r"'0' is installed on FSDP module\(s\) \['1'\] too: .* Make one "
                             r"per module: register_fsdp_reduce_scatter\(model, state\) does",
                             f"rank {r}")
            self.assertEqual(results[r]["iter"], 0, f"rank {r}")

    def test_two_models_on_one_state_are_refused_and_a_rebuilt_one_takes_over(self):
        """Two FSDP2 models registered on one GradcompState key their modules' residuals by
        the same names (every root is "<root>"): each module's error feedback went into the
        other model's gradient and every step counted twice, silently. Every rank refuses
        alike, naming the module; a model built anew and registered on the state (the old one
        still alive, not trained) goes on with it."""
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        _, results = launch_ranks(self, "fsdp_models")
        for r in range(2):
            self.assertRegex(results[r]["shared"]["error"] or "",
                             r"^ValueError: FSDP module '[^']+' has two reduce-scatters on this "
                             r"GradcompState under one name: two models .* one GradcompState "
                             "per model", f"rank {r}")
            # Two steps of 2 sharded layers (the root has no parameters of its own).
            self.assertEqual(results[r]["rebuilt"], {"error": None, "iter": 2,
                                                     "old_alive": True, "calls": 4},
                             f"rank {r}")
        self.assertEqual(results[0]["shared"], results[1]["shared"])

    def test_parameters_frozen_by_turns_keep_their_residuals_apart(self):
        """A module whose two equal weights are frozen by turns (set_reduce_scatter_unused_params
        keeps no frozen one in FSDP's flat buffer): its two 16-element buffers hold different
        weights, and the second took the first's residual (the error of one weight added to
        the other's gradient, silently). Each set of frozen parameters has a residual of its
        own: every call is bit for bit the library's keyed reduce-scatter with one key per
        layout, the unfrozen step 3 going on from step 0's residual."""
        import gradcomp
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        if not hasattr(torch.distributed.fsdp.FSDPModule, "set_reduce_scatter_unused_params"):
            self.skipTest("this FSDP2 has no set_reduce_scatter_unused_params")
        records, results = launch_ranks(self, "fsdp_frozen")
        N = 2
        self.assertEqual([r["input"].numel() for r in records[0]], [32, 16, 16, 32])
        layout = [0, 1, 2, 0]  # the residual each step's call goes on from
        cfg = gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)
        with gradcomp.CpuWorld(N, cfg) as world:
            for k, rec0 in enumerate(records[0]):
                outs = [torch.empty_like(records[r][k]["output"]) for r in range(N)]
                world.run(lambda c: c.reduce_scatter(records[c.rank][k]["input"], outs[c.rank],
                                                     op=rec0["op"], key=layout[k] + 1))
                for r in range(N):
                    same_bits(self, records[r][k]["output"], outs[r], f"rank {r} step {k}")
        self.assertEqual([res["iter"] for res in results], [4, 4])

    def test_a_checkpoint_keying_frozen_parameters_by_name_resumes_their_residual(self):
        """A checkpoint of a module with frozen parameters saved by a gradcomp that kept its
        residual under the module's name alone (before frozen sets keyed their own): resumed,
        the step is bit for bit the uninterrupted run's, and nothing is warned (the residual
        started fresh, warning of a module the checkpoint had no residual for)."""
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        _, results = launch_ranks(self, "fsdp_frozen_resume")
        for r in range(2):
            self.assertEqual(results[r], {"resume_bitwise": True, "iter": 3, "warnings": []},
                             f"rank {r}")

    def test_a_root_sharded_after_registering_is_named(self):
        """register_fsdp_reduce_scatter before the root's fully_shard: FSDP reduces the root's
        own parameters with its own reduce-scatter, uncompressed, which no counter showed.
        The first compressed call warns (once), naming the module; registered after the last
        fully_shard, nothing is said and every module is compressed."""
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        _, results = launch_ranks(self, "fsdp_late_root")
        for r in range(2):
            late = results[r]["late"]
            self.assertEqual(late["calls"], 2, f"rank {r}")  # the two layers only
            self.assertEqual(len(late["warnings"]), 1, f"rank {r}: {late['warnings']}")
            self.assertRegex(late["warnings"][0], r"FSDP module\(s\) \['<root>'\] of the model "
                             r"have no gradcomp reduce-scatter on this GradcompState: .* "
                             r"fully_shard\(\) applied after register_fsdp_reduce_scatter")
            self.assertEqual(results[r]["last"], {"warnings": [], "calls": 3}, f"rank {r}")


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendFsdpCheckpoint(unittest.TestCase):
    """A GradcompState under FSDP2 checkpointed with torch.distributed.checkpoint (DCP) on gloo
    (2 processes), as README's FSDP2 section says: each rank's state dict under a key of its
    own."""

    def test_dcp_resumes_bit_for_bit_and_one_shared_key_is_refused_not_mixed_up(self):
        """Keyed by rank, each rank loads the state dict it saved, and the resumed step is bit
        for bit the uninterrupted run's. Under one key for every rank, DCP keeps one rank's
        copy of a value that is no tensor: a rank that gets another's is refused naming both
        ranks (its residuals are not loaded into this rank)."""
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.unsupported_reason()
        if reason:
            self.skipTest(reason)
        try:
            import torch.distributed.checkpoint  # noqa: F401
        except ImportError:
            self.skipTest("this PyTorch has no torch.distributed.checkpoint")
        _, results = launch_ranks(self, "fsdp_dcp")
        for r in range(2):
            self.assertEqual(results[r]["keyed"], {"own": True, "error": None,
                                                   "resume_bitwise": True, "iter": 3},
                             f"rank {r}")
            shared = results[r]["shared"]
            if shared["own"]:
                self.assertIsNone(shared["error"], f"rank {r}")
            else:
                self.assertRegex(shared["error"] or "",
                                 rf"^InvalidArgumentError: state blob refused, this state is "
                                 rf"unchanged: saved by rank {1 - r} of 2; this state is rank {r} "
                                 r"of 2: load on each rank the state dict that rank saved "
                                 r"\(torch.distributed.checkpoint keeps one rank's copy .* give "
                                 r"each rank's state dict a key of its own",
                                 f"rank {r}")


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendFsdpReplicas(unittest.TestCase):
    """GradcompReplicaAllReduce (HSDP by hand) with GradcompState(backend="cpu") on 4 gloo
    processes, 2 replicas x 2 shards: FSDP2 over mesh["shard"], the hook's state over
    mesh["replicate"] (ranks {0, 2} and {1, 3}). One launch (cpu_backend_rank.py replicas)
    serves every test here."""

    N = 2  # replicas
    results = None

    def launch(self):
        import gradcomp.torch.fsdp

        reason = gradcomp.torch.fsdp.replica_unsupported_reason()
        if reason:
            self.skipTest(reason)
        if CpuBackendFsdpReplicas.results is None:
            CpuBackendFsdpReplicas.results = launch_ranks(self, "replicas", world=4)
        return CpuBackendFsdpReplicas.results

    def test_compressed_calls_match_the_serial_reference(self):
        """Every compressed call's output on every rank is bit for bit the library's keyed Avg
        allreduce of the two replicas' recorded inputs, replayed in call order on an
        in-process CPU world per replicate group (its residuals are that group's), for fp32
        (FSDP's AVG reduce-scatter) and fp16 (its pre/post-divided sum); the key is the
        module's, distinct from the reduce-scatter's."""
        import gradcomp
        import gradcomp.torch as gt

        records, _ = self.launch()
        cfg = gradcomp.Config(from_env=False, method="qsgd", bits=4, min_elements=0)
        keys = {gt.GradcompReplicaAllReduce(None, name).key for name in ("0", "2")}
        self.assertFalse(keys & {gt.GradcompReduceScatter(None, name).key
                                 for name in ("0", "2")})
        for run, dtype, steps in (("fp32", torch.float32, 3), ("fp16", torch.float16, 2)):
            recs = [[r for r in rec if r["run"] == run and not r["paused"]] for rec in records]
            self.assertEqual(len(recs[0]), 2 * steps, run)  # 2 sharded layers
            for rank in range(4):
                self.assertEqual([(r["key"], r["op"]) for r in recs[rank]],
                                 [(r["key"], "avg") for r in recs[0]], f"{run} rank {rank}")
            self.assertEqual({r["key"] for r in recs[0]}, keys)
            for shard in range(2):
                group = [shard, shard + 2]  # mesh["replicate"] of this shard
                with gradcomp.CpuWorld(self.N, cfg) as world:
                    for k, rec0 in enumerate(recs[shard]):
                        self.assertEqual(rec0["input"].dtype, dtype)
                        xs = [recs[g][k]["input"].clone() for g in group]
                        world.run(lambda c: c.allreduce(xs[c.rank], op="avg", key=rec0["key"]))
                        for i, g in enumerate(group):
                            self.assertTrue(torch.equal(recs[g][k]["output"].view(torch.int16),
                                                        xs[i].view(torch.int16)),
                                            f"{run} rank {g} call {k}")
                    # The two shards' calls differ: each replicate group reduces its own shard.
                    self.assertFalse(torch.equal(recs[0][0]["input"], recs[1][0]["input"]))

    def test_replicas_hold_identical_parameters(self):
        _, results = self.launch()
        for shard in range(2):
            self.assertEqual(results[shard]["local_hash"], results[shard + 2]["local_hash"],
                             f"shard {shard}: the replicas' parameters differ")
        self.assertNotEqual(results[0]["local_hash"], results[1]["local_hash"])
        self.assertEqual(len({r["full_hash"] for r in results}), 1)

    def test_stats_count_the_compressed_calls_and_bytes(self):
        records, results = self.launch()
        for rank, res in enumerate(results):
            self.assertEqual(res["registered"], 3)  # model[0], model[2] and the root
            self.assertEqual(res["fp32_keyed_by"], "fsdp-replicas")
            for stats, run, steps, elem in ((res["stats"], "fp32", 3, 4),
                                            (res["fp16_stats"], "fp16", 2, 2)):
                n = sum(r["input"].numel() for r in records[rank]
                        if r["run"] == run and not r["paused"])
                self.assertEqual(stats["compressed_calls"], 2 * steps, f"rank {rank} {run}")
                self.assertEqual(stats["iter"], steps, f"rank {rank} {run}")  # as DDP's
                self.assertEqual(stats["passed_calls"], 0)
                self.assertEqual(stats["compressed_dense_bytes"], elem * n)
                self.assertEqual(stats["gradcomp"]["calls_compressed"], 2 * steps)
                self.assertEqual(stats["gradcomp"]["bytes_in"], elem * n)
                self.assertLess(stats["gradcomp"]["bytes_on_wire"], elem * n / 2)

    def test_paused_step_sends_uncompressed_and_keeps_the_residuals(self):
        records, results = self.launch()
        for shard in range(2):
            a, b = ([r for r in records[g] if r["run"] == "fp32" and r["paused"]]
                    for g in (shard, shard + 2))
            self.assertEqual(len(a), 2)
            for ra, rb in zip(a, b):
                want = (ra["input"] + rb["input"]) / 2  # gloo's AVG of two
                for got in (ra["output"], rb["output"]):
                    same_bits(self, got, want, f"shard {shard} paused call")
        for res in results:
            self.assertTrue(res["paused_kept_residuals"])
            self.assertEqual(res["paused_stats"]["compressed_calls"],
                             res["stats"]["compressed_calls"])
            self.assertEqual(res["paused_stats"]["gradcomp"], res["stats"]["gradcomp"])
            self.assertEqual(res["paused_stats"]["iter"], res["stats"]["iter"])  # no step

    def test_refusals_say_what_to_do(self):
        _, results = self.launch()
        want = {
            "device": r"TypeError: GradcompReplicaAllReduce got a meta tensor, but its state's "
                      r"backend 'cpu' reduces CPU tensors",
            "dtype": r"TypeError: GradcompReplicaAllReduce got a torch.float64 tensor: gradcomp "
                     r"compresses float32, float16 and bfloat16",
            "strided": r"ValueError: GradcompReplicaAllReduce got a non-contiguous tensor "
                       r"\(shape \(8,\), stride \(2,\)\).*\.contiguous\(\)",
            "both_roles": r"ValueError: this GradcompState already serves FSDP2's replica "
                          r"all-reduce.*make one GradcompState per process group",
            "shard_group": r"ValueError: the GradcompState's group \(ranks \[\d, \d\]\) is not "
                           r"the replicate group of FSDP's shard group.*mesh\['replicate'\]",
            "native_hsdp": r"ValueError: this FSDP module is native HSDP.*"
                           r"fully_shard\(\.\.\., mesh=mesh\['shard'\]\)",
            # One state per group on both collectives, each with DGC's momentum correction:
            # the velocity would be applied twice.
            "two_velocities_hook_last": r"ValueError: FSDP module '0': its reduce-scatter "
                                        r"already goes through a GradcompState with DGC's "
                                        r"momentum correction.*momentum twice.*"
                                        r"momentum_correction=0",
            "two_velocities_rs_last": r"ValueError: FSDP module '0': its replica all-reduce "
                                      r"already goes through a GradcompState with DGC's "
                                      r"momentum correction.*momentum twice",
        }
        for rank, res in enumerate(results):
            for what, pattern in want.items():
                self.assertRegex(res["refusals"][what] or "", pattern, f"rank {rank} {what}")
            # The momentum on one of the two states only (or 0 on the other): both registered
            # (3 modules each).
            self.assertEqual(res["one_velocity_registered"], [3, 3, 3], f"rank {rank}")

    def test_division_gives_native_hsdps_mean(self):
        """The hook paused throughout (torch's all_reduce over the replicas, the op the hook
        picks) against native HSDP (FSDP2 over the 2-D mesh) with the same seeds and batches,
        3 SGD steps: the same reductions in the same order (fp32: AVG over the shard group,
        then over the replicas; fp16: the sum of g/2 over the shards, then the replicas' AVG
        where native HSDP sums and post-divides by 2, exact in binary; a divide factor of 2:
        AVG then SUM in both), so the parameters are bitwise equal. A wrong op (SUM where
        AVG belongs) would be off by whole gradient steps."""
        records, results = self.launch()
        for rank, res in enumerate(results):
            for name, got in res["native"].items():
                self.assertFalse(got["comm_made"])
                self.assertTrue(got["equal"], f"rank {rank} {name}: max |diff| "
                                f"{got['max_abs']} of {got['max_ref']}")
            ops = {r["run"]: r["op"] for r in records[rank] if r["run"].startswith("paused")}
            self.assertEqual(ops, {"paused-fp32": "avg", "paused-fp16": "avg",
                                   "paused-factor": "sum"})


ABORTED = (r"RuntimeError: gradcomp: the state was aborted \(GradcompState.abort\(\)\).*make a new "
           r"GradcompState")


@unittest.skipIf(torch is None, "PyTorch is not installed")
class CpuBackendAbort(unittest.TestCase):
    """GradcompState.abort() on real DDP over gloo (2 processes, gradcomp's CPU backend over
    TCP): rank 1 dies mid-training; rank 0's next step meets the dead peer, and after PyTorch's
    abort path (destroy_process_group) state.abort() returns, having aborted gradcomp's comm
    rather than closed it. A second abort() and close() are no-ops; the DDP hook, the FSDP
    reduce-scatter and state_dict() then refuse with the sentence saying to make a new state.
    A state aborted before its first use makes nothing and refuses the same way."""

    results = None  # one launch serves both tests

    def launch(self):
        if CpuBackendAbort.results is None:
            CpuBackendAbort.results = launch_ranks(self, "abort")[1]
        return CpuBackendAbort.results

    def test_abort_after_a_peer_died(self):
        r0, r1 = self.launch()
        self.assertEqual(r1["left_after_steps"], 5)
        self.assertEqual(r0["compressed_calls"], r1["compressed_calls"])
        self.assertGreater(r0["compressed_calls"], 0, "the comm never compressed: nothing to abort")
        self.assertIsNotNone(r0["step_error"], "the step after rank 1 died did not fail")
        self.assertTrue(r0["abort_returned"], "state.abort() did not return (hang check)")
        self.assertIsNone(r0["abort_error"])
        self.assertEqual(r0["comm_calls"], ["abort"])
        self.assertRegex(r0["comm_handle_error"], "the comm is closed")
        self.assertEqual(r0["again_errors"], [None, None])
        for what in ("hook", "fsdp", "state_dict"):
            self.assertRegex(r0["after"][what] or "", ABORTED, what)

    def test_abort_before_first_use_and_twice(self):
        # The same run's early state (every rank): the FSDP object's abort() twice, then close().
        for r, res in enumerate(self.launch()):
            self.assertEqual(res["early_abort_errors"], [None, None, None], f"rank {r}")
            self.assertFalse(res["early_comm_made"], f"rank {r}")
            for what in ("hook", "fsdp", "state_dict"):
                self.assertRegex(res["early"][what] or "", ABORTED, f"rank {r} {what}")


@unittest.skipIf(torch is None, "PyTorch is not installed")
def stand_in_state(calls=None):
    """(state, calls, comm): a GradcompState of rank 0 of 2 on no group (NCCL backend, its comm
    not made) and a stand-in comm, not given to it, recording its stop(), abort() and close()
    in calls (a new list when None)."""
    import gradcomp.torch as gt
    from gradcomp.torch import _group

    with mock.patch.object(_group, "check_group", lambda pg, backend="nccl": (pg, 0, 2)):
        state = gt.GradcompState(config=None)
    calls = [] if calls is None else calls

    class Comm:
        def stop(self):
            calls.append("Comm.stop")

        def abort(self):
            calls.append("Comm.abort")

        def close(self):
            calls.append("Comm.close")

    return state, calls, Comm()


class AbortOrder(unittest.TestCase):
    """GradcompState.abort() with an NCCL communicator (no GPU needed: NCCL and the comm are
    stand-ins): ncclCommAbort of gradcomp's communicator with Comm.stop() in its NCCL group,
    then Comm.abort(), never ncclCommDestroy or Comm.close(); the comm goes even when NCCL's
    abort fails."""

    def make_state(self):
        state, calls, comm = stand_in_state()
        state._comm, state._nccl_handle = comm, 0x1234
        return state, calls

    def test_nccl_first_then_the_comm_once(self):
        from unittest import mock

        from gradcomp.torch import _nccl

        state, calls = self.make_state()

        def abort_nccl(h, inside=None):
            calls.append(("ncclCommAbort", h))
            if inside is not None:
                inside()

        with mock.patch.object(_nccl, "abort_nccl", abort_nccl), \
                mock.patch.object(_nccl, "destroy_nccl", lambda h: calls.append(("destroy", h))):
            state.abort()
            state.abort()
            state.close()
        self.assertEqual(calls, [("ncclCommAbort", 0x1234), "Comm.stop", "Comm.abort"])
        with self.assertRaisesRegex(RuntimeError, ABORTED[len("RuntimeError: "):]):
            state.comm(None)

    def test_the_comm_goes_when_ncclcommabort_fails(self):
        from unittest import mock

        from gradcomp.torch import _nccl

        state, calls = self.make_state()

        def fail(h, inside=None):
            raise RuntimeError("ncclCommAbort failed: NCCL error 3")

        with mock.patch.object(_nccl, "abort_nccl", fail):
            with self.assertRaisesRegex(RuntimeError, "ncclCommAbort failed"):
                state.abort()
            state.abort()  # aborted all the same: nothing left to do
        self.assertEqual(calls, ["Comm.abort"])

    def test_stop_runs_inside_the_abort_group(self):
        """abort_nccl: ncclGroupStart, inside(), ncclCommAbort, ncclGroupEnd (the stop first: a
        gradcomp call polling a non-blocking communicator ends before NCCL's abort), the abort
        and the group's end even when inside() raises, and NCCL's errors (the abort's, the group
        end's) reported after it."""
        from unittest import mock

        from gradcomp.torch import _nccl

        calls = []

        class Lib:
            def ncclGroupStart(self):
                calls.append("GroupStart")

            def ncclGroupEnd(self):
                calls.append("GroupEnd")
                return self.end_result

            def ncclCommAbort(self, h):
                calls.append(("CommAbort", h.value))
                return self.abort_result

        class Nccl:
            lib = Lib()

            def check(self, res, what):
                if res != 0:
                    raise RuntimeError(f"{what} failed: NCCL error {res}")

        fake = Nccl()
        fake.lib.abort_result = 0
        fake.lib.end_result = 0
        with mock.patch.object(_nccl, "nccl", lambda: fake):
            _nccl.abort_nccl(0x1234, inside=lambda: calls.append("stop"))
            self.assertEqual(calls, ["GroupStart", "stop", ("CommAbort", 0x1234), "GroupEnd"])
            calls.clear()

            def boom():
                raise RuntimeError("stop failed")

            with self.assertRaisesRegex(RuntimeError, "stop failed"):
                _nccl.abort_nccl(0x1234, inside=boom)
            self.assertEqual(calls, ["GroupStart", ("CommAbort", 0x1234), "GroupEnd"])
            calls.clear()
            fake.lib.abort_result = 3
            with self.assertRaisesRegex(RuntimeError, "ncclCommAbort failed: NCCL error 3"):
                _nccl.abort_nccl(0x1234, inside=lambda: calls.append("stop"))
            self.assertEqual(calls, ["GroupStart", "stop", ("CommAbort", 0x1234), "GroupEnd"])
            calls.clear()
            fake.lib.abort_result, fake.lib.end_result = 0, 5  # the grouped aborts failed
            with self.assertRaisesRegex(RuntimeError, "ncclGroupEnd .* failed: NCCL error 5"):
                _nccl.abort_nccl(0x1234, inside=lambda: calls.append("stop"))
            self.assertEqual(calls, ["GroupStart", "stop", ("CommAbort", 0x1234), "GroupEnd"])
            calls.clear()
            _nccl.abort_nccl(0, inside=lambda: calls.append("stop"))  # no communicator yet
            self.assertEqual(calls, ["stop"])


class LmCompareExitStatus(unittest.TestCase):
    """tools/lm_compare.py's exit status (no torch needed): on the GPU box its 14 runs do not
    fit the study's 5 minutes, so the runs past the budget are skipped; that is the design
    (goals' runs first), not a failed study. A failed or timed-out run still fails it."""

    def test_runs_past_the_budget_do_not_fail_the_study(self):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools"))
        import lm_compare

        ok = {"status": "ok"}
        budget = "skipped (time budget spent)"
        cpu = "skipped on CPU: the preload interposes NCCL"
        self.assertEqual(lm_compare.verdict(
            {"none": "ok", "qsgd4_hook": "ok", "fp16": budget, "none_reseed": budget},
            {"none": ok, "qsgd4_hook": ok}), 0)
        self.assertEqual(lm_compare.verdict({"none": "ok", "qsgd4_preload": cpu}, {"none": ok}),
                         0)
        self.assertEqual(lm_compare.verdict(
            {"none": "ok", "qsgd4_hook": "timed out (after 115 s)", "fp16": budget},
            {"none": ok}), 1)
        self.assertEqual(lm_compare.verdict(
            {"none": "ok", "qsgd4_preload": "failed (the preload was not loaded in the ranks)"},
            {"none": ok}), 1)
        self.assertEqual(lm_compare.verdict({"none": "failed (exit 1, rank 0)",
                                             "qsgd4_hook": "ok"}, {"qsgd4_hook": ok}), 1)
        self.assertEqual(lm_compare.verdict({"none": budget}, {}), 1)

    def test_a_run_started_gets_a_limit_that_holds_its_estimate(self):
        # A run starts with a limit of what is left less 5 s; one that took as long as the
        # longest of its mode so far must not be killed at that limit (a timed-out run fails
        # the study): it is skipped instead. The GPU study's runs are estimated at 30 to 90 s.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools"))
        import lm_compare

        for estimate in (0.0, 20.0, 30.0, 45.0, 49.0, 60.0, 90.0):
            for tenth in range(0, 3000):
                left = tenth / 10.0
                if lm_compare.fits(left, estimate):
                    self.assertGreaterEqual(left - 5, estimate,
                                            f"a run of ~{estimate} s starts with {left} s left")
        self.assertFalse(lm_compare.fits(24.9, 0.0))
        self.assertTrue(lm_compare.fits(300.0, 90.0))


class LauncherTeardown(unittest.TestCase):
    """tools/gc_ranks.launch (no torch needed): the ranks run in sessions of their own, out of
    reach of the SIGTERM that gpu-check's step limit (timeout(1)) sends the launcher's group;
    the launcher ends them before it goes, or they would hold the GPU into the next steps."""

    @staticmethod
    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
        except OSError:
            return False

    def test_sigterm_to_the_launcher_ends_its_ranks(self):
        import signal
        import subprocess
        import tempfile
        import time

        root = os.path.dirname(os.path.dirname(HERE))
        with tempfile.TemporaryDirectory() as tmp:
            pidfile = os.path.join(tmp, "rank.pid")
            rank = (f"import os, time; open({pidfile!r} + '.tmp', 'w').write(str(os.getpid())); "
                    f"os.rename({pidfile!r} + '.tmp', {pidfile!r}); time.sleep(300)")
            launcher = ("import sys; sys.path.insert(0, sys.argv[1]); import gc_ranks; "
                        "gc_ranks.launch(1, ['-c', sys.argv[2]], sys.argv[3], timeout=600)")
            p = subprocess.Popen([sys.executable, "-c", launcher, os.path.join(root, "tools"), rank,
                                  os.path.join(tmp, "r")])
            self.addCleanup(lambda: p.poll() is None and p.kill())
            t0 = time.time()
            while not os.path.exists(pidfile) and time.time() - t0 < 120:
                time.sleep(0.1)
            with open(pidfile) as f:
                pid = int(f.read())
            self.addCleanup(lambda: self.alive(pid) and os.kill(pid, signal.SIGKILL))
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(60), -signal.SIGTERM)
            t0 = time.time()
            while self.alive(pid) and time.time() - t0 < 20:
                time.sleep(0.1)
            self.assertFalse(self.alive(pid), "the rank outlived its launcher")


class RankExitOnError(unittest.TestCase):
    """tools/gc_ranks.run_rank (no torch needed): a rank script whose main raises ends at once
    with status 1 and its traceback, even when a thread that would hold the interpreter's
    shutdown (a process group's, a comm's) is still alive; a main that returns ends with its
    code."""

    def run_script(self, body):
        import subprocess

        tools = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools")
        script = ("import sys, threading, time; sys.path.insert(0, sys.argv[1]); import gc_ranks\n"
                  "threading.Thread(target=time.sleep, args=(300,)).start()  # not a daemon\n"
                  + body)
        return subprocess.run([sys.executable, "-c", script, tools], capture_output=True,
                              text=True, timeout=60)

    def test_an_exception_ends_the_rank_at_once(self):
        import time

        t0 = time.time()
        r = self.run_script("def main():\n    raise RuntimeError('rank failed here')\n"
                            "gc_ranks.run_rank(main)\n")
        self.assertLess(time.time() - t0, 30, "the rank waited for its thread")
        self.assertEqual(r.returncode, 1)
        self.assertIn("RuntimeError: rank failed here", r.stderr)

    def test_a_return_code_is_the_exit_status(self):
        r = self.run_script("import os\n"
                            "def main():\n    return 3\n"
                            "try:\n    gc_ranks.run_rank(main)\n"
                            "except SystemExit as e:\n    os._exit(e.code)\n")
        self.assertEqual(r.returncode, 3)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class OldFsdpStateDict(unittest.TestCase):
    """An FSDP2 state dict of a build from before FSDP2's hooks counted steps holds iter 0
    whatever its step (tests/python/fixtures/fsdp2_state_e98e8b2.json: rank 0 of 2 after 2
    steps, made by 0.6.0 at e98e8b2 with fixtures/make_fsdp2_state_e98e8b2.py): its load says
    that the step counter goes on from 0 (it went on silently), the residuals loaded as saved,
    and in which unit its residuals, which it does not record, are taken."""

    def load(self, d, role="shard"):
        import base64
        import json

        if isinstance(d, str):
            with open(os.path.join(os.path.dirname(__file__), "fixtures", d)) as f:
                d = json.load(f)
            d["gradcomp"] = base64.b64decode(d["gradcomp"])
        state, _, _ = stand_in_state()
        state._fsdp_role = role  # as register_fsdp_reduce_scatter sets it (None: a DDP state)
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            state.load_state_dict(d)
        return state, [str(w.message) for w in got]

    def test_an_old_builds_state_dict_says_its_iter_restarts(self):
        state, said = self.load("fsdp2_state_e98e8b2.json")
        self.assertEqual(state.iter, 0)
        self.assertIsNotNone(state._pending_blob)
        self.assertEqual(len(said), 2, said)
        self.assertIn("the state dict's iter is 0, but its run reduced 2 FSDP module(s)", said[0])
        self.assertIn("Set state.iter", said[0])
        self.assertIn("residuals have no unit recorded", said[1])  # (its test below)

    def test_a_counted_or_unreduced_state_dict_loads_quietly(self):
        import base64
        import json

        with open(os.path.join(os.path.dirname(__file__), "fixtures",
                               "fsdp2_state_e98e8b2.json")) as f:
            old = json.load(f)
        old["gradcomp"] = base64.b64decode(old["gradcomp"])
        # Counted, it is 0.7.0's, which records its residuals' unit (key_scales) too.
        scales = [[k, 0.5] for k in old["keys"]]
        for d in (dict(old, iter=2, key_scales=scales), dict(old, keys=[]),
                  dict(old, gradcomp=None)):
            state, said = self.load(d)
            self.assertEqual((state.iter, said), (d["iter"], []))

    def test_an_old_builds_fsdp_residuals_say_which_unit_they_are_taken_in(self):
        """A state dict from before the residuals' unit was saved (key_scales, gradcomp < 0.7.0)
        took each FSDP residual to be in the unit of its module's first call after the load,
        silently: where FSDP divided otherwise than the saved run, the residual was added off
        by the ratio. Its load warns, naming what is assumed and what to do; one that records
        the unit, one without residuals and a DDP state's do not."""
        import base64
        import json

        with open(os.path.join(os.path.dirname(__file__), "fixtures",
                               "fsdp2_state_e98e8b2.json")) as f:
            old = json.load(f)
        old["gradcomp"] = base64.b64decode(old["gradcomp"])
        counted = dict(old, iter=2)  # the unit's warning alone

        def unit_warnings(said):
            return [s for s in said if "no unit recorded" in s]

        for role, keyed in (("shard", "fsdp"), ("replicate", "fsdp-replicas")):
            state, said = self.load(dict(counted, keyed_by=keyed), role)
            self.assertEqual(len(said), 1, said)
            self.assertRegex(said[0], r"^gradcomp: the state dict's FSDP residuals have no unit "
                             r"recorded \(key_scales, saved from gradcomp 0\.7\.0 on\): each of "
                             r"its 2 residual\(s\) is taken to be in the unit of its FSDP "
                             r"module's first call after this load, .*set_gradient_divide_factor"
                             r".*Run the first step after the load with the saved run's "
                             r"division .*state\.load_state_dict\(dict\(d, gradcomp=None\)\)$")
            self.assertEqual(state._key_scales, {})  # the first call's unit, as said
        scales = [[k, 0.5] for k in old["keys"]]
        for d in (dict(counted, key_scales=scales), dict(counted, key_scales=[]),
                  dict(counted, keys=[]), dict(counted, gradcomp=None)):
            state, said = self.load(d)
            self.assertEqual(unit_warnings(said), [], d.get("key_scales"))
        self.assertEqual(self.load(dict(counted, key_scales=scales))[0]._key_scales,
                         {k: 0.5 for k in old["keys"]})
        # A DDP state's dict (keyed by bucket) has no FSDP unit to record.
        state, said = self.load(dict(counted, keyed_by="bucket"), None)
        self.assertEqual(said, [])
        self.assertIsNotNone(state._pending_blob)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class StateDroppedOrWith(unittest.TestCase):
    """A GradcompState dropped with its comm open warns (ResourceWarning, as an unclosed file)
    and frees nothing of NCCL's (whose destroy may wait on peers); `with state:` closes it, or
    on an exception aborts it (waiting on no peer). NCCL and the comm are stand-ins."""

    def nccl_patched(self, calls):
        from unittest import mock

        from gradcomp.torch import _nccl

        def abort_nccl(handle, inside=None):
            calls.append("ncclCommAbort")
            if inside is not None:
                inside()

        return (mock.patch.object(_nccl, "destroy_nccl", lambda h: calls.append("ncclCommDestroy")),
                mock.patch.object(_nccl, "abort_nccl", abort_nccl))

    def dropped(self, how, calls, make_comm=None, backend="nccl"):
        """ResourceWarnings of a state with an open comm (make_comm's, else a stand-in),
        closed or aborted by `how` (None: neither) and dropped."""
        import gc

        def make():
            state, _, comm = stand_in_state(calls)
            state.backend = backend
            state._comm = make_comm() if make_comm is not None else comm
            state._nccl_handle = 0x1234 if backend == "nccl" else None
            if how is not None:
                getattr(state, how)()

        def resource(got):
            return [str(w.message) for w in got if issubclass(w.category, ResourceWarning)]

        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            make()  # the state goes with make's frame
            gc.collect()
            msgs = resource(got)
            # A recorded warning holds its source, the state: let go here, so that what the
            # state held (its comm) goes inside this block too.
            del got[:]
            gc.collect()
        return msgs + resource(got)

    def test_a_dropped_state_with_its_comm_warns_and_frees_nothing(self):
        calls = []
        destroy, abort = self.nccl_patched(calls)
        with destroy, abort:
            msgs = self.dropped(None, calls)
        self.assertEqual(len(msgs), 1, msgs)
        self.assertRegex(msgs[0], r"unclosed GradcompState \(rank 0 of 2, backend='nccl'\).*"
                         r"NCCL communicator is not freed")
        self.assertEqual(calls, [])

    def test_a_dropped_state_warns_once_not_again_for_its_comm(self):
        """One ResourceWarning, the state's: its gradcomp.Comm (an NCCL comm, left allocated; a
        CPU comm, freed by its own finalizer) adds none."""
        import ctypes

        import gradcomp

        def nccl_comm():
            # An NCCL backend gradcomp.Comm as its finalizer sees it (which calls nothing).
            c = gradcomp.Comm.__new__(gradcomp.Comm)
            c._h, c.host, c.rank, c.size = ctypes.c_void_p(0x1234), False, 0, 2
            return c

        def cpu_comm():
            world = gradcomp.CpuWorld(1)
            (c,), world.comms = world.comms, []
            return c

        calls = []
        destroy, abort = self.nccl_patched(calls)
        with destroy, abort:
            for backend, make_comm in (("nccl", nccl_comm), ("cpu", cpu_comm)):
                msgs = self.dropped(None, calls, make_comm, backend)
                self.assertEqual(len(msgs), 1, msgs)
                self.assertRegex(msgs[0], rf"unclosed GradcompState \(rank 0 of 2, "
                                 rf"backend='{backend}'\)")
        self.assertEqual(calls, [])

    def test_closed_or_aborted_states_do_not_warn(self):
        calls = []
        destroy, abort = self.nccl_patched(calls)
        with destroy, abort:
            self.assertEqual(self.dropped("close", calls), [])
            self.assertEqual(self.dropped("abort", calls), [])
        self.assertEqual(calls, ["Comm.close", "ncclCommDestroy", "ncclCommAbort", "Comm.stop",
                                 "Comm.abort"])

    def test_with_closes_and_aborts_on_an_exception(self):
        state, calls, comm = stand_in_state()
        state._comm, state._nccl_handle = comm, 0x1234
        destroy, abort = self.nccl_patched(calls)
        with destroy, abort:
            with state as s:
                self.assertIs(s, state)
            self.assertEqual(calls, ["Comm.close", "ncclCommDestroy"])
            state = stand_in_state()[0]  # a second state, on the same stand-in comm
            calls.clear()
            state._comm, state._nccl_handle = comm, 0x1234
            with self.assertRaisesRegex(KeyError, "a rank failed"):
                with state:
                    raise KeyError("a rank failed")
            self.assertEqual(calls, ["ncclCommAbort", "Comm.stop", "Comm.abort"])


if __name__ == "__main__":
    unittest.main()
