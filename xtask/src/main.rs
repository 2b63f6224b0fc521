//! `cargo xtask` — developer tasks for the Walrus workspace (the rust-analyzer pattern: plain
//! Rust instead of shell scripts, run through the alias in `.cargo/config.toml`).
//!
//! ```text
//! cargo xtask bench [--full]          load generator (walrus vs walrus-rust); short unless --full
//! cargo xtask bench --others          the same, with RocksDB and okaywal (opt-in features)
//! cargo xtask bench --micro [--full]  criterion micro-benchmarks (format, alloc, io, lookup)
//! cargo xtask loom                    loom models: allocator, deletion tracker, group commit
//!                                     with per-file sync tracking, waiting readers
//! cargo xtask proptest [--cases N]    property tests with N cases each (default 2048)
//! cargo xtask fuzz [--seconds N]      fuzz the format decoder for N seconds (default 60)
//! cargo xtask crash [--seeds N] [--concurrent N] [--corrupt N] [--kills N] [--consumers N]
//!                                     crash suite: N simulated seeds (10000), N concurrent
//!                                     simulated seeds (5000), N corruption seeds (5000),
//!                                     N kill -9 runs (200), N concurrent seeds with
//!                                     consumers, retention and deletion (2000)
//! cargo xtask ci                      everything .ci/run checks, in order
//! ```

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

type Result<T = ()> = std::result::Result<T, String>;

/// What `cargo xtask` without a known task prints: every task and flag.
const USAGE: &str = "usage: cargo xtask <task>
  bench [--full] [--others] [walrus-bench flags, e.g. --workloads synced --dry-run]
  bench --micro [--full]
  loom
  proptest [--cases N]
  fuzz [--seconds N]
  crash [--seeds N] [--concurrent N] [--corrupt N] [--kills N] [--consumers N]
  ci";

/// Every task [`task`] knows, in the order of [`USAGE`] (checked by the tests).
#[cfg(test)]
const TASKS: [&str; 6] = ["bench", "loom", "proptest", "fuzz", "crash", "ci"];

/// The task called `name`, as `main` runs it.
fn task(name: &str) -> Option<fn(&[String]) -> Result> {
    Some(match name {
        "bench" => bench,
        "loom" => |_| loom(),
        "proptest" => proptest,
        "fuzz" => fuzz,
        "crash" => crash,
        "ci" => |_| ci(),
        _ => return None,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some(run_task) = args.first().and_then(|name| task(name)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match run_task(&args[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// Value of `--name N` in `args`, or `default`.
fn flag_value(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number")),
    }
}

/// `cargo xtask bench [--full] [--micro] [--others] [-- <walrus-bench flags>]`: the load
/// generator in release mode (short suite unless `--full`), or with `--micro` the criterion
/// micro-benchmarks (short unless `--full`). `--others` also builds and runs the opt-in engines
/// (RocksDB through Debian's librocksdb-dev, okaywal). Flags after `--` go to `walrus-bench` as
/// they are (see its `--help`); the knobs also come from the environment (`FSYNC`, `THREADS`,
/// `WALRUS_DURATION`, `WALRUS_BATCH_SIZE`, `BACKEND`).
fn bench(args: &[String]) -> Result {
    // Our flags anywhere (before a `--`); everything else goes to walrus-bench as it is.
    let (own, passed) = split_bench_args(args);
    let has = |flag: &str| own.iter().any(|a| a == flag);
    if has("--micro") {
        return bench_micro(has("--full"));
    }
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "walrus-bench",
        "--bin",
        "walrus-bench",
    ]);
    if has("--others") {
        cmd.args(["--features", "rocksdb,okaywal"]);
        // librocksdb-sys links the system library instead of building RocksDB (half an hour).
        let debian = Path::new("/usr/lib/x86_64-linux-gnu/librocksdb.so");
        if env::var_os("ROCKSDB_LIB_DIR").is_none() && debian.exists() {
            cmd.env("ROCKSDB_LIB_DIR", "/usr/lib/x86_64-linux-gnu");
        }
    }
    cmd.arg("--");
    if has("--full") {
        cmd.arg("--full");
    }
    if has("--others") {
        cmd.args(["--engines", "walrus,walrus-rust,rocksdb,okaywal"]);
    }
    cmd.args(&passed);
    run(&mut cmd)
}

/// Splits `cargo xtask bench` arguments into xtask's own flags and walrus-bench's: `--full`,
/// `--micro` and `--others` are ours unless they come after a `--`.
fn split_bench_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let ours = |a: &str| matches!(a, "--full" | "--micro" | "--others");
    let (head, tail) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &args[args.len()..]),
    };
    let own = head.iter().filter(|a| ours(a)).cloned().collect();
    let passed = head
        .iter()
        .filter(|a| !ours(a))
        .chain(tail)
        .cloned()
        .collect();
    (own, passed)
}

