//! Shard-key values from text and from Bind parameters.
//!
//! A key literal in SQL, a `SET shardgate.shard_key`/hint value and a text-format parameter all
//! go through [`parse_key_text`], which accepts what PostgreSQL's own input functions accept
//! for the key type (so `'42'`, `' 42 '` and `'0x2A'` are the same bigint key). Binary-format
//! parameters are decoded by their declared type and length, arrays (for `key = ANY($1)`) in
//! both the text (`{1,2}`) and the binary array format.

use shardgate_config::KeyType;

use crate::plan::KeyValue;

/// Parameters of a Bind, as the proxy received them.
#[derive(Debug, Clone, Copy)]
pub struct BoundParams<'a> {
    /// One per parameter; `None` is SQL NULL.
    pub values: &'a [Option<&'a [u8]>],
    /// Bind's format codes: empty = all text, one = applies to all, else one per parameter.
    pub formats: &'a [i16],
    /// Parameter type OIDs from Parse; 0 (or missing) = unspecified.
    pub types: &'a [u32],
}

impl BoundParams<'_> {
    /// No parameters (a simple Query).
    pub const NONE: BoundParams<'static> = BoundParams {
        values: &[],
        formats: &[],
        types: &[],
    };
}

/// A value that is not a valid key: SQLSTATE and message, as PostgreSQL would word them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadValue {
    pub code: &'static str,
    pub message: String,
}

fn bad(code: &'static str, message: String) -> BadValue {
    BadValue { code, message }
}

const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const NAME: u32 = 19;
const UNKNOWN: u32 = 705;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const UUID: u32 = 2950;

fn is_textual(oid: u32) -> bool {
    matches!(oid, TEXT | NAME | UNKNOWN | BPCHAR | VARCHAR)
}

/// A key from its text form, with the rules of PostgreSQL's input function for the type.
pub(crate) fn parse_key_text(key_type: KeyType, text: &str) -> Result<KeyValue, BadValue> {
    match key_type {
        KeyType::Bigint => parse_int8(text).map(KeyValue::Int),
        KeyType::Text => Ok(KeyValue::Text(text.to_owned())),
        KeyType::Uuid => parse_uuid(text).map(KeyValue::Uuid),
    }
}

/// `int8in`: surrounding whitespace, a sign, decimal digits (or 0x / 0o / 0b), `_` between
/// digits.
fn parse_int8(text: &str) -> Result<i64, BadValue> {
    let invalid = || {
        bad(
            "22P02",
            format!("invalid input syntax for type bigint: \"{text}\""),
        )
    };
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, body) = match digits.as_bytes() {
        [b'0', b'x' | b'X', ..] => (16, &digits[2..]),
        [b'0', b'o' | b'O', ..] => (8, &digits[2..]),
        [b'0', b'b' | b'B', ..] => (2, &digits[2..]),
        _ => (10, digits),
    };
    // Plain decimal digits that cannot overflow (the shard key of nearly every statement):
    // no underscores, radixes or i128 to consider.
    if radix == 10 && (1..=18).contains(&body.len()) && body.bytes().all(|b| b.is_ascii_digit()) {
        let value = body.bytes().fold(0i64, |v, b| v * 10 + i64::from(b - b'0'));
        return Ok(if negative { -value } else { value });
    }
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return Err(invalid());
    }
    let mut value: i128 = 0;
    for c in body.chars().filter(|c| *c != '_') {
        let d = c.to_digit(radix).ok_or_else(invalid)?;
        // Saturate just past the range: still an overflow, and i128 never overflows.
        value = (value * i128::from(radix) + i128::from(d)).min(i128::from(i64::MAX) + 2);
    }
    let value = if negative { -value } else { value };
    i64::try_from(value).map_err(|_| {
        bad(
            "22003",
            format!("value \"{text}\" is out of range for type bigint"),
        )
    })
}

