//! The stable-Rust fuzzing harness shared by the fuzz tests of every crate (cargo-fuzz needs nightly). A test
//! includes it with `#[path = "../../../tests/fuzz/harness.rs"] mod harness;` and installs its allocator:
//! `#[global_allocator] static GLOBAL: harness::CountingAlloc = harness::CountingAlloc;`.
//!
//! What it provides:
//! * [`Rng`], a deterministic xorshift64* generator, and three mutators: [`mutate_bytes`] (bit flips,
//!   interesting bytes, 16-bit field overwrites, chunk insert / delete / duplicate, truncation, splicing),
//!   [`mutate_text`] (the byte mutations plus insertion of dictionary tokens, kept valid UTF-8) and
//!   [`mutate_json`] (structural edits of a `serde_json::Value`: interesting numbers and strings, deleted and
//!   duplicated members, nodes grafted from other seeds).
//! * [`fuzz`], the loop: every seed as is, then mutants of random seeds until the budget is spent; each input
//!   runs under `catch_unwind`, timed in process CPU time (see [`cpu_time`]), with the peak of live heap bytes
//!   measured by [`CountingAlloc`]. A failure is a panic, a run over the hang bound, or a peak over the
//!   allocation bound; failing inputs are written to `$IDEFICS_FUZZ_OUT` (default: the system temp dir). A
//!   watchdog thread writes the running input and aborts the process when one input runs for
//!   `IDEFICS_FUZZ_ABORT_SECS` (default 120 s): a true hang (or deadlock) would otherwise never be reported.
//!
//! Budget: `IDEFICS_FUZZ_SECS` (seconds of mutants; unset = a short bounded pass for CI),
//! `IDEFICS_FUZZ_SEED` (the mutator's seed).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Counts live heap bytes and their peak, for the allocation bound.
pub struct CountingAlloc;

