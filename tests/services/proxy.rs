//! A TCP proxy a test puts between a process and one of the services, to cut the process off
//! (an outage of a chosen length that no other process sees) or slow it down, and then
//! restore it. Cutting closes every open connection and drops new ones at once, as a crashed
//! or unreachable server would look to the client.
//!
//! In front of the object store it can also record every PUT that passes (its key, the
//! `x-amz-meta-fleet-lease` that names the attempt writing it, and when it arrived), reading
//! the HTTP/1.1 requests as they stream through: the chaos suite counts writes with it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass it through.
    Pass,
    /// Close every connection and refuse new ones.
    Cut,
    /// Pass it through, each chunk held this long first.
    Delay(Duration),
}

/// One PUT request seen on its way to the object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The object key (bucket stripped, percent-decoding undone).
    pub key: String,
    /// The attempt that wrote it, `<task id> <token>`, when the writer named it.
    pub lease: Option<String>,
    /// When its request head arrived, ms since the epoch.
    pub at_ms: u64,
}

/// PUTs recorded by a proxy.
pub type Puts = std::sync::Arc<std::sync::Mutex<Vec<Put>>>;

/// A running proxy; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
    puts: Option<Puts>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Self::listen(upstream, None).await
    }

    /// Like [`start`](Self::start) in front of an S3 server, recording every PUT
    /// (see [`puts`](Self::puts)); `bucket` is stripped from the path-style keys.
    pub async fn start_recording_puts(upstream: SocketAddr, bucket: &str) -> Proxy {
        let puts: Puts = Default::default();
        Self::listen(upstream, Some((puts, format!("/{bucket}/")))).await
    }

    async fn listen(upstream: SocketAddr, recording: Option<(Puts, String)>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("bound address");
        let (mode, watching) = watch::channel(Mode::Pass);
        let puts = recording.as_ref().map(|(p, _)| p.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                if *watching.borrow() == Mode::Cut {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(forward(inbound, upstream, watching.clone(), recording.clone()));
            }
        });
        Proxy { addr, mode, task, puts }
    }

    /// The PUTs seen so far (empty unless started with
    /// [`start_recording_puts`](Self::start_recording_puts)).
    pub fn puts(&self) -> Vec<Put> {
        self.puts.as_ref().map(|p| p.lock().expect("puts lock").clone()).unwrap_or_default()
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with its `host:port` replaced by the proxy's (`redis://user:pw@127.0.0.1:6379/0`
    /// -> `redis://user:pw@127.0.0.1:<proxy>/0`).
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
        let tail = if path.is_empty() { String::new() } else { format!("/{path}") };
        format!("{scheme}://{userinfo}{}{tail}", self.addr)
    }

    /// Sets what happens to traffic from now on.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}

/// The `host:port` of a URL (for the upstream of a proxy).
pub fn addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().expect("an authority");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.parse().unwrap_or_else(|e| panic!("{host_port:?} is not an address: {e}"))
}

