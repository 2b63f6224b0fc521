//! `cargo xtask` — developer tasks for the Walrus workspace (the rust-analyzer pattern: plain
//! Rust instead of shell scripts, run through the alias in `.cargo/config.toml`).
//!
//! ```text
//! cargo xtask bench [--full]          load generator (walrus vs walrus-rust); short unless --full
//! cargo xtask bench --others          the same, with RocksDB and okaywal (opt-in features)
//! cargo xtask bench --micro [--full]  criterion micro-benchmarks (format, alloc, io)
//! cargo xtask loom                    loom models: allocator, deletion tracker, group commit
//!                                     with per-file sync tracking
//! cargo xtask proptest [--cases N]    property tests with N cases each (default 2048)
//! cargo xtask fuzz [--seconds N]      fuzz the format decoder for N seconds (default 60)
//! cargo xtask crash [--seeds N] [--concurrent N] [--corrupt N] [--kills N]
//!                                     crash suite: N simulated seeds (10000), N concurrent
//!                                     simulated seeds (5000), N corruption seeds (5000),
//!                                     N kill -9 runs (200)
//! cargo xtask ci                      everything .ci/run checks, in order
//! ```

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("loom") => loom(),
        Some("proptest") => proptest(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("crash") => crash(&args[1..]),
        Some("ci") => ci(),
        _ => {
            eprintln!(
                "usage: cargo xtask <bench [--full] [--others] [--micro] | loom | proptest [--cases N] \
                 | fuzz [--seconds N] | crash [--seeds N] [--concurrent N] [--corrupt N] [--kills N] | ci>"
            );
            return ExitCode::from(2);
        }
    };
    match outcome {
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
    let (own, passed) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &args[args.len()..]),
    };
    let has = |flag: &str| own.iter().any(|a| a == flag);
    if let Some(unknown) = own
        .iter()
        .find(|a| !matches!(a.as_str(), "--full" | "--micro" | "--others"))
    {
        return Err(format!(
            "bench: unknown flag {unknown} (use --full, --micro, --others, or -- <walrus-bench flags>)"
        ));
    }
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
    cmd.args(passed);
    run(&mut cmd)
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
        ])
        .args(["--", "--nocapture", "--test-threads", "1"])
        .env("WALRUS_CRASH_SEEDS", seeds.to_string())
        .env("WALRUS_CRASH_CONCURRENT_SEEDS", concurrent.to_string())
        .env("WALRUS_CORRUPTION_CASES", corrupt.to_string())
        .env("WALRUS_CRASH_KILLS", kills.to_string()))?;
    eprintln!(
        "crash suite: {seeds} simulated seeds, {concurrent} concurrent seeds, {corrupt} \
         corruption seeds, {kills} kills in {:.1?}",
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
    run(cargo().args(["test", "--workspace"]))?;
    loom()?;
    fuzz(&["--seconds".into(), "30".into()])
}
