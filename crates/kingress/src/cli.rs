//! The command line. The names here are a contract (acceptance suites drive them).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kingress_compile::{ClassOptions, CompileOptions, L4Options, PolicyDefaults, parse_config_map_ref};
use kingress_proxy::{HealthPolicy, ProxySettings};

use crate::gateway::KubeMode;
use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "kingress",
    version,
    about = "A userspace L4/L7 proxy that is a drop-in Kubernetes ingress controller"
)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text", env = "KINGRESS_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ingress gateway (from a folder of manifests with --manifests).
    Run(Box<RunArgs>),
    /// Run an echo backend that answers every request with JSON describing it.
    Echo(EchoArgs),
    /// Run the gateway with echo backends from examples/quickstart and print curl commands.
    Demo(DemoArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ListenArgs {
    /// Address of the plain HTTP listener.
    #[arg(long, default_value = "127.0.0.1:8080", env = "KINGRESS_HTTP_LISTEN")]
    pub http_listen: SocketAddr,
    /// Address of the HTTPS listener (TLS terminated by SNI, HTTP/2 by ALPN).
    #[arg(long, default_value = "127.0.0.1:8443", env = "KINGRESS_HTTPS_LISTEN")]
    pub https_listen: SocketAddr,
    /// Address of the admin listener (/healthz, /readyz, /debug/config).
    #[arg(long, default_value = "127.0.0.1:10254", env = "KINGRESS_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
}

#[derive(Debug, Args, Clone)]
pub struct ProxyArgs {
    /// Upstream connect timeout, in seconds (proxy-connect-timeout).
    #[arg(long, default_value_t = 5.0, env = "KINGRESS_PROXY_CONNECT_TIMEOUT")]
    pub proxy_connect_timeout: f64,
    /// Upstream read timeout between two reads, in seconds (proxy-read-timeout).
    #[arg(long, default_value_t = 60.0, env = "KINGRESS_PROXY_READ_TIMEOUT")]
    pub proxy_read_timeout: f64,
    /// Upstream send timeout between two writes, in seconds (proxy-send-timeout).
    #[arg(long, default_value_t = 60.0, env = "KINGRESS_PROXY_SEND_TIMEOUT")]
    pub proxy_send_timeout: f64,
    /// Attempts in all when an endpoint fails (proxy-next-upstream-tries); the ConfigMap
    /// and the annotation of the same name override it.
    #[arg(long, default_value_t = 3, env = "KINGRESS_PROXY_NEXT_UPSTREAM_TRIES")]
    pub proxy_next_upstream_tries: usize,
    /// Consecutive failed attempts after which an endpoint is ejected (0: never eject).
    #[arg(long, default_value_t = 3, env = "KINGRESS_UPSTREAM_MAX_FAILS")]
    pub upstream_max_fails: u32,
    /// How long an ejected endpoint is skipped, in seconds; doubled while it keeps
    /// failing, up to 30 times this.
    #[arg(long, default_value_t = 10.0, env = "KINGRESS_UPSTREAM_FAIL_TIMEOUT")]
    pub upstream_fail_timeout: f64,
    /// How long a client may take to complete a TLS handshake, in seconds.
    #[arg(long, default_value_t = 10.0, env = "KINGRESS_SSL_HANDSHAKE_TIMEOUT")]
    pub ssl_handshake_timeout: f64,
    /// TLS handshakes in progress at most per listener; more wait, within their timeout.
    #[arg(long, default_value_t = 256, env = "KINGRESS_MAX_TLS_HANDSHAKES")]
    pub max_tls_handshakes: usize,
    /// Largest client request body, nginx syntax (1m, 512k, 10485760); 0 for no limit (proxy-body-size).
    #[arg(long, default_value = "1m", env = "KINGRESS_PROXY_BODY_SIZE")]
    pub proxy_body_size: String,
    /// Expect a PROXY protocol header (v1 or v2) on every HTTP and HTTPS connection, from
    /// a load balancer in front; X-Forwarded-For and X-Real-IP then carry its client. The
    /// controller ConfigMap's `use-proxy-protocol` overrides it, live.
    #[arg(long, env = "KINGRESS_USE_PROXY_PROTOCOL")]
    pub use_proxy_protocol: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ClassArgs {
    /// The IngressClass name this controller serves.
    #[arg(long, default_value = "kingress", env = "KINGRESS_INGRESS_CLASS")]
    pub ingress_class: String,
    /// The spec.controller value of IngressClasses this controller serves.
    #[arg(
        long,
        default_value = "kingress.dev/ingress-controller",
        env = "KINGRESS_CONTROLLER_CLASS"
    )]
    pub controller_class: String,
    /// Also serve Ingresses that name no class at all.
    #[arg(long, env = "KINGRESS_WATCH_INGRESS_WITHOUT_CLASS")]
    pub watch_ingress_without_class: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Serve the Kubernetes manifests (*.yaml, *.yml, *.json) under this folder, live-reloaded.
    /// Without it, kingress watches the Kubernetes API server.
    #[arg(long, env = "KINGRESS_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Kubernetes mode: the kubeconfig (else $KUBECONFIG, ~/.kube/config, or the in-cluster
    /// service account).
    #[arg(long, conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: watch the namespaced kinds in this namespace only.
    #[arg(long, env = "KINGRESS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Kubernetes mode: write this Service's load-balancer addresses (NAMESPACE/NAME) into
    /// the status of the Ingresses served.
    #[arg(long, env = "KINGRESS_PUBLISH_SERVICE")]
    pub publish_service: Option<String>,
    /// Kubernetes mode: write these addresses (ADDR[,ADDR]) into the Ingress status; wins
    /// over --publish-service.
    #[arg(long, env = "KINGRESS_PUBLISH_STATUS_ADDRESS", value_delimiter = ',')]
    pub publish_status_address: Vec<String>,
    /// Kubernetes mode: clear the Ingress status the leader wrote when it shuts down.
    #[arg(long, env = "KINGRESS_UPDATE_STATUS_ON_SHUTDOWN")]
    pub update_status_on_shutdown: bool,
    /// Kubernetes mode: the name of the Lease used for leader election, in POD_NAMESPACE.
    #[arg(long, default_value = "kingress-leader", env = "KINGRESS_ELECTION_ID")]
    pub election_id: String,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub class: ClassArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The certificate for hosts without one of their own, NAMESPACE/NAME of a
    /// kubernetes.io/tls Secret (default: a self-signed "Fake Certificate" made at start).
    #[arg(long, env = "KINGRESS_DEFAULT_SSL_CERTIFICATE")]
    pub default_ssl_certificate: Option<String>,
    /// The HTTPS port in ssl-redirect Locations (default: the HTTPS listener's port);
    /// 443 is left out of the URL. Set it when a Service maps 443 to --https-listen.
    #[arg(long, env = "KINGRESS_HTTPS_REDIRECT_PORT")]
    pub https_redirect_port: Option<u16>,
    /// The controller ConfigMap, NAMESPACE/NAME (keys: load-balance, upstream-hash-by,
    /// proxy-next-upstream, proxy-next-upstream-tries). In manifest mode it is read from
    /// the folder.
    #[arg(long, env = "KINGRESS_CONFIGMAP")]
    pub configmap: Option<String>,
    /// Threads that serve proxied connections (0: one per CPU).
    #[arg(long, default_value_t = 0, env = "KINGRESS_WORKER_THREADS")]
    pub worker_threads: usize,
    #[command(flatten)]
    pub l4: L4Args,
}

