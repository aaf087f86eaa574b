//! NVML (`libnvidia-ml.so.1`, installed with NVIDIA's driver), opened at run time with
//! `libloading`: nothing of NVIDIA's is needed to build or run corral.
//!
//! Only the C API's stable entry points are used (`nvml.h`):
//! `nvmlInit_v2`, `nvmlShutdown`, `nvmlDeviceGetCount_v2`, `nvmlDeviceGetHandleByIndex_v2`,
//! `nvmlDeviceGetName`, `nvmlDeviceGetUUID`, `nvmlDeviceGetUtilizationRates`,
//! `nvmlDeviceGetMemoryInfo`, `nvmlDeviceGetTemperature`, `nvmlDeviceGetPowerUsage`,
//! `nvmlDeviceGetComputeRunningProcesses_v3`, `nvmlDeviceGetProcessUtilization`,
//! `nvmlErrorString`. The per-device ones are
//! optional: a driver without one gives null for what it reads, like a call that fails.
//!
//! **Invariant:** nothing the library returns can make corral panic or read out of
//! bounds: strings are read from our own zeroed buffers up to the first NUL or the end,
//! counts are clamped to the buffers we passed.

use corral_client::wire::{Gpu, GpuProcess};
use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};

/// The library's file name, as the driver installs it.
pub const LIBRARY: &str = "libnvidia-ml.so.1";

type Ret = c_int;
type Device = *mut c_void;

const SUCCESS: Ret = 0;
const ERROR_INSUFFICIENT_SIZE: Ret = 7;
/// `NVML_TEMPERATURE_GPU`: the GPU die.
const TEMPERATURE_GPU: c_uint = 0;
/// `NVML_DEVICE_NAME_V2_BUFFER_SIZE` and `NVML_DEVICE_UUID_V2_BUFFER_SIZE`.
const STRING_BUFFER: usize = 96;
/// `NVML_VALUE_NOT_AVAILABLE`: used memory the driver cannot say (e.g. under some
/// virtualisation or without the rights).
const VALUE_NOT_AVAILABLE: u64 = u64::MAX;
/// More devices or processes than this is not an answer to trust.
const MAX_DEVICES: u32 = 256;
const MAX_PROCESSES: u32 = 4096;

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

/// `nvmlMemory_t` (bytes).
#[repr(C)]
#[derive(Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlProcessInfo_t` as `nvmlDeviceGetComputeRunningProcesses_v3` fills it
/// (`nvmlProcessInfo_v2_t`).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// `nvmlProcessUtilizationSample_t`: one process's utilization over one sample period.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ProcessSample {
    pid: c_uint,
    time_stamp: c_ulonglong,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

type FnVoid = unsafe extern "C" fn() -> Ret;
type FnCount = unsafe extern "C" fn(*mut c_uint) -> Ret;
type FnHandle = unsafe extern "C" fn(c_uint, *mut Device) -> Ret;
type FnString = unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Ret;
type FnUtil = unsafe extern "C" fn(Device, *mut Utilization) -> Ret;
type FnMemory = unsafe extern "C" fn(Device, *mut Memory) -> Ret;
type FnTemp = unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> Ret;
type FnUint = unsafe extern "C" fn(Device, *mut c_uint) -> Ret;
type FnProcs = unsafe extern "C" fn(Device, *mut c_uint, *mut ProcessInfo) -> Ret;
type FnErr = unsafe extern "C" fn(Ret) -> *const c_char;
type FnProcUtil = unsafe extern "C" fn(Device, *mut ProcessSample, *mut c_uint, c_ulonglong) -> Ret;

/// The opened and initialised library. Shut down when dropped.
pub struct Nvml {
    shutdown: FnVoid,
    count: FnCount,
    handle: FnHandle,
    error_string: Option<FnErr>,
    name: Option<FnString>,
    uuid: Option<FnString>,
    utilization: Option<FnUtil>,
    memory: Option<FnMemory>,
    temperature: Option<FnTemp>,
    power: Option<FnUint>,
    processes: Option<FnProcs>,
    process_utilization: Option<FnProcUtil>,
    /// Keeps the code the pointers above point into loaded; dropped last.
    _lib: Library,
}

