//! Address allocation for containers (Docker's and CNI's IPAM, and the
//! local API's `POST /v1/networks/{name}/addresses`).
//!
//! Without a cluster registry a node hands out addresses on its own, from
//! the network's `ip_range` (or its whole subnet): two nodes sharing a
//! network must then be given ranges that do not overlap, as with Docker's
//! `--ip-range`; an address that any endpoint of the model already uses
//! (the file's, the API's, a peer's) is never handed out. Allocations are
//! kept with the API's state and survive a restart. In cluster mode the
//! registry's allocator (`registry::Ipam`, per-node blocks claimed with
//! compare-and-swap) decides instead; see `agent::addresses`.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::registry::cidr::Ipv4NetExt as _;

/// One address handed out, and to whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub network: String,
    pub address: Ipv4Addr,
    /// Free text given by the caller (`docker:<endpoint>`, `cni:<container>/<ifname>`).
    #[serde(default)]
    pub owner: String,
}

/// Why no address was handed out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// The request's address is not one hosts of the network may use.
    #[error("{address} {why}")]
    NotAHost { address: Ipv4Addr, why: String },
    /// Somebody holds it.
    #[error("{address} is held by {holder}")]
    Taken { address: Ipv4Addr, holder: String },
    /// Every address of the range is held.
    #[error("every address of {range} is held ({held} held); release some or give the network a larger ip_range")]
    Exhausted { range: Ipv4Net, held: u64 },
}

/// Who holds which address of one network: allocations and endpoints.
pub type Holders = BTreeMap<Ipv4Addr, String>;

/// Checks a static request for `address` in `subnet` against `holders`.
pub fn check_static(subnet: Ipv4Net, address: Ipv4Addr, holders: &Holders) -> Result<(), AllocationError> {
    if !subnet.contains(&address) {
        return Err(AllocationError::NotAHost { address, why: format!("is outside the network's subnet {subnet}") });
    }
    if !subnet.is_host(address) {
        return Err(AllocationError::NotAHost { address, why: format!("is the network or broadcast address of {subnet}") });
    }
    match holders.get(&address) {
        Some(holder) => Err(AllocationError::Taken { address, holder: holder.clone() }),
        None => Ok(()),
    }
}

/// The lowest address of `range` (inside `subnet`) that hosts may use and
/// nobody holds.
pub fn pick(subnet: Ipv4Net, range: Ipv4Net, holders: &Holders) -> Result<Ipv4Addr, AllocationError> {
    (0..range.size())
        .filter_map(|index| range.nth(index))
        .find(|address| subnet.contains(address) && subnet.is_host(*address) && !holders.contains_key(address))
        .ok_or(AllocationError::Exhausted { range, held: holders.keys().filter(|a| range.contains(*a)).count() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn pick_skips_network_address_and_holders_and_stays_in_range() {
        let subnet = net("10.0.9.0/24");
        let mut holders = Holders::new();
        assert_eq!(pick(subnet, subnet, &holders), Ok(Ipv4Addr::new(10, 0, 9, 1)));
        holders.insert(Ipv4Addr::new(10, 0, 9, 1), "x".into());
        assert_eq!(pick(subnet, subnet, &holders), Ok(Ipv4Addr::new(10, 0, 9, 2)));
        assert_eq!(pick(subnet, net("10.0.9.64/26"), &holders), Ok(Ipv4Addr::new(10, 0, 9, 64)));
        // The range's last address is the subnet's broadcast: never handed out.
        let small = net("10.0.9.252/30");
        holders.insert(Ipv4Addr::new(10, 0, 9, 252), "a".into());
        holders.insert(Ipv4Addr::new(10, 0, 9, 253), "b".into());
        holders.insert(Ipv4Addr::new(10, 0, 9, 254), "c".into());
        assert_eq!(pick(subnet, small, &holders), Err(AllocationError::Exhausted { range: small, held: 3 }));
    }

    #[test]
    fn static_requests_name_what_is_wrong() {
        let subnet = net("10.0.9.0/24");
        let holders = Holders::from([(Ipv4Addr::new(10, 0, 9, 5), "docker:abc".to_owned())]);
        assert_eq!(check_static(subnet, Ipv4Addr::new(10, 0, 9, 6), &holders), Ok(()));
        assert_eq!(
            check_static(subnet, Ipv4Addr::new(10, 0, 9, 5), &holders),
            Err(AllocationError::Taken { address: Ipv4Addr::new(10, 0, 9, 5), holder: "docker:abc".into() })
        );
        assert!(matches!(check_static(subnet, Ipv4Addr::new(10, 0, 8, 5), &holders), Err(AllocationError::NotAHost { .. })));
        assert!(matches!(check_static(subnet, Ipv4Addr::new(10, 0, 9, 255), &holders), Err(AllocationError::NotAHost { .. })));
        assert!(matches!(check_static(subnet, Ipv4Addr::new(10, 0, 9, 0), &holders), Err(AllocationError::NotAHost { .. })));
    }
}
