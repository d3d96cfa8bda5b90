//! IPv4 and IPv6 prefixes (`10.1.0.0/16`) as the registry writes them.
use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An IPv4 prefix with its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    pub base: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub fn new(base: Ipv4Addr, prefix_len: u8) -> Result<Self, String> {
        if prefix_len > 32 {
            return Err(format!("prefix length {prefix_len} is over 32"));
        }
        let net = Ipv4Net { base, prefix_len };
        if u32::from(base) & !net.mask() != 0 {
            return Err(format!("host bits are set (the network is {}/{prefix_len})", Ipv4Addr::from(u32::from(base) & net.mask())));
        }
        Ok(net)
    }

    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - self.prefix_len) }
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.base)
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix_len)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) | !self.mask())
    }

    /// The `index`th address of the prefix.
    pub fn nth(&self, index: u64) -> Option<Ipv4Addr> {
        (index < self.size()).then(|| Ipv4Addr::from(u32::from(self.base) + index as u32))
    }

    /// The prefix of length `prefix_len` (longer than this one's) that holds `address`.
    pub fn subnet_of(address: Ipv4Addr, prefix_len: u8) -> Ipv4Net {
        let mask = if prefix_len == 0 { 0 } else { u32::MAX << (32 - prefix_len) };
        Ipv4Net { base: Ipv4Addr::from(u32::from(address) & mask), prefix_len }
    }

    /// Can hosts use `address` in this subnet? Not its network address nor,
    /// below /31, its broadcast address (RFC 3021 lets /31 use both).
    pub fn is_host(&self, address: Ipv4Addr) -> bool {
        self.contains(address)
            && (self.prefix_len >= 31 || (address != self.base && address != self.broadcast()))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (base, len) = text.split_once('/').ok_or("expected ADDRESS/LENGTH")?;
        let base: Ipv4Addr = base.parse().map_err(|_| format!("{base:?} is not an IPv4 address"))?;
        let len: u8 = len.parse().map_err(|_| format!("{len:?} is not a prefix length"))?;
        Ipv4Net::new(base, len)
    }
}

/// An IPv6 prefix with its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv6Net {
    pub base: Ipv6Addr,
    pub prefix_len: u8,
}

impl Ipv6Net {
    pub fn new(base: Ipv6Addr, prefix_len: u8) -> Result<Self, String> {
        if prefix_len > 128 {
            return Err(format!("prefix length {prefix_len} is over 128"));
        }
        let net = Ipv6Net { base, prefix_len };
        if u128::from(base) & !net.mask() != 0 {
            return Err("host bits are set".to_owned());
        }
        Ok(net)
    }

    fn mask(&self) -> u128 {
        if self.prefix_len == 0 { 0 } else { u128::MAX << (128 - self.prefix_len) }
    }

    pub fn contains(&self, address: Ipv6Addr) -> bool {
        u128::from(address) & self.mask() == u128::from(self.base)
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

impl FromStr for Ipv6Net {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (base, len) = text.split_once('/').ok_or("expected ADDRESS/LENGTH")?;
        let base: Ipv6Addr = base.parse().map_err(|_| format!("{base:?} is not an IPv6 address"))?;
        let len: u8 = len.parse().map_err(|_| format!("{len:?} is not a prefix length"))?;
        Ipv6Net::new(base, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        let net: Ipv4Net = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.255.3".parse().unwrap()));
        assert!(!net.is_host("10.1.0.0".parse().unwrap()));
        assert!(!net.is_host("10.1.255.255".parse().unwrap()));
        assert!("10.1.0.1/16".parse::<Ipv4Net>().is_err());
        assert_eq!(Ipv4Net::subnet_of("10.1.0.77".parse().unwrap(), 26).to_string(), "10.1.0.64/26");
        assert!("fd00::/64".parse::<Ipv6Net>().is_ok());
        assert!("fd00::1/64".parse::<Ipv6Net>().is_err());
    }
}
