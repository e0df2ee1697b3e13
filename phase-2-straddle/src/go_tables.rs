//! What a Go executable says about itself without a symbol table. Stripping (`-ldflags=-s`,
//! GNU `strip`) removes `.symtab`, but not the tables the Go runtime needs to run: its function
//! table (pclntab: every function's entry and name, for tracebacks) and its list of itabs
//! (`itablink`: every interface table the linker laid out, for interface conversions). Go 1.18's
//! pclntab layout and later (header magic 0xfffffff0 and 0xfffffff1), 64-bit little-endian.
//! Values are read as the file holds them: Go's linker writes a position-independent
//! executable's link-time addresses into the file as well as into its relocations.

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection};
use std::collections::HashMap;
use std::ops::Range;

/// pcHeader.magic of Go 1.18–1.19 and of Go 1.20 on.
const PCLNTAB_MAGICS: [u32; 2] = [0xffff_fff0, 0xffff_fff1];
/// Where a dead-code-eliminated method's itab slot points.
const UNREACHABLE_METHOD: &str = "runtime.unreachableMethod";
/// `abi.InterfaceType.Methods`'s length, after its `abi.Type` (48 bytes), `PkgPath` and the
/// slice's data pointer.
const INTERFACE_METHODS_LEN: u64 = 64;
/// `abi.ITab.Fun`, after `Inter`, `Type`, `Hash` and padding.
const ITAB_FUN: u64 = 24;

/// A Go executable's runtime tables.
pub struct RuntimeTables<'a, 'f> {
    file: &'f object::File<'a>,
    /// Each function's address range, for the names asked for.
    functions: HashMap<String, Range<u64>>,
}

impl<'a, 'f> RuntimeTables<'a, 'f> {
    /// Reads the function table, keeping the functions `wanted` names (`itab` needs the
    /// receiver's methods among them).
    pub fn read(file: &'f object::File<'a>, wanted: impl Fn(&str) -> bool) -> Result<Self> {
        let section = section(file, "gopclntab")?;
        let table = section.data()?;
        // Offsets come from the file: checked, a malformed table is an error.
        let field = |at: usize, len: usize| -> Result<&[u8]> {
            table
                .get(at..at.checked_add(len).context("pclntab offset overflows")?)
                .context("pclntab cut")
        };
        let u32_at =
            |at: usize| -> Result<u32> { Ok(u32::from_le_bytes(field(at, 4)?.try_into()?)) };
        let word_at = |at: usize| -> Result<usize> {
            Ok(usize::try_from(u64::from_le_bytes(
                field(at, 8)?.try_into()?,
            ))?)
        };
        let add = |a: usize, b: usize| a.checked_add(b).context("pclntab offset overflows");
        let magic = u32_at(0)?;
        if !PCLNTAB_MAGICS.contains(&magic) || table.get(7) != Some(&8) {
            bail!("a pclntab this agent cannot read (magic {magic:#x}: Go 1.18 or later, 64-bit)");
        }
        // pcHeader: magic, pads, minLC, ptrSize, then nfunc, nfiles, textStart, funcnameOffset,
        // cuOffset, filetabOffset, pctabOffset, pclnOffset (one word each).
        let nfunc = word_at(8)?;
        let text_start = word_at(24)? as u64;
        let (names, pcln) = (word_at(32)?, word_at(64)?);
        let mut functions = HashMap::new();
        // ftab: nfunc + 1 (entry offset, _func offset) pairs, sorted, the last the text's end.
        for i in 0..nfunc {
            let pair = add(pcln, i.checked_mul(8).context("pclntab offset overflows")?)?;
            let entry = u64::from(u32_at(pair)?);
            let next = u64::from(u32_at(add(pair, 8)?)?);
            // _func: entryOff, then nameOff into the name table.
            let func = add(pcln, usize::try_from(u32_at(add(pair, 4)?)?)?)?;
            let name_at = add(names, usize::try_from(u32_at(add(func, 4)?)?)?)?;
            let name = table
                .get(name_at..)
                .context("function name past the pclntab")?;
            let name = &name[..memchr::memchr(0, name).context("function name unterminated")?];
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if wanted(name) || name == UNREACHABLE_METHOD {
                let at = |offset: u64| text_start.checked_add(offset).context("text past 2^64");
                functions.insert(name.to_string(), at(entry)?..at(next)?);
            }
        }
        Ok(Self { file, functions })
    }

