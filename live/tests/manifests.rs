//! Every manifest in deploy/ parses as the Kubernetes objects it claims to be (no unknown or
//! misspelt field), every name it refers to exists (in deploy/ or created by a command its
//! comments give), every image is the one the Dockerfile builds, and every flag it passes to
//! `live` is one `live` knows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::Value;

const IMAGE: &str = "autothrottle-rs:latest";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn deploy_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `value` as type T and back: equal only if T knows every field.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value, at: &str) -> T {
    let t: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, value,
        "{at}: a field the type does not know (misspelt?)"
    );
    t
}

/// What a manifest object is and refers to.
#[derive(Default)]
struct Names {
    objects: BTreeSet<(String, String)>,
    /// (kind, name, where) that must exist
    wanted: Vec<(String, String, String)>,
    pod_specs: Vec<(String, PodSpec)>,
}

impl Names {
    fn want(&mut self, kind: &str, name: &str, at: &str) {
        self.wanted
            .push((kind.to_string(), name.to_string(), at.to_string()));
    }

    fn pod(&mut self, spec: PodSpec, at: &str) {
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or("default".into());
        if sa != "default" {
            self.want("ServiceAccount", &sa, at);
        }
        for v in spec.volumes.iter().flatten() {
            if let Some(c) = &v.persistent_volume_claim {
                self.want("PersistentVolumeClaim", &c.claim_name, at);
            }
            if let Some(s) = &v.secret {
                self.want("Secret", s.secret_name.as_deref().unwrap(), at);
            }
            if let Some(c) = &v.config_map {
                self.want("ConfigMap", &c.name, at);
            }
        }
        for c in &spec.containers {
            assert_eq!(c.image.as_deref(), Some(IMAGE), "{at}: {}", c.name);
            for m in c.volume_mounts.iter().flatten() {
                assert!(
                    spec.volumes.iter().flatten().any(|v| v.name == m.name),
                    "{at}: mount of an undeclared volume {}",
                    m.name
                );
            }
        }
        self.pod_specs.push((at.to_string(), spec));
    }
}

#[test]
fn every_manifest_parses_and_every_name_resolves() {
    let mut names = Names::default();
    let mut comments = String::new();
    let files = deploy_files();
    assert!(files.len() >= 4, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        comments.push_str(&text);
        if file.file_name().unwrap() == "prometheus-scrape.yaml" {
            continue; // Prometheus configuration, not Kubernetes objects: below
        }
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        assert!(!docs.is_empty(), "{file:?}");
        for (i, doc) in docs.iter().enumerate() {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file:?}[{i}]: no kind"));
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            let at = format!("{}[{i}] {kind} {name}", file.display());
            let cluster_wide = matches!(kind, "ClusterRole" | "ClusterRoleBinding");
            assert_eq!(
                doc["metadata"]["namespace"].as_str(),
                (!cluster_wide).then_some("autothrottle"),
                "{at}: namespace"
            );
            match kind {
                "ServiceAccount" => drop(typed::<ServiceAccount>(doc, &at)),
                "PersistentVolumeClaim" => drop(typed::<PersistentVolumeClaim>(doc, &at)),
                "ClusterRole" => drop(typed::<ClusterRole>(doc, &at)),
                "Role" => drop(typed::<Role>(doc, &at)),
                "ClusterRoleBinding" | "RoleBinding" => {
                    let (role, subjects) = if kind == "RoleBinding" {
                        let b = typed::<RoleBinding>(doc, &at);
                        (b.role_ref, b.subjects)
                    } else {
                        let b = typed::<ClusterRoleBinding>(doc, &at);
                        (b.role_ref, b.subjects)
                    };
                    names.want(&role.kind, &role.name, &at);
                    for s in subjects.iter().flatten() {
                        names.want(&s.kind, &s.name, &at);
                    }
                }
                "DaemonSet" => {
                    let d = typed::<DaemonSet>(doc, &at);
                    let spec = d.spec.unwrap();
                    let labels = spec.template.metadata.unwrap().labels.unwrap();
                    for (k, v) in spec.selector.match_labels.unwrap() {
                        assert_eq!(labels.get(&k), Some(&v), "{at}: selector");
                    }
                    names.pod(spec.template.spec.unwrap(), &at);
                }
                "Job" => {
                    let j = typed::<Job>(doc, &at);
                    names.pod(j.spec.unwrap().template.spec.unwrap(), &at);
                }
                other => panic!("{at}: no check for kind {other}"),
            }
            names.objects.insert((kind.to_string(), name));
        }
    }
    // Secrets and config maps are made by the operator with the commands the comments give.
    for w in comments.split("create secret generic ").skip(1) {
        let name = w.split_whitespace().next().unwrap();
        names.objects.insert(("Secret".into(), name.into()));
    }
    for w in comments.split("create configmap ").skip(1) {
        let name = w.split_whitespace().next().unwrap();
        names.objects.insert(("ConfigMap".into(), name.into()));
    }
    for (kind, name, at) in &names.wanted {
        assert!(
            names.objects.contains(&(kind.clone(), name.clone())),
            "{at}: refers to {kind} {name}, which nothing in deploy/ creates"
        );
    }
    for kind in ["DaemonSet", "Job", "PersistentVolumeClaim"] {
        assert!(names.objects.iter().any(|(k, _)| k == kind), "no {kind}");
    }
    live_flags_exist(&names.pod_specs);
}

