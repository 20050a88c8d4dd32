//! Length-prefixed framing, shared by the protocols whose messages start with
//! a small header that says how long the rest is (PostgreSQL, MySQL): the
//! header is collected (across transfers if need be), the body is skipped by
//! its length, keeping only its first bytes, so bodies beyond the capture cost
//! nothing. Each protocol says how long its header is and how to read it.

use crate::message::{L7, Message, Problems, Transfer};

/// An answer whose framing lies beyond the capture from `from` on, while it
/// answers the only request waiting: it stays open (begun there, as `empty`,
/// if none was being read) until the client's next request, the connection's
/// quiet or its end; counted as unframed.
pub fn open_beyond_capture(
    answer: &mut Option<Message>,
    t: &Transfer<'_>,
    from: u32,
    empty: impl FnOnce() -> L7,
    problems: &mut Problems,
) {
    problems.unframed += 1;
    let m = answer.get_or_insert_with(|| Message::starting(empty(), from, t));
    m.bytes += u64::from(t.seq.wrapping_add(t.len).wrapping_sub(from));
    m.touch(t);
}

/// More bytes of an answer left open beyond the capture.
pub fn extend_open(answer: &mut Option<Message>, t: &Transfer<'_>) {
    if let Some(m) = answer {
        m.bytes += u64::from(t.len);
        m.touch(t);
    }
}

/// Counts why the framing was lost: a header beyond the capture, or garbage.
pub fn count_loss(problems: &mut Problems, truncated: bool) {
    if truncated {
        problems.truncated += 1;
    } else {
        problems.malformed += 1;
    }
}

/// Prepared statements' texts by name or id, as many as [`Statements::MAX`],
/// with the bytes they hold kept as they change (the probe's memory budget
/// asks after every transfer: no walk over the map).
#[derive(Debug, Default)]
pub struct Statements<K> {
    texts: std::collections::HashMap<K, String>,
    bytes: usize,
}

impl<K: std::hash::Hash + Eq> Statements<K> {
    /// Statements remembered per connection; later ones are not named.
    pub const MAX: usize = 256;

    /// Remembers `text` under `key` (a new key only while fewer than `MAX`).
    pub fn insert(&mut self, key: K, text: String) {
        if self.texts.len() >= Self::MAX && !self.texts.contains_key(&key) {
            return;
        }
        self.bytes += std::mem::size_of::<K>() + text.capacity();
        if let Some(old) = self.texts.insert(key, text) {
            self.bytes -= std::mem::size_of::<K>() + old.capacity();
        }
    }

    pub fn get(&self, key: &K) -> Option<&String> {
        self.texts.get(key)
    }

    pub fn remove(&mut self, key: &K) {
        if let Some(old) = self.texts.remove(key) {
            self.bytes -= std::mem::size_of::<K>() + old.capacity();
        }
    }

    /// Bytes the texts hold.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }
}

/// Longest header read (PostgreSQL's type byte and length).
const MAX_HEADER: usize = 8;

/// One complete frame.
pub struct Frame<'a> {
    /// Its header's bytes.
    pub header: &'a [u8],
    /// Sequence number, time and thread of its first byte.
    pub seq: u32,
    pub ts_ns: u64,
    pub tid: u32,
    /// Header and body.
    pub bytes: u64,
    /// The body's first bytes, as far as kept and captured.
    pub body: &'a [u8],
}

/// How a transfer ended for a reader.
pub enum Read {
    Whole,
    /// The rest lies beyond the captured bytes at a header: the frame that
    /// starts at this sequence number (its header maybe begun) and after.
    BeyondCapture(u32),
    /// A header that cannot be one.
    Malformed,
}

/// One direction's framing.
#[derive(Debug)]
pub struct Reader {
    header: [u8; MAX_HEADER],
    have: usize,
    /// The length of the next frame's header.
    pub header_len: usize,
    /// Body bytes left to skip, once the header is complete.
    left: Option<u32>,
    start: (u32, u64, u32),
    keep: usize,
    kept: Vec<u8>,
}

