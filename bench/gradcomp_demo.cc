// Placeholder main job until gradcomp_perf lands: encode/decode a buffer on
// the host reference codec and print ratio and error.
#include <math.h>
#include <stdio.h>

#include <random>
#include <vector>

#include "gradcomp/reference.h"

int main() {
  const size_t n = 1 << 22;
  std::vector<float> x(n), y(n);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  printf("# gradcomp demo (CPU reference codec), n=%zu fp32\n", n);
  printf("%5s %8s %12s %10s %12s\n", "bits", "bucket", "bytes", "ratio", "rel_rms_err");
  for (int bits : {2, 3, 4, 8}) {
    std::vector<unsigned char> enc(gradcompQsgdEncodedBytes(n, bits, 512));
    if (gradcompQsgdEncodeHost(x.data(), n, bits, 512, 7, enc.data()) != gradcompSuccess ||
        gradcompQsgdDecodeHost(enc.data(), n, bits, 512, y.data(), 0) != gradcompSuccess) {
      fprintf(stderr, "error: %s\n", gradcompGetLastError());
      return 1;
    }
    double e = 0, s = 0;
    for (size_t i = 0; i < n; ++i) e += (y[i] - x[i]) * (y[i] - x[i]), s += x[i] * x[i];
    printf("%5d %8d %12zu %10.2f %12.4f\n", bits, 512, enc.size(), 4.0 * n / enc.size(),
           sqrt(e / s));
  }
  return 0;
}
