//! `suanli auth`: writes and maintains everything a secure farm needs, in one folder: the CA
//! and the servers' certificates ([`pki`]), one NKey identity per role, and nats-server
//! configurations with each role's permissions ([`conf`]). `farm.toml` in the folder records
//! the farm (addresses, regions, studios, public keys, revocations), so running it again adds
//! to the farm without touching existing identities.

mod conf;
mod pki;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use suanli_shared::access::{Identity, Role, Via};
use suanli_shared::{Region, Studio};

use crate::exit::BadInput;

#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Write a secure farm into a folder (CA, certificates, identities, nats-server configs),
    /// or add studios and regions to one already there.
    Init(InitArgs),
    /// Revoke an identity (e.g. studio-blue): it is removed from the configs; reload the
    /// servers (`nats-server --signal reload`) and it is refused.
    Revoke {
        /// The farm folder.
        #[arg(long)]
        out: PathBuf,
        /// coordinator, operator, worker-<region>, studio-<name> or leaf-<region>.
        role: Role,
    },
    /// Give an identity a new key: its file is replaced and the old key stops working when
    /// the servers reload.
    Rotate {
        #[arg(long)]
        out: PathBuf,
        role: Role,
    },
    /// Renew the servers' certificates (signed by the farm's CA, same names); reload the
    /// servers to use them.
    Renew {
        #[arg(long)]
        out: PathBuf,
        /// Days the new certificates are valid.
        #[arg(long, default_value_t = 365)]
        valid_days: u32,
    },
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The farm folder (created; kept private to its owner).
    #[arg(long)]
    pub out: PathBuf,
    /// Regions: each gets a worker identity, a leaf node (config, certificate, link identity).
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<Region>,
    /// Studios: each gets its own identity, allowed its own jobs only.
    #[arg(long, value_delimiter = ',')]
    pub studios: Vec<Studio>,
    /// Client address of the single server and of the hub.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub listen: String,
    /// The hub's leaf-node address, which the regions' leaf nodes dial [default: the listen
    /// host, port 7422].
    #[arg(long)]
    pub leaf_listen: Option<String>,
    /// Further names (DNS or IP) the servers' certificates are valid for; `localhost`,
    /// 127.0.0.1 and the listen host are always in.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Add a studio to an existing farm (as --studios does).
    #[arg(long)]
    pub add_studio: Vec<Studio>,
    /// Add a region to an existing farm (as --regions does).
    #[arg(long)]
    pub add_region: Vec<Region>,
    /// Days the server certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub valid_days: u32,
}

impl InitArgs {
    /// A farm in `out` with these regions and studios, listening on `listen` (the hub's leaf
    /// port on the same host, port `leaf_port`).
    pub fn new(
        out: &Path,
        regions: &[Region],
        studios: &[Studio],
        listen: &str,
        leaf_port: u16,
    ) -> Self {
        let host = listen.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
        InitArgs {
            out: out.to_path_buf(),
            regions: regions.to_vec(),
            studios: studios.to_vec(),
            listen: listen.to_string(),
            leaf_listen: Some(format!("{host}:{leaf_port}")),
            hosts: Vec::new(),
            add_studio: Vec::new(),
            add_region: Vec::new(),
            valid_days: 365,
        }
    }
}

/// The client address of the farm written in `dir`; `None` when no farm is there yet.
pub fn listen_of(dir: &Path) -> anyhow::Result<Option<String>> {
    Ok(FarmFile::load(dir)?.map(|farm| farm.listen))
}

/// The identity file of `role` in a farm folder.
pub fn identity_path(dir: &Path, role: &Role) -> PathBuf {
    dir.join(role.file_name())
}

/// How `role` reaches a farm written in `dir`: its identity and the farm's CA.
pub fn access_of(dir: &Path, role: &Role) -> anyhow::Result<suanli_shared::access::Access> {
    let ca = dir.join("ca.pem");
    Ok(suanli_shared::access::Access::load(
        Some(&identity_path(dir, role)),
        Some(&ca),
    )?)
}

/// `farm.toml`: what the folder's files were made from.
#[derive(Debug, Serialize, Deserialize)]
struct FarmFile {
    ca_name: String,
    listen: String,
    leaf_listen: String,
    hosts: Vec<String>,
    valid_days: u32,
    regions: Vec<Region>,
    studios: Vec<Studio>,
    /// Role name → public key of every live identity.
    identities: BTreeMap<String, String>,
    /// Role name → public key of revoked identities (kept for the record).
    #[serde(default)]
    revoked: BTreeMap<String, String>,
}

