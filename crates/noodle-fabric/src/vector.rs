//! The fabric's vector index: approximate nearest neighbours by cosine similarity over the
//! embeddings users attach to objects (`noodle put emb.f32 /docs/a.txt --vector`), for
//! `noodle query --near-vector q.f32 --k 5 --prefix /docs/`.
//!
//! Sans-IO and in memory: the caller feeds it the vectors the replicated metadata holds and
//! asks it questions; it never reads a file, a clock or a global random source (hnsw_rs seeds
//! its own level generator with a constant, so the same inserts give the same graph).
//!
//! - [`decode_f32`] / [`encode_f32`]: a vector file is little-endian `f32`s, no header.
//! - [`VectorIndex`]: one namespace's vectors, all of one dimension (the first vector's), in
//!   an HNSW graph ([`hnsw_rs`]). hnsw_rs cannot delete, so a replaced or removed vector's
//!   data id is only marked dead and filtered out of every search (inside the graph walk, so
//!   dead ids cost no results); when dead ids outnumber live ones the graph is rebuilt from
//!   the live vectors, which the index keeps for that. Up to [`BRUTE_FORCE_MAX`] vectors
//!   there is no graph at all: an exact scan is as fast and always right.
//! - [`VectorIndexes`]: the indexes by namespace, a path's first segment (`/docs/a.txt` is in
//!   `docs`), so that namespaces may hold vectors of different dimensions.
//!
//! Bounds: [`DIM_MAX`] values per vector, [`K_MAX`] hits per search, [`VECTORS_MAX`] vectors
//! per namespace. Memory is about `2 × 4 × dim` bytes per vector (the index's copy and the
//! graph's) plus some 2 KB of graph links (hnsw_rs keeps an `Arc` per link, `2 ×
//! MAX_NB_CONNECTION` links per vector in the densest layer): a full namespace of 384-d
//! vectors takes some 5 GB.
//!
//! Cost: an insert into the graph and a rebuild are CPU-bound (a rebuild of a million vectors
//! takes minutes), so a caller on an async runtime runs them on a blocking thread.

use crate::path::{ObjectPath, Prefix};
use hnsw_rs::prelude::{DistDot, FilterT, Hnsw};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Most values in one vector (embedding models give 384 to 3072).
pub const DIM_MAX: usize = 4096;
/// Most hits one search returns.
pub const K_MAX: usize = 1000;
/// Most vectors in one namespace. A bound on memory (see the module doc) and on the time a
/// rebuild takes.
pub const VECTORS_MAX: usize = 1_000_000;
/// Up to this many live vectors a namespace has no graph and searches are exact scans: as
/// fast as the graph at this size, and never miss.
pub const BRUTE_FORCE_MAX: usize = 1000;

// The graph's parameters, measured by `recall_at_10_against_brute_force` (recall@10 on
// 10,000 random 384-d vectors): 20/100/128 gives 0.991; 16/100/128 0.974; 20/64/128 0.977;
// 20/100/100 0.976; 20/100/64 0.928; 24/200/128 0.992 at twice the insert time.

/// HNSW links per point and layer (`M`; twice that in layer 0). More links: better recall on
/// hard (high intrinsic dimension) data, slower inserts, more memory.
const MAX_NB_CONNECTION: usize = 20;
/// Candidates an insert considers for its links.
const EF_CONSTRUCTION: usize = 100;
/// Candidates a search keeps (at least `k + 1`).
const EF_SEARCH: usize = 128;
/// hnsw_rs caps layers at 16; with `M` = 20 a million points use about 5.
const LAYERS_MAX: usize = 16;