pub static LIVE: AtomicUsize = AtomicUsize::new(0);
pub static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Byte-level mutations of `input`; `donors` are other inputs to splice from.
pub fn mutate_bytes(rng: &mut Rng, donors: &[&[u8]], input: &[u8]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if d.is_empty() {
            d.push(0xFF);
        }
        let i = rng.below(d.len());
        match rng.below(9) {
            0 => d[i] ^= 1 << rng.below(8),
            1 => d[i] = [0, 0xFF, 0x7F, 0x80, 1, 0xD9, 0xDA, 0x10][rng.below(8)],
            2 => {
                let v: u16 = [0, 1, 0xFFFF, 0x7FFF, 0x8000, 65500, 8192, 3][rng.below(8)];
                if i + 2 <= d.len() {
                    d[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            3 => d.truncate(i.max(1)),
            4 => {
                let n = rng.below(64).min(d.len() - i);
                d.drain(i..i + n);
            }
            5 => {
                let n = rng.below(64).min(d.len() - i);
                let chunk = d[i..i + n].to_vec();
                let at = rng.below(d.len());
                d.splice(at..at, chunk);
            }
            6 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, bytes);
            }
            7 if !donors.is_empty() => {
                let other = donors[rng.below(donors.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    d.truncate(i);
                    d.extend_from_slice(&other[from..]);
                }
            }
            _ => {
                let v = rng.next().to_le_bytes();
                let n = rng.below(4) + 1;
                for (k, b) in v.iter().take(n).enumerate() {
                    if let Some(x) = d.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
        }
    }
    d
}

fn char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Text mutations: dictionary tokens inserted or replacing a span, spans copied from donors, or byte
/// mutations (the result made valid UTF-8 again).
pub fn mutate_text(rng: &mut Rng, donors: &[&str], dict: &[&str], input: &str) -> String {
    let mut s = input.to_string();
    for _ in 0..1 + rng.below(3) {
        let at = char_boundary(&s, rng.below(s.len() + 1));
        match rng.below(5) {
            0 | 1 if !dict.is_empty() => {
                let token = dict[rng.below(dict.len())];
                s.insert_str(at, token);
            }
            2 if !dict.is_empty() => {
                let end = char_boundary(&s, at + rng.below(16));
                s.replace_range(at..end.max(at), dict[rng.below(dict.len())]);
            }
            3 if !donors.is_empty() => {
                let donor = donors[rng.below(donors.len())];
                let from = char_boundary(donor, rng.below(donor.len() + 1));
                let to = char_boundary(donor, from + rng.below(200));
                s.insert_str(at, &donor[from..to.max(from)]);
            }
            _ => {
                let bytes = mutate_bytes(rng, &[], s.as_bytes());
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    s
}

/// Interesting JSON values: limits of the integer types, floats that overflow or underflow, empty and odd
/// strings, and every JSON type.
fn interesting_value(rng: &mut Rng) -> Value {
    use serde_json::json;
    match rng.below(28) {
        0 => json!(0),
        1 => json!(1),
        2 => json!(-1),
        3 => json!(2),
        4 => json!(3),
        5 => json!(255),
        6 => json!(65536),
        7 => json!(i32::MAX),
        8 => json!(1u64 << 31),
        9 => json!(1u64 << 32),
        10 => json!((1u64 << 53) + 1),
        11 => json!(u64::MAX),
        12 => json!(i64::MIN),
        13 => json!(1e308),
        14 => json!(-1e308),
        15 => json!(0.5),
        16 => json!(1e-45),
        17 => json!(-0.0),
        18 => json!(""),
        19 => json!("x"),
        20 => Value::String("a".repeat(1 + rng.below(4096))),
        21 => json!("\u{10FFFF}\u{0}\u{E000}<image>"),
        22 => Value::Null,
        23 => json!(true),
        24 => json!(false),
        25 => json!([]),
        26 => json!({}),
        _ => json!(1_000_000_000),
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `k`-th node of `v` in pre-order.
fn node_mut(v: &mut Value, k: &mut usize) -> Option<*mut Value> {
    if *k == 0 {
        return Some(v as *mut Value);
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|c| node_mut(c, k)),
        Value::Object(o) => o.values_mut().find_map(|c| node_mut(c, k)),
        _ => None,
    }
}

fn node_ref(v: &Value, k: &mut usize) -> Option<Value> {
    if *k == 0 {
        return Some(v.clone());
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter().find_map(|c| node_ref(c, k)),
        Value::Object(o) => o.values().find_map(|c| node_ref(c, k)),
        _ => None,
    }
}

fn random_node(rng: &mut Rng, v: &Value) -> Value {
    let mut k = rng.below(count_nodes(v));
    node_ref(v, &mut k).unwrap_or(Value::Null)
}

/// Structural mutations of a JSON document; `donors` are other documents to graft nodes and keys from, `dict`
/// tokens for string edits.
pub fn mutate_json(rng: &mut Rng, v: &mut Value, donors: &[&Value], dict: &[&str]) {
    for _ in 0..1 + rng.below(3) {
        let donor = if donors.is_empty() || rng.chance(3) {
            v.clone()
        } else {
            donors[rng.below(donors.len())].clone()
        };
        let mut k = rng.below(count_nodes(v));
        let Some(ptr) = node_mut(v, &mut k) else {
            continue;
        };
        // SAFETY: `ptr` points into `v`, which is not otherwise borrowed until this iteration ends.
        let node = unsafe { &mut *ptr };
        match rng.below(8) {
            0 | 1 => *node = interesting_value(rng),
            2 => *node = random_node(rng, &donor),
            3 => match node {
                Value::Number(n) => {
                    let x = n.as_f64().unwrap_or(0.0);
                    let int = n.as_i64();
                    *node = match int.filter(|_| rng.chance(2)) {
                        Some(i) => serde_json::json!(i.wrapping_add(rng.below(3) as i64 - 1)),
                        None => serde_json::json!(match rng.below(5) {
                            0 => x + 1.0,
                            1 => x - 1.0,
                            2 => x * 2.0,
                            3 => -x,
                            _ => (x as i64).wrapping_mul(1024) as f64,
                        }),
                    };
                }
                Value::String(s) => *s = mutate_text(rng, &[], dict, s),
                _ => *node = interesting_value(rng),
            },
            4 => match node {
                Value::Array(a) if !a.is_empty() => {
                    let i = rng.below(a.len());
                    a.remove(i);
                }
                Value::Object(o) if !o.is_empty() => {
                    let key = o
                        .keys()
                        .nth(rng.below(o.len()))
                        .cloned()
                        .unwrap_or_default();
                    o.remove(&key);
                }
                _ => *node = Value::Null,
            },
            5 => match node {
                Value::Array(a) if !a.is_empty() => {
                    let item = a[rng.below(a.len())].clone();
                    let copies = [1, 2, 16, 200][rng.below(4)];
                    for _ in 0..copies {
                        a.insert(rng.below(a.len() + 1), item.clone());
                    }
                }
                Value::Object(o) => {
                    // A key of the donor (or of this object), with a value grafted from the donor.
                    let keys = object_keys(&donor);
                    if !keys.is_empty() {
                        let key = keys[rng.below(keys.len())].clone();
                        o.insert(key, random_node(rng, &donor));
                    }
                }
                _ => *node = Value::Array(vec![node.clone()]),
            },
            6 => {
                // Wrap or unwrap: a value where an object / list was expected, and the reverse.
                *node = match std::mem::take(node) {
                    Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
                    Value::Object(o) if !o.is_empty() => o.into_iter().next().unwrap().1,
                    other => Value::Array(vec![other]),
                }
            }
            _ => {
                if let Value::String(s) = node {
                    *s = mutate_text(rng, &[], dict, s);
                } else {
                    *node = Value::String(node.to_string());
                }
            }
        }
    }
}

fn object_keys(v: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    fn walk(v: &Value, keys: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, c) in o {
                    keys.push(k.clone());
                    walk(c, keys);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, keys)),
            _ => {}
        }
    }
    walk(v, &mut keys);
    keys
}

/// The budget and bounds of one fuzz target.
pub struct Settings {
    /// Name used in messages and in the names of saved inputs.
    pub name: &'static str,
    /// Mutants run without `IDEFICS_FUZZ_SECS` (the CI pass); keep it to a few seconds.
    pub bounded_execs: u64,
    /// An input using more CPU time than this (all threads) is a failure.
    pub hang: Duration,
    /// Peak of live heap bytes one input may add.
    pub max_extra_bytes: usize,
    /// Default mutator seed (`IDEFICS_FUZZ_SEED` overrides it).
    pub default_seed: u64,
}

/// What a fuzz run saw.
#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub execs: u64,
    /// Inputs the target accepted (`run` returned `Ok(true)`), e.g. decoded images or loaded models.
    pub accepted: u64,
    pub panics: u64,
    /// Failures `run` reported itself (e.g. a panic it caught and turned into an error).
    pub reported: u64,
    pub hangs: u64,
    pub over_alloc: u64,
    pub slowest: Duration,
    pub seed: u64,
    pub secs: u64,
}

/// The message of the last panic on this thread (the default hook's output is silenced while fuzzing).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

thread_local! {
    /// True while a target runs an input: its panics are counted; others (the harness's own) are printed.
    static IN_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|s| s.parse().ok())
}

/// CPU time of the whole process (every thread), from /proc/self/stat (`utime` + `stime`, in clock ticks of
/// 10 ms). Inputs are timed with it rather than the wall clock: the machine is shared, and other jobs stop
/// niced processes while they take timings (a stopped run would otherwise count as a hang).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Starts the watchdog: if one input runs for `IDEFICS_FUZZ_ABORT_SECS` of the watchdog's own ticks (which stop
/// while the process is stopped), it is saved and the process aborts. `running` holds the number of the input
/// being run, 0 between inputs.
fn watchdog(
    name: &'static str,
    current: Arc<Mutex<Vec<u8>>>,
    running: Arc<AtomicU64>,
    out: PathBuf,
) {
    const TICK: Duration = Duration::from_millis(500);
    let limit = Duration::from_secs(env_u64("IDEFICS_FUZZ_ABORT_SECS").unwrap_or(120));
    std::thread::spawn(move || {
        let (mut seen, mut ticks) = (0u64, 0u32);
        loop {
            std::thread::sleep(TICK);
            let now = running.load(Ordering::Relaxed);
            if now == 0 || now != seen {
                (seen, ticks) = (now, 0);
                continue;
            }
            ticks += 1;
            if TICK * ticks >= limit {
                let path = out.join(format!("idefics-fuzz-{name}-hang.bin"));
                let bytes = current.lock().map(|b| b.clone()).unwrap_or_default();
                let _ = std::fs::write(&path, bytes);
                eprintln!(
                    "fuzz {name}: input {now} ran for {limit:?}; saved to {}; aborting",
                    path.display()
                );
                std::process::abort();
            }
        }
    });
}

/// Runs a fuzz target. `seeds` run first as they are; then `mutate(rng, parent)` makes inputs from randomly
/// chosen seeds until the budget is spent. `run(input)` returns `Ok(accepted)` or `Err(description)` for a
/// failure it detected itself; `to_bytes` gives the bytes saved for a failing input. Asserts that nothing
/// failed, and returns the statistics.
pub fn fuzz<I>(
    settings: &Settings,
    seeds: &[(String, I)],
    mut mutate: impl FnMut(&mut Rng, &I) -> I,
    mut run: impl FnMut(&I) -> Result<bool, String>,
    to_bytes: impl Fn(&I) -> Vec<u8>,
) -> Stats {
    assert!(!seeds.is_empty(), "{}: no seeds", settings.name);
    let secs = env_u64("IDEFICS_FUZZ_SECS").unwrap_or(0);
    let seed = env_u64("IDEFICS_FUZZ_SEED").unwrap_or(settings.default_seed);
    let out_dir = std::env::var_os("IDEFICS_FUZZ_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let current = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicU64::new(0));
    watchdog(
        settings.name,
        current.clone(),
        running.clone(),
        out_dir.clone(),
    );
    let origin = Instant::now();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if IN_RUN.with(|r| r.get()) {
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = info.to_string();
            }
        } else {
            eprintln!("{info}\n{}", std::backtrace::Backtrace::force_capture());
        }
    }));
    let mut stats = Stats {
        seed,
        secs,
        ..Stats::default()
    };
    let mut failures: Vec<String> = Vec::new();
    let mut rng = Rng(seed | 1);
    let deadline = origin + Duration::from_secs(secs);
    let mut one = |input: &I, label: &str, stats: &mut Stats| {
        if let Ok(mut c) = current.lock() {
            *c = to_bytes(input);
        }
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let start = Instant::now();
        let cpu_start = cpu_time();
        running.store(stats.execs + 1, Ordering::Relaxed);
        IN_RUN.with(|r| r.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| run(input)));
        IN_RUN.with(|r| r.set(false));
        running.store(0, Ordering::Relaxed);
        let took = match (cpu_start, cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => start.elapsed(),
        };
        let extra = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        stats.execs += 1;
        stats.slowest = stats.slowest.max(took);
        let mut failure = Vec::new();
        match outcome {
            Ok(Ok(true)) => stats.accepted += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                stats.reported += 1;
                failure.push(e);
            }
            Err(_) => {
                stats.panics += 1;
                let msg = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
                failure.push(format!("panicked: {msg}"));
            }
        }
        if took > settings.hang {
            stats.hangs += 1;
            failure.push(format!("took {took:?}"));
        }
        if extra > settings.max_extra_bytes {
            stats.over_alloc += 1;
            failure.push(format!(
                "peak {extra} bytes over the {} bound",
                settings.max_extra_bytes
            ));
        }
        if !failure.is_empty() {
            let path = out_dir.join(format!(
                "idefics-fuzz-{}-{seed}-{}.bin",
                settings.name, stats.execs
            ));
            let _ = std::fs::write(&path, to_bytes(input));
            failures.push(format!(
                "{} ({label}; saved to {})",
                failure.join("; "),
                path.display()
            ));
        }
    };
    for (name, input) in seeds {
        one(input, &format!("seed {name}"), &mut stats);
    }
    loop {
        let done = if secs > 0 {
            Instant::now() >= deadline
        } else {
            stats.execs >= seeds.len() as u64 + settings.bounded_execs
        };
        if done {
            break;
        }
        let parent = &seeds[rng.below(seeds.len())].1;
        let input = mutate(&mut rng, parent);
        one(&input, "mutant", &mut stats);
    }
    std::panic::set_hook(previous_hook);
    println!("fuzz {}: {stats:?}", settings.name);
    assert!(
        failures.is_empty(),
        "{}: {} failing inputs:\n{}",
        settings.name,
        failures.len(),
        failures.join("\n")
    );
    stats
}

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Files of `tests/fixtures/<sub>` (not directories), sorted by name, as `(name, bytes)`.
pub fn files_in(sub: &str, max_len: usize) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(fixtures().join(sub)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            (bytes.len() <= max_len).then(|| {
                (
                    format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()),
                    bytes,
                )
            })
        })
        .collect()
}
