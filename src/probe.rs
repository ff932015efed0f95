//! `sluice --health-check URL`: one plain-HTTP GET to sluice's own admin
//! API, exiting 0 on a 2xx answer. Container images run it as their
//! HEALTHCHECK, so a slim image needs no curl or wget; it speaks just
//! enough HTTP/1.1 for `/healthz` and `/readyz` and is not a general client.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting, and then reading the answer, may take each.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `url` (`http://HOST:PORT/PATH`) and returns its status line when
/// the status is 2xx, or why the check failed.
pub fn health_check(url: &str) -> Result<String, String> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let io = |e: std::io::Error| format!("{addr}: {e}");
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: sluice-health-check\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    // The status line is all that matters; it fits in the first read or two.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    match line.split(' ').nth(1) {
        Some(code) if line.starts_with("HTTP/1.") && code.len() == 3 && code.starts_with('2') => {
            Ok(line)
        }
        Some(_) if line.starts_with("HTTP/1.") => Err(format!("{url}: {line}")),
        _ => Err(format!("{url}: no HTTP answer")),
    }
}

/// `http://HOST:PORT/PATH` as (`HOST:PORT`, `/PATH`); the port is required
/// (sluice's admin port is never implied) and the path defaults to `/`.
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("\"{url}\" is not an http:// URL such as http://127.0.0.1:9090/healthz")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port || path.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
        return Err(format!(
            "\"{url}\" is not an http://HOST:PORT/PATH URL such as http://127.0.0.1:9090/healthz"
        ));
    }
    Ok((authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_http_a_host_and_a_port() {
        assert_eq!(
            split_url("http://127.0.0.1:9090/healthz"),
            Ok(("127.0.0.1:9090", "/healthz"))
        );
        assert_eq!(split_url("http://[::1]:9090"), Ok(("[::1]:9090", "/")));
        assert_eq!(
            split_url("http://localhost:9090/readyz"),
            Ok(("localhost:9090", "/readyz"))
        );
        assert!(split_url("https://127.0.0.1:9090/healthz").is_err());
        assert!(split_url("http://127.0.0.1/healthz").is_err());
        assert!(split_url("http://:9090/healthz").is_err());
        assert!(split_url("http://127.0.0.1:9090/a b").is_err());
    }
}
