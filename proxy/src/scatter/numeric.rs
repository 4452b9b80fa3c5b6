//! PostgreSQL `numeric` values as exact decimals, from the text format (`-12.340`, `NaN`,
//! `Infinity`) and the binary format (base-10000 digits, weight, sign, scale), so that rows
//! from different shards compare exactly as PostgreSQL compares them: -Infinity < finite <
//! Infinity < NaN, and 1.0 = 1.00.

use std::cmp::Ordering;

/// An exact numeric value in a canonical form: equal values are equal structs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Numeric {
    NegInfinity,
    /// `negative` is false for zero. The value is `0.D × 10^point` where `digits` (ASCII
    /// decimal digits) has no leading or trailing zeros; zero has no digits.
    Finite {
        negative: bool,
        digits: Vec<u8>,
        point: i64,
    },
    Infinity,
    NaN,
}

impl Numeric {
    fn finite(negative: bool, digits: Vec<u8>, point: i64) -> Numeric {
        let lead = digits.iter().take_while(|d| **d == b'0').count();
        let mut digits = digits[lead..].to_vec();
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        let point = point - lead as i64;
        if digits.is_empty() {
            return Numeric::Finite {
                negative: false,
                digits,
                point: 0,
            };
        }
        Numeric::Finite {
            negative,
            digits,
            point,
        }
    }

    /// Parses PostgreSQL's text output (also accepts a leading `+` and exponents are not
    /// produced by PostgreSQL, so they are refused).
    pub(crate) fn parse_text(s: &[u8]) -> Option<Numeric> {
        match s {
            b"NaN" => return Some(Numeric::NaN),
            b"Infinity" => return Some(Numeric::Infinity),
            b"-Infinity" => return Some(Numeric::NegInfinity),
            _ => {}
        }
        let (negative, rest) = match s.split_first() {
            Some((b'-', r)) => (true, r),
            Some((b'+', r)) => (false, r),
            _ => (false, s),
        };
        let (int, frac) = match rest.iter().position(|b| *b == b'.') {
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        let mut digits = Vec::with_capacity(int.len() + frac.len());
        digits.extend_from_slice(int);
        digits.extend_from_slice(frac);
        Some(Numeric::finite(negative, digits, int.len() as i64))
    }

    /// Parses the binary format: ndigits, weight, sign, dscale (all int16), then ndigits
    /// base-10000 digits.
    pub(crate) fn parse_binary(b: &[u8]) -> Option<Numeric> {
        if b.len() < 8 {
            return None;
        }
        let word = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let ndigits = word(0) as i16;
        let weight = word(2) as i16;
        let sign = word(4);
        match sign {
            0xC000 => return Some(Numeric::NaN),
            0xD000 => return Some(Numeric::Infinity),
            0xF000 => return Some(Numeric::NegInfinity),
            0x0000 | 0x4000 => {}
            _ => return None,
        }
        let ndigits = usize::try_from(ndigits).ok()?;
        if b.len() != 8 + 2 * ndigits {
            return None;
        }
        let mut digits = Vec::with_capacity(4 * ndigits);
        for i in 0..ndigits {
            let d = word(8 + 2 * i);
            if d >= 10_000 {
                return None;
            }
            digits.extend_from_slice(format!("{d:04}").as_bytes());
        }
        Some(Numeric::finite(
            sign == 0x4000,
            digits,
            4 * (i64::from(weight) + 1),
        ))
    }

    fn rank(&self) -> u8 {
        match self {
            Numeric::NegInfinity => 0,
            Numeric::Finite { .. } => 1,
            Numeric::Infinity => 2,
            Numeric::NaN => 3,
        }
    }
}

/// Compares two magnitudes `0.A × 10^pa` and `0.B × 10^pb` (canonical digit strings).
fn cmp_magnitude(a: &[u8], pa: i64, b: &[u8], pb: i64) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        _ => {}
    }
    pa.cmp(&pb).then_with(|| a.cmp(b))
}

