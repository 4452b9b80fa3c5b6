//! Sort keys of a cross-shard ORDER BY: each sort column's value is decoded once per row, by
//! type OID and format (text or binary), into a [`Key`] that orders exactly like PostgreSQL
//! orders the type — so that merging the shards' sorted streams gives the order one server
//! would have given. A type this module does not know is refused, never guessed.

use std::cmp::Ordering;

use bytes::Bytes;

use super::datetime;
use super::numeric::Numeric;

pub(crate) const BOOL: u32 = 16;
pub(crate) const BYTEA: u32 = 17;
pub(crate) const CHAR: u32 = 18;
pub(crate) const NAME: u32 = 19;
pub(crate) const INT8: u32 = 20;
pub(crate) const INT2: u32 = 21;
pub(crate) const INT4: u32 = 23;
pub(crate) const TEXT: u32 = 25;
pub(crate) const OID: u32 = 26;
pub(crate) const FLOAT4: u32 = 700;
pub(crate) const FLOAT8: u32 = 701;
pub(crate) const BPCHAR: u32 = 1042;
pub(crate) const VARCHAR: u32 = 1043;
pub(crate) const DATE: u32 = 1082;
pub(crate) const TIME: u32 = 1083;
pub(crate) const TIMESTAMP: u32 = 1114;
pub(crate) const TIMESTAMPTZ: u32 = 1184;
pub(crate) const NUMERIC: u32 = 1700;
pub(crate) const UUID: u32 = 2950;

/// A decoded sort value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Key {
    Null,
    Int(i64),
    Float(f64),
    Numeric(Numeric),
    Bool(bool),
    /// Days, microseconds (±infinity at the ends of the range).
    Time(i128),
    /// Compared byte-wise (text under a C collation, uuid, bytea).
    Bytes(Bytes),
}

/// Whether ordering values of `oid` follows a collation (byte order is only right for C).
pub(crate) fn is_collatable(oid: u32) -> bool {
    matches!(oid, TEXT | VARCHAR | BPCHAR)
}

/// Whether [`decode`] knows how to order `oid`.
pub(crate) fn is_sortable(oid: u32) -> bool {
    matches!(
        oid,
        BOOL | BYTEA
            | CHAR
            | NAME
            | INT8
            | INT2
            | INT4
            | TEXT
            | OID
            | FLOAT4
            | FLOAT8
            | BPCHAR
            | VARCHAR
            | DATE
            | TIME
            | TIMESTAMP
            | TIMESTAMPTZ
            | NUMERIC
            | UUID
    )
}

/// A readable name for the common type OIDs, for messages.
pub(crate) fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        BOOL => "boolean",
        BYTEA => "bytea",
        CHAR => "\"char\"",
        NAME => "name",
        INT8 => "bigint",
        INT2 => "smallint",
        INT4 => "integer",
        TEXT => "text",
        OID => "oid",
        114 => "json",
        650 => "cidr",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        FLOAT4 => "real",
        FLOAT8 => "double precision",
        BPCHAR => "bpchar",
        VARCHAR => "character varying",
        DATE => "date",
        TIME => "time without time zone",
        TIMESTAMP => "timestamp without time zone",
        TIMESTAMPTZ => "timestamp with time zone",
        1186 => "interval",
        1266 => "time with time zone",
        NUMERIC => "numeric",
        UUID => "uuid",
        3802 => "jsonb",
        _ => return None,
    })
}

