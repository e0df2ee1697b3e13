//! The two ends of a link inside a component: [`Out`] frames audio, batches it and writes it;
//! [`In`] turns what is read back into calls' audio. Both record their ground truth.

use super::framing::{envelope, parse_envelope, parse_stream_header, stream_header};
use super::nats::{nats_pub, parse_nats, NatsMsg, NATS_END};
use super::recorder::Recorder;
use super::spec::{End, Framing};
use super::transport::{connect, Conn};
use crate::truth::{involuntary_switches, Io, Segment};
use agent::clock::monotonic_ns;
use agent::schema::Dir;
use anyhow::{bail, Context, Result};

/// The sending end of a link: frames audio, batches it, writes it with its syscall family.
pub(super) struct Out {
    conn: Conn,
    end: End,
    producer: String,
    /// Flow offset of `pending[0]`.
    flow_off: u64,
    pending: Vec<u8>,
    stream_call: Option<u32>,
    seq: u64,
}

impl Out {
    pub(super) fn open(end: &End, producer: &str) -> Result<Self> {
        let conn =
            connect(&end.transport).with_context(|| format!("opening {} for writing", end.link))?;
        Ok(Self {
            conn,
            end: end.clone(),
            producer: producer.into(),
            flow_off: 0,
            pending: Vec::new(),
            stream_call: None,
            seq: 0,
        })
    }

    pub(super) fn push(
        &mut self,
        rec: &Recorder,
        call: u32,
        audio_off: u64,
        bytes: &[u8],
    ) -> Result<()> {
        match self.end.framing {
            Framing::Stream { header_len } => {
                match self.stream_call {
                    None => {
                        self.pending.extend(stream_header(call, header_len)?);
                        self.stream_call = Some(call);
                    }
                    Some(c) if c != call => {
                        bail!("{}: a stream link carries one call", self.end.link)
                    }
                    _ => {}
                }
                let at = self.flow_off + self.pending.len() as u64;
                rec.payload(
                    &self.end.link,
                    Dir::Write,
                    Segment {
                        flow_off: at,
                        call,
                        audio_off,
                        len: bytes.len() as u64,
                    },
                );
                self.pending.extend(bytes);
            }
            Framing::Envelope { max_payload } | Framing::Nats { max_payload } => {
                for (i, piece) in bytes.chunks(max_payload).enumerate() {
                    let off = audio_off + (i * max_payload) as u64;
                    let (frame, payload_at) = match self.end.framing {
                        Framing::Nats { .. } => nats_pub(call, off, piece),
                        _ => envelope(&self.producer, self.seq, call, off, piece),
                    };
                    self.seq += 1;
                    let at = self.flow_off + self.pending.len() as u64 + payload_at as u64;
                    rec.payload(
                        &self.end.link,
                        Dir::Write,
                        Segment {
                            flow_off: at,
                            call,
                            audio_off: off,
                            len: piece.len() as u64,
                        },
                    );
                    self.pending.extend(frame);
                }
            }
        }
        Ok(())
    }

    /// Writes what is pending: whole chunks only for a stream, unless `all`; a batch of whole
    /// envelopes or messages otherwise.
    pub(super) fn flush(&mut self, rec: &Recorder, all: bool) -> Result<()> {
        let stream = matches!(self.end.framing, Framing::Stream { .. });
        let upto = if stream && !all {
            self.pending.len() / self.end.chunk * self.end.chunk
        } else {
            self.pending.len()
        };
        let mut done = 0;
        while done < upto {
            let n = (upto - done).min(self.end.chunk);
            let switches = involuntary_switches();
            let t_ns = monotonic_ns();
            let k = self
                .conn
                .io(&mut self.pending[done..done + n], true, self.end.call);
            let preempted = involuntary_switches() != switches;
            let k = k.with_context(|| format!("writing {}", self.end.link))?;
            let at = self.flow_off + done as u64;
            rec.io(Io {
                t_ns,
                preempted,
                dir: Dir::Write,
                fd: self.conn.fd(),
                link: self.end.link.clone(),
                flow_off: at,
                len: k as u64,
                segments: Vec::new(),
            });
            done += k;
        }
        self.pending.drain(..done);
        self.flow_off += done as u64;
        Ok(())
    }

    /// Writes everything left, ends a NATS producer's stream, and closes.
    pub(super) fn close(mut self, rec: &Recorder) -> Result<()> {
        if let Framing::Nats { .. } = self.end.framing {
            self.pending
                .extend(format!("PUB {NATS_END} 0\r\n\r\n").as_bytes());
        }
        self.flush(rec, true)?;
        self.conn.close();
        Ok(())
    }
}

/// The receiving end of a link: turns bytes back into (call, audio offset, audio).
pub(super) struct In {
    end: End,
    /// Flow offset of `buf[0]`.
    flow_off: u64,
    buf: Vec<u8>,
    stream: Option<(u32, usize)>,
    /// A NATS producer ended its stream (the broker itself never closes).
    pub(super) ended: bool,
}

pub(super) type Payload = (u32, u64, Vec<u8>);

impl In {
    pub(super) fn new(end: End) -> Self {
        Self {
            end,
            flow_off: 0,
            buf: Vec::new(),
            stream: None,
            ended: false,
        }
    }

    /// Parses what `bytes` completes. Whole frames are consumed through a cursor and the buffer
    /// is compacted once per call: a 64 KiB read holds a hundred envelopes.
    pub(super) fn feed(&mut self, rec: &Recorder, bytes: &[u8]) -> Result<Vec<Payload>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        let result = (|| -> Result<()> {
            loop {
                let rest = &self.buf[at..];
                let (take, payload) = match self.end.framing {
                    Framing::Stream { .. } => match self.stream {
                        None => match parse_stream_header(rest) {
                            None => break,
                            Some(h) => {
                                let (call, len) = h?;
                                self.stream = Some((call, len));
                                (len, None)
                            }
                        },
                        Some((call, header_len)) if !rest.is_empty() => (
                            rest.len(),
                            Some((call, self.flow_off - header_len as u64, 0..rest.len())),
                        ),
                        Some(_) => break,
                    },
                    Framing::Envelope { .. } => match parse_envelope(rest) {
                        None => break,
                        Some(frame) => {
                            let (len, call, off, range) = frame?;
                            (len, Some((call, off, range)))
                        }
                    },
                    Framing::Nats { .. } => match parse_nats(rest) {
                        None => break,
                        Some(msg) => match msg? {
                            (
                                len,
                                NatsMsg::Audio {
                                    call,
                                    audio_off,
                                    payload,
                                },
                            ) => (len, Some((call, audio_off, payload))),
                            (len, NatsMsg::End) => {
                                self.ended = true;
                                (len, None)
                            }
                            (len, NatsMsg::Control) => (len, None),
                        },
                    },
                };
                if let Some((call, audio_off, range)) = payload {
                    rec.payload(
                        &self.end.link,
                        Dir::Read,
                        Segment {
                            flow_off: self.flow_off + range.start as u64,
                            call,
                            audio_off,
                            len: range.len() as u64,
                        },
                    );
                    out.push((call, audio_off, rest[range].to_vec()));
                }
                at += take;
                self.flow_off += take as u64;
            }
            Ok(())
        })();
        self.buf.drain(..at);
        result.map(|()| out)
    }
}
