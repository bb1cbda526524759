//! The five queries of the benchmark, the index each must use, and their random
//! parameters (points in Ho Chi Minh City or Hanoi, words of the seeded names).
//!
//! Distances are exact meters on the spheroid (`geography`), but the radius searches do
//! not cast the column: `ST_DWithin(geom::geography, ..)` alone cannot use the GIST
//! index on `geom` (the index is on the geometry, not on the cast). Each adds
//! `geom && ST_Expand(point, degrees)`, a box in degrees that holds the whole circle
//! ([`degrees_within`]): the GIST index finds the few candidates, the exact test keeps
//! those within the distance. This needs no second index (a GIST on `(geom::geography)`
//! would double the index's size and every insert's work for the same answer).

use rand::rngs::StdRng;
use rand::Rng as _;
use tokio_postgres::types::ToSql;

use crate::jobs::seed::{ADJECTIVES, CITIES, HO_CHI_MINH_CITY, KINDS, STREETS};

pub const GIST: &str = "locations_geom_idx";
pub const GIN: &str = "locations_search_idx";
pub const IMAGES_FK: &str = "images_location_id_idx";

/// The radius of the radius search and of the join's.
pub const RADIUS_M: f64 = 1000.0;
pub const JOIN_RADIUS_M: f64 = 500.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Locations within 1 km of a point.
    Radius,
    /// Locations in a 1-2 km box, at most 100.
    Bbox,
    /// The 10 locations nearest a point.
    Knn,
    /// Locations whose name or description has every word, at most 20.
    FullText,
    /// The images of the locations within 500 m of a point.
    Join,
}

pub const ALL: [Query; 5] = [
    Query::Radius,
    Query::Bbox,
    Query::Knn,
    Query::FullText,
    Query::Join,
];

/// A query's parameters, bound with the extended protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    Floats(Vec<f64>),
    Text(String),
}

impl Params {
    pub fn as_sql(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Params::Floats(values) => values.iter().map(|v| v as &(dyn ToSql + Sync)).collect(),
            Params::Text(text) => vec![text as &(dyn ToSql + Sync)],
        }
    }
}

impl Query {
    /// Its name in the report and in the figures' keys.
    pub fn name(self) -> &'static str {
        match self {
            Query::Radius => "radius_1km",
            Query::Bbox => "bbox",
            Query::Knn => "knn10",
            Query::FullText => "fulltext",
            Query::Join => "join_images",
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            Query::Radius => {
                "SELECT id FROM locations \
                 WHERE geom && ST_Expand(ST_SetSRID(ST_MakePoint($1, $2), 4326), $3) \
                 AND ST_DWithin(geom::geography, \
                     ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, 1000)"
            }
            Query::Bbox => {
                "SELECT id FROM locations \
                 WHERE geom && ST_MakeEnvelope($1, $2, $3, $4, 4326) LIMIT 100"
            }
            Query::Knn => {
                "SELECT id FROM locations \
                 ORDER BY geom <-> ST_SetSRID(ST_MakePoint($1, $2), 4326) LIMIT 10"
            }
            // The expression of the GIN index, word for word (V5__indexes.sql).
            Query::FullText => {
                "SELECT id FROM locations \
                 WHERE to_tsvector('simple', name || ' ' || coalesce(description, '')) \
                 @@ plainto_tsquery('simple', $1) LIMIT 20"
            }
            Query::Join => {
                "SELECT i.id, i.url FROM locations l JOIN images i ON i.location_id = l.id \
                 WHERE l.geom && ST_Expand(ST_SetSRID(ST_MakePoint($1, $2), 4326), $3) \
                 AND ST_DWithin(l.geom::geography, \
                     ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, 500)"
            }
        }
    }

    /// The indexes its plan must use (each by its "Index Name").
    pub fn indexes(self) -> &'static [&'static str] {
        match self {
            Query::Radius | Query::Bbox | Query::Knn => &[GIST],
            Query::FullText => &[GIN],
            Query::Join => &[GIST, IMAGES_FK],
        }
    }

    /// Parameters for one run.
    pub fn random(self, rng: &mut StdRng) -> Params {
        let city = CITIES[rng.random_range(0..CITIES.len())];
        let lon = rng.random_range(city.lon.0..city.lon.1);
        let lat = rng.random_range(city.lat.0..city.lat.1);
        match self {
            Query::Bbox => {
                // 0.01-0.02 degrees: 1-2 km in both cities.
                let (w, h) = (rng.random_range(0.01..0.02), rng.random_range(0.01..0.02));
                Params::Floats(vec![lon, lat, lon + w, lat + h])
            }
            Query::FullText => {
                let adjective = pick(rng, &ADJECTIVES);
                let kind = KINDS[rng.random_range(0..KINDS.len())].0;
                Params::Text(format!("{adjective} {kind} {}", pick(rng, &STREETS)))
            }
            _ => self.at(lon, lat),
        }
    }

    /// Parameters for the plan check: the middle of Ho Chi Minh City.
    pub fn sample(self) -> Params {
        let lon = (HO_CHI_MINH_CITY.lon.0 + HO_CHI_MINH_CITY.lon.1) / 2.0;
        let lat = (HO_CHI_MINH_CITY.lat.0 + HO_CHI_MINH_CITY.lat.1) / 2.0;
        match self {
            Query::Bbox => Params::Floats(vec![lon, lat, lon + 0.015, lat + 0.015]),
            Query::FullText => {
                Params::Text(format!("{} {} {}", ADJECTIVES[0], KINDS[0].0, STREETS[0]))
            }
            _ => self.at(lon, lat),
        }
    }

    fn at(self, lon: f64, lat: f64) -> Params {
        match self {
            Query::Radius => Params::Floats(vec![lon, lat, degrees_within(RADIUS_M, lat)]),
            Query::Join => Params::Floats(vec![lon, lat, degrees_within(JOIN_RADIUS_M, lat)]),
            _ => Params::Floats(vec![lon, lat]),
        }
    }
}

