//! The line a server prints on stderr once it serves: `<program>: listening invoke=ADDR` (and
//! ` runtime-api=ADDR` for `lambda-local`). Scripts and tests wait for it; with port 0 it is the
//! only way to learn the ports. Printed in one write so a reader never sees half of it.

use std::net::SocketAddr;

/// Where a server listens, as its readiness line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub invoke: SocketAddr,
    pub runtime_api: Option<SocketAddr>,
}

impl Listening {
    /// The readiness line of `program`, newline included.
    pub fn line(&self, program: &str) -> String {
        match self.runtime_api {
            Some(api) => format!(
                "{program}: listening invoke={} runtime-api={api}\n",
                self.invoke
            ),
            None => format!("{program}: listening invoke={}\n", self.invoke),
        }
    }

    /// The addresses in `line` if it is `program`'s readiness line.
    pub fn parse(program: &str, line: &str) -> Option<Listening> {
        let rest = line.strip_prefix(program)?.strip_prefix(": listening ")?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        Some(Listening {
            invoke: field("invoke=")?,
            runtime_api: field("runtime-api="),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let listening = Listening {
            invoke: "127.0.0.1:8080".parse().unwrap(),
            runtime_api: Some("127.0.0.1:9001".parse().unwrap()),
        };
        let line = listening.line("lambda-local");
        assert_eq!(
            line,
            "lambda-local: listening invoke=127.0.0.1:8080 runtime-api=127.0.0.1:9001\n"
        );
        assert_eq!(
            Listening::parse("lambda-local", line.trim_end()),
            Some(listening)
        );
        assert_eq!(Listening::parse("lambda-vm", line.trim_end()), None);
        let vm = Listening {
            runtime_api: None,
            ..listening
        };
        assert_eq!(
            Listening::parse("lambda-vm", vm.line("lambda-vm").trim_end()),
            Some(vm)
        );
    }
}
