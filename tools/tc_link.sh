#!/usr/bin/env bash
# A real slow link (issue 15): gradcomp_perf's ranks, each in its own network
# namespace joined to a bridge by a veth pair whose both ends are shaped with
# a tc token bucket (tbf) at L Gb/s: every rank gets a link of L Gb/s each
# way, which is what the link model assumes. One process per rank, as under
# mpirun.
#
# GPU mode (the GPU box): NCCL's socket transport over those links, all ranks
# on one GPU. For each L and N: QSGD 4-bit and DGC 0.1% against NCCL on the
# same link at 256 MB, the measured times and speedups next to the model's
# prediction for that link (gradcomp_perf --link-gbps L).
# CPU mode (--cpu, no GPU): gradcomp_perf --backend socket, the CPU backend's
# host codecs over gradcomp's own TCP transport; the baseline is the
# uncompressed call over the same links (the transport's direct two-shot),
# not NCCL, and the model adds the link to the host work timed in the same
# run (docs/benchmark.md, "A slow link on a CPU machine").
#
#   tools/tc_link.sh RAW_DIR [BUILD_DIR]        (root; needs ip, tc, python3, a GPU)
#   tools/tc_link.sh --cpu RAW_DIR [BUILD_DIR]  (root; needs ip, tc, python3)
#   tools/tc_link.sh --selftest                 (root; no GPU: shape 2 namespaces at
#                                                1 Gb/s, measure with python sockets)
#   tools/tc_link.sh --args-check [BUILD_DIR]   (no root, no GPU needed: rank 0's command of
#                                                each GPU run, started with no GPU visible,
#                                                must get as far as its GPU lookup; exit 1
#                                                if gradcomp_perf refuses one)
#
# When namespaces cannot be made it falls back to shaping `lo` at N*L Gb/s
# (shared by all ranks, so L each when all send at once) and says so; when
# tc is refused too, RAW_DIR/tc_link.json carries tc_unavailable_reason with
# the exact error. GC_TC_NO_LO=1 leaves lo alone (the CTest check sets it: lo
# carries every concurrent test's sockets, and the runs' roots use fixed ports
# there): namespaces refused, the reason is recorded instead.
# GC_TC_GBPS (default "10 0 25"; --cpu "0.1 1"), GC_TC_RANKS ("2 4"), GC_TC_SIZE
# (256M; --cpu 32M) and GC_TC_ITERS (3) change the sweep; a rate of 0 is the
# same namespaces and links unshaped: the control that says whether NCCL on
# the shared GPU could go faster than the shaped link at all (its bus
# bandwidth there, nccl_unshaped_busbw_gbps, against 1.5 L: link_bound);
# GC_TC_PREFIX (gctc) names the namespaces, so that concurrent runs do not
# meet; GC_TC_CC is the namespaces' TCP congestion control (recorded per run):
# reno by default, since BBR's flows through a tbf shaper leave the link a
# fifth idle at N = 4 (docs/benchmark.md); empty keeps the system's. The GPU
# mode's model gets L' = L * 1448/1514 (TCP's payload in MTU-1500 frames, as
# the CPU mode's model), reported under L.
# GC_TC_AUTO=1 (--cpu): GRADCOMP_AUTO on the real links: QSGD 4-bit over a
# sweep of sizes from GC_TC_MIN (1M) to GC_TC_SIZE, factor 2, each size forced
# compression, the uncompressed baseline and auto's time (gradcomp_perf
# --auto: a fresh autoTune=1 comm whose first call times both paths at 1 MB
# and 32 MB over the link), auto's choice and regret; the JSON gains
# cpu_auto_regret_max_frac_tc_<L>gbps_n<N> (worst size) and
# cpu_auto_regret_max_frac (worst run), and the same of the choice alone
# (cpu_auto_choice_regret_*: the side-by-side time of the path auto took over
# the faster path's, without what auto's own calls add).
# GC_TC_BUDGET_S (default GC_STEP_BUDGET_S, the budget tools/gpu-check.sh gives its step;
# unset: no bound) bounds the sweep: each run's ranks get at most what is left, and a run that
# would start with less than a minute left is recorded as skipped, so that tc_link.json and the
# report rows of the runs made are written before the step's own limit ends this script.
set -uo pipefail
. "$(dirname "$0")/wait_ranks.sh"
cd "$(dirname "$0")/.." || exit 1

