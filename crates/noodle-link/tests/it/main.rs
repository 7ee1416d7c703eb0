//! Real QUIC links on loopback: mutual TLS, post-quantum key exchange, refusals.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use noodle_link::Peer;
use noodle_link::{
    JoinPeer, Link, LinkConfig, LinkEvent, RemoteError, Service, ServiceFuture, TlsMaterial,
};
use noodle_security::{CLUSTER_SERVER_NAME, ClusterCa, NodeKey};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Echo {
    datagrams: Mutex<Vec<Bytes>>,
    events: Mutex<Vec<LinkEvent>>,
}

impl Service for Echo {
    fn call(&self, from: Peer, method: &str, body: Bytes) -> ServiceFuture {
        let method = method.to_string();
        Box::pin(async move {
            match method.as_str() {
                "echo" => Ok(body.to_vec()),
                "whoami" => Ok(from.node_id.into_bytes()),
                _ => Err(RemoteError::new(RemoteError::NOT_FOUND, "no such method")),
            }
        })
    }
    fn join(&self, _peer: JoinPeer, body: Bytes) -> ServiceFuture {
        Box::pin(async move {
            let mut out = b"joined:".to_vec();
            out.extend_from_slice(&body);
            Ok(out)
        })
    }
    fn datagram(&self, _from: &Peer, data: Bytes) {
        self.datagrams.lock().unwrap().push(data);
    }
    fn event(&self, event: LinkEvent) {
        self.events.lock().unwrap().push(event);
    }
}

fn material(ca: &ClusterCa, node: &str) -> TlsMaterial {
    let key = NodeKey::generate().unwrap();
    TlsMaterial {
        ca: ca.cert_der().clone(),
        cert: ca
            .issue_node_cert(node, &key.public_key_raw(), noodle_security::NODE_CERT_TTL)
            .unwrap(),
        key: key.private_key_der(),
    }
}

fn node(ca: &ClusterCa, name: &str) -> (Link, Arc<Echo>) {
    let svc = Arc::new(Echo::default());
    let link = Link::bind(
        LinkConfig::new("127.0.0.1:0".parse().unwrap()),
        &material(ca, name),
        svc.clone(),
    )
    .unwrap();
    (link, svc)
}

#[tokio::test]
async fn request_response_datagrams_and_pq_key_exchange() {
    let ca = ClusterCa::generate("it").unwrap();
    let (a, _) = node(&ca, "a");
    let (b, b_svc) = node(&ca, "b");
    let answer = a.request(b.local_addr(), "echo", b"ping").await.unwrap();
    assert_eq!(&answer[..], b"ping");
    let links = a.links();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].addr, b.local_addr());
    assert_eq!(links[0].kx_group, "X25519MLKEM768");
    assert_eq!(
        links[0].peer_id.as_deref(),
        Some("b"),
        "identity from the certificate"
    );

    a.send_datagram(b.local_addr(), Bytes::from_static(b"gossip"));
    for _ in 0..6000 {
        if !b_svc.datagrams.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        b_svc.datagrams.lock().unwrap()[0],
        Bytes::from_static(b"gossip")
    );
    assert!(matches!(
        b_svc.events.lock().unwrap()[0],
        LinkEvent::Up { ref kx_group, ref peer_id, .. }
            if kx_group == "X25519MLKEM768" && peer_id.as_deref() == Some("a")
    ));

    let err = a.request(b.local_addr(), "nope", b"").await.unwrap_err();
    assert!(err.to_string().contains("no such method"), "{err}");
}

/// A handler learns the node id the caller's certificate names; a node this link refuses (one
/// removed from the cluster) is cut off at once, cannot connect again in either direction, and
/// is let in again only when the refusal is lifted.
#[tokio::test]
async fn a_refused_node_is_cut_off_in_both_directions() {
    let ca = ClusterCa::generate("it").unwrap();
    let (a, a_svc) = node(&ca, "a");
    let (b, _) = node(&ca, "b");
    let (c, _) = node(&ca, "c");
    let who = b.request(a.local_addr(), "whoami", b"").await.unwrap();
    assert_eq!(&who[..], b"b");
    c.request(a.local_addr(), "echo", b"hi").await.unwrap();

    a.refuse(["b".to_string()]);
    assert!(
        a.links().iter().all(|l| l.peer_id.as_deref() != Some("b")),
        "{:?}",
        a.links()
    );
    assert!(a_svc.events.lock().unwrap().iter().any(|e| matches!(
        e,
        LinkEvent::Down { peer_id: Some(id), reason, .. } if id == "b" && reason.contains("removed")
    )));
    let err = b.request(a.local_addr(), "echo", b"hi").await.unwrap_err();
    assert!(
        matches!(
            err,
            noodle_link::LinkError::Connect { .. } | noodle_link::LinkError::Connection { .. }
        ),
        "{err}"
    );
    let err = a.request(b.local_addr(), "echo", b"hi").await.unwrap_err();
    assert!(
        err.to_string().contains("removed from the cluster"),
        "{err}"
    );
    // Others are untouched.
    c.request(a.local_addr(), "echo", b"hi").await.unwrap();

    a.refuse(Vec::new());
    let who = b.request(a.local_addr(), "whoami", b"").await.unwrap();
    assert_eq!(&who[..], b"b");
}

