#!/usr/bin/env python3
"""CTest check of gradcomp_perf --backend socket: 2 processes on loopback.

Runs the socket backend's ranks as separate processes (OMPI_COMM_WORLD_* set
here, rank 0's root on 127.0.0.1) with --link-gbps, and checks its JSON:
every row present and not failed, no wrong element, the same result bits on
both ranks, the baseline labelled as what it is (our uncompressed call over
the same links, not NCCL), the wire bytes the CPU world reports for the same
call, and the socket model recomputed from the row's own measured host times
(docs/benchmark.md, "A slow link on a CPU machine"). Also: a missing root and
a missing launcher are refused with a sentence. Timings are never asserted.
Usage: socket_check.py GRADCOMP_PERF WORKDIR
"""
import json
import os
import subprocess
import sys

from checklib import close, expect, verdict

GBPS, LAT = 2.0, 10.0


def reserve_ports(span=64):
    """Ports p..p+span-1 (comm k of a run listens at p + k), below the ephemeral range and held
    until the run ends, so that no concurrent test's choice takes one (gradcomp._ports)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "python"))
    from gradcomp._ports import reserve_port
    return reserve_port("127.0.0.1", span)


def run_socket(perf, n, args, json_path):
    with reserve_ports() as held:
        return _run_socket(perf, n, args, json_path, held.port)


def _run_socket(perf, n, args, json_path, port):
    procs = []
    for r in range(n):
        env = dict(os.environ, OMPI_COMM_WORLD_RANK=str(r), OMPI_COMM_WORLD_SIZE=str(n),
                   GRADCOMP_CPU_TIMEOUT="30")
        cmd = [perf, "--backend", "socket", "--root", "127.0.0.1:%d" % port, "--json",
               json_path] + args if r == 0 else [perf, "--backend", "socket", "--root",
                                                 "127.0.0.1:%d" % port] + args
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env))
    outs, codes = [], []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=100)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outs.append(out)
        codes.append(p.returncode)
    print("$ %d ranks: gradcomp_perf --backend socket %s -> exits %s" % (n, " ".join(args), codes))
    print(outs[0])
    for r in range(1, n):
        if codes[r]:
            print("rank %d:\n%s" % (r, outs[r]))
    try:
        with open(json_path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = {"rows": []}
    return codes, outs[0], doc


def run_cpu(perf, n, args, json_path):
    cmd = [perf, "--backend", "cpu", "-N", str(n), "--kernel-rates", "none", "--json",
           json_path] + args
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=100)
    print("$", " ".join(cmd), "-> exit", p.returncode)
    with open(json_path) as f:
        return p.returncode, json.load(f)["rows"]


def check_rows(tag, doc, cpu_rows, n, collective):
    rows = doc["rows"]
    expect(doc.get("backend") == "socket", "%s: backend socket" % tag)
    expect(str(doc.get("baseline", "")).startswith("uncompressed over the same TCP links"),
           "%s: the baseline is labelled as the uncompressed call over the same links" % tag)
    expect("nccl" not in str(doc.get("baseline", "")).lower().replace("not nccl", ""),
           "%s: the baseline does not call itself NCCL" % tag)
    expect(len(rows) == len(cpu_rows) and len(rows) > 0,
           "%s: as many rows as the CPU world's run (%d vs %d)" % (tag, len(rows), len(cpu_rows)))
    cpu = {(r["method"], r["dtype"], r["size"]): r for r in cpu_rows}
    for r in rows:
        key = (r["method"], r["dtype"], r["size"])
        t = "%s %s %s %d" % (tag, *key)
        expect(not r["failed"], "%s: not failed (%s)" % (t, r.get("error")))
        if r["failed"]:
            continue
        expect(r["wrong"] == 0 and r["nccl_wrong"] == 0, "%s: no wrong elements" % t)
        if collective == "all_reduce":
            expect(r["identical"] is True, "%s: the same result bits on every rank" % t)
        else:
            expect(r["identical"] is None, "%s: reduce-scatter blocks are not compared" % t)
        c = cpu.get(key)
        expect(c is not None, "%s: the CPU world ran the same row" % t)
        if c:
            expect(r["wire_bytes"] == c["wire_bytes"] and r["algo"] == c["algo"],
                   "%s: wire bytes and algorithm as in the CPU world (%s %s vs %s %s)" % (
                       t, r["wire_bytes"], r["algo"], c["wire_bytes"], c["algo"]))
            expect(r["nccl_wire_bytes"] == c["nccl_wire_bytes"], "%s: baseline bytes" % t)
        # The socket model, from the row's own host times (never a GPU report's).
        host, base = r.get("host_us"), r.get("baseline_host_us")
        expect(host is not None and host > 0 and base is not None and base > 0,
               "%s: host times measured in this run" % t)
        expect(len(r["model"]) == 1 and r["model"][0]["link_gbps"] == GBPS,
               "%s: one model point at --link-gbps" % t)
        if host is None or base is None or len(r["model"]) != 1:
            continue
        m = r["model"][0]
        # TCP payload of MTU-1500 Ethernet frames: 1448 of 1514 bytes.
        us = lambda b: b * 8 / (GBPS * 1448 / 1514 * 1e3)  # noqa: E731
        steps = 1 if collective == "reduce_scatter" else 2
        if collective == "all_reduce":
            expect(r["nccl_wire_bytes"] == 2 * (n - 1) / n * r["size"],
                   "%s: baseline sends 2(N-1)/N of the buffer" % t)
        base_model = base + us(r["nccl_wire_bytes"]) + steps * LAT
        g_steps = r["latency_steps"]
        if r["algo"] == "passthrough":
            expect(g_steps == steps, "%s: pass-through is the direct two-shot's steps" % t)
        else:
            # The algorithm's rounds (docs/benchmark.md, "A slow link on a CPU machine") plus
            # one for the ranks' agreement on the call before it touches a buffer's state.
            # A reduce-scatter holding state (error feedback, DGC's velocity) then ORs its
            # non-finite flag over the ranks: one more (collective.h, discardStateIfNonFinite).
            algo_steps = {"twoshot": 2, "allgather": 1, "sparse": 1, "reducescatter": 1}
            state = "ef=0" not in (r.get("label") or "") or r.get("method") == "dgc"
            check = 1 if collective == "reduce_scatter" and state else 0
            expect(r["algo"] in algo_steps and g_steps == algo_steps[r["algo"]] + 1 + check,
                   "%s: %s steps, the algorithm's %s + 1 for the call's agreement + %d for the "
                   "non-finite check's flag" % (t, g_steps, algo_steps.get(r["algo"]), check))
        g_model = host + us(r["wire_bytes"]) + g_steps * LAT
        expect(close(m["nccl_time_us"], base_model, rel=1e-6), "%s: baseline model %s == %s" % (
            t, m["nccl_time_us"], base_model))
        expect(close(m["time_us"], g_model, rel=1e-6), "%s: gradcomp model %s == %s" % (
            t, m["time_us"], g_model))
        sp = r["nccl_time_us"] / r["time_us"]
        expect(close(m["measured_vs_model"], sp / (base_model / g_model), rel=1e-6),
               "%s: measured_vs_model = measured speedup / model speedup" % t)
        expect(close(m["time_vs_model"], r["time_us"] / g_model, rel=1e-6), "%s: time_vs_model" % t)


def main():
    perf, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    n = 2
    common = ["-b", "256K", "-e", "1M", "-f", "4", "-n", "1", "-w", "0", "-d", "float,bfloat16",
              "-m", "none,qsgd,dgc", "-q", "4", "-k", "0.01", "--link-gbps", str(GBPS)]
    codes, out, doc = run_socket(perf, n, common, os.path.join(work, "socket.json"))
    expect(codes == [0] * n, "socket run: every rank exits 0 (got %s)" % codes)
    expect("uncompressed over TCP" in out, "the table's baseline columns say what they are")
    code, cpu_rows = run_cpu(perf, n, common, os.path.join(work, "cpu.json"))
    expect(code == 0, "CPU world run exits 0")
    check_rows("allreduce", doc, cpu_rows, n, "all_reduce")

    rs = ["-C", "reduce_scatter", "-b", "128K", "-e", "128K", "-n", "1", "-w", "0", "-m", "qsgd",
          "--link-gbps", str(GBPS)]
    codes, out, doc = run_socket(perf, n, rs, os.path.join(work, "socket_rs.json"))
    expect(codes == [0] * n, "socket reduce-scatter run: every rank exits 0 (got %s)" % codes)
    code, cpu_rows = run_cpu(perf, n, rs, os.path.join(work, "cpu_rs.json"))
    check_rows("reduce_scatter", doc, cpu_rows, n, "reduce_scatter")

    # Refusals: a sentence and exit 2, no hang.
    env = dict(os.environ, OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2")
    env.pop("NCCL_COMM_ID", None)
    p = subprocess.run([perf, "--backend", "socket"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    expect(p.returncode == 2 and "--root host:port" in p.stdout,
           "no root: exit 2 naming --root (got %d: %s)" % (p.returncode, p.stdout.strip()))
    # --root is read as the library reads it: no sign on the port, an IPv6 host in brackets.
    for root, want in (("127.0.0.1:+80", 'port "+80" is out of range 1..65535'),
                       ("::1:1234", 'an IPv6 host goes in brackets, as "[::1]:1234"'),
                       ("[::1]:65500", "port 65500 is above 65023")):
        p = subprocess.run([perf, "--backend", "socket", "--root", root], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        expect(p.returncode == 2 and want in p.stdout,
               "--root %s: exit 2 saying %s (got %d: %s)" % (root, want, p.returncode,
                                                             p.stdout.strip()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "SLURM"))}
    p = subprocess.run([perf, "--backend", "socket", "--root", "127.0.0.1:1234"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    expect(p.returncode == 2 and "OMPI_COMM_WORLD_RANK" in p.stdout,
           "no launcher: exit 2 naming the variables (got %d: %s)" % (p.returncode,
                                                                       p.stdout.strip()))
    # A launcher's variable that is no integer in its range is refused naming it, its value
    # and the range (atoi read "abc" and "" as rank 0, "3x" as 3, "-1" as -1).
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "SLURM"))}
    bad_rank = [({"OMPI_COMM_WORLD_RANK": v}, 'OMPI_COMM_WORLD_RANK="%s" is not an integer in 0..1'
                 % v) for v in ("abc", "", "-1", "3x")]
    for extra, want in bad_rank + [
            ({"OMPI_COMM_WORLD_RANK": "2"}, 'OMPI_COMM_WORLD_RANK="2" is not an integer in 0..1 '
             "(OMPI_COMM_WORLD_SIZE=2 ranks)"),
            ({"OMPI_COMM_WORLD_SIZE": "99999999999"},
             'OMPI_COMM_WORLD_SIZE="99999999999" is not an integer in 1..2147483647'),
            ({"OMPI_COMM_WORLD_SIZE": "0"}, 'OMPI_COMM_WORLD_SIZE="0" is not an integer in 1..'),
            ({"OMPI_COMM_WORLD_LOCAL_RANK": "1 "},
             'OMPI_COMM_WORLD_LOCAL_RANK="1 " is not an integer in 0..1'),
            ({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"},
             'OMPI_COMM_WORLD_LOCAL_SIZE="3" is not an integer in 1..2'),
            ({"OMPI_COMM_WORLD_RANK": None, "OMPI_COMM_WORLD_SIZE": None, "PMI_RANK": "01",
              "PMI_SIZE": "2"}, 'PMI_RANK="01" is not an integer in 0..1'),
            ({"OMPI_COMM_WORLD_RANK": None, "OMPI_COMM_WORLD_SIZE": None, "SLURM_PROCID": "1",
              "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x1"},
             'SLURM_STEP_TASKS_PER_NODE="2(x1" is not an integer in 1..2')]:
        # (Read as a rank, a value would wait for its peer: not for long.)
        env = dict(base, OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2",
                   GRADCOMP_CPU_TIMEOUT="2")
        env.update(extra)
        env = {k: v for k, v in env.items() if v is not None}
        p = subprocess.run([perf, "--backend", "socket", "--root", "127.0.0.1:1234"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        expect(p.returncode == 2 and want in p.stdout,
               "%s: exit 2 with '%s' (got %d: %s)" % (extra, want, p.returncode, p.stdout.strip()))
    # Slurm's nodes may run different task counts (srun -n 3 over 2 nodes: "1,2", "2(x2),1"):
    # SLURM_STEP_TASKS_PER_NODE's entry for SLURM_NODEID is this node's, not the first count
    # ("1,2"'s second node, local ids 0 and 1, was refused: local rank 1 not in 0..0). Accepted
    # here is a rank that goes on to connect to its root (none listens: exit 3, not 2).
    slurm = dict(base, GRADCOMP_CPU_TIMEOUT="1")
    for extra, want in [
            ({"SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "1",
              "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "1,2"}, None),
            ({"SLURM_STEP_NUM_TASKS": "5", "SLURM_PROCID": "4", "SLURM_LOCALID": "0",
              "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1"}, None),
            ({"SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "1",
              "SLURM_STEP_TASKS_PER_NODE": "1,2"}, None),  # no SLURM_NODEID: the largest count
            ({"SLURM_STEP_NUM_TASKS": "5", "SLURM_PROCID": "4", "SLURM_LOCALID": "1",
              "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1"},
             'SLURM_LOCALID="1" is not an integer in 0..0 (SLURM_STEP_TASKS_PER_NODE=1 ranks'),
            ({"SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "1",
              "SLURM_NODEID": "7", "SLURM_STEP_TASKS_PER_NODE": "1,2"}, None),  # no entry: largest
            ({"SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "2",
              "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "1,2"},
             'SLURM_LOCALID="2" is not an integer in 0..1 (SLURM_STEP_TASKS_PER_NODE=2 ranks'),
            ({"SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "1",
              "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "1,2(x0)"},
             'SLURM_STEP_TASKS_PER_NODE="1,2(x0)" is not an integer in 1..3')]:
        p = subprocess.run([perf, "--backend", "socket", "--root", "127.0.0.1:1234"],
                           env=dict(slurm, **extra), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        if want is None:
            expect(p.returncode == 3 and "cannot connect to rank 0" in p.stdout,
                   "%s: accepted, exit 3 connecting (got %d: %s)" % (extra, p.returncode,
                                                                    p.stdout.strip()))
        else:
            expect(p.returncode == 2 and want in p.stdout,
                   "%s: exit 2 with '%s' (got %d: %s)" % (extra, want, p.returncode,
                                                           p.stdout.strip()))
    # GC_PERF_GPUS (how many GPUs the CUDA backend's launcher-started ranks share) is read as
    # strictly, before any CUDA call, so this runs without a GPU too (atoi read "abc" and "" as
    # unset and "2x" as 2; a count outside 1..ranks was dropped unsaid).
    for v in ("abc", "", "0", "3", "2x", "-1"):
        env = dict(base, OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2",
                   NCCL_COMM_ID="127.0.0.1:1234", GC_PERF_GPUS=v)
        want = 'GC_PERF_GPUS="%s" is not an integer in 1..2 (the GPUs the 2 ranks run on)' % v
        p = subprocess.run([perf, "--backend", "cuda", "-N", "2"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        expect(p.returncode == 2 and want in p.stdout,
               "GC_PERF_GPUS=%r: exit 2 with '%s' (got %d: %s)" % (v, want, p.returncode,
                                                                   p.stdout.strip()))
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
