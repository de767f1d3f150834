//! The original evaluation traces, when `../shared/traces` is beside the repository: they parse,
//! and their statistics are the published ones. Skipped, with a message, elsewhere.

use std::path::PathBuf;

use traces::Trace;

fn shared() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} not found (the original traces live outside the repository)",
            dir.display()
        );
        None
    }
}

#[test]
fn original_traces_parse_with_their_published_statistics() {
    let Some(dir) = shared() else { return };
    // name, min, max, mean (shared/traces/README.md)
    for (name, min, max, mean) in [
        ("diurnal", 177, 387, 262.6),
        ("noisy", 81, 245, 157.5),
        ("bursty", 81, 397, 163.3),
        ("diurnal-2", 90, 394, 228.4),
    ] {
        let t = Trace::read(&dir.join(format!("{name}.txt"))).unwrap();
        let s = t.stats();
        assert_eq!((s.seconds, s.min, s.max), (3600, min, max), "{name}");
        assert!((s.mean - mean).abs() < 0.05, "{name}: mean {}", s.mean);
        // The built-in stand-ins are of the same scale.
        let b = Trace::builtin(name).unwrap().stats();
        assert!(
            (b.mean - s.mean).abs() / s.mean < 0.1,
            "{name}: built-in mean {} vs {}",
            b.mean,
            s.mean
        );
    }
}
