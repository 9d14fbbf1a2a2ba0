// How a sentence shows a byte of text the caller gave, between quotes: one
// helper for the setting values (config.cc, shownValue) and the root address
// (backends/cpu/root_address.h, header-only for bench/ too), so that both
// write out the same bytes the same way.
#pragma once

#include <stdio.h>

#include <string>

namespace gc {

// Appends byte c as it shows between quotes: itself if printable ASCII, a
// quote or backslash escaped (\", \\), a tab, newline or CR as \t, \n, \r,
// any other byte (a control character, one past ASCII) as \xNN: a CR from a
// CRLF environment file cannot send the cursor back over the sentence, nor
// an escape sequence redraw the terminal, nor a byte that is no UTF-8 go raw
// into a log.
inline void appendWrittenOut(std::string& out, unsigned char c) {
  if (c >= ' ' && c < 0x7f && c != '"' && c != '\\') {
    out += (char)c;
  } else if (c == '"' || c == '\\') {
    out += '\\';
    out += (char)c;
  } else if (c == '\t' || c == '\n' || c == '\r') {
    out += c == '\t' ? "\\t" : c == '\n' ? "\\n" : "\\r";
  } else {
    char esc[8];
    snprintf(esc, sizeof esc, "\\x%02x", c);
    out += esc;
  }
}

}  // namespace gc
