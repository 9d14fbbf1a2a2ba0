// Loopback ports for the TCP comm's tests.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>
#include <string>

namespace gctest {

// A loopback port nobody listens on now, below the kernel's ephemeral range:
// a port from bind(0) could be handed to any socket of a concurrent test
// (ephemeral listeners, connects) before rank 0 binds it.
inline int freePort() {
  int start = 32768;
  if (FILE* f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (fscanf(f, "%d", &start) != 1) start = 32768;
    fclose(f);
  }
  const int lo = start > 11000 ? 10000 : start + 1000, hi = start > 11000 ? start : 65535;
  std::random_device rd;
  std::mt19937 rng(rd());
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int port = lo + (int)(rng() % (unsigned)(hi - lo));
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = {};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(fd);
    if (ok) return port;
  }
  ADD_FAILURE() << "no free loopback port in " << lo << ".." << hi;
  return 1;
}

inline std::string loopbackRoot(int port) {
  return "127.0.0.1:" + std::to_string(port);
}
inline std::string loopbackRoot() {
  return loopbackRoot(freePort());
}

}  // namespace gctest
