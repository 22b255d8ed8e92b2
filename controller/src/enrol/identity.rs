//! Verifies an EC2 instance-identity document the way SPIRE's `aws_iid` node attestor
//! does: the agent sends the document and the body of IMDS's
//! `/latest/dynamic/instance-identity/rsa2048` (base64 of a CMS/PKCS#7 SignedData, RSA
//! with SHA-256, the document encapsulated, no certificates inside), and the controller
//! checks the signature against the RSA-2048 certificate AWS publishes for the region.
//!
//! This module must never trust a byte of the document before the signature over exactly
//! those bytes has verified, never take a key or certificate from inside the signature
//! (the only key is the configured AWS certificate), and never touch the network or AWS:
//! it is a pure function over the bytes it is given, bounded in size.

use std::net::IpAddr;

use base64::Engine;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerInfo};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode, Tagged};
use serde::Deserialize;

use super::ber;

/// Largest `rsa2048` body accepted, as text. AWS's is under 2 KiB; the cap bounds the
/// work an unauthenticated caller can ask for.
pub const MAX_SIGNATURE_TEXT: usize = 64 * 1024;
/// Largest document accepted. AWS's is under 1 KiB.
pub const MAX_DOCUMENT: usize = 64 * 1024;

/// id-signedData (RFC 5652, 5.1).
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// id-data: the encapsulated content is plain octets (the JSON document).
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// The content-type and message-digest signed attributes (RFC 5652, 11.1 and 11.2).
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// AWS's signature names plain rsaEncryption; OpenSSL and others may name the pair.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// The fields of a verified instance-identity document the fleet uses. AWS adds fields
/// over time, so unknown ones are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    pub private_ip: IpAddr,
    pub image_id: String,
    pub instance_type: String,
    /// When the instance was launched, as AWS writes it (ISO 8601, UTC, `Z`).
    pub pending_time: String,
}

/// Why an instance-identity document was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "the instance-identity signature is not base64 ({0}); send the body of \
         /latest/dynamic/instance-identity/rsa2048 as IMDS served it"
    )]
    NotBase64(String),
    #[error(
        "the instance-identity {what} is {len} bytes, over the {limit}-byte limit; send \
         what IMDS served for it, nothing else"
    )]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error(
        "the instance-identity signature is not a PKCS#7 SignedData with the document \
         inside ({0}); send the body of /latest/dynamic/instance-identity/rsa2048"
    )]
    NotPkcs7(String),
    #[error(
        "the instance-identity signature has {0} signers where AWS's has exactly one; send \
         the body of /latest/dynamic/instance-identity/rsa2048 unchanged"
    )]
    SignerCount(usize),
    #[error(
        "the instance-identity signature uses {what} {oid}, and only SHA-256 with RSA is \
         accepted; send the body of /latest/dynamic/instance-identity/rsa2048 (not /pkcs7 \
         or /signature)"
    )]
    UnsupportedAlgorithm { what: &'static str, oid: String },
    #[error(
        "the instance-identity document differs from the document inside its signature; \
         it was changed after signing, or the document and the signature come from \
         different instances or fetches"
    )]
    ContentMismatch,
    #[error(
        "the messageDigest signed in the instance-identity signature is not the SHA-256 of \
         the document inside it; the signature was altered after signing"
    )]
    DigestMismatch,
    #[error(
        "the instance-identity signature does not verify against the configured AWS \
         certificate; check that the certificate is AWS's RSA-2048 one for the instance's \
         region, and that the document was not signed by anyone else"
    )]
    BadSignature,
    #[error(
        "the configured AWS certificate cannot be used ({0}); configure the PEM RSA-2048 \
         certificate AWS publishes for the region"
    )]
    BadCertificate(String),
    #[error("the signed instance-identity document is not the JSON AWS writes ({0})")]
    BadDocument(String),
}

