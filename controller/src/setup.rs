//! Which Tower a run uses, and how it is built: one place for the simulator and the live
//! coordinator, so that both learn from the same minutes.

use serde::{Deserialize, Serialize};

use crate::{
    BanditConfig, BanditTower, ControllerError, ExploreTower, NoTower, ScalerKind, Targets, Tower,
    TowerMemory,
};

/// The learning Towers' revision: bumped whenever a Tower decides differently from the same
/// memory and minutes, so that a resumed sweep does not reuse runs (and the memories they
/// learnt) of an older Tower. Records keep it (`RunInfo::tower_revision`; 0 in older ones).
/// 1: the start-up minutes are held at the initial action.
pub const TOWER_REVISION: u32 = 1;

/// Checks that a scaler kind, its starting targets and a Tower go together: each group's
/// target suits the scaler, the Tower's settings are sane, and a Tower (which sets throttle
/// ratios) runs over Captains.
pub fn check_setup(
    scaler: ScalerKind,
    targets: Targets,
    tower: TowerKind,
) -> Result<(), ControllerError> {
    for (name, t) in [("group 1", targets.group1), ("group 2", targets.group2)] {
        scaler.config(t, 1.0).validate().map_err(|e| {
            ControllerError::Setup(format!("target for {name} does not suit {scaler}: {e}"))
        })?;
    }
    tower.validate()?;
    if tower != TowerKind::None && !scaler.is_captain() {
        return Err(ControllerError::Setup(format!(
            "a Tower sets throttle targets, so it needs the captain scaler or captain-smooth (got {scaler})"
        )));
    }
    Ok(())
}

/// Which Tower runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TowerKind {
    /// Fixed targets.
    None,
    /// The warm-up Tower: explores the grid.
    Explore,
    /// The contextual bandit, exploring neighbours with probability `explore`.
    Bandit { explore: f64 },
    /// The artifact's learner ([`OriginalTower`](crate::OriginalTower)), exploring as
    /// `Bandit` does.
    Original { explore: f64 },
    /// The warm-up explorer, also keeping each minute's RPS variability.
    ExploreCv,
    /// The contextual bandit with the load's variability as a second context
    /// ([`BanditConfig::with_variability`]).
    BanditCv { explore: f64 },
}

impl TowerKind {
    /// Refuses an exploration rate outside 0..1.
    pub fn validate(&self) -> Result<(), ControllerError> {
        if let TowerKind::Bandit { explore }
        | TowerKind::Original { explore }
        | TowerKind::BanditCv { explore } = *self
        {
            if !(0.0..=1.0).contains(&explore) {
                return Err(ControllerError::BadTower(format!(
                    "explore must be within 0..1, got {explore}"
                )));
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        match self {
            TowerKind::None => "none",
            TowerKind::Explore => "explore",
            TowerKind::Bandit { .. } => "bandit",
            TowerKind::Original { .. } => "original",
            TowerKind::ExploreCv => "explore-cv",
            TowerKind::BanditCv { .. } => "bandit-cv",
        }
    }

    pub fn explore(&self) -> f64 {
        match self {
            TowerKind::Bandit { explore }
            | TowerKind::Original { explore }
            | TowerKind::BanditCv { explore } => *explore,
            TowerKind::Explore | TowerKind::ExploreCv => 1.0,
            TowerKind::None => 0.0,
        }
    }

    /// Minutes a run does not learn from: the ramp's, and the first one after it, which still
    /// carries the ramp's squeezed limits.
    pub fn drop_samples(ramp_s: usize) -> usize {
        ramp_s.div_ceil(60) + 1
    }

    /// The Tower for a run of an app with this SLO and RPS bucket width, starting from
    /// `memory`.
    pub fn build(
        &self,
        slo_ms: f64,
        aggregate_rps: f64,
        ramp_s: usize,
        memory: TowerMemory,
        seed: u64,
    ) -> Result<Box<dyn Tower>, ControllerError> {
        let drop_samples = Self::drop_samples(ramp_s);
        let bandit = |explore: f64| BanditConfig {
            drop_samples,
            ..BanditConfig::new(slo_ms, aggregate_rps).with_explore(explore)
        };
        Ok(match *self {
            TowerKind::None => Box::new(NoTower::default()),
            TowerKind::Explore => Box::new(ExploreTower::new(memory, drop_samples, seed)),
            TowerKind::ExploreCv => {
                Box::new(ExploreTower::new(memory, drop_samples, seed).with_variability())
            }
            TowerKind::BanditCv { explore } => Box::new(BanditTower::try_new(
                bandit(explore).with_variability(crate::bandit::CV_BUCKET),
                memory,
                seed,
            )?),
            TowerKind::Bandit { explore } => {
                Box::new(BanditTower::try_new(bandit(explore), memory, seed)?)
            }
            TowerKind::Original { explore } => Box::new(crate::OriginalTower::try_new(
                bandit(explore),
                memory,
                seed,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exploration_rates_outside_zero_to_one_are_refused() {
        assert!(TowerKind::Bandit { explore: 0.5 }.validate().is_ok());
        assert!(TowerKind::Bandit { explore: 1.5 }.validate().is_err());
        assert!(TowerKind::Bandit { explore: f64::NAN }.validate().is_err());
    }

    #[test]
    fn setups_that_cannot_work_are_refused() {
        let t = Targets::new(0.1, 0.1);
        check_setup(ScalerKind::Captain, t, TowerKind::Bandit { explore: 0.2 }).unwrap();
        check_setup(ScalerKind::K8sCpu, Targets::new(0.5, 0.5), TowerKind::None).unwrap();
        let e = check_setup(ScalerKind::K8sCpu, t, TowerKind::Explore).unwrap_err();
        assert!(e.to_string().contains("needs the captain scaler"), "{e}");
        let e =
            check_setup(ScalerKind::Captain, Targets::new(0.1, 1.5), TowerKind::None).unwrap_err();
        assert!(e.to_string().contains("target for group 2"), "{e}");
        assert!(check_setup(ScalerKind::Captain, t, TowerKind::Bandit { explore: 2.0 }).is_err());
    }

    #[test]
    fn builds_the_named_tower() {
        for kind in [
            TowerKind::None,
            TowerKind::Explore,
            TowerKind::Bandit { explore: 0.0 },
        ] {
            let t = kind
                .build(100.0, 50.0, 180, TowerMemory::default(), 1)
                .unwrap();
            assert_eq!(t.name(), kind.name());
        }
        assert_eq!(TowerKind::drop_samples(180), 4);
        assert_eq!(TowerKind::drop_samples(0), 1);
    }
}
