// TCP transport of the CPU backend: each rank a process (or a thread) with
// one connection to every other rank. Rank 0 listens at the root address;
// the others connect to it, learn every rank's listening address from it and
// connect to the ranks below them, each of which answers with its number.
// Nothing rank 0 answers is trusted: a bad verdict or table fails the rank
// with a sentence naming the value, within cpuTimeoutSec. Collectives move host memory with
// non-blocking sockets driven by poll(), so a rank sends to and receives from
// all its peers at once. Every message starts with a header naming the
// collective, its size and the call it belongs to; the receiver checks it
// before it reads a byte of payload, so ranks that make different calls fail
// with a sentence naming both instead of exchanging unrelated bytes. Any
// error closes every connection, so the peers fail at once instead of
// waiting out their timeout. Reductions are the in-process world's (rank
// order, host_reduce.h): results are bit for bit the same.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/common_math.cuh"
#include "checks.h"
#include "debug.h"
#include "backends/cpu/host_collective.h"
#include "backends/cpu/host_reduce.h"
#include "backends/cpu/root_address.h"
#include "backends/transport.h"
#include "topology.h"

namespace gc {

namespace {

constexpr uint32_t kHelloMagic = 0x47435348;  // "GCSH"
constexpr uint32_t kMsgMagic = 0x4743534d;    // "GCSM"

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string errnoText(int err) {
  char buf[128];
  return std::string(strerror_r(err, buf, sizeof buf));
}

// The message header. Fields are fixed-width and the struct has no padding,
// so it travels as bytes between ranks of one build.
struct WireHeader {
  uint32_t magic;
  uint32_t collective;   // which collective, and which sub-transport (tag << 8)
  uint64_t check;        // a size every rank must agree on (0: none)
  uint64_t step, count;  // the call (CallInfo)
  int32_t type, op, kind;
  uint32_t state;  // CallInfo::state
  uint64_t bytes;  // payload that follows
};
static_assert(sizeof(WireHeader) == 56, "no padding in the wire header");

struct Hello {
  uint32_t magic;
  int32_t nranks, rank;
  uint16_t port;  // the sender's listening port (rank > 0)
  uint16_t pad;
};
struct Entry {
  uint8_t addr[16];  // network order: 4 bytes for IPv4, 16 for IPv6
  uint32_t scope;    // IPv6 scope id (link-local addresses), else 0
  uint16_t family;   // AF_INET or AF_INET6
  uint16_t port;     // network order
};
static_assert(sizeof(Entry) == 24, "no padding in the address table");
struct Verdict {
  uint32_t magic;
  int32_t ok;      // 1, or 0: rank 0 refused the world; the sentence follows in why
  int32_t nranks;  // the world rank 0 answers for
  char why[188];
};
static_assert(sizeof(Verdict) == 200, "no padding in the verdict");

}  // namespace

// The connections of one rank to every other rank, shared by the comm's
// transport and its hierarchy's sub-transports.
struct SocketMesh {
  int nranks = 1, rank = 0;
  double timeoutSec = 120;
  std::vector<int> fds;  // by global rank, -1 for this rank
  bool broken = false;
  std::string brokenWhy;
  // abort() may come from another thread than the collectives': it shuts the
  // connections down, never closes them (a poll in progress may hold them).
  std::mutex mu;
  std::atomic<bool> aborted{false};

  ~SocketMesh() {
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
  }

  // Closes every connection after an error: peers see the close at once.
  void breakAll(const char* why) {
    std::lock_guard<std::mutex> lock(mu);
    if (broken) return;
    broken = true;
    brokenWhy = why ? why : "";
    for (int& fd : fds) {
      if (fd >= 0) {
        shutdown(fd, SHUT_RDWR);
        close(fd);
      }
      fd = -1;
    }
  }

