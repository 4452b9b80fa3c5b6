//! What the proxy sends each shard for a cross-shard read (a Query, or Parse/Bind/Describe/
//! Execute/Sync), and the values of LIMIT/OFFSET parameters read from the client's Bind.

use bytes::{BufMut, Bytes, BytesMut};
use shardgate_router::{MergeSpec, RowCount};
use shardgate_wire::frontend::{self, put_cstr, put_value, write_message};

use super::shard::Batches;
use super::ScatterRequest;

/// Appends a Bind of the unnamed statement to the unnamed portal.
pub(crate) fn write_bind(
    out: &mut BytesMut,
    param_formats: &[i16],
    params: &[Option<Bytes>],
    result_formats: &[i16],
) {
    write_bind_to(out, "", param_formats, params, result_formats)
}

/// Appends a Bind of the unnamed statement to `portal`.
fn write_bind_to(
    out: &mut BytesMut,
    portal: &str,
    param_formats: &[i16],
    params: &[Option<Bytes>],
    result_formats: &[i16],
) {
    write_message(out, frontend::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, "");
        b.put_i16(param_formats.len() as i16);
        for f in param_formats {
            b.put_i16(*f);
        }
        b.put_i16(params.len() as i16);
        for p in params {
            put_value(b, p.as_deref());
        }
        b.put_i16(result_formats.len() as i16);
        for f in result_formats {
            b.put_i16(*f);
        }
    });
}

/// Appends Execute of the unnamed portal, all rows.
pub(crate) fn write_execute(out: &mut BytesMut) {
    write_execute_of(out, "", 0);
}

/// Appends Execute of `portal`, at most `rows` rows (0: all).
fn write_execute_of(out: &mut BytesMut, portal: &str, rows: i32) {
    write_message(out, frontend::EXECUTE, |b| {
        put_cstr(b, portal);
        b.put_i32(rows);
    });
}

/// OID of `int8`.
const INT8: u32 = 20;

/// The parameter types to send: the client's, with LIMIT/OFFSET parameters the client left
/// unspecified pinned to int8. PostgreSQL infers int8 for `LIMIT $1`, but not for the folded
/// `LIMIT ($1 + $2)` of the shards' text (ambiguous, or int4 next to a literal).
fn param_types(client: &[u32], spec: &MergeSpec) -> Vec<u32> {
    let mut types = client.to_vec();
    for count in [&spec.limit, &spec.offset].into_iter().flatten() {
        if let RowCount::Param(n) = count {
            if let Some(i) = n.checked_sub(1) {
                if types.len() <= i {
                    types.resize(i + 1, 0);
                }
                if types[i] == 0 {
                    types[i] = INT8;
                }
            }
        }
    }
    types
}

/// The bytes every shard gets. `text_results` asks for text rows whatever the client wants
/// (partial aggregates are read by the proxy). With `batches` the rows go to a named portal
/// read that many rows at a time (a held portal; extended protocol only).
pub(crate) fn shard_messages(
    request: &ScatterRequest,
    spec: &MergeSpec,
    text_results: bool,
    batches: Option<&Batches>,
) -> BytesMut {
    let mut out = BytesMut::new();
    match request {
        ScatterRequest::Simple { sql } => frontend::write_query(&mut out, sql),
        ScatterRequest::Extended {
            sql,
            param_types,
            param_formats,
            params,
            result_formats,
            client_describe,
            ..
        } => {
            frontend::write_parse(
                &mut out,
                "",
                sql.as_bytes(),
                &self::param_types(param_types, spec),
            );
            if *client_describe == Some(b'S') {
                frontend::write_describe(&mut out, b'S', "");
            }
            let results: &[i16] = if text_results { &[] } else { result_formats };
            let (portal, rows) = batches.map_or(("", 0), |b| (b.portal.as_str(), b.rows));
            write_bind_to(&mut out, portal, param_formats, params, results);
            frontend::write_describe(&mut out, b'P', portal);
            write_execute_of(&mut out, portal, rows);
            frontend::write_sync(&mut out);
        }
    }
    out
}

/// Why a LIMIT/OFFSET parameter has no row count (the text is the client's 22023 message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RowCountError {
    #[error("there is no parameter ${0}")]
    NoParameter(usize),
    #[error("bad {0}")]
    BadBinary(&'static str),
    #[error("a binary LIMIT/OFFSET parameter of {0} bytes")]
    BinaryLength(usize),
    #[error("parameter ${0} is not an integer")]
    NotAnInteger(usize),
    #[error("LIMIT/OFFSET must not be negative")]
    Negative,
}