/// The criterion micro-benchmarks of walrus-bench (format, alloc, io).
fn bench_micro(full: bool) -> Result {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "walrus-bench", "--benches", "--"]);
    if !full {
        cmd.args(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    run(&mut cmd)
}

fn loom() -> Result {
    // loom needs its own cfg, which rebuilds everything: keep it out of the main target dir.
    let target = root().join("target/loom");
    run(cargo()
        .args([
            "test",
            "-p",
            "walrus-alloc",
            "-p",
            "walrus-topic",
            "--release",
            "--test",
            "loom",
            "--target-dir",
        ])
        .arg(&target)
        .env("RUSTFLAGS", "--cfg loom")
        .env(
            "LOOM_MAX_PREEMPTIONS",
            env::var("LOOM_MAX_PREEMPTIONS").unwrap_or("3".into()),
        ))
}

fn proptest(args: &[String]) -> Result {
    let cases = flag_value(args, "--cases", 2048)?;
    run(cargo()
        .args(["test", "--workspace", "--release", "--", "--skip", "loom"])
        .env("PROPTEST_CASES", cases.to_string()))
}

/// The crash-consistency suite: simulated seeds and real `kill -9` runs, in release mode.
fn crash(args: &[String]) -> Result {
    let seeds = flag_value(args, "--seeds", 10_000)?;
    let concurrent = flag_value(args, "--concurrent", 5_000)?;
    let corrupt = flag_value(args, "--corrupt", 5_000)?;
    let kills = flag_value(args, "--kills", 200)?;
    let consumers = flag_value(args, "--consumers", 2_000)?;
    let started = std::time::Instant::now();
    run(cargo()
        .args([
            "test",
            "-p",
            "walrus",
            "--release",
            "--test",
            "crash_sim",
            "--test",
            "crash_concurrent",
            "--test",
            "corruption",
            "--test",
            "crash_kill",
            "--test",
            "crash_consumers",
        ])
        .args(["--", "--nocapture", "--test-threads", "1"])
        .env("WALRUS_CRASH_SEEDS", seeds.to_string())
        .env("WALRUS_CRASH_CONCURRENT_SEEDS", concurrent.to_string())
        .env("WALRUS_CORRUPTION_CASES", corrupt.to_string())
        .env("WALRUS_CRASH_KILLS", kills.to_string())
        .env("WALRUS_CRASH_CONSUMERS_SEEDS", consumers.to_string()))?;
    eprintln!(
        "crash suite: {seeds} simulated seeds, {concurrent} concurrent seeds, {corrupt} \
         corruption seeds, {kills} kills, {consumers} consumer seeds in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

fn fuzz(args: &[String]) -> Result {
    let seconds = flag_value(args, "--seconds", 60)?;
    if Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    // Seed the corpus with the golden fixtures so the fuzzer starts from valid frames and
    // mutates them, instead of having to forge checksums from nothing.
    let corpus = root().join("fuzz/corpus/decode");
    std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let fixtures = root().join("walrus-block/tests/fixtures");
    let entries =
        std::fs::read_dir(&fixtures).map_err(|e| format!("{}: {e}", fixtures.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, corpus.join(name))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    // cargo-fuzz wants nightly-only flags; RUSTC_BOOTSTRAP lets the one stable toolchain here
    // accept them. No sanitizer: the decoder is safe code, and the point is panics.
    run(cargo()
        .current_dir(root().join("fuzz"))
        .args(["fuzz", "run", "decode", "--sanitizer", "none", "--release"])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-max_len=20000")
        .env("RUSTC_BOOTSTRAP", "1"))
}

/// `cmd` with 127.0.0.1 and localhost added to `NO_PROXY`/`no_proxy`: HTTP clients that honour
/// a proxy variable (object_store's) would otherwise send loopback requests to it.
fn loopback_only(cmd: &mut Command) -> &mut Command {
    for var in ["NO_PROXY", "no_proxy"] {
        let listed = std::env::var(var).unwrap_or_default();
        let value = if listed.is_empty() {
            "127.0.0.1,localhost".to_owned()
        } else {
            format!("{listed},127.0.0.1,localhost")
        };
        cmd.env(var, value);
    }
    cmd
}

fn ci() -> Result {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The docs build clean: a broken intra-doc link is a defect like a failing test.
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // Tests that would skip for want of what a machine may lack (a mount namespace for a
    // small tmpfs, cachestat(2), io_uring, /dev/full) fail instead, and the S3 and raft tests'
    // loopback traffic never goes to a proxy a variable names.
    let mut tests = cargo();
    tests.env("WALRUS_REQUIRE_CHECKS", "1");
    run(loopback_only(&mut tests).args(["test", "--workspace"]))?;
    // The optional `metrics` integration: linted and tested with its feature on.
    run(cargo().args([
        "clippy",
        "-p",
        "walrus",
        "--features",
        "metrics",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args([
        "test",
        "-p",
        "walrus",
        "--features",
        "metrics",
        "--test",
        "metrics",
    ]))?;
    loom()?;
    fuzz(&["--seconds".into(), "30".into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_lists_every_task_and_flag() {
        for name in TASKS {
            assert!(task(name).is_some(), "{name} is not a task");
            assert!(
                USAGE.lines().any(|l| l.trim_start().starts_with(name)),
                "{name} missing from the usage"
            );
        }
        assert!(task("nonsense").is_none());
        for flag in [
            "--full",
            "--others",
            "--micro",
            "--cases",
            "--seconds",
            "--seeds",
            "--concurrent",
            "--corrupt",
            "--kills",
            "--consumers",
        ] {
            assert!(USAGE.contains(flag), "{flag} missing from the usage");
        }
    }

    #[test]
    fn bench_flags_pass_through_to_the_load_generator() {
        let args: Vec<String> = [
            "--others",
            "--dry-run",
            "--workloads",
            "synced",
            "--",
            "--full",
        ]
        .map(String::from)
        .to_vec();
        let (own, passed) = split_bench_args(&args);
        assert_eq!(own, ["--others"]);
        assert_eq!(passed, ["--dry-run", "--workloads", "synced", "--full"]);
    }
}
