use crate::{classify, is_anchor, is_marker, FingerprintConfig, Verdict, WINDOW_MAX};

/// A recognised moment of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Moment {
    pub signature: u64,
    /// Flow offset just past the window: the anchor byte's offset + 1.
    pub end: u64,
}

/// Streaming scanner for one flow (process, fd, direction): fed the flow's bytes in pieces of any
/// size, it yields exactly the moments a single pass over the whole flow would.
#[derive(Clone, Debug)]
pub struct Scanner {
    cfg: FingerprintConfig,
    /// The last `window - 1` bytes fed (fewer at the start of the flow).
    tail: Vec<u8>,
    /// Bytes fed so far.
    offset: u64,
}

impl Scanner {
    pub fn new(cfg: FingerprintConfig) -> Self {
        cfg.validate().expect("invalid FingerprintConfig");
        Self {
            cfg,
            tail: Vec::with_capacity(cfg.window),
            offset: 0,
        }
    }

    /// Feeds the next bytes of the flow; calls `emit` for each moment whose anchor is among them,
    /// in flow order.
    pub fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(Moment)) {
        let w = self.cfg.window;
        let mut window = [0u8; WINDOW_MAX];
        for (i, _) in bytes.iter().enumerate().filter(|(_, &b)| is_marker(b)) {
            let have = self.tail.len() + i + 1;
            if have < w {
                continue;
            }
            let window = if i + 1 >= w {
                &bytes[i + 1 - w..=i]
            } else {
                let from_tail = w - (i + 1);
                window[..from_tail].copy_from_slice(&self.tail[self.tail.len() - from_tail..]);
                window[from_tail..w].copy_from_slice(&bytes[..=i]);
                &window[..w]
            };
            if !is_anchor(window) {
                continue;
            }
            if let Verdict::Moment(signature) = classify(window, &self.cfg) {
                emit(Moment {
                    signature,
                    end: self.offset + i as u64 + 1,
                });
            }
        }
        self.offset += bytes.len() as u64;
        let keep = w - 1;
        if bytes.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - keep..]);
        } else {
            self.tail.extend_from_slice(bytes);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }

    /// Convenience: feeds `bytes` and collects the moments.
    pub fn feed_collect(&mut self, bytes: &[u8]) -> Vec<Moment> {
        let mut out = Vec::new();
        self.feed(bytes, |m| out.push(m));
        out
    }
}

/// All moments of a whole flow.
pub fn scan(cfg: FingerprintConfig, bytes: &[u8]) -> Vec<Moment> {
    Scanner::new(cfg).feed_collect(bytes)
}
