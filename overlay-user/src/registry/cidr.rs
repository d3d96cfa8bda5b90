//! IPv4 and IPv6 prefixes as the registry writes them: the model's `ipnet`
//! types, parsed strictly (host bits must be zero) and with the few
//! operations IPAM needs.
use std::net::Ipv4Addr;

pub use ipnet::{Ipv4Net, Ipv6Net};

/// Parses `A.B.C.D/LEN`, refusing host bits (`10.1.0.1/16`): a record
/// that says one thing and means another is a bad record.
pub fn parse_v4(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text.parse().map_err(|_| "expected ADDRESS/LENGTH".to_owned())?;
    if net.trunc() != net {
        return Err(format!("host bits are set (the network is {})", net.trunc()));
    }
    Ok(net)
}

pub fn parse_v6(text: &str) -> Result<Ipv6Net, String> {
    let net: Ipv6Net = text.parse().map_err(|_| "expected ADDRESS/LENGTH".to_owned())?;
    if net.trunc() != net {
        return Err(format!("host bits are set (the network is {})", net.trunc()));
    }
    Ok(net)
}

/// The prefix of length `prefix_len` that holds `address` (its IPAM block).
pub fn block_of(address: Ipv4Addr, prefix_len: u8) -> Ipv4Net {
    Ipv4Net::new(address, prefix_len).expect("block lengths are validated to be at most 30").trunc()
}

/// What IPAM asks of a prefix.
pub trait Ipv4NetExt {
    /// Can hosts use `address` in this subnet? Not its network address nor,
    /// below /31, its broadcast address (RFC 3021 lets /31 use both).
    fn is_host(&self, address: Ipv4Addr) -> bool;
    /// Number of addresses, network and broadcast included.
    fn size(&self) -> u64;
    /// The `index`th address of the prefix.
    fn nth(&self, index: u64) -> Option<Ipv4Addr>;
}

impl Ipv4NetExt for Ipv4Net {
    fn is_host(&self, address: Ipv4Addr) -> bool {
        self.contains(&address)
            && (self.prefix_len() >= 31 || (address != self.network() && address != self.broadcast()))
    }

    fn size(&self) -> u64 {
        1u64 << (32 - self.prefix_len())
    }

    fn nth(&self, index: u64) -> Option<Ipv4Addr> {
        (index < self.size()).then(|| Ipv4Addr::from(u32::from(self.network()) + index as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_strictly_and_know_their_hosts() {
        let net = parse_v4("10.1.0.0/16").unwrap();
        assert!(net.is_host("10.1.255.3".parse().unwrap()));
        assert!(!net.is_host("10.1.0.0".parse().unwrap()));
        assert!(!net.is_host("10.1.255.255".parse().unwrap()));
        assert!(parse_v4("10.1.0.1/16").is_err());
        assert_eq!(block_of("10.1.0.77".parse().unwrap(), 26).to_string(), "10.1.0.64/26");
        assert!(parse_v6("fd00::/64").is_ok());
        assert!(parse_v6("fd00::1/64").is_err());
    }
}
