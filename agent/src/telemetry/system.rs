//! The node's gauges for each telemetry window: CPU, memory, disk, load,
//! temperatures and accelerators.
//!
//! Read from Linux's `/proc` and `/sys` (no daemon, no library): CPU use from
//! the difference of two `/proc/stat` samples, memory from `/proc/meminfo`
//! (`MemTotal - MemAvailable`), the data volume from `statvfs`, load from
//! `/proc/loadavg`, temperatures from `/sys/class/thermal` and
//! `/sys/class/hwmon`, NVIDIA GPUs from `nvidia-smi` when it is on the PATH.
//! Anything unreadable is reported as zero or absent; sampling never fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_protocol::telemetry::{AcceleratorStats, SystemStats};

/// Most temperature sensors reported.
const MAX_SENSORS: usize = 32;
/// Longest `nvidia-smi` may take before its answer is ignored.
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(3);

/// Samples the node; keeps the previous CPU counters between calls.
#[derive(Debug)]
pub struct SystemSampler {
    proc_root: PathBuf,
    sys_root: PathBuf,
    data_dir: PathBuf,
    /// (busy, total) jiffies at the last sample.
    last_cpu: Option<(u64, u64)>,
    nvidia_smi: bool,
}

impl SystemSampler {
    /// A sampler for this machine; disk figures are for the volume holding
    /// `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        let nvidia_smi = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nvidia-smi").is_file()));
        let mut s = Self {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            data_dir: data_dir.to_owned(),
            last_cpu: None,
            nvidia_smi,
        };
        // Prime the CPU counters so the first window reports its own use.
        s.last_cpu = cpu_counters(&s.proc_root);
        s
    }

    /// The gauges now (blocking: reads files, may run `nvidia-smi`).
    pub fn sample(&mut self) -> SystemStats {
        let cpu = cpu_counters(&self.proc_root);
        let cpu_percent = match (self.last_cpu, cpu) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                (b1.saturating_sub(b0) as f64 / (t1 - t0) as f64 * 100.0).clamp(0.0, 100.0)
            }
            _ => 0.0,
        };
        self.last_cpu = cpu.or(self.last_cpu);
        let (memory_total_bytes, memory_used_bytes) =
            std::fs::read_to_string(self.proc_root.join("meminfo"))
                .ok()
                .map_or((0, 0), |t| memory(&t));
        let (disk_total_bytes, disk_used_bytes) = disk(&self.data_dir);
        let load1 = std::fs::read_to_string(self.proc_root.join("loadavg"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
            .filter(|l| l.is_finite())
            .unwrap_or(0.0);
        SystemStats {
            cpu_percent,
            memory_used_bytes,
            memory_total_bytes,
            disk_used_bytes,
            disk_total_bytes,
            load1,
            temperatures_c: temperatures(&self.sys_root),
            accelerators: if self.nvidia_smi {
                nvidia_smi()
            } else {
                Vec::new()
            },
        }
    }
}

/// (busy, total) jiffies over all CPUs from `/proc/stat`'s first line.
fn cpu_counters(proc_root: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    parse_cpu_line(text.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut words = line.split_whitespace();
    (words.next()? == "cpu").then_some(())?;
    let v: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (total, used) bytes from `/proc/meminfo`.
fn memory(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
        kb.checked_mul(1024)
    };
    let total = field("MemTotal:").unwrap_or(0);
    let available = field("MemAvailable:").unwrap_or(total);
    (total, total.saturating_sub(available))
}

/// (total, used) bytes of the volume holding `dir`.
fn disk(dir: &Path) -> (u64, u64) {
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let total = s.f_blocks.saturating_mul(s.f_frsize);
            let free = s.f_bfree.saturating_mul(s.f_frsize);
            (total, total.saturating_sub(free))
        }
        Err(_) => (0, 0),
    }
}

