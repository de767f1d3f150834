//! Pod discovery against a mock Kubernetes API (kube-rs' tower-test approach).

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Mutex;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use live::agent::Agent;
use live::cgroup::{Driver, Root};
use live::discovery::{self, Scope};
use live::journal::Journal;
use tower_test::mock;

fn pod(name: &str, uid: &str, container_id: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "uid": uid},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web"}]},
        "status": {"phase": "Running", "qosClass": "Burstable", "containerStatuses": [
            {"name": "web", "containerID": container_id, "image": "x", "imageID": "x", "ready": true, "restartCount": 0, "state": {"running": {}}}
        ]}
    })
}

fn pod_list(pods: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
    )
    .unwrap()
}

fn scope() -> Scope {
    Scope {
        namespace: "hotel".into(),
        node: "node-1".into(),
        selector: Some("app=hotel".into()),
        driver: Driver::Cgroupfs,
    }
}

/// A v2-like hierarchy holding the kubelet's cgroupfs paths for two container ids.
fn hierarchy() -> (tempfile::TempDir, Root) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cgroup.controllers"), "cpu\n").unwrap();
    for id in ["aaa", "bbb"] {
        let g = dir.path().join("kubepods/burstable/podu-1").join(id);
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(
            g.join("cpu.stat"),
            "usage_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
        )
        .unwrap();
    }
    let root = Root::detect(dir.path()).unwrap();
    (dir, root)
}

#[tokio::test]
async fn lists_pods_remaps_restarts_and_rides_out_api_errors() {
    let (dir, root) = hierarchy();
    let agent = Mutex::new(Agent::new(
        "node-1",
        "t",
        root,
        Journal::new(&dir.path().join("j.json")),
        60.0,
    ));
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        // 1: the pod with container aaa.
        let (req, send) = handle.next_request().await.expect("first list");
        let uri = req.uri().to_string();
        assert!(uri.starts_with("/api/v1/namespaces/hotel/pods?"), "{uri}");
        assert!(
            uri.contains("fieldSelector=spec.nodeName%3Dnode-1"),
            "{uri}"
        );
        assert!(uri.contains("labelSelector=app%3Dhotel"), "{uri}");
        send.send_response(Response::new(Body::from(pod_list(vec![pod(
            "web-1",
            "u-1",
            "containerd://aaa",
        )]))));
        // 2: the API server fails.
        let (_, send) = handle.next_request().await.expect("second list");
        let mut r = Response::new(Body::from(br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd is sad","reason":"InternalError","code":500}"#.to_vec()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        send.send_response(r);
        // 3: the container restarted with a new id.
        let (_, send) = handle.next_request().await.expect("third list");
        send.send_response(Response::new(Body::from(pod_list(vec![pod(
            "web-1",
            "u-1",
            "containerd://bbb",
        )]))));
    });
    let client = Client::new(service, "default");
    let statics = BTreeMap::new();

    assert_eq!(
        discovery::refresh(&client, &scope(), &statics, &agent)
            .await
            .unwrap(),
        1
    );
    {
        let mut a = agent.lock().unwrap();
        assert_eq!(a.known(), vec!["web".to_string()]);
        let r = a.handle(
            live::protocol::Request {
                id: 1,
                token: "t".into(),
                call: live::protocol::Call::Start {
                    scalers: [(
                        "web".to_string(),
                        controller::ScalerKind::Const.config(0.0, 1.5),
                    )]
                    .into(),
                    bursts: Default::default(),
                },
            },
            0.0,
        );
        assert!(r.ok, "{r:?}");
        a.tick(0.1);
    }
    let aaa = dir.path().join("kubepods/burstable/podu-1/aaa/cpu.max");
    assert_eq!(std::fs::read_to_string(&aaa).unwrap(), "150000 100000\n");

    let e = discovery::refresh(&client, &scope(), &statics, &agent)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("etcd is sad"), "{e}");
    {
        let mut a = agent.lock().unwrap();
        assert_eq!(
            a.controlling(),
            vec!["web".to_string()],
            "still controlling through the API error"
        );
        a.tick(0.2);
    }
    assert_eq!(std::fs::read_to_string(&aaa).unwrap(), "150000 100000\n");

    discovery::refresh(&client, &scope(), &statics, &agent)
        .await
        .unwrap();
    let (known, controlling) = {
        let a = agent.lock().unwrap();
        (a.known(), a.controlling())
    };
    assert_eq!(known, vec!["web".to_string()]);
    assert!(
        controlling.is_empty(),
        "the restarted container waits for the coordinator"
    );
    assert_eq!(
        std::fs::read_to_string(&aaa).unwrap(),
        "max 100000\n",
        "the old group was restored"
    );
    server.await.unwrap();
}

/// An agent pod of the DaemonSet: on `node` at `ip`, in `phase`.
fn agent_pod(name: &str, node: &str, ip: Option<&str>, phase: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "autothrottle-agent"}},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "ports": [
            {"name": "metrics", "containerPort": 9102},
            {"name": "control", "containerPort": 7171}
        ]}]},
        "status": {"phase": phase, "podIP": ip}
    })
}

#[tokio::test]
async fn a_coordinator_in_the_cluster_finds_the_agents() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (req, send) = handle.next_request().await.expect("list");
        let uri = req.uri().to_string();
        assert!(
            uri.starts_with("/api/v1/namespaces/autothrottle/pods?"),
            "{uri}"
        );
        assert!(
            uri.contains("labelSelector=app%3Dautothrottle-agent"),
            "{uri}"
        );
        send.send_response(Response::new(Body::from(pod_list(vec![
            agent_pod("agent-a", "worker-1", Some("10.1.0.5"), "Running"),
            agent_pod("agent-b", "worker-2", Some("fd00::7"), "Running"),
            agent_pod("agent-c", "worker-3", None, "Pending"),
        ]))));
        // Then nothing runs yet; then two agents on one node.
        let (_, send) = handle.next_request().await.expect("second list");
        send.send_response(Response::new(Body::from(pod_list(vec![agent_pod(
            "agent-c", "worker-3", None, "Pending",
        )]))));
        let (_, send) = handle.next_request().await.expect("third list");
        send.send_response(Response::new(Body::from(pod_list(vec![
            agent_pod("agent-a", "worker-1", Some("10.1.0.5"), "Running"),
            agent_pod("agent-z", "worker-1", Some("10.1.0.6"), "Running"),
        ]))));
    });
    let client = Client::new(service, "default");
    let found = discovery::agents(&client, "autothrottle", "app=autothrottle-agent")
        .await
        .unwrap();
    assert_eq!(
        found,
        BTreeMap::from([
            ("worker-1".to_string(), "10.1.0.5:7171".to_string()),
            ("worker-2".to_string(), "[fd00::7]:7171".to_string()),
        ])
    );
    let e = discovery::agents(&client, "autothrottle", "app=autothrottle-agent")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no running agent pod") && e.contains("agent-c"),
        "{e}"
    );
    let e = discovery::agents(&client, "autothrottle", "app=autothrottle-agent")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("two agent pods on node worker-1"), "{e}");
    server.await.unwrap();
}
