//! The client's `client_encoding`: what the bytes of its SQL text and text-format Bind values
//! mean. The proxy forwards those bytes untouched (the server converts them); it decodes them
//! only to route, and must then see the characters the server will see: a shard key `'é'`
//! sent in LATIN9 hashes as the server's UTF-8 `é`. Decoding never fails: bytes that are not
//! valid in the encoding become U+FFFD (the server will refuse them itself).
//!
//! In every ASCII-compatible encoding the SQL structure (quotes, keywords, numbers) is ASCII,
//! so even a lossy decoding parses right; an exact one also gets non-ASCII key values right.

use std::borrow::Cow;
use std::sync::Arc;

use crate::prepared::GlobalStatement;
use crate::session::Session;

/// How to turn the client's bytes into text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientEncoding {
    /// UTF8 (the default), and SQL_ASCII, where the server converts nothing: bytes that are
    /// UTF-8 are taken as such, others lossily.
    #[default]
    Utf8,
    /// LATIN1: each byte is the code point of the same value.
    Latin1,
    /// Any other encoding PostgreSQL and the WHATWG encoding standard share.
    Other(&'static encoding_rs::Encoding),
}

impl ClientEncoding {
    /// The decoder for a `client_encoding` value as the server reports it (`LATIN9`, `UTF8`,
    /// `WIN1252`, …; case and `_`/`-` do not matter). Unknown names decode as UTF-8, lossily.
    pub fn from_name(name: &str) -> ClientEncoding {
        let norm: String = name
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let label = match norm.as_str() {
            "UTF8" | "UNICODE" | "SQLASCII" => return ClientEncoding::Utf8,
            "LATIN1" | "ISO88591" => return ClientEncoding::Latin1,
            "LATIN2" | "ISO88592" => "iso-8859-2",
            "LATIN3" | "ISO88593" => "iso-8859-3",
            "LATIN4" | "ISO88594" => "iso-8859-4",
            "ISO88595" => "iso-8859-5",
            "ISO88596" => "iso-8859-6",
            "ISO88597" => "iso-8859-7",
            "ISO88598" => "iso-8859-8",
            // LATIN5 is ISO 8859-9, which WHATWG folds into windows-1254 (a superset).
            "LATIN5" | "ISO88599" => "windows-1254",
            "LATIN6" | "ISO885910" => "iso-8859-10",
            "LATIN7" | "ISO885913" => "iso-8859-13",
            "LATIN8" | "ISO885914" => "iso-8859-14",
            "LATIN9" | "ISO885915" => "iso-8859-15",
            "LATIN10" | "ISO885916" => "iso-8859-16",
            "WIN866" | "ALT" => "ibm866",
            "WIN874" => "windows-874",
            "WIN1250" => "windows-1250",
            "WIN1251" | "WIN" => "windows-1251",
            "WIN1252" => "windows-1252",
            "WIN1253" => "windows-1253",
            "WIN1254" => "windows-1254",
            "WIN1255" => "windows-1255",
            "WIN1256" => "windows-1256",
            "WIN1257" => "windows-1257",
            "WIN1258" | "ABC" | "TCVN" | "TCVN5712" => "windows-1258",
            "KOI8" | "KOI8R" => "koi8-r",
            "KOI8U" => "koi8-u",
            "EUCJP" | "EUCJIS2004" => "euc-jp",
            "EUCKR" => "euc-kr",
            "EUCCN" | "GBK" | "WIN936" => "gbk",
            "GB18030" => "gb18030",
            "BIG5" | "WIN950" => "big5",
            "SJIS" | "SHIFTJIS2004" | "MSKANJI" | "SHIFTJIS" | "WIN932" => "shift_jis",
            _ => return ClientEncoding::Utf8,
        };
        encoding_rs::Encoding::for_label(label.as_bytes())
            .map_or(ClientEncoding::Utf8, ClientEncoding::Other)
    }

