use super::*;

fn text_reader(key_index: usize) -> CopyRows {
    spec(CopyFormat::Text {
        delimiter: b'\t',
        null: b"\\N".to_vec(),
    })
    .reader(key_index, 1 << 20)
}

fn spec(format: CopyFormat) -> CopyInSpec {
    CopyInSpec {
        table: "orders".into(),
        columns: Vec::new(),
        key_column: "user_id".into(),
        key_type: KeyType::Bigint,
        format,
        header: false,
    }
}

fn csv(quote: u8, escape: u8) -> CopyFormat {
    CopyFormat::Csv {
        delimiter: b',',
        quote,
        escape,
        null: Vec::new(),
        force_null_key: false,
        force_not_null_key: false,
    }
}

/// Feeds `data` in pieces of `step` bytes and collects every item, then `finish`.
fn items(mut r: CopyRows, data: &[u8], step: usize) -> Vec<CopyItem> {
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        r.feed(piece);
        while let Some(item) = r.next_item().expect("item") {
            out.push(item);
        }
    }
    out.extend(r.finish().expect("finish"));
    out
}

fn keys(items: &[CopyItem]) -> Vec<KeyField> {
    items
        .iter()
        .filter_map(|i| match i {
            CopyItem::Row { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

fn text(s: &str) -> KeyField {
    KeyField::Text(s.as_bytes().to_vec())
}

#[test]
fn text_rows_in_any_pieces() {
    let data = b"1\t7\ta\n2\t\\N\tb\\\nc\n3\t9\\t1\tx\r\n4\t10\tlast";
    for step in [1, 2, 3, 5, 100] {
        let got = items(text_reader(1), data, step);
        assert_eq!(
            keys(&got),
            vec![text("7"), KeyField::Null, text("9\t1"), text("10")],
            "step {step}"
        );
        let rebuilt: Vec<u8> = got
            .iter()
            .flat_map(|i| match i {
                CopyItem::Row { bytes, .. } => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(rebuilt, data, "rows keep their bytes, step {step}");
    }
}

#[test]
fn text_escapes_and_end_marker() {
    assert_eq!(unescape_text(b"a\\x41\\101\\\\b\\q"), b"aAA\\bq".to_vec());
    let got = items(text_reader(0), b"5\tx\n\\.\n6\ty\n", 4);
    assert_eq!(keys(&got), vec![text("5")]);
    assert!(matches!(got.last(), Some(CopyItem::End(_))));
}

#[test]
fn text_header_goes_everywhere_and_counts_as_a_line() {
    let mut s = spec(CopyFormat::Text {
        delimiter: b',',
        null: b"\\N".to_vec(),
    });
    s.header = true;
    let got = items(s.reader(0, 1024), b"user_id,name\n1,a\n", 3);
    assert_eq!(
        got[0],
        CopyItem::Everyone(Bytes::from_static(b"user_id,name\n"))
    );
    assert!(matches!(got[1], CopyItem::Row { line: 2, .. }));
}

#[test]
fn missing_key_field_names_the_line() {
    let mut r = text_reader(2);
    r.feed(b"1\t2\t3\n4\t5\n");
    assert!(r.next_item().unwrap().is_some());
    let e = r.next_item().unwrap_err();
    assert_eq!(e.code, "22P04");
    assert!(e.message.contains("line 2"), "{}", e.message);
}

#[test]
fn csv_quotes_newlines_and_nulls() {
    let data = b"\"a,b\",\"1\"\n\"multi\nline\",\"2\"\"x\"\nplain,\nq,\"\"\n";
    for step in [1, 4, 64] {
        let got = items(spec(csv(b'"', b'"')).reader(1, 1024), data, step);
        assert_eq!(
            keys(&got),
            vec![text("1"), text("2\"x"), KeyField::Null, text("")],
            "step {step}"
        );
    }
}

#[test]
fn csv_custom_escape_delimiter_and_force_null() {
    let format = CopyFormat::Csv {
        delimiter: b';',
        quote: b'\'',
        escape: b'\\',
        null: b"NULL".to_vec(),
        force_null_key: true,
        force_not_null_key: false,
    };
    let got = items(
        spec(format).reader(0, 1024),
        b"'it\\'s;ok';1\n'NULL';2\nNULL;3\n",
        2,
    );
    assert_eq!(
        keys(&got),
        vec![text("it's;ok"), KeyField::Null, KeyField::Null]
    );
}

#[test]
fn binary_header_tuples_and_trailer() {
    let mut data = BINARY_SIGNATURE.to_vec();
    data.extend_from_slice(&0i32.to_be_bytes());
    data.extend_from_slice(&0i32.to_be_bytes());
    for (id, key) in [(1i64, Some(42i64)), (2, None)] {
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&8i32.to_be_bytes());
        data.extend_from_slice(&id.to_be_bytes());
        match key {
            Some(k) => {
                data.extend_from_slice(&8i32.to_be_bytes());
                data.extend_from_slice(&k.to_be_bytes());
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    for step in [1, 7, 1000] {
        let got = items(spec(CopyFormat::Binary).reader(1, 1024), &data, step);
        assert!(matches!(&got[0], CopyItem::Everyone(h) if h.len() == 19));
        assert_eq!(
            keys(&got),
            vec![
                KeyField::Binary(Bytes::copy_from_slice(&42i64.to_be_bytes())),
                KeyField::Null
            ]
        );
        assert_eq!(
            got.last(),
            Some(&CopyItem::End(Bytes::from_static(&[0xff, 0xff])))
        );
    }
}

#[test]
fn binary_cut_off_is_an_error() {
    let mut r = spec(CopyFormat::Binary).reader(0, 1024);
    r.feed(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\0");
    assert!(r.next_item().unwrap().is_some());
    assert_eq!(r.next_item().unwrap(), None);
    assert!(r.finish().is_err());
}

#[test]
fn a_row_past_the_limit_is_refused() {
    let mut r = spec(CopyFormat::Text {
        delimiter: b'\t',
        null: b"\\N".to_vec(),
    })
    .reader(0, 16);
    r.feed(&[b'x'; 40]);
    assert_eq!(r.next_item().unwrap_err().code, "54000");
}
