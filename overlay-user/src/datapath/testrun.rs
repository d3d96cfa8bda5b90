//! Running the programs once on a test frame (BPF_PROG_TEST_RUN), for the
//! packet tests and the micro-benchmarks.
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use overlay_common::programs;

use super::{Datapath, DatapathError};

/// Result of running a program once on a frame (BPF_PROG_TEST_RUN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The program's return value (XDP or TC action).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Average run time per repetition, in nanoseconds.
    pub duration_ns: u64,
}

impl Datapath {
    /// Runs the XDP decapsulation program on `frame`, `repeat` times.
    ///
    /// With `repeat > 1` the kernel runs each repetition on the frame the
    /// previous one left behind (a decapsulated frame is then decapsulated
    /// again), so only a frame the program leaves unchanged gives a
    /// meaningful per-packet time.
    pub fn test_decap(&self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome, DatapathError> {
        let program: &Xdp = self.program(programs::DECAP_XDP)?;
        run_program(program, programs::DECAP_XDP, frame, None, repeat)
    }

    /// Runs the endpoint TC program on `frame` as if it arrived on the port
    /// with index `ifindex` (which must exist in the calling thread's network
    /// namespace), `repeat` times; see [`Datapath::test_decap`] on repeats.
    pub fn test_endpoint(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<TestRunOutcome, DatapathError> {
        let program: &SchedClassifier = self.program(programs::ENDPOINT_TC)?;
        run_program(program, programs::ENDPOINT_TC, frame, Some(&skb_context(ifindex)), repeat)
    }

    /// Runs the underlay flood TC program on `frame` as if it arrived on
    /// the device with index `ifindex` (see [`Datapath::test_endpoint`]).
    /// Its clones really are sent to the local ports it names.
    pub fn test_underlay_flood(&self, frame: &[u8], ifindex: u32) -> Result<TestRunOutcome, DatapathError> {
        let program: &SchedClassifier = self.program(programs::UNDERLAY_FLOOD_TC)?;
        run_program(program, programs::UNDERLAY_FLOOD_TC, frame, Some(&skb_context(ifindex)), 1)
    }

    /// Runs the TC decapsulation program (`--decap tc`) on `frame` as if it
    /// arrived on the device with index `ifindex`. Its redirect is only
    /// returned (a test run carries none out); flooded clones are sent.
    pub fn test_decap_tc(&self, frame: &[u8], ifindex: u32) -> Result<TestRunOutcome, DatapathError> {
        let program: &SchedClassifier = self.program(programs::DECAP_TC)?;
        run_program(program, programs::DECAP_TC, frame, Some(&skb_context(ifindex)), 1)
    }
}

fn run_program<P: TestRun<Result = aya::programs::TestRunResult>>(
    program: &P,
    name: &'static str,
    frame: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
) -> Result<TestRunOutcome, DatapathError>
where
    for<'a> P: TestRun<Opts<'a> = TestRunOptions<'a>>,
{
    let mut out = vec![0u8; frame.len() + 512];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx,
        repeat: repeat.max(1),
        ..Default::default()
    };
    let result = program.test_run(opts).map_err(|error| DatapathError::TestRun { program: name, error })?;
    out.truncate(result.data_size_out as usize);
    Ok(TestRunOutcome {
        action: result.return_value,
        frame: out,
        duration_ns: result.duration.as_nanos() as u64,
    })
}

/// A `struct __sk_buff` up to and including `ifindex` (offset 40), for a
/// TC test run; the kernel only accepts a few fields and requires the rest zero.
fn skb_context(ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}
