//! The real-cluster tier (scripts/k8s-test.sh and scripts/k8s/) is too slow for CI, so
//! nothing runs it on every change. This test (no root, seconds) keeps it in step with the
//! chart and the Containerfile it installs: the values it gives helm render through the
//! chart into the image it builds, never pulled; every host path weft's DaemonSet mounts is
//! one each node has its own copy of; containerd's CNI directories are the chart's; the
//! Containerfile takes the base images the tier passes; the labels and names the checks
//! look for are the chart's; every component binary the scripts run is one they build;
//! every image the tier builds is imported by every node; the NetworkPolicy sidecar the
//! values enable runs the image the tier builds for it, and its command is in that image.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;
use support::chart::{self, documents, object, render_values};
use support::k8s_tier::{SCRIPTS, tier};

fn variable(name: &str) -> String {
    tier(&format!("echo \"${name}\"")).trim().to_string()
}

/// The words of a variable that holds a list.
fn words(name: &str) -> BTreeSet<String> {
    variable(name)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The chart rendered with the values the tier gives `helm install` for `backend`.
fn rendered(backend: &str) -> Vec<Value> {
    let values = tier(&format!("helm_values {backend}"));
    documents(&render_values(&values).unwrap_or_else(|e| panic!("{values}\n{e}")))
}

fn daemonset(docs: &[Value]) -> &Value {
    object(docs, "DaemonSet", "kube-flannel-ds")
}

#[test]
fn the_scripts_are_valid_bash() {
    for script in SCRIPTS {
        let status = Command::new("bash")
            .args(["-n", script])
            .current_dir(chart::repo())
            .status()
            .expect("bash");
        assert!(status.success(), "bash -n {script}");
    }
}

/// The name of the chart's NetworkPolicy sidecar container (netpol.enabled).
const NETPOL_CONTAINER: &str = "kube-network-policies";

fn netpol_image() -> String {
    format!(
        "{}:{}",
        variable("NETPOL_IMAGE_REPOSITORY"),
        variable("NETPOL_IMAGE_TAG")
    )
}

/// The NetworkPolicy sidecar in a rendering of the tier's values.
fn netpol_sidecar(docs: &[Value]) -> &Value {
    daemonset(docs)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == NETPOL_CONTAINER)
        .expect("the tier's values enable netpol: the sidecar is rendered")
}

#[test]
fn the_values_the_tier_gives_helm_install_its_own_image_never_pulled() {
    let image = format!(
        "{}:{}",
        variable("WEFT_IMAGE_REPOSITORY"),
        variable("WEFT_IMAGE_TAG")
    );
    for backend in ["vxlan", "host-gw"] {
        let docs = rendered(backend);
        let spec = &daemonset(&docs)["spec"]["template"]["spec"];
        let containers = spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array())
            .flatten();
        for container in containers {
            if container["name"] == NETPOL_CONTAINER {
                // The chart sets no pull policy for the sidecar: Kubernetes' default,
                // IfNotPresent for a tag other than `latest`, finds it imported.
                assert_eq!(container["image"], netpol_image().as_str(), "{container}");
                assert!(
                    container["imagePullPolicy"].is_null()
                        || container["imagePullPolicy"] == "IfNotPresent"
                        || container["imagePullPolicy"] == "Never",
                    "{container}"
                );
                assert_ne!(variable("NETPOL_IMAGE_TAG"), "latest");
                continue;
            }
            assert_eq!(container["image"], image.as_str(), "{container}");
            assert_eq!(container["imagePullPolicy"], "Never", "{container}");
        }
        netpol_sidecar(&docs);
        let config = object(&docs, "ConfigMap", "kube-flannel-cfg");
        let net_conf: Value =
            serde_json::from_str(config["data"]["net-conf.json"].as_str().unwrap()).unwrap();
        assert_eq!(net_conf["Network"], variable("CLUSTER_CIDR").as_str());
        assert_eq!(net_conf["Backend"]["Type"], backend);
    }
}

#[test]
fn every_host_path_of_the_daemonset_is_the_nodes_own() {
    let private = words("NODE_PRIVATE_DIRS");
    // The iptables lock may be shared: it only serialises iptables between the nodes; so
    // may what the tier lists as shared (read-only, and made if the host lacks it).
    let mut shared = words("NODE_SHARED_DIRS");
    shared.insert("/run/xtables.lock".to_string());
    let docs = rendered("vxlan");
    let volumes = daemonset(&docs)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert!(host_paths.contains(&"/run/flannel"), "{host_paths:?}");
    for path in host_paths {
        assert!(
            private.contains(path) || shared.contains(path),
            "the DaemonSet mounts host path {path}, which the tier's nodes share: add it to \
             NODE_PRIVATE_DIRS in scripts/k8s/cluster.sh"
        );
    }
    // The shared ones are mounted read-only.
    let containers = daemonset(&docs)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    for volume in volumes {
        let Some(path) = volume["hostPath"]["path"].as_str() else {
            continue;
        };
        if !words("NODE_SHARED_DIRS").contains(path) {
            continue;
        }
        for container in containers {
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                if mount["name"] == volume["name"] {
                    assert_eq!(mount["readOnly"], true, "{path} in {container}");
                }
            }
        }
    }
}

