//! The NATS client side, spoken directly (a text protocol): a client library such as
//! async-nats buffers and flushes from a background task, and no syscall could be stamped as the
//! one that moved a message.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;

/// NATS subjects: a call's audio is published on `audio.<call>.<audio offset>` (the offset lets
/// a consumer's ground truth be checked rather than counted), the end of a producer's stream on
/// `audio.end`; consumers subscribe to `audio.>`.
pub(super) const NATS_AUDIO: &str = "audio";
pub(super) const NATS_END: &str = "audio.end";

/// One CRLF-terminated protocol line, read a byte at a time so nothing after it is consumed.
fn read_line(s: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut byte)
            .context("the broker closed the connection")?;
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The NATS client handshake, before the component is ready: the server's INFO, our CONNECT
/// (no +OK acknowledgements), and for a consumer the subscription, confirmed by a PING/PONG
/// round trip: the broker keeps nothing for subscribers that come late.
pub(super) fn nats_hello(s: &mut TcpStream, subscribe: bool) -> Result<()> {
    let info = read_line(s)?;
    if !info.starts_with("INFO ") {
        bail!("not a NATS server: {info:?}");
    }
    let mut hello = String::from("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    if subscribe {
        hello += &format!("SUB {NATS_AUDIO}.> 1\r\nPING\r\n");
    }
    s.write_all(hello.as_bytes())?;
    if subscribe {
        loop {
            match read_line(s)? {
                l if l == "PONG" => break,
                l if l.starts_with("-ERR") => bail!("broker: {l}"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// One `PUB` of a call's audio; returns the message and where its payload starts.
pub(super) fn nats_pub(call: u32, audio_off: u64, payload: &[u8]) -> (Vec<u8>, usize) {
    let head = format!("PUB {NATS_AUDIO}.{call}.{audio_off} {}\r\n", payload.len());
    let mut m = Vec::with_capacity(head.len() + payload.len() + 2);
    m.extend(head.as_bytes());
    m.extend(payload);
    m.extend(b"\r\n");
    (m, head.len())
}

/// What one server message at the start of a consumer's buffer is.
#[derive(Debug, PartialEq)]
pub(super) enum NatsMsg {
    Audio {
        call: u32,
        audio_off: u64,
        payload: std::ops::Range<usize>,
    },
    End,
    /// PING, PONG, +OK, INFO: nothing for the audio (the server's first PING comes after two
    /// minutes, longer than any scenario).
    Control,
}

/// Parses one whole server message at the start of `buf`: (its length, what it is); `None` if
/// incomplete.
pub(super) fn parse_nats(buf: &[u8]) -> Option<Result<(usize, NatsMsg)>> {
    let eol = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..eol]);
    let words: Vec<&str> = line.split(' ').collect();
    Some(match words[0] {
        // MSG <subject> <sid> [reply-to] <payload length>
        "MSG" if words.len() >= 4 => {
            let Ok(len) = words[words.len() - 1].parse::<usize>() else {
                return Some(Err(anyhow!("bad NATS message line {line:?}")));
            };
            let start = eol + 2;
            if buf.len() < start + len + 2 {
                return None;
            }
            let at = |s: &str| -> Option<(u32, u64)> {
                let mut f = s.strip_prefix(NATS_AUDIO)?.strip_prefix('.')?.split('.');
                Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
            };
            match (words[1], at(words[1])) {
                (NATS_END, _) => Ok((start + len + 2, NatsMsg::End)),
                (_, Some((call, audio_off))) => Ok((
                    start + len + 2,
                    NatsMsg::Audio {
                        call,
                        audio_off,
                        payload: start..start + len,
                    },
                )),
                (subject, None) => Err(anyhow!("unexpected NATS subject {subject:?}")),
            }
        }
        "PING" | "PONG" | "+OK" | "INFO" => Ok((eol + 2, NatsMsg::Control)),
        _ => Err(anyhow!("unexpected NATS line {line:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_messages_parse_as_a_consumer_receives_them() {
        let (publish, at) = nats_pub(3, 640, b"pcm\r\nbytes");
        assert_eq!(&publish[..at], b"PUB audio.3.640 10\r\n");
        // What the server delivers for it, after a PING, in two pieces.
        let msg = b"PING\r\nMSG audio.3.640 1 10\r\npcm\r\nbytes\r\nMSG audio.end 1 0\r\n\r\n";
        assert_eq!(parse_nats(msg).unwrap().unwrap(), (6, NatsMsg::Control));
        assert!(parse_nats(&msg[6..30]).is_none(), "incomplete");
        let (len, audio) = parse_nats(&msg[6..]).unwrap().unwrap();
        assert_eq!(
            audio,
            NatsMsg::Audio {
                call: 3,
                audio_off: 640,
                payload: 22..32
            }
        );
        assert_eq!(&msg[6 + 22..6 + 32], b"pcm\r\nbytes");
        assert_eq!(
            parse_nats(&msg[6 + len..]).unwrap().unwrap(),
            (21, NatsMsg::End)
        );
        assert!(parse_nats(b"-ERR 'Slow Consumer'\r\n").unwrap().is_err());
        assert!(parse_nats(b"MSG other.1 1 2\r\nxy\r\n").unwrap().is_err());
    }
}
