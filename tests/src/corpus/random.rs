//! The differential tests' seeded randomness: the same rows and statements for the same seed.

/// splitmix64: small, fast, and the same sequence everywhere for a seed.
pub struct Gen(pub u64);

impl Gen {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A decimal with two places from a count of cents in `[0, span)`.
    pub fn cents(&mut self, span: u64) -> String {
        let c = self.below(span);
        format!("{}.{:02}", c / 100, c % 100)
    }

    /// `NULL` `percent` times in a hundred, else `v`.
    pub fn or_null(&mut self, percent: u64, v: String) -> String {
        if self.chance(percent) {
            "NULL".into()
        } else {
            v
        }
    }
}

/// `s` as an SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
