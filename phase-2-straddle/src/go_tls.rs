//! Go crypto/tls probes: a Go program links its own TLS, so its plaintext is read at
//! `crypto/tls.(*Conn).Write` and `(*Conn).Read` in the target's executable (`bpf/go_tls.bpf.h`).
//! For each target process: the executable (`/proc/<pid>/exe`, a container's own included) is
//! read once per file; its symbol table (or, stripped, the Go runtime's own tables: `go_tables`)
//! gives the two functions and the itabs that tell a TCP or unix `net.Conn`, an x86 decoder the
//! functions' RET instructions (Go's stacks move, so no uretprobes), and its Go version where a
//! `crypto/tls.Conn` keeps its socket. Entry programs go on each function's first instruction,
//! the return program on each RET, for that process only. Versions whose layout is not known
//! here are refused, counted and said once per executable: their TLS links are seen as
//! ciphertext.

use crate::event::GoTlsLayout;
use crate::go_tables::{bytes_at, section_at, RuntimeTables};
use crate::tls::{load_programs, program};
use agent::targets::process_exists;
use anyhow::{bail, Context, Result};
use aya::maps::HashMap as BpfHashMap;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope};
use aya::Ebpf;
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// The functions probed, and the entry program of each; `go_tls_leave` takes every RET.
pub const FUNCTIONS: [(&str, &str); 2] = [
    ("crypto/tls.(*Conn).Write", "go_tls_write_enter"),
    ("crypto/tls.(*Conn).Read", "go_tls_read_enter"),
];
const RETURN_PROGRAM: &str = "go_tls_leave";
const LAYOUTS: &str = "go_tls_layouts";

/// Go minor versions (1.x) whose `crypto/tls.Conn` → socket layout is placed: from 1.17, the first
/// with the register ABI the programs read, to 1.25. Over these, `tls.Conn.conn` (a `net.Conn`
/// interface: itab word, data word) is the first field, `net.TCPConn`'s embedded `conn.fd` the
/// first, `netFD.pfd` the first and `poll.FD.Sysfd` follows its 16-byte `fdMutex` (checked in
/// the sources; tested on go1.19 and go1.23). The itabs are the executable's own (`inspect`).
const PLACED_MINORS: std::ops::RangeInclusive<u32> = 17..=25;
const LAYOUT: GoTlsLayout = GoTlsLayout {
    tcp_conn_itab: 0,
    unix_conn_itab: 0,
    conn: 0,
    conn_fd: 0,
    sysfd: 16,
};

/// The receivers whose `net.Conn` data is laid out as `LAYOUT` says, in `GoTlsLayout`'s order,
/// and the symbols of their itabs (`go.itab.` until Go 1.19, `go:itab.` since 1.20).
const CONN_RECEIVERS: [(&str, [&str; 2]); 2] = [
    (
        "net.(*TCPConn)",
        [
            "go.itab.*net.TCPConn,net.Conn",
            "go:itab.*net.TCPConn,net.Conn",
        ],
    ),
    (
        "net.(*UnixConn)",
        [
            "go.itab.*net.UnixConn,net.Conn",
            "go:itab.*net.UnixConn,net.Conn",
        ],
    ),
];
/// `net.Conn`'s methods, sorted by name as an itab's slots are.
const NET_CONN_METHODS: [&str; 8] = [
    "Close",
    "LocalAddr",
    "Read",
    "RemoteAddr",
    "SetDeadline",
    "SetReadDeadline",
    "SetWriteDeadline",
    "Write",
];

/// A probed function: where it starts and where it returns, as file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// What a Go executable with crypto/tls offers the probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTls {
    /// `runtime.buildVersion`, e.g. `go1.19.8`.
    pub version: String,
    /// `None`: a version (or architecture) whose layout is not placed here. Its itabs are
    /// link-time addresses (`attach` moves them where the process has them).
    pub layout: Option<GoTlsLayout>,
    /// A position-independent executable's link-time address of its program headers (its
    /// addresses move at load: `load_bias`); `None` for a fixed one.
    pub pie_headers: Option<u64>,
    /// (*Conn).Write and (*Conn).Read, in `FUNCTIONS`' order; none when not placed.
    pub functions: Vec<Function>,
}

