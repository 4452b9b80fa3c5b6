//! Sets of words to look for anywhere in a statement text, ignoring ASCII case: the proxy's
//! session tracking asks whether a text mentions `set`, `temp`, `listen`… before it looks
//! closer, on every statement. The fingerprint walk (`fingerprint_hash_and_words`) answers it
//! in the same pass over the text, so the check costs no second read of it.

/// Lower-case ASCII words (two letters or more, at most 64) to look for anywhere in a text,
/// ignoring ASCII case. It runs on every statement, so the set is built at compile time: a
/// byte that starts no word costs one table lookup, one that does a lookup of the pair it
/// starts (case folded) in a table of the words that begin with each pair, and only those
/// words are compared whole (`SELECT`'s `se`: `set` and `set_config`, not all nine).
pub struct WordSet {
    words: &'static [&'static [u8]],
    first: [bool; 256],
    /// By `pair_index`: bit `i` for each `words[i]` that begins with that pair.
    by_pair: [u64; 1024],
    shortest: usize,
}

/// The words the proxy's session tracking looks for in every statement (bits in this order):
/// without one of them no statement can change session state (`set`, `discard`,
/// `deallocate`: `reset` and `set_config` contain `set`) or pin a session (`temp`, which
/// covers `temporary` and `pg_temp`, `listen`, `advisory`, `hold`, `prepare`); `set_config`
/// has a bit of its own.
pub static SESSION_WORDS: WordSet = WordSet::new(&[
    b"set",
    b"discard",
    b"deallocate",
    b"temp",
    b"listen",
    b"advisory",
    b"hold",
    b"prepare",
    b"set_config",
]);

/// The 10-bit index of a byte pair: the low five bits of each byte with ASCII case folded.
const fn pair_index(a: u8, b: u8) -> usize {
    (((a | 0x20) & 0x1f) as usize) << 5 | ((b | 0x20) & 0x1f) as usize
}

impl WordSet {
    /// No words: finds nothing, and costs the fingerprint walk one table lookup per byte.
    pub const EMPTY: WordSet = WordSet::new(&[]);

    pub const fn new(words: &'static [&'static [u8]]) -> WordSet {
        assert!(words.len() <= 64, "a WordSet has at most 64 words");
        let mut first = [false; 256];
        let mut by_pair = [0u64; 1024];
        let mut shortest = usize::MAX;
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            assert!(w.len() >= 2, "a WordSet word has two letters or more");
            let mut j = 0;
            while j < w.len() {
                // Only letters and `_`: no word can then start in one token and end in the
                // next, which lets the fingerprint walk look inside tokens only.
                assert!(
                    w[j].is_ascii_lowercase() || w[j] == b'_',
                    "a WordSet word is lower-case ASCII letters and _"
                );
                j += 1;
            }
            first[w[0] as usize] = true;
            first[w[0].to_ascii_uppercase() as usize] = true;
            by_pair[pair_index(w[0], w[1])] |= 1 << i;
            if w.len() < shortest {
                shortest = w.len();
            }
            i += 1;
        }
        WordSet {
            words,
            first,
            by_pair,
            shortest,
        }
    }

    /// The words `text` contains, ignoring ASCII case: bit `i` stands for `words[i]`.
    pub fn found(&self, text: &[u8]) -> u64 {
        let mut found = 0;
        if text.len() < self.shortest {
            return found;
        }
        for (i, pair) in text.windows(2).enumerate() {
            let candidates = self.candidates(pair[0], pair[1]);
            if candidates != 0 {
                found |= self.found_at(text, i, candidates);
            }
        }
        found
    }

    /// The words that may start with the bytes `a`, `b` (two table lookups; 0 for most).
    #[inline(always)]
    pub(crate) fn candidates(&self, a: u8, b: u8) -> u64 {
        if !self.first[usize::from(a)] {
            return 0;
        }
        self.by_pair[pair_index(a, b)]
    }

    /// Which of `candidates` (from [`WordSet::candidates`]) start at `text[at]`: kept out of
    /// the callers' loops, as a pair of a word's first letters is rare.
    #[inline(never)]
    pub(crate) fn found_at(&self, text: &[u8], at: usize, candidates: u64) -> u64 {
        let rest = &text[at..];
        let mut found = 0;
        let mut left = candidates;
        while left != 0 {
            let i = left.trailing_zeros() as usize;
            left &= left - 1;
            let w = self.words[i];
            if rest
                .get(..w.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(w))
            {
                found |= 1 << i;
            }
        }
        found
    }

    /// The set's words, in the order of their bits.
    pub fn words(&self) -> &'static [&'static [u8]] {
        self.words
    }
}

