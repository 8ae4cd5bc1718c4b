//! Who may do what on a farm: the roles, the identity files that prove them, and the NATS
//! permissions each role gets. `suanli auth init` writes the permissions into nats-server's
//! configuration, so the server enforces them; the coordinator checks what subjects cannot say
//! (which studio owns a job, which region a task went to).
//!
//! An identity is an NKey seed in a file readable only by its owner. The server's configuration
//! holds only public keys, so no secret is ever written into it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::names::{NameError, Region, Studio};
use crate::nats;

/// A role on the farm. Each identity file proves one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Owns the queue, the buckets and the API.
    Coordinator,
    /// Runs the farm through the API: the terminal UI, drain, cancel and retry any job.
    Operator,
    /// A worker of one region.
    Worker(Region),
    /// A studio: its own jobs, through the API only.
    Studio(Studio),
    /// The link from a region's leaf node to the hub (carries that region's workers).
    Leaf(Region),
}

impl Role {
    /// The role's name: `coordinator`, `operator`, `worker-<region>`, `studio-<name>`,
    /// `leaf-<region>`. Also its identity file's stem and its inbox token.
    pub fn name(&self) -> String {
        match self {
            Role::Coordinator => "coordinator".into(),
            Role::Operator => "operator".into(),
            Role::Worker(r) => format!("worker-{r}"),
            Role::Studio(s) => format!("studio-{s}"),
            Role::Leaf(r) => format!("leaf-{r}"),
        }
    }

    /// The identity file's name (`<name>.nk`).
    pub fn file_name(&self) -> String {
        format!("{}.nk", self.name())
    }

    /// The prefix of this role's reply inboxes. Each role may subscribe only under its own,
    /// so no one reads another's replies.
    pub fn inbox_prefix(&self) -> String {
        format!("_INBOX.{}", self.name())
    }

    /// What the role is, in words, for errors.
    pub fn describe(&self) -> String {
        match self {
            Role::Coordinator => "the coordinator".into(),
            Role::Operator => "the operator".into(),
            Role::Worker(r) => format!("a worker of region {r}"),
            Role::Studio(s) => format!("studio {s}"),
            Role::Leaf(r) => format!("the leaf link of region {r}"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        match s {
            "coordinator" => return Ok(Role::Coordinator),
            "operator" => return Ok(Role::Operator),
            _ => {}
        }
        if let Some(r) = s.strip_prefix("worker-") {
            return Ok(Role::Worker(r.parse()?));
        }
        if let Some(r) = s.strip_prefix("studio-") {
            return Ok(Role::Studio(r.parse()?));
        }
        if let Some(r) = s.strip_prefix("leaf-") {
            return Ok(Role::Leaf(r.parse()?));
        }
        Err(NameError {
            what: "role",
            value: s.to_string(),
            rule: "expected coordinator, operator, worker-<region>, studio-<name> or leaf-<region>",
        })
    }
}

/// The first line of every identity file; the role follows it.
const HEADER: &str = "# Suanli identity: ";

/// Why an identity or a CA file could not be used. Each is one line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("identity file {0} not found (suanli auth init writes one per role)")]
    Missing(PathBuf),
    #[error("cannot read identity file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity file {path} can be read by others (mode {mode:o}): run chmod 600 {path}")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path} is not a Suanli identity: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("{path} is the identity of {found}, but this needs {wanted}")]
    WrongRole {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("CA file {0} not found")]
    MissingCa(PathBuf),
    #[error("an identity needs a CA certificate to check the server with: pass --ca FILE (or SUANLI_CA)")]
    NoCa,
}

/// An identity loaded from its file: the role it claims and the NKey seed that proves it.
#[derive(Clone)]
pub struct Identity {
    pub role: Role,
    pub path: PathBuf,
    seed: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the seed.
        f.debug_struct("Identity")
            .field("role", &self.role)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity for `role` (a new NKey user key pair), not yet written.
    pub fn generate(role: Role, path: PathBuf) -> Self {
        let kp = nkeys::KeyPair::new_user();
        Identity {
            role,
            path,
            seed: kp.seed().expect("a new user key pair has a seed"),
        }
    }