    /// The encoding's name, for keys that must tell encodings apart.
    pub fn name(self) -> &'static str {
        match self {
            ClientEncoding::Utf8 => "UTF8",
            ClientEncoding::Latin1 => "LATIN1",
            ClientEncoding::Other(e) => e.name(),
        }
    }

    pub fn is_utf8(self) -> bool {
        self == ClientEncoding::Utf8
    }

    /// The text the server will see in `bytes`.
    pub fn decode(self, bytes: &[u8]) -> Cow<'_, str> {
        match self {
            // Valid UTF-8 (every well-behaved client) is checked word-at-a-time and borrowed.
            ClientEncoding::Utf8 => match std::str::from_utf8(bytes) {
                Ok(s) => Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(bytes),
            },
            ClientEncoding::Latin1 => match std::str::from_utf8(bytes) {
                Ok(s) if s.is_ascii() => Cow::Borrowed(s),
                _ => Cow::Owned(bytes.iter().map(|b| char::from(*b)).collect()),
            },
            ClientEncoding::Other(e) => e.decode_without_bom_handling(bytes).0,
        }
    }
}

impl Session {
    /// The client's SQL text as the server will read it.
    pub(crate) fn sql<'a>(&self, bytes: &'a [u8]) -> Cow<'a, str> {
        self.client_state.encoding().decode(bytes)
    }

    /// Follows `client_encoding` in the server's ParameterStatus reports (login, SET, RESET).
    pub(crate) fn note_parameter(&mut self, params: &[(String, String)]) {
        for (name, value) in params {
            if name == "client_encoding" {
                self.client_state
                    .set_encoding(ClientEncoding::from_name(value));
            }
        }
    }

    /// The proxy-wide statement for a client's Parse. Text in UTF-8 is shared by its text;
    /// other bytes by encoding and exact bytes (their Parse goes to servers as sent), so two
    /// statements never share a name because a lossy decoding made them look alike.
    pub(crate) fn intern_statement(
        &self,
        query: &[u8],
        param_types: &[u32],
    ) -> Arc<GlobalStatement> {
        let context = self.statement_context();
        match std::str::from_utf8(query) {
            Ok(text) if self.client_state.encoding().is_utf8() || text.is_ascii() => {
                self.shared.statements.intern(text, param_types, &context)
            }
            _ => self.shared.statements.intern_encoded(
                &self.sql(query),
                query,
                self.client_state.encoding().name(),
                param_types,
                &context,
            ),
        }
    }

    /// Bind values in text format converted to UTF-8 for routing (the router reads keys as
    /// UTF-8 text); `None` when nothing needs converting.
    pub(crate) fn bind_values_utf8(
        &self,
        values: &[Option<&[u8]>],
        formats: &[i16],
    ) -> Option<Vec<Option<Vec<u8>>>> {
        if self.client_state.encoding().is_utf8() {
            return None;
        }
        let text_format = |i: usize| match formats {
            [] => true,
            [one] => *one == 0,
            many => many.get(i).is_some_and(|f| *f == 0),
        };
        Some(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.map(|bytes| {
                        if text_format(i) {
                            self.client_state
                                .encoding()
                                .decode(bytes)
                                .into_owned()
                                .into_bytes()
                        } else {
                            bytes.to_vec()
                        }
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin9_and_friends_decode_to_what_the_server_stores() {
        let latin9 = ClientEncoding::from_name("LATIN9");
        assert_eq!(latin9.decode(b"select '\xe9' -- \xa4"), "select 'é' -- €");
        assert_eq!(
            ClientEncoding::from_name("latin1").decode(b"\xe9\xa4"),
            "é¤"
        );
        assert_eq!(ClientEncoding::from_name("WIN1252").decode(b"\x80"), "€");
        assert_eq!(
            ClientEncoding::from_name("EUC_JP").decode(b"'\xa4\xa2'"),
            "'あ'"
        );
        // SQL_ASCII and unknown names: UTF-8 where it is, U+FFFD elsewhere; never an error.
        let ascii = ClientEncoding::from_name("SQL_ASCII");
        assert_eq!(ascii.decode("é".as_bytes()), "é");
        assert_eq!(ascii.decode(b"'\xe9'"), "'\u{fffd}'");
        assert!(ClientEncoding::from_name("UTF8").is_utf8());
    }

    #[test]
    fn sql_structure_survives_every_ascii_compatible_encoding() {
        // A quote, keyword and number are the same bytes in each: a lexer sees them.
        for name in [
            "LATIN1",
            "LATIN9",
            "WIN1251",
            "KOI8R",
            "EUC_KR",
            "SQL_ASCII",
            "UTF8",
        ] {
            let text = ClientEncoding::from_name(name).decode(b"select 1 where k = 'x\xe9y'");
            assert!(text.starts_with("select 1 where k = 'x"), "{name}: {text}");
            assert!(text.ends_with("y'"), "{name}: {text}");
        }
    }
}
