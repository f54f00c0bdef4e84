//! GGUF (llama.cpp's model format, versions 2 and 3) read from a byte slice, with
//! dequantizers to f32 and the mapping of Llama-architecture files onto [`crate::llama`].
//!
//! GGUF files come from users and the network, so every count, length and offset read from one
//! is checked against the bytes actually present before anything is indexed or allocated:
//! a truncated or corrupted file gives [`Error::InvalidGguf`], never a panic or a huge
//! allocation.
//!
//! Layout (all little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64`
//! metadata count, the metadata key/values, the tensor infos, padding up to
//! `general.alignment` (default 32), then the tensor data; each tensor's offset is relative to
//! the start of that data section.

pub mod dequant;
pub mod import;
pub mod writer;

use std::collections::HashMap;

pub use dequant::GgmlType;
pub use import::{import, Imported};

use crate::{Error, Result};

/// `GGUF` read as a little-endian `u32`.
pub const MAGIC: u32 = 0x4655_4747;
/// Tensor-data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays nest at most this deep; deeper nesting is only ever a corrupted file and
/// would otherwise let a small file exhaust the stack.
const MAX_NESTING: usize = 8;

pub(crate) fn err(msg: impl std::fmt::Display) -> Error {
    Error::InvalidGguf(format!("gguf: {msg}"))
}