impl Nvml {
    /// Opens the library and initialises it. The error says what failed, for the
    /// "no NVIDIA GPU or driver found (…)" answer.
    pub fn open() -> Result<Nvml, String> {
        // SAFETY: loading a shared library runs its initialisers; libnvidia-ml is the
        // driver's own library, meant to be loaded into any process this way.
        let lib = unsafe { Library::new(LIBRARY) }
            .map_err(|e| format!("{LIBRARY} could not be loaded: {e}"))?;
        // SAFETY (every `sym` and `opt` below): each name is looked up with the exact
        // signature `nvml.h` declares for it, so calling through the pointer is sound;
        // the pointers are used only while `_lib` (kept in the same struct) is loaded.
        let init: FnVoid = unsafe { sym(&lib, b"nvmlInit_v2\0")? };
        let shutdown: FnVoid = unsafe { sym(&lib, b"nvmlShutdown\0")? };
        let count: FnCount = unsafe { sym(&lib, b"nvmlDeviceGetCount_v2\0")? };
        let handle: FnHandle = unsafe { sym(&lib, b"nvmlDeviceGetHandleByIndex_v2\0")? };
        let error_string: Option<FnErr> = unsafe { opt(&lib, b"nvmlErrorString\0") };
        // SAFETY: nvmlInit_v2 takes no arguments; it may be called from any thread.
        let r = unsafe { init() };
        if r != SUCCESS {
            return Err(format!(
                "NVML did not initialise: {}",
                describe(error_string, r)
            ));
        }
        // SAFETY: as above, exact signatures from nvml.h.
        unsafe {
            Ok(Nvml {
                shutdown,
                count,
                handle,
                error_string,
                name: opt(&lib, b"nvmlDeviceGetName\0"),
                uuid: opt(&lib, b"nvmlDeviceGetUUID\0"),
                utilization: opt(&lib, b"nvmlDeviceGetUtilizationRates\0"),
                memory: opt(&lib, b"nvmlDeviceGetMemoryInfo\0"),
                temperature: opt(&lib, b"nvmlDeviceGetTemperature\0"),
                power: opt(&lib, b"nvmlDeviceGetPowerUsage\0"),
                processes: opt(&lib, b"nvmlDeviceGetComputeRunningProcesses_v3\0"),
                process_utilization: opt(&lib, b"nvmlDeviceGetProcessUtilization\0"),
                _lib: lib,
            })
        }
    }

    /// Every GPU now. Only the device count failing is an error; anything else that
    /// fails for one GPU is a null field of that GPU (or a GPU left out, when even its
    /// handle cannot be had).
    pub fn read(&self) -> Result<Vec<Gpu>, String> {
        let mut n: c_uint = 0;
        // SAFETY: `n` is a valid, writable c_uint for the call's duration.
        let r = unsafe { (self.count)(&mut n) };
        if r != SUCCESS {
            return Err(format!(
                "NVML could not count the GPUs: {}",
                describe(self.error_string, r)
            ));
        }
        let mut gpus = Vec::new();
        for index in 0..n.min(MAX_DEVICES) {
            let mut dev: Device = std::ptr::null_mut();
            // SAFETY: `dev` is a valid out-pointer; index < the count NVML gave.
            if unsafe { (self.handle)(index, &mut dev) } != SUCCESS || dev.is_null() {
                continue;
            }
            gpus.push(self.gpu(index, dev));
        }
        Ok(gpus)
    }

