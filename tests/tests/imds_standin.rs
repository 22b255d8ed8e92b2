//! The IMDSv2 stand-in (tests/imds/imds_standin.py) for one moto instance against the
//! controller's instance-identity verifier: what the stand-in signs verifies with the
//! instance's own id and address, a document changed after signing or signed by another
//! certificate is refused, and the stand-in asks for IMDSv2 session tokens as EC2 does.
//! The metadata service cannot run here; moto and the verifier are the real ones.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

use std::time::Duration;

use controller::enrol::identity::{self, IdentityError};
use e2e::support::aws_seed as seed;
use e2e::support::imds::{AwsSigner, Imds};
use e2e::support::moto::Moto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(120);
/// Deadline of one request to the stand-in.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN_TTL: (&str, &str) = ("X-aws-ec2-metadata-token-ttl-seconds", "300");

/// One HTTP/1.1 exchange with the stand-in: (status, body).
async fn http(imds: &Imds, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", imds.port))
            .await
            .unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: 0\r\n", imds.port);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    };
    let text = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("the IMDS stand-in did not answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// A session token, as an IMDSv2 client gets one.
async fn token(imds: &Imds) -> String {
    let (status, body) = http(imds, "PUT", "/latest/api/token", &[TOKEN_TTL]).await;
    assert_eq!(
        status,
        200,
        "PUT /latest/api/token: {body}\n{}",
        imds.log_text()
    );
    body
}

/// GET with a token; panics unless 200.
async fn get(imds: &Imds, token: &str, path: &str) -> String {
    let (status, body) = http(imds, "GET", path, &[("X-aws-ec2-metadata-token", token)]).await;
    assert_eq!(status, 200, "GET {path}: {body}\n{}", imds.log_text());
    body
}

/// The document and its rsa2048 signature, as the agent fetches them.
async fn identity_pair(imds: &Imds) -> (String, String) {
    let t = token(imds).await;
    let document = get(imds, &t, "/latest/dynamic/instance-identity/document").await;
    let signature = get(imds, &t, "/latest/dynamic/instance-identity/rsa2048").await;
    (document, signature)
}

/// One running instance in `moto`: its id and private address.
async fn instance(moto: &Moto) -> (String, String) {
    let aws = moto.clients().await;
    let id = seed::instance(&aws, &[("Name", "web-1")], true).await;
    let out = aws
        .ec2
        .describe_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    let ip = out.reservations()[0].instances()[0]
        .private_ip_address()
        .unwrap()
        .to_string();
    (id, ip)
}

#[tokio::test]
async fn the_document_the_standin_signs_verifies_with_the_instances_own_id_and_address() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let (id, ip) = instance(&moto).await;
        let aws = AwsSigner::generate();
        let imds = Imds::start(&moto, &id, &aws);

        let (document, signature) = identity_pair(&imds).await;
        let verified = identity::verify(&document, &signature, &aws.cert_pem).unwrap();
        assert_eq!(verified.instance_id, id);
        assert_eq!(verified.private_ip.to_string(), ip);
        assert_eq!(verified.region, "us-east-1");
        assert_eq!(verified.instance_type, "t3.micro");
        assert_eq!(verified.image_id, "ami-12345678");

        let t = token(&imds).await;
        assert_eq!(get(&imds, &t, "/latest/meta-data/instance-id").await, id);
        assert_eq!(get(&imds, &t, "/latest/meta-data/local-ipv4").await, ip);
        assert!(get(&imds, &t, "/latest/meta-data/local-hostname")
            .await
            .starts_with("ip-"));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_document_changed_after_signing_is_refused_as_not_the_signed_one() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let (id, ip) = instance(&moto).await;
        let aws = AwsSigner::generate();
        let imds = Imds::start_with(&moto, &id, &aws, &["--tamper-document"]);

        let (document, signature) = identity_pair(&imds).await;
        assert!(
            !document.contains(&format!("\"{ip}\"")),
            "the served document should carry another privateIp"
        );
        let err = identity::verify(&document, &signature, &aws.cert_pem).unwrap_err();
        assert!(matches!(err, IdentityError::ContentMismatch), "{err}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_document_signed_by_a_certificate_that_is_not_the_configured_one_is_refused() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let (id, _) = instance(&moto).await;
        let (impostor, configured) = (AwsSigner::generate(), AwsSigner::generate());
        let imds = Imds::start(&moto, &id, &impostor);

        let (document, signature) = identity_pair(&imds).await;
        let err = identity::verify(&document, &signature, &configured.cert_pem).unwrap_err();
        assert!(matches!(err, IdentityError::BadSignature), "{err}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_signed_claim_of_another_instance_id_verifies_as_that_claim_so_callers_must_compare() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let (id, _) = instance(&moto).await;
        let aws = AwsSigner::generate();
        let imds = Imds::start_with(
            &moto,
            &id,
            &aws,
            &["--document-instance-id", "i-0000000000000dead"],
        );

        let (document, signature) = identity_pair(&imds).await;
        let verified = identity::verify(&document, &signature, &aws.cert_pem).unwrap();
        assert_eq!(verified.instance_id, "i-0000000000000dead");
        let t = token(&imds).await;
        assert_eq!(
            get(&imds, &t, "/latest/meta-data/instance-id").await,
            id,
            "the metadata still names the real instance"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn the_standin_answers_only_with_an_imdsv2_session_token() {
    tokio::time::timeout(LIMIT, async {
        let moto = Moto::start();
        let (id, _) = instance(&moto).await;
        let aws = AwsSigner::generate();
        let imds = Imds::start(&moto, &id, &aws);
        let doc = "/latest/dynamic/instance-identity/document";

        assert_eq!(
            http(&imds, "GET", doc, &[]).await.0,
            401,
            "GET without a token"
        );
        assert_eq!(
            http(
                &imds,
                "GET",
                doc,
                &[("X-aws-ec2-metadata-token", "made-up")]
            )
            .await
            .0,
            401,
            "GET with a token never issued"
        );
        assert_eq!(
            http(&imds, "PUT", "/latest/api/token", &[]).await.0,
            400,
            "PUT without a TTL"
        );
        let ttl = |v: &'static str| [("X-aws-ec2-metadata-token-ttl-seconds", v)];
        assert_eq!(
            http(&imds, "PUT", "/latest/api/token", &ttl("0")).await.0,
            400,
            "TTL 0"
        );
        assert_eq!(
            http(&imds, "PUT", "/latest/api/token", &ttl("21601"))
                .await
                .0,
            400,
            "TTL over 6 hours"
        );

        let t = token(&imds).await;
        assert_eq!(
            http(
                &imds,
                "GET",
                doc,
                &[("X-aws-ec2-metadata-token", t.as_str())]
            )
            .await
            .0,
            200
        );
        assert_eq!(
            http(
                &imds,
                "GET",
                "/latest/meta-data/iam/info",
                &[("X-aws-ec2-metadata-token", t.as_str())]
            )
            .await
            .0,
            404
        );
    })
    .await
    .expect("test timed out");
}
