//! Building an `Enroller` from the controller's config, and `[enrol] auto = true`: any
//! command that dials an EC2 host whose agent presents a certificate the fleet CA did not
//! sign (an agent waiting for enrolment does) enrols it once and dials again.
//!
//! Only EC2 hosts, whose identity document proves who they are: a join token is never
//! spent without an operator asking (`fleet enroll`). A host is tried once per command, so
//! an agent that keeps failing enrolment costs one attempt, not one per call.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::exchange::{Enroller, Outcome};
use super::store::Store;
use crate::aws::AwsClients;
use crate::config::{ControllerConfig, FleetSource};
use crate::fleet::Host;

/// What an enrolment needs could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    NoTls(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Tls(#[from] ops_proto::tls::TlsError),
    #[error(transparent)]
    Aws(#[from] crate::aws::AwsSetupError),
}

/// Loads the fleet CA, the operator's identity and (when EC2 is involved) the AWS clients.
pub async fn enroller(cfg: &ControllerConfig) -> Result<Enroller, SetupError> {
    let tls = cfg.tls()?;
    let pki_dir = cfg.enrol.pki_dir().map_err(SetupError::Config)?.to_path_buf();
    let ca = crate::pki::Ca::load(&pki_dir)?;
    let own = ops_proto::tls::load_certs(&tls.cert, "certificate")?;
    let operator_name = own
        .first()
        .and_then(|c| ops_proto::identity::PeerIdentity::from_der(c.as_ref()).ok())
        .map(|id| id.name)
        .unwrap_or_else(|| "unknown".into());
    let aws = if cfg.fleet.source == FleetSource::Ec2 || !cfg.enrol.aws_certificates.is_empty() {
        Some(AwsClients::load(&cfg.aws).await?)
    } else {
        None
    };
    Ok(Enroller {
        config: cfg.enrol.clone(),
        operator: tls.paths(),
        crl: tls.crl.clone(),
        operator_name,
        timeouts: ops_proto::tls::DialTimeouts { connect: cfg.fleet.connect_timeout, request: Some(cfg.fleet.request_timeout) },
        store: Store::new(&pki_dir),
        ca,
        pki_dir,
        aws,
        tag_filters: cfg.fleet.tag_filters.clone(),
    })
}

/// `[enrol] auto = true` for one command: the config, the enroller once it is needed, and
/// the hosts already tried.
pub struct AutoEnrol {
    cfg: ControllerConfig,
    enroller: tokio::sync::OnceCell<Result<Enroller, String>>,
    tried: Mutex<BTreeSet<String>>,
}

impl AutoEnrol {
    pub fn new(cfg: &ControllerConfig) -> AutoEnrol {
        AutoEnrol { cfg: cfg.clone(), enroller: tokio::sync::OnceCell::new(), tried: Mutex::new(BTreeSet::new()) }
    }

    /// Enrols `host` if it is an EC2 host not tried yet in this command; true when it now
    /// holds a certificate (so that the caller dials again). What happened is said on
    /// stderr, as the command's own output may be JSON.
    pub async fn enrol(&self, host: &Host) -> bool {
        if host.instance_id.is_none() {
            return false;
        }
        let first_time = self.tried.lock().map(|mut t| t.insert(host.name.clone())).unwrap_or(false);
        if !first_time {
            return false;
        }
        let enroller = self.enroller.get_or_init(|| async { enroller(&self.cfg).await.map_err(|e| e.to_string()) }).await;
        let outcome = match enroller {
            Ok(e) => e.enrol(host, false).await,
            Err(why) => Outcome::Failed { reason: format!("cannot enrol: {why}") },
        };
        let (result, detail) = outcome.describe();
        eprintln!("auto-enrolment of {}: {result} {detail}", host.name);
        matches!(outcome, Outcome::Enrolled { .. })
    }
}
