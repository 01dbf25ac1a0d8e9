//! What this node has to run models on, for the hello it sends the hub.
//!
//! Logical CPUs from the standard library, total memory from `/proc/meminfo`
//! and NVIDIA GPUs from the driver's `/proc/driver/nvidia/gpus/*/information`
//! files. Anything unreadable counts as absent (memory 0, no GPUs): an inventory
//! is advice for placement, never a reason for the agent to stop.
//!
//! It does not probe devices through CUDA or NVML (the driver's proc files need
//! no library), and reports no GPU memory (those files do not carry it; 0 means
//! unknown).

use std::path::Path;

use flotilla_protocol::manifest::Accelerator;
use flotilla_protocol::wire::{AcceleratorInfo, Inventory};
use flotilla_protocol::Limits;

/// This node's inventory.
pub fn inventory() -> Inventory {
    inventory_under(Path::new("/proc"))
}

/// The inventory with `/proc` at `proc_root` (tests point it at a fake tree).
fn inventory_under(proc_root: &Path) -> Inventory {
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let memory_bytes = std::fs::read_to_string(proc_root.join("meminfo"))
        .ok()
        .and_then(|text| mem_total_bytes(&text))
        .unwrap_or(0);
    let mut accelerators = nvidia_gpus(&proc_root.join("driver/nvidia/gpus"));
    // The hub rejects a hello with more than the limit; report the first ones.
    accelerators.truncate(Limits::default().max_accelerators);
    Inventory {
        cpus,
        memory_bytes,
        accelerators,
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let scale = match words.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(scale)
}

/// One entry per GPU dir under `gpus_dir` (sorted by PCI address), named by the
/// `Model:` line of its `information` file.
fn nvidia_gpus(gpus_dir: &Path) -> Vec<AcceleratorInfo> {
    let Ok(entries) = std::fs::read_dir(gpus_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("information")).ok())
        .map(|text| AcceleratorInfo {
            kind: Accelerator::Cuda,
            name: gpu_model(&text).unwrap_or_else(|| "NVIDIA GPU".to_owned()),
            memory_bytes: 0,
        })
        .collect()
}

/// The `Model:` value of a driver `information` file.
fn gpu_model(information: &str) -> Option<String> {
    let line = information.lines().find(|l| l.starts_with("Model:"))?;
    let name = line["Model:".len()..].trim();
    (!name.is_empty()).then(|| name.chars().take(128).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let text = "MemTotal:       24684092 kB\nMemFree:        22590952 kB\n";
        assert_eq!(mem_total_bytes(text), Some(24_684_092 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn nvidia_gpus_are_read_from_the_driver_proc_files() {
        let proc_root = tempfile::tempdir().unwrap();
        let gpus = proc_root.path().join("driver/nvidia/gpus");
        for (bus, model) in [
            ("0000:41:00.0", "NVIDIA H200"),
            ("0000:01:00.0", "NVIDIA A100"),
        ] {
            std::fs::create_dir_all(gpus.join(bus)).unwrap();
            let info = format!("Model: \t\t {model}\nIRQ:   88\nGPU UUID: GPU-1\n");
            std::fs::write(gpus.join(bus).join("information"), info).unwrap();
        }
        std::fs::write(proc_root.path().join("meminfo"), "MemTotal: 2 kB\n").unwrap();
        let inv = inventory_under(proc_root.path());
        let names: Vec<_> = inv.accelerators.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["NVIDIA A100", "NVIDIA H200"]);
        assert!(inv.accelerators.iter().all(|a| a.kind == Accelerator::Cuda));
        assert_eq!(inv.memory_bytes, 2048);
        assert!(inv.cpus >= 1);
    }

    #[test]
    fn a_node_without_proc_files_reports_no_memory_and_no_gpus() {
        let empty = tempfile::tempdir().unwrap();
        let inv = inventory_under(empty.path());
        assert_eq!(inv.memory_bytes, 0);
        assert!(inv.accelerators.is_empty());
        assert!(inv.cpus >= 1);
    }

    #[test]
    fn this_node_reports_at_least_one_cpu() {
        assert!(inventory().cpus >= 1);
    }
}
