//! nats-server configurations for a secure farm: one server, or a hub with a leaf node per
//! region. They name identities by public key only and point at certificate files, so they hold
//! no secret; the one secret a leaf node needs (its link's NKey seed) comes from the
//! environment at start (`SUANLI_LEAF_SEED`, read from `leaf-<region>.nk`).

use std::fmt::Write;
use std::path::Path;

use suanli_shared::access::{permissions, Role, Via};
use suanli_shared::nats::JS_DOMAIN;
use suanli_shared::Region;

/// One user of a server's `authorization` block.
pub struct User {
    pub role: Role,
    pub public_key: String,
    /// How the server that checks this user spells JetStream subjects: a leaf node checks its
    /// own clients after its mappings, so it spells theirs as the hub's link does.
    pub via: Via,
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn users_block(users: &[User]) -> String {
    let mut out = String::from("authorization {\n  timeout: 5\n  users = [\n");
    for u in users {
        let p = permissions(&u.role, u.via);
        // A leaf link may connect only to a leaf-node port, every other role only as a client.
        let kind = match u.role {
            Role::Leaf(_) => "LEAFNODE",
            _ => "STANDARD",
        };
        let deny = if p.deny_publish.is_empty() {
            String::new()
        } else {
            format!(", deny: [{}]", quoted(&p.deny_publish))
        };
        let _ = write!(
            out,
            "    # {role}: {what}\n    {{\n      nkey: {key}\n      allowed_connection_types: [{kind:?}]\n      permissions: {{\n        publish: {{ allow: [{publish}]{deny} }}\n        subscribe: {{ allow: [{subscribe}] }}\n      }}\n    }}\n",
            role = u.role,
            what = u.role.describe(),
            key = u.public_key,
            publish = quoted(&p.publish),
            subscribe = quoted(&p.subscribe),
        );
    }
    out.push_str("  ]\n}\n");
    out
}

fn tls_block(dir: &Path, stem: &str, indent: &str) -> String {
    format!(
        "{indent}tls {{\n{indent}  cert_file: {cert:?}\n{indent}  key_file: {key:?}\n{indent}  ca_file: {ca:?}\n{indent}  timeout: 5\n{indent}}}\n",
        cert = dir.join(format!("{stem}.pem")).display().to_string(),
        key = dir.join(format!("{stem}-key.pem")).display().to_string(),
        ca = dir.join("ca.pem").display().to_string(),
    )
}

const HEADER: &str = "# Written by `suanli auth init`: edit the farm with `suanli auth` and regenerate rather than\n# editing this file. It holds public keys and file paths only, no secret.\n";

/// The single server: every role connects here over TLS.
pub fn single(dir: &Path, listen: &str, users: &[User]) -> String {
    format!(
        "{HEADER}# One server for the whole farm: nats-server -c {conf}\nserver_name: suanli\nlisten: {listen:?}\nmax_payload: 1MB\n\njetstream {{\n  store_dir: {store:?}\n}}\n\n{tls}\n{users}",
        conf = dir.join("nats-server.conf").display(),
        store = dir.join("jetstream").display().to_string(),
        tls = tls_block(dir, "server", ""),
        users = users_block(users),
    )
}

/// The hub: JetStream in domain `suanli`, clients over TLS, and the regions' leaf links over
/// TLS, each authenticated by its link identity and limited to its region's workers' rights.
pub fn hub(dir: &Path, listen: &str, leaf_listen: &str, users: &[User]) -> String {
    format!(
        "{HEADER}# The hub of a farm with a leaf node per region: nats-server -c {conf}\nserver_name: hub\nlisten: {listen:?}\nmax_payload: 1MB\n\njetstream {{\n  store_dir: {store:?}\n  domain: {JS_DOMAIN}\n}}\n\n{tls}\nleafnodes {{\n  listen: {leaf_listen:?}\n{leaf_tls}}}\n\n{users}",
        conf = dir.join("hub.conf").display(),
        store = dir.join("hub-jetstream").display().to_string(),
        tls = tls_block(dir, "hub", ""),
        leaf_tls = tls_block(dir, "hub", "  "),
        users = users_block(users),
    )
}

/// A region's leaf node: the region's workers connect here (TLS, their own identity), and it
/// links to the hub over TLS with the region's link identity.
pub fn leaf(dir: &Path, region: &Region, hub_leaf_url: &str, users: &[User]) -> String {
    format!(
        "{HEADER}# Region {region}'s leaf node. Start it with its link identity and address in the environment:\n#   SUANLI_LEAF_LISTEN=0.0.0.0:4222 SUANLI_LEAF_SEED=$(grep '^SU' {seed}) nats-server -c {conf}\nserver_name: leaf-{region}\nlisten: $SUANLI_LEAF_LISTEN\nmax_payload: 1MB\n\n# The hub runs JetStream in domain {JS_DOMAIN}: workers' JetStream API and KV writes are\n# rewritten into it and cross the link (see deploy/nats/hub.conf). The rewrite comes first, so\n# the workers' permissions below name the rewritten subjects.\nmappings {{\n  \"$JS.API.>\": \"$JS.{JS_DOMAIN}.API.>\"\n  \"$KV.>\": \"$JS.{JS_DOMAIN}.API.$KV.>\"\n}}\n\n{tls}\nleafnodes {{\n  remotes: [\n    {{\n      urls: [{hub_leaf_url:?}]\n      nkey: $SUANLI_LEAF_SEED\n      tls {{\n        ca_file: {ca:?}\n        timeout: 5\n      }}\n    }}\n  ]\n}}\n\n{users}",
        seed = dir.join(Role::Leaf(region.clone()).file_name()).display(),
        conf = dir.join(format!("leaf-{region}.conf")).display(),
        tls = tls_block(dir, &format!("leaf-{region}"), ""),
        ca = dir.join("ca.pem").display().to_string(),
        users = users_block(users),
    )
}

#[cfg(test)]
mod tests {
    use crate::auth::{init, InitArgs};

