//! The rows of one seed batch, written straight into `COPY ... (FORMAT binary)` buffers:
//! the server parses no text, and the points arrive as EWKB, which PostGIS's binary
//! input reads as is.

use rand::rngs::StdRng;
use rand::Rng;

/// A city's bounds: longitudes, latitudes (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub name: &'static str,
    /// What the descriptions call it (one word: a word less to index per row).
    pub label: &'static str,
    pub lon: (f64, f64),
    pub lat: (f64, f64),
}

// The bounding boxes of the two municipalities' administrative areas (about 6,400 and
// 7,100 km²), not of their inner districts: at 1,000,000 locations that is some 75 per
// km², about 230 in a 1 km circle.
pub const HO_CHI_MINH_CITY: Bounds = Bounds {
    name: "Ho Chi Minh City",
    label: "Saigon",
    lon: (106.36, 107.03),
    lat: (10.37, 11.16),
};
pub const HANOI: Bounds = Bounds {
    name: "Hanoi",
    label: "Hanoi",
    lon: (105.28, 106.02),
    lat: (20.56, 21.39),
};
pub const CITIES: [Bounds; 2] = [HO_CHI_MINH_CITY, HANOI];

pub const CATEGORIES: [&str; 8] = [
    "restaurant",
    "cafe",
    "park",
    "museum",
    "market",
    "temple",
    "shop",
    "hotel",
];
/// The statuses of `V2__locations.sql`'s CHECK, with their weights out of 100.
pub const STATUSES: [(&str, u32); 3] = [("approved", 60), ("pending", 25), ("rejected", 15)];

/// The words of a name, `{adjective} {kind} {street}` (what searches look for).
pub const ADJECTIVES: [&str; 12] = [
    "Quiet",
    "Golden",
    "Old",
    "Little",
    "Green",
    "Riverside",
    "Hidden",
    "Lotus",
    "Red",
    "Lucky",
    "Bamboo",
    "Sunny",
];
/// Kinds of places, each with its category.
pub const KINDS: [(&str, &str); 16] = [
    ("Pho", "restaurant"),
    ("Banh Mi", "restaurant"),
    ("Noodle House", "restaurant"),
    ("Coffee", "cafe"),
    ("Tea House", "cafe"),
    ("Garden", "park"),
    ("Park", "park"),
    ("Gallery", "museum"),
    ("Museum", "museum"),
    ("Market", "market"),
    ("Night Market", "market"),
    ("Pagoda", "temple"),
    ("Temple", "temple"),
    ("Bookstore", "shop"),
    ("Bakery", "shop"),
    ("Guesthouse", "hotel"),
];
pub const STREETS: [&str; 10] = [
    "Nguyen Hue",
    "Le Loi",
    "Dong Khoi",
    "Hang Bac",
    "Ly Thai To",
    "Pasteur",
    "Hai Ba Trung",
    "Tran Hung Dao",
    "Ba Trieu",
    "Pham Ngu Lao",
];
const PRAISE: [&str; 10] = [
    "famous broth",
    "strong iced coffee",
    "old shade trees",
    "open late",
    "lake view",
    "student favourite",
    "rooftop view",
    "fresh spring rolls",
    "quiet mornings",
    "busy weekends",
];
const REASONS: [&str; 4] = [
    "looks good",
    "duplicate of another place",
    "photos do not match",
    "verified by a visit",
];

/// Owners `user0`..`user{OWNERS-1}`, moderators `mod0`.. likewise.
const OWNERS: u32 = 5_000;
const MODERATORS: u32 = 20;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;
const YEAR_US: i64 = 365 * 86_400 * 1_000_000;

/// The binary COPY buffers of one batch, for `COLUMNS` of each table.
#[derive(Debug, Default)]
pub struct Batch {
    pub locations: Vec<u8>,
    pub images: Vec<u8>,
    pub moderation_logs: Vec<u8>,
    pub image_count: u64,
    pub log_count: u64,
}

/// The columns each buffer holds, in order.
pub const LOCATION_COLUMNS: &str =
    "id, name, description, category, status, owner, geom, created_at";
pub const IMAGE_COLUMNS: &str = "location_id, url, owner, created_at";
pub const LOG_COLUMNS: &str = "location_id, action, moderator, reason, created_at";

/// Where a batch sits in the whole seed: creation times grow with the position over
/// the year before now, as a real table's do with its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The position of the batch's first location.
    pub first: u64,
    /// How many locations the seed loads.
    pub count: u64,
}

/// A place before it is written: its city, its point, its order in the batch.
struct Place {
    key: u64,
    city: Bounds,
    lon: f64,
    lat: f64,
}

