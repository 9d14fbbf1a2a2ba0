// The CUDA backend's stream ordering, checked in the CPU world. The CPU
// backend runs every lane at once, so a missing event hand-off between the
// caller's stream (kernels), the comm stream and the node stream (transfers)
// cannot change a CPU result; on a GPU it is a race. LaneCheck wraps a comm's
// backend and LaneTransport its transports: every operation is logged with
// the byte ranges it reads and writes and its lane's vector clock (an
// operation is ordered after everything earlier on its lane and, through
// record/wait of an event slot, after what the recording lane had issued
// then, as cudaEventRecord/cudaStreamWaitEvent order streams). Two operations
// on different lanes touching the same bytes, one of them writing, must be
// ordered, within a call and across calls (the log spans them: the next
// call's reuse of the workspace is checked too); at the end of a call, a
// failed one too, every side-lane operation must be ordered before the
// caller's stream, by a record/wait pair or Backend::join (a call returns
// joined, and a captured one would otherwise fail with an unjoined fork); a wait names a record of
// its own call (as a captured call must); an event slot is waited on before it is recorded again
// (Backend's contract). Backend operations run on the caller's stream (stream()); a transport's
// lane is the stream it was set to (commStream(), nodeStream() or the caller's).
#pragma once

#include <stdint.h>
#include <stdio.h>

#include <algorithm>
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "plugin/backends/backend.h"
#include "plugin/backends/transport.h"
#include "plugin/checks.h"
#include "kernels/qsgd_math.cuh"
#include "plugin/codecs/qsgd.h"
#include "plugin/comm.h"
#include "tests/common/forwarding_backend.h"
#include "tests/common/forwarding_transport.h"

namespace gctest {

class LaneCheck final : public ForwardingBackend {
 public:
  static constexpr int kLanes = 3;
  using Clock = std::array<uint64_t, kLanes>;

  explicit LaneCheck(std::shared_ptr<gc::Backend> inner) : ForwardingBackend(std::move(inner)) {}

  // The collectives this rank issued, in program order: per collective its
  // transport's tag and the operation's initial. NCCL orders the kernels of
  // two communicators on different streams only by the order each rank
  // issues them, so every rank must issue one order.
  std::string order;

  // Test hook: waits on this slot are dropped (a missing hand-off), so that a
  // test can show the check fails without it.
  int dropWaitSlot = -1;
  // Test hook: the failDecode-th qsgdDecode from now fails (0: none), as a
  // launch or a transfer failing half way through a call would.
  int failDecode = 0;

  // Ends a call: every side-lane operation is ordered before the caller's
  // stream's next one, and the next call's waits must name its own records
  // (under capture a wait on an event recorded outside the graph fails with
  // cudaErrorStreamCaptureIsolation).
  void endCall(const char* what) {
    calls_++;
    for (const Op& o : ops_) {
      if (o.lane != kComputeLane && o.clock[o.lane] > lane_[kComputeLane][o.lane]) {
        fail("%s: %s on lane %d is not joined back into the caller's stream", what, o.name, o.lane);
        return;
      }
    }
  }
  const std::vector<std::string>& errors() const { return errors_; }
  size_t opsOn(int lane) const {
    return (size_t)std::count_if(ops_.begin(), ops_.end(),
                                 [&](const Op& o) { return o.lane == lane; });
  }

  int laneOf(cudaStream_t s) const {
    return s == commStream() ? kCommLane : s == nodeStream() ? kNodeLane : kComputeLane;
  }

  struct Range {
    const void* p;
    size_t bytes;
    bool write;
  };
  // Logs one operation on `lane` and checks it against the call's earlier ones.
  void op(int lane, const char* name, std::initializer_list<Range> ranges) {
    Op o;
    o.lane = lane;
    o.name = name;
    lane_[lane][lane]++;
    o.clock = lane_[lane];
    for (const Range& r : ranges) {
      if (r.p != nullptr && r.bytes > 0) o.ranges.push_back(r);
    }
    for (const Op& e : ops_) {
      if (e.lane == lane || e.clock[e.lane] <= o.clock[e.lane]) continue;  // ordered
      for (const Range& a : e.ranges) {
        for (const Range& b : o.ranges) {
          if (!(a.write || b.write) || !overlap(a, b)) continue;
          fail("%s on lane %d %s bytes that %s on lane %d %s, unordered", name, lane,
               b.write ? "writes" : "reads", e.name, e.lane, a.write ? "writes" : "reads");
          return;
        }
      }
    }
    ops_.push_back(std::move(o));
  }

