#include "json_read.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace gcbench {
namespace {

// Nesting beyond this is not a report file; the limit keeps recursion bounded.
constexpr int kMaxDepth = 64;

struct Parser {
  explicit Parser(const std::string& text) : s(text) {}
  const std::string& s;
  size_t i = 0;
  std::string error;

  bool fail(const char* what) {
    char b[96];
    snprintf(b, sizeof b, "%s at byte %zu", what, i);
    error = b;
    return false;
  }
  void skipSpace() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  }
  bool literal(const char* word) {
    const size_t n = strlen(word);
    if (s.compare(i, n, word) != 0) return fail("unexpected token");
    i += n;
    return true;
  }
  bool string(std::string* out) {
    ++i;  // the opening quote
    while (i < s.size() && s[i] != '"') {
      char c = s[i++];
      if (c == '\\') {
        if (i >= s.size()) break;
        c = s[i++];
        switch (c) {
          case 'n':
            c = '\n';
            break;
          case 't':
            c = '\t';
            break;
          case 'r':
            c = '\r';
            break;
          case 'b':
            c = '\b';
            break;
          case 'f':
            c = '\f';
            break;
          case 'u':
            if (i + 4 > s.size()) return fail("short \\u escape");
            c = (char)strtol(s.substr(i, 4).c_str(), nullptr, 16);
            i += 4;
            break;
          default:
            break;  // \" \\ \/
        }
      }
      *out += c;
    }
    if (i >= s.size()) return fail("unterminated string");
    ++i;
    return true;
  }
  bool number(double* out) {
    const char* begin = s.c_str() + i;
    char* end = nullptr;
    *out = strtod(begin, &end);
    if (end == begin) return fail("not a number");
    i += (size_t)(end - begin);
    return true;
  }
  bool value(JsonValue* v, int depth) {
    if (depth > kMaxDepth) return fail("nested too deeply");
    skipSpace();
    if (i >= s.size()) return fail("unexpected end");
    const char c = s[i];
    if (c == '{') {
      v->kind = JsonValue::Object;
      ++i;
      skipSpace();
      if (i < s.size() && s[i] == '}') return ++i, true;
      for (;;) {
        skipSpace();
        if (i >= s.size() || s[i] != '"') return fail("expected a key");
        std::string key;
        if (!string(&key)) return false;
        skipSpace();
        if (i >= s.size() || s[i] != ':') return fail("expected ':'");
        ++i;
        if (!value(&v->fields[key], depth + 1)) return false;
        skipSpace();
        if (i < s.size() && s[i] == ',') {
          ++i;
          continue;
        }
        if (i < s.size() && s[i] == '}') return ++i, true;
        return fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v->kind = JsonValue::Array;
      ++i;
      skipSpace();
      if (i < s.size() && s[i] == ']') return ++i, true;
      for (;;) {
        v->items.emplace_back();
        if (!value(&v->items.back(), depth + 1)) return false;
        skipSpace();
        if (i < s.size() && s[i] == ',') {
          ++i;
          continue;
        }
        if (i < s.size() && s[i] == ']') return ++i, true;
        return fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v->kind = JsonValue::String;
      return string(&v->str);
    }
    if (c == 't' || c == 'f') {
      v->kind = JsonValue::Bool;
      v->b = c == 't';
      return literal(v->b ? "true" : "false");
    }
    if (c == 'n') {
      v->kind = JsonValue::Null;
      return literal("null");
    }
    v->kind = JsonValue::Number;
    return number(&v->num);
  }
};

}  // namespace

const JsonValue* JsonValue::get(const std::string& key) const {
  auto it = fields.find(key);
  return kind == Object && it != fields.end() ? &it->second : nullptr;
}

bool parseJson(const std::string& text, JsonValue* out, std::string* error) {
  Parser p(text);
  *out = JsonValue();
  bool ok = p.value(out, 0);
  if (ok) {
    p.skipSpace();
    if (p.i != text.size()) ok = p.fail("trailing characters");
  }
  if (!ok && error) *error = p.error;
  return ok;
}

}  // namespace gcbench
