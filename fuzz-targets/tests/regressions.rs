//! Every input saved under `fuzz/regressions/TARGET/` (crashes once found) and
//! `fuzz/seeds/TARGET/` (the starting corpus) goes through its target again.

use std::path::Path;

#[test]
fn saved_inputs_pass_their_targets() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut ran = 0;
    for (name, target) in mirror_fuzz_targets::TARGETS {
        for dir in ["regressions", "seeds"] {
            let Ok(entries) = std::fs::read_dir(base.join(dir).join(name)) else {
                continue;
            };
            for e in entries {
                let p = e.expect("dir entry").path();
                if p.file_name().is_some_and(|n| n == ".gitkeep") {
                    continue;
                }
                let data = std::fs::read(&p).expect("read a saved input");
                target(&data);
                ran += 1;
            }
        }
    }
    assert!(
        ran > 0,
        "no saved fuzz inputs found under {}",
        base.display()
    );
}