/// Why a vector or a search is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VectorError {
    #[error("the vector is empty: a vector file holds little-endian f32 values")]
    Empty,
    #[error(
        "the vector file is {bytes} bytes, not a multiple of 4: a vector file holds \
         little-endian f32 values and nothing else"
    )]
    Length { bytes: usize },
    #[error("the vector has {got} values, more than the {DIM_MAX} allowed")]
    TooLong { got: usize },
    #[error("value {index} of the vector is NaN or infinite: only finite values are allowed")]
    NotFinite { index: usize },
    #[error("the vector is all zeros: it has no direction to compare by cosine")]
    Zero,
    #[error(
        "the vector has {got} dimensions but this namespace holds {expected}-dimensional \
         vectors: use the same embedding model, or another namespace"
    )]
    Dimension { expected: usize, got: usize },
    #[error("no namespace holds {got}-dimensional vectors")]
    NoSuchDimension { got: usize },
    #[error("k = {k} is more than the {K_MAX} hits one search may return")]
    TooManyHits { k: usize },
    #[error(
        "the namespace holds {VECTORS_MAX} vectors, the most it may: remove some, or put new \
         ones under another top-level prefix"
    )]
    Full,
}

/// One search result: a key (an object's path in [`VectorIndexes`]) and its cosine similarity
/// to the query, in `[-1, 1]`, higher is nearer.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub key: String,
    pub score: f32,
}

/// Decodes a vector file: little-endian `f32`s, no header, 1 to [`DIM_MAX`] finite values.
pub fn decode_f32(bytes: &[u8]) -> Result<Vec<f32>, VectorError> {
    if bytes.is_empty() {
        return Err(VectorError::Empty);
    }
    if !bytes.len().is_multiple_of(4) {
        return Err(VectorError::Length { bytes: bytes.len() });
    }
    // Checked before decoding, so that a huge file costs no allocation.
    if bytes.len() / 4 > DIM_MAX {
        return Err(VectorError::TooLong {
            got: bytes.len() / 4,
        });
    }
    let mut values = Vec::with_capacity(bytes.len() / 4);
    for (index, chunk) in bytes.chunks_exact(4).enumerate() {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(chunk);
        let value = f32::from_le_bytes(raw);
        if !value.is_finite() {
            return Err(VectorError::NotFinite { index });
        }
        values.push(value);
    }
    Ok(values)
}

/// Checks a vector as the fabric's records take it: 1 to [`DIM_MAX`] finite values, not all
/// zero.
pub fn check(vector: &[f32]) -> Result<(), VectorError> {
    if vector.is_empty() {
        return Err(VectorError::Empty);
    }
    if vector.len() > DIM_MAX {
        return Err(VectorError::TooLong { got: vector.len() });
    }
    if let Some(index) = vector.iter().position(|v| !v.is_finite()) {
        return Err(VectorError::NotFinite { index });
    }
    if vector.iter().all(|v| *v == 0.0) {
        return Err(VectorError::Zero);
    }
    Ok(())
}

/// Encodes a vector as a vector file: its values as little-endian `f32`s.
pub fn encode_f32(vector: &[f32]) -> Vec<u8> {
    vector
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// Checks a vector (1 to [`DIM_MAX`] finite values, not all zero) and scales it to length 1,
/// so that cosine similarity is a dot product.
fn unit(vector: &[f32]) -> Result<Vec<f32>, VectorError> {
    check(vector)?;
    // In f64: the squares of large f32 values would overflow to infinity in f32, and those of
    // the smallest would not underflow to 0.
    let norm = vector
        .iter()
        .map(|&value| f64::from(value) * f64::from(value))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return Err(VectorError::Zero);
    }
    Ok(vector
        .iter()
        .map(|&value| (f64::from(value) / norm) as f32)
        .collect())
}

