// When a comm's exchange is hierarchical, from its layout (the nodes and
// ranks per node gradcompCommLayout gives): >= 2 nodes of >= 2 ranks. Alone
// and header-only so that bench/ decides from the public layout by the
// library's own rule (Topology::hier), not by a copy that could drift.
#pragma once

namespace gc {

inline bool hierLayout(int nodes, int localSize) {
  return nodes >= 2 && localSize >= 2;
}

}  // namespace gc
