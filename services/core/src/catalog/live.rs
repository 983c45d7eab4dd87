//! The catalog in force, replaceable while it serves: readers take a snapshot (an `Arc`), and a
//! reload swaps the whole catalog at once, so nothing ever sees half of one, and work that took
//! a snapshot (a call, an invoice run) finishes on the catalog it started with.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Catalog;

pub struct LiveCatalog {
    current: ArcSwap<Catalog>,
}

impl LiveCatalog {
    pub fn new(catalog: Catalog) -> LiveCatalog {
        LiveCatalog {
            current: ArcSwap::from_pointee(catalog),
        }
    }

    /// A live catalog starting with a catalog already shared.
    pub fn shared(catalog: Arc<Catalog>) -> LiveCatalog {
        LiveCatalog {
            current: ArcSwap::new(catalog),
        }
    }

    /// The catalog in force now: a snapshot that later reloads do not change.
    pub fn get(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// The version in force.
    pub fn version(&self) -> String {
        self.current.load().version.clone()
    }

    /// Puts `next` in force; answers the catalog it replaces.
    pub fn replace(&self, next: Arc<Catalog>) -> Arc<Catalog> {
        self.current.swap(next)
    }
}

impl From<Catalog> for LiveCatalog {
    fn from(c: Catalog) -> LiveCatalog {
        LiveCatalog::new(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(fee: &str) -> Catalog {
        let text = format!(
            "[[plan]]\nid = \"p\"\nname = \"P\"\ncurrency = \"EUR\"\n\
             period = {{ every = \"month\", anchor_day = 1 }}\nbase_fee = \"{fee}\"\n"
        );
        Catalog::parse("catalog.toml", &text, &|_| None).unwrap()
    }

    #[test]
    fn a_snapshot_outlives_the_reload_that_replaces_it() {
        let live = LiveCatalog::new(catalog("1.00"));
        let before = live.get();
        let old = live.replace(Arc::new(catalog("2.00")));
        assert_eq!(old.version, before.version);
        assert_eq!(before.plans[0].base_fee.to_string(), "1.00");
        assert_eq!(live.get().plans[0].base_fee.to_string(), "2.00");
        assert_ne!(live.version(), before.version);
    }
}
