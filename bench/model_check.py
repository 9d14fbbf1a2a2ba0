#!/usr/bin/env python3
"""The link model's kernel accounting in gradcomp_perf JSON rows, CUDA backend included.

Every QSGD row whose kernels were timed carries kernel_costs (microseconds per element of each
kernel; the elementwise passes per byte), kernel_work (how many of each per element of the
buffer) and kernel_us. This checks, per row: every cost finite and positive, kernel_us the sum
of work times cost over the row's count (a hier row whose ring middle was cut into pieces: its
ring's work at those costs plus the rest, elementwise, at the unpipelined launches), and the work what bench/smoke_check.py reads off
plugin/algorithms/ for the flat algorithms (two-shot, ring, allgather, the flat reduce-scatter)
and the hierarchies (on the JSON's local_size). Beside that it prints, as information only (timing is never asserted),
each row's decode overwrite over decode-accumulate and elementwise bandwidth.
tools/gpu-check.sh runs it on the perf step's JSON; CTest's smoke check on the CPU backend's.
Usage: model_check.py PERF_JSON...
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checklib import close, expect, verdict  # noqa: E402
from smoke_check import (TYPE_BYTES, check_sparse_row, check_us, code_bytes,  # noqa: E402
                         first_part, kernel_total, kernel_work, warp_bucket)
from smoke_check import hier_pipelined  # noqa: E402
from smoke_check import encoded, flat_pieces, hier_pieces, pieces_of  # noqa: E402
from smoke_check import hier_middle_work  # noqa: E402

FLAT = ("twoshot", "ring", "allgather", "reducescatter")


SPARSE = ("topk", "dgc", "randk")


def check_sparse(tag, r):
    """A sparse row: its costs (the selector's only where it runs one), its work read off its
    settings (sparse_kind) and kernel_us = the sum, as smoke_check recomputes them."""
    costs, kind = r.get("kernel_costs") or {}, r.get("sparse_kind")
    expect(kind is not None, "%s: sparse_kind" % tag)
    if kind is None:
        return
    selects = r["method"] != "randk" and not kind["dense"]
    flags = r["method"] == "randk" and not kind["dense"]
    expect(all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
               for v in costs.values()) and costs.get("elementwise_per_byte", 0) > 0 and
           (costs.get("select", 0) > 0) == selects and
           (costs.get("check_lists", 0) > 0) == selects and
           (costs.get("nonfinite_flag", 0) > 0) == flags,
           "%s: costs finite, positive where charged: %s" % (tag, costs))
    check_sparse_row(tag, r, None, r["method"], kind)
    print("%s: select %.1f us, elementwise %.0f GB/s, K %.1f us" %
          (tag, costs.get("select", 0) * r["count"], 1e-3 / costs["elementwise_per_byte"],
           r["kernel_us"]))


def hier_middle(label, nodes):
    """The middle algorithm a hierarchical row ran (gradcomp_perf's hierMiddle)."""
    for algo in ("twoshot", "ring", "allgather"):
        if "algo=%s" % algo in label:
            return algo
    return "allgather" if nodes <= 2 else "twoshot"


def check_projection_pieces(tag, r, doc):
    """The projection's pipelined hierarchy: the library cuts a two-shot middle into pieces
    (the hierarchy pipelined) and a ring middle (its own pieces, the same count, inside an
    unpipelined hierarchy), never an allgather middle, and on `auto` the middle across 2
    nodes is an allgather; there hier|P is the unpipelined hier. hier_pipeline_bytes is the
    piece the library cuts, whole buckets of each of the middle's k chunks (of the flat
    algorithm's n) as fp32: a multiple of 4 k bucket, from which the pieces follow as from
    the setting (a larger piece the rule would round up or grow no further). The hierarchy's
    latency steps are
    the middle's the library runs (plugin/algorithms/allgather.cc pickDenseAlgorithm: an
    allgather, one step, on `auto` across 2 nodes; two-shot's 2, the ring's k), and its
    inter-node bytes that middle's: (k-1) E(S/G) for an allgather, 2(k-1)/k E(S/G) else."""
    label = r.get("label") or ""
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    intra, lat = doc.get("intra_gbps"), doc.get("link_latency_us")
    if r.get("collective") == "reduce_scatter":
        check_rs_projection_points(tag, r, intra, lat)
        return
    for p in r.get("projection") or []:
        t = "%s %dx%d@%g" % (tag, p["nodes"], p["local"], p["node_gbps"])
        k, g = p["nodes"], p["local"]
        if k < 2 or g < 2:
            # No hierarchy (gc::hierLayout): the library runs the flat algorithm, and cuts a
            # two-shot or ring (not the allgather) into the pieces of its longest chunk, each
            # hier_pipeline_bytes; one piece gives the unpipelined time. Pipelined, never
            # below either stream's own work: every kernel on the compute stream, the flat
            # bytes and every piece's steps (two-shot's 2 exchanges, the ring's N-1 hops and
            # its allgather) on the comm stream.
            n = k * g
            pipe = p["hier_pipeline_bytes"]
            flat = hier_middle(label, n)
            pieces = flat_pieces(r["count"], r["bucket"], n, pipe) if flat != "allgather" else 1
            expect(p["hier_pieces"] == pieces and (pieces > 1) == (pipe > 0) and
                   pipe % (4 * n * r["bucket"]) == 0 and
                   p["hier_time_us"] == p["flat_time_us"] and
                   (pieces > 1 or p["hier_pipelined_time_us"] == p["flat_time_us"]) and
                   p["hier_inter_bytes"] == p["flat_inter_bytes"],
                   "%s: no hierarchy: hier's figures are flat's, cut as the library cuts them "
                   "(hier %s us, P = %s of %s bytes, the library's %s of a multiple of %s; "
                   "hier|P %s us; flat %s us)"
                   % (t, p["hier_time_us"], p["hier_pieces"], pipe, pieces, 4 * n * r["bucket"],
                      p["hier_pipelined_time_us"], p["flat_time_us"]))
            if pieces > 1 and intra is not None and lat is not None and \
                    isinstance(p.get("hier_pipelined_kernel_us"), (int, float)):
                comm = (max(us(p["flat_intra_bytes"], intra),
                            us(p["flat_inter_bytes"], p["node_gbps"] / g))
                        + (n if flat == "ring" else 2) * pieces * lat)
                own = max(p["hier_pipelined_kernel_us"], comm)
                expect(p["hier_pipelined_time_us"] >= (1 - 1e-9) * own,
                       "%s: pipelined flat %s us is shorter than a stream's own %s us"
                       % (t, p["hier_pipelined_time_us"], own))
            continue
        middle = hier_middle(label, k)
        pipe = p["hier_pipeline_bytes"]
        if middle == "allgather":
            expect(p["hier_pieces"] == 1 and close(p["hier_pipelined_time_us"], p["hier_time_us"]),
                   "%s: an allgather middle is one piece: hier|P %s us (P = %s) vs hier %s us" %
                   (t, p["hier_pipelined_time_us"], p["hier_pieces"], p["hier_time_us"]))
        else:
            pieces = hier_pieces(r["count"], r["bucket"], k, g, pipe)
            expect(p["hier_pieces"] == pieces and pipe % (4 * k * r["bucket"]) == 0,
                   "%s: a %s middle in %s pieces of %s bytes, the library's %s (its piece: "
                   "whole buckets of each of the k chunks, a multiple of %s bytes)" %
                   (t, middle, p["hier_pieces"], pipe, pieces, 4 * k * r["bucket"]))
        es = encoded(-(-r["count"] // g), r["bits"], r["bucket"])
        inter = (k - 1) * es if middle == "allgather" else 2 * (k - 1) / k * es
        expect(close(p["hier_inter_bytes"], inter),
               "%s: a %s middle's inter-node bytes %s vs %s" % (t, middle, p["hier_inter_bytes"],
                                                                inter))
        if intra is None or lat is None or not isinstance(p.get("hier_kernel_us"), (int, float)):
            continue
        steps = 2 * (g - 1) + {"twoshot": 2, "allgather": 1, "ring": k}[middle]
        links = us(p["hier_intra_bytes"], intra) + us(p["hier_inter_bytes"], p["node_gbps"] / g)
        expect(close(p["hier_time_us"] - p["hier_kernel_us"] - links, steps * lat),
               "%s: hier's latency %s us vs %s steps of a %s middle" %
               (t, p["hier_time_us"] - p["hier_kernel_us"] - links, steps, middle))
        if middle == "ring" and p["hier_pieces"] > 1:
            # The ring's pieces: never shorter than its links, the NVLink stages whole and
            # the ring's k steps for every piece.
            own = links + (2 * (g - 1) + p["hier_pieces"] * k) * lat
            expect(p["hier_pipelined_time_us"] >= (1 - 1e-9) * own,
                   "%s: a ring middle in %s pieces, %s us, is shorter than its links' %s us" %
                   (t, p["hier_pieces"], p["hier_pipelined_time_us"], own))


def check_rs_projection_points(tag, r, intra, lat):
    """A reduce-scatter row's projection (clusterReduceScatterModel): on >= 2 nodes of >= 2
    GPUs the hierarchical reduce-scatter, (G-1) k m 4 bytes in the node and (k-1) E(m) across,
    G latency steps; elsewhere the flat one, hier's figures flat's, cut into the pieces the
    library cuts it into among the N ranks, each hier_pipeline_bytes; one piece giving the
    unpipelined time. With error feedback (the reduce-scatter's only state) one more step: the
    non-finite check's flag."""
    check_steps = 0 if "ef=0" in (r.get("label") or "") else 1
    us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
    m_ = r["count"]
    e = encoded(m_, r["bits"], r["bucket"])
    for p in r.get("projection") or []:
        t = "%s %dx%d@%g" % (tag, p["nodes"], p["local"], p["node_gbps"])
        k, g = p["nodes"], p["local"]
        if k < 2 or g < 2:
            pipe, pieces = p["hier_pipeline_bytes"], 1
            if pipe:
                pieces = pieces_of(m_, r["bucket"], k * g, pipe)
            expect(p["hier_time_us"] == p["flat_time_us"] and
                   close(p["hier_inter_bytes"], (k * g - g) * e) and
                   p["hier_pieces"] == pieces and (pieces > 1) == (pipe > 0) and
                   (pieces > 1 or p["hier_pipelined_time_us"] == p["flat_time_us"]),
                   "%s: no hierarchy: the flat reduce-scatter's figures (%s pieces at %s bytes, "
                   "the library's %s)" % (t, p["hier_pieces"], pipe, pieces))
            continue
        expect(close(p["hier_intra_bytes"], (g - 1) * k * m_ * 4) and
               close(p["hier_inter_bytes"], (k - 1) * e),
               "%s: hier reduce-scatter bytes %s, %s" % (t, p["hier_intra_bytes"],
                                                        p["hier_inter_bytes"]))
        expect(p["hier_pieces"] > 1 or close(p["hier_pipelined_time_us"], p["hier_time_us"]),
               "%s: one piece is the unpipelined hier" % t)
        if intra is None or lat is None or not isinstance(p.get("hier_kernel_us"), (int, float)):
            continue
        links = us(p["hier_intra_bytes"], intra) + us(p["hier_inter_bytes"], p["node_gbps"] / g)
        expect(close(p["hier_time_us"] - p["hier_kernel_us"] - links, (g + check_steps) * lat),
               "%s: hier reduce-scatter's latency %s us vs %s steps" %
               (t, p["hier_time_us"] - p["hier_kernel_us"] - links, g + check_steps))


def check_hier_pipelined(tag, r, doc, local, state, ring=None):
    """A hier row cut into pieces: its pipelined model per link, the NVLink reduce-scatter
    moving fp32 and the allgather the buffer's type (4 / (4 + e) and e / (4 + e) of the
    row's in-node bytes; plugin/algorithms/hier.cc), each GPU's NIC at the column's rate;
    where the call holds state (`state`), the non-finite check once after the pieces. A ring
    middle (`ring`: its kernels' us at the row's costs) is cut into its own pieces inside an
    unpipelined hierarchy (model.cc clusterModel): the rest of the kernels, the whole NVLink
    stages, 2(G-1) steps, and the ring in the two-stage pipeline of its kernels and its
    inter-node bytes, k steps a piece."""
    intra, lat = doc.get("intra_gbps"), doc.get("link_latency_us")
    if intra is None or lat is None or r.get("pieces", 1) <= 1:
        return
    wire, inter = r["wire_bytes"], r["inter_wire_bytes"]
    if ring is not None:
        us = lambda b, gbps: b * 8 / (gbps * 1e3)  # noqa: E731
        P, k = r["pieces"], r["nranks"] // local
        for m in r.get("model") or []:
            kp, wp = ring / P, us(inter / P, m["link_gbps"]) + k * lat
            piped = (r["kernel_us"] - ring + us(wire - inter, intra) + 2 * (local - 1) * lat +
                     kp + wp + (P - 1) * max(kp, wp))
            expect(close(m.get("pipelined_time_us"), piped, 1e-6),
                   "%s: a ring middle in %s pieces at %g: %s us vs %s (the ring alone in "
                   "pieces)" % (tag, P, m["link_gbps"], m.get("pipelined_time_us"), piped))
        return
    chk = check_us(r["count"], TYPE_BYTES[r["dtype"]], r.get("kernel_costs")) if state else 0
    for m in r.get("model") or []:
        piped = hier_pipelined(r["kernel_us"] - chk, wire - inter, inter, intra, m["link_gbps"],
                               local, (r["latency_steps"] - 2 * (local - 1)) * lat, lat,
                               r["pieces"], TYPE_BYTES[r["dtype"]]) + chk
        expect(close(m.get("pipelined_time_us"), piped, 1e-6),
               "%s: pipelined hier model at %g: %s vs %s (in-node bytes split 4 : %d)" %
               (tag, m["link_gbps"], m.get("pipelined_time_us"), piped, TYPE_BYTES[r["dtype"]]))


def check_projection_piece_bytes(tag, r):
    """A projection point run in one piece shows no piece size: hier_pipeline_bytes 0 where
    hier_pieces is 1 (the pipelined path not taken), the piece the library cuts at
    --model-pipe where cut."""
    for p in r.get("projection") or []:
        expect(p["hier_pipeline_bytes"] == 0 if p["hier_pieces"] == 1
               else p["hier_pipeline_bytes"] > 0,
               "%s %dx%d@%g: hier_pipeline_bytes %s at %s pieces (0: not cut)" %
               (tag, p["nodes"], p["local"], p["node_gbps"], p["hier_pipeline_bytes"],
                p["hier_pieces"]))


def check_rows(path):
    doc = json.load(open(path))
    rows, local = doc["rows"], doc.get("local_size", 1)
    seen = 0
    for r in rows:
        if r.get("method") == "qsgd" and r.get("kernels_measured"):
            check_projection_pieces("%s: %s %s %d" % (os.path.basename(path), r["dtype"],
                                                      r.get("label"), r["size"]), r, doc)
        if r.get("method") == "qsgd" and r.get("kernels_measured"):
            check_projection_piece_bytes("%s: %s %s %d" % (os.path.basename(path), r["dtype"],
                                                           r.get("label"), r["size"]), r)
        inter = r.get("inter_wire_bytes")
        flat = inter is None or inter >= r["wire_bytes"]
        if (r.get("method") in SPARSE and r.get("kernels_measured") and r.get("sparse_kind") and
                r["algo"] in ("sparse", "reducescatter") and flat):
            seen += 1
            check_sparse("%s: %s %s %s %d" % (os.path.basename(path), r["algo"], r["dtype"],
                                               r.get("label"), r["size"]), r)
            continue
        if r.get("method") != "qsgd" or not r.get("kernels_measured"):
            continue
        seen += 1
        tag = "%s: %s %s %s %d" % (os.path.basename(path), r["algo"], r["dtype"], r.get("label"),
                                    r["size"])
        costs, work = r.get("kernel_costs"), r.get("kernel_work")
        expect(costs is not None and work is not None, "%s: kernel_costs and kernel_work" % tag)
        if costs is None or work is None:
            continue
        # sum_per_byte: the fused owner's sum's measured rate, 0 where it is estimated (no
        # qsgd_sum8 row in the report; the GPU backend, which cannot time it).
        expect(all(isinstance(v, (int, float)) and math.isfinite(v) and
                   (v >= 0 if k == "sum_per_byte" else v > 0) for k, v in costs.items()),
               "%s: every cost finite and positive: %s" % (tag, costs))
        label = r.get("label") or ""
        # A hier row whose ring middle was cut into pieces: the ring's kernels at the row's
        # costs (its pieces' launches), the rest of the work (elementwise passes) at the
        # unpipelined launches, which the row does not record: a positive rate.
        ring = None
        if (r["algo"] == "hier" and local > 1 and r.get("pieces", 1) > 1 and
                hier_middle(label, r["nranks"] // local) == "ring"):
            mw = hier_middle_work("ring", r["nranks"], local, "ef=0" not in label,
                                  warp_bucket(r["bucket"]),
                                  code_bytes(r["count"], r["bits"], r["bucket"]))
            ring = kernel_total(mw, costs, r["count"])
            rest = r["kernel_us"] - ring
            rest_bytes = work["elementwise_bytes"] - mw["elementwise_bytes"]
            expect(rest_bytes > 0 and rest > 0 and
                   all(close(work[k_], v) for k_, v in mw.items() if k_ != "elementwise_bytes"),
                   "%s: a ring middle in pieces: kernel_us %s = the ring's %s at the row's costs "
                   "+ the rest's %s elementwise bytes an element at a positive rate"
                   % (tag, r["kernel_us"], ring, rest_bytes))
        else:
            total = kernel_total(work, costs, r["count"])
            expect(close(r["kernel_us"], total, 1e-6),
                   "%s: kernel_us %s = sum of work * cost, %s" % (tag, r["kernel_us"], total))
        # Flat: every byte leaves the node (a hierarchy keeps its in-node stages' bytes), or
        # one node (--local-size N on N ranks: no hierarchy, every byte stays in it).
        inter = r.get("inter_wire_bytes")
        flat = inter is None or inter >= r["wire_bytes"] or r["nranks"] // local < 2
        residual = "ef=0" not in label
        # The owner's sum and the output's decodes fused on a warp bucket; the sum reads the
        # peers' codes (code_bytes of the row's bits and bucket).
        fused, code = warp_bucket(r["bucket"]), code_bytes(r["count"], r["bits"], r["bucket"])
        w = None
        # The hierarchical reduce-scatter; files from before 2026-12-05 named it as the flat
        # one ("reducescatter"), told apart by its nodes and in-node bytes.
        algo = r["algo"]
        if algo == "reducescatter" and local > 1 and not flat:
            algo = "hier_reducescatter"
        # The state the non-finite check guards: error feedback's residual, or the owner
        # residual (GRADCOMP_OWNER_RESIDUAL, on by default; the label does not name it) of
        # an algorithm with an owner's chunk.
        middle = hier_middle(label, r["nranks"] // local) if algo == "hier" else None
        state = residual or algo in ("twoshot", "ring") or middle in ("twoshot", "ring")
        if algo in FLAT and flat:
            convert = r["dtype"] != "float" or r.get("redop") == "avg"
            w = kernel_work(r["algo"], r["nranks"], TYPE_BYTES[r["dtype"]], residual, convert,
                            fused=fused, code=code, state=state)
        elif algo in ("hier", "hier_reducescatter") and local > 1 and not flat:
            # The hierarchies, on nodes of `local` ranks (the JSON's local_size), as
            # smoke_check's check_kernels reads them off plugin/algorithms/.
            bucket = r["bucket"]
            padded = (r["algo"] == "hier" and
                      first_part(r["count"], local, bucket) * local != r["count"])
            w = kernel_work(algo, r["nranks"], TYPE_BYTES[r["dtype"]], residual,
                            r["dtype"] != "float", local,
                            hier_middle(label, r["nranks"] // local),
                            r.get("pieces", 1) > 1 and ring is None, padded, fused, code, state)
            if algo == "hier":
                check_hier_pipelined(tag, r, doc, local, state, ring)
        if w is not None:
            expect(all(close(work.get(k), v) for k, v in w.items()),
                   "%s: kernel work %s vs %s" % (tag, work, w))
        print("%s: decode overwrite / accumulate %.2f, elementwise %.0f GB/s, K %.1f us" %
              (tag, costs["decode"] / costs["decode_acc"], 1e-3 / costs["elementwise_per_byte"],
               r["kernel_us"]))
    expect(seen > 0, "%s: QSGD or sparse rows with timed kernels" % path)


def main():
    for path in sys.argv[1:]:
        check_rows(path)
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
