//! An error and every cause under it, on one line, for logs and `/readyz`.
//!
//! Errors from the HTTP stack wrap their cause without repeating it: kube's
//! `ServiceError: client error (Connect)` says nothing of *why* (a refused connection, no
//! route to the API server, a TLS failure); that is three `source()`s further down. Found on
//! the first real cluster: weftd retried "cannot get node ...: ServiceError: client error
//! (Connect)" for minutes while the reason, "Network is unreachable", was never shown.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, `": "`-separated, leaving out a
/// source whose text the line already holds (many errors print their source themselves).
#[derive(Debug)]
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        // Bounded: a (buggy) error whose sources form a cycle must not hang the logger.
        for _ in 0..16 {
            let Some(error) = source else { break };
            let text = error.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = error.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(&'static str, Option<Box<dyn Error + Send + Sync + 'static>>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn every_cause_is_shown_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::NetworkUnreachable,
            "Network is unreachable (os error 101)",
        );
        let connect = Wrapper("tcp connect error", Some(Box::new(io)));
        let client = Wrapper("client error (Connect)", Some(Box::new(connect)));
        let service = ::kube::Error::Service(Box::new(client));
        assert_eq!(
            Causes(&service).to_string(),
            "ServiceError: client error (Connect): tcp connect error: Network is unreachable \
             (os error 101)"
        );
    }

    #[test]
    fn an_error_without_a_source_is_itself() {
        let plain = Wrapper("no route", None);
        assert_eq!(Causes(&plain).to_string(), "no route");
    }
}
