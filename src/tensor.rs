//! The domain tensor: a datatype, a shape and little-endian bytes (or BYTES elements),
//! independent of gRPC and of any engine.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// Every KServe v2 datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol's name ("FP32").
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses the protocol's name ("FP32") or Triton's model-config name ("TYPE_FP32";
    /// Triton calls BYTES "TYPE_STRING").
    pub fn parse(name: &str) -> Option<DataType> {
        let bare = name.strip_prefix("TYPE_").unwrap_or(name);
        if bare == "STRING" && name.starts_with("TYPE_") {
            return Some(DataType::Bytes);
        }
        DataType::ALL.into_iter().find(|dt| dt.as_str() == bare)
    }

    /// Triton's model-config name ("TYPE_FP32").
    pub fn config_name(self) -> String {
        match self {
            DataType::Bytes => "TYPE_STRING".to_owned(),
            other => format!("TYPE_{}", other.as_str()),
        }
    }

    /// Bytes per element in raw form; `None` for BYTES, whose elements are length-prefixed.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, row-major, little-endian, no padding (the protocol's raw form).
    Fixed(Bytes),
    /// BYTES elements, one entry each.
    Bytes(Vec<Bytes>),
}

/// A named tensor after validation: its byte length always agrees with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Zeros (empty strings for BYTES) of this type and shape.
    pub fn zeros(name: &str, datatype: DataType, shape: Vec<usize>) -> Tensor {
        let count: usize = shape.iter().product();
        let data = match datatype.element_size() {
            Some(size) => TensorData::Fixed(bytes::Bytes::from(vec![0u8; count * size])),
            None => TensorData::Bytes(vec![bytes::Bytes::new(); count]),
        };
        Tensor {
            name: name.to_owned(),
            datatype,
            shape,
            data,
        }
    }

    /// FP32 values in [0, 1) from a xorshift seeded by `seed`: reproducible, with no
    /// dependency, and enough to exercise an engine's kernels (warm-up, probes).
    pub fn noise(name: &str, shape: Vec<usize>, seed: u32) -> Tensor {
        let mut state = 0x9E37_79B9u32 ^ seed.wrapping_mul(0x85EB_CA6B);
        let count: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..count)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                ((state >> 8) as f32 / (1u32 << 24) as f32).to_le_bytes()
            })
            .collect();
        Tensor {
            name: name.to_owned(),
            datatype: DataType::Fp32,
            shape,
            data: TensorData::Fixed(bytes.into()),
        }
    }

    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// How many bytes the tensor holds in memory (BYTES: the sum of its elements).
    pub fn byte_size(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(items) => items.iter().map(Bytes::len).sum(),
        }
    }

    /// The protocol's raw form: fixed-size elements as they are, BYTES elements each
    /// prefixed by a 4-byte little-endian length.
    pub fn to_raw(&self) -> Bytes {
        match &self.data {
            TensorData::Fixed(b) => b.clone(),
            TensorData::Bytes(items) => {
                let mut out = Vec::with_capacity(items.iter().map(|i| i.len() + 4).sum());
                for item in items {
                    // Elements longer than u32::MAX cannot arrive: requests are size-limited.
                    out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                    out.extend_from_slice(item);
                }
                out.into()
            }
        }
    }
}

/// Fixed-size little-endian elements of raw tensor bytes, N bytes each (a trailing partial
/// element is left out: callers check lengths first).
pub fn le_chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|c| c.try_into().expect("chunks_exact gives N bytes"))
}

/// Splits raw BYTES framing into its elements, checking that exactly `count` elements fill
/// `raw` with no bytes left over.
pub fn parse_bytes_framing(raw: &Bytes, count: usize) -> Result<Vec<Bytes>, String> {
    // Never trust `count` for the allocation: each element needs at least 4 bytes.
    let mut items = Vec::with_capacity(count.min(raw.len() / 4));
    let mut at = 0usize;
    for index in 0..count {
        let Some(prefix) = raw.get(at..at + 4) else {
            return Err(format!(
                "BYTES element {index} of {count}: length prefix runs past the end of the data ({} bytes)",
                raw.len()
            ));
        };
        let len = u32::from_le_bytes(prefix.try_into().expect("4-byte slice")) as usize;
        at += 4;
        if len > raw.len() - at {
            return Err(format!(
                "BYTES element {index} of {count}: declares {len} bytes but only {} remain",
                raw.len() - at
            ));
        }
        items.push(raw.slice(at..at + len));
        at += len;
    }
    if at != raw.len() {
        return Err(format!(
            "BYTES data holds {} bytes after the {count} elements that the shape calls for",
            raw.len() - at
        ));
    }
    Ok(items)
}