async fn forward(
    inbound: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    recording: Option<(Puts, String)>,
) {
    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
    let (read_in, write_in) = inbound.into_split();
    let (read_out, write_out) = outbound.into_split();
    let reader = recording.map(|(puts, bucket)| Requests::new(puts, bucket));
    let both = async {
        let _ =
            tokio::join!(copy(read_in, write_out, mode.clone(), reader), copy(read_out, write_in, mode.clone(), None));
    };
    tokio::select! {
        _ = both => {}
        _ = cut(mode.clone()) => {}
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
    mut requests: Option<Requests>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some(requests) = requests.as_mut() {
            requests.feed(&buf[..n]);
        }
        let delay = match *mode.borrow() {
            Mode::Delay(d) => Some(d),
            _ => None,
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Reads HTTP/1.1 requests from the bytes a client sends, as they stream by, and records the
/// PUTs among them.
struct Requests {
    puts: Puts,
    bucket: String,
    state: Reading,
    head: Vec<u8>,
}

/// Where in the request stream the reader is.
enum Reading {
    /// In a request's head, up to its blank line.
    Head,
    /// In a body of known length: bytes left.
    Body(u64),
    /// In a chunked body: reading a chunk-size line.
    ChunkSize,
    /// In a chunk: bytes left, then its CRLF.
    Chunk(u64),
    /// After the last chunk: trailer lines up to a blank one.
    Trailers,
}

impl Requests {
    fn new(puts: Puts, bucket: String) -> Self {
        Requests { puts, bucket, state: Reading::Head, head: Vec::new() }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                Reading::Body(left) | Reading::Chunk(left) if *left > 0 => {
                    let take = (*left).min(bytes.len() as u64) as usize;
                    *left -= take as u64;
                    bytes = &bytes[take..];
                }
                Reading::Body(_) => self.state = Reading::Head,
                Reading::Chunk(_) => {
                    // The chunk's CRLF, then the next size line (read as a line below).
                    self.head.clear();
                    self.state = Reading::ChunkSize;
                }
                Reading::Head | Reading::ChunkSize | Reading::Trailers => {
                    let (byte, rest) = (bytes[0], &bytes[1..]);
                    bytes = rest;
                    self.head.push(byte);
                    self.line_done();
                }
            }
        }
    }

    /// After each byte of a head, size line or trailer: acts on what is complete.
    fn line_done(&mut self) {
        match self.state {
            Reading::Head if self.head.ends_with(b"\r\n\r\n") => {
                let head = String::from_utf8_lossy(&self.head).to_string();
                self.head.clear();
                self.state = self.request(&head);
            }
            Reading::Head if self.head == b"\r\n" => self.head.clear(),
            Reading::ChunkSize if self.head.ends_with(b"\r\n") => {
                let line = String::from_utf8_lossy(&self.head).to_string();
                self.head.clear();
                let size = line.trim().split(';').next().unwrap_or("");
                if size.is_empty() {
                    return; // the CRLF closing the previous chunk
                }
                let size = u64::from_str_radix(size, 16).unwrap_or(0);
                self.state = if size == 0 { Reading::Trailers } else { Reading::Chunk(size) };
            }
            Reading::Trailers if self.head.ends_with(b"\r\n") => {
                let blank = self.head == b"\r\n";
                self.head.clear();
                if blank {
                    self.state = Reading::Head;
                }
            }
            _ => {}
        }
    }

    /// Records the request if it is a PUT; what follows its head.
    fn request(&self, head: &str) -> Reading {
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let mut length = 0;
        let mut chunked = false;
        let mut lease = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "x-amz-meta-fleet-lease" => lease = Some(value.to_string()),
                _ => {}
            }
        }
        if method == "PUT" {
            let path = target.split('?').next().unwrap_or("");
            if let Some(key) = path.strip_prefix(&self.bucket) {
                let at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let put = Put { key: percent_decode(key), lease, at_ms };
                self.puts.lock().expect("puts lock").push(put);
            }
        }
        if chunked {
            Reading::ChunkSize
        } else {
            Reading::Body(length)
        }
    }
}

/// Undoes percent-encoding in a URL path.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Returns once the mode is [`Mode::Cut`].
async fn cut(mut mode: watch::Receiver<Mode>) {
    loop {
        if *mode.borrow_and_update() == Mode::Cut {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_are_read_from_the_stream_whatever_the_bodies_hold() {
        let puts: Puts = Default::default();
        let mut reader = Requests::new(puts.clone(), "/fleet/".into());
        let body = b"PUT /fleet/decoy HTTP/1.1\r\n\r\n".repeat(3);
        let mut stream = Vec::new();
        stream.extend_from_slice(
            format!("PUT /fleet/t/results/j/a%25b/result.png?x-id=PutObject HTTP/1.1\r\nContent-Length: {}\r\nx-amz-meta-fleet-lease: t/j/0 42\r\n\r\n", body.len()).as_bytes(),
        );
        stream.extend_from_slice(&body);
        stream.extend_from_slice(b"GET /fleet/t/x HTTP/1.1\r\n\r\n");
        stream.extend_from_slice(b"PUT /fleet/t/chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-amz-checksum: 1\r\n\r\n");
        stream.extend_from_slice(b"PUT /fleet/t/last HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        // Fed in awkward pieces, as TCP may deliver them.
        for piece in stream.chunks(7) {
            reader.feed(piece);
        }
        let seen: Vec<(String, Option<String>)> =
            puts.lock().unwrap().iter().map(|p| (p.key.clone(), p.lease.clone())).collect();
        assert_eq!(
            seen,
            vec![
                ("t/results/j/a%b/result.png".to_string(), Some("t/j/0 42".to_string())),
                ("t/chunked".to_string(), None),
                ("t/last".to_string(), None),
            ]
        );
    }

    #[tokio::test]
    async fn urls_keep_everything_but_the_address() {
        assert_eq!(addr_of("redis://u:p@127.0.0.1:6379/0"), "127.0.0.1:6379".parse().unwrap());
        assert_eq!(addr_of("http://127.0.0.1:3900"), "127.0.0.1:3900".parse().unwrap());
        let proxy = Proxy::start("127.0.0.1:9".parse().unwrap()).await;
        let port = proxy.addr().port();
        assert_eq!(proxy.url_for("redis://u:p@127.0.0.1:6379/0"), format!("redis://u:p@127.0.0.1:{port}/0"));
        assert_eq!(proxy.url_for("http://127.0.0.1:3900"), format!("http://127.0.0.1:{port}"));
    }
}
