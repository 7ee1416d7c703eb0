//! The running transport: one quinn endpoint, a connection per peer address, request/response,
//! datagrams and raw streams.

use crate::frame::{self, FrameError, RemoteError};
use crate::tls::{self, TlsError, TlsMaterial};
use crate::{ALPN_CLUSTER, ALPN_JOIN};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use noodle_security::CLUSTER_SERVER_NAME;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Largest UDP payload we let path MTU discovery grow to. Loopback and jumbo-frame LANs reach it;
/// ordinary Ethernet paths settle near 1450 by themselves. It must stay below 65 507 / 10: quinn
/// batches up to 10 packets into one GSO send and the kernel refuses batches over 64 KiB
/// (EMSGSIZE), which looks like loss and makes black-hole detection drop the MTU to 1200.
const UDP_PAYLOAD_BYTES_MAX: u16 = 6_500;
/// Requested UDP socket buffer size, each direction.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// A join request carries a token and a public key: a few KiB at most.
const JOIN_BYTES_MAX: usize = 64 * 1024;
/// Datagrams waiting for a connection to be set up, over all peers.
const PENDING_DATAGRAMS_MAX: usize = 256;
/// QUIC close code for a peer this node refuses (no node id, or a removed node).
const REFUSED_CODE: u32 = 403;
/// Member connections one node may have to this one at once (one per address it dials from).
const CONNECTIONS_PER_NODE_MAX: usize = 4;
/// Bytes of request bodies one connection may have in memory at once, all its streams
/// together; a stream waits for room (the peer's sending stalls) rather than grow it.
const CONNECTION_BODY_BYTES_MAX: usize = 64 << 20;

/// Settings of a link; every timeout and size is bounded.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub listen: SocketAddr,
    /// Whole-request deadline, retries included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries of a request whose connection failed (not of a remote error).
    pub retries: u32,
    /// Largest request or response body.
    pub body_bytes_max: usize,
    /// A connection silent for this long is closed; keep-alives prevent it on a healthy link.
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    pub streams_per_connection_max: u32,
}

impl LinkConfig {
    pub fn new(listen: SocketAddr) -> LinkConfig {
        LinkConfig {
            listen,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retries: 2,
            body_bytes_max: 16 << 20,
            idle_timeout: Duration::from_secs(4),
            keep_alive: Duration::from_millis(800),
            streams_per_connection_max: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("connection to {addr} failed: {detail}")]
    Connection { addr: SocketAddr, detail: String },
    #[error("{addr} did not answer `{method}` within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        method: String,
        timeout: Duration,
    },
    #[error("{addr} sent a malformed answer: {source}")]
    Frame {
        addr: SocketAddr,
        source: FrameError,
    },
    #[error("{addr} refused: {source}")]
    Remote {
        addr: SocketAddr,
        source: RemoteError,
    },
}

impl LinkError {
    fn retryable(&self) -> bool {
        matches!(
            self,
            LinkError::Connect { .. } | LinkError::Connection { .. }
        )
    }
}

/// Transport-level events for the node's event bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Up {
        addr: SocketAddr,
        /// The node id the peer's certificate names.
        peer_id: Option<String>,
        kx_group: String,
    },
    Down {
        addr: SocketAddr,
        peer_id: Option<String>,
        reason: String,
    },
}

/// One live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub addr: SocketAddr,
    /// The node id the peer's (verified) certificate names.
    pub peer_id: Option<String>,
    pub rtt: Duration,
    pub kx_group: String,
}

/// A member on the other end of a connection: the node id its certificate names (verified
/// against the cluster CA in the handshake) and its address. Handlers decide with the id who
/// may call them; the address is only where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub node_id: String,
}

/// A joiner as seen by the node it dialled.
#[derive(Debug, Clone)]
pub struct JoinPeer {
    pub remote: SocketAddr,
}

pub type ServiceFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, RemoteError>> + Send>>;

