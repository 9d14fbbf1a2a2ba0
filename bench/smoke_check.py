#!/usr/bin/env python3
"""CTest smoke test of gradcomp_perf on the CPU backend.

Runs small sizes for every type and method none/qsgd, then checks what the
benchmark promises: exit code 0, every JSON row with its fields, no wrong
element, bandwidths consistent with times, QSGD's wire bytes what the codec
math says, and that a corrupted element makes the run fail.
Usage: smoke_check.py GRADCOMP_PERF WORKDIR
"""
import json
import os
import subprocess
import sys

FIELDS = ["size", "count", "dtype", "method", "time_us", "nccl_time_us", "algbw", "busbw",
          "wire_bytes", "ratio", "rel_err", "wrong"]
TYPE_BYTES = {"float": 4, "half": 2, "bfloat16": 2}
failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(perf, args, json_path):
    cmd = [perf, "--backend", "cpu", "--json", json_path] + args
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=100)
    print("$", " ".join(cmd), "-> exit", p.returncode)
    print(p.stdout)
    with open(json_path) as f:
        return p.returncode, p.stdout, json.load(f)["rows"]


def main():
    perf, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    nranks, bits, bucket = 3, 4, 512
    sizes = [64 << 10, 256 << 10]
    code, out, rows = run(perf, ["-N", str(nranks), "-b", "64K", "-e", "256K", "-f", "4", "-n", "2",
                                 "-w", "1", "-d", "all", "-m", "none,qsgd", "-q", str(bits),
                                 "-B", str(bucket), "-a", "twoshot"], os.path.join(work, "ok.json"))
    expect(code == 0, "clean run exits 0 (got %d)" % code)
    expect("# Avg bus bandwidth" in out, "table has the '# Avg bus bandwidth' footer")
    expect("CPU reference backend" in out, "table says it is the CPU reference backend")
    expect(len(rows) == 3 * 2 * len(sizes), "one row per type, method and size (got %d)" % len(rows))
    for r in rows:
        tag = "%s %s %d" % (r.get("method"), r.get("dtype"), r.get("size", -1))
        for f in FIELDS:
            expect(f in r, "%s: field %s present" % (tag, f))
        if any(f not in r for f in FIELDS):
            continue
        expect(r["size"] in sizes, "%s: size from -b/-e/-f" % tag)
        expect(r["count"] * TYPE_BYTES[r["dtype"]] == r["size"], "%s: count * type size == size" % tag)
        expect(r["wrong"] == 0 and r["nccl_wrong"] == 0, "%s: no wrong elements" % tag)
        expect(r["time_us"] > 0 and r["nccl_time_us"] > 0, "%s: positive times" % tag)
        algbw = r["size"] / r["time_us"] / 1e3
        expect(abs(r["algbw"] - algbw) <= 1e-3 * algbw, "%s: algbw = size / time" % tag)
        expect(abs(r["busbw"] - r["algbw"] * 2 * (nranks - 1) / nranks) <= 1e-3 * r["busbw"],
               "%s: busbw = algbw * 2(N-1)/N" % tag)
        ring = 2 * (nranks - 1) / nranks * r["size"]
        expect(abs(r["nccl_wire_bytes"] - ring) <= 1, "%s: NCCL ring bytes 2(N-1)/N * size" % tag)
        if r["method"] == "none":
            expect(r["algo"] == "passthrough", "%s: method none passes through" % tag)
            expect(r["rel_err"] < 1e-2, "%s: pass-through error is rounding only" % tag)
        else:
            expect(r["algo"] == "twoshot", "%s: -a twoshot ran two-shot (got %s)" % (tag, r["algo"]))
            # Two-shot sends ~2(N-1)/N * E(n) bytes, E(n) = (bits + 32/d) * n / 8.
            ideal = TYPE_BYTES[r["dtype"]] * 8 / (bits + 32.0 / bucket)
            expect(r["ratio"] is not None and 0.9 * ideal <= r["ratio"] <= 1.02 * ideal,
                   "%s: ratio %s within [0.9, 1.02] of %.3f" % (tag, r["ratio"], ideal))
            # 4-bit QSGD errs, but far less than the signal.
            expect(0 < r["rel_err"] < 0.5, "%s: 0 < rel_err %s < 0.5" % (tag, r["rel_err"]))
            expect(0 < r["err_over_bound"] <= 1, "%s: errors within the bound" % tag)
            # The link model (docs/benchmark.md), recomputed from the row's own numbers.
            expect(r["kernels_measured"] and r["encode_us"] > 0 and r["decode_us"] > 0,
                   "%s: codec times measured for the model" % tag)
            kernel = r["encode_us"] + r["decode_us"] * (2 * nranks - 1) / nranks
            expect(abs(r["kernel_us"] - kernel) <= 1e-6 * kernel, "%s: two-shot kernel work" % tag)
            expect(r["latency_steps"] == nranks, "%s: two-shot latency steps 1 + (N-1)" % tag)
            gbps = [m["link_gbps"] for m in r["model"]]
            expect(gbps == [10, 25, 100], "%s: default links 10, 25, 100 Gb/s (got %s)" % (tag, gbps))
            for m in r["model"]:
                g = m["link_gbps"]
                ours = r["kernel_us"] + r["wire_bytes"] * 8 / (g * 1e3) + nranks * 10
                ring_bytes = 2 * (nranks - 1) / nranks * r["size"]
                nccl = ring_bytes * 8 / (g * 1e3) + 2 * (nranks - 1) * 10
                expect(abs(m["time_us"] - ours) <= 1e-6 * ours, "%s: modeled time at %g" % (tag, g))
                expect(abs(m["nccl_time_us"] - nccl) <= 1e-6 * nccl, "%s: NCCL model at %g" % (tag, g))
                expect(abs(m["speedup"] - nccl / ours) <= 1e-5 * nccl / ours,
                       "%s: modeled speedup at %g" % (tag, g))

    # Reduce-scatter (-C reduce_scatter): sizes are the per-rank output; nccl-tests'
    # reduce_scatter_perf bandwidths; NCCL's ring sends (N-1) * size; one quantization.
    code, out, rows = run(perf, ["-N", str(nranks), "-C", "reduce_scatter", "-b", "64K", "-e",
                                 "256K", "-f", "4", "-n", "2", "-w", "1", "-d", "float,bfloat16",
                                 "-m", "none,qsgd,topk", "-q", str(bits), "-B", str(bucket)],
                          os.path.join(work, "rs.json"))
    expect(code == 0, "reduce-scatter run exits 0 (got %d)" % code)
    expect("ncclReduceScatter" in out, "reduce-scatter table names ncclReduceScatter")
    expect(len(rows) == 2 * 3 * len(sizes), "reduce-scatter: one row per type, method, size")
    for r in rows:
        tag = "rs %s %s %d" % (r.get("method"), r.get("dtype"), r.get("size", -1))
        expect(r.get("collective") == "reduce_scatter", "%s: collective named" % tag)
        expect(r["count"] * TYPE_BYTES[r["dtype"]] == r["size"], "%s: count is the output" % tag)
        expect(r["wrong"] == 0 and r["nccl_wrong"] == 0, "%s: no wrong elements" % tag)
        algbw = nranks * r["size"] / r["time_us"] / 1e3
        expect(abs(r["algbw"] - algbw) <= 1e-3 * algbw, "%s: algbw = N * size / time" % tag)
        expect(abs(r["busbw"] - r["algbw"] * (nranks - 1) / nranks) <= 1e-3 * r["busbw"],
               "%s: busbw = algbw * (N-1)/N" % tag)
        expect(abs(r["nccl_wire_bytes"] - (nranks - 1) * r["size"]) <= 1,
               "%s: NCCL ring reduce-scatter bytes (N-1) * size" % tag)
        if r["method"] == "none":
            expect(r["algo"] == "passthrough", "%s: method none passes through" % tag)
            continue
        expect(r["algo"] == "reducescatter", "%s: ran the reduce-scatter (got %s)" % (tag, r["algo"]))
        if r["method"] == "qsgd":
            # (N-1) blocks of E(size) bytes: the codec's ratio exactly.
            ideal = TYPE_BYTES[r["dtype"]] * 8 / (bits + 32.0 / bucket)
            expect(r["ratio"] is not None and 0.98 * ideal <= r["ratio"] <= 1.02 * ideal,
                   "%s: ratio %s within 2%% of %.3f" % (tag, r["ratio"], ideal))
            expect(0 < r["rel_err"] < 0.5, "%s: 0 < rel_err %s < 0.5" % (tag, r["rel_err"]))
            expect(0 < r["err_over_bound"] <= 1, "%s: errors within the one-call bound" % tag)
            expect(r["latency_steps"] == 1, "%s: one all-to-all step" % tag)
            for m in r["model"]:
                g = m["link_gbps"]
                nccl = (nranks - 1) * r["size"] * 8 / (g * 1e3) + (nranks - 1) * 10
                expect(abs(m["nccl_time_us"] - nccl) <= 1e-6 * nccl,
                       "%s: NCCL reduce-scatter model at %g" % (tag, g))

    code, out, rows = run(perf, ["-N", "2", "-b", "256K", "-e", "256K", "-n", "1", "-w", "0",
                                 "--debug-corrupt"], os.path.join(work, "corrupt.json"))
    expect(code == 1, "a corrupted element makes the run exit 1 (got %d)" % code)
    expect(len(rows) == 1 and rows[0]["wrong"] >= 1, "the corrupted element is counted wrong")
    expect("FAILED" in out, "the footer says FAILED")

    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
