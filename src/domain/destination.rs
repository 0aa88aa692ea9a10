//! The destinations a contact is delivered to, named once: the same lower-case text in the
//! database, on the command line, in JSON output and in metric labels.

use std::cmp::Ordering;

/// A destination, stored as `omi` / `engagelab` (the `deliveries.destination` column).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    sqlx::Type,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[sqlx(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum Destination {
    Omi,
    Engagelab,
}

impl Destination {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Omi => "omi",
            Self::Engagelab => "engagelab",
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ordered by name, so maps keyed by destination (`status`) list them as the text keys of
/// earlier versions did.
impl Ord for Destination {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for Destination {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::Destination;

    /// The enum is bound and read as the very text earlier versions stored, so existing
    /// databases need no migration.
    #[tokio::test]
    async fn destination_round_trips_through_sqlite_as_the_old_text() {
        let (_dir, store) = crate::store::temp_store().await;
        let pool = store.pool();
        for (destination, text) in [
            (Destination::Omi, "omi"),
            (Destination::Engagelab, "engagelab"),
        ] {
            let stored: String = sqlx::query_scalar("SELECT ?1")
                .bind(destination)
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(stored, text);
            let read: Destination = sqlx::query_scalar("SELECT ?1")
                .bind(text)
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(read, destination);
        }
        let unknown = sqlx::query_scalar::<_, Destination>("SELECT 'crm'")
            .fetch_one(pool)
            .await;
        assert!(unknown.is_err(), "{unknown:?}");
        store.close().await;
    }

    #[test]
    fn json_and_cli_names_are_the_stored_text() {
        use clap::ValueEnum;
        for d in Destination::value_variants() {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
            assert_eq!(d.to_possible_value().unwrap().get_name(), d.as_str());
            assert_eq!(Destination::from_str(d.as_str(), false), Ok(*d));
        }
    }
}
