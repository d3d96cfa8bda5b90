//! Where each record lives under the registry prefix (see the layout in the
//! module doc of [`crate::registry`]).
use std::net::IpAddr;

use crate::model::MacAddr;

use super::problem::RegistryError;

/// The default prefix: the project's name and the layout's version, so a
/// future incompatible layout can live beside this one during an upgrade.
pub const DEFAULT_PREFIX: &str = "/overlay/v1";

/// The keys of one registry (one prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

/// What a key under the prefix holds, with the names taken from the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Node { name: String },
    VtepClaim,
    Network { name: String },
    VniClaim,
    Endpoint { network: String, mac: String },
    AddressClaim,
    Block { network: String, base: String },
    Conflict,
    /// A node's declaration that it uses a network (Docker's per-host networks).
    NetworkUser,
    /// Under the prefix but not a key of this layout.
    Unknown,
}

impl KeyLayout {
    /// `prefix` must start with `/`, not end with one, and hold no empty
    /// segment (`/overlay/v1`).
    pub fn new(prefix: &str) -> Result<Self, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidSetting {
            field: "prefix",
            value: prefix.to_owned(),
            reason: reason.to_owned(),
        };
        if !prefix.starts_with('/') || prefix.len() < 2 {
            return Err(invalid("must start with / and name at least one segment"));
        }
        if prefix.ends_with('/') || prefix.contains("//") {
            return Err(invalid("must not end with / nor hold an empty segment"));
        }
        Ok(KeyLayout { prefix: prefix.to_owned() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything of this registry: the prefix with a trailing `/` (so that
    /// `/overlay/v1` does not also match `/overlay/v10`).
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.prefix)
    }

    pub fn vtep_claim(&self, vtep: IpAddr) -> String {
        format!("{}/vteps/{vtep}", self.prefix)
    }

    pub fn network(&self, name: &str) -> String {
        format!("{}/networks/{name}", self.prefix)
    }

    pub fn vni_claim(&self, vni: u32) -> String {
        format!("{}/vnis/{vni}", self.prefix)
    }

    pub fn endpoint(&self, network: &str, mac: MacAddr) -> String {
        format!("{}/endpoints/{network}/{mac}", self.prefix)
    }

    pub fn address_claim(&self, network: &str, address: IpAddr) -> String {
        format!("{}/addresses/{network}/{address}", self.prefix)
    }

    /// The blocks of one network (a prefix for a range read).
    pub fn blocks(&self, network: &str) -> String {
        format!("{}/blocks/{network}/", self.prefix)
    }

    pub fn block(&self, network: &str, base: IpAddr) -> String {
        format!("{}/blocks/{network}/{base}", self.prefix)
    }

    /// The nodes that declared they use `network` (a prefix).
    pub fn network_users(&self, network: &str) -> String {
        format!("{}/users/{network}/", self.prefix)
    }

    pub fn network_user(&self, network: &str, node: &str) -> String {
        format!("{}/users/{network}/{node}", self.prefix)
    }

    /// The endpoints of one network (a prefix for a range read).
    pub fn endpoints_of(&self, network: &str) -> String {
        format!("{}/endpoints/{network}/", self.prefix)
    }

    /// The refused claims one node recorded (a prefix; keys are on its lease).
    pub fn conflicts_of(&self, claimant: &str) -> String {
        format!("{}/conflicts/{claimant}/", self.prefix)
    }

    pub fn conflict(&self, claimant: &str, kind: &str, subject: &str) -> String {
        format!("{}/conflicts/{claimant}/{kind}/{subject}", self.prefix)
    }

    /// What `key` holds; `None` when it is not under the prefix.
    pub fn classify(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let kind = match parts.as_slice() {
            ["nodes", name] => KeyKind::Node { name: (*name).to_owned() },
            ["vteps", _] => KeyKind::VtepClaim,
            ["networks", name] => KeyKind::Network { name: (*name).to_owned() },
            ["vnis", _] => KeyKind::VniClaim,
            ["endpoints", network, mac] => {
                KeyKind::Endpoint { network: (*network).to_owned(), mac: (*mac).to_owned() }
            }
            ["addresses", _, _] => KeyKind::AddressClaim,
            ["blocks", network, base] => KeyKind::Block { network: (*network).to_owned(), base: (*base).to_owned() },
            ["conflicts", _, _, _] => KeyKind::Conflict,
            ["users", _, _] => KeyKind::NetworkUser,
            _ => KeyKind::Unknown,
        };
        Some(kind)
    }
}

impl Default for KeyLayout {
    fn default() -> Self {
        KeyLayout { prefix: DEFAULT_PREFIX.to_owned() }
    }
}

/// Names of nodes and networks appear in keys: the rule of every name
/// (`validate::name_problem`) keeps them one segment and readable in
/// `etcdctl get --prefix`, and a record's name usable as a local one.
pub fn check_name(name: &str) -> Result<(), String> {
    match crate::model::validate::name_problem(name) {
        Some(problem) => Err(problem.to_owned()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_follow_the_rule_of_every_name() {
        for good in ["n1", "blue.net", "a_b-c"] {
            assert_eq!(check_name(good), Ok(()), "{good:?} should be accepted");
        }
        // A leading '.' would make a pin directory "." or "..", or a hidden one, of a local name.
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            let refusal = check_name(bad).expect_err(bad);
            assert_eq!(refusal, crate::model::validate::NAME_RULE, "refusal of {bad:?}");
        }
    }

    #[test]
    fn keys_round_trip_through_classify() {
        let layout = KeyLayout::default();
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        assert_eq!(layout.classify(&layout.node("n1")), Some(KeyKind::Node { name: "n1".into() }));
        assert_eq!(
            layout.classify(&layout.endpoint("blue", mac)),
            Some(KeyKind::Endpoint { network: "blue".into(), mac: "02:00:00:00:00:01".into() })
        );
        assert_eq!(layout.classify(&layout.network_user("blue", "n1")), Some(KeyKind::NetworkUser));
        assert!(layout.network_user("blue", "n1").starts_with(&layout.network_users("blue")));
        assert_eq!(layout.classify("/overlay/v10/nodes/n1"), None);
        assert_eq!(layout.classify("/overlay/v1/nodes/n1/extra"), Some(KeyKind::Unknown));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["", "/", "overlay", "/overlay/", "/a//b"] {
            assert!(KeyLayout::new(bad).is_err(), "prefix {bad:?} accepted");
        }
    }
}
