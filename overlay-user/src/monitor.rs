//! `overlay monitor`: datapath events from a node's pinned ring buffer.
//!
//! Opening a [`Monitor`] switches event emission on in the datapath (rate
//! limited per CPU in the kernel); dropping it switches emission off.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use overlay_common::{
    Direction, ETH_HDR_LEN, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, MONITOR_CAPTURE_LEN, MonitorConfig,
    MonitorEvent, PortInfo, Reason, VXLAN_ENCAP_LEN, maps,
};

use crate::{config::MacAddr, datapath::DatapathError, pinning::PinDir};

fn map_error(map: &'static str, operation: &'static str, error: aya::maps::MapError) -> DatapathError {
    DatapathError::Map { map, operation, error }
}

fn open_pinned(pins: &PinDir, name: &'static str) -> Result<MapData, DatapathError> {
    MapData::from_pin(pins.map(name)).map_err(|source| map_error(name, "open pinned", source))
}

/// A listening monitor on one node's datapath.
pub struct Monitor {
    events: RingBuf<MapData>,
    config: Array<MapData, MonitorConfig>,
    lost: PerCpuArray<MapData, u64>,
    ports: Option<HashMap<MapData, u32, PortInfo>>,
}

impl Monitor {
    /// Opens the node's event ring and turns emission on with `settings`.
    pub fn open(pins: &PinDir, settings: MonitorConfig) -> Result<Monitor, DatapathError> {
        let events = RingBuf::try_from(Map::RingBuf(open_pinned(pins, maps::EVENTS)?)).map_err(|source| map_error(maps::EVENTS, "open", source))?;
        let mut config: Array<MapData, MonitorConfig> =
            Array::try_from(Map::Array(open_pinned(pins, maps::MONITOR)?)).map_err(|source| map_error(maps::MONITOR, "open", source))?;
        let lost = PerCpuArray::try_from(Map::PerCpuArray(open_pinned(pins, maps::MONITOR_LOST)?))
            .map_err(|source| map_error(maps::MONITOR_LOST, "open", source))?;
        let ports = open_pinned(pins, maps::PORTS).ok().and_then(|data| HashMap::try_from(Map::HashMap(data)).ok());
        config.set(0, MonitorConfig { enabled: 1, ..settings }, 0).map_err(|source| map_error(maps::MONITOR, "set", source))?;
        Ok(Monitor { events, config, lost, ports })
    }

    /// The next event, waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(event) = self.take() {
            return Some(event);
        }
        let mut poll = libc::pollfd { fd: self.events.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut poll, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        self.take()
    }

    fn take(&mut self) -> Option<Event> {
        let item = self.events.next()?;
        if item.len() < size_of::<MonitorEvent>() {
            return None;
        }
        // SAFETY: the datapath writes whole MonitorEvents; read unaligned.
        let raw: MonitorEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        drop(item);
        let vni = self.ports.as_ref().and_then(|ports| ports.get(&raw.ifindex, 0).ok()).map(|p| p.vni);
        Some(Event::decode(&raw, vni))
    }

    /// Events the datapath could not emit (rate limit or full buffer), all CPUs.
    pub fn lost(&self) -> u64 {
        self.lost.get(&0, 0).map(|values| values.iter().sum()).unwrap_or(0)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Err(error) = self.config.set(0, MonitorConfig::default(), 0) {
            log::warn!("switching datapath events off: {error}");
        }
    }
}

/// One decoded datapath event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub timestamp_ns: u64,
    pub reason: Reason,
    pub direction: Direction,
    pub ifindex: u32,
    pub packet_len: u32,
    /// The VNI: from the VXLAN header (underlay) or the port (endpoint).
    pub vni: Option<u32>,
    /// Outer source and destination (VXLAN from the underlay).
    pub outer: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Inner Ethernet source, destination and type.
    pub inner_eth: Option<(MacAddr, MacAddr, u16)>,
    /// Inner IP source and destination.
    pub inner_ip: Option<(IpAddr, IpAddr)>,
}