  // gradcompCommAbort: a collective in progress wakes (its poll sees the
  // shutdown) and fails, later ones fail at once, and the peers see the
  // connections end instead of waiting out their timeout.
  void abort() {
    std::lock_guard<std::mutex> lock(mu);
    aborted = true;
    for (int fd : fds) {
      if (fd >= 0) shutdown(fd, SHUT_RDWR);
    }
  }
};

namespace {

// An IPv4 or IPv6 socket address.
struct Addr {
  sockaddr_storage ss = {};
  int family() const { return ss.ss_family; }
  socklen_t len() const {
    return family() == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
  sockaddr* sa() { return reinterpret_cast<sockaddr*>(&ss); }
  sockaddr_in* v4() { return reinterpret_cast<sockaddr_in*>(&ss); }
  sockaddr_in6* v6() { return reinterpret_cast<sockaddr_in6*>(&ss); }
  const sockaddr_in* v4() const { return reinterpret_cast<const sockaddr_in*>(&ss); }
  const sockaddr_in6* v6() const { return reinterpret_cast<const sockaddr_in6*>(&ss); }
  uint16_t portNet() const { return family() == AF_INET6 ? v6()->sin6_port : v4()->sin_port; }
  void setPortNet(uint16_t p) { (family() == AF_INET6 ? v6()->sin6_port : v4()->sin_port) = p; }
  // "1.2.3.4:5" or "[::1]:5", for sentences.
  std::string text() const {
    char ip[INET6_ADDRSTRLEN] = "?";
    const void* a =
        family() == AF_INET6 ? (const void*)&v6()->sin6_addr : (const void*)&v4()->sin_addr;
    inet_ntop(family(), a, ip, sizeof ip);
    const std::string host = family() == AF_INET6 ? "[" + std::string(ip) + "]" : std::string(ip);
    return host + ":" + std::to_string((int)ntohs(portNet()));
  }
  // The wildcard address of this address's family, port 0.
  Addr any() const {
    Addr a;
    a.ss.ss_family = (sa_family_t)family();
    if (family() == AF_INET6) {
      a.v6()->sin6_addr = in6addr_any;
    } else {
      a.v4()->sin_addr.s_addr = htonl(INADDR_ANY);
    }
    return a;
  }
  Entry entry() const {
    Entry e = {};
    e.family = (uint16_t)family();
    e.port = portNet();
    if (family() == AF_INET6) {
      memcpy(e.addr, &v6()->sin6_addr, 16);
      e.scope = v6()->sin6_scope_id;
    } else {
      memcpy(e.addr, &v4()->sin_addr, 4);
    }
    return e;
  }
  static bool fromEntry(const Entry& e, Addr* out) {
    Addr a;
    a.ss.ss_family = (sa_family_t)e.family;
    if (e.family == AF_INET6) {
      memcpy(&a.v6()->sin6_addr, e.addr, 16);
      a.v6()->sin6_scope_id = e.scope;
    } else if (e.family == AF_INET) {
      memcpy(&a.v4()->sin_addr, e.addr, 4);
    } else {
      return false;
    }
    a.setPortNet(e.port);
    *out = a;
    return true;
  }
};

// "host:port" or "[IPv6]:port" (splitRootAddress). The host resolves to the
// first address getaddrinfo gives, IPv4 or IPv6; every rank resolves the same name.
gradcompResult_t parseRoot(const char* root, Addr* out) {
  std::string host, why;
  int port = 0;
  if (!splitRootAddress(root, &host, &port, &why))
    return setError(gradcompInvalidArgument, "%s", why.c_str());
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) {
    return setError(gradcompInvalidArgument,
                    "root address \"%s\": host \"%s\" does not resolve to an IPv4 or IPv6 address "
                    "(%s)",
                    shownRootText(root).c_str(), shownRootText(host).c_str(), gai_strerror(rc));
  }
  const addrinfo* pick = res;
  while (pick && pick->ai_family != AF_INET && pick->ai_family != AF_INET6) pick = pick->ai_next;
  if (pick == nullptr) {
    freeaddrinfo(res);
    return setError(gradcompInvalidArgument,
                    "root address \"%s\": host \"%s\" resolves to no IPv4 or IPv6 address",
                    shownRootText(root).c_str(), shownRootText(host).c_str());
  }
  *out = Addr();
  memcpy(&out->ss, pick->ai_addr, pick->ai_addrlen);
  out->setPortNet(htons((uint16_t)port));
  freeaddrinfo(res);
  return gradcompSuccess;
}

void tuneSocket(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

gradcompResult_t setNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return setError(gradcompSystemError, "socket transport: fcntl(O_NONBLOCK): %s",
                    errnoText(errno).c_str());
  }
  return gradcompSuccess;
}

// Waits until fd is readable (POLLIN) or writable (POLLOUT) before the
// deadline; the sentence says what was awaited.
gradcompResult_t waitFd(int fd, short events, double deadline, const char* what) {
  for (;;) {
    const double left = deadline - now();
    if (left <= 0) {
      return setError(gradcompSystemError,
                      "socket transport: timed out (cpuTimeoutSec, GRADCOMP_CPU_TIMEOUT) waiting "
                      "for %s; every rank must create its comm with the same root and nranks",
                      what);
    }
    pollfd p = {fd, events, 0};
    const int rc = poll(&p, 1, (int)(left * 1000) + 1);
    if (rc > 0) return gradcompSuccess;
    if (rc < 0 && errno != EINTR) {
      return setError(gradcompSystemError, "socket transport: poll: %s", errnoText(errno).c_str());
    }
  }
}

// Blocking-style exact transfer on a blocking socket during set-up.
gradcompResult_t sendAll(int fd, const void* data, size_t bytes, double deadline,
                         const char* what) {
  const char* p = static_cast<const char*>(data);
  while (bytes) {
    GC_CHECK(waitFd(fd, POLLOUT, deadline, what));
    const ssize_t n = send(fd, p, bytes, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return setError(gradcompSystemError, "socket transport: sending %s: %s", what,
                      errnoText(errno).c_str());
    }
    p += n;
    bytes -= (size_t)n;
  }
  return gradcompSuccess;
}

gradcompResult_t recvAll(int fd, void* data, size_t bytes, double deadline, const char* what) {
  char* p = static_cast<char*>(data);
  while (bytes) {
    GC_CHECK(waitFd(fd, POLLIN, deadline, what));
    const ssize_t n = recv(fd, p, bytes, MSG_DONTWAIT);
    if (n == 0) {
      return setError(gradcompSystemError,
                      "socket transport: the peer closed the connection while this rank waited "
                      "for %s",
                      what);
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return setError(gradcompSystemError, "socket transport: receiving %s: %s", what,
                      errnoText(errno).c_str());
    }
    p += n;
    bytes -= (size_t)n;
  }
  return gradcompSuccess;
}

gradcompResult_t listenOn(const Addr& addr, int* out, const char* what) {
  const int fd = socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return setError(gradcompSystemError, "socket transport: socket(): %s",
                    errnoText(errno).c_str());
  }
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, addr.sa(), addr.len()) != 0 || listen(fd, 1024) != 0) {
    const int err = errno;
    close(fd);
    return setError(gradcompSystemError, "socket transport: cannot listen at %s for %s: %s",
                    addr.text().c_str(), what, errnoText(err).c_str());
  }
  *out = fd;
  return gradcompSuccess;
}

// Closes a descriptor when it goes out of scope unless released.
struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) close(fd);
  }
};

