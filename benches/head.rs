//! The upstream response head parser against httparse (the parser hyper uses), on the answer
//! the peer job's upstream (nginx) gives and on a longer one with a dozen fields: the parse
//! alone (both record where the fields lie; ours also says which common name each has), and
//! with each field's `HeaderName` made, as the proxy needs them.

use std::hint::black_box;
use std::mem::MaybeUninit;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderName;
use switchyard::http1::head::{self, Field};

const NGINX: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 21 Nov 2026 10:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 7\r\nConnection: keep-alive\r\n\r\nstable\n";

const LONG: &[u8] = b"HTTP/1.1 200 OK\r\nDate: Sat, 21 Nov 2026 10:00:00 GMT\r\nContent-Type: application/json; charset=utf-8\r\n\
Content-Length: 1234\r\nConnection: keep-alive\r\nCache-Control: private, max-age=0, no-cache\r\n\
ETag: \"33a64df551425fcc55e4d42a148795d9f25f89d4\"\r\nVary: Accept-Encoding, Origin\r\n\
Set-Cookie: session=8f14e45fceea167a5a36dedd4bea2543; Path=/; HttpOnly; Secure\r\n\
Strict-Transport-Security: max-age=63072000\r\nX-Request-Id: 5f1c2b7e-8d3a-4e2b-9c1f-2a6b7d8e9f01\r\n\
X-Content-Type-Options: nosniff\r\nServer: api/2.3.1\r\n\r\n";

fn bench(c: &mut Criterion) {
    for (shape, input) in [("nginx, 5 fields", NGINX), ("api, 12 fields", LONG)] {
        c.bench_function(&format!("head/switchyard/{shape}"), |b| {
            let mut spans = [MaybeUninit::<Field>::uninit(); 100];
            b.iter(|| {
                head::response(black_box(input), &mut spans)
                    .unwrap()
                    .unwrap()
                    .0
                    .len
            })
        });
        c.bench_function(&format!("head/httparse+names/{shape}"), |b| {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            b.iter(|| {
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(black_box(input)) {
                    Ok(httparse::Status::Complete(len)) => {
                        for h in resp.headers.iter() {
                            black_box(HeaderName::from_bytes(h.name.as_bytes()).unwrap());
                        }
                        len
                    }
                    _ => unreachable!("both heads are complete"),
                }
            })
        });
        c.bench_function(&format!("head/switchyard+names/{shape}"), |b| {
            let mut spans = [MaybeUninit::<Field>::uninit(); 100];
            b.iter(|| {
                let input = black_box(input);
                let (status, fields) = head::response(input, &mut spans).unwrap().unwrap();
                for f in fields {
                    black_box(f.header_name(input).unwrap());
                }
                status.len
            })
        });
        c.bench_function(&format!("head/httparse/{shape}"), |b| {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            b.iter(|| {
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(black_box(input)) {
                    Ok(httparse::Status::Complete(len)) => len,
                    _ => unreachable!("both heads are complete"),
                }
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