/// Checks that `rsa2048_b64` is AWS's signature over exactly `document`, made with the
/// key of `aws_cert_pem`, and returns the document's fields.
pub fn verify(
    document: &str,
    rsa2048_b64: &str,
    aws_cert_pem: &str,
) -> Result<InstanceIdentity, IdentityError> {
    if document.len() > MAX_DOCUMENT {
        return Err(IdentityError::TooLarge {
            what: "document",
            len: document.len(),
            limit: MAX_DOCUMENT,
        });
    }
    let public_key = rsa_public_key(aws_cert_pem)?;
    let der = decode_base64(rsa2048_b64)?;
    let signed = signed_data(&der)?;
    let signer = only_signer(&signed)?;
    check_algorithms(signer)?;

    let content = encapsulated_content(&signed)?;
    if content != document.as_bytes() {
        return Err(IdentityError::ContentMismatch);
    }
    let message = match &signer.signed_attrs {
        // RFC 5652, 5.4: with signed attributes the signature covers their DER encoding
        // as a SET OF (tag 0x31), not the [0] IMPLICIT tag they carry in SignerInfo.
        Some(attrs) => {
            check_signed_attributes(attrs, content)?;
            attrs.to_der().map_err(|e| {
                IdentityError::NotPkcs7(format!("cannot re-encode the signed attributes: {e}"))
            })?
        }
        None => content.to_vec(),
    };
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &public_key,
    )
    .verify(&message, signer.signature.as_bytes())
    .map_err(|_| IdentityError::BadSignature)?;

    serde_json::from_str(document).map_err(|e| IdentityError::BadDocument(e.to_string()))
}

/// The PKCS#1 RSAPublicKey of the configured certificate, as ring takes it.
fn rsa_public_key(pem_text: &str) -> Result<Vec<u8>, IdentityError> {
    let bad = IdentityError::BadCertificate;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(format!(
            "the PEM block is a {}, not a CERTIFICATE",
            pem.label
        )));
    }
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
        return Err(bad(format!(
            "its key is {}, not RSA",
            spki.algorithm.algorithm
        )));
    }
    Ok(spki.subject_public_key.data.to_vec())
}

fn decode_base64(text: &str) -> Result<Vec<u8>, IdentityError> {
    if text.len() > MAX_SIGNATURE_TEXT {
        return Err(IdentityError::TooLarge {
            what: "signature",
            len: text.len(),
            limit: MAX_SIGNATURE_TEXT,
        });
    }
    // IMDS serves the signature in lines; any ASCII whitespace is layout, not data.
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| IdentityError::NotBase64(e.to_string()))
}

fn signed_data(ber_bytes: &[u8]) -> Result<SignedData, IdentityError> {
    let not_pkcs7 = IdentityError::NotPkcs7;
    // AWS writes its signature in BER with indefinite lengths; the parser reads DER.
    let der = ber::to_der(ber_bytes).map_err(not_pkcs7)?;
    let info = ContentInfo::from_der(&der).map_err(|e| not_pkcs7(format!("ContentInfo: {e}")))?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(not_pkcs7(format!(
            "its content type is {}, not id-signedData",
            info.content_type
        )));
    }
    info.content
        .decode_as::<SignedData>()
        .map_err(|e| not_pkcs7(format!("SignedData: {e}")))
}

fn only_signer(signed: &SignedData) -> Result<&SignerInfo, IdentityError> {
    let signers = signed.signer_infos.0.as_slice();
    match signers {
        [one] => Ok(one),
        _ => Err(IdentityError::SignerCount(signers.len())),
    }
}

fn check_algorithms(signer: &SignerInfo) -> Result<(), IdentityError> {
    if signer.digest_alg.oid != ID_SHA256 {
        return Err(IdentityError::UnsupportedAlgorithm {
            what: "digest algorithm",
            oid: signer.digest_alg.oid.to_string(),
        });
    }
    let sig = signer.signature_algorithm.oid;
    if sig != RSA_ENCRYPTION && sig != SHA256_WITH_RSA {
        return Err(IdentityError::UnsupportedAlgorithm {
            what: "signature algorithm",
            oid: sig.to_string(),
        });
    }
    Ok(())
}

/// The octets of the encapsulated id-data content (the signed document).
fn encapsulated_content(signed: &SignedData) -> Result<&[u8], IdentityError> {
    let encap = &signed.encap_content_info;
    if encap.econtent_type != ID_DATA {
        return Err(IdentityError::NotPkcs7(format!(
            "its content is {}, not id-data",
            encap.econtent_type
        )));
    }
    let content = encap.econtent.as_ref().ok_or_else(|| {
        IdentityError::NotPkcs7("it is detached: the document is not inside it".to_string())
    })?;
    if content.tag() != der::Tag::OctetString {
        return Err(IdentityError::NotPkcs7(format!(
            "its content is a {}, not an OCTET STRING",
            content.tag()
        )));
    }
    Ok(content.value())
}