/// The `live` subcommand and flags each container passes exist in this `live`.
fn live_flags_exist(pods: &[(String, PodSpec)]) {
    let mut checked = 0;
    for (at, spec) in pods {
        for c in &spec.containers {
            let args = c.args.clone().unwrap_or_default();
            let words: Vec<String> = match c.command.as_deref() {
                // A shell line: every `live SUBCOMMAND ...` in it, up to the next `&&`.
                Some([sh, flag]) if sh == "/bin/sh" && flag == "-c" => args
                    .join(" ")
                    .split("&&")
                    .filter_map(|part| part.trim().strip_prefix("live "))
                    .flat_map(|rest| {
                        rest.split_whitespace()
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .collect(),
                None => args,
                Some(other) => panic!("{at}: command {other:?}"),
            };
            if words.is_empty() {
                continue;
            }
            let sub = &words[0];
            let help = Command::new(env!("CARGO_BIN_EXE_live"))
                .args([sub.as_str(), "--help"])
                .output()
                .unwrap();
            assert!(help.status.success(), "{at}: live has no subcommand {sub}");
            let help = String::from_utf8(help.stdout).unwrap();
            for w in &words[1..] {
                if let Some(flag) = w.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        help.contains(&format!("--{flag}")),
                        "{at}: live {sub} has no --{flag}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} flags checked");
}

#[test]
fn the_dockerfile_builds_what_the_manifests_run() {
    let docker = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let build = docker
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build step");
    for package in ["live", "sim"] {
        assert!(build.contains(&format!("-p {package}")), "{build}");
        assert!(
            repo().join(package).join("Cargo.toml").exists(),
            "{package} is a workspace package"
        );
        assert!(docker.contains(&format!("target/release/{package}")));
    }
    assert!(
        build.contains("--locked"),
        "the image holds Cargo.lock's versions"
    );
    // The builder is the workspace's minimum Rust.
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .unwrap()
        .trim_end_matches('"');
    assert!(
        docker.contains(&format!("FROM rust:{msrv}-")),
        "rust {msrv}"
    );
    // Plots need a font in the runtime image.
    assert!(docker.contains("fonts-dejavu-core"));
    assert!(docker.contains(&format!(
        "-t REGISTRY/{}",
        IMAGE.replace(":latest", ":VERSION")
    )));
}

#[test]
fn prometheus_scrapes_what_the_agents_serve() {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus-scrape.yaml")).unwrap();
    let config: Value = serde_saphyr::from_str(&text).unwrap();
    let job = &config["scrape_configs"][0];
    assert_eq!(
        job["kubernetes_sd_configs"][0]["namespaces"]["names"][0],
        "autothrottle"
    );
    let keeps: BTreeMap<String, String> = job["relabel_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "keep")
        .map(|r| {
            (
                r["source_labels"][0].as_str().unwrap().to_string(),
                r["regex"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let daemonset = std::fs::read_to_string(repo().join("deploy/agent-daemonset.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&daemonset).unwrap();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["app"].as_str(),
        Some(keeps["__meta_kubernetes_pod_label_app"].as_str())
    );
    let ports = &pod["spec"]["containers"][0]["ports"];
    let port_name = keeps["__meta_kubernetes_pod_container_port_name"].as_str();
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port_name),
        "{ports}"
    );
    // The agent demands the bearer token Prometheus sends.
    let args = pod["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--metrics-token-file"), "{args}");
    assert_eq!(job["authorization"]["type"], "Bearer");
}
