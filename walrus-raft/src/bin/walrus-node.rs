//! `walrus-node`: one node of a replicated Walrus cluster, serving the HTTP API of
//! [`walrus_raft::api`] until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use walrus_raft::{Node, NodeConfig, NodeId};

/// One node of a replicated Walrus cluster.
#[derive(Debug, Parser)]
#[command(name = "walrus-node", version)]
struct Args {
    /// This node's id in the cluster (unique, stable across restarts).
    #[arg(long)]
    id: NodeId,
    /// Its directory (created if needed).
    #[arg(long)]
    dir: PathBuf,
    /// The address to serve on; peers and clients reach it there.
    #[arg(long)]
    addr: SocketAddr,
    /// Raft's heartbeat in milliseconds (elections time out after 3–6 of them).
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Build a snapshot after this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_after: u64,
    /// How long a write waits for its commit, in milliseconds (0: no limit); then it fails
    /// with 503 (never proposed: nothing written) or 504 (proposed: outcome unknown).
    #[arg(long, default_value_t = 10_000)]
    write_timeout_ms: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WALRUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,walrus_raft=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walrus-node: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walrus-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let config = NodeConfig {
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        snapshot_after: args.snapshot_after,
        write_timeout: (args.write_timeout_ms > 0)
            .then(|| Duration::from_millis(args.write_timeout_ms)),
        ..NodeConfig::new(args.id, args.dir, args.addr)
    };
    let node = Node::start(config).await?;
    eprintln!(
        "walrus-node {} listening on http://{}",
        node.id(),
        node.addr()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A node whose raft core failed serves no write: it stops, failing, for its supervisor to
    // start it again.
    let failed = tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; None }
        _ = term.recv() => None,
        e = node.failed() => Some(e),
    };
    let stopped = node.shutdown().await;
    match failed {
        Some(e) => Err(e),
        None => stopped,
    }
}
