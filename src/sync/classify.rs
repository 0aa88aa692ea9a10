//! Turning the raw records of a page into a plan: which are unchanged, which are new or
//! changed (normalized), which are quarantined and why, and what each destination should get.
//! Pure: the known hashes come in, the plan goes out; no I/O.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::{Contact, ContactId, Normalized, RawHash, Region, normalize, parse_record};
use crate::sink::{Destination, Payloads};
use crate::source::dolphins::SourceRecord;
use crate::store::{KnownContact, PlannedPayload, Seq};

/// A record of a page with its raw hash.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'p> {
    pub record: SourceRecord<'p>,
    pub raw_hash: RawHash,
}

/// How a normalized record relates to what the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    /// The canonical content changed, or the contact comes back from deletion.
    Changed,
    /// Only raw fields the contact does not use changed: stored, nothing to deliver.
    RawOnly,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedContact {
    pub contact: Contact,
    pub raw_hash: RawHash,
    pub content_hash: [u8; 32],
    pub change: Change,
    /// Its number, as far as the lookup the plan was made from establishes it.
    pub seq: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined<'p> {
    pub raw: &'p str,
    pub raw_hash: RawHash,
    pub reason: String,
}

/// One destination's payload hashes for a page's content-changed contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPlan {
    pub destination: Destination,
    /// An index into [`PagePlan::contacts`], and the hash (`None`: nothing to send).
    pub payloads: Vec<(usize, Option<[u8; 32]>)>,
}

/// What a page means for the store and the destinations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PagePlan<'p> {
    /// Records classified (the page without the records its overlap re-read).
    pub records: u64,
    /// Ids of live contacts whose raw record is what the store holds: only marked seen.
    pub unchanged: Vec<String>,
    /// The contact numbers of `unchanged` records, to mark them seen without another lookup;
    /// a copy of a record this page has just made is seen through that record instead.
    pub sighted: Vec<i64>,
    /// New and changed records, normalized, in page order.
    pub contacts: Vec<PlannedContact>,
    pub quarantined: Vec<Quarantined<'p>>,
    /// Per enabled destination, for each contact whose content changed (an index into
    /// `contacts`), the hash of the payload it should hold there; `None`: nothing to send.
    pub deliveries: Vec<DestinationPlan>,
    pub dropped_emails: u64,
    pub dropped_phones: u64,
    pub reformatted_phones: u64,
}

impl PagePlan<'_> {
    pub fn count(&self, change: Change) -> u64 {
        self.contacts.iter().filter(|c| c.change == change).count() as u64
    }

    /// One destination's plan as the outbox takes it: `(contact id, payload hash)` pairs.
    pub fn planned(&self, destination: &DestinationPlan) -> Vec<PlannedPayload<'_>> {
        destination
            .payloads
            .iter()
            .map(|(i, hash)| (self.contacts[*i].contact.id.as_str(), *hash))
            .collect()
    }
}

/// A record normalized, with the hash of its canonical content; or why it is quarantined.
pub type Normalization = Result<(Normalized, [u8; 32]), String>;

/// Records normalized ahead of their page's lookup, by raw hash: see `Reader::read_page`.
pub type Normalizations = HashMap<RawHash, Normalization>;

/// Normalizes records and plans their deliveries under the configured settings.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub region: Region,
    pub payloads: Payloads,
}

/// Just enough of a record to find its id without parsing the rest into a tree.
#[derive(Deserialize)]
struct IdProbe<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

