// Which ranks share a node, and the hierarchical split of a comm built from
// it. The topology comes from NCCL's notion of a host (NCCL_HOSTID, else the
// host name and boot id) or from GRADCOMP_LOCAL_SIZE (consecutive blocks of L
// ranks).
#pragma once

#include <stdint.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/common_math.cuh"
#include "gradcomp.h"
#include "hier_layout.h"

struct gradcompComm;

namespace gc {
class NcclStop;  // backends/cuda/nccl_api.h
struct SocketMesh;
}  // namespace gc

namespace gc {

struct Topology {
  int node = 0, nodes = 1;           // this rank's node and the number of nodes
  int localRank = 0, localSize = 1;  // position among the node's ranks, ranks per node
  // Node of every rank (empty: one rank per node). Kept for non-uniform
  // nodes too, where localSize is 1 (flat exchange) but bytes are still
  // counted by the real node boundaries.
  std::vector<int> nodeOf;
  // rankAt's table, ranks[node * localSize + local], for uniform nodes
  // (indexRanks); empty otherwise. The hierarchical exchanges ask for every
  // rank's place at every call: a scan of nodeOf each time made that
  // quadratic in the ranks.
  std::vector<int> ranks;
  // Hierarchical exchange pays only with >= 2 nodes of >= 2 ranks.
  bool hier() const { return hierLayout(nodes, localSize); }
  // Global rank of local rank `local` on node `node`: the ranks of a node in
  // rank order (nodes need not be contiguous in rank order).
  int rankAt(int node, int local) const {
    if (nodeOf.empty()) return node * localSize + local;
    if (ranks.size() == (size_t)nodes * localSize) {
      return node >= 0 && node < nodes && local >= 0 && local < localSize
                 ? ranks[(size_t)node * localSize + local]
                 : -1;
    }
    for (int r = 0; r < (int)nodeOf.size(); ++r) {
      if (nodeOf[r] == node && local-- == 0) return r;
    }
    return -1;
  }
  bool remote(int peer, int rank) const {
    return nodeOf.empty() ? peer != rank : nodeOf[peer] != node;
  }
};

// Consecutive blocks of localSize ranks form a node (localSize divides nranks).
Topology blockTopology(int rank, int nranks, int localSize);
// Fills t->ranks from t->nodeOf when every node has localSize ranks (else
// leaves it empty: rankAt scans).
void indexRanks(Topology* t);
// From every rank's host identity (0: none, which hostIdentity never gives).
// Node = order of first appearance of a host, localRank = order among the
// ranks of that host. Nodes of different sizes, or an identity of 0, give the
// flat topology; *why says so.
Topology hostTopology(int rank, const std::vector<uint64_t>& hosts, const char** why);
// The string NCCL hashes for a rank's host (getHostHash, src/misc/utils.cc,
// since NCCL 2.5.6), so that gradcomp's nodes are NCCL's: NCCL_HOSTID when it
// is set, even empty; else the host name ("unknown" when gethostname failed:
// hostName null) followed by the first word of the boot id file; 1023
// characters at most.
std::string ncclHostString(const char* hostId, const char* hostName, const char* bootIdPath);
// ncclHostString of this process (NCCL_HOSTID, gethostname,
// /proc/sys/kernel/random/boot_id), hashed; never 0.
uint64_t hostIdentity();
// localSize L: 1..nranks and dividing nranks (0 = auto is checked by the caller).
gradcompResult_t checkLocalSize(int localSize, int nranks);

// The seed of the inter-node exchange of local rank j: its ranks are numbered
// by node there, so the local rank is mixed into the seed to keep every
// global rank's RNG keys distinct.
inline uint64_t hierSeed(uint64_t seed, int localRank) {
  return deriveKey(seed, ~0ull, (uint64_t)localRank, 0x4849455253454544ull);
}

// What one rank brings to the collective set-up of a comm. Every rank joins
// one exchange of these, whatever its local checks gave, and every rank then
// decides the same from all of them (agreeOnSetup): a rank that failed alone
// or disagrees on a setting would otherwise leave the others waiting in
// ncclCommSplit, or split them with colors that do not match.
constexpr int kSetupSettings = 31;
// Room for the settings of later versions: the vote keeps its size as
// settings are added, so that ranks of builds with different settings still
// exchange votes of one size and compare their versions, instead of meeting
// in an exchange of mismatched sizes (on NCCL, a hang or unrelated bytes).
constexpr int kSetupSettingsCapacity = 64;
static_assert(kSetupSettings <= kSetupSettingsCapacity, "the vote has no room for the settings");
struct SetupVote {
  // The gradcomp that made the vote (GRADCOMP_VERSION_CODE) and the number
  // of settings it votes on, compared before anything else: ranks of
  // different builds may lay out, encode or choose their exchanges
  // differently, so they fail alike, naming both, instead of going on.
  uint32_t version = 0;
  uint32_t settingsCount = 0;
  uint64_t host = 0;   // hostIdentity(), never 0
  int32_t result = 0;  // gradcompResult_t of this rank's local set-up
  // 1: this rank asks for a private split (setupNcclHierarchy): its config
  // says privateComm, or its NCCL comm is known to be non-blocking (the
  // LD_PRELOAD library's record of how it was made). If any rank asks, every
  // rank exchanges on a private split of the program's communicator.
  int32_t wantsPrivate = 0;
  // The settings that shape the split or the exchange, in the order of
  // setupSettingName(); floats as their bits.
  uint64_t settings[kSetupSettingsCapacity] = {};
  char why[256] = {};  // this rank's error sentence when result is not success
};
static_assert(std::is_trivially_copyable<SetupVote>::value, "votes travel as bytes");
SetupVote makeSetupVote(gradcompResult_t local, const gradcompConfig_t& cfg, uint64_t host,
                        const char* why);
const char* setupSettingName(int i);
// The decision from every rank's vote, the same on every rank: success,
// gradcompInvalidUsage naming the first rank whose gradcomp version or
// settings count differs from rank 0's, the lowest failed rank's result and
// sentence, or gradcompInvalidArgument naming the first setting on which a
// rank differs from rank 0.
gradcompResult_t agreeOnSetup(const std::vector<SetupVote>& votes);

// Gives every rank's vote; the NCCL one is a single ncclAllGather run on the
// comm's device (made current for the exchange, then restored), in mapped
// host memory where the device has none left (hostBuffer: always, for its
// GPU test).
using VoteGather = std::function<gradcompResult_t(const SetupVote& mine, std::vector<SetupVote>*)>;
VoteGather ncclVoteGather(ncclComm_t nccl, int rank, int nranks, int device,
                          NcclStop* stop = nullptr, bool hostBuffer = false);

// Collective: gathers the votes, agrees, then gives comm c (rank, nranks,
// cfg and backend set when mine.result is success) its topology and, when it
// is hierarchical, the intra-node transport and the inter-node child comm.
// `stop` stopped (c->nccl aborted by another thread) after the vote: no
// split. A non-blocking c->nccl's splits are waited for (ncclFinish). When
// a rank's vote asks for a private split (its config's privateComm, or its
// comm known to be non-blocking), every rank first splits a private
// communicator of the same ranks (c->ownNccl), and the comm's transport and
// the hierarchy's splits use it: the program (PyTorch's watchdog thread)
// polls its own communicator, and NCCL's ncclCommGetAsyncError may not run
// on two threads at once.
gradcompResult_t setupNcclHierarchy(gradcompComm* c, const SetupVote& mine,
                                    const VoteGather& gather, NcclStop* stop = nullptr);
// The vote and the topology alone (no sub-communicators): every rank gathers
// the votes, agrees, and takes blocks of cfg.localSize or, for auto, nodes by
// host identity.
// *anyWantsPrivate (when given): whether a rank's vote asks for a private
// split.
gradcompResult_t agreeTopology(gradcompComm* c, const SetupVote& mine, const VoteGather& gather,
                               bool* anyWantsPrivate = nullptr);
// The same for a comm over TCP (c->transport spans the mesh): the votes
// travel over it, and the hierarchy's sub-transports share its connections.
gradcompResult_t setupSocketHierarchy(gradcompComm* c, const SetupVote& mine,
                                      std::shared_ptr<SocketMesh> mesh);
// The CPU world of nranks comms: blocks of cfg.localSize (auto = flat).
gradcompResult_t setupCpuHierarchy(gradcompComm** comms, int nranks);
// Gives the CPU world's comms the topologies (one per rank, uniform nodes)
// and, when hierarchical, their in-process sub-worlds; tests use it for
// nodes that are not contiguous in rank order.
void splitCpuWorld(gradcompComm** comms, const std::vector<Topology>& topos);
// Destroys what setup made (NCCL sub-communicators included).
void destroyHierarchy(gradcompComm* c);

}  // namespace gc