/// What the node plugs into the link: it answers requests and receives datagrams and events.
pub trait Service: Send + Sync + 'static {
    /// Answers one request from a member.
    fn call(&self, from: Peer, method: &str, body: Bytes) -> ServiceFuture;
    /// Answers the join request of a certificate-less peer.
    fn join(&self, peer: JoinPeer, body: Bytes) -> ServiceFuture;
    /// A datagram from a member. Must not block.
    fn datagram(&self, from: &Peer, data: Bytes);
    /// A link came up or went down. Must not block.
    fn event(&self, event: LinkEvent);
    /// True if `method` takes its body as a stream (see [`Service::stream`]).
    fn is_stream(&self, _method: &str) -> bool {
        false
    }
    /// Serves a streaming method: the header has been read, the rest of `recv` is the body.
    fn stream(
        &self,
        _from: Peer,
        _method: &str,
        _send: SendStream,
        _recv: RecvStream,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

type Dial = Shared<BoxFuture<'static, Result<Connection, String>>>;

enum Slot {
    Ready {
        conn: Connection,
        kx_group: String,
        peer_id: Option<String>,
    },
    Dialling(Dial),
}

struct Inner {
    endpoint: Endpoint,
    /// What the node dials with; replaced when its certificate is renewed.
    client: std::sync::RwLock<quinn::ClientConfig>,
    transport: Arc<quinn::TransportConfig>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
    cfg: LinkConfig,
    service: Arc<dyn Service>,
    conns: Mutex<HashMap<SocketAddr, Slot>>,
    pending_datagrams: Arc<Semaphore>,
    /// Node ids whose connections are refused (nodes removed from the cluster).
    refused: std::sync::RwLock<std::collections::HashSet<String>>,
    handshakes: crate::gate::Handshakes,
}

/// The transport of one node. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

fn transport_config(cfg: &LinkConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Durations of a few seconds always fit QUIC's idle timeout range.
    t.max_idle_timeout(cfg.idle_timeout.try_into().ok());
    t.keep_alive_interval(Some(cfg.keep_alive));
    t.initial_rtt(Duration::from_millis(20));
    t.max_concurrent_bidi_streams(cfg.streams_per_connection_max.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.datagram_receive_buffer_size(Some(1 << 20));
    // Ask the peer to acknowledge every 8th ack-eliciting packet (or after its max ack delay)
    // instead of every 2nd: request/response traffic then carries its ACKs on the answers, and
    // bulk transfers spend fewer packets on ACK-only frames. Loss is still detected by packet
    // threshold on the sender.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(7u32.into());
    t.ack_frequency_config(Some(ack));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(UDP_PAYLOAD_BYTES_MAX);
    // After a suspected black hole, probe again soon rather than after the default minute.
    mtu.black_hole_cooldown(Duration::from_secs(5));
    t.mtu_discovery_config(Some(mtu));
    t
}

fn kx_group_of(conn: &Connection) -> String {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .map(|d| format!("{:?}", d.negotiated_key_exchange_group))
        .unwrap_or_else(|| "unknown".into())
}

/// The node id in the peer's certificate; the handshake already verified it against the CA.
fn peer_id_of(conn: &Connection) -> Option<String> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    noodle_security::node_id_of_cert(chain.first()?)
}

fn alpn_of(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
}

/// The server and client configurations for `m`.
fn configs(
    m: &TlsMaterial,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), LinkError> {
    let server_tls = tls::server_config(m)?;
    let server_quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
    server.transport_config(transport.clone());
    let mut client = tls::quic_client(tls::cluster_client_config(m)?)?;
    client.transport_config(transport.clone());
    Ok((server, client))
}

impl Inner {
    fn client_config(&self) -> quinn::ClientConfig {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Link {
    /// Binds the cluster port and starts accepting connections.
    pub fn bind(
        cfg: LinkConfig,
        tls_material: &TlsMaterial,
        service: Arc<dyn Service>,
    ) -> Result<Link, LinkError> {
        let transport = Arc::new(transport_config(&cfg));
        let (server, client) = configs(tls_material, &transport)?;
        let socket = std::net::UdpSocket::bind(cfg.listen).map_err(|source| LinkError::Bind {
            addr: cfg.listen,
            source,
        })?;
        // Bulk bursts overflow the default UDP buffers (about 200 KiB) within a few large
        // packets; the losses then also make path MTU discovery fall back to 1200 bytes. Ask for
        // more; the kernel caps it at net.core.[rw]mem_max, which is fine.
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        let mut endpoint_cfg = quinn::EndpointConfig::default();
        endpoint_cfg
            .max_udp_payload_size(UDP_PAYLOAD_BYTES_MAX)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let endpoint = Endpoint::new(
            endpoint_cfg,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| LinkError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let inner = Arc::new(Inner {
            endpoint,
            client: std::sync::RwLock::new(client),
            transport,
            key: tls_material.key.clone_key(),
            ca: tls_material.ca.clone(),
            cfg,
            service,
            conns: Mutex::new(HashMap::new()),
            pending_datagrams: Arc::new(Semaphore::new(PENDING_DATAGRAMS_MAX)),
            refused: Default::default(),
            handshakes: Default::default(),
        });
        tokio::spawn(accept_loop(inner.clone()));
        Ok(Link { inner })
    }

    /// Presents `cert` (a renewed certificate for the same key) from now on, on new
    /// connections in both directions; open connections keep the one they were made with.
    pub fn set_certificate(&self, cert: CertificateDer<'static>) -> Result<(), LinkError> {
        let inner = &self.inner;
        let material = TlsMaterial {
            ca: inner.ca.clone(),
            cert,
            key: inner.key.clone_key(),
        };
        let (server, client) = configs(&material, &inner.transport)?;
        inner.endpoint.set_server_config(Some(server));
        *inner.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        Ok(())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or(self.inner.cfg.listen)
    }

    pub fn config(&self) -> &LinkConfig {
        &self.inner.cfg
    }

    /// Sends a request and waits for its answer, reusing or opening the connection to `addr`.
    /// Connection failures are retried with backoff within the request deadline, so `method`
    /// must be safe to repeat.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        body: &[u8],
    ) -> Result<Bytes, LinkError> {
        let timeout = self.inner.cfg.request_timeout;
        let deadline = Instant::now() + timeout;
        let deadline_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let request = frame::encode_request(method, deadline_ms, body);
        let mut attempt = 0;
        loop {
            let result =
                tokio::time::timeout_at(deadline, self.inner.clone().attempt(addr, &request)).await;
            match result {
                Err(_) => {
                    return Err(LinkError::Timeout {
                        addr,
                        method: method.to_string(),
                        timeout,
                    });
                }
                Ok(Err(e)) if e.retryable() && attempt < self.inner.cfg.retries => {
                    attempt += 1;
                    metrics::counter!("noodle_link_request_retries_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(25 << attempt.min(5))).await;
                }
                Ok(result) => return result,
            }
        }
    }

    /// Opens a stream for a streaming method; the caller writes the body and reads the answer.
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        method: &str,
    ) -> Result<(SendStream, RecvStream), LinkError> {
        let conn = self.inner.clone().connection(addr).await?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| LinkError::Connection {
            addr,
            detail: e.to_string(),
        })?;
        let header = frame::encode_request(method, u32::MAX, &[]);
        send.write_all(&header)
            .await
            .map_err(|e| LinkError::Connection {
                addr,
                detail: e.to_string(),
            })?;
        Ok((send, recv))
    }

    /// Sends an unreliable datagram to `addr` without waiting. If there is no connection yet, one
    /// is opened in the background and the datagram goes out once it is up; when too many wait,
    /// the datagram is dropped and counted (gossip tolerates loss).
    pub fn send_datagram(&self, addr: SocketAddr, data: Bytes) {
        if let Some(conn) = self.inner.ready(addr) {
            if conn.send_datagram(data).is_err() {
                metrics::counter!("noodle_link_datagrams_dropped_total").increment(1);
            }
            return;
        }
        let Ok(permit) = self.inner.pending_datagrams.clone().try_acquire_owned() else {
            metrics::counter!("noodle_link_datagrams_dropped_total").increment(1);
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(conn) = inner.connection(addr).await {
                let _ = conn.send_datagram(data);
            }
        });
    }

    /// The open connections, with their measured round-trip time and key-exchange group.
    pub fn links(&self) -> Vec<LinkInfo> {
        let conns = self.inner.lock_conns();
        let mut out: Vec<LinkInfo> = conns
            .iter()
            .filter_map(|(addr, slot)| match slot {
                Slot::Ready {
                    conn,
                    kx_group,
                    peer_id,
                } if conn.close_reason().is_none() => Some(LinkInfo {
                    addr: *addr,
                    peer_id: peer_id.clone(),
                    rtt: conn.rtt(),
                    kx_group: kx_group.clone(),
                }),
                _ => None,
            })
            .collect();
        out.sort_by_key(|l| l.addr);
        out
    }

    /// Performs one complete handshake with `addr` on a fresh connection that is not kept, and
    /// returns how long it took (for `noodle bench`).
    pub async fn probe_handshake(&self, addr: SocketAddr) -> Result<Duration, LinkError> {
        let started = Instant::now();
        let conn = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config(), addr, CLUSTER_SERVER_NAME)
            .map_err(|e| LinkError::Connect {
                addr,
                detail: e.to_string(),
            })?
            .await
            .map_err(|e| LinkError::Connect {
                addr,
                detail: e.to_string(),
            })?;
        let took = started.elapsed();
        conn.close(0u32.into(), b"probe");
        Ok(took)
    }

    /// Closes the connection to `addr` if there is one (for example to a node declared dead).
    pub fn disconnect(&self, addr: SocketAddr) {
        let slot = self.inner.lock_conns().remove(&addr);
        if let Some(Slot::Ready { conn, peer_id, .. }) = slot {
            conn.close(0u32.into(), b"disconnect");
            self.inner.service.event(LinkEvent::Down {
                addr,
                peer_id,
                reason: "closed: peer declared dead".into(),
            });
        }
    }

    /// Refuses the nodes `node_ids` from now on (replacing the previous set): their open
    /// connections are closed, and a connection from or to one of them is closed as soon as its
    /// handshake names it.
    pub fn refuse(&self, node_ids: impl IntoIterator<Item = String>) {
        let refused: std::collections::HashSet<String> = node_ids.into_iter().collect();
        let closing: Vec<(SocketAddr, Option<String>)> = {
            let mut conns = self.inner.lock_conns();
            let addrs: Vec<SocketAddr> = conns
                .iter()
                .filter(|(_, slot)| matches!(slot, Slot::Ready { peer_id: Some(id), .. } if refused.contains(id)))
                .map(|(addr, _)| *addr)
                .collect();
            addrs
                .into_iter()
                .filter_map(|addr| match conns.remove(&addr) {
                    Some(Slot::Ready { conn, peer_id, .. }) => {
                        conn.close(REFUSED_CODE.into(), b"node removed from the cluster");
                        Some((addr, peer_id))
                    }
                    _ => None,
                })
                .collect()
        };
        *self
            .inner
            .refused
            .write()
            .unwrap_or_else(|e| e.into_inner()) = refused;
        for (addr, peer_id) in closing {
            self.inner.service.event(LinkEvent::Down {
                addr,
                peer_id,
                reason: "closed: node removed from the cluster".into(),
            });
        }
    }

    /// Closes every connection and stops accepting; waits briefly for peers to be told.
    pub async fn shutdown(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        let _ =
            tokio::time::timeout(Duration::from_millis(500), self.inner.endpoint.wait_idle()).await;
    }
}

