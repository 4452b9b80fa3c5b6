//! `COPY … FROM STDIN` into a sharded table, split by shard key: what the statement says about
//! its data ([`CopyInSpec`]: format, delimiter, quoting, NULL marker, header, column list) and
//! [`CopyRows`], a streaming reader that cuts the client's CopyData into rows and reads each
//! row's key field the way PostgreSQL's COPY reads it, so that each row can go to its shard.

use bytes::{Bytes, BytesMut};
use shardgate_config::KeyType;
use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption, Ident, ObjectName};

use crate::rules::{norm, TableRule};

/// How the rows of a COPY are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format: `delimiter`-separated fields, backslash escapes, `null`
    /// (default `\N`) for NULL.
    Text { delimiter: u8, null: Vec<u8> },
    /// CSV: `quote`d fields with `escape` before a quote inside them, `null` (default empty)
    /// for NULL; `force_null_key` / `force_not_null_key`: FORCE_NULL / FORCE_NOT_NULL name
    /// the key column.
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
        force_null_key: bool,
        force_not_null_key: bool,
    },
    /// The binary format: a file header, tuples of length-prefixed fields, a trailer.
    Binary,
}

/// Why shardgate cannot read a COPY's options (the text replaces the COPY's refusal message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CopySpecError {
    #[error("COPY into a sharded table with ENCODING '{0}' cannot be split by shard (only UTF8)")]
    Encoding(String),
    #[error("COPY option {0} is not PostgreSQL's; shardgate cannot split this COPY")]
    NotPostgres(CopyLegacyOption),
    #[error("COPY {0} must be a single one-byte character")]
    NotOneByte(&'static str),
    #[error("COPY format \"{0}\" not recognized")]
    UnknownFormat(String),
    #[error("COPY into sharded table {table} without its shard key column {key_column} cannot be split by shard")]
    NoKeyColumn { table: String, key_column: String },
}

/// A `COPY … TO STDOUT` over several shards: what the proxy must not repeat when it joins
/// the shards' outputs (the header line, the binary file header and trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOutSpec {
    pub binary: bool,
    pub header: bool,
}

impl CopyOutSpec {
    /// The spec of a COPY TO with these options; `Err` for options that are not PostgreSQL's.
    pub(crate) fn of(
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<CopyOutSpec, CopySpecError> {
        let mut o = Options::default();
        for opt in options {
            o.modern(opt, "")?;
        }
        for opt in legacy {
            o.legacy(opt, "")?;
        }
        let format = o.format()?;
        Ok(CopyOutSpec {
            binary: format == CopyFormat::Binary,
            header: o.header && format != CopyFormat::Binary,
        })
    }
}

/// A `COPY <sharded table> [(columns)] FROM STDIN [options]` the proxy can split by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInSpec {
    /// The table as written in the statement (quotes kept), for a catalog lookup.
    pub table: String,
    /// The column list, folded as PostgreSQL folds names; empty: every column of the table
    /// (except generated ones), in table order.
    pub columns: Vec<String>,
    /// The key column and its type.
    pub key_column: String,
    pub key_type: KeyType,
    pub format: CopyFormat,
    /// HEADER: the first line names the columns (every shard gets it, and skips or checks it
    /// as it would alone).
    pub header: bool,
}

