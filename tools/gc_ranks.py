"""Launches N ranks of a PyTorch script on ONE GPU (DESIGN.md's multi-rank set-up).

Each process gets its own NCCL_HOSTID and NCCL over loopback sockets (NCCL
refuses two ranks of one host on one GPU otherwise), the env:// variables
torch.distributed reads, and a log file per rank. One rank failing stops the
others; a time limit stops them all. Used by tools/lm_compare.py and
tools/torch_hooks_check.py (the same environment as tools/torch_ranks.sh
gives tools/ddp_check.sh and tools/fsdp_check.sh).

On the rank side (torch imported by the caller): gather_hashes compares the
trained parameters across ranks, finish_rank ends a training script.
"""
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback

NCCL_ENV = {"NCCL_NET": "Socket", "NCCL_SOCKET_IFNAME": "lo", "NCCL_IB_DISABLE": "1",
            "NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1", "NCCL_NVLS_ENABLE": "0",
            "NCCL_DEBUG": "WARN", "TORCH_NCCL_USE_COMM_NONBLOCKING": "0", "OMP_NUM_THREADS": "2"}

# These runs measure what compression does to accuracy and bytes: every eligible call must be
# compressed, not left to GRADCOMP_AUTO's timing (which would also let the hook's and the
# preload's runs choose differently). A caller's env may still set it.
GRADCOMP_ENV = {"GRADCOMP_AUTO": "0"}

SUMMARY = re.compile(r"summary comm (\S+) rank (\S+) method (\S+): (\d+) calls compressed, "
                     r"(\d+) passed through(?: \(\d+ by auto\))?, (\d+) bytes sent"
                     r"(?: \(\d+ to other nodes\))? for (\d+) dense bytes")


def reserve_port():
    # Below the ephemeral range and held until the launch ends, so that neither a socket nor
    # another test's port choice takes it before rank 0's store binds it (gradcomp._ports).
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "python"))
    from gradcomp._ports import reserve_port as reserve
    return reserve("127.0.0.1")


def launch(world, argv, logs_prefix, env=None, timeout=150, gpu="0", preload=None):
    """Runs argv (a python command line) as `world` ranks; returns (status, seconds).

    status is "ok", "timed out (after T s)" or "failed (exit N[ = SIGNAME], rank R)"; rank r's
    output goes to f"{logs_prefix}_r{r}.log".
    """
    if preload and not os.path.isfile(preload):
        # LD_PRELOAD of a missing file only warns: the run would train uncompressed.
        return (f"failed (LD_PRELOAD library {preload} is missing: build the gradcomp_preload "
                "target)", 0.0)
    with reserve_port() as held:
        return _launch(world, argv, logs_prefix, env, timeout, gpu, preload, held.port)


def exit_text(code):
    """A Popen return code, with the signal's name where a signal ended the process."""
    if code is not None and code < 0:
        try:
            return f"{code} = {signal.Signals(-code).name}"
        except ValueError:
            pass
    return str(code)


# Lines of a failed rank's log printed: a fault handler's stacks of every thread fit.
TAIL_LINES = 60


