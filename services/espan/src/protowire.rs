//! Protobuf's wire format, read in place and written directly.
//!
//! For the paths where prost's whole-message decode or encode is too slow or
//! cannot say enough: finding where a repeated field's elements lie, borrowing
//! strings from the message instead of copying them, writing an envelope around
//! bytes already encoded. prost's own `encoding` module is internal to its
//! generated code, so these primitives live here, once, with prost's rules: a
//! varint is at most 10 bytes and its 10th byte carries only the 64th bit; a
//! key fits in 32 bits, names a field above 0 and one of the six wire types.
//! The tests hold the reader and the writer to prost's output.

use std::ops::Range;

/// Wire type of `int32`, `uint64`, `bool`, enums.
pub const VARINT: u8 = 0;
/// Wire type of `fixed64`, `double`.
pub const FIXED64: u8 = 1;
/// Wire type of strings, bytes, messages, packed repeated fields.
pub const LEN: u8 = 2;
/// The deprecated group encoding's start (only ever skipped).
pub const START_GROUP: u8 = 3;
/// The deprecated group encoding's end.
pub const END_GROUP: u8 = 4;
/// Wire type of `fixed32`, `float`.
pub const FIXED32: u8 = 5;

/// How deep skipped groups may nest: prost's recursion limit.
const MAX_GROUP_DEPTH: u32 = 100;

/// A field's key, as written before its value: its number and wire type.
#[inline]
pub const fn key(field: u32, wire_type: u8) -> u32 {
    field << 3 | wire_type as u32
}

/// Why bytes are not a well-formed protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes end inside a field.
    #[error("truncated field")]
    Truncated,
    /// A varint longer than 10 bytes, or whose 10th byte holds more than bit 64.
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    /// A key above 32 bits, of field number 0, or of wire type 6 or 7.
    #[error("invalid key")]
    InvalidKey,
    /// A known field with a wire type its type cannot have.
    #[error("field {field} has wire type {wire_type}, which its type cannot have")]
    WrongWireType {
        /// The field number.
        field: u32,
        /// The wire type found.
        wire_type: u8,
    },
    /// A string field that is not UTF-8.
    #[error("a string is not UTF-8")]
    NotUtf8,
    /// A group whose end never comes, or an end with no start.
    #[error("unbalanced group")]
    UnbalancedGroup,
    /// Groups nested deeper than prost accepts.
    #[error("groups nested too deep")]
    TooDeep,
}

/// Reads the fields of one message from a slice, never past its end.
///
/// Small methods are `#[inline]`: the exporter reads about 25 fields per span
/// with them, from another crate.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Strings are known to be UTF-8 (see [`Reader::new_utf8_checked`]).
    utf8_checked: bool,
}

