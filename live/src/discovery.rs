//! Which of the app's containers run on this node, and where their cgroups are.
//!
//! The agent lists the pods of a namespace on its node (a field selector on `spec.nodeName`,
//! optionally a label selector), takes every running container's id and the pod's UID and QoS
//! class, and spells the cgroup path the way the kubelet lays it out
//! ([`crate::cgroup::kubepods_path`]). It re-lists periodically: a restarted container has a
//! new id and so a new cgroup, a rescheduled pod leaves the node or arrives. When the API
//! fails, the agent keeps controlling what it knows and retries with exponential backoff.
//!
//! A container is named after its container name (the scenario's service name); if two pods
//! on one node run a container of the same name, each is named `container@pod`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::Client;

use crate::cgroup::{kubepods_path, Driver, QosClass};
use crate::LiveError;

/// Where to look.
#[derive(Debug, Clone)]
pub struct Scope {
    pub namespace: String,
    pub node: String,
    /// A label selector such as `app.kubernetes.io/part-of=hotel`.
    pub selector: Option<String>,
    pub driver: Driver,
}

/// The pods of the scope, from the API.
pub async fn list(client: &Client, scope: &Scope) -> Result<Vec<Pod>, LiveError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &scope.namespace);
    let mut lp = ListParams::default().fields(&format!("spec.nodeName={}", scope.node));
    if let Some(s) = &scope.selector {
        lp = lp.labels(s);
    }
    let pods = api
        .list(&lp)
        .await
        .map_err(|e| LiveError::Kube(e.to_string()))?;
    Ok(pods.items)
}

/// Lists the scope's pods and hands the agent the containers it may control (plus `statics`).
/// On an API error nothing changes: the agent keeps controlling what it knows.
pub async fn refresh(
    client: &Client,
    scope: &Scope,
    statics: &BTreeMap<String, PathBuf>,
    agent: &std::sync::Mutex<crate::agent::Agent>,
) -> Result<usize, LiveError> {
    let pods = list(client, scope).await?;
    let (mut map, skipped) = containers(&pods, scope.driver);
    for s in skipped {
        tracing::debug!(skipped = %s);
    }
    map.extend(statics.clone());
    let n = map.len();
    agent.lock().expect("agent lock").set_known(map);
    Ok(n)
}

