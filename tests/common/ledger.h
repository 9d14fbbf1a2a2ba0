// Error feedback's conservation over a run, per buffer state: per element of
// its input, the ranks' inputs sum to what the outputs received (times N for
// Avg) plus every rank's residuals (and owner residuals) at the end, up to
// float rounding. Shared by the random API sequences and the switch runs
// (tests/cpu/test_api_sequence.cc, test_conserve_switch.cc).
#pragma once

#include <gtest/gtest.h>
#include <math.h>
#include <stdint.h>

#include <vector>

#include "plugin/algorithms/algorithms.h"
#include "plugin/comm.h"
#include "tests/common/owner_place.h"

namespace gctest {

struct Ledger {
  // In unscaled units (divided by the grad scale); mag and typeErr bound
  // the rounding of what was added.
  std::vector<double> in, out, res, mag, typeErr;

  // Sized to the state's n elements at first use.
  void size(size_t n) {
    if (!in.empty()) return;
    in.assign(n, 0.0), out.assign(n, 0.0), res.assign(n, 0.0);
    mag.assign(n, 0.0), typeErr.assign(n, 0.0);
  }
  // One rank's input element e; `typeEps` the 16-bit type's epsilon (0 for
  // fp32): its partial sums and carried values round to the type.
  void addInput(size_t e, double x, double typeEps) {
    in[e] += x;
    mag[e] += fabs(x);
    if (typeEps > 0) typeErr[e] += 4 * typeEps * fabs(x);
  }
  // An output element, rounded to its type within `relErr` of its magnitude.
  void addOutput(size_t e, double y, double relErr) {
    out[e] += y;
    mag[e] += fabs(y);
    typeErr[e] += fabs(y) * relErr;
  }
  void addResidual(size_t e, double r) {
    res[e] += r;
    mag[e] += fabs(r);
  }

  // Rank c's residual and owner residual of state s (a reduce-scatter's
  // when `rs`), unscaled by `scale`, at the input elements they belong to.
  // A hierarchical reduce-scatter keeps block l*k + j at input block R(j, l);
  // an allreduce's owner residual covers this rank's place (ownerPlace),
  // and holds 0 past it.
  void addResiduals(const gradcompComm* c, const gc::BufferState& s, bool rs, float scale) {
    size(s.count);
    if (s.residual) {
      const bool permuted = rs && gc::useHierReduceScatter(*c);
      const size_t m = s.count / (size_t)c->nranks;
      for (size_t i = 0; i < s.count; ++i) {
        size_t e = i;
        if (permuted) {
          const size_t b = i / m, l = b / c->topo.nodes, j = b % c->topo.nodes;
          e = (size_t)c->topo.rankAt((int)j, (int)l) * m + i % m;
        }
        addResidual(e, s.residual[i] / scale);
      }
    }
    if (s.ownerResidual && !rs) {
      const gc::Topology& t = c->topo;
      const auto place = ownerPlace(c->cfg, s.count, c->nranks, c->rank, t.nodes, t.localSize,
                                    t.node, t.localRank);
      for (size_t i = 0; i < s.ownerResidualCount; ++i) {
        if (i < place.second) {
          addResidual(place.first + i, s.ownerResidual[i] / scale);
        } else {
          EXPECT_EQ(s.ownerResidual[i], 0.0f) << "rank " << c->rank << " owner element " << i;
        }
      }
    }
  }

  // Elements whose in - out - res passes the rounding bound of N ranks (a
  // NaN counts), and the worst element against it.
  struct Check {
    size_t bad = 0, at = 0;
    double worst = 0, err = 0;  // the worst element's ratio to its bound, its error
  };
  Check check(int N) const {
    Check k;
    for (size_t i = 0; i < in.size(); ++i) {
      const double err = fabs(in[i] - out[i] - res[i]);
      const double tol = 8.0 * (N + 4) * 0x1p-24 * mag[i] + typeErr[i] + 1e-30;
      if (!(err <= tol)) ++k.bad;
      if (!(err / tol <= k.worst)) k.worst = err / tol, k.err = err, k.at = i;
    }
    return k;
  }
};

}  // namespace gctest
