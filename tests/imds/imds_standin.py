"""A loopback stand-in for the EC2 instance metadata service (IMDSv2), for ONE instance.

It exists because the EC2 metadata service cannot run on the test machines: there is no
169.254.169.254 here. It is one of the two stand-ins the test world allows (beside the
systemctl one, tests/src/support/systemctl.rs); everything else is the real thing
(moto for the AWS APIs, MariaDB, agents as processes).

It looks the instance up in a moto server with boto3, builds the instance-identity
document the way AWS writes it (AWS's field names, pretty-printed JSON) and signs the
document bytes exactly as served with a CMS/PKCS#7 SignedData (RSA, SHA-256, the document
encapsulated, no certificates inside), standing in for the per-region RSA-2048 key whose
certificate AWS publishes. Test code only: it binds loopback (or the address the caller
gives) and never anything that reaches outside the machine.

    imds_standin.py --moto http://127.0.0.1:PORT --instance-id i-... \
        --key signer.key --cert signer.pem [--port 0] [--bind 127.0.0.1] \
        [--region us-east-1] [--port-file FILE] \
        [--tamper-document] [--document-instance-id ID] [--local-hostname NAME]

Prints `listening on HOST:PORT` once it accepts connections; exits on SIGTERM.
"""

import argparse
import base64
import json
import os
import secrets
import signal
import sys
import threading
import time
from datetime import timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

# IMDSv2's limits on a session token's lifetime, in seconds.
TOKEN_TTL_MIN = 1
TOKEN_TTL_MAX = 21600
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
DOCUMENT_VERSION = "2017-09-30"


def parse_args(argv):
    p = argparse.ArgumentParser(description="Loopback IMDSv2 stand-in for one moto instance.")
    p.add_argument("--moto", required=True, help="moto endpoint, http://127.0.0.1:PORT")
    p.add_argument("--instance-id", required=True, help="the moto instance to stand in for")
    p.add_argument("--key", required=True, help="PEM RSA private key that signs the document")
    p.add_argument("--cert", required=True, help="PEM certificate of that key (AWS's regional one)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (loopback)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--port-file", help="write the port here once listening")
    p.add_argument(
        "--tamper-document",
        action="store_true",
        help="serve a document whose privateIp differs by one digit from the signed one",
    )
    p.add_argument(
        "--document-instance-id",
        help="sign and serve a document claiming this instance id instead",
    )
    p.add_argument(
        "--local-hostname",
        help="serve this local-hostname instead of the instance's private DNS name",
    )
    return p.parse_args(argv)


def describe(endpoint, region, instance_id):
    """The instance and its reservation's owner, from moto."""
    ec2 = boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    out = ec2.describe_instances(InstanceIds=[instance_id])
    for reservation in out["Reservations"]:
        for instance in reservation["Instances"]:
            if instance["InstanceId"] == instance_id:
                return reservation["OwnerId"], instance
    raise SystemExit(f"imds_standin: moto at {endpoint} has no instance {instance_id}")


def identity_document(owner_id, instance, region, instance_id):
    """The document's text, in AWS's field order and layout ("key" : value, 2-space indent)."""
    launch = instance["LaunchTime"].astimezone(timezone.utc)
    doc = {
        "accountId": owner_id,
        "architecture": instance.get("Architecture", "x86_64"),
        "availabilityZone": instance["Placement"]["AvailabilityZone"],
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": instance["ImageId"],
        "instanceId": instance_id,
        "instanceType": instance["InstanceType"],
        "kernelId": None,
        "pendingTime": launch.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "privateIp": instance["PrivateIpAddress"],
        "ramdiskId": None,
        "region": region,
        "version": DOCUMENT_VERSION,
    }
    return json.dumps(doc, indent=2, separators=(",", " : "))


def tampered(document):
    """The same document with the last digit of privateIp changed: one byte differs."""
    doc = json.loads(document)
    ip = doc["privateIp"]
    doc["privateIp"] = ip[:-1] + str((int(ip[-1]) + 1) % 10)
    out = json.dumps(doc, indent=2, separators=(",", " : "))
    assert len(out) == len(document) and out != document
    return out


def sign(document_bytes, key_path, cert_path):
    """base64 (64-column lines, no PEM header) of a DER SignedData over the document."""
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(document_bytes)
        .add_signer(cert, key, hashes.SHA256())
        # Binary: sign the bytes as served (no MIME newline canonicalisation).
        # NoCerts: AWS's signature carries no certificate. NoCapabilities: AWS's signed
        # attributes are contentType, signingTime and messageDigest only.
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCerts, pkcs7.PKCS7Options.NoCapabilities],
        )
    )
    text = base64.b64encode(der).decode("ascii")
    return "\n".join(text[i : i + 64] for i in range(0, len(text), 64))


class Tokens:
    """Session tokens issued by PUT /latest/api/token, each with its expiry."""

    def __init__(self):
        self._lock = threading.Lock()
        self._expiry = {}

    def issue(self, ttl):
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[token] = time.monotonic() + ttl
        return token

    def valid(self, token):
        if not token:
            return False
        with self._lock:
            expiry = self._expiry.get(token)
            return expiry is not None and time.monotonic() < expiry


def handler_for(routes, tokens):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "EC2ws"

        def reply(self, status, body, headers=()):
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path != "/latest/api/token":
                self.reply(404, "Not Found")
                return
            raw = self.headers.get(TOKEN_TTL_HEADER)
            try:
                ttl = int(raw)
            except (TypeError, ValueError):
                ttl = None
            if ttl is None or not TOKEN_TTL_MIN <= ttl <= TOKEN_TTL_MAX:
                self.reply(400, "Bad Request")
                return
            self.reply(200, tokens.issue(ttl), [(TOKEN_TTL_HEADER, str(ttl))])

        def do_GET(self):
            if not tokens.valid(self.headers.get(TOKEN_HEADER)):
                self.reply(401, "Unauthorized")
                return
            body = routes.get(self.path)
            if body is None:
                self.reply(404, "Not Found")
                return
            self.reply(200, body)

    return Handler


def main(argv):
    args = parse_args(argv)
    owner_id, instance = describe(args.moto, args.region, args.instance_id)
    claimed_id = args.document_instance_id or args.instance_id
    document = identity_document(owner_id, instance, args.region, claimed_id)
    signature = sign(document.encode("utf-8"), args.key, args.cert)
    served = tampered(document) if args.tamper_document else document
    routes = {
        "/latest/meta-data/instance-id": args.instance_id,
        "/latest/meta-data/local-ipv4": instance["PrivateIpAddress"],
        "/latest/meta-data/local-hostname": args.local_hostname or instance.get("PrivateDnsName", ""),
        "/latest/dynamic/instance-identity/document": served,
        "/latest/dynamic/instance-identity/rsa2048": signature,
    }

    server = ThreadingHTTPServer((args.bind, args.port), handler_for(routes, Tokens()))
    server.daemon_threads = True
    host, port = server.server_address[:2]

    def stop(_signum, _frame):
        # shutdown() waits for serve_forever to return, so it cannot run on its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    if args.port_file:
        # Written whole then renamed, so a reader never sees a partial port.
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