impl Inner {
    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Slot>> {
        // A panic while holding this lock would be a bug in this file; the map stays usable.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ready(&self, addr: SocketAddr) -> Option<Connection> {
        match self.lock_conns().get(&addr) {
            Some(Slot::Ready { conn, .. }) if conn.close_reason().is_none() => Some(conn.clone()),
            _ => None,
        }
    }

    /// The connection to `addr`, dialling it if needed. Concurrent callers share one dial.
    async fn connection(self: Arc<Self>, addr: SocketAddr) -> Result<Connection, LinkError> {
        let dial = {
            let mut conns = self.lock_conns();
            match conns.get(&addr) {
                Some(Slot::Ready { conn, .. }) if conn.close_reason().is_none() => {
                    return Ok(conn.clone());
                }
                Some(Slot::Dialling(dial)) => dial.clone(),
                _ => {
                    // The dial runs as its own task so that it completes (and updates the map)
                    // even if every caller waiting for it gives up.
                    let task = tokio::spawn(self.clone().dial(addr));
                    let dial: Dial = async move {
                        task.await
                            .unwrap_or_else(|e| Err(format!("dial task failed: {e}")))
                    }
                    .boxed()
                    .shared();
                    conns.insert(addr, Slot::Dialling(dial.clone()));
                    dial
                }
            }
        };
        dial.await
            .map_err(|detail| LinkError::Connect { addr, detail })
    }