prefix=${GC_TC_PREFIX:-gctc}  # names of namespaces, links and the bridge (<= 10 chars)
subnet=10.233.0    # rank r is $subnet.$((r+1))
port=29673        # the runs' roots count up from here
link_port=29660   # measure_link's
shaping=""         # netns or lo, once set up
rank_pids=()      # the ranks of the run in progress

# Ends the ranks of a run in progress (a TERM from gpu-check's step limit: the
# ranks' own `timeout` put each in a process group of its own, which that TERM
# does not reach), then removes the namespaces, links and lo's shaping.
cleanup() {
  local r p
  if [ ${#rank_pids[@]} -gt 0 ]; then
    for p in "${rank_pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
    sleep 2
    for p in "${rank_pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
    rank_pids=()
  fi
  for r in $(seq 0 7); do
    ip netns del "$prefix$r" 2>/dev/null
    ip link del "$prefix${r}h" 2>/dev/null
  done
  ip link del "${prefix}br" 2>/dev/null
  [ "$shaping" = lo ] && tc qdisc del dev lo root 2>/dev/null
  return 0
}
# Not under --args-check, which sets nothing up: its clean-up would remove a run's beside it.
[[ " $* " == *" --args-check "* ]] || trap cleanup EXIT
# timeout(1) sends its TERM twice (to this script, then to its process group): a second one
# during the clean-up would end it halfway, leaving namespaces or lo's shaping to the steps
# after. The first ignores the rest and exits through the clean-up.
trap 'trap "" TERM INT; exit 143' TERM INT

# burst: 1 ms of traffic, at least 128 KB (two 64 KB GSO packets; tbf's
# watchdog is a high-resolution timer, so a bucket below rate / HZ still
# reaches its rate, which the selftest checks). The link idles between a
# call's phases and while its ranks wait for the shared GPU, and a full
# bucket then goes out at veth speed: at 10 ms (12.5 MB at 10 Gb/s) half a
# QSGD step, and nearly all of DGC's, would have left unshaped.
burst_bytes() { python3 -c "print(max(int($1 * 125000), 131072))"; }

# setup_netns N GBPS: N namespaces on one bridge, both veth ends shaped.
# Prints the failing command's error on stderr and returns 1 on failure.
setup_netns() {
  local n=$1 gbps=$2 r burst
  burst=$(burst_bytes "$gbps")
  cleanup
  ip link add "${prefix}br" type bridge || return 1
  ip link set "${prefix}br" up || return 1
  for r in $(seq 0 $((n - 1))); do
    ip netns add "$prefix$r" || return 1
    ip link add "$prefix${r}h" type veth peer name "$prefix${r}n" || return 1
    ip link set "$prefix${r}n" netns "$prefix$r" || return 1
    ip link set "$prefix${r}h" master "${prefix}br" || return 1
    ip link set "$prefix${r}h" up || return 1
    ip netns exec "$prefix$r" ip addr add "$subnet.$((r + 1))/24" dev "$prefix${r}n" || return 1
    ip netns exec "$prefix$r" ip link set "$prefix${r}n" up || return 1
    ip netns exec "$prefix$r" ip link set lo up || return 1
    if [ -n "${GC_TC_CC:-}" ]; then
      ip netns exec "$prefix$r" sysctl -qw net.ipv4.tcp_congestion_control="$GC_TC_CC" || return 1
    fi
    # The rank's sends (namespace side) and its receives (bridge side); rate 0:
    # the control, unshaped.
    [ "$gbps" = 0 ] && continue
    ip netns exec "$prefix$r" tc qdisc add dev "$prefix${r}n" root tbf rate "${gbps}gbit" \
      burst "$burst" latency 100ms || return 1
    tc qdisc add dev "$prefix${r}h" root tbf rate "${gbps}gbit" burst "$burst" latency 100ms ||
      return 1
  done
  shaping=netns
  [ "$gbps" = 0 ] && shaping=netns-unshaped
  return 0
}

# setup_lo N GBPS: all ranks on loopback, lo shaped at N * GBPS.
setup_lo() {
  local n=$1 gbps=$2
  tc qdisc del dev lo root 2>/dev/null
  if [ "$gbps" = 0 ]; then
    shaping=lo-unshaped
    return 0
  fi
  local total
  total=$(python3 -c "print($n * $gbps)")
  tc qdisc add dev lo root tbf rate "${total}gbit" burst "$(burst_bytes "$total")" \
    latency 100ms || return 1
  shaping=lo
}

# measure_link SECONDS: python sockets from rank 1 to rank 0's address, so
# the report shows what the shaped link really carries.
measure_link() {
  local secs=$1 srv=$subnet.1 ns0=() ns1=()
  if [ "${shaping%-unshaped}" = netns ]; then
    ns0=(ip netns exec "${prefix}0")
    ns1=(ip netns exec "${prefix}1")
  else
    srv=127.0.0.1
  fi
  "${ns0[@]}" timeout $((secs + 10)) python3 - "$srv" "$link_port" <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(8)
c, _ = s.accept(); c.settimeout(8); n, t0 = 0, None
while True:
    b = c.recv(1 << 20)
    if not b: break
    t0 = t0 or time.time(); n += len(b)
print("%.3f" % (n * 8 / max(time.time() - t0, 1e-9) / 1e9))
PY
  local pid=$!
  sleep 0.5
  # The server may not listen yet (a loaded machine starts its python late): retry.
  "${ns1[@]}" timeout $((secs + 15)) python3 - "$srv" "$link_port" "$secs" <<'PY'
import socket, sys, time
until = time.time() + 8
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8)
        break
    except ConnectionRefusedError:
        if time.time() > until:
            raise
        time.sleep(0.05)
buf, t0 = b"x" * (1 << 20), time.time()
while time.time() - t0 < float(sys.argv[3]): c.sendall(buf)
c.close()
PY
  wait "$pid"
}

if [ "${1:-}" = --selftest ]; then
  errf=$(mktemp)
  setup_netns 2 1 2> "$errf" || { echo "tc_link selftest: namespaces refused: $(cat "$errf")"; exit 1; }
  rm -f "$errf"
  got=$(measure_link 2)
  echo "tc_link selftest: shaped at 1 Gb/s, measured $got Gb/s"
  python3 -c "import sys; g=float('$got'); sys.exit(0 if 0.85 <= g <= 1.05 else 1)" ||
    { echo "tc_link selftest: FAILED (outside 0.85..1.05 Gb/s)"; exit 1; }
  echo "tc_link selftest: ok"
  exit 0
fi

mode=gpu
if [ "${1:-}" = --cpu ]; then
  mode=cpu
  shift
fi
args_check=0
if [ "${1:-}" = --args-check ]; then
  # The GPU runs' commands as they are written, into a folder of its own. Nothing is set up:
  # the clean-up (namespaces, links, lo's shaping) must not run, even at an early exit or a
  # TERM, or it would remove a run's beside this one; the folder goes instead.
  if [ "$mode" = cpu ]; then
    echo "tc_link: --args-check checks the GPU runs' commands: leave out --cpu" >&2
    exit 2
  fi
  args_check=1
  shift
  tmp=$(mktemp -d) || exit 2
  trap 'rm -rf "$tmp"' EXIT
  trap 'exit 143' TERM INT
  set -- "$tmp" "$@"
fi
raw=${1:?usage: tools/tc_link.sh [--cpu] RAW_DIR [BUILD_DIR] | --selftest | --args-check [BUILD_DIR]}
if [ "$mode" = cpu ]; then
  build=${2:-build}
  gbps_list=${GC_TC_GBPS:-0.1 1}
  size=${GC_TC_SIZE:-32M}
  GC_TC_CC=${GC_TC_CC-reno}
  port_step=32  # a run's comms listen at root port + k (gradcomp_perf --root)
  if [ "${GC_TC_AUTO:-0}" = 1 ]; then
    # QSGD alone: no -k (gradcomp_perf refuses a method's flag that no row uses).
    sweep=(-b "${GC_TC_MIN:-1M}" -e "$size" -f 2 -m qsgd -q 4 --auto)
    port_step=64  # two comms per size
  fi
else
  build=${2:-build-gpu}
  gbps_list=${GC_TC_GBPS:-10 0 25}
  size=${GC_TC_SIZE:-256M}
  GC_TC_CC=${GC_TC_CC-reno}
  port_step=1
fi
perf=$build/bench/gradcomp_perf
[ -n "${sweep+x}" ] || sweep=(-b "$size" -e "$size" -m qsgd,dgc -q 4 -k 0.001)
# Not under set -e: a RAW_DIR that cannot be made would fail every write after it, one by one.
if ! mkdir -p "$raw" || [ ! -w "$raw" ]; then
  echo "tc_link: cannot write RAW_DIR '$raw' (relative to $(pwd)): give a folder that can be" \
    "made and written" >&2
  exit 2
fi
runs=$raw/tc_link_runs.tsv
: > "$runs"
# An earlier sweep's per-run outputs (the same RAW_DIR kept across calls): none may stand for
# this sweep's; each run's JSON is also removed before it starts (run_ranks).
rm -f "$raw"/tc_link_*gbps_n*.json "$raw"/tc_link_*gbps_n*.json.part "$raw"/tc_link_*gbps_n*_r*.txt \
  "$raw/tc_link.json" "$raw/tc_link.md"
reason=""
failed=0
budget=${GC_TC_BUDGET_S:-${GC_STEP_BUDGET_S:-}}
deadline=""
[ -n "$budget" ] && deadline=$(($(date +%s) + budget - 20))  # 20 s for the summary below

# rank_limit DEFAULT: a rank's time limit, cut to what the budget leaves.
rank_limit() {
  local lim=$1 left
  if [ -n "$deadline" ]; then
    left=$((deadline - $(date +%s)))
    [ "$left" -lt "$lim" ] && lim=$left
    [ "$lim" -lt 30 ] && lim=30
  fi
  echo "$lim"
}

# rank_cmd R N GBPS TAG LIMIT ADDR IFNAME: rank R's gradcomp_perf command (the array cmd), as
# run_ranks starts it in the rank's namespace and --args-check checks it.
rank_cmd() {
  local r=$1 n=$2 gbps=$3 tag=$4 limit=$5 addr=$6 ifname=$7 backend
  # The model's link: L' on the GPU (TCP's payload; the CPU mode's model
  # applies it itself); any rate for the unshaped control, whose model
  # nothing reads.
  local model_gbps=$gbps
  if [ "$mode" = cpu ]; then
    backend=(env GRADCOMP_CPU_TIMEOUT=600 timeout "$limit" "$perf" --backend socket --root "$addr:$port")
  else
    model_gbps=$(python3 -c "print('%.6g' % ($gbps * 1448 / 1514 if $gbps > 0 else 100))")
    backend=(env NCCL_COMM_ID="$addr:$port" NCCL_HOSTID="$prefix-host-$r" NCCL_NET=Socket
      NCCL_SOCKET_IFNAME="$ifname" NCCL_IB_DISABLE=1 NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1
      NCCL_NVLS_ENABLE=0 GC_PERF_GPUS=1 timeout "$limit" "$perf" --backend cuda)
  fi
  cmd=(env OMPI_COMM_WORLD_RANK="$r" OMPI_COMM_WORLD_SIZE="$n" OMPI_COMM_WORLD_LOCAL_RANK=0
    OMPI_COMM_WORLD_LOCAL_SIZE=1 "${backend[@]}" -N "$n" "${sweep[@]}" -n "${GC_TC_ITERS:-3}"
    -w 1 --link-gbps "$model_gbps" --json "$raw/tc_link_$tag.json")
}

if [ "$args_check" = 1 ]; then
  bad=0
  for gbps in $gbps_list; do
    for n in ${GC_TC_RANKS:-2 4}; do
      rank_cmd 0 "$n" "$gbps" "${gbps}gbps_n$n" 60 127.0.0.1 lo
      out=$(CUDA_VISIBLE_DEVICES="" "${cmd[@]}" 2>&1)
      rc=$?
      if [ "$rc" = 3 ] && grep -q "no usable GPU.*; use --backend cpu" <<< "$out"; then
        echo "tc_link args: N=$n at $gbps Gb/s: ok (gradcomp_perf stopped at its GPU lookup)"
      else
        echo "tc_link args: N=$n at $gbps Gb/s: REFUSED (exit $rc):" \
          "$(grep -m1 "^gradcomp_perf: " <<< "$out" || grep -m1 . <<< "$out")"
        bad=1
      fi
    done
  done
  exit "$bad"
fi

run_ranks() {  # run_ranks N GBPS TAG: one process per rank over the shaped links
  local n=$1 gbps=$2 tag=$3 r pids=() rc=0 addr=$subnet.1 ifname=$prefix ns=() cmd
  if [ "${shaping%-unshaped}" = lo ]; then
    addr=127.0.0.1
    ifname=lo
  fi
  local limit
  if [ "$mode" = cpu ]; then limit=$(rank_limit 900); else limit=$(rank_limit 240); fi
  # gradcomp_perf writes its JSON only after its first row: a run that dies before must leave
  # none, not an earlier run's (the summary reads a run's JSON only when it exited 0, too).
  rm -f "$raw/tc_link_$tag.json" "$raw/tc_link_$tag.json.part"
  for r in $(seq 0 $((n - 1))); do
    [ "${shaping%-unshaped}" = netns ] && ns=(ip netns exec "$prefix$r")
    rank_cmd "$r" "$n" "$gbps" "$tag" "$limit" "$addr" "$ifname"
    "${ns[@]}" "${cmd[@]}" > "$raw/tc_link_${tag}_r$r.txt" 2>&1 &
    pids+=($!)
  done
  rank_pids=("${pids[@]}")
  # Once a rank fails, the others wait on it (in NCCL's collective, whose kernel never ends)
  # until their own limit: 10 s after the first failure, end them (TERM, then KILL).
  wait_ranks 10 "${pids[@]}"
  [ "$wait_first_rc" != 0 ] && rc=$wait_first_rc
  rank_pids=()
  port=$((port + port_step))
  return "$rc"
}

longest=0  # seconds of the longest run so far, its set-up included
for gbps in $gbps_list; do
  for n in ${GC_TC_RANKS:-2 4}; do
    tag=${gbps}gbps_n$n
    # Skipped rather than started to be cut by its limit (a run cut fails the step) when the
    # longest run so far would not fit in what is left, as ddp_check.sh does.
    if [ -n "$deadline" ] && { [ $((deadline - $(date +%s))) -lt 60 ] ||
      [ $((deadline - $(date +%s))) -lt $((longest * 11 / 10 + 10)) ]; }; then
      printf '%s\t%s\t%s\tskipped\t\t\t\t\n' "$gbps" "$n" "$tag" >> "$runs"
      echo "=== tc_link: N=$n at $gbps Gb/s per rank: skipped (time budget spent)"
      continue
    fi
    t0=$(date +%s)
    # Not in $(...): the set-up functions record the shaping in this shell.
    if ! setup_netns "$n" "$gbps" 2> "$raw/tc_link_setup.err"; then
      err=$(tr '\n' ' ' < "$raw/tc_link_setup.err")
      cleanup
      if [ "${GC_TC_NO_LO:-0}" = 1 ]; then
        reason="network namespaces: $err; lo not shaped (GC_TC_NO_LO=1)"
        break 2
      fi
      if ! setup_lo "$n" "$gbps" 2> "$raw/tc_link_setup.err"; then
        reason="network namespaces: $err; tc on lo: $(tr '\n' ' ' < "$raw/tc_link_setup.err")"
        break 2
      fi
      echo "tc_link: namespaces refused ($err): shaping lo at $n x $gbps Gb/s instead"
    fi
    link=$(measure_link 2 2>"$raw/tc_link_measure.err")
    if [ -z "$link" ] && [ "${shaping%-unshaped}" = netns ]; then
      # Namespaces made but nothing crosses the bridge (a host whose firewall
      # drops bridged traffic): the ranks could not meet either; lo instead.
      err="the bridge carried nothing ($(tr '\n' ' ' < "$raw/tc_link_measure.err" | cut -c1-300))"
      cleanup
      if [ "${GC_TC_NO_LO:-0}" = 1 ] || ! setup_lo "$n" "$gbps" 2> "$raw/tc_link_setup.err"; then
        reason="network namespaces: $err; tc on lo: $(tr '\n' ' ' < "$raw/tc_link_setup.err")"
        break 2
      fi
      echo "tc_link: $err: shaping lo at $n x $gbps Gb/s instead"
      link=$(measure_link 2 2>/dev/null)
    fi
    # On lo the one flow measured has the whole bucket of N x L: a rank's share is 1/N.
    if [ -n "$link" ] && [ "${shaping%-unshaped}" = lo ]; then
      link=$(python3 -c "print('%.3f' % ($link / $n))")
    fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    cc=$(if [ "${shaping%-unshaped}" = netns ]; then ip netns exec "${prefix}0" sysctl -n net.ipv4.tcp_congestion_control
      else sysctl -n net.ipv4.tcp_congestion_control; fi 2>/dev/null)
    echo "=== tc_link: N=$n at $gbps Gb/s per rank (0: unshaped) ($shaping, TCP $cc; python sockets measure ${link:-?} Gb/s per rank; load $load)"
    run_ranks "$n" "$gbps" "$tag"
    rc=$?
    [ $(($(date +%s) - t0)) -gt "$longest" ] && longest=$(($(date +%s) - t0))
    [ "$rc" -ne 0 ] && failed=1
    cat "$raw/tc_link_${tag}_r0.txt"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$gbps" "$n" "$tag" "$rc" "$shaping" "${link:-}" \
      "$load" "$cc" >> "$runs"
    cleanup
    shaping=""
  done
done

python3 - "$raw" "$reason" "$mode" "$size" <<'PY'
import json, os, sys
raw, reason, mode, size_arg = sys.argv[1:5]
mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
size_arg = size_arg.upper()
if len(size_arg) > 1 and size_arg.endswith("B") and size_arg[-2] in mult:
    size_arg = size_arg[:-1]  # 256MB as 256M
size = int(float(size_arg.rstrip("KMG")) * mult.get(size_arg[-1], 1))
cpu = mode == "cpu"
runs = []
doc = {"mode": mode, "tc_unavailable_reason": reason or None, "size": size, "runs": runs}
for line in open(os.path.join(raw, "tc_link_runs.tsv")).read().splitlines():
    gbps, n, tag, rc, shaping, link, load, cc = line.split("\t")
    if rc == "skipped":
        runs.append({"link_gbps": float(gbps), "nranks": int(n), "shaping": "-",
                     "skipped": True, "error": "skipped (time budget spent)"})
        continue
    base = {"link_gbps": float(gbps), "nranks": int(n), "exit": int(rc), "shaping": shaping,
            "tcp_congestion_control": cc or None,
            "link_measured_gbps": float(link) if link else None,
            "load_avg_1min": float(load) if load else None}
    if int(rc) != 0:
        # A run that failed (a rank's exit, its limit) gives no rows, whatever JSON it left.
        runs.append(dict(base, error="exit %s (see tc_link_%s_r*.txt)" % (rc, tag)))
        continue
    try:
        perf = json.load(open(os.path.join(raw, "tc_link_%s.json" % tag)))
    except (OSError, ValueError):
        runs.append(dict(base, error="no JSON from rank 0 (see tc_link_%s_r*.txt)" % tag))
        continue
    doc["baseline"] = perf.get("baseline")
    # The GPU mode's model ran at L' (run_ranks): its point closest to L'.
    want = float(gbps) * (1448 / 1514 if not cpu else 1)
    for r in perf["rows"]:
        m = min(r.get("model", []), key=lambda m: abs(m["link_gbps"] - want), default={})
        if m and abs(m["link_gbps"] - want) > 1e-3 * max(want, 1e-9):
            m = {}
        # A failed row (or a failed baseline) has null times: no ratio, the row still reported.
        measured = (r["nccl_time_us"] / r["time_us"]
                    if r.get("time_us") and r.get("nccl_time_us") is not None else None)
        model = m.get("speedup")
        run = dict(base, method=r["method"], size=r["size"], failed=r["failed"],
                   error=r.get("error") or None, wrong=r.get("wrong"),
                   identical=r.get("identical"), wire_bytes=r.get("wire_bytes"),
                   nccl_time_us=r["nccl_time_us"], time_us=r["time_us"],
                   nccl_model_time_us=m.get("nccl_time_us"), model_time_us=m.get("time_us"),
                   measured_speedup=measured, model_speedup=model,
                   measured_vs_model=measured / model if measured and model else None)
        if cpu:
            # The socket backend's model: host work timed in this run + the link.
            run.update(host_us=r.get("host_us"), baseline_host_us=r.get("baseline_host_us"),
                       time_vs_model=m.get("time_vs_model"),
                       baseline_vs_model=m.get("baseline_vs_model"))
        if "auto_time_us" in r:
            # The regret of the choice itself: the side-by-side time of the path
            # auto took over the faster path's (0 when it took the faster).
            # auto_regret also holds what auto's own calls add to that path and
            # the noise left between them.
            took = r["auto_forced_time_us" if r.get("auto_choice") == "compress" else
                     "auto_nccl_time_us"]
            both = (r["auto_forced_time_us"], r["auto_nccl_time_us"])  # null when not finite
            best = min(both) if None not in both else None
            run.update(auto_time_us=r["auto_time_us"], auto_choice=r.get("auto_choice"),
                       auto_forced_time_us=r["auto_forced_time_us"],
                       auto_nccl_time_us=r["auto_nccl_time_us"],
                       auto_regret=r.get("auto_regret"),
                       auto_choice_regret=took / best - 1 if took and best else None)
        runs.append(run)


# The unshaped control (rate 0) of each N: the bus bandwidth NCCL's allreduce
# reached there (2 (N-1)/N of the buffer per rank over its time). A shaped run
# whose NCCL could not beat 1.5 L unshaped measures the shared GPU, not the
# link: link_bound false.
unshaped = {}
for r in runs:
    if r["link_gbps"] == 0 and r.get("nccl_time_us") and r.get("size") and not r.get("failed"):
        n = r["nranks"]
        bus = 2 * (n - 1) / n * r["size"] * 8 / (r["nccl_time_us"] * 1e-6) / 1e9
        unshaped[n] = max(unshaped.get(n, 0.0), bus)
for r in runs:
    if r["link_gbps"] > 0 and r["nranks"] in unshaped:
        r["nccl_unshaped_busbw_gbps"] = unshaped[r["nranks"]]
        r["link_bound"] = unshaped[r["nranks"]] >= 1.5 * r["link_gbps"]
for n, bus in unshaped.items():
    doc["tc_nccl_unshaped_busbw_gbps_n%d" % n] = bus


def pick(gbps, n, method="qsgd", key="measured_speedup"):
    # Rows exist only for runs that exited 0 (above); a failed row is no measurement either.
    for r in runs:
        if (r["link_gbps"] == gbps and r["nranks"] == n and r.get("method") == method
                and r.get("size") == size and not r.get("failed") and r.get("exit") == 0):
            return r.get(key)
    return None


f = lambda v, d="%.3g": "n/a" if v is None else d % v  # noqa: E731
L = ["## A real slow link (tools/tc_link.sh%s)" % (" --cpu" if cpu else ""), ""]
if reason:
    L += ["Traffic shaping was refused: `%s`" % reason, ""]
if cpu:
    # The GPU goal keys stay out: these are host codecs against our own
    # uncompressed call, not GPU kernels against NCCL.
    for r in runs:
        if r.get("method") and not r.get("failed"):
            link = ("%g" % r["link_gbps"]).replace(".", "p")
            key = "cpu_%s_measured_speedup_tc_%sgbps_n%d_%dMB" % (
                r["method"], link, r["nranks"], r["size"] >> 20)
            doc[key] = r["measured_speedup"]
            doc[key.replace("measured_speedup", "measured_vs_model")] = r["measured_vs_model"]
            if r.get("auto_regret") is not None:
                # Worst size of each link and N, and of the whole sweep.
                key = "cpu_auto_regret_max_frac_tc_%sgbps_n%d" % (link, r["nranks"])
                doc[key] = max(doc.get(key, r["auto_regret"]), r["auto_regret"])
                doc["cpu_auto_regret_max_frac"] = max(
                    doc.get("cpu_auto_regret_max_frac", r["auto_regret"]), r["auto_regret"])
                c = r["auto_choice_regret"]
                key = "cpu_auto_choice_regret_max_frac_tc_%sgbps_n%d" % (link, r["nranks"])
                doc[key] = max(doc.get(key, c), c)
                doc["cpu_auto_choice_regret_max_frac"] = max(
                    doc.get("cpu_auto_choice_regret_max_frac", c), c)
    L += ["Each rank a process in its own network namespace, both ends of its veth shaped with "
          "tc tbf; gradcomp_perf --backend socket: the CPU backend's host codecs over gradcomp's "
          "TCP transport. Baseline: %s." % doc.get("baseline", "n/a"), "",
          "| link | N | shaping | link measured (Gb/s) | load | method | size (MB) | "
          "baseline (us) | gradcomp (us) | measured x | model x | measured / model | "
          "gradcomp / model | baseline / model | auto (us) | auto choice | auto regret | "
          "choice regret |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        L.append("| %g Gb/s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s "
                 "| %s | %s | %s | %s |" % (
            r["link_gbps"], r["nranks"], r["shaping"], f(r.get("link_measured_gbps")),
            f(r.get("load_avg_1min")), r.get("method", r.get("error", "?")),
            f(r["size"] / 1048576 if r.get("size") else None, "%g"),
            f(r.get("nccl_time_us"), "%.0f"), f(r.get("time_us"), "%.0f"),
            f(r.get("measured_speedup")), f(r.get("model_speedup")),
            f(r.get("measured_vs_model")), f(r.get("time_vs_model")),
            f(r.get("baseline_vs_model")), f(r.get("auto_time_us"), "%.0f"),
            r.get("auto_choice") or "-", f(r.get("auto_regret"), "%.3f"),
            f(r.get("auto_choice_regret"), "%.3f")))
else:
    doc["measured_speedup_tc_10gbps_n4_256MB"] = pick(10, 4)
    doc["measured_vs_model_tc_10gbps"] = pick(10, 4, key="measured_vs_model")
    # How the run behind those two was shaped: netns (L per rank each way, the model's link)
    # or lo (namespaces refused: one bucket of N x L shared by all ranks); null without it.
    doc["tc_shaping_10gbps_n4"] = pick(10, 4, key="shaping")
    doc["tc_link_bound_10gbps_n4"] = pick(10, 4, key="link_bound")
    modes = {r["shaping"].replace("-unshaped", "") for r in runs if r.get("shaping") not in
             (None, "-")}
    where = {"netns": "Each rank in its own network namespace, both ends of its veth shaped with "
                      "tc tbf (a rank sends and receives at L)",
             "lo": "All ranks on loopback, lo shaped with tc tbf at N x L (namespaces refused): "
                   "L each only while all send at once, and a rank sending alone gets up to "
                   "N x L; the link measured is the one flow's rate over N"}
    L += ["%s; NCCL's socket transport; all ranks share one GPU; the model at L' = L x "
          "1448/1514 (TCP's payload). Link 0: the same links unshaped, the control: a shaped "
          "run is link-bound when NCCL reached 1.5 L there (else it measures the shared GPU)."
          % "; ".join(where[m] for m in sorted(modes)) if modes else "No run was made.", "",
          "| link | N | shaping | link measured (Gb/s per rank) | method | NCCL (us) | "
          "gradcomp (us) | measured x | model x | measured / model | NCCL unshaped busbw "
          "(Gb/s) | link-bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        L.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            "%g Gb/s" % r["link_gbps"] if r["link_gbps"] else "unshaped", r["nranks"],
            r["shaping"], f(r.get("link_measured_gbps")),
            r.get("method", r.get("error", "?")), f(r.get("nccl_time_us"), "%.0f"),
            f(r.get("time_us"), "%.0f"), f(r.get("measured_speedup")), f(r.get("model_speedup")),
            f(r.get("measured_vs_model")), f(r.get("nccl_unshaped_busbw_gbps")),
            {True: "yes", False: "no"}.get(r.get("link_bound"), "n/a")))
json.dump(doc, open(os.path.join(raw, "tc_link.json"), "w"), indent=1)
open(os.path.join(raw, "tc_link.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
[ -z "$reason" ] && [ "$failed" -eq 0 ]
