//! The client's session-level state, which outlives its server connections: the statements
//! it prepared (by its names), the pin that keeps it on one connection, the settings replayed
//! on every connection it gets, and the `client_encoding` its SQL text is read in.

use crate::encoding::ClientEncoding;
use crate::pinning::Pin;
use crate::prepared::ClientStatements;
use crate::session_state::SessionState;

pub(crate) struct ClientState {
    statements: ClientStatements,
    /// Session state that cannot follow the client to another connection keeps it here.
    pin: Pin,
    /// Settings that do follow the client (SET, RESET, startup parameters).
    settings: SessionState,
    /// The client's `client_encoding` (as the server reports it): how to read its SQL text.
    encoding: ClientEncoding,
}

impl ClientState {
    /// A client that just logged in, with the settings of its startup packet and room for
    /// `statements` prepared statements.
    pub(crate) fn new(statements: usize, settings: SessionState) -> ClientState {
        ClientState {
            statements: ClientStatements::new(statements),
            pin: Pin::default(),
            settings,
            encoding: ClientEncoding::default(),
        }
    }

    /// The client's prepared statements by its names.
    pub(crate) fn statements(&self) -> &ClientStatements {
        &self.statements
    }

    pub(crate) fn statements_mut(&mut self) -> &mut ClientStatements {
        &mut self.statements
    }

    pub(crate) fn pin(&self) -> &Pin {
        &self.pin
    }

    pub(crate) fn pin_mut(&mut self) -> &mut Pin {
        &mut self.pin
    }

    /// The settings replayed on each server connection the client gets.
    pub(crate) fn settings(&self) -> &SessionState {
        &self.settings
    }

    pub(crate) fn settings_mut(&mut self) -> &mut SessionState {
        &mut self.settings
    }

    pub(crate) fn encoding(&self) -> ClientEncoding {
        self.encoding
    }

    pub(crate) fn set_encoding(&mut self, encoding: ClientEncoding) {
        self.encoding = encoding;
    }
}