    /// A function's address range.
    pub fn function(&self, name: &str) -> Option<Range<u64>> {
        self.functions.get(name).cloned()
    }

    /// The link-time address of the itab of `receiver` (`net.(*TCPConn)`) as the interface whose
    /// methods, sorted by name, are `methods`: the one itab in `itablink` of an interface with
    /// that many methods whose slots hold the receiver's methods, or the runtime's placeholder
    /// for those the linker found unused (at least one real). `None` when the executable never
    /// converts the receiver to that interface statically.
    pub fn itab(&self, receiver: &str, methods: &[&str]) -> Result<Option<u64>> {
        let unreachable = self.function(UNREACHABLE_METHOD).map(|r| r.start);
        let wanted: Vec<Option<u64>> = methods
            .iter()
            .map(|m| self.function(&format!("{receiver}.{m}")).map(|r| r.start))
            .collect();
        if wanted.iter().all(Option::is_none) {
            return Ok(None);
        }
        let links = section(self.file, "itablink")?.data()?;
        let mut found = None;
        for link in links.chunks_exact(8) {
            let itab = u64::from_le_bytes(link.try_into()?);
            let interface = self.word(itab)?;
            if self.word(interface.wrapping_add(INTERFACE_METHODS_LEN))? != methods.len() as u64 {
                continue;
            }
            let slots = (0..methods.len() as u64)
                .map(|i| self.word(itab.wrapping_add(ITAB_FUN + i * 8)))
                .collect::<Result<Vec<u64>>>()?;
            let fits = slots
                .iter()
                .zip(&wanted)
                .all(|(&slot, w)| Some(slot) == *w || Some(slot) == unreachable);
            let ours = slots.iter().zip(&wanted).any(|(&slot, w)| Some(slot) == *w);
            if fits && ours {
                if found.is_some() {
                    bail!("two itabs of {receiver} fit the interface");
                }
                found = Some(itab);
            }
        }
        Ok(found)
    }

    /// The 64-bit word at a link-time address.
    fn word(&self, address: u64) -> Result<u64> {
        let b = bytes_at(self.file, address)?
            .get(..8)
            .context("word past its section")?;
        Ok(u64::from_le_bytes(b.try_into()?))
    }
}

/// A runtime table's section: `.name` in a fixed executable, `.data.rel.ro.name` in a
/// position-independent one.
fn section<'a, 'f>(file: &'f object::File<'a>, name: &str) -> Result<object::Section<'a, 'f>> {
    file.section_by_name(&format!(".{name}"))
        .or_else(|| file.section_by_name(&format!(".data.rel.ro.{name}")))
        .with_context(|| format!("no .{name} section"))
}

/// The section holding a link-time address.
pub fn section_at<'a, 'f>(
    file: &'f object::File<'a>,
    address: u64,
) -> Result<object::Section<'a, 'f>> {
    file.sections()
        .find(|s| {
            address
                .checked_sub(s.address())
                .is_some_and(|at| at < s.size())
        })
        .with_context(|| format!("no section holds {address:#x}"))
}

/// The bytes at a link-time address, up to the end of the section holding it.
pub fn bytes_at<'a>(file: &object::File<'a>, address: u64) -> Result<&'a [u8]> {
    let section = section_at(file, address)?;
    let at = usize::try_from(address - section.address())?;
    Ok(section.data()?.get(at..).unwrap_or_default())
}