#[tokio::test]
async fn peers_of_another_cluster_are_refused() {
    let ca = ClusterCa::generate("it").unwrap();
    let foreign = ClusterCa::generate("it").unwrap();
    let (a, _) = node(&ca, "a");
    let (stranger, _) = node(&foreign, "x");
    let err = stranger
        .request(a.local_addr(), "echo", b"hi")
        .await
        .unwrap_err();
    assert!(
        matches!(err, noodle_link::LinkError::Connect { .. }),
        "{err}"
    );
    assert!(a.links().is_empty());
}

#[tokio::test]
async fn self_signed_client_is_refused() {
    let ca = ClusterCa::generate("it").unwrap();
    let (a, svc) = node(&ca, "a");
    let key = NodeKey::generate().unwrap();
    let cert = key.self_signed_cert(CLUSTER_SERVER_NAME).unwrap();
    let client =
        noodle_link::client_config_with_cert(ca.cert_der(), vec![cert], key.private_key_der())
            .unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    let result = async {
        let conn = ep.connect(a.local_addr(), CLUSTER_SERVER_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"x").await?;
        send.finish()?;
        recv.read_to_end(1024).await?;
        anyhow::Ok(())
    }
    .await;
    assert!(
        result.is_err(),
        "a self-signed client must not get an answer"
    );
    assert!(svc.events.lock().unwrap().is_empty());
}

#[tokio::test]
async fn join_pins_the_ca_fingerprint() {
    let ca = ClusterCa::generate("it").unwrap();
    let (a, _) = node(&ca, "a");
    let answer = noodle_link::join_call(
        a.local_addr(),
        ca.fingerprint(),
        b"me",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(&answer[..], b"joined:me");
    let wrong = noodle_link::join_call(a.local_addr(), [7; 32], b"me", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains("not a member of the cluster"),
        "{wrong}"
    );
}

#[tokio::test]
async fn certificate_less_client_cannot_use_the_cluster_protocol() {
    let ca = ClusterCa::generate("it").unwrap();
    let (a, svc) = node(&ca, "a");
    // A client with no certificate that trusts the CA and asks for the cluster ALPN.
    let ep = anonymous_client(&ca, noodle_link::ALPN_CLUSTER, "127.0.0.1:0");
    let conn = ep
        .connect(a.local_addr(), CLUSTER_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let reason = conn.closed().await;
    assert!(
        reason.to_string().contains("client certificate required"),
        "{reason}"
    );
    assert!(svc.events.lock().unwrap().is_empty());
}

/// A member (a certificate of the cluster's CA) whose TLS offers only the classical X25519
/// key exchange is refused: no link without the post-quantum hybrid.
#[tokio::test]
async fn a_peer_offering_only_classical_x25519_is_refused() {
    let ca = ClusterCa::generate("it").unwrap();
    let (a, svc) = node(&ca, "a");
    let m = material(&ca, "classical");
    let connect = |group: &'static dyn rustls::crypto::SupportedKxGroup| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            kx_groups: vec![group],
            ..rustls::crypto::aws_lc_rs::default_provider()
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![m.cert.clone()], m.key.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![noodle_link::ALPN_CLUSTER.to_vec()];
        let client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(client);
        ep.connect(a.local_addr(), CLUSTER_SERVER_NAME).unwrap()
    };
    let refused = connect(rustls::crypto::aws_lc_rs::kx_group::X25519)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("handshake"), "{refused}");
    assert!(svc.events.lock().unwrap().is_empty());
    // The same member with the hybrid group gets in: only the key exchange was refused.
    connect(rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768)
        .await
        .expect("the post-quantum handshake");
}

/// A client with no certificate, trusting `ca`, asking for `alpn`, from `bind`.
fn anonymous_client(ca: &ClusterCa, alpn: &[u8], bind: &str) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let mut ep = quinn::Endpoint::client(bind.parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    ep
}