    /// One GPU; `dev` is a handle NVML just gave.
    fn gpu(&self, index: u32, dev: Device) -> Gpu {
        let util = self.utilization.and_then(|f| {
            let mut u = Utilization::default();
            // SAFETY: `dev` is a live handle; `u` is a writable nvmlUtilization_t.
            (unsafe { f(dev, &mut u) } == SUCCESS).then_some(u)
        });
        let mem = self.memory.and_then(|f| {
            let mut m = Memory::default();
            // SAFETY: `dev` is a live handle; `m` is a writable nvmlMemory_t.
            (unsafe { f(dev, &mut m) } == SUCCESS).then_some(m)
        });
        let temperature_c = self.temperature.and_then(|f| {
            let mut t: c_uint = 0;
            // SAFETY: `dev` is a live handle; `t` is a writable c_uint.
            (unsafe { f(dev, TEMPERATURE_GPU, &mut t) } == SUCCESS).then_some(t)
        });
        let power_w = self.power.and_then(|f| {
            let mut mw: c_uint = 0;
            // SAFETY: `dev` is a live handle; `mw` is a writable c_uint.
            (unsafe { f(dev, &mut mw) } == SUCCESS).then(|| f64::from(mw) / 1000.0)
        });
        Gpu {
            index,
            name: self.name.and_then(|f| string(f, dev)),
            uuid: self.uuid.and_then(|f| string(f, dev)),
            utilization_pct: util.map(|u| u.gpu.min(100)),
            memory_used_bytes: mem.as_ref().map(|m| m.used),
            memory_total_bytes: mem.as_ref().map(|m| m.total),
            temperature_c,
            power_w,
            processes: {
                let mut ps = self
                    .processes
                    .map(|f| processes(f, dev))
                    .unwrap_or_default();
                if let Some(f) = self.process_utilization.filter(|_| !ps.is_empty()) {
                    let sm = latest_sm(&process_samples(f, dev));
                    for p in &mut ps {
                        p.sm_utilization_pct = sm.get(&p.pid).copied();
                    }
                }
                ps
            },
        }
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: balances the successful nvmlInit_v2 of `open`; the library is still
        // loaded (`_lib` drops after this).
        unsafe { (self.shutdown)() };
    }
}

/// A required symbol.
///
/// # Safety
/// `T` must be the symbol's true C signature.
unsafe fn sym<T: Copy>(lib: &Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: the caller guarantees `T`.
    unsafe { lib.get::<T>(name) }.map(|s| *s).map_err(|e| {
        format!(
            "{LIBRARY} lacks {}: {e}",
            String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name))
        )
    })
}

/// An optional symbol (older drivers lack some).
///
/// # Safety
/// `T` must be the symbol's true C signature.
unsafe fn opt<T: Copy>(lib: &Library, name: &[u8]) -> Option<T> {
    // SAFETY: the caller guarantees `T`.
    unsafe { lib.get::<T>(name) }.ok().map(|s| *s)
}

