//! What the benchmark measures in a cell, and the figures each metric gives.
//!
//! Each metric module drives one kind of load between the cell's two
//! containers and reads what it needs around the measurement window:
//! `tcp` (iperf3), `udp_rate` (a 64-byte UDP generator and receiver of our
//! own, with CPU time from `cpu`), `latency` (ping-pong), and `bpf` (the
//! programs' run time from the kernel's BPF statistics, under load).
pub mod bpf;
pub mod cpu;
pub mod latency;
pub mod snmp;
pub mod spread_udp;
pub mod tcp;
pub mod udp_rate;

use std::time::Duration;

use serde::Serialize;

use super::topology::{Cell, TestBed};

/// A measurement the harness can run (`--only` takes these names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// TCP throughput, one stream (iperf3).
    Tcp1,
    /// TCP throughput, four parallel streams (iperf3 -P 4).
    Tcp4,
    /// 64-byte UDP packet rate delivered, and CPU time per packet.
    Udp64,
    /// UDP request/response latency (ping-pong).
    RrUdp,
    /// TCP request/response latency (ping-pong).
    RrTcp,
    /// BPF program run time per packet under load (overlay cells only).
    Bpf,
    /// BPF_PROG_TEST_RUN micro-benchmark of encap and decap (no lab).
    Microbench,
    /// Delivered 64-byte UDP rate along the cost curves (FDB size, VNIs,
    /// flows) in a lab of its own (`bench::curves`).
    Curves,
}

impl Metric {
    pub const ALL: [Metric; 8] =
        [Metric::Tcp1, Metric::Tcp4, Metric::Udp64, Metric::RrUdp, Metric::RrTcp, Metric::Bpf, Metric::Microbench, Metric::Curves];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Tcp1 => "tcp1",
            Metric::Tcp4 => "tcp4",
            Metric::Udp64 => "udp64",
            Metric::RrUdp => "rr-udp",
            Metric::RrTcp => "rr-tcp",
            Metric::Bpf => "bpf",
            Metric::Microbench => "microbench",
            Metric::Curves => "curves",
        }
    }

    /// Whether the metric is measured in `cell` (the micro-benchmark and
    /// the curves, which have a lab of their own, are in none).
    pub fn applies_to(self, cell: Cell) -> bool {
        match self {
            Metric::Bpf => cell.topology.is_overlay(),
            Metric::Microbench | Metric::Curves => false,
            _ => true,
        }
    }
}

/// Which way a figure improves; ratios are read with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Better {
    Higher,
    Lower,
    /// Informational (such as the generator's own rate).
    Neither,
}

/// One number a metric reports per cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FigureId {
    Tcp1Gbps,
    Tcp4Gbps,
    Udp64DeliveredKpps,
    Udp64SentKpps,
    CpuNsPerPacket,
    RrUdpP50Us,
    RrUdpP99Us,
    RrTcpP50Us,
    RrTcpP99Us,
    BpfDecapNsUdp64,
    BpfEncapNsUdp64,
    BpfDecapNsTcp,
    BpfEncapNsTcp,
}

/// How a figure is shown.
pub struct FigureInfo {
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    pub metric: Metric,
    /// Decimals shown in the table.
    pub decimals: usize,
}

impl FigureId {
    pub const ALL: [FigureId; 13] = [
        FigureId::Tcp1Gbps,
        FigureId::Tcp4Gbps,
        FigureId::Udp64DeliveredKpps,
        FigureId::Udp64SentKpps,
        FigureId::CpuNsPerPacket,
        FigureId::RrUdpP50Us,
        FigureId::RrUdpP99Us,
        FigureId::RrTcpP50Us,
        FigureId::RrTcpP99Us,
        FigureId::BpfDecapNsUdp64,
        FigureId::BpfEncapNsUdp64,
        FigureId::BpfDecapNsTcp,
        FigureId::BpfEncapNsTcp,
    ];

    pub fn info(self) -> FigureInfo {
        let figure = |label, unit, better, metric, decimals| FigureInfo { label, unit, better, metric, decimals };
        use Better::*;
        match self {
            FigureId::Tcp1Gbps => figure("TCP throughput, 1 stream", "Gbit/s", Higher, Metric::Tcp1, 2),
            FigureId::Tcp4Gbps => figure("TCP throughput, 4 streams", "Gbit/s", Higher, Metric::Tcp4, 2),
            FigureId::Udp64DeliveredKpps => figure("UDP 64 B delivered to the receiver", "kpps", Higher, Metric::Udp64, 0),
            FigureId::Udp64SentKpps => figure("UDP 64 B sent by the generator", "kpps", Neither, Metric::Udp64, 0),
            FigureId::CpuNsPerPacket => figure("CPU time per delivered packet (UDP 64 B)", "ns", Lower, Metric::Udp64, 0),
            FigureId::RrUdpP50Us => figure("UDP request/response RTT p50", "µs", Lower, Metric::RrUdp, 1),
            FigureId::RrUdpP99Us => figure("UDP request/response RTT p99", "µs", Lower, Metric::RrUdp, 1),
            FigureId::RrTcpP50Us => figure("TCP request/response RTT p50", "µs", Lower, Metric::RrTcp, 1),
            FigureId::RrTcpP99Us => figure("TCP request/response RTT p99", "µs", Lower, Metric::RrTcp, 1),
            FigureId::BpfDecapNsUdp64 => figure("BPF decap run time per packet (UDP 64 B load)", "ns", Lower, Metric::Bpf, 1),
            FigureId::BpfEncapNsUdp64 => figure("BPF encap run time per packet (UDP 64 B load)", "ns", Lower, Metric::Bpf, 1),
            FigureId::BpfDecapNsTcp => figure("BPF decap run time per frame (TCP 1 stream load)", "ns", Lower, Metric::Bpf, 1),
            FigureId::BpfEncapNsTcp => figure("BPF encap run time per skb (TCP 1 stream load; GSO)", "ns", Lower, Metric::Bpf, 1),
        }
    }
}

/// How long the measurements last.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    /// Each measurement window (iperf3's `-t` too).
    pub window: Duration,
    /// Load before a window opens, so queues, caches and ARP are warm.
    pub warmup: Duration,
}

/// What one metric measured in one cell.
pub struct Outcome {
    pub figures: Vec<(FigureId, f64)>,
    /// One line for the progress output.
    pub summary: String,
}

/// Runs `metric` in `bed`.
pub fn measure(metric: Metric, bed: &TestBed, timing: Timing) -> anyhow::Result<Outcome> {
    match metric {
        Metric::Tcp1 => tcp::throughput(bed, 1, timing, FigureId::Tcp1Gbps),
        Metric::Tcp4 => tcp::throughput(bed, 4, timing, FigureId::Tcp4Gbps),
        Metric::Udp64 => udp_rate::rate_and_cpu(bed, timing),
        Metric::RrUdp => latency::request_response(bed, latency::Transport::Udp, timing),
        Metric::RrTcp => latency::request_response(bed, latency::Transport::Tcp, timing),
        Metric::Bpf => bpf::run_time_under_load(bed, timing),
        Metric::Microbench | Metric::Curves => anyhow::bail!("{} runs outside the cells", metric.name()),
    }
}