/// The copy of a unit vector that goes into the graph (and of a query), shortened a little.
///
/// The graph measures `1 - dot` with hnsw_rs's `DistDot` (SIMD through its `simdeez_f`
/// feature: several times faster than its `DistCosine`), which asserts that the dot product of
/// two vectors is at most `1.000002` (at most 1 without SIMD). Rounding can put the dot product
/// of a unit vector with itself over that; shortened by `2^-12`, every dot product is at most
/// `(1 - 2^-12)² · (1 + DIM_MAX · 2^-24) < 1`. The order of the distances, all the graph uses,
/// is the same; scores are computed from the unit vectors.
fn shrunk(unit: &[f32]) -> Vec<f32> {
    const SCALE: f32 = 1.0 - 1.0 / 4096.0;
    unit.iter().map(|value| value * SCALE).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Best first; equal scores by key, so that results do not depend on insertion order.
fn rank(hits: &mut [Hit]) {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.key.cmp(&b.key)));
}

/// A live vector: its key and its unit vector.
struct Slot {
    key: String,
    unit: Vec<f32>,
}

/// One namespace's vectors (see the module doc). The dimension is set by the first vector
/// and forgotten when the last one is removed.
pub struct VectorIndex {
    /// The dimension of every vector; `None` while there are none.
    dim: Option<usize>,
    /// [`VECTORS_MAX`], but for tests.
    vectors_max: usize,
    /// By hnsw_rs data id; `None` is a dead id (its key was replaced or removed).
    slots: Vec<Option<Slot>>,
    /// The live data id of each key.
    ids: HashMap<String, usize>,
    /// Over `slots`; built when the live vectors pass [`BRUTE_FORCE_MAX`], dropped by a
    /// rebuild that finds them at or under it (searches scan at that size anyway).
    graph: Option<Hnsw<'static, f32, DistDot>>,
}

impl fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorIndex")
            .field("dim", &self.dim())
            .field("live", &self.len())
            .field("dead", &self.dead())
            .field("graph", &self.graph.is_some())
            .finish()
    }
}

impl Default for VectorIndex {
    fn default() -> VectorIndex {
        VectorIndex {
            dim: None,
            vectors_max: VECTORS_MAX,
            slots: Vec::new(),
            ids: HashMap::new(),
            graph: None,
        }
    }
}

