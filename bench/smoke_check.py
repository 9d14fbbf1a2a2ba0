#!/usr/bin/env python3
"""CTest smoke test of gradcomp_perf on the CPU backend.

Runs small sizes for every type and method none/qsgd, then checks what the
benchmark promises: exit code 0, every JSON row with its fields, no wrong
element, bandwidths consistent with times, QSGD's wire bytes what the codec
math says, and that a corrupted element makes the run fail.
The link model on the CPU backend: its kernel times are the newest committed
GPU report's rates (never the host codecs'), a missing or garbled report
leaves the modeled columns out with a sentence, and the --model-nodes
projection matches the byte and time formulas of docs/benchmark.md. The flags' edges
(check_flags): crossed, zero or empty size ranges and a --local-size that does not divide -N
refused with exit 2, GRADCOMP_METHOD and GRADCOMP_LOCAL_SIZE taken as their flags are, every
scalar JSON field in the --csv, --help's ranges.
Usage: smoke_check.py GRADCOMP_PERF WORKDIR SOURCE_DIR
"""
import csv
import glob
import json
import math
import os
import re
import struct
import subprocess
import sys
import time

from checklib import close, expect, verdict

FIELDS = ["size", "count", "dtype", "method", "time_us", "nccl_time_us", "algbw", "busbw",
          "wire_bytes", "ratio", "rel_err", "wrong"]
TYPE_BYTES = {"float": 4, "half": 2, "bfloat16": 2}


def run(perf, args, json_path, env=None):
    cmd = [perf, "--backend", "cpu", "--json", json_path] + args
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=100, env=dict(os.environ, **(env or {})))
    print("$", " ".join(cmd), "-> exit", p.returncode)
    print(p.stdout)
    with open(json_path) as f:
        return p.returncode, p.stdout, json.load(f)["rows"]


def run_plain(perf, args, env=None):
    """A run whose refusal (no JSON) is the point: its exit code and output."""
    cmd = [perf, "--backend", "cpu"] + args
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=100, env=dict(os.environ, **(env or {})))
    print("$", " ".join(cmd), "-> exit", p.returncode)
    print(p.stdout)
    return p.returncode, p.stdout


def csv_matches_json(tag, cell, value):
    """A CSV cell against its JSON value: null is empty, booleans 1/0, numbers as %g."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == ("1" if value else "0")
    if isinstance(value, (int, float)):
        try:
            return close(float(cell), value, 1e-5)
        except ValueError:
            return False
    return cell == value


def check_flags(perf, work, src, kdoc, bits, bucket):
    """The flags' and settings' edges: refusals with exit 2 and a sentence, GRADCOMP_METHOD and
    GRADCOMP_LOCAL_SIZE taken as their flags are, the CSV's columns, --help and the doc's table."""
    tiny = ["-n", "1", "-w", "0"]
    # -b above -e, both given: refused naming both (nccl-tests refuses min > max).
    code, out = run_plain(perf, ["-b", "1M", "-e", "64K"] + tiny)
    expect(code == 2 and "-b 1M is larger than -e 64K" in out,
           "-b 1M -e 64K: exit 2 naming both sizes (got %d)" % code)
    # -e alone below the default -b (256K): one size, -e's.
    code, _, rows = run(perf, ["-N", "2", "-e", "64K"] + tiny, os.path.join(work, "e-alone.json"))
    expect(code == 0 and [r["size"] for r in rows] == [64 << 10],
           "-e 64K alone: one 64K row (got %s)" % [r["size"] for r in rows])
    # An explicit 0 is no size (0 was the "unset" value once).
    for flag in ("-b", "-e"):
        code, out = run_plain(perf, ["-b", "64K", "-e", "64K", flag, "0"] + tiny)
        expect(code == 2 and ("%s 0" % flag) in out and "positive" in out,
               "%s 0: exit 2, sizes must be positive (got %d)" % (flag, code))
    # A range where no size holds one element: refused; some sizes below one element of a type:
    # skipped for that type, and the table says so.
    code, out = run_plain(perf, ["-b", "1", "-e", "1"] + tiny)
    expect(code == 2 and "below one element" in out,
           "-b 1 -e 1: exit 2, every size below one element (got %d)" % code)
    code, out, rows = run(perf, ["-N", "2", "-b", "2", "-e", "4", "-f", "2", "-d", "float,half"]
                          + tiny, os.path.join(work, "tiny.json"))
    expect(code == 0 and sorted((r["dtype"], r["size"]) for r in rows) ==
           [("float", 4), ("half", 2), ("half", 4)], "-b 2 -e 4: float's 2 B skipped, the rest run")
    expect("sizes 2 B skipped: below one float element (4 B)" in out,
           "the table names the sizes it skipped")
    # A table whose every size was skipped measured nothing: its footer says so, no 0 bandwidth.
    code, out, rows = run(perf, ["-N", "2", "-b", "2", "-e", "2", "-d", "float,half"] + tiny,
                          os.path.join(work, "tiny-skipped.json"))
    footers = [l for l in out.splitlines() if l.startswith("# Avg bus bandwidth")]
    expect(code == 0 and len(footers) == 2 and "none measured (no size ran)" in footers[0]
           and "none measured" not in footers[1],
           "-b 2 -e 2: float's table measured nothing and says so (%s)" % footers)
    # --local-size must divide -N: refused at option time, as GRADCOMP_LOCAL_SIZE is.
    code, out = run_plain(perf, ["-N", "4", "--local-size", "3", "-b", "64K", "-e", "64K"] + tiny)
    expect(code == 2 and "--local-size 3" in out and "-N 4" in out and "1, 2, 4" in out,
           "--local-size 3 -N 4: exit 2 naming both and the divisors (got %d)" % code)
    code, out = run_plain(perf, ["-N", "4", "-b", "64K", "-e", "64K"] + tiny,
                          env={"GRADCOMP_LOCAL_SIZE": "3"})
    expect(code == 2 and "GRADCOMP_LOCAL_SIZE=3" in out,
           "GRADCOMP_LOCAL_SIZE=3 at N = 4: exit 2 naming it (got %d)" % code)
    # GRADCOMP_LOCAL_SIZE reaches the link model as it reaches the comm: the same hier rows and
    # model columns as --local-size 2 (hier-auto.json, main's run).
    hargs = ["-N", "4", "-b", "256K", "-e", "256K", "-q", str(bits), "-B", str(bucket), "-a",
             "auto"] + tiny
    code, out, rows = run(perf, hargs, os.path.join(work, "hier-env.json"),
                          env={"GRADCOMP_LOCAL_SIZE": "2"})
    expect(code == 0 and "nodes of 2 ranks (GRADCOMP_LOCAL_SIZE)" in out,
           "GRADCOMP_LOCAL_SIZE=2: exits 0, the preamble models nodes of 2 ranks")
    check_hier_rows("hier GRADCOMP_LOCAL_SIZE=2", rows, kdoc, 4, 2, "allgather", bits,
                    bucket=bucket)
    flag_rows = json.load(open(os.path.join(work, "hier-auto.json")))["rows"]

    def model(rs):
        return [(m["link_gbps"], m["nccl_time_us"], m["time_us"]) for r in rs for m in r["model"]]

    ours, theirs = model(rows), model(flag_rows)
    expect(len(ours) == len(theirs) > 0 and
           all(close(a, b) for pa, pb in zip(ours, theirs) for a, b in zip(pa, pb)),
           "GRADCOMP_LOCAL_SIZE=2 and --local-size 2 give the same model columns (%s vs %s)"
           % (ours, theirs))
    # GRADCOMP_METHOD is -m's default; -m still wins; a bad value is exit 2.
    code, _, rows = run(perf, ["-N", "2", "-b", "64K", "-e", "64K"] + tiny,
                        os.path.join(work, "env-method.json"), env={"GRADCOMP_METHOD": "topk"})
    expect(code == 0 and [r["method"] for r in rows] == ["topk"],
           "GRADCOMP_METHOD=topk without -m runs topk (got %s)" % [r["method"] for r in rows])
    code, _, rows = run(perf, ["-N", "2", "-b", "64K", "-e", "64K", "-m", "qsgd"] + tiny,
                        os.path.join(work, "env-method-m.json"), env={"GRADCOMP_METHOD": "topk"})
    expect(code == 0 and [r["method"] for r in rows] == ["qsgd"], "-m qsgd beats GRADCOMP_METHOD")
    code, out = run_plain(perf, ["-N", "2", "-b", "64K", "-e", "64K"] + tiny,
                          env={"GRADCOMP_METHOD": "bogus"})
    expect(code == 2 and "GRADCOMP_METHOD" in out, "GRADCOMP_METHOD=bogus: exit 2 naming it")
    # --csv: every scalar field of the JSON row as a column, with the same value.
    cpath = os.path.join(work, "rows.csv")
    code, _, rows = run(perf, ["-N", "2", "-b", "64K", "-e", "64K", "-m", "none,qsgd,topk",
                               "--csv", cpath] + tiny, os.path.join(work, "rows-csv.json"))
    with open(cpath, newline="") as f:
        crows = list(csv.DictReader(f))
    expect(code == 0 and len(crows) == len(rows) == 3, "--csv: a CSV row per JSON row")
    for r, c in zip(rows, crows):
        for k, v in r.items():
            if isinstance(v, (dict, list)):
                continue
            expect(k in c and csv_matches_json(k, c[k], v),
                   "--csv %s row: column %s is %r, JSON %r" % (r["method"], k, c.get(k), v))
    # -c 0: the unchecked cells are empty in the CSV, as they are null in the JSON.
    cpath = os.path.join(work, "rows-c0.csv")
    code, _, rows = run(perf, ["-N", "2", "-b", "64K", "-e", "64K", "-c", "0", "--csv",
                               cpath] + tiny, os.path.join(work, "rows-c0.json"))
    with open(cpath, newline="") as f:
        crows = list(csv.DictReader(f))
    expect(code == 0 and len(crows) == len(rows) == 1 and rows[0]["wrong"] is None,
           "-c 0: one unchecked row")
    for k, v in rows[0].items():
        if not isinstance(v, (dict, list)):
            expect(k in crows[0] and csv_matches_json(k, crows[0][k], v),
                   "-c 0 --csv: column %s is %r, JSON %r" % (k, crows[0].get(k), v))
    # Sizes and sweeps that cannot be run are refused with the value and what is allowed.
    same, same_too = os.path.join(work, "rows-same"), os.path.join(work, ".", "rows-same")
    # A --csv that is a symbolic link to the --json file (made or not yet): the CSV, written
    # through the link, replaced the JSON, and the run said it wrote both.
    linked = os.path.join(work, "rows-linked.csv")
    if os.path.lexists(linked):
        os.remove(linked)
    os.symlink("rows-linked.json", linked)
    for args, says in ((["-b", "nan"], "-b nan is not a size: a whole number of bytes up to 1024G"),
                       # The largest size in a form the flag takes (there is no T suffix).
                       (["-b", "1T"], "-b 1T is not a size: a whole number of bytes up to 1024G"),
                       (["-b", "1.5"], "-b 1.5 is not a size"),
                       (["-e", "1e30"], "-e 1e30 is not a size"),
                       (["-b", "64", "-e", "1M", "-f", "1.01"],
                        "-f 1.01 cannot grow -b 64"),
                       # 10001 sizes: refused, not run row by row (-e 1024G: a list of billions
                       # of sizes, which aborted the run out of memory).
                       (["-b", "4", "-e", "40004", "-i", "4"],
                        "-b 4 -e 40004 in steps of -i 4 gives more than 10000 sizes"),
                       # Another backend's flag is refused, not ignored (no socket world, no
                       # report's rates behind the model).
                       (["--root", "127.0.0.1:29500"],
                        "--root 127.0.0.1:29500 is for --backend socket only, and this run's "
                        "backend is cpu"),
                       (["--backend", "cuda", "--kernel-rates", "none"],
                        "--kernel-rates none is for --backend cpu only, and this run's backend is "
                        "cuda"),
                       # The CSV, written last, would replace the JSON.
                       (["-m", "none", "--json", same, "--csv", same_too],
                        "name the same file: give each its own path"),
                       (["-m", "none", "--json", os.path.join(work, "rows-linked.json"),
                         "--csv", linked], "name the same file: give each its own path"),
                       (["--link-gbps", ","], "--link-gbps ,: give at least one bandwidth"),
                       # The projection's flags without a projection: refused, not ignored.
                       (["--node-gbps", "100"], "--node-gbps 100 is for the projection only, "
                                                "which --model-nodes K asks for"),
                       (["--model-pipe", "0"], "--model-pipe 0 is for the projection only"),
                       # An empty -m or -d (a shell variable left empty) is refused too, not
                       # run as the default method or type.
                       (["-m", ","], "-m ',': give at least one method"),
                       (["-m", ""], "-m '': give at least one method"),
                       (["-d", ","], "-d ',': give at least one type"),
                       # An empty item among others (a comma too many, a shell variable left
                       # empty) is refused naming the flag and its place, not dropped.
                       (["-d", "float,"], "-d 'float,': item 2 of the list is empty"),
                       (["-d", ",half"], "-d ',half': item 1 of the list is empty"),
                       (["-m", "qsgd,,topk"], "-m 'qsgd,,topk': item 2 of the list is empty"),
                       (["--link-gbps", "10,"], "--link-gbps '10,': item 2 of the list is empty"),
                       (["--model-nodes", "2,,4"],
                        "--model-nodes '2,,4': item 2 of the list is empty"),
                       (["--model-nodes", "2", "--model-local", "4,"],
                        "--model-local '4,': item 2 of the list is empty"),
                       (["--model-nodes", "2", "--node-gbps", ",100"],
                        "--node-gbps ',100': item 1 of the list is empty"),
                       # The in-node link is read by the projection and by a run on nodes of
                       # several ranks alone: on a run without either it is refused, not ignored.
                       (["--intra-gbps", "100"],
                        "--intra-gbps 100 is for the projection (--model-nodes K) or a run on "
                        "nodes of several ranks (--local-size L > 1, or GRADCOMP_LOCAL_SIZE), and "
                        "this run models no in-node link"),
                       (["-N", "4", "--local-size", "1", "--intra-gbps", "100"],
                        "--intra-gbps 100 is for the projection"),
                       # An empty path or address (a shell variable left empty) is refused, not
                       # taken as the flag left out (no file written, the default report).
                       (["--json", ""], "--json '': the value is empty: give a file"),
                       (["--csv", ""], "--csv '': the value is empty: give a file"),
                       (["--root", ""], "--root '': the value is empty: give a host:port"),
                       (["--kernel-rates", ""],
                        "--kernel-rates '': the value is empty: give a report"),
                       (["-m", "none", "--json", "/nonexistent/dir/x.json"],
                        "cannot write /nonexistent/dir/x.json.part"),
                       # A directory cannot be renamed over: refused before the first row, not
                       # found at every row and the end.
                       (["-m", "none", "--json", work], "cannot write %s: Is a directory" % work)):
        code, out = run_plain(perf, args + tiny)
        expect(code == 2 and says in out, "%s: exit 2 saying %r (got %d)" % (args, says, code))
    # Integer flags are plain decimal digits in their range, as GRADCOMP_* integers are: a
    # leading zero, space or sign, a suffix or hex is refused naming the flag, value and range;
    # numbers start with a digit or '.' (no hex float).
    plain = "in plain decimal digits (no sign, space or leading zero)"
    for args, says in ((["-n", "010"], "-n '010' is not an integer in 1..1000000, " + plain),
                       (["-n", " 5"], "-n ' 5' is not an integer in 1..1000000, " + plain),
                       (["-n", "5x"], "-n '5x' is not an integer in 1..1000000, " + plain),
                       (["-w", "+1"], "-w '+1' is not an integer in 0..1000000, " + plain),
                       (["-N", "0x2"], "-N '0x2' is not an integer in 1..64, " + plain),
                       (["-q", "04"], "-q '04' is not an integer in 2..8, " + plain),
                       (["--seed", "-1"], "--seed '-1' is not an integer in 0..2147483647"),
                       (["--model-nodes", "2,04"], "--model-nodes '2,04' is not an integer in "
                                                   "1..4096 (each of the list)"),
                       (["-f", "0x10"], "-f 0x10 is not a factor in [1.0001, 1e6]"),
                       (["-b", " 1K"], "-b  1K is not a size")):
        code, out = run_plain(perf, args + tiny)
        expect(code == 2 and says in out, "%s: exit 2 saying %r (got %d)" % (args, says, code))
    # A list item given twice ran (or modeled) the same rows twice, under any spelling of it
    # ("all" lists every type); refused naming the flag and the item.
    twice = ": each item listed runs (or is modeled) once per listing"
    for args, says in ((["-m", "qsgd,qsgd"], "-m qsgd,qsgd: qsgd is listed twice" + twice),
                       (["-d", "float,fp32"], "-d float,fp32: fp32 repeats float" + twice),
                       (["-d", "all,half"], "-d all,half: half repeats all" + twice),
                       (["--link-gbps", "10,1e1"], "--link-gbps 10,1e1: 1e1 repeats 10" + twice),
                       (["--model-nodes", "2,4,2"], "--model-nodes 2,4,2: 2 is listed twice"),
                       (["--model-nodes", "2", "--model-local", "4,4"],
                        "--model-local 4,4: 4 is listed twice"),
                       (["--model-nodes", "2", "--node-gbps", "100,100.0"],
                        "--node-gbps 100,100.0: 100.0 repeats 100"),
                       # A method's own flag with no row of that method went unused.
                       (["-m", "topk", "-q", "2"], "-q 2 (QSGD's bits) is for -m qsgd, and this "
                        "run's methods are topk, so no row would use it"),
                       (["-m", "none", "-B", "64"], "-B 64 (QSGD's bucket and the hierarchy's "
                        "piece size) is for -m qsgd, topk, randk or dgc, and this run's methods "
                        "are none, so no row would use it"),
                       (["-k", "0.1"], "-k 0.1 (the sparse methods' density) is for -m topk, "
                        "randk or dgc, and this run's methods are qsgd (-m not given"),
                       # -f stepped the sizes and -i went unused.
                       (["-i", "1M", "-f", "2"], "-i 1M and -f 2 are both given"),
                       # strtod's underflow read 1e-400 as 0, in the range of these flags.
                       (["--link-lat-us", "1e-400"], "--link-lat-us 1e-400: 1e-400 underflows a "
                        "double (nonzero and below 2.22507e-308, it would be read as 0 or less "
                        "precisely): give a number in [0, 1e7] us (0, or at least 2.22507e-308)"),
                       (["--debug-rank-weight", "1e-400"], "--debug-rank-weight 1e-400: 1e-400 "
                        "underflows a double"),
                       (["--link-gbps", "10,1e400"], "--link-gbps 10,1e400: 1e400 overflows a "
                        "double (above 1.79769e+308, it would be read as inf): give a number in "
                        "[0.001, 1e6] Gb/s"),
                       (["--model-nodes", "2", "--model-pipe", "1e-400"],
                        "--model-pipe 1e-400: a byte count in [0, 1024G]")):
        code, out = run_plain(perf, ["-b", "64K", "-e", "64K"] + args + tiny)
        expect(code == 2 and says in out, "%s: exit 2 saying %r (got %d)" % (args, says, code))
    # -a with no row that follows it: a reduce-scatter runs its own exchange and none compresses
    # nothing (both ran without it), and an exchange of the other kind of method was refused at
    # that method's first row, after the rows of the methods before it.
    for args, env, says in (
            (["-m", "qsgd,topk", "-a", "twoshot"], None, "-a twoshot is for -m qsgd, and this "
             "run's methods are qsgd,topk, so its topk rows would be refused: leave it out, or "
             "give -a auto or hier"),
            (["-m", "topk", "-a", "ring"], None, "-a ring is for -m qsgd, and this run's methods "
             "are topk, so its topk rows would be refused: leave it out, or give -a auto, sparse "
             "or hier"),
            (["-a", "sparse"], None, "-a sparse is for -m topk, randk or dgc, and this run's "
             "methods are qsgd (-m not given: GRADCOMP_METHOD's, else qsgd), so its qsgd rows "
             "would be refused: leave it out, or give -a auto, twoshot, ring, allgather or hier"),
            (["-a", "allgather"], {"GRADCOMP_METHOD": "dgc"}, "-a allgather is for -m qsgd, and "
             "this run's methods are dgc (-m not given: GRADCOMP_METHOD's"),
            (["-m", "none", "-a", "hier"], None, "-a hier is for -m qsgd, topk, randk or dgc, "
             "and this run's methods are none, so no row would use it: leave it out, or add a "
             "compressing method to -m"),
            (["-m", "qsgd", "-a", "ring"], {"GRADCOMP_ELIAS": "1"}, "-a ring is not run with "
             "GRADCOMP_ELIAS=1, whose Elias-coded QSGD is an allgather whatever -a says, and this "
             "run's methods are qsgd, so no row would use it: leave it out, give -a auto or "
             "allgather"),
            (["-C", "reduce_scatter", "-a", "ring"], None, "-a ring is for -C all_reduce, and "
             "this run's collective is reduce_scatter, whose exchange does not follow -a: leave "
             "it out, or give -a auto or hier"),
            # Not hier where no row compresses: that is refused too.
            (["-C", "reduce_scatter", "-m", "none", "-a", "ring"], None, "whose exchange does "
             "not follow -a: leave it out, or give -a auto (see --help)")):
        code, out = run_plain(perf, ["-N", "2", "-b", "64K", "-e", "64K"] + args + tiny, env=env)
        expect(code == 2 and says in out and out.count("\n") == 1,
               "%s %s: exit 2 saying %r in one line (got %d)" % (env or "", args, says, code))
    # Those -a follows run, each row with the algorithm asked for (hier and auto: the layout's;
    # Elias-coded QSGD is an allgather).
    for args, env, algos in ((["-m", "qsgd,none", "-a", "ring"], None, ["ring", "passthrough"]),
                             (["-m", "qsgd,topk", "-a", "hier"], None, ["allgather", "sparse"]),
                             (["-m", "randk", "-a", "sparse"], None, ["sparse"]),
                             (["-m", "none", "-a", "auto"], None, ["passthrough"]),
                             (["-m", "qsgd,topk", "-a", "hier"], {"GRADCOMP_ELIAS": "1"},
                              ["allgather", "sparse"]),
                             (["-m", "qsgd", "-a", "allgather"], {"GRADCOMP_ELIAS": "1"},
                              ["allgather"]),
                             (["-C", "reduce_scatter", "-a", "hier"], None, ["reducescatter"])):
        code, _, rows = run(perf, ["-N", "2", "-b", "64K", "-e", "64K"] + args + tiny,
                            os.path.join(work, "algo-honoured.json"), env=env)
        expect(code == 0 and [r["algo"] for r in rows] == algos,
               "%s %s: exit 0, rows of %s (got %d, %s)" % (env or "", args, algos, code,
                                                          [r["algo"] for r in rows]))
    code, out = run_plain(perf, ["-b", "64K", "-e", "64K", "-q", "3"] + tiny,
                          env={"GRADCOMP_METHOD": "topk"})
    expect(code == 2 and "this run's methods are topk (-m not given: GRADCOMP_METHOD's" in out,
           "GRADCOMP_METHOD=topk -q 3: exit 2, -q unused (got %d)" % code)
    # A bad GRADCOMP_* value with -m not given: the methods are not known, so the value's own
    # sentence, not "this run's methods are qsgd" (the fallback's).
    for env, says in (({"GRADCOMP_METHOD": "topk", "GRADCOMP_BITS": "9"}, "GRADCOMP_BITS=9"),
                      ({"GRADCOMP_METHOD": "bogus"}, "GRADCOMP_METHOD=bogus")):
        code, out = run_plain(perf, ["-N", "2", "-b", "64K", "-e", "64K", "-k", "0.1"] + tiny,
                              env=env)
        expect(code == 2 and says in out and "this run's methods" not in out,
               "%s -k 0.1: exit 2 saying %r, not the methods (got %d)" % (env, says, code))
    # A bad GRADCOMP_* value is said once, before any rank looks for its GPU (without a GPU,
    # "no usable GPU", exit 3, was all the cuda backend said of it).
    for env, says in (({"GRADCOMP_PIPELINE_BYTES": "abc"}, "GRADCOMP_PIPELINE_BYTES=abc"),
                      ({"GRADCOMP_BITS": "9"}, "GRADCOMP_BITS=9")):
        p = subprocess.run([perf, "--backend", "cuda", "-N", "2", "-b", "64K", "-e", "64K",
                            "-m", "none,qsgd", "-n", "1", "-w", "0"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=100,
                           env=dict(os.environ, **env))
        expect(p.returncode == 2 and says in p.stdout and "rank" not in p.stdout,
               "--backend cuda with %s: exit 2 saying %r once, before the ranks (got %d: %s)"
               % (env, says, p.returncode, p.stdout.strip()[:200]))
    # -B is every compressing method's piece alignment in the hierarchy: top-k's wire bytes
    # follow it there.
    wire = []
    for b in ("32", "8192"):
        path = os.path.join(work, "topk-hier-B%s.json" % b)
        if os.path.exists(path):
            os.remove(path)  # a refusal writes none: not an earlier run's rows
        code, out = run_plain(perf, ["-N", "4", "--local-size", "2", "-b", "100K", "-e", "100K",
                                     "-m", "topk", "-a", "hier", "-B", b, "--json", path] + tiny)
        expect(code == 0, "-m topk --local-size 2 -B %s runs (got %d)" % (b, code))
        if os.path.exists(path):
            with open(path) as f:
                wire += [r["wire_bytes"] for r in json.load(f)["rows"]]
    expect(len(wire) == 2 and wire[0] != wire[1],
           "-m topk --local-size 2: -B 32 and -B 8192 give different wire bytes (got %s)" % wire)
    # Each method's flags with its method among others run.
    code, _, rows = run(perf, ["-N", "2", "-b", "64K", "-e", "64K", "-m", "qsgd,topk", "-q", "3",
                               "-B", "64", "-k", "0.05", "-i", "1M"] + tiny,
                        os.path.join(work, "method-flags.json"))
    labels = sorted(r["label"] for r in rows)
    expect(code == 0 and len(labels) == 2 and labels[0].startswith("qsgd bits=3 bucket=64 ")
           and labels[1].startswith("topk density=0.05 "),
           "-m qsgd,topk -q 3 -B 64 -k 0.05: both rows, each with its setting (got %s)" % labels)
    # An unknown, ambiguous or misused option: one line on stderr naming it with a hint to
    # --help, nothing on stdout, exit 2 (as getopt-style tools); --help: usage on stdout, exit 0.
    for args, says in ((["--bogus"], "unknown option --bogus (see --help)"),
                       (["-x"], "unknown option -x (see --help)"),
                       (["--mo", "1"], "option --mo is ambiguous: --model-nodes, --model-local, "
                                       "--model-pipe (see --help)"),
                       (["--auto=1"], "option --auto takes no value: --auto=1 (see --help)"),
                       (["-n"], "option -n needs a value (see --help)"),
                       (["--iters"], "option --iters needs a value (see --help)")):
        p = subprocess.run([perf, "--backend", "cpu"] + args, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=100)
        print("$ gradcomp_perf", " ".join(args), "-> exit", p.returncode)
        print(p.stderr)
        expect(p.returncode == 2 and p.stdout == "" and p.stderr == "gradcomp_perf: %s\n" % says,
               "%s: exit 2, stdout empty, one line on stderr: %r (got %d, %r, %d bytes of stdout)"
               % (args, says, p.returncode, p.stderr, len(p.stdout)))
    p = subprocess.run([perf, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=100)
    expect(p.returncode == 0 and p.stdout.startswith("Usage: ") and p.stderr == "",
           "--help: usage on stdout, nothing on stderr, exit 0 (got %d)" % p.returncode)
    expect(not os.path.exists(work + ".part"), "--json DIR: no DIR.part left behind")
    # --help's ranges are the enforced ones; the doc's -a row lists every algorithm.
    code, out = run_plain(perf, ["--help"])
    expect(code == 0 and "[1e-6, 1]" in out and "(0,1]" not in out and "GRADCOMP_METHOD" in out,
           "--help gives -k's enforced range and -m's default from GRADCOMP_METHOD")
    doc = open(os.path.join(src, "docs", "benchmark.md")).read()
    arow = [ln for ln in doc.splitlines() if ln.startswith("| `-a` |")]
    expect(len(arow) == 1 and all("`%s`" % a in arow[0] for a in
                                  ("auto", "twoshot", "ring", "allgather", "sparse", "hier")),
           "docs/benchmark.md's -a row lists every algorithm -a takes")
    # Every flag --help lists has a row in docs/benchmark.md's flag table (under its short
    # name where it has one), so neither lists a flag the other lacks (--seed had no row).
    table = [ln for ln in doc.splitlines() if ln.startswith("| `-")]
    listed = [m.group(1) or m.group(2) for m in
              re.finditer(r"^  (?:(-\w), --[\w-]+|    (--[\w-]+))", out, re.M)]
    expect(len(listed) > 30 and all(any("`" + f in ln.split("|")[1] for ln in table)
                                    for f in listed),
           "docs/benchmark.md has a row for every flag of --help (missing: %s)"
           % [f for f in listed if not any("`" + f in ln.split("|")[1] for ln in table)])
    # Each number of a row's default column (outside parentheses) is in what --help says after
    # "default" for the row's flags, so that neither states a default the other does not (-q,
    # -B, -k and -a gave theirs in the table only).
    said = {}
    for entry in re.split(r"\n(?=  -|      --)", out):
        for f in re.findall(r"^  (?:(-\w), (--[\w-]+)|    (--[\w-]+))", entry)[:1]:
            for name in filter(None, f):
                said[name] = " ".join(entry.split())
    differ = []
    for ln in table:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
        flags = re.findall(r"`(-[\w-]+)", cells[0])
        help_default = " ".join(said.get(f, "").partition("default")[2] for f in flags)
        for num in re.findall(r"(?<![\w.$])[0-9][0-9.,]*[KMG]?\b", re.sub(r"\([^)]*\)", "",
                                                                           cells[-1])):
            num = num.rstrip(",")
            if not re.search(r"(?<![\w.])%s(?![\w])" % re.escape(num), help_default):
                differ.append("%s: %s" % (cells[0], num))
    expect(not differ, "docs/benchmark.md's default column says what --help says (differ: %s)"
           % differ)


def newest_report(results):
    """The report gradcomp_perf must name: newest by name with kernels.json beside it."""
    for path in sorted(glob.glob(os.path.join(results, "[0-9][0-9][0-9][0-9]-[0-9][0-9]-*.json")),
                       reverse=True):
        if os.path.isfile(path[:-5] + "/kernels.json"):
            return path
    return None


KINDS = ["encode", "encode_f32", "owner_encode", "decode", "decode_acc", "decode_out"]
# The sparse rows' kernels charged at their own rates: the selector (passes over v), the
# received lists' check (indices checked), rand-k's non-finite flag (passes over v).
SPARSE_KINDS = ["select", "check_lists", "nonfinite_flag"]
# The fused owner's sums within the work (model.h KernelWork): their base decodes (in decode),
# their copy-rate bytes (in elementwise_bytes) and the bytes they move (at sum_per_byte).
SUM_WORK = ["sum_decode", "sum_copy_bytes", "sum_bytes"]


def report_cost(kdoc, kernel, dtype, bits, bucket, count):
    """Microseconds per element from the report's row of the nearest n (None: no row)."""
    rows = [r for r in kdoc["rows"] if r["kernel"] == kernel and r["dtype"] == dtype
            and (kernel == "copy" or (r["bits"] == bits and r.get("bucket", kdoc.get("bucket"))
                                      == bucket))]
    if not rows:
        return None
    # Nearest on a log scale; halfway between two rows, the larger (kernel_rates.cc nearer).
    best = min(rows, key=lambda r: (abs(math.log(r["n"] / count)), -r["n"]))
    return best["time_us"] / best["n"]


