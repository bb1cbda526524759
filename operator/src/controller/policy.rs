//! What the installation allows beyond the schema: the images a GeoDatabase may run
//! (`geodb operator --allowed-images`, the chart's `imageAllowlist`). The schema cannot
//! know them; a GeoDatabase naming another image is refused before anything is applied.

use crate::api::GeoDatabaseSpec;

/// What this installation of the operator was given (command line, chart values).
#[derive(Clone, Debug, Default)]
pub struct Installation {
    /// Image prefixes a GeoDatabase may run (empty: any).
    pub allowed_images: Vec<String>,
    /// The operator's own namespace, admitted by the GeoDatabases' NetworkPolicies.
    pub operator_namespace: Option<String>,
}

/// The problem with `spec`'s image under `allowed` (prefixes; empty: any image).
pub fn image_problem(spec: &GeoDatabaseSpec, allowed: &[String]) -> Option<String> {
    let image = spec.image();
    if allowed.is_empty()
        || allowed
            .iter()
            .any(|prefix| image.starts_with(prefix.as_str()))
    {
        return None;
    }
    let field = match spec.image {
        Some(_) => "spec.image",
        None => "spec.image (unset, so the default)",
    };
    Some(format!(
        "{field} {image:?} is not allowed by this installation; allowed images start with {}",
        allowed
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(" or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DEFAULT_IMAGE;

    fn spec(image: Option<&str>) -> GeoDatabaseSpec {
        let mut spec: GeoDatabaseSpec =
            serde_json::from_value(serde_json::json!({"storage": {"size": "1Gi"}})).unwrap();
        spec.image = image.map(str::to_owned);
        spec
    }

    #[test]
    fn any_image_without_a_list() {
        assert_eq!(image_problem(&spec(Some("evil/pg:1")), &[]), None);
    }

    #[test]
    fn images_by_prefix() {
        let allowed = vec![
            "registry.example.com/geodb/".to_owned(),
            "geodb/".to_owned(),
        ];
        assert_eq!(
            image_problem(
                &spec(Some("registry.example.com/geodb/postgis:17")),
                &allowed
            ),
            None
        );
        assert_eq!(
            image_problem(&spec(None), &allowed),
            None,
            "{DEFAULT_IMAGE}"
        );
        let refused = image_problem(&spec(Some("docker.io/evil/pg:1")), &allowed).unwrap();
        assert!(
            refused.starts_with("spec.image \"docker.io/evil/pg:1\" is not allowed"),
            "{refused}"
        );
        assert!(refused.contains("\"geodb/\""), "{refused}");
        let default = image_problem(&spec(None), &["registry.example.com/".to_owned()]).unwrap();
        assert!(default.contains("unset, so the default"), "{default}");
    }
}