/// `uuid_in`: 32 hex digits, optionally in braces, with `-` allowed after any group of four.
fn parse_uuid(text: &str) -> Result<[u8; 16], BadValue> {
    let invalid = || {
        bad(
            "22P02",
            format!("invalid input syntax for type uuid: \"{text}\""),
        )
    };
    let inner = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}').ok_or_else(invalid)?,
        None => text,
    };
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    let mut prev_dash = false;
    for c in inner.chars() {
        if c == '-' {
            if nibbles == 0 || !nibbles.is_multiple_of(4) || prev_dash || nibbles == 32 {
                return Err(invalid());
            }
            prev_dash = true;
            continue;
        }
        prev_dash = false;
        let d = c.to_digit(16).ok_or_else(invalid)? as u8;
        if nibbles >= 32 {
            return Err(invalid());
        }
        out[nibbles / 2] |= if nibbles.is_multiple_of(2) { d << 4 } else { d };
        nibbles += 1;
    }
    if nibbles != 32 || prev_dash {
        return Err(invalid());
    }
    Ok(out)
}

impl BoundParams<'_> {
    fn format(&self, index: usize) -> Result<i16, BadValue> {
        let f = match self.formats.len() {
            0 => 0,
            1 => self.formats[0],
            _ => *self.formats.get(index).ok_or_else(|| {
                bad(
                    "08P01",
                    format!(
                        "bind message has {} parameter formats but {} parameters",
                        self.formats.len(),
                        self.values.len()
                    ),
                )
            })?,
        };
        match f {
            0 | 1 => Ok(f),
            other => Err(bad("08P01", format!("unsupported format code: {other}"))),
        }
    }

    fn raw(&self, n: usize) -> Result<(Option<&[u8]>, i16, u32), BadValue> {
        let index = n
            .checked_sub(1)
            .ok_or_else(|| missing(n, self.values.len()))?;
        let value = *self
            .values
            .get(index)
            .ok_or_else(|| missing(n, self.values.len()))?;
        let oid = self.types.get(index).copied().unwrap_or(0);
        Ok((value, self.format(index)?, oid))
    }

    /// Parameter `$n` as a key of `key_type`; `None` for NULL.
    pub(crate) fn key(&self, n: usize, key_type: KeyType) -> Result<Option<KeyValue>, BadValue> {
        let (value, format, oid) = self.raw(n)?;
        let Some(bytes) = value else {
            return Ok(None);
        };
        decode_scalar(bytes, format, oid, key_type, n).map(Some)
    }

    /// Parameter `$n` as an array of keys (NULL elements and a NULL array give no keys).
    pub(crate) fn key_array(&self, n: usize, key_type: KeyType) -> Result<Vec<KeyValue>, BadValue> {
        let (value, format, _oid) = self.raw(n)?;
        let Some(bytes) = value else {
            return Ok(Vec::new());
        };
        if format == 0 {
            let text = utf8(bytes, n)?;
            let items = parse_text_array(text)
                .ok_or_else(|| bad("22P02", format!("malformed array literal: \"{text}\"")))?;
            items
                .into_iter()
                .flatten()
                .map(|item| parse_key_text(key_type, &item))
                .collect()
        } else {
            decode_binary_array(bytes, key_type, n)
        }
    }
}

fn missing(n: usize, supplied: usize) -> BadValue {
    bad(
        "08P01",
        format!(
            "statement uses parameter ${n} but the bind message supplies {supplied} parameters"
        ),
    )
}

fn utf8(bytes: &[u8], n: usize) -> Result<&str, BadValue> {
    std::str::from_utf8(bytes)
        .map_err(|_| bad("22021", format!("parameter ${n} is not valid UTF-8")))
}