/// Rows for the locations `ids` (each with 0-2 images, about one on average, and a
/// moderation log when it was approved or rejected), half in each city. Within a batch
/// the places are ordered along a Z-curve (each GIST insert lands near the previous
/// one) and `created_at` grows with the id (B-Tree inserts append); `now_us` is Unix
/// microseconds.
pub fn generate(rng: &mut StdRng, ids: &[i64], span: Span, now_us: i64) -> Batch {
    let mut batch = Batch {
        locations: header(ids.len() * 160),
        images: header(ids.len() * 90),
        moderation_logs: header(ids.len() * 60),
        ..Batch::default()
    };
    let now = now_us - PG_EPOCH_US;
    let step = YEAR_US / i64::try_from(span.count.max(1)).unwrap_or(i64::MAX);
    let first = i64::try_from(span.first).unwrap_or(0);
    let mut places: Vec<Place> = (0..ids.len()).map(|i| place(rng, i % 2)).collect();
    places.sort_unstable_by_key(|p| p.key);
    for (i, (&id, place)) in ids.iter().zip(places).enumerate() {
        let position = first + i64::try_from(i).unwrap_or(0);
        let created =
            now - YEAR_US + position.saturating_mul(step) + rng.random_range(0..step.max(1));
        let owner = rng.random_range(0..OWNERS);
        let status = pick_status(rng.random_range(0..100));
        location(
            &mut batch.locations,
            rng,
            id,
            &place,
            status,
            owner,
            created,
        );
        for n in 0..rng.random_range(0..3u32) {
            let at = created + rng.random_range(0..(now - created).max(1));
            row(&mut batch.images, 4);
            int8(&mut batch.images, id);
            text(&mut batch.images, |b| {
                write(b, format_args!("https://img.geodb.example/{id}/{n}.jpg"))
            });
            text(&mut batch.images, |b| write(b, format_args!("user{owner}")));
            int8(&mut batch.images, at);
            batch.image_count += 1;
        }
        if status != "pending" {
            moderation(&mut batch.moderation_logs, rng, id, status, created, now);
            batch.log_count += 1;
        }
    }
    for buf in [
        &mut batch.locations,
        &mut batch.images,
        &mut batch.moderation_logs,
    ] {
        buf.extend_from_slice(&(-1i16).to_be_bytes());
    }
    batch
}

/// A random point in city `which`, keyed by the city, then its Z-order.
fn place(rng: &mut StdRng, which: usize) -> Place {
    let city = CITIES[which];
    let (x, y) = (rng.random::<f64>(), rng.random::<f64>());
    let lon = (city.lon.0 + x * (city.lon.1 - city.lon.0)).min(city.lon.1);
    let lat = (city.lat.0 + y * (city.lat.1 - city.lat.0)).min(city.lat.1);
    let quantize = |v: f64| (v * 65_535.0) as u32;
    Place {
        key: ((which as u64) << 32) | u64::from(z_order(quantize(x), quantize(y))),
        city,
        lon,
        lat,
    }
}

/// The bits of `x` and `y` (16 each) interleaved.
fn z_order(x: u32, y: u32) -> u32 {
    let spread = |v: u32| {
        let mut v = v & 0xffff;
        v = (v | (v << 8)) & 0x00ff_00ff;
        v = (v | (v << 4)) & 0x0f0f_0f0f;
        v = (v | (v << 2)) & 0x3333_3333;
        (v | (v << 1)) & 0x5555_5555
    };
    spread(x) | (spread(y) << 1)
}

fn pick_status(roll: u32) -> &'static str {
    let mut left = roll;
    for (status, weight) in STATUSES {
        if left < weight {
            return status;
        }
        left -= weight;
    }
    STATUSES[0].0
}

fn location(
    buf: &mut Vec<u8>,
    rng: &mut StdRng,
    id: i64,
    place: &Place,
    status: &str,
    owner: u32,
    created: i64,
) {
    let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let (kind, category) = KINDS[rng.random_range(0..KINDS.len())];
    let street = STREETS[rng.random_range(0..STREETS.len())];
    let praise = PRAISE[rng.random_range(0..PRAISE.len())];
    row(buf, 8);
    int8(buf, id);
    text(buf, |b| write(b, format_args!("{adjective} {kind}")));
    text(buf, |b| {
        write(b, format_args!("{street}, {}: {praise}", place.city.label))
    });
    text(buf, |b| b.extend_from_slice(category.as_bytes()));
    text(buf, |b| b.extend_from_slice(status.as_bytes()));
    text(buf, |b| write(b, format_args!("user{owner}")));
    point(buf, place.lon, place.lat);
    int8(buf, created);
}