/// Type tags of metadata values, as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Result<Self> {
        use ValueType::*;
        Ok(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            other => return Err(err(format!("unknown metadata value type {other}"))),
        })
    }

    /// The fewest bytes one value of this type occupies; bounds array lengths by the bytes left.
    fn min_size(self) -> usize {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type and elements (all of that type).
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type, if it is a non-negative value that fits `u64`. Writers disagree on the
    /// integer width of counts and ids (u32 from llama.cpp, sometimes i32 or u64 elsewhere).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type as `i64`, if it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float or integer type as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

/// Where one tensor lives and how it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml `ne`: innermost (contiguous) dimension first. A 2-D `[k, n]` tensor is `n` rows of
    /// `k` elements.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Byte size of the data (checked to lie inside the file).
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements (checked not to overflow when the info was read).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    /// Key/values in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the tensor data section in the file.
    pub data_offset: usize,
    bytes: &'a [u8],
    by_key: HashMap<String, usize>,
    by_tensor: HashMap<String, usize>,
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(err(format!(
                "truncated: {what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u64` count of items each at least `min_size` bytes long: rejected when the rest of the
    /// file could not hold that many, so callers may allocate for it.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|n| n.checked_mul(min_size).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| {
            err(format!("{what} is {n} but only {} bytes remain at offset {}", self.remaining(), self.pos))
        })
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(1, what)?;
        let at = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| err(format!("{what} at offset {at} is not UTF-8")))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("u8")?[0]),
            ValueType::I8 => Value::I8(self.array::<1>("i8")?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            ValueType::U32 => Value::U32(self.u32("u32")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            ValueType::Bool => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(err(format!("bool value {b} at offset {}", self.pos - 1))),
            },
            ValueType::String => Value::String(self.string("string length")?),
            ValueType::U64 => Value::U64(self.u64("u64")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            ValueType::Array => {
                if depth >= MAX_NESTING {
                    return Err(err(format!("arrays nested deeper than {MAX_NESTING}")));
                }
                let elem = ValueType::from_u32(self.u32("array element type")?)?;
                let n = self.count(elem.min_size(), "array length")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parse the header, metadata and tensor infos of `bytes`, checking that every tensor's
    /// data lies inside `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let magic = r.u32("magic")?;
        if magic != MAGIC {
            return Err(err(format!("not a GGUF file (magic {magic:#010x})")));
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err(err("version 1 (32-bit counts) is not supported; re-convert with a current llama.cpp")),
            v if v.swap_bytes() <= 3 => return Err(err("big-endian GGUF files are not supported")),
            v => return Err(err(format!("unsupported version {v}"))),
        }
        // A tensor info is at least name length (8) + n_dims (4) + type (4) + offset (8).
        let n_tensors = r.count(24, "tensor count")?;
        // A key/value is at least key length (8) + type (4) + a 1-byte value.
        let n_kv = r.count(13, "metadata count")?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut by_key = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = r.string("metadata key length")?;
            let ty = ValueType::from_u32(r.u32("metadata value type")?)?;
            let value = r.value(ty, 0)?;
            if by_key.insert(key.clone(), metadata.len()).is_some() {
                return Err(err(format!("duplicate metadata key `{key}`")));
            }
            metadata.push((key, value));
        }
        let alignment = match by_key.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(err(format!("general.alignment {v:?} is not a power of two"))),
            },
        };

        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("tensor name length")?;
            let n_dims = r.u32("tensor dimension count")? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!("tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let ty = GgmlType::from_u32(r.u32("tensor type")?)
                .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
            let offset = r.u64("tensor offset")?;
            infos.push((name, dims, ty, offset));
        }
        let data_offset = usize::try_from((r.pos as u64).div_ceil(alignment) * alignment)
            .ok()
            .filter(|&o| o <= bytes.len())
            .ok_or_else(|| err("truncated: no tensor data section"))?;
        let data_len = (bytes.len() - data_offset) as u64;

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut by_tensor = HashMap::with_capacity(n_tensors);
        for (name, dims, ty, offset) in infos {
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| usize::try_from(n).is_ok())
                .ok_or_else(|| err(format!("tensor `{name}` dims {dims:?} overflow")))?;
            let (block, type_size) = ty.block_layout();
            if dims[0] % block as u64 != 0 {
                return Err(err(format!("tensor `{name}`: row length {} is not a multiple of {ty:?}'s block {block}", dims[0])));
            }
            let size = (n / block as u64)
                .checked_mul(type_size as u64)
                .ok_or_else(|| err(format!("tensor `{name}` size overflows")))?;
            if offset % alignment != 0 {
                return Err(err(format!("tensor `{name}` offset {offset} is not aligned to {alignment}")));
            }
            if offset.checked_add(size).is_none_or(|end| end > data_len) {
                return Err(err(format!(
                    "truncated: tensor `{name}` needs bytes {offset}..{} of a {data_len}-byte data section",
                    offset.saturating_add(size)
                )));
            }
            if by_tensor.insert(name.clone(), tensors.len()).is_some() {
                return Err(err(format!("duplicate tensor `{name}`")));
            }
            // Both fit in data_len, which is a usize.
            tensors.push(TensorInfo { name, dims, ty, offset, size: size as usize });
        }
        // Tensors must not share bytes: each is dequantized on its own, so aliases would let a
        // small file stand for any number of full-size tensors (terabytes of f32).
        let mut ranges: Vec<(u64, u64, &str)> =
            tensors.iter().filter(|t| t.size > 0).map(|t| (t.offset, t.offset + t.size as u64, t.name.as_str())).collect();
        ranges.sort_unstable();
        if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(err(format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2)));
        }
        Ok(Gguf { version, metadata, tensors, alignment, data_offset, bytes, by_key, by_tensor })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.by_key.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(v) => v.as_str().ok_or_else(|| err(format!("`{key}` is {:?}, not a string", v.value_type()))),
            None => Err(err(format!("missing metadata `{key}`"))),
        }
    }

    /// A required non-negative integer value that fits `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| err(format!("`{key}` = {v:?} is not a non-negative integer"))),
            None => Err(err(format!("missing metadata `{key}`"))),
        }
    }

    /// An optional number; present but not numeric is an error.
    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| err(format!("`{key}` = {v:?} is not a number"))))
            .transpose()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_tensor.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of a tensor (bounds were checked by [`Gguf::parse`]).
    pub fn tensor_data(&self, t: &TensorInfo) -> &'a [u8] {
        let start = self.data_offset + t.offset as usize;
        &self.bytes[start..start + t.size]
    }

    /// A tensor dequantized to f32, in ggml order (innermost dimension first).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| err(format!("missing tensor `{name}`")))?;
        dequant::dequantize(t.ty, self.tensor_data(t), t.n_elements())
            .map_err(|e| err(format!("tensor `{name}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{write_gguf, WriterTensor};
    use super::*;

    fn sample() -> Vec<u8> {
        let md = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("a.u8".into(), Value::U8(7)),
            ("a.i8".into(), Value::I8(-7)),
            ("a.u16".into(), Value::U16(65535)),
            ("a.i16".into(), Value::I16(-300)),
            ("a.u32".into(), Value::U32(1 << 31)),
            ("a.i32".into(), Value::I32(-5)),
            ("a.f32".into(), Value::F32(1.5)),
            ("a.bool".into(), Value::Bool(true)),
            ("a.u64".into(), Value::U64(u64::MAX)),
            ("a.i64".into(), Value::I64(i64::MIN)),
            ("a.f64".into(), Value::F64(-2.25)),
            ("a.strs".into(), Value::Array(ValueType::String, vec![Value::String("x y".into()), Value::String("ü".into())])),
            (
                "a.nested".into(),
                Value::Array(ValueType::Array, vec![Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)])]),
            ),
        ];
        let t = vec![
            WriterTensor::f32("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            WriterTensor::f32("b", &[5], &[0.5; 5]),
        ];
        write_gguf(&md, &t, 64)
    }

    #[test]
    fn round_trips_every_value_type() {
        let bytes = sample();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 64);
        assert_eq!(g.data_offset % 64, 0);
        assert_eq!(g.get("a.u64"), Some(&Value::U64(u64::MAX)));
        assert_eq!(g.get("a.i64").and_then(Value::as_i64), Some(i64::MIN));
        assert_eq!(g.get("a.i8").and_then(Value::as_u64), None);
        assert_eq!(g.get("a.f64"), Some(&Value::F64(-2.25)));
        assert_eq!(g.get("a.bool").and_then(Value::as_bool), Some(true));
        assert_eq!(g.get("a.strs").and_then(Value::as_array).map(|a| a.len()), Some(2));
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        let nested = g.get("a.nested").and_then(Value::as_array).unwrap();
        assert_eq!(nested[0], Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]));
        assert_eq!(g.tensor("w").unwrap().dims, vec![3, 2]);
        assert_eq!(g.tensor_f32("w").unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(g.tensor_f32("b").unwrap(), vec![0.5; 5]);
        assert_eq!(g.tensor("b").unwrap().offset % 64, 0);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            match Gguf::parse(&bytes[..cut]) {
                Err(Error::InvalidGguf(m)) => assert!(m.starts_with("gguf: "), "{m}"),
                Err(e) => panic!("cut {cut}: wrong error {e}"),
                // Cutting only alignment padding after the last tensor's data is harmless.
                Ok(g) => assert!(g.tensors.iter().all(|t| g.data_offset + t.offset as usize + t.size <= cut)),
            }
        }
    }

    /// Two tensors over the same bytes: refused, so the f32 an import asks for is bounded by
    /// the file's size.
    #[test]
    fn aliased_tensors_are_refused() {
        let mut bytes = sample();
        // Tensor info of `b`: name, 1 dimension of 5, type F32, then its offset (64).
        let mut info = Vec::new();
        info.extend(1u64.to_le_bytes());
        info.push(b'b');
        info.extend(1u32.to_le_bytes());
        info.extend(5u64.to_le_bytes());
        info.extend(0u32.to_le_bytes());
        let at = bytes.windows(info.len()).position(|w| w == info).unwrap() + info.len();
        assert_eq!(bytes[at..at + 8], 64u64.to_le_bytes());
        bytes[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
        let e = Gguf::parse(&bytes).unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn absurd_counts_are_rejected_without_allocating() {
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(b"key");
        b.extend((ValueType::Array as u32).to_le_bytes());
        b.extend((ValueType::U64 as u32).to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        let e = Gguf::parse(&b).unwrap_err().to_string();
        assert!(e.contains("array length"), "{e}");

        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend((1u64 << 60).to_le_bytes());
        b.extend(0u64.to_le_bytes());
        assert!(Gguf::parse(&b).unwrap_err().to_string().contains("tensor count"));
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(b"k");
        b.extend((ValueType::Array as u32).to_le_bytes());
        for _ in 0..10_000 {
            b.extend((ValueType::Array as u32).to_le_bytes());
            b.extend(1u64.to_le_bytes());
        }
        assert!(Gguf::parse(&b).unwrap_err().to_string().contains("nested"));
    }

    #[test]
    fn corrupted_fields_are_errors() {
        let good = sample();
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(Gguf::parse(&bad).unwrap_err().to_string().contains("magic"));
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(Gguf::parse(&bad).unwrap_err().to_string().contains("big-endian"));
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(Gguf::parse(&bad).is_err());
        // Flip every byte of the header region in turn: errors or a parse, never a panic.
        let header_end = Gguf::parse(&good).unwrap().data_offset;
        for i in 0..header_end {
            for x in [0xffu8, 0x80, 0x01] {
                let mut bad = good.clone();
                bad[i] ^= x;
                let _ = Gguf::parse(&bad);
            }
        }
    }
}