/// The value of a LIMIT/OFFSET: a literal, or a client parameter (text, or binary int8, int4
/// or int2). `Ok(None)` for a NULL parameter (no limit).
pub(crate) fn row_count(
    count: &RowCount,
    request: &ScatterRequest,
) -> Result<Option<u64>, RowCountError> {
    let n = match count {
        RowCount::Value(v) => return Ok(Some(*v)),
        RowCount::Param(n) => *n,
    };
    let ScatterRequest::Extended {
        params,
        param_formats,
        ..
    } = request
    else {
        return Err(RowCountError::NoParameter(n));
    };
    let index = n.checked_sub(1).ok_or(RowCountError::NoParameter(0))?;
    let value = params.get(index).ok_or(RowCountError::NoParameter(n))?;
    let Some(value) = value else {
        return Ok(None);
    };
    let format = match param_formats.as_slice() {
        [] => 0,
        [one] => *one,
        many => many.get(index).copied().unwrap_or(0),
    };
    let bad = RowCountError::BadBinary;
    let v: i64 = if format == 1 {
        match value.len() {
            8 => i64::from_be_bytes(value[..].try_into().map_err(|_| bad("int8"))?),
            4 => i32::from_be_bytes(value[..].try_into().map_err(|_| bad("int4"))?).into(),
            2 => i16::from_be_bytes(value[..].try_into().map_err(|_| bad("int2"))?).into(),
            l => return Err(RowCountError::BinaryLength(l)),
        }
    } else {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(RowCountError::NotAnInteger(n))?
    };
    u64::try_from(v)
        .map(Some)
        .map_err(|_| RowCountError::Negative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extended(params: Vec<Option<Bytes>>, param_formats: Vec<i16>) -> ScatterRequest {
        ScatterRequest::Extended {
            sql: "select 1".into(),
            param_types: vec![],
            param_formats,
            params,
            result_formats: vec![1],
            client_sent_parse: true,
            client_describe: None,
            row_limit: 0,
        }
    }

    #[test]
    fn limits_from_text_and_binary_parameters() {
        let r = extended(
            vec![
                Some(Bytes::from("10")),
                Some(Bytes::copy_from_slice(&5i64.to_be_bytes())),
                None,
                Some(Bytes::copy_from_slice(&7i32.to_be_bytes())),
            ],
            vec![0, 1, 0, 1],
        );
        assert_eq!(row_count(&RowCount::Param(1), &r), Ok(Some(10)));
        assert_eq!(row_count(&RowCount::Param(2), &r), Ok(Some(5)));
        assert_eq!(row_count(&RowCount::Param(3), &r), Ok(None));
        assert_eq!(row_count(&RowCount::Param(4), &r), Ok(Some(7)));
        assert!(row_count(&RowCount::Param(5), &r).is_err());
        assert!(row_count(&RowCount::Param(0), &r).is_err());
        assert_eq!(row_count(&RowCount::Value(3), &r), Ok(Some(3)));
        let neg = extended(vec![Some(Bytes::from("-1"))], vec![]);
        assert!(row_count(&RowCount::Param(1), &neg).is_err());
        let simple = ScatterRequest::Simple { sql: "x".into() };
        assert!(row_count(&RowCount::Param(1), &simple).is_err());
    }

    #[test]
    fn limit_parameters_become_int8_unless_typed() {
        let spec = MergeSpec {
            limit: Some(RowCount::Param(3)),
            offset: Some(RowCount::Param(1)),
            ..MergeSpec::default()
        };
        assert_eq!(param_types(&[], &spec), vec![20, 0, 20]);
        assert_eq!(param_types(&[23, 25], &spec), vec![23, 25, 20]);
        assert_eq!(param_types(&[25], &MergeSpec::default()), vec![25]);
    }

    #[test]
    fn extended_batch_shape() {
        let mut r = extended(vec![], vec![]);
        if let ScatterRequest::Extended {
            client_describe, ..
        } = &mut r
        {
            *client_describe = Some(b'S');
        }
        let m = shard_messages(&r, &MergeSpec::default(), true, None);
        let mut tags = Vec::new();
        let mut rest = &m[..];
        while rest.len() >= 5 {
            tags.push(rest[0]);
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            rest = &rest[len + 1..];
        }
        assert_eq!(tags, b"PDBDES".to_vec());
    }
}
