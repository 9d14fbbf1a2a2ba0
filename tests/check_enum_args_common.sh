# shellcheck shell=bash disable=SC2034  # flags, libs: for the caller
# Sourced (not run) by tests/check_enum_args.sh and
# tests/preload/check_enum_args.sh once their own leading arguments are
# shifted off: takes INCLUDE_DIR... -- LINK_LIBRARY... -- off the positional
# parameters, leaving the objects. Sets flags (-I the source tree SOURCE_DIR,
# in $src, its include/ and plugin/, and every non-empty INCLUDE_DIR) and
# libs (the LINK_LIBRARYs).
flags=(-I"$src/include" -I"$src" -I"$src/plugin")
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  [ -n "$1" ] && flags+=(-I"$1")
  shift
done
shift
libs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  libs+=("$1")
  shift
done
shift
