#include "model.h"

#include <algorithm>

#include "gradcomp/reference.h"

namespace gcbench {

// Latency steps: the sends of an all-to-all leave together (one step), as do
// the compressed exchanges' allgathers (allGatherDirect: each rank's block
// straight to every peer); the ring's hops follow one another; NCCL's
// allgather and allreduce run rings of N-1 and 2(N-1) steps.
AlgoShape algoShape(int algo, int nranks, int local, int middle) {
  const double n = nranks;
  switch (algo) {
    case 5: {  // hier: the middle algorithm on the shard, between two in-node rings
      const int g = local > 1 ? local : 1;
      const AlgoShape m = algoShape(middle, nranks / g);
      return {m.encodeFactor / g, m.decodeFactor / g, 2.0 * (g - 1) + m.latencySteps};
    }
    case 1:  // two-shot: encode N-1 chunks for their owners and the reduced own chunk (n in
             // all); decode N-1 chunks into the own chunk, then all N chunks of the result.
             // Two rounds of direct sends: the all-to-all and the owners' sends of the sums.
      return {1.0, (2 * n - 1) / n, 2};
    case 2:  // ring: decode-add-encode one chunk per hop, encode the reduced chunk, decode N;
             // N-1 hops, then one round of direct sends of the reduced chunks.
      return {1.0, (2 * n - 1) / n, n};
    case 3:  // allgather: encode everything once, decode-sum all N buffers (direct sends).
      return {1.0, n, 1};
    case 6: {  // reduce-scatter (kAlgoReduceScatter), per element of the output
      // Hierarchical on >= 2 nodes of >= 2 ranks (as the library picks it): NCCL's
      // in-node ring reduce-scatter of fp32 (G-1 steps, no gradcomp kernels), then
      // the flat exchange among the k nodes.
      const int g = local > 1 ? local : 1;
      if (g > 1 && nranks / g >= 2) {
        const double k = nranks / g;
        return {k - 1, k - 1, (g - 1) + 1.0};
      }
      // Flat: encode and decode N-1 blocks, one all-to-all.
      return {n - 1, n - 1, 1};
    }
    case 4:  // sparse allgather (direct sends): selection and scatter-add are not yet timed alone.
      return {0.0, 0.0, 1};
    default:  // passed through to ncclAllReduce
      return {0.0, 0.0, 2 * (n - 1)};
  }
}

double ncclRingBytes(size_t bytes, int nranks) {
  return nranks > 1 ? 2.0 * (nranks - 1) / nranks * (double)bytes : 0.0;
}

// bytes * 8 / (gbps * 1e9) seconds = bytes * 8 / (gbps * 1e3) microseconds.
static double transferUs(double bytes, double gbps) {
  return bytes > 0 ? bytes * 8.0 / (gbps * 1e3) : 0.0;
}

double ncclModelUs(size_t bytes, int nranks, double gbps, double latencyUs) {
  if (nranks <= 1) return 0;
  return transferUs(ncclRingBytes(bytes, nranks), gbps) + 2.0 * (nranks - 1) * latencyUs;
}

double ncclReduceScatterBytes(size_t outBytes, int nranks) {
  return nranks > 1 ? (nranks - 1.0) * (double)outBytes : 0.0;
}

double ncclReduceScatterModelUs(size_t outBytes, int nranks, double gbps, double latencyUs) {
  if (nranks <= 1) return 0;
  return ncclReduceScatterBytes(outBytes, nranks) * 8.0 / (gbps * 1e3) + (nranks - 1) * latencyUs;
}

LinkBytes ncclReduceScatterClusterBytes(double outBytes, const Cluster& c) {
  const double rs = (c.ranks() - 1.0) * outBytes;
  if (c.nodes <= 1) return {rs, 0.0};
  return {rs * (c.local - 1) / c.local, rs / c.local};
}

double ncclReduceScatterClusterUs(double outBytes, const Cluster& c) {
  const int n = c.ranks();
  if (n <= 1) return 0;
  return concurrentLinkUs(ncclReduceScatterClusterBytes(outBytes, c), c) + (n - 1) * c.latencyUs;
}

double gradcompModelUs(double kernelUs, double wireBytes, double latencySteps, double gbps,
                       double latencyUs) {
  return kernelUs + transferUs(wireBytes, gbps) + latencySteps * latencyUs;
}

double pipelinedModelUs(double kernelUs, double wireBytes, double latencySteps, double gbps,
                        double latencyUs, double pieces) {
  const double k = kernelUs / pieces;
  const double w = transferUs(wireBytes / pieces, gbps) + latencySteps * latencyUs;
  return k + w + (pieces - 1) * std::max(k, w);
}

LinkBytes ncclClusterBytes(double bytes, const Cluster& c) {
  const double n = c.ranks(), g = c.local;
  const double ring = n > 1 ? 2.0 * (n - 1) / n * bytes : 0.0;
  if (c.nodes <= 1) return {ring, 0.0};
  return {ring * (g - 1) / g, ring / g};
}

LinkBytes flatTwoShotBytes(double encoded, const Cluster& c) {
  const double n = c.ranks(), g = c.local;
  return {2.0 * encoded * (g - 1) / n, 2.0 * encoded * (n - g) / n};
}

LinkBytes hierBytes(double bytes, double shardEncoded, const Cluster& c) {
  const double g = c.local, k = c.nodes;
  return {2.0 * (g - 1) / g * bytes, 2.0 * (k - 1) / k * shardEncoded};
}

// A node's NICs serve its G GPUs: each GPU's share is nodeGbps / G.
double concurrentLinkUs(const LinkBytes& b, const Cluster& c) {
  return std::max(transferUs(b.intra, c.intraGbps), transferUs(b.inter, c.nodeGbps / c.local));
}

double sequentialLinkUs(const LinkBytes& b, const Cluster& c) {
  return transferUs(b.intra, c.intraGbps) + transferUs(b.inter, c.nodeGbps / c.local);
}

// The hierarchy's stages per piece: an NVLink collective moving `intra`
// bytes in the node's G-1 ring steps, and the inter-node stage.
static double nodeStageUs(double intra, const Cluster& c, double pieces) {
  return transferUs(intra / pieces, c.intraGbps) + (c.local - 1.0) * c.latencyUs;
}

static double interStageUs(double kernelUs, const LinkBytes& b, double middleSteps,
                           const Cluster& c, double pieces) {
  return kernelUs / pieces + transferUs(b.inter / pieces, c.nodeGbps / c.local) +
         middleSteps * c.latencyUs;
}

double hierPipelinedUs(double kernelUs, const LinkBytes& b, double middleSteps, const Cluster& c,
                       double pieces) {
  const double r = nodeStageUs(b.intra / 2, c, pieces);
  const double m = interStageUs(kernelUs, b, middleSteps, c, pieces);
  return 2 * r + m + (pieces - 1) * std::max(r, m);
}

double hierReduceScatterPipelinedUs(double kernelUs, const LinkBytes& b, double middleSteps,
                                    const Cluster& c, double pieces) {
  const double r = nodeStageUs(b.intra, c, pieces);
  const double m = interStageUs(kernelUs, b, middleSteps, c, pieces);
  return r + m + (pieces - 1) * std::max(r, m);
}

double hierPieces(size_t count, int bucket, const Cluster& c, size_t pipelineBytes) {
  const size_t d = (size_t)bucket, g = (size_t)c.local, k = (size_t)c.nodes;
  if (pipelineBytes == 0 || k < 2 || count == 0) return 1;
  // splitAligned's first (longest) part of n elements in p parts.
  auto first = [d](size_t n, size_t p) { return std::min(n, ((n + d - 1) / d + p - 1) / p * d); };
  const size_t chunk = first(first(count, g), k);
  const size_t share = (pipelineBytes / 4 + k - 1) / k;
  const size_t piece = std::max<size_t>(1, (share + d - 1) / d) * d;
  return piece >= chunk ? 1 : (double)((chunk + piece - 1) / piece);
}

double ncclClusterUs(double bytes, const Cluster& c) {
  const int n = c.ranks();
  if (n <= 1) return 0;
  return concurrentLinkUs(ncclClusterBytes(bytes, c), c) + 2.0 * (n - 1) * c.latencyUs;
}

double gradcompClusterUs(double kernelUs, const LinkBytes& b, bool stages, double latencySteps,
                         const Cluster& c) {
  return kernelUs + (stages ? sequentialLinkUs(b, c) : concurrentLinkUs(b, c)) +
         latencySteps * c.latencyUs;
}

ClusterTimes clusterModel(size_t count, size_t elemBytes, int bits, int bucket,
                          double encodeUsPerElem, double decodeUsPerElem, const Cluster& c,
                          size_t pipelineBytes) {
  ClusterTimes t;
  const double n = c.ranks(), k = c.nodes;
  const double bytes = (double)count * elemBytes;
  const size_t shard = (count + c.local - 1) / c.local;
  t.nccl = ncclClusterBytes(bytes, c);
  t.flat = flatTwoShotBytes((double)gradcompQsgdEncodedBytes(count, bits, bucket), c);
  t.hier = hierBytes(bytes, (double)gradcompQsgdEncodedBytes(shard, bits, bucket), c);
  if (n <= 1) return t;
  t.ncclUs = ncclClusterUs(bytes, c);
  // Flat two-shot over all N ranks.
  const AlgoShape fs = algoShape(1, c.ranks());
  t.flatKernelUs = count * (encodeUsPerElem * fs.encodeFactor + decodeUsPerElem * fs.decodeFactor);
  t.flatUs = gradcompClusterUs(t.flatKernelUs, t.flat, false, fs.latencySteps, c);
  // Hierarchical with a two-shot of the shard over the K nodes; one node is
  // NCCL inside it.
  if (k <= 1) {
    t.hierUs = t.hierPipedUs = t.ncclUs;
    t.hier = t.nccl;
    t.autoUs = std::min(t.flatUs, t.ncclUs);
    return t;
  }
  const AlgoShape hs = algoShape(5, c.ranks(), c.local, 1);
  t.hierKernelUs = count * (encodeUsPerElem * hs.encodeFactor + decodeUsPerElem * hs.decodeFactor);
  t.hierUs = gradcompClusterUs(t.hierKernelUs, t.hier, true, hs.latencySteps, c);
  t.hierPieces = hierPieces(count, bucket, c, pipelineBytes);
  t.hierPipedUs = hierPipelinedUs(t.hierKernelUs, t.hier, hs.latencySteps - 2.0 * (c.local - 1), c,
                                  t.hierPieces);
  t.autoUs = std::min(c.local >= 2 ? t.hierPipedUs : t.flatUs, t.ncclUs);
  return t;
}

}  // namespace gcbench