/// Where the probes go, as link-time addresses: the functions in `FUNCTIONS`' order, the itabs
/// in `CONN_RECEIVERS`' (0: none in this executable).
struct Places {
    functions: Vec<Range<u64>>,
    itabs: [u64; 2],
}

/// Reads an executable: `None` when it has no Go crypto/tls (not Go, or Go without TLS). Its
/// symbol table says where the probes go; without one (stripped), the Go runtime's own tables.
pub fn inspect(path: &Path) -> Result<Option<GoTls>> {
    let mapped = Mapped::open(path).with_context(|| format!("mapping {}", path.display()))?;
    inspect_elf(mapped.bytes())
}

/// `inspect` on an executable's bytes.
pub fn inspect_elf(bytes: &[u8]) -> Result<Option<GoTls>> {
    let file = object::File::parse(bytes).context("parsing the ELF")?;
    let found = if file.symbols().next().is_some() {
        from_symbol_table(&file)?
    } else {
        from_runtime_tables(&file, bytes)?
    };
    let Some((version, places)) = found else {
        return Ok(None);
    };
    let (layout, functions) = match places {
        Some(places) => (
            Some(GoTlsLayout {
                tcp_conn_itab: places.itabs[0],
                unix_conn_itab: places.itabs[1],
                ..LAYOUT
            }),
            (FUNCTIONS.iter().zip(places.functions))
                .map(|((name, _), f)| function(&file, f).with_context(|| format!("reading {name}")))
                .collect::<Result<_>>()?,
        ),
        None => (None, Vec::new()),
    };
    Ok(Some(GoTls {
        layout,
        pie_headers: (file.kind() == object::ObjectKind::Dynamic)
            .then(|| program_headers(&file, bytes))
            .flatten(),
        version,
        functions,
    }))
}

/// Whether the probes can be placed in this executable of that Go version.
fn placed(file: &object::File, version: &str) -> bool {
    layout_of(version).is_some() && file.architecture() == object::Architecture::X86_64
}

/// The version, and the places where it is placed, from the symbol table.
fn from_symbol_table(file: &object::File) -> Result<Option<(String, Option<Places>)>> {
    let wanted = |name: &str| {
        name == "runtime.buildVersion"
            || FUNCTIONS.iter().any(|(function, _)| *function == name)
            || CONN_RECEIVERS.iter().any(|(_, itab)| itab.contains(&name))
    };
    let symbols: HashMap<&str, object::Symbol> = file
        .symbols()
        .filter_map(|s| Some((s.name().ok().filter(|n| wanted(n))?, s)))
        .collect();
    if !FUNCTIONS.iter().any(|(f, _)| symbols.contains_key(f)) {
        return Ok(None);
    }
    let version = symbols
        .get("runtime.buildVersion")
        .context("crypto/tls without runtime.buildVersion")
        .and_then(|s| build_version(file, s.address()))?;
    if !placed(file, &version) {
        return Ok(Some((version, None)));
    }
    let functions = FUNCTIONS
        .iter()
        .map(|(name, _)| {
            let s = symbols
                .get(name)
                .with_context(|| format!("{name} missing from the symbol table"))?;
            Ok(s.address()..s.address() + s.size())
        })
        .collect::<Result<_>>()?;
    let itabs = CONN_RECEIVERS.map(|(_, names)| {
        names
            .iter()
            .find_map(|n| symbols.get(n))
            .map_or(0, |s| s.address())
    });
    Ok(Some((version, Some(Places { functions, itabs }))))
}