    /// The public key nats-server's configuration names this identity by.
    pub fn public_key(&self) -> String {
        nkeys::KeyPair::from_seed(&self.seed)
            .expect("seed checked on load")
            .public_key()
    }

    /// The NKey seed, for the NATS client only.
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// The file's text: a header naming the role, a warning, the seed.
    pub fn file_text(&self) -> String {
        format!(
            "{HEADER}{}\n# Secret: whoever holds this file acts as {}. Public key: {}\n{}\n",
            self.role,
            self.role.describe(),
            self.public_key(),
            self.seed
        )
    }

    /// Writes the file, readable and writable by its owner only; never replaces a file.
    pub fn write_new(&self) -> std::io::Result<()> {
        write_secret(&self.path, self.file_text().as_bytes())
    }

    /// Loads and checks an identity file: present, private to its owner, a role header and a
    /// user NKey seed.
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let path_buf = path.to_path_buf();
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AccessError::Missing(path_buf))
            }
            Err(source) => {
                return Err(AccessError::Read {
                    path: path_buf,
                    source,
                })
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(AccessError::Exposed {
                    path: path_buf,
                    mode,
                });
            }
        }
        if meta.len() > 4096 {
            return Err(AccessError::Malformed {
                path: path_buf,
                why: format!("{} bytes is far too long for an identity", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path_buf.clone(),
            source,
        })?;
        Self::parse(&text, path_buf)
    }

    fn parse(text: &str, path: PathBuf) -> Result<Self, AccessError> {
        let bad = |why: String| AccessError::Malformed {
            path: path.clone(),
            why,
        };
        let role = text
            .lines()
            .find_map(|l| l.strip_prefix(HEADER))
            .ok_or_else(|| bad(format!("no '{}<role>' line", HEADER.trim_end())))?
            .trim()
            .parse::<Role>()
            .map_err(|e| bad(e.to_string()))?;
        let seed = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| bad("no NKey seed in it".into()))?;
        let kp = nkeys::KeyPair::from_seed(seed).map_err(|e| bad(format!("bad NKey seed: {e}")))?;
        if !seed.starts_with("SU") {
            return Err(bad(format!(
                "the seed is a {:?} key, not a user key",
                kp.key_pair_type()
            )));
        }
        Ok(Identity {
            role,
            path,
            seed: seed.to_string(),
        })
    }

    /// Refuses an identity of another role than the one a process runs as.
    pub fn expect(&self, ok: impl Fn(&Role) -> bool, wanted: &str) -> Result<(), AccessError> {
        if ok(&self.role) {
            Ok(())
        } else {
            Err(AccessError::WrongRole {
                path: self.path.clone(),
                found: self.role.describe(),
                wanted: wanted.to_string(),
            })
        }
    }
}

/// Writes a file that only its owner may read, refusing to replace an existing one.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// How a process reaches the farm: with no identity (a local, trusted farm) or with an
/// identity and the CA that signed the servers' certificates (a secure farm, `tls://`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub identity: Option<Identity>,
    pub ca: Option<PathBuf>,
}

impl Access {
    /// No identity, no TLS: the local farm of `suanli up` and the demo.
    pub fn none() -> Self {
        Self::default()
    }

    /// From `--identity` / `--ca` (each falling back to `SUANLI_IDENTITY` / `SUANLI_CA`, which
    /// the CLI's flags already read). An identity without a CA is refused: a secret must not be
    /// offered to a server whose certificate nothing checked.
    pub fn load(identity: Option<&Path>, ca: Option<&Path>) -> Result<Self, AccessError> {
        let identity = identity.map(Identity::load).transpose()?;
        if let Some(ca) = ca {
            if !ca.is_file() {
                return Err(AccessError::MissingCa(ca.to_path_buf()));
            }
        }
        if identity.is_some() && ca.is_none() {
            return Err(AccessError::NoCa);
        }
        Ok(Access {
            identity,
            ca: ca.map(Path::to_path_buf),
        })
    }

    pub fn role(&self) -> Option<&Role> {
        self.identity.as_ref().map(|i| &i.role)
    }
}

