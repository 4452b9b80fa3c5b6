//! PostgreSQL's hash functions, bit for bit, so a key's ring position can be computed inside
//! PostgreSQL too (`hashint8extended(user_id, seed)` in a WHERE clause or a publication row
//! filter selects exactly the rows the proxy routes to a shard).
//!
//! The core is Bob Jenkins' lookup3 as adapted in PostgreSQL's `src/common/hashfn.c`
//! (`hash_bytes_extended`, `hash_bytes_uint32_extended`), little-endian byte order, returning
//! the 64-bit value that SQL shows as a signed `int8`.

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

const INIT: u32 = 0x9e37_79b9u32.wrapping_add(3_923_095);

fn seeded(len: u32, seed: u64) -> (u32, u32, u32) {
    let init = INIT.wrapping_add(len);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

fn word(k: &[u8]) -> u32 {
    k.iter()
        .enumerate()
        .fold(0u32, |acc, (i, byte)| acc | (u32::from(*byte) << (8 * i)))
}

/// `hash_bytes_extended(k, len, seed)`: the hash behind `hashtextextended` and
/// `uuid_hash_extended`.
pub fn hash_bytes_extended(k: &[u8], seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(k.len() as u32, seed);
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The last 0..=11 bytes; the lowest byte of c is reserved for the length.
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]) << 8);
    }
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if !rest.is_empty() {
        a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    }
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hash_bytes_uint32_extended(k, seed)`.
pub fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(4, seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hashint8extended(v, seed)` as SQL returns it. int2 and int4 keys use it too (cast to
/// int8), which gives the same value as `hashint4extended` for every int4.
pub fn hashint8extended(v: i64, seed: u64) -> i64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    let folded = lo ^ if v >= 0 { hi } else { !hi };
    hash_uint32_extended(folded, seed) as i64
}

/// `hashtextextended(s, seed)` for a deterministic collation (the bytes of the string).
pub fn hashtextextended(s: &str, seed: u64) -> i64 {
    hash_bytes_extended(s.as_bytes(), seed) as i64
}

/// `uuid_hash_extended(u, seed)` over the 16 bytes of the uuid.
pub fn uuid_hash_extended(u: &[u8; 16], seed: u64) -> i64 {
    hash_bytes_extended(u, seed) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // select hashint8extended(42, 0)  (from STACK.md, checked on PostgreSQL 15)
        assert_eq!(hashint8extended(42, 0), 8010225493015854792);
    }
}

#[cfg(test)]
mod pg_values {
    use super::*;

    /// Values computed by PostgreSQL 15 (`select hashtextextended('hello', 0)`, …).
    #[test]
    fn match_postgresql() {
        assert_eq!(hashtextextended("hello", 0), 3449563369152288809);
        assert_eq!(hashtextextended("", 7), 2755504096093790112);
        assert_eq!(
            hashtextextended("abcdefghijklmnopqrstuvwxyz", 123456789),
            -3334104692855917419
        );
        let uuid = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(uuid_hash_extended(&uuid, 5), 5022697189270312796);
        assert_eq!(hashint8extended(-5, 99), -2654457402417760754);
        assert_eq!(hashint8extended(i64::MAX, 1), 3044001184559810835);
    }
}