/// Anyone who reaches the cluster port can hold only a bounded number of connections that
/// have not proven a member certificate: joiners that handshake and then say nothing take up
/// at most their source's share, another source still gets in, and the places come back.
#[tokio::test]
async fn idle_joiners_hold_a_bounded_number_of_handshakes() {
    let ca = ClusterCa::generate("it").unwrap();
    let (a, _) = node(&ca, "a");
    let idle = anonymous_client(&ca, noodle_link::ALPN_JOIN, "127.0.0.1:0");
    let mut held = Vec::new();
    for _ in 0..noodle_link::HANDSHAKES_PER_SOURCE_MAX {
        let conn = idle
            .connect(a.local_addr(), CLUSTER_SERVER_NAME)
            .unwrap()
            .await
            .expect("a place for this joiner");
        held.push(conn);
    }
    let refused = idle
        .connect(a.local_addr(), CLUSTER_SERVER_NAME)
        .unwrap()
        .await;
    assert!(
        refused.is_err(),
        "a ninth idle joiner from one source got in"
    );

    let other = anonymous_client(&ca, noodle_link::ALPN_JOIN, "127.0.0.2:0");
    other
        .connect(a.local_addr(), CLUSTER_SERVER_NAME)
        .unwrap()
        .await
        .expect("another source still gets in");

    for conn in held {
        conn.close(0u32.into(), b"bye");
    }
    // The node notices the closes and gives the places back; a joiner gets its answer.
    let mut answered = None;
    for _ in 0..600 {
        if let Ok(answer) = noodle_link::join_call(
            a.local_addr(),
            ca.fingerprint(),
            b"hi",
            Duration::from_secs(5),
        )
        .await
        {
            answered = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answered.as_deref(), Some(&b"joined:hi"[..]));
}

/// One node's certificate (a stolen one, used from many sockets) gets a bounded number of
/// connections at once.
#[tokio::test]
async fn one_node_gets_a_bounded_number_of_connections() {
    let ca = ClusterCa::generate("it").unwrap();
    let (a, _) = node(&ca, "a");
    let stolen = material(&ca, "b");
    let mut links = Vec::new();
    let mut answered = 0;
    for _ in 0..6 {
        let link = Link::bind(
            LinkConfig::new("127.0.0.1:0".parse().unwrap()),
            &stolen,
            Arc::new(Echo::default()),
        )
        .unwrap();
        if link.request(a.local_addr(), "echo", b"hi").await.is_ok() {
            answered += 1;
        }
        links.push(link);
    }
    assert_eq!(
        answered, 4,
        "connections from one node beyond the bound were served"
    );
    assert_eq!(
        a.links()
            .iter()
            .filter(|l| l.peer_id.as_deref() == Some("b"))
            .count(),
        4
    );
}

/// A certificate is short-lived: once it has expired, no member accepts it (either way), and a
/// node that was given a renewed one (`set_certificate`) dials and is dialled again as itself.
#[tokio::test]
async fn an_expired_certificate_is_refused_and_a_renewed_one_is_taken() {
    let ca = ClusterCa::generate("it").unwrap();
    let (b, _) = node(&ca, "b");
    let key = NodeKey::generate().unwrap();
    let short = TlsMaterial {
        ca: ca.cert_der().clone(),
        cert: ca
            .issue_node_cert("a", &key.public_key_raw(), Duration::from_secs(2))
            .unwrap(),
        key: key.private_key_der(),
    };
    let a = Link::bind(
        LinkConfig::new("127.0.0.1:0".parse().unwrap()),
        &short,
        Arc::new(Echo::default()),
    )
    .unwrap();
    let whoami = |from: &Link, to: &Link| {
        let (from, to) = (from.clone(), to.local_addr());
        async move { from.request(to, "whoami", b"").await }
    };
    assert_eq!(&whoami(&a, &b).await.unwrap()[..], b"a");
    // Wait for the certificate's end (a condition on the clock, not a guess at speed).
    let (_, expiry) = noodle_security::cert_validity(&short.cert).unwrap();
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        <= expiry
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.disconnect(b.local_addr());
    b.disconnect(a.local_addr());
    let err = whoami(&a, &b).await.unwrap_err();
    assert!(
        matches!(
            err,
            noodle_link::LinkError::Connect { .. } | noodle_link::LinkError::Connection { .. }
        ),
        "{err}"
    );
    assert!(
        whoami(&b, &a).await.is_err(),
        "b does not take a's expired certificate"
    );

    let renewed = ca
        .issue_node_cert("a", &key.public_key_raw(), noodle_security::NODE_CERT_TTL)
        .unwrap();
    a.set_certificate(renewed).unwrap();
    assert_eq!(&whoami(&a, &b).await.unwrap()[..], b"a");
    a.disconnect(b.local_addr());
    b.disconnect(a.local_addr());
    assert_eq!(&whoami(&b, &a).await.unwrap()[..], b"b");
}