/// The subject shapes permissions are written against (`suanli.api.<endpoint>` for the
/// operator, `suanli.studio.<studio>.<endpoint>` for a studio, events
/// `suanli.evt.<studio>.<job>.<kind>.<source>`).
mod subjects {
    pub const OPERATOR_API: &str = "suanli.api.>";
    pub const STUDIO_API: &str = "suanli.studio.>";
    /// Endpoints a studio may call: its own jobs and the region catalog; not workers or drain.
    pub const STUDIO_TOKENS: &[&str] = &[
        "submit", "status", "jobs", "job", "cancel", "retry", "tasks", "regions",
    ];
    /// Job events, published by the coordinator only (source token `_`).
    pub const JOB_EVENTS: &str = "suanli.evt.*.*.job._";

    /// Reading the stored events on `filter` (`suanli events`): creating an ephemeral ordered
    /// consumer of `SUANLI_EVENTS` whose filter is in the create subject (nats-server refuses
    /// a create whose config filters on anything else), and answering its flow control. No
    /// consumer info, delete or pull: those name consumers, not filters, and would reach the
    /// coordinator's.
    pub fn events_reader(filter: &str) -> [String; 2] {
        let stream = crate::nats::EVENTS_STREAM;
        [
            format!("$JS.API.CONSUMER.CREATE.{stream}.*.{filter}"),
            format!("$JS.FC.{stream}.>"),
        ]
    }

    /// What `events_reader` must not allow: a create request naming an existing durable
    /// consumer of the events stream is an update (nats-server applies it), so a reader could
    /// narrow the coordinator's consumer to its own events and blind it to everyone else's.
    pub fn events_durables() -> Vec<String> {
        let stream = crate::nats::EVENTS_STREAM;
        [crate::nats::COORDINATOR_CONSUMER]
            .iter()
            .map(|name| format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.>"))
            .collect()
    }
}

/// Subjects a role may publish to and subscribe to (nats-server `permissions` allow lists;
/// everything else is denied).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// Subjects refused even where `publish` allows them (nats-server `deny` list).
    pub deny_publish: Vec<String>,
}

/// Where a role's connection arrives, which decides how JetStream subjects are spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A client of the server that runs JetStream (the single server or the hub).
    Direct,
    /// Through a region's leaf node: the leaf rewrites its clients' `$JS.API.>` and `$KV.>`
    /// into the hub's JetStream domain (`deploy/nats/leaf.conf`) before anything checks them,
    /// so the hub sees those on the link, and the leaf itself checks its workers' rights in
    /// that spelling too (nats-server applies mappings before publish permissions).
    LeafLink,
}

fn js_api(via: Via, rest: &str) -> String {
    match via {
        Via::Direct => format!("$JS.API.{rest}"),
        Via::LeafLink => format!("$JS.{}.API.{rest}", nats::JS_DOMAIN),
    }
}

fn kv_write(via: Via, bucket: &str, keys: &str) -> String {
    match via {
        Via::Direct => format!("$KV.{bucket}.{keys}"),
        Via::LeafLink => format!("$JS.{}.API.$KV.{bucket}.{keys}", nats::JS_DOMAIN),
    }
}

/// Acknowledgements of one consumer's messages, in both reply-subject formats nats-server uses
/// (the second when the stream lives in a JetStream domain).
fn acks(stream: &str, consumer: &str) -> [String; 2] {
    [
        format!("$JS.ACK.{stream}.{consumer}.>"),
        format!("$JS.ACK.*.*.{stream}.{consumer}.>"),
    ]
}

