//! What a live run is: the run itself and where the app and the agents are.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controller::{ScalerKind, Targets};
use record::{RunInfo, RunPlan};
use scenarios::Scenario;
use traces::Trace;

use crate::loadgen::{LoadConfig, LoadGen, RequestKind};
use crate::LiveError;

/// Everything a live run needs: the run itself ([`RunPlan`], as the simulator runs it) and
/// where the app and the agents are.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub plan: RunPlan,
    /// Where requests go: `http://host:port`.
    pub url: String,
    pub token: String,
    /// Agent address per node name (the scenario's `agent` fields, possibly overridden).
    pub agents: BTreeMap<String, String>,
    /// TLS to the agents ([`crate::tls::client`]); plain TCP if `None`.
    pub tls: Option<crate::tls::AgentTls>,
    /// A request not answered within this counts as a miss at this latency.
    pub request_timeout: Duration,
    /// Timeout of one protocol call to an agent.
    pub agent_timeout: Duration,
    pub max_in_flight: usize,
    /// Give up when the app has answered none of the requests of this many seconds.
    pub dead_app_s: usize,
}

impl RunSpec {
    /// A run with the paper's defaults (180 s ramp, Captains at 0.1, no Tower, services.csv
    /// written) and the scenario's agent addresses.
    pub fn new(scenario: Arc<Scenario>, trace: Arc<Trace>, url: &str, token: &str) -> Self {
        let agents = scenario
            .file
            .nodes
            .iter()
            .filter_map(|n| n.agent.clone().map(|a| (n.name.clone(), a)))
            .collect();
        let mut plan = RunPlan::new(scenario, trace, ScalerKind::Captain, Targets::new(0.1, 0.1));
        plan.services_csv = true;
        RunSpec {
            plan,
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agents,
            tls: None,
            request_timeout: Duration::from_secs(10),
            agent_timeout: Duration::from_secs(2),
            max_in_flight: 4096,
            dead_app_s: 30,
        }
    }

    /// The load generator's configuration (the scenario's request mix with its HTTP paths).
    pub fn load_config(&self) -> Result<LoadConfig, LiveError> {
        let plan = &self.plan;
        let mut mix = Vec::new();
        for r in &plan.scenario.file.requests {
            let http = r.http.clone().ok_or_else(|| {
                LiveError::Config(format!(
                    "{}: requests.{}: no `http` method and path, so it cannot be sent to a live app",
                    plan.scenario.source, r.name
                ))
            })?;
            mix.push(RequestKind {
                name: r.name.clone(),
                weight: r.weight,
                http,
            });
        }
        Ok(LoadConfig {
            base: self.url.clone(),
            rates: plan.rates(),
            load: plan.load,
            mix,
            live: plan.scenario.file.live.clone(),
            seed: plan.seed,
            timeout: self.request_timeout,
            max_in_flight: self.max_in_flight,
            measure_from_s: plan.ramp_s,
            arrivals_log: None,
            mix_cycle_s: plan.mix_cycle_s,
        })
    }

    /// Refuses what cannot run, before anything is touched.
    pub fn validate(&self) -> Result<(), LiveError> {
        self.plan.validate()?;
        if self.plan.initial_limits.is_some() {
            return Err(LiveError::Config(
                "per-service initial limits are a simulator setting; live runs take one for all"
                    .into(),
            ));
        }
        if self.agents.is_empty() {
            return Err(LiveError::Config(format!(
                "no agent addresses: the nodes of {} have no `agent = \"host:port\"` and none was given for this run",
                self.plan.scenario.source
            )));
        }
        if self.plan.rates().is_empty() {
            return Err(LiveError::Config("the workload is empty".into()));
        }
        LoadGen::new(self.load_config()?)
            .map_err(|e| LiveError::Config(format!("{}: {e}", self.plan.scenario.source)))?;
        Ok(())
    }

    /// The run's static description.
    pub fn info(&self) -> RunInfo {
        self.plan.info("live")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use controller::TowerKind;

    pub(crate) fn spec() -> RunSpec {
        let scenario = Arc::new(Scenario::builtin("demo").unwrap());
        let trace = Arc::new(Trace::constant(100, 60));
        RunSpec::new(scenario, trace, "http://127.0.0.1:1/", "tok")
    }

    #[test]
    fn agents_come_from_the_scenario_and_the_mix_from_its_http_paths() {
        let s = spec();
        assert_eq!(s.url, "http://127.0.0.1:1");
        assert_eq!(s.agents["local"], "127.0.0.1:7070");
        let lc = s.load_config().unwrap();
        assert_eq!(lc.mix.len(), 2);
        assert_eq!(lc.mix[1].http.method, "POST");
        let body = lc.mix[1].http.body.clone().unwrap();
        assert!(body.contains("{int:1..64}"));
        assert_eq!(lc.mix[0].http.body, None);
        assert_eq!(lc.rates.len(), 180 + 60);
        assert_eq!(lc.measure_from_s, 180);
        s.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_refused_before_anything_runs() {
        let mut s = spec();
        s.plan.tower = TowerKind::Bandit { explore: 0.0 };
        s.plan.scaler = ScalerKind::K8sCpu;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs the captain scaler"));
        let mut s = spec();
        s.agents.clear();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no agent addresses"));
        let mut s = spec();
        s.url = "ftp://x".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.plan.targets = Targets::new(1.5, 0.1);
        assert!(s.validate().unwrap_err().to_string().contains("group 1"));
        let mut s = spec();
        s.plan.initial_limit = Some(-1.0);
        assert!(s.validate().is_err());
    }
}