const FARM_FILE: &str = "farm.toml";

impl FarmFile {
    fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(FARM_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(toml::from_str(&text).map_err(|e| {
                BadInput(format!("{} is damaged: {e}", path.display()))
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let text = format!(
            "# A Suanli secure farm, written by `suanli auth`: public keys only.\n{}",
            toml::to_string_pretty(self)?
        );
        let tmp = dir.join(".farm.toml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(FARM_FILE))?;
        Ok(())
    }

    fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Coordinator, Role::Operator];
        for r in &self.regions {
            roles.push(Role::Worker(r.clone()));
            roles.push(Role::Leaf(r.clone()));
        }
        roles.extend(self.studios.iter().cloned().map(Role::Studio));
        roles
    }

    fn server_names(&self) -> Vec<String> {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        for addr in [&self.listen, &self.leaf_listen] {
            if let Some((host, _)) = addr.rsplit_once(':') {
                let host = host.trim_matches(['[', ']']);
                let unspecified = host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_unspecified());
                if !host.is_empty() && !unspecified {
                    names.push(host.to_string());
                }
            }
        }
        names.extend(self.hosts.iter().cloned());
        names.sort();
        names.dedup();
        names
    }
}

pub fn run(cmd: AuthCommand) -> anyhow::Result<u8> {
    match cmd {
        AuthCommand::Init(args) => {
            let report = init(args)?;
            report.print();
            Ok(0)
        }
        AuthCommand::Revoke { out, role } => revoke(&out, &role),
        AuthCommand::Rotate { out, role } => rotate(&out, &role),
        AuthCommand::Renew { out, valid_days } => {
            if valid_days == 0 {
                return Err(BadInput("--valid-days must be at least 1".into()).into());
            }
            let until = time::OffsetDateTime::now_utc() + time::Duration::days(valid_days.into());
            let (dir, _) = renew(&out, until)?;
            println!(
                "server certificates in {} renewed for {valid_days} days; reload the servers: nats-server --signal reload",
                dir.display()
            );
            Ok(0)
        }
    }
}

fn check_addr(what: &str, addr: &str) -> anyhow::Result<()> {
    match addr.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(BadInput(format!("{what} '{addr}' is not HOST:PORT")).into()),
    }
}

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

/// What [`init`] did.
pub struct InitReport {
    /// The farm folder, absolute.
    pub dir: PathBuf,
    /// A new farm (CA and certificates written), not an addition to one.
    pub fresh: bool,
    /// Identity files written this time.
    pub written: Vec<String>,
    /// The client address.
    pub listen: String,
}

impl InitReport {
    fn print(&self) {
        let dir = &self.dir;
        if self.fresh {
            println!("secure farm written to {}", dir.display());
        }
        if self.written.is_empty() {
            println!("nothing new to add; configs rewritten");
        } else {
            println!("identities: {}", self.written.join(" "));
        }
        println!(
            "start: nats-server -c {}   (or the hub: {}, and per region leaf-<region>.conf)",
            dir.join("nats-server.conf").display(),
            dir.join("hub.conf").display()
        );
        println!(
            "connect: --nats tls://{} --ca {} --identity {}",
            self.listen,
            dir.join("ca.pem").display(),
            dir.join(Role::Operator.file_name()).display()
        );
        if !self.fresh {
            println!("running servers pick up the change on reload: nats-server --signal reload");
        }
    }
}

