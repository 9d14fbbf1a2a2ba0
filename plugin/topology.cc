// Topology of a comm and its hierarchical split: which ranks share a node,
// the intra-node transport and the inter-node child comm.
#include "topology.h"

#include <stdlib.h>
#include <unistd.h>

#include "backends/cuda/nccl_api.h"
#include "checks.h"
#include "comm.h"

namespace gc {
namespace {

uint64_t fnv1a(const char* s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; ++s) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

// Every rank's host identity, by one small ncclAllGather on a private stream.
gradcompResult_t gatherHosts(const gradcompComm& c, uint64_t mine, std::vector<uint64_t>* hosts) {
  hosts->assign(c.nranks, 0);
  cudaStream_t s = nullptr;
  GC_CUDACHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  uint64_t* dev = nullptr;
  cudaError_t err = cudaMalloc(&dev, c.nranks * sizeof(uint64_t));
  ncclResult_t nres = ncclSuccess;
  if (err == cudaSuccess) {
    err = cudaMemcpyAsync(dev + c.rank, &mine, sizeof(mine), cudaMemcpyHostToDevice, s);
  }
  if (err == cudaSuccess) {
    nres = ncclApi()->allGather(dev + c.rank, dev, sizeof(uint64_t), ncclUint8, c.nccl, s);
  }
  if (err == cudaSuccess && nres == ncclSuccess) {
    err =
        cudaMemcpyAsync(hosts->data(), dev, c.nranks * sizeof(uint64_t), cudaMemcpyDeviceToHost, s);
  }
  if (err == cudaSuccess) err = cudaStreamSynchronize(s);
  if (dev != nullptr) cudaFree(dev);
  cudaStreamDestroy(s);
  GC_CUDACHECK(err);
  GC_NCCLCHECK(nres);
  return gradcompSuccess;
}

std::unique_ptr<gradcompComm> makeInterComm(const gradcompComm& c,
                                            std::unique_ptr<Transport> transport) {
  std::unique_ptr<gradcompComm> m(new gradcompComm());
  m->cfg = c.cfg;
  m->cfg.seed = hierSeed(c.cfg.seed, c.topo.localRank);
  m->cfg.localSize = 1;
  if (m->cfg.algo == gradcompAlgoHier) m->cfg.algo = gradcompAlgoAuto;
  m->rank = c.topo.node;
  m->nranks = c.topo.nodes;
  m->topo = blockTopology(m->rank, m->nranks, 1);
  m->backend = c.backend;
  m->sparse = c.sparse;
  m->transport = std::move(transport);
  return m;
}

// Keeps the node boundaries for byte counts, exchanges flat.
void flatten(Topology* t) {
  t->localSize = 1;
}

}  // namespace

Topology blockTopology(int rank, int nranks, int localSize) {
  Topology t;
  t.localSize = localSize;
  t.nodes = nranks / localSize;
  t.node = rank / localSize;
  t.localRank = rank % localSize;
  if (localSize > 1) {
    t.nodeOf.resize(nranks);
    for (int j = 0; j < nranks; ++j) t.nodeOf[j] = j / localSize;
  }
  return t;
}

Topology hostTopology(int rank, const std::vector<uint64_t>& hosts, const char** why) {
  const int n = (int)hosts.size();
  *why = nullptr;
  for (uint64_t h : hosts) {
    if (h == 0) {
      *why = "a rank could not read its host identity (NCCL_HOSTID or host name)";
      return blockTopology(rank, n, 1);
    }
  }
  std::vector<uint64_t> seen;
  std::vector<int> sizes, localRank(n);
  Topology t;
  t.nodeOf.resize(n);
  for (int j = 0; j < n; ++j) {
    size_t k = 0;
    while (k < seen.size() && seen[k] != hosts[j]) ++k;
    if (k == seen.size()) {
      seen.push_back(hosts[j]);
      sizes.push_back(0);
    }
    t.nodeOf[j] = (int)k;
    localRank[j] = sizes[k]++;
  }
  t.node = t.nodeOf[rank];
  t.nodes = (int)seen.size();
  t.localRank = localRank[rank];
  t.localSize = sizes[0];
  for (int s : sizes) {
    if (s != sizes[0]) {
      *why = "the nodes have different numbers of ranks";
      flatten(&t);
      break;
    }
  }
  return t;
}

uint64_t hostIdentity() {
  const char* id = getenv("NCCL_HOSTID");
  char name[256] = {0};
  if (id == nullptr || *id == '\0') {
    if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return 0;
    id = name;
  }
  const uint64_t h = fnv1a(id);
  return h == 0 ? 1 : h;
}

gradcompResult_t checkLocalSize(int localSize, int nranks) {
  GC_ARG(localSize >= 1 && localSize <= nranks && nranks % localSize == 0,
         "GRADCOMP_LOCAL_SIZE (localSize) = %d is not valid for %d ranks: use auto (0), 1 (flat) "
         "or a divisor of %d (consecutive blocks of that many ranks form a node)",
         localSize, nranks, nranks);
  return gradcompSuccess;
}

gradcompResult_t setupNcclHierarchy(gradcompComm* c) {
  const int n = c->nranks, L = c->cfg.localSize;
  if (L != 0) {
    GC_CHECK(checkLocalSize(L, n));
    c->topo = blockTopology(c->rank, n, L);
  } else {
    std::vector<uint64_t> hosts;
    GC_CHECK(gatherHosts(*c, hostIdentity(), &hosts));
    const char* why = nullptr;
    c->topo = hostTopology(c->rank, hosts, &why);
    if (why != nullptr && c->rank == 0) {
      GC_INFO("comm %p: %s; exchanging flat", (void*)c, why);
    }
  }
  if (!c->topo.hier()) return gradcompSuccess;
  const NcclApi* api = ncclApi();
  if (api->commSplit == nullptr || api->reduceScatter == nullptr || api->commDestroy == nullptr) {
    if (c->rank == 0) {
      GC_INFO("comm %p: this NCCL has no ncclCommSplit/ncclReduceScatter; exchanging flat",
              (void*)c);
    }
    flatten(&c->topo);
    return gradcompSuccess;
  }
  const Topology& t = c->topo;
  // Intra: color node, key rank (local rank order). Inter: color local rank,
  // key node, so the child comm's rank is the node index.
  GC_NCCLCHECK(api->commSplit(c->nccl, t.node, c->rank, &c->intraNccl, nullptr));
  GC_NCCLCHECK(api->commSplit(c->nccl, t.localRank, t.node, &c->interNccl, nullptr));
  c->intra = makeNcclTransport(c->intraNccl, t.localRank, t.localSize);
  c->inter = makeInterComm(*c, makeNcclTransport(c->interNccl, t.node, t.nodes));
  c->inter->nccl = c->interNccl;
  GC_INFO("comm %p rank %d: node %d of %d, local rank %d of %d", (void*)c, c->rank, t.node, t.nodes,
          t.localRank, t.localSize);
  return gradcompSuccess;
}

gradcompResult_t setupCpuHierarchy(gradcompComm** comms, int nranks) {
  const int L = comms[0]->cfg.localSize;  // auto (0) is flat on the CPU world
  if (L != 0) GC_CHECK(checkLocalSize(L, nranks));
  const int local = L == 0 ? 1 : L;
  std::vector<Topology> topos(nranks);
  for (int r = 0; r < nranks; ++r) topos[r] = blockTopology(r, nranks, local);
  splitCpuWorld(comms, topos);
  return gradcompSuccess;
}

void splitCpuWorld(gradcompComm** comms, const std::vector<Topology>& topos) {
  const int nranks = (int)topos.size();
  for (int r = 0; r < nranks; ++r) comms[r]->topo = topos[r];
  if (!topos[0].hier()) return;
  const int nodes = topos[0].nodes, local = topos[0].localSize;
  std::vector<std::vector<std::unique_ptr<Transport>>> intra(nodes), inter(local);
  for (int k = 0; k < nodes; ++k) intra[k] = makeCpuWorld(local);
  for (int j = 0; j < local; ++j) inter[j] = makeCpuWorld(nodes);
  for (int r = 0; r < nranks; ++r) {
    const Topology& t = comms[r]->topo;
    comms[r]->intra = std::move(intra[t.node][t.localRank]);
    comms[r]->inter = makeInterComm(*comms[r], std::move(inter[t.localRank][t.node]));
  }
}

void destroyHierarchy(gradcompComm* c) {
  c->inter.reset();
  c->intra.reset();
  const NcclApi* api = ncclApi();
  for (ncclComm_t* sub : {&c->intraNccl, &c->interNccl}) {
    if (*sub != nullptr && api->commDestroy != nullptr) api->commDestroy(*sub);
    *sub = nullptr;
  }
}

}  // namespace gc