/// Why a value cannot be a sort key (the text is the client's 0A000 message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("expected {expected} bytes, got {got}")]
    Length { expected: usize, got: usize },
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("bad float {0:?}")]
    BadFloat(String),
    #[error("cannot read a {what} value {value:?}")]
    Unreadable { what: &'static str, value: String },
    #[error("values of type {0} cannot be ordered across shards")]
    UnorderableType(&'static str),
    #[error("values of type OID {0} cannot be ordered across shards")]
    UnorderableOid(u32),
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], KeyError> {
    v.try_into().map_err(|_| KeyError::Length {
        expected: N,
        got: v.len(),
    })
}

fn utf8(v: &[u8]) -> Result<&str, KeyError> {
    std::str::from_utf8(v).map_err(|_| KeyError::InvalidUtf8)
}

fn text_float(s: &str) -> Result<f64, KeyError> {
    match s {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => s.parse().map_err(|_| KeyError::BadFloat(s.to_owned())),
    }
}

/// Decodes one value of type `oid` in `format` (0 text, 1 binary); `None` is SQL NULL.
pub(crate) fn decode(oid: u32, format: i16, value: Option<&Bytes>) -> Result<Key, KeyError> {
    let Some(v) = value else {
        return Ok(Key::Null);
    };
    let binary = format == 1;
    let bad = |what: &'static str| KeyError::Unreadable {
        what,
        value: String::from_utf8_lossy(v).into_owned(),
    };
    let key = match oid {
        INT2 | INT4 | INT8 | OID if !binary => {
            Key::Int(utf8(v)?.parse().map_err(|_| bad("integer"))?)
        }
        INT2 => Key::Int(i16::from_be_bytes(fixed(v)?).into()),
        INT4 => Key::Int(i32::from_be_bytes(fixed(v)?).into()),
        INT8 => Key::Int(i64::from_be_bytes(fixed(v)?)),
        OID => Key::Int(u32::from_be_bytes(fixed(v)?).into()),
        FLOAT4 | FLOAT8 if !binary => Key::Float(text_float(utf8(v)?)?),
        FLOAT4 => Key::Float(f32::from_be_bytes(fixed(v)?).into()),
        FLOAT8 => Key::Float(f64::from_be_bytes(fixed(v)?)),
        NUMERIC if !binary => Key::Numeric(Numeric::parse_text(v).ok_or_else(|| bad("numeric"))?),
        NUMERIC => Key::Numeric(Numeric::parse_binary(v).ok_or_else(|| bad("numeric"))?),
        BOOL if !binary => match &v[..] {
            b"t" => Key::Bool(true),
            b"f" => Key::Bool(false),
            _ => return Err(bad("boolean")),
        },
        BOOL => match &v[..] {
            [b] => Key::Bool(*b != 0),
            _ => return Err(bad("boolean")),
        },
        DATE if !binary => Key::Time(
            datetime::parse_date(utf8(v)?)
                .ok_or_else(|| bad("date (DateStyle must be ISO)"))?
                .into(),
        ),
        DATE => {
            let d = i32::from_be_bytes(fixed(v)?);
            Key::Time(match d {
                i32::MAX => i128::MAX,
                i32::MIN => i128::MIN,
                d => d.into(),
            })
        }
        TIME if !binary => Key::Time(
            datetime::parse_time(utf8(v)?)
                .ok_or_else(|| bad("time"))?
                .into(),
        ),
        TIMESTAMP | TIMESTAMPTZ if !binary => Key::Time(
            datetime::parse_timestamp(utf8(v)?, oid == TIMESTAMPTZ)
                .ok_or_else(|| bad("timestamp (DateStyle must be ISO)"))?,
        ),
        TIME | TIMESTAMP | TIMESTAMPTZ => {
            let t = i64::from_be_bytes(fixed(v)?);
            Key::Time(match t {
                i64::MAX => i128::MAX,
                i64::MIN => i128::MIN,
                t => t.into(),
            })
        }
        UUID if !binary => {
            // Canonical lowercase hex with dashes orders like the 16 bytes.
            if v.len() != 36 {
                return Err(bad("uuid"));
            }
            Key::Bytes(Bytes::from(v.to_ascii_lowercase()))
        }
        UUID => {
            fixed::<16>(v)?;
            Key::Bytes(v.clone())
        }
        BYTEA if !binary => {
            // Hex output (`\x…`) orders like the bytes; the old escape format does not.
            if !v.starts_with(b"\\x") {
                return Err(bad("bytea (bytea_output must be hex)"));
            }
            Key::Bytes(v.clone())
        }
        BPCHAR => {
            // Trailing blanks are insignificant for character(n).
            let end = v.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
            Key::Bytes(v.slice(..end))
        }
        BYTEA | CHAR | NAME | TEXT | VARCHAR => Key::Bytes(v.clone()),
        other => {
            return Err(match type_name(other) {
                Some(n) => KeyError::UnorderableType(n),
                None => KeyError::UnorderableOid(other),
            })
        }
    };
    Ok(key)
}

/// PostgreSQL's float order: NaN above everything (and equal to itself), -0 = 0.
fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compares two non-NULL keys of the same column.
fn cmp_values(a: &Key, b: &Key) -> Ordering {
    match (a, b) {
        (Key::Int(a), Key::Int(b)) => a.cmp(b),
        (Key::Float(a), Key::Float(b)) => cmp_float(*a, *b),
        (Key::Numeric(a), Key::Numeric(b)) => a.cmp(b),
        (Key::Bool(a), Key::Bool(b)) => a.cmp(b),
        (Key::Time(a), Key::Time(b)) => a.cmp(b),
        (Key::Bytes(a), Key::Bytes(b)) => a.cmp(b),
        // Values of one column always decode to the same variant.
        _ => Ordering::Equal,
    }
}

