//! flannel's Node annotations: names derived from `--kube-annotation-prefix`, and the set a
//! node publishes about itself (pure).

use crate::lease::{BackendData, LeaseAttrs};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why `--kube-annotation-prefix` was refused (flannel's messages, naming the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("--kube-annotation-prefix={0:?}: prefix can contain at most single slash")]
    TooManySlashes(String),
    #[error("--kube-annotation-prefix={0:?}: prefix must be in a format: fqdn/[0-9a-z-_]*")]
    BadFormat(String),
}

/// The full annotation names for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationKeys {
    pub subnet_manager: String,
    pub backend_type: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub public_ip: String,
    pub public_ipv6: String,
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
    pub node_public_ip: String,
    pub node_public_ipv6: String,
}

impl AnnotationKeys {
    /// flannel's prefix normalisation: at most one `/`; append `/` when there is none;
    /// append `-` unless the prefix ends in `/` or `-`; then `fqdn/[name-]`.
    ///
    /// Unlike flannel, the format check is anchored at the start: flannel's unanchored
    /// regex lets `Flannel.io` through, whose annotations the API server then rejects.
    pub fn new(prefix: &str) -> Result<AnnotationKeys, PrefixError> {
        let mut normalised = prefix.to_string();
        match prefix.matches('/').count() {
            0 => normalised.push('/'),
            1 => {}
            _ => return Err(PrefixError::TooManySlashes(prefix.to_string())),
        }
        if !normalised.ends_with('/') && !normalised.ends_with('-') {
            normalised.push('-');
        }
        if !well_formed(&normalised) {
            return Err(PrefixError::BadFormat(prefix.to_string()));
        }
        let key = |suffix: &str| format!("{normalised}{suffix}");
        Ok(AnnotationKeys {
            subnet_manager: key("kube-subnet-manager"),
            backend_type: key("backend-type"),
            backend_data: key("backend-data"),
            backend_v6_data: key("backend-v6-data"),
            public_ip: key("public-ip"),
            public_ipv6: key("public-ipv6"),
            public_ip_overwrite: key("public-ip-overwrite"),
            public_ipv6_overwrite: key("public-ipv6-overwrite"),
            node_public_ip: key("node-public-ip"),
            node_public_ipv6: key("node-public-ipv6"),
        })
    }

    /// The annotations this node should carry for `attrs` (flannel's `AcquireLease` rules).
    /// `public-ip-overwrite`/`public-ipv6-overwrite` in `current` replace the advertised
    /// addresses; an overwrite that is not an address of its family is ignored and
    /// reported in the second value.
    pub fn published(
        &self,
        attrs: &LeaseAttrs,
        current: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, Vec<String>) {
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        out.insert(self.subnet_manager.clone(), "true".to_string());
        out.insert(self.backend_type.clone(), attrs.backend_type.clone());
        // vxlan (and wireguard) publish a family only when it has backend data; other
        // backends always publish v4 and publish v6 when they have a v6 address.
        let per_family_data = matches!(attrs.backend_type.as_str(), "vxlan" | "wireguard");
        let has_data = |data: &Option<BackendData>| data.as_ref().is_some_and(|d| !d.is_null());
        if !per_family_data || has_data(&attrs.backend_data) {
            out.insert(self.backend_data.clone(), json_text(&attrs.backend_data));
            let public = overwrite::<Ipv4Addr>(current, &self.public_ip_overwrite, &mut problems)
                .unwrap_or(attrs.public_ip);
            out.insert(self.public_ip.clone(), public.to_string());
        }
        let publish_v6 = if per_family_data {
            has_data(&attrs.backend_v6_data)
                && (attrs.backend_type == "vxlan" || attrs.public_ipv6.is_some())
        } else {
            attrs.public_ipv6.is_some()
        };
        if let (true, Some(v6)) = (publish_v6, attrs.public_ipv6) {
            out.insert(
                self.backend_v6_data.clone(),
                json_text(&attrs.backend_v6_data),
            );
            let public = overwrite::<Ipv6Addr>(current, &self.public_ipv6_overwrite, &mut problems)
                .unwrap_or(v6);
            out.insert(self.public_ipv6.clone(), public.to_string());
        }
        (out, problems)
    }
}

/// The annotations of `wanted` that `current` lacks or holds with another value; `None`
/// when nothing differs (so nothing is patched).
pub fn annotation_changes(
    current: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let changes: BTreeMap<String, String> = wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!changes.is_empty()).then_some(changes)
}

/// Backend data as flannel writes it: Go's encoding of a `json.RawMessage`, `null` if none.
fn json_text(data: &Option<BackendData>) -> String {
    data.as_ref()
        .map_or_else(|| "null".to_string(), |d| d.as_str().to_string())
}

fn overwrite<T: std::str::FromStr>(
    current: &BTreeMap<String, String>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let text = current.get(key)?;
    match text.trim().parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            problems.push(format!(
                "annotation {key}={text:?} is not an address of its family; ignored"
            ));
            None
        }
    }
}

