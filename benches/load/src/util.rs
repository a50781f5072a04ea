//! Clocks, CPU and memory readings, histograms.
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn rusage(who: libc::c_int) -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds (user + system) of this whole generator process and of its worker processes that
/// have exited (and were waited for).
pub fn gen_cpu() -> f64 {
    rusage(libc::RUSAGE_SELF) + rusage(libc::RUSAGE_CHILDREN)
}

/// CPU seconds of the calling thread (the subscriber/receiver thread).
pub fn thread_cpu() -> f64 {
    rusage(libc::RUSAGE_THREAD)
}

/// CPU-time clock of the calling thread, readable from any thread with `clock_cpu`.
pub fn thread_cpu_clock() -> libc::clockid_t {
    let mut id: libc::clockid_t = 0;
    unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    id
}

/// CPU seconds on a clock from `thread_cpu_clock`.
pub fn clock_cpu(id: libc::clockid_t) -> f64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// (busy, total) jiffies of the whole machine (/proc/stat), for how many cores were busy.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// Busy cores of the whole machine between two `machine_jiffies` readings.
pub fn machine_cores_busy(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (a?, b?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * cores)
}

/// Readings of the server process under test (all optional: no pid, no readings).
#[derive(Clone, Copy, Debug, Default)]
pub struct Server {
    pub pid: Option<u32>,
}

impl Server {
    pub fn cpu(&self) -> Option<f64> {
        let pid = self.pid?;
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // after ')' index 0 is field 3 (state); utime = field 14, stime = field 15
        let ut: f64 = f.get(11)?.parse().ok()?;
        let st: f64 = f.get(12)?.parse().ok()?;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some((ut + st) / hz)
    }
    pub fn rss_kb(&self) -> Option<u64> {
        let pid = self.pid?;
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
    pub fn fds(&self) -> Option<u64> {
        let pid = self.pid?;
        Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
    }
    pub fn alive(&self) -> bool {
        match self.pid {
            Some(p) => std::path::Path::new(&format!("/proc/{p}")).exists(),
            None => true,
        }
    }
}

/// Raise RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur as u64
    }
}

/// Latency histogram in microseconds, 1 µs .. 10 min.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

pub fn hist_json(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| v as f64 / 1000.0;
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean() / 1000.0,
    })
}

/// A histogram as `[[value, count], …]` (every recorded bucket), to merge exactly elsewhere.
pub fn hist_to_json(h: &Histogram<u64>) -> Value {
    let v: Vec<[u64; 2]> = h
        .iter_recorded()
        .map(|x| [x.value_iterated_to(), x.count_at_value()])
        .collect();
    json!(v)
}

/// Add a histogram written by `hist_to_json` into `h`.
pub fn hist_add_json(h: &mut Histogram<u64>, v: &Value) -> R<()> {
    for pair in v.as_array().ok_or("histogram is not a list")? {
        let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) else {
            return Err(format!("bad histogram entry {pair}").into());
        };
        h.record_n(value, count)?;
    }
    Ok(())
}

/// Tiny xorshift for hold times and channel choice.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }
}

pub fn progress(len: u64, msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec}",
        )
        .unwrap(),
    );
    pb.set_message(msg.to_string());
    pb
}
