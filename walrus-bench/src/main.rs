//! `walrus-bench`: the load generator. Runs the standard suite and prints the table; with the
//! hidden `--engine E --workload JSON` it runs one workload and prints its result as JSON (the
//! child-process mode used for engines with process-global state).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use walrus_bench::config::{Backend, Fsync, ThreadRange};
use walrus_bench::engine::EngineKind;
use walrus_bench::report::{self, Machine, Report};
use walrus_bench::suite::{self, Group, SuiteConfig};
use walrus_bench::workload::{self, WorkloadSpec};

/// Walrus load generator: the standard workloads on walrus and walrus-rust 0.2.0, side by side.
#[derive(Debug, Parser)]
#[command(name = "walrus-bench", version)]
struct Cli {
    /// The long suite (10 s per workload, threads 1-8) instead of the short default.
    #[arg(long)]
    full: bool,
    /// Fsync schedule of the unsynced workloads: sync-each, no-fsync or <N>ms.
    #[arg(long, env = "FSYNC")]
    fsync: Option<Fsync>,
    /// Thread counts of the scaling sweeps: N or A-B.
    #[arg(long, env = "THREADS")]
    threads: Option<ThreadRange>,
    /// Thread counts of the synced family, comma-separated (default 1,4,16,64; 16 also runs
    /// on one topic), e.g. `16` for a quick A/B of the group commit.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=1024))]
    synced_threads: Option<Vec<u16>>,
    /// Seconds per measured loop.
    #[arg(long, env = "WALRUS_DURATION")]
    duration: Option<f64>,
    /// Entries per batch in the batch workloads (at most 2000).
    #[arg(long, env = "WALRUS_BATCH_SIZE")]
    batch_size: Option<usize>,
    /// Storage backend of our engine: pwrite, io_uring, mmap or auto.
    #[arg(long, env = "BACKEND")]
    backend: Option<Backend>,
    /// Longest block of our engine's topics, in bytes (a multiple of 4096; default 1 MiB). Under
    /// `SyncEach` the engine still caps blocks at 32 entries' worth, so this can only lower it.
    #[arg(long)]
    block_len: Option<u64>,
    /// Our engine without its group-commit journal under `SyncEach` (labelled `nojournal`),
    /// for an A/B against the default.
    #[arg(long)]
    no_journal: bool,
    /// Run the plan this many times (1-100), in rounds, and report each row's median run
    /// (default 1).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=100))]
    repeat: Option<u16>,
    /// Engines to compare, comma-separated (default walrus,walrus-rust).
    #[arg(long, value_delimiter = ',')]
    engines: Option<Vec<EngineKind>>,
    /// Workload families, comma-separated: physical, writes, batch-writes, synced, reads, space,
    /// footprint, s3, consumers, raft, tiering.
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<Group>>,
    /// Entries prefilled into each topic before a read workload.
    #[arg(long)]
    prefill: Option<u64>,
    /// Dollars per 1,000 S3 PUT requests, for the s3 family's cost column (default 0.005).
    #[arg(long)]
    put_price: Option<f64>,
    /// Where JSON and charts go (default target/walrus-bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the engines write (default <out>/data; must be a real disk, not a tmpfs).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the planned runs and exit.
    #[arg(long)]
    dry_run: bool,
    /// Skip the charts.
    #[arg(long)]
    no_plot: bool,
    /// Child mode: the engine of the one workload to run.
    #[arg(long, hide = true, requires = "workload")]
    engine: Option<EngineKind>,
    /// Child mode: the workload, as JSON.
    #[arg(long, hide = true, requires = "engine")]
    workload: Option<String>,
}

