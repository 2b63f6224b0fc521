//! Repository hygiene, checked as ordinary tests (the rust-analyzer "tidy" idea): rules that
//! reviews would otherwise have to remember.

use std::fs;
use std::path::{Path, PathBuf};

const LIBRARY_CRATES: &[&str] = &[
    "walrus-block",
    "walrus-alloc",
    "walrus-io",
    "walrus-topic",
    "walrus",
    "walrus-s3",
    "walrus-raft",
];
const ALL_CRATES: &[&str] = &[
    "walrus-block",
    "walrus-alloc",
    "walrus-io",
    "walrus-topic",
    "walrus",
    "walrus-s3",
    "walrus-cli",
    "walrus-raft",
    "walrus-bench",
    "xtask",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") && !path.ends_with("fixtures") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn files_of(crates: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for c in crates {
        rust_files(&root().join(c), &mut out);
    }
    assert!(!out.is_empty());
    out
}

#[test]
fn every_rust_file_has_module_docs() {
    let mut missing = Vec::new();
    let mut files = files_of(ALL_CRATES);
    rust_files(&root().join("fuzz"), &mut files);
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:#?}"
    );
}

/// No process-global mutable state in the library crates: everything belongs to an instance.
#[test]
fn no_global_mutable_state_in_libraries() {
    let forbidden = ["static mut ", "lazy_static!", "thread_local!"];
    let interior = [
        "Atomic", "Mutex", "RwLock", "OnceLock", "OnceCell", "LazyLock", "Cell<", "SpinLock",
    ];
    let mut offenders = Vec::new();
    for path in files_of(LIBRARY_CRATES) {
        let text = fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let is_static = code.starts_with("static ")
                || code.contains(" static ") && !code.contains("'static");
            let global_mut = forbidden.iter().any(|f| code.contains(f))
                || (is_static && interior.iter().any(|i| code.contains(i)));
            if global_mut {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "process-global mutable state: {offenders:#?}"
    );
}

/// Libraries log through `tracing` (the application picks the subscriber and the level);
/// they never print to stdout.
#[test]
fn no_println_in_libraries() {
    // Their sources; examples and tests print as they like.
    let sources = files_of(LIBRARY_CRATES)
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "src"));
    for path in sources {
        let text = fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            assert!(
                !code.contains("println!(") || code.contains("eprintln!("),
                "{}:{}: println! in a library crate",
                path.display(),
                n + 1
            );
        }
    }
}

/// Bytes read from disk go through rkyv's checked access only.
#[test]
fn no_unchecked_rkyv_access() {
    for path in files_of(LIBRARY_CRATES) {
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("access_unchecked"),
            "{} uses access_unchecked",
            path.display()
        );
    }
}

/// Layers point down: a library crate's `[dependencies]` name only crates listed before it in
/// `LIBRARY_CRATES` (the bottom-up order of SPEC.md).
#[test]
fn library_crates_depend_only_on_crates_below_them() {
    for (i, c) in LIBRARY_CRATES.iter().enumerate() {
        let manifest = fs::read_to_string(root().join(c).join("Cargo.toml")).unwrap();
        let mut in_deps = false;
        for line in manifest.lines() {
            if line.starts_with('[') {
                in_deps = line == "[dependencies]";
                continue;
            }
            let name = line.split(['.', ' ', '=']).next().unwrap_or("");
            if in_deps && let Some(j) = LIBRARY_CRATES.iter().position(|l| *l == name) {
                assert!(j < i, "{c} depends on {name}, which is not below it");
            }
        }
    }
}

#[test]
fn every_crate_uses_workspace_lints() {
    for c in ALL_CRATES {
        let manifest = fs::read_to_string(root().join(c).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{c}/Cargo.toml does not inherit [workspace.lints]"
        );
    }
}

/// The README's two commands stay the ones CI runs.
#[test]
fn readme_names_the_run_and_test_commands() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("cargo xtask bench"));
    assert!(readme.contains("cargo test --workspace"));
    // CI runs `cargo xtask ci`, whose test step is the README's command.
    let ci = fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("cargo xtask ci"));
    let xtask = fs::read_to_string(root().join("xtask/src/main.rs")).unwrap();
    let ci_task = &xtask[xtask
        .find("fn ci() -> Result {")
        .expect("xtask has a ci task")..];
    assert!(ci_task.contains(r#".args(["test", "--workspace"])"#));
}

/// The top-level module a source file of `src` belongs to (`recovery/walk.rs` → `recovery`),
/// or `None` for the crate root.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Layers point down inside a crate too: no two top-level modules of a library crate use each
/// other, directly or through others (`use crate::x` and `crate::x::` paths, tests excluded).
#[test]
fn no_library_crate_has_a_module_cycle() {
    for c in LIBRARY_CRATES {
        let src = root().join(c).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            std::collections::BTreeMap::new();
        for f in &files {
            let Some(from) = top_module(&src, f) else {
                continue;
            };
            let text = fs::read_to_string(f).unwrap();
            // Unit tests may reach anywhere.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code = code.split("#[cfg(all(test").next().unwrap_or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                let mut rest = line;
                while let Some(i) = rest.find("crate::") {
                    rest = &rest[i + "crate::".len()..];
                    let to: String = rest
                        .chars()
                        .take_while(|ch| ch.is_alphanumeric() || *ch == '_')
                        .collect();
                    if !to.is_empty() && to != from && src.join(format!("{to}.rs")).exists()
                        || src.join(&to).join("mod.rs").exists() && to != from
                    {
                        edges.entry(from.clone()).or_default().insert(to);
                    }
                }
            }
        }
        // Depth-first search for a path back to the start.
        for start in edges.keys() {
            let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
            let mut seen = std::collections::BTreeSet::new();
            while let Some(path) = stack.pop() {
                let last = path.last().unwrap();
                for next in edges.get(last).into_iter().flatten() {
                    assert!(
                        next != start,
                        "{c}: module cycle {} -> {start}",
                        path.join(" -> ")
                    );
                    if seen.insert(next.clone()) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        stack.push(longer);
                    }
                }
            }
        }
    }
}