impl CopyInSpec {
    /// Builds the spec of a COPY FROM STDIN into the table of `rule`; `Err` says why it
    /// cannot be split (an option shardgate does not read, a column list without the key).
    pub(crate) fn of(
        rule: &TableRule,
        table: &ObjectName,
        columns: &[Ident],
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<CopyInSpec, CopySpecError> {
        let mut o = Options::default();
        for opt in options {
            o.modern(opt, &rule.key_column)?;
        }
        for opt in legacy {
            o.legacy(opt, &rule.key_column)?;
        }
        let columns: Vec<String> = columns.iter().map(norm).collect();
        if !columns.is_empty() && !columns.contains(&rule.key_column) {
            return Err(CopySpecError::NoKeyColumn {
                table: table.to_string().to_lowercase(),
                key_column: rule.key_column.clone(),
            });
        }
        Ok(CopyInSpec {
            table: table.to_string(),
            columns,
            key_column: rule.key_column.clone(),
            key_type: rule.key_type,
            format: o.format()?,
            header: o.header,
        })
    }

    /// Where the key is among the COPY's fields, given the table's copied columns in order
    /// (used when the statement has no column list).
    pub fn key_index(&self, table_columns: &[String]) -> Option<usize> {
        let columns = if self.columns.is_empty() {
            table_columns
        } else {
            &self.columns
        };
        columns.iter().position(|c| *c == self.key_column)
    }

    /// A reader of this COPY's data whose key is field `key_index`; a row (or a binary tuple)
    /// longer than `max_row_bytes` is an error rather than unbounded buffering.
    pub fn reader(&self, key_index: usize, max_row_bytes: usize) -> CopyRows {
        CopyRows {
            format: self.format.clone(),
            key_index,
            max_row_bytes,
            pending: BytesMut::new(),
            scanned: 0,
            line: 0,
            header_left: self.header && self.format != CopyFormat::Binary,
            binary_header_done: false,
            ended: false,
        }
    }
}

#[derive(Default)]
struct Options {
    format: Option<String>,
    delimiter: Option<char>,
    null: Option<String>,
    header: bool,
    quote: Option<char>,
    escape: Option<char>,
    force_null_key: bool,
    force_not_null_key: bool,
}

impl Options {
    fn modern(&mut self, opt: &CopyOption, key: &str) -> Result<(), CopySpecError> {
        match opt {
            CopyOption::Format(f) => self.format = Some(f.value.to_lowercase()),
            CopyOption::Freeze(_) | CopyOption::ForceQuote(_) => {}
            CopyOption::Delimiter(c) => self.delimiter = Some(*c),
            CopyOption::Null(s) => self.null = Some(s.clone()),
            CopyOption::Header(h) => self.header = *h,
            CopyOption::Quote(c) => self.quote = Some(*c),
            CopyOption::Escape(c) => self.escape = Some(*c),
            CopyOption::ForceNotNull(cols) => {
                self.force_not_null_key |= cols.iter().any(|c| norm(c) == key)
            }
            CopyOption::ForceNull(cols) => {
                self.force_null_key |= cols.iter().any(|c| norm(c) == key)
            }
            CopyOption::Encoding(e) => {
                let e = e.to_lowercase().replace(['-', '_'], "");
                if e != "utf8" && e != "unicode" {
                    return Err(CopySpecError::Encoding(e));
                }
            }
        }
        Ok(())
    }

    fn legacy(&mut self, opt: &CopyLegacyOption, key: &str) -> Result<(), CopySpecError> {
        match opt {
            CopyLegacyOption::Binary => self.format = Some("binary".into()),
            CopyLegacyOption::Delimiter(c) => self.delimiter = Some(*c),
            CopyLegacyOption::Null(s) => self.null = Some(s.clone()),
            CopyLegacyOption::Csv(csv) => {
                self.format = Some("csv".into());
                for o in csv {
                    match o {
                        CopyLegacyCsvOption::Header => self.header = true,
                        CopyLegacyCsvOption::Quote(c) => self.quote = Some(*c),
                        CopyLegacyCsvOption::Escape(c) => self.escape = Some(*c),
                        CopyLegacyCsvOption::ForceQuote(_) => {}
                        CopyLegacyCsvOption::ForceNotNull(cols) => {
                            self.force_not_null_key |= cols.iter().any(|c| norm(c) == key)
                        }
                    }
                }
            }
            other => return Err(CopySpecError::NotPostgres(other.clone())),
        }
        Ok(())
    }

    fn format(&self) -> Result<CopyFormat, CopySpecError> {
        let byte = |c: Option<char>, default: u8, what: &'static str| match c {
            None => Ok(default),
            Some(c) if c.is_ascii() => Ok(c as u8),
            Some(_) => Err(CopySpecError::NotOneByte(what)),
        };
        match self.format.as_deref().unwrap_or("text") {
            "text" => Ok(CopyFormat::Text {
                delimiter: byte(self.delimiter, b'\t', "delimiter")?,
                null: self
                    .null
                    .clone()
                    .unwrap_or_else(|| "\\N".into())
                    .into_bytes(),
            }),
            "csv" => {
                let quote = byte(self.quote, b'"', "quote")?;
                Ok(CopyFormat::Csv {
                    delimiter: byte(self.delimiter, b',', "delimiter")?,
                    quote,
                    escape: byte(self.escape, quote, "escape")?,
                    null: self.null.clone().unwrap_or_default().into_bytes(),
                    force_null_key: self.force_null_key,
                    force_not_null_key: self.force_not_null_key,
                })
            }
            "binary" => Ok(CopyFormat::Binary),
            other => Err(CopySpecError::UnknownFormat(other.to_owned())),
        }
    }
}

