// A socket world's root address, "host:port" or "[IPv6]:port", split into
// its host and port. Alone and header-only so that bench/ (gradcomp_perf's
// socket backend) reads its --root by the library's own rule, not by a copy
// that could drift.
#pragma once

#include <ctype.h>
#include <stdlib.h>

#include <string>

#include "../../shown_text.h"

namespace gc {

// Part of a root address as a sentence shows it between quotes, every byte
// written out as shown_text.h says (\r, \x1b, \").
inline std::string shownRootText(const std::string& s) {
  std::string out;
  for (const char ch : s) appendWrittenOut(out, (unsigned char)ch);
  return out;
}

// The host (brackets removed) and port of `root`; false with `why`, a
// sentence naming the value, where it is not one. An unbracketed IPv6
// literal is refused: in "::1:1234" the last group may be the port or part
// of the address (::1:1234 is an address too).
inline bool splitRootAddress(const char* root, std::string* host, int* port, std::string* why) {
  if (root == nullptr || root[0] == '\0') {
    *why = "root address is empty: give \"host:port\"";
    return false;
  }
  const std::string s(root), quoted = "root address \"" + shownRootText(s) + "\"";
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= s.size()) {
    *why = quoted + " is not \"host:port\" (an IPv6 host in brackets: \"[::1]:port\")";
    return false;
  }
  if (s.back() == ']') {
    *why = quoted + " has no port: give \"[IPv6]:port\"";
    return false;
  }
  std::string h = s.substr(0, colon);
  const std::string portText = s.substr(colon + 1);
  if (h.front() == '[' || h.back() == ']') {
    if (!(h.size() > 2 && h.front() == '[' && h.back() == ']')) {
      *why = quoted + ": unbalanced brackets around the host (give \"[IPv6]:port\")";
      return false;
    }
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != std::string::npos) {
    *why = quoted + " is ambiguous: an IPv6 host goes in brackets, as \"[" + shownRootText(h) +
           "]:" + shownRootText(portText) + "\"";
    return false;
  }
  // Digits only: strtol alone would take a sign and leading white space.
  char* end = nullptr;
  const long p = isdigit((unsigned char)portText[0]) ? strtol(portText.c_str(), &end, 10) : 0;
  if (!(end && *end == '\0' && p >= 1 && p <= 65535)) {
    *why = quoted + ": port \"" + shownRootText(portText) + "\" is out of range 1..65535";
    return false;
  }
  *host = h;
  *port = (int)p;
  return true;
}

// "host:port" as splitRootAddress reads it back: an IPv6 host in brackets.
inline std::string rootAddress(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

}  // namespace gc
