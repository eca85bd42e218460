//! TLS (server-only and mutual) and bearer tokens on `paramdb serve`, with certificates made
//! in the test: valid clients work; plaintext, a wrong CA, a missing client certificate, a
//! missing or unknown token, and a write with a read-only token are refused with the right
//! status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use paramdb_client::Code;
use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, TableSpec};
use paramdb_proto::cluster::ClusterTls;
use paramdb_tests::servers::{paramdb_bin, start, Servers};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    tokens: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn ca_issuer() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki(dir: &Path) -> Pki {
    let ca = ca_issuer();
    let other = ca_issuer();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("trainer");
    Pki {
        ca: write(dir, "ca.pem", &ca.pem()),
        other_ca: write(dir, "other-ca.pem", &other.pem()),
        server_cert: write(dir, "server.pem", &server_cert),
        server_key: write(dir, "server.key", &server_key),
        client_cert: write(dir, "client.pem", &client_cert),
        client_key: write(dir, "client.key", &client_key),
        tokens: write(
            dir,
            "tokens.toml",
            "read = [\"reader-token\"]\nwrite = [\"writer-token\"]\n",
        ),
    }
}

/// A client of `cluster` with `tls` and `token`, quick to give up (the server is up by then).
fn client(cluster: &Path, tls: Option<ClusterTls>, token: Option<&str>) -> BlockingClient {
    let mut map = ClusterMap::load(cluster).unwrap();
    map.tls = tls;
    let opts = ClientOptions {
        token: token.map(String::from),
        max_retries: 1,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    BlockingClient::connect(map, opts).unwrap()
}

/// A valid client with the usual patience, which waits out the server's start.
fn patient(cluster: &Path, tls: Option<ClusterTls>, token: Option<&str>) -> BlockingClient {
    let mut map = ClusterMap::load(cluster).unwrap();
    map.tls = tls;
    let opts = ClientOptions {
        token: token.map(String::from),
        ..ClientOptions::default()
    };
    BlockingClient::connect(map, opts).unwrap()
}

fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Option<ClusterTls> {
    Some(ClusterTls {
        ca: ca.to_path_buf(),
        domain: Some("localhost".into()),
        cert: identity.map(|i| i.0.to_path_buf()),
        key: identity.map(|i| i.1.to_path_buf()),
    })
}

/// A refusal before any gRPC exchange (TLS handshake, or plaintext meeting TLS): the client
/// reports a transport failure: `UNAVAILABLE`, `UNKNOWN` (tonic's code for a failed connect),
/// `INTERNAL` (HTTP/2 framing errors) or `CANCELLED` (TLS 1.3: the server drops the connection
/// after the client has finished its side of the handshake).
fn transport_refusal(e: &paramdb_client::ClientError) {
    assert!(
        matches!(
            e.code(),
            Some(Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled)
        ),
        "not a transport refusal: {e}"
    );
}

fn code<T: std::fmt::Debug>(r: Result<T, paramdb_client::ClientError>) -> Code {
    r.expect_err("should be refused")
        .code()
        .expect("a status code")
}

#[test]
fn tls_and_tokens_admit_valid_clients_and_refuse_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let paramdb = paramdb_bin();
    let server_dir = dir.path().join("tls");
    std::fs::create_dir_all(&server_dir).unwrap();
    let (servers, cluster): (Servers, PathBuf) = start(
        &paramdb,
        &server_dir,
        1,
        &[
            "--tls-cert",
            p.server_cert.to_str().unwrap(),
            "--tls-key",
            p.server_key.to_str().unwrap(),
            "--tokens",
            p.tokens.to_str().unwrap(),
        ],
    );

    // The right CA and a write token: everything works.
    let writer = patient(&cluster, tls(&p.ca, None), Some("writer-token"));
    writer.create_table(TableSpec::new("t", 4)).unwrap();
    writer.push("t", &[1, 2], &[1.0; 8]).unwrap();
    assert_eq!(writer.pull("t", &[1]).unwrap(), vec![1.0; 4]);

    // A read-only token reads and may not write.
    let reader = client(&cluster, tls(&p.ca, None), Some("reader-token"));
    assert_eq!(reader.pull("t", &[2]).unwrap(), vec![1.0; 4]);
    assert_eq!(
        code(reader.push("t", &[1], &[1.0; 4])),
        Code::PermissionDenied
    );
    assert_eq!(
        code(reader.create_table(TableSpec::new("u", 4))),
        Code::PermissionDenied
    );

    // No token, or an unknown one.
    let anonymous = client(&cluster, tls(&p.ca, None), None);
    assert_eq!(code(anonymous.pull("t", &[1])), Code::Unauthenticated);
    let stranger = client(&cluster, tls(&p.ca, None), Some("guess"));
    assert_eq!(code(stranger.pull("t", &[1])), Code::Unauthenticated);

    // Plaintext against the TLS port, and TLS trusting another CA: no connection at all.
    let plaintext = client(&cluster, None, Some("writer-token"));
    let e = plaintext.pull("t", &[1]).expect_err("plaintext must fail");
    transport_refusal(&e);
    let wrong_ca = client(&cluster, tls(&p.other_ca, None), Some("writer-token"));
    let e = wrong_ca.pull("t", &[1]).expect_err("a wrong CA must fail");
    transport_refusal(&e);
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    // The failed attempts changed nothing.
    assert_eq!(writer.pull("t", &[1]).unwrap(), vec![1.0; 4]);
    drop(servers);

    // Mutual TLS: a client certificate signed by the CA is required.
    let mtls_dir = dir.path().join("mtls");
    std::fs::create_dir_all(&mtls_dir).unwrap();
    let (servers, cluster) = start(
        &paramdb,
        &mtls_dir,
        1,
        &[
            "--tls-cert",
            p.server_cert.to_str().unwrap(),
            "--tls-key",
            p.server_key.to_str().unwrap(),
            "--tls-client-ca",
            p.ca.to_str().unwrap(),
        ],
    );
    let with = patient(
        &cluster,
        tls(&p.ca, Some((&p.client_cert, &p.client_key))),
        None,
    );
    with.create_table(TableSpec::new("m", 2)).unwrap();
    let without = client(&cluster, tls(&p.ca, None), None);
    let e = without
        .list_tables()
        .expect_err("no client certificate must fail");
    transport_refusal(&e);
    with.push("m", &[7], &[0.5, 0.25]).unwrap();
    assert_eq!(with.pull("m", &[7]).unwrap(), vec![0.5, 0.25]);
    drop(servers);
    println!("tls: 2 servers; 4 refusals by status (2 PERMISSION_DENIED, 2 UNAUTHENTICATED), 3 by the transport (plaintext, wrong CA, no client certificate); valid clients served");
}
