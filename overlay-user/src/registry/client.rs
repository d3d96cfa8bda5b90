//! The connection to etcd and the operations that need no lease: settings,
//! connecting, reading the whole prefix, and networks.
use std::{fmt, future::Future, path::PathBuf, time::Duration};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn, TxnOp,
    TxnOpResponse,
};

use super::{
    keys::{DEFAULT_PREFIX, KeyLayout},
    problem::{Holder, RegistryError},
    records::{NetworkRecord, claim_value, parse_claim},
    snapshot::{KeyValue, RegistryStore},
};

/// The HTTP/2 ping interval: above etcd's default `--grpc-keepalive-min-time` of 5 s.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6);

/// How to reach etcd and where the registry lives in it.
#[derive(Clone)]
pub struct RegistrySettings {
    /// Client URLs, `http://HOST:PORT` or `https://HOST:PORT`; requests are
    /// balanced over them and go on through the others when one fails.
    pub endpoints: Vec<String>,
    /// The key prefix (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// TTL of a node's lease: how long a node that stops answering stays
    /// in everyone's view.
    pub lease_ttl: Duration,
    /// Longest wait for one request before it counts as failed.
    pub request_timeout: Duration,
    pub tls: Option<TlsFiles>,
    pub credentials: Option<Credentials>,
}

/// TLS files (PEM): the CA that signed etcd's certificate and, for client
/// certificate authentication, this client's certificate and key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// etcd user and password. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<hidden>").finish()
    }
}

impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl RegistrySettings {
    /// Settings for these endpoints with the defaults: prefix
    /// `/overlay/v1`, a 10 s lease, 5 s per request.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        RegistrySettings {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            lease_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            tls: None,
            credentials: None,
        }
    }
}

/// A connection to the registry. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    layout: KeyLayout,
    settings: RegistrySettings,
}

impl Registry {
    /// Connects. Without credentials nothing is sent yet, so this succeeds
    /// while etcd is down (requests then fail and are retried by their
    /// callers); with credentials etcd must answer the authentication.
    pub async fn connect(settings: RegistrySettings) -> Result<Self, RegistryError> {
        let layout = KeyLayout::new(&settings.prefix)?;
        if settings.endpoints.is_empty() {
            return Err(RegistryError::InvalidSetting { field: "endpoints", value: String::new(), reason: "at least one is needed".into() });
        }
        let ttl = settings.lease_ttl.as_secs();
        if !(1..=86_400).contains(&ttl) {
            return Err(RegistryError::InvalidSetting {
                field: "lease_ttl",
                value: format!("{:?}", settings.lease_ttl),
                reason: "must be 1 s to 1 day (whole seconds)".into(),
            });
        }
        // HTTP/2 pings find a dead server or path within seconds even when
        // no request is in flight (a watch only ever waits). Not more often
        // than etcd's --grpc-keepalive-min-time (5 s by default): etcd answers
        // faster pings with GOAWAY "too_many_pings" and closes the connection,
        // which broke every watch about every 8 s.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(settings.request_timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum cancels our watch (so the
            // watcher reconnects, possibly elsewhere) instead of serving it
            // silently stale.
            .with_require_leader(true);
        if let Some(credentials) = &settings.credentials {
            options = options.with_user(&credentials.user, &credentials.password).with_auto_token_refresh(true);
        }
        if let Some(tls) = &settings.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let client = Client::connect(&settings.endpoints, Some(options)).await?;
        Ok(Registry { client, layout, settings })
    }

    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// The etcd client, for what this module does not wrap (tests compact with it).
    pub fn etcd(&self) -> Client {
        self.client.clone()
    }