/// `fqdn/` or `fqdn/name-`, lowercase letters, digits, `_`, `-` and `.` only.
fn well_formed(prefix: &str) -> bool {
    let Some((domain, name)) = prefix.split_once('/') else {
        return false;
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2 && labels.iter().all(|l| word(l));
    let name_ok = name.is_empty() || name.strip_suffix('-').is_some_and(word);
    domain_ok && name_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefixes_are_normalised_like_flannel() {
        let cases = [
            (
                "flannel.alpha.coreos.com",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/",
                "flannel.alpha.coreos.com/backend-type",
            ),
            ("org.com/9", "org.com/9-backend-type"),
            ("org.com/node-", "org.com/node-backend-type"),
            ("weft.example.io/x_y", "weft.example.io/x_y-backend-type"),
        ];
        for (prefix, backend_type) in cases {
            let keys = AnnotationKeys::new(prefix).unwrap();
            assert_eq!(keys.backend_type, backend_type, "prefix {prefix}");
        }
        let keys = AnnotationKeys::new("flannel.alpha.coreos.com").unwrap();
        assert_eq!(
            keys.public_ip_overwrite,
            "flannel.alpha.coreos.com/public-ip-overwrite"
        );
        assert_eq!(
            keys.subnet_manager,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
    }

    #[test]
    fn bad_prefixes_are_refused_with_flannels_message() {
        assert_eq!(
            AnnotationKeys::new("a.b/c/d").unwrap_err().to_string(),
            "--kube-annotation-prefix=\"a.b/c/d\": prefix can contain at most single slash"
        );
        for bad in [
            "org",
            "Flannel.io",
            "org.com/Name",
            ".com",
            "a..b/",
            "a.b/-",
        ] {
            assert_eq!(
                AnnotationKeys::new(bad).unwrap_err().to_string(),
                format!(
                    "--kube-annotation-prefix={bad:?}: prefix must be in a format: fqdn/[0-9a-z-_]*"
                ),
            );
        }
    }

    fn vxlan_attrs(v6: bool) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: "198.18.0.11".parse().unwrap(),
            public_ipv6: v6.then(|| "fd00::11".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: Some(json!({"VNI": 1, "VtepMAC": "12:c6:65:89:b4:e3"}).into()),
            backend_v6_data: v6.then(|| json!({"VNI": 1, "VtepMAC": "12:c6:65:89:b4:e4"}).into()),
        }
    }

    fn keys() -> AnnotationKeys {
        AnnotationKeys::new("flannel.alpha.coreos.com").unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn vxlan_publishes_flannels_annotations() {
        let (published, problems) = keys().published(&vxlan_attrs(false), &BTreeMap::new());
        assert!(problems.is_empty());
        assert_eq!(
            published,
            map(&[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-data", r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#),
                ("public-ip", "198.18.0.11"),
            ])
        );
        let (dual, _) = keys().published(&vxlan_attrs(true), &BTreeMap::new());
        assert_eq!(dual[&keys().public_ipv6], "fd00::11");
        assert_eq!(
            dual[&keys().backend_v6_data],
            r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e4"}"#
        );
    }

    #[test]
    fn ipv6_only_vxlan_publishes_no_v4_annotations() {
        let mut attrs = vxlan_attrs(true);
        attrs.backend_data = None;
        attrs.public_ip = Ipv4Addr::UNSPECIFIED;
        let (published, _) = keys().published(&attrs, &BTreeMap::new());
        assert!(!published.contains_key(&keys().public_ip));
        assert!(!published.contains_key(&keys().backend_data));
        assert_eq!(published[&keys().public_ipv6], "fd00::11");
    }

    #[test]
    fn alloc_publishes_null_backend_data() {
        let attrs = LeaseAttrs {
            public_ip: "198.18.0.11".parse().unwrap(),
            ..LeaseAttrs::default()
        };
        let (published, _) = keys().published(&attrs, &BTreeMap::new());
        assert_eq!(published[&keys().backend_data], "null");
        assert_eq!(published[&keys().backend_type], "");
        assert!(!published.contains_key(&keys().public_ipv6));
    }

    #[test]
    fn overwrite_annotations_replace_the_advertised_addresses() {
        let current = map(&[
            ("public-ip-overwrite", "203.0.113.7"),
            ("public-ipv6-overwrite", "2001:db8::7"),
        ]);
        let (published, problems) = keys().published(&vxlan_attrs(true), &current);
        assert!(problems.is_empty());
        assert_eq!(published[&keys().public_ip], "203.0.113.7");
        assert_eq!(published[&keys().public_ipv6], "2001:db8::7");
    }

    #[test]
    fn a_malformed_overwrite_is_ignored_and_reported() {
        let current = map(&[
            ("public-ip-overwrite", "fd00::1"),
            ("public-ipv6-overwrite", "x"),
        ]);
        let (published, problems) = keys().published(&vxlan_attrs(true), &current);
        assert_eq!(published[&keys().public_ip], "198.18.0.11");
        assert_eq!(published[&keys().public_ipv6], "fd00::11");
        assert_eq!(
            problems,
            vec![
                "annotation flannel.alpha.coreos.com/public-ip-overwrite=\"fd00::1\" is not an address of its family; ignored",
                "annotation flannel.alpha.coreos.com/public-ipv6-overwrite=\"x\" is not an address of its family; ignored",
            ]
        );
    }

    #[test]
    fn only_differing_annotations_are_patched() {
        let (wanted, _) = keys().published(&vxlan_attrs(false), &BTreeMap::new());
        assert_eq!(annotation_changes(&wanted, &wanted), None);
        let mut current = wanted.clone();
        current.insert(keys().public_ip.clone(), "198.18.0.99".into());
        current.insert("other/annotation".into(), "kept".into());
        assert_eq!(
            annotation_changes(&current, &wanted),
            Some(map(&[("public-ip", "198.18.0.11")]))
        );
    }
}