impl Cli {
    fn suite_config(&self) -> SuiteConfig {
        let mut c = if self.full {
            SuiteConfig::full()
        } else {
            SuiteConfig::quick()
        };
        if let Some(v) = self.fsync {
            c.fsync = v;
        }
        if let Some(v) = self.threads {
            c.threads = v;
        }
        if let Some(v) = &self.synced_threads {
            c.synced_threads = v.iter().map(|&t| usize::from(t)).collect();
        }
        if let Some(v) = self.duration {
            c.duration_secs = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.backend {
            c.backend = v;
        }
        if self.block_len.is_some() {
            c.block_len = self.block_len;
        }
        if self.no_journal {
            c.journal = Some(false);
        }
        if let Some(v) = &self.engines {
            c.engines.clone_from(v);
        }
        if let Some(v) = &self.workloads {
            c.groups.clone_from(v);
        }
        if let Some(v) = self.prefill {
            c.prefill = v;
        }
        if let Some(v) = self.put_price {
            c.put_price = v;
        }
        if let Some(v) = self.repeat {
            c.repeat = usize::from(v);
        }
        c
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = cli
        .out
        .clone()
        .unwrap_or_else(walrus_bench::default_out_dir);
    let data_dir = cli.data_dir.clone().unwrap_or_else(|| out.join("data"));
    if let (Some(engine), Some(json)) = (cli.engine, &cli.workload) {
        return child(engine, json, data_dir);
    }
    let config = cli.suite_config();
    let plan = config.plan();
    if cli.dry_run {
        println!(
            "{}",
            serde_json::to_string_pretty(&config).unwrap_or_default()
        );
        for (engine, spec) in &plan {
            println!("{engine:<11} {}", spec.label());
        }
        return ExitCode::SUCCESS;
    }
    // A directory of the run's own inside the one given, which may hold other files: only it
    // is emptied and removed (and the one given, if this run made it and it is empty).
    let data_root = (!data_dir.exists()).then(|| data_dir.clone());
    let data_dir = data_dir.join(format!("walrus-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        eprintln!("walrus-bench: {}: {e}", data_dir.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "walrus-bench: {} runs of {} s, data in {}",
        plan.len(),
        config.duration_secs,
        data_dir.display()
    );
    let mut machine = Machine::probe(&data_dir);
    let started = Instant::now();
    let results = suite::run_plan(&plan, &data_dir, config.repeat);
    let mut footprint_failed = None;
    let footprint = if config.groups.contains(&Group::Footprint) {
        walrus_bench::footprint::run(&data_dir, config.full, config.backend).unwrap_or_else(|e| {
            eprintln!("walrus-bench: footprint: {e}");
            footprint_failed = Some(e);
            Vec::new()
        })
    } else {
        Vec::new()
    };
    let mut s3_failed = None;
    let s3 = if config.groups.contains(&Group::S3) {
        walrus_bench::s3::run(std::time::Duration::from_secs_f64(config.duration_secs))
            .unwrap_or_else(|e| {
                eprintln!("walrus-bench: s3: {e}");
                s3_failed = Some(e);
                Vec::new()
            })
    } else {
        Vec::new()
    };
    let consumers = if config.groups.contains(&Group::Consumers) {
        let entries = if config.full { 1_000_000 } else { 200_000 };
        walrus_bench::consumers::run(
            &data_dir,
            entries,
            std::time::Duration::from_secs_f64(config.duration_secs),
        )
    } else {
        Vec::new()
    };
    let raft = if config.groups.contains(&Group::Raft) {
        walrus_bench::raft::run(
            &data_dir,
            std::time::Duration::from_secs_f64(config.duration_secs),
        )
    } else {
        Vec::new()
    };
    let tiering = if config.groups.contains(&Group::Tiering) {
        let entries = if config.full { 200_000 } else { 30_000 };
        walrus_bench::tiering::run(&data_dir, entries)
    } else {
        Vec::new()
    };
    machine.loadavg_end = report::loadavg();
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Some(root) = &data_root {
        let _ = std::fs::remove_dir(root);
    }
    let mut targets = report::targets(&results);
    if config.groups.contains(&Group::Footprint) {
        targets.extend(walrus_bench::footprint::targets(&footprint));
    }
    if config.groups.contains(&Group::S3) {
        targets.extend(walrus_bench::s3::targets(&s3));
    }
    if config.groups.contains(&Group::Consumers) {
        targets.extend(walrus_bench::consumers::targets(&consumers));
    }
    if config.groups.contains(&Group::Raft) {
        targets.extend(walrus_bench::raft::targets(&raft));
    }
    if config.groups.contains(&Group::Tiering) {
        targets.extend(walrus_bench::tiering::targets(&tiering));
    }
    let report = Report {
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        wall_secs: started.elapsed().as_secs_f64(),
        machine,
        config,
        results,
        footprint,
        s3,
        consumers,
        raft,
        tiering,
        targets,
    };
    let m = &report.machine;
    println!(
        "walrus-bench: {} CPUs ({}), Linux {}, data on {}; load average {} at start, {} at end",
        m.cpus, m.cpu_model, m.kernel, m.data_fs, m.loadavg_start, m.loadavg_end
    );
    print!("{}", report::table(&report.results));
    println!();
    if !report.footprint.is_empty() {
        print!("{}", walrus_bench::footprint::table(&report.footprint));
        println!();
    }
    if !report.s3.is_empty() {
        print!(
            "{}",
            walrus_bench::s3::table(&report.s3, report.config.put_price)
        );
        println!();
    }
    if !report.consumers.is_empty() {
        print!("{}", walrus_bench::consumers::table(&report.consumers));
        println!();
    }
    if !report.raft.is_empty() {
        print!("{}", walrus_bench::raft::table(&report.raft));
        println!();
    }
    if !report.tiering.is_empty() {
        print!("{}", walrus_bench::tiering::table(&report.tiering));
        println!();
    }
    print!("{}", report::targets_text(&report.targets));
    match report.write_json(&out) {
        Ok(path) => println!("\nJSON: {}", path.display()),
        Err(e) => eprintln!("walrus-bench: cannot write JSON to {}: {e}", out.display()),
    }
    if !cli.no_plot {
        match walrus_bench::plot::scaling_chart(&report.results, &out) {
            Ok(files) => {
                for f in files {
                    println!("chart: {}", f.display());
                }
            }
            Err(e) => eprintln!("walrus-bench: no chart: {e}"),
        }
    }
    println!("suite wall time: {:.1} s", report.wall_secs);
    let s3_case_failed = report.s3.iter().any(|c| c.error.is_some())
        || report.consumers.iter().any(|c| c.error.is_some())
        || report.raft.iter().any(|c| c.error.is_some())
        || report.tiering.iter().any(|c| c.error.is_some());
    if report.results.iter().any(|r| r.error.is_some())
        || footprint_failed.is_some()
        || s3_failed.is_some()
        || s3_case_failed
    {
        eprintln!("walrus-bench: some runs failed (see the table)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs one workload and prints its result as one JSON line on stdout.
fn child(engine: EngineKind, json: &str, data_dir: PathBuf) -> ExitCode {
    let spec: WorkloadSpec = match serde_json::from_str(json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walrus-bench: bad --workload: {e}");
            return ExitCode::from(2);
        }
    };
    match workload::run(engine, &spec, &data_dir)
        .and_then(|r| serde_json::to_string(&r).map_err(std::io::Error::other))
    {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walrus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_quick_suite() {
        let cli = Cli::try_parse_from([
            "walrus-bench",
            "--fsync",
            "sync-each",
            "--threads",
            "2-3",
            "--duration",
            "0.5",
            "--batch-size",
            "64",
            "--backend",
            "io_uring",
            "--engines",
            "walrus",
            "--workloads",
            "writes,reads",
            "--repeat",
            "3",
            "--block-len",
            "8192",
            "--no-journal",
            "--synced-threads",
            "16,2",
        ])
        .unwrap();
        let c = cli.suite_config();
        assert_eq!(c.fsync, Fsync::SyncEach);
        assert_eq!(c.threads, ThreadRange { min: 2, max: 3 });
        assert!((c.duration_secs - 0.5).abs() < 1e-9);
        assert_eq!((c.batch_size, c.backend), (64, Backend::IoUring));
        assert_eq!(c.engines, vec![EngineKind::Walrus]);
        assert_eq!(c.groups, vec![Group::Writes, Group::Reads]);
        assert!(!c.full);
        assert_eq!(c.synced_threads, vec![16, 2]);
        assert_eq!(
            (c.repeat, c.block_len, c.journal),
            (3, Some(8192), Some(false))
        );
        for bad in ["0", "101"] {
            assert!(Cli::try_parse_from(["walrus-bench", "--repeat", bad]).is_err());
        }
        assert!(Cli::try_parse_from(["walrus-bench", "--threads", "0"]).is_err());
        assert!(Cli::try_parse_from(["walrus-bench", "--synced-threads", "0"]).is_err());
        assert!(Cli::try_parse_from(["walrus-bench", "--engine", "walrus"]).is_err());
        let full = Cli::try_parse_from(["walrus-bench", "--full"]).unwrap();
        assert!(full.suite_config().full);
    }
}
