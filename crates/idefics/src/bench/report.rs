//! The parts of a benchmark report shared by `idefics bench` and `idefics bench-quant`: the machine, the build,
//! the time, the peak memory, medians, and writing the JSON file.

use super::inference::{failed, BenchError};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Python's `statistics.median` (mean of the two middle values for an even count); 0 for no values.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Peak resident set (VmHWM) in MiB; the same quantity as Python's `ru_maxrss`.
pub fn peak_rss_mb() -> f64 {
    crate::weights::peak_rss_bytes().map_or(0.0, |b| b as f64 / (1024.0 * 1024.0))
}

pub fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| {
            s.split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn machine_info() -> Map<String, Value> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| (kb / (1u64 << 20) as f64 * 10.0).round() / 10.0);
    let mut m = Map::new();
    m.insert("cpu".into(), json!(cpu));
    m.insert(
        "logical_cpus".into(),
        json!(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)),
    );
    m.insert("mem_total_gib".into(), json!(mem_gib));
    m.insert(
        "platform".into(),
        json!(format!(
            "{}-{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        )),
    );
    m.insert("loadavg_1_5_15_at_start".into(), json!(loadavg()));
    m
}

pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    }
}

/// Writes `value` as pretty JSON to `path`, creating its folder (every bench command's result file).
pub fn write_json(path: &Path, value: &Value) -> Result<(), BenchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed(format!("creating {}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(value)
        .map_err(failed(format!("writing {}", path.display())))?
        + "\n";
    std::fs::write(path, text).map_err(failed(format!("writing {}", path.display())))
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS+00:00` (no date crate needed: civil-from-days).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_matches_python_statistics() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn utc_now_is_iso_shaped() {
        let s = utc_now();
        assert_eq!(s.len(), 25, "{s}");
        assert!(s.starts_with("20"), "{s}");
        assert_eq!(&s[10..11], "T");
    }
}
