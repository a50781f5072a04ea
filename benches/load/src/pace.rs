//! An absolute-deadline timer for the open-loop publisher: a timerfd armed with
//! `TFD_TIMER_ABSTIME` on CLOCK_REALTIME, the clock the publish stamps (`now_ns`) are read from, so
//! a deadline is exactly a stamp of the schedule (no conversion between clocks, no drift), with
//! the kernel's high-resolution timer slack (~50 µs) instead of tokio's 1 ms timer wheel.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;

struct Fd(OwnedFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

pub struct Timer(AsyncFd<Fd>);

impl Timer {
    pub fn new() -> io::Result<Timer> {
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = Fd(unsafe { OwnedFd::from_raw_fd(fd) });
        // the AsyncFd owns the timerfd and deregisters it before closing it
        Ok(Timer(unsafe { AsyncFd::register(fd)? }))
    }

    /// Fire at unix time `t_ns` (at once if that has passed).
    pub fn set(&self, t_ns: u64) -> io::Result<()> {
        let t_ns = t_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (t_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (t_ns % 1_000_000_000) as libc::c_long,
            },
        };
        let r = unsafe {
            libc::timerfd_settime(
                self.0.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait for the deadline set last (cancel-safe: readiness stays until read).
    pub async fn wait(&self) -> io::Result<()> {
        loop {
            let mut g = self.0.readable().await?;
            let r = g.try_io(|fd| {
                let mut n = 0u64;
                let r = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }
}
