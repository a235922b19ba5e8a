//! What an operator installs: the `.deb` and `.rpm` packages built by
//! `deploy/package`, the systemd units and Redis drop-ins, the EC2 user data
//! and the CloudFormation template, each checked by the tool that owns the
//! format (lintian, rpmlint, systemd-analyze, cloud-init, cfn-lint), the
//! binaries' glibc needs (objdump), and the packages installed for real: the
//! `.deb` with dpkg in a Debian 12 chroot (debootstrap, cached under
//! `target/tmp/`), the `.rpm` with `rpm --root` into another one, where the
//! installed config passes `gateway -t`.
//!
//! The packages are built once per test run (`deploy/package`, which reuses
//! release binaries that are up to date: `scripts/test` builds them first).
//! Every external tool goes through `common::require_tool`: missing under CI, the
//! test fails; elsewhere it says "skipped".

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::require_tool;
use std::sync::OnceLock;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const MAX_GLIBC: (u32, u32) = (2, 34);

fn root() -> PathBuf {
    Path::new(ROOT).canonicalize().unwrap()
}

fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Installing into a chroot needs root: the same rule as a missing tool.
fn require_root() -> bool {
    let uid = run(Command::new("id").arg("-u"));
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        return true;
    }
    assert!(!under_ci(), "the chroot install tests need root under CI");
    eprintln!("skipped: not root (chroot installs need it)");
    false
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, fails the test with its output unless it succeeds, and returns
/// stdout and stderr together.
fn check(cmd: &mut Command) -> String {
    let out = run(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

/// The four packages, built once for all tests of this file.
struct Packages {
    gateway_deb: PathBuf,
    app_deb: PathBuf,
    gateway_rpm: PathBuf,
    app_rpm: PathBuf,
}

fn packages() -> Option<&'static Packages> {
    static PACKAGES: OnceLock<Option<Packages>> = OnceLock::new();
    PACKAGES
        .get_or_init(|| {
            for tool in ["cargo-deb", "cargo-generate-rpm", "strip", "objdump"] {
                if !require_tool(tool) {
                    return None;
                }
            }
            let mut cmd = Command::new(root().join("deploy/package"));
            // The variables cargo sets for this test describe this crate, not
            // the builds deploy/package runs.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy().into_owned();
                if k.starts_with("CARGO_")
                    && !matches!(k.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR")
                {
                    cmd.env_remove(k);
                }
            }
            let started = std::time::Instant::now();
            check(cmd.current_dir(root()));
            eprintln!("deploy/package took {:?}", started.elapsed());
            let dir = target_dir().join("packages");
            let find = |prefix: &str, ext: &str| {
                std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|p| {
                        let n = p.file_name().unwrap().to_string_lossy();
                        n.starts_with(prefix) && n.ends_with(ext)
                    })
                    .unwrap_or_else(|| panic!("no {prefix}*{ext} in {}", dir.display()))
            };
            Some(Packages {
                gateway_deb: find("gateway_", "_amd64.deb"),
                app_deb: find("upstream-app_", "_amd64.deb"),
                gateway_rpm: find("gateway-", ".x86_64.rpm"),
                app_rpm: find("upstream-app-", ".x86_64.rpm"),
            })
        })
        .as_ref()
}