/// The version (`.go.buildinfo`), and the places where it is placed (`go_tables`), of an
/// executable stripped of its symbol table.
fn from_runtime_tables(
    file: &object::File,
    bytes: &[u8],
) -> Result<Option<(String, Option<Places>)>> {
    // A cheap test first, most targets not being Go: crypto/tls's name in the function table.
    let name = format!("{}\0", FUNCTIONS[0].0);
    if memchr::memmem::find(bytes, name.as_bytes()).is_none() {
        return Ok(None);
    }
    let version = build_info_version(file).unwrap_or_else(|| "an unknown Go version".into());
    if !placed(file, &version) {
        return Ok(Some((version, None)));
    }
    let methods: HashSet<String> = CONN_RECEIVERS
        .iter()
        .flat_map(|(receiver, _)| NET_CONN_METHODS.map(|m| format!("{receiver}.{m}")))
        .collect();
    let tables = RuntimeTables::read(file, |name| {
        FUNCTIONS.iter().any(|(f, _)| *f == name) || methods.contains(name)
    })?;
    let functions = FUNCTIONS
        .iter()
        .map(|(name, _)| {
            tables
                .function(name)
                .with_context(|| format!("{name} missing from the pclntab"))
        })
        .collect::<Result<_>>()?;
    let mut itabs = [0; 2];
    for (itab, (receiver, _)) in itabs.iter_mut().zip(CONN_RECEIVERS) {
        *itab = tables.itab(receiver, &NET_CONN_METHODS)?.unwrap_or(0);
    }
    Ok(Some((version, Some(Places { functions, itabs }))))
}

/// The version in `.go.buildinfo` as Go 1.18 on write it: after its 32-byte header, a varint
/// length and the string.
fn build_info_version(file: &object::File) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    const INLINE_STRINGS: u8 = 2;
    let data = file.section_by_name(".go.buildinfo")?.data().ok()?;
    if !data.starts_with(MAGIC) || data.get(15)? & INLINE_STRINGS == 0 {
        return None;
    }
    let (mut len, mut at) = (0usize, 32);
    for shift in (0..).step_by(7).take(4) {
        let b = *data.get(at)?;
        at += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    Some(String::from_utf8_lossy(data.get(at..at.checked_add(len)?)?).into_owned())
}

/// A file mapped read-only. An executable is read through a mapping, not read(): the tracer scans
/// the read()s of its targets, and the agent may be one (its tests are): tens of MB of its own
/// executable would pass through its scan. A running executable cannot be written (ETXTBSY), so
/// the mapping does not shrink under the parser.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())?;
        if len == 0 {
            bail!("empty file");
        }
        // SAFETY: a new private read-only mapping of an open file, unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The layout of a Go version, if placed (`PLACED_MINORS`).
pub fn layout_of(version: &str) -> Option<GoTlsLayout> {
    let rest = version.strip_prefix("go1.")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let minor: u32 = rest[..digits].parse().ok()?;
    PLACED_MINORS.contains(&minor).then_some(LAYOUT)
}

/// `runtime.buildVersion`: a Go string header (pointer, length) pointing at the version.
fn build_version(file: &object::File, address: u64) -> Result<String> {
    let header = bytes_at(file, address)?;
    let word = |i: usize| -> Result<u64> {
        let b = header.get(i * 8..i * 8 + 8).context("string header cut")?;
        Ok(u64::from_le_bytes(b.try_into()?))
    };
    let (ptr, len) = (word(0)?, word(1)? as usize);
    let text = bytes_at(file, ptr)?
        .get(..len)
        .context("version string cut")?;
    Ok(String::from_utf8_lossy(text).into_owned())
}

/// A function's entry and RET instructions, as file offsets.
fn function(file: &object::File, range: Range<u64>) -> Result<Function> {
    let section = section_at(file, range.start)?;
    let (file_offset, _) = section.file_range().context("section not in the file")?;
    let start = usize::try_from(range.start - section.address())?;
    let len = usize::try_from(
        range
            .end
            .checked_sub(range.start)
            .context("ends before it starts")?,
    )?;
    let code = section
        .data()?
        .get(start..start.saturating_add(len))
        .context("function past its section")?;
    let to_file = |address: u64| address - section.address() + file_offset;
    let returns: Vec<u64> = ret_addresses(code, range.start)
        .into_iter()
        .map(to_file)
        .collect();
    if returns.is_empty() {
        bail!("no RET instruction found");
    }
    Ok(Function {
        entry: to_file(range.start),
        returns,
    })
}

