use super::*;

use proptest::prelude::*;

/// The outcome of a parse, in terms both parsers can be put in.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Complete {
        len: usize,
        minor: u8,
        code: u16,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Partial,
    TooMany,
    Malformed,
}

fn ours(buf: &[u8], room: usize) -> Outcome {
    let mut spans = vec![MaybeUninit::uninit(); room];
    match response(buf, &mut spans) {
        Ok(Some((s, fields))) => Outcome::Complete {
            len: s.len,
            minor: s.minor,
            code: s.code,
            fields: fields
                .iter()
                .map(|f| {
                    let name = &buf[f.name_range()];
                    // A name from the table is the name as written.
                    if let Some(k) = KNOWN.get(f.known as usize) {
                        assert!(
                            k.as_str().as_bytes().eq_ignore_ascii_case(name),
                            "{k} for {name:?}"
                        );
                    }
                    (name.to_vec(), buf[f.value_range()].to_vec())
                })
                .collect(),
        },
        Ok(None) => Outcome::Partial,
        Err(Invalid::TooManyFields) => Outcome::TooMany,
        Err(Invalid::Malformed) => Outcome::Malformed,
    }
}

fn httparse(buf: &[u8], room: usize) -> Outcome {
    let mut headers = vec![httparse::EMPTY_HEADER; room];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Outcome::Complete {
            len,
            minor: resp.version.unwrap(),
            code: resp.code.unwrap(),
            fields: resp
                .headers
                .iter()
                .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
                .collect(),
        },
        Ok(httparse::Status::Partial) => Outcome::Partial,
        Err(httparse::Error::TooManyHeaders) => Outcome::TooMany,
        Err(_) => Outcome::Malformed,
    }
}

/// Both parsers agree on `buf` and on every beginning of it.
fn agree(buf: &[u8], room: usize) -> Result<(), TestCaseError> {
    for end in 0..=buf.len() {
        let cut = &buf[..end];
        prop_assert_eq!(
            ours(cut, room),
            httparse(cut, room),
            "on {:?}",
            String::from_utf8_lossy(cut)
        );
    }
    Ok(())
}

#[test]
fn a_typical_answer() {
    let head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length:  2 \r\nX-Empty:\r\n\r\nok";
    let mut spans = [MaybeUninit::uninit(); 8];
    let (s, spans) = response(head, &mut spans).unwrap().unwrap();
    assert_eq!((s.len, s.minor, s.code, spans.len()), (head.len() - 2, 1, 200, 3));
    let field = |k: usize| (&head[spans[k].name_range()], &head[spans[k].value_range()]);
    assert_eq!(field(0), (&b"Server"[..], &b"nginx"[..]));
    assert_eq!(field(1), (&b"Content-Length"[..], &b"2"[..]));
    assert_eq!(field(2), (&b"X-Empty"[..], &b""[..]));
    agree(head, 8).unwrap();
}

#[test]
fn common_names_are_found_in_any_case_and_only_themselves() {
    for (k, (raw, known)) in NAMES.iter().zip(&KNOWN).enumerate() {
        assert_eq!(*raw, known.as_str().as_bytes());
        for name in [raw.to_vec(), raw.to_ascii_uppercase()] {
            let mut buf = name.clone();
            buf.extend_from_slice(b": x\r\n\r\n");
            assert_eq!(known_name(&name), Some(k as u8), "{known}");
            let mut spans = [MaybeUninit::uninit(); 1];
            let (_, spans) = fields(&buf, 0, &mut spans).unwrap().unwrap();
            assert_eq!(spans[0].header_name(&buf).as_ref(), Some(known));
        }
    }
    for (k, name) in [
        (CONNECTION, header::CONNECTION),
        (CONTENT_LENGTH, header::CONTENT_LENGTH),
        (KEEP_ALIVE, HeaderName::from_static("keep-alive")),
        (TRANSFER_ENCODING, header::TRANSFER_ENCODING),
    ] {
        assert_eq!(KNOWN[k.0 as usize], name);
    }
    // One byte from a common name: CR for '-' (the same byte with the case bit off), a
    // letter replaced, a name one byte short or one byte long.
    for near in [
        &b"content\rlength"[..],
        b"Content-Lengt",
        b"content-lengths",
        b"dat^",
        b"xate",
    ] {
        assert_eq!(known_name(near), None, "{near:?}");
    }
    let mut spans = [MaybeUninit::uninit(); 1];
    let buf = b"DAT~: x\r\n\r\n";
    let (_, spans) = fields(buf, 0, &mut spans).unwrap().unwrap();
    assert_eq!(spans[0].header_name(buf).unwrap().as_str(), "dat~");
}

#[test]
fn edge_cases_match_httparse() {
    let cases: &[&[u8]] = &[
        b"\r\n\nHTTP/1.0 404\nA: b\n\n",
        b"HTTP/1.1 204 \r\n\r\n",
        b"HTTP/1.1 200 r\x80\xffe\tason\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA:\t b \t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\x7f\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: \x80\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n\r\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.2 200 OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200\rX\r\n\r\n",
        b"\rHTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n",
    ];
    for case in cases {
        for room in [0, 1, 2, 8] {
            agree(case, room).unwrap();
        }
    }
}

