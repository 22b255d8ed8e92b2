//! The systemd unit the agent runs under on a host, with the hardening that still lets it
//! do its job. The agent runs as root because its jobs patch packages, restart services,
//! clean `/tmp` and `/var/log` and signal processes; every directive that would break one
//! of those is left out on purpose, and the reason is written beside it in the unit.

/// Where the agent binary is installed on a host.
pub const AGENT_BIN: &str = "/usr/local/bin/ops-agent";
/// The agent's config folder on a host (config, fleet CA, its own key and certificate).
pub const AGENT_ETC: &str = "/etc/ops-agent";
/// The unit's path on a host.
pub const UNIT_PATH: &str = "/etc/systemd/system/ops-agent.service";

/// The unit file's text.
pub fn agent_unit() -> String {
    format!(
        "\
[Unit]
Description=ops fleet agent (mutual-TLS gRPC in place of SSH)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={AGENT_BIN} --config {AGENT_ETC}/agent.toml
# Always back: the agent is how the fleet is reached at all.
Restart=always
RestartSec=2s
# Logs go to the journal (stderr), tagged.
StandardOutput=journal
StandardError=journal
SyslogIdentifier=ops-agent
# Job records, output logs, the audit log and the journal cursor.
StateDirectory=ops-agent
StateDirectoryMode=0700
# Keep the agent answering during a memory incident, when it is needed most.
OOMScoreAdjust=-500
LimitNOFILE=65536
# SIGTERM: health NOT_SERVING, drain calls, jobs recorded as interrupted.
KillMode=mixed
TimeoutStopSec=30s

# Hardening that does not get in the way of the jobs:
ProtectClock=yes
ProtectHostname=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictNamespaces=yes
KeyringMode=private
SystemCallArchitectures=native
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
# Left out on purpose (each would break a job the agent exists for):
#   ProtectSystem / ProtectHome / ReadOnlyPaths - patching writes /usr, /etc, /boot
#   ProtectKernelModules - kernel updates write /usr/lib/modules
#   ProtectKernelTunables - package scripts apply sysctl settings
#   PrivateTmp - cleanup must see the host's real /tmp
#   NoNewPrivileges / RestrictSUIDSGID - package scripts use setuid helpers and install them
#   MemoryDenyWriteExecute - inherited by actions; breaks JIT runtimes such as node (npm audit fix)
#   UMask=0077 - inherited by package installs, which must create world-readable files
UMask=0022

[Install]
WantedBy=multi-user.target
"
    )
}