    async fn dial(self: Arc<Self>, addr: SocketAddr) -> Result<Connection, String> {
        let attempt = async {
            let connecting = self
                .endpoint
                .connect_with(self.client_config(), addr, CLUSTER_SERVER_NAME)
                .map_err(|e| e.to_string())?;
            connecting.await.map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(self.cfg.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.cfg.connect_timeout)),
        };
        match result.and_then(|conn| self.clone().adopt(conn.clone()).map(|()| conn)) {
            Ok(conn) => Ok(conn),
            Err(e) => {
                metrics::counter!("noodle_link_connect_failures_total").increment(1);
                let mut conns = self.lock_conns();
                if matches!(conns.get(&addr), Some(Slot::Dialling(_))) {
                    conns.remove(&addr);
                }
                Err(e)
            }
        }
    }

    fn is_refused(&self, node_id: &str) -> bool {
        self.refused
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node_id)
    }

    /// Makes `conn` the connection for its peer address and serves it until it closes; closes
    /// it instead when its certificate names no node or a refused one.
    fn adopt(self: Arc<Self>, conn: Connection) -> Result<(), String> {
        let addr = conn.remote_address();
        let kx_group = kx_group_of(&conn);
        let Some(node_id) = peer_id_of(&conn) else {
            metrics::counter!("noodle_link_unauthenticated_total").increment(1);
            conn.close(REFUSED_CODE.into(), b"certificate names no node");
            return Err(format!("{addr}: its certificate names no node"));
        };
        if self.is_refused(&node_id) {
            metrics::counter!("noodle_link_refused_total").increment(1);
            conn.close(REFUSED_CODE.into(), b"node removed from the cluster");
            return Err(format!(
                "{addr}: node {node_id} was removed from the cluster"
            ));
        }
        let peer_id = Some(node_id.clone());
        let was_up = {
            let mut conns = self.lock_conns();
            let others = conns
                .iter()
                .filter(|(a, slot)| {
                    **a != addr
                        && matches!(slot, Slot::Ready { peer_id: Some(id), conn, .. }
                            if *id == node_id && conn.close_reason().is_none())
                })
                .count();
            if others >= CONNECTIONS_PER_NODE_MAX {
                drop(conns);
                metrics::counter!("noodle_link_refused_total").increment(1);
                conn.close(REFUSED_CODE.into(), b"too many connections from this node");
                return Err(format!("{addr}: node {node_id} has too many connections"));
            }
            let was_up = matches!(conns.get(&addr), Some(Slot::Ready { conn, .. }) if conn.close_reason().is_none());
            conns.insert(
                addr,
                Slot::Ready {
                    conn: conn.clone(),
                    kx_group: kx_group.clone(),
                    peer_id: peer_id.clone(),
                },
            );
            was_up
        };
        if !was_up {
            self.service.event(crate::LinkEvent::Up {
                addr,
                peer_id,
                kx_group,
            });
        }
        // A refusal that raced with this handshake: refuse() may have run between the check
        // above and the insert.
        if self.is_refused(&node_id) {
            conn.close(REFUSED_CODE.into(), b"node removed from the cluster");
        }
        tokio::spawn(self.drive(conn, Peer { addr, node_id }));
        Ok(())
    }

    /// Serves requests and datagrams arriving on `conn` until it closes.
    async fn drive(self: Arc<Self>, conn: Connection, peer: Peer) {
        let addr = peer.addr;
        let budget = Arc::new(Semaphore::new(CONNECTION_BODY_BYTES_MAX));
        let reason = loop {
            tokio::select! {
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        let serve =
                            self.clone().serve_stream(peer.clone(), budget.clone(), send, recv);
                        tokio::spawn(serve);
                    }
                    Err(e) => break e,
                },
                datagram = conn.read_datagram() => match datagram {
                    Ok(data) => self.service.datagram(&peer, data),
                    Err(e) => break e,
                },
            }
        };
        let removed = {
            let mut conns = self.lock_conns();
            let ours = matches!(conns.get(&addr), Some(Slot::Ready { conn: c, .. }) if c.stable_id() == conn.stable_id());
            if ours {
                conns.remove(&addr);
            }
            ours
        };
        if removed {
            tracing::debug!(%addr, %reason, "link down");
            self.service.event(crate::LinkEvent::Down {
                addr,
                peer_id: peer_id_of(&conn),
                reason: reason.to_string(),
            });
        }
    }

    async fn serve_stream(
        self: Arc<Self>,
        from: Peer,
        budget: Arc<Semaphore>,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let header = async {
            let mut len = [0u8; 2];
            recv.read_exact(&mut len)
                .await
                .map_err(|_| FrameError::Truncated)?;
            let mut header = vec![0u8; frame::header_len(len)?];
            recv.read_exact(&mut header)
                .await
                .map_err(|_| FrameError::Truncated)?;
            frame::decode_header(&header)
        };
        let header = match tokio::time::timeout(self.cfg.request_timeout, header).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                metrics::counter!("noodle_link_bad_frames_total").increment(1);
                tracing::debug!(from = %from.addr, error = %e, "dropping malformed request");
                let reply = frame::encode_response(&Err(RemoteError::new(
                    RemoteError::BAD_REQUEST,
                    e.to_string(),
                )));
                let _ = send.write_all(&reply).await;
                let _ = send.finish();
                return;
            }
            Err(_) => {
                let _ = send.reset(0u32.into());
                return;
            }
        };
        if self.service.is_stream(&header.method) {
            self.service.stream(from, &header.method, send, recv).await;
            return;
        }
        let deadline =
            Duration::from_millis(u64::from(header.deadline_ms)).min(self.cfg.request_timeout * 2);
        let result = tokio::time::timeout(deadline, async {
            let (body, _held) = read_body(&mut recv, self.cfg.body_bytes_max, &budget).await?;
            self.service
                .call(from, &header.method, Bytes::from(body))
                .await
        })
        .await
        .unwrap_or_else(|_| {
            Err(RemoteError::new(
                RemoteError::UNAVAILABLE,
                "deadline exceeded",
            ))
        });
        let _ = send.write_all(&frame::encode_response(&result)).await;
        let _ = send.finish();
    }

    async fn attempt(
        self: Arc<Self>,
        addr: SocketAddr,
        request: &[u8],
    ) -> Result<Bytes, LinkError> {
        let conn = self.clone().connection(addr).await?;
        let failed = |e: &dyn std::fmt::Display| LinkError::Connection {
            addr,
            detail: e.to_string(),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
        send.write_all(request).await.map_err(|e| failed(&e))?;
        send.finish().map_err(|e| failed(&e))?;
        let answer = recv
            .read_to_end(self.cfg.body_bytes_max + 1)
            .await
            .map_err(|e| failed(&e))?;
        match frame::decode_response(&answer) {
            Ok(Ok(_)) => Ok(Bytes::from(answer).slice(1..)),
            Ok(Err(source)) => Err(LinkError::Remote { addr, source }),
            Err(source) => Err(LinkError::Frame { addr, source }),
        }
    }
}