/// Writes a secure farm into `args.out`, or adds to the one there.
pub fn init(args: InitArgs) -> anyhow::Result<InitReport> {
    check_addr("--listen", &args.listen)?;
    if let Some(l) = &args.leaf_listen {
        check_addr("--leaf-listen", l)?;
    }
    if args.valid_days == 0 {
        return Err(BadInput("--valid-days must be at least 1".into()).into());
    }
    private_dir(&args.out)?;
    let dir = args
        .out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.out.display()))?;
    let existing = FarmFile::load(&dir)?;
    let fresh = existing.is_none();
    let mut farm = match existing {
        Some(farm) => {
            if args.listen != farm.listen && args.listen != "127.0.0.1:4222" {
                return Err(BadInput(format!(
                    "{} already holds a farm listening on {}; its certificates name that address: use another --out for a new farm",
                    dir.display(),
                    farm.listen
                ))
                .into());
            }
            farm
        }
        None => {
            let leaf_listen = args.leaf_listen.clone().unwrap_or_else(|| {
                let host = args.listen.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
                format!("{host}:7422")
            });
            if [dir.join("ca.pem"), dir.join("ca-key.pem")]
                .iter()
                .any(|p| p.exists())
            {
                bail!(BadInput(format!(
                    "{} has a CA but no {FARM_FILE}: not a folder suanli auth wrote; use an empty one",
                    dir.display()
                )));
            }
            FarmFile {
                ca_name: format!("Suanli farm CA {}", suanli_shared::JobId::generate()),
                listen: args.listen.clone(),
                leaf_listen,
                hosts: args.hosts.clone(),
                valid_days: args.valid_days,
                regions: Vec::new(),
                studios: Vec::new(),
                identities: BTreeMap::new(),
                revoked: BTreeMap::new(),
            }
        }
    };
    let mut added_regions = Vec::new();
    for r in args.regions.iter().chain(&args.add_region) {
        if !farm.regions.contains(r) {
            farm.regions.push(r.clone());
            added_regions.push(r.clone());
        }
    }
    for s in args.studios.iter().chain(&args.add_studio) {
        if !farm.studios.contains(s) {
            farm.studios.push(s.clone());
        }
    }
    let ca = if fresh {
        let ca = pki::Ca::create(&dir, &farm.ca_name, 3650)?;
        let names = farm.server_names();
        ca.issue_server(&dir, "server", &names, farm.valid_days)?;
        ca.issue_server(&dir, "hub", &names, farm.valid_days)?;
        Some(ca)
    } else {
        None
    };
    if !added_regions.is_empty() {
        let ca = match ca {
            Some(ca) => ca,
            None => pki::Ca::load(&dir, &farm.ca_name)?,
        };
        let names = farm.server_names();
        for r in &added_regions {
            ca.issue_server(&dir, &format!("leaf-{r}"), &names, farm.valid_days)?;
        }
    }
    let mut written = Vec::new();
    for role in farm.roles() {
        if farm.identities.contains_key(&role.name()) {
            continue;
        }
        let path = dir.join(role.file_name());
        if path.exists() {
            bail!(BadInput(format!(
                "{} exists but {FARM_FILE} does not list it: remove it or use another folder",
                path.display()
            )));
        }
        let id = Identity::generate(role.clone(), path.clone());
        id.write_new()
            .with_context(|| format!("cannot write {}", path.display()))?;
        farm.revoked.remove(&role.name());
        farm.identities.insert(role.name(), id.public_key());
        written.push(role.file_name());
    }
    farm.save(&dir)?;
    write_configs(&dir, &farm)?;
    Ok(InitReport {
        dir,
        fresh,
        written,
        listen: farm.listen,
    })
}

fn write_configs(dir: &Path, farm: &FarmFile) -> anyhow::Result<()> {
    let user = |role: &Role, via: Via| -> Option<conf::User> {
        farm.identities.get(&role.name()).map(|key| conf::User {
            role: role.clone(),
            public_key: key.clone(),
            via,
        })
    };
    // Clients connect directly to the single server and to the hub; the hub also takes the
    // leaf links.
    let clients = || -> Vec<conf::User> {
        farm.roles()
            .iter()
            .filter(|r| !matches!(r, Role::Leaf(_)))
            .filter_map(|r| user(r, Via::Direct))
            .collect()
    };
    let mut hub_users = clients();
    hub_users.extend(
        farm.regions
            .iter()
            .filter_map(|r| user(&Role::Leaf(r.clone()), Via::LeafLink)),
    );
    let write = |name: &str, text: String| -> anyhow::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {name}"))?;
        std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("cannot write {name}"))
    };
    write(
        "nats-server.conf",
        conf::single(dir, &farm.listen, &clients()),
    )?;
    write(
        "hub.conf",
        conf::hub(dir, &farm.listen, &farm.leaf_listen, &hub_users),
    )?;
    let hub_leaf_url = format!("tls://{}", farm.leaf_listen);
    for r in &farm.regions {
        // The leaf rewrites its workers' `$JS.API.>` and `$KV.>` into the hub's domain before
        // it checks their permissions (nats-server applies mappings first: a worker's
        // `$JS.API.INFO` is refused as "Publish Violation - Subject "$JS.suanli.API.INFO"" when
        // only the first is allowed), so their rights are spelled as the link's are.
        let workers: Vec<conf::User> = user(&Role::Worker(r.clone()), Via::LeafLink)
            .into_iter()
            .collect();
        write(
            &format!("leaf-{r}.conf"),
            conf::leaf(dir, r, &hub_leaf_url, &workers),
        )?;
    }
    Ok(())
}