/// Degrees Celsius per sensor: thermal zones by type, hwmon inputs by chip
/// name and label.
fn temperatures(sys_root: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let read = |p: &Path| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let celsius = |p: &Path| {
        read(p)
            .and_then(|s| s.parse::<f64>().ok())
            .map(|m| m / 1000.0)
            .filter(|c| c.is_finite() && (-100.0..=300.0).contains(c))
    };
    for (i, zone) in sorted_dir(&sys_root.join("class/thermal"))
        .into_iter()
        .filter(|p| file_name(p).starts_with("thermal_zone"))
        .enumerate()
    {
        if let Some(c) = celsius(&zone.join("temp")) {
            let kind = read(&zone.join("type")).unwrap_or_else(|| format!("zone{i}"));
            out.insert(format!("{kind}/{}", file_name(&zone)), c);
        }
    }
    for chip in sorted_dir(&sys_root.join("class/hwmon")) {
        let name = read(&chip.join("name")).unwrap_or_else(|| file_name(&chip));
        for input in sorted_dir(&chip)
            .into_iter()
            .filter(|p| file_name(p).starts_with("temp") && file_name(p).ends_with("_input"))
        {
            if let Some(c) = celsius(&input) {
                let stem = file_name(&input).trim_end_matches("_input").to_owned();
                let label = read(&chip.join(format!("{stem}_label"))).unwrap_or(stem);
                out.insert(format!("{name}/{label}"), c);
            }
        }
    }
    while out.len() > MAX_SENSORS {
        out.pop_last();
    }
    out
}

fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|e| e.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// NVIDIA GPUs as `nvidia-smi` reports them; none when it fails or hangs.
fn nvidia_smi() -> Vec<AcceleratorStats> {
    let child = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,utilization.gpu,memory.used,memory.total,temperature.gpu",
            "--format=csv,noheader,nounits",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Vec::new();
    };
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < NVIDIA_SMI_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
    }
    parse_nvidia_smi(&text)
}

fn parse_nvidia_smi(text: &str) -> Vec<AcceleratorStats> {
    let mib = |s: &str| {
        s.trim()
            .parse::<u64>()
            .ok()
            .map(|m| m.saturating_mul(1 << 20))
    };
    let num = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let name = f.first()?.trim();
            (!name.is_empty()).then(|| AcceleratorStats {
                name: name.chars().take(128).collect(),
                utilization_percent: f.get(1).and_then(|s| num(s)),
                memory_used_bytes: f.get(2).and_then(|s| mib(s)),
                memory_total_bytes: f.get(3).and_then(|s| mib(s)),
                temperature_c: f.get(4).and_then(|s| num(s)),
            })
        })
        .take(16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_is_busy_over_total_jiffies() {
        assert_eq!(
            parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0"),
            Some((150, 1000))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4"), None);
        assert_eq!(parse_cpu_line("intr 1 2"), None);
    }

    #[test]
    fn memory_in_use_is_total_minus_available() {
        let text = "MemTotal:       2048 kB\nMemFree:         100 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(memory(text), (2048 * 1024, 1024 * 1024));
        assert_eq!(memory("garbage"), (0, 0));
    }

    #[test]
    fn fake_sysfs_sensors_are_read_in_celsius() {
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("type"), "x86_pkg_temp\n").unwrap();
        std::fs::write(zone.join("temp"), "45500\n").unwrap();
        let chip = dir.path().join("class/hwmon/hwmon1");
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(chip.join("name"), "nvme\n").unwrap();
        std::fs::write(chip.join("temp1_input"), "38000\n").unwrap();
        std::fs::write(chip.join("temp1_label"), "Composite\n").unwrap();
        std::fs::write(chip.join("temp2_input"), "garbage\n").unwrap();
        let t = temperatures(dir.path());
        assert_eq!(t.get("x86_pkg_temp/thermal_zone0"), Some(&45.5));
        assert_eq!(t.get("nvme/Composite"), Some(&38.0));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn nvidia_smi_lines_parse_and_na_fields_are_absent() {
        let a = parse_nvidia_smi(
            "NVIDIA H100 80GB HBM3, 37, 1024, 81559, 41\nTesla T4, [N/A], 0, 15360, [N/A]\n",
        );
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].utilization_percent, Some(37.0));
        assert_eq!(a[0].memory_used_bytes, Some(1024 << 20));
        assert_eq!(a[1].utilization_percent, None);
        assert_eq!(a[1].temperature_c, None);
    }

    #[test]
    fn this_machine_samples_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SystemSampler::new(dir.path());
        let x = s.sample();
        assert!(x.memory_total_bytes > 0);
        assert!(x.disk_total_bytes >= x.disk_used_bytes);
        assert!((0.0..=100.0).contains(&x.cpu_percent));
    }
}
