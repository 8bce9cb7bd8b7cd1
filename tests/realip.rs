//! The client address behind trusted proxies, read as nginx's realip module reads it: the same
//! `x-forwarded-for` fields go to a real nginx (`real_ip_recursive on`, the same trusted ranges)
//! and to switchyard's reader, and the two must name the same client. Needs the `nginx` binary
//! (Debian package `nginx-light`): `.ci/run` installs it and runs this test; `cargo test` alone
//! skips it as ignored. The cases that found the hole (junk a client writes on the left of the
//! list made the load balancer's own address the client's) are in `routing::context`'s unit
//! tests, which run everywhere.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard::routing::context::client_address;
use switchyard::routing::unleash::ops::Cidr;

use support::{free_port, Killed};

const TRUSTED: [&str; 3] = ["127.0.0.0/8", "10.0.0.0/8", "2001:db8:1::/48"];

/// Entries a load balancer, a proxy or a lying client may write.
const ENTRIES: [&str; 19] = [
    "::ffff:10.0.0.5",
    "10.0.0.5",
    "10.20.30.40",
    "127.0.0.9",
    "2001:db8:1::5",
    "203.0.113.9",
    "198.51.100.7",
    "2001:db8:2::9",
    "203.0.113.9:443",
    "10.0.0.5:8080",
    "[2001:db8:2::9]:443",
    "[2001:db8:1::5]:80",
    "junk",
    "unknown",
    "1.2.3",
    "300.1.1.1",
    "203.0.113.9:99999",
    "::ffff:203.0.113.9",
    "_hidden",
];
const SEPARATORS: [&str; 4] = [", ", ",", " ", " , "];

/// One GET to nginx with these `x-forwarded-for` fields; the body is nginx's `$remote_addr`.
fn nginx_says(port: u16, fields: &[String]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = String::from("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for f in fields {
        req.push_str(&format!("X-Forwarded-For: {f}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned()
}

#[test]
#[ignore = "needs the nginx binary: .ci/run installs it and runs this test"]
fn the_client_address_is_the_one_nginx_realip_finds() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let trusted_lines: String = TRUSTED
        .iter()
        .map(|c| format!("    set_real_ip_from {c};\n"))
        .collect();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  server {{\n    listen 127.0.0.1:{port};\n{trusted_lines}    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;\n    location / {{ return 200 \"$remote_addr\\n\"; }}\n  }}\n}}\n",
        dir = dir.path().display(),
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the nginx binary (apt-get install nginx-light)");
    let _nginx = Killed(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let trusted: Vec<Cidr> = TRUSTED.iter().map(|c| Cidr::parse(c).unwrap()).collect();
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let mut rng = fastrand::Rng::with_seed(24);
    let (mut agreed, mut differed) = (0, Vec::new());
    for _ in 0..3000 {
        let fields: Vec<String> = (0..rng.usize(1..=3))
            .map(|_| {
                let n = rng.usize(1..=5);
                let mut f = String::new();
                for i in 0..n {
                    if i > 0 {
                        f.push_str(SEPARATORS[rng.usize(..SEPARATORS.len())]);
                    }
                    f.push_str(ENTRIES[rng.usize(..ENTRIES.len())]);
                }
                f
            })
            .collect();
        let mut headers = http::HeaderMap::new();
        for f in &fields {
            headers.append("x-forwarded-for", f.parse().unwrap());
        }
        let ours = client_address(Some(peer), &headers, &trusted)
            .unwrap()
            .to_string();
        let theirs = nginx_says(port, &fields);
        if ours == theirs {
            agreed += 1;
        } else {
            differed.push(format!("{fields:?}: nginx {theirs}, switchyard {ours}"));
        }
    }
    println!("agreed with nginx on {agreed} of 3000 lists");
    assert!(
        differed.is_empty(),
        "{} differ, e.g.:\n{}",
        differed.len(),
        differed[..differed.len().min(10)].join("\n")
    );
}
