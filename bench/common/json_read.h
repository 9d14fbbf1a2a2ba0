// A small JSON reader for the benchmark's own report files (the kernel rates
// of a committed GPU report): values, objects, arrays. Not a general library:
// no \u escapes beyond ASCII, numbers as double.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace gcbench {

struct JsonValue {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<JsonValue> items;
  std::map<std::string, JsonValue> fields;

  // Member `key` of an object, or nullptr.
  const JsonValue* get(const std::string& key) const;
};

// Parses text; false with *error saying where it stopped.
bool parseJson(const std::string& text, JsonValue* out, std::string* error);

}  // namespace gcbench
