//! All three stand-ins together, seeded, with a config that points contact-sync at them:
//! what the `contact-sync-sim` binary serves and what the demo runs against.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::dolphins::{DolphinsAuth, DolphinsOptions, DolphinsSim};
use crate::engagelab::{EngagelabOptions, EngagelabSim};
use crate::omi::{OmiOptions, OmiSim};

/// Credentials the stand-ins accept (they are fakes: printing them is fine).
pub const SOURCE_USERNAME: &str = "demo";
pub const SOURCE_PASSWORD: &str = "demo-password";

#[derive(Debug, Clone)]
pub struct SimStackOptions {
    pub contacts: usize,
    pub malformed: usize,
    /// Most records one 3Dolphins page returns, whatever `count` asks for.
    pub page_cap: usize,
    pub ip: IpAddr,
    /// Ports for 3Dolphins, OMI and EngageLab; 0 picks free ones.
    pub ports: [u16; 3],
    /// A bearer token the source accepts besides logins (clients that cannot log in).
    pub source_token: Option<String>,
    /// Server-side limits of OMI and EngageLab in requests/second (429 past them).
    pub omi_rate_limit: Option<f64>,
    pub engagelab_rate_limit: Option<f64>,
    /// Keep the destinations' request logs (off for big runs: they grow per request).
    pub record_requests: bool,
}

impl Default for SimStackOptions {
    fn default() -> Self {
        Self {
            contacts: 5_000,
            malformed: 7,
            page_cap: DolphinsOptions::default().page_cap,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: [0; 3],
            source_token: None,
            omi_rate_limit: None,
            engagelab_rate_limit: None,
            record_requests: true,
        }
    }
}

pub struct SimStack {
    pub dolphins: DolphinsSim,
    pub omi: OmiSim,
    pub engagelab: EngagelabSim,
    omi_api_key: String,
    engagelab_key: (String, String),
}

impl SimStack {
    pub async fn start(opts: SimStackOptions) -> io::Result<Self> {
        let at = |port| SocketAddr::new(opts.ip, port);
        let dolphins = DolphinsSim::start(DolphinsOptions {
            contacts: opts.contacts,
            malformed: opts.malformed,
            page_cap: opts.page_cap,
            auth: match opts.source_token {
                Some(token) => DolphinsAuth::Both {
                    token,
                    username: SOURCE_USERNAME.into(),
                    password: SOURCE_PASSWORD.into(),
                },
                None => DolphinsAuth::Login {
                    username: SOURCE_USERNAME.into(),
                    password: SOURCE_PASSWORD.into(),
                },
            },
            bind: at(opts.ports[0]),
            ..DolphinsOptions::default()
        })
        .await?;
        let omi_opts = OmiOptions {
            bind: at(opts.ports[1]),
            rate_limit: opts.omi_rate_limit,
            record_requests: opts.record_requests,
            ..OmiOptions::default()
        };
        let omi_api_key = omi_opts.api_key.clone();
        let omi = OmiSim::start(omi_opts).await?;
        let el_opts = EngagelabOptions {
            bind: at(opts.ports[2]),
            rate_limit: opts.engagelab_rate_limit,
            record_requests: opts.record_requests,
            ..EngagelabOptions::default()
        };
        let engagelab_key = (el_opts.api_key.clone(), el_opts.api_secret.clone());
        let engagelab = EngagelabSim::start(el_opts).await?;
        Ok(Self {
            dolphins,
            omi,
            engagelab,
            omi_api_key,
            engagelab_key,
        })
    }

    /// A complete contact-sync config for these stand-ins, with the database at `database`.
    pub fn config_toml(&self, database: &Path) -> String {
        format!(
            r#"[database]
url = "sqlite://{db}"

[source]
base_url = "{source}"
username = "{SOURCE_USERNAME}"
password = "{SOURCE_PASSWORD}"
page_size = 100
poll_interval = "30s"
requests_per_second = 200.0

[omi]
base_url = "{omi}"
api_key = "{omi_key}"
batch_size = 50
requests_per_second = 200.0
tags = ["3dolphins"]

[engagelab]
base_url = "{engagelab}"
api_key = "{el_key}"
api_secret = "{el_secret}"
requests_per_second = 500.0

[retry]
initial_backoff = "200ms"
max_backoff = "5s"

[admin]
listen = "127.0.0.1:9464"

[log]
format = "pretty"
"#,
            db = database.display(),
            source = self.dolphins.base_url(),
            omi = self.omi.base_url(),
            omi_key = self.omi_api_key,
            engagelab = self.engagelab.base_url(),
            el_key = self.engagelab_key.0,
            el_secret = self.engagelab_key.1,
        )
    }

    pub async fn shutdown(self) {
        self.dolphins.shutdown().await;
        self.omi.shutdown().await;
        self.engagelab.shutdown().await;
    }
}
