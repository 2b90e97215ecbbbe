//! JSON `data` of a numeric tensor read straight into its little-endian bytes: nested
//! arrays walked as they are parsed, each number checked against the datatype, with no
//! JSON tree or typed list between.

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::tensor::DataType;

/// How deep `data` may nest (Triton's `HTTP_MAX_JSON_NESTING_DEPTH`).
pub const MAX_NESTING: usize = 100;

/// The datatypes read here; BOOL, BYTES and the halves take the general path.
pub fn is_numeric(datatype: DataType) -> bool {
    !matches!(
        datatype,
        DataType::Bool | DataType::Bytes | DataType::Fp16 | DataType::Bf16
    )
}

/// `data`'s numbers, flat or nested, as `datatype`'s bytes in row-major order.
pub fn read(datatype: DataType, data: &RawValue) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(data.get().len());
    let mut count = 0;
    let mut parser = serde_json::Deserializer::from_str(data.get());
    Elements {
        datatype,
        out: &mut out,
        count: &mut count,
        depth: 0,
    }
    .deserialize(&mut parser)
    .map_err(|e| {
        // The message a visitor wrote, without serde_json's position suffix.
        let text = e.to_string();
        match text.rfind(" at line ") {
            Some(at) if text.starts_with('`') => text[..at].to_owned(),
            _ => format!("`data`: {text}"),
        }
    })?;
    Ok(out)
}

/// One JSON value of `data`: an array (walked) or a number (written).
struct Elements<'a> {
    datatype: DataType,
    out: &'a mut Vec<u8>,
    count: &'a mut usize,
    depth: usize,
}

enum Number {
    Signed(i64),
    Unsigned(u64),
    Float(f64),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Signed(v) => write!(f, "{v}"),
            Number::Unsigned(v) => write!(f, "{v}"),
            Number::Float(v) => write!(f, "{v}"),
        }
    }
}

impl Elements<'_> {
    fn push<E: de::Error>(self, n: Number) -> Result<(), E> {
        let at = *self.count;
        let datatype = self.datatype;
        let range = |n: &Number| {
            E::custom(format!(
                "`data` element {at} is {n}, out of range for {datatype}"
            ))
        };
        let expected = |n: &Number, what: &str| {
            E::custom(format!(
                "`data` element {at} is {n}, expected {what} for {datatype}"
            ))
        };
        let signed = |n: &Number| match n {
            Number::Signed(v) => Ok(i128::from(*v)),
            Number::Unsigned(v) => Ok(i128::from(*v)),
            Number::Float(_) => Err(expected(n, "an integer")),
        };
        let unsigned = |n: &Number| match n {
            Number::Unsigned(v) => Ok(*v),
            Number::Signed(v) => {
                u64::try_from(*v).map_err(|_| expected(n, "a non-negative integer"))
            }
            Number::Float(_) => Err(expected(n, "a non-negative integer")),
        };
        let float = |n: &Number| match n {
            Number::Signed(v) => *v as f64,
            Number::Unsigned(v) => *v as f64,
            Number::Float(v) => *v,
        };
        macro_rules! int {
            ($ty:ty, $value:expr) => {{
                let v = $value?;
                let v = <$ty>::try_from(v).map_err(|_| range(&n))?;
                self.out.extend_from_slice(&v.to_le_bytes());
            }};
        }
        match datatype {
            DataType::Int8 => int!(i8, signed(&n)),
            DataType::Int16 => int!(i16, signed(&n)),
            DataType::Int32 => int!(i32, signed(&n)),
            DataType::Int64 => int!(i64, signed(&n)),
            DataType::Uint8 => int!(u8, unsigned(&n)),
            DataType::Uint16 => int!(u16, unsigned(&n)),
            DataType::Uint32 => int!(u32, unsigned(&n)),
            DataType::Uint64 => int!(u64, unsigned(&n)),
            DataType::Fp32 => self
                .out
                .extend_from_slice(&(float(&n) as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend_from_slice(&float(&n).to_le_bytes()),
            DataType::Bool | DataType::Bytes | DataType::Fp16 | DataType::Bf16 => {
                unreachable!("not numeric")
            }
        }
        *self.count += 1;
        Ok(())
    }

    fn not_a_number<E: de::Error>(self, found: &str) -> Result<(), E> {
        Err(E::custom(format!(
            "`data` element {} is {found}, expected a number for {}",
            self.count, self.datatype
        )))
    }
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a number or an array of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_NESTING {
            return Err(de::Error::custom(format!(
                "`data` nests deeper than {MAX_NESTING} levels"
            )));
        }
        while seq
            .next_element_seed(Elements {
                datatype: self.datatype,
                out: &mut *self.out,
                count: &mut *self.count,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Number::Signed(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Number::Unsigned(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Number::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.not_a_number(&format!("{v:?}"))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.not_a_number(&v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_a_number("null")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.not_a_number("an object")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_json(datatype: DataType, text: &str) -> Result<Vec<u8>, String> {
        read(datatype, &RawValue::from_string(text.into()).unwrap())
    }

    #[test]
    fn nested_and_flat_numbers_give_the_same_bytes() {
        let flat = read_json(DataType::Int32, "[1, -2, 3, 4]").unwrap();
        assert_eq!(
            flat,
            read_json(DataType::Int32, "[[1, -2], [3, 4]]").unwrap()
        );
        assert_eq!(&flat[4..8], &(-2i32).to_le_bytes());
        assert_eq!(
            read_json(DataType::Fp32, "[1, 2.5]").unwrap(),
            [1f32.to_le_bytes(), 2.5f32.to_le_bytes()].concat()
        );
        assert_eq!(
            read_json(DataType::Uint64, &format!("[{}]", u64::MAX)).unwrap(),
            u64::MAX.to_le_bytes()
        );
    }

    #[test]
    fn each_mistake_names_the_element() {
        let err = |dt, text: &str| read_json(dt, text).unwrap_err();
        assert_eq!(
            err(DataType::Int8, "[1, 300]"),
            "`data` element 1 is 300, out of range for INT8"
        );
        assert_eq!(
            err(DataType::Uint8, "[-1]"),
            "`data` element 0 is -1, expected a non-negative integer for UINT8"
        );
        assert_eq!(
            err(DataType::Int32, "[1.5]"),
            "`data` element 0 is 1.5, expected an integer for INT32"
        );
        assert_eq!(
            err(DataType::Fp32, "[1, \"a\"]"),
            "`data` element 1 is \"a\", expected a number for FP32"
        );
        assert_eq!(
            err(DataType::Fp32, "[null]"),
            "`data` element 0 is null, expected a number for FP32"
        );
        let deep = format!("{}1{}", "[".repeat(101), "]".repeat(101));
        assert_eq!(
            err(DataType::Fp32, &deep),
            "`data` nests deeper than 100 levels"
        );
    }
}
