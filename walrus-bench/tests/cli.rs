//! The `walrus-bench` binary end to end: knobs from the environment, and a tiny suite on both
//! engines, walrus-rust in its child process.

use std::process::Command;

fn bench() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walrus-bench"));
    for var in [
        "FSYNC",
        "THREADS",
        "WALRUS_DURATION",
        "WALRUS_BATCH_SIZE",
        "BACKEND",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn knobs_come_from_the_environment() {
    let out = bench()
        .args(["--dry-run", "--workloads", "writes,batch-writes"])
        .env("FSYNC", "200ms")
        .env("THREADS", "2-3")
        .env("WALRUS_DURATION", "0.25")
        .env("WALRUS_BATCH_SIZE", "32")
        .env("BACKEND", "mmap")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "\"fsync\": \"200ms\"",
        "\"threads\": \"2-3\"",
        "\"duration_secs\": 0.25",
        "\"batch_size\": 32",
        "\"backend\": \"mmap\"",
        "append t=2",
        "append t=3",
        "batch 32 t=3",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("t=1"), "{text}");

    // A flag wins over the environment; a bad value is refused.
    let out = bench()
        .args(["--dry-run", "--threads", "4"])
        .env("THREADS", "1-2")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"threads\": \"4\""));
    let out = bench()
        .args(["--dry-run"])
        .env("FSYNC", "sometimes")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn tiny_suite_runs_both_engines_side_by_side() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = bench()
        .args([
            "--workloads",
            "writes,reads",
            "--threads",
            "1",
            "--duration",
            "0.2",
        ])
        .args(["--prefill", "3000", "--no-plot", "--out"])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("walrus-rust"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
    let json = std::fs::read_to_string(out_dir.path().join("latest.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 8, "{json}");
    for r in results {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["entries"].as_u64().unwrap() > 0, "{r}");
    }
    assert!(
        !out_dir.path().join("data").exists(),
        "the data directory is removed after the run"
    );
    // A data directory given, with files of its own: they stay, and only what the run made goes.
    let given = out_dir.path().join("given");
    std::fs::create_dir(&given).unwrap();
    std::fs::write(given.join("keep"), b"mine").unwrap();
    let out = bench()
        .args([
            "--workloads",
            "physical",
            "--threads",
            "1",
            "--duration",
            "0.1",
        ])
        .args(["--no-plot", "--out"])
        .arg(out_dir.path())
        .arg("--data-dir")
        .arg(&given)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(&given)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["keep"],
        "the run removed or left files in the given directory"
    );
    assert_eq!(std::fs::read(given.join("keep")).unwrap(), b"mine");
}