    /// Runs one request with the request timeout.
    pub(crate) async fn timed<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.settings.request_timeout, request).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RegistryError::Etcd(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {:?}", self.settings.request_timeout),
            )))),
        }
    }

    /// Runs one request, retried while etcd answers Unavailable (a member
    /// down: the client's balancer still picks it now and then; a leader
    /// election under way) until the request timeout. Every write here is
    /// a compare-and-swap or a put of the same value, so a retry of one
    /// that did land finds its own result (the callers recognise it).
    pub(crate) async fn request<T, F, R>(&self, mut call: F) -> Result<T, RegistryError>
    where
        F: FnMut(Client) -> R,
        R: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let result = self.timed(call(self.client.clone())).await;
            match result {
                Err(RegistryError::Etcd(error)) if is_unavailable(&error) && tokio::time::Instant::now() + pause < deadline => {
                    log::debug!("registry: retrying: {error}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    /// Reads one key.
    pub(crate) async fn get(&self, key: &str) -> Result<etcd_client::GetResponse, RegistryError> {
        self.request(|mut client| async move { client.get(key, None).await }).await
    }

    /// Runs a transaction.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, RegistryError> {
        let txn = &txn;
        self.request(|mut client| async move { client.txn(txn.clone()).await }).await
    }

    /// Reads every record under the prefix into a store, at one revision.
    pub async fn read_store(&self) -> Result<RegistryStore, RegistryError> {
        let root = &self.layout.root();
        let response = self.request(|mut client| async move { client.get(root.as_str(), Some(GetOptions::new().with_prefix())).await }).await?;
        let mut store = RegistryStore::new(self.layout.clone());
        for kv in response.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            store.put(KeyValue { key, value: kv.value(), create_revision: kv.create_revision(), lease: kv.lease() });
        }
        store.set_revision(response.header().map_or(0, |header| header.revision()));
        Ok(store)
    }

    /// Creates a network and claims its VNI, both or neither. Creating one
    /// that exists with the same settings succeeds (so every node may
    /// declare the networks it needs); with other settings it is refused.
    pub async fn create_network(&self, network: &NetworkRecord) -> Result<(), RegistryError> {
        let key = self.layout.network(&network.name);
        network.validate(&key).map_err(RegistryError::InvalidRecord)?;
        let vni_key = self.layout.vni_claim(network.vni);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(vni_key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.as_str(), network.to_json(), None),
                TxnOp::put(vni_key.as_str(), claim_value(&network.name), None),
            ])
            .or_else([TxnOp::get(key.as_str(), None), TxnOp::get(vni_key.as_str(), None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(());
        }
        let [existing, vni_holder] = get_values(&response.op_responses());
        if let Some(existing) = existing {
            return match NetworkRecord::parse(&key, &existing) {
                Ok(record) if record == *network => Ok(()),
                _ => Err(RegistryError::NetworkExists { name: network.name.clone() }),
            };
        }
        let holder = vni_holder.and_then(|value| parse_claim(&value)).map_or(Holder::Unreadable(vni_key), Holder::Network);
        Err(RegistryError::VniTaken { vni: network.vni, holder })
    }

    /// Deletes a network and its VNI claim. Its endpoints and blocks stay
    /// (reported as endpoints of an unknown network) until their owners
    /// remove them.
    pub async fn delete_network(&self, name: &str) -> Result<bool, RegistryError> {
        let key = self.layout.network(name);
        let response = self.get(&key).await?;
        let Some(kv) = response.kvs().first() else { return Ok(false) };
        let mut operations = vec![TxnOp::delete(key.as_str(), None)];
        if let Ok(record) = NetworkRecord::parse(&key, kv.value()) {
            operations.push(TxnOp::delete(self.layout.vni_claim(record.vni), None));
        }
        let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())]).and_then(operations);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Err(RegistryError::Contended { what: format!("deleting network {name}"), attempts: 1 });
        }
        Ok(true)
    }

    /// Records that `node` uses network `name` (`users/<network>/<node>`,
    /// on no lease: a node gone for good keeps the network, which is the
    /// safe side). See [`Registry::release_network`].
    pub async fn use_network(&self, name: &str, node: &str) -> Result<(), RegistryError> {
        let key = self.layout.network_user(name, node);
        let value = serde_json::json!({ "node": node }).to_string();
        self.request(|mut client| {
            let (key, value) = (key.clone(), value.clone());
            async move { client.put(key, value, None).await }
        })
        .await
        .map(|_| ())
    }

    /// `node` no longer uses network `name`: its user record goes, and the
    /// network itself (record and VNI claim) goes too when it was the last
    /// user, in one transaction that also requires that no endpoint of the
    /// network is left on any node. Its address blocks stay, as
    /// [`Registry::delete_network`] leaves them: nodes' allocators hold
    /// them, and a network created again with the name reuses them.
    /// Returns whether the network was deleted.
    pub async fn release_network(&self, name: &str, node: &str) -> Result<bool, RegistryError> {
        let user = self.layout.network_user(name, node);
        self.request(|mut client| {
            let user = user.clone();
            async move { client.delete(user, None).await }
        })
        .await?;
        let key = self.layout.network(name);
        let response = self.get(&key).await?;
        let Some(kv) = response.kvs().first() else { return Ok(false) };
        let users = self.layout.network_users(name);
        let endpoints = self.layout.endpoints_of(name);
        let mut operations = vec![TxnOp::delete(key.as_str(), None)];
        if let Ok(record) = NetworkRecord::parse(&key, kv.value()) {
            operations.push(TxnOp::delete(self.layout.vni_claim(record.vni), None));
        }
        // A range compare with no key in the range compares a zero record
        // (etcd's applyCompare): create_revision == 0 means "none left".
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                Compare::create_revision(users.as_str(), CompareOp::Equal, 0).with_prefix(),
                Compare::create_revision(endpoints.as_str(), CompareOp::Equal, 0).with_prefix(),
            ])
            .and_then(operations);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// One network's record, if it exists and parses.
    pub async fn network(&self, name: &str) -> Result<Option<(NetworkRecord, i64)>, RegistryError> {
        let key = self.layout.network(name);
        let response = self.get(&key).await?;
        match response.kvs().first() {
            None => Ok(None),
            Some(kv) => NetworkRecord::parse(&key, kv.value())
                .map(|record| Some((record, kv.mod_revision())))
                .map_err(RegistryError::InvalidRecord),
        }
    }
}