#[test]
fn containerd_looks_for_cni_where_the_chart_installs_it() {
    let config = tier("containerd_config wk-n1");
    let docs = rendered("vxlan");
    let volumes = &daemonset(&docs)["spec"]["template"]["spec"]["volumes"];
    let host_path = |name: &str| {
        volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("no volume {name}"))
            .to_string()
    };
    assert!(
        config.contains(&format!("bin_dir = \"{}\"", host_path("cni-plugin"))),
        "{config}"
    );
    assert!(
        config.contains(&format!("conf_dir = \"{}\"", host_path("cni"))),
        "{config}"
    );
    assert!(
        config.contains(&format!("sandbox_image = \"{}\"", variable("PAUSE_IMAGE"))),
        "{config}"
    );
}

#[test]
fn the_containerfile_takes_the_base_images_the_tier_passes() {
    let containerfile = std::fs::read_to_string(chart::repo().join("Containerfile")).unwrap();
    let build = std::fs::read_to_string(chart::repo().join("scripts/k8s/build.sh")).unwrap();
    for arg in ["BUILD_IMAGE", "RUNTIME_IMAGE"] {
        assert!(
            containerfile.contains(&format!("\nARG {arg}=")),
            "the Containerfile has no ARG {arg}"
        );
        assert!(
            containerfile.contains(&format!("FROM ${{{arg}}}")),
            "no stage is FROM ${{{arg}}}"
        );
        assert!(
            build.contains(&format!("--build-arg {arg}=")),
            "build.sh does not pass {arg}"
        );
    }
    let ignore = std::fs::read_to_string(chart::repo().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context would carry target/"
    );
}

#[test]
fn the_checks_find_weft_by_the_charts_names_and_labels() {
    let docs = rendered("vxlan");
    let labels = &daemonset(&docs)["spec"]["template"]["metadata"]["labels"];
    let selector = variable("WEFT_LABEL");
    let (key, value) = selector.split_once('=').unwrap();
    assert_eq!(labels[key], value, "{labels}");
    let checks = std::fs::read_to_string(chart::repo().join("scripts/k8s/checks.sh")).unwrap();
    assert!(checks.contains("daemonset/kube-flannel-ds"));
    // The checks scrape the health port the chart gives weftd.
    let args =
        chart::strings(&daemonset(&docs)["spec"]["template"]["spec"]["containers"][0]["args"]);
    let port = args
        .iter()
        .find_map(|a| a.strip_prefix("--healthz-port="))
        .expect("--healthz-port");
    assert!(checks.contains(&format!(":{port}/metrics")), "port {port}");
}

#[test]
fn every_component_the_scripts_run_is_one_they_build() {
    let built = words("K8S_COMMANDS");
    let pattern = regex::Regex::new(r#"\$K8S_BIN/([a-z-]+)"#).unwrap();
    for script in SCRIPTS {
        let text = std::fs::read_to_string(chart::repo().join(script)).unwrap();
        for capture in pattern.captures_iter(&text) {
            let command = &capture[1];
            assert!(
                built.contains(command) || ["agnhost", "pause"].contains(&command),
                "{script} runs $K8S_BIN/{command}, which build_components does not build"
            );
        }
    }
}

#[test]
fn every_image_the_tier_builds_every_node_imports() {
    let build = std::fs::read_to_string(chart::repo().join("scripts/k8s/build.sh")).unwrap();
    let imported: BTreeSet<String> = tier("image_archives")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let pattern =
        regex::Regex::new(r#"(?:archive_image "|docker-archive:)(\$IMAGES_DIR/[^":]+)"#).unwrap();
    let built: Vec<String> = pattern
        .captures_iter(&build)
        .map(|c| variable(&c[1][1..]))
        .collect();
    assert!(built.len() >= 5, "{built:?}");
    for archive in built {
        assert!(
            imported.contains(&archive),
            "build.sh makes {archive}, which image_archives (what each node imports) lacks"
        );
    }
}

#[test]
fn the_netpol_sidecar_runs_a_file_the_tiers_image_has() {
    let docs = rendered("vxlan");
    let sidecar = netpol_sidecar(&docs);
    let command = chart::strings(&sidecar["command"]);
    let program = command.first().expect("the sidecar's command");
    // fill_netpol with a stand-in for the built binary.
    let cache = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let built = cache.path().join(format!(
        "kube-network-policies-{}",
        variable("NETPOL_IMAGE_TAG")
    ));
    std::fs::create_dir_all(&built).unwrap();
    std::fs::write(built.join("netpol"), "stand-in").unwrap();
    tier(&format!(
        "K8S_CACHE={} && fill_netpol {}",
        cache.path().display(),
        root.path().display()
    ));
    let in_image = root.path().join(program.trim_start_matches('/'));
    assert_eq!(
        std::fs::read_to_string(&in_image).ok().as_deref(),
        Some("stand-in"),
        "the chart runs {program}; fill_netpol does not put the binary there"
    );
}