def _end_ranks_on_term(procs):
    """While the ranks run, a SIGTERM to the launcher (gpu-check's step limit, timeout(1)) ends
    them first: they run in sessions of their own, which the launcher's killer does not reach,
    and would go on holding the GPU through the steps after. Returns what restores the
    launcher's own handling."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers belong to the main thread

    def on_term(signum, frame):
        for p, _ in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_term)
    # None: a handler set outside Python, which signal.signal cannot put back.
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _launch(world, argv, logs_prefix, env, timeout, gpu, preload, port):
    procs = []
    restore = _end_ranks_on_term(procs)
    try:
        return _run_ranks(procs, world, argv, logs_prefix, env, timeout, gpu, preload, port)
    finally:
        restore()


def _run_ranks(procs, world, argv, logs_prefix, env, timeout, gpu, preload, port):
    t0 = time.time()
    for r in range(world):
        e = dict(os.environ)
        e.update(NCCL_ENV)
        e.update(GRADCOMP_ENV)
        # A rank killed by a signal (an abort in a library, a crash) prints every thread's
        # Python stack into its log first.
        e["PYTHONFAULTHANDLER"] = "1"
        e.update({"CUDA_VISIBLE_DEVICES": str(gpu), "RANK": str(r), "WORLD_SIZE": str(world),
                  "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                  "NCCL_HOSTID": f"host-{r}"})
        e.update(env or {})
        if preload:
            e["LD_PRELOAD"] = preload
        log = open(f"{logs_prefix}_r{r}.log", "w")
        # A process group of its own (killpg reaches the rank; the step's TERM does not), not a
        # session: what a device call leaves running in a session of its own outlives the call
        # and would hold the GPU through the next one.
        group = ({"process_group": 0} if sys.version_info >= (3, 11)
                 else {"start_new_session": True})
        p = subprocess.Popen([sys.executable] + list(argv), env=e, stdout=log,
                             stderr=subprocess.STDOUT, **group)
        # The SIGABRT of a timeout writes no core file into the caller's directory (often the
        # checkout). Set from here: a preexec_fn is unsafe in a caller that has threads.
        try:
            resource.prlimit(p.pid, resource.RLIMIT_CORE, (0, 0))
        except (OSError, AttributeError):
            pass
        procs.append((p, log))
    status = "ok"
    while True:
        codes = [p.poll() for p, _ in procs]
        bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            status = f"failed (exit {exit_text(bad[0][1])}, rank {bad[0][0]})"
            break
        if all(c == 0 for c in codes):
            break
        if time.time() - t0 > timeout:
            status = f"timed out (after {timeout:.0f} s)"
            break
        time.sleep(0.5)
    # A hang is explained by where each rank waits: SIGABRT makes the fault handler print
    # every thread's Python stack before the rank dies.
    stop = signal.SIGABRT if status.startswith("timed out") else signal.SIGTERM
    for p, log in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, stop)
            except OSError:
                pass
    # One 10 s deadline for all the ranks, not 10 s each: the caller's own limit comes soon.
    wait_end = time.time() + 10
    for p, log in procs:
        try:
            p.wait(max(0.1, wait_end - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        log.close()
    if status != "ok":
        # The caller's temporary directory may go with the logs: say here why it failed,
        # every rank's exit and the end of every rank's log (the first failure is not always
        # the cause: a rank that lost its peer fails too).
        print(f"gc_ranks: {status} after {time.time() - t0:.1f} s; exits by rank: "
              f"{[exit_text(p.returncode) for p, _ in procs]} (the launcher ends the ranks still "
              f"running with {stop.name})", flush=True)
        for r in range(world):
            try:
                with open(f"{logs_prefix}_r{r}.log", errors="replace") as f:
                    tail = f.read().splitlines()[-TAIL_LINES:]
            except OSError:
                continue
            print(f"gc_ranks: the end of rank {r}'s log ({logs_prefix}_r{r}.log):", flush=True)
            for line in tail:
                print(f"  r{r}| {line}", flush=True)
    return status, time.time() - t0


def preload_bytes(logs_prefix, world):
    """Per rank (calls compressed, passed through, bytes sent, dense bytes) from the
    preload's INFO summary lines (GRADCOMP_DEBUG=INFO), or None where a rank printed none."""
    out = []
    for r in range(world):
        try:
            text = open(f"{logs_prefix}_r{r}.log", errors="replace").read()
        except OSError:
            out.append(None)
            continue
        found = [m.groups() for m in SUMMARY.finditer(text)]
        out.append([sum(int(g[i]) for g in found) for i in (3, 4, 5, 6)] if found else None)
    return out


def preload_loaded():
    """True when libgradcomp_preload.so is mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            return "libgradcomp_preload" in f.read()
    except OSError:
        return False


def gather_hashes(blob):
    """SHA-256 of this rank's parameter bytes, and every rank's (a collective)."""
    import torch.distributed as dist

    digest = hashlib.sha256(blob).hexdigest()
    hashes = [None] * dist.get_world_size()
    dist.all_gather_object(hashes, digest)
    return digest, hashes


def leave(code=0):
    """Ends a rank whose work is written and whose group is destroyed, without finalizing the
    interpreter: a process group that outlives destroy_process_group (FSDP keeps the default
    one) can still have gloo's worker thread destroying a finished work that holds a
    Python-owned tensor; during finalization its GIL wait exits the thread through a destructor
    that may not throw, and the rank dies in SIGABRT after its work is done
    (docs/reliability.md, "Teardown")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_rank(main):
    """Runs a rank script's main and ends the process with its return code. An exception is
    printed and ends the process at once (leave), so the launcher sees this rank fail and stops
    the others, instead of this rank hanging in the interpreter's shutdown with its process
    group and gradcomp comm alive until the run's time limit."""
    try:
        code = main()
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        leave(1)
    sys.exit(code)


def finish_rank(res, rank, out, state=None):
    """Rank 0 writes res to out; then every rank closes its gradcomp state and leaves (leave:
    the process ends here)."""
    import torch.distributed as dist

    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    dist.barrier()
    if state is not None:
        state.close()
    dist.destroy_process_group()
    leave(0)