fn tls_options(tls: &TlsFiles) -> Result<TlsOptions, RegistryError> {
    let read = |field: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|error| RegistryError::InvalidSetting {
            field,
            value: path.display().to_string(),
            reason: format!("cannot be read: {error}"),
        })
    };
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read("tls.ca", &tls.ca)?));
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            options = options.identity(Identity::from_pem(read("tls.client_cert", cert)?, read("tls.client_key", key)?));
        }
        (None, None) => {}
        (cert, _) => {
            let (field, value) = if cert.is_some() { ("tls.client_key", "") } else { ("tls.client_cert", "") };
            return Err(RegistryError::InvalidSetting {
                field,
                value: value.to_owned(),
                reason: "a client certificate needs both the certificate and its key".into(),
            });
        }
    }
    Ok(options)
}

fn is_unavailable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::Unavailable,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// The values of a transaction's `get` operations (None: the key is absent).
pub(crate) fn get_values<const N: usize>(responses: &[TxnOpResponse]) -> [Option<Vec<u8>>; N] {
    let mut values = std::array::from_fn(|_| None);
    for (slot, response) in values.iter_mut().zip(responses) {
        if let TxnOpResponse::Get(get) = response {
            *slot = get.kvs().first().map(|kv| kv.value().to_vec());
        }
    }
    values
}

/// Exponential backoff between retries: 100 ms doubling to a ceiling.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub(crate) fn new(ceiling: Duration) -> Self {
        Backoff { next: Duration::from_millis(100), ceiling }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.ceiling);
    }
}