impl Event {
    pub fn decode(raw: &MonitorEvent, port_vni: Option<u32>) -> Event {
        let data = &raw.data[..(raw.captured_len as usize).min(MONITOR_CAPTURE_LEN)];
        let direction = Direction(raw.direction);
        let mut event = Event {
            timestamp_ns: raw.timestamp_ns,
            reason: Reason(raw.reason),
            direction,
            ifindex: raw.ifindex,
            packet_len: raw.packet_len,
            vni: None,
            outer: None,
            inner_eth: None,
            inner_ip: None,
        };
        // Bytes are captured after the program ran: a forwarded packet has
        // been rewritten (decapsulated from the underlay, encapsulated from
        // an endpoint); a dropped one has not.
        let forwarded = Reason(raw.reason) == Reason::FORWARDED;
        let encapsulated = (direction == Direction::FROM_UNDERLAY) != forwarded;
        let inner = if encapsulated {
            // Outer Ethernet/IPv4 (no options)/UDP/VXLAN, as the datapath sends them.
            if data.len() >= ETH_HDR_LEN + 20 && u16::from_be_bytes([data[12], data[13]]) == ETH_P_IPV4 {
                let ip = &data[ETH_HDR_LEN..];
                event.outer = Some((Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])));
            }
            if data.len() >= VXLAN_ENCAP_LEN && data[ETH_HDR_LEN] == 0x45 {
                let vxlan = &data[VXLAN_ENCAP_LEN - 8..VXLAN_ENCAP_LEN];
                event.vni = Some(u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]));
                &data[VXLAN_ENCAP_LEN..]
            } else {
                &[][..]
            }
        } else {
            event.vni = if direction == Direction::FROM_ENDPOINT { port_vni } else { None };
            data
        };
        if inner.len() >= ETH_HDR_LEN {
            let mac = |at: usize| MacAddr(inner[at..at + 6].try_into().unwrap());
            let ether_type = u16::from_be_bytes([inner[12], inner[13]]);
            event.inner_eth = Some((mac(6), mac(0), ether_type));
            let l3 = &inner[ETH_HDR_LEN..];
            event.inner_ip = match ether_type {
                ETH_P_IPV4 if l3.len() >= 20 => Some((
                    IpAddr::V4(Ipv4Addr::new(l3[12], l3[13], l3[14], l3[15])),
                    IpAddr::V4(Ipv4Addr::new(l3[16], l3[17], l3[18], l3[19])),
                )),
                ETH_P_IPV6 if l3.len() >= 40 => Some((
                    IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&l3[8..24]).unwrap())),
                    IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&l3[24..40]).unwrap())),
                )),
                ETH_P_ARP if l3.len() >= 28 => Some((
                    IpAddr::V4(Ipv4Addr::new(l3[14], l3[15], l3[16], l3[17])),
                    IpAddr::V4(Ipv4Addr::new(l3[24], l3[25], l3[26], l3[27])),
                )),
                _ => None,
            };
        }
        event
    }

    pub fn reason_name(&self) -> &'static str {
        self.reason.info().map_or("unknown", |info| info.name)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "timestamp_ns": self.timestamp_ns,
            "kind": if self.reason.is_drop() { "drop" } else { "trace" },
            "reason": self.reason_name(),
            "code": self.reason.0,
            "direction": self.direction.name(),
            "ifindex": self.ifindex,
            "length": self.packet_len,
            "vni": self.vni,
            "outer_source": self.outer.map(|o| o.0.to_string()),
            "outer_destination": self.outer.map(|o| o.1.to_string()),
            "inner_source_mac": self.inner_eth.map(|e| e.0.to_string()),
            "inner_destination_mac": self.inner_eth.map(|e| e.1.to_string()),
            "inner_source": self.inner_ip.map(|i| i.0.to_string()),
            "inner_destination": self.inner_ip.map(|i| i.1.to_string()),
        })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.reason.is_drop() { "drop" } else { "trace" };
        write!(f, "{kind} {} ({}) {} if={}", self.reason_name(), self.reason.0, self.direction.name(), self.ifindex)?;
        if let Some(vni) = self.vni {
            write!(f, " vni={vni}")?;
        }
        if let Some((source, destination)) = self.outer {
            write!(f, " outer {source} -> {destination}")?;
        }
        if let Some((source, destination, ether_type)) = self.inner_eth {
            write!(f, " inner {source} -> {destination} type 0x{ether_type:04x}")?;
        }
        if let Some((source, destination)) = self.inner_ip {
            write!(f, " {source} -> {destination}")?;
        }
        write!(f, " len={}", self.packet_len)
    }
}
