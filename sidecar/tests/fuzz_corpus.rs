//! Replays the fuzz target's seed corpus and its regressions (`sidecar/fuzz/`) through the
//! harness as a plain test, so every property the fuzzer checks is checked on each of them by
//! `cargo test`, with no fuzzer installed. `sidecar/fuzz/run.sh --smoke` runs just this.

use std::path::Path;

fn replay(dir: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // A failing property panics (its message is printed); go on, and name every input that failed.
    let failed: Vec<_> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            std::panic::catch_unwind(|| switchboard_sidecar::fuzzing::run(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "failing the fuzz harness: {failed:#?}");
    files.len()
}

#[test]
fn seed_corpus_passes_the_harness() {
    let n = replay("corpus");
    assert!(n >= 50, "only {n} corpus files");
}

#[test]
fn fuzzer_findings_stay_fixed() {
    let n = replay("regressions");
    assert!(n >= 1, "no regression inputs");
}