/// How one sort column orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Direction {
    pub descending: bool,
    pub nulls_first: bool,
}

/// Compares two keys under a direction (NULLs placed by `nulls_first` either way).
pub(crate) fn compare(a: &Key, b: &Key, d: Direction) -> Ordering {
    match (a, b) {
        (Key::Null, Key::Null) => Ordering::Equal,
        (Key::Null, _) if d.nulls_first => Ordering::Less,
        (Key::Null, _) => Ordering::Greater,
        (_, Key::Null) if d.nulls_first => Ordering::Greater,
        (_, Key::Null) => Ordering::Less,
        _ if d.descending => cmp_values(a, b).reverse(),
        _ => cmp_values(a, b),
    }
}

/// Compares two rows' key vectors column by column.
pub(crate) fn compare_rows(a: &[Key], b: &[Key], dirs: &[Direction]) -> Ordering {
    for ((x, y), d) in a.iter().zip(b).zip(dirs) {
        let o = compare(x, y, *d);
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scatter::numeric::tests::binary as numeric_binary;

    const ASC: Direction = Direction {
        descending: false,
        nulls_first: false,
    };

    fn k(oid: u32, format: i16, v: &[u8]) -> Key {
        decode(oid, format, Some(&Bytes::copy_from_slice(v))).unwrap()
    }

    /// Asserts that `values` (already encoded) are strictly increasing under `oid`.
    fn assert_increasing(oid: u32, format: i16, values: &[Vec<u8>]) {
        let keys: Vec<Key> = values.iter().map(|v| k(oid, format, v)).collect();
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(
                    compare(a, b, ASC),
                    i.cmp(&j),
                    "type {oid} format {format}: {a:?} vs {b:?}"
                );
            }
        }
    }

    fn texts(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn integers_text_and_binary() {
        let ints = [i64::MIN, -70_000, -1, 0, 1, 32_767, 4_000_000_000, i64::MAX];
        let text: Vec<String> = ints.iter().map(|i| i.to_string()).collect();
        let text: Vec<&str> = text.iter().map(String::as_str).collect();
        assert_increasing(INT8, 0, &texts(&text));
        assert_increasing(
            INT8,
            1,
            &ints
                .iter()
                .map(|i| i.to_be_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        assert_increasing(
            INT4,
            1,
            &[i32::MIN, -5, 0, 7, i32::MAX]
                .iter()
                .map(|i| i.to_be_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        assert_increasing(
            INT2,
            1,
            &[i16::MIN, -1, 0, i16::MAX]
                .iter()
                .map(|i| i.to_be_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        assert_increasing(
            OID,
            1,
            &[0u32, 1, 2_147_483_648, u32::MAX]
                .iter()
                .map(|i| i.to_be_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        assert!(decode(INT4, 1, Some(&Bytes::from_static(b"\0\0"))).is_err());
        assert!(decode(INT4, 0, Some(&Bytes::from_static(b"12x"))).is_err());
    }

    #[test]
    fn floats_put_nan_last_and_zero_signless() {
        let sorted = [
            "-Infinity",
            "-1.5",
            "-1e-300",
            "0",
            "1e-300",
            "3.25",
            "Infinity",
            "NaN",
        ];
        assert_increasing(FLOAT8, 0, &texts(&sorted));
        let bin: Vec<Vec<u8>> = [f64::NEG_INFINITY, -1.5, 0.0, 2.0, f64::INFINITY, f64::NAN]
            .iter()
            .map(|f| f.to_be_bytes().to_vec())
            .collect();
        assert_increasing(FLOAT8, 1, &bin);
        let bin4: Vec<Vec<u8>> = [f32::NEG_INFINITY, -1.5, 0.0, 2.5, f32::NAN]
            .iter()
            .map(|f| f.to_be_bytes().to_vec())
            .collect();
        assert_increasing(FLOAT4, 1, &bin4);
        assert_eq!(
            compare(&k(FLOAT8, 0, b"-0"), &k(FLOAT8, 0, b"0"), ASC),
            Ordering::Equal
        );
        assert_eq!(
            compare(
                &k(FLOAT8, 0, b"NaN"),
                &k(FLOAT8, 1, &f64::NAN.to_be_bytes()),
                ASC
            ),
            Ordering::Equal
        );
    }

    #[test]
    fn numerics_text_and_binary() {
        let sorted = [
            "-Infinity",
            "-1000.5",
            "-2",
            "-0.01",
            "0",
            "0.001",
            "1.10",
            "12",
            "Infinity",
            "NaN",
        ];
        assert_increasing(NUMERIC, 0, &texts(&sorted));
        assert_increasing(
            NUMERIC,
            1,
            &sorted.iter().map(|s| numeric_binary(s)).collect::<Vec<_>>(),
        );
    }

    #[test]
    fn bools_uuids_bytes_and_text() {
        assert_increasing(BOOL, 0, &texts(&["f", "t"]));
        assert_increasing(BOOL, 1, &[vec![0], vec![1]]);
        assert_increasing(
            UUID,
            0,
            &texts(&[
                "00000000-0000-0000-0000-000000000000",
                "0a000000-0000-0000-0000-000000000000",
                "a0000000-0000-0000-0000-000000000000",
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
            ]),
        );
        assert_increasing(UUID, 1, &[vec![0; 16], vec![0x0a; 16], vec![0xff; 16]]);
        // Byte order is code-point order for UTF-8: 'B' < 'a' < 'é' < '€'.
        assert_increasing(TEXT, 0, &texts(&["", "B", "a", "ab", "é", "€"]));
        assert_increasing(VARCHAR, 1, &texts(&["A", "AA", "b"]));
        assert_increasing(BYTEA, 0, &texts(&["\\x", "\\x00", "\\x0001", "\\x01"]));
        assert_increasing(BYTEA, 1, &[vec![], vec![0], vec![0, 1], vec![1]]);
        assert_eq!(
            compare(&k(BPCHAR, 0, b"ab   "), &k(BPCHAR, 0, b"ab"), ASC),
            Ordering::Equal
        );
        assert!(decode(BYTEA, 0, Some(&Bytes::from_static(b"\\001"))).is_err());
    }

    #[test]
    fn dates_and_timestamps_text_and_binary() {
        assert_increasing(
            DATE,
            0,
            &texts(&[
                "-infinity",
                "0044-03-15 BC",
                "0001-01-01",
                "2024-01-01",
                "12024-01-01",
                "infinity",
            ]),
        );
        assert_increasing(
            DATE,
            1,
            &[i32::MIN, -800_000, 0, 9000, i32::MAX]
                .iter()
                .map(|d| d.to_be_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        assert_increasing(
            TIMESTAMPTZ,
            0,
            &texts(&[
                "-infinity",
                "2024-01-01 12:00:00+05",
                "2024-01-01 08:00:00+00",
                "2024-01-01 04:00:00.5-04",
                "infinity",
            ]),
        );
        assert_increasing(
            TIMESTAMP,
            1,
            &[i64::MIN, -1, 0, 1, i64::MAX]
                .iter()
                .map(|d| d.to_be_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        assert_increasing(
            TIME,
            0,
            &texts(&["00:00:00", "09:59:59.999999", "10:00:00", "24:00:00"]),
        );
        assert!(decode(
            TIMESTAMPTZ,
            0,
            Some(&Bytes::from_static(b"01/02/2024 10:00:00 PST"))
        )
        .is_err());
    }

    #[test]
    fn nulls_go_where_asked() {
        let one = Key::Int(1);
        for descending in [false, true] {
            let first = Direction {
                descending,
                nulls_first: true,
            };
            let last = Direction {
                descending,
                nulls_first: false,
            };
            assert_eq!(compare(&Key::Null, &one, first), Ordering::Less);
            assert_eq!(compare(&Key::Null, &one, last), Ordering::Greater);
            assert_eq!(compare(&one, &Key::Null, first), Ordering::Greater);
            assert_eq!(compare(&Key::Null, &Key::Null, last), Ordering::Equal);
        }
        let desc = Direction {
            descending: true,
            nulls_first: true,
        };
        assert_eq!(compare(&Key::Int(1), &Key::Int(2), desc), Ordering::Greater);
        assert_eq!(
            compare_rows(
                &[Key::Int(1), Key::Int(5)],
                &[Key::Int(1), Key::Int(3)],
                &[ASC, desc]
            ),
            Ordering::Less
        );
    }

    #[test]
    fn unknown_types_are_refused_by_name() {
        let e = decode(3802, 0, Some(&Bytes::from_static(b"{}")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("jsonb"), "{e}");
        let e = decode(99_999, 0, Some(&Bytes::from_static(b"x")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("99999"), "{e}");
        assert!(!is_sortable(3802) && is_sortable(NUMERIC));
    }
}