/// The L4 plane: ServiceLB ports, tcp/udp-services, SSL passthrough.
#[derive(Debug, Args, Clone)]
pub struct L4Args {
    /// ServiceLB mode: listen on every port of every Service of type LoadBalancer (whose
    /// spec.loadBalancerClass is unset or --l4-class) and forward it to the Service's
    /// ready endpoints, as k3s's svclb pods do with iptables.
    #[arg(long, env = "KINGRESS_L4_SERVICES")]
    pub l4_services: bool,
    /// The address every L4 port (ServiceLB and tcp/udp-services) listens on.
    #[arg(long, default_value = "0.0.0.0", env = "KINGRESS_L4_BIND")]
    pub l4_bind: IpAddr,
    /// Also serve LoadBalancer Services with this spec.loadBalancerClass.
    #[arg(long, env = "KINGRESS_L4_CLASS")]
    pub l4_class: Option<String>,
    /// How long connections on a port that was removed may still finish (30s, 500ms, 2m
    /// or seconds).
    #[arg(long, default_value = "30s", env = "KINGRESS_L4_DRAIN_TIMEOUT")]
    pub l4_drain_timeout: String,
    /// ingress-nginx's tcp-services ConfigMap, NAMESPACE/NAME: "PORT":
    /// "NAMESPACE/SERVICE:PORT[:PROXY][:PROXY]".
    #[arg(long, env = "KINGRESS_TCP_SERVICES_CONFIGMAP")]
    pub tcp_services_configmap: Option<String>,
    /// ingress-nginx's udp-services ConfigMap, NAMESPACE/NAME: "PORT": "NAMESPACE/SERVICE:PORT".
    #[arg(long, env = "KINGRESS_UDP_SERVICES_CONFIGMAP")]
    pub udp_services_configmap: Option<String>,
    /// Pass TLS connections through unterminated to the backend of Ingresses annotated
    /// nginx.ingress.kubernetes.io/ssl-passthrough: "true", chosen by SNI.
    #[arg(long, env = "KINGRESS_ENABLE_SSL_PASSTHROUGH")]
    pub enable_ssl_passthrough: bool,
}

