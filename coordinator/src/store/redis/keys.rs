//! Key names: one hash tag per job, one for agents, tokens and indexes.

/// Key names under one prefix.
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    /// A key in the slot shared by agents, tokens and the indexes.
    pub(super) fn shared(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }

    /// A job's keys, in the order the job scripts' KEYS expect.
    pub(super) fn job(&self, id: &str) -> Vec<String> {
        let tag = format!("{{{}:j:{id}}}", self.prefix);
        [
            "m", "pend", "wait", "live", "t", "in", "out", "held", "votes", "redo",
        ]
        .iter()
        .map(|k| format!("{tag}:{k}"))
        .collect()
    }

    pub(super) fn meta(&self, id: &str) -> String {
        format!("{{{}:j:{id}}}:m", self.prefix)
    }

    pub(super) fn agent(&self, id: &str) -> String {
        self.shared(&format!("a:{id}"))
    }

    pub(super) fn token(&self, id: &str) -> String {
        self.shared(&format!("t:{id}"))
    }

    pub(super) fn queue(&self, queue: &str) -> String {
        self.shared(&format!("q:{queue}"))
    }

    /// A module's hash (bytes and record), in the shared slot with the
    /// module index and its users, which its scripts touch together.
    pub(super) fn module(&self, id: &str) -> String {
        self.shared(&format!("mod:{id}"))
    }

    /// The ids of the jobs that use a module.
    pub(super) fn module_users(&self, id: &str) -> String {
        self.shared(&format!("mod:{id}:jobs"))
    }

    pub(super) fn alive(&self, instance: &str) -> String {
        self.shared(&format!("coord:{instance}"))
    }
}