/// The permissions of `role`. A worker's are also its leaf link's, in the hub's spelling.
pub fn permissions(role: &Role, via: Via) -> Permissions {
    let inbox = format!("{}.>", role.inbox_prefix());
    match role {
        Role::Coordinator => Permissions {
            publish: vec![
                "$JS.API.>".into(),
                "$JS.ACK.>".into(),
                "$JS.FC.>".into(),
                "$KV.>".into(),
                "suanli.task.*".into(),
                "suanli.stage.*".into(),
                subjects::JOB_EVENTS.into(),
                "suanli.ctl.>".into(),
                // Replies to every caller's inbox.
                "_INBOX.>".into(),
            ],
            subscribe: vec![
                subjects::OPERATOR_API.into(),
                subjects::STUDIO_API.into(),
                nats::ALL_WORKERS.into(),
                nats::ALL_STAGED.into(),
                inbox,
            ],
            deny_publish: vec![],
        },
        Role::Operator => Permissions {
            publish: [subjects::OPERATOR_API.into()]
                .into_iter()
                .chain(subjects::events_reader(nats::ALL_EVENTS))
                .collect(),
            subscribe: vec![nats::ALL_EVENTS.into(), nats::ALL_WORKERS.into(), inbox],
            deny_publish: subjects::events_durables(),
        },
        Role::Studio(s) => Permissions {
            publish: subjects::STUDIO_TOKENS
                .iter()
                .map(|t| format!("suanli.studio.{s}.{t}"))
                .chain(subjects::events_reader(&nats::studio_events(s)))
                .collect(),
            subscribe: vec![format!("suanli.evt.{s}.>"), inbox],
            deny_publish: subjects::events_durables(),
        },
        Role::Worker(r) | Role::Leaf(r) => {
            let tasks = nats::TASKS_STREAM;
            let consumer = nats::region_consumer(r);
            let mut publish = vec![
                js_api(via, "INFO"),
                js_api(via, "STREAM.INFO.*"),
                js_api(via, &format!("CONSUMER.INFO.{tasks}.{consumer}")),
                js_api(via, &format!("CONSUMER.MSG.NEXT.{tasks}.{consumer}")),
            ];
            for bucket in [nats::JOBS_BUCKET, nats::TASKS_BUCKET] {
                publish.push(js_api(via, &format!("DIRECT.GET.KV_{bucket}.>")));
                publish.push(js_api(via, &format!("STREAM.MSG.GET.KV_{bucket}")));
            }
            let workers = nats::WORKERS_BUCKET;
            publish.push(js_api(
                via,
                &format!("DIRECT.GET.KV_{workers}.$KV.{workers}.{r}.*"),
            ));
            publish.push(kv_write(via, workers, &format!("{r}.*")));
            publish.extend(acks(tasks, &consumer));
            publish.extend(
                ["started", "progress", "completed", "failed"]
                    .map(|kind| format!("suanli.evt.*.*.{kind}.{r}")),
            );
            publish.push(format!("suanli.worker.{r}.*"));
            publish.push(nats::staged_subject(r));
            let mut subscribe = vec![
                nats::stage_subject(r),
                nats::CANCEL_ALL.into(),
                format!("suanli.ctl.drain.{r}.*"),
                format!("{}.>", Role::Worker(r.clone()).inbox_prefix()),
            ];
            if matches!(role, Role::Leaf(_)) {
                // The hub's own subjects a leaf link needs: loop detection.
                subscribe.push("$LDS.>".into());
                publish.push("$LDS.>".into());
            }
            Permissions {
                publish,
                subscribe,
                deny_publish: vec![],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [
            Role::Coordinator,
            Role::Operator,
            Role::Worker("guian".parse().unwrap()),
            Role::Studio("acme".parse().unwrap()),
            Role::Leaf("ulanqab".parse().unwrap()),
        ] {
            assert_eq!(role.name().parse::<Role>().unwrap(), role);
            assert_eq!(role.file_name(), format!("{}.nk", role.name()));
        }
        for bad in [
            "",
            "admin",
            "worker-",
            "studio-Acme",
            "worker-a.b",
            "leaf-*",
        ] {
            assert!(bad.parse::<Role>().is_err(), "{bad}");
        }
    }

    #[test]
    fn identities_are_private_files_that_round_trip() {
        let dir = tmp();
        let path = dir.path().join("studio-acme.nk");
        let id = Identity::generate(Role::Studio("acme".parse().unwrap()), path.clone());
        id.write_new().unwrap();
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.role, id.role);
        assert_eq!(loaded.public_key(), id.public_key());
        assert!(id.public_key().starts_with('U'));
        assert!(
            !format!("{loaded:?}").contains(id.seed()),
            "Debug leaks the seed"
        );
        // Never replaced.
        assert_eq!(
            id.write_new().unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Identity::load(&path).unwrap_err().to_string();
            assert!(err.contains("can be read by others (mode 644)"), "{err}");
            assert!(err.contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn bad_identity_files_are_refused_in_one_line() {
        let dir = tmp();
        let missing = Identity::load(&dir.path().join("nope.nk")).unwrap_err();
        assert!(missing.to_string().contains("not found"), "{missing}");
        let cases = [
            ("SUAM...\n", "no '# Suanli identity:"),
            ("# Suanli identity: admin\nSUA\n", "invalid role 'admin'"),
            ("# Suanli identity: operator\n", "no NKey seed"),
            (
                "# Suanli identity: operator\nSUAnotaseed\n",
                "bad NKey seed",
            ),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let p = dir.path().join(format!("bad{i}.nk"));
            write_secret(&p, text.as_bytes()).unwrap();
            let err = Identity::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // An account seed is not a user identity.
        let p = dir.path().join("account.nk");
        let seed = nkeys::KeyPair::new_account().seed().unwrap();
        write_secret(&p, format!("{HEADER}operator\n{seed}\n").as_bytes()).unwrap();
        let err = Identity::load(&p).unwrap_err().to_string();
        assert!(err.contains("not a user key"), "{err}");
    }

    #[test]
    fn an_identity_needs_a_ca() {
        let dir = tmp();
        let path = dir.path().join("operator.nk");
        Identity::generate(Role::Operator, path.clone())
            .write_new()
            .unwrap();
        let err = Access::load(Some(&path), None).unwrap_err().to_string();
        assert!(err.contains("--ca"), "{err}");
        let err = Access::load(None, Some(&dir.path().join("ca.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CA file"), "{err}");
        let a = Access::load(None, None).unwrap();
        assert!(a.identity.is_none());
    }

    #[test]
    fn wrong_role_names_both() {
        let dir = tmp();
        let id = Identity::generate(
            Role::Studio("acme".parse().unwrap()),
            dir.path().join("x.nk"),
        );
        let err = id
            .expect(|r| matches!(r, Role::Worker(_)), "a worker identity")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("identity of studio acme, but this needs a worker identity"),
            "{err}"
        );
    }

    #[test]
    fn a_studio_may_publish_only_its_own_api_subjects() {
        let acme: Studio = "acme".parse().unwrap();
        let p = permissions(&Role::Studio(acme.clone()), Via::Direct);
        let (api, js): (Vec<_>, Vec<_>) = p
            .publish
            .iter()
            .partition(|s| s.starts_with("suanli.studio."));
        assert!(api.iter().all(|s| s.starts_with("suanli.studio.acme.")));
        // Its only JetStream rights: a reader of its own events, and that reader's flow control.
        assert_eq!(
            js,
            [
                "$JS.API.CONSUMER.CREATE.SUANLI_EVENTS.*.suanli.evt.acme.>",
                "$JS.FC.SUANLI_EVENTS.>"
            ]
        );
        // The coordinator's consumer matches that create subject too: named, it is denied.
        assert_eq!(
            p.deny_publish,
            ["$JS.API.CONSUMER.CREATE.SUANLI_EVENTS.coordinator.>"]
        );
        assert!(!p.publish.iter().any(|s| s.ends_with(".drain")));
        assert!(!p.publish.iter().any(|s| s.ends_with(".workers")));
        assert!(p.subscribe.contains(&"suanli.evt.acme.>".to_string()));
        assert!(!p.subscribe.iter().any(|s| s.starts_with("$")));
    }

    #[test]
    fn a_leaf_link_carries_its_workers_permissions_in_the_hub_domain() {
        let r: Region = "guian".parse().unwrap();
        let w = permissions(&Role::Worker(r.clone()), Via::Direct);
        let l = permissions(&Role::Leaf(r), Via::LeafLink);
        assert!(w.publish.iter().any(|s| s.starts_with("$JS.API.")));
        assert!(!l.publish.iter().any(|s| s.starts_with("$JS.API.")));
        assert!(!l.publish.iter().any(|s| s.starts_with("$KV.")));
        // The same rights, spelled for the hub: one for one, plus loop detection.
        let plain: Vec<String> = l
            .publish
            .iter()
            .filter(|s| !s.starts_with("$LDS."))
            .map(|s| {
                s.replace("$JS.suanli.API.$KV.", "$KV.")
                    .replace("$JS.suanli.API.", "$JS.API.")
            })
            .collect();
        assert_eq!(plain, w.publish);
    }
}