// Connects to addr before the deadline. The connect does not block: a host
// that drops the packets would hold a blocking one for minutes.
// waitForListener retries while nobody listens there yet (rank 0 may start
// last); the ranks' own listeners exist before rank 0 hands out their
// addresses, so there a refusal is final.
gradcompResult_t connectTo(const Addr& addr, double deadline, bool waitForListener, int* out,
                           const char* what) {
  for (;;) {
    FdGuard g;
    g.fd = socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (g.fd < 0) {
      return setError(gradcompSystemError, "socket transport: socket(): %s",
                      errnoText(errno).c_str());
    }
    int err = connect(g.fd, addr.sa(), addr.len()) == 0 ? 0 : errno;
    if (err == EINPROGRESS || err == EINTR) {
      if (waitFd(g.fd, POLLOUT, deadline, what) != gradcompSuccess) {
        return setError(gradcompSystemError,
                        "socket transport: cannot connect to %s at %s: no answer "
                        "(cpuTimeoutSec, GRADCOMP_CPU_TIMEOUT, ran out)",
                        what, addr.text().c_str());
      }
      socklen_t len = sizeof err;
      if (getsockopt(g.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    }
    if (err == 0) {
      tuneSocket(g.fd);
      *out = g.fd;
      g.fd = -1;
      return gradcompSuccess;
    }
    const bool retry = waitForListener && (err == ECONNREFUSED || err == EINTR ||
                                           err == ETIMEDOUT || err == ECONNRESET || err == EAGAIN);
    if (!retry || now() >= deadline) {
      return setError(gradcompSystemError, "socket transport: cannot connect to %s at %s: %s%s",
                      what, addr.text().c_str(), errnoText(err).c_str(),
                      retry ? " (cpuTimeoutSec, GRADCOMP_CPU_TIMEOUT, ran out)" : "");
    }
    usleep(20000);
  }
}

// The connections a listener accepted that have not yet sent their first
// message (a rank's hello or number), read together: a rank's listener is
// on every address of its host, so a connection may be no rank (a health
// check, a port scan, an HTTP request). One that sends nothing holds no
// other, one that closes or sends the wrong bytes is dropped, and a rank
// that is slow to send (a loaded machine) is waited for until the deadline;
// those still silent are closed with the greeter.
class Greeter {
 public:
  Greeter(int listener, size_t bytes) : listener_(listener), bytes_(bytes) {}
  Greeter(const Greeter&) = delete;
  Greeter& operator=(const Greeter&) = delete;
  ~Greeter() {
    for (const Pending& p : pending_) close(p.fd);
  }

  // The next connection to send `bytes_` bytes, with them in `data`; it is
  // the caller's to keep or close.
  gradcompResult_t next(double deadline, int* out, Addr* peer, void* data, const char* what) {
    for (;;) {
      std::vector<pollfd> fds(1 + pending_.size());
      fds[0] = {listener_, POLLIN, 0};
      for (size_t i = 0; i < pending_.size(); ++i) fds[i + 1] = {pending_[i].fd, POLLIN, 0};
      const double left = deadline - now();
      if (left <= 0) {
        return setError(gradcompSystemError,
                        "socket transport: timed out (cpuTimeoutSec, GRADCOMP_CPU_TIMEOUT) "
                        "waiting for %s; every rank must create its comm with the same root and "
                        "nranks",
                        what);
      }
      const int rc = poll(fds.data(), fds.size(), (int)(left * 1000) + 1);
      if (rc < 0 && errno != EINTR) {
        return setError(gradcompSystemError, "socket transport: poll: %s",
                        errnoText(errno).c_str());
      }
      if (rc <= 0) continue;
      // The connections first, from the last, so that erasing keeps the
      // indices of those still to read.
      for (size_t i = pending_.size(); i-- > 0;) {
        if (fds[i + 1].revents == 0) continue;
        Pending& p = pending_[i];
        const ssize_t n = recv(p.fd, p.got.data() + p.have, bytes_ - p.have, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
        if (n <= 0) {
          GC_INFO(
              "socket transport: dropped a connection from %s that closed before it sent "
              "%s",
              p.peer.text().c_str(), what);
          close(p.fd);
          pending_.erase(pending_.begin() + (long)i);
          continue;
        }
        p.have += (size_t)n;
        if (p.have < bytes_) continue;
        memcpy(data, p.got.data(), bytes_);
        *out = p.fd;
        *peer = p.peer;
        pending_.erase(pending_.begin() + (long)i);
        return gradcompSuccess;
      }
      if (fds[0].revents != 0) {
        Pending p;
        socklen_t len = sizeof p.peer.ss;
        p.fd = accept4(listener_, p.peer.sa(), &len, SOCK_CLOEXEC);
        if (p.fd >= 0) {
          tuneSocket(p.fd);
          p.got.resize(bytes_);
          // Bounded: a flood of silent strays would run the process out of
          // descriptors. The oldest goes (a rank sends as soon as it
          // connects, so the oldest silent one is the least likely a rank).
          if (pending_.size() >= kMaxPending) {
            GC_INFO(
                "socket transport: dropped a connection from %s that sent nothing (%zu "
                "others wait)",
                pending_.front().peer.text().c_str(), pending_.size());
            close(pending_.front().fd);
            pending_.erase(pending_.begin());
          }
          pending_.push_back(std::move(p));
          continue;
        }
        // A signal, or a connection its client gave up on before it was
        // accepted: wait for the next one.
        const int err = errno;
        if (err != EINTR && err != ECONNABORTED && err != EPROTO && err != EAGAIN &&
            err != EWOULDBLOCK) {
          return setError(gradcompSystemError, "socket transport: accept (%s): %s", what,
                          errnoText(err).c_str());
        }
      }
    }
  }

  // Before the greeter closes them: every connection whose message has come
  // (one accepted and one still in the listener's queue alike), read without
  // waiting, is sent `reply` (a refused world's verdict), so that a rank
  // whose hello was not read yet hears why rather than a reset connection.
  // Those whose message has not come are closed unanswered.
  void answerWaiting(const void* reply, size_t replyBytes, double deadline) {
    for (;;) {
      pollfd p = {listener_, POLLIN, 0};
      if (pending_.size() >= kMaxPending || poll(&p, 1, 0) <= 0) break;
      Pending q;
      socklen_t len = sizeof q.peer.ss;
      q.fd = accept4(listener_, q.peer.sa(), &len, SOCK_CLOEXEC);
      if (q.fd < 0) break;
      q.got.resize(bytes_);
      pending_.push_back(std::move(q));
    }
    for (Pending& p : pending_) {
      while (p.have < bytes_) {
        const ssize_t n = recv(p.fd, p.got.data() + p.have, bytes_ - p.have, MSG_DONTWAIT);
        if (n <= 0) break;
        p.have += (size_t)n;
      }
      if (p.have == bytes_) (void)sendAll(p.fd, reply, replyBytes, deadline, "the root's verdict");
    }
  }

 private:
  struct Pending {
    int fd = -1;
    Addr peer;
    std::vector<char> got;
    size_t have = 0;
  };
  static constexpr size_t kMaxPending = 64;
  int listener_;
  size_t bytes_;
  std::vector<Pending> pending_;
};

// The sentence in a verdict, as received: up to its end or the field's, any
// byte that is not printable ASCII shown as '?' (it goes into this rank's
// error sentence and logs).
std::string printable(const char* s, size_t max) {
  std::string out;
  for (size_t i = 0; i < max && s[i] != '\0'; ++i) {
    out += s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
  }
  return out;
}

// Rank 0: collects every rank's hello, checks that they agree on the world,
// then tells every rank where the others listen (or why the world is refused).
gradcompResult_t rootRendezvous(SocketMesh& m, const Addr& rootAddr, double deadline) {
  FdGuard listener;
  GC_CHECK(listenOn(rootAddr, &listener.fd, "the other ranks (this is rank 0, the root)"));
  std::vector<Entry> table(m.nranks);
  table[0] = rootAddr.entry();
  std::string refusal;
  Greeter greeter(listener.fd, sizeof(Hello));
  for (int got = 1; got < m.nranks;) {
    int fd = -1;
    Addr peer;
    Hello h = {};
    GC_CHECK(greeter.next(deadline, &fd, &peer, &h, "the other ranks' hellos at the root"));
    FdGuard g{fd};
    // A connection that sends something else is not a rank: it is dropped
    // and the root waits on for the ranks instead of refusing the world.
    if (h.magic != kHelloMagic) {
      GC_INFO("socket transport: rank 0 dropped a connection from %s that sent no hello",
              peer.text().c_str());
      continue;
    }
    ++got;
    if (h.nranks != m.nranks || h.rank < 1 || h.rank >= m.nranks || m.fds[h.rank] >= 0) {
      char buf[192];
      if (h.nranks != m.nranks) {
        snprintf(buf, sizeof buf,
                 "rank %d says nranks=%d while rank 0 has nranks=%d (ranks 1..%d, each once)",
                 h.rank, h.nranks, m.nranks, m.nranks - 1);
      } else if (h.rank < 1 || h.rank >= m.nranks) {
        snprintf(buf, sizeof buf,
                 "a rank of nranks=%d says it is rank %d (ranks 1..%d connect to rank 0, each "
                 "once)",
                 h.nranks, h.rank, m.nranks - 1);
      } else {
        // Two processes given the same rank: the world would miss another.
        snprintf(buf, sizeof buf,
                 "two ranks say they are rank %d (ranks 1..%d, each once): give every process "
                 "its own rank",
                 h.rank, m.nranks - 1);
      }
      refusal = buf;
      Verdict no = {};
      no.magic = kHelloMagic;
      no.nranks = m.nranks;
      snprintf(no.why, sizeof no.why, "%s", buf);
      sendAll(g.fd, &no, sizeof no, deadline, "the root's verdict");
      break;
    }
    // Where the peer listens: the address it reached the root from, its port.
    peer.setPortNet(htons(h.port));
    table[h.rank] = peer.entry();
    m.fds[h.rank] = g.fd;
    g.fd = -1;
  }
  Verdict v = {};
  v.magic = kHelloMagic;
  v.ok = refusal.empty();
  v.nranks = m.nranks;
  snprintf(v.why, sizeof v.why, "%s", refusal.c_str());
  for (int r = 0; r < m.nranks; ++r) {
    if (m.fds[r] < 0) continue;
    if (sendAll(m.fds[r], &v, sizeof v, deadline, "the root's verdict") == gradcompSuccess &&
        v.ok) {
      GC_CHECK(sendAll(m.fds[r], table.data(), table.size() * sizeof(Entry), deadline,
                       "the table of listening addresses"));
    }
  }
  if (!refusal.empty()) {
    greeter.answerWaiting(&v, sizeof v, deadline);
    return setError(gradcompInvalidArgument, "socket transport: rank 0 refused the world: %s",
                    refusal.c_str());
  }
  return gradcompSuccess;
}

gradcompResult_t peerRendezvous(SocketMesh& m, const Addr& rootAddr, double deadline) {
  // This rank's own listener first, so that it exists before rank 0 hands
  // its address to anyone.
  FdGuard listener;
  // The root's family: the root records the address this rank reaches it
  // from, so the peers connect here over the same family.
  GC_CHECK(listenOn(rootAddr.any(), &listener.fd, "the ranks above this one"));
  Addr mine;
  socklen_t len = sizeof mine.ss;
  // Its port goes into the hello: without it the root would hand out port 0.
  if (getsockname(listener.fd, mine.sa(), &len) != 0) {
    return setError(gradcompSystemError,
                    "socket transport: getsockname of this rank's listener: %s",
                    errnoText(errno).c_str());
  }
  int fd = -1;
  GC_CHECK(connectTo(rootAddr, deadline, true, &fd, "rank 0 (the root)"));
  m.fds[0] = fd;
  Hello h = {kHelloMagic, m.nranks, m.rank, ntohs(mine.portNet()), 0};
  GC_CHECK(sendAll(fd, &h, sizeof h, deadline, "this rank's hello"));
  Verdict v = {};
  GC_CHECK(recvAll(fd, &v, sizeof v, deadline, "rank 0's answer"));
  if (v.magic != kHelloMagic || (v.ok != 0 && v.ok != 1)) {
    return setError(gradcompSystemError,
                    "socket transport: the root address answered, but not as gradcomp's rank 0 "
                    "(magic 0x%08x, verdict %d)",
                    v.magic, v.ok);
  }
  if (!v.ok) {
    return setError(gradcompInvalidArgument, "socket transport: rank 0 refused the world: %s",
                    printable(v.why, sizeof v.why).c_str());
  }
  if (v.nranks != m.nranks) {
    return setError(gradcompSystemError,
                    "socket transport: rank 0 answered for a world of %d ranks; this rank has "
                    "nranks=%d",
                    v.nranks, m.nranks);
  }
  std::vector<Entry> table(m.nranks);
  GC_CHECK(recvAll(fd, table.data(), table.size() * sizeof(Entry), deadline,
                   "the table of listening addresses"));
  for (int r = 1; r < m.rank; ++r) {
    Addr a;
    // Every rank listens in the root address's family (above).
    if (table[r].family != rootAddr.family() || !Addr::fromEntry(table[r], &a)) {
      return setError(gradcompSystemError,
                      "socket transport: rank 0 sent rank %d's address with family %d; the ranks "
                      "listen in the root address's family %d",
                      r, (int)table[r].family, rootAddr.family());
    }
    if (table[r].port == 0) {
      return setError(gradcompSystemError,
                      "socket transport: rank 0 sent rank %d's address %s with port 0", r,
                      a.text().c_str());
    }
    const std::string who = "rank " + std::to_string(r);
    GC_CHECK(connectTo(a, deadline, false, &m.fds[r], who.c_str()));
    const int32_t me = m.rank;
    GC_CHECK(sendAll(m.fds[r], &me, sizeof me, deadline, "this rank's number"));
    // The rank listening there says which it is: a table that points
    // elsewhere (another rank, or a socket that is no rank) would otherwise
    // make a comm whose messages reach the wrong ranks.
    const std::string reply = who + "'s reply at " + a.text();
    int32_t them = -1;
    GC_CHECK(recvAll(m.fds[r], &them, sizeof them, deadline, reply.c_str()));
    if (them != r) {
      return setError(gradcompSystemError,
                      "socket transport: rank %d reached %s, rank 0's address for rank %d, and "
                      "the rank listening there says it is rank %d",
                      m.rank, a.text().c_str(), r, them);
    }
  }
  // This listener, as rank 0's, is on every address of the host: a
  // connection that sends no number of a rank above this one not yet
  // connected is not a rank. It is dropped and this rank waits on for the
  // ranks (Greeter).
  Greeter greeter(listener.fd, sizeof(int32_t));
  for (int got = m.rank + 1; got < m.nranks;) {
    int pfd = -1;
    Addr peer;
    int32_t who = -1;
    GC_CHECK(greeter.next(deadline, &pfd, &peer, &who, "the ranks above this one"));
    FdGuard g{pfd};
    if (who <= m.rank || who >= m.nranks || m.fds[who] >= 0) {
      GC_INFO(
          "socket transport: rank %d dropped a connection from %s claiming rank %d (it "
          "awaits ranks %d..%d, each once)",
          m.rank, peer.text().c_str(), (int)who, m.rank + 1, m.nranks - 1);
      continue;
    }
    const int32_t me = m.rank;
    GC_CHECK(sendAll(pfd, &me, sizeof me, deadline, "this rank's number"));
    m.fds[who] = g.fd;
    g.fd = -1;
    ++got;
  }
  return gradcompSuccess;
}

// One message of a collective: a send to or a receive from one peer.
struct Transfer {
  int peer = -1;  // global rank
  bool isSend = false;
  WireHeader header = {};  // sent, or received
  char* data = nullptr;    // payload (read from for a send)
  size_t bytes = 0;        // payload this rank sends, or expects
  size_t done = 0;         // header and payload bytes moved so far
  bool checked = false;    // the received header was checked
};

}  // namespace

class SocketTransport final : public Transport {
 public:
  SocketTransport(std::shared_ptr<SocketMesh> mesh, std::vector<int> members, int index,
                  uint32_t tag)
      : mesh_(std::move(mesh)), members_(std::move(members)), tag_(tag) {
    rank_ = index;
    size_ = (int)members_.size();
  }

  bool checksEveryCall() const override { return true; }  // every message's header

  void abort() override {
    Transport::abort();
    mesh_->abort();
  }

  gradcompResult_t verifyCall() override {
    // Headers only: each rank compares every peer's call with its own. All
    // are sent before any is read (progress moves them in this order), so
    // that a rank whose record says it refused the call has told every peer
    // before a peer's header it reads makes it close its connections.
    std::vector<Transfer>& xs = transfers();
    for (int i = 0; i < size_; ++i) {
      if (i != rank_) xs.push_back(sendTo(i, nullptr, 0));
    }
    for (int i = 0; i < size_; ++i) {
      if (i != rank_) xs.push_back(recvFrom(i, nullptr, 0));
    }
    return run(kHostVerify, 0, xs);
  }

  gradcompResult_t allToAll(const void* const* send, const size_t* sendBytes, void* const* recv,
                            const size_t* recvBytes) override {
    std::vector<Transfer>& xs = transfers();
    for (int i = 0; i < size_; ++i) {
      if (i == rank_) continue;
      xs.push_back(sendTo(i, send[i], sendBytes[i]));
      xs.push_back(recvFrom(i, recv[i], recvBytes[i]));
    }
    return run(kHostAllToAll, 0, xs);
  }

  gradcompResult_t sendRecv(const void* send, size_t sendBytes, int to, void* recv,
                            size_t recvBytes, int from) override {
    if (to == rank_ || from == rank_) {
      if (to == rank_ && from == rank_ && sendBytes == recvBytes) {
        if (recvBytes && recv != send) memmove(recv, send, recvBytes);
        return gradcompSuccess;
      }
      return setError(gradcompInternalError,
                      "socket transport: rank %d sends to %d and receives from %d", globalRank(),
                      members_[to], members_[from]);
    }
    std::vector<Transfer>& xs = transfers();
    xs.push_back(sendTo(to, send, sendBytes));
    xs.push_back(recvFrom(from, recv, recvBytes));
    return run(kHostSendRecv, 0, xs);
  }

  gradcompResult_t allGather(const void* send, void* recv, size_t bytes) override {
    std::vector<Transfer>& xs = transfers();
    char* out = static_cast<char*>(recv);
    for (int i = 0; i < size_; ++i) {
      if (i == rank_) continue;
      xs.push_back(sendTo(i, send, bytes));
      xs.push_back(recvFrom(i, out + (size_t)i * bytes, bytes));
    }
    char* own = out + (size_t)rank_ * bytes;
    if (bytes && own != send) memmove(own, send, bytes);
    return run(kHostAllGather, bytes, xs);
  }

  gradcompResult_t allReduceSumFloat(const float* send, float* recv, size_t n) override {
    // sum = 0, then + every rank's value in rank order: the in-process world's bits.
    auto sum = [](const std::vector<const void*>& src, void* dst, size_t count) {
      float* out = static_cast<float*>(dst);
      for (size_t k = 0; k < count; ++k) out[k] = 0.0f;
      for (const void* s : src) {
        const float* in = static_cast<const float*>(s);
        for (size_t k = 0; k < count; ++k) out[k] = fadd(out[k], in[k]);
      }
    };
    return twoPhase(kHostSumFloat, n, send, recv, n, sizeof(float), sum);
  }

  gradcompResult_t passThrough(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op) override {
    const size_t esz = hostElementSize(type);
    GC_CHECK(checkReduction(type, op, count, esz));
    return twoPhase(kHostPassThrough, 0, send, recv, count, esz,
                    [type, op](const std::vector<const void*>& src, void* dst, size_t c) {
                      hostReduce(type, op, src, dst, c);
                    });
  }

  gradcompResult_t reduceScatter(const void* send, void* recv, size_t recvCount,
                                 ncclDataType_t type, ncclRedOp_t op) override {
    const size_t esz = hostElementSize(type);
    GC_CHECK(checkReduction(type, op, recvCount, esz));
    GC_ARG(recvCount <= SIZE_MAX / esz / (size_t)size_,
           "recvcount=%zu times %d ranks overflows the address space", recvCount, size_);
    const size_t blockBytes = recvCount * esz;
    const char* in = static_cast<const char*>(send);
    GC_CHECK(stageBlocks(blockBytes));
    std::vector<Transfer>& xs = transfers();
    for (int i = 0; i < size_; ++i) {
      if (i == rank_) continue;
      xs.push_back(sendTo(i, in + (size_t)i * blockBytes, blockBytes));
      xs.push_back(recvFrom(i, staged(i, blockBytes), blockBytes));
    }
    const uint64_t check = reduceScatterCheck(recvCount, type, op);
    GC_CHECK(run(kHostReduceScatter, check, xs));
    src_.resize(size_);
    for (int i = 0; i < size_; ++i) {
      src_[i] = i == rank_ ? in + (size_t)rank_ * blockBytes : staged(i, blockBytes);
    }
    char* out = staged(rank_, blockBytes);
    hostReduce(type, op, src_, out, recvCount);
    if (blockBytes) memcpy(recv, out, blockBytes);
    return gradcompSuccess;
  }

 private:
  gradcompResult_t checkReduction(ncclDataType_t type, ncclRedOp_t op, size_t count, size_t esz) {
    GC_CHECK(hostCheckReduction(type, op));
    GC_ARG(count <= SIZE_MAX / esz, "count=%zu elements of %zu bytes overflow the address space",
           count, esz);
    return gradcompSuccess;
  }

  // A rank that fails on its own inside a collective (its staging buffers)
  // closes its connections as run() does on a transfer's failure, so its
  // peers fail at once ("lost its connection") instead of waiting out
  // cpuTimeoutSec for messages it will never send.
  gradcompResult_t outOfMemory(size_t bytes) {
    const gradcompResult_t res =
        setError(gradcompSystemError, "out of host memory allocating %zu bytes", bytes);
    mesh_->breakAll(gradcompGetLastError());
    return res;
  }

  // The staging buffer grown to size() blocks of `bytes`: block i (i not
  // this rank) receives rank i's block, block rank() holds the reduction.
  // Kept between calls (a transport runs one call at a time): a
  // steady-state call allocates nothing.
  gradcompResult_t stageBlocks(size_t bytes) {
    if (bytes > SIZE_MAX / (size_t)size_) {
      const gradcompResult_t res =
          setError(gradcompSystemError, "out of host memory: %d blocks of %zu bytes", size_, bytes);
      mesh_->breakAll(gradcompGetLastError());
      return res;
    }
    const size_t need = bytes * (size_t)size_;
    if (need <= stageBytes_ && stage_) return gradcompSuccess;
    stage_.reset(new (std::nothrow) char[need ? need : 1]);
    stageBytes_ = stage_ ? need : 0;
    if (!stage_) return outOfMemory(need);
    return gradcompSuccess;
  }
  char* staged(int i, size_t bytes) { return stage_.get() + (size_t)i * bytes; }

  // The call's transfer list, emptied (kept for its capacity).
  std::vector<Transfer>& transfers() {
    xs_.clear();
    return xs_;
  }

  // The uncompressed allreduce over direct sends: rank j owns block j of the
  // buffer; every rank sends it block j, j reduces the blocks in rank order,
  // then sends its reduced block to every rank. 2(N-1)/N of the buffer each
  // way per rank, two latency steps.
  template <typename Reduce>
  gradcompResult_t twoPhase(uint32_t collective, uint64_t check, const void* send, void* recv,
                            size_t count, size_t esz, Reduce reduce) {
    std::vector<size_t>& first = first_;
    first.resize(size_ + 1);
    for (int j = 0; j <= size_; ++j)
      first[j] = count / size_ * j + std::min<size_t>(j, count % size_);
    auto blockOf = [&](const void* base, int j) {
      return static_cast<const char*>(base) + first[j] * esz;
    };
    const size_t mineCount = first[rank_ + 1] - first[rank_], mineBytes = mineCount * esz;
    GC_CHECK(stageBlocks(mineBytes));
    std::vector<Transfer>& xs = transfers();
    for (int i = 0; i < size_; ++i) {
      if (i == rank_) continue;
      xs.push_back(sendTo(i, blockOf(send, i), (first[i + 1] - first[i]) * esz));
      xs.push_back(recvFrom(i, staged(i, mineBytes), mineBytes));
    }
    GC_CHECK(run(collective, check, xs));
    src_.resize(size_);
    for (int i = 0; i < size_; ++i) src_[i] = i == rank_ ? blockOf(send, i) : staged(i, mineBytes);
    char* out = staged(rank_, mineBytes);
    reduce(src_, out, mineCount);
    xs.clear();
    char* dst = static_cast<char*>(recv);
    for (int i = 0; i < size_; ++i) {
      if (i == rank_) continue;
      xs.push_back(sendTo(i, out, mineBytes));
      xs.push_back(recvFrom(i, dst + first[i] * esz, (first[i + 1] - first[i]) * esz));
    }
    GC_CHECK(run(kHostGatherPhase, gatherPhaseCheck(collective, check), xs));
    if (mineBytes) memcpy(dst + first[rank_] * esz, out, mineBytes);
    return gradcompSuccess;
  }

  Transfer sendTo(int i, const void* data, size_t bytes) {
    Transfer t;
    t.peer = members_[i];
    t.isSend = true;
    t.data = const_cast<char*>(static_cast<const char*>(data));
    t.bytes = bytes;
    return t;
  }
  Transfer recvFrom(int i, void* data, size_t bytes) {
    Transfer t;
    t.peer = members_[i];
    t.data = static_cast<char*>(data);
    t.bytes = bytes;
    return t;
  }

  // This rank's global rank, as the messages name ranks: a hierarchy's node
  // and inter-node transports index their members otherwise.
  int globalRank() const { return members_[rank_]; }
  int namedRank() const override { return globalRank(); }

  // A header's collective (HostCollective, with the sub-transport's tag
  // above it) and check, as a message names them.
  static void collectiveText(char* buf, size_t size, uint32_t collective, uint64_t check) {
    char what[96];
    hostCollectiveText(what, sizeof what, collective & 0xff, check);
    const uint32_t tag = collective >> 8;
    snprintf(buf, size, "%s%s", what,
             tag == 1   ? " of the node's transport"
             : tag == 2 ? " of the inter-node transport"
             : tag == 0 ? ""
                        : " of an unknown transport");
  }

  // The received header against this rank's own view of the collective.
  gradcompResult_t checkHeader(const Transfer& t, const WireHeader& mine) {
    const WireHeader& h = t.header;
    const int peer = t.peer;  // global
    if (h.magic != kMsgMagic) {
      return setError(gradcompSystemError,
                      "socket transport: rank %d received a corrupt message from rank %d",
                      globalRank(), peer);
    }
    const CallInfo theirs{h.step, h.count, h.type, h.op, h.kind, h.state};
    if (!sameCall(call_, theirs)) return callMismatch(globalRank(), call_, peer, theirs, size_);
    if (setUpVote_ && h.collective == mine.collective && h.check != mine.check) {
      return otherBuild(peer, h.bytes);
    }
    if (h.collective != mine.collective || h.check != mine.check || h.bytes != t.bytes) {
      char mineText[128], theirsText[128];
      collectiveText(mineText, sizeof mineText, mine.collective, mine.check);
      collectiveText(theirsText, sizeof theirsText, h.collective, h.check);
      return setError(gradcompInvalidUsage,
                      "socket transport: rank %d entered the %s expecting %zu bytes from rank "
                      "%d, which sent %llu bytes for the %s: the ranks' calls or per-buffer "
                      "state differ",
                      globalRank(), mineText, t.bytes, peer, (unsigned long long)h.bytes,
                      theirsText);
    }
    return gradcompSuccess;
  }

  // A peer's set-up vote of another size than this build's: another gradcomp
  // build. A vote that carries no version (SetupVote before 0.6.0's versioned
  // vote: 16 bytes, then kSetupSettings settings of 8 bytes, 14 to 31 over
  // its history, and a 256-byte sentence) is named as the older build.
  gradcompResult_t otherBuild(int peer, uint64_t theirs) {
    const uint64_t settings = (theirs - 16 - 256) / 8;
    const bool older =
        theirs >= 16 + 256 && (theirs - 16 - 256) % 8 == 0 && settings >= 14 && settings <= 31;
    return setError(gradcompInvalidUsage,
                    "socket transport: rank %d runs another gradcomp build (%s: its set-up vote "
                    "is %llu bytes, this build's %zu); every rank of a comm must run the same "
                    "gradcomp build, so no rank made one",
                    peer, older ? "an older one, before 0.6.0's versioned vote" : "another vote",
                    (unsigned long long)theirs, sizeof(SetupVote));
  }

  // The headers already here on the connections this rank has not read yet,
  // read without waiting: one whose record says its rank refused the call
  // fails this rank naming that refusal (checkHeader), which says more than
  // the connection another peer closed on reading the same record.
  gradcompResult_t refusalWaiting(std::vector<Transfer>& xs, const WireHeader& mine) {
    constexpr size_t H = sizeof(WireHeader);
    for (Transfer& t : xs) {
      if (t.isSend || t.checked) continue;
      while (t.done < H) {
        const ssize_t n = recv(mesh_->fds[t.peer], reinterpret_cast<char*>(&t.header) + t.done,
                               H - t.done, MSG_DONTWAIT);
        if (n <= 0) break;
        t.done += (size_t)n;
      }
      if (t.done < H) continue;
      t.checked = true;
      if (t.header.kind == kCallRefused) GC_CHECK(checkHeader(t, mine));
    }
    return gradcompSuccess;
  }

  // Moves every transfer to completion; a peer silent for cpuTimeoutSec, a
  // closed connection or a header that does not match fails the collective
  // and closes the mesh.
  gradcompResult_t run(uint32_t collective, uint64_t check, std::vector<Transfer>& xs) {
    SocketMesh& m = *mesh_;
    GC_CHECK(checkOpen());
    if (m.broken) {
      return setError(gradcompInvalidUsage,
                      "socket transport: this comm's connections were closed after an earlier "
                      "error (%s); destroy the comm and create a new one",
                      m.brokenWhy.c_str());
    }
    WireHeader mine = {};
    mine.magic = kMsgMagic;
    mine.collective = collective | (tag_ << 8);
    mine.check = check;
    mine.step = call_.step;
    mine.count = call_.count;
    mine.type = call_.type;
    mine.op = call_.op;
    mine.kind = call_.kind;
    mine.state = call_.state;
    for (Transfer& t : xs) {
      if (t.isSend) {
        t.header = mine;
        t.header.bytes = t.bytes;
      }
    }
    // The set-up vote is the world transport's first collective (setupSocketHierarchy).
    setUpVote_ =
        !ranAny_ && tag_ == 0 && collective == kHostAllGather && check == sizeof(SetupVote);
    ranAny_ = true;
    const gradcompResult_t res = progress(xs, mine);
    if (res != gradcompSuccess) m.breakAll(gradcompGetLastError());
    return res;
  }

  gradcompResult_t progress(std::vector<Transfer>& xs, const WireHeader& mine) {
    SocketMesh& m = *mesh_;
    constexpr size_t H = sizeof(WireHeader);
    double lastProgress = now();
    std::vector<pollfd>& pfds = pfds_;
    std::vector<int>& pending = pending_;
    for (;;) {
      // Checked before the connections' state: after abort() they read as closed.
      GC_CHECK(checkOpen());
      pfds.clear();
      pending.clear();
      for (int k = 0; k < (int)xs.size(); ++k) {
        const Transfer& t = xs[k];
        if (t.done == H + t.bytes) continue;
        pending.push_back(k);
        pfds.push_back({m.fds[t.peer], (short)(t.isSend ? POLLOUT : POLLIN), 0});
      }
      if (pending.empty()) return gradcompSuccess;
      const int rc = poll(pfds.data(), pfds.size(), 100);
      if (rc < 0 && errno != EINTR) {
        return setError(gradcompSystemError, "socket transport: poll: %s",
                        errnoText(errno).c_str());
      }
      bool moved = false;
      for (size_t q = 0; rc > 0 && q < pfds.size(); ++q) {
        if (!pfds[q].revents) continue;
        Transfer& t = xs[pending[q]];
        ssize_t n;
        if (t.isSend) {
          iovec iov[2];
          int cnt = 0;
          if (t.done < H) {
            iov[cnt++] = {reinterpret_cast<char*>(&t.header) + t.done, H - t.done};
            if (t.bytes) iov[cnt++] = {t.data, t.bytes};
          } else {
            iov[cnt++] = {t.data + (t.done - H), t.bytes - (t.done - H)};
          }
          msghdr msg = {};
          msg.msg_iov = iov;
          msg.msg_iovlen = cnt;
          n = sendmsg(pfds[q].fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        } else if (t.done < H) {
          n = recv(pfds[q].fd, reinterpret_cast<char*>(&t.header) + t.done, H - t.done,
                   MSG_DONTWAIT);
        } else {
          n = recv(pfds[q].fd, t.data + (t.done - H), t.bytes - (t.done - H), MSG_DONTWAIT);
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
        if (n <= 0) {
          const int err = n < 0 ? errno : 0;
          GC_CHECK(checkOpen());
          // A peer closes its connections when it fails, often on the record
          // of a rank that refused the call, which that rank sent here too.
          GC_CHECK(refusalWaiting(xs, mine));
          return setError(gradcompSystemError,
                          "socket transport: rank %d lost its connection to rank %d (%s): that "
                          "rank failed, exited or made a different call",
                          globalRank(), t.peer, n == 0 ? "closed" : errnoText(err).c_str());
        }
        t.done += (size_t)n;
        moved = true;
        if (!t.isSend && !t.checked && t.done >= H) {
          t.checked = true;
          GC_CHECK(checkHeader(t, mine));
        }
      }
      if (moved) {
        lastProgress = now();
      } else if (now() - lastProgress > m.timeoutSec) {
        std::string who;
        for (int k : pending) {
          who += (who.empty() ? "" : ", ") + std::to_string(xs[k].peer);
        }
        return setError(gradcompSystemError,
                        "socket transport: rank %d waited %g s (cpuTimeoutSec, "
                        "GRADCOMP_CPU_TIMEOUT) for rank(s) %s; every rank must make the same "
                        "calls",
                        globalRank(), m.timeoutSec, who.c_str());
      }
    }
  }

  std::shared_ptr<SocketMesh> mesh_;
  std::vector<int> members_;  // global rank of every member, in member order
  uint32_t tag_;
  bool ranAny_ = false;     // a collective was run
  bool setUpVote_ = false;  // the collective in progress is the set-up vote's
  // A call's arrays, kept for their capacity (every call fills them anew):
  // its transfers, the staging buffer (stageBlocks), a reduction's sources
  // and block bounds, progress()'s poll set.
  std::vector<Transfer> xs_;
  std::unique_ptr<char[]> stage_;
  size_t stageBytes_ = 0;
  std::vector<const void*> src_;
  std::vector<size_t> first_;
  std::vector<pollfd> pfds_;
  std::vector<int> pending_;
};

gradcompResult_t makeSocketMesh(int nranks, int rank, const char* root, double timeoutSec,
                                std::shared_ptr<SocketMesh>* out) {
  Addr rootAddr;
  GC_CHECK(parseRoot(root, &rootAddr));
  auto m = std::make_shared<SocketMesh>();
  m->nranks = nranks;
  m->rank = rank;
  m->timeoutSec = timeoutSec;
  m->fds.assign(nranks, -1);
  if (nranks > 1) {
    const double deadline = now() + timeoutSec;
    GC_CHECK(rank == 0 ? rootRendezvous(*m, rootAddr, deadline)
                       : peerRendezvous(*m, rootAddr, deadline));
    for (int fd : m->fds) {
      if (fd >= 0) GC_CHECK(setNonBlocking(fd));
    }
  }
  *out = std::move(m);
  return gradcompSuccess;
}

std::unique_ptr<Transport> makeSocketTransport(std::shared_ptr<SocketMesh> mesh,
                                               std::vector<int> members, int index, uint32_t tag) {
  return std::unique_ptr<Transport>(
      new SocketTransport(std::move(mesh), std::move(members), index, tag));
}

}  // namespace gc
