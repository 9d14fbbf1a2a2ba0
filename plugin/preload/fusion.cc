// The eligible calls a user group deferred, run after its outer ncclGroupEnd:
// with GRADCOMP_GROUP=defer each is compressed on its own, in order; with
// GRADCOMP_GROUP=fuse they become one compressed allreduce per (comm, stream,
// type, op): copy into a fusion buffer, compress, copy out (Horovod-style
// tensor fusion). Reduce-scatters are compressed one by one in either mode:
// each rank's output is one block of every call, so calls do not concatenate.
// Calls of communicators that do not compress go to NCCL in order.
#include <cuda_runtime_api.h>

#include "codecs/qsgd.h"
#include "comm.h"
#include "nvtx.h"
#include "preload.h"

namespace gc {
namespace preload {
namespace {

ncclResult_t passEach(CommEntry& e, const std::vector<const Deferred*>& members) {
  ncclResult_t first = ncclSuccess;
  for (const Deferred* d : members) {
    // A non-blocking communicator's enqueue ends before its next call (an
    // aborted one's forward refuses at once).
    ncclResult_t r = awaitAnswered(d->comm, forward(&e, *d), &e.aborted);
    if (r != ncclSuccess && first == ncclSuccess) first = r;
  }
  return first;
}

// Marks the end of what a set enqueued on its stream (the fusion buffer's
// copies, gradcomp's call): the next set, on any stream, waits for it
// before its copy-in overwrites the buffer. Under e.callMu.
cudaError_t markFusionDone(CommEntry& e, cudaStream_t stream) {
  cudaError_t err = e.fusionDone != nullptr
                        ? cudaSuccess
                        : cudaEventCreateWithFlags(&e.fusionDone, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventRecord(e.fusionDone, stream);
  return err;
}

// A set that fails after its copy-in began still marks its end: its copies
// (and any of gradcomp's kernels) may still read or write the buffer when the
// next set, on another stream, copies in.
ncclResult_t failedSet(CommEntry& e, cudaStream_t stream, ncclResult_t r) {
  if (!streamCapturing(stream)) {
    std::lock_guard<std::mutex> lock(e.callMu);
    (void)markFusionDone(e, stream);
  }
  (void)cudaGetLastError();
  return r;
}

// This rank's fused set failed before gradcomp (its copy-in; a fusion
// buffer that cannot grow is voted on, see fusionStep): its peers are already
// in the fused call. Under
// GRADCOMP_CHECK_CALLS that call starts with a vote on its buffers, so this
// rank joins it refusing the call (NULL buffers), and every rank fails the
// set alike instead of waiting for this one; without the check they wait
// (docs/reliability.md). Under e.callMu.
ncclResult_t refuseFusedCall(CommEntry& e, const Deferred& d0, size_t total, uint64_t key,
                             ncclResult_t r) {
  if (e.gc != nullptr && e.gc->cfg.checkCalls) {
    (void)gradcompAllReduceKeyed(nullptr, nullptr, total, d0.type, d0.op, e.gc, d0.stream, key);
  }
  return r;
}

// A fused set whose key is new after the communicator's first steps
// (fusedKeyIsLate): its receive buffers most likely moved. Once per
// communicator, whatever GRADCOMP_DEBUG says, as the library's own warning
// about an unkeyed buffer that moved. Under e.callMu.
void warnIfLateFusedSet(CommEntry& e, const std::vector<const Deferred*>& members, size_t total,
                        uint64_t key) {
  const uint64_t calls = e.fusedKeys.calls;
  const size_t held = e.fusedKeys.keys.size();
  if (!fusedKeyIsLate(e.fusedKeys, key)) return;  // true once per communicator
  warn(
      "rank %d: a fused set of %zu calls (%zu elements, first recvbuff %p) on NCCL comm %p has "
      "receive buffers not fused together before, at fused set %llu of this comm, which holds "
      "the residuals of %zu other sets: gradients that move between steps start a new residual "
      "each time (the old one is never sent and stays allocated, and its error feedback is "
      "lost), and with DGC warm-up or DQ-SGD its schedule can differ between ranks. Keep the "
      "gradients allocated (zero_grad(set_to_none=False)), or use the Python hooks, which key "
      "by parameter",
      e.rank, members.size(), total, members[0]->recv, (void*)e.nccl, (unsigned long long)calls,
      held);
}

ncclResult_t runFusedSet(CommEntry& e, const std::vector<const Deferred*>& members) {
  const Deferred& d0 = *members[0];
  if (members.size() == 1) {
    return compress(e, d0, false, 0, 1);
  }
  // Fused calls are eligible ones (fp32, fp16, bf16): the library's own sizes.
  DType vt;
  if (dtypeFromNccl(d0.type, &vt) != gradcompSuccess) return passEach(e, members);
  const size_t esz = dtypeBytes(vt);
  size_t total = 0;
  for (const Deferred* d : members) total += d->count;
  const uint64_t key = fusedStateKey(members);
  // The copies and the event on the comm's device: the legacy stream (0) is
  // the current device's, which need not be the comm's.
  DeviceGuard guard(e.device);
  {
    std::lock_guard<std::mutex> lock(e.callMu);
    const size_t bytes = total * esz;
    const FusionStep step = fusionStep(bytes, e.fusionAgreed, streamCapturing(d0.stream));
    if (step == FusionStep::Pass) {
      warnOnce("fuse-capture",
               "a fused group needing a larger fusion buffer (%zu bytes) is being captured into "
               "a CUDA graph; its calls pass through (run the group once eagerly first)",
               bytes);
      return passEach(e, members);
    }
    if (step == FusionStep::Vote) {
      if (e.fusionBytes < bytes) {
        if (e.fusion != nullptr && e.fusionCaptured) {
          e.fusionRetired.push_back(e.fusion);
        } else if (e.fusion != nullptr) {
          cudaFree(e.fusion);  // waits for work still using it
        }
        e.fusion = nullptr;
        e.fusionCaptured = false;
        e.fusionBytes = 0;
        cudaError_t err = cudaMalloc(&e.fusion, bytes);
        if (err != cudaSuccess) {
          (void)cudaGetLastError();
          e.fusion = nullptr;
          // Keyed on the error alone: a sentence with the size would be said
          // again for each size of group that fails.
          warnOnce(std::string("fuse-alloc ") + cudaGetErrorString(err),
                   "cannot allocate a %zu-byte fusion buffer (%s); every rank passes the group's "
                   "calls to NCCL uncompressed",
                   bytes, cudaGetErrorString(err));
        } else {
          e.fusionBytes = bytes;
        }
      }
      // Every rank votes its buffer's size, grown or not (one 8-byte
      // allreduce and a wait per growth, in the first steps; the cudaFree
      // above already waits for the device): a rank that could not grow makes
      // every rank pass the set to NCCL, where it used to fail alone while its
      // peers waited in the fused call.
      uint64_t least = 0;
      std::string why;
      if (!voteMin(e, d0.stream, e.fusionBytes, &least, &why)) {
        warnOwnError(
            "cannot vote on the fusion buffer with the other ranks of NCCL comm %p (%s); the "
            "group's calls fail",
            (void*)e.nccl, why.c_str());
        return e.aborted.stopped() ? ncclInvalidUsage : ncclSystemError;
      }
      e.fusionAgreed = (size_t)least;
      if (least < bytes) {
        if (e.fusionBytes >= bytes) {
          warnOnce("fuse-peer",
                   "another rank of NCCL comm %p cannot allocate its fusion buffer; every rank "
                   "passes the group's calls to NCCL uncompressed",
                   (void*)e.nccl);
        }
        return passEach(e, members);
      }
    }
    GC_NVTX_RANGE("gradcomp fuse copy-in");
    // The last set may have used the buffer on another stream: its copy out
    // must be done before this set's copy in overwrites it. Waited for on the
    // same handle too: one handle can name another stream (cudaStreamPerThread
    // from another thread, a handle reused after cudaStreamDestroy).
    if (e.fusionDone != nullptr && !streamCapturing(d0.stream)) {
      cudaError_t err = cudaStreamWaitEvent(d0.stream, e.fusionDone, 0);
      if (err != cudaSuccess) {
        (void)cudaGetLastError();
        warnOwnError("cannot order the fusion buffer across streams (%s); the calls fail",
                     cudaGetErrorString(err));
        return refuseFusedCall(e, d0, total, key, ncclUnhandledCudaError);
      }
    }
    char* fusion = static_cast<char*>(e.fusion);
    size_t off = 0;
    for (const Deferred* d : members) {
      cudaError_t err = cudaMemcpyAsync(fusion + off, d->send, d->count * esz,
                                        cudaMemcpyDeviceToDevice, d0.stream);
      if (err != cudaSuccess) {
        (void)cudaGetLastError();
        warnOwnError("cannot copy into the fusion buffer (%s); the calls fail",
                     cudaGetErrorString(err));
        if (!streamCapturing(d0.stream)) (void)markFusionDone(e, d0.stream);  // callMu held
        (void)cudaGetLastError();
        return refuseFusedCall(e, d0, total, key, ncclUnhandledCudaError);
      }
      off += d->count * esz;
    }
    if (streamCapturing(d0.stream)) e.fusionCaptured = true;
    warnIfLateFusedSet(e, members, total, key);
  }
  const Deferred fused{e.fusion, e.fusion, total, d0.type, d0.op, d0.comm, d0.stream};
  // A fused call compress passed to a non-blocking communicator's NCCL
  // answers ncclInProgress: its copy-out must still follow.
  ncclResult_t r =
      awaitAnswered(d0.comm, compress(e, fused, true, key, members.size()), &e.aborted);
  if (r != ncclSuccess) return failedSet(e, d0.stream, r);
  GC_NVTX_RANGE("gradcomp fuse copy-out");
  const char* fusion = static_cast<const char*>(e.fusion);
  size_t off = 0;
  for (const Deferred* d : members) {
    cudaError_t err =
        cudaMemcpyAsync(d->recv, fusion + off, d->count * esz, cudaMemcpyDeviceToDevice, d0.stream);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      warnOwnError("cannot copy out of the fusion buffer: %s", cudaGetErrorString(err));
      return failedSet(e, d0.stream, ncclUnhandledCudaError);
    }
    off += d->count * esz;
  }
  if (!streamCapturing(d0.stream)) {
    std::lock_guard<std::mutex> lock(e.callMu);
    const cudaError_t err = markFusionDone(e, d0.stream);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      warnOwnError("cannot record the end of a fused set: %s", cudaGetErrorString(err));
      return ncclUnhandledCudaError;
    }
  }
  return ncclSuccess;
}

}  // namespace

ncclResult_t runDeferred(std::vector<Deferred>& calls) {
  ncclResult_t first = ncclSuccess;
  auto note = [&](ncclResult_t r) {
    if (r != ncclSuccess && first == ncclSuccess) first = r;
  };
  // Decide each communicator now, in call order, outside the group (deciding
  // runs an NCCL allreduce and waits for it, which inside a group would never
  // start).
  std::vector<EntryPtr> entries(calls.size());
  std::vector<bool> fusable(calls.size(), false);
  for (size_t i = 0; i < calls.size(); ++i) {
    const Deferred& d = calls[i];
    EntryPtr e = deferredEntry(d);
    if (e == nullptr) continue;  // refused below, in its place
    // A call deferred only for the agreement (not eligible, or
    // GRADCOMP_GROUP=pass) runs the agreement alone; the set-up proper waits
    // for an eligible call, as outside a group. A finalize or destroy
    // decides nothing: a step of its own, after its communicator's sets.
    const bool call = d.commCall == CommCall::None;
    if (call && e->mode == Mode::Undecided && !d.pass) {
      decideUnlessCapturing(*e, d.comm, d.stream);
    } else if (call && e->mode == Mode::Undecided && !e->agreed &&
               opensAgreement(d.count, d.type, d.op)) {
      agreeUnlessCapturing(*e, d.comm, d.stream);
    }
    fusable[i] = call && e->mode == Mode::Compress && !d.pass &&
                 settings().group == GroupMode::Fuse && d.coll == Collective::AllReduce;
    entries[i] = std::move(e);
  }
  for (const std::vector<size_t>& step : planDeferred(calls, fusable)) {
    const Deferred& d = calls[step[0]];
    CommEntry* e = entries[step[0]].get();
    // Its communicator was aborted or destroyed after the call was deferred
    // (another thread's ncclCommAbort, a dead peer, the group's own destroy
    // of it run in its place above): NCCL frees it, so neither the set-up nor
    // the call may name it (docs/reliability.md).
    if (e == nullptr || e->released) {
      warnDeferredReleased(d.comm);
      note(ncclInvalidUsage);
      continue;
    }
    if (d.commCall != CommCall::None) {
      // After its communicator's calls, whatever they answered: one that
      // failed here failed after NCCL launched the group, which runs the
      // group's finalize and destroy all the same (their jobs run before its
      // launch, group.cc; only a group NCCL refuses drops them, as
      // leaveGroup does), and fails neither the communicator nor its later
      // calls, which run on. The group's end answers the first error, the
      // failed call's. Left out, the program's finalize (ncclSuccess to it)
      // had never happened, and its destroy left the communicator alive.
      note(runCommCall(d, *e));
    } else if (fusable[step[0]]) {
      std::vector<const Deferred*> members;
      for (size_t i : step) members.push_back(&calls[i]);
      note(awaitAnswered(d.comm, runFusedSet(*e, members), &e->aborted));
    } else if (e->mode != Mode::Compress || d.pass) {
      // A non-blocking communicator's enqueue ends before its next call (a
      // call gradcomp passed to NCCL answers ncclInProgress).
      note(awaitAnswered(d.comm, forward(e, d), &e->aborted));
    } else {
      note(awaitAnswered(d.comm, compress(*e, d, false, 0, 1), &e->aborted));
    }
  }
  return first;
}

}  // namespace preload
}  // namespace gc
