//! The thread pool models run on: rayon's global pool, built once by the
//! runtime with each worker pinned to its own CPU.
//!
//! Design: a run at several threads moves between rayon's workers (whichever
//! is awake takes it) and the OS moves the workers between CPUs. On the 2-core
//! VM the benchmarks run on, both happened between runs: a model's weights and
//! scratch sat in one core's L2 while the next run started on the other, and
//! at times both workers shared one CPU while the other idled. The convnet
//! benchmark at 2 threads took 145-225 µs per run, against 160 µs at 1 thread
//! and 109 µs for ONNX Runtime, whose intra-op threads are pinned. Here worker
//! `i` is pinned to the `i`-th CPU the process may use, and a run starts on
//! worker 0 when no other run is in flight ([`crate::model`]'s
//! `run_on_pool`), so a model's data stays in the caches it was left in.
//!
//! Pinning happens only when the pool has exactly one worker per CPU the
//! process may use: a process given fewer threads than CPUs (say
//! `RAYON_NUM_THREADS=2` on an 8-core node) shares the machine, and two such
//! processes pinned to the same first CPUs would fight over them while the
//! rest idle. It is also skipped with `FLOTILLA_PIN_THREADS=0`, on systems
//! other than Linux, and when something else built rayon's global pool first
//! (the runtime then uses that pool as it is).

use std::sync::OnceLock;

/// The environment variable that turns pinning off (`0`, `false` or `off`).
pub const PIN_ENV: &str = "FLOTILLA_PIN_THREADS";

/// How the pool was set up, for logs and `--help`-style diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSetup {
    /// The runtime built the pool and pinned worker `i` to the `i`-th allowed CPU.
    Pinned { threads: usize },
    /// The runtime built the pool without pinning (turned off, not one worker
    /// per allowed CPU, or no affinity support).
    Unpinned { threads: usize },
    /// Another part of the process built rayon's global pool first.
    Foreign { threads: usize },
}

/// Builds rayon's global pool once (later calls return the first outcome).
/// [`crate::Model::load`] calls it, so a process that only uses the runtime
/// gets the pinned pool without asking; call it first thing to be sure nothing
/// else builds the pool before.
pub fn init() -> PoolSetup {
    static SETUP: OnceLock<PoolSetup> = OnceLock::new();
    *SETUP.get_or_init(build)
}

fn build() -> PoolSetup {
    let cpus = affinity::allowed_cpus().unwrap_or_default();
    // The size rayon would pick: RAYON_NUM_THREADS, else one per CPU.
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let builder = rayon::ThreadPoolBuilder::new().num_threads(threads);
    let pin = pin_wanted() && threads == cpus.len();
    let builder = if pin {
        let cpus = cpus.clone();
        builder.start_handler(move |i| {
            if let Some(&cpu) = cpus.get(i) {
                // A failed pin leaves the worker where the OS puts it.
                let _ = affinity::pin_current_thread(cpu);
            }
        })
    } else {
        builder
    };
    match builder.build_global() {
        Ok(()) if pin => PoolSetup::Pinned { threads },
        Ok(()) => PoolSetup::Unpinned { threads },
        Err(_) => PoolSetup::Foreign {
            threads: rayon::current_num_threads(),
        },
    }
}

/// Whether [`PIN_ENV`] leaves pinning on (anything but `0`, `false`, `off`).
fn pin_wanted() -> bool {
    !matches!(
        std::env::var(PIN_ENV)
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Ok("0" | "false" | "off")
    )
}

#[cfg(target_os = "linux")]
mod affinity {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

    /// The CPUs this thread may run on, in ascending order.
    pub(super) fn allowed_cpus() -> Option<Vec<usize>> {
        let set = sched_getaffinity(None).ok()?;
        Some((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
    }

    /// Pins the calling thread to `cpu`; false if the OS refused.
    pub(super) fn pin_current_thread(cpu: usize) -> bool {
        if cpu >= CpuSet::MAX_CPU {
            return false;
        }
        let mut set = CpuSet::new();
        set.set(cpu);
        sched_setaffinity(None, &set).is_ok()
    }
}

#[cfg(not(target_os = "linux"))]
mod affinity {
    pub(super) fn allowed_cpus() -> Option<Vec<usize>> {
        None
    }

    pub(super) fn pin_current_thread(_cpu: usize) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_built_once_and_pins_one_worker_per_allowed_cpu() {
        let first = init();
        assert_eq!(init(), first, "a second call returns the first outcome");
        let threads = rayon::current_num_threads();
        match first {
            PoolSetup::Pinned { threads: n } | PoolSetup::Unpinned { threads: n } => {
                assert_eq!(n, threads)
            }
            PoolSetup::Foreign { .. } => return,
        }
        #[cfg(target_os = "linux")]
        {
            let cpus = affinity::allowed_cpus().expect("affinity readable");
            if threads == cpus.len() && pin_wanted() {
                assert!(matches!(first, PoolSetup::Pinned { .. }), "{first:?}");
            } else {
                assert!(matches!(first, PoolSetup::Unpinned { .. }), "{first:?}");
                return;
            }
            // Each worker reports the single CPU it is pinned to.
            let pinned: Vec<Vec<usize>> =
                rayon::broadcast(|_| affinity::allowed_cpus().unwrap_or_default());
            for (i, set) in pinned.iter().enumerate() {
                assert_eq!(set, &vec![cpus[i]], "worker {i}");
            }
        }
    }
}