/// The addresses of the RET instructions in `code` (x86-64, loaded at `address`).
pub fn ret_addresses(code: &[u8], address: u64) -> Vec<u64> {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .filter(|i| i.mnemonic() == Mnemonic::Ret)
        .map(|i| i.ip())
        .collect()
}

/// Which target processes have the probes, and what was found in their executables.
#[derive(Default)]
pub struct GoTlsProbes {
    enabled: bool,
    attached: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// Targets looked at (probed or not): not looked at again while they live.
    looked: HashSet<u32>,
    /// Executables read, by (device, inode): what they hold.
    executables: HashMap<(u64, u64), Option<Arc<GoTls>>>,
    /// Processes probed so far, those that exited since included.
    probed: usize,
    /// Go processes with crypto/tls whose version is not placed (counted once each).
    unplaced: usize,
    /// Go processes whose probes could not be attached.
    failed: usize,
}

impl GoTlsProbes {
    /// Loads the programs; with `enabled` false nothing is loaded or attached.
    pub fn load(ebpf: &mut Ebpf, enabled: bool) -> Result<Self> {
        if enabled {
            load_programs(ebpf, &FUNCTIONS, RETURN_PROGRAM)?;
        }
        Ok(Self {
            enabled,
            ..Default::default()
        })
    }