impl VectorIndex {
    pub fn new() -> VectorIndex {
        VectorIndex::default()
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The dimension of every vector here; `None` while there are none.
    pub fn dim(&self) -> Option<usize> {
        self.dim
    }

    fn dead(&self) -> usize {
        self.slots.len() - self.ids.len()
    }

    /// Sets `key`'s vector, replacing the one it had.
    pub fn insert(&mut self, key: &str, vector: &[f32]) -> Result<(), VectorError> {
        let unit = unit(vector)?;
        if let Some(expected) = self.dim
            && expected != unit.len()
        {
            return Err(VectorError::Dimension {
                expected,
                got: unit.len(),
            });
        }
        match self.ids.get(key) {
            Some(&old) => self.slots[old] = None,
            None if self.ids.len() >= self.vectors_max => return Err(VectorError::Full),
            None => {}
        }
        self.dim = Some(unit.len());
        let id = self.slots.len();
        if let Some(graph) = &self.graph {
            graph.insert_slice((&shrunk(&unit), id));
        }
        self.slots.push(Some(Slot {
            key: key.to_string(),
            unit,
        }));
        self.ids.insert(key.to_string(), id);
        self.maintain();
        Ok(())
    }

    /// Removes `key`'s vector; nothing if it has none.
    pub fn remove(&mut self, key: &str) {
        if let Some(id) = self.ids.remove(key) {
            self.slots[id] = None;
            self.maintain();
        }
    }

    /// Rebuilds when dead ids outnumber live ones (so a search's walk stays mostly over live
    /// points and memory stays within twice the live vectors), or when the vectors have just
    /// grown past [`BRUTE_FORCE_MAX`] and need a graph. Each rebuild follows at least as many
    /// removals or inserts as it reinserts vectors, so its cost is amortised.
    fn maintain(&mut self) {
        let live = self.len();
        if live == 0 {
            self.dim = None;
        }
        if self.dead() > live || (self.graph.is_none() && live > BRUTE_FORCE_MAX) {
            self.rebuild();
        }
    }

    /// Renumbers the live vectors from 0 (in their id order, so deterministically) and builds
    /// a new graph over them if there are more than [`BRUTE_FORCE_MAX`].
    fn rebuild(&mut self) {
        let slots: Vec<Slot> = std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect();
        self.ids = slots
            .iter()
            .enumerate()
            .map(|(id, slot)| (slot.key.clone(), id))
            .collect();
        self.graph = (slots.len() > BRUTE_FORCE_MAX).then(|| {
            let graph = Hnsw::new(
                MAX_NB_CONNECTION,
                slots.len(),
                LAYERS_MAX,
                EF_CONSTRUCTION,
                DistDot,
            );
            for (id, slot) in slots.iter().enumerate() {
                graph.insert_slice((&shrunk(&slot.unit), id));
            }
            graph
        });
        self.slots = slots.into_iter().map(Some).collect();
    }

    /// Checks a query and `k`; the query as a unit vector, or `None` if there is nothing to
    /// search.
    fn query(&self, query: &[f32], k: usize) -> Result<Option<Vec<f32>>, VectorError> {
        if k > K_MAX {
            return Err(VectorError::TooManyHits { k });
        }
        let unit = unit(query)?;
        match self.dim {
            None => Ok(None),
            Some(expected) if expected != unit.len() => Err(VectorError::Dimension {
                expected,
                got: unit.len(),
            }),
            Some(_) if k == 0 => Ok(None),
            Some(_) => Ok(Some(unit)),
        }
    }

    /// The (about) `k` live vectors most similar to `query` whose keys pass `filter`, best
    /// first: approximate through the graph, exact while the index is small.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: impl Fn(&str) -> bool,
    ) -> Result<Vec<Hit>, VectorError> {
        let Some(unit) = self.query(query, k)? else {
            return Ok(Vec::new());
        };
        let graph = match &self.graph {
            Some(graph) if self.len() > BRUTE_FORCE_MAX => graph,
            _ => return Ok(self.scan(&unit, k, filter)),
        };
        let live = |id: &usize| {
            self.slots
                .get(*id)
                .and_then(Option::as_ref)
                .is_some_and(|slot| filter(&slot.key))
        };
        // One more than asked: hnsw_rs may count the graph's entry point among the first `k`
        // and then drop it for failing the filter.
        let asked = k + 1;
        let neighbours = graph.search_filter(
            &shrunk(&unit),
            asked,
            EF_SEARCH.max(asked),
            Some(&live as &dyn FilterT),
        );
        let mut hits: Vec<Hit> = neighbours
            .iter()
            .filter_map(|neighbour| {
                let slot = self.slots.get(neighbour.d_id)?.as_ref()?;
                Some(Hit {
                    key: slot.key.clone(),
                    score: dot(&unit, &slot.unit),
                })
            })
            .collect();
        rank(&mut hits);
        hits.truncate(k);
        Ok(hits)
    }

    /// The `k` live vectors most similar to `query` whose keys pass `filter`, best first,
    /// exactly: a scan of every live vector.
    pub fn brute_force(
        &self,
        query: &[f32],
        k: usize,
        filter: impl Fn(&str) -> bool,
    ) -> Result<Vec<Hit>, VectorError> {
        match self.query(query, k)? {
            Some(unit) => Ok(self.scan(&unit, k, filter)),
            None => Ok(Vec::new()),
        }
    }

    fn scan(&self, unit: &[f32], k: usize, filter: impl Fn(&str) -> bool) -> Vec<Hit> {
        let mut hits: Vec<Hit> = self
            .slots
            .iter()
            .flatten()
            .filter(|slot| filter(&slot.key))
            .map(|slot| Hit {
                key: slot.key.clone(),
                score: dot(unit, &slot.unit),
            })
            .collect();
        if hits.len() > k {
            // The best `k` first (unordered), then only those sorted.
            hits.select_nth_unstable_by(k - 1, |a, b| {
                b.score.total_cmp(&a.score).then_with(|| a.key.cmp(&b.key))
            });
            hits.truncate(k);
        }
        rank(&mut hits);
        hits
    }
}