/// The content-type attribute must name id-data and the message digest must be the
/// SHA-256 of the content (RFC 5652, 5.3 and 11).
fn check_signed_attributes(
    attrs: &cms::signed_data::SignedAttributes,
    content: &[u8],
) -> Result<(), IdentityError> {
    let single = |oid: ObjectIdentifier, name: &str| -> Result<&der::Any, IdentityError> {
        let mut found = attrs.iter().filter(|a| a.oid == oid);
        match (found.next(), found.next()) {
            (Some(attr), None) if attr.values.len() == 1 => {
                attr.values.iter().next().ok_or_else(|| {
                    IdentityError::NotPkcs7(format!("the {name} signed attribute is empty"))
                })
            }
            (None, _) => Err(IdentityError::NotPkcs7(format!(
                "the signed attributes carry no {name}"
            ))),
            _ => Err(IdentityError::NotPkcs7(format!(
                "the signed attributes carry more than one {name}"
            ))),
        }
    };
    let content_type = single(ID_CONTENT_TYPE, "contentType")?
        .decode_as::<ObjectIdentifier>()
        .map_err(|e| IdentityError::NotPkcs7(format!("contentType attribute: {e}")))?;
    if content_type != ID_DATA {
        return Err(IdentityError::NotPkcs7(format!(
            "the signed contentType is {content_type}, not id-data"
        )));
    }
    let digest = single(ID_MESSAGE_DIGEST, "messageDigest")?
        .decode_as::<OctetString>()
        .map_err(|e| IdentityError::NotPkcs7(format!("messageDigest attribute: {e}")))?;
    if digest.as_bytes() != ring::digest::digest(&ring::digest::SHA256, content).as_ref() {
        return Err(IdentityError::DigestMismatch);
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed step should stop the test

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    const DOCUMENT: &str =
        "{\n  \"accountId\" : \"123456789012\",\n  \"architecture\" : \"x86_64\",\n  \
        \"availabilityZone\" : \"us-east-1a\",\n  \"billingProducts\" : null,\n  \
        \"devpayProductCodes\" : null,\n  \"marketplaceProductCodes\" : null,\n  \
        \"imageId\" : \"ami-12345678\",\n  \"instanceId\" : \"i-0123456789abcdef0\",\n  \
        \"instanceType\" : \"t3.micro\",\n  \"kernelId\" : null,\n  \
        \"pendingTime\" : \"2026-01-02T03:04:05Z\",\n  \"privateIp\" : \"10.0.1.23\",\n  \
        \"ramdiskId\" : null,\n  \"region\" : \"us-east-1\",\n  \"version\" : \"2017-09-30\"\n}";

    /// A signer standing for AWS's regional key, in a folder of its own.
    struct Signer {
        dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        cert_pem: String,
    }

    fn openssl(args: &[&str], cwd: &Path) -> Vec<u8> {
        let out = match Command::new("openssl").args(args).current_dir(cwd).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("openssl is missing: install openssl (scripts/setup does)")
            }
            Err(e) => panic!("cannot run openssl: {e}"),
        };
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn signer() -> Signer {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<&str> =
            "req -x509 -newkey rsa:2048 -nodes -days 30 -keyout key.pem -out cert.pem -subj"
                .split(' ')
                .collect();
        args.push("/C=US/ST=Washington State/L=Seattle/O=Amazon Web Services LLC");
        openssl(&args, dir.path());
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let cert_pem = std::fs::read_to_string(&cert).unwrap();
        Signer {
            dir,
            cert,
            key,
            cert_pem,
        }
    }

    /// DER (or BER with `-stream`) SignedData over `document` by `signer`, as `openssl cms`
    /// makes it: SHA-256, no certificates, the document inside.
    fn sign(signer: &Signer, document: &[u8], extra: &[&str]) -> Vec<u8> {
        let doc = signer.dir.path().join("doc.json");
        std::fs::write(&doc, document).unwrap();
        let mut args: Vec<&str> = "cms -sign -binary -nocerts -md sha256 -outform DER -nodetach"
            .split(' ')
            .collect();
        let (cert, key) = (signer.cert.to_str().unwrap(), signer.key.to_str().unwrap());
        args.extend_from_slice(&["-signer", cert, "-inkey", key, "-in", doc.to_str().unwrap()]);
        args.extend_from_slice(extra);
        openssl(&args, signer.dir.path())
    }

    /// base64 in 64-column lines, as IMDS serves it.
    fn b64(der: &[u8]) -> String {
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        text.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_document_signed_with_signed_attributes_verifies_and_its_fields_are_parsed() {
        let s = signer();
        let der = sign(&s, DOCUMENT.as_bytes(), &[]);
        let id = verify(DOCUMENT, &b64(&der), &s.cert_pem).unwrap();
        assert_eq!(id.instance_id, "i-0123456789abcdef0");
        assert_eq!(id.account_id, "123456789012");
        assert_eq!(id.region, "us-east-1");
        assert_eq!(id.availability_zone, "us-east-1a");
        assert_eq!(id.private_ip, "10.0.1.23".parse::<IpAddr>().unwrap());
        assert_eq!(id.image_id, "ami-12345678");
        assert_eq!(id.instance_type, "t3.micro");
        assert_eq!(id.pending_time, "2026-01-02T03:04:05Z");
        assert_eq!(
            ber::to_der(&der).unwrap(),
            der,
            "DER passes the BER normaliser unchanged"
        );
    }

    #[test]
    fn a_document_signed_without_signed_attributes_verifies() {
        let s = signer();
        let der = sign(&s, DOCUMENT.as_bytes(), &["-noattr"]);
        let id = verify(DOCUMENT, &b64(&der), &s.cert_pem).unwrap();
        assert_eq!(id.instance_id, "i-0123456789abcdef0");
    }

    #[test]
    fn a_streamed_ber_signature_with_indefinite_lengths_verifies() {
        let s = signer();
        let ber = sign(&s, DOCUMENT.as_bytes(), &["-stream"]);
        assert_eq!(
            &ber[..2],
            &[0x30, 0x80],
            "openssl -stream should write an indefinite length"
        );
        let id = verify(DOCUMENT, &b64(&ber), &s.cert_pem).unwrap();
        assert_eq!(id.private_ip.to_string(), "10.0.1.23");
    }

    #[test]
    fn a_real_aws_signature_verifies_against_the_certificate_aws_publishes_for_us_east_1() {
        let id = verify(AWS_DOCUMENT, AWS_RSA2048, AWS_US_EAST_1_RSA2048_CERT).unwrap();
        assert_eq!(id.instance_id, "i-055950b9cfbce0ce3");
        assert_eq!(id.private_ip.to_string(), "100.66.39.154");
        let changed = AWS_DOCUMENT.replace("m4.large", "m4.xlarg");
        assert!(matches!(
            verify(&changed, AWS_RSA2048, AWS_US_EAST_1_RSA2048_CERT),
            Err(IdentityError::ContentMismatch)
        ));
    }

    #[test]
    fn a_document_changed_by_one_byte_is_refused_as_not_the_signed_document() {
        let s = signer();
        let der = sign(&s, DOCUMENT.as_bytes(), &[]);
        let changed = DOCUMENT.replace("10.0.1.23", "10.0.1.24");
        let err = verify(&changed, &b64(&der), &s.cert_pem).unwrap_err();
        assert!(matches!(err, IdentityError::ContentMismatch), "{err}");
        assert!(err.to_string().contains("document differs"), "{err}");
    }

    #[test]
    fn a_signature_by_another_key_is_refused_naming_the_configured_certificate() {
        let (aws, other) = (signer(), signer());
        let der = sign(&other, DOCUMENT.as_bytes(), &[]);
        let err = verify(DOCUMENT, &b64(&der), &aws.cert_pem).unwrap_err();
        assert!(matches!(err, IdentityError::BadSignature), "{err}");
        assert!(
            err.to_string().contains("configured AWS certificate"),
            "{err}"
        );
        let der = sign(&other, DOCUMENT.as_bytes(), &["-noattr"]);
        assert!(matches!(
            verify(DOCUMENT, &b64(&der), &aws.cert_pem),
            Err(IdentityError::BadSignature)
        ));
    }

    #[test]
    fn content_altered_inside_a_signature_with_attributes_is_refused_as_digest_mismatch() {
        let s = signer();
        let mut der = sign(&s, DOCUMENT.as_bytes(), &[]);
        let at = der
            .windows(DOCUMENT.len())
            .position(|w| w == DOCUMENT.as_bytes())
            .unwrap();
        let changed = DOCUMENT.replace("10.0.1.23", "10.0.1.24");
        der[at..at + changed.len()].copy_from_slice(changed.as_bytes());
        assert!(matches!(
            verify(&changed, &b64(&der), &s.cert_pem),
            Err(IdentityError::DigestMismatch)
        ));
    }

    #[test]
    fn a_sha1_signature_is_refused_as_an_unsupported_algorithm() {
        let s = signer();
        let der = sign(&s, DOCUMENT.as_bytes(), &["-md", "sha1"]);
        let err = verify(DOCUMENT, &b64(&der), &s.cert_pem).unwrap_err();
        assert!(
            matches!(&err, IdentityError::UnsupportedAlgorithm { oid, .. } if oid == "1.3.14.3.2.26"),
            "{err}"
        );
    }

    #[test]
    fn a_signature_with_two_signers_is_refused() {
        let (a, b) = (signer(), signer());
        let (cert, key) = (b.cert.to_str().unwrap(), b.key.to_str().unwrap());
        let der = sign(&a, DOCUMENT.as_bytes(), &["-signer", cert, "-inkey", key]);
        assert!(matches!(
            verify(DOCUMENT, &b64(&der), &a.cert_pem),
            Err(IdentityError::SignerCount(2))
        ));
    }

    #[test]
    fn garbage_base64_is_refused() {
        let s = signer();
        assert!(matches!(
            verify(DOCUMENT, "not*base64!", &s.cert_pem),
            Err(IdentityError::NotBase64(_))
        ));
    }

    #[test]
    fn base64_of_bytes_that_are_not_pkcs7_is_refused() {
        let s = signer();
        for bytes in [
            &b"{\"just\": \"json\"}"[..],
            &[0x30, 0x03, 0x02, 0x01, 0x01],
            &[],
            &[0x30, 0x80, 0x30, 0x80],
        ] {
            let err = verify(DOCUMENT, &b64(bytes), &s.cert_pem).unwrap_err();
            assert!(
                matches!(err, IdentityError::NotPkcs7(_)),
                "{bytes:?}: {err}"
            );
        }
        // A certificate is valid DER but not a SignedData.
        let cert_der = openssl(
            &["x509", "-in", "cert.pem", "-outform", "DER"],
            s.dir.path(),
        );
        assert!(matches!(
            verify(DOCUMENT, &b64(&cert_der), &s.cert_pem),
            Err(IdentityError::NotPkcs7(_))
        ));
    }

    #[test]
    fn an_oversized_signature_or_document_is_refused_before_any_decoding() {
        let s = signer();
        let huge = "A".repeat(MAX_SIGNATURE_TEXT + 4);
        assert!(matches!(
            verify(DOCUMENT, &huge, &s.cert_pem),
            Err(IdentityError::TooLarge {
                what: "signature",
                ..
            })
        ));
        let huge_doc = " ".repeat(MAX_DOCUMENT + 1);
        assert!(matches!(
            verify(&huge_doc, "", &s.cert_pem),
            Err(IdentityError::TooLarge {
                what: "document",
                ..
            })
        ));
    }

    #[test]
    fn a_certificate_that_is_not_a_pem_certificate_is_refused() {
        let s = signer();
        let der = sign(&s, DOCUMENT.as_bytes(), &[]);
        let key_pem = std::fs::read_to_string(&s.key).unwrap();
        for cert in ["", "not pem", key_pem.as_str()] {
            assert!(matches!(
                verify(DOCUMENT, &b64(&der), cert),
                Err(IdentityError::BadCertificate(_))
            ));
        }
    }

    #[test]
    fn a_signed_document_that_is_not_aws_json_is_refused_as_bad_document() {
        let s = signer();
        let doc = "{\"instanceId\": \"i-1\"}";
        let der = sign(&s, doc.as_bytes(), &[]);
        assert!(matches!(
            verify(doc, &b64(&der), &s.cert_pem),
            Err(IdentityError::BadDocument(_))
        ));
    }

    #[test]
    fn hostile_ber_is_refused_without_panicking() {
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 100).flatten().collect();
        assert!(ber::to_der(&deep).unwrap_err().contains("deeper"));
        for (bytes, what) in [
            (&[0x04, 0x80, 0x00, 0x00][..], "indefinite primitive"),
            (&[0x30, 0x85, 1, 0, 0, 0, 0], "five-byte length"),
            (&[0x30, 0x05, 0x04, 0x01], "truncated"),
            (
                &[0x24, 0x80, 0x02, 0x01, 0x01, 0x00, 0x00],
                "non-octet segment",
            ),
            (
                &[0x30, 0x02, 0x00, 0x00],
                "end-of-contents in a definite length",
            ),
        ] {
            assert!(ber::to_der(bytes).is_err(), "{what}");
        }
        let segmented = [0x24, 0x80, 0x04, 0x01, b'a', 0x04, 0x01, b'b', 0x00, 0x00];
        assert_eq!(ber::to_der(&segmented).unwrap(), [0x04, 0x02, b'a', b'b']);
    }

    // A real identity document and rsa2048 signature from an EC2 instance in us-east-1
    // (2017; BER with indefinite lengths, as AWS writes it), and the RSA-2048 certificate
    // AWS publishes for us-east-1 (DER SHA-256 70923c22dd074172d0e5d27ea1ca8654
    // 12525fccd8bc2cd0ff40660e275f0b30). `openssl cms -verify` accepts the pair too.
    const AWS_DOCUMENT: &str = "{\n  \"availabilityZone\" : \"us-east-1e\",\n  \
        \"devpayProductCodes\" : null,\n  \"marketplaceProductCodes\" : null,\n  \
        \"version\" : \"2017-09-30\",\n  \"instanceId\" : \"i-055950b9cfbce0ce3\",\n  \
        \"billingProducts\" : null,\n  \"instanceType\" : \"m4.large\",\n  \
        \"pendingTime\" : \"2017-12-29T05:34:07Z\",\n  \"privateIp\" : \"100.66.39.154\",\n  \
        \"accountId\" : \"179727101194\",\n  \"architecture\" : \"x86_64\",\n  \
        \"kernelId\" : null,\n  \"ramdiskId\" : null,\n  \"imageId\" : \"ami-ea165990\",\n  \
        \"region\" : \"us-east-1\"\n}";

    const AWS_RSA2048: &str = "\
MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0B
BwGggCSABIIB1HsKICAiYXZhaWxhYmlsaXR5Wm9uZSIgOiAidXMtZWFzdC0xZSIs
CiAgImRldnBheVByb2R1Y3RDb2RlcyIgOiBudWxsLAogICJtYXJrZXRwbGFjZVBy
b2R1Y3RDb2RlcyIgOiBudWxsLAogICJ2ZXJzaW9uIiA6ICIyMDE3LTA5LTMwIiwK
ICAiaW5zdGFuY2VJZCIgOiAiaS0wNTU5NTBiOWNmYmNlMGNlMyIsCiAgImJpbGxp
bmdQcm9kdWN0cyIgOiBudWxsLAogICJpbnN0YW5jZVR5cGUiIDogIm00Lmxhcmdl
IiwKICAicGVuZGluZ1RpbWUiIDogIjIwMTctMTItMjlUMDU6MzQ6MDdaIiwKICAi
cHJpdmF0ZUlwIiA6ICIxMDAuNjYuMzkuMTU0IiwKICAiYWNjb3VudElkIiA6ICIx
Nzk3MjcxMDExOTQiLAogICJhcmNoaXRlY3R1cmUiIDogIng4Nl82NCIsCiAgImtl
cm5lbElkIiA6IG51bGwsCiAgInJhbWRpc2tJZCIgOiBudWxsLAogICJpbWFnZUlk
IiA6ICJhbWktZWExNjU5OTAiLAogICJyZWdpb24iIDogInVzLWVhc3QtMSIKfQAA
AAAAADGCAf8wggH7AgEBMGkwXDELMAkGA1UEBhMCVVMxGTAXBgNVBAgTEFdhc2hp
bmd0b24gU3RhdGUxEDAOBgNVBAcTB1NlYXR0bGUxIDAeBgNVBAoTF0FtYXpvbiBX
ZWIgU2VydmljZXMgTExDAgkAsWnMQBVZpBkwDQYJYIZIAWUDBAIBBQCgaTAYBgkq
hkiG9w0BCQMxCwYJKoZIhvcNAQcBMBwGCSqGSIb3DQEJBTEPFw0xNzEyMjkwNTM0
MTJaMC8GCSqGSIb3DQEJBDEiBCAnRmg+lfohgYY+mmmARsuY+eDhZnxkqSnq3QFO
zB0N2jANBgkqhkiG9w0BAQEFAASCAQB8huDo5kOLVGKjGeT3EfK43by0SqS3FThw
2VIL4dnFf1OV3c53DT2YjIq4nf9IXFCuE51ch7TLsY9TWTGbLr+U1UF9Y6sahEAf
Jpp3Vk4KyMwuiELm0/glExksUMgy51tOOAqOMXwoHPBKtnWx9ZVSmv/KUrU3R3ar
mHBrUrcOdZxF2OMPIanWyTJ3aO1uPX4LZOTS/vnM792ED1YlZ1bKl8iu1U0WXEKq
c4arkmeqvDhvIs2cg4EKr4QE103dAGCSZzRd+IKd6ZiKivcZP4ul1006IJSrAP0V
K4N+PS0bw9xzacMOPPdeP/JiGYlCiiT2tSXwNWB/nKeeSDyPoa4YAAAAAAAA";

    const AWS_US_EAST_1_RSA2048_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIEEjCCAvqgAwIBAgIJALFpzEAVWaQZMA0GCSqGSIb3DQEBCwUAMFwxCzAJBgNV
BAYTAlVTMRkwFwYDVQQIExBXYXNoaW5ndG9uIFN0YXRlMRAwDgYDVQQHEwdTZWF0
dGxlMSAwHgYDVQQKExdBbWF6b24gV2ViIFNlcnZpY2VzIExMQzAgFw0xNTA4MTQw
ODU5MTJaGA8yMTk1MDExNzA4NTkxMlowXDELMAkGA1UEBhMCVVMxGTAXBgNVBAgT
EFdhc2hpbmd0b24gU3RhdGUxEDAOBgNVBAcTB1NlYXR0bGUxIDAeBgNVBAoTF0Ft
YXpvbiBXZWIgU2VydmljZXMgTExDMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIB
CgKCAQEAjS2vqZu9mEOhOq+0bRpAbCUiapbZMFNQqRg7kTlr7Cf+gDqXKpHPjsng
SfNz+JHQd8WPI+pmNs+q0Z2aTe23klmf2U52KH9/j1k8RlIbap/yFibFTSedmegX
E5r447GbJRsHUmuIIfZTZ/oRlpuIIO5/Vz7SOj22tdkdY2ADp7caZkNxhSP915fk
2jJMTBUOzyXUS2rBU/ulNHbTTeePjcEkvzVYPahD30TeQ+/A+uWUu89bHSQOJR8h
Um4cFApzZgN3aD5j2LrSMu2pctkQwf9CaWyVznqrsGYjYOY66LuFzSCXwqSnFBfv
fFBAFsjCgY24G2DoMyYkF3MyZlu+rwIDAQABo4HUMIHRMAsGA1UdDwQEAwIHgDAd
BgNVHQ4EFgQUrynSPp4uqSECwy+PiO4qyJ8TWSkwgY4GA1UdIwSBhjCBg4AUrynS
Pp4uqSECwy+PiO4qyJ8TWSmhYKReMFwxCzAJBgNVBAYTAlVTMRkwFwYDVQQIExBX
YXNoaW5ndG9uIFN0YXRlMRAwDgYDVQQHEwdTZWF0dGxlMSAwHgYDVQQKExdBbWF6
b24gV2ViIFNlcnZpY2VzIExMQ4IJALFpzEAVWaQZMBIGA1UdEwEB/wQIMAYBAf8C
AQAwDQYJKoZIhvcNAQELBQADggEBADW/s8lXijwdP6NkEoH1m9XLrvK4YTqkNfR6
er/uRRgTx2QjFcMNrx+g87gAml11z+D0crAZ5LbEhDMs+JtZYR3ty0HkDk6SJM85
haoJNAFF7EQ/zCp1EJRIkLLsC7bcDL/Eriv1swt78/BB4RnC9W9kSp/sxd5svJMg
N9a6FAplpNRsWAnbP8JBlAP93oJzblX2LQXgykTghMkQO7NaY5hg/H5o4dMPclTK
lYGqlFUCH6A2vdrxmpKDLmTn5//5pujdD2MN0df6sZWtxwZ0osljV4rDjm9Q3VpA
NWIsDEcp3GUB4proOR+C7PNkY+VGODitBOw09qBGosCBstwyEqY=
-----END CERTIFICATE-----
";
}
