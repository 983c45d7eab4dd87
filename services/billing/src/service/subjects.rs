//! Which partner a usage event's `subject` names, remembered for a few seconds: every
//! `POST /v1/events` request names its partners, and asking the billing store each time cost
//! a database round trip per request (docs/events.md, "subject").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a subject's partner is remembered. A changed or cleared `external_id` is seen at
/// once by the process that changed it, and by other billing replicas within this time.
pub const SUBJECT_TTL: Duration = Duration::from_secs(10);

/// The most subjects remembered; past it the memory starts afresh (a company with more
/// partners than this posting at once pays a store look-up per new subject, as without it).
const MAX_SUBJECTS: usize = 100_000;

/// Subjects resolved to a partner id, with when. Only found partners are remembered: a subject
/// that names none is looked up again next time (its partner may be created meanwhile).
#[derive(Default)]
pub struct SubjectCache {
    known: Mutex<HashMap<String, (String, Instant)>>,
}

impl SubjectCache {
    /// The partner id `subject` resolved to less than [`SUBJECT_TTL`] ago.
    pub fn get(&self, subject: &str, now: Instant) -> Option<String> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(subject)
            .filter(|(_, at)| now.saturating_duration_since(*at) < SUBJECT_TTL)
            .map(|(partner, _)| partner.clone())
    }

    pub fn put(&self, subject: &str, partner: &str, now: Instant) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_SUBJECTS && !known.contains_key(subject) {
            known.clear();
        }
        known.insert(subject.to_string(), (partner.to_string(), now));
    }

    /// Forgets every subject: an external id changed in this process.
    pub fn clear(&self) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_remembered_for_its_ttl_and_forgotten_on_clear() {
        let cache = SubjectCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.get("cust-1", t0), None);
        cache.put("cust-1", "prt_a", t0);
        assert_eq!(
            cache.get("cust-1", t0 + SUBJECT_TTL / 2).as_deref(),
            Some("prt_a")
        );
        assert_eq!(cache.get("cust-1", t0 + SUBJECT_TTL), None);
        cache.put("cust-1", "prt_a", t0);
        cache.clear();
        assert_eq!(cache.get("cust-1", t0), None);
    }

    #[test]
    fn a_full_cache_starts_afresh_instead_of_growing() {
        let cache = SubjectCache::default();
        let t0 = Instant::now();
        for i in 0..MAX_SUBJECTS {
            cache.put(&format!("s{i}"), "prt_a", t0);
        }
        cache.put("one-more", "prt_b", t0);
        assert_eq!(cache.get("s0", t0), None);
        assert_eq!(cache.get("one-more", t0).as_deref(), Some("prt_b"));
        assert_eq!(cache.known.lock().unwrap().len(), 1);
    }
}