/// `--worker-threads`, with 0 meaning one per CPU.
pub fn worker_threads(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Name reported in every answer (tells backends apart).
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Added latency before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// Parses an nginx size: `1m`, `512k`, `2g`, `1048576`. `0` means no limit.
pub fn parse_size(raw: &str) -> Result<Option<u64>, String> {
    let raw = raw.trim().to_ascii_lowercase();
    let (digits, unit) = match raw.char_indices().last() {
        Some((i, 'k')) => (raw.get(..i), 1024u64),
        Some((i, 'm')) => (raw.get(..i), 1024 * 1024),
        Some((i, 'g')) => (raw.get(..i), 1024 * 1024 * 1024),
        _ => (Some(raw.as_str()), 1),
    };
    let n: u64 = digits
        .unwrap_or("")
        .parse()
        .map_err(|_| format!("{raw:?} is not a size (examples: 1m, 512k, 1048576)"))?;
    let bytes = n.checked_mul(unit).ok_or_else(|| format!("{raw:?} is too large"))?;
    Ok(if bytes == 0 { None } else { Some(bytes) })
}

/// A duration: `30s`, `500ms`, `2m`, `1h`, or a number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let bad = || format!("{raw:?} is not a duration (examples: 30s, 500ms, 2m, 10)");
    let (number, scale) = if let Some(n) = raw.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = raw.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = raw.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = raw.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (raw, 1.0)
    };
    let n: f64 = number.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} {v} is not a duration in seconds"))
}

impl ProxyArgs {
    pub fn settings(&self) -> Result<ProxySettings, String> {
        if self.proxy_next_upstream_tries == 0 {
            return Err("--proxy-next-upstream-tries must be at least 1".into());
        }
        let ejection = seconds("upstream-fail-timeout", self.upstream_fail_timeout)?;
        let ejection = u64::try_from(ejection.as_nanos()).unwrap_or(u64::MAX);
        Ok(ProxySettings {
            connect_timeout: seconds("proxy-connect-timeout", self.proxy_connect_timeout)?,
            read_timeout: seconds("proxy-read-timeout", self.proxy_read_timeout)?,
            send_timeout: seconds("proxy-send-timeout", self.proxy_send_timeout)?,
            max_body_bytes: parse_size(&self.proxy_body_size)?,
            health: HealthPolicy {
                max_fails: self.upstream_max_fails,
                ejection,
                max_ejection: ejection.saturating_mul(30),
            },
            tls_handshake_timeout: seconds("ssl-handshake-timeout", self.ssl_handshake_timeout)?,
            max_tls_handshakes: self.max_tls_handshakes.max(1),
            ..ProxySettings::default()
        })
    }
}

/// A `NAMESPACE/NAME` flag's value, if given; the error names the flag.
fn namespaced_name(flag: &str, value: &Option<String>) -> Result<Option<(String, String)>, String> {
    value
        .as_deref()
        .map(parse_config_map_ref)
        .transpose()
        .map_err(|e| format!("--{flag}: {e}"))
}

impl L4Args {
    pub fn drain_timeout(&self) -> Result<Duration, String> {
        parse_duration(&self.l4_drain_timeout).map_err(|e| format!("--l4-drain-timeout: {e}"))
    }
}

impl ClassArgs {
    pub fn class_options(&self) -> ClassOptions {
        ClassOptions {
            ingress_class: self.ingress_class.clone(),
            controller_class: self.controller_class.clone(),
            watch_ingress_without_class: self.watch_ingress_without_class,
        }
    }
}

