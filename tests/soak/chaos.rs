//! The backends, their registrations, and the random schedule that kills,
//! restarts, registers and deregisters them.

use super::*;

pub(crate) fn instance(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_INSTANCE_IPV4", "127.0.0.1".to_owned()),
        ("AWS_INSTANCE_PORT", port.to_string()),
        ("pool", "main".to_owned()),
    ]
}

/// The backends, their registrations, and what was done to them.
pub(crate) struct Chaos {
    pub(crate) services: Vec<String>,
    /// Registered throughout (under the current id) and never down together.
    pub(crate) cores: [Backend; 2],
    pub(crate) core_ids: [String; 2],
    pub(crate) generation: u32,
    /// (core, when to restart it).
    pub(crate) core_down: Option<(usize, Instant)>,
    /// No core is killed before this: a call that found the last one down may still
    /// be trying the other.
    pub(crate) kill_after: Instant,
    /// Registered and deregistered, killed and restarted, independently.
    pub(crate) churn: Backend,
    pub(crate) churn_registered: bool,
    pub(crate) rng: SmallRng,
    pub(crate) kills: u64,
    pub(crate) kills_held: u64,
    pub(crate) restarts: u64,
    pub(crate) new_ports: u64,
    pub(crate) registrations: u64,
    pub(crate) deregistrations: u64,
    pub(crate) churn_kills: u64,
}

impl Chaos {
    pub(crate) async fn register(&mut self, id: &str, port: u16) {
        let attrs = instance(port);
        let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for svc in &self.services {
            register(svc, id, &attrs).await;
        }
        self.registrations += 1;
    }

    pub(crate) async fn deregister(&mut self, id: &str) {
        for svc in &self.services {
            deregister(svc, id).await;
        }
        self.deregistrations += 1;
    }

    /// Whether every key's cached answer lists this core at its current address, so
    /// that a call on any key has it among its attempts.
    pub(crate) async fn listed_everywhere(
        &self,
        core: usize,
        resolver: &Resolver,
        keys: &[Key],
    ) -> bool {
        let addr = self.cores[core].addr;
        for key in keys {
            let all =
                tokio::time::timeout(Duration::from_secs(2), key.query(resolver).resolve_all());
            match all.await {
                Ok(Ok(eps)) if eps.iter().any(|e| e.socket_addr() == Some(addr)) => {}
                _ => return false,
            }
        }
        true
    }

    pub(crate) async fn restart_core(&mut self, core: usize) {
        if self.cores[core].restart().await {
            self.restarts += 1;
            return;
        }
        // The port was taken meanwhile: listen elsewhere and register that instead.
        self.cores[core].restart_elsewhere().await;
        self.generation += 1;
        let old = std::mem::replace(
            &mut self.core_ids[core],
            format!("core-{core}-{}", self.generation),
        );
        let (id, port) = (self.core_ids[core].clone(), self.cores[core].port());
        self.register(&id, port).await;
        self.deregister(&old).await;
        self.new_ports += 1;
        self.restarts += 1;
    }

    pub(crate) async fn restart_churn(&mut self) {
        if !self.churn.restart().await {
            self.churn.restart_elsewhere().await;
            self.new_ports += 1;
            if self.churn_registered {
                let port = self.churn.port();
                self.register("churn", port).await;
            }
        }
    }

    /// One random step.
    pub(crate) async fn tick(&mut self, resolver: &Resolver, keys: &[Key]) {
        if let Some((core, at)) = self.core_down
            && Instant::now() >= at
        {
            self.restart_core(core).await;
            self.core_down = None;
            self.kill_after = Instant::now() + KILL_QUIET;
        }
        match self.rng.random_range(0..4) {
            0 if self.core_down.is_none() && Instant::now() >= self.kill_after => {
                let core = self.rng.random_range(0..2);
                let other = 1 - core;
                if self.listed_everywhere(other, resolver, keys).await {
                    self.cores[core].stop().await;
                    let down = Duration::from_millis(self.rng.random_range(500..2500));
                    self.core_down = Some((core, Instant::now() + down));
                    self.kills += 1;
                } else {
                    self.kills_held += 1;
                }
            }
            1 => {
                if self.churn_registered {
                    self.deregister("churn").await;
                } else {
                    let port = self.churn.port();
                    self.register("churn", port).await;
                }
                self.churn_registered = !self.churn_registered;
            }
            2 => {
                if self.churn.is_up() {
                    self.churn.stop().await;
                    self.churn_kills += 1;
                } else {
                    self.restart_churn().await;
                }
            }
            _ => {}
        }
        assert!(
            self.cores.iter().any(Backend::is_up),
            "the schedule never has both core backends down"
        );
    }

    /// Steps until `until`, a random 200-800 ms apart.
    pub(crate) async fn run_until(&mut self, until: Instant, resolver: &Resolver, keys: &[Key]) {
        loop {
            let pause = Duration::from_millis(self.rng.random_range(200..800));
            let now = Instant::now();
            if now + pause >= until {
                tokio::time::sleep_until(until.into()).await;
                return;
            }
            tokio::time::sleep(pause).await;
            self.tick(resolver, keys).await;
        }
    }

    /// Every backend up again.
    pub(crate) async fn heal(&mut self) {
        if let Some((core, _)) = self.core_down.take() {
            self.restart_core(core).await;
        }
        if !self.churn.is_up() {
            self.restart_churn().await;
        }
    }
}
