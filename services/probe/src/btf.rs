//! Field offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! aya-ebpf has no CO-RE, so the kernel programs read `tcp_sock` and `sock_common`
//! fields at offsets user space passes in. aya-obj parses BTF but keeps type
//! lookup crate-private, hence this small reader of the type section: find a
//! struct by name, then a member by name, descending into nested and anonymous
//! structs and unions.

use std::collections::HashMap;

/// What can go wrong reading BTF.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BtfError {
    /// Not BTF, or cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A kind this reader does not know (a newer kernel); the sizes after it are unknown.
    #[error("BTF type kind {0} is unknown")]
    UnknownKind(u32),
    /// The struct is not in this kernel's BTF.
    #[error("struct {0} not found in BTF")]
    NoStruct(String),
    /// No `btf_trace_<name>` typedef: the kernel has no such raw tracepoint.
    #[error("raw tracepoint {0} not found in BTF")]
    NoTracepoint(String),
    /// The struct has no such member.
    #[error("struct {0} has no member {1}")]
    NoMember(String, String),
    /// No enum in this kernel's BTF has that enumerator.
    #[error("enum {0} has no value {1}")]
    NoEnumerator(String, String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_PTR: u32 = 2;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;

struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name_off: u32,
    /// Referenced type for modifiers and typedefs.
    type_ref: u32,
    members: Vec<Member>,
    /// Enumerators of an enum: (name offset, value).
    values: Vec<(u32, i64)>,
}

/// The kernel's types, enough to find member offsets.
pub struct Btf {
    strings: Vec<u8>,
    /// Index 0 is the void type; ids start at 1.
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Parses raw BTF (little-endian, as on x86_64 and arm64).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let type_data = data
            .get(types_at..types_at + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            type_ref: 0,
            members: Vec::new(),
            values: Vec::new(),
        }];
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut values = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(type_data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let e = at + i * 8;
                        let v = u32_at(type_data, e + 4)? as i32;
                        values.push((u32_at(type_data, e)?, i64::from(v)));
                    }
                    vlen * 8
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let e = at + i * 12;
                        let lo = u64::from(u32_at(type_data, e + 4)?);
                        let hi = u64::from(u32_at(type_data, e + 8)?);
                        values.push((u32_at(type_data, e)?, ((hi << 32) | lo) as i64));
                    }
                    vlen * 12
                }
                KIND_FUNC_PROTO => {
                    // Parameters: (name offset, type), kept as members.
                    for i in 0..vlen {
                        let m = at + i * 8;
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            bit_offset: 0,
                        });
                    }
                    vlen * 8
                }
                15 => vlen * 12,
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                other => return Err(BtfError::UnknownKind(other)),
            };
            at += extra;
            types.push(Type {
                kind,
                name_off,
                type_ref: size_or_type,
                members,
                values,
            });
        }
        let mut btf = Self {
            strings,
            types,
            structs: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && !ty.members.is_empty() {
                let name = btf.name(ty.name_off).to_owned();
                btf.structs.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    /// Reads `/sys/kernel/btf/vmlinux`.
    pub fn from_sys_fs() -> std::io::Result<Result<Self, BtfError>> {
        Ok(Self::parse(&std::fs::read("/sys/kernel/btf/vmlinux")?))
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.type_ref
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`, searching nested members depth first.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        self.find(&self.types[id as usize], member, 0, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.to_owned(), member.to_owned()))
    }

    /// Value of the enumerator `value` of `enum name`.
    pub fn enum_value(&self, name: &str, value: &str) -> Result<i64, BtfError> {
        self.types
            .iter()
            .filter(|t| {
                (t.kind == KIND_ENUM || t.kind == KIND_ENUM64) && self.name(t.name_off) == name
            })
            .flat_map(|t| t.values.iter())
            .find(|(off, _)| self.name(*off) == value)
            .map(|&(_, v)| v)
            .ok_or_else(|| BtfError::NoEnumerator(name.to_owned(), value.to_owned()))
    }

    /// The argument types of raw tracepoint `name` (its `TP_PROTO`, after the
    /// context pointer every BPF trace function takes), from the kernel's
    /// `btf_trace_<name>` typedef, written as `*sock`, `int`, `*void`.
    pub fn tracepoint_args(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let missing = || BtfError::NoTracepoint(name.to_owned());
        let typedef = format!("btf_trace_{name}");
        let ty = self
            .types
            .iter()
            .find(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == typedef)
            .ok_or_else(missing)?;
        let ptr = self.resolve(ty.type_ref).ok_or_else(missing)?;
        let proto = (ptr.kind == KIND_PTR)
            .then(|| self.resolve(ptr.type_ref))
            .flatten()
            .filter(|t| t.kind == KIND_FUNC_PROTO)
            .ok_or_else(missing)?;
        Ok(proto
            .members
            .iter()
            .skip(1)
            .map(|p| self.describe(p.type_id, 0))
            .collect())
    }

    fn describe(&self, id: u32, depth: u32) -> String {
        match self.resolve(id) {
            None => "void".into(),
            Some(t) if t.kind == KIND_PTR && depth < 8 => {
                format!("*{}", self.describe(t.type_ref, depth + 1))
            }
            Some(t) if t.kind == 0 => "void".into(),
            Some(t) => self.name(t.name_off).to_owned(),
        }
    }

    fn find(&self, ty: &Type, member: &str, base_bits: u32, depth: u32) -> Option<u32> {
        if depth > 16 {
            return None;
        }
        for m in &ty.members {
            let bits = base_bits + m.bit_offset;
            if self.name(m.name_off) == member {
                return Some(bits);
            }
        }
        for m in &ty.members {
            if let Some(inner) = self.resolve(m.type_id)
                && (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                && let Some(found) = self.find(inner, member, base_bits + m.bit_offset, depth + 1)
            {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"").is_err());
        assert!(
            Btf::parse(&[
                0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ])
            .is_err()
        );
    }

    #[test]
    fn finds_tcp_sock_fields_in_this_kernel() {
        let Ok(Ok(btf)) = Btf::from_sys_fs() else {
            eprintln!("no /sys/kernel/btf/vmlinux here: skipped");
            return;
        };
        let write_seq = btf.member_offset("tcp_sock", "write_seq").unwrap();
        let copied_seq = btf.member_offset("tcp_sock", "copied_seq").unwrap();
        assert!(write_seq > 0 && copied_seq > 0 && write_seq != copied_seq);
        let daddr = btf.member_offset("sock", "skc_daddr").unwrap();
        assert_eq!(
            btf.member_offset("sock", "skc_rcv_saddr").unwrap(),
            daddr + 4
        );
        assert!(btf.member_offset("sock", "skc_flags").is_ok());
        assert_eq!(
            btf.tracepoint_args("sock_send_length").unwrap(),
            ["*sock", "int", "int"]
        );
        assert_eq!(
            btf.tracepoint_args("inet_sock_set_state").unwrap(),
            ["*sock", "int", "int"]
        );
        assert!(btf.tracepoint_args("no_such_tracepoint").is_err());
        assert!(btf.member_offset("tcp_sock", "rcv_nxt").is_ok());
        // enum sock_flags { SOCK_DEAD, SOCK_DONE, … } since forever.
        assert_eq!(btf.enum_value("sock_flags", "SOCK_DONE").unwrap(), 1);
        assert!(btf.enum_value("sock_flags", "NO_SUCH_FLAG").is_err());
        assert!(matches!(
            btf.member_offset("tcp_sock", "no_such_field"),
            Err(BtfError::NoMember(..))
        ));
    }
}
