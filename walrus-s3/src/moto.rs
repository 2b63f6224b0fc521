//! A real S3-compatible server for tests and benchmarks: `moto_server` started on a free
//! loopback port, one per [`MotoServer`], stopped (killed and reaped) when dropped.
//!
//! Not for production: the server keeps objects in memory and checks no credentials. It does
//! enforce `If-None-Match`, which is what fencing needs.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, RetryConfig};

/// How long a fresh server gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `moto_server` on 127.0.0.1.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
}

impl MotoServer {
    /// Starts `moto_server` (from `PATH`, or `$MOTO_SERVER`) on a free port and waits until it
    /// answers.
    ///
    /// # Errors
    /// `NotFound` when `moto_server` is not installed (`pip install 'moto[server]'`), or the
    /// server not answering within a minute.
    pub fn start() -> io::Result<Self> {
        let program = std::env::var_os("MOTO_SERVER").unwrap_or_else(|| "moto_server".into());
        // Find a free port; the tiny window before moto binds it is tolerable on loopback.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start {}: {e} (install it with pip install 'moto[server]')",
                        program.to_string_lossy()
                    ),
                )
            })?;
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "moto_server exited at start: {status}"
                )));
            }
            if server.request("GET", "/").is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "moto_server not answering on {} after {START_TIMEOUT:?}",
                        server.addr
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates `bucket` (idempotent).
    ///
    /// # Errors
    /// The server refusing, or the connection failing.
    pub fn create_bucket(&self, bucket: &str) -> io::Result<()> {
        let status = self.request("PUT", &format!("/{bucket}"))?;
        if (200..300).contains(&status) || status == 409 {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "moto refused to create bucket {bucket}: HTTP {status}"
            )))
        }
    }

    /// A client for `bucket` (created if missing) with object_store's own retries off, so the
    /// writer's retry budget is the only one, and a short connect timeout.
    ///
    /// # Errors
    /// See [`create_bucket`](Self::create_bucket); the client failing to build.
    pub fn store(&self, bucket: &str) -> io::Result<Arc<dyn ObjectStore>> {
        self.create_bucket(bucket)?;
        client(&self.endpoint(), bucket)
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel but nothing is
    /// answered, as with a hung server. Its objects are kept.
    ///
    /// # Errors
    /// `kill` failing.
    pub fn pause(&self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// Thaws a paused server (SIGCONT); requests sent meanwhile are then served.
    ///
    /// # Errors
    /// `kill` failing.
    pub fn resume(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> io::Result<()> {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {sig} failed: {status}")))
        }
    }

    /// One bodiless HTTP/1.1 request; returns the status code.
    fn request(&self, method: &str, path: &str) -> io::Result<u16> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        // "HTTP/1.1 200"
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (paused) process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client for `bucket` of the moto server at `endpoint` (another process's, say), with
/// object_store's own retries off and a short connect timeout, as [`MotoServer::store`]
/// builds it; the bucket must exist.
///
/// # Errors
/// The client failing to build.
pub fn client(endpoint: &str, bucket: &str) -> io::Result<Arc<dyn ObjectStore>> {
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("walrus-test")
        .with_secret_access_key("walrus-test")
        .with_virtual_hosted_style_request(false)
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_connect_timeout(Duration::from_secs(2)),
        )
        .build()
        .map_err(|e| io::Error::other(format!("S3 client for {endpoint}: {e}")))?;
    Ok(Arc::new(store))
}
