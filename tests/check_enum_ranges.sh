#!/usr/bin/env bash
# A C caller may pass any int where the public headers take an enum; the
# library refuses an unknown value naming it. In C++ an enum holds only the
# values of its range ([dcl.enum]/8: 0..7 for an enum of 0..4), so without a
# wider range reading 99 from one is undefined, which clang's -fsanitize=enum
# reports. Every enum of include/ (found by its typedef) is passed 99 from C
# into a C++ function built with that sanitizer, which reads it and compares
# it, as the library's checks do: no report may come. Skips without clang.
# Usage: check_enum_ranges.sh INCLUDE_DIR [EXTRA_INCLUDE_DIR...]
set -euo pipefail
inc=$1
shift
flags=(-I"$inc")
for d in "$@"; do [ -n "$d" ] && flags+=(-I"$d"); done
if ! command -v clang >/dev/null || ! command -v clang++ >/dev/null; then
  echo "SKIPPED: no clang/clang++ (-fsanitize=enum is clang's)"
  exit 0
fi
# The enum type names, from "typedef enum { ... } name;" (one-line ones are
# the range sentinel's dummy, not an API type).
names=$(awk '/typedef enum.*}/ {next} /typedef enum/ {e = 1} e && /^}/ {gsub(/[};[:space:]]/, ""); print; e = 0}' \
  "$inc/gradcomp.h" "$inc"/gradcomp/*.h)
[ -n "$names" ] || { echo "FAIL: no enum found in $inc"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo '#include "gradcomp.h"'
  echo '#include "gradcomp/elias.h"'
  for t in $names; do echo "extern \"C\" int take_$t($t v) { return v == ($t)0 ? 0 : 1; }"; done
} > "$work/take.cc"
{
  echo '#include <stdio.h>'
  echo '#include "gradcomp.h"'
  echo '#include "gradcomp/elias.h"'
  for t in $names; do echo "int take_$t($t v);"; done
  echo 'int main(void) {'
  echo '  int n = 0;'
  for t in $names; do
    echo "  if (sizeof($t) != sizeof(int)) { printf(\"FAIL: sizeof($t) is %zu\\n\", sizeof($t)); return 1; }"
    echo "  n += take_$t(($t)99);"
  done
  echo '  printf("%d enums read 99\n", n);'
  echo '  return 0;'
  echo '}'
} > "$work/caller.c"
clang -std=c99 -O0 "${flags[@]}" -c "$work/caller.c" -o "$work/caller.o"
clang++ -std=c++17 -O0 -fsanitize=enum -fno-sanitize-recover=enum "${flags[@]}" -c "$work/take.cc" \
  -o "$work/take.o"
clang++ -fsanitize=enum "$work/caller.o" "$work/take.o" -o "$work/check"
if ! out=$("$work/check" 2>&1); then
  echo "FAIL: reading 99 from a public enum is undefined behaviour in C++:"
  echo "$out"
  exit 1
fi
echo "$out"
echo "PASS: $(echo $names | wc -w) public enums ($(echo $names | tr '\n' ' ')) hold 99 as a defined value"
