//! Which indexes an `EXPLAIN (FORMAT JSON)` plan uses: every node's "Index Name", its
//! children under "Plans" (sub-plans and init-plans are there too) (pure).

use std::collections::BTreeSet;

use serde_json::Value;

/// The names of the indexes the plan's nodes scan. `explain` is the whole output: an
/// array holding one object with "Plan".
pub fn indexes_used(explain: &Value) -> Result<BTreeSet<String>, String> {
    let root = explain
        .as_array()
        .and_then(|a| a.first())
        .and_then(|o| o.get("Plan"))
        .ok_or("no \"Plan\" in the EXPLAIN output")?;
    let mut found = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        if let Some(name) = node.get("Index Name").and_then(Value::as_str) {
            found.insert(name.to_owned());
        }
        if let Some(children) = node.get("Plans").and_then(Value::as_array) {
            stack.extend(children);
        }
    }
    Ok(found)
}

/// Those of `wanted` the plan does not use.
pub fn missing(explain: &Value, wanted: &[&'static str]) -> Result<Vec<&'static str>, String> {
    let used = indexes_used(explain)?;
    Ok(wanted
        .iter()
        .copied()
        .filter(|w| !used.contains(*w))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A radius search on PostgreSQL 15 with the GIST index.
    const RADIUS: &str = r#"[{"Plan": {"Node Type": "Bitmap Heap Scan", "Relation Name": "locations",
        "Actual Rows": 230, "Recheck Cond": "(geom && '...'::geometry)",
        "Filter": "st_dwithin((geom)::geography, '...'::geography, '1000'::double precision, true)",
        "Plans": [{"Node Type": "Bitmap Index Scan", "Parent Relationship": "Outer",
            "Index Name": "locations_geom_idx", "Index Cond": "(geom && '...'::geometry)"}]},
        "Planning Time": 0.2, "Execution Time": 0.9}]"#;

    /// The same without it.
    const SEQ: &str = r#"[{"Plan": {"Node Type": "Seq Scan", "Relation Name": "locations",
        "Actual Rows": 230, "Filter": "..."}, "Execution Time": 180.0}]"#;

    /// The join: a nested loop over the GIST scan, the images by their foreign key.
    const JOIN: &str = r#"[{"Plan": {"Node Type": "Nested Loop", "Plans": [
        {"Node Type": "Bitmap Heap Scan", "Relation Name": "locations", "Plans": [
            {"Node Type": "Bitmap Index Scan", "Index Name": "locations_geom_idx"}]},
        {"Node Type": "Index Scan", "Relation Name": "images",
            "Index Name": "images_location_id_idx"}]}}]"#;

    /// A hash join that scans images whole.
    const HASH_JOIN: &str = r#"[{"Plan": {"Node Type": "Hash Join", "Plans": [
        {"Node Type": "Seq Scan", "Relation Name": "images"},
        {"Node Type": "Hash", "Plans": [{"Node Type": "Index Scan",
            "Index Name": "locations_geom_idx"}]}]}}]"#;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn finds_the_index_of_a_child_node() {
        let plan = parse(RADIUS);
        assert_eq!(
            indexes_used(&plan).unwrap().into_iter().collect::<Vec<_>>(),
            ["locations_geom_idx"]
        );
        assert!(missing(&plan, &["locations_geom_idx"]).unwrap().is_empty());
    }

    #[test]
    fn a_sequential_scan_misses_the_index() {
        let plan = parse(SEQ);
        assert!(indexes_used(&plan).unwrap().is_empty());
        assert_eq!(
            missing(&plan, &["locations_geom_idx"]).unwrap(),
            ["locations_geom_idx"]
        );
    }

    #[test]
    fn a_join_needs_both_indexes() {
        let wanted = ["locations_geom_idx", "images_location_id_idx"];
        assert!(missing(&parse(JOIN), &wanted).unwrap().is_empty());
        assert_eq!(
            missing(&parse(HASH_JOIN), &wanted).unwrap(),
            ["images_location_id_idx"]
        );
    }

    #[test]
    fn not_a_plan() {
        assert!(indexes_used(&parse("{}")).is_err());
        assert!(indexes_used(&parse("[{}]")).is_err());
    }
}