    /// The entry of `role` in a config's users: from its `# <role>:` line to the next entry.
    fn entry<'a>(conf: &'a str, role: &str) -> &'a str {
        let start = conf
            .find(&format!("    # {role}:"))
            .unwrap_or_else(|| panic!("no user {role} in\n{conf}"));
        let rest = &conf[start + 4..];
        &rest[..rest.find("    # ").unwrap_or(rest.len())]
    }

    /// A leaf node checks its workers' publishes after its mappings have rewritten `$JS.API.>`
    /// and `$KV.>` into the hub's domain (nats-server refused a worker's `$JS.API.INFO` as
    /// `Publish Violation - Subject "$JS.suanli.API.INFO"`), so it must spell their rights that
    /// way; the hub, which sees them unmapped from its own clients, spells them plainly.
    #[test]
    fn a_leaf_spells_its_workers_rights_in_the_hub_domain() {
        let dir = tempfile::tempdir().unwrap();
        let farm = dir.path().join("farm");
        init(InitArgs::new(
            &farm,
            &["guian".parse().unwrap()],
            &[],
            "127.0.0.1:4222",
            7422,
        ))
        .unwrap();
        let read = |name: &str| std::fs::read_to_string(farm.join(name)).unwrap();

        let leaf = read("leaf-guian.conf");
        let on_leaf = entry(&leaf, "worker-guian");
        for right in [
            "$JS.suanli.API.INFO",
            "$JS.suanli.API.CONSUMER.MSG.NEXT.SUANLI_TASKS.region-guian",
            "$JS.suanli.API.$KV.suanli_workers.guian.*",
            "$JS.ACK.SUANLI_TASKS.region-guian.>",
        ] {
            assert!(
                on_leaf.contains(&format!("{right:?}")),
                "{right}: {on_leaf}"
            );
        }
        assert!(!on_leaf.contains("\"$JS.API."), "{on_leaf}");
        assert!(!on_leaf.contains("\"$KV."), "{on_leaf}");
        assert!(on_leaf.contains(r#"allowed_connection_types: ["STANDARD"]"#));

        let hub = read("hub.conf");
        let on_hub = entry(&hub, "worker-guian");
        assert!(on_hub.contains(r#""$JS.API.INFO""#), "{on_hub}");
        assert!(
            on_hub.contains(r#""$KV.suanli_workers.guian.*""#),
            "{on_hub}"
        );
        assert!(on_hub.contains(r#"allowed_connection_types: ["STANDARD"]"#));
        let link = entry(&hub, "leaf-guian");
        assert!(link.contains(r#""$JS.suanli.API.INFO""#), "{link}");
        assert!(link.contains(r#"allowed_connection_types: ["LEAFNODE"]"#));
    }
}
