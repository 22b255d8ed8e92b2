//! Secrets Manager adapter: reads one secret's string (the database credentials of the
//! maintenance runbooks). The value never appears in Debug output, logs or errors.

use aws_sdk_secretsmanager::Client;

use super::error::classify;
use super::AwsError;

const SERVICE: &str = "Secrets Manager";

/// A secret's value; Debug prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// The SecretString of the current version of `secret_id`.
pub async fn get_secret_string(client: &Client, secret_id: &str) -> Result<SecretString, AwsError> {
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| classify(SERVICE, "GetSecretValue", e))?;
    match out.secret_string() {
        Some(s) => Ok(SecretString(s.to_string())),
        None => Err(AwsError {
            service: SERVICE,
            call: "GetSecretValue",
            cause: super::AwsCause::Other(format!("secret {secret_id:?} has no string value (binary secrets are not supported)")),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let s = super::SecretString("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