/// The highest `GLIBC_x.y` version that `bin` needs, by `objdump -T`.
fn glibc_needed(bin: &Path) -> (u32, u32) {
    let text = check(Command::new("objdump").arg("-T").arg(bin));
    text.split("GLIBC_")
        .skip(1)
        .filter_map(|s| {
            let v: String = s
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("GLIBC_ symbols")
}

#[test]
fn release_binaries_need_glibc_2_34_at_most() {
    if packages().is_none() || !require_tool("objdump") {
        return;
    }
    for bin in ["gateway", "upstream-app"] {
        let path = target_dir().join("release").join(bin);
        let need = glibc_needed(&path);
        eprintln!("{bin}: needs GLIBC_{}.{}", need.0, need.1);
        assert!(
            need <= MAX_GLIBC,
            "{bin} needs glibc {}.{}: Amazon Linux 2023 has 2.34",
            need.0,
            need.1
        );
    }
}

/// `dpkg-deb -c` listing: the paths, without the leading `.`.
fn deb_files(deb: &Path) -> Vec<String> {
    check(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

fn deb_control_file(deb: &Path, name: &str) -> String {
    let out = run(Command::new("dpkg-deb").args(["-I"]).arg(deb).arg(name));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debs_hold_binary_unit_config_and_sysctl() {
    let Some(p) = packages() else { return };
    if !require_tool("dpkg-deb") {
        return;
    }
    let files = deb_files(&p.gateway_deb);
    for want in [
        "/usr/bin/gateway",
        "/etc/gateway/gateway.yaml",
        "/usr/lib/systemd/system/gateway.service",
        "/usr/lib/sysctl.d/60-gateway.conf",
        "/usr/share/doc/gateway/copyright",
        "/usr/share/doc/gateway/changelog.Debian.gz",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} not in {files:?}");
    }
    assert!(deb_control_file(&p.gateway_deb, "conffiles").contains("/etc/gateway/gateway.yaml"));
    let postinst = deb_control_file(&p.gateway_deb, "postinst");
    assert!(postinst.contains("/etc/gateway/admin-token"));
    assert!(postinst.contains("deb-systemd-helper"), "enables the unit");
    assert!(postinst.contains("deb-systemd-invoke"), "starts the unit");
    assert!(deb_control_file(&p.gateway_deb, "prerm").contains("stop"));

    let files = deb_files(&p.app_deb);
    for want in [
        "/usr/bin/upstream-app",
        "/etc/upstream-app/upstream-app.yaml",
        "/usr/lib/systemd/system/upstream-app.service",
        "/usr/lib/systemd/system/redis-server.service.d/upstream-app.conf",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} not in {files:?}");
    }
    assert!(
        deb_control_file(&p.app_deb, "conffiles").contains("/etc/upstream-app/upstream-app.yaml")
    );
    assert!(deb_control_file(&p.app_deb, "control").contains("redis-server"));
}

#[test]
fn the_rpms_hold_binary_unit_config_and_sysctl() {
    let Some(p) = packages() else { return };
    if !require_tool("rpm") {
        return;
    }
    let files = check(Command::new("rpm").arg("-qlp").arg(&p.gateway_rpm));
    for want in [
        "/usr/bin/gateway",
        "/etc/gateway/gateway.yaml",
        "/usr/lib/systemd/system/gateway.service",
        "/usr/lib/sysctl.d/60-gateway.conf",
    ] {
        assert!(files.lines().any(|f| f == want), "{want} not in {files}");
    }
    let conf = check(Command::new("rpm").arg("-qcp").arg(&p.gateway_rpm));
    assert_eq!(conf.trim(), "/etc/gateway/gateway.yaml");
    let scripts = check(
        Command::new("rpm")
            .arg("-qp")
            .arg("--scripts")
            .arg(&p.gateway_rpm),
    );
    assert!(scripts.contains("/etc/gateway/admin-token"));
    assert!(scripts.contains("systemctl enable --now gateway.service"));
    assert!(scripts.contains("systemctl disable --now gateway.service"));

    let files = check(Command::new("rpm").arg("-qlp").arg(&p.app_rpm));
    for want in [
        "/usr/bin/upstream-app",
        "/etc/upstream-app/upstream-app.yaml",
        "/usr/lib/systemd/system/upstream-app.service",
        "/usr/lib/systemd/system/redis6.service.d/upstream-app.conf",
    ] {
        assert!(files.lines().any(|f| f == want), "{want} not in {files}");
    }
    let requires = check(Command::new("rpm").arg("-qRp").arg(&p.app_rpm));
    assert!(requires.contains("redis6"), "{requires}");
}

#[test]
fn lintian_finds_no_errors_in_the_debs() {
    let Some(p) = packages() else { return };
    if !require_tool("lintian") {
        return;
    }
    for deb in [&p.gateway_deb, &p.app_deb] {
        let out = run(Command::new("lintian")
            .args(["--fail-on", "error", "--tag-display-limit", "0"])
            .arg(deb));
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("lintian {}:\n{text}", deb.display());
        assert!(
            out.status.success() && !text.lines().any(|l| l.starts_with("E:")),
            "lintian errors: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn rpmlint_finds_no_errors_in_the_rpms() {
    let Some(p) = packages() else { return };
    if !require_tool("rpmlint") {
        return;
    }
    for rpm in [&p.gateway_rpm, &p.app_rpm] {
        let out = run(Command::new("rpmlint")
            .arg("-c")
            .arg(root().join("deploy/rpm/rpmlint.toml"))
            .arg(rpm));
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("rpmlint {}:\n{text}", rpm.display());
        assert!(
            text.contains(" 0 errors"),
            "rpmlint errors: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Debian 12 (bookworm) minbase tree, made once with debootstrap from the
/// machine's apt mirror and cached as `target/tmp/debian12-minbase.tar`;
/// every call extracts a fresh copy into a new temporary directory.
fn debian_chroot() -> Option<tempfile::TempDir> {
    static TARBALL: OnceLock<Option<PathBuf>> = OnceLock::new();
    let tarball = TARBALL.get_or_init(|| {
        if !require_root() || !require_tool("debootstrap") || !require_tool("tar") {
            return None;
        }
        let tarball = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian12-minbase.tar");
        if tarball.exists() {
            return Some(tarball);
        }
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        check(
            Command::new("debootstrap")
                .args(["--variant=minbase", "bookworm"])
                .arg(dir.path())
                .arg(apt_mirror()),
        );
        let partial = tarball.with_extension("tar.partial");
        check(
            Command::new("tar")
                .arg("-C")
                .arg(dir.path())
                .arg("-cf")
                .arg(&partial)
                .arg("."),
        );
        std::fs::rename(&partial, &tarball).unwrap();
        eprintln!("debootstrap bookworm minbase took {:?}", started.elapsed());
        Some(tarball)
    });
    let tarball = tarball.as_ref()?;
    let dir = tempfile::tempdir().unwrap();
    check(
        Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-xf")
            .arg(tarball),
    );
    Some(dir)
}

/// The Debian mirror apt uses here (debootstrap needs one), or Debian's own.
fn apt_mirror() -> String {
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("http") && w.trim_end_matches('/').ends_with("/debian"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_owned()
}

/// Runs a command inside the chroot with a clean environment plus `env`.
fn in_chroot(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new("chroot");
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .envs(env.iter().copied())
        .arg(dir)
        .args(args);
    run(&mut cmd)
}

fn in_chroot_ok(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = in_chroot(dir, env, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "chroot {args:?} failed: {text}");
    text
}

/// The runtime paths (/run/gateway is the service's RuntimeDirectory, absent
/// outside systemd) and the admin token the unit passes, for `gateway -t`.
const CHECK_ENV: [(&str, &str); 3] = [
    ("GATEWAY_PID_FILE", "/tmp/gateway.pid"),
    ("GATEWAY_UPGRADE_SOCK", "/tmp/gateway-upgrade.sock"),
    ("GATEWAY_ADMIN__TOKEN_FILE", "/etc/gateway/admin-token"),
];

fn assert_token_made(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let token = dir.join("etc/gateway/admin-token");
    let meta = std::fs::metadata(&token).expect("admin token generated at install");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&token).unwrap();
    assert_eq!(text.trim().len(), 64, "32 random bytes in hex: {text:?}");
}

#[test]
fn the_deb_installs_checks_and_removes_in_debian_12() {
    let Some(p) = packages() else { return };
    let Some(chroot) = debian_chroot() else {
        return;
    };
    let dir = chroot.path();
    std::fs::copy(&p.gateway_deb, dir.join("tmp/gateway.deb")).unwrap();
    in_chroot_ok(dir, &[], &["dpkg", "-i", "/tmp/gateway.deb"]);
    assert_token_made(dir);
    let token_before = std::fs::read(dir.join("etc/gateway/admin-token")).unwrap();
    // Enabled (deb-systemd-helper), not started: no systemd runs in a chroot.
    // (An absolute symlink into the chroot: look at the link, not its target.)
    assert!(dir
        .join("etc/systemd/system/multi-user.target.wants/gateway.service")
        .symlink_metadata()
        .is_ok());
    let out = in_chroot_ok(
        dir,
        &CHECK_ENV,
        &["/usr/bin/gateway", "-t", "-c", "/etc/gateway/gateway.yaml"],
    );
    eprintln!("gateway -t in the chroot: {out}");

    // A reinstall (upgrade path) keeps the token and a changed config.
    let conf = dir.join("etc/gateway/gateway.yaml");
    let changed = format!(
        "{}\n# changed by the operator\n",
        std::fs::read_to_string(&conf).unwrap()
    );
    std::fs::write(&conf, &changed).unwrap();
    in_chroot_ok(
        dir,
        &[("DEBIAN_FRONTEND", "noninteractive")],
        &["dpkg", "--force-confold", "-i", "/tmp/gateway.deb"],
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), changed);
    assert_eq!(
        std::fs::read(dir.join("etc/gateway/admin-token")).unwrap(),
        token_before
    );

    in_chroot_ok(dir, &[], &["dpkg", "-r", "gateway"]);
    assert!(!dir.join("usr/bin/gateway").exists());
    assert!(conf.exists(), "remove keeps the conffile");
    in_chroot_ok(dir, &[], &["dpkg", "-P", "gateway"]);
    assert!(
        !dir.join("etc/gateway/admin-token").exists(),
        "purge removes the token"
    );

    // upstream-app depends on redis-server, which a minbase tree lacks: its
    // scripts and files are checked with that dependency forced.
    std::fs::copy(&p.app_deb, dir.join("tmp/upstream-app.deb")).unwrap();
    in_chroot_ok(
        dir,
        &[],
        &["dpkg", "--force-depends", "-i", "/tmp/upstream-app.deb"],
    );
    assert!(dir.join("usr/bin/upstream-app").exists());
    in_chroot_ok(dir, &[], &["/usr/bin/upstream-app", "--help"]);
    in_chroot_ok(dir, &[], &["dpkg", "-P", "upstream-app"]);
}

#[test]
fn the_rpm_installs_with_its_scripts_and_checks() {
    let Some(p) = packages() else { return };
    if !require_tool("rpm") {
        return;
    }
    // The scriptlets need a shell and coreutils: a Debian tree provides them.
    let Some(chroot) = debian_chroot() else {
        return;
    };
    let dir = chroot.path();
    check(Command::new("rpm").arg("--root").arg(dir).arg("--initdb"));
    for pkg in [&p.gateway_rpm, &p.app_rpm] {
        check(
            Command::new("rpm")
                .arg("--root")
                .arg(dir)
                .args(["-i", "--nodeps"])
                .arg(pkg),
        );
    }
    assert_token_made(dir);
    for f in [
        "usr/bin/gateway",
        "usr/lib/systemd/system/gateway.service",
        "usr/lib/sysctl.d/60-gateway.conf",
        "usr/bin/upstream-app",
        "usr/lib/systemd/system/redis6.service.d/upstream-app.conf",
    ] {
        assert!(dir.join(f).exists(), "{f} not installed");
    }
    in_chroot_ok(
        dir,
        &CHECK_ENV,
        &["/usr/bin/gateway", "-t", "-c", "/etc/gateway/gateway.yaml"],
    );
    check(Command::new("rpm").arg("--root").arg(dir).args([
        "-e",
        "--nodeps",
        "gateway",
        "upstream-app",
    ]));
    assert!(!dir.join("usr/bin/gateway").exists());
}

/// The units and drop-ins, with their binaries pointed at ones that exist
/// here (`verify` checks that ExecStart's program is there).
#[test]
fn units_and_drop_ins_pass_systemd_analyze_verify() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_gateway");
    let redis = ["/usr/bin/redis-server", "/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    let copy = |src: &str, dest: &str| {
        let text = std::fs::read_to_string(root().join(src))
            .unwrap()
            .replace("/usr/bin/gateway", exe)
            .replace("/usr/bin/upstream-app", exe)
            .replace("/usr/bin/redis6-server", redis)
            .replace("/usr/bin/redis-server", redis);
        let path = dir.path().join(dest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    copy("deploy/systemd/gateway.service", "gateway.service");
    copy(
        "deploy/systemd/upstream-app.service",
        "upstream-app.service",
    );
    copy(
        "deploy/systemd/redis-server.service.d/upstream-app.conf",
        "redis-server.service.d/upstream-app.conf",
    );
    copy(
        "deploy/systemd/redis6.service.d/upstream-app.conf",
        "redis6.service.d/upstream-app.conf",
    );
    // The Redis units the drop-ins extend: the distribution's where it is
    // installed, otherwise a stand-in shaped like it.
    for name in ["redis-server.service", "redis6.service"] {
        let text = std::fs::read_to_string(Path::new("/lib/systemd/system").join(name))
            .unwrap_or_else(|_| {
                format!("[Unit]\nDescription=stand-in for {name}\n[Service]\nType=notify\nExecStart={redis}\n")
            })
            .replace("/usr/bin/redis-server", redis);
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    for unit in [
        "gateway.service",
        "upstream-app.service",
        "redis-server.service",
        "redis6.service",
    ] {
        let out = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.path().join(unit))
            // The temporary directory first, so that the drop-ins are found.
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display())));
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("systemd-analyze verify {unit}: {stderr}");
        assert!(out.status.success(), "{unit}: {stderr}");
        for name in [
            "gateway.service",
            "upstream-app.service",
            "upstream-app.conf",
        ] {
            assert!(!stderr.contains(name), "warnings about {name}: {stderr}");
        }
    }
    // (A drop-in is parsed there: its unknown keys are reported with its
    // file name, and its ExecStart= is the one checked for existence.)
}

#[test]
fn the_sysctl_drop_in_sets_backlog_and_port_range() {
    let text = std::fs::read_to_string(root().join("deploy/sysctl/60-gateway.conf")).unwrap();
    let keys: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key = value");
            (k.trim(), v.trim())
        })
        .collect();
    for want in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
    ] {
        assert!(keys.iter().any(|(k, _)| *k == want), "{want} missing");
    }
    // The local port range must not take the ports the stack listens on.
    let (_, range) = keys
        .iter()
        .find(|(k, _)| *k == "net.ipv4.ip_local_port_range")
        .unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        low > 9180,
        "local ports from {low} would collide with 5000/6380/9180"
    );
}

const USER_DATA: &str = "deploy/ec2/user-data.yaml";
const CFN: &str = "deploy/ec2/cloudformation.yaml";

fn yaml(path: &str) -> serde_json::Value {
    use figment::providers::{Format, Yaml};
    figment::Figment::from(Yaml::file_exact(root().join(path)))
        .extract()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn user_data_passes_cloud_init_schema() {
    if !require_tool("cloud-init") {
        return;
    }
    let text = std::fs::read_to_string(root().join(USER_DATA)).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    let out = check(
        Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(root().join(USER_DATA)),
    );
    eprintln!("cloud-init schema: {out}");
    assert!(out.contains("Valid cloud-config"), "{out}");
}

/// The config that cloud-init writes passes `gateway -t`.
#[test]
fn user_data_gateway_config_passes_the_check() {
    let ud = yaml(USER_DATA);
    let files = ud["write_files"].as_array().unwrap();
    let file = |path: &str| {
        files
            .iter()
            .find(|f| f["path"] == path)
            .and_then(|f| f["content"].as_str())
            .unwrap_or_else(|| panic!("{path} not in write_files"))
            .to_owned()
    };
    let conf = file("/etc/gateway/cloud-init.yaml");
    assert!(conf.contains("\"127.0.0.1:5000\""));
    assert!(conf.contains("ready_path: /.gateway/ready"));
    let script = file("/usr/local/sbin/install-gateway");
    assert!(
        script.contains("install -m 0644 /etc/gateway/cloud-init.yaml /etc/gateway/gateway.yaml")
    );
    assert!(ud["runcmd"]
        .to_string()
        .contains("/usr/local/sbin/install-gateway"));

    let dir = tempfile::tempdir().unwrap();
    let gateway = env!("CARGO_BIN_EXE_gateway");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, conf).unwrap();
    check(
        Command::new(gateway)
            .args(["-t", "-c"])
            .arg(&path)
            .env("GATEWAY_PID_FILE", dir.path().join("gateway.pid"))
            .env("GATEWAY_UPGRADE_SOCK", dir.path().join("upgrade.sock")),
    );
}

#[test]
fn cloudformation_passes_cfn_lint() {
    if !require_tool("cfn-lint") {
        return;
    }
    let out = run(Command::new("cfn-lint").arg(root().join(CFN)));
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("cfn-lint: {text}");
    assert!(
        out.status.success(),
        "cfn-lint: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The template's user data is `deploy/ec2/user-data.yaml` with the package
/// URLs as parameters, its security group opens 80 and 443 only, and the
/// load balancer's health check is the gateway's readiness path.
#[test]
fn cloudformation_matches_the_user_data_and_opens_80_and_443_only() {
    let cfn = yaml(CFN);
    let res = &cfn["Resources"];
    let embedded = res["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
        .as_str()
        .unwrap();
    let user_data = std::fs::read_to_string(root().join(USER_DATA)).unwrap();
    let ud = yaml(USER_DATA);
    let env = ud["write_files"][0]["content"].as_str().unwrap();
    let mut expected = user_data.clone();
    for (var, param) in [
        ("GATEWAY_DEB_URL", "GatewayDebUrl"),
        ("GATEWAY_RPM_URL", "GatewayRpmUrl"),
    ] {
        let line = env
            .lines()
            .find(|l| l.starts_with(&format!("{var}=")))
            .unwrap();
        expected = expected.replace(line, &format!("{var}=${{{param}}}"));
    }
    assert_eq!(
        embedded, expected,
        "the template's user data differs from {USER_DATA}"
    );

    let ports: Vec<u64> = res["GatewaySecurityGroup"]["Properties"]["SecurityGroupIngress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["FromPort"], r["ToPort"], "single ports only");
            r["FromPort"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ports, [80, 443]);
    let tg = &res["TargetGroup"]["Properties"];
    assert_eq!(tg["HealthCheckPath"], "/.gateway/ready");
    assert_eq!(tg["Port"], 80);
}
