//! The Lua scripts, loaded together and called by their SHA-1; the
//! per-job ones share `job_lib.lua` and the rules generated from `rules.rs`.

use super::*;

/// One Lua script, called by its SHA-1.
pub(super) struct Lua {
    pub(super) code: String,
    pub(super) sha: String,
}

impl Lua {
    pub(super) fn new(code: String) -> Lua {
        let sha = ::redis::Script::new(&code).get_hash().to_string();
        Lua { code, sha }
    }

    /// `EVALSHA` with these keys; the caller appends the arguments.
    pub(super) fn call(&self, keys: &[String]) -> Cmd {
        let mut c = ::redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(keys.len()).arg(keys);
        c
    }
}

/// Every script, loaded together so one `NOSCRIPT` reload covers all.
pub(super) struct Scripts {
    pub(super) lease: Lua,
    pub(super) complete: Lua,
    pub(super) heartbeat: Lua,
    pub(super) release: Lua,
    pub(super) expire: Lua,
    pub(super) renew_all: Lua,
    pub(super) add_tasks: Lua,
    pub(super) seal: Lua,
    pub(super) abort: Lua,
    pub(super) cancel: Lua,
    pub(super) retry: Lua,
    pub(super) place: Lua,
    pub(super) finish: Lua,
    pub(super) expire_unleased: Lua,
    pub(super) start_waiting: Lua,
    pub(super) tasks: Lua,
    pub(super) workflow_finish: Lua,
    pub(super) schedule_claim: Lua,
    pub(super) schedule_pause: Lua,
    pub(super) token_create: Lua,
    pub(super) token_revoke: Lua,
    pub(super) agent_enrol: Lua,
    pub(super) agent_set_state: Lua,
    pub(super) trust_share: Lua,
    pub(super) queue_put: Lua,
    pub(super) queue_remove: Lua,
    pub(super) module_put: Lua,
    pub(super) module_delete: Lua,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        // The variant index postcard writes first for each kernel's output,
        // from the kernel registry.
        let tags = Kernel::ALL
            .map(|k| format!("{} = {}", k.name(), k.tag()))
            .join(", ");
        // The judge's numbers by redundancy (1-based, as Lua tables), and
        // the reason a task gives up with, as a Lua expression.
        let redundancies = 1..=musketeer_tasks::job::MAX_REDUNDANCY;
        let quorum: Vec<String> = redundancies
            .clone()
            .map(|r| validation::quorum(r).to_string())
            .collect();
        let extra: Vec<String> = redundancies
            .map(|r| validation::max_extra_replicas(r).to_string())
            .collect();
        let give_up = format!(
            "[[{}]]",
            validation::give_up_reason(
                "]] .. votes .. [[",
                "]] .. distinct .. [[",
                "]] .. quorum .. [["
            )
        );
        let lib = include_str!("job_lib.lua")
            .replace("__RULES__", &rules::lua_prelude())
            .replace("__KERNEL_TAGS__", &tags)
            .replace("__MAX_REPLICAS__", &MAX_REPLICAS.to_string())
            .replace("__QUORUM__", &quorum.join(", "))
            .replace("__EXTRA_REPLICAS__", &extra.join(", "))
            .replace("__GIVE_UP_REASON__", &give_up);
        let job = |body: &str| Lua::new(format!("{lib}\n{body}"));
        Scripts {
            lease: job(include_str!("job_lease.lua")),
            complete: job(include_str!("job_complete.lua")),
            heartbeat: job(include_str!("job_heartbeat.lua")),
            release: job(include_str!("job_release.lua")),
            expire: job(include_str!("job_expire.lua")),
            renew_all: job(include_str!("job_renew_all.lua")),
            add_tasks: job(include_str!("job_add_tasks.lua")),
            seal: job(include_str!("job_seal.lua")),
            abort: job(include_str!("job_abort.lua")),
            cancel: job(include_str!("job_cancel.lua")),
            retry: job(include_str!("job_retry.lua")),
            place: job(include_str!("job_place.lua")),
            finish: job(include_str!("job_finish.lua")),
            expire_unleased: job(include_str!("job_expire_unleased.lua")),
            start_waiting: job(include_str!("job_start_waiting.lua")),
            tasks: job(include_str!("job_tasks.lua")),
            workflow_finish: Lua::new(include_str!("workflow_finish.lua").into()),
            schedule_claim: Lua::new(include_str!("schedule_claim.lua").into()),
            schedule_pause: Lua::new(include_str!("schedule_pause.lua").into()),
            token_create: Lua::new(include_str!("token_create.lua").into()),
            token_revoke: Lua::new(include_str!("token_revoke.lua").into()),
            agent_enrol: Lua::new(include_str!("agent_enrol.lua").into()),
            agent_set_state: Lua::new(include_str!("agent_set_state.lua").into()),
            trust_share: Lua::new(include_str!("trust_share.lua").into()),
            queue_put: Lua::new(include_str!("queue_put.lua").into()),
            queue_remove: Lua::new(include_str!("queue_remove.lua").into()),
            module_put: Lua::new(include_str!("module_put.lua").into()),
            module_delete: Lua::new(include_str!("module_delete.lua").into()),
        }
    }

    pub(super) fn all(&self) -> [&Lua; 28] {
        [
            &self.lease,
            &self.complete,
            &self.heartbeat,
            &self.release,
            &self.expire,
            &self.renew_all,
            &self.add_tasks,
            &self.seal,
            &self.abort,
            &self.cancel,
            &self.retry,
            &self.place,
            &self.finish,
            &self.expire_unleased,
            &self.start_waiting,
            &self.tasks,
            &self.workflow_finish,
            &self.schedule_claim,
            &self.schedule_pause,
            &self.token_create,
            &self.token_revoke,
            &self.agent_enrol,
            &self.agent_set_state,
            &self.trust_share,
            &self.queue_put,
            &self.queue_remove,
            &self.module_put,
            &self.module_delete,
        ]
    }
}
