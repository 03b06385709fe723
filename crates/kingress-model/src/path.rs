//! The path table of one server (host): Exact, Prefix and ImplementationSpecific paths
//! and their precedence.
//!
//! Precedence, as the Ingress API documents it and ingress-nginx implements it:
//! the longest matching path wins; at equal length Exact beats Prefix, which beats
//! ImplementationSpecific. An Exact match always wins over any prefix match, since a
//! prefix that matches a path can never be longer than the path itself.
//!
//! Lookup cost does not grow with the number of paths: Exact paths sit in a hash map,
//! prefixes in a hash map keyed by the prefix string, probed once per distinct prefix
//! length (longest first).

use std::collections::HashMap;

/// `spec.rules[].http.paths[].pathType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathType {
    /// The path, exactly (case-sensitive).
    Exact,
    /// Element-wise prefix split by `/`: `/foo` matches `/foo`, `/foo/` and `/foo/bar`,
    /// not `/foobar`. A trailing slash in the rule is ignored.
    Prefix,
    /// ingress-nginx's reading: a plain string prefix (`/foo` matches `/foobar`).
    ImplementationSpecific,
}

impl PathType {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "Exact" => Some(PathType::Exact),
            "Prefix" => Some(PathType::Prefix),
            "ImplementationSpecific" => Some(PathType::ImplementationSpecific),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathType::Exact => "Exact",
            PathType::Prefix => "Prefix",
            PathType::ImplementationSpecific => "ImplementationSpecific",
        }
    }
}

/// The key a rule path is stored under: Prefix paths lose their trailing slashes
/// (`/foo/` and `/foo` are the same rule), an empty path means `/`.
pub fn normalize_rule_path(path: &str, path_type: PathType) -> String {
    let path = if path.is_empty() { "/" } else { path };
    match path_type {
        PathType::Prefix => {
            let trimmed = path.trim_end_matches('/');
            if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            }
        }
        PathType::Exact | PathType::ImplementationSpecific => path.to_string(),
    }
}

/// The prefix entries that share one key.
#[derive(Clone, Debug)]
struct PrefixSlot<T> {
    prefix: Option<T>,
    implementation_specific: Option<T>,
}

/// One server's paths, mapping each to a `T` (a route).
#[derive(Clone, Debug)]
pub struct PathTable<T> {
    exact: HashMap<String, T>,
    prefixes: HashMap<String, PrefixSlot<T>>,
    /// Distinct lengths of the keys in `prefixes`, longest first.
    prefix_lengths: Vec<usize>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            prefix_lengths: Vec::new(),
        }
    }
}

impl<T> PathTable<T> {
    /// Inserts a path; returns the value back when the same (normalised path, type) is
    /// already taken, so the caller can report the conflict. First insert wins.
    pub fn insert(&mut self, path: &str, path_type: PathType, value: T) -> Result<(), T> {
        let key = normalize_rule_path(path, path_type);
        match path_type {
            PathType::Exact => {
                if self.exact.contains_key(&key) {
                    return Err(value);
                }
                self.exact.insert(key, value);
            }
            PathType::Prefix | PathType::ImplementationSpecific => {
                let len = key.len();
                let slot = self.prefixes.entry(key).or_insert(PrefixSlot {
                    prefix: None,
                    implementation_specific: None,
                });
                let place = if path_type == PathType::Prefix {
                    &mut slot.prefix
                } else {
                    &mut slot.implementation_specific
                };
                if place.is_some() {
                    return Err(value);
                }
                *place = Some(value);
                if let Err(pos) = self.prefix_lengths.binary_search_by(|probe| len.cmp(probe)) {
                    self.prefix_lengths.insert(pos, len);
                }
            }
        }
        Ok(())
    }

    /// The value stored for a (path, type), after normalisation.
    pub fn get(&self, path: &str, path_type: PathType) -> Option<&T> {
        let key = normalize_rule_path(path, path_type);
        match path_type {
            PathType::Exact => self.exact.get(&key),
            PathType::Prefix => self.prefixes.get(&key)?.prefix.as_ref(),
            PathType::ImplementationSpecific => self.prefixes.get(&key)?.implementation_specific.as_ref(),
        }
    }

