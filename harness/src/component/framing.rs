//! How a link frames its bytes: a stream (a header line of a chosen length, then one call's
//! PCM), or Pulsar-style envelopes (size, command, magic 0x0e01, crc32c, metadata, payload).
//! NATS messages are in [`super::nats`].

use anyhow::{bail, Result};

/// Shortest stream header.
const HEADER_MIN: usize = 16;
/// Pulsar's frame magic (before the checksum).
pub const ENVELOPE_MAGIC: u16 = 0x0e01;

pub(super) fn stream_header(call: u32, len: usize) -> Result<Vec<u8>> {
    let text = format!("HXA call={call} ");
    if len < HEADER_MIN.max(text.len() + 1) {
        bail!("header length {len} too short for {text:?}");
    }
    let mut h = text.into_bytes();
    h.resize(len - 1, b'.');
    h.push(b'\n');
    Ok(h)
}

pub(super) fn parse_stream_header(bytes: &[u8]) -> Option<Result<(u32, usize)>> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let text = String::from_utf8_lossy(&bytes[..nl]);
    let call = text
        .strip_prefix("HXA call=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    Some(
        call.map(|c| (c, nl + 1))
            .ok_or_else(|| anyhow::anyhow!("malformed stream header")),
    )
}

/// CRC-32C (Castagnoli), as Pulsar checksums its frames: slicing-by-8 over tables built at
/// compile time (a bitwise loop cost a source of 1000 calls most of a core).
pub fn crc32c(bytes: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut crc = !0u32;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// `CRC32C_TABLES[0]` is the byte-at-a-time table of the reflected polynomial 0x82F63B78;
/// table k advances a byte's contribution by k more zero bytes.
static CRC32C_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
            k += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// One envelope: [total][cmd size][cmd][magic][crc32c][meta size][meta][payload], big-endian
/// sizes, total counting everything after itself; metadata padded to vary header lengths.
/// Returns the frame and where its payload starts.
pub(super) fn envelope(
    producer: &str,
    seq: u64,
    call: u32,
    audio_off: u64,
    payload: &[u8],
) -> (Vec<u8>, usize) {
    let cmd = format!("SEND producer={producer} sequence_id={seq}");
    let pad = (seq.wrapping_mul(0x9E37_79B9) >> 7) % 23;
    let meta = format!(
        "call={call} offset={audio_off} props={}",
        "p".repeat(pad as usize)
    );
    let mut checked = Vec::with_capacity(4 + meta.len() + payload.len());
    checked.extend((meta.len() as u32).to_be_bytes());
    checked.extend(meta.as_bytes());
    checked.extend(payload);
    let total = 4 + cmd.len() + 2 + 4 + checked.len();
    let mut f = Vec::with_capacity(4 + total);
    f.extend((total as u32).to_be_bytes());
    f.extend((cmd.len() as u32).to_be_bytes());
    f.extend(cmd.as_bytes());
    f.extend(ENVELOPE_MAGIC.to_be_bytes());
    f.extend(crc32c(&checked).to_be_bytes());
    f.extend(&checked);
    let payload_at = f.len() - payload.len();
    (f, payload_at)
}

/// One parsed envelope: (frame length, call, audio offset, payload range).
pub(super) type Envelope = (usize, u32, u64, std::ops::Range<usize>);

/// Parses one whole envelope at the start of `buf`; `None` if incomplete.
pub(super) fn parse_envelope(buf: &[u8]) -> Option<Result<Envelope>> {
    let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
    if buf.len() < 4 || buf.len() < 4 + be32(buf) {
        return None;
    }
    Some((|| {
        let len = 4 + be32(buf);
        let cmd = be32(&buf[4..]);
        let at = 8 + cmd;
        if u16::from_be_bytes([buf[at], buf[at + 1]]) != ENVELOPE_MAGIC {
            bail!("bad envelope magic");
        }
        let crc = u32::from_be_bytes(buf[at + 2..at + 6].try_into().unwrap());
        if crc32c(&buf[at + 6..len]) != crc {
            bail!("envelope checksum mismatch");
        }
        let meta_len = be32(&buf[at + 6..]);
        let meta = String::from_utf8_lossy(&buf[at + 10..at + 10 + meta_len]);
        let field = |k: &str| {
            meta.split(' ')
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let (Some(call), Some(off)) = (field("call="), field("offset=")) else {
            bail!("envelope without call/offset")
        };
        Ok((len, call as u32, off, at + 10 + meta_len..len))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_headers_have_the_asked_length_and_parse() {
        for len in [17, 45, 64, 1001] {
            let h = stream_header(42, len).unwrap();
            assert_eq!(h.len(), len);
            assert_eq!(parse_stream_header(&h).unwrap().unwrap(), (42, len));
        }
        assert!(stream_header(1, 8).is_err());
        assert!(parse_stream_header(b"HXA call=").is_none());
        assert!(parse_stream_header(b"garbage\n").unwrap().is_err());
    }

    #[test]
    fn envelopes_round_trip_and_checksums_catch_damage() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for seq in 0..30 {
            let (mut f, at) = envelope("relay-1", seq, 9, 12_345, &payload);
            assert_eq!(&f[at..], &payload[..]);
            let (len, call, off, range) = parse_envelope(&f).unwrap().unwrap();
            assert_eq!((len, call, off, range.start), (f.len(), 9, 12_345, at));
            assert!(parse_envelope(&f[..f.len() - 1]).is_none(), "incomplete");
            f[at + 3] ^= 1;
            assert!(parse_envelope(&f).unwrap().is_err(), "damaged payload");
        }
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn table_driven_crc32c_is_the_bitwise_one() {
        let bitwise = |bytes: &[u8]| {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
                }
            }
            !crc
        };
        let bytes: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..40).chain([255, 256, 1000, 2999, 3000]) {
            for start in [0, 1, 3, 7] {
                let b = &bytes[start..start + len.min(3000 - start)];
                assert_eq!(crc32c(b), bitwise(b), "len {len} start {start}");
            }
        }
    }

    #[test]
    fn envelope_headers_vary_in_length() {
        let lens: std::collections::BTreeSet<usize> =
            (0..50).map(|s| envelope("p", s, 1, 0, b"xy").1).collect();
        assert!(
            lens.len() > 10 && lens.iter().any(|l| l % 2 == 1),
            "{lens:?}"
        );
    }
}
