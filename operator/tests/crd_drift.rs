//! `crds/` must be exactly what `geodb crdgen` writes; run `make crds` after an API change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn crds_directory_matches_crdgen() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let generated = geodb::crdgen::files().unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "crds/ holds other files than crdgen writes; run `make crds`"
    );
    for (name, content) in generated {
        let current = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            current == content,
            "crds/{name} differs from `geodb crdgen`; run `make crds` and commit the result"
        );
    }
}
