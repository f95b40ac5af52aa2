//! `lumina serve` as a user runs it: the built-in model on a free port, an OpenAI call whose
//! image equals `lumina generate`'s for the same seed, pixel for pixel and with the same
//! `parameters` text, then SIGTERM, after which the server says what it stopped.

mod common;

use common::{decode_png, read_png};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;

/// One HTTP/1.1 POST with `Connection: close`: (status, body).
fn post(address: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_string())
}

#[test]
fn serve_answers_like_generate_and_stops_on_sigterm() {
    let cache = tempfile::tempdir().expect("temp dir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_lumina"))
        .env("LUMINA_CACHE_DIR", cache.path())
        .args(["serve", "--port", "0", "--queue", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lumina serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the address line");
    let address = line
        .trim()
        .rsplit("http://")
        .next()
        .expect("an address")
        .trim_end_matches('/')
        .to_string();
    assert!(
        line.starts_with("serving lumina built-in shapes on http://"),
        "{line}"
    );

    let (status, body) = post(
        &address,
        "/v1/images/generations",
        r#"{"prompt": "a red circle above a blue square", "size": "64x32", "seed": 11}"#,
    );
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let b64 = json["data"][0]["b64_json"].as_str().expect("b64_json");
    let served = decode_png(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
    );

    let out = cache.path().join("generated.png");
    let o = Command::new(env!("CARGO_BIN_EXE_lumina"))
        .env("LUMINA_CACHE_DIR", cache.path())
        .args(["generate", "-q", "-p", "a red circle above a blue square"])
        .args(["-W", "64", "-H", "32", "-s", "11", "-o"])
        .arg(&out)
        .output()
        .expect("generate runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let generated = read_png(&out);
    assert_eq!((served.0, served.1), (generated.0, generated.1));
    assert!(
        served.2 == generated.2,
        "the served image differs from generate's"
    );
    assert_eq!(served.3, generated.3, "the parameters texts differ");

    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let mut stderr = String::new();
    server
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let status = server.wait().expect("the server exits");
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(
        stderr.contains("stopped: 0 running job(s) finished, 0 cancelled"),
        "{stderr}"
    );
}
