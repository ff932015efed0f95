//! HTTP/1.1 by hand on a raw `TcpStream`: finding the end of a head,
//! parsing a response head, and reading one response off the socket.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::PATIENCE;

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status and header fields of a response head (the text before its
/// blank line), field names lower-cased, names and values trimmed; `None`
/// without a status code on the first line.
pub fn parse_head(head: &str) -> Option<(u16, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, fields))
}

/// How [`read_raw_response`] delimits a response without `Content-Length`.
#[derive(Debug, Clone, Copy)]
pub enum NoLength {
    /// It has no body: the head completes it.
    Empty,
    /// Its body runs until the peer closes the connection.
    UntilClose,
}

/// Reads one response off `stream`: the head, then a `Content-Length` body
/// (without one, as `no_length` says). Returns everything read and, when
/// the response came complete, where its head ends (the offset of the blank
/// line) and its body length; `None` when the peer closed (or the read
/// failed) first. Fails after [`PATIENCE`] (a hang guard, not a timing
/// assertion).
pub async fn read_raw_response(
    stream: &mut TcpStream,
    no_length: NoLength,
) -> (Vec<u8>, Option<(usize, usize)>) {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .or(match no_length {
                        NoLength::Empty => Some(0),
                        NoLength::UntilClose => None,
                    });
                if let Some(length) = length.filter(|n| buf.len() >= end + 4 + n) {
                    return Some((end, length));
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let complete = tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a response in time");
    (buf, complete)
}