/// Reads a request body of at most `max` bytes, holding room for it in the connection's
/// `budget` until the request is answered (the returned permit).
async fn read_body(
    recv: &mut RecvStream,
    max: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>), RemoteError> {
    let bad = |detail: String| RemoteError::new(RemoteError::BAD_REQUEST, detail);
    let mut body = Vec::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    while let Some(chunk) = recv
        .read_chunk(64 << 10, true)
        .await
        .map_err(|e| bad(format!("request body: {e}")))?
    {
        if body.len() + chunk.bytes.len() > max {
            return Err(bad(format!("request body over {max} bytes")));
        }
        // Chunks are at most 64 KiB: the count fits in u32.
        let permit = budget
            .clone()
            .acquire_many_owned(chunk.bytes.len() as u32)
            .await
            .map_err(|_| bad("the connection is closing".into()))?;
        match &mut held {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        body.extend_from_slice(&chunk.bytes);
    }
    Ok((body, held))
}

/// Accepts connections, at most [`crate::HANDSHAKES_MAX`] in their handshake at once
/// ([`crate::HANDSHAKES_PER_SOURCE_MAX`] per source address); more are refused before any
/// cryptography is done.
async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let Some(slot) = inner.handshakes.admit(incoming.remote_address().ip()) else {
            metrics::counter!("noodle_link_handshakes_refused_total").increment(1);
            incoming.refuse();
            continue;
        };
        tokio::spawn(handle_incoming(inner.clone(), incoming, slot));
    }
}

