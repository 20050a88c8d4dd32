//! Fixed hash functions: trace ids, sampling and endpoint fingerprints must come out
//! the same on every linker, every restart and every Rust release, which std's
//! `DefaultHasher` does not promise. The same mixer also hashes the engine's keys,
//! which are integers: SipHash costs about three times as much per lookup on the
//! hot path.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The 64-bit finalizer of MurmurHash3: every input bit flips each output bit with
/// probability about one half.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// FNV-1a over bytes, then mixed: for strings (host names).
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// One end of a connection as a number, so a span carries 8 bytes per endpoint
/// instead of the address. An IPv4-mapped IPv6 address counts as the IPv4 address
/// (one side may report `::ffff:a.b.c.d`, the other `a.b.c.d`). A missing endpoint
/// is 0, which then matches only another missing one.
pub fn endpoint_fingerprint(endpoint: Option<&espan::wire::Endpoint>) -> u64 {
    endpoint.map_or(0, |e| fingerprint(&e.ip, e.port))
}

/// [`endpoint_fingerprint`] of an address and port.
pub fn fingerprint(ip: &[u8], port: u32) -> u64 {
    let ip: &[u8] = match ip {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4 @ ..] => v4,
        ip => ip,
    };
    mix64(hash_bytes(ip) ^ u64::from(port).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A multiply-rotate hasher for integer keys (FxHash's scheme), finished with
/// [`mix64`] so the top bits that hashbrown uses are well spread.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.add(hash_bytes(bytes));
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// The engine's hash map.
pub(crate) type Map<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The hash of a span's `(host, span_id)` in the span index.
pub(crate) fn span_key(host: u32, span_id: u64) -> u64 {
    mix64(span_id ^ u64::from(host).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The hash of a call key `(req_seq, resp_seq)` in the call index.
pub(crate) fn call_key(req_seq: u32, resp_seq: u32) -> u64 {
    mix64((u64::from(req_seq) << 32 | u64::from(resp_seq)) ^ 0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use espan::wire::Endpoint;

    #[test]
    fn mixer_values_are_pinned() {
        // Trace ids and sampling depend on these values: a change here changes
        // every derived trace id, so it must be deliberate.
        // Golden values, computed once: never update them to make a test pass.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0xb456_bcfc_34c2_cb2c);
        assert_eq!(mix64(0xdead_beef), 0xd24b_d59f_862a_1dac);
        assert_eq!(hash_bytes(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash_bytes(b"host-a"), 0x7623_48be_51b1_e57f);
        assert_eq!(hash_bytes(b"host-b"), 0xbc78_c2c3_57ee_411a);
        assert_eq!(fingerprint(&[10, 0, 0, 1], 80), 0xcd44_f9f8_661a_627f);
    }

    #[test]
    fn mapped_v4_is_the_same_endpoint_as_v4() {
        let v4 = Endpoint {
            ip: vec![10, 0, 0, 1],
            port: 80,
        };
        let mapped = Endpoint {
            ip: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1],
            port: 80,
        };
        let other_port = Endpoint {
            ip: vec![10, 0, 0, 1],
            port: 81,
        };
        assert_eq!(
            endpoint_fingerprint(Some(&v4)),
            endpoint_fingerprint(Some(&mapped))
        );
        assert_ne!(
            endpoint_fingerprint(Some(&v4)),
            endpoint_fingerprint(Some(&other_port))
        );
        assert_eq!(endpoint_fingerprint(None), 0);
    }
}