fn load_existing(dir: &Path) -> anyhow::Result<(PathBuf, FarmFile)> {
    let dir = dir
        .canonicalize()
        .map_err(|_| BadInput(format!("{} is not a farm folder", dir.display())))?;
    let farm = FarmFile::load(&dir)?.ok_or_else(|| {
        BadInput(format!(
            "{} has no {FARM_FILE}: not a farm folder (suanli auth init writes one)",
            dir.display()
        ))
    })?;
    Ok((dir, farm))
}

fn revoke(dir: &Path, role: &Role) -> anyhow::Result<u8> {
    let (dir, mut farm) = load_existing(dir)?;
    let Some(key) = farm.identities.remove(&role.name()) else {
        return Err(BadInput(format!("{role} is not a live identity of this farm")).into());
    };
    farm.revoked.insert(role.name(), key);
    match role {
        Role::Studio(s) => farm.studios.retain(|x| x != s),
        Role::Worker(r) | Role::Leaf(r) => {
            // A region stays while either of its identities is live.
            let other = match role {
                Role::Worker(_) => Role::Leaf(r.clone()),
                _ => Role::Worker(r.clone()),
            };
            if !farm.identities.contains_key(&other.name()) {
                farm.regions.retain(|x| x != r);
            }
        }
        Role::Coordinator | Role::Operator => {}
    }
    farm.save(&dir)?;
    write_configs(&dir, &farm)?;
    let path = dir.join(role.file_name());
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    println!("revoked {role}; reload the servers to refuse it now: nats-server --signal reload");
    Ok(0)
}

/// Re-issues every server certificate of the farm in `dir`, valid until `until`.
pub fn renew(dir: &Path, until: time::OffsetDateTime) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let (dir, farm) = load_existing(dir)?;
    let ca = pki::Ca::load(&dir, &farm.ca_name)?;
    let names = farm.server_names();
    let mut stems = vec!["server".to_string(), "hub".to_string()];
    stems.extend(farm.regions.iter().map(|r| format!("leaf-{r}")));
    for stem in &stems {
        ca.issue_server_until(&dir, stem, &names, until)?;
    }
    Ok((dir, stems))
}