/// Serves one incoming connection: `slot` is its place among the handshakes, given back once
/// it has proven a member certificate (or its joiner was answered).
async fn handle_incoming(
    inner: Arc<Inner>,
    incoming: quinn::Incoming,
    slot: crate::gate::HandshakeSlot,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            metrics::counter!("noodle_link_handshake_failures_total").increment(1);
            tracing::debug!(%remote, error = %e, "handshake refused");
            return;
        }
    };
    match alpn_of(&conn).as_deref() {
        Some(ALPN_CLUSTER) if conn.peer_identity().is_some() => {
            drop(slot);
            if let Err(why) = inner.adopt(conn) {
                tracing::debug!(%remote, %why, "member connection refused");
            }
        }
        Some(ALPN_CLUSTER) => {
            metrics::counter!("noodle_link_unauthenticated_total").increment(1);
            tracing::debug!(%remote, "refusing member connection without a certificate");
            conn.close(403u32.into(), b"client certificate required");
        }
        Some(ALPN_JOIN) => serve_join(inner, conn).await,
        _ => conn.close(400u32.into(), b"unknown protocol"),
    }
}

/// Serves the one request a joiner may make, then closes.
async fn serve_join(inner: Arc<Inner>, conn: Connection) {
    let remote = conn.remote_address();
    let serve = async {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let bytes = recv.read_to_end(JOIN_BYTES_MAX).await.ok()?;
        let result = match frame::decode_request(&bytes) {
            Ok((h, body)) if h.method == "join" => {
                inner
                    .service
                    .join(JoinPeer { remote }, Bytes::copy_from_slice(body))
                    .await
            }
            Ok(_) => Err(RemoteError::new(
                RemoteError::FORBIDDEN,
                "only `join` is allowed before joining",
            )),
            Err(e) => Err(RemoteError::new(RemoteError::BAD_REQUEST, e.to_string())),
        };
        send.write_all(&frame::encode_response(&result))
            .await
            .ok()?;
        send.finish().ok()?;
        // Give the joiner time to read the answer; it closes the connection itself.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        Some(())
    };
    if tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .is_err()
    {
        tracing::debug!(%remote, "join connection timed out");
    }
    conn.close(0u32.into(), b"done");
}

