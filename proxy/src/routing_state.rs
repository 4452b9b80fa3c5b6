//! What routing remembers about a client between statements: its `SET shardgate.*` hints and
//! roles (for the session and, with `LOCAL`, for the transaction), the text of its unnamed
//! statement (a Bind of it routes by that text), and the named statements parsed in the batch
//! being routed (their Binds come in the same batch, before the server knows them).

use std::sync::Arc;

use shardgate_router::{Hint, Plan, RoleHint, Route, ShardgateParam, StatementKind};
use shardgate_wire::Frame;

/// Named Parses remembered while routing one batch (a batch rarely has more than a few).
const MAX_BATCH_PARSES: usize = 64;

/// A statement's text and parameter types, as routing needs them.
pub(crate) type StatementText = (String, Vec<u32>);

#[derive(Debug, Default)]
pub(crate) struct RoutingState {
    /// `SET shardgate.shard_key|shard` for the session, and `SET LOCAL` for the transaction.
    session_hint: Option<Hint>,
    local_hint: Option<Hint>,
    /// `SET shardgate.role` for the session, and `SET LOCAL` for the transaction.
    session_role: Option<RoleHint>,
    local_role: Option<RoleHint>,
    /// Text and parameter types of the client's unnamed statement (for routing its Binds).
    unnamed: Option<StatementText>,
    /// Named statements parsed in the batch being routed: (name, text, parameter types).
    batch_parses: Vec<(String, StatementText)>,
    /// The route of a Query or Bind found while deciding where a batch goes, kept so the
    /// relay's check of the same message does not route it again; with the version of the
    /// shard map it was routed by (a route under an older map is not reused).
    prerouted: Option<Prerouted>,
}

/// A message's route kept by [`RoutingState::set_prerouted`].
#[derive(Debug)]
struct Prerouted {
    frame: Frame,
    version: u64,
    route: Route,
    plan: Arc<Plan>,
}

impl RoutingState {
    /// Remembers the route of `frame` (a Query or Bind about to be forwarded), found under the
    /// shard map of `version`.
    pub(crate) fn set_prerouted(
        &mut self,
        frame: &Frame,
        version: u64,
        route: Route,
        plan: Arc<Plan>,
    ) {
        self.prerouted = Some(Prerouted {
            frame: frame.clone(),
            version,
            route,
            plan,
        });
    }

    /// Forgets a remembered route (routing a new batch: nothing from before may be reused).
    pub(crate) fn clear_prerouted(&mut self) {
        self.prerouted = None;
    }

    /// The route remembered for a message with exactly these bytes: the same message under the
    /// same routing state routes the same way.
    pub(crate) fn take_prerouted(
        &mut self,
        frame: &Frame,
        version: u64,
    ) -> Option<(Route, Arc<Plan>)> {
        let kept = self.prerouted.take()?;
        (kept.version == version && kept.frame.as_bytes() == frame.as_bytes())
            .then_some((kept.route, kept.plan))
    }

    /// The routing hint in force: the transaction's, else the session's.
    pub(crate) fn hint(&self) -> Option<&Hint> {
        self.local_hint.as_ref().or(self.session_hint.as_ref())
    }

    /// The role `SET [LOCAL] shardgate.role` asks for: the transaction's, else the session's.
    pub(crate) fn role(&self) -> Option<RoleHint> {
        self.local_role.or(self.session_role)
    }

    /// Applies `SET [LOCAL] shardgate.shard_key|shard|role` statements of a plan.
    pub(crate) fn observe_shardgate_sets(&mut self, plan: &Plan) {
        for kind in &plan.statement_kinds {
            let StatementKind::ShardgateSet(set) = kind else {
                continue;
            };
            if set.name == ShardgateParam::Role {
                let role = set.value.as_deref().and_then(RoleHint::parse);
                if set.local {
                    self.local_role = role;
                } else {
                    self.session_role = role;
                }
                continue;
            }
            let hint = set.value.clone().map(|v| match set.name {
                ShardgateParam::ShardKey | ShardgateParam::Role => Hint::ShardKey(v),
                ShardgateParam::Shard => Hint::Shard(v),
            });
            if set.local {
                self.local_hint = hint;
            } else {
                self.session_hint = hint;
            }
        }
    }

    /// The transaction ended: its `SET LOCAL` hint and role end with it.
    pub(crate) fn end_transaction(&mut self) {
        self.local_hint = None;
        self.local_role = None;
    }

    pub(crate) fn unnamed(&self) -> Option<&StatementText> {
        self.unnamed.as_ref()
    }

    /// The client's unnamed statement is now `text`. Drivers replace it at every execution
    /// (a Parse per statement), so its buffers are reused unless a much larger text left them
    /// oversized.
    pub(crate) fn set_unnamed(&mut self, text: &str, param_types: &[u32]) {
        match &mut self.unnamed {
            Some((t, ty)) if t.capacity() <= 4 * text.len().max(1024) => {
                t.clear();
                t.push_str(text);
                ty.clear();
                ty.extend_from_slice(param_types);
            }
            _ => self.unnamed = Some((text.to_owned(), param_types.to_vec())),
        }
    }

    /// Remembers a named Parse of the batch being routed (up to a bound; a Bind of a statement
    /// beyond it is routed as unknown, as before any Parse).
    pub(crate) fn note_batch_parse(&mut self, name: &str, text: String, param_types: Vec<u32>) {
        if self.batch_parses.len() < MAX_BATCH_PARSES {
            self.batch_parses
                .push((name.to_owned(), (text, param_types)));
        }
    }

    /// The latest Parse named `name` in the batch being routed.
    pub(crate) fn batch_parse(&self, name: &str) -> Option<&StatementText> {
        self.batch_parses
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// Forgets the Parses of the batch routed last (before and after routing each batch).
    pub(crate) fn clear_batch_parses(&mut self) {
        self.batch_parses.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Frame {
        let mut out = bytes::BytesMut::new();
        shardgate_wire::frontend::write_query(&mut out, sql);
        Frame::from_bytes(out.freeze())
    }

    fn plan() -> Arc<Plan> {
        Arc::new(Plan::simple(
            StatementKind::Read {
                locking: false,
                side_effects: false,
            },
            "SELECT",
        ))
    }

    /// A kept route is reused once, only for the same bytes and only under the shard map it
    /// was made by; anything else routes the message again.
    #[test]
    fn a_kept_route_is_reused_only_for_the_same_message_and_map() {
        let mut state = RoutingState::default();
        let frame = query("select 1 from t where user_id = 7");
        state.set_prerouted(&frame, 3, Route::Shard(1), plan());
        assert!(matches!(
            state.take_prerouted(&frame, 3),
            Some((Route::Shard(1), _))
        ));
        assert!(state.take_prerouted(&frame, 3).is_none(), "taken once");

        state.set_prerouted(&frame, 3, Route::Shard(1), plan());
        assert!(state.take_prerouted(&frame, 4).is_none(), "a newer map");
        assert!(
            state.take_prerouted(&frame, 3).is_none(),
            "dropped by the miss"
        );

        state.set_prerouted(&frame, 3, Route::Shard(1), plan());
        let other = query("select 1 from t where user_id = 8");
        assert!(state.take_prerouted(&other, 3).is_none(), "other bytes");

        state.set_prerouted(&frame, 3, Route::Shard(1), plan());
        state.clear_prerouted();
        assert!(state.take_prerouted(&frame, 3).is_none(), "cleared");
    }
}