fn decode_scalar(
    bytes: &[u8],
    format: i16,
    oid: u32,
    key_type: KeyType,
    n: usize,
) -> Result<KeyValue, BadValue> {
    if format == 0 || is_textual(oid) {
        return parse_key_text(key_type, utf8(bytes, n)?);
    }
    let wrong = |what: &str| {
        bad(
            "22P03",
            format!("parameter ${n}: {what} is not a binary {key_type} shard key"),
        )
    };
    match key_type {
        KeyType::Bigint if matches!(oid, 0 | INT8 | INT4 | INT2) => match bytes.len() {
            8 => Ok(KeyValue::Int(i64::from_be_bytes(arr(bytes)))),
            4 => Ok(KeyValue::Int(i64::from(i32::from_be_bytes(arr(bytes))))),
            2 => Ok(KeyValue::Int(i64::from(i16::from_be_bytes(arr(bytes))))),
            len => Err(wrong(&format!("a {len}-byte value"))),
        },
        KeyType::Text if oid == 0 => Ok(KeyValue::Text(utf8(bytes, n)?.to_owned())),
        KeyType::Uuid if matches!(oid, 0 | UUID) => match bytes.len() {
            16 => Ok(KeyValue::Uuid(arr(bytes))),
            len => Err(wrong(&format!("a {len}-byte value"))),
        },
        _ => Err(wrong(&format!("a value of type oid {oid}"))),
    }
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// The binary array format: ndim, has-null flag, element oid, (length, lower bound) per
/// dimension, then each element as a length (-1 = NULL) and its bytes.
fn decode_binary_array(
    bytes: &[u8],
    key_type: KeyType,
    n: usize,
) -> Result<Vec<KeyValue>, BadValue> {
    let malformed = || bad("22P03", format!("parameter ${n}: malformed binary array"));
    let mut r = Reader(bytes);
    let ndim = r.i32().ok_or_else(malformed)?;
    let _flags = r.i32().ok_or_else(malformed)?;
    let elem_oid = r.i32().ok_or_else(malformed)? as u32;
    if !(0..=6).contains(&ndim) {
        return Err(malformed());
    }
    let mut count: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let len = r.i32().ok_or_else(malformed)?;
        let _lbound = r.i32().ok_or_else(malformed)?;
        let len = usize::try_from(len).map_err(|_| malformed())?;
        count = count.checked_mul(len).ok_or_else(malformed)?;
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let len = r.i32().ok_or_else(malformed)?;
        if len < 0 {
            continue;
        }
        let elem = r.take(len as usize).ok_or_else(malformed)?;
        out.push(decode_scalar(elem, 1, elem_oid, key_type, n)?);
    }
    if !r.0.is_empty() {
        return Err(malformed());
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_be_bytes(arr(b)))
    }
}

