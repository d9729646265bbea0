//! Golden files: the exact rules rendered for representative configs. A change to what
//! iptproxy writes shows up here as a diff to review; `UPDATE_GOLDEN=1 cargo test golden`
//! rewrites the files after a deliberate change.

use std::path::Path;

use crate::fixtures::{EVERY_FEATURE, OTHER_SETTINGS};
use crate::harness::run_plain;

fn golden(name: &str, config: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.toml"), config).unwrap();
    let rendered = run_plain("iptproxy", &["-c", dir.path().to_str().unwrap(), "render"], &[]).ok().stdout;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if rendered != expected {
        let diff =
            similar::TextDiff::from_lines(&expected, &rendered).unified_diff().header("golden", "rendered").to_string();
        panic!("{name} differs from the golden file (UPDATE_GOLDEN=1 to accept):\n{diff}");
    }
}

#[test]
fn every_feature() {
    golden("every-feature.rules", EVERY_FEATURE);
}

#[test]
fn minimal_service() {
    golden(
        "minimal.rules",
        "[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nendpoints = [\"198.19.0.2:8080\"]\n",
    );
}

#[test]
fn no_forward_accept_no_random_fully() {
    golden("settings.rules", OTHER_SETTINGS);
}