impl<'a> Reader<'a> {
    /// A reader over the encoded fields of one message.
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            utf8_checked: false,
        }
    }

    /// A reader whose [`Self::str`] does not check UTF-8 again.
    ///
    /// # Safety
    ///
    /// Every field this reader, and every reader [`Self::message`] makes from
    /// it, reads with [`Self::str`] must be valid UTF-8: for example, bytes
    /// that cannot change and that a checking reader already read, field by
    /// field in the same way, without error.
    #[inline]
    pub unsafe fn new_utf8_checked(bytes: &'a [u8]) -> Self {
        Self {
            utf8_checked: true,
            ..Self::new(bytes)
        }
    }

    /// How far into its bytes the reader is.
    #[inline]
    pub fn position(&self) -> usize {
        self.at
    }

    /// The next field's number and wire type, or `None` at the end.
    #[inline]
    pub fn key(&mut self) -> Result<Option<(u32, u8)>, ReadError> {
        Ok(self.raw_key()?.map(|key| (key >> 3, (key & 7) as u8)))
    }

    /// The next field's whole key ([`key`]), checked as [`Self::key`] checks
    /// it: a `match` on it against constant keys compiles to one jump table.
    #[inline]
    pub fn raw_key(&mut self) -> Result<Option<u32>, ReadError> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        if key > u64::from(u32::MAX) || key & 7 > u64::from(FIXED32) || key >> 3 == 0 {
            return Err(ReadError::InvalidKey);
        }
        Ok(Some(key as u32))
    }

    /// A varint.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, ReadError> {
        // Most varints (keys, lengths, small numbers) are one byte.
        if let Some(&byte) = self.bytes.get(self.at)
            && byte < 0x80
        {
            self.at += 1;
            return Ok(u64::from(byte));
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> Result<u64, ReadError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(ReadError::Truncated);
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // The tenth byte holds bit 64 only.
                if i == 9 && byte > 1 {
                    return Err(ReadError::VarintOverflow);
                }
                return Ok(value);
            }
        }
        Err(ReadError::VarintOverflow)
    }

    /// A `fixed64`.
    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `fixed32`.
    #[inline]
    pub fn fixed32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let Some(bytes) = self.bytes.get(self.at..self.at + N) else {
            return Err(ReadError::Truncated);
        };
        self.at += N;
        Ok(bytes.try_into().expect("N bytes"))
    }

    /// A length-delimited field's bytes.
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let range = self.bytes_range()?;
        Ok(&self.bytes[range])
    }

    /// Where a length-delimited field's bytes are in the reader's bytes.
    #[inline]
    pub fn bytes_range(&mut self) -> Result<Range<usize>, ReadError> {
        let len = self.varint()?;
        let start = self.at;
        if len > (self.bytes.len() - start) as u64 {
            return Err(ReadError::Truncated);
        }
        self.at = start + len as usize;
        Ok(start..self.at)
    }

    /// A string field, borrowed.
    #[inline]
    pub fn str(&mut self) -> Result<&'a str, ReadError> {
        let bytes = self.bytes()?;
        if self.utf8_checked {
            debug_assert!(std::str::from_utf8(bytes).is_ok());
            // SAFETY: the caller of `new_utf8_checked` promised that every
            // string this reader reads is UTF-8. Checking again cost about 5%
            // of the exporter's CPU.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
    }

    /// A nested message, with a reader of its own (trusting UTF-8 as this one does).
    #[inline]
    pub fn message(&mut self) -> Result<Reader<'a>, ReadError> {
        let bytes = self.bytes()?;
        Ok(Self {
            utf8_checked: self.utf8_checked,
            ..Self::new(bytes)
        })
    }

    /// Skips the value of field `field` (whose key was just read), as protobuf
    /// readers skip unknown fields: groups included, an unmatched group end not.
    pub fn skip(&mut self, field: u32, wire_type: u8) -> Result<(), ReadError> {
        self.skip_at_depth(field, wire_type, 0)
    }

    fn skip_at_depth(&mut self, field: u32, wire_type: u8, depth: u32) -> Result<(), ReadError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.fixed64().map(drop),
            LEN => self.bytes_range().map(drop),
            FIXED32 => self.fixed32().map(drop),
            START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(ReadError::TooDeep);
                }
                loop {
                    match self.key()? {
                        None => return Err(ReadError::UnbalancedGroup),
                        Some((inner, END_GROUP)) if inner == field => return Ok(()),
                        Some((inner, wire_type)) => {
                            self.skip_at_depth(inner, wire_type, depth + 1)?
                        }
                    }
                }
            }
            _ => Err(ReadError::UnbalancedGroup),
        }
    }
}

/// The bytes `value` takes as a varint: one per 7 bits, at least one.
#[inline]
pub const fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes `value` as a varint at the start of `dst` (which must have room for
/// [`varint_len`] bytes); returns how many bytes it took.
#[inline]
pub fn write_varint(dst: &mut [u8], mut value: u64) -> usize {
    let mut at = 0;
    while value >= 0x80 {
        dst[at] = value as u8 | 0x80;
        value >>= 7;
        at += 1;
    }
    dst[at] = value as u8;
    at + 1
}

/// Appends `value` as a varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
        return;
    }
    let mut bytes = [0u8; 10];
    let len = write_varint(&mut bytes, value);
    out.extend_from_slice(&bytes[..len]);
}

/// Appends a field's key.
#[inline]
pub fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, u64::from(key(field, wire_type)));
}

/// Appends a length-delimited field: key, length, then `bytes`.
#[inline]
pub fn put_len_prefixed(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a `fixed64` field, key included.
#[inline]
pub fn put_fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends a varint field, key included.
#[inline]
pub fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_key(out, field, VARINT);
    put_varint(out, value);
}

