// A saved comm state (gradcompCommSaveState) read as plugin/state.cc writes
// it, without gtest: for the CPU tests and the multirank check alike.
#pragma once

#include <stdint.h>
#include <string.h>

#include <vector>

namespace gctest {

// Writes b's CRC32C (computed with its own field, bytes 12..15, as zero) into
// that field, as plugin/state.cc seals a blob: for tests that edit a blob
// and need the loader to look past the checksum.
template <typename Byte>
inline void reseal(std::vector<Byte>& b) {
  if (b.size() < 16) return;
  uint32_t crc = ~0u;
  for (size_t i = 0; i < b.size(); ++i) {
    crc ^= (i >= 12 && i < 16) ? 0u : (uint8_t)b[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  crc = ~crc;
  memcpy(b.data() + 12, &crc, 4);
}

// s without GRADCOMP_AUTO's figures record (plugin/state.cc, tag 2),
// re-sealed: the buffers' states alone, for checks that compare those between
// comms that did and did not time. A blob too short for the header comes back
// as it is; *autoRecords (when given) counts the records left out.
inline std::vector<uint8_t> withoutAutoFigures(const std::vector<uint8_t>& s,
                                               uint64_t* autoRecords = nullptr) {
  if (autoRecords) *autoRecords = 0;
  const size_t header = 48 + 4 * 16;
  if (s.size() < header) return s;
  std::vector<uint8_t> out(s.begin(), s.begin() + header);
  uint64_t records = 0, kept = 0;
  memcpy(&records, s.data() + 40, 8);
  size_t at = header;
  for (uint64_t i = 0; i < records && at + 16 <= s.size(); ++i) {
    uint32_t tag = 0;
    uint64_t bytes = 0;
    memcpy(&tag, s.data() + at, 4);
    memcpy(&bytes, s.data() + at + 8, 8);
    if (bytes < 16 || bytes > s.size() - at) return s;
    if (tag != 2) {
      out.insert(out.end(), s.begin() + at, s.begin() + at + bytes), ++kept;
    } else if (autoRecords) {
      ++*autoRecords;
    }
    at += bytes;
  }
  const uint64_t total = out.size();
  memcpy(out.data() + 16, &total, 8);
  memcpy(out.data() + 40, &kept, 8);
  reseal(out);
  return out;
}

// One array of the first buffer record of `count` elements in saved state s
// (plugin/state.cc: a 112-byte header, then records of tag, 0, bytes; a
// buffer record's payload has its count at +16, its owner residual count at
// +24, its flags at +40 (1 residual, 2 owner residual), its arrays from +48
// in that order): `owner` false gives the residual (count floats), true the
// owner residual; empty when the record or the array is not there.
inline std::vector<float> savedArray(const std::vector<uint8_t>& s, size_t count, bool owner) {
  uint64_t records = 0;
  if (s.size() < 112) return {};
  memcpy(&records, s.data() + 40, 8);
  size_t at = 112;
  for (uint64_t i = 0; i < records && at + 16 <= s.size(); ++i) {
    uint32_t tag = 0, flags = 0;
    uint64_t bytes = 0, n = 0, ownerCount = 0;
    memcpy(&tag, s.data() + at, 4);
    memcpy(&bytes, s.data() + at + 8, 8);
    if (bytes < 16 || bytes > s.size() - at) return {};
    const size_t p = at + 16, end = at + bytes;
    if (tag == 1 && bytes >= 16 + 48) {
      memcpy(&n, s.data() + p + 16, 8);
      memcpy(&ownerCount, s.data() + p + 24, 8);
      memcpy(&flags, s.data() + p + 40, 4);
      const bool hasResidual = (flags & 1u) != 0;
      const size_t from = p + 48 + (owner && hasResidual ? 4 * n : 0);
      const size_t len = owner ? ownerCount : n;
      const bool present = owner ? (flags & 2u) != 0 : hasResidual;
      if (n == count && present && from <= end && len <= (end - from) / 4) {
        std::vector<float> r(len);
        memcpy(r.data(), s.data() + from, 4 * len);
        return r;
      }
    }
    at += bytes;
  }
  return {};
}

// The residual (error feedback) of that record.
inline std::vector<float> savedResidual(const std::vector<uint8_t>& s, size_t count) {
  return savedArray(s, count, false);
}

// Its owner residual (two-shot's and the ring's re-encode error of the chunk
// this rank reduced).
inline std::vector<float> savedOwnerResidual(const std::vector<uint8_t>& s, size_t count) {
  return savedArray(s, count, true);
}

}  // namespace gctest
