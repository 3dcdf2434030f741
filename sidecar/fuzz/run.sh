#!/usr/bin/env bash
# Fuzzes the sidecar's hostile-input surface: the request decoder, the typed command parser and
# the reply decoder, through `switchboard_sidecar::fuzzing::run` (docs/fuzzing.md).
#
#   run.sh --smoke               replay corpus/ and regressions/ through the harness as a plain
#                                `cargo test` (stable Rust, no fuzzer needed): what CI runs
#   run.sh [--execs N] [--seconds S] [--out DIR] [--resume]
#                                build the target with `cargo afl` and run one afl-fuzz instance
#                                until N executions (default 1000000) or S seconds, whichever
#                                comes first; prints executions, crashes and hangs, and fails if
#                                it found any
#   run.sh --cmin [--out DIR]    minimize corpus/ plus the last run's queue into corpus/
#                                (afl-cmin.bash; minutes for a few thousand inputs)
#
# Needs for fuzzing (not for --smoke): `cargo install cargo-afl` (it builds its bundled AFL++ on
# first use; `cargo afl config --build` does it explicitly).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mode=fuzz
execs=1000000
seconds=0
out="$here/out"
resume=0

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
    --smoke) mode=smoke ;;
    --cmin) mode=cmin ;;
    --execs) execs="${2:?--execs needs a number}"; shift ;;
    --seconds) seconds="${2:?--seconds needs a number}"; shift ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --resume) resume=1 ;;
    -h | --help) usage 0 ;;
    *) echo "run.sh: unknown argument '$1'" >&2; usage 2 ;;
    esac
    shift
done

if [ "$mode" = smoke ]; then
    cd "$root"
    exec cargo test -p switchboard-sidecar --test fuzz_corpus
fi

if ! cargo afl --version >/dev/null 2>&1; then
    echo "run.sh: cargo-afl is missing: cargo install cargo-afl" >&2
    exit 1
fi
# Builds AFL++ once per toolchain; says so (and does nothing) when it already is.
cargo afl config --build >/dev/null 2>&1 || true

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
(cd "$here" && cargo afl build --release --locked)
target="$CARGO_TARGET_DIR/release/resp"

# Environment, not the target: no CPU governor or core_pattern tuning on shared machines.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
[ -t 1 ] || export AFL_NO_UI=1

if [ "$mode" = cmin ]; then
    # The bundled AFL++'s shell afl-cmin: its Python one (`cargo afl cmin`) recorded no tuples
    # for this target, and both run the first afl-showmap on PATH, so the bundled one goes first
    # (a distribution's older AFL++, e.g. Debian's 4.04c, lacks options they use).
    bundled="$(find "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs" -path '*/afl/bin/afl-cmin.bash' 2>/dev/null | head -n 1)"
    if [ -z "$bundled" ]; then
        echo "run.sh: no bundled AFL++ (cargo afl config --build)" >&2
        exit 1
    fi
    PATH="$(dirname "$bundled"):$PATH"
    queue="$out/default/queue"
    input="$(mktemp -d)"
    trap 'rm -rf "$input"' EXIT
    cp "$here"/corpus/* "$input"/
    if [ -d "$queue" ]; then
        find "$queue" -maxdepth 1 -type f -name 'id:*' -exec cp {} "$input"/ \;
    fi
    minimized="$(mktemp -d)"
    rmdir "$minimized"
    "$bundled" -i "$input" -o "$minimized" -- "$target"
    if [ -z "$(ls -A "$minimized" 2>/dev/null)" ]; then
        echo "run.sh: afl-cmin kept nothing; corpus/ left as it was" >&2
        exit 1
    fi
    # Hand-written seeds keep their names; what the fuzzer found is named by its content's hash
    # (afl's `id:...,src:...` names change on every run).
    rm -f "$here"/corpus/*
    for f in "$minimized"/*; do
        name="$(basename "$f")"
        case "$name" in
        id:*) name="q-$(sha1sum "$f" | cut -c1-16)" ;;
        esac
        cp "$f" "$here/corpus/$name"
    done
    rm -rf "$minimized"
    echo "corpus: $(find "$here/corpus" -type f | wc -l) files, $(du -sb "$here/corpus" | cut -f1) bytes"
    exit 0
fi

args=(-o "$out" -x "$here/resp.dict" -t 200 -E "$execs")
if [ "$resume" = 1 ] && [ -d "$out/default" ]; then
    args+=(-i -)
else
    rm -rf "$out"
    # Seeds: the corpus and every past finding.
    seeds="$(mktemp -d)"
    trap 'rm -rf "$seeds"' EXIT
    cp "$here"/corpus/* "$here"/regressions/* "$seeds"/
    args+=(-i "$seeds")
fi
[ "$seconds" -gt 0 ] && args+=(-V "$seconds")

cargo afl fuzz "${args[@]}" -- "$target"

stats="$out/default/fuzzer_stats"
stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
crashes="$(stat saved_crashes)"
hangs="$(stat saved_hangs)"
echo "execs_done: $(stat execs_done)  run_time: $(stat run_time)s  execs_per_sec: $(stat execs_per_sec)"
echo "corpus_count: $(stat corpus_count)  saved_crashes: $crashes  saved_hangs: $hangs"
if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
    echo "findings (replay one: add it to regressions/ and run run.sh --smoke):"
    find "$out/default/crashes" "$out/default/hangs" -type f -name 'id:*'
    exit 1
fi