/// One piece of a COPY's data, in the order the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyItem {
    /// Bytes every shard gets: the header line, the binary file header.
    Everyone(Bytes),
    /// A row (its bytes as sent, line end included) for the shard of `key`.
    Row {
        bytes: Bytes,
        key: KeyField,
        /// 1-based, as PostgreSQL counts lines in COPY's error context (the header is line 1).
        line: u64,
    },
    /// The end of the data (`\.`, the binary trailer): every shard gets `bytes` (may be empty)
    /// and nothing after it is read.
    End(Bytes),
}

/// A row's key field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyField {
    Null,
    /// The field's text after COPY's unescaping, in the client's encoding.
    Text(Vec<u8>),
    /// A binary-format field's bytes.
    Binary(Bytes),
}

/// Why the data cannot be read (PostgreSQL's SQLSTATE, a message with the line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CopyDataError {
    pub code: &'static str,
    pub message: String,
}

const BAD_COPY_FORMAT: &str = "22P04";
const PROGRAM_LIMIT: &str = "54000";
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Cuts a COPY's data into rows as it streams in: [`CopyRows::feed`] what the client sent,
/// then take items with [`CopyRows::next_item`]; at the client's CopyDone,
/// [`CopyRows::finish`] gives the last line (which may lack its line end).
pub struct CopyRows {
    format: CopyFormat,
    key_index: usize,
    max_row_bytes: usize,
    pending: BytesMut,
    /// How far into `pending` the row end search has looked (with no quote open / escape
    /// pending there), so a long row arriving in pieces is scanned once.
    scanned: usize,
    line: u64,
    header_left: bool,
    binary_header_done: bool,
    ended: bool,
}

impl CopyRows {
    pub fn feed(&mut self, data: &[u8]) {
        if !self.ended {
            self.pending.extend_from_slice(data);
        }
    }

    /// The next complete item, `None` when more data is needed (or the data ended).
    pub fn next_item(&mut self) -> Result<Option<CopyItem>, CopyDataError> {
        if self.ended {
            return Ok(None);
        }
        let item = match self.format {
            CopyFormat::Binary => self.next_binary()?,
            _ => match self.line_end(false) {
                Some(end) => Some(self.text_item(end)?),
                None => None,
            },
        };
        if item.is_none() && self.pending.len() > self.max_row_bytes {
            return Err(CopyDataError {
                code: PROGRAM_LIMIT,
                message: format!(
                    "COPY row at line {} is longer than listen.max_message_size ({} bytes)",
                    self.line + 1,
                    self.max_row_bytes
                ),
            });
        }
        Ok(item)
    }

    /// At the end of the client's data: the last line without a line end, or an error for
    /// a cut-off binary tuple.
    pub fn finish(&mut self) -> Result<Option<CopyItem>, CopyDataError> {
        if self.ended || self.pending.is_empty() {
            return Ok(None);
        }
        match self.format {
            CopyFormat::Binary => Err(CopyDataError {
                code: BAD_COPY_FORMAT,
                message: format!("unexpected EOF in COPY data, line {}", self.line + 1),
            }),
            _ => match self.line_end(true) {
                Some(end) => self.text_item(end).map(Some),
                None => Ok(None),
            },
        }
    }

    /// Where the first line of `pending` ends (after its line end); at the end of the data
    /// the whole rest is a line.
    fn line_end(&mut self, at_eof: bool) -> Option<usize> {
        let buf = &self.pending[..];
        // Text: a backslash escapes the next byte (a data newline is `\` + newline). CSV: a
        // line end inside quotes is data; the escape byte escapes a quote or itself there.
        let (csv, quote, escape) = match &self.format {
            CopyFormat::Csv { quote, escape, .. } => (true, *quote, *escape),
            _ => (false, 0, 0),
        };
        let mut i = 0;
        let mut in_quote = false;
        if !csv {
            i = self.scanned;
        }
        while i < buf.len() {
            let c = buf[i];
            if csv {
                if in_quote {
                    if c == escape && escape != quote && i + 1 < buf.len() {
                        let next = buf[i + 1];
                        if next == quote || next == escape {
                            i += 2;
                            continue;
                        }
                    } else if c == escape && escape != quote {
                        // Need the next byte to decide.
                        return at_eof.then_some(buf.len());
                    }
                    if c == quote {
                        in_quote = false;
                    }
                    i += 1;
                    continue;
                }
                if c == quote {
                    in_quote = true;
                    i += 1;
                    continue;
                }
            } else if c == b'\\' {
                if i + 1 >= buf.len() {
                    self.scanned = i;
                    return at_eof.then_some(buf.len());
                }
                i += 2;
                continue;
            }
            match c {
                b'\n' => return Some(i + 1),
                b'\r' => {
                    if i + 1 < buf.len() {
                        return Some(if buf[i + 1] == b'\n' { i + 2 } else { i + 1 });
                    }
                    if at_eof {
                        return Some(buf.len());
                    }
                    self.scanned = if csv { 0 } else { i };
                    return None;
                }
                _ => i += 1,
            }
        }
        self.scanned = if csv { 0 } else { buf.len() };
        at_eof.then_some(buf.len())
    }