fn pick(rng: &mut StdRng, words: &[&'static str]) -> &'static str {
    words[rng.random_range(0..words.len())]
}

/// Degrees around a point at latitude `lat` that hold every point within `meters` of it
/// on WGS 84: a degree of latitude is at least 110,574 m, one of longitude at least
/// 110,574 m times the cosine of the latitude, taken at the circle's edge nearer the
/// pole; 1% more for rounding (pure).
pub fn degrees_within(meters: f64, lat: f64) -> f64 {
    const MIN_DEGREE_M: f64 = 110_574.0;
    let edge = (lat.abs() + meters / MIN_DEGREE_M).min(89.9);
    meters / (MIN_DEGREE_M * edge.to_radians().cos()) * 1.01
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn the_box_holds_the_circle() {
        // A degree of longitude at 21.07° N is 111,320·cos(21.07°) ≈ 103,880 m.
        let hanoi = degrees_within(1000.0, 21.07);
        assert!(hanoi > 1000.0 / 103_880.0, "{hanoi}");
        assert!(hanoi < 0.0102, "{hanoi}");
        let hcmc = degrees_within(1000.0, 10.7);
        assert!(
            hcmc > 1000.0 / (111_320.0 * 10.7f64.to_radians().cos()),
            "{hcmc}"
        );
        assert!(hcmc < hanoi);
        // A degree of latitude is 110,574 m at the equator, the shortest.
        assert!(degrees_within(1000.0, 0.0) > 1000.0 / 110_574.0);
        assert!(degrees_within(1000.0, 90.0).is_finite());
    }

    #[test]
    fn random_parameters_are_in_a_city_and_fit_the_sql() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            for query in ALL {
                let params = query.random(&mut rng);
                let placeholders = (1..=9)
                    .filter(|n| query.sql().contains(&format!("${n}")))
                    .count();
                assert_eq!(params.as_sql().len(), placeholders, "{query:?}");
                if let Params::Floats(v) = &params {
                    let (lon, lat) = (v[0], v[1]);
                    assert!(
                        CITIES.iter().any(|c| (c.lon.0..c.lon.1).contains(&lon)
                            && (c.lat.0..c.lat.1).contains(&lat)),
                        "{query:?} {v:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn full_text_words_come_from_the_names() {
        let mut rng = StdRng::seed_from_u64(2);
        let Params::Text(words) = Query::FullText.random(&mut rng) else {
            panic!("not text");
        };
        assert!(ADJECTIVES.iter().any(|a| words.starts_with(a)), "{words}");
        assert!(Query::FullText
            .sql()
            .contains("to_tsvector('simple', name || ' ' || coalesce(description, ''))"));
    }
}
