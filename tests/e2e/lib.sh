# shellcheck shell=bash
# Helpers the end-to-end scripts share (sourced): progress lines, assertions, polling with a
# deadline. `started` (the script's start, in $SECONDS) is set here unless the caller set it.
started=${started:-$SECONDS}

step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}

# until_ok <seconds> <what> <command...>: retries the command every second until it succeeds.
until_ok() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not within ${limit}s"
    sleep 1
  done
  ok "$what"
}

# until_eval <seconds> <what> <shell code>: until_ok with the code evaluated afresh on every try.
# (until_ok's own arguments, a "$(...)" among them, are expanded once, before its first try.)
until_eval() { until_ok "$1" "$2" eval "$3"; }
