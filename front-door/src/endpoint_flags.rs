//! The invoke endpoint's connection flags, one definition for every binary that serves it
//! (`lambda-local`, `lambda-vm`): flattened into each one's command line with
//! `#[command(flatten)]`.

use http_server::{ConnectionLimits, LimitsError};

/// `--max-connections`, `--header-timeout`, `--body-timeout` and `--min-body-rate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EndpointFlags {
    /// Most client connections open at once on the invoke endpoint; beyond it new ones wait
    /// while the open ones are served.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers, or leave a kept-alive
    /// connection idle, before it is closed.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a request body may take before --min-body-rate applies: a body that sends
    /// nothing for this long is refused (408), and so is one that then falls behind the rate.
    #[arg(long, default_value_t = 10.0)]
    pub body_timeout: f64,
    /// The slowest a request body may arrive, in bytes a second on average, after
    /// --body-timeout.
    #[arg(long, default_value_t = http_server::MIN_BODY_RATE)]
    pub min_body_rate: u32,
}

impl EndpointFlags {
    /// The limits these flags ask for; a zero or negative value is refused, naming its flag.
    pub fn limits(&self) -> Result<ConnectionLimits, LimitsError> {
        ConnectionLimits::from_flags(
            self.max_connections,
            self.header_timeout,
            self.body_timeout,
            self.min_body_rate,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        endpoint: EndpointFlags,
    }

    #[test]
    fn defaults_make_valid_limits_and_zero_is_refused() {
        let cli = Cli::parse_from(["x"]);
        let limits = cli.endpoint.limits().unwrap();
        assert_eq!(limits.max_connections, Some(1024));
        let cli = Cli::parse_from(["x", "--header-timeout", "0"]);
        assert!(cli.endpoint.limits().is_err());
        let cli = Cli::parse_from(["x", "--max-connections", "0"]);
        assert!(cli.endpoint.limits().is_err());
    }
}
