//! Every committed fuzz corpus file through its target: what the fuzzer found once stays fixed, and
//! the seeds (real documents and vectors) keep parsing without a panic.

use std::path::Path;

#[test]
fn every_corpus_file_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut total = 0;
    for (name, target) in confidant_fuzz_targets::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target has a corpus)", dir.display()));
        let mut n = 0;
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).unwrap_or_default();
            target(&data);
            n += 1;
        }
        assert!(n > 0, "{name}: empty corpus");
        total += n;
    }
    assert!(total > 50, "{total}");
}

#[test]
fn hostile_shapes_do_not_panic() {
    for (_, target) in confidant_fuzz_targets::TARGETS {
        for data in [
            &[][..],
            &[0xff; 64][..],
            &[0; 1][..],
            &[0x84, 0x40, 0xa0, 0x40, 0x58, 0x60][..],
            &[0x03, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            target(data);
        }
    }
}
