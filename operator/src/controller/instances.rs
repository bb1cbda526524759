//! Which instances should exist and which one is the primary. Pure.

use crate::names::Names;

/// Instance names to run (ordinal order) and the primary among them.
///
/// The primary is kept whatever the count: a scale-down removes the highest-ordinal
/// replicas, never the primary. New instances take the lowest free ordinals.
pub fn plan(
    names: &Names,
    wanted: usize,
    existing: &[String],
    current_primary: Option<&str>,
) -> (Vec<String>, String) {
    let wanted = wanted.max(1);
    let primary = current_primary
        .map(str::to_owned)
        .unwrap_or_else(|| names.instance(1));
    let mut existing: Vec<(u32, String)> = existing
        .iter()
        .filter(|name| **name != primary)
        .filter_map(|name| names.ordinal(name).map(|o| (o, name.clone())))
        .collect();
    existing.sort();
    let mut chosen = vec![primary.clone()];
    chosen.extend(existing.into_iter().map(|(_, name)| name).take(wanted - 1));
    let mut ordinal = 1;
    while chosen.len() < wanted {
        let candidate = names.instance(ordinal);
        if !chosen.contains(&candidate) {
            chosen.push(candidate);
        }
        ordinal += 1;
    }
    chosen.sort_by_key(|name| names.ordinal(name).unwrap_or(u32::MAX));
    (chosen, primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            cluster: "geo".into(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn new_cluster_starts_at_one() {
        let (instances, primary) = plan(&names(), 3, &[], None);
        assert_eq!(instances, strings(&["geo-1", "geo-2", "geo-3"]));
        assert_eq!(primary, "geo-1");
    }

    #[test]
    fn scale_down_keeps_the_primary() {
        let existing = strings(&["geo-1", "geo-2", "geo-3"]);
        let (instances, primary) = plan(&names(), 1, &existing, Some("geo-3"));
        assert_eq!(instances, strings(&["geo-3"]));
        assert_eq!(primary, "geo-3");
        let (instances, _) = plan(&names(), 2, &existing, Some("geo-3"));
        assert_eq!(instances, strings(&["geo-1", "geo-3"]));
    }

    #[test]
    fn scale_up_fills_gaps() {
        let existing = strings(&["geo-1", "geo-3"]);
        let (instances, _) = plan(&names(), 4, &existing, Some("geo-1"));
        assert_eq!(instances, strings(&["geo-1", "geo-2", "geo-3", "geo-4"]));
    }

    #[test]
    fn zero_means_one() {
        let (instances, _) = plan(&names(), 0, &[], None);
        assert_eq!(instances.len(), 1);
    }
}
