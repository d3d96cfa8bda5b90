//! A MAC address, written as six hex pairs.
use std::{fmt, str::FromStr};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// A random MAC starting with `prefix`, which should make it locally
    /// administered and unicast (a first byte of 0x02, say).
    pub fn random_with_prefix(prefix: &[u8]) -> MacAddr {
        let mut bytes = [0u8; 6];
        // SAFETY: writing at most 6 bytes into our buffer.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if got != bytes.len() as isize {
            // getrandom(2) cannot fail on a kernel this datapath runs on; an
            // address unique per process and moment is enough here anyway.
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            bytes.copy_from_slice(&(nanos ^ u64::from(std::process::id()) << 32).to_be_bytes()[2..]);
        }
        bytes[..prefix.len()].copy_from_slice(prefix);
        MacAddr(bytes)
    }

    /// Why this MAC cannot be an endpoint's, if it cannot.
    pub fn endpoint_problem(&self) -> Option<&'static str> {
        if self.is_multicast() {
            Some("must be a unicast MAC address (lowest bit of the first byte clear)")
        } else if self.0 == [0; 6] {
            Some("must not be the all-zero MAC address")
        } else {
            None
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or(())?;
            if part.len() != 2 {
                return Err(());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(MacAddr(mac))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|()| serde::de::Error::custom(format!("not a MAC address: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::MacAddr;

    #[test]
    fn random_macs_keep_their_prefix_and_differ() {
        let (a, b) = (MacAddr::random_with_prefix(&[0x02, 0xd0]), MacAddr::random_with_prefix(&[0x02, 0xd0]));
        assert_eq!((&a.0[..2], &b.0[..2]), (&[0x02, 0xd0][..], &[0x02, 0xd0][..]), "{a} {b}");
        assert_ne!(a, b, "two random MACs should differ");
        assert_eq!(a.endpoint_problem(), None, "{a} should be a valid endpoint MAC");
    }
}