/// A shape written the protocol's way, `[1, 3, 48, 192]`.
pub fn shape_string<T: fmt::Display>(dims: &[T]) -> String {
    let parts: Vec<String> = dims.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Stacks tensors that agree on every dim but the first.
pub fn concat_rows(parts: &[&Tensor]) -> Tensor {
    let first = parts[0];
    let mut shape = first.shape.clone();
    shape[0] = parts.iter().map(|t| t.shape[0]).sum();
    let data = match &first.data {
        TensorData::Fixed(_) => {
            let mut out = BytesMut::with_capacity(parts.iter().map(|t| t.byte_size()).sum());
            for t in parts {
                if let TensorData::Fixed(b) = &t.data {
                    out.extend_from_slice(b);
                }
            }
            TensorData::Fixed(out.freeze())
        }
        TensorData::Bytes(_) => TensorData::Bytes(
            parts
                .iter()
                .flat_map(|t| match &t.data {
                    TensorData::Bytes(items) => items.clone(),
                    TensorData::Fixed(_) => Vec::new(),
                })
                .collect(),
        ),
    };
    Tensor {
        name: first.name.clone(),
        datatype: first.datatype,
        shape,
        data,
    }
}

/// Cuts a batch output back into one tensor per request, `rows[i]` rows each. Fixed-size
/// data is sliced without copying. An output whose leading dimension is not the rows sent,
/// or whose data does not fill its shape, is refused with the reason.
pub fn split_rows(t: Tensor, rows: &[usize]) -> Result<Vec<Tensor>, String> {
    let total: usize = rows.iter().sum();
    if t.shape.first() != Some(&total) {
        return Err(format!(
            "output '{}' has shape {:?}, whose first dimension should be the {total} rows the call carried",
            t.name, t.shape
        ));
    }
    let elements = t.element_count();
    let filled = match &t.data {
        TensorData::Fixed(b) => Some(b.len()) == t.datatype.element_size().map(|s| s * elements),
        TensorData::Bytes(items) => items.len() == elements,
    };
    if !filled {
        return Err(format!(
            "output '{}': its data does not fill its shape {:?}",
            t.name, t.shape
        ));
    }
    let per_row = elements.checked_div(total).unwrap_or(0);
    let mut at = 0;
    Ok(rows
        .iter()
        .map(|&n| {
            let mut shape = t.shape.clone();
            shape[0] = n;
            let data = match &t.data {
                TensorData::Fixed(b) => {
                    let stride = per_row * t.datatype.element_size().unwrap_or(1);
                    TensorData::Fixed(Bytes::slice(b, at * stride..(at + n) * stride))
                }
                TensorData::Bytes(items) => {
                    TensorData::Bytes(items[at * per_row..(at + n) * per_row].to_vec())
                }
            };
            at += n;
            Tensor {
                name: t.name.clone(),
                datatype: t.datatype,
                shape,
                data,
            }
        })
        .collect())
}

/// An FP32 tensor named `x`, for tests.
#[cfg(test)]
pub(crate) fn fp32(shape: Vec<usize>, values: &[f32]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor {
        name: "x".into(),
        datatype: DataType::Fp32,
        shape,
        data: TensorData::Fixed(bytes.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
            assert_eq!(DataType::parse(&dt.config_name()), Some(dt));
        }
        assert_eq!(DataType::parse("TYPE_STRING"), Some(DataType::Bytes));
        assert_eq!(DataType::parse("STRING"), None);
        assert_eq!(DataType::parse("FLOAT"), None);
    }

    #[test]
    fn bytes_framing_round_trips_and_rejects_bad_frames() {
        let t = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![3],
            data: TensorData::Bytes(vec![
                Bytes::from_static(b"ab"),
                Bytes::new(),
                Bytes::from_static(b"xyz"),
            ]),
        };
        let raw = t.to_raw();
        assert_eq!(raw.len(), 4 * 3 + 5);
        assert_eq!(
            parse_bytes_framing(&raw, 3).unwrap(),
            match &t.data {
                TensorData::Bytes(items) => items.clone(),
                _ => unreachable!(),
            }
        );
        assert!(parse_bytes_framing(&raw, 2)
            .unwrap_err()
            .contains("after the 2 elements"));
        assert!(parse_bytes_framing(&raw, 4)
            .unwrap_err()
            .contains("element 3"));
        let lying = Bytes::from_static(&[255, 255, 255, 255, 1]);
        assert!(parse_bytes_framing(&lying, 1)
            .unwrap_err()
            .contains("declares 4294967295"));
        // A huge declared count must not allocate for it.
        assert!(parse_bytes_framing(&Bytes::new(), usize::MAX).is_err());
    }

    #[test]
    fn concat_then_split_gives_back_each_request() {
        let a = fp32(vec![1, 2], &[1.0, 2.0]);
        let b = fp32(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let joined = concat_rows(&[&a, &b]);
        assert_eq!(joined.shape, vec![3, 2]);
        let parts = split_rows(joined, &[1, 2]).unwrap();
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn bytes_tensors_concat_and_split() {
        let s = |items: &[&'static [u8]]| Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![items.len(), 1],
            data: TensorData::Bytes(items.iter().map(|i| Bytes::from_static(i)).collect()),
        };
        let (a, b) = (s(&[b"a"]), s(&[b"bb", b"ccc"]));
        let parts = split_rows(concat_rows(&[&a, &b]), &[1, 2]).unwrap();
        assert_eq!(parts, vec![a, b]);
    }
}