/// Maps pods to `name -> cgroup path`; returns the map and what was skipped and why.
pub fn containers(pods: &[Pod], driver: Driver) -> (BTreeMap<String, PathBuf>, Vec<String>) {
    let mut found: Vec<(String, String, PathBuf)> = Vec::new(); // (container, pod, path)
    let mut skipped = Vec::new();
    for pod in pods {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let Some(uid) = pod.metadata.uid.as_deref() else {
            skipped.push(format!("{pod_name}: no uid"));
            continue;
        };
        let Some(status) = &pod.status else {
            skipped.push(format!("{pod_name}: no status yet"));
            continue;
        };
        if status.phase.as_deref() != Some("Running") {
            skipped.push(format!(
                "{pod_name}: phase {}",
                status.phase.as_deref().unwrap_or("unknown")
            ));
            continue;
        }
        let Some(qos) = status.qos_class.as_deref().and_then(QosClass::parse) else {
            skipped.push(format!("{pod_name}: unknown QoS class"));
            continue;
        };
        for c in status.container_statuses.iter().flatten() {
            let running = c.state.as_ref().and_then(|s| s.running.as_ref()).is_some();
            match (&c.container_id, running) {
                (Some(id), true) => match kubepods_path(driver, qos, uid, id) {
                    Ok(path) => found.push((c.name.clone(), pod_name.clone(), path)),
                    Err(e) => skipped.push(format!("{pod_name}/{}: {e}", c.name)),
                },
                _ => skipped.push(format!("{pod_name}/{}: not running", c.name)),
            }
        }
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (c, _, _) in &found {
        *count.entry(c.as_str()).or_default() += 1;
    }
    let map = found
        .iter()
        .map(|(c, pod, path)| {
            let name = if count[c.as_str()] > 1 {
                format!("{c}@{pod}")
            } else {
                c.clone()
            };
            (name, path.clone())
        })
        .collect();
    (map, skipped)
}

/// The port an agent pod listens on for the coordinator when its container declares none
/// named `control`.
pub const AGENT_PORT: u16 = 7070;

/// Where the agents of a cluster are, for a coordinator running in it (`live run
/// --agents-from-kube`): the running pods `selector` picks in `namespace`, by node name, each
/// at its pod IP and the port of its container port named `control`. Pods not yet running or
/// without an IP are left out (they are named in the error when none is left).
pub async fn agents(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<BTreeMap<String, String>, LiveError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| LiveError::Kube(e.to_string()))?;
    let mut found = BTreeMap::new();
    let mut skipped = Vec::new();
    for pod in &pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let status = pod.status.as_ref();
        let ip = status.and_then(|s| s.pod_ip.clone());
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let port = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("control"))
            .map_or(AGENT_PORT as i32, |p| p.container_port);
        match (node, ip, running) {
            (Some(node), Some(ip), true) => {
                let addr = if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                };
                if let Some((_, other)) = found.insert(node.clone(), (addr, name.clone())) {
                    return Err(LiveError::Config(format!(
                        "two agent pods on node {node} ({other} and {name}): one agent per node"
                    )));
                }
            }
            _ => skipped.push(format!("{name} (not running or no IP yet)")),
        }
    }
    if found.is_empty() {
        return Err(LiveError::Config(format!(
            "no running agent pod in namespace {namespace} matches {selector}{}",
            if skipped.is_empty() {
                String::new()
            } else {
                format!(": {}", skipped.join(", "))
            }
        )));
    }
    Ok(found
        .into_iter()
        .map(|(node, (addr, _))| (node, addr))
        .collect())
}

/// Exponential backoff between failed API calls: 1 s, 2 s, 4 s ... up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: Duration::from_secs(1),
            max,
        }
    }

    /// The wait after one more failure.
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_secs(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, qos: &str, containers: &[(&str, &str)]) -> Pod {
        let statuses: Vec<serde_json::Value> = containers
            .iter()
            .map(|(n, id)| serde_json::json!({"name": n, "containerID": id, "image": "x", "imageID": "x", "ready": true, "restartCount": 0, "state": {"running": {}}}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": uid},
            "spec": {"containers": containers.iter().map(|(n, _)| serde_json::json!({"name": n})).collect::<Vec<_>>()},
            "status": {"phase": "Running", "qosClass": qos, "containerStatuses": statuses}
        }))
        .unwrap()
    }

    #[test]
    fn maps_pods_to_cgroups() {
        let pods = vec![
            pod("web-1", "u-1", "Burstable", &[("web", "containerd://aaa")]),
            pod(
                "db-1",
                "u-2",
                "Guaranteed",
                &[("db", "containerd://bbb"), ("sidecar", "containerd://ccc")],
            ),
        ];
        let (map, skipped) = containers(&pods, Driver::Cgroupfs);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(map["web"], PathBuf::from("kubepods/burstable/podu-1/aaa"));
        assert_eq!(map["db"], PathBuf::from("kubepods/podu-2/bbb"));
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn replicas_get_pod_qualified_names_and_pending_pods_are_skipped() {
        let mut pending = pod("web-3", "u-3", "Burstable", &[("web", "containerd://eee")]);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let pods = vec![
            pod("web-1", "u-1", "Burstable", &[("web", "containerd://aaa")]),
            pod("web-2", "u-2", "Burstable", &[("web", "containerd://ddd")]),
            pending,
        ];
        let (map, skipped) = containers(&pods, Driver::Systemd);
        assert_eq!(
            map.keys().cloned().collect::<Vec<_>>(),
            vec!["web@web-1", "web@web-2"]
        );
        assert_eq!(skipped, vec!["web-3: phase Pending".to_string()]);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.fail().as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.fail().as_secs(), 1);
    }
}