    /// Probes each new target that runs a Go executable with crypto/tls.
    pub fn add(&mut self, ebpf: &mut Ebpf, pids: &[u32]) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        for &pid in pids {
            if !self.looked.insert(pid) {
                continue;
            }
            let Some(go) = self.executable_of(pid) else {
                continue;
            };
            let Some(layout) = go.layout else {
                self.unplaced += 1;
                continue;
            };
            match attach(ebpf, pid, &go, layout) {
                Ok(links) => {
                    self.attached.insert(pid, links);
                    self.probed += 1;
                }
                Err(e) => {
                    if self.failed == 0 {
                        tracing::warn!(
                            "Go TLS links of some targets are not seen: pid {pid} ({}): {e:#}",
                            go.version
                        );
                    }
                    self.failed += 1;
                }
            }
        }
        Ok(())
    }

    /// What the executable of `pid` holds, read once per file; said once when it cannot be
    /// read or its Go version is not placed.
    fn executable_of(&mut self, pid: u32) -> Option<Arc<GoTls>> {
        let exe = format!("/proc/{pid}/exe");
        let meta = std::fs::metadata(&exe).ok()?;
        let key = (meta.dev(), meta.ino());
        if let Some(known) = self.executables.get(&key) {
            return known.clone();
        }
        let go = match inspect(Path::new(&exe)) {
            Ok(go) => go.map(Arc::new),
            Err(e) => {
                tracing::warn!(
                    "Go TLS: the executable of pid {pid} cannot be read ({e:#}): not probed"
                );
                None
            }
        };
        if let Some(g) = go.as_ref().filter(|g| g.layout.is_none()) {
            tracing::warn!(
                "Go TLS: pid {pid} runs {} (crypto/tls), whose Conn layout is not known here (placed: go1.{}–go1.{} on amd64, stripped from go1.18): its TLS links are seen as ciphertext",
                g.version,
                PLACED_MINORS.start(),
                PLACED_MINORS.end()
            );
        }
        self.executables.insert(key, go.clone());
        go
    }

    /// Detaches from processes that exited, and forgets them.
    pub fn refresh(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.looked.retain(|&pid| process_exists(pid));
        let gone: Vec<u32> = self
            .attached
            .keys()
            .copied()
            .filter(|&p| !process_exists(p))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut layouts: BpfHashMap<_, u32, GoTlsLayout> = BpfHashMap::try_from(
            ebpf.map_mut(LAYOUTS)
                .context("map go_tls_layouts missing")?,
        )?;
        for &pid in &gone {
            let _ = layouts.remove(&pid);
        }
        let mut links = Vec::new();
        for pid in gone {
            for (name, link) in self.attached.remove(&pid).unwrap_or_default() {
                links.extend(program(ebpf, name).and_then(|p| Ok(p.take_link(link)?)));
            }
        }
        // Closing a uprobe's perf event waits for an RCU grace period: not on the tracing loop.
        std::thread::spawn(move || drop(links));
        Ok(())
    }

    /// Target processes probed, those that exited since included.
    pub fn probed(&self) -> usize {
        self.probed
    }

    /// Go processes with crypto/tls whose version is not placed.
    pub fn unplaced(&self) -> usize {
        self.unplaced
    }

    /// Go processes whose probes could not be attached.
    pub fn failures(&self) -> usize {
        self.failed
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

/// The process's layout, then its probes: all of them or none (a lone entry keeps calls that
/// never return, a lone RET sees none).
fn attach(
    ebpf: &mut Ebpf,
    pid: u32,
    go: &GoTls,
    layout: GoTlsLayout,
) -> Result<Vec<(&'static str, UProbeLinkId)>> {
    let bias = match go.pie_headers {
        Some(headers) => load_bias(pid, headers)?,
        None => 0,
    };
    let moved = |itab: u64| if itab == 0 { 0 } else { itab + bias };
    let layout = GoTlsLayout {
        tcp_conn_itab: moved(layout.tcp_conn_itab),
        unix_conn_itab: moved(layout.unix_conn_itab),
        ..layout
    };
    let mut layouts: BpfHashMap<_, u32, GoTlsLayout> = BpfHashMap::try_from(
        ebpf.map_mut(LAYOUTS)
            .context("map go_tls_layouts missing")?,
    )?;
    layouts.insert(pid, layout, 0)?;
    // The executable as the process sees it: the kernel follows the link to its inode.
    let exe = format!("/proc/{pid}/exe");
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
    let mut links = Vec::new();
    let points = FUNCTIONS
        .iter()
        .zip(&go.functions)
        .flat_map(|((name, entry), f)| {
            std::iter::once((*name, *entry, f.entry)).chain(
                f.returns
                    .iter()
                    .map(move |&ret| (*name, RETURN_PROGRAM, ret)),
            )
        });
    for (function, program_name, offset) in points {
        let attached = program(ebpf, program_name).and_then(|p| {
            Ok(p.attach(UProbeAttachLocation::AbsoluteOffset(offset), &exe, scope)?)
        });
        match attached {
            Ok(link) => links.push((program_name, link)),
            Err(e) => {
                for (name, link) in links {
                    let _ = program(ebpf, name).and_then(|p| Ok(p.detach(link)?));
                }
                return Err(e.context(format!(
                    "attaching {program_name} to {function} at {offset:#x}"
                )));
            }
        }
    }
    Ok(links)
}

/// The link-time address of an ELF's program headers: they sit `e_phoff` bytes into the segment
/// loaded from the file's first byte.
fn program_headers(file: &object::File, bytes: &[u8]) -> Option<u64> {
    let e_phoff = u64::from_le_bytes(bytes.get(32..40)?.try_into().ok()?);
    let first = file.segments().find(|s| s.file_range().0 == 0)?;
    Some(first.address() + e_phoff)
}

/// How far a position-independent executable was moved at load: where the kernel says its
/// program headers are (AT_PHDR in /proc/<pid>/auxv) less where it was linked to have them. Not
/// from /proc/<pid>/maps: on overlayfs (containers) its inodes are not the executable's.
fn load_bias(pid: u32, headers: u64) -> Result<u64> {
    const AT_PHDR: u64 = 3;
    let auxv = procfs::process::Process::new(i32::try_from(pid)?)?.auxv()?;
    let at = *auxv
        .get(&AT_PHDR)
        .context("no AT_PHDR in /proc/<pid>/auxv")?;
    at.checked_sub(headers)
        .context("program headers below their link-time address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_placed_from_1_17_to_1_25() {
        assert_eq!(layout_of("go1.19.8"), Some(LAYOUT));
        assert_eq!(layout_of("go1.17"), Some(LAYOUT));
        assert_eq!(layout_of("go1.25rc1"), Some(LAYOUT));
        for unplaced in ["go1.16.15", "go1.26.0", "devel go1.24-abc", "go2.0", ""] {
            assert_eq!(layout_of(unplaced), None, "{unplaced}");
        }
    }

    /// A Go TLS executable built by each Go toolchain setup.sh installs, fixed and
    /// position-independent: the runtime's tables place the probes where its symbol table does
    /// (both read from the same file), and stripped of both (`-ldflags=-s -w`) it is placed as
    /// unstripped, version included. A missing toolchain fails under CI and is skipped elsewhere.
    #[test]
    fn a_stripped_executable_is_placed_from_its_runtime_tables_as_from_its_symbols() {
        let dir = std::env::temp_dir().join(format!("go-tls-stripped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        for go in ["go", "/usr/lib/go-1.23/bin/go"] {
            let version = std::process::Command::new(go)
                .args(["env", "GOVERSION"])
                .env("GOTOOLCHAIN", "local")
                .output();
            let Ok(version) = version else {
                assert!(!ci, "{go} is not installed: run `bash scripts/setup.sh`");
                eprintln!("{go} is not installed: skipped");
                continue;
            };
            let version = String::from_utf8(version.stdout)
                .unwrap()
                .trim()
                .to_string();
            for mode in ["exe", "pie"] {
                let build = |flags: &str| {
                    let out = dir.join(format!("relay-{mode}{flags}"));
                    let built = harness::run::go_relay_build(go, mode, flags, &out)
                        .status()
                        .unwrap();
                    assert!(built.success(), "{go} build: {built}");
                    out
                };
                let (full, stripped) = (build(""), build("-s -w"));
                let bytes = std::fs::read(&full).unwrap();
                let file = object::File::parse(&*bytes).unwrap();
                let (_, symbols) = from_symbol_table(&file).unwrap().unwrap();
                let (_, tables) = from_runtime_tables(&file, &bytes).unwrap().unwrap();
                let (symbols, tables) = (symbols.unwrap(), tables.unwrap());
                assert_eq!(symbols.itabs, tables.itabs, "{go} -buildmode {mode}");
                assert_ne!(symbols.itabs[0], 0, "the TCP itab is found");
                for (s, t) in symbols.functions.into_iter().zip(tables.functions) {
                    assert_eq!(s.start, t.start, "{go} -buildmode {mode}");
                    assert_eq!(function(&file, s).unwrap(), function(&file, t).unwrap());
                }
                let full = inspect(&full).unwrap().expect("crypto/tls is linked");
                let stripped = inspect(&stripped).unwrap().expect("crypto/tls is linked");
                assert_eq!(stripped.version, version, "{go} -buildmode {mode}");
                assert!(stripped.layout.is_some());
                assert_eq!(stripped, full, "{go} -buildmode {mode}");
            }
        }
        // Not Go: no Go TLS, with a symbol table or without.
        assert_eq!(inspect(Path::new("/bin/true")).unwrap(), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_ret_is_found_by_decoding_not_by_its_byte() {
        // mov eax, 0xc3 (b8 c3 00 00 00); ret (c3); int3 (cc); ret imm16 (c2 08 00)
        let code = [0xb8, 0xc3, 0, 0, 0, 0xc3, 0xcc, 0xc2, 8, 0];
        assert_eq!(ret_addresses(&code, 0x1000), [0x1005, 0x1007]);
    }
}