/// The bytes a length-delimited field of `len` bytes takes, key and length included.
#[inline]
pub const fn len_prefixed_len(field: u32, len: usize) -> usize {
    varint_len(key(field, LEN) as u64) + varint_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    /// A message with a field of every wire type prost writes, as the oracle.
    #[derive(Clone, PartialEq, Message)]
    struct Sample {
        #[prost(uint64, tag = "1")]
        number: u64,
        #[prost(int64, tag = "2")]
        signed: i64,
        #[prost(fixed64, tag = "3")]
        fixed: u64,
        #[prost(fixed32, tag = "4")]
        small: u32,
        #[prost(string, tag = "5")]
        text: String,
        #[prost(bytes = "vec", tag = "6")]
        blob: Vec<u8>,
        #[prost(bool, tag = "7")]
        flag: bool,
        #[prost(message, repeated, tag = "8")]
        children: Vec<Sample>,
        #[prost(uint64, tag = "536870911")]
        far: u64,
    }

    /// Any message: its fields skipped, so it decodes whatever is well-formed.
    #[derive(Clone, PartialEq, Message)]
    struct Anything {}

    fn sample(depth: u32) -> BoxedStrategy<Sample> {
        let children = if depth == 0 {
            Just(Vec::new()).boxed()
        } else {
            prop::collection::vec(sample(depth - 1), 0..3).boxed()
        };
        (
            (any::<u64>(), any::<i64>(), any::<u64>(), any::<u32>()),
            (".{0,8}", prop::collection::vec(any::<u8>(), 0..300)),
            (any::<bool>(), children, prop_oneof![Just(0), any::<u64>()]),
        )
            .prop_map(
                |((number, signed, fixed, small), (text, blob), (flag, children, far))| Sample {
                    number,
                    signed,
                    fixed,
                    small,
                    text,
                    blob,
                    flag,
                    children,
                    far,
                },
            )
            .boxed()
    }

    /// `sample` written with this module, leaving defaults out as proto3 does.
    fn write(sample: &Sample, out: &mut Vec<u8>) {
        if sample.number != 0 {
            put_varint_field(out, 1, sample.number);
        }
        if sample.signed != 0 {
            put_varint_field(out, 2, sample.signed as u64);
        }
        if sample.fixed != 0 {
            put_fixed64(out, 3, sample.fixed);
        }
        if sample.small != 0 {
            put_key(out, 4, FIXED32);
            out.extend_from_slice(&sample.small.to_le_bytes());
        }
        if !sample.text.is_empty() {
            put_len_prefixed(out, 5, sample.text.as_bytes());
        }
        if !sample.blob.is_empty() {
            put_len_prefixed(out, 6, &sample.blob);
        }
        if sample.flag {
            put_varint_field(out, 7, 1);
        }
        for child in &sample.children {
            let mut body = Vec::new();
            write(child, &mut body);
            let before = out.len();
            put_len_prefixed(out, 8, &body);
            assert_eq!(out.len() - before, len_prefixed_len(8, body.len()));
        }
        if sample.far != 0 {
            put_varint_field(out, 536_870_911, sample.far);
        }
    }

    /// `bytes` read with this module as a `Sample`, checking wire types as prost does.
    fn read(mut reader: Reader<'_>) -> Result<Sample, ReadError> {
        let mut sample = Sample::default();
        while let Some((field, wire_type)) = reader.key()? {
            match (field, wire_type) {
                (1, VARINT) => sample.number = reader.varint()?,
                (2, VARINT) => sample.signed = reader.varint()? as i64,
                (3, FIXED64) => sample.fixed = reader.fixed64()?,
                (4, FIXED32) => sample.small = reader.fixed32()?,
                (5, LEN) => sample.text = reader.str()?.to_owned(),
                (6, LEN) => sample.blob = reader.bytes()?.to_vec(),
                (7, VARINT) => sample.flag = reader.varint()? != 0,
                (8, LEN) => sample.children.push(read(reader.message()?)?),
                (536_870_911, VARINT) => sample.far = reader.varint()?,
                (1..=8 | 536_870_911, _) => {
                    return Err(ReadError::WrongWireType { field, wire_type });
                }
                _ => reader.skip(field, wire_type)?,
            }
        }
        Ok(sample)
    }

    /// Reads every field of a message, skipping each.
    fn skip_all(bytes: &[u8]) -> Result<(), ReadError> {
        let mut reader = Reader::new(bytes);
        while let Some((field, wire_type)) = reader.key()? {
            reader.skip(field, wire_type)?;
        }
        Ok(())
    }

    /// Bytes with every kind of damage: cut, changed, extended.
    fn damaged() -> impl Strategy<Value = Vec<u8>> {
        (
            sample(2),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
        )
            .prop_map(|(sample, damage)| {
                let mut bytes = sample.encode_to_vec();
                for (at, byte, how) in damage {
                    match how {
                        0 if !bytes.is_empty() => bytes.truncate(at.index(bytes.len())),
                        1 if !bytes.is_empty() => {
                            let at = at.index(bytes.len());
                            bytes[at] = byte;
                        }
                        _ => bytes.push(byte),
                    }
                }
                bytes
            })
    }

    proptest! {
        #[test]
        fn varints_are_written_and_read_as_prost_does(value: u64) {
            let mut ours = Vec::new();
            put_varint_field(&mut ours, 1, value);
            let prost = Sample { number: value, ..Default::default() }.encode_to_vec();
            if value != 0 {
                prop_assert_eq!(&ours, &prost);
            }
            prop_assert_eq!(ours.len(), 1 + varint_len(value));
            let mut reader = Reader::new(&ours[1..]);
            prop_assert_eq!(reader.varint(), Ok(value));
            prop_assert_eq!(reader.position(), ours.len() - 1);
        }

        #[test]
        fn messages_are_written_as_prost_writes_them(sample in sample(3)) {
            let mut ours = Vec::new();
            write(&sample, &mut ours);
            prop_assert_eq!(ours, sample.encode_to_vec());
        }

        #[test]
        fn messages_are_read_as_prost_reads_them(sample in sample(3)) {
            let bytes = sample.encode_to_vec();
            prop_assert_eq!(read(Reader::new(&bytes)), Ok(sample));
            // SAFETY: prost wrote the strings from `String`s.
            let checked = unsafe { Reader::new_utf8_checked(&bytes) };
            prop_assert_eq!(read(checked).map(|s| s.encode_to_vec()), Ok(bytes));
        }

        #[test]
        fn damaged_bytes_are_refused_where_prost_refuses_them(bytes in damaged()) {
            let prost = Sample::decode(&bytes[..]);
            let ours = read(Reader::new(&bytes));
            prop_assert_eq!(ours.as_ref().ok(), prost.as_ref().ok(), "{:?} {:?}", ours, prost);
            prop_assert_eq!(skip_all(&bytes).is_ok(), Anything::decode(&bytes[..]).is_ok());
        }

        #[test]
        fn long_varints_are_refused_where_prost_refuses_them(
            continued in prop::collection::vec(0x80u8.., 0..11),
            last: u8,
        ) {
            let mut bytes = vec![0x08];
            bytes.extend_from_slice(&continued);
            bytes.push(last);
            prop_assert_eq!(read(Reader::new(&bytes)).ok(), Sample::decode(&bytes[..]).ok());
        }

        #[test]
        fn random_bytes_are_skipped_where_prost_skips_them(
            bytes in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            prop_assert_eq!(skip_all(&bytes).is_ok(), Anything::decode(&bytes[..]).is_ok());
            prop_assert_eq!(read(Reader::new(&bytes)).ok(), Sample::decode(&bytes[..]).ok());
        }
    }

    #[test]
    fn overflowing_varints_are_refused() {
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).varint(), Ok(u64::MAX));
        let mut tenth_too_big = max;
        tenth_too_big[9] = 0x02;
        assert_eq!(
            Reader::new(&tenth_too_big).varint(),
            Err(ReadError::VarintOverflow)
        );
        let eleven = [0x80; 11];
        assert_eq!(
            Reader::new(&eleven).varint(),
            Err(ReadError::VarintOverflow)
        );
        assert_eq!(Reader::new(&[0x80]).varint(), Err(ReadError::Truncated));
        for bytes in [&tenth_too_big[..], &eleven[..]] {
            let mut field = vec![0x08];
            field.extend_from_slice(bytes);
            assert!(Sample::decode(&field[..]).is_err(), "prost agrees");
        }
    }

    #[test]
    fn groups_are_skipped_and_unbalanced_ones_refused() {
        // Field 9 as a group holding a varint field 1, then field 1 = 5.
        let group = [
            key(9, START_GROUP) as u8,
            0x08,
            0x07,
            key(9, END_GROUP) as u8,
            0x08,
            0x05,
        ];
        let sample = read(Reader::new(&group)).unwrap();
        assert_eq!(sample.number, 5);
        assert_eq!(Sample::decode(&group[..]).unwrap(), sample);
        for bad in [&group[..3], &group[3..]] {
            assert_eq!(skip_all(bad), Err(ReadError::UnbalancedGroup));
        }
        let deep: Vec<u8> = std::iter::repeat_n(key(9, START_GROUP) as u8, 200).collect();
        assert_eq!(skip_all(&deep), Err(ReadError::TooDeep));
    }
}
