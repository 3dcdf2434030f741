//! The fuzz target: every input goes through `switchboard_sidecar::fuzzing::run`, which decodes
//! it as client requests and as upstream replies and panics when a property fails.
//! Build and run it with `sidecar/fuzz/run.sh`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_sidecar::fuzzing::run(data);
    });
}