/// NVML's words for an error code, or the code.
fn describe(error_string: Option<FnErr>, r: Ret) -> String {
    let said = error_string.and_then(|f| {
        // SAFETY: nvmlErrorString takes any code and returns a pointer to a static
        // NUL-terminated string, or null.
        let p = unsafe { f(r) };
        // SAFETY: non-null, it points to NVML's static NUL-terminated string.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    });
    match said {
        Some(s) => format!("{s} (NVML error {r})"),
        None => format!("NVML error {r}"),
    }
}

/// A string NVML writes into a buffer we give it (name, UUID).
fn string(f: FnString, dev: Device) -> Option<String> {
    let mut buf = [0 as c_char; STRING_BUFFER];
    // SAFETY: `buf` is writable for STRING_BUFFER bytes, the length we pass.
    if unsafe { f(dev, buf.as_mut_ptr(), STRING_BUFFER as c_uint) } != SUCCESS {
        return None;
    }
    Some(c_text(&buf)).filter(|s| !s.is_empty())
}

/// Text up to the first NUL, or the whole buffer if the library wrote none.
fn c_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// The compute processes on `dev`; empty when they cannot be read.
fn processes(f: FnProcs, dev: Device) -> Vec<GpuProcess> {
    let mut cap: c_uint = 64;
    // The list can grow between the call that sizes it and the one that fills it.
    for _ in 0..4 {
        let mut buf = vec![ProcessInfo::default(); cap as usize];
        let mut n = cap;
        // SAFETY: `buf` holds `n` writable nvmlProcessInfo_t; NVML writes at most `n`.
        let r = unsafe { f(dev, &mut n, buf.as_mut_ptr()) };
        match r {
            SUCCESS => {
                buf.truncate((n as usize).min(cap as usize));
                return buf.iter().map(process).collect();
            }
            ERROR_INSUFFICIENT_SIZE if n > cap && n <= MAX_PROCESSES => cap = n + 16,
            ERROR_INSUFFICIENT_SIZE if cap < MAX_PROCESSES => cap = (cap * 4).min(MAX_PROCESSES),
            _ => return Vec::new(),
        }
    }
    Vec::new()
}

/// The driver's recent utilization samples of the processes on `dev` (the last few
/// seconds it keeps); empty when it keeps none or cannot say.
fn process_samples(f: FnProcUtil, dev: Device) -> Vec<ProcessSample> {
    let mut n: c_uint = 0;
    // SAFETY: a null buffer with a count of 0 asks only for the count; `n` is writable.
    let r = unsafe { f(dev, std::ptr::null_mut(), &mut n, 0) };
    if !(r == ERROR_INSUFFICIENT_SIZE || r == SUCCESS) || n == 0 {
        return Vec::new();
    }
    // Room for samples that arrive between the two calls.
    let cap = (n + 16).min(MAX_PROCESSES * 8);
    let mut buf = vec![ProcessSample::default(); cap as usize];
    let mut got = cap;
    // SAFETY: `buf` holds `got` writable samples; NVML writes at most `got`.
    if unsafe { f(dev, buf.as_mut_ptr(), &mut got, 0) } != SUCCESS {
        return Vec::new();
    }
    buf.truncate((got as usize).min(cap as usize));
    buf
}

/// Each process's SM utilization in its newest sample, at most 100.
fn latest_sm(samples: &[ProcessSample]) -> std::collections::HashMap<u32, u32> {
    let mut newest: std::collections::HashMap<u32, (u64, u32)> = Default::default();
    for s in samples {
        let e = newest.entry(s.pid).or_insert((s.time_stamp, s.sm_util));
        if s.time_stamp >= e.0 {
            *e = (s.time_stamp, s.sm_util);
        }
    }
    newest
        .into_iter()
        .map(|(pid, (_, sm))| (pid, sm.min(100)))
        .collect()
}

fn process(p: &ProcessInfo) -> GpuProcess {
    GpuProcess {
        pid: p.pid,
        used_memory_bytes: (p.used_gpu_memory != VALUE_NOT_AVAILABLE).then_some(p.used_gpu_memory),
        task: None,
        run_id: None,
        container: None,
        sm_utilization_pct: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_sample_has_the_c_layout_and_the_newest_counts() {
        // pid, 4 bytes of padding, timeStamp, smUtil, memUtil, encUtil, decUtil.
        assert_eq!(std::mem::size_of::<ProcessSample>(), 32);
        assert_eq!(std::mem::offset_of!(ProcessSample, time_stamp), 8);
        assert_eq!(std::mem::offset_of!(ProcessSample, sm_util), 16);
        assert_eq!(std::mem::offset_of!(ProcessSample, dec_util), 28);
        let s = |pid, time_stamp, sm_util| ProcessSample {
            pid,
            time_stamp,
            sm_util,
            ..Default::default()
        };
        let sm = latest_sm(&[s(7, 100, 40), s(7, 300, 55), s(7, 200, 99), s(9, 50, 250)]);
        assert_eq!(sm.get(&7), Some(&55));
        assert_eq!(sm.get(&9), Some(&100), "clamped");
        assert_eq!(sm.len(), 2);
    }

    #[test]
    fn process_info_has_the_c_layout() {
        // pid, 4 bytes of padding, usedGpuMemory, gpuInstanceId, computeInstanceId.
        assert_eq!(std::mem::size_of::<ProcessInfo>(), 24);
        assert_eq!(std::mem::offset_of!(ProcessInfo, used_gpu_memory), 8);
        assert_eq!(std::mem::offset_of!(ProcessInfo, compute_instance_id), 20);
        assert_eq!(std::mem::size_of::<Memory>(), 24);
        assert_eq!(std::mem::size_of::<Utilization>(), 8);
    }

    #[test]
    fn strings_end_at_nul_or_at_the_buffer() {
        let mut buf = [0 as c_char; 8];
        for (i, b) in b"H100\0xyz".iter().enumerate() {
            buf[i] = *b as c_char;
        }
        assert_eq!(c_text(&buf), "H100");
        let full = [b'A' as c_char; 8];
        assert_eq!(c_text(&full), "AAAAAAAA");
        assert_eq!(c_text(&[0xffu8 as c_char, 0]), "\u{fffd}");
    }

    #[test]
    fn unknown_used_memory_is_null() {
        let p = process(&ProcessInfo {
            pid: 7,
            used_gpu_memory: VALUE_NOT_AVAILABLE,
            ..Default::default()
        });
        assert_eq!((p.pid, p.used_memory_bytes), (7, None));
        let p = process(&ProcessInfo {
            pid: 8,
            used_gpu_memory: 1 << 30,
            ..Default::default()
        });
        assert_eq!(p.used_memory_bytes, Some(1 << 30));
    }

    // Stand-ins for the library's functions, with its exact signatures.

    /// Three samples of two processes; a null buffer asks for the count.
    unsafe extern "C" fn three_samples(
        _: Device,
        buf: *mut ProcessSample,
        n: *mut c_uint,
        _: c_ulonglong,
    ) -> Ret {
        const HAVE: c_uint = 3;
        // SAFETY: the caller passes `*n` writable slots (none with a null buffer), as
        // NVML's contract says.
        unsafe {
            if buf.is_null() || *n < HAVE {
                *n = HAVE;
                return ERROR_INSUFFICIENT_SIZE;
            }
            for (i, (pid, ts, sm)) in [(7, 1, 30), (7, 2, 45), (8, 1, 5)].into_iter().enumerate() {
                *buf.add(i) = ProcessSample {
                    pid,
                    time_stamp: ts,
                    sm_util: sm,
                    ..Default::default()
                };
            }
            *n = HAVE;
        }
        SUCCESS
    }

    /// A driver that keeps no samples.
    unsafe extern "C" fn no_samples(
        _: Device,
        _: *mut ProcessSample,
        _: *mut c_uint,
        _: c_ulonglong,
    ) -> Ret {
        6 // NVML_ERROR_NOT_FOUND
    }

    #[test]
    fn process_utilization_is_read_by_asking_the_count_first() {
        let dev: Device = std::ptr::null_mut();
        let sm = latest_sm(&process_samples(three_samples, dev));
        assert_eq!((sm.get(&7), sm.get(&8)), (Some(&45), Some(&5)));
        assert!(process_samples(no_samples, dev).is_empty());
    }

    /// 100 processes: too few slots is NVML_ERROR_INSUFFICIENT_SIZE with the count needed.
    unsafe extern "C" fn hundred(_: Device, n: *mut c_uint, buf: *mut ProcessInfo) -> Ret {
        const HAVE: c_uint = 100;
        // SAFETY: the caller passes `*n` writable slots, as NVML's contract says.
        unsafe {
            if *n < HAVE {
                *n = HAVE;
                return ERROR_INSUFFICIENT_SIZE;
            }
            for i in 0..HAVE {
                *buf.add(i as usize) = ProcessInfo {
                    pid: 1000 + i,
                    used_gpu_memory: 1 << 20,
                    ..Default::default()
                };
            }
            *n = HAVE;
        }
        SUCCESS
    }

    /// Claims more entries than the buffer it was given.
    unsafe extern "C" fn lies(_: Device, n: *mut c_uint, _: *mut ProcessInfo) -> Ret {
        // SAFETY: `n` is a valid pointer from the caller.
        unsafe { *n = u32::MAX };
        SUCCESS
    }

    /// Always NVML_ERROR_NOT_SUPPORTED.
    unsafe extern "C" fn unsupported(_: Device, _: *mut c_uint, _: *mut ProcessInfo) -> Ret {
        3
    }

    /// Fills the whole buffer with no NUL.
    unsafe extern "C" fn no_nul(_: Device, buf: *mut c_char, len: c_uint) -> Ret {
        // SAFETY: the caller passes `len` writable bytes.
        unsafe { std::ptr::write_bytes(buf, b'x', len as usize) };
        SUCCESS
    }

    #[test]
    fn the_process_list_grows_to_what_nvml_asks_and_trusts_no_count() {
        let dev = std::ptr::null_mut();
        let ps = processes(hundred, dev);
        assert_eq!(ps.len(), 100);
        assert_eq!(
            (ps[99].pid, ps[99].used_memory_bytes),
            (1099, Some(1 << 20))
        );
        assert_eq!(
            processes(lies, dev).len(),
            64,
            "clamped to the buffer passed"
        );
        assert!(processes(unsupported, dev).is_empty());
        assert_eq!(string(no_nul, dev).unwrap().len(), STRING_BUFFER);
    }

    #[test]
    fn a_missing_library_is_an_error_not_a_panic() {
        // Where the driver is installed this opens; elsewhere it says what is missing.
        match Nvml::open() {
            Ok(n) => assert!(n.read().is_ok()),
            Err(e) => assert!(e.contains(LIBRARY) || e.contains("NVML"), "{e}"),
        }
    }
}