fn rotate(dir: &Path, role: &Role) -> anyhow::Result<u8> {
    let (dir, mut farm) = load_existing(dir)?;
    if !farm.identities.contains_key(&role.name()) {
        return Err(BadInput(format!("{role} is not a live identity of this farm")).into());
    }
    let path = dir.join(role.file_name());
    let tmp = dir.join(format!(".{}.new", role.file_name()));
    let _ = std::fs::remove_file(&tmp);
    let id = Identity::generate(role.clone(), tmp.clone());
    id.write_new()
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    farm.identities.insert(role.name(), id.public_key());
    farm.save(&dir)?;
    write_configs(&dir, &farm)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    println!(
        "new key for {role} in {}; hand it over, then reload the servers (nats-server --signal reload): the old key stops working",
        path.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localfarm::{free_port, NatsServer};
    use suanli_shared::nats;

    /// A server whose certificate has expired is refused, and the client says so in one line;
    /// after `renew` it is accepted again.
    #[tokio::test]
    async fn an_expired_server_certificate_is_refused_and_renew_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        let farm_dir = dir.path().join("farm");
        let port = free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        init(InitArgs::new(
            &farm_dir,
            &[],
            &[],
            &listen,
            free_port().unwrap(),
        ))
        .unwrap();
        let yesterday = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        renew(&farm_dir, yesterday).unwrap();
        let _server = NatsServer::start_config(
            &farm_dir.join("nats-server.conf"),
            port,
            &dir.path().join("log"),
            Vec::new(),
        )
        .unwrap();
        let url = format!("tls://{listen}");
        let access = access_of(&farm_dir, &Role::Operator).unwrap();
        let err = nats::open(&url, "t", &access).await.err().expect("refused");
        let text = err.to_string();
        assert!(text.contains("certificate has expired"), "{text}");
        assert!(!text.contains('\n'), "{text}");

        let in_a_year = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        renew(&farm_dir, in_a_year).unwrap();
        // nats-server reads certificates at start (and on reload): restart it on the same port.
        drop(_server);
        let _server = NatsServer::start_config(
            &farm_dir.join("nats-server.conf"),
            port,
            &dir.path().join("log"),
            Vec::new(),
        )
        .unwrap();
        nats::open(&url, "t", &access)
            .await
            .expect("accepted after renew");
    }

    #[test]
    fn re_running_init_adds_without_touching_existing_identities() {
        let dir = tempfile::tempdir().unwrap();
        let farm_dir = dir.path().join("farm");
        let regions: Vec<Region> = vec!["guian".parse().unwrap()];
        let studios: Vec<Studio> = vec!["acme".parse().unwrap()];
        let first = init(InitArgs::new(
            &farm_dir,
            &regions,
            &studios,
            "127.0.0.1:4222",
            7422,
        ))
        .unwrap();
        assert!(first.fresh);
        let acme = std::fs::read_to_string(farm_dir.join("studio-acme.nk")).unwrap();
        let ca = std::fs::read_to_string(farm_dir.join("ca.pem")).unwrap();
        let mut more = InitArgs::new(&farm_dir, &[], &[], "127.0.0.1:4222", 7422);
        more.add_studio = vec!["blue".parse().unwrap()];
        more.add_region = vec!["ulanqab".parse().unwrap()];
        let second = init(more).unwrap();
        assert!(!second.fresh);
        assert_eq!(
            second.written,
            ["worker-ulanqab.nk", "leaf-ulanqab.nk", "studio-blue.nk"]
        );
        assert_eq!(
            std::fs::read_to_string(farm_dir.join("studio-acme.nk")).unwrap(),
            acme
        );
        assert_eq!(
            std::fs::read_to_string(farm_dir.join("ca.pem")).unwrap(),
            ca
        );
        assert!(farm_dir.join("leaf-ulanqab.pem").is_file());
        let conf = std::fs::read_to_string(farm_dir.join("nats-server.conf")).unwrap();
        for role in [
            "studio-acme",
            "studio-blue",
            "worker-guian",
            "worker-ulanqab",
        ] {
            let id = Identity::load(&farm_dir.join(format!("{role}.nk"))).unwrap();
            assert!(
                conf.contains(&id.public_key()),
                "{role} missing from the config"
            );
            assert!(!conf.contains(id.seed()), "a seed leaked into the config");
        }
        // A farm listening elsewhere is another farm.
        let err = init(InitArgs::new(&farm_dir, &[], &[], "10.0.0.1:4222", 7422))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("already holds a farm"), "{err}");
    }

    #[test]
    fn revoke_and_rotate_change_the_configs() {
        let dir = tempfile::tempdir().unwrap();
        let farm_dir = dir.path().join("farm");
        let studios: Vec<Studio> = vec!["acme".parse().unwrap(), "blue".parse().unwrap()];
        init(InitArgs::new(
            &farm_dir,
            &[],
            &studios,
            "127.0.0.1:4222",
            7422,
        ))
        .unwrap();
        let conf = || std::fs::read_to_string(farm_dir.join("nats-server.conf")).unwrap();
        let blue = Identity::load(&farm_dir.join("studio-blue.nk")).unwrap();
        let acme = Identity::load(&farm_dir.join("studio-acme.nk")).unwrap();
        revoke(&farm_dir, &blue.role).unwrap();
        assert!(!conf().contains(&blue.public_key()));
        assert!(!conf().contains("suanli.studio.blue."));
        assert!(!farm_dir.join("studio-blue.nk").exists());
        let err = revoke(&farm_dir, &blue.role).unwrap_err().to_string();
        assert!(err.contains("not a live identity"), "{err}");
        rotate(&farm_dir, &acme.role).unwrap();
        let new = Identity::load(&farm_dir.join("studio-acme.nk")).unwrap();
        assert_ne!(new.public_key(), acme.public_key());
        assert!(conf().contains(&new.public_key()));
        assert!(!conf().contains(&acme.public_key()));
    }
}
