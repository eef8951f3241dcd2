//! Logging for Confidant's services, one definition for all of them: human-readable lines on stderr,
//! levels from `RUST_LOG` (default `info`), colour only on a terminal and never with `NO_COLOR`.
//!
//! Whatever `RUST_LOG` asks for, the targets of dependencies that handle plaintext or request bodies
//! (the tokenizer, which logs the characters it normalizes; HTTP, TLS and the AWS SDK) stay at warnings:
//! a verbose log must never become a copy of a prompt.

use tracing_subscriber::filter::{Directive, EnvFilter, LevelFilter};

/// Dependency targets held at `warn` whatever `RUST_LOG` says.
pub const QUIET_TARGETS: &[&str] = &[
    "tokenizers",
    "tch",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "quinn",
    "quinn_proto",
    "aws_smithy_runtime",
    "aws_smithy_http_client",
    "aws_sdk_kms",
    "aws_runtime",
    "aws_config",
];

/// The filter: `RUST_LOG` (or `info`), then the quiet targets clamped to `warn`.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let mut filter = rust_log
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    for target in QUIET_TARGETS {
        // Added after RUST_LOG's own directives for the same target, so it replaces them.
        if let Ok(d) = format!("{target}={}", LevelFilter::WARN).parse::<Directive>() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Whether to colour output: on a terminal, unless `NO_COLOR` is set (https://no-color.org).
pub fn use_colour(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process's subscriber (stderr). Call once, first thing in `main`.
pub fn init() {
    let rust_log = std::env::var("RUST_LOG").ok();
    let ansi = use_colour(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log.as_deref()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn enabled(rust_log: &str, target: &str, level: Level) -> bool {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(filter(Some(rust_log)));
        tracing::subscriber::with_default(subscriber, || match (target, level) {
            ("tokenizers", Level::TRACE) => {
                tracing::event_enabled!(target: "tokenizers", Level::TRACE)
            }
            ("tokenizers", _) => tracing::event_enabled!(target: "tokenizers", Level::WARN),
            ("hyper", _) => tracing::event_enabled!(target: "hyper", Level::DEBUG),
            (_, Level::TRACE) => tracing::event_enabled!(target: "confidant_enclave", Level::TRACE),
            _ => tracing::event_enabled!(target: "confidant_enclave", Level::INFO),
        })
    }

    #[test]
    fn plaintext_seeing_targets_stay_at_warn_whatever_rust_log_says() {
        for rust_log in [
            "trace",
            "tokenizers=trace",
            "trace,tokenizers=trace,hyper=debug",
        ] {
            assert!(!enabled(rust_log, "tokenizers", Level::TRACE), "{rust_log}");
            assert!(!enabled(rust_log, "hyper", Level::DEBUG), "{rust_log}");
            assert!(enabled(rust_log, "tokenizers", Level::WARN), "{rust_log}");
        }
        assert!(enabled("trace", "ours", Level::TRACE));
        assert!(!enabled("info", "ours", Level::TRACE));
        assert!(
            enabled("not a filter ===", "ours", Level::INFO),
            "a bad RUST_LOG falls back to info"
        );
    }

    #[test]
    fn no_color_turns_colour_off() {
        assert!(!use_colour(false));
    }
}
