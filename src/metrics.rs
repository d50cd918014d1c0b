//! Prometheus metrics (`[metrics]`, off by default): what the milter did and
//! how long its work took, in the text format a Prometheus server scrapes
//! (OpenMetrics, through the `prometheus-client` crate).
//!
//! Off, every record call is one load of an empty `OnceLock`. Counters kept
//! for the stats line elsewhere are read at scrape time through `Source`s,
//! not counted twice.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::OnceLock;
use std::time::Duration;

/// What a message became, by direction, action and smime result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    direction: &'static str,
    action: &'static str,
    smime: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// Timed work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    /// A recipient certificate looked up in the directory.
    DirectoryLookup,
    /// OCSP, CRL or AIA fetches for one chain.
    RevocationLookup,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Sign => "sign",
            Operation::Verify => "verify",
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
            Operation::DirectoryLookup => "directory_lookup",
            Operation::RevocationLookup => "revocation_lookup",
        }
    }
}

/// A value kept elsewhere, read at each scrape.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub read: fn() -> u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Sources(Vec<Source>);

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for s in &self.0 {
            let v = (s.read)();
            match s.kind {
                Kind::Counter => {
                    let c = ConstCounter::new(v);
                    c.encode(encoder.encode_descriptor(s.name, s.help, None, c.metric_type())?)?;
                }
                Kind::Gauge => {
                    let g = ConstGauge::new(v as i64);
                    g.encode(encoder.encode_descriptor(s.name, s.help, None, g.metric_type())?)?;
                }
            }
        }
        Ok(())
    }
}

struct Metrics {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    decrypt: Family<OutcomeLabel, Counter>,
    harvest_queued: Counter,
    seconds: Family<OperationLabel, Histogram>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The prefix of every metric name.
pub const PREFIX: &str = "smime_milter";

/// Turns recording on (once per process), with the values read at scrape.
pub fn enable(sources: Vec<Source>) {
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix(PREFIX);
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages finished, by direction, action (signed, verified, tempfail...) and S/MIME result (none when no signature was checked)",
            messages.clone(),
        );
        let decrypt = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "decrypt",
            "Inbound decryption attempts, by outcome",
            decrypt.clone(),
        );
        let harvest_queued = Counter::default();
        registry.register(
            "harvest_queued",
            "Signer certificates queued for writing into the directory",
            harvest_queued.clone(),
        );
        // 100 us to about 13 s: a signature at the low end, a directory or
        // OCSP lookup that meets its timeout at the high end.
        let seconds = Family::<OperationLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 18,
            ))
        });
        registry.register_with_unit(
            "operation",
            "Time spent in each kind of work",
            Unit::Seconds,
            seconds.clone(),
        );
        registry.register_collector(Box::new(Sources(sources)));
        Metrics {
            registry,
            messages,
            decrypt,
            harvest_queued,
            seconds,
        }
    });
}

pub fn enabled() -> bool {
    METRICS.get().is_some()
}

pub fn message(direction: &'static str, action: &'static str, smime: &'static str) {
    if let Some(m) = METRICS.get() {
        m.messages
            .get_or_create(&MessageLabels {
                direction,
                action,
                smime,
            })
            .inc();
    }
}

pub fn decrypt(outcome: &'static str) {
    if let Some(m) = METRICS.get() {
        m.decrypt.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

pub fn harvest_queued() {
    if let Some(m) = METRICS.get() {
        m.harvest_queued.inc();
    }
}

pub fn observe(op: Operation, took: Duration) {
    if let Some(m) = METRICS.get() {
        m.seconds
            .get_or_create(&OperationLabel {
                operation: op.name(),
            })
            .observe(took.as_secs_f64());
    }
}

/// Runs `f` and records how long it took.
pub fn timed<T>(op: Operation, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let started = std::time::Instant::now();
    let out = f();
    observe(op, started.elapsed());
    out
}

/// The text a scrape returns; `None` when metrics are off.
pub fn render() -> Option<String> {
    let m = METRICS.get()?;
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut out, &m.registry).ok()?;
    Some(out)
}