  gradcompResult_t zero(void* p, size_t bytes) override {
    op(kComputeLane, "zero", {{p, bytes, true}});
    return inner_->zero(p, bytes);
  }
  gradcompResult_t copy(void* dst, const void* src, size_t bytes) override {
    op(kComputeLane, "copy", {{src, bytes, false}, {dst, bytes, true}});
    return inner_->copy(dst, src, bytes);
  }
  gradcompResult_t toHost(void* dst, const void* src, size_t bytes) override {
    op(kComputeLane, "toHost", {{src, bytes, false}});
    return inner_->toHost(dst, src, bytes);
  }
  gradcompResult_t fromHost(void* dst, const void* src, size_t bytes) override {
    op(kComputeLane, "fromHost", {{dst, bytes, true}});
    return inner_->fromHost(dst, src, bytes);
  }
  gradcompResult_t qsgdEncode(const void* x, gc::DType t, float* residual, size_t n, int bits,
                              int bucket, const gc::KeySpec& key, void* out) override {
    op(kComputeLane, "qsgdEncode",
       {{x, n * gc::dtypeBytes(t), false},
        {residual, n * sizeof(float), true},
        {out, gc::qsgd::encodedBytes(n, bits, bucket), true}});
    return inner_->qsgdEncode(x, t, residual, n, bits, bucket, key, out);
  }
  gradcompResult_t qsgdEncodeBatch(const gc::EncodeSegment* segs, int count, gc::DType t, int bits,
                                   int bucket, const gc::KeySpec& key) override {
    for (int i = 0; i < count; ++i) {
      const gc::EncodeSegment& s = segs[i];
      if (s.n == 0) continue;
      op(kComputeLane, "qsgdEncode",
         {{s.x, s.n * gc::dtypeBytes(t), false},
          {s.residual, s.n * sizeof(float), true},
          {s.out, gc::qsgd::encodedBytes(s.n, bits, bucket), true}});
    }
    return inner_->qsgdEncodeBatch(segs, count, t, bits, bucket, key);
  }
  gradcompResult_t qsgdDecode(const void* in, size_t n, int bits, int bucket, float* out,
                              bool accumulate) override {
    if (failDecode > 0 && --failDecode == 0) {
      return gc::setError(gradcompInternalError, "qsgdDecode failed (LaneCheck::failDecode)");
    }
    op(kComputeLane, "qsgdDecode",
       {{in, gc::qsgd::encodedBytes(n, bits, bucket), false}, {out, n * sizeof(float), true}});
    return inner_->qsgdDecode(in, n, bits, bucket, out, accumulate);
  }
  // As qsgdDecode on each segment in turn: failDecode counts segments, and
  // the decodes before a failing one run. Each segment reads its encoding
  // and writes its output (and, where the inner backend decodes through it,
  // the scratch: recorded too, so that a scratch another lane uses is seen).
  gradcompResult_t qsgdDecodeToOutput(const gc::DecodeSegment* segs, int count, int bits,
                                      int bucket, float divisor, gc::DType t, float* scratch,
                                      float* flag) override {
    for (int i = 0; i < count; ++i) {
      const gc::DecodeSegment& s = segs[i];
      if (s.n == 0) continue;
      if (failDecode > 0 && --failDecode == 0) {
        if (i > 0) {
          const gradcompResult_t res =
              inner_->qsgdDecodeToOutput(segs, i, bits, bucket, divisor, t, scratch, flag);
          if (res != gradcompSuccess) return res;
        }
        return gc::setError(gradcompInternalError, "qsgdDecode failed (LaneCheck::failDecode)");
      }
      const bool direct = t == gc::DType::F32 && divisor == 1.0f;
      op(kComputeLane, "qsgdDecode",
         {{s.in, gc::qsgd::encodedBytes(s.n, bits, bucket), false},
          {s.out, s.n * gc::dtypeBytes(t), true},
          {direct ? nullptr : scratch, direct ? 0 : s.n * sizeof(float), true},
          {flag, flag != nullptr ? sizeof(float) : 0, true}});
    }
    return inner_->qsgdDecodeToOutput(segs, count, bits, bucket, divisor, t, scratch, flag);
  }
  // As the default's decodes, adds and conversion: failDecode counts the
  // encoded terms (a sum whose failing term is reached fails before it
  // runs); each term is read and the fp32 accumulator (out where it is fp32
  // undivided, else the scratch) written, then the output.
  gradcompResult_t qsgdSum(const gc::SumTerm* terms, int count, size_t n, int bits, int bucket,
                           float divisor, gc::DType t, void* out, float* scratch,
                           float* flag) override {
    if (n == 0)
      return inner_->qsgdSum(terms, count, n, bits, bucket, divisor, t, out, scratch, flag);
    for (int i = 0; i < count; ++i) {
      if (!terms[i].plain && failDecode > 0 && --failDecode == 0) {
        return gc::setError(gradcompInternalError, "qsgdDecode failed (LaneCheck::failDecode)");
      }
    }
    const bool direct = t == gc::DType::F32 && divisor == 1.0f;
    const void* acc = direct ? out : scratch;
    for (int i = 0; i < count; ++i) {
      const size_t bytes =
          terms[i].plain ? n * sizeof(float) : gc::qsgd::encodedBytes(n, bits, bucket);
      op(kComputeLane, "qsgdSum", {{terms[i].in, bytes, false}, {acc, n * sizeof(float), true}});
    }
    op(kComputeLane, "qsgdSum",
       {{out, n * gc::dtypeBytes(t), true}, {flag, flag != nullptr ? sizeof(float) : 0, true}});
    return inner_->qsgdSum(terms, count, n, bits, bucket, divisor, t, out, scratch, flag);
  }
  gradcompResult_t toFloat(const void* x, gc::DType t, const float* addend, size_t n,
                           float* out) override {
    op(kComputeLane, "toFloat",
       {{x, n * gc::dtypeBytes(t), false},
        {addend, n * sizeof(float), false},
        {out, n * sizeof(float), true}});
    return inner_->toFloat(x, t, addend, n, out);
  }
  gradcompResult_t fromFloat(const float* x, size_t n, float divisor, gc::DType t,
                             void* out) override {
    op(kComputeLane, "fromFloat",
       {{x, n * sizeof(float), false}, {out, n * gc::dtypeBytes(t), true}});
    return inner_->fromFloat(x, n, divisor, t, out);
  }
  gradcompResult_t add(float* acc, const float* x, size_t n) override {
    op(kComputeLane, "add", {{x, n * sizeof(float), false}, {acc, n * sizeof(float), true}});
    return inner_->add(acc, x, n);
  }