    fn text_item(&mut self, end: usize) -> Result<CopyItem, CopyDataError> {
        self.scanned = 0;
        let bytes = self.pending.split_to(end).freeze();
        self.line += 1;
        let content = trim_line_end(&bytes);
        if content == b"\\." {
            self.ended = true;
            self.pending.clear();
            return Ok(CopyItem::End(Bytes::new()));
        }
        if std::mem::take(&mut self.header_left) {
            return Ok(CopyItem::Everyone(bytes));
        }
        let key = match &self.format {
            CopyFormat::Text { delimiter, null } => {
                text_field(content, *delimiter, null, self.key_index)
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                force_null_key,
                force_not_null_key,
            } => csv_field(
                content,
                CsvField {
                    delimiter: *delimiter,
                    quote: *quote,
                    escape: *escape,
                    null,
                    force_null: *force_null_key,
                    force_not_null: *force_not_null_key,
                },
                self.key_index,
            ),
            CopyFormat::Binary => None,
        };
        let key = key.ok_or_else(|| CopyDataError {
            code: BAD_COPY_FORMAT,
            message: format!(
                "missing data for the shard key (field {}), line {}",
                self.key_index + 1,
                self.line
            ),
        })?;
        Ok(CopyItem::Row {
            bytes,
            key,
            line: self.line,
        })
    }