/// Elements of a text array literal (`{1,2}`, `{{1},{2}}`, `[1:2]={1,2}`, `{"a b",NULL}`),
/// flattened; `None` for NULL elements. `None` overall when malformed.
pub(crate) fn parse_text_array(text: &str) -> Option<Vec<Option<String>>> {
    let mut t = text.trim();
    if t.starts_with('[') {
        t = t.split_once('=')?.1.trim_start();
    }
    let mut chars = t.chars().peekable();
    if chars.next()? != '{' {
        return None;
    }
    let mut depth = 1usize;
    let mut out = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek().copied()? {
            '{' => {
                chars.next();
                depth += 1;
            }
            '}' => {
                chars.next();
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut item = String::new();
                loop {
                    match chars.next()? {
                        '\\' => item.push(chars.next()?),
                        '"' => break,
                        c => item.push(c),
                    }
                }
                out.push(Some(item));
            }
            _ => {
                let mut item = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    chars.next();
                    if c == '\\' {
                        item.push(chars.next()?);
                    } else {
                        item.push(c);
                    }
                }
                let item = item.trim().to_owned();
                out.push((!item.eq_ignore_ascii_case("null")).then_some(item));
            }
        }
    }
    chars.all(|c| c.is_whitespace()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_input_rules() {
        assert_eq!(parse_int8(" 42 "), Ok(42));
        assert_eq!(parse_int8("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_int8("0x2A"), Ok(42));
        assert_eq!(parse_int8("1_000"), Ok(1000));
        assert_eq!(
            parse_int8("9223372036854775808").map_err(|e| e.code),
            Err("22003")
        );
        for bad in [
            "",
            "4 2",
            "abc",
            "1.5",
            "_1",
            "--1",
            "99999999999999999999999999999999x",
        ] {
            assert!(parse_int8(bad).is_err(), "{bad}");
        }
    }

    /// Plain decimal text (the fast path, and the general loop past 18 digits) reads as
    /// Rust's own parser reads it, overflow included.
    #[test]
    fn decimal_keys_read_as_rust_reads_them() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut text = String::from(["", "-", "+"][rng.usize(..3)]);
            for _ in 0..rng.usize(1..=20) {
                text.push(char::from(b'0' + rng.u8(..10)));
            }
            assert_eq!(parse_int8(&text).ok(), text.parse::<i64>().ok(), "{text}");
        }
    }

    #[test]
    fn uuid_input_rules() {
        let want = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        for ok in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(parse_uuid(ok), Ok(want), "{ok}");
        }
        for bad in [
            "",
            "a0eebc99",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11-",
            "g0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_arrays() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            parse_text_array("{1, 2 ,3}"),
            Some(vec![s("1"), s("2"), s("3")])
        );
        assert_eq!(
            parse_text_array("{{1,2},{3,NULL}}"),
            Some(vec![s("1"), s("2"), s("3"), None])
        );
        assert_eq!(
            parse_text_array("[0:1]={\"a b\",\"c\\\"d\"}"),
            Some(vec![s("a b"), s("c\"d")])
        );
        assert_eq!(parse_text_array("{}"), Some(vec![]));
        assert_eq!(parse_text_array("{1,2"), None);
        assert_eq!(parse_text_array("1,2"), None);
    }

    fn binary_array(oid: u32, elems: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(1i32.to_be_bytes());
        b.extend(0i32.to_be_bytes());
        b.extend(oid.to_be_bytes());
        b.extend((elems.len() as i32).to_be_bytes());
        b.extend(1i32.to_be_bytes());
        for e in elems {
            match e {
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(*v);
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn binary_params() {
        let eight = 42i64.to_be_bytes();
        let four = (-7i32).to_be_bytes();
        let two = 5i16.to_be_bytes();
        let values = [
            Some(&eight[..]),
            Some(&four[..]),
            Some(&two[..]),
            None,
            Some(&b"17"[..]),
        ];
        let p = BoundParams {
            values: &values,
            formats: &[1, 1, 1, 1, 0],
            types: &[INT8, INT4, 0],
        };
        assert_eq!(p.key(1, KeyType::Bigint), Ok(Some(KeyValue::Int(42))));
        assert_eq!(p.key(2, KeyType::Bigint), Ok(Some(KeyValue::Int(-7))));
        assert_eq!(p.key(3, KeyType::Bigint), Ok(Some(KeyValue::Int(5))));
        assert_eq!(p.key(4, KeyType::Bigint), Ok(None));
        assert_eq!(p.key(5, KeyType::Bigint), Ok(Some(KeyValue::Int(17))));
        assert_eq!(p.key(6, KeyType::Bigint).map_err(|e| e.code), Err("08P01"));
        assert_eq!(p.key(0, KeyType::Bigint).map_err(|e| e.code), Err("08P01"));
        assert_eq!(p.key(1, KeyType::Uuid).map_err(|e| e.code), Err("22P03"));
    }

    #[test]
    fn array_params() {
        let one = 1i64.to_be_bytes();
        let two = 2i32.to_be_bytes();
        let bin = binary_array(INT8, &[Some(&one), None]);
        let bin4 = binary_array(INT4, &[Some(&two)]);
        let values = [
            Some(&b"{3,NULL,4}"[..]),
            Some(&bin[..]),
            Some(&bin4[..]),
            None,
            Some(&b"{x}"[..]),
        ];
        let p = BoundParams {
            values: &values,
            formats: &[0, 1, 1, 0, 0],
            types: &[],
        };
        let ints = |v: &[i64]| v.iter().map(|i| KeyValue::Int(*i)).collect::<Vec<_>>();
        assert_eq!(p.key_array(1, KeyType::Bigint), Ok(ints(&[3, 4])));
        assert_eq!(p.key_array(2, KeyType::Bigint), Ok(ints(&[1])));
        assert_eq!(p.key_array(3, KeyType::Bigint), Ok(ints(&[2])));
        assert_eq!(p.key_array(4, KeyType::Bigint), Ok(vec![]));
        assert_eq!(
            p.key_array(5, KeyType::Bigint).map_err(|e| e.code),
            Err("22P02")
        );
        assert_eq!(
            p.key_array(5, KeyType::Text),
            Ok(vec![KeyValue::Text("x".into())])
        );
        let truncated = &bin[..bin.len() - 2];
        let values = [Some(truncated)];
        let p = BoundParams {
            values: &values,
            formats: &[1],
            types: &[],
        };
        assert_eq!(
            p.key_array(1, KeyType::Bigint).map_err(|e| e.code),
            Err("22P03")
        );
    }
}