  // Distinct handles for the side lanes, as the CUDA backend's own streams.
  cudaStream_t commStream() const override { return reinterpret_cast<cudaStream_t>(0x1000); }
  cudaStream_t nodeStream() const override { return reinterpret_cast<cudaStream_t>(0x2000); }
  gradcompResult_t record(int lane, int ev) override {
    if (recorded_[ev] && !waited_[ev]) {
      fail("event slot %d recorded again on lane %d before its last record was waited on", ev,
           lane);
    }
    slot_[ev] = lane_[lane];
    slotCall_[ev] = calls_;
    recorded_[ev] = true;
    waited_[ev] = false;
    return gradcompSuccess;
  }
  // As cudaEventRecord on the lane and cudaStreamWaitEvent on the caller's
  // stream.
  void join(int lane) override {
    for (int l = 0; l < kLanes; ++l) {
      lane_[kComputeLane][l] = std::max(lane_[kComputeLane][l], lane_[lane][l]);
    }
  }
  gradcompResult_t wait(int lane, int ev) override {
    if (!recorded_[ev] || slotCall_[ev] != calls_) {
      fail("lane %d waits on event slot %d, not recorded in this call", lane, ev);
    }
    waited_[ev] = true;
    if (ev == dropWaitSlot) return gradcompSuccess;
    for (int l = 0; l < kLanes; ++l) lane_[lane][l] = std::max(lane_[lane][l], slot_[ev][l]);
    return gradcompSuccess;
  }