impl Ord for Numeric {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Numeric::Finite {
                    negative: na,
                    digits: da,
                    point: pa,
                },
                Numeric::Finite {
                    negative: nb,
                    digits: db,
                    point: pb,
                },
            ) => match (na, nb) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => cmp_magnitude(da, *pa, db, *pb),
                (true, true) => cmp_magnitude(db, *pb, da, *pa),
            },
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Numeric {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// PostgreSQL's binary numeric encoding of a decimal text (test helper).
    pub(crate) fn binary(text: &str) -> Vec<u8> {
        let special = |sign: u16| {
            let mut v = vec![0, 0, 0, 0];
            v.extend_from_slice(&sign.to_be_bytes());
            v.extend_from_slice(&[0, 0]);
            v
        };
        match text {
            "NaN" => return special(0xC000),
            "Infinity" => return special(0xD000),
            "-Infinity" => return special(0xF000),
            _ => {}
        }
        let (neg, t) = match text.strip_prefix('-') {
            Some(t) => (true, t),
            None => (false, text),
        };
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let dscale = frac.len() as i16;
        // Pad the integer part on the left and the fraction on the right to multiples of 4.
        let int_pad = (4 - int.len() % 4) % 4;
        let int = format!("{}{}", "0".repeat(int_pad), int);
        let frac_pad = (4 - frac.len() % 4) % 4;
        let frac = format!("{}{}", frac, "0".repeat(frac_pad));
        let mut groups: Vec<u16> = int
            .as_bytes()
            .chunks(4)
            .chain(frac.as_bytes().chunks(4))
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = (int.len() / 4) as i16 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let mut v = Vec::new();
        v.extend_from_slice(&(groups.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(
            &(if neg && !groups.is_empty() {
                0x4000u16
            } else {
                0
            })
            .to_be_bytes(),
        );
        v.extend_from_slice(&dscale.to_be_bytes());
        for g in groups {
            v.extend_from_slice(&g.to_be_bytes());
        }
        v
    }

    fn t(s: &str) -> Numeric {
        Numeric::parse_text(s.as_bytes()).unwrap()
    }

    #[test]
    fn text_and_binary_agree() {
        for s in [
            "0",
            "0.00",
            "-0.0",
            "1",
            "1.0",
            "12.30",
            "-12.3",
            "10000",
            "0.0001",
            "123456789.987654321",
            "-0.00005",
            "99999999",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(
                Numeric::parse_binary(&binary(s)),
                Some(t(s)),
                "binary and text of {s}"
            );
        }
    }

    #[test]
    fn ordering_matches_postgresql() {
        let sorted = [
            "-Infinity",
            "-100",
            "-12.5",
            "-12.34",
            "-0.001",
            "0",
            "0.0001",
            "0.5",
            "1",
            "1.5",
            "9.99",
            "10",
            "10.01",
            "99999",
            "100000",
            "Infinity",
            "NaN",
        ];
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                assert_eq!(t(a).cmp(&t(b)), i.cmp(&j), "{a} vs {b}");
                let (ba, bb) = (
                    Numeric::parse_binary(&binary(a)).unwrap(),
                    Numeric::parse_binary(&binary(b)).unwrap(),
                );
                assert_eq!(ba.cmp(&bb), i.cmp(&j), "binary {a} vs {b}");
            }
        }
        assert_eq!(t("1.0").cmp(&t("1.00")), Ordering::Equal);
        assert_eq!(t("-0.0").cmp(&t("0")), Ordering::Equal);
        assert_eq!(t("NaN").cmp(&t("NaN")), Ordering::Equal);
    }

    #[test]
    fn garbage_is_refused() {
        for s in ["", "-", ".", "1e5", "abc", "1.2.3", "--1"] {
            assert_eq!(Numeric::parse_text(s.as_bytes()), None, "{s:?}");
        }
        assert_eq!(Numeric::parse_binary(&[0, 1, 0, 0]), None);
        assert_eq!(Numeric::parse_binary(&[0, 1, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(
            Numeric::parse_binary(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]),
            None
        );
    }
}
