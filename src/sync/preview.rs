//! The dry run: the consumer of a page plan that writes nothing and tells what the pushers
//! would send, by playing the outbox's planning rules over the stored delivery rows.

use std::collections::{BTreeMap, HashMap};

use super::classify::PagePlan;
use crate::sink::{Destination, Payloads, Target};
use crate::store::{DeliveryState, DeliveryView, PlannedPayload, Store, StoreError};

/// What a dry run would push, per destination.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preview {
    pub destinations: BTreeMap<Destination, PreviewCounts>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreviewCounts {
    /// OMI `addMany` records, or EngageLab contacts that need an EUID first.
    pub new: u64,
    /// OMI `update`s, or EngageLab contact writes for a known EUID.
    pub update: u64,
    pub skip: u64,
    /// A few payloads, as the destination would receive them.
    pub examples: Vec<serde_json::Value>,
}

const PREVIEW_EXAMPLES: usize = 3;

/// What the pusher would do with one planned delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Would {
    New,
    Update,
    Skip,
}

#[derive(Debug, Clone)]
pub struct DryRun {
    store: Store,
    payloads: Payloads,
}

impl DryRun {
    pub fn new(store: Store, payloads: Payloads) -> Self {
        Self { store, payloads }
    }

    /// Add what `plan` would make the pushers send to `preview`; reads only.
    pub async fn preview(
        &self,
        plan: &PagePlan<'_>,
        preview: &mut Preview,
    ) -> Result<(), StoreError> {
        for deliveries in &plan.deliveries {
            let destination = deliveries.destination;
            let planned = plan.planned(deliveries);
            let ids: Vec<&str> = planned.iter().map(|(id, _)| *id).collect();
            let rows = self.store.outbox(destination).views(&ids).await?;
            let counts = preview.destinations.entry(destination).or_default();
            for ((i, _), would) in deliveries.payloads.iter().zip(outcomes(rows, &planned)) {
                match would {
                    Some(Would::Skip) => counts.skip += 1,
                    Some(Would::New) => counts.new += 1,
                    Some(Would::Update) => counts.update += 1,
                    None => continue,
                }
                if counts.examples.len() < PREVIEW_EXAMPLES
                    && let Target::Send(payload) =
                        self.payloads
                            .target(destination, &plan.contacts[*i].contact, false)
                {
                    counts.examples.push(payload);
                }
            }
        }
        Ok(())
    }
}

/// For each planned `(id, payload hash)`, what the pusher would do once the plan is recorded
/// over the stored `rows` (`None`: nothing, the destination already holds it or it is dead).
/// The rows are planned as the outbox plans them: a new hash makes the row pending (even when
/// it is the acknowledged one: the payload it replaces may have been sent); no hash makes it
/// skipped; the same hash changes nothing.
fn outcomes(
    mut rows: HashMap<String, DeliveryView>,
    planned: &[PlannedPayload<'_>],
) -> Vec<Option<Would>> {
    for (id, hash) in planned {
        match rows.get_mut(*id) {
            Some(row) => row.replan(*hash),
            None => {
                rows.insert((*id).to_owned(), DeliveryView::planned(*hash));
            }
        }
    }
    planned
        .iter()
        .map(|(id, _)| {
            let row = &rows[*id];
            match row.state {
                DeliveryState::Skipped => Some(Would::Skip),
                DeliveryState::Pending if row.add_state.is_none() && row.remote_id.is_none() => {
                    Some(Would::New)
                }
                DeliveryState::Pending => Some(Would::Update),
                DeliveryState::Synced | DeliveryState::Dead => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AddState;

    fn row(state: DeliveryState, payload: Option<u8>) -> DeliveryView {
        DeliveryView {
            state,
            payload_hash: payload.map(|b| [b; 32]),
            add_state: None,
            remote_id: None,
        }
    }

    #[test]
    fn a_contact_never_planned_is_new_or_skipped() {
        let got = outcomes(HashMap::new(), &[("a", Some([1; 32])), ("b", None)]);
        assert_eq!(got, vec![Some(Would::New), Some(Would::Skip)]);
    }

    #[test]
    fn a_contact_the_destination_may_hold_is_an_update() {
        let mut held = row(DeliveryState::Synced, Some(1));
        held.add_state = Some(AddState::Added);
        let rows = HashMap::from([("a".to_owned(), held)]);
        assert_eq!(
            outcomes(rows, &[("a", Some([2; 32]))]),
            vec![Some(Would::Update)]
        );
    }

    #[test]
    fn the_same_payload_sends_nothing_and_a_dead_letter_stays_dead() {
        let rows = HashMap::from([
            ("a".to_owned(), row(DeliveryState::Synced, Some(1))),
            ("b".to_owned(), row(DeliveryState::Dead, Some(3))),
        ]);
        let got = outcomes(rows, &[("a", Some([1; 32])), ("b", Some([3; 32]))]);
        assert_eq!(got, vec![None, None]);
    }

    /// Back to the acknowledged payload while another was planned: that one may have been
    /// sent, so the acknowledged one goes out again.
    #[test]
    fn the_acknowledged_payload_again_after_another_is_sent_again() {
        let rows = HashMap::from([("a".to_owned(), row(DeliveryState::Pending, Some(2)))]);
        assert_eq!(
            outcomes(rows, &[("a", Some([1; 32]))]),
            vec![Some(Would::New)]
        );
    }
}