 private:
  struct Op {
    int lane = 0;
    const char* name = "";
    Clock clock{};
    std::vector<Range> ranges;
  };
  static bool overlap(const Range& a, const Range& b) {
    const uintptr_t a0 = (uintptr_t)a.p, b0 = (uintptr_t)b.p;
    return a0 < b0 + b.bytes && b0 < a0 + a.bytes;
  }
  template <typename... A>
  void fail(const char* fmt, A... args) {
    char b[400];
    snprintf(b, sizeof b, fmt, args...);
    if (errors_.size() < 20) errors_.push_back(b);
  }

  Clock lane_[kLanes] = {};
  Clock slot_[kPipeEvents] = {};
  uint64_t slotCall_[kPipeEvents] = {};
  uint64_t calls_ = 0;
  bool recorded_[kPipeEvents] = {};
  bool waited_[kPipeEvents] = {};
  std::vector<Op> ops_;
  std::vector<std::string> errors_;
};

// A transport whose collectives are logged on the lane of its stream.
class LaneTransport final : public ForwardingTransport {
 public:
  // tag names the transport in LaneCheck::order (w: the comm's, n: the
  // node's, x: the inter-node child comm's).
  LaneTransport(std::unique_ptr<gc::Transport> inner, LaneCheck* check, char tag)
      : ForwardingTransport(std::move(inner)), check_(check), tag_(tag) {}

  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      log("allToAll", send[p], sendBytes[p], recv[p], recvBytes[p]);
    }
    return ForwardingTransport::allToAll(send, sendBytes, recv, recvBytes);
  }
  gradcompResult_t sendRecv(const void* send, size_t sendBytes, int to, void* recv,
                            size_t recvBytes, int from) override {
    log("sendRecv", send, sendBytes, recv, recvBytes);
    return ForwardingTransport::sendRecv(send, sendBytes, to, recv, recvBytes, from);
  }
  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    // In place (send is this rank's block of recv): the block is only read.
    const char* mine = static_cast<const char*>(recv) + (size_t)rank_ * bytes;
    if (send == mine) {
      log("allGather", send, bytes, recv, (size_t)rank_ * bytes);
      log("allGather", nullptr, 0, const_cast<char*>(mine) + bytes,
          (size_t)(size_ - rank_ - 1) * bytes);
    } else {
      log("allGather", send, bytes, recv, bytes * size_);
    }
    return ForwardingTransport::allGather(send, recv, bytes);
  }
  gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) override {
    log("allReduceSumFloat", send, send == recv ? 0 : n * 4, recv, n * 4);
    return ForwardingTransport::allReduceSumFloat(send, recv, n);
  }
  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    log("passThrough", send, send == recv ? 0 : count * typeBytes(type), recv,
        count * typeBytes(type));
    return ForwardingTransport::passThrough(send, recv, count, type, op);
  }
  gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount,
                                 ncclDataType_t type, ncclRedOp_t op) override {
    log("reduceScatter", send, recvCount * typeBytes(type) * size_, recv,
        recvCount * typeBytes(type));
    return ForwardingTransport::reduceScatter(send, recv, recvCount, type, op);
  }

 private:
  static size_t typeBytes(ncclDataType_t t) {
    return t == ncclFloat16 || t == ncclBfloat16 ? 2 : t == ncclFloat64 ? 8 : 4;
  }
  void log(const char* name, const void* src, size_t srcBytes, void* dst, size_t dstBytes) {
    check_->order += tag_;
    check_->order += name[0];
    check_->op(check_->laneOf(stream_), name, {{src, srcBytes, false}, {dst, dstBytes, true}});
  }
  LaneCheck* check_;
  const char tag_;
};

// Puts a LaneCheck under comm c (its child comms' too) and returns it.
inline LaneCheck* checkLanes(gradcompComm* c) {
  auto check = std::make_shared<LaneCheck>(c->backend);
  check->setStream(c->backend->stream());
  c->backend = check;
  c->transport.reset(new LaneTransport(std::move(c->transport), check.get(), 'w'));
  if (c->intra) c->intra.reset(new LaneTransport(std::move(c->intra), check.get(), 'n'));
  if (c->inter) {
    c->inter->backend = check;
    c->inter->transport.reset(new LaneTransport(std::move(c->inter->transport), check.get(), 'x'));
  }
  return check.get();
}

}  // namespace gctest
