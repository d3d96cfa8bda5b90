//! The registry's connection to a protected etcd: TLS with client
//! certificates, and etcd users with passwords (never shown).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use overlay::registry::{Credentials, NetworkRecord, Registry, RegistryError, RegistrySettings, TlsFiles};
use overlay_lab::etcd::{self, EtcdCluster, ServerTls};

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(scope: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("ovl-{scope}-{}-pki", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").current_dir(dir).args(args).output().expect("running openssl");
    assert!(output.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// P-256 keys, valid one day.
fn make_pki(dir: &Path) {
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=overlay-test-ca", "-keyout", "ca.key", "-out", "ca.pem"];
    ca.extend(key);
    openssl(dir, &ca);
    for (name, extension) in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key_file, csr, pem, ext) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(dir.join(&ext), extension).unwrap();
        let mut request = vec!["req", "-subj", "/CN=overlay-test-client", "-keyout", &key_file, "-out", &csr];
        request.extend(key);
        openssl(dir, &request);
        openssl(dir, &["x509", "-req", "-days", "1", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &pem, "-extfile", &ext]);
    }
}

fn network() -> NetworkRecord {
    NetworkRecord {
        name: "blue".into(),
        vni: 100,
        subnet: "10.1.0.0/16".parse().unwrap(),
        subnet6: None,
        mtu: 1450,
        block_prefix_len: 26,
        options: Default::default(),
    }
}

fn settings(urls: Vec<String>) -> RegistrySettings {
    let mut settings = RegistrySettings::new(urls);
    settings.request_timeout = Duration::from_secs(3);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_tls_with_client_certificates() {
    if let Some(reason) = etcd::missing() {
        println!("skipped: {reason}");
        return;
    }
    let pki = TempDir::new("regtls");
    make_pki(&pki.0);
    let path = |name: &str| pki.0.join(name);
    let server = ServerTls { cert: path("server.pem"), key: path("server.key"), client_ca: path("ca.pem") };
    let etcd = EtcdCluster::start_with("regtls", 1, Some(server)).expect("starting etcd with TLS");

    let mut with_cert = settings(etcd.client_urls());
    with_cert.tls = Some(TlsFiles { ca: path("ca.pem"), client_cert: Some(path("client.pem")), client_key: Some(path("client.key")) });
    let registry = Registry::connect(with_cert.clone()).await.expect("connecting with a client certificate");
    registry.create_network(&network()).await.expect("writing over TLS");
    let (read, _) = registry.network("blue").await.unwrap().expect("reading over TLS");
    assert_eq!(read, network());

    // Without a client certificate the server refuses the handshake.
    let mut without_cert = with_cert.clone();
    without_cert.tls = Some(TlsFiles { ca: path("ca.pem"), client_cert: None, client_key: None });
    let anonymous = Registry::connect(without_cert).await.expect("connecting is lazy");
    match anonymous.network("blue").await {
        Err(RegistryError::Etcd(_)) => {}
        other => panic!("expected a request without a client certificate to fail, got {other:?}"),
    }

    // A certificate without its key is a setting error naming the field.
    let mut half = with_cert;
    half.tls = Some(TlsFiles { ca: path("ca.pem"), client_cert: Some(path("client.pem")), client_key: None });
    match Registry::connect(half).await {
        Err(RegistryError::InvalidSetting { field, .. }) => assert_eq!(field, "tls.client_key"),
        Err(other) => panic!("expected tls.client_key named, got {other}"),
        Ok(_) => panic!("a certificate without its key was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_user_and_password_never_shown() {
    if let Some(reason) = etcd::missing() {
        println!("skipped: {reason}");
        return;
    }
    let etcd = EtcdCluster::start("regauth", 1).expect("starting etcd");
    let secret = "s3cret-Overlay-pw";
    let admin = Registry::connect(settings(etcd.client_urls())).await.unwrap();
    let mut client = admin.etcd();
    client.user_add("root", secret, None).await.unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.auth_enable().await.unwrap();

    let mut with_password = settings(etcd.client_urls());
    with_password.credentials = Some(Credentials { user: "root".into(), password: secret.into() });
    let shown = format!("{with_password:?}");
    assert!(!shown.contains(secret), "the password is shown in {shown}");
    let registry = Registry::connect(with_password.clone()).await.expect("connecting with the password");
    registry.create_network(&network()).await.expect("writing as root");

    let mut wrong = with_password;
    wrong.credentials = Some(Credentials { user: "root".into(), password: "wrong".into() });
    match Registry::connect(wrong).await {
        Err(error) => assert!(!error.to_string().contains(secret), "the error shows the password: {error}"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
    // Without credentials etcd refuses the request.
    let anonymous = Registry::connect(settings(etcd.client_urls())).await.unwrap();
    assert!(anonymous.network("blue").await.is_err(), "an anonymous read was allowed with auth enabled");
}