/// A joiner's one request to a member at `seed`: dials with the pinned CA fingerprint and no
/// certificate, sends `body` as the `join` request and returns the answer.
pub async fn join_call(
    seed: SocketAddr,
    ca_fingerprint: [u8; 32],
    body: &[u8],
    timeout: Duration,
) -> Result<Bytes, LinkError> {
    let bind: SocketAddr = if seed.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint =
        Endpoint::client(bind).map_err(|source| LinkError::Bind { addr: bind, source })?;
    let mut client = tls::quic_client(tls::join_client_config(ca_fingerprint)?)?;
    client.transport_config(Arc::new(transport_config(&LinkConfig::new(bind))));
    endpoint.set_default_client_config(client);
    let call = async {
        let conn = endpoint
            .connect(seed, CLUSTER_SERVER_NAME)
            .map_err(|e| LinkError::Connect {
                addr: seed,
                detail: e.to_string(),
            })?
            .await
            .map_err(|e| LinkError::Connect {
                addr: seed,
                detail: e.to_string(),
            })?;
        let failed = |e: &dyn std::fmt::Display| LinkError::Connection {
            addr: seed,
            detail: e.to_string(),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        send.write_all(&frame::encode_request("join", ms, body))
            .await
            .map_err(|e| failed(&e))?;
        send.finish().map_err(|e| failed(&e))?;
        let answer = recv
            .read_to_end(JOIN_BYTES_MAX)
            .await
            .map_err(|e| failed(&e))?;
        conn.close(0u32.into(), b"done");
        match frame::decode_response(&answer) {
            Ok(Ok(body)) => Ok(Bytes::copy_from_slice(body)),
            Ok(Err(source)) => Err(LinkError::Remote { addr: seed, source }),
            Err(source) => Err(LinkError::Frame { addr: seed, source }),
        }
    };
    let result = match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(LinkError::Timeout {
            addr: seed,
            method: "join".into(),
            timeout,
        }),
    };
    endpoint.close(0u32.into(), b"done");
    result
}