impl RunArgs {
    /// Kubernetes mode's settings, from the flags and the pod's environment (POD_NAMESPACE,
    /// POD_NAME, as ingress-nginx reads them).
    pub fn kube_mode(&self) -> Result<KubeMode, String> {
        let publish_service = namespaced_name("publish-service", &self.publish_service)?;
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("kingress-{}", std::process::id()));
        Ok(KubeMode {
            kubeconfig: self.kubeconfig.clone(),
            watch_namespace: self.watch_namespace.clone().filter(|n| !n.is_empty()),
            publish_service,
            publish_status_address: self.publish_status_address.clone(),
            update_status_on_shutdown: self.update_status_on_shutdown,
            election_id: self.election_id.clone(),
            namespace,
            identity,
            election: None,
        })
    }

    /// `--default-ssl-certificate`, checked.
    pub fn default_ssl_certificate(&self) -> Result<Option<(String, String)>, String> {
        namespaced_name("default-ssl-certificate", &self.default_ssl_certificate)
    }

    pub fn compile_options(&self) -> Result<CompileOptions, String> {
        let config_map = namespaced_name("configmap", &self.configmap)?;
        let own_service = namespaced_name("publish-service", &self.publish_service)?;
        Ok(CompileOptions {
            class: self.class.class_options(),
            config_map,
            defaults: PolicyDefaults {
                tries: u32::try_from(self.proxy.proxy_next_upstream_tries).unwrap_or(u32::MAX),
                use_proxy_protocol: self.proxy.use_proxy_protocol,
            },
            l4: L4Options {
                service_lb: self.l4.l4_services,
                class: self.l4.l4_class.clone().filter(|c| !c.is_empty()),
                tcp_services: namespaced_name("tcp-services-configmap", &self.l4.tcp_services_configmap)?,
                udp_services: namespaced_name("udp-services-configmap", &self.l4.udp_services_configmap)?,
                ssl_passthrough: self.l4.enable_ssl_passthrough,
                // The listeners' ports are added by the gateway once they are bound.
                reserved: Vec::new(),
                own_service,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_has_the_contract_defaults() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["kingress", "run", "--manifests", "/tmp/x"]).unwrap();
        let Command::Run(run) = cli.command else { panic!() };
        assert_eq!(run.listen.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(run.listen.https_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(run.listen.admin_listen.to_string(), "127.0.0.1:10254");
        let s = run.proxy.settings().unwrap();
        assert_eq!(s, ProxySettings::default());
        let c = run.compile_options().unwrap();
        assert_eq!(c.class, ClassOptions::default());
        assert_eq!(c.defaults, PolicyDefaults::default());
        assert_eq!(c.config_map, None);
        let cli = Cli::try_parse_from(["kingress", "run", "--configmap", "ingress/kingress"]).unwrap();
        let Command::Run(run) = cli.command else { panic!() };
        assert_eq!(
            run.compile_options().unwrap().config_map,
            Some(("ingress".to_string(), "kingress".to_string()))
        );
        let cli = Cli::try_parse_from(["kingress", "run", "--configmap", "nonamespace"]).unwrap();
        let Command::Run(run) = cli.command else { panic!() };
        assert!(run.compile_options().is_err());
    }

    #[test]
    fn sizes_parse_like_nginx() {
        assert_eq!(parse_size("1m"), Ok(Some(1024 * 1024)));
        assert_eq!(parse_size("512K"), Ok(Some(512 * 1024)));
        assert_eq!(parse_size("100"), Ok(Some(100)));
        assert_eq!(parse_size("0"), Ok(None));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("99999999999999g").is_err());
    }

    #[test]
    fn l4_flags() {
        let cli = Cli::try_parse_from(["kingress", "run"]).unwrap();
        let Command::Run(run) = cli.command else { panic!() };
        let c = run.compile_options().unwrap();
        assert!(!c.l4.service_lb && !c.l4.ssl_passthrough);
        assert_eq!(run.l4.l4_bind.to_string(), "0.0.0.0");
        assert_eq!(run.l4.drain_timeout(), Ok(Duration::from_secs(30)));
        let cli = Cli::try_parse_from([
            "kingress",
            "run",
            "--l4-services",
            "--l4-bind",
            "127.0.0.1",
            "--l4-class",
            "example.com/lb",
            "--l4-drain-timeout",
            "500ms",
            "--tcp-services-configmap",
            "ingress/tcp-services",
            "--udp-services-configmap",
            "ingress/udp-services",
            "--enable-ssl-passthrough",
            "--use-proxy-protocol",
            "--publish-service",
            "ingress/kingress",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else { panic!() };
        let c = run.compile_options().unwrap();
        assert!(c.l4.service_lb && c.l4.ssl_passthrough);
        assert_eq!(c.l4.class.as_deref(), Some("example.com/lb"));
        assert_eq!(c.l4.tcp_services, Some(("ingress".into(), "tcp-services".into())));
        assert_eq!(c.l4.udp_services, Some(("ingress".into(), "udp-services".into())));
        assert_eq!(c.l4.own_service, Some(("ingress".into(), "kingress".into())));
        assert_eq!(run.l4.l4_bind.to_string(), "127.0.0.1");
        assert_eq!(run.l4.drain_timeout(), Ok(Duration::from_millis(500)));
        assert!(c.defaults.use_proxy_protocol);
        for (raw, want) in [("30", 30_000), ("2m", 120_000), ("1.5s", 1_500), ("0", 0)] {
            assert_eq!(parse_duration(raw), Ok(Duration::from_millis(want)), "{raw}");
        }
        for bad in ["", "s", "-1s", "soon", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from(["kingress", "run", "--tcp-services-configmap", "nope"]).unwrap();
        let Command::Run(run) = cli.command else { panic!() };
        assert!(run.compile_options().is_err());
    }
}