#[cfg(test)]
mod tests {
    use super::WordSet;

    impl WordSet {
        fn found_in(&self, text: &[u8]) -> bool {
            self.found(text) != 0
        }
    }

    #[test]
    fn finds_words_in_any_case_anywhere() {
        static WORDS: WordSet = WordSet::new(&[b"set", b"discard"]);
        assert!(WORDS.found_in(b"SELECT 1; SeT search_path = a"));
        assert!(WORDS.found_in(b"discard all"));
        assert!(WORDS.found_in(b"x_set"));
        assert!(!WORDS.found_in(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1"));
        assert!(!WORDS.found_in(b"se"));
        assert!(!WORDS.found_in(b""));
        // Case folding of the pair filter must not admit look-alikes (`\x13` folds like `s`).
        assert!(!WORDS.found_in(b"\x13ET x"));
        assert!(WORDS.found_in(b"sEt"));
        assert!(WORDS.found_in(b"DISCARD"));
        assert!(!WORDS.found_in(b"discar"));
        static TEMP: WordSet = WordSet::new(&[b"temp"]);
        assert!(!TEMP.found_in(b"te"));
        assert!(TEMP.found_in(b"create TEMPORARY table"));
        assert!(TEMP.found_in(b"te\xc3\xa9 temp"));
        assert!(!TEMP.found_in(b"tem"));
        assert_eq!(WordSet::EMPTY.found(b"set discard"), 0);
    }

    /// The pair filter finds exactly the words a plain case-folded substring search finds
    /// (seeded texts over the words' letters in both cases, separators and non-ASCII bytes).
    #[test]
    fn agrees_with_a_plain_search() {
        static WORDS: WordSet = WordSet::new(&[b"set", b"discard", b"temp", b"hold", b"prepare"]);
        // Pieces: whole words, their starts and ends, noise; each byte's case flipped at
        // random.
        let pieces: [&[u8]; 12] = [
            b"set",
            b"se",
            b"et",
            b"discard",
            b"discar",
            b"temp",
            b"tem",
            b"hold",
            b"prepare",
            b" _;'",
            b"\xc3\xa9",
            b"\x13",
        ];
        let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
        let mut next = move || rng.u64(..);
        let (mut found, mut missed) = (0, 0);
        for _ in 0..20_000 {
            let mut text = Vec::new();
            for _ in 0..next() % 4 {
                text.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            }
            for b in &mut text {
                if next() % 2 == 0 {
                    b.make_ascii_uppercase();
                }
            }
            let each = plain_search(&WORDS, &text);
            assert_eq!(
                WORDS.found(&text),
                each,
                "{:?}",
                String::from_utf8_lossy(&text)
            );
            if each != 0 {
                found += 1;
            } else {
                missed += 1;
            }
        }
        assert!(found > 100 && missed > 100, "{found} / {missed}");
    }

    /// The words of `set` in `text` by a case-folded substring search, one bit per word.
    pub(crate) fn plain_search(set: &WordSet, text: &[u8]) -> u64 {
        let lower = text.to_ascii_lowercase();
        set.words()
            .iter()
            .enumerate()
            .filter(|(_, w)| lower.windows(w.len()).any(|x| x == **w))
            .map(|(i, _)| 1 << i)
            .sum()
    }
}