/// The vector indexes of the fabric, one per namespace (a path's first segment), keyed by
/// object path.
#[derive(Debug, Default)]
pub struct VectorIndexes {
    by_namespace: BTreeMap<String, VectorIndex>,
}

/// `/docs/a.txt` and `/docs/` are in `docs`; `/` is in none (it spans them all).
pub(crate) fn namespace(text: &str) -> Option<&str> {
    let body = text.strip_prefix('/').unwrap_or(text);
    body.split('/').next().filter(|segment| !segment.is_empty())
}

impl VectorIndexes {
    pub fn new() -> VectorIndexes {
        VectorIndexes::default()
    }

    /// The index of one namespace (`"docs"`), if it has vectors.
    pub fn namespace(&self, name: &str) -> Option<&VectorIndex> {
        self.by_namespace.get(name)
    }

    /// Live vectors in every namespace.
    pub fn len(&self) -> usize {
        self.by_namespace.values().map(VectorIndex::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }

    /// Sets `path`'s vector, replacing the one it had.
    pub fn insert(&mut self, path: &ObjectPath, vector: &[f32]) -> Result<(), VectorError> {
        let Some(name) = namespace(path.as_str()) else {
            // An object path has at least one segment.
            return Err(VectorError::Empty);
        };
        let index = self.by_namespace.entry(name.to_string()).or_default();
        let inserted = index.insert(path.as_str(), vector);
        if index.is_empty() {
            // A refused first vector leaves no empty index behind.
            self.by_namespace.remove(name);
        }
        inserted
    }

    /// Removes `path`'s vector; nothing if it has none.
    pub fn remove(&mut self, path: &ObjectPath) {
        let Some(name) = namespace(path.as_str()) else {
            return;
        };
        if let Some(index) = self.by_namespace.get_mut(name) {
            index.remove(path.as_str());
            if index.is_empty() {
                self.by_namespace.remove(name);
            }
        }
    }

    /// The (about) `k` vectors under `prefix` most similar to `query`, best first. A prefix
    /// in one namespace searches that namespace (a dimension other than its own is an
    /// error); `/` searches every namespace of the query's dimension and merges by score.
    pub fn search(
        &self,
        prefix: &Prefix,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Hit>, VectorError> {
        self.gather(prefix, query, k, |index, filter| {
            index.search(query, k, filter)
        })
    }

    /// [`Self::search`], exactly: a scan of every vector under `prefix`.
    pub fn brute_force(
        &self,
        prefix: &Prefix,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Hit>, VectorError> {
        self.gather(prefix, query, k, |index, filter| {
            index.brute_force(query, k, filter)
        })
    }

    fn gather(
        &self,
        prefix: &Prefix,
        query: &[f32],
        k: usize,
        one: impl Fn(&VectorIndex, &dyn Fn(&str) -> bool) -> Result<Vec<Hit>, VectorError>,
    ) -> Result<Vec<Hit>, VectorError> {
        let under = |key: &str| key.starts_with(prefix.as_str());
        if let Some(name) = namespace(prefix.as_str()) {
            return match self.by_namespace.get(name) {
                Some(index) => one(index, &under),
                // Checks the query and k all the same.
                None => VectorIndex::new().search(query, k, under),
            };
        }
        let matching: Vec<&VectorIndex> = self
            .by_namespace
            .values()
            .filter(|index| index.dim() == Some(query.len()))
            .collect();
        if matching.is_empty() {
            VectorIndex::new().search(query, k, under)?;
            if !self.by_namespace.is_empty() {
                return Err(VectorError::NoSuchDimension { got: query.len() });
            }
            return Ok(Vec::new());
        }
        let mut hits = Vec::new();
        for index in matching {
            hits.extend(one(index, &under)?);
        }
        rank(&mut hits);
        hits.truncate(k);
        Ok(hits)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use std::time::Instant;

    fn path(text: &str) -> ObjectPath {
        ObjectPath::parse(text).unwrap()
    }

    fn prefix(text: &str) -> Prefix {
        Prefix::parse(text).unwrap()
    }

    fn keys(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|hit| hit.key.as_str()).collect()
    }

    fn random_vectors(rng: &mut StdRng, count: usize, dim: usize) -> Vec<Vec<f32>> {
        (0..count)
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect()
    }

    #[test]
    fn decode_refuses_what_is_not_a_vector() {
        type Case = (Vec<u8>, Result<Vec<f32>, VectorError>);
        let longest = vec![1.0; DIM_MAX];
        let cases: Vec<Case> = vec![
            (encode_f32(&[1.0, -2.5]), Ok(vec![1.0, -2.5])),
            (encode_f32(&[0.0]), Ok(vec![0.0])),
            (Vec::new(), Err(VectorError::Empty)),
            (vec![0; 7], Err(VectorError::Length { bytes: 7 })),
            (
                encode_f32(&[1.0, f32::NAN]),
                Err(VectorError::NotFinite { index: 1 }),
            ),
            (
                encode_f32(&[f32::INFINITY]),
                Err(VectorError::NotFinite { index: 0 }),
            ),
            (
                encode_f32(&[1.0, 2.0, f32::NEG_INFINITY]),
                Err(VectorError::NotFinite { index: 2 }),
            ),
            (encode_f32(&longest), Ok(longest.clone())),
            (
                encode_f32(&[longest.as_slice(), &[1.0]].concat()),
                Err(VectorError::TooLong { got: DIM_MAX + 1 }),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode_f32(&bytes), expected, "{} bytes", bytes.len());
        }
    }

    #[test]
    fn insert_refuses_zero_and_non_finite_vectors() {
        let mut index = VectorIndex::new();
        let cases: &[(&[f32], VectorError)] = &[
            (&[], VectorError::Empty),
            (&[0.0, 0.0], VectorError::Zero),
            (&[1.0, f32::NAN], VectorError::NotFinite { index: 1 }),
        ];
        for (vector, expected) in cases {
            assert_eq!(index.insert("k", vector).as_ref(), Err(expected));
        }
        assert_eq!((index.len(), index.dim()), (0, None));
        // Large values do not overflow the norm.
        index.insert("big", &[f32::MAX, f32::MAX]).unwrap();
        let hits = index.search(&[1.0, 1.0], 1, |_| true).unwrap();
        assert!((hits[0].score - 1.0).abs() < 1e-6, "{hits:?}");
    }

    #[test]
    fn a_key_holds_one_vector_replaced_by_the_next_and_removed() {
        let mut index = VectorIndex::new();
        index.insert("a", &[1.0, 0.0]).unwrap();
        index.insert("b", &[0.0, 1.0]).unwrap();
        index.insert("a", &[0.0, 2.0]).unwrap();
        assert_eq!(index.len(), 2);
        let hits = index.search(&[0.0, 1.0], 10, |_| true).unwrap();
        assert_eq!(
            hits,
            [
                Hit {
                    key: "a".into(),
                    score: 1.0
                },
                Hit {
                    key: "b".into(),
                    score: 1.0
                }
            ]
        );
        index.remove("a");
        index.remove("absent");
        assert_eq!(
            keys(&index.search(&[1.0, 0.0], 10, |_| true).unwrap()),
            ["b"]
        );
        index.remove("b");
        assert_eq!((index.len(), index.dim()), (0, None));
        // An empty index forgets its dimension.
        index.insert("c", &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(index.dim(), Some(3));
    }

    #[test]
    fn a_namespace_holds_one_dimension() {
        let mut indexes = VectorIndexes::new();
        indexes.insert(&path("/docs/a"), &[1.0, 0.0]).unwrap();
        indexes.insert(&path("/img/a"), &[1.0, 0.0, 0.0]).unwrap();
        let refused = indexes.insert(&path("/docs/b"), &[1.0, 0.0, 0.0]);
        assert_eq!(
            refused,
            Err(VectorError::Dimension {
                expected: 2,
                got: 3
            })
        );
        // Replacing a key's vector with one of another dimension is refused too.
        let refused = indexes.insert(&path("/docs/a"), &[1.0]);
        assert_eq!(
            refused,
            Err(VectorError::Dimension {
                expected: 2,
                got: 1
            })
        );
        let searched = indexes.search(&prefix("/docs/"), &[1.0, 0.0, 0.0], 1);
        assert_eq!(
            searched,
            Err(VectorError::Dimension {
                expected: 2,
                got: 3
            })
        );
        // The root searches the namespaces of the query's dimension.
        let hits = indexes.search(&prefix("/"), &[1.0, 0.0, 0.0], 5).unwrap();
        assert_eq!(keys(&hits), ["/img/a"]);
        let hits = indexes.search(&prefix("/"), &[1.0, 0.0], 5).unwrap();
        assert_eq!(keys(&hits), ["/docs/a"]);
        assert_eq!(
            indexes.search(&prefix("/"), &[1.0; 4], 5),
            Err(VectorError::NoSuchDimension { got: 4 })
        );
        // A namespace without vectors has no hits, but the query is still checked.
        assert_eq!(indexes.search(&prefix("/none/"), &[1.0; 4], 5), Ok(vec![]));
        assert_eq!(
            indexes.search(&prefix("/none/"), &[0.0; 4], 5),
            Err(VectorError::Zero)
        );
        assert_eq!(
            indexes.search(&prefix("/docs/"), &[1.0, 0.0], K_MAX + 1),
            Err(VectorError::TooManyHits { k: K_MAX + 1 })
        );
        indexes.remove(&path("/img/a"));
        assert!(indexes.namespace("img").is_none());
        assert_eq!(indexes.len(), 1);
    }

    /// Vectors at angles 0, 1, 2, ... degrees from the x axis, in `count` paths spread over
    /// three prefixes.
    fn fan(count: usize) -> VectorIndexes {
        let mut indexes = VectorIndexes::new();
        for i in 0..count {
            let angle = (i as f32 * 0.05).to_radians();
            let dir = ["/docs/a/", "/docs/b/", "/notes/"][i % 3];
            indexes
                .insert(&path(&format!("{dir}{i}")), &[angle.cos(), angle.sin()])
                .unwrap();
        }
        indexes
    }

    #[test]
    fn search_keeps_to_the_prefix() {
        // Small (scanned) and large (through the graph).
        for count in [30, 3 * BRUTE_FORCE_MAX] {
            let indexes = fan(count);
            assert_eq!(
                indexes.namespace("docs").unwrap().graph.is_some(),
                count > 30
            );
            let cases: &[(&str, &[&str])] = &[
                ("/docs/a/", &["/docs/a/0", "/docs/a/3", "/docs/a/6"]),
                ("/docs/b/", &["/docs/b/1", "/docs/b/4", "/docs/b/7"]),
                ("/docs/", &["/docs/a/0", "/docs/b/1", "/docs/a/3"]),
                ("/notes/", &["/notes/2", "/notes/5", "/notes/8"]),
                ("/", &["/docs/a/0", "/docs/b/1", "/notes/2"]),
                ("/docs/c/", &[]),
                ("/other/", &[]),
            ];
            for (under, expected) in cases {
                let query = [1.0, 0.0];
                let hits = indexes.search(&prefix(under), &query, 3).unwrap();
                assert_eq!(keys(&hits), *expected, "{count} vectors, {under}");
                let exact = indexes.brute_force(&prefix(under), &query, 3).unwrap();
                assert_eq!(hits, exact, "{count} vectors, {under}");
            }
        }
    }

    #[test]
    fn removals_rebuild_the_graph_and_results_stay_right() {
        let mut rng = StdRng::seed_from_u64(7);
        let vectors = random_vectors(&mut rng, 4500, 16);
        let mut index = VectorIndex::new();
        for (i, vector) in vectors.iter().enumerate() {
            index.insert(&format!("k{i}"), vector).unwrap();
        }
        assert!(index.graph.is_some());
        // Remove two thirds, replace some of the rest: dead ids pass live ones and the graph
        // is rebuilt, over the 1,500 left.
        for i in (0..4500).filter(|i| i % 3 != 0) {
            index.remove(&format!("k{i}"));
            assert!(index.dead() <= index.len(), "{index:?}");
        }
        for i in (0..4500).step_by(3).take(200) {
            index.insert(&format!("k{i}"), &vectors[i + 1]).unwrap();
        }
        assert_eq!(index.len(), 1500);
        assert!(
            index.graph.is_some() && index.dead() <= index.len(),
            "{index:?}"
        );
        let check = |index: &VectorIndex| {
            for query in vectors.iter().step_by(97) {
                let hits = index.search(query, 5, |_| true).unwrap();
                let exact = index.brute_force(query, 5, |_| true).unwrap();
                assert_eq!(hits, exact, "{index:?}");
                for hit in hits {
                    let i: usize = hit.key[1..].parse().unwrap();
                    assert_eq!(i % 3, 0, "{} was removed", hit.key);
                }
            }
        };
        check(&index);
        // Under the threshold again: a rebuild drops the graph.
        for i in (0..4500).step_by(3) {
            if index.graph.is_none() {
                break;
            }
            index.remove(&format!("k{i}"));
        }
        assert!(
            index.graph.is_none() && index.len() <= BRUTE_FORCE_MAX,
            "{index:?}"
        );
        check(&index);
    }

    #[test]
    fn a_full_namespace_refuses_new_keys_but_replaces() {
        let mut index = VectorIndex {
            vectors_max: 2,
            ..VectorIndex::new()
        };
        index.insert("a", &[1.0]).unwrap();
        index.insert("b", &[1.0]).unwrap();
        assert_eq!(index.insert("c", &[1.0]), Err(VectorError::Full));
        assert_eq!(index.insert("a", &[2.0]), Ok(()));
        index.remove("b");
        assert_eq!(index.insert("c", &[1.0]), Ok(()));
    }

    /// Recall@10 of the graph against an exact scan: 10,000 random 384-d vectors (uniform in
    /// a cube: high intrinsic dimension, harder than real embeddings), 100 random queries.
    #[test]
    fn recall_at_10_against_brute_force() {
        const COUNT: usize = 10_000;
        const DIM: usize = 384;
        const QUERIES: usize = 100;
        let mut rng = StdRng::seed_from_u64(384);
        let mut indexes = VectorIndexes::new();
        let started = Instant::now();
        for (i, vector) in random_vectors(&mut rng, COUNT, DIM).iter().enumerate() {
            indexes.insert(&path(&format!("/emb/{i}")), vector).unwrap();
        }
        let inserted_s = started.elapsed().as_secs_f64();
        let under = prefix("/emb/");
        let (mut found, mut searched_s) = (0, 0.0);
        for query in random_vectors(&mut rng, QUERIES, DIM) {
            let started = Instant::now();
            let hits = indexes.search(&under, &query, 10).unwrap();
            searched_s += started.elapsed().as_secs_f64();
            let exact = indexes.brute_force(&under, &query, 10).unwrap();
            assert_eq!(hits.len(), 10);
            found += hits.iter().filter(|hit| exact.contains(hit)).count();
        }
        let recall = found as f64 / (QUERIES * 10) as f64;
        println!(
            "recall@10 {recall:.3}; {COUNT} inserts {inserted_s:.1} s, {QUERIES} searches \
             {searched_s:.2} s"
        );
        assert!(recall >= 0.95, "recall@10 {recall:.3} is under 0.95");
    }

    #[test]
    fn indexes_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<VectorIndexes>();
    }
}
