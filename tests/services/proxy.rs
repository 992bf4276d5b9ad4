//! A TCP proxy a test puts between a process and one of the services, to cut the process off
//! (an outage of a chosen length that no other process sees) or slow it down, and then
//! restore it. Cutting closes every open connection and drops new ones at once, as a crashed
//! or unreachable server would look to the client.

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

/// A running proxy; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("bound address");
        let (mode, watching) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                if *watching.borrow() == Mode::Cut {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(forward(inbound, upstream, watching.clone()));
            }
        });
        Proxy { addr, mode, task }
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

async fn forward(inbound: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
    let (read_in, write_in) = inbound.into_split();
    let (read_out, write_out) = outbound.into_split();
    let both = async {
        let _ = tokio::join!(copy(read_in, write_out, mode.clone()), copy(read_out, write_in, mode.clone()));
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
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
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