impl Classifier {
    /// The id of each record as the store keys it, where it can be read cheaply: what to
    /// look up before [`Classifier::plan`]. `None` when only full normalization can say why
    /// not, and for bytes that are not UTF-8.
    pub fn ids(&self, records: &[RawRecord<'_>]) -> Vec<Option<String>> {
        records
            .iter()
            .map(|r| {
                if r.record.invalid_utf8 {
                    None
                } else {
                    probe_id(r.record.raw)
                }
            })
            .collect()
    }

    /// Normalize one record, with the hash of its canonical content, or say why it is
    /// quarantined. Pure: the same bytes give the same result under the same settings, so it
    /// may run ahead of the lookup that decides whether it is needed ([`Normalizations`]).
    pub fn normalize(&self, record: &SourceRecord<'_>) -> Normalization {
        // A record with bytes that are not UTF-8 is quarantined, not stored with U+FFFD in
        // their place: a silently altered name or address would be pushed to every
        // destination, while the quarantine keeps it visible until the source is fixed.
        // A record of a parsed array always parses; quarantine rather than trust that.
        if record.invalid_utf8 {
            return Err("record holds bytes that are not UTF-8".to_owned());
        }
        let value = parse_record(record.raw).map_err(|e| format!("unparsable record: {e}"))?;
        let normalized = normalize(&value, self.region).map_err(|r| r.to_string())?;
        let content_hash =
            *blake3::hash(&serde_json::to_vec(&normalized.contact).expect("contacts serialize"))
                .as_bytes();
        Ok((normalized, content_hash))
    }

    /// The records [`Classifier::plan`] would normalize that `ready` does not hold, by index:
    /// those not [`unchanged`]. A second copy of a record in `records` may be counted though
    /// plan would find it unchanged after the first.
    pub fn unready(
        &self,
        records: &[RawRecord<'_>],
        ids: &[Option<String>],
        known: &HashMap<String, KnownContact>,
        ready: &Normalizations,
    ) -> Vec<usize> {
        (records.iter().zip(ids).enumerate())
            .filter(|(_, (r, id))| {
                unchanged(known, r, id).is_none() && !ready.contains_key(&r.raw_hash)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Classify `records` (with their `ids` from [`Classifier::ids`]) against `known`, what
    /// the store holds for those ids (every one of them looked up, in the transaction that
    /// writes the plan: a contact whose id is among them and not in `known` is not stored,
    /// [`Seq::Next`]). A record found in `ready` takes its normalization from there (and out
    /// of it); any other one that needs it is normalized here.
    pub fn plan<'p>(
        &self,
        records: &[RawRecord<'p>],
        ids: &[Option<String>],
        mut known: HashMap<String, KnownContact>,
        ready: &mut Normalizations,
    ) -> PagePlan<'p> {
        let mut plan = PagePlan {
            records: records.len() as u64,
            ..PagePlan::default()
        };
        let looked_up: HashSet<&str> = ids.iter().flatten().map(String::as_str).collect();
        for (record, id) in records.iter().zip(ids) {
            if let Some((id, k)) = unchanged(&known, record, id) {
                plan.sighted.extend(k.seq);
                plan.unchanged.push(id.to_owned());
                continue;
            }
            let (normalized, content_hash) = match ready
                .remove(&record.raw_hash)
                .unwrap_or_else(|| self.normalize(&record.record))
            {
                Ok(normalized) => normalized,
                Err(reason) => {
                    plan.quarantined.push(Quarantined {
                        raw: record.record.raw,
                        raw_hash: record.raw_hash,
                        reason,
                    });
                    continue;
                }
            };
            plan.dropped_emails += u64::from(normalized.dropped_emails);
            plan.dropped_phones += u64::from(normalized.dropped_phones);
            plan.reformatted_phones += u64::from(normalized.reformatted_phones);
            let contact = normalized.contact;
            let stored = known.get(contact.id.as_str());
            let change = match stored {
                None => Change::New,
                Some(k) if k.content_hash != content_hash || k.deleted => Change::Changed,
                Some(_) => Change::RawOnly,
            };
            let seq = match stored {
                None if looked_up.contains(contact.id.as_str()) => Seq::Next,
                None => Seq::Unknown,
                Some(k) => k.seq.map_or(Seq::Unknown, Seq::Stored),
            };
            // A second copy of the record later in the same page compares against this one.
            known.insert(
                contact.id.as_str().to_owned(),
                KnownContact {
                    raw_hash: record.raw_hash,
                    content_hash,
                    deleted: false,
                    seq: stored.and_then(|k| k.seq),
                    page: stored.and_then(|k| k.page),
                },
            );
            plan.contacts.push(PlannedContact {
                contact,
                raw_hash: record.raw_hash,
                content_hash,
                change,
                seq,
            });
        }
        plan.deliveries = self
            .payloads
            .enabled()
            .into_iter()
            .map(|destination| {
                let payloads = plan
                    .contacts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.change != Change::RawOnly)
                    .map(|(i, c)| {
                        (
                            i,
                            self.payloads.target(destination, &c.contact, false).hash(),
                        )
                    })
                    .collect();
                DestinationPlan {
                    destination,
                    payloads,
                }
            })
            .collect();
        plan
    }
}

/// The record's id and what the store holds for it, when that is this very record, live:
/// then it is only sighted. A deleted contact sent again is normalized and planned like a
/// changed one, even when its record is what the store holds: what it becomes at a
/// destination may differ from what it became while deleted (docs/delivery.md#deletions).
fn unchanged<'k>(
    known: &'k HashMap<String, KnownContact>,
    record: &RawRecord<'_>,
    id: &Option<String>,
) -> Option<(&'k str, &'k KnownContact)> {
    let (id, k) = known.get_key_value(id.as_deref()?)?;
    (k.raw_hash == record.raw_hash && !k.deleted).then_some((id.as_str(), k))
}

/// The record's id as the store keys it, or None when only full normalization can say why not.
fn probe_id(raw: &str) -> Option<String> {
    // Fast path: a record that opens with a plain string id (the usual shape) is not scanned
    // to its end. A wrong guess here (a second "id" key later) cannot skip a change: the id
    // is only looked up, and a hit also needs the stored raw hash to equal this record's.
    if let Some(rest) = raw.strip_prefix(r#"{"id":""#)
        && let Some(end) = rest.find(['"', '\\'])
        && rest.as_bytes()[end] == b'"'
    {
        return ContactId::parse(&rest[..end])
            .ok()
            .map(|id| id.as_str().to_owned());
    }
    let probe: IdProbe = serde_json::from_str(raw).ok()?;
    let value: serde_json::Value = serde_json::from_str(probe.id?.get()).ok()?;
    ContactId::from_json(Some(&value))
        .ok()
        .map(|id| id.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::raw_hash;

    fn classifier(engagelab: bool) -> Classifier {
        // Through the config text, whose key names are the product's contract.
        let toml = format!(
            "[source]\nbase_url = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword = \"p\"\n\
             [database]\nurl = \"sqlite::memory:\"\n[omi]\nenabled = false\n\
             [engagelab]\nenabled = {engagelab}\nbase_url = \"http://127.0.0.1:1\"\n\
             api_key = \"k\"\napi_secret = \"s\"\n"
        );
        let settings = crate::config::Settings::from_toml(&toml, None).expect("minimal settings");
        Classifier {
            region: settings.normalize.default_region,
            payloads: Payloads::new(&settings),
        }
    }

    fn record(raw: &str) -> RawRecord<'_> {
        RawRecord {
            record: SourceRecord {
                raw,
                invalid_utf8: false,
            },
            raw_hash: raw_hash(raw),
        }
    }

    fn plan<'p>(
        c: &Classifier,
        records: &[RawRecord<'p>],
        known: HashMap<String, KnownContact>,
    ) -> PagePlan<'p> {
        let ids = c.ids(records);
        c.plan(records, &ids, known, &mut Normalizations::new())
    }

    /// What the store knows of [`ANN`] once a plan of it was written.
    fn ann_stored(c: &Classifier, deleted: bool) -> HashMap<String, KnownContact> {
        let first = plan(c, &[record(ANN)], HashMap::new());
        let stored = &first.contacts[0];
        HashMap::from([(
            "1".to_owned(),
            KnownContact {
                raw_hash: stored.raw_hash,
                content_hash: stored.content_hash,
                deleted,
                seq: Some(1),
                page: None,
            },
        )])
    }

    const ANN: &str = r#"{"id":"1","contactFirstName":"Ann","contactEmail":["ann@example.com"]}"#;
    const BOB: &str = r#"{"id":"2","contactFirstName":"Bob","phones":["6285782120717"]}"#;

    #[test]
    fn unknown_records_are_new_and_planned_for_every_enabled_destination() {
        let c = classifier(true);
        let records = [record(ANN), record(BOB)];
        let plan = plan(&c, &records, HashMap::new());
        assert_eq!(plan.records, 2);
        assert_eq!(plan.count(Change::New), 2);
        assert_eq!(plan.deliveries.len(), 1);
        let DestinationPlan {
            destination,
            payloads: hashes,
        } = &plan.deliveries[0];
        assert_eq!(*destination, Destination::Engagelab);
        assert_eq!(
            hashes.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert!(hashes.iter().all(|(_, h)| h.is_some()));
    }

    #[test]
    fn an_unchanged_raw_record_is_only_sighted() {
        let c = classifier(false);
        let again = plan(&c, &[record(ANN)], ann_stored(&c, false));
        assert_eq!(again.unchanged, vec!["1".to_owned()]);
        assert_eq!(
            again.sighted,
            vec![1],
            "seen by the number the lookup returned"
        );
        assert!(again.contacts.is_empty());
    }

    #[test]
    fn a_deleted_contact_sent_again_unchanged_comes_back_and_is_planned() {
        let c = classifier(true);
        let again = plan(&c, &[record(ANN)], ann_stored(&c, true));
        assert!(again.unchanged.is_empty());
        assert_eq!(again.contacts.len(), 1);
        assert_eq!(again.contacts[0].change, Change::Changed);
        assert_eq!(again.deliveries[0].payloads.len(), 1);
    }

    #[test]
    fn a_raw_change_that_keeps_the_content_is_stored_but_not_delivered() {
        let c = classifier(true);
        let known = ann_stored(&c, false);
        let with_unused_field =
            r#"{"id":"1","contactFirstName":"Ann","contactEmail":["ann@example.com"],"ignored":1}"#;
        let again = plan(&c, &[record(with_unused_field)], known);
        assert_eq!(again.contacts.len(), 1);
        assert_eq!(again.contacts[0].change, Change::RawOnly);
        assert!(again.deliveries[0].payloads.is_empty());
    }

    #[test]
    fn a_changed_name_is_changed_and_a_second_copy_compares_with_the_first() {
        let c = classifier(false);
        let known = ann_stored(&c, false);
        let renamed = r#"{"id":"1","contactFirstName":"Anna","contactEmail":["ann@example.com"]}"#;
        let again = plan(&c, &[record(renamed), record(renamed)], known);
        assert_eq!(again.contacts[0].change, Change::Changed);
        assert_eq!(
            again.unchanged,
            vec!["1".to_owned()],
            "the copy matches the first"
        );
        assert_eq!(
            again.sighted,
            vec![1],
            "the stored number carries over to the copy"
        );
    }

    #[test]
    fn a_number_is_established_only_for_ids_the_lookup_covered() {
        let c = classifier(false);
        let renamed = r#"{"id":"1","contactFirstName":"Anna","contactEmail":["ann@example.com"]}"#;
        let seqs = |records: &[RawRecord<'_>], ids: &[Option<String>], known| {
            let plan = c.plan(records, ids, known, &mut Normalizations::new());
            plan.contacts.iter().map(|p| p.seq).collect::<Vec<_>>()
        };
        let (ann, bob) = (record(ANN), record(BOB));
        let looked_up = c.ids(&[ann, bob]);
        assert_eq!(
            seqs(&[ann, bob], &looked_up, HashMap::new()),
            vec![Seq::Next, Seq::Next],
            "looked up and absent: each takes the next number"
        );
        assert_eq!(
            seqs(&[ann, bob], &[None, looked_up[1].clone()], HashMap::new()),
            vec![Seq::Unknown, Seq::Next],
            "an id the lookup did not cover may be stored: the write asks"
        );
        let renamed = record(renamed);
        assert_eq!(
            seqs(&[renamed], &c.ids(&[renamed]), ann_stored(&c, false)),
            vec![Seq::Stored(1)]
        );
        let bob_again = record(r#"{"id":"2","contactFirstName":"Robert"}"#);
        assert_eq!(
            seqs(&[bob, bob_again], &c.ids(&[bob, bob_again]), HashMap::new()),
            vec![Seq::Next, Seq::Unknown],
            "a second copy of a new contact has no number until the first is written"
        );
    }

    #[test]
    fn the_id_probe_reads_a_leading_string_id_as_normalization_does() {
        for raw in [
            r#"{"id":" 7a ","x":1}"#,
            r#"{"id":"7\u0061","x":1}"#,
            r#"{"x":1,"id":"7a"}"#,
            r#"{"id":7,"x":1}"#,
        ] {
            let value: serde_json::Value = serde_json::from_str(raw).unwrap();
            let normalized = ContactId::from_json(value.get("id")).unwrap();
            assert_eq!(probe_id(raw).as_deref(), Some(normalized.as_str()), "{raw}");
        }
        assert_eq!(probe_id(r#"{"id":"  ","x":1}"#), None);
    }

    #[test]
    fn records_without_an_id_or_with_bad_bytes_are_quarantined_with_a_reason() {
        let c = classifier(false);
        let mut bad_bytes = record(r#"{"id":"3"}"#);
        bad_bytes.record.invalid_utf8 = true;
        let records = [
            record(r#"{"contactFirstName":"NoId"}"#),
            bad_bytes,
            record("[1]"),
        ];
        let plan = plan(&c, &records, HashMap::new());
        assert!(plan.contacts.is_empty() && plan.unchanged.is_empty());
        let reasons: Vec<&str> = plan.quarantined.iter().map(|q| q.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3);
        assert!(reasons[1].contains("not UTF-8"), "{reasons:?}");
        assert!(reasons[2].contains("not an object"), "{reasons:?}");
        assert!(!reasons[0].is_empty());
    }
}