    /// Whether a (normalised path, type) is taken.
    pub fn contains(&self, path: &str, path_type: PathType) -> bool {
        self.get(path, path_type).is_some()
    }

    /// The best path for a request path (without query string).
    pub fn lookup(&self, request_path: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(request_path) {
            return Some(v);
        }
        for &len in &self.prefix_lengths {
            let Some(candidate) = request_path.get(..len) else {
                continue; // longer than the path, or not on a char boundary
            };
            let Some(slot) = self.prefixes.get(candidate) else {
                continue;
            };
            if let Some(v) = &slot.prefix {
                // Element-wise: the match must end at a segment boundary. "/" matches all.
                let boundary = len == 1 || request_path.len() == len || request_path.as_bytes().get(len) == Some(&b'/');
                if boundary {
                    return Some(v);
                }
            }
            if let Some(v) = &slot.implementation_specific {
                return Some(v);
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.exact.len()
            + self
                .prefixes
                .values()
                .map(|s| usize::from(s.prefix.is_some()) + usize::from(s.implementation_specific.is_some()))
                .sum::<usize>()
    }

    /// Every entry, for display (/debug/config): (normalised path, type, value).
    pub fn entries(&self) -> Vec<(&str, PathType, &T)> {
        let mut out: Vec<(&str, PathType, &T)> = Vec::with_capacity(self.len());
        for (k, v) in &self.exact {
            out.push((k, PathType::Exact, v));
        }
        for (k, slot) in &self.prefixes {
            if let Some(v) = &slot.prefix {
                out.push((k, PathType::Prefix, v));
            }
            if let Some(v) = &slot.implementation_specific {
                out.push((k, PathType::ImplementationSpecific, v));
            }
        }
        // Precedence order: longest first, then Exact < Prefix < ImplementationSpecific.
        out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)).then(a.0.cmp(b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(paths: &[(&str, PathType)]) -> PathTable<String> {
        let mut t = PathTable::default();
        for (p, ty) in paths {
            t.insert(p, *ty, format!("{}:{p}", ty.as_str())).unwrap();
        }
        t
    }

    fn hit(t: &PathTable<String>, p: &str) -> Option<String> {
        t.lookup(p).cloned()
    }

    // The examples table of the Kubernetes Ingress documentation ("Examples" under Path types).
    #[test]
    fn kubernetes_documentation_examples() {
        use PathType::*;
        type Case<'a> = (&'a [(&'a str, PathType)], &'a str, bool);
        let cases: &[Case<'_>] = &[
            (&[("/", Prefix)], "/", true),
            (&[("/", Prefix)], "/anything", true),
            (&[("/foo", Exact)], "/foo", true),
            (&[("/foo", Exact)], "/bar", false),
            (&[("/foo", Exact)], "/foo/", false),
            (&[("/foo/", Exact)], "/foo", false),
            (&[("/foo", Prefix)], "/foo", true),
            (&[("/foo", Prefix)], "/foo/", true),
            (&[("/foo/", Prefix)], "/foo", true),
            (&[("/foo/", Prefix)], "/foo/", true),
            (&[("/aaa/bb", Prefix)], "/aaa/bbb", false),
            (&[("/aaa/bbb", Prefix)], "/aaa/bbb", true),
            (&[("/aaa/bbb/", Prefix)], "/aaa/bbb", true),
            (&[("/aaa/bbb", Prefix)], "/aaa/bbb/", true),
            (&[("/aaa/bbb", Prefix)], "/aaa/bbb/ccc", true),
            (&[("/aaa/bbb", Prefix)], "/aaa/bbbxyz", false),
            (&[("/", Prefix), ("/aaa", Prefix)], "/aaa/ccc", true),
            (&[("/aaa", Prefix), ("/", Prefix)], "/ccc", true),
            (&[("/aaa", Prefix)], "/ccc", false),
        ];
        for (paths, request, matches) in cases {
            let t = table(paths);
            assert_eq!(
                t.lookup(request).is_some(),
                *matches,
                "paths {paths:?} request {request}"
            );
        }
        // "/aaa/ccc" with "/" and "/aaa" picks "/aaa" (longest).
        let t = table(&[("/", Prefix), ("/aaa", Prefix)]);
        assert_eq!(hit(&t, "/aaa/ccc").as_deref(), Some("Prefix:/aaa"));
        assert_eq!(hit(&t, "/ccc").as_deref(), Some("Prefix:/"));
        // Exact and Prefix on the same path: Exact for the exact path.
        let t = table(&[("/foo", Exact), ("/foo", Prefix)]);
        assert_eq!(hit(&t, "/foo").as_deref(), Some("Exact:/foo"));
        assert_eq!(hit(&t, "/foo/bar").as_deref(), Some("Prefix:/foo"));
    }

    #[test]
    fn implementation_specific_is_a_plain_string_prefix() {
        use PathType::*;
        let t = table(&[("/foo", ImplementationSpecific)]);
        assert_eq!(hit(&t, "/foobar").as_deref(), Some("ImplementationSpecific:/foo"));
        assert_eq!(hit(&t, "/foo/x").as_deref(), Some("ImplementationSpecific:/foo"));
        assert_eq!(hit(&t, "/fo"), None);
        // Prefix wins at equal length when it matches element-wise; otherwise the
        // ImplementationSpecific entry still answers.
        let t = table(&[("/foo", ImplementationSpecific), ("/foo", Prefix)]);
        assert_eq!(hit(&t, "/foo/x").as_deref(), Some("Prefix:/foo"));
        assert_eq!(hit(&t, "/foobar").as_deref(), Some("ImplementationSpecific:/foo"));
        // Empty path means "/".
        let t = table(&[("", ImplementationSpecific)]);
        assert_eq!(hit(&t, "/anything").as_deref(), Some("ImplementationSpecific:"));
    }

    #[test]
    fn longest_wins_across_types() {
        use PathType::*;
        let t = table(&[
            ("/a", Exact),
            ("/a/b", Prefix),
            ("/a/b/c", ImplementationSpecific),
            ("/", Prefix),
        ]);
        assert_eq!(hit(&t, "/a").as_deref(), Some("Exact:/a"));
        assert_eq!(hit(&t, "/a/b").as_deref(), Some("Prefix:/a/b"));
        assert_eq!(hit(&t, "/a/b/cd").as_deref(), Some("ImplementationSpecific:/a/b/c"));
        assert_eq!(hit(&t, "/a/bc").as_deref(), Some("Prefix:/"));
        assert_eq!(hit(&t, "/a/").as_deref(), Some("Prefix:/"));
    }

    #[test]
    fn same_rule_twice_is_a_conflict_and_the_first_stays() {
        let mut t = PathTable::default();
        assert!(t.insert("/foo", PathType::Prefix, 1).is_ok());
        assert_eq!(t.insert("/foo/", PathType::Prefix, 2), Err(2));
        assert!(t.insert("/foo", PathType::Exact, 3).is_ok());
        assert!(t.insert("/foo", PathType::ImplementationSpecific, 4).is_ok());
        assert_eq!(t.lookup("/foo/x"), Some(&1));
        assert_eq!(t.len(), 3);
        assert!(t.contains("/foo/", PathType::Prefix));
    }

    #[test]
    fn non_ascii_paths_never_panic() {
        let t = table(&[("/é", PathType::Prefix), ("/ab", PathType::ImplementationSpecific)]);
        assert_eq!(hit(&t, "/é/x").as_deref(), Some("Prefix:/é"));
        // "/é" is 3 bytes; probing length 3 on "/aé" would split a char: must not panic.
        assert_eq!(hit(&t, "/aé"), None);
        assert_eq!(hit(&t, ""), None);
    }
}