    fn next_binary(&mut self) -> Result<Option<CopyItem>, CopyDataError> {
        let bad = |line: u64, what: &str| CopyDataError {
            code: BAD_COPY_FORMAT,
            message: format!("{what}, line {line}"),
        };
        if !self.binary_header_done {
            let fixed = BINARY_SIGNATURE.len() + 8;
            if self.pending.len() < fixed {
                return Ok(None);
            }
            if &self.pending[..BINARY_SIGNATURE.len()] != BINARY_SIGNATURE {
                return Err(bad(0, "COPY file signature not recognized"));
            }
            let ext = i32::from_be_bytes(be4(&self.pending[fixed - 4..fixed]));
            let Ok(ext) = usize::try_from(ext) else {
                return Err(bad(
                    0,
                    "invalid COPY file header (negative extension length)",
                ));
            };
            if self.pending.len() < fixed + ext {
                return Ok(None);
            }
            self.binary_header_done = true;
            return Ok(Some(CopyItem::Everyone(
                self.pending.split_to(fixed + ext).freeze(),
            )));
        }
        let buf = &self.pending[..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let line = self.line + 1;
        let count = i16::from_be_bytes([buf[0], buf[1]]);
        if count == -1 {
            self.ended = true;
            let trailer = self.pending.split_to(2).freeze();
            self.pending.clear();
            return Ok(Some(CopyItem::End(trailer)));
        }
        let Ok(count) = usize::try_from(count) else {
            return Err(bad(line, "invalid field count in COPY data"));
        };
        if count <= self.key_index {
            return Err(bad(
                line,
                &format!(
                    "row field count is {count}, the shard key is field {}",
                    self.key_index + 1
                ),
            ));
        }
        let mut at = 2;
        let mut key = None;
        for field in 0..count {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes(be4(&buf[at..at + 4]));
            at += 4;
            let start = at;
            if len >= 0 {
                let Ok(len) = usize::try_from(len) else {
                    return Err(bad(line, "invalid field size"));
                };
                if buf.len() < at + len {
                    return Ok(None);
                }
                at += len;
            } else if len != -1 {
                return Err(bad(line, "invalid field size"));
            }
            if field == self.key_index {
                key = Some(if len == -1 { None } else { Some(start..at) });
            }
        }
        self.line = line;
        let bytes = self.pending.split_to(at).freeze();
        let key = match key.flatten() {
            Some(r) => KeyField::Binary(bytes.slice(r)),
            None => KeyField::Null,
        };
        Ok(Some(CopyItem::Row { bytes, key, line }))
    }
}

fn be4(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Field `index` of a text-format line, unescaped; `None` when the line has fewer fields.
fn text_field(line: &[u8], delimiter: u8, null: &[u8], index: usize) -> Option<KeyField> {
    let mut field = 0;
    let mut start = 0;
    let mut i = 0;
    while i <= line.len() {
        if i == line.len() || line[i] == delimiter {
            if field == index {
                let raw = &line[start..i];
                return Some(if raw == null {
                    KeyField::Null
                } else {
                    KeyField::Text(unescape_text(raw))
                });
            }
            field += 1;
            start = i + 1;
            i += 1;
        } else if line[i] == b'\\' {
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}

/// COPY text format's backslash sequences (`\n`, `\t`, octal `\123`, hex `\x4F`, `\\`, …).
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' || i + 1 >= raw.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = raw[i + 1];
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                    v = v * 8 + u32::from(raw[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if i < raw.len() && raw[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + char::from(raw[i]).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            other => out.push(other),
        }
    }
    out
}

struct CsvField<'a> {
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &'a [u8],
    force_null: bool,
    force_not_null: bool,
}

/// Field `index` of a CSV line (quotes removed); `None` when the line has fewer fields.
fn csv_field(line: &[u8], f: CsvField<'_>, index: usize) -> Option<KeyField> {
    let mut field = 0;
    let mut value = Vec::new();
    let mut raw_start = 0;
    let mut quoted = false;
    let mut in_quote = false;
    let mut i = 0;
    loop {
        let end = i >= line.len();
        if end || (!in_quote && line[i] == f.delimiter) {
            if field == index {
                let raw = &line[raw_start..i.min(line.len())];
                let is_null = if quoted {
                    f.force_null && value == f.null
                } else {
                    !f.force_not_null && raw == f.null
                };
                return Some(if is_null {
                    KeyField::Null
                } else {
                    KeyField::Text(value)
                });
            }
            if end {
                return None;
            }
            field += 1;
            value.clear();
            quoted = false;
            i += 1;
            raw_start = i;
            continue;
        }
        let c = line[i];
        if in_quote {
            if c == f.escape && f.escape != f.quote && i + 1 < line.len() {
                let next = line[i + 1];
                if next == f.quote || next == f.escape {
                    value.push(next);
                    i += 2;
                    continue;
                }
            }
            if c == f.quote {
                if f.escape == f.quote && line.get(i + 1) == Some(&f.quote) {
                    value.push(f.quote);
                    i += 2;
                    continue;
                }
                in_quote = false;
                i += 1;
                continue;
            }
            value.push(c);
        } else if c == f.quote {
            in_quote = true;
            quoted = true;
        } else {
            value.push(c);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests;

impl crate::Router {
    /// The shard of a COPY row's key (`Text` as UTF-8); a NULL key goes to the default shard,
    /// as a one-row INSERT's would. `Err`: the key is not a valid value of the key type, worded
    /// as PostgreSQL's input function would, with the COPY's line and column.
    pub fn copy_row_shard(
        &self,
        spec: &CopyInSpec,
        key: &KeyField,
        line: u64,
    ) -> Result<crate::ShardIndex, CopyDataError> {
        let value = match key {
            KeyField::Null => return Ok(self.default_shard()),
            KeyField::Text(t) => std::str::from_utf8(t)
                .map_err(|_| ("22021", "the key is not valid UTF-8".to_owned()))
                .and_then(|s| {
                    crate::params::parse_key_text(spec.key_type, s).map_err(|e| (e.code, e.message))
                }),
            KeyField::Binary(b) => binary_key(spec.key_type, b),
        };
        match value {
            Ok(v) => Ok(self.shard_for_key(&v)),
            Err((code, message)) => Err(CopyDataError {
                code,
                message: format!(
                    "{message} (COPY {}, line {line}, column {})",
                    spec.table, spec.key_column
                ),
            }),
        }
    }
}

/// A binary COPY field of the key column: its length says which integer type it is.
fn binary_key(key_type: KeyType, b: &[u8]) -> Result<crate::KeyValue, (&'static str, String)> {
    let wrong = || {
        (
            "22P03",
            format!(
                "a {}-byte binary value is not a {key_type} shard key",
                b.len()
            ),
        )
    };
    Ok(match (key_type, b.len()) {
        (KeyType::Bigint, 8) => crate::KeyValue::Int(i64::from_be_bytes(arr(b))),
        (KeyType::Bigint, 4) => crate::KeyValue::Int(i64::from(i32::from_be_bytes(arr(b)))),
        (KeyType::Bigint, 2) => crate::KeyValue::Int(i64::from(i16::from_be_bytes(arr(b)))),
        (KeyType::Uuid, 16) => crate::KeyValue::Uuid(arr(b)),
        (KeyType::Text, _) => crate::KeyValue::Text(
            std::str::from_utf8(b)
                .map_err(|_| ("22021", "the binary text key is not valid UTF-8".to_owned()))?
                .to_owned(),
        ),
        _ => return Err(wrong()),
    })
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[..N]);
    out
}
