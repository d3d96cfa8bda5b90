//! Why the datapath did what it did with a packet: the stable, numbered list
//! that the counters are keyed by and that the CLI prints.
//!
//! Numbers are never reused: a retired reason keeps its number and its row in
//! [`REASONS`] (marked retired), so counters read by an older agent or a
//! dashboard keep their meaning. Codes below [`FIRST_DROP`] are outcomes
//! where the packet went on; codes from [`FIRST_DROP`] are drops.

/// A numbered outcome or drop reason.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason(pub u32);

/// Which hook counted a packet.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Direction(pub u32);

impl Direction {
    /// Seen by the XDP program on the underlay device (decapsulation side).
    pub const FROM_UNDERLAY: Direction = Direction(0);
    /// Seen by the TC program on an endpoint port (encapsulation side).
    pub const FROM_ENDPOINT: Direction = Direction(1);

    pub const ALL: [Direction; DIRECTION_COUNT as usize] =
        [Direction::FROM_UNDERLAY, Direction::FROM_ENDPOINT];

    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "from-underlay",
            1 => "from-endpoint",
            _ => "unknown",
        }
    }
}

pub const DIRECTION_COUNT: u32 = 2;
/// Counter slots per direction; every reason code is below this.
pub const REASON_SLOTS: u32 = 64;
/// Codes from here on are drops.
pub const FIRST_DROP: u32 = 16;

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal, $label:literal;)*) => {
        impl Reason {
            $($(#[doc = $doc])* pub const $name: Reason = Reason($code);)*
        }
        /// Every reason with its name and one-line explanation, in code order.
        pub const REASONS: &[ReasonInfo] = &[
            $(ReasonInfo { reason: Reason($code), name: $label, description: concat!($($doc),*) },)*
        ];
        const _: () = {
            $(assert!($code < REASON_SLOTS);)*
        };
    };
}

/// A reason's name and explanation, for the CLI.
#[derive(Clone, Copy, Debug)]
pub struct ReasonInfo {
    pub reason: Reason,
    pub name: &'static str,
    pub description: &'static str,
}

reasons! {
    /// Forwarded: encapsulated to a peer VTEP, or decapsulated to a local endpoint.
    FORWARDED = 0, "forwarded";
    /// Not overlay traffic for this node; passed to the kernel stack untouched.
    PASSED = 1, "passed";
    /// ARP request answered by the datapath from the node's tables (ARP suppression).
    ARP_REPLIED = 2, "arp-replied";
    /// Delivered to another local endpoint of the same VNI without leaving the node.
    LOCAL_SWITCHED = 3, "local-switched";
    /// Broadcast, multicast or unknown unicast replicated to the VNI's other local ports and peers (head-end replication).
    FLOODED = 4, "flooded";
    /// Broadcast or multicast VXLAN frame passed by XDP to the TC program that replicates it to local ports.
    FLOOD_HANDOFF = 5, "flood-handoff";
    /// IPv6 neighbour solicitation answered by the datapath from the node's tables (ND suppression).
    ND_REPLIED = 6, "nd-replied";
    /// Frame too big for the underlay: ICMP fragmentation-needed or packet-too-big sent back to the sender.
    ICMP_TOO_BIG_SENT = 7, "icmp-too-big-sent";
    /// Replicated, but to fewer targets than the VNI has: its flood limit was reached.
    FLOODED_LIMITED = 8, "flooded-limited";
    /// Learning event, not a verdict (counted in `LEARNING_EVENTS`, beside the frame's own): a frame from a peer admitted for a learning VNI taught where its inner source MAC lives (RFC 7348 section 4.1), as a new entry or a move from another peer.
    LEARNED = 9, "learned";
    /// Learning event, not a verdict (counted in `LEARNING_EVENTS`): a frame's inner source MAC is configured (FDB: at another peer, or a local endpoint), which learning never overrides.
    LEARNING_REFUSED = 10, "learning-refused";

    /// VXLAN from a source address that is not a configured peer VTEP (spoofed or stale peer).
    UNKNOWN_PEER = 16, "unknown-peer";
    /// VXLAN for a VNI this node does not carry.
    UNKNOWN_VNI = 17, "unknown-vni";
    /// VXLAN header without the I flag (RFC 7348 section 5: it MUST be set).
    VXLAN_FLAGS_INVALID = 18, "vxlan-flags-invalid";
    /// UDP to the VXLAN port too short for a VXLAN header and an inner Ethernet header.
    VXLAN_TRUNCATED = 19, "vxlan-truncated";
    /// Outer IPv4 total length or UDP length disagrees with the frame.
    OUTER_LENGTH_MISMATCH = 20, "outer-length-mismatch";
    /// Outer IPv4 header with options on the VXLAN port (VTEPs do not send them).
    OUTER_IP_OPTIONS = 21, "outer-ip-options";
    /// Fragmented outer packet on the VXLAN port (RFC 7348 section 4.3: VTEPs MUST NOT fragment; the receiver MAY discard).
    OUTER_FRAGMENT = 22, "outer-fragment";
    /// Inner destination MAC unknown in the frame's VNI.
    UNKNOWN_DESTINATION = 23, "unknown-destination";
    /// Retired (flooding is implemented): broadcast or multicast frame that needed flooding.
    FLOOD_UNSUPPORTED = 24, "flood-unsupported";
    /// No underlay route to the peer VTEP (FIB lookup failed).
    NO_UNDERLAY_ROUTE = 25, "no-underlay-route";
    /// Underlay next hop not resolved and the frame is not IP, so the kernel cannot resolve it for us.
    UNDERLAY_NEIGHBOUR_UNRESOLVED = 26, "underlay-neighbour-unresolved";
    /// The kernel refused to grow the packet for the outer headers.
    ENCAP_FAILED = 27, "encap-failed";
    /// The kernel refused to strip the outer headers.
    DECAP_FAILED = 28, "decap-failed";
    /// Frame from a port that has no VNI configured (program attached to a port no longer in the config).
    PORT_NOT_CONFIGURED = 29, "port-not-configured";
    /// Broadcast ARP request from a peer for an address that lives on another node.
    ARP_UNKNOWN_TARGET = 30, "arp-unknown-target";
    /// ARP that is not an Ethernet/IPv4 request (bad hardware/protocol type or lengths).
    ARP_MALFORMED = 31, "arp-malformed";
    /// Retired (announcements are flooded): ARP probe or announcement for the sender's own address.
    ARP_ANNOUNCEMENT = 32, "arp-announcement";
    /// Encapsulated frame would exceed the underlay MTU.
    TOO_BIG_FOR_UNDERLAY = 33, "too-big-for-underlay";
    /// Frame shorter than an Ethernet header.
    TRUNCATED_ETHERNET = 34, "truncated-ethernet";
    /// IPv4 forwarding is off on the underlay device, so the kernel will not route to peer VTEPs (the agent turns it on).
    UNDERLAY_FORWARDING_DISABLED = 35, "underlay-forwarding-disabled";
    /// Inner frame carries an 802.1Q or 802.1ad tag (RFC 7348 section 6.1: such frames SHOULD be discarded).
    INNER_VLAN = 36, "inner-vlan";
    /// IPv4 frame without DF too big for the underlay (VTEPs must not fragment, RFC 7348 section 4.3).
    TOO_BIG_NO_DF = 37, "too-big-no-df";
    /// Flooded frame from a peer that this node has no flood list for (no local port in its VNI).
    NO_FLOOD_TARGETS = 38, "no-flood-targets";
    /// IPv6 neighbour solicitation with a bad code, hop limit (RFC 4861 section 7.1.1) or length.
    ND_MALFORMED = 39, "nd-malformed";
    /// VXLAN from a configured peer for a VNI that peer does not carry (tenant isolation).
    PEER_NOT_IN_VNI = 40, "peer-not-in-vni";
    /// VXLAN whose outer IPv4 header checksum is wrong (RFC 1122 section 3.2.1.2: a host MUST verify it and discard the datagram).
    OUTER_CHECKSUM_INVALID = 41, "outer-checksum-invalid";
    /// VXLAN to our VTEP address in a frame addressed to another host's MAC (PACKET_OTHERHOST, e.g. in promiscuous mode): not ours to deliver, as the kernel's IP layer would not.
    OUTER_OTHER_HOST = 42, "outer-other-host";
}

/// The reasons counted in `LEARNING_EVENTS` rather than `COUNTERS`.
pub const LEARNING_EVENT_REASONS: [Reason; 2] = [Reason::LEARNED, Reason::LEARNING_REFUSED];

impl Reason {
    pub const fn is_drop(self) -> bool {
        self.0 >= FIRST_DROP
    }

    /// The row of [`REASONS`] for this code, if it is one.
    pub fn info(self) -> Option<&'static ReasonInfo> {
        REASONS.iter().find(|info| info.reason == self)
    }
}
