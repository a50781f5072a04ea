//! A private RabbitMQ node that the checker can kill, restart, freeze and thaw.
//!
//! It exists because the broker faults (RabbitMQ killed with `kill -9` mid-traffic, restarted on the
//! same data, or stalled with SIGSTOP so that connections hang instead of breaking) must never hit the
//! shared RabbitMQ on 5672 that other tests and developers use. Like `tests/cluster_broker.rs`, the
//! node gets its own name, ports (picked free, AMQP bound to 127.0.0.1) and directories under `dir`
//! (data, logs, plugins, feature flags, pid file), and runs the Debian `rabbitmq-server` script. As root
//! that script runs the broker as the `rabbitmq` user, so `dir` is chowned to it and its parents must
//! be traversable by it. No plugin is enabled: herald's streams (`x-queue-type=stream` over AMQP
//! 0.9.1) are built into the broker. Dropping the value kills the node; nothing is removed.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

/// How long `start` waits for the AMQP port unless [`PrivateRabbit::set_start_timeout`] says
/// otherwise. A first boot takes ~6 s on an idle 2-CPU machine, above 20 s under heavy load.
pub const START_TIMEOUT: Duration = Duration::from_secs(45);
/// How long `kill9` waits for the AMQP port to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RabbitError {
    #[error("rabbitmq-server not found (PATH, /usr/sbin, /usr/local/sbin)")]
    NotInstalled,
    /// What failed, on which path.
    #[error("{0} {1}: {2}")]
    Io(&'static str, String, #[source] io::Error),
    #[error("no free port on 127.0.0.1: {0}")]
    NoPort(#[source] io::Error),
    #[error("chown -R rabbitmq:rabbitmq {0} failed: {1}")]
    Chown(String, String),
    #[error("port {0} already accepts connections (node already running, or port taken)")]
    PortInUse(u16),
    #[error("rabbitmq-server exited during start ({0}); last log lines:\n{1}")]
    Exited(ExitStatus, String),
    /// Port, timeout, last log lines.
    #[error("no AMQP on port {0} within {1:?}; last log lines:\n{2}")]
    StartTimeout(u16, Duration, String),
    #[error("port {0} still open {1:?} after SIGKILL")]
    StillListening(u16, Duration),
    #[error("no Erlang VM found for node {0} (not running?)")]
    NotRunning(String),
    /// Signal name, pid.
    #[error("{0} to pid {1}: {2}")]
    Signal(&'static str, i32, #[source] io::Error),
    /// Arguments, what went wrong.
    #[error("rabbitmqctl {0}: {1}")]
    Ctl(String, String),
}

/// A RabbitMQ node of its own: name `herald-check-<ulid>@localhost`, free AMQP and distribution ports,
/// everything under `dir`. Not started by `new`.
pub struct PrivateRabbit {
    dir: PathBuf,
    server: PathBuf,
    port: u16,
    dist_port: u16,
    name: String,
    start_timeout: Duration,
    child: Option<Child>,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RabbitError {
    let path = path.display().to_string();
    move |e| RabbitError::Io(what, path, e)
}

/// `rabbitmq-server` on PATH, else in the sbin directories a non-root PATH often lacks.
fn find_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("rabbitmq-server"))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, RabbitError> {
    crate::cluster::free_port().map_err(RabbitError::NoPort)
}

async fn connect(port: u16) -> Option<TcpStream> {
    let connect = TcpStream::connect(("127.0.0.1", port));
    timeout(Duration::from_millis(500), connect)
        .await
        .ok()?
        .ok()
}

/// Blocking, but on loopback a refused or accepted connect is immediate.
fn port_open(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn signal(pid: i32, sig: libc::c_int, name: &'static str) -> Result<(), RabbitError> {
    // SAFETY: kill(2) has no memory effects; a wrong pid only yields an error.
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(());
    }
    Err(RabbitError::Signal(name, pid, io::Error::last_os_error()))
}

/// The state letter of /proc/<pid>/stat (`T` when stopped), `None` when the process is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

impl PrivateRabbit {
    /// Prepares `dir` (created if needed) and picks free ports; the node is not started.
    pub fn new(dir: &Path) -> Result<Self, RabbitError> {
        let server = find_server().ok_or(RabbitError::NotInstalled)?;
        for sub in ["mnesia", "log"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err("cannot create", &d))?;
        }
        let plugins = dir.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n").map_err(io_err("cannot write", &plugins))?;
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let out = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(dir)
                .output()
                .map_err(io_err("cannot run chown for", dir))?;
            if !out.status.success() {
                let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(RabbitError::Chown(dir.display().to_string(), detail));
            }
        }
        let port = free_port()?;
        let mut dist_port = free_port()?;
        while dist_port == port {
            dist_port = free_port()?;
        }
        Ok(PrivateRabbit {
            dir: dir.to_path_buf(),
            server,
            port,
            dist_port,
            name: format!("herald-check-{}@localhost", ulid::Ulid::new()).to_lowercase(),
            start_timeout: START_TIMEOUT,
            child: None,
        })
    }

    /// Starts (or restarts, on the same data) the node; returns once its AMQP port accepts
    /// connections, with the time that took. Bounded by the start timeout ([`START_TIMEOUT`]).
    ///
    /// After a `kill9`, durable streams come back a few seconds (~2.5 s) after the port: until then
    /// declaring or using one fails with NOT_FOUND "home node ... is down or inaccessible".
    pub async fn start(&mut self) -> Result<Duration, RabbitError> {
        if connect(self.port).await.is_some() {
            return Err(RabbitError::PortInUse(self.port));
        }
        self.reap();
        let _ = std::fs::remove_file(self.pid_file());
        let out_path = self.dir.join("startup.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(io_err("cannot open", &out_path))?;
        let err = out.try_clone().map_err(io_err("cannot open", &out_path))?;
        let d = &self.dir;
        let child = Command::new(&self.server)
            .current_dir(d)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            // Not created: the node must not read the shared node's /etc/rabbitmq/rabbitmq.conf.
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(io_err("cannot run", &self.server))?;
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if connect(self.port).await.is_some() {
                return Ok(t0.elapsed());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(RabbitError::Exited(status, self.log_tail()));
            }
            if t0.elapsed() > self.start_timeout {
                let log = self.log_tail();
                let _ = self.kill9();
                return Err(RabbitError::StartTimeout(
                    self.port,
                    self.start_timeout,
                    log,
                ));
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` of the broker's Erlang VM (also when frozen), then waits until the AMQP port is
    /// closed; returns the time that took. A node that is not running is fine. Blocks the calling
    /// thread (typically 30-150 ms, at most ~10 s).
    pub fn kill9(&mut self) -> Result<Duration, RabbitError> {
        let t0 = Instant::now();
        if let Some(pid) = self.pid() {
            // It may be dying already; the wait on the port below tells.
            let _ = signal(pid, libc::SIGKILL, "SIGKILL");
        }
        while port_open(self.port) {
            if t0.elapsed() > STOP_TIMEOUT {
                return Err(RabbitError::StillListening(self.port, STOP_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = t0.elapsed();
        // The script (and `su`) above the VM exit once it is gone.
        let running = |c: &mut Child| matches!(c.try_wait(), Ok(None));
        while self.child.as_mut().is_some_and(running) && t0.elapsed() < STOP_TIMEOUT {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reap();
        let _ = std::fs::remove_file(self.pid_file());
        Ok(took)
    }

    /// Stops the broker's Erlang VM (SIGSTOP): connections stay open but nothing answers, as on a
    /// stalled host. Returns once the kernel reports the process stopped (a few ms).
    pub fn freeze(&self) -> Result<(), RabbitError> {
        self.signal_and_wait(libc::SIGSTOP, "SIGSTOP", |s| s == 'T')
    }

    /// Resumes a frozen broker (SIGCONT).
    pub fn thaw(&self) -> Result<(), RabbitError> {
        self.signal_and_wait(libc::SIGCONT, "SIGCONT", |s| s != 'T')
    }

    /// Whether the broker's Erlang VM exists (frozen or not, answering or not).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    fn signal_and_wait(
        &self,
        sig: libc::c_int,
        name: &'static str,
        done: impl Fn(char) -> bool,
    ) -> Result<(), RabbitError> {
        let pid = self
            .pid()
            .ok_or_else(|| RabbitError::NotRunning(self.name.clone()))?;
        signal(pid, sig, name)?;
        let t0 = Instant::now();
        while proc_state(pid).is_some_and(|s| !done(s)) && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The pid of the broker's Erlang VM: from the pid file it writes, else (killed before it wrote
    /// it) by a scan of /proc. Either way, only a live `beam` process whose environment names this
    /// node, so that a stale pid file never leads to signalling someone else's process.
    pub fn pid(&self) -> Option<i32> {
        let from_file = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|pid| self.is_our_beam(*pid));
        from_file.or_else(|| {
            std::fs::read_dir("/proc")
                .ok()?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .find(|pid| self.is_our_beam(*pid))
        })
    }

    fn is_our_beam(&self, pid: i32) -> bool {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let beam = std::fs::read_to_string(proc.join("comm")).is_ok_and(|c| c.starts_with("beam"));
        if !beam || proc_state(pid).is_none_or(|s| s == 'Z') {
            return false;
        }
        let wanted = format!("RABBITMQ_NODENAME={}", self.name);
        std::fs::read(proc.join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()))
    }

    /// Runs `rabbitmqctl -n <node> <args>` (bounded: 60 s) and returns its standard output.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, RabbitError> {
        let fail = |detail: String| RabbitError::Ctl(args.join(" "), detail);
        let run = tokio::process::Command::new(self.server.with_file_name("rabbitmqctl"))
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = match timeout(Duration::from_secs(60), run).await {
            Ok(r) => r.map_err(|e| fail(e.to_string()))?,
            Err(_) => return Err(fail("timed out after 60 s".into())),
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(fail(format!("{}: {}", out.status, err.trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the node answers an AMQP protocol header with `connection.start` within 1 s. Unlike
    /// the port check of `start`, this tells a frozen broker (the kernel still accepts) from a live one.
    pub async fn answers(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some(mut s) = connect(self.port).await else {
            return false;
        };
        let mut b = [0u8; 1];
        let answer = async {
            s.write_all(b"AMQP\x00\x00\x09\x01").await?;
            s.read(&mut b).await
        };
        // A method frame (type 1): connection.start.
        matches!(timeout(Duration::from_secs(1), answer).await, Ok(Ok(1))) && b[0] == 1
    }

    /// AMQP URL of the node (guest is loopback-only, which is all the checker needs).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=5", self.port)
    }

    pub fn set_start_timeout(&mut self, timeout: Duration) {
        self.start_timeout = timeout;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The broker's own log (read it when a scenario fails).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.name))
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// The last lines of the broker log, else of the script's output.
    fn log_tail(&self) -> String {
        let mut text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        if text.trim().is_empty() {
            text = std::fs::read_to_string(self.dir.join("startup.log")).unwrap_or_default();
        }
        crate::cluster::last_lines(&text, 20)
    }

    /// Kills what is left of the script's process group and collects its exit status.
    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pgid) = i32::try_from(c.id()) {
                let _ = signal(-pgid, libc::SIGKILL, "SIGKILL");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = signal(pid, libc::SIGKILL, "SIGKILL");
        }
        self.reap();
        let _ = std::fs::remove_file(self.pid_file());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECLARE_STREAM: &str = "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, \
        <<\"herald-check-stream\">>), true, false, [{<<\"x-queue-type\">>, longstr, \
        <<\"stream\">>}], none, <<\"herald-check\">>).";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_kill_restart_freeze_thaw() {
        let dir = std::env::temp_dir().join(format!("herald-check-rabbit-{}", ulid::Ulid::new()));
        let mut r = match PrivateRabbit::new(&dir) {
            Err(RabbitError::NotInstalled) => {
                eprintln!("skipped: rabbitmq-server is not installed");
                return;
            }
            other => other.unwrap(),
        };
        assert_ne!(r.port(), 5672);
        assert!(r.amqp_url().contains(&format!(":{}/", r.port())));
        let took = r.start().await.unwrap();
        eprintln!("started in {took:?}, pid {:?}", r.pid());
        assert!(r.is_running());
        assert!(r.answers().await);
        let declared = r.ctl(&["eval", DECLARE_STREAM]).await.unwrap();
        assert!(declared.starts_with("{new,"), "{declared}");
        assert!(matches!(r.start().await, Err(RabbitError::PortInUse(_))));

        let took = r.kill9().unwrap();
        eprintln!("killed in {took:?}");
        assert!(!port_open(r.port()));
        assert!(!r.is_running() && r.pid().is_none());

        let took = r.start().await.unwrap();
        eprintln!("restarted in {took:?}");
        assert!(r.answers().await);
        let queues = r.ctl(&["list_queues", "name", "type"]).await.unwrap();
        assert!(
            queues
                .lines()
                .any(|l| l.starts_with("herald-check-stream") && l.contains("stream")),
            "the stream survived kill -9: {queues}"
        );

        r.freeze().unwrap();
        assert_eq!(proc_state(r.pid().unwrap()), Some('T'));
        assert!(!r.answers().await, "a frozen broker does not answer");
        r.thaw().unwrap();
        assert!(r.answers().await, "answers again after thaw");

        // Drop kills the VM, frozen or not.
        r.freeze().unwrap();
        let pid = r.pid().unwrap();
        drop(r);
        sleep(Duration::from_millis(200)).await;
        assert!(proc_state(pid).is_none_or(|s| s == 'Z'), "Drop kills");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