impl Reader {
    /// A reader whose frames' headers are `header_len` bytes long (at most 8).
    pub fn new(header_len: usize) -> Self {
        Self {
            header: [0; MAX_HEADER],
            have: 0,
            header_len: header_len.min(MAX_HEADER),
            left: None,
            start: (0, 0, 0),
            keep: 0,
            kept: Vec::new(),
        }
    }

    /// Bytes held for the frame being read.
    pub fn held_bytes(&self) -> usize {
        self.kept.capacity()
    }

    /// Reads a transfer. `body_len` reads a complete header (`None`: not a
    /// header), `keep` says how many of its body's bytes to keep, and each
    /// complete frame goes to `on_frame` (which may change `header_len` for the
    /// next one).
    pub fn feed(
        &mut self,
        t: &Transfer<'_>,
        body_len: impl Fn(&[u8]) -> Option<u32>,
        keep: impl Fn(&[u8]) -> usize,
        mut on_frame: impl FnMut(&mut Reader, Frame<'_>),
    ) -> Read {
        let len = t.len as usize;
        let data = &t.data[..t.data.len().min(len)];
        let mut pos = 0;
        while pos < len {
            match self.left {
                None => {
                    if pos >= data.len() {
                        let from = if self.have > 0 {
                            self.start.0
                        } else {
                            t.seq.wrapping_add(pos as u32)
                        };
                        return Read::BeyondCapture(from);
                    }
                    if self.have == 0 {
                        self.start = (t.seq.wrapping_add(pos as u32), t.ts_ns, t.tid);
                    }
                    let take = (self.header_len - self.have).min(data.len() - pos);
                    self.header[self.have..self.have + take]
                        .copy_from_slice(&data[pos..pos + take]);
                    self.have += take;
                    pos += take;
                    if self.have < self.header_len {
                        continue;
                    }
                    let header = &self.header[..self.header_len];
                    let Some(n) = body_len(header) else {
                        return Read::Malformed;
                    };
                    self.keep = keep(header);
                    self.kept.clear();
                    self.left = Some(n);
                }
                Some(left) => {
                    let n = (left as usize).min(len - pos);
                    if self.kept.len() < self.keep {
                        let end = (pos + n).min(data.len());
                        if pos < end {
                            let take = (end - pos).min(self.keep - self.kept.len());
                            self.kept.extend_from_slice(&data[pos..pos + take]);
                        }
                    }
                    pos += n;
                    self.left = Some(left - n as u32);
                }
            }
            if let Some(0) = self.left {
                let header_len = self.header_len;
                let header = self.header;
                let kept = std::mem::take(&mut self.kept);
                let body_len = body_len(&header[..header_len]).unwrap_or(0);
                let (seq, ts_ns, tid) = self.start;
                self.have = 0;
                self.left = None;
                on_frame(
                    self,
                    Frame {
                        header: &header[..header_len],
                        seq,
                        ts_ns,
                        tid,
                        bytes: header_len as u64 + u64::from(body_len),
                        body: &kept,
                    },
                );
                // Keep the allocation for the next frame's body.
                if self.kept.is_empty() {
                    self.kept = kept;
                    self.kept.clear();
                }
            }
        }
        Read::Whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_keep_their_byte_count_and_their_bound() {
        let mut s = Statements::<u32>::default();
        s.insert(1, "SELECT 1".to_owned());
        let one = s.held_bytes();
        assert!(one >= 8 + 4);
        s.insert(1, "SELECT 1, 2, 3".to_owned());
        assert!(
            s.held_bytes() > one,
            "a replaced text is counted as the new one"
        );
        s.remove(&1);
        assert_eq!(s.held_bytes(), 0);
        for id in 0..(Statements::<u32>::MAX as u32 + 10) {
            s.insert(id, "x".to_owned());
        }
        assert!(
            s.get(&(Statements::<u32>::MAX as u32 + 5)).is_none(),
            "bounded"
        );
        assert!(s.get(&0).is_some());
        for id in 0..(Statements::<u32>::MAX as u32 + 10) {
            s.remove(&id);
        }
        assert_eq!(s.held_bytes(), 0);
    }
}