const VERSIONS: &[&[u8]] = &[b"HTTP/1.2", b"HTTP/2", b"HTTP/1.", b"http/1.1", b"HTTP/1.1  "];

/// Pieces a head is made of, well-formed or nearly so.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let bytes =
        |alphabet: &'static [u8], max| proptest::collection::vec(proptest::sample::select(alphabet), 0..max);
    prop_oneof![
        4 => Just(b"\r\n".to_vec()),
        2 => Just(b"\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        2 => Just(b"HTTP/1.1 ".to_vec()),
        1 => Just(b"HTTP/1.0 ".to_vec()),
        1 => proptest::sample::select(VERSIONS)
            .prop_map(<[u8]>::to_vec),
        3 => bytes(b"0123456789 x", 5),
        6 => bytes(b"Content-Length:abcXYZ-_!~ \t:", 12),
        6 => bytes(b"value 0123:;,\"=/\t ", 12),
        2 => bytes(b"\x00\x01\x7f\x80\xff\t \r\n:()", 3),
    ]
}

/// A field name: one of the common ones in any case, or any token.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        (proptest::sample::select(&NAMES[..]), any::<u32>()).prop_map(|(name, case)| {
            let mut name = String::from_utf8(name.to_vec()).unwrap();
            // Upper-case the letters whose bit is set in `case`.
            name = name
                .chars()
                .enumerate()
                .map(|(k, c)| {
                    if case >> (k % 32) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            name
        }),
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
    ]
}

/// Heads that are well-formed, with a few fields.
fn well_formed() -> impl Strategy<Value = Vec<u8>> {
    let field = (name(), "[ \t]{0,2}", "[ -~\t\u{80}-\u{ff}]{0,16}", "[ \t]{0,2}");
    (
        "(\r?\n){0,2}",
        prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
        100u16..1000,
        "( [ -~\t]{0,12})?",
        proptest::collection::vec((field, prop_oneof![Just("\r\n"), Just("\n")]), 0..6),
        prop_oneof![Just("\r\n"), Just("\n")],
        "[a-z]{0,4}",
    )
        .prop_map(|(lead, version, code, reason, fields, end, body)| {
            let mut out = format!("{lead}{version} {code}{reason}\r\n").into_bytes();
            for ((name, ows, value, trail), eol) in fields {
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                out.extend_from_slice(ows.as_bytes());
                // Characters U+0080..U+00FF stand for the bytes 0x80..0xFF: obs-text.
                out.extend(value.chars().map(|c| c as u32 as u8));
                out.extend_from_slice(trail.as_bytes());
                out.extend_from_slice(eol.as_bytes());
            }
            out.extend_from_slice(end.as_bytes());
            out.extend_from_slice(body.as_bytes());
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn agrees_with_httparse_on_well_formed_heads(head in well_formed(), room in 0usize..8) {
        prop_assert!(!matches!(httparse(&head, 8), Outcome::Malformed | Outcome::Partial));
        agree(&head, room)?;
    }

    #[test]
    fn agrees_with_httparse_on_mutated_heads(
        head in well_formed(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        room in 0usize..8,
    ) {
        let mut head = head;
        let at = at.index(head.len());
        head[at] = byte;
        agree(&head, room)?;
    }

    #[test]
    fn agrees_with_httparse_on_pieced_heads(
        pieces in proptest::collection::vec(piece(), 0..16),
        room in 0usize..4,
    ) {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for p in &pieces {
            head.extend_from_slice(p);
        }
        agree(&head, room)?;
        agree(&pieces.concat(), room)?;
    }

    #[test]
    fn trailer_fields_agree_with_httparse(pieces in proptest::collection::vec(piece(), 0..12)) {
        let buf = pieces.concat();
        let mut spans = [MaybeUninit::uninit(); 4];
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let ours = match fields(&buf, 0, &mut spans) {
            Ok(Some((len, f))) => Ok(Some((len, f.len()))),
            Ok(None) => Ok(None),
            Err(e) => Err(e == Invalid::TooManyFields),
        };
        let theirs = match httparse::parse_headers(&buf, &mut headers) {
            Ok(httparse::Status::Complete((len, h))) => Ok(Some((len, h.len()))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(e == httparse::Error::TooManyHeaders),
        };
        prop_assert_eq!(ours, theirs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::http1::long_cases()))]

    #[test]
    #[ignore = "a long run, by hand"]
    fn long_run_heads_agree_with_httparse(
        head in well_formed(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        pieces in proptest::collection::vec(piece(), 0..16),
        room in 0usize..8,
    ) {
        let mut mutated = head.clone();
        let at = at.index(mutated.len());
        mutated[at] = byte;
        agree(&head, room)?;
        agree(&mutated, room)?;
        agree(&pieces.concat(), room)?;
    }
}