fn moderation(buf: &mut Vec<u8>, rng: &mut StdRng, id: i64, status: &str, created: i64, now: i64) {
    let at = created + rng.random_range(0..(now - created).max(1));
    let action = if status == "approved" {
        "approve"
    } else {
        "reject"
    };
    let moderator = rng.random_range(0..MODERATORS);
    let reason = REASONS[rng.random_range(0..REASONS.len())];
    row(buf, 5);
    int8(buf, id);
    text(buf, |b| b.extend_from_slice(action.as_bytes()));
    text(buf, |b| write(b, format_args!("mod{moderator}")));
    text(buf, |b| b.extend_from_slice(reason.as_bytes()));
    int8(buf, at);
}

/// The binary COPY signature, no flags, no header extension.
fn header(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(capacity + 19);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf
}

fn row(buf: &mut Vec<u8>, fields: i16) {
    buf.extend_from_slice(&fields.to_be_bytes());
}

/// An int8, or a timestamptz (microseconds since 2000-01-01).
fn int8(buf: &mut Vec<u8>, value: i64) {
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&value.to_be_bytes());
}

/// A text field written by `fill`, its length set afterwards.
fn text(buf: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&0i32.to_be_bytes());
    fill(buf);
    let len = i32::try_from(buf.len() - at - 4).unwrap_or(i32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn write(buf: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = buf.write_fmt(args);
}

/// `SRID=4326;POINT(lon lat)` as little-endian EWKB.
fn point(buf: &mut Vec<u8>, lon: f64, lat: f64) {
    buf.extend_from_slice(&25i32.to_be_bytes());
    buf.push(1);
    buf.extend_from_slice(&0x2000_0001u32.to_le_bytes());
    buf.extend_from_slice(&4326u32.to_le_bytes());
    buf.extend_from_slice(&lon.to_le_bytes());
    buf.extend_from_slice(&lat.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_category_has_kinds() {
        for category in CATEGORIES {
            assert!(KINDS.iter().any(|(_, c)| *c == category), "{category}");
        }
        assert!(KINDS.iter().all(|(_, c)| CATEGORIES.contains(c)));
    }

    #[test]
    fn statuses_follow_their_weights() {
        assert_eq!(pick_status(0), "approved");
        assert_eq!(pick_status(59), "approved");
        assert_eq!(pick_status(60), "pending");
        assert_eq!(pick_status(85), "rejected");
        assert_eq!(pick_status(99), "rejected");
        assert_eq!(STATUSES.iter().map(|s| s.1).sum::<u32>(), 100);
    }

    #[test]
    fn a_point_is_ewkb_with_srid_4326() {
        let mut buf = Vec::new();
        point(&mut buf, 106.7, 10.8);
        assert_eq!(&buf[..4], &25i32.to_be_bytes());
        assert_eq!(&buf[4..13], &[1, 1, 0, 0, 0x20, 0xe6, 0x10, 0, 0]);
        assert_eq!(f64::from_le_bytes(buf[13..21].try_into().unwrap()), 106.7);
        assert_eq!(f64::from_le_bytes(buf[21..29].try_into().unwrap()), 10.8);
    }

    #[test]
    fn a_batch_is_framed_and_about_one_image_a_location() {
        let mut rng = StdRng::seed_from_u64(7);
        let ids: Vec<i64> = (1..=2_000).collect();
        let span = Span {
            first: 0,
            count: 2_000,
        };
        let batch = generate(&mut rng, &ids, span, 1_780_000_000_000_000);
        for buf in [&batch.locations, &batch.images, &batch.moderation_logs] {
            assert!(buf.starts_with(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"));
            assert!(buf.ends_with(&[0xff, 0xff]));
        }
        assert_eq!(&batch.locations[19..21], &8i16.to_be_bytes());
        assert!(
            (1_800..2_200).contains(&batch.image_count),
            "{}",
            batch.image_count
        );
        assert!(
            (1_400..1_600).contains(&batch.log_count),
            "{}",
            batch.log_count
        );
    }

    #[test]
    fn z_order_interleaves() {
        assert_eq!(z_order(0, 0), 0);
        assert_eq!(z_order(1, 0), 1);
        assert_eq!(z_order(0, 1), 2);
        assert_eq!(z_order(3, 3), 15);
        assert_eq!(z_order(0xffff, 0xffff), u32::MAX);
    }

    #[test]
    fn places_stay_in_their_city() {
        let mut rng = StdRng::seed_from_u64(1);
        for i in 0..10_000 {
            let p = place(&mut rng, i % 2);
            assert!(p.lon >= p.city.lon.0 && p.lon <= p.city.lon.1, "{}", p.lon);
            assert!(p.lat >= p.city.lat.0 && p.lat <= p.city.lat.1, "{}", p.lat);
            assert_eq!(p.key >> 32, (i % 2) as u64);
        }
    }

    #[test]
    fn text_fields_carry_their_length() {
        let mut buf = Vec::new();
        text(&mut buf, |b| write(b, format_args!("user{}", 42)));
        assert_eq!(buf, [0, 0, 0, 6, b'u', b's', b'e', b'r', b'4', b'2']);
    }
}