def report_costs(kdoc, r, bits, bucket, encode="qsgd_encode_ef", owner="qsgd_encode_ef"):
    """The costs the model charges a row (docs/benchmark.md): each kernel at its own rate;
    the decode overwrite at the accumulate's and the owners' encode without error feedback at
    the encode with it where the report lacks them; elementwise passes at the copy's
    bandwidth (8 bytes per element copied)."""
    c = r["count"]
    cost = lambda k, t="float": report_cost(kdoc, k, t, bits, bucket, c)  # noqa: E731
    costs = {"encode": cost(encode, r["dtype"]), "encode_f32": cost(encode),
             "decode_acc": cost("qsgd_decode_acc")}
    costs["owner_encode"] = cost(owner) or costs["encode_f32"]
    costs["decode"] = cost("qsgd_decode") or costs["decode_acc"]
    costs["decode_out"] = costs["decode"]  # one report row: the output decodes' rate too
    costs["elementwise_per_byte"] = cost("copy") / 8
    costs["sum_per_byte"] = sum_per_byte(kdoc, bits, bucket, c)
    return costs


COST_KEYS = ["encode", "encode_f32", "owner_encode", "decode", "decode_acc",
             "elementwise_per_byte", "sum_per_byte"]


def curve_costs(kdoc, r, bits, bucket, codec, peer=None, out=None, elem=None, fp32=False):
    """The costs at the library's launch sizes (docs/benchmark.md, model.cc KernelCurve::at):
    report_costs at every n the report times the row's encode at, each cost interpolated
    linearly in log2(n) between those sizes, never below the largest size's (a timing loop's
    small launches find their data in L2), held at the smallest below it and at the largest
    above it. The codec kernels at `codec` elements, the peers' encodes (input and fp32) at
    `peer`, the output's decodes at `out` (the decode overwrite's rate there), the elementwise
    passes at `elem` (each `codec` where not given). fp32: an fp32 call's (GRADCOMP_AUTO's
    timed calls, whatever the row's type; model.cc KernelCurve::fp32): every point's encode
    of the input at the fp32 encode's rate."""
    ns = sorted({x["n"] for x in kdoc["rows"] if x["kernel"] == "qsgd_encode_ef"
                 and x["dtype"] == r["dtype"] and x["bits"] == bits
                 and x.get("bucket", kdoc.get("bucket")) == bucket}) or [r["count"]]
    pts = [(n, report_costs(kdoc, {"count": n, "dtype": r["dtype"]}, bits, bucket)) for n in ns]
    if fp32:
        for _, c in pts:
            c["encode"] = c["encode_f32"]

    def at(n):
        if n >= pts[-1][0] or len(pts) == 1:
            return dict(pts[-1][1] if n >= pts[-1][0] else pts[0][1])
        n = max(n, pts[0][0])
        i = 1
        while i + 1 < len(pts) and pts[i][0] < n:
            i += 1
        (x0, a), (x1, b), z = pts[i - 1], pts[i], pts[-1][1]
        f = (math.log2(n) - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
        c = {k: max(a[k] + f * (b[k] - a[k]), z[k]) for k in COST_KEYS}
        c["decode_out"] = c["decode"]
        return c

    c = at(codec)
    e = at(codec if peer is None else peer)
    c["encode"], c["encode_f32"] = e["encode"], e["encode_f32"]
    c["decode_out"] = at(codec if out is None else out)["decode"]
    c["elementwise_per_byte"] = at(codec if elem is None else elem)["elementwise_per_byte"]
    return c


def batched(segments, bucket):
    """Segments of one batched launch (model.cc batched): at most 16 (kBatchSegments) on a
    warp bucket, else one launch a segment."""
    return min(segments, 16) if warp_bucket(bucket) and segments >= 1 else 1


def flat_launches(algo, count, n, bucket, pieces=1):
    """A flat call's launch sizes (model.cc codecLaunch, peerEncodeLaunch, outDecodeLaunch,
    elementwiseLaunch): two-shot codes chunks of count / (N P), its N-1 peers' encodes of a
    piece one batched launch and its N output decodes another; the ring the same chunks, each
    hop's encode one chunk's, its N output decodes batched; the allgather codes the whole
    buffer. (codec, peer, out, elem) for curve_costs."""
    if algo == "allgather":
        return count, count, count, count
    chunk = math.ceil(count / n / max(1, pieces))
    peers = n - 1 if algo == "twoshot" else 1
    return chunk, chunk * batched(peers, bucket), chunk * batched(n, bucket), chunk


def hier_launches(count, n, local, middle, bucket, pieces=1):
    """A hierarchical call's launch sizes (the same functions, algo 5): the middle's codec
    kernels on chunks of count / (N P) (an allgather middle on the whole shard, count / G,
    one piece), its k-1 peers' encodes and k output decodes of a two-shot (ring: k) middle
    batched; the widening and conversions per local block of count / G unpipelined, per
    chunk's piece pipelined (a ring middle's pieces: its own kernels' launches)."""
    k = n // local
    chunk = (math.ceil(count / local) if middle == "allgather"
             else math.ceil(count / n / max(1, pieces)))
    peer = chunk * (batched(k - 1, bucket) if middle == "twoshot" else 1)
    out = chunk * (batched(k, bucket) if middle in ("twoshot", "ring") else 1)
    elem = chunk if pieces > 1 else math.ceil(count / local)
    return chunk, peer, out, elem


def sum_per_byte(kdoc, bits, bucket, count):
    """The fused owner's sum per byte it moves (kernel_rates.cc lookup): the report's qsgd_sum8
    row into fp32 at bits and bucket whose owner's block m = n / 8 is nearest count, over
    7 E(m) + 4m + 4m bytes (7 encodings, the own fp32 block, the fp32 store); 0 without one
    (the model's estimate)."""
    rows = [r for r in kdoc["rows"] if r["kernel"] == "qsgd_sum8" and r["dtype"] == "float"
            and r["bits"] == bits and r.get("bucket", kdoc.get("bucket")) == bucket
            and r["n"] // 8 >= 1]
    if not rows:
        return 0.0
    best = min(rows, key=lambda r: (abs(math.log(r["n"] // 8 / count)), -(r["n"] // 8)))
    m = best["n"] // 8
    return best["time_us"] / (7 * encoded(m, bits, bucket) + 8 * m)


def warp_bucket(bucket):
    """Buckets with the CUDA kernels' warp path: batched launches, decodes straight into any
    output type and the owner's sum in one kernel (model.h warpBucket)."""
    return bucket in (128, 256, 512, 1024)


def code_bytes(count, bits, bucket):
    """Encoded bytes an element (bits / 8 + 4 / bucket: codes and the bucket's fp32 scale), as
    gradcomp_perf sets CallKind::codeBytes from the row's count (model.h qsgdCodeBytes)."""
    return encoded(count, bits, bucket) / count if count > 0 else 0.0


def fused_sum_bytes(n, code):
    """The fused owner's sum of n terms (Backend::qsgdSum, model.h fusedSumBytes), per element
    beyond its base decode: the other n-2 peers' encodings, the own fp32 block and, past 16
    terms, the fp32 accumulator read and rewritten by each launch after the first (a launch
    adds 16 terms, each further one the accumulator and up to 15 more)."""
    return max(0, n - 2) * code + 4 + 8 * (fused_sum_launches(n) - 1)


def fused_sum_moved_bytes(n, code, own=True):
    """The bytes the fused sum of n terms moves per element of its block, charged at a measured
    rate (model.h fusedSumMovedBytes): with the own fp32 block, the n-1 encodings, its 4 and the
    store's 4; without (the allgather's), the n encodings and the store's 4; past 16 terms the
    accumulator's 8 by each launch after the first."""
    return ((n - 1) * code + 8 if own else n * code + 4) + 8 * (fused_sum_launches(n) - 1)


def fused_sum_launches(n):
    """Launches of a fused sum of n terms (model.h fusedSumLaunches): 16 terms, then the
    accumulator and up to 15 more a launch."""
    return 1 + math.ceil(max(0, n - 16) / 15)


def owner_sum_us(n, b, c, fused, code):
    """The owner's sum of a block of b elements over n terms at the costs c (model.cc
    ownerSum): fused, fused_sum_moved_bytes at the measured sum_per_byte where the costs have
    it, else a decode overwrite and fused_sum_bytes at the copy's rate; else a decode, n-2
    decode-accumulates and the own block added (12 bytes)."""
    if fused and c.get("sum_per_byte", 0) > 0:
        return b * fused_sum_moved_bytes(n, code) * c["sum_per_byte"]
    if fused:
        return b * c["decode"] + b * fused_sum_bytes(n, code) * c["elementwise_per_byte"]
    return (b * c["decode"] + max(0, n - 2) * b * c["decode_acc"]
            + 12 * b * c["elementwise_per_byte"])


def kernel_work(algo, n, e, residual=True, convert=False, local=1, middle="twoshot", piped=False,
                padded=False, fused=True, code=None, state=None):
    """Per element of the buffer (of the output for the reduce-scatter), what one rank runs
    (on the unfused sum, one other than rank 0), read off plugin/algorithms/: encodes of the
    input type, of fp32 sums, the owners' re-encodes, decodes overwrite and accumulate,
    elementwise bytes. fused: a warp bucket, where the output's decodes convert in the kernel
    and the owner's sum is one kernel reading code (code_bytes) bytes an element a peer.
    state: the call holds a buffer's state (error feedback's residual, or the owner residual
    of two-shot, the ring, a hierarchy with either in the middle; default: residual), and ends
    with the non-finite check (collective.cc discardStateIfNonFinite): the output read once
    more, e bytes an element of it, unless the kernels that store the output set its flag
    (check_folded)."""
    if state is None:
        state = residual
    R = 4 if residual else 0
    w = dict.fromkeys(KINDS + ["elementwise_bytes"] + SUM_WORK, 0.0)
    out = 4 + e if convert else 0  # fp32 scratch -> output type
    # Two-shot's and the ring's decodes into the output convert in the kernel on a warp
    # bucket (fused): no conversion pass; nor after the flat reduce-scatter's fused sum,
    # which stores the output type itself (the hierarchical one's middle sums into fp32).
    out_dec = 0 if fused else out

    def scatter_sum(n, e, b):
        # n-1 blocks encoded; own block toFloat (reads e + residual, writes 4), residual
        # zeroed; the owner's sum: fused, one kernel (a decode's base and fused_sum_bytes);
        # else rank 0's block decoded overwrite, n-2 accumulated, the own block added.
        w["encode"] += (n - 1) * b
        w["elementwise_bytes"] += b * (e + R + 4) + b * R
        w["decode"] += b
        if fused:
            w["elementwise_bytes"] += b * fused_sum_bytes(n, code)
            w["sum_decode"] += b
            w["sum_copy_bytes"] += b * fused_sum_bytes(n, code)
            w["sum_bytes"] += b * fused_sum_moved_bytes(n, code)
        else:
            w["decode_acc"] += (n - 2) * b
            w["elementwise_bytes"] += 12 * b

    if algo == "twoshot":
        scatter_sum(n, e, 1 / n)
        w["owner_encode"] += 1 / n
        w["decode_out"] += 1
        w["elementwise_bytes"] += out_dec
    elif algo == "ring":
        # Own chunk encoded; each of n-1 hops: decode overwrite + toFloat(x, addend y);
        # fp32 re-encode on n-2 hops; the last adds and zeroes the residual, owner encodes.
        w["encode"] += 1 / n
        w["decode"] += (n - 1) / n
        w["decode_out"] += 1
        w["elementwise_bytes"] += (n - 1) * (e + 8) / n + (16 if residual else 0) / n + out_dec
        w["encode_f32"] += (n - 2) / n
        w["owner_encode"] += 1 / n
    elif algo == "allgather":
        # The N decodes summed (Backend::qsgdSum): fused, one kernel converting as it
        # stores; else N-1 decode-accumulates and a conversion unless an fp32 Sum.
        w["encode"] += 1
        w["decode"] += 1
        if fused:
            copy = (n - 1) * code + 8 * (fused_sum_launches(n) - 1)
            w["elementwise_bytes"] += copy
            w["sum_decode"] += 1
            w["sum_copy_bytes"] += copy
            w["sum_bytes"] += fused_sum_moved_bytes(n, code, own=False)
        else:
            w["decode_acc"] += n - 1
            w["elementwise_bytes"] += out
    elif algo == "hier_reducescatter":
        k = n // local
        scatter_sum(k, 4, 1)  # the k node sums, fp32
        w["encode_f32"], w["encode"] = w["encode"], 0.0
        w["elementwise_bytes"] += n * (e + 4) + out  # all N blocks widened, one conversion
        if piped:  # HierRsPipe: each piece's k node sums copied to the middle's input
            w["elementwise_bytes"] += 8 * k
    elif algo == "reducescatter":
        scatter_sum(n, e, 1)
        w["elementwise_bytes"] += out_dec
    elif algo == "hier":
        w.update(hier_middle_work(middle, n, local, residual, fused, code))
        # Widened unless an fp32 buffer of whole shards; the shard converted.
        # Widened to fp32 blocks unless an fp32 buffer of equal shards (padded: not).
        w["elementwise_bytes"] += (0 if e == 4 and not piped and not padded else e + 4) + \
            (4 + e) / local
        if piped:  # HierPipe: the reduced shard staged, the gathered blocks copied out
            w["elementwise_bytes"] += 8 / local + 2 * e
    if state and not check_folded(algo, fused):  # the non-finite check's pass over the output
        w["elementwise_bytes"] += e
    return w


# The algorithms whose output is stored by kernels that set the non-finite check's flag as
# they store, on a warp bucket (Algorithm::flagsOutput; model.cc checkFolded): two-shot's and
# the ring's final decodes, the allgather's and the flat reduce-scatter's sums.
FLAGGING_ALGOS = ("twoshot", "ring", "allgather", "reducescatter")


def check_folded(algo, fused):
    """Whether the non-finite check costs no pass of its own (model.cc checkFolded)."""
    return fused and algo in FLAGGING_ALGOS


def row_check_folded(r):
    """check_folded for a gradcomp_perf row: QSGD (the sparse reduce-scatter's rows are
    "reducescatter" too) on the row's algorithm and bucket."""
    return r.get("method") == "qsgd" and check_folded(r.get("algo"), warp_bucket(r["bucket"]))


def hier_middle_work(middle, n, local, residual=True, fused=True, code=None):
    """The part of a hierarchy's work its middle runs (model.cc hierMiddleWork): the middle
    algorithm on the fp32 shard among the k = n / local nodes, summed in place, per element
    of the buffer (its work / local), every encode an fp32 one."""
    m = kernel_work(middle, n // local, 4, residual, fused=fused, code=code, state=False)
    w = {key: v / local for key, v in m.items()}
    w["encode_f32"], w["encode"] = w["encode_f32"] + w["encode"], 0.0
    return w


def kernel_total(w, costs, count):
    """kernelUs: each kernel's work at its cost; the fused owner's sums (the sum_* work) at the
    measured sum_per_byte where the costs have it, in place of their estimate's decodes and
    copy-rate bytes (model.cc kernelUs)."""
    measured = costs.get("sum_per_byte", 0) > 0
    ws = dict(w)
    if measured:
        ws["decode"] = w.get("decode", 0) - w.get("sum_decode", 0)
        ws["elementwise_bytes"] = w["elementwise_bytes"] - w.get("sum_copy_bytes", 0)
    return count * (sum(ws.get(k, 0) * costs.get(k, 0) for k in KINDS + SPARSE_KINDS)
                    + ws["elementwise_bytes"] * costs["elementwise_per_byte"]
                    + (w.get("sum_bytes", 0) * costs["sum_per_byte"] if measured else 0))


def check_us(count, e, costs, folded=False):
    """The non-finite check's pass (discardStateIfNonFinite) over an output of count elements
    of e bytes at the copy's rate: kernel_work charges it (state), and a pipelined schedule
    runs it once after the pieces (model.cc checkUs). folded (check_folded): none."""
    return 0.0 if folded else count * e * (costs or {}).get("elementwise_per_byte", 0)


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def float_decimal(v):
    """sparse::floatDecimal: the shortest decimal (1 to 9 digits) that rounds to float v."""
    if not v > 0 or v != f32(v):
        return v
    e = math.floor(math.log10(v))
    for digits in range(1, 10):
        scale = 10.0 ** (digits - 1 - e)
        x = v * scale
        if x - math.floor(x) == 0.5:
            continue  # halfway: v has one more digit (and Python's round() is half-even)
        d = round(x) / scale
        if f32(d) == v:
            return d
    return v


def ceil_mul(a, n):
    """sparse::ceilMul: ceil(a * n) in double, a product within 1e-12 of an integer is it."""
    x = a * n
    c = int(x)
    return c + 1 if c < x and x - c > x * 1e-12 else c


def sparse_slots(n, density, oversample=2.0, exact=False):
    """kmax (k when exact) of sparse::makePlan, from the config's floats (as decimals)."""
    d = float_decimal(f32(density))
    k = min(max(ceil_mul(d, n), 1), n)
    if exact:
        return k
    return min(max(ceil_mul(float_decimal(f32(oversample)) * d, n), k), n)


def sparse_work(method, nranks, e, slots_per_elem, vb=4, residual=True, convert=False,
                momentum=False, clip=False, mask=False, dense=False, state=None):
    """Bytes per element (and selector passes) of one rank's sparse call, read off
    plugin/algorithms/sparse.cc and kernels/sparse.cu (docs/benchmark.md)."""
    s, n = slots_per_elem, nranks
    b = e + 4 + (8 if residual else 0) + (8 if momentum else 0) + (e if clip else 0)  # accumulate
    w = dict.fromkeys(SPARSE_KINDS, 0.0)
    if dense:
        b += (12 if residual else 8) + (4 if mask else 0)  # settle(clear)
    elif method == "randk":
        w["nonfinite_flag"] = 1
        b += 4 * s + 16 * s + 8 * s + 4 + 16 * s  # draw, gather, apply the flag, zero, add
    else:
        w["select"] = 1
        w["check_lists"] = n * s  # the N received lists' indices
        b += s * (12 + vb + (4 if mask else 0))  # commit
        b += 4 + n * s * (12 + vb)  # zero, N scatter-adds
    if residual and not dense:
        b += 8  # settle
    if convert:
        b += 4 + e
    if residual if state is None else state:
        b += e  # the non-finite check's pass over the output (the residual is state)
    w["elementwise_bytes"] = b
    return w


def sparse_rs_work(method, nranks, e, s, vb=4, residual=True, convert=False, momentum=False,
                   clip=False, mask=False, dense=False):
    """Per element of the output block, one rank's flat sparse reduce-scatter, read off
    plugin/algorithms/sparse_reduce_scatter.cc (docs/benchmark.md)."""
    n, p, R = nranks, nranks - 1, 8 if residual else 0
    w = dict.fromkeys(SPARSE_KINDS, 0.0)
    b = n * (e + 4 + R + (8 if momentum else 0) + (e if clip else 0))  # accumulate, N blocks
    if method == "randk":
        w["nonfinite_flag"] = p
        b += p * (4 * s + 16 * s + R) + 4 * s + p * (8 * s + 16 * s)  # draw, gather, settle; own
        # draw, the flags applied, the scatter-adds
    elif dense:
        b += p * (8 + (12 if residual else 8) + (4 if mask else 0)) + p * 12  # copy, settle; add
    else:
        w["select"] = p
        w["check_lists"] = p * s
        b += p * (s * (12 + vb + (4 if mask else 0)) + R) + p * s * (12 + vb)  # commit, settle;
        # the scatter-adds
    b += 4 + 12 + (12 if residual else 8) + (4 + e if convert else 0)  # zero, own, settle, out
    b += e if residual else 0  # the non-finite check's pass over the output
    w["elementwise_bytes"] = b
    return w


def sparse_steps(method, nranks, dense=False):
    return 2 * (nranks - 1) if dense or method == "randk" else 1


def check_sparse_row(tag, r, costs, method, kind, lat=10.0):
    """A flat sparse row's work, costs, kernel_us and modeled times against the
    recomputation from its settings `kind` (slots, value_bytes, residual, momentum, clip,
    mask, dense) and the rates `costs` (select, elementwise_per_byte)."""
    e = TYPE_BYTES[r["dtype"]]
    got_kind = r.get("sparse_kind") or {}
    expect(all(got_kind.get(k) == v for k, v in kind.items()),
           "%s: sparse settings %s vs %s" % (tag, got_kind, kind))
    convert = r["dtype"] != "float" or r.get("redop") == "avg"
    rs = r.get("collective") == "reduce_scatter"
    w = (sparse_rs_work if rs else sparse_work)(
        method, r["nranks"], e, kind["slots"] / r["count"], kind["value_bytes"], kind["residual"],
        convert, kind["momentum"], kind["clip"], kind["mask"], kind["dense"])
    got = r.get("kernel_work") or {}
    expect(all(close(got.get(k), v) for k, v in w.items()),
           "%s: kernel work %s vs %s" % (tag, got, w))
    if costs is not None:
        gc = r.get("kernel_costs") or {}
        expect(all(close(gc.get(k), v) for k, v in costs.items()),
               "%s: kernel costs %s vs %s" % (tag, gc, costs))
    else:
        costs = r.get("kernel_costs") or {}
    total = kernel_total(w, costs, r["count"])
    expect(close(r["kernel_us"], total, 1e-6),
           "%s: kernel_us %s vs %s" % (tag, r["kernel_us"], total))
    # A reduce-scatter's non-finite check (the state: kind's residual) ORs its flag: a step.
    steps = 1 + (1 if kind["residual"] else 0) if rs else \
        sparse_steps(method, r["nranks"], kind["dense"])
    expect(r["latency_steps"] == steps, "%s: latency steps %s vs %s" % (tag, r["latency_steps"],
                                                                       steps))
    for m in r["model"]:
        g = m["link_gbps"]
        ours = total + r["wire_bytes"] * 8 / (g * 1e3) + steps * lat
        expect(close(m["time_us"], ours, 1e-6),
               "%s: modeled time at %g: %s vs %s" % (tag, g, m["time_us"], ours))


def check_kernels(tag, r, kdoc, bits, bucket, algo, n, local=1, middle="twoshot", costs=None,
                  residual=True, state=None):
    """The row's kernel work, costs and kernel_us against the recomputation (state: as
    kernel_work's)."""
    e = TYPE_BYTES[r["dtype"]]
    padded = algo == "hier" and first_part(r["count"], local, bucket) * local != r["count"]
    convert = r["dtype"] != "float" or r.get("redop") == "avg"
    w = kernel_work(algo, n, e, residual, convert, local, middle,
                    r.get("pieces", 1) > 1, padded, warp_bucket(bucket),
                    code_bytes(r["count"], bits, bucket), state)
    got = r.get("kernel_work") or {}
    expect(all(close(got.get(k), v) for k, v in w.items()),
           "%s: kernel work %s vs %s" % (tag, got, w))
    if costs is None and kdoc:
        costs = report_costs(kdoc, r, bits, bucket)
    if costs is None:
        return
    gc = r.get("kernel_costs") or {}
    expect(all(close(gc.get(k), v) for k, v in costs.items()),
           "%s: kernel costs %s vs %s" % (tag, gc, costs))
    total = kernel_total(w, costs, r["count"])
    expect(close(r["kernel_us"], total, 1e-6),
           "%s: kernel_us %s vs %s" % (tag, r["kernel_us"], total))
    expect(close(r["encode_us"], costs["encode"] * r["count"]) and
           close(r["decode_us"], costs["decode_acc"] * r["count"]),
           "%s: encode_us and decode_us are the encode and decode-accumulate" % tag)


def encoded(n, bits, bucket):
    return 4 * math.ceil(n / bucket) + 4 * math.ceil(n * bits / 32)


TIMED = (1 << 18, 1 << 23)  # the counts GRADCOMP_AUTO times (plugin/autotune.h AutoState)


def auto_lines(nccl, comp, e, count, timed=TIMED):
    """GRADCOMP_AUTO's lines (plugin/autotune.cc autoRange): through each path's times at the
    two timed fp32 counts, NCCL's slope scaled by the element size e / 4 (its bytes). Their
    predictions at count: (NCCL's, the compressed path's)."""
    n0, dn = timed[0], timed[1] - timed[0]
    b_n, b_c = (nccl[1] - nccl[0]) / dn, (comp[1] - comp[0]) / dn
    return nccl[0] - b_n * n0 + b_n * e / 4 * count, comp[0] - b_c * n0 + b_c * count


def auto_compresses(nccl, comp, e, count, timed=TIMED):
    """The rule's choice (autoRange; model.h autoCompresses): compress where the compressed
    line is below NCCL's, but never on a win the lines find only below the smaller timed
    count."""
    n0, dn = timed[0], timed[1] - timed[0]
    b_n, b_c = (nccl[1] - nccl[0]) / dn, (comp[1] - comp[0]) / dn
    s, k = b_n * e / 4 - b_c, (nccl[0] - b_n * n0) - (comp[0] - b_c * n0)
    if s > 0:
        return count > -k / s
    if s < 0:
        hi = math.ceil(k / -s)
        return hi > n0 and count < hi
    return k > 0


def project_point(r, kdoc, bits, bucket, pipe_bytes, k, g, L, count, e_in, convert, code,
                  intra_gbps=3600.0, lat=10.0, fp32=False):
    """One projection point recomputed from the formulas of docs/benchmark.md ("Nodes"), for
    `count` elements of e_in bytes (the row's, or GRADCOMP_AUTO's timed fp32 counts), the
    kernels at the row's report rates (fp32: an fp32 call's, as the library times them for
    GRADCOMP_AUTO): a dict of NCCL's, flat's and hier's bytes and times, `comp`, the
    library's compressed path (hier|P), and `piece_bytes`, the bytes (as fp32) one of its
    pieces covers as the library cuts it (0: one piece)."""
    import model_check  # its hier_middle: the algorithm the library runs on n ranks or nodes
    label = r.get("label") or ""
    fused = warp_bucket(bucket)
    curve = lambda *launches: curve_costs(kdoc, r, bits, bucket, *launches, fp32=fp32)  # noqa: E731
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    n, nic, size = k * g, L / g, count * e_in
    x = {"n": n}
    ring = 2 * (n - 1) / n * size
    x["nccl_intra"], x["nccl_inter"] = (ring * (g - 1) / g, ring / g) if k > 1 else (ring, 0)
    x["nccl"] = max(us(x["nccl_intra"], intra_gbps), us(x["nccl_inter"], nic)) + 2 * (n - 1) * lat
    e = encoded(count, bits, bucket)
    flat_algo = x["flat_algo"] = model_check.hier_middle(label, n)
    if flat_algo == "allgather":  # every rank's whole encoding to each peer, one step
        flat_intra, flat_inter, flat_steps = e * (g - 1), e * (n - g), 1
        flat_link = max(us(flat_intra, intra_gbps), us(flat_inter, nic))
    elif flat_algo == "ring":
        # N-1 hops of E/N to the next rank, one after another (each the slowest link a hop
        # crosses), then the reduced chunk's E/N to every peer at once; N steps. The bytes
        # of the rank last on its node, whose hops all leave it.
        hop = e / n
        flat_intra, flat_inter = ((g - 1) * hop, (2 * n - 1 - g) * hop) if k > 1 else \
            (2 * (n - 1) * hop, 0)
        flat_steps = n
        hop_us = max(us(hop, intra_gbps) if g > 1 else 0, us(hop, nic) if k > 1 else 0)
        flat_link = (n - 1) * hop_us + max(us((g - 1) * hop, intra_gbps), us((n - g) * hop, nic))
    else:
        flat_intra, flat_inter, flat_steps = 2 * e * (g - 1) / n, 2 * e * (n - g) / n, 2
        flat_link = max(us(flat_intra, intra_gbps), us(flat_inter, nic))
    x["flat_intra"], x["flat_inter"] = flat_intra, flat_inter
    # Each kernel at the rate of its launch size (curve_costs), as every figure below.
    flat_work = kernel_work(flat_algo, n, e_in, True, convert, fused=fused, code=code)
    x["flat_kernel"] = kernel_total(flat_work, curve(*flat_launches(flat_algo, count, n, bucket)),
                                    count)
    x["flat"] = x["flat_kernel"] + flat_link + flat_steps * lat
    if k < 2 or g < 2:
        # No hierarchy (gc::hierLayout: nodes of one GPU, or one node): the library runs the
        # flat algorithm, and hier's figures are flat's. It cuts a flat two-shot or ring at
        # --model-pipe as it cuts the call itself (flat_pieces), never the allgather:
        # two-shot on its two streams, each exchange half the flat bytes a piece over both
        # link classes at once; the ring in its rows' two-stage pipeline, its N steps a piece.
        pieces = flat_pieces(count, bucket, n, pipe_bytes) if flat_algo != "allgather" else 1
        piece_bytes = (piece_bytes_used(first_part(count, n, bucket), bucket, n, pipe_bytes)
                       if pieces > 1 else 0)
        piped, piped_kernel = x["flat"], x["flat_kernel"]
        if pieces > 1:
            pc = curve(*flat_launches(flat_algo, count, n, bucket, pieces))
            piped_kernel = kernel_total(flat_work, pc, count)
            wire = max(us(flat_intra / pieces, intra_gbps), us(flat_inter / pieces, nic))
            chk = check_us(count, e_in, pc, check_folded(flat_algo, fused))  # once, after
            if flat_algo == "ring":
                kp, wp = (piped_kernel - chk) / pieces, wire + flat_steps * lat
                piped = kp + wp + (pieces - 1) * max(kp, wp) + chk
            else:
                piped = two_shot_streams(dict(r, count=count), n, pieces, None, lat, pc,
                                         wire / 2 + lat, e_in, convert, code) + chk
        x.update(hier_intra=flat_intra, hier_inter=flat_inter, kernel=x["flat_kernel"],
                 hier=x["flat"], pieces=pieces, piped=piped, piped_kernel=piped_kernel,
                 comp=piped, middle=None, piece_bytes=piece_bytes)
        return x
    middle = x["middle"] = model_check.hier_middle(label, k)
    shard = -(-count // g)
    es = encoded(shard, bits, bucket)
    # The NVLink reduce-scatter moves fp32, the allgather the buffer's type (hier.cc).
    hier_intra = (g - 1) / g * count * (4 + e_in)
    hier_inter = (k - 1) * es if middle == "allgather" else 2 * (k - 1) / k * es
    mid_steps = {"twoshot": 2, "allgather": 1, "ring": k}[middle]
    padded = first_part(count, g, bucket) * g != count
    costs = curve(*hier_launches(count, n, g, middle, bucket))
    kernel = kernel_total(kernel_work("hier", n, e_in, True, convert, g, middle,
                                      padded=padded, fused=fused, code=code), costs, count)
    hier = (kernel + us(hier_intra, intra_gbps) + us(hier_inter, nic)
            + (2 * (g - 1) + mid_steps) * lat)
    # Pipelined hier at --model-pipe bytes: pieces as the library cuts the longest shard's
    # chunks among the k nodes, each piece paying its steps. A two-shot middle pipelines the
    # hierarchy, three streams; a ring middle is cut into its own pieces (the same count)
    # inside an unpipelined hierarchy; an allgather middle (on `auto` across 2 nodes) is one
    # piece.
    pieces = hier_pieces(count, bucket, k, g, pipe_bytes) if middle != "allgather" else 1
    piece_bytes = (piece_bytes_used(first_part(first_part(count, g, bucket), k, bucket),
                                    bucket, k, pipe_bytes) if pieces > 1 else 0)
    # The middle stage's latency: what the unpipelined hier time above has beyond its
    # kernels, bytes and two NVLink rings.
    middle_lat = (hier - kernel - us(hier_intra, intra_gbps) - us(hier_inter, nic)
                  - 2 * (g - 1) * lat)
    # Cut into pieces, the pipelined path's kernels (every piece widened, staged, copied out).
    pc = curve(*hier_launches(count, n, g, middle, bucket, pieces))
    piped_kernel = kernel_total(kernel_work("hier", n, e_in, True, convert, g, middle,
                                            pieces > 1, padded, fused, code), pc, count)
    st = None
    if pieces > 1 and middle == "ring":
        # The ring's kernels at its pieces' launches, in the two-stage pipeline of kernels
        # and its inter-node bytes (k steps a piece); the rest of hier's work (widening,
        # conversion, the non-finite check) at the unpipelined launches; the whole NVLink
        # reduce-scatter and allgather; one after another.
        mw = hier_middle_work("ring", n, g, True, fused, code)
        ring = kernel_total(mw, pc, count)
        rest = kernel - kernel_total(mw, costs, count)
        piped_kernel = ring + rest
        kp, wp = ring / pieces, us(hier_inter / pieces, nic) + k * lat
        piped = (rest + us(hier_intra, intra_gbps) + 2 * (g - 1) * lat
                 + kp + wp + (pieces - 1) * max(kp, wp))
    elif pieces > 1:
        st = hier_stages(count, e_in, es, pc, k, g, L, intra_gbps, lat, pieces, fused, code)
        piped = hier_three_streams(st, round(pieces)) + check_us(count, e_in, pc)
    else:
        piped = hier_pipelined(piped_kernel, hier_intra, hier_inter, intra_gbps, nic, g,
                               middle_lat, lat, pieces, e_in)
    x.update(hier_intra=hier_intra, hier_inter=hier_inter, kernel=kernel, hier=hier,
             pieces=pieces, piped=piped, piped_kernel=piped_kernel, comp=piped, stages=st,
             piece_bytes=piece_bytes)
    return x


def check_projection(tag, r, kdoc, bits, bucket, pipe_bytes, intra_gbps=3600.0, lat=10.0):
    """Every projection point against the formulas, written here from docs/benchmark.md
    (project_point). The algorithms are those the library runs (pickDenseAlgorithm): on `auto`
    an allgather flat on 2 ranks and as the hierarchy's middle across 2 nodes (one encode, the
    sum of both encodings, one latency step, (k-1) E(S/G) across nodes), two-shot above; the
    ring where -a names it, flat with its N-1 hops and N steps, as the middle cut into its own
    pieces. Where there is no hierarchy, hier|P is the flat two-shot or ring cut at pipe_bytes
    as the library cuts it. Auto is GRADCOMP_AUTO's rule re-derived from the two paths' times
    at its two timed counts, fp32 calls."""
    count = r["count"]
    e_in, convert = TYPE_BYTES[r["dtype"]], r["dtype"] != "float"
    code = code_bytes(count, bits, bucket)
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    seen = set()
    for p in r["projection"]:
        k, g, L = p["nodes"], p["local"], p["node_gbps"]
        seen.add((k, g, L))
        t = "%s %dx%d@%g" % (tag, k, g, L)
        x = project_point(r, kdoc, bits, bucket, pipe_bytes, k, g, L, count, e_in, convert, code,
                          intra_gbps, lat)
        nccl, flat, flat_kernel = x["nccl"], x["flat"], x["flat_kernel"]
        flat_intra, flat_inter = x["flat_intra"], x["flat_inter"]
        pieces, piped, piped_kernel = x["pieces"], x["piped"], x["piped_kernel"]
        expect(close(p["nccl_inter_bytes"], x["nccl_inter"]) and
               close(p["nccl_intra_bytes"], x["nccl_intra"]),
               "%s: NCCL ring bytes per link class" % t)
        expect(close(p["nccl_time_us"], nccl), "%s: NCCL time %s vs %s" % (t, p["nccl_time_us"], nccl))
        expect(close(p["flat_intra_bytes"], flat_intra) and close(p["flat_inter_bytes"], flat_inter),
               "%s: flat %s bytes %s, %s vs %s, %s" % (t, x["flat_algo"], p["flat_intra_bytes"],
                                                       p["flat_inter_bytes"], flat_intra,
                                                       flat_inter))
        expect(close(p["flat_kernel_us"], flat_kernel) and close(p["flat_time_us"], flat),
               "%s: flat %s time %s (K %s) vs %s (K %s)"
               % (t, x["flat_algo"], p["flat_time_us"], p["flat_kernel_us"], flat, flat_kernel))
        if x["middle"] is None:
            expect(close(p["hier_intra_bytes"], flat_intra) and
                   close(p["hier_inter_bytes"], flat_inter) and
                   close(p["hier_kernel_us"], flat_kernel) and close(p["hier_time_us"], flat) and
                   p["hier_pieces"] == pieces and p["hier_pipeline_bytes"] == x["piece_bytes"] and
                   close(p["hier_pipelined_kernel_us"], piped_kernel) and
                   close(p["hier_pipelined_time_us"], piped),
                   "%s: no hierarchy: hier's figures are flat's, cut as the library cuts a flat "
                   "%s (hier %s us, P = %s, hier|P %s us; flat %s us, P = %s, pipelined %s us)"
                   % (t, x["flat_algo"], p["hier_time_us"], p["hier_pieces"],
                      p["hier_pipelined_time_us"], flat, pieces, piped))
        else:
            middle, kernel, hier = x["middle"], x["kernel"], x["hier"]
            hier_intra, hier_inter = x["hier_intra"], x["hier_inter"]
            expect(close(p["hier_inter_bytes"], hier_inter),
                   "%s: hier inter-node bytes %s vs %s" % (t, p["hier_inter_bytes"], hier_inter))
            expect(close(p["hier_intra_bytes"], hier_intra),
                   "%s: hier NVLink bytes (G-1)/G n (4 + T) %s vs %s" % (t, p["hier_intra_bytes"],
                                                                         hier_intra))
            expect(close(p["hier_kernel_us"], kernel),
                   "%s: hier kernels (a %s middle) %s vs %s" % (t, middle, p["hier_kernel_us"],
                                                                kernel))
            expect(close(p["hier_time_us"], hier),
                   "%s: hier time %s vs %s" % (t, p["hier_time_us"], hier))
            expect(close(p["hier_speedup"], nccl / hier), "%s: hier speedup" % t)
            expect(close(p["inter_bytes_ratio_flat_vs_hier"], flat_inter / hier_inter),
                   "%s: inter-node bytes ratio" % t)
            expect(p["hier_pieces"] == pieces,
                   "%s: hier pieces %s vs %s" % (t, p["hier_pieces"], pieces))
            # The piece the library cuts (above --model-pipe where it rounds the piece up to
            # whole buckets or grows it to at most 1024 pieces): none (0) in one piece.
            expect(p["hier_pipeline_bytes"] == x["piece_bytes"],
                   "%s: hier_pipeline_bytes %s at %s pieces (--model-pipe %s: the library's "
                   "piece %s)" % (t, p["hier_pipeline_bytes"], pieces, pipe_bytes,
                                  x["piece_bytes"]))
            # Pipelined, the hierarchy widens, stages and copies out every piece (a ring
            # middle's pieces leave the in-node stages whole).
            expect(close(p["hier_pipelined_kernel_us"], piped_kernel) and
                   (pieces == 1 or middle == "ring" or piped_kernel > kernel),
                   "%s: pipelined hier kernels %s vs %s" % (t, p["hier_pipelined_kernel_us"],
                                                             piped_kernel))
            expect(close(p["hier_pipelined_time_us"], piped),
                   "%s: pipelined hier time %s vs %s" % (t, p["hier_pipelined_time_us"], piped))
            expect(pieces > 1 or close(piped, hier), "%s: one piece is the unpipelined hier" % t)
            # Never shorter than any stream's own work: the node stream runs every piece's
            # reduce-scatter and allgather, the compute stream every kernel, the comm stream
            # both exchanges of every piece.
            st = x["stages"]
            if st is not None:
                own = max(pieces * (st["S"] + st["A"]), pieces * sum(st[y] for y in COMPUTE),
                          pieces * 2 * st["X"])
                expect(p["hier_pipelined_time_us"] >= (1 - 1e-9) * own,
                       "%s: pipelined hier %s us is shorter than a stream's own %s us"
                       % (t, p["hier_pipelined_time_us"], own))
            elif pieces > 1:
                # A ring middle's pieces: never shorter than its links' own time, the whole
                # NVLink stages, the inter-node bytes and k steps for every piece.
                links = (us(hier_intra, intra_gbps) + 2 * (g - 1) * lat + us(hier_inter, L / g)
                         + pieces * k * lat)
                expect(p["hier_pipelined_time_us"] >= (1 - 1e-9) * links,
                       "%s: a ring middle in %s pieces, %s us, is shorter than its links' %s us"
                       % (t, pieces, p["hier_pipelined_time_us"], links))
        # Auto takes the compressed call (hier|P: hier's pipelined on >= 2 nodes of >= 2
        # GPUs, else the flat algorithm's, pipelined where cut) or NCCL by the library's rule:
        # the lines through both paths' times at the two counts it times (fp32), re-derived
        # here. The lines can mispredict, so its pick need not be the faster: where it follows
        # them its regret is at most what they mispredict by at this count; it departs from
        # them only to pass a call below the smaller timed count through. The timed calls
        # are fp32 Sums whatever the row's type (autotune.cc measure): their kernels at the
        # fp32 rates, their codes those of the timed counts.
        timed = [project_point(r, kdoc, bits, bucket, pipe_bytes, k, g, L, c, 4, False,
                               code_bytes(c, bits, bucket), intra_gbps, lat, fp32=True)
                 for c in TIMED]
        tn, tc = [y["nccl"] for y in timed], [y["comp"] for y in timed]
        compress = auto_compresses(tn, tc, e_in, count)
        comp = x["comp"]
        want = comp if compress else nccl
        expect(p.get("auto_choice") == ("compress" if compress else "nccl") and
               close(p["auto_time_us"], want),
               "%s: auto is GRADCOMP_AUTO's rule's choice, %s (%s us; compressed %s, NCCL %s "
               "us), got %s (%s us)" % (t, "compress" if compress else "nccl", want, comp, nccl,
                                        p.get("auto_choice"), p["auto_time_us"]))
        line_n, line_c = auto_lines(tn, tc, e_in, count)
        follows = (line_c < line_n) == compress
        expect(follows or (not compress and count < TIMED[0]),
               "%s: auto departs from its lines (NCCL %s us, compressed %s us) only to pass a "
               "call below %s elements through (%s elements: %s)"
               % (t, line_n, line_c, TIMED[0], count, p.get("auto_choice")))
        expect(not follows or want - min(comp, nccl) <=
               (1 + 1e-9) * (abs(comp - line_c) + abs(nccl - line_n)),
               "%s: auto's regret %s us within its lines' misprediction %s + %s us"
               % (t, want - min(comp, nccl), abs(comp - line_c), abs(nccl - line_n)))
        expect(close(p["auto_speedup"], nccl / want), "%s: auto's speedup" % t)
    return seen


def two_shot_streams(r, nranks, pieces, gbps, lat, costs=None, exchange=None, e=None,
                     convert=None, code=None):
    """Pipelined two-shot on its two streams (docs/benchmark.md): per piece of a chunk (b =
    count / N / K elements) the compute stream's encode E ((N-1) b encodes, the own chunk
    widened: e + 2r + 4 bytes an element), reduce R (the owner's sum, owner_sum_us: on a warp
    bucket one fused kernel, else a decode, N-2 decode-accumulates and 12 bytes; the owner's
    re-encode) and decode D (N decodes, and the conversion's 4 + e bytes
    where the output is not fp32); the comm stream's X and G, each half the wire and one
    step. E_q X_q, then R_{q-1} G_{q-1}, then D_{q-2}. `costs` (else the row's kernel_costs)
    and `exchange`, the time of one X or G (else half the row's wire a piece at gbps, and
    the step), for a projection's flat two-shot; e, convert and code (else the row's type
    bytes, whether its output converts, its code_bytes) for another count's."""
    c = costs or r["kernel_costs"]
    e = TYPE_BYTES[r["dtype"]] if e is None else e
    b = r["count"] / nranks / pieces
    ew = c["elementwise_per_byte"]
    enc = (nranks - 1) * b * c["encode"] + b * (e + 4 + 4 + 4) * ew
    code = code_bytes(r["count"], r["bits"], r["bucket"]) if code is None else code
    red = owner_sum_us(nranks, b, c, warp_bucket(r["bucket"]), code) + b * c["owner_encode"]
    if convert is None:
        convert = r["dtype"] != "float" or r.get("redop") == "avg"
    convert = convert and not warp_bucket(r["bucket"])
    dec = nranks * b * c["decode_out"] + (nranks * b * (4 + e) * ew if convert else 0)
    x = exchange if exchange is not None else r["wire_bytes"] / 2 / pieces * 8 / (gbps * 1e3) + lat
    compute = comm = 0.0
    xd, gd = {}, {}
    for q in range(pieces + 2):
        if q < pieces:
            compute += enc
            comm = max(comm, compute) + x
            xd[q] = comm
        if 1 <= q <= pieces:
            compute = max(compute, xd[q - 1]) + red
            comm = max(comm, compute) + x
            gd[q - 1] = comm
        if 2 <= q <= pieces + 1:
            compute = max(compute, gd[q - 2]) + dec
    return compute


def check_pipelined_model(tag, r, pieces, steps, lat=10.0, two_shot_ranks=0, one_node=None,
                          state=True):
    """A flat row's model at every link: the unpipelined time (kernels + wire + steps
    latencies) and the pipelined one: for two-shot its two streams stage by stage
    (two_shot_streams, two_shot_ranks = N), else the two-stage pipeline of
    docs/benchmark.md, k = kernel / K and w = wire / K / L + steps * a, time
    k + w + (K-1) max(k, w). one_node: a row run with --local-size N on N ranks, one node,
    whose every byte goes over the in-node link at this rate, whatever the column's L.
    state: the call ends with the non-finite check, run once after the pieces (its pass and,
    a reduce-scatter's, its step; `steps` counts that step)."""
    chk = (check_us(r["count"], TYPE_BYTES[r["dtype"]], r.get("kernel_costs"),
                    row_check_folded(r)) if state else 0)
    chk_steps = 1 if state and r.get("collective") == "reduce_scatter" else 0
    for m in r["model"]:
        g = one_node or m["link_gbps"]
        ours = r["kernel_us"] + r["wire_bytes"] * 8 / (g * 1e3) + steps * lat
        expect(close(m["time_us"], ours, 1e-6), "%s: unpipelined model at %g" % (tag, g))
        k = (r["kernel_us"] - chk) / pieces
        w = r["wire_bytes"] / pieces * 8 / (g * 1e3) + (steps - chk_steps) * lat
        piped = k + w + (pieces - 1) * max(k, w) + chk + chk_steps * lat
        if two_shot_ranks:
            piped = two_shot_streams(r, two_shot_ranks, pieces, g, lat) + chk
        expect(close(m.get("pipelined_time_us"), piped, 1e-6),
               "%s: pipelined model at %g: %s vs %s" % (tag, g, m.get("pipelined_time_us"), piped))
        expect(close(m.get("pipelined_speedup"), m["nccl_time_us"] / piped, 1e-6),
               "%s: pipelined speedup at %g" % (tag, g))


MAX_PIECES = 1024  # gc::kMaxPieces (plugin/algorithms/algorithms.h)


def piece_of(length, bucket, n, pipe_bytes):
    """The library's piece rule (plugin/algorithms/common.cc splitPieces) for a longest chunk
    of `length` elements: ceil(pipe_bytes / 4 / n) elements rounded up to whole buckets, grown
    so that at most MAX_PIECES pieces cover the chunk; the piece's elements (length where one
    piece holds it)."""
    if pipe_bytes == 0 or length == 0:
        return length
    share = -(-(pipe_bytes // 4) // n)
    least = -(-(-(-length // MAX_PIECES)) // bucket) * bucket
    return min(max(max(1, -(-share // bucket)) * bucket, least), length)


def pieces_of(length, bucket, n, pipe_bytes):
    """The pieces of that rule: one where a piece holds the chunk."""
    piece = piece_of(length, bucket, n, pipe_bytes)
    return 1 if piece >= length else -(-length // piece)


def piece_bytes_used(length, bucket, n, pipe_bytes):
    """A row's piece_bytes_used: the bytes (as fp32, pipe_bytes's unit) one piece covers, its
    piece of each of the n chunks (piece_of) times n times 4; above pipe_bytes where the piece
    was rounded up to whole buckets or grown to MAX_PIECES; 0 in one piece."""
    piece = piece_of(length, bucket, n, pipe_bytes)
    return 0 if piece >= length else piece * n * 4


def flat_pieces(count, bucket, n, pipe_bytes):
    """Pieces of a flat two-shot or ring (twoshot.cc, ring.cc: splitPieces): the longest chunk
    among the n ranks cut as pieces_of says."""
    return pieces_of(first_part(count, n, bucket), bucket, n, pipe_bytes)


def first_part(n, parts, bucket):
    """splitAligned's first (longest) part: whole buckets, as even as they go."""
    units = -(-n // bucket)
    return min(n, -(-units // parts) * bucket)


def hier_pieces(count, bucket, k, g, pipe_bytes):
    """Pieces of a hier call: two-shot's on the longest shard among k nodes, every chunk cut
    into ceil(pipe_bytes / 4 / k) elements rounded up to whole buckets (pieces_of)."""
    if k < 2:
        return 1
    return pieces_of(first_part(first_part(count, g, bucket), k, bucket), bucket, k, pipe_bytes)


def hier_schedule(rs, ra, m, pieces):
    """The pipelined hierarchy's lanes (docs/benchmark.md, "Pipelined hierarchy"): the NVLink
    reduce-scatter S_q (rs) and allgather A_q (ra) of each piece on one node stream, in the
    library's issue order S0 S1 S2 A0 S3 A1 ..., the inter-node stage M_q after S_q and
    M_{q-1}, A_q after M_q; the call ends with the last A."""
    node, middle, mid_end = 0.0, 0.0, []
    for q in range(pieces + 2):
        if q < pieces:
            node += rs
            middle = max(middle, node) + m
            mid_end.append(middle)
        if 2 <= q < pieces + 2:
            node = max(node, mid_end[q - 2]) + ra
    return node


COMPUTE = ("widen", "copy_in", "E", "R", "D", "ff", "unpack")


def hier_stages(count, e, shard_encoded, costs, k, g, node_gbps, intra_gbps, lat, pieces,
                fused=True, code=None):
    """Per piece, the pipelined hierarchy's stages as docs/benchmark.md counts them: the
    compute stream's widening ((e + 4) bytes an element of the piece), copy-in of the reduced
    shard piece (8 bytes an element of it), the middle two-shot's encode, owner's reduce and
    decode (fp32, chunks of a k-th of the shard piece), conversion ((4 + e) bytes) and
    unpack (2e bytes an element of the piece); the node stream's fp32 reduce-scatter and
    buffer-type allgather over NVLink; the comm stream's two exchanges of the shard's
    encoding, each half of 2(k-1)/k of it."""
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    piece = count / pieces
    m = piece / g
    b = m / k
    ew = costs["elementwise_per_byte"]
    st = {"widen": piece * (e + 4) * ew, "copy_in": m * 8 * ew,
          "E": (k - 1) * b * costs["encode_f32"] + b * 16 * ew,
          "R": owner_sum_us(k, b, costs, fused, code) + b * costs["owner_encode"],
          "D": k * b * costs["decode_out"], "ff": m * (4 + e) * ew, "unpack": piece * 2 * e * ew}
    st["S"] = us((g - 1) / g * piece * 4, intra_gbps) + (g - 1) * lat
    st["A"] = us((g - 1) / g * piece * e, intra_gbps) + (g - 1) * lat
    st["X"] = us(2 * (k - 1) / k * shard_encoded / 2 / pieces, node_gbps / g) + lat
    return st


def hier_three_streams(st, pieces):
    """The library's issue order (plugin/algorithms/hier.cc HierPipe around two-shot's piece
    loop): S_{q+1} before piece q's copy-in; E, X, R, G, D of the middle; after step q+2 the
    conversion, A and the previous piece's unpack. Each stream runs its work in that order,
    each piece of work after what it needs."""
    compute = node = comm = 0.0
    s_done, a_done, x_done, g_done = {}, {}, {}, {}

    def reduce_piece(q):
        nonlocal compute, node
        compute += st["widen"]
        node = max(node, compute) + st["S"]
        s_done[q] = node

    def unpack(q):
        nonlocal compute
        compute = max(compute, a_done[q]) + st["unpack"]

    reduce_piece(0)
    for q in range(pieces + 2):
        if q < pieces:
            if q + 1 < pieces:
                reduce_piece(q + 1)
            compute = max(compute, s_done[q]) + st["copy_in"] + st["E"]
            comm = max(comm, compute) + st["X"]
            x_done[q] = comm
        if 1 <= q <= pieces:
            compute = max(compute, x_done[q - 1]) + st["R"]
            comm = max(comm, compute) + st["X"]
            g_done[q - 1] = comm
        if 2 <= q <= pieces + 1:
            compute = max(compute, g_done[q - 2]) + st["D"] + st["ff"]
            node = max(node, compute) + st["A"]
            a_done[q - 2] = node
            if q - 2 >= 1:
                unpack(q - 3)
    unpack(pieces - 1)
    return max(compute, node)


def hier_pipelined(kernel, intra, inter, intra_gbps, nic_gbps, g, middle_lat, lat, pieces, e):
    """Per piece: NVLink reduce-scatter rs, inter-node kernels and transfer m, NVLink allgather
    ra, scheduled as the library issues them (hier_schedule). The reduce-scatter moves fp32 and
    the allgather the buffer's type of e bytes (plugin/algorithms/hier.cc): of the NVLink
    bytes, 4 / (4 + e) and e / (4 + e) (bf16: 2/3 and 1/3)."""
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    rs = us(intra * 4 / (4 + e) / pieces, intra_gbps) + (g - 1) * lat
    ra = us(intra * e / (4 + e) / pieces, intra_gbps) + (g - 1) * lat
    mid = kernel / pieces + us(inter / pieces, nic_gbps) + middle_lat
    return hier_schedule(rs, ra, mid, max(1, round(pieces)))


def check_hier_rows(tag, rows, kdoc, nranks, local, middle, bits, intra_gbps=3600.0, lat=10.0,
                    pipe_bytes=0, bucket=512):
    """Rows run with --local-size L > 1: the per-row model of docs/benchmark.md with two link
    classes, each GPU's NIC at the column's rate; recomputed here from the row's own bytes."""
    k, g = nranks // local, local
    # The middle algorithm's latency steps (docs/benchmark.md's table).
    mid = {"twoshot": 2, "allgather": 1}[middle]
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    expect(len(rows) > 0, "%s: rows" % tag)
    for r in rows:
        t = "%s %s %d" % (tag, r["dtype"], r["size"])
        expect(r["algo"] == "hier", "%s: hier ran (got %s)" % (t, r["algo"]))
        expect(r["wrong"] == 0, "%s: no wrong elements" % t)
        inter, wire = r["inter_wire_bytes"], r["wire_bytes"]
        expect(inter is not None and 0 < inter < wire, "%s: 0 < inter-node bytes < wire bytes" % t)
        expect(r["kernels_measured"] and r.get("kernel_source") == "gpu_report",
               "%s: kernel times from the GPU report" % t)
        # The middle on the fp32 1/G shard among the k nodes, the widening and conversion.
        check_kernels(t, r, kdoc, bits, bucket, "hier", nranks, local, middle)
        steps = 2 * (g - 1) + mid
        expect(r["latency_steps"] == steps,
               "%s: latency steps %s vs 2(G-1) + %s's" % (t, r["latency_steps"], middle))
        expect([m["link_gbps"] for m in r["model"]] == [10, 25, 100, 400],
               "%s: default links" % t)
        for m in r["model"]:
            L = m["link_gbps"]  # each GPU's own NIC; the node has G of them
            ours = (r["kernel_us"] + us(wire - inter, intra_gbps) + us(inter, L) + steps * lat)
            ring = 2 * (nranks - 1) / nranks * r["size"]
            nccl = max(us(ring * (g - 1) / g, intra_gbps), us(ring / g, L)) + 2 * (nranks - 1) * lat
            expect(close(m["time_us"], ours),
                   "%s: hier model at %g: %s vs %s" % (t, L, m["time_us"], ours))
            expect(close(m["nccl_time_us"], nccl),
                   "%s: NCCL two-class model at %g: %s vs %s" % (t, L, m["nccl_time_us"], nccl))
            expect(close(m["speedup"], nccl / ours, 1e-6), "%s: modeled speedup at %g" % (t, L))
            # The single-class model would have sent every byte at L.
            flat_wrong = r["kernel_us"] + us(wire, L) + steps * lat
            expect(not close(m["time_us"], flat_wrong, 1e-3),
                   "%s: in-node bytes not charged to the NIC at %g" % (t, L))
            if pipe_bytes == 0:
                expect(m.get("pipelined_time_us") is None, "%s: no pipelined model" % t)
                continue
            chk = check_us(r["count"], TYPE_BYTES[r["dtype"]], r.get("kernel_costs"))
            piped = hier_pipelined(r["kernel_us"] - chk, wire - inter, inter, intra_gbps, L, g,
                                   mid * lat, lat, r["pieces"], TYPE_BYTES[r["dtype"]]) + chk
            expect(close(m.get("pipelined_time_us"), piped, 1e-6),
                   "%s: pipelined hier model at %g: %s vs %s" % (t, L, m.get("pipelined_time_us"),
                                                                 piped))
            expect(close(m.get("pipelined_speedup"), nccl / piped, 1e-6),
                   "%s: pipelined speedup at %g" % (t, L))
        if pipe_bytes:
            pieces = hier_pieces(r["count"], bucket, k, g, pipe_bytes)
            expect(pieces > 1 and r["pieces"] == pieces,
                   "%s: %s pieces (the library's count %s)" % (t, r["pieces"], pieces))
            used = piece_bytes_used(first_part(first_part(r["count"], g, bucket), k, bucket),
                                    bucket, k, pipe_bytes)
            expect(r["piece_bytes"] == pipe_bytes and r.get("piece_bytes_used") == used,
                   "%s: piece bytes %s recorded, %s used (got %s)"
                   % (t, pipe_bytes, used, r.get("piece_bytes_used")))


def check_hier_rs_rows(tag, rows, kdoc, nranks, local, bits, bucket, intra_gbps=3600.0, lat=10.0,
                       pipe_bytes=0):
    """Reduce-scatter rows run with --local-size L > 1 on >= 2 nodes: the hierarchical
    reduce-scatter, two link classes (docs/benchmark.md), recomputed from the row's own bytes.
    pipe_bytes > 0 (GRADCOMP_PIPELINE_BYTES): QSGD rows are cut into the middle stage's pieces
    (each block of m among the k nodes into ceil(pipe_bytes / 4 / k) elements rounded up to
    whole buckets) and get the two-stage pipelined model; the sparse rows stay one piece."""
    k, g = nranks // local, local
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    expect(len(rows) > 0, "%s: rows" % tag)
    for r in rows:
        t = "%s %s %s %d" % (tag, r["method"], r["dtype"], r["size"])
        # Named apart from the flat one in the JSON, the CSV and the table.
        expect(r["algo"] == "hier_reducescatter",
               "%s: the hierarchical reduce-scatter ran (got %s)" % (t, r["algo"]))
        expect(r["wrong"] == 0, "%s: no wrong elements" % t)
        m_, inter, wire = r["count"], r["inter_wire_bytes"], r["wire_bytes"]
        # In the node NCCL's ring of k*m floats among G ranks; across nodes k-1 blocks.
        expect(close(wire - inter, (g - 1) * k * m_ * 4),
               "%s: in-node bytes %s = (G-1) * k*m * 4" % (t, wire - inter))
        if r["method"] == "qsgd":
            expect(close(inter, (k - 1) * encoded(m_, bits, bucket)),
                   "%s: inter-node bytes %s = (k-1) * E(m)" % (t, inter))
            expect(r["kernels_measured"] and r.get("kernel_source") == "gpu_report",
                   "%s: kernel times from the GPU report" % t)
            # k-1 fp32 blocks encoded, the owner's sum of k, every block widened.
            check_kernels(t, r, kdoc, bits, bucket, "hier_reducescatter", nranks, local)
            kernel = r["kernel_us"]
        else:
            kernel = 0
            expect(close(r["kernel_us"], 0), "%s: sparse kernels not timed" % t)
        # The in-node ring, the exchange among the nodes, the non-finite check's flag.
        steps = (g - 1) + 1 + 1
        expect(r["latency_steps"] == steps,
               "%s: latency steps %s vs (G-1) + 1 + 1" % (t, r["latency_steps"]))
        expect([m["link_gbps"] for m in r["model"]] == [10, 25, 100, 400], "%s: default links" % t)
        for m in r["model"]:
            L = m["link_gbps"]  # each GPU's own NIC; the node has G of them
            ours = kernel + us(wire - inter, intra_gbps) + us(inter, L) + steps * lat
            # NCCL's ring reduce-scatter: (N-1) * size per GPU, 1/G of it across nodes.
            ring = (nranks - 1) * r["size"]
            nccl = max(us(ring * (g - 1) / g, intra_gbps), us(ring / g, L)) + (nranks - 1) * lat
            expect(close(m["time_us"], ours),
                   "%s: hier reduce-scatter model at %g: %s vs %s" % (t, L, m["time_us"], ours))
            expect(close(m["nccl_time_us"], nccl),
                   "%s: NCCL reduce-scatter two-class model at %g: %s vs %s"
                   % (t, L, m["nccl_time_us"], nccl))
            expect(close(m["speedup"], nccl / ours, 1e-6), "%s: modeled speedup at %g" % (t, L))
            flat_wrong = kernel + us(wire, L) + steps * lat
            expect(not close(m["time_us"], flat_wrong, 1e-3),
                   "%s: in-node bytes not charged to the NIC at %g" % (t, L))
            pieces = r.get("pieces", 1)
            if pieces == 1:
                expect(m.get("pipelined_time_us") is None, "%s: no pipelined model" % t)
                continue
            # Per piece: the NVLink reduce-scatter (G-1 steps), then the inter-node stage's
            # kernels and transfer (one step); fill + drain + (P-1) * the slower.
            # Then the non-finite check once: its pass and its step.
            chk = check_us(r["count"], TYPE_BYTES[r["dtype"]], r.get("kernel_costs"))
            rs = us((wire - inter) / pieces, intra_gbps) + (g - 1) * lat
            mid = (kernel - chk) / pieces + us(inter / pieces, L) + lat
            piped = rs + mid + (pieces - 1) * max(rs, mid) + chk + lat
            expect(close(m.get("pipelined_time_us"), piped, 1e-6),
                   "%s: pipelined hier reduce-scatter model at %g: %s vs %s"
                   % (t, L, m.get("pipelined_time_us"), piped))
            expect(close(m.get("pipelined_speedup"), nccl / piped, 1e-6),
                   "%s: pipelined speedup at %g" % (t, L))
        if r["method"] == "qsgd" and pipe_bytes:
            pieces = pieces_of(m_, bucket, k, pipe_bytes)
            used = piece_bytes_used(m_, bucket, k, pipe_bytes)
            expect(pieces > 1 and r.get("pieces") == pieces and r.get("piece_bytes") == pipe_bytes
                   and r.get("piece_bytes_used") == used,
                   "%s: %s pieces of %s bytes, %s used (the library's %s, %s, %s)"
                   % (t, pieces, pipe_bytes, used, r.get("pieces"), r.get("piece_bytes"),
                      r.get("piece_bytes_used")))
        else:
            expect(r.get("pieces") == 1, "%s: one piece (got %s)" % (t, r.get("pieces")))


def check_rs_projection(tag, r, kdoc, bits, bucket, pipe_bytes, intra_gbps=3600.0, lat=10.0):
    """A reduce-scatter row's projection points against the formulas (docs/benchmark.md,
    "Nodes"), m = the row's count out per rank: NCCL's ring reduce-scatter ((N-1) m T, 1/G of
    it across nodes, N-1 steps); flat, the flat compressed reduce-scatter over all N ranks
    ((N-1) E(m), N-G blocks across, both link classes at once, one step); on >= 2 nodes of
    >= 2 GPUs the hierarchical one ((G-1) k m 4 bytes in the node, (k-1) E(m) across, in turn,
    G steps), elsewhere flat's; hier|P cut into the middle stage's pieces (each block of m
    among the k nodes into ceil(pipe_bytes / 4 / k) elements rounded up to whole buckets),
    the two-stage pipeline; auto GRADCOMP_AUTO's choice. Returns the points seen."""
    m_, size = r["count"], r["size"]
    costs = report_costs(kdoc, r, bits, bucket)
    e_in = TYPE_BYTES[r["dtype"]]
    convert = r["dtype"] != "float" or r.get("redop") == "avg"
    fused, code = warp_bucket(bucket), code_bytes(m_, bits, bucket)
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    e = encoded(m_, bits, bucket)
    seen = set()
    for p in r["projection"]:
        k, g, L = p["nodes"], p["local"], p["node_gbps"]
        seen.add((k, g, L))
        n, nic = k * g, L / g
        t = "%s %dx%d@%g" % (tag, k, g, L)
        ring = (n - 1) * size
        nccl_intra, nccl_inter = (ring * (g - 1) / g, ring / g) if k > 1 else (ring, 0)
        nccl = max(us(nccl_intra, intra_gbps), us(nccl_inter, nic)) + (n - 1) * lat
        flat_intra, flat_inter = e * (g - 1), e * (n - g)
        flat_kernel = kernel_total(kernel_work("reducescatter", n, e_in, True, convert,
                                               fused=fused, code=code), costs, m_)
        # One all-to-all step, and the non-finite check's flag (error feedback's state).
        flat = flat_kernel + max(us(flat_intra, intra_gbps), us(flat_inter, nic)) + 2 * lat
        hier_layout = k >= 2 and g >= 2
        pieces = 1
        # The piece the library cuts each block of m into, among the k nodes or the n ranks.
        used = piece_bytes_used(m_, bucket, k if hier_layout else n, pipe_bytes)
        if hier_layout:
            intra, inter = (g - 1) * k * m_ * 4, (k - 1) * e
            kernel = kernel_total(kernel_work("hier_reducescatter", n, e_in, True, convert, g,
                                              fused=fused, code=code), costs, m_)
            hier = kernel + us(intra, intra_gbps) + us(inter, nic) + (g + 1) * lat
            if pipe_bytes:
                pieces = pieces_of(m_, bucket, k, pipe_bytes)
            piped_kernel = kernel
            piped = hier
            if pieces > 1:
                piped_kernel = kernel_total(kernel_work("hier_reducescatter", n, e_in, True,
                                                        convert, g, piped=True, fused=fused,
                                                        code=code), costs, m_)
                chk = check_us(m_, e_in, costs)  # once after the pieces, and its step
                rs = us(intra / pieces, intra_gbps) + (g - 1) * lat
                mid = (piped_kernel - chk) / pieces + us(inter / pieces, nic) + lat
                piped = rs + mid + (pieces - 1) * max(rs, mid) + chk + lat
        else:
            intra, inter, kernel, hier = flat_intra, flat_inter, flat_kernel, flat
            piped_kernel, piped = kernel, hier
            # The library cuts the flat reduce-scatter too (reduce_scatter.cc, splitPieces):
            # each block of m among the n ranks into ceil(pipe_bytes / 4 / n) elements
            # rounded up to whole buckets; the row model's two-stage pipeline of kernels
            # and wire, both link classes at once.
            if pipe_bytes:
                pieces = pieces_of(m_, bucket, n, pipe_bytes)
            if pieces > 1:
                # Once after the pieces (its pass unless the sum flags), and its step.
                chk = check_us(m_, e_in, costs, check_folded("reducescatter", fused))
                kp = (piped_kernel - chk) / pieces
                wp = max(us(flat_intra / pieces, intra_gbps), us(flat_inter / pieces, nic)) + lat
                piped = kp + wp + (pieces - 1) * max(kp, wp) + chk + lat
        expect(close(p["nccl_intra_bytes"], nccl_intra) and close(p["nccl_inter_bytes"], nccl_inter),
               "%s: NCCL ring reduce-scatter bytes per link class" % t)
        expect(close(p["flat_intra_bytes"], flat_intra) and close(p["flat_inter_bytes"], flat_inter),
               "%s: flat bytes (N-1) E(m), N-G blocks across" % t)
        expect(close(p["hier_intra_bytes"], intra) and close(p["hier_inter_bytes"], inter),
               "%s: hier bytes %s, %s vs %s, %s" % (t, p["hier_intra_bytes"], p["hier_inter_bytes"],
                                                    intra, inter))
        expect(close(p["nccl_time_us"], nccl), "%s: NCCL time %s vs %s" % (t, p["nccl_time_us"], nccl))
        expect(close(p["flat_kernel_us"], flat_kernel) and close(p["flat_time_us"], flat),
               "%s: flat time %s vs %s" % (t, p["flat_time_us"], flat))
        expect(close(p["hier_kernel_us"], kernel) and close(p["hier_time_us"], hier),
               "%s: hier time %s vs %s" % (t, p["hier_time_us"], hier))
        expect(p["hier_pieces"] == pieces and p["hier_pipeline_bytes"] == used,
               "%s: hier pieces %s of %s bytes vs %s of %s" % (t, p["hier_pieces"],
                                                             p["hier_pipeline_bytes"], pieces,
                                                             used))
        expect(close(p["hier_pipelined_kernel_us"], piped_kernel) and
               close(p["hier_pipelined_time_us"], piped),
               "%s: pipelined hier %s vs %s" % (t, p["hier_pipelined_time_us"], piped))
        # The library's compressed path: the hierarchy's, else the flat one's, pipelined
        # where it is cut.
        comp = piped
        want = comp if p.get("auto_choice") == "compress" else nccl
        expect(p.get("auto_choice") in ("compress", "nccl") and close(p["auto_time_us"], want),
               "%s: auto's time is its choice's (%s)" % (t, p.get("auto_choice")))
    return seen


def check_rs_projection_vs_rows(tag, r):
    """The projection point of the run's own layout (2 nodes of 2 ranks) at a node's NICs of
    G times a row model link: the row model's times, which charge the bytes and pieces the
    library reported for the row's calls."""
    for m in r["model"]:
        for p in r["projection"]:
            if (p["nodes"], p["local"]) != (2, 2) or not close(p["node_gbps"], 2 * m["link_gbps"]):
                continue
            t = "%s %dx%d@%g" % (tag, p["nodes"], p["local"], p["node_gbps"])
            expect(close(p["nccl_time_us"], m["nccl_time_us"], 1e-6),
                   "%s: NCCL %s us vs the row model's %s at %g"
                   % (t, p["nccl_time_us"], m["nccl_time_us"], m["link_gbps"]))
            expect(p["hier_pieces"] == r.get("pieces", 1),
                   "%s: %s pieces vs the row's %s" % (t, p["hier_pieces"], r.get("pieces")))
            # A row cut into pieces ran the pipelined path's kernels (its unpipelined time
            # charges them too); one piece, the unpipelined path's.
            piped = r.get("pieces", 1) > 1
            kernel = p["hier_pipelined_kernel_us"] if piped else p["hier_kernel_us"]
            time = m.get("pipelined_time_us") if piped else m["time_us"]
            expect(close(kernel, r["kernel_us"], 1e-6) and
                   close(p["hier_pipelined_time_us"], time, 1e-6),
                   "%s: pipelined hier %s us (K %s) vs the row model's %s (K %s) at %g"
                   % (t, p["hier_pipelined_time_us"], kernel, time, r["kernel_us"],
                      m["link_gbps"]))


def main():
    import model_check
    perf, work, src = sys.argv[1], sys.argv[2], sys.argv[3]
    report = newest_report(os.path.join(src, "bench", "results"))
    expect(report is not None, "the source tree holds a GPU report with kernel rates")
    kdoc = json.load(open(report[:-5] + "/kernels.json")) if report else None
    os.makedirs(work, exist_ok=True)
    nranks, bits, bucket = 3, 4, 512
    sizes = [64 << 10, 256 << 10]
    code, out, rows = run(perf, ["-N", str(nranks), "-b", "64K", "-e", "256K", "-f", "4", "-n", "2",
                                 "-w", "1", "-d", "all", "-m", "none,qsgd", "-q", str(bits),
                                 "-B", str(bucket), "-a", "twoshot"], os.path.join(work, "ok.json"))
    expect(code == 0, "clean run exits 0 (got %d)" % code)
    expect(json.load(open(os.path.join(work, "ok.json"))).get("complete") is True,
           "a finished run's JSON says \"complete\": true")
    expect("# Avg bus bandwidth" in out, "table has the '# Avg bus bandwidth' footer")
    expect("CPU reference backend" in out, "table says it is the CPU reference backend")
    if report:
        name = os.path.relpath(report, src)
        expect("modeled with the kernel rates of %s (%s)" % (name, kdoc["gpu"]) in out,
               "preamble names the report whose kernel rates the model uses")
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
        expect(r.get("identical") is True, "%s: the same result bits on every rank" % tag)
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
            # The link model (docs/benchmark.md), recomputed from the row's own numbers;
            # its kernel times are the GPU report's, not the host codecs'.
            expect(r["kernels_measured"] and r.get("kernel_source") == "gpu_report",
                   "%s: kernel times from the GPU report" % tag)
            check_kernels(tag, r, kdoc, bits, bucket, "twoshot", nranks)
            expect("elementwise passes estimated at copy bandwidth" in (r.get("kernel_note") or ""),
                   "%s: the row says the elementwise passes are estimated" % tag)
            expect(r["latency_steps"] == 2, "%s: two-shot latency steps: two send/recv rounds" % tag)
            gbps = [m["link_gbps"] for m in r["model"]]
            expect(gbps == [10, 25, 100, 400],
                   "%s: default links 10, 25, 100, 400 Gb/s (got %s)" % (tag, gbps))
            for m in r["model"]:
                g = m["link_gbps"]
                ours = r["kernel_us"] + r["wire_bytes"] * 8 / (g * 1e3) + 2 * 10
                ring_bytes = 2 * (nranks - 1) / nranks * r["size"]
                nccl = ring_bytes * 8 / (g * 1e3) + 2 * (nranks - 1) * 10
                expect(abs(m["time_us"] - ours) <= 1e-6 * ours, "%s: modeled time at %g" % (tag, g))
                expect(abs(m["nccl_time_us"] - nccl) <= 1e-6 * nccl, "%s: NCCL model at %g" % (tag, g))
                expect(abs(m["speedup"] - nccl / ours) <= 1e-5 * nccl / ours,
                       "%s: modeled speedup at %g" % (tag, g))

    # The projection: 2 nodes x 4 GPUs (N = 8, L = 4) and 4 x 8, three NIC rates, fp32 and
    # bf16; and nodes of one GPU (2 x 1: two ranks, the flat allgather; 4 x 1), where the
    # library runs no hierarchy.
    code, out, rows = run(perf, ["-N", "2", "-b", "1M", "-e", "1M", "-n", "1", "-w", "0", "-q",
                                 str(bits), "-B", str(bucket), "-d", "float,bfloat16",
                                 "--model-nodes", "2,4", "--model-local", "1,4,8",
                                 "--model-pipe", "64K"],
                          os.path.join(work, "projection.json"))
    expect(code == 0, "projection run exits 0 (got %d)" % code)
    expect("# projection onto K nodes x G GPUs" in out, "the projection table is printed")
    # Its columns as nccl-tests labels them: names, then a row of their units.
    lines = out.splitlines()
    names = [i for i, ln in enumerate(lines) if ln.split()[1:4] == ["size", "type", "KxG"]]
    units = lines[names[0] + 1].split() if names and names[0] + 1 < len(lines) else []
    expect(units == ["#", "(B)", "(Gb/s)", "(us)", "(us)", "(us)", "(B)", "(B)", "(B)"],
           "the projection table's header has a units row (got %s)" % units)
    expect(len(rows) == 2, "one row a type for the projection run")
    for r in rows if kdoc else []:
        seen = check_projection("projection 1M %s" % r["dtype"], r, kdoc, bits, bucket, 65536)
        expect(any(p["hier_pieces"] > 1 for p in r["projection"]),
               "the projection pipelines some hier points")
        want = {(k, g, L) for k in (2, 4) for g in (1, 4, 8) for L in (100, 400, 3200)}
        expect(seen == want, "every K with every G at 100, 400, 3200 Gb/s (got %s)" % sorted(seen))
    if rows and kdoc:
        p = [p for p in rows[0]["projection"] if (p["nodes"], p["local"]) == (2, 4)][0]
        # N = 8, L = 4: flat sends E(S) across nodes, hier E(S/4): the ratio is 4.
        expect(abs(p["inter_bytes_ratio_flat_vs_hier"] - 4) < 1e-3,
               "flat / hier inter-node bytes at N=8, L=4 is 4 (got %s)"
               % p["inter_bytes_ratio_flat_vs_hier"])

    # Past the library's 1024 pieces (gc::kMaxPieces): 4M elements on 4 x 1 at a 4-byte
    # --model-pipe is one bucket a piece, 2048 pieces of the 1M-element chunk uncapped; the
    # library grows the piece until 1024 cover it, and so must the projection. The row's own
    # two-shot at GRADCOMP_PIPELINE_BYTES=4 (2M-element chunks, 4096 buckets) is cut into 1024
    # pieces of 2048 elements: piece_bytes is the setting, piece_bytes_used the piece's
    # 2 x 2048 floats.
    code, _, rows = run(perf, ["-N", "2", "-b", "16M", "-e", "16M", "-n", "1", "-w", "0", "-q",
                               str(bits), "-B", str(bucket), "-a", "twoshot", "--model-nodes", "4",
                               "--model-local", "1", "--model-pipe", "4"],
                        os.path.join(work, "projection-cap.json"),
                        env={"GRADCOMP_PIPELINE_BYTES": "4"})
    expect(code == 0 and len(rows) == 1, "the projection past 1024 pieces exits 0 with one row")
    for r in rows:
        used = piece_bytes_used(first_part(r["count"], 2, bucket), bucket, 2, 4)
        expect(r.get("pieces") == 1024 and r.get("piece_bytes") == 4 and
               r.get("piece_bytes_used") == used == 2 * 2048 * 4,
               "a call cut at the 1024-piece cap: 1024 pieces, piece_bytes the setting 4, "
               "piece_bytes_used %s (got %s, %s, %s)" % (used, r.get("pieces"),
                                                         r.get("piece_bytes"),
                                                         r.get("piece_bytes_used")))
        got = [p["hier_pieces"] for p in r["projection"]]
        expect(got and all(g == 1024 for g in got),
               "4 x 1 at 4-byte pieces is cut into 1024 pieces, the library's cap (got %s)" % got)
        expect(all(p["hier_pieces"] == flat_pieces(r["count"], bucket, 4, 4)
                   for p in r["projection"]), "the check's piece rule caps as the library's")

    # The projection where the kernels' launches pass the report's smallest size (2^20): 4M
    # elements, whose flat two-shot on 4 x 1 launches chunks of 1M, the peers' encodes at 3M
    # (interpolated) and the output's decodes at 4M, in 2 pieces at --model-pipe 8M (half
    # those); 2 x 1's allgather launches 4M (the copy's rate there raised to the largest
    # size's); the hierarchy's middle below 2^20 (held at the smallest). At 1M bytes (above)
    # every launch is below the smallest size, every cost that size's, so a cost looked up at
    # another size than the launch's went unseen there.
    code, _, rows = run(perf, ["-N", "2", "-b", "16M", "-e", "16M", "-n", "1", "-w", "0", "-q",
                               str(bits), "-B", str(bucket), "--model-nodes", "2,4,8",
                               "--model-local", "1,8", "--model-pipe", "8M"],
                        os.path.join(work, "projection-launches.json"))
    expect(code == 0 and len(rows) == 1, "the 16M projection exits 0 with one row")
    for r in rows if kdoc else []:
        check_projection("projection 16M", r, kdoc, bits, bucket, 8 << 20)
        expect(any(p["hier_pieces"] == 2 for p in r["projection"]),
               "the 16M projection cuts 4 x 1 into 2 pieces")

    # GRADCOMP_AUTO where its lines through the two timed counts mispredict: 4 MB bf16 on
    # 1 x 2 and on 2 x 1 at 3200 Gb/s (the flat allgather of 2 ranks) it compresses, though
    # NCCL is 9% and 6% faster there with the 2026-12-04 H200 report's rates.
    # check_projection holds auto to the rule's choice, not to the faster path.
    code, _, rows = run(perf, ["-N", "2", "-b", "4M", "-e", "4M", "-n", "1", "-w", "0", "-q",
                               str(bits), "-B", str(bucket), "-d", "bfloat16", "--model-nodes",
                               "1,2", "--model-local", "1,2"],
                        os.path.join(work, "projection-auto.json"))
    expect(code == 0 and len(rows) == 1, "the 4M bf16 projection exits 0 with one row")
    for r in rows if kdoc else []:
        check_projection("projection 4M bf16", r, kdoc, bits, bucket, 8 << 20)

    # Nodes of 2 ranks at N = 4: hier rows, two link classes per row. Auto runs an allgather
    # across the 2 nodes; -a twoshot names the middle stage.
    for algo, middle in (("auto", "allgather"), ("twoshot", "twoshot")):
        code, out, rows = run(perf, ["-N", "4", "--local-size", "2", "-b", "256K", "-e", "256K",
                                     "-n", "1", "-w", "0", "-q", str(bits), "-B", str(bucket),
                                     "-a", algo], os.path.join(work, "hier-%s.json" % algo))
        expect(code == 0, "hier run -a %s exits 0 (got %d)" % (algo, code))
        expect("nodes of 2 ranks (--local-size)" in out,
               "the preamble says how hier rows are modeled")
        check_hier_rows("hier -a %s" % algo, rows, kdoc, 4, 2, middle, bits, bucket=bucket)
    # A count whose two shards differ (250001 floats): the library widens even an fp32 buffer
    # into equal blocks, and the row's kernels count that pass (check_kernels' padded).
    odd = 4 * 250001
    code, out, rows = run(perf, ["-N", "4", "--local-size", "2", "-b", str(odd), "-e", str(odd),
                                 "-n", "1", "-w", "0", "-q", str(bits), "-B", str(bucket),
                                 "-a", "twoshot"], os.path.join(work, "hier-odd.json"))
    expect(code == 0 and len(rows) == 1 and first_part(rows[0]["count"], 2, bucket) * 2 !=
           rows[0]["count"], "hier run of uneven shards exits 0 with one row")
    check_hier_rows("hier uneven shards", rows, kdoc, 4, 2, "twoshot", bits, bucket=bucket)

    # Pipelined hier (GRADCOMP_PIPELINE_BYTES) on 4 nodes of 2 ranks, whose middle stage is
    # two-shot: the rows report the library's pieces and the three-stage pipelined model.
    pipe_bytes = 32 << 10
    code, out, rows = run(perf, ["-N", "8", "--local-size", "2", "-b", "1M", "-e", "1M", "-n",
                                 "1", "-w", "0", "-q", str(bits), "-B", str(bucket), "-d",
                                 "float,bfloat16"], os.path.join(work, "hier-piped.json"),
                          env={"GRADCOMP_PIPELINE_BYTES": str(pipe_bytes)})
    expect(code == 0 and len(rows) == 2, "pipelined hier run exits 0 with two rows")
    check_hier_rows("hier pipelined", rows, kdoc, 8, 2, "twoshot", bits, pipe_bytes=pipe_bytes,
                    bucket=bucket)
    # A bf16 hier row in 2 pieces on a slow in-node link, where the node stream's two
    # collectives decide the pipelined time: the reduce-scatter moves fp32, 2/3 of the in-node
    # bytes, the allgather bf16, 1/3 (model_check's check_hier_pipelined recomputes it; an even
    # split gave up to 5% less at 200 Gb/s NVLink and NICs of 100 to 1600 Gb/s).
    code, out, rows = run(perf, ["-N", "4", "--local-size", "2", "-a", "twoshot", "-b", "1M", "-e",
                                 "1M", "-n", "1", "-w", "0", "-q", str(bits), "-B", str(bucket),
                                 "-d", "bfloat16", "--intra-gbps", "200", "--link-gbps",
                                 "25,100,400,1600"], os.path.join(work, "hier-piped-split.json"),
                          env={"GRADCOMP_PIPELINE_BYTES": str(512 << 10)})
    expect(code == 0 and len(rows) == 1 and rows[0].get("pieces") == 2,
           "bf16 hier run in 2 pieces exits 0 with one row")

    # A missing or garbled report: the modeled columns are left out with a
    # sentence, never filled with host codec times; measured columns stay.
    bad = os.path.join(work, "garbled")
    os.makedirs(os.path.join(bad, "2030-01-01-test-gpu"), exist_ok=True)
    open(os.path.join(bad, "2030-01-01-test-gpu.json"), "w").write("{}")
    open(os.path.join(bad, "2030-01-01-test-gpu", "kernels.json"), "w").write('{"rows": [{"kernel"')
    empty = os.path.join(work, "norows")
    os.makedirs(os.path.join(empty, "2030-01-01-test-gpu"), exist_ok=True)
    open(os.path.join(empty, "2030-01-01-test-gpu.json"), "w").write("{}")
    open(os.path.join(empty, "2030-01-01-test-gpu", "kernels.json"), "w").write(
        '{"gpu": "G", "rows": [{"kernel": "copy", "dtype": "float", "bits": 0, "n": 1, "time_us": 1}]}')
    # A QSGD row whose bits or bucket no int holds is no row (it converted to
    # an int undefinedly, then matched no call: rates "found" for nothing).
    huge = os.path.join(work, "hugebits")
    os.makedirs(os.path.join(huge, "2030-01-01-test-gpu"), exist_ok=True)
    open(os.path.join(huge, "2030-01-01-test-gpu.json"), "w").write("{}")
    open(os.path.join(huge, "2030-01-01-test-gpu", "kernels.json"), "w").write(
        '{"gpu": "G", "bucket": 512, "rows": [{"kernel": "copy", "dtype": "float", "bits": 0, '
        '"n": 1, "time_us": 1}, {"kernel": "qsgd_encode_ef", "dtype": "float", "bits": 1e30, '
        '"n": 1048576, "time_us": 5}, {"kernel": "qsgd_decode_acc", "dtype": "float", "bits": 4, '
        '"bucket": 1e300, "n": 1048576, "time_us": 5}]}')
    for where, why in ((bad, "is not valid JSON"), (empty, "has no qsgd_encode_ef"),
                       (huge, "has no qsgd_encode_ef"),
                       (os.path.join(work, "no-such-dir"), "no GPU report or folder"),
                       ("none", "--kernel-rates none")):
        code, out, rows = run(perf, ["-N", "2", "-b", "256K", "-e", "256K", "-n", "1", "-w", "0",
                                     "--kernel-rates", where, "--model-nodes", "2"],
                              os.path.join(work, "norates.json"))
        doc = json.load(open(os.path.join(work, "norates.json")))
        expect(code == 0, "run without kernel rates (%s) exits 0 (got %d)" % (where, code))
        expect("modeled columns left out:" in out and why in out,
               "without kernel rates (%s) the preamble says why: %s" % (where, why))
        expect("m@10G" not in out, "without kernel rates (%s) no modeled columns" % where)
        expect(doc.get("kernel_rates") is None and why in (doc.get("kernel_rates_missing") or ""),
               "JSON names why the rates are missing (%s)" % where)
        for r in rows:
            expect(r["model"] == [] and not r["kernels_measured"], "no model in the row (%s)" % where)
            expect(all(p["hier_time_us"] is None for p in r["projection"]),
                   "projection times left out (%s)" % where)
            expect(r["wire_bytes"] > 0 and r["wrong"] == 0, "measured columns stay (%s)" % where)

    # The JSON is rewritten after every row: a run killed part way (a step limit on the GPU
    # box) keeps the rows it measured, marked "complete": false.
    part = os.path.join(work, "killed.json")
    if os.path.exists(part):
        os.remove(part)
    p = subprocess.Popen([perf, "--backend", "cpu", "--json", part, "-N", "2", "-b", "64K", "-e",
                          "1G", "-f", "2", "-n", "20", "-w", "1", "-m", "qsgd", "-d", "float"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(part) and p.poll() is None:
        time.sleep(0.02)
    p.kill()
    p.wait()
    # (A kill between a rewrite's write and its rename leaves killed.json.part beside it.)
    pdoc = json.load(open(part)) if os.path.exists(part) else {}
    expect(pdoc.get("complete") is False and len(pdoc.get("rows", [])) >= 1 and
           pdoc["rows"][0]["size"] == 64 << 10,
           "a killed run's JSON holds its first rows and says \"complete\": false (complete %s, "
           "%d rows)" % (pdoc.get("complete"), len(pdoc.get("rows", []))))

    # Bits the report did not time (it has 2, 4, 8): that row's model is left out.
    code, out, rows = run(perf, ["-N", "2", "-b", "256K", "-e", "256K", "-n", "1", "-w", "0",
                                 "-q", "3"], os.path.join(work, "bits3.json"))
    expect(code == 0 and len(rows) == 1, "3-bit run exits 0 with one row")
    for r in rows:
        expect(r["model"] == [] and r["kernel_source"] == "none" and r["wrong"] == 0,
               "3-bit row: no rate in the report, no model, result still checked")

    # The report's rates follow the row's settings: a GRADCOMP_ROUNDING=nearest row takes
    # the nearest kernel's rows (qsgd_encode_ef_nearest), a GRADCOMP_EF=0 row the encode
    # without error feedback (qsgd_encode), a bucket the report's rows name (per row, else
    # the report's "bucket"), and nothing else stands in: where the report has no row for
    # the settings, the row's model is left out with a sentence.
    fx = os.path.join(work, "fixture-rates")
    os.makedirs(os.path.join(fx, "2030-01-01-test-gpu"), exist_ok=True)
    open(os.path.join(fx, "2030-01-01-test-gpu.json"), "w").write("{}")
    M = 1 << 20

    def frow(kernel, us, bucket=None, dtype="float"):
        r = {"kernel": kernel, "dtype": dtype, "bits": 4, "n": M, "time_us": us}
        if bucket:
            r["bucket"] = bucket
        return r

    fdoc = {"gpu": "Fixture GPU", "bucket": 512, "rows": [
        frow("qsgd_encode_ef", 100.0), frow("qsgd_encode_ef_nearest", 40.0),
        frow("qsgd_decode_acc", 50.0), frow("qsgd_encode_ef", 300.0, 128),
        frow("qsgd_decode_acc", 150.0, 128), frow("qsgd_encode_ef_nearest", 7.0, dtype="half"),
        frow("qsgd_encode", 70.0), frow("qsgd_decode", 30.0), frow("copy", 20.0),
        frow("qsgd_encode_ef", 400.0, dtype="bfloat16")]}
    json.dump(fdoc, open(os.path.join(fx, "2030-01-01-test-gpu", "kernels.json"), "w"))
    # Every kernel at its own rate (distinct in the fixture, so a wrong factor fails): the
    # owners' encode (GRADCOMP_OWNER_RESIDUAL: with error feedback or without), decode
    # overwrite (bucket 128 has none: the accumulate's stands in, and the row says so).
    S, N_, EF, E = "stochastic", "nearest", "qsgd_encode_ef", "qsgd_encode"
    for rounding, bkt, ef, ores, enc, owner, enc_us, dec_us, algo, missing in (
            (S, 512, 1, 1, EF, EF, 100.0, 50.0, "twoshot", None),
            (N_, 512, 1, 1, EF + "_nearest", EF + "_nearest", 40.0, 50.0, "twoshot", None),
            (S, 512, 0, 1, E, EF, 70.0, 50.0, "twoshot", None),
            (S, 512, 0, 0, E, E, 70.0, 50.0, "twoshot", None),
            (S, 512, 1, 0, EF, E, 100.0, 50.0, "ring", None),
            (S, 512, 1, 0, EF, E, 100.0, 50.0, "allgather", None),
            (S, 128, 1, 1, EF, EF, 300.0, 150.0, "twoshot", None),
            (N_, 128, 1, 1, None, None, None, None, "twoshot",
             ["qsgd_encode_ef_nearest", "bucket=128"]),
            (S, 128, 0, 1, None, None, None, None, "twoshot",
             ["no qsgd_encode rows", "bucket=128"])):
        tag = "fixture rates, rounding=%s, bucket %d, ef=%d, owner residual %d, %s" % (
            rounding, bkt, ef, ores, algo)
        # bf16 where the fixture has its encode (stochastic, bucket 512, error feedback).
        dts = "float,bfloat16" if (rounding, bkt, ef) == (S, 512, 1) else "float"
        code, out, rows = run(perf, ["-N", "2", "-b", "256K", "-e", "256K", "-n", "1", "-w", "0",
                                     "-m", "qsgd", "-q", "4", "-B", str(bkt), "-a", algo,
                                     "-d", dts, "--kernel-rates",
                                     os.path.join(fx, "2030-01-01-test-gpu.json")],
                              os.path.join(work, "rates-%s-%d-%d-%d-%s.json"
                                           % (rounding, bkt, ef, ores, algo)),
                              env={"GRADCOMP_ROUNDING": rounding, "GRADCOMP_EF": str(ef),
                                   "GRADCOMP_OWNER_RESIDUAL": str(ores)})
        expect(code == 0 and len(rows) == len(dts.split(",")), "%s: exits 0, a row a type" % tag)
        for r in rows:
            expect(r.get("rounding") == rounding and r.get("bucket") == bkt and r["wrong"] == 0,
                   "%s: the row's settings, checked" % tag)
            if enc_us is None:
                expect(r["model"] == [] and r["kernel_source"] == "none",
                       "%s: no rate for these settings, no model" % tag)
                why = r.get("model_missing") or ""
                expect(all(m in why for m in missing),
                       "%s: the row says which rate is missing (%s)" % (tag, why))
                expect("#  ^ modeled columns left out: " + why in out, "%s: the table says so" % tag)
                continue
            scale = r["count"] / M
            t = "%s %s" % (tag, r["dtype"])
            expect(r.get("kernel_source") == "gpu_report" and r.get("model_missing") is None,
                   "%s: modeled from the report" % t)
            if r["dtype"] == "bfloat16":
                enc_us = 400.0
            expect(close(r["encode_us"], enc_us * scale) and close(r["decode_us"], dec_us * scale),
                   "%s: encode %s, decode %s from the rows of its rounding and bucket"
                   % (t, r["encode_us"], r["decode_us"]))
            expect(r["algo"] == algo, "%s: ran %s" % (t, r["algo"]))
            costs = report_costs(fdoc, r, 4, bkt, enc, owner)
            # The owner residual is state too where the algorithm has an owner's chunk.
            check_kernels(t, r, fdoc, 4, bkt, algo, 2, costs=costs, residual=ef == 1,
                          state=ef == 1 or (ores == 1 and algo in ("twoshot", "ring")))
            note = r.get("kernel_note") or ""
            expect(("decode overwrite estimated at the decode-accumulate rate" in note) ==
                   (bkt == 128), "%s: the row says when the decode overwrite is estimated (%s)"
                   % (t, note))

    # The fused owner's sum charged at the report's qsgd_sum8 rate where it has one (fp32
    # output, the row's bits and bucket): per byte it moves, 7 E(m) + 4m + 4m of the row's
    # n = 8m, and the row's fused sums' bytes (two-shot: (N-1) E + 8 per element of the
    # owner's block; the allgather: N E + 4) at it, in place of the estimate (a decode
    # overwrite and F bytes at the copy's rate) that the fixture without the row keeps. The
    # rows that must not be taken (another bucket, bf16 output, the unfused launches) have
    # other times.
    fsum = os.path.join(work, "fixture-sum")
    os.makedirs(os.path.join(fsum, "2030-01-01-sum-gpu"), exist_ok=True)
    open(os.path.join(fsum, "2030-01-01-sum-gpu.json"), "w").write("{}")
    sum_us = 123.0
    sdoc = dict(fdoc, rows=fdoc["rows"] + [
        dict(frow("qsgd_sum8", sum_us), n=8 * M), dict(frow("qsgd_sum8", 1.0, 128), n=8 * M),
        dict(frow("qsgd_sum8", 2.0, dtype="bfloat16"), n=8 * M),
        dict(frow("qsgd_sum8_launches", 3.0), n=8 * M)])
    json.dump(sdoc, open(os.path.join(fsum, "2030-01-01-sum-gpu", "kernels.json"), "w"))
    spb = sum_us / (7 * encoded(M, 4, 512) + 8 * M)
    for algo, nr in (("twoshot", 4), ("allgather", 4), ("twoshot", 2)):
        got = {}
        for which, fixture in (("measured", os.path.join(fsum, "2030-01-01-sum-gpu.json")),
                               ("estimated", os.path.join(fx, "2030-01-01-test-gpu.json"))):
            tag = "fused sum %s, %s N=%d" % (which, algo, nr)
            code, out, rows = run(perf, ["-N", str(nr), "-b", "256K", "-e", "256K", "-n", "1",
                                         "-w", "0", "-m", "qsgd", "-q", "4", "-B", "512", "-a",
                                         algo, "-d", "float", "--kernel-rates", fixture],
                                  os.path.join(work, "sum-%s-%s-%d.json" % (which, algo, nr)))
            expect(code == 0 and len(rows) == 1 and rows[0]["algo"] == algo
                   and rows[0].get("kernel_source") == "gpu_report",
                   "%s: exits 0, one row modeled from the report" % tag)
            if not (code == 0 and len(rows) == 1):
                continue
            r = got[which] = rows[0]
            c = r.get("kernel_costs") or {}
            want = spb if which == "measured" else 0.0
            expect(close(c.get("sum_per_byte"), want),
                   "%s: sum_per_byte %s, want %s" % (tag, c.get("sum_per_byte"), want))
            check_kernels(tag, r, sdoc if which == "measured" else fdoc, 4, 512, algo, nr)
            note = r.get("kernel_note") or ""
            expect(("the fused owner's sum charged at the measured qsgd_sum8 rate" in note) ==
                   (which == "measured") and
                   ("the fused owner's sum estimated from the decode and copy rates" in note) ==
                   (which == "estimated"), "%s: the note says which (%s)" % (tag, note))
            model_check.check_rows(os.path.join(work, "sum-%s-%s-%d.json" % (which, algo, nr)))
        if len(got) < 2:
            continue
        # The difference between the two is the fused sum's alone: its bytes at the measured
        # rate less the estimate (both fixtures' other rows are the same).
        r, c = got["estimated"], got["estimated"]["kernel_costs"]
        n, code = r["count"], code_bytes(r["count"], 4, 512)
        if algo == "twoshot":
            b, moved = n / nr, (nr - 1) * code + 8
            est = c["decode"] + (max(0, nr - 2) * code + 4) * c["elementwise_per_byte"]
        else:
            b, moved = n, nr * code + 4
            est = c["decode"] + (nr - 1) * code * c["elementwise_per_byte"]
        delta = b * (moved * spb - est)
        expect(close(got["measured"]["kernel_us"] - r["kernel_us"], delta, 1e-6),
               "fused sum, %s N=%d: measured minus estimated kernel_us %s, want %s"
               % (algo, nr, got["measured"]["kernel_us"] - r["kernel_us"], delta))
        expect(abs(delta) > 1e-3 * r["kernel_us"],
               "fused sum, %s N=%d: the fixture's rate changes the kernels' time" % (algo, nr))

    # GRADCOMP_LEVELS=square: every QSGD algorithm's rows say so (JSON, label), are checked
    # against the top step's bound (no wrong element, every rank's weight 1), and the fixture,
    # which has no qsgd_encode_ef_square rows, models none of them rather than take the
    # uniform encode's rate.
    for algo in ("twoshot", "ring", "allgather"):
        for rounding in ("stochastic", "nearest"):
            tag = "levels=square, %s, %s" % (algo, rounding)
            code, out, rows = run(perf, ["-N", "4", "-b", "256K", "-e", "1M", "-n", "1", "-w", "0",
                                         "-m", "qsgd", "-a", algo, "-d", "float,bfloat16",
                                         "--kernel-rates",
                                         os.path.join(fx, "2030-01-01-test-gpu.json")],
                                  os.path.join(work, "square-%s-%s.json" % (algo, rounding)),
                                  env={"GRADCOMP_LEVELS": "square",
                                       "GRADCOMP_ROUNDING": rounding})
            expect(code == 0 and len(rows) == 4, "%s: exits 0, a row a size and type" % tag)
            for r in rows:
                expect(r.get("levels") == "square" and "levels=square" in r["label"]
                       and r.get("rounding") == rounding, "%s: the row's settings" % tag)
                expect(r["wrong"] == 0 and r["algo"] == algo, "%s: checked, 0 wrong" % tag)
                expect(rounding == "nearest" or r.get("rank_weights_wrong") == 0,
                       "%s: every rank's input enters with weight 1" % tag)
                expect(r["model"] == [] and "qsgd_encode_ef" in (r.get("model_missing") or "")
                       and "square" in (r.get("model_missing") or ""),
                       "%s: no square rate in the fixture, no model (%s)"
                       % (tag, r.get("model_missing")))

    # A call's kernels are charged at the size it launches them (KernelCurve): two-shot at
    # N = 2 launches its codec kernels on chunks of M/2 elements, where the fixture has a row
    # (rows at M/2 and 2M, distinct per-element times); the allgather launches them on all M
    # elements, halfway (log scale) between the rows: each cost interpolated linearly in
    # log2(n), the mean of the two rows' per-element costs.
    ft = os.path.join(work, "fixture-tie", "2030-01-01-tie-gpu")
    os.makedirs(ft, exist_ok=True)
    open(ft + ".json", "w").write("{}")
    tie_rows = []
    for kernel, small_us, large_us in (("qsgd_encode_ef", 90.0, 200.0),
                                       ("qsgd_decode_acc", 45.0, 100.0), ("copy", 30.0, 80.0)):
        for n, us in ((M // 2, small_us), (2 * M, large_us)):
            tie_rows.append({"kernel": kernel, "dtype": "float", "bits": 4, "n": n, "time_us": us})
    # The fused sum's rows at owner's blocks of M/2 and 2M (n = 8m): its cost per byte follows
    # the codec launch as the others' (tie_sum: at a launch of m).
    for m_, us in ((M // 2, 40.0), (2 * M, 100.0)):
        tie_rows.append({"kernel": "qsgd_sum8", "dtype": "float", "bits": 4, "n": 8 * m_,
                         "time_us": us})
    tie_sum = {m_: us / (7 * encoded(m_, 4, 512) + 8 * m_)
               for m_, us in ((M // 2, 40.0), (2 * M, 100.0))}
    json.dump({"gpu": "Fixture GPU", "bucket": 512, "rows": tie_rows},
              open(os.path.join(ft, "kernels.json"), "w"))
    code, out, rows = run(perf, ["-N", "2", "-b", "4M", "-e", "4M", "-n", "1", "-w", "0", "-m",
                                 "qsgd", "-a", "twoshot", "--kernel-rates", ft + ".json"],
                          os.path.join(work, "rates-tie.json"))
    expect(code == 0 and len(rows) == 1 and rows[0]["count"] == M,
           "fixture tie: one row of %d elements" % M)
    for r in rows:
        expect(r.get("kernel_launch") == M // 2, "fixture tie: two-shot launches %d elements, "
               "got %s" % (M // 2, r.get("kernel_launch")))
        expect(close(r["encode_us"], 90.0 * 2) and close(r["decode_us"], 45.0 * 2),
               "fixture tie: two-shot's encode %s and decode %s us at the M/2 row's rates (180, "
               "90), not the whole call's M" % (r["encode_us"], r["decode_us"]))
        sp = (r.get("kernel_costs") or {}).get("sum_per_byte")
        expect(close(sp, tie_sum[M // 2]), "fixture tie: two-shot's fused sum at the m = M/2 "
               "row's rate per byte, %s vs %s" % (sp, tie_sum[M // 2]))
    # At N = 4 the peers' encodes of a piece are one batched launch (Backend::qsgdEncodeBatch):
    # 3 chunks of M/4, 3M/4 elements, between the rows at log2 offset log2(1.5)/2 from M/2;
    # the sum's decodes stay per chunk (M/4, below the smallest row: held at M/2's).
    code, out, rows = run(perf, ["-N", "4", "-b", "4M", "-e", "4M", "-n", "1", "-w", "0", "-m",
                                 "qsgd", "-a", "twoshot", "--kernel-rates", ft + ".json"],
                          os.path.join(work, "rates-tie-n4.json"))
    expect(code == 0 and len(rows) == 1, "fixture tie, N = 4: one row")
    f = math.log2(1.5) / 2
    for r in rows:
        expect(r.get("kernel_launch") == M // 4 and r.get("kernel_launch_peer_encode") == 3 * M // 4,
               "fixture tie, N = 4: codec launches of %d, the peers' encode one of %d; got %s, %s"
               % (M // 4, 3 * M // 4, r.get("kernel_launch"), r.get("kernel_launch_peer_encode")))
        expect(close(r["encode_us"], 180.0 - 80.0 * f) and close(r["decode_us"], 90.0),
               "fixture tie, N = 4: encode %s us at the batched launch's interpolated rate (%.3f), "
               "decode %s at M/2's (90)" % (r["encode_us"], 180.0 - 80.0 * f, r["decode_us"]))
        # The output's 4 chunks of an fp32 Sum in one batched decode of M elements: halfway
        # between the rows (the decode overwrite at the accumulate's rate, as the fixture has
        # no qsgd_decode rows), where the owner's decode of its chunk stays at M/2's.
        c = r.get("kernel_costs") or {}
        expect(r.get("kernel_launch_out_decode") == M and close(c.get("decode_out", 0) * M, 70.0)
               and close(c.get("decode", 0) * M, 90.0),
               "fixture tie, N = 4: the output's decodes one launch of %d at 70 us per M, the "
               "owner's at 90; got %s, %s, %s" % (M, r.get("kernel_launch_out_decode"),
                                                  c.get("decode_out", 0) * M, c.get("decode", 0) * M))
    code, out, rows = run(perf, ["-N", "2", "-b", "4M", "-e", "4M", "-n", "1", "-w", "0", "-m",
                                 "qsgd", "-a", "allgather", "--kernel-rates", ft + ".json"],
                          os.path.join(work, "rates-tie-allgather.json"))
    expect(code == 0 and len(rows) == 1 and rows[0].get("kernel_launch") == M,
           "fixture tie: the allgather launches all %d elements" % M)
    for r in rows:
        # Per element: encode 90/(M/2) and 200/(2M), halfway 140/M; decode 90/M and 50/M, 70/M.
        expect(close(r["encode_us"], 140.0) and close(r["decode_us"], 70.0),
               "fixture tie: the allgather's encode %s and decode %s us interpolated halfway "
               "(140, 70)" % (r["encode_us"], r["decode_us"]))
        sp, want = (r.get("kernel_costs") or {}).get("sum_per_byte"), sum(tie_sum.values()) / 2
        expect(close(sp, want), "fixture tie: the allgather's fused sum per byte interpolated "
               "halfway, %s vs %s" % (sp, want))

    # The sparse rows (topk, dgc, randk; algo sparse): every kernel charged, the selector at
    # the report's rate of the nearest density then n, everything else by bytes at the copy's
    # bandwidth. Distinct rates in the fixture (and a second n and density that must not be
    # taken), so a wrong factor or a wrong row fails.
    fs = os.path.join(work, "fixture-sparse")
    os.makedirs(os.path.join(fs, "2030-01-01-sparse-gpu"), exist_ok=True)
    open(os.path.join(fs, "2030-01-01-sparse-gpu.json"), "w").write("{}")
    K = 1 << 16

    def srow(kernel, n, us, density=None, lists=None, slots=None):
        r = {"kernel": kernel, "dtype": "float", "bits": 0, "n": n, "time_us": us}
        if density:
            r["density"] = density
        if lists:
            r["lists"], r["k"] = lists, slots
        return r

    sdoc = {"gpu": "Sparse fixture GPU", "bucket": 512, "rows": [
        frow("qsgd_encode_ef", 100.0), frow("qsgd_decode_acc", 50.0),
        srow("copy", K, 3.0), srow("copy", 64 * K, 900.0),
        srow("topk_threshold", K, 70.0, 0.01), srow("topk_threshold", K, 170.0, 0.1),
        srow("topk_threshold", 64 * K, 9000.0, 0.01), srow("topk_exact", K, 130.0, 0.01),
        srow("sparse_check_lists", K, 11.0, 0.01, 3, 1311),
        srow("sparse_check_lists", 64 * K, 500.0, 0.01, 8, 100000),
        srow("nonfinite_flag", K, 5.0), srow("nonfinite_flag", 64 * K, 777.0)]}
    json.dump(sdoc, open(os.path.join(fs, "2030-01-01-sparse-gpu", "kernels.json"), "w"))
    sel = {"threshold": 70.0 / K, "exact": 130.0 / K}
    checks = {"check_lists": 11.0 / (3 * 1311), "nonfinite_flag": 5.0 / K}
    for method, env, dts in (
            ("topk", {}, "float,bfloat16"),
            ("topk", {"GRADCOMP_SELECT": "exact", "GRADCOMP_EF": "0"}, "float"),
            ("dgc", {"GRADCOMP_CLIP_NORM": "1", "GRADCOMP_VALUE_TYPE": "half"}, "float"),
            ("dgc", {"GRADCOMP_MOMENTUM_MASKING": "0"}, "half"),
            ("randk", {}, "float"),
            ("topk", {"GRADCOMP_DENSITY": "0.3"}, "float")):
        tag = "sparse fixture %s %s" % (method, env)
        code, out, rows = run(perf, ["-N", str(nranks), "-b", "256K", "-e", "256K", "-n", "1",
                                     "-w", "0", "-m", method, "-d", dts, "--kernel-rates",
                                     os.path.join(fs, "2030-01-01-sparse-gpu.json")],
                              os.path.join(work, "sparse-%s-%d.json" % (method, len(env))),
                              env=dict({"GRADCOMP_DENSITY": "0.01"}, **env))
        expect(code == 0 and len(rows) == len(dts.split(",")), "%s: exits 0, a row a type" % tag)
        for r in rows:
            t = "%s %s" % (tag, r["dtype"])
            expect(r["algo"] == "sparse" and r["wrong"] == 0, "%s: ran sparse, checked" % t)
            expect(r.get("kernel_source") == "gpu_report" and r["kernels_measured"],
                   "%s: modeled from the report" % t)
            n = r["count"]
            density = float(env.get("GRADCOMP_DENSITY", "0.01"))
            exact = method == "randk" or env.get("GRADCOMP_SELECT") == "exact"
            dgc = method == "dgc"
            kind = {"slots": sparse_slots(n, density, 2.0, exact),
                    "value_bytes": 2 if env.get("GRADCOMP_VALUE_TYPE") == "half" else 4,
                    "residual": env.get("GRADCOMP_EF") != "0" or dgc, "momentum": dgc,
                    "clip": dgc and "GRADCOMP_CLIP_NORM" in env,
                    "mask": dgc and env.get("GRADCOMP_MOMENTUM_MASKING") != "0",
                    "dense": density == 0.3}
            selects = method != "randk" and not kind["dense"]
            costs = {"select": sel[env.get("GRADCOMP_SELECT", "threshold")] if selects else 0,
                     "check_lists": checks["check_lists"] if selects else 0,
                     "nonfinite_flag": checks["nonfinite_flag"] if method == "randk" else 0,
                     "elementwise_per_byte": 3.0 / K / 8}
            check_sparse_row(t, r, costs, method, kind)
            note = r.get("kernel_note") or ""
            expect(("topk_" in note) == selects and "copy bandwidth" in note and
                   "no sparse_check_lists row" not in note and "no nonfinite_flag" not in note,
                   "%s: the note names the rates that stand in (%s)" % (t, note))
    model_check.check_rows(os.path.join(work, "sparse-dgc-2.json"))
    # DGC's warm-up (GRADCOMP_WARMUP_STEPS): a fresh comm's calls run its first stage, 25%,
    # which at N = 3 goes to the dense fallback. The row's bytes and kernels are the fallback's,
    # and its note must say so, not that they were charged at the final density.
    tag = "sparse fixture dgc warm-up"
    code, out, rows = run(perf, ["-N", str(nranks), "-b", "256K", "-e", "256K", "-n", "1", "-w",
                                 "0", "-m", "dgc", "-d", "float", "--kernel-rates",
                                 os.path.join(fs, "2030-01-01-sparse-gpu.json")],
                          os.path.join(work, "sparse-dgc-warmup.json"),
                          env={"GRADCOMP_DENSITY": "0.01", "GRADCOMP_WARMUP_STEPS": "100"})
    expect(code == 0 and len(rows) == 1, "%s: exits 0, one row" % tag)
    # -w 0 -n 1: the timed call is the buffer's call 1 (after the check), warm-up's first stage.
    expect("# gradcomp: dgc density=0.25 (warm-up; setting 0.01) select=" in out and
           all(r["label"].startswith("dgc density=0.25 (warm-up; setting 0.01) ") for r in rows),
           "%s: the label names the density the row ran at" % tag)
    expect(all(r["density"] == 0.01 for r in rows),
           "%s: the JSON's density is the setting as given (%s)" % (tag, [r["density"] for r in rows]))
    for r in rows:
        n = r["count"]
        expect(r["wire_bytes"] == 2 * (nranks - 1) * n * 4 // nranks,
               "%s: the fallback's ring bytes (%s)" % (tag, r["wire_bytes"]))
        check_sparse_row(tag, r, None, "dgc", {"slots": sparse_slots(n, 0.01), "value_bytes": 4,
                                               "residual": True, "momentum": True,
                                               "clip": False, "mask": True, "dense": True})
        note = r.get("kernel_note") or ""
        expect("dense fallback" in note and "charged at the final density" not in note,
               "%s: the note says the calls went dense (%s)" % (tag, note))
    # The flat sparse reduce-scatter (-C reduce_scatter), per element of the output block.
    for method, env in (("topk", {}), ("dgc", {"GRADCOMP_CLIP_NORM": "1",
                                               "GRADCOMP_VALUE_TYPE": "half"}),
                        ("randk", {}), ("topk", {"GRADCOMP_DENSITY": "0.3"})):
        tag = "sparse reduce-scatter fixture %s %s" % (method, env)
        path = os.path.join(work, "sparse-rs-%s-%d.json" % (method, len(env)))
        code, out, rows = run(perf, ["-N", str(nranks), "-C", "reduce_scatter", "-b", "64K", "-e",
                                     "64K", "-n", "1", "-w", "0", "-m", method, "-d",
                                     "float,bfloat16", "--kernel-rates",
                                     os.path.join(fs, "2030-01-01-sparse-gpu.json")],
                              path, env=dict({"GRADCOMP_DENSITY": "0.01"}, **env))
        expect(code == 0 and len(rows) == 2, "%s: exits 0, a row a type" % tag)
        for r in rows:
            t = "%s %s" % (tag, r["dtype"])
            expect(r["algo"] == "reducescatter" and r["wrong"] == 0, "%s: ran, checked" % t)
            m_ = r["count"]
            density = float(env.get("GRADCOMP_DENSITY", "0.01"))
            dgc = method == "dgc"
            kind = {"slots": sparse_slots(m_, density, 2.0, method == "randk"),
                    "value_bytes": 2 if env.get("GRADCOMP_VALUE_TYPE") == "half" else 4,
                    "residual": True, "momentum": dgc, "clip": dgc, "mask": dgc,
                    "dense": density == 0.3}
            selects = method != "randk" and not kind["dense"]
            costs = {"select": sel["threshold"] if selects else 0,
                     "check_lists": checks["check_lists"] if selects else 0,
                     "nonfinite_flag": checks["nonfinite_flag"] if method == "randk" else 0,
                     "elementwise_per_byte": 3.0 / K / 8}
            check_sparse_row(t, r, costs, method, kind)
        model_check.check_rows(path)
    # As hier's middle stage (nodes of 2 at N = 4): the sparse exchange among the k = 2 nodes on
    # the fp32 shard, / G, beside the widening and the shard's conversion.
    code, out, rows = run(perf, ["-N", "4", "--local-size", "2", "-b", "256K", "-e", "256K",
                                 "-n", "1", "-w", "0", "-m", "topk", "-d", "float,bfloat16",
                                 "--kernel-rates", os.path.join(fs, "2030-01-01-sparse-gpu.json")],
                          os.path.join(work, "sparse-hier.json"), env={"GRADCOMP_DENSITY": "0.01"})
    expect(code == 0 and len(rows) == 2, "sparse hier run exits 0, a row a type")
    for r in rows:
        t = "sparse hier %s" % r["dtype"]
        e, n = TYPE_BYTES[r["dtype"]], r["count"]
        expect(r["algo"] == "hier" and r["wrong"] == 0, "%s: ran hier, checked" % t)
        w = sparse_work("topk", 2, 4, sparse_slots(n, 0.01) / n, state=False)
        w = {k: v / 2 for k, v in w.items()}
        # Widened, the shard converted; the non-finite check over the whole output.
        w["elementwise_bytes"] += (0 if e == 4 else e + 4) + (4 + e) / 2 + e
        got = r.get("kernel_work") or {}
        expect(all(close(got.get(k), v) for k, v in w.items()),
               "%s: kernel work %s vs %s" % (t, got, w))
        total = kernel_total(w, {"select": sel["threshold"], "check_lists": checks["check_lists"],
                                 "elementwise_per_byte": 3.0 / K / 8}, n)
        expect(close(r["kernel_us"], total, 1e-6), "%s: kernel_us %s vs %s" % (t, r["kernel_us"],
                                                                              total))
        expect(r["latency_steps"] == 2 * (2 - 1) + 1, "%s: latency steps 2(G-1) + 1" % t)
    # A report without the per-call checks' rows (as the H100 one of 2026-11-25): the lists'
    # check and the non-finite flag by their 4-byte reads at the copy's bandwidth, and the note
    # says so. The committed report's rows without those two kernels, so that this holds
    # whichever report is committed.
    nc = os.path.join(work, "fixture-nochecks")
    os.makedirs(os.path.join(nc, "2030-01-01-nochecks-gpu"), exist_ok=True)
    open(os.path.join(nc, "2030-01-01-nochecks-gpu.json"), "w").write("{}")
    ndoc = dict(kdoc or {"rows": []})
    ndoc["rows"] = [x for x in ndoc["rows"]
                    if x["kernel"] not in ("sparse_check_lists", "nonfinite_flag")]
    json.dump(ndoc, open(os.path.join(nc, "2030-01-01-nochecks-gpu", "kernels.json"), "w"))
    code, out, rows = run(perf, ["-N", str(nranks), "-b", "256K", "-e", "256K", "-n", "1", "-w",
                                 "0", "-m", "topk,randk", "--kernel-rates",
                                 os.path.join(nc, "2030-01-01-nochecks-gpu.json")],
                          os.path.join(work, "sparse-report.json"), env={"GRADCOMP_DENSITY": "0.01"})
    expect(code == 0 and len(rows) == 2, "sparse rows on the committed report: exits 0")
    for r in rows:
        t = "sparse %s on %s without the checks' rows" % (r["method"], report)
        n, c = r["count"], r.get("kernel_costs") or {}
        randk = r["method"] == "randk"
        sel_rows = [x for x in ndoc["rows"] if x["kernel"] == "topk_threshold" and
                    abs(x["density"] / 0.01 - 1) < 1e-6]
        near = min(sel_rows, key=lambda x: (abs(math.log(x["n"] / n)), -x["n"]))
        copy_byte = report_cost(ndoc, "copy", "float", 0, 0, n) / 8
        costs = {"select": 0 if randk else near["time_us"] / near["n"],
                 "check_lists": 0 if randk else 4 * copy_byte,
                 "nonfinite_flag": 4 * copy_byte if randk else 0,
                 "elementwise_per_byte": copy_byte}
        kind = {"slots": sparse_slots(n, 0.01, 2.0, randk), "value_bytes": 4, "residual": True,
                "momentum": False, "clip": False, "mask": False, "dense": False}
        check_sparse_row(t, r, costs, r["method"], kind)
        note = r.get("kernel_note") or ""
        expect(("no nonfinite_flag row" in note) == randk and
               ("no sparse_check_lists row" in note) == (not randk),
               "%s: the note says the checks are at copy bandwidth (%s)" % (t, note))

    # Rows whose kernels the model cannot time (Elias-coded levels, DQ-SGD bits): no model,
    # no projection, a sentence; never the fixed-width kernels' times or bytes.
    for env, why in (({"GRADCOMP_ELIAS": "1"}, "Elias-coded QSGD"),
                     ({"GRADCOMP_BITS_MODE": "dynamic"}, "DQ-SGD bits")):
        code, out, rows = run(perf, ["-N", "2", "-b", "256K", "-e", "256K", "-n", "1", "-w", "0",
                                     "-m", "qsgd", "--model-nodes", "2"],
                              os.path.join(work, "unmodeled.json"), env=env)
        expect(code == 0 and len(rows) == 1, "%s run exits 0 with one row" % why)
        for r in rows:
            expect(r["model"] == [] and r["projection"] == [] and not r["kernels_measured"],
                   "%s: no model, no projection" % why)
            expect(why in (r.get("model_missing") or "") and r["wrong"] == 0,
                   "%s: the row says why, its result still checked" % why)

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
            expect(r["latency_steps"] == 2, "%s: one all-to-all step, the check's flag" % tag)
            check_kernels(tag, r, kdoc, bits, bucket, "reducescatter", nranks)
            for m in r["model"]:
                g = m["link_gbps"]
                nccl = (nranks - 1) * r["size"] * 8 / (g * 1e3) + (nranks - 1) * 10
                expect(abs(m["nccl_time_us"] - nccl) <= 1e-6 * nccl,
                       "%s: NCCL reduce-scatter model at %g" % (tag, g))

    # Pipelined two-shot and ring (GRADCOMP_PIPELINE_BYTES): the row records its
    # pieces and the pipelined model (two-shot: its two streams stage by stage; the ring:
    # fill + drain + (K-1) * max(stage) with stages k = kernel / K and w = wire / K / L +
    # steps * a, docs/benchmark.md), beside the
    # unpipelined model, which is unchanged; the wire bytes are the unpipelined ones
    # (two-shot: ok.json's rows; ring: an unpipelined ring run of the same size). Projected
    # at the same piece size onto N x 1, where the library runs the flat algorithm cut into
    # the pieces the row records (one node of N, below). The unpipelined ring is projected
    # onto 2 nodes of 2 and 4, where the flat ring's hops cross nodes (one rank a node sends
    # all of its hops across) and the hierarchy runs a ring middle.
    pipe_bytes = 64 << 10
    pipe_args = ["-N", str(nranks), "-b", "256K", "-e", "256K", "-n", "1", "-w", "0", "-d",
                 "float,bfloat16", "-m", "qsgd", "-q", str(bits), "-B", str(bucket)]
    ring_path = os.path.join(work, "ring.json")
    code, _, rows = run(perf, pipe_args + ["-a", "ring", "--model-nodes", "2", "--model-local",
                                           "2,4", "--node-gbps", "100,3200"], ring_path)
    expect(code == 0 and len(rows) == 2, "unpipelined ring run exits 0 with two rows")
    for r in rows if kdoc else []:
        seen = check_projection("ring %s projection" % r["dtype"], r, kdoc, bits, bucket, 8 << 20)
        expect(seen == {(2, g, L) for g in (2, 4) for L in (100, 3200)},
               "ring %s: projected onto 2x2 and 2x4 (got %s)" % (r["dtype"], sorted(seen)))
    links = [10, 25, 100, 400]
    flat_proj = ["--model-nodes", str(nranks), "--model-local", "1", "--node-gbps",
                 ",".join(map(str, links)), "--model-pipe", str(pipe_bytes)]
    for algo, steps, plain_path in (("twoshot", 2, os.path.join(work, "ok.json")),
                                    ("ring", nranks, ring_path)):
        code, out, rows = run(perf, pipe_args + ["-a", algo] + flat_proj,
                              os.path.join(work, "pipe-%s.json" % algo),
                              env={"GRADCOMP_PIPELINE_BYTES": str(pipe_bytes)})
        expect(code == 0 and len(rows) == 2, "pipelined %s run exits 0 with two rows" % algo)
        plain = {r["dtype"]: r for r in json.load(open(plain_path))["rows"]
                 if r["method"] == "qsgd" and r["size"] == 256 << 10}
        for r in rows:
            tag = "pipelined %s %s" % (algo, r["dtype"])
            count = r["count"]
            units = math.ceil(count / bucket)
            chunk = math.ceil(units / nranks) * bucket  # the largest bucket-aligned chunk
            pieces = pieces_of(chunk, bucket, nranks, pipe_bytes)
            expect(r["algo"] == algo, "%s: ran %s (got %s)" % (tag, algo, r["algo"]))
            expect(pieces > 1, "%s: the case is cut into pieces" % tag)
            used = piece_bytes_used(chunk, bucket, nranks, pipe_bytes)
            expect(r.get("pieces") == pieces and r.get("piece_bytes") == pipe_bytes and
                   r.get("piece_bytes_used") == used,
                   "%s: row records %s pieces of %s bytes, %s used (got %s, %s, %s)" %
                   (tag, pieces, pipe_bytes, used, r.get("pieces"), r.get("piece_bytes"),
                    r.get("piece_bytes_used")))
            expect(r["wrong"] == 0, "%s: no wrong elements" % tag)
            expect(r["latency_steps"] == steps, "%s: %d latency steps" % (tag, steps))
            p = plain.get(r["dtype"])
            expect(p is not None and p["algo"] == algo and r["wire_bytes"] == p["wire_bytes"],
                   "%s: wire bytes equal the unpipelined row's" % tag)
            expect(p is not None and p.get("pieces") == 1 and
                   all(m.get("pipelined_time_us") is None for m in p["model"]),
                   "%s: the unpipelined row has one piece and no pipelined model" % tag)
            check_kernels(tag, r, kdoc, bits, bucket, algo, nranks)
            check_pipelined_model(tag, r, pieces, steps,
                                  two_shot_ranks=nranks if algo == "twoshot" else 0)
            if kdoc:
                seen = check_projection(tag + " projection", r, kdoc, bits, bucket, pipe_bytes)
                expect(seen == {(nranks, 1, L) for L in links},
                       "%s: projected onto %dx1 (got %s)" % (tag, nranks, sorted(seen)))
            # The projection's pieces are the library's (the row's, gradcompStats_t), and
            # so is its piece (the row's piece_bytes_used).
            for q in r["projection"]:
                expect(q["hier_pieces"] == r.get("pieces") and
                       q["hier_pipeline_bytes"] == r.get("piece_bytes_used"),
                       "%s %dx%d@%g: the flat %s cut into %s pieces of %s bytes, the library "
                       "into %s of %s" % (tag, q["nodes"], q["local"], q["node_gbps"], algo,
                                          q["hier_pieces"], q["hier_pipeline_bytes"],
                                          r.get("pieces"), r.get("piece_bytes_used")))

    # The hierarchy on 2 nodes of 2 cut into pieces at a size that is no whole number of
    # buckets a chunk (1000 bytes: ceil(250 / 2) elements, grown to one bucket of 512):
    # a two-shot middle pipelines the hierarchy, a ring middle is cut into its own pieces
    # (plugin/algorithms/hier.cc hierPieces, ring.cc). Projected at the same size onto the
    # run's 2 x 2 and onto 4 x 2, the projection cuts both as the library does: the row's
    # pieces and piece (piece_bytes_used, not the setting), and project_point's times.
    grown = 1000
    for algo in ("twoshot", "ring"):
        code, out, rows = run(perf, ["-N", "4", "--local-size", "2", "-a", algo, "-b", "256K",
                                     "-e", "256K", "-n", "1", "-w", "0", "-d", "float,bfloat16",
                                     "-m", "qsgd", "-q", str(bits), "-B", str(bucket),
                                     "--model-nodes", "2,4", "--model-local", "2", "--node-gbps",
                                     "100,3200", "--model-pipe", str(grown), "--link-gbps",
                                     "50,1600"],
                              os.path.join(work, "hier-pipe-%s.json" % algo),
                              env={"GRADCOMP_PIPELINE_BYTES": str(grown)})
        expect(code == 0 and len(rows) == 2, "pipelined hier (%s middle) exits 0 with two rows"
               % algo)
        for r in rows:
            tag = "pipelined hier, %s middle, %s" % (algo, r["dtype"])
            expect(r["algo"] == "hier" and r.get("pieces", 1) > 1 and
                   r.get("piece_bytes") == grown and r.get("piece_bytes_used", 0) > grown,
                   "%s: ran hier in pieces grown above %s bytes (got %s, %s pieces of %s)"
                   % (tag, grown, r["algo"], r.get("pieces"), r.get("piece_bytes_used")))
            for q in r["projection"]:
                if (q["nodes"], q["local"]) != (2, 2):
                    continue
                expect(q["hier_pieces"] == r.get("pieces") and
                       q["hier_pipeline_bytes"] == r.get("piece_bytes_used"),
                       "%s 2x2@%g: projected in %s pieces of %s bytes, the library cut %s of %s"
                       % (tag, q["node_gbps"], q["hier_pieces"], q["hier_pipeline_bytes"],
                          r.get("pieces"), r.get("piece_bytes_used")))
                # The row's model of a ring middle in pieces is the projection's at the run's
                # own layout (each GPU's NIC at link_gbps: a node's at twice that): the ring
                # alone cut into pieces, no piece widened, staged or copied out.
                for m in r["model"] if algo == "ring" else []:
                    if 2 * m["link_gbps"] != q["node_gbps"]:
                        continue
                    expect(close(r["kernel_us"], q["hier_pipelined_kernel_us"], 1e-6) and
                           close(m.get("pipelined_time_us"), q["hier_pipelined_time_us"], 1e-6),
                           "%s 2x2@%g: the row's model, K %s us, pipelined %s us, vs the "
                           "projection's hier|P, K %s us, %s us"
                           % (tag, q["node_gbps"], r["kernel_us"], m.get("pipelined_time_us"),
                              q["hier_pipelined_kernel_us"], q["hier_pipelined_time_us"]))
            if kdoc:
                seen = check_projection(tag + " projection", r, kdoc, bits, bucket, grown)
                expect(seen == {(k, 2, L) for k in (2, 4) for L in (100, 3200)},
                       "%s: projected onto 2x2 and 4x2 (got %s)" % (tag, sorted(seen)))

    # GRADCOMP_AUTO times fp32 calls whatever the type of the calls it decides: a bf16 row's
    # auto is decided on the fp32 encode's rates. With the H100 report's rates the bf16
    # encode is the cheaper (4M elements: 24.4 us against 33.3), and 16 MB bf16 on 4 x 1
    # between 2700 and 2860 Gb/s (2100 and 2220 before the non-finite check's pass was
    # folded into the output's kernels, 2026-12-07) crosses where the lines through
    # bf16-priced calls pass calls the fp32-priced ones compress; check_projection holds every
    # point to the latter.
    h100 = os.path.join(src, "bench", "results", "2026-11-25-h100-80gb-hbm3.json")
    if os.path.exists(h100[:-5] + "/kernels.json"):
        hdoc = json.load(open(h100[:-5] + "/kernels.json"))
        gbps = list(range(2700, 2861, 20))
        code, out, rows = run(perf, ["-N", "2", "-b", "16M", "-e", "16M", "-n", "1", "-w", "0",
                                     "-c", "0", "-d", "bfloat16", "-m", "qsgd", "-q", str(bits),
                                     "-B", str(bucket), "--model-nodes", "4", "--model-local",
                                     "1", "--node-gbps", ",".join(map(str, gbps)),
                                     "--kernel-rates", h100],
                              os.path.join(work, "auto-fp32.json"))
        expect(code == 0 and len(rows) == 1, "bf16 auto projection exits 0 with one row")
        apart = 0
        for r in rows:
            tag = "auto on bf16 at fp32 rates"
            check_projection(tag, r, hdoc, bits, bucket, 8 << 20)
            # The case still tells the two pricings apart: at some point the rule's choice
            # on lines through bf16-priced timed calls is another than on fp32-priced ones.
            code_ = code_bytes(r["count"], bits, bucket)
            for p in r["projection"]:
                k, g, L = p["nodes"], p["local"], p["node_gbps"]
                choice = []
                for fp32 in (True, False):
                    timed = [project_point(r, hdoc, bits, bucket, 8 << 20, k, g, L, c, 4, False,
                                           code_bytes(c, bits, bucket) if fp32 else code_,
                                           fp32=fp32) for c in TIMED]
                    choice.append(auto_compresses([y["nccl"] for y in timed],
                                                  [y["comp"] for y in timed], 2, r["count"]))
                apart += choice[0] != choice[1]
        expect(apart > 0, "auto on bf16: some point between %s and %s Gb/s where fp32-priced and "
               "bf16-priced timed calls choose apart (none: the case no longer tells them apart)"
               % (gbps[0], gbps[-1]))

    # Pipelined reduce-scatter: each block of m = count elements is cut as two-shot cuts
    # its chunks (piece = ceil(B/4/N) rounded up to whole buckets); the row records the
    # pieces and the same two-stage pipelined model with its one all-to-all step per piece;
    # the wire bytes are the unpipelined rows' of rs.json. Projected at the same piece size
    # onto the run's own layout (N nodes of one GPU, each node's NIC a row model link), one
    # node of N GPUs and N x N: on the first two the library runs the flat reduce-scatter,
    # cut into the same pieces, so at N x 1 hier|P is the row model's pipelined time.
    code, out, rows = run(perf, ["-N", str(nranks), "-C", "reduce_scatter", "-b", "256K", "-e",
                                 "256K", "-n", "1", "-w", "0", "-d", "float,bfloat16", "-m", "qsgd",
                                 "-q", str(bits), "-B", str(bucket), "--model-nodes",
                                 "%d,1" % nranks, "--model-local", "1,%d" % nranks,
                                 "--node-gbps", ",".join(map(str, links)),
                                 "--model-pipe", str(pipe_bytes)],
                          os.path.join(work, "pipe-rs.json"),
                          env={"GRADCOMP_PIPELINE_BYTES": str(pipe_bytes)})
    expect(code == 0 and len(rows) == 2, "pipelined reduce-scatter run exits 0 with two rows")
    plain = {r["dtype"]: r for r in json.load(open(os.path.join(work, "rs.json")))["rows"]
             if r["method"] == "qsgd" and r["size"] == 256 << 10}
    for r in rows:
        tag = "pipelined rs %s" % r["dtype"]
        pieces = pieces_of(r["count"], bucket, nranks, pipe_bytes)
        expect(r["algo"] == "reducescatter", "%s: ran the reduce-scatter (got %s)" % (tag, r["algo"]))
        expect(pieces > 1, "%s: the case is cut into pieces" % tag)
        used = piece_bytes_used(r["count"], bucket, nranks, pipe_bytes)
        expect(r.get("pieces") == pieces and r.get("piece_bytes") == pipe_bytes and
               r.get("piece_bytes_used") == used,
               "%s: row records %s pieces of %s bytes, %s used (got %s, %s, %s)" %
               (tag, pieces, pipe_bytes, used, r.get("pieces"), r.get("piece_bytes"),
                r.get("piece_bytes_used")))
        expect(r["wrong"] == 0 and r["latency_steps"] == 2,
               "%s: no wrong elements, two steps (the all-to-all, the check's flag)" % tag)
        p = plain.get(r["dtype"])
        expect(p is not None and r["wire_bytes"] == p["wire_bytes"],
               "%s: wire bytes equal the unpipelined row's" % tag)
        expect(p is not None and p.get("pieces") == 1 and
               all(m.get("pipelined_time_us") is None for m in p["model"]),
               "%s: the unpipelined row has one piece and no pipelined model" % tag)
        expect(len(r["model"]) > 0, "%s: modeled" % tag)
        check_pipelined_model(tag, r, pieces, 2)
        if kdoc:
            seen = check_rs_projection(tag + " projection", r, kdoc, bits, bucket, pipe_bytes)
            want = {(k, g, L) for k in (nranks, 1) for g in (1, nranks) for L in links
                    if k * g > 1}
            expect(seen == want, "%s: projected onto %dx1, 1x%d and %dx%d (got %s)"
                   % (tag, nranks, nranks, nranks, nranks, sorted(seen)))
        for m in r["model"]:
            for q in r["projection"]:
                if (q["nodes"], q["local"], q["node_gbps"]) != (nranks, 1, m["link_gbps"]):
                    continue
                expect(q["hier_pieces"] == pieces and
                       q["hier_pipeline_bytes"] == r.get("piece_bytes_used") and
                       close(q["hier_pipelined_kernel_us"], r["kernel_us"], 1e-6) and
                       close(q["hier_pipelined_time_us"], m.get("pipelined_time_us"), 1e-6),
                       "%s %dx1@%g: the flat reduce-scatter cut into %s pieces, hier|P %s us "
                       "(K %s), vs the row model's %s pieces, %s us (K %s)"
                       % (tag, nranks, m["link_gbps"], q["hier_pieces"],
                          q["hier_pipelined_time_us"], q["hier_pipelined_kernel_us"], pieces,
                          m.get("pipelined_time_us"), r["kernel_us"]))

    # One node of N ranks (--local-size N on N ranks) is no hierarchy: the library runs the
    # flat algorithm, cut into pieces, and the row model, every byte on the in-node link,
    # gives it a pipelined time (two-shot on its two streams, the ring and the reduce-scatter
    # the two-stage pipeline). Projected at the same piece size onto 1 x N: the library's
    # pieces and the row model's pipelined time (the projection counts the bytes as the rows
    # send them at N = 4).
    one = 4
    for algo, steps in (("twoshot", 2), ("ring", one), ("reducescatter", 2)):
        rs = algo == "reducescatter"
        args = ["-N", str(one), "--local-size", str(one), "-b", "256K", "-e", "256K", "-n", "1",
                "-w", "0", "-d", "float,bfloat16", "-m", "qsgd", "-q", str(bits), "-B",
                str(bucket), "--model-nodes", "1", "--model-local", str(one), "--node-gbps",
                ",".join(map(str, links)), "--model-pipe", str(pipe_bytes)]
        args += ["-C", "reduce_scatter"] if rs else ["-a", algo]
        code, out, rows = run(perf, args, os.path.join(work, "one-node-pipe-%s.json" % algo),
                              env={"GRADCOMP_PIPELINE_BYTES": str(pipe_bytes)})
        expect(code == 0 and len(rows) == 2,
               "pipelined %s on one node of %d exits 0 with two rows" % (algo, one))
        for r in rows:
            tag = "one node of %d, pipelined %s %s" % (one, algo, r["dtype"])
            if rs:
                pieces = pieces_of(r["count"], bucket, one, pipe_bytes)
            else:
                pieces = flat_pieces(r["count"], bucket, one, pipe_bytes)
            expect(r["algo"] == algo and pieces > 1 and r.get("pieces") == pieces and
                   r.get("inter_wire_bytes") == 0 and r["latency_steps"] == steps,
                   "%s: ran %s (got %s) in the node, cut into %s pieces (the row: %s)"
                   % (tag, algo, r["algo"], pieces, r.get("pieces")))
            expect(len(r["model"]) == len(links), "%s: modeled at every link" % tag)
            check_pipelined_model(tag, r, pieces, steps,
                                  two_shot_ranks=one if algo == "twoshot" else 0,
                                  one_node=3600.0)
            if kdoc:
                seen = (check_rs_projection if rs else check_projection)(
                    tag + " projection", r, kdoc, bits, bucket, pipe_bytes)
                expect(seen == {(1, one, L) for L in links},
                       "%s: projected onto 1x%d (got %s)" % (tag, one, sorted(seen)))
            for m in r["model"]:
                for q in r["projection"]:
                    if q["node_gbps"] != m["link_gbps"]:
                        continue
                    same = (close(q["hier_pipelined_kernel_us"], r["kernel_us"], 1e-6) and
                            close(q["hier_pipelined_time_us"], m.get("pipelined_time_us"), 1e-6))
                    expect(q["hier_pieces"] == pieces and
                           q["hier_pipeline_bytes"] == r.get("piece_bytes_used") and same,
                           "%s 1x%d@%g: the flat %s cut into %s pieces, hier|P %s us (K %s), vs "
                           "the row model's %s pieces, %s us (K %s)"
                           % (tag, one, m["link_gbps"], algo, q["hier_pieces"],
                              q["hier_pipelined_time_us"], q["hier_pipelined_kernel_us"], pieces,
                              m.get("pipelined_time_us"), r["kernel_us"]))

    # Reduce-scatter on 2 nodes of 2 ranks: the hierarchical reduce-scatter's rows.
    # Projected (--model-nodes) onto flat layouts (K x 1, 1 node is none of them: K >= 2) and
    # hierarchies, the run's own 2 x 2 among them at NICs of 2 x the row model's links.
    proj = ["--model-nodes", "2,4", "--model-local", "1,2", "--node-gbps", "20,200"]
    code, out, rows = run(perf, ["-N", "4", "-C", "reduce_scatter", "--local-size", "2", "-b", "64K",
                                 "-e", "256K", "-f", "4", "-n", "1", "-w", "0", "-d", "float,bfloat16",
                                 "-m", "qsgd,topk", "-q", str(bits), "-B", str(bucket)] + proj,
                          os.path.join(work, "hier-rs.json"))
    expect(code == 0, "hier reduce-scatter run exits 0 (got %d)" % code)
    expect("reduce-scatter: the hierarchical one" in out,
           "the preamble says how hier reduce-scatter rows are modeled")
    expect(len(rows) == 2 * 2 * len(sizes), "hier reduce-scatter: one row per type, method, size")
    check_hier_rs_rows("hier rs", rows, kdoc, 4, 2, bits, bucket)
    expect("# projection onto K nodes x G GPUs" in out and "reduce-scatter: flat, the flat" in out,
           "the reduce-scatter run prints its projection, saying what it models")
    want = {(k, g, L) for k in (2, 4) for g in (1, 2) for L in (20, 200)}
    for r in rows:
        t = "rs projection %s %s %d" % (r["method"], r["dtype"], r["size"])
        if r["method"] != "qsgd":
            expect(r["projection"] == [], "%s: a sparse row is not projected" % t)
            continue
        seen = check_rs_projection(t, r, kdoc, bits, bucket, 8 << 20)
        expect(seen == want, "%s: every K with every G at 20, 200 Gb/s (got %s)" % (t, sorted(seen)))
        check_rs_projection_vs_rows(t, r)
    # The rows' table lines; the projection's (size, type, KxG, ...) left out.
    table = [ln.split() for ln in out.splitlines() if ln.strip() and not ln.startswith("#")
             and not re.fullmatch(r"\d+x\d+", ln.split()[2])]
    expect(len(table) == len(rows) and all(t[17] == "hier_reducescatter" for t in table),
           "hier reduce-scatter: the table's algo column names it (got %s)"
           % [t[17] for t in table if len(t) > 17])
    # The same pipelined (GRADCOMP_PIPELINE_BYTES): the in-node reduce-scatter of each piece
    # overlaps the inter-node stage of the one before; the bytes are the unpipelined rows'.
    code, out, rows = run(perf, ["-N", "4", "-C", "reduce_scatter", "--local-size", "2", "-b", "256K",
                                 "-e", "256K", "-n", "1", "-w", "0", "-d", "float,bfloat16",
                                 "-m", "qsgd,topk", "-q", str(bits), "-B", str(bucket)] + proj +
                          ["--model-pipe", str(pipe_bytes)],
                          os.path.join(work, "hier-rs-pipe.json"),
                          env={"GRADCOMP_PIPELINE_BYTES": str(pipe_bytes)})
    expect(code == 0 and len(rows) == 4, "pipelined hier reduce-scatter run exits 0 with 4 rows")
    check_hier_rs_rows("pipelined hier rs", rows, kdoc, 4, 2, bits, bucket, pipe_bytes=pipe_bytes)
    for r in rows:
        if r["method"] == "qsgd":
            t = "pipelined rs projection %s %d" % (r["dtype"], r["size"])
            check_rs_projection(t, r, kdoc, bits, bucket, pipe_bytes)
            expect(any(p["hier_pieces"] > 1 for p in r["projection"]),
                   "%s: the projection pipelines some hier points" % t)
            check_rs_projection_vs_rows(t, r)
    plain = {(r["method"], r["dtype"]): r
             for r in json.load(open(os.path.join(work, "hier-rs.json")))["rows"]
             if r["size"] == 256 << 10}
    for r in rows:
        p = plain.get((r["method"], r["dtype"]))
        expect(p is not None and (p["wire_bytes"], p["inter_wire_bytes"]) ==
               (r["wire_bytes"], r["inter_wire_bytes"]),
               "pipelined hier rs %s %s: bytes equal the unpipelined row's" % (r["method"], r["dtype"]))

    # --auto: each row also runs a comm with GRADCOMP_AUTO=1; the CPU backend
    # does not time, so auto compresses, is checked, and the regret key is null.
    apath = os.path.join(work, "auto.json")
    code, out, rows = run(perf, ["-N", "2", "-b", "256K", "-e", "1M", "-f", "4", "-n", "1", "-w",
                                 "0", "--auto"], apath)
    expect(code == 0 and len(rows) == 2, "--auto run exits 0 with two rows")
    for r in rows:
        expect(r.get("auto_choice") == "compress" and r.get("auto_time_us", 0) > 0,
               "--auto row at %d B: auto compresses on the CPU backend, timed" % r["size"])
        expect(all(r.get(k, 0) > 0 for k in ("auto_forced_time_us", "auto_nccl_time_us")),
               "--auto row at %d B: forced and NCCL timed beside auto" % r["size"])
        best = min(r.get("auto_forced_time_us", 0), r.get("auto_nccl_time_us", 0))
        expect(best > 0 and abs(r.get("auto_regret", -9) - (r["auto_time_us"] / best - 1)) < 1e-6,
               "--auto row at %d B: regret = auto / min(forced, NCCL) - 1, of the times taken "
               "side by side" % r["size"])
    with open(apath) as f:
        expect(json.load(f).get("auto_regret_max_frac", 0) is None,
               "auto_regret_max_frac is null on the CPU backend")
    expect("Auto regret, worst" in out and "does not time, so auto compresses" in out,
           "--auto: the table says what auto did and its worst regret")
    footer = [ln for ln in out.splitlines() if ln.startswith("# Auto regret, worst")]
    expect(len(footer) == 1 and "not measured on the cpu backend" in footer[0],
           "--auto on the CPU backend: the footer's worst regret is not measured, as the JSON's "
           "null (got %s)" % footer)
    # The same with -C reduce_scatter: the auto comm's reduce-scatter is checked
    # and reported like the allreduce's.
    code, out, rows = run(perf, ["-N", "2", "-C", "reduce_scatter", "-b", "128K", "-e", "128K",
                                 "-n", "1", "-w", "0", "--auto"], os.path.join(work, "auto-rs.json"))
    expect(code == 0 and len(rows) == 1 and rows[0].get("collective") == "reduce_scatter",
           "-C reduce_scatter --auto run exits 0 with one reduce-scatter row")
    expect(all(r.get("auto_choice") == "compress" and r.get("auto_time_us", 0) > 0 for r in rows),
           "-C reduce_scatter --auto: auto compresses on the CPU backend, timed")
    # The auto comm's own check: its result's values, hash and rank weights reported.
    expect(all(r.get("auto_wrong") == 0 and r.get("auto_identical") is None and
               r.get("auto_rank_weights_wrong") == 0 for r in rows),
           "-C reduce_scatter --auto: the auto comm's result checked (auto_wrong 0, its rank "
           "weights right; nothing to hash-compare)")

    code, out, rows = run(perf, ["-N", "2", "-b", "256K", "-e", "256K", "-n", "1", "-w", "0",
                                 "--debug-corrupt"], os.path.join(work, "corrupt.json"))
    expect(code == 1, "a corrupted element makes the run exit 1 (got %d)" % code)
    expect(len(rows) == 1 and rows[0]["wrong"] >= 1, "the corrupted element is counted wrong")
    expect(len(rows) == 1 and rows[0].get("identical") is False,
           "rank 0's corrupted element makes the ranks' results differ")
    expect("FAILED" in out, "the footer says FAILED")

    # The rank-weight check: every rank's input enters an unbiased (stochastic QSGD)
    # result with weight 1; a lost input (weight 0) or a doubled one (2) fails the run,
    # which the per-element bound, about four input deviations wide at 4 bits, lets pass.
    sizes = ["-N", "4", "-b", "256K", "-e", "256K", "-n", "1", "-w", "0"]
    code, out, rows = run(perf, sizes + ["--auto"], os.path.join(work, "weights.json"))
    expect(code == 0 and len(rows) == 1 and rows[0].get("rank_weights_wrong") == 0 and
           0.95 < rows[0]["rank_weight_min"] <= rows[0]["rank_weight_max"] < 1.05,
           "4-bit two-shot at 4 ranks: every input's weight within 0.05 of 1 (got %s .. %s)" %
           (rows[0].get("rank_weight_min"), rows[0].get("rank_weight_max")))
    expect(rows[0].get("auto_wrong") == 0 and rows[0].get("auto_identical") is True and
           rows[0].get("auto_rank_weights_wrong") == 0,
           "--auto: the auto comm's result checked, compared across ranks and weighed")
    for w in (0, 2):
        code, out, rows = run(perf, sizes + ["--debug-rank-weight", str(w)],
                              os.path.join(work, "weights%d.json" % w))
        got = rows[0]["rank_weight_min"] if w == 0 else rows[0]["rank_weight_max"]
        expect(code == 1 and rows[0].get("rank_weights_wrong") == 1 and abs(got - w) < 0.05 and
               rows[0].get("wrong") == 0 and "wrong weight" in out,
               "--debug-rank-weight %d: rank 0's input weighed %.3f, the run fails though no "
               "value is out of bounds" % (w, got))
    code, out, rows = run(perf, sizes + ["-m", "topk", "--debug-rank-weight", "0"],
                          os.path.join(work, "weights-topk.json"))
    expect(code == 0 and rows[0].get("rank_weights_wrong") is None,
           "top-k rows are not weighed (a sparse result takes each input partly by design)")

    check_flags(perf, work, src, kdoc, bits, bucket)

    # The check gpu-check runs on the CUDA backend's rows, here on the CPU backend's.
    for name in ("ok.json", "ring.json", "rs.json", "hier-rs.json", "hier-piped.json",
                 "hier-auto.json", "hier-twoshot.json", "hier-odd.json"):
        model_check.check_rows(os.path.join(work, name))
    model_check.check_rows(os.path.join(work, "hier-piped-split.json"))
    model_check.check_rows(os.path.join(work, "projection.json"))
    model_check.check_rows(os.path.join(work, "pipe-rs.json"))
    for name in ("pipe-twoshot.json", "pipe-ring.json", "one-node-pipe-twoshot.json",
                 "one-node-pipe-ring.json", "one-node-pipe-reducescatter.json",
                 "hier-pipe-twoshot.json", "hier-pipe-ring.json"):
        model_check.check_rows(os.path.join(work, name))

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
